"""Numerical tests of TruncatedNormal, written once and run on both hosts.

Ground truth: scipy.stats.truncnorm and scipy.special.log_ndtr (accurate far into the tails),
mpmath (tail probabilities, moments by quadrature, closed-form implicit gradients at 40 digits),
and finite differences of scipy's quantile function at fixed u.
"""

import functools

import mpmath as mp
import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats

DTYPES = ["float32", "float64"]
INF = np.inf
N_DRAWS = 4000  # one sample size for every test: one compiled JAX function per dtype


class _Torch:
    name = "torch"

    def __init__(self):
        import torch

        import pyro_implicit

        self.torch, self.lib = torch, pyro_implicit

    def _t(self, x, dtype, grad=False):
        if x is None:
            return None
        t = self.torch.tensor(np.asarray(x), dtype=getattr(self.torch, dtype))
        return t.requires_grad_(grad)

    def dist(self, loc, scale, low, high, dtype, grad=False, validate_args=None):
        params = [self._t(p, dtype, grad) for p in (loc, scale, low, high)]
        return self.lib.TruncatedNormal(*params, validate_args=validate_args), params

    def sample_grads(self, loc, scale, low, high, n, seed, dtype):
        """z of shape (n,) with per-sample dz/d(loc, scale, low, high) (None for no bound)."""
        self.torch.manual_seed(seed)
        full = [None if p is None else np.full(n, p) for p in (loc, scale, low, high)]
        d, params = self.dist(*full, dtype, grad=True)
        z = d.rsample()
        used = [p for p in params if p is not None]
        grads = iter(self.torch.autograd.grad(z.sum(), used))
        out = [None if p is None else next(grads).numpy() for p in params]
        return z.detach().numpy(), out

    def icdf_grads(self, loc, scale, low, high, u, dtype):
        """z = icdf(u) with dz/d(loc, scale, low, high, u), all parameters broadcast to u."""
        shape = np.shape(u)
        full = [None if p is None else np.broadcast_to(p, shape) for p in (loc, scale, low, high)]
        d, params = self.dist(*full, dtype, grad=True)
        u_t = self._t(u, dtype, True)
        z = d.icdf(u_t)
        used = [p for p in (*params, u_t) if p is not None]
        grads = iter(self.torch.autograd.grad(z.sum(), used))
        out = [None if p is None else next(grads).numpy() for p in (*params, u_t)]
        return z.detach().numpy(), out

    def method(self, name, loc, scale, low, high, value, dtype):
        d, _ = self.dist(loc, scale, low, high, dtype, validate_args=False)
        return getattr(d, name)(self._t(value, dtype)).detach().numpy()

    def log_tails_grads(self, loc, scale, low, high, value, dtype):
        """[(log_cdf, its gradient), (log_sf, its gradient)] at one value, gradients in
        (loc, scale, low, high, value) without the missing bounds."""
        d, params = self.dist(loc, scale, low, high, dtype, grad=True)
        v = self._t(value, dtype, True)
        used = [p for p in (*params, v) if p is not None]
        out = []
        for name in ("log_cdf", "log_sf"):
            y = getattr(d, name)(v)
            out.append((y.item(), [g.item() for g in self.torch.autograd.grad(y, used)]))
        return out

    def moments(self, loc, scale, low, high, dtype):
        d, _ = self.dist(loc, scale, low, high, dtype)
        return d.mean.detach().numpy(), d.variance.detach().numpy()

    def mean_grad_loc(self, loc, scale, low, high):
        d, params = self.dist(loc, scale, low, high, "float64", grad=True)
        return self.torch.autograd.grad(d.mean, params[0])[0].item()

    def moment_grads(self, loc, scale, low, high, dtype):
        """The gradients of the mean and of the variance in (loc, scale, low, high), [2, 4]."""
        d, params = self.dist(loc, scale, low, high, dtype, grad=True)
        return np.array(
            [[g.item() for g in self.torch.autograd.grad(m, params)] for m in (d.mean, d.variance)]
        )


class _Jax:
    name = "jax"

    def __init__(self):
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        import numpyro_implicit

        self.jax, self.jnp, self.lib = jax, jnp, numpyro_implicit

    def _a(self, x, dtype):
        return None if x is None else self.jnp.asarray(x, dtype=dtype)

    def dist(self, loc, scale, low, high, dtype, validate_args=None):
        loc, scale, low, high = (self._a(p, dtype) for p in (loc, scale, low, high))
        return self.lib.TruncatedNormal(loc, scale, low=low, high=high, validate_args=validate_args)

    @functools.cache  # noqa: B019  (one compiled function per bound pattern)
    def _sample_grad_fn(self, has_low, has_high):
        def draw(key, loc, scale, low, high):
            low, high = (low if has_low else None), (high if has_high else None)
            return self.lib.TruncatedNormal(loc, scale, low=low, high=high).sample(key)

        grad = self.jax.grad(lambda *a: draw(*a).sum(), argnums=(1, 2, 3, 4))
        return self.jax.jit(lambda *a: (draw(*a), grad(*a)))

    def sample_grads(self, loc, scale, low, high, n, seed, dtype):
        # No bound is an infinite one: one compiled function per dtype and n serves all cases.
        bounds = (-np.inf if low is None else low, np.inf if high is None else high)
        fill = [np.full(n, p) for p in (loc, scale, *bounds)]
        fn = self._sample_grad_fn(True, True)
        z, grads = fn(self.jax.random.PRNGKey(seed), *(self._a(p, dtype) for p in fill))
        out = [
            None if p is None else np.asarray(g)
            for p, g in zip((loc, scale, low, high), grads, strict=True)
        ]
        return np.asarray(z), out

    @functools.cache  # noqa: B019
    def _icdf_grad_fn(self, has_low, has_high):
        def icdf(loc, scale, low, high, u):
            low, high = (low if has_low else None), (high if has_high else None)
            return self.lib.TruncatedNormal(loc, scale, low=low, high=high).icdf(u)

        grad = self.jax.grad(lambda *a: icdf(*a).sum(), argnums=(0, 1, 2, 3, 4))
        return self.jax.jit(lambda *a: (icdf(*a), grad(*a)))

    def icdf_grads(self, loc, scale, low, high, u, dtype):
        shape = np.shape(u)
        bounds = (-np.inf if low is None else low, np.inf if high is None else high)
        fill = [np.full(shape, p) for p in (loc, scale, *bounds)]
        fn = self._icdf_grad_fn(True, True)
        z, grads = fn(*(self._a(p, dtype) for p in (*fill, u)))
        out = [
            None if p is None else np.asarray(g)
            for p, g in zip((loc, scale, low, high, u), grads, strict=True)
        ]
        return np.asarray(z), out

    def method(self, name, loc, scale, low, high, value, dtype):
        d = self.dist(loc, scale, low, high, dtype, validate_args=False)
        return np.asarray(getattr(d, name)(self._a(value, dtype)))

    @functools.cached_property
    def _log_tails_jacobian(self):
        def tails(loc, scale, low, high, value):
            d = self.lib.TruncatedNormal(loc, scale, low=low, high=high)
            return self.jnp.stack([d.log_cdf(value), d.log_sf(value)])

        jacobian = self.jax.jacrev(tails, argnums=(0, 1, 2, 3, 4))
        return self.jax.jit(lambda *a: (tails(*a), jacobian(*a)))

    def log_tails_grads(self, loc, scale, low, high, value, dtype):
        # No bound is an infinite one: one compiled function per dtype.
        bounds = (-np.inf if low is None else low, np.inf if high is None else high)
        args = [self._a(p, dtype) for p in (loc, scale, *bounds, value)]
        values, jacobian = self._log_tails_jacobian(*args)
        given = [i for i, p in enumerate((loc, scale, low, high, value)) if p is not None]
        return [(float(values[k]), [float(jacobian[i][k]) for i in given]) for k in range(2)]

    def moments(self, loc, scale, low, high, dtype):
        d = self.dist(loc, scale, low, high, dtype)
        return np.asarray(d.mean), np.asarray(d.variance)

    def mean_grad_loc(self, loc, scale, low, high):
        def mean(m):
            return self.dist(m, scale, low, high, "float64").mean

        return float(self.jax.grad(mean)(self.jnp.asarray(loc, "float64")))

    def moment_grads(self, loc, scale, low, high, dtype):
        def moments(p):
            d = self.lib.TruncatedNormal(p[0], p[1], low=p[2], high=p[3])
            return self.jnp.stack([d.mean, d.variance])

        p = self.jnp.asarray([loc, scale, low, high], dtype)
        return np.asarray(self.jax.jacrev(moments)(p), float)


_cache = {}


def _backend(name):
    if name not in _cache:
        _cache[name] = {"torch": _Torch, "jax": _Jax}[name]()
    return _cache[name]


@pytest.fixture(params=["torch", "jax"])
def tb(request):
    return _backend(request.param)


def cast(dtype, *values):
    """The parameters as the host holds them (rounded to dtype), as Python floats."""
    return [None if v is None else float(np.asarray(v, dtype)) for v in values]


def ref_cdf(x, alpha, beta):
    """Truncated standard normal CDF from scipy's log_ndtr, in the tail that is small."""
    alpha = -INF if alpha is None else alpha
    beta = INF if beta is None else beta
    if alpha + beta < 0:  # mirror: F(x) = 1 - F'(-x) on [-beta, -alpha]
        return 1 - ref_cdf(-x, -beta, -alpha)
    ls = scipy.special.log_ndtr
    la, lb, lx = ls(-alpha), ls(-beta), ls(-np.clip(x, alpha, beta))
    return -np.expm1(lx - la) / -np.expm1(lb - la)


def mp_tail(a, b):
    """Leaning-right bounds, mirror sign, and Z = S(a) - S(b) in mpmath (50 digits)."""
    a = -mp.inf if a is None else mp.mpf(a)
    b = mp.inf if b is None else mp.mpf(b)
    sign = 1
    if a + b < 0:
        a, b, sign = -b, -a, -1
    return a, b, sign, mp.ncdf(-a) - mp.ncdf(-b)


def mp_moments(alpha, beta):
    """Mean and variance of the standard normal truncated to [alpha, beta], from the closed
    forms at 80 digits (enough for every cancellation they contain here)."""
    with mp.workdps(80):
        a, b, sign, z = mp_tail(alpha, beta)
        pa = mp.npdf(a) if a > -mp.inf else mp.mpf(0)
        pb = mp.npdf(b) if b < mp.inf else mp.mpf(0)
        mean = (pa - pb) / z
        var = 1 + ((a * pa if a > -mp.inf else 0) - (b * pb if b < mp.inf else 0)) / z - mean**2
        return float(sign * mean), float(var)


# (loc, scale, low, high): central, binding, far tails both sides, one- and two-sided, narrow.
INTERVALS = [
    (0.0, 1.0, -1.0, 2.0),
    (0.8, 0.5, 0.0, 1.0),
    (0.0, 1.0, 8.0, 9.0),
    (0.0, 1.0, -40.0, -39.0),
    (0.0, 1.0, 39.9, 40.0),
    (0.0, 1.0, 40.0, 41.0),
    (0.0, 1.0, 40.0, None),
    (0.0, 1.0, None, -40.0),
    (0.0, 1.0, 0.0, 1e-4),
    (0.0, 1.0, 5.0, 5.0001),
    (0.0, 1.0, -30.0001, -30.0),
    (1.0, 2.0, 0.0, None),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loc,scale,low,high", INTERVALS)
def test_samples_in_support_and_goodness_of_fit(tb, dtype, loc, scale, low, high):
    z, grads = tb.sample_grads(loc, scale, low, high, N_DRAWS, seed=0, dtype=dtype)
    assert np.all(np.isfinite(z))
    for g in grads:
        assert g is None or np.all(np.isfinite(g))
    loc, scale, low, high = cast(dtype, loc, scale, low, high)
    if low is not None:
        assert np.all(z >= low)
    if high is not None:
        assert np.all(z <= high)
    alpha = None if low is None else (low - loc) / scale
    beta = None if high is None else (high - loc) / scale
    x = (z.astype(np.float64) - loc) / scale
    # The law of x: KS against the exact CDF (the bounds as rounded to dtype), in every tail.
    p = scipy.stats.kstest(x, lambda v: ref_cdf(v, alpha, beta)).pvalue
    assert p > 1e-4


def test_narrow_interval_is_nearly_uniform(tb):
    z, _ = tb.sample_grads(0.0, 1.0, 0.0, 1e-4, N_DRAWS, seed=1, dtype="float64")
    assert scipy.stats.kstest(z / 1e-4, "uniform").pvalue > 1e-4


def mp_grads(z, loc, scale, low, high):
    """dz/d(loc, scale, low, high) from the closed forms, in mpmath at 50 digits."""
    with mp.workdps(50):
        loc, scale = mp.mpf(loc), mp.mpf(scale)
        x = (mp.mpf(float(z)) - loc) / scale
        alpha = None if low is None else (mp.mpf(low) - loc) / scale
        beta = None if high is None else (mp.mpf(high) - loc) / scale
        a, b, sign, zmass = mp_tail(alpha, beta)
        xr = sign * x
        f = (mp.ncdf(-a) - mp.ncdf(-xr)) / zmass  # F' in the leaning-right frame
        g = (mp.ncdf(-xr) - mp.ncdf(-b)) / zmass
        da = mp.exp((xr - a) * (xr + a) / 2) * g if a > -mp.inf else mp.mpf(0)
        db = mp.exp((xr - b) * (xr + b) / 2) * f if b < mp.inf else mp.mpf(0)
        if sign < 0:
            da, db = db, da
        d_alpha = da if alpha is not None else 0
        d_beta = db if beta is not None else 0
        d_scale = (
            x - (alpha * da if alpha is not None else 0) - (beta * db if beta is not None else 0)
        )
        return [float(1 - d_alpha - d_beta), float(d_scale), float(d_alpha), float(d_beta)]


def grad_errors(grads, ref):
    """Relative errors, with an absolute floor at 1e-3 of the largest derivative of the draw
    (1 - da - db passes through zero as a draw approaches a bound)."""
    floor = 1e-3 * np.max(np.abs(ref), axis=1)
    return [
        None if g is None else np.abs(g - ref[:, k]) / np.maximum(np.abs(ref[:, k]), floor)
        for k, g in enumerate(grads)
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loc,scale,low,high", INTERVALS)
def test_sample_gradients_match_mpmath(tb, dtype, loc, scale, low, high):
    z, grads = tb.sample_grads(loc, scale, low, high, N_DRAWS, seed=2, dtype=dtype)
    z, grads = z[:12], [None if g is None else g[:12] for g in grads]
    # The closed forms at the float parameters that the host actually used.
    ref = np.array([mp_grads(zi, *cast(dtype, loc, scale, low, high)) for zi in z])
    tol = 1e-7 if dtype == "float64" else 2e-3
    for k, err in enumerate(grad_errors(grads, ref)):
        assert err is None or np.all(err < tol), (k, err.max())


def kappa(alpha, beta):
    """max over the finite bounds t of (1 + |t|) phi(t) / Z, in mpmath: the predictor of the
    error of the plain path (``_MODERATE`` in both adapters), which serves intervals up to a
    threshold of it."""
    a = -mp.inf if alpha is None else mp.mpf(alpha)
    b = mp.inf if beta is None else mp.mpf(beta)
    z = mp.ncdf(b) - mp.ncdf(a) if a + b < 0 else mp.ncdf(-a) - mp.ncdf(-b)
    weights = [(1 + abs(t)) * mp.npdf(t) for t in (a, b) if mp.isfinite(t)]
    return float(max(weights) / z)


def threshold_interval(dtype, width, mirrored):
    """[t, t + width] (or its mirror image) with kappa 0.95 times the plain path's threshold:
    the plain path's worst case (its error grows with kappa)."""
    from numpyro_implicit.truncated_normal import _MODERATE as jax_moderate
    from pyro_implicit.truncated_normal import _MODERATE

    assert _MODERATE == jax_moderate
    target = 0.95 * _MODERATE["double" if dtype == "float64" else "single"]
    t = scipy.optimize.brentq(
        lambda t: kappa(t, None if width is None else t + width) - target, 0.0, 12.0
    )
    low, high = t, None if width is None else t + width
    return (-high if high is not None else None, -low) if mirrored else (low, high)


def closed_form_grads(x, alpha, beta):
    """dx/d(loc, scale, alpha, beta) of the standard normal on [alpha, beta] at x, in float64
    from scipy's log_ndtr (F and 1 - F each from the tail where it is small)."""
    f = ref_cdf(x, alpha, beta)
    g = ref_cdf(-x, None if beta is None else -beta, None if alpha is None else -alpha)
    da = np.zeros_like(x) if alpha is None else np.exp((x - alpha) * (x + alpha) / 2) * g
    db = np.zeros_like(x) if beta is None else np.exp((x - beta) * (x + beta) / 2) * f
    d_scale = x - (0 if alpha is None else alpha * da) - (0 if beta is None else beta * db)
    return np.stack([1 - da - db, d_scale, da, db], axis=1)


@pytest.mark.parametrize("mirrored", [False, True], ids=["right", "left"])
@pytest.mark.parametrize(
    "dtype,width", [("float32", None), ("float32", 1.5), ("float64", None), ("float64", 0.1)]
)
def test_plain_path_gradients_at_its_threshold(tb, dtype, width, mirrored):
    """On moderate intervals a plain-probability path (no log space) draws the sample and its
    gradient; on the intervals where its error is largest, every draw's gradient stays within
    the tolerance of the log-space path: 2e-3 (float32) and 1e-7 (float64)."""
    low, high = threshold_interval(dtype, width, mirrored)
    z, grads = tb.sample_grads(0.0, 1.0, low, high, N_DRAWS, seed=6, dtype=dtype)
    alpha, beta = cast(dtype, low, high)
    ref = closed_form_grads(z.astype(np.float64), alpha, beta)
    tol = 1e-7 if dtype == "float64" else 2e-3
    for k, err in enumerate(grad_errors(grads, ref)):
        assert err is None or np.all(err < tol), (k, err.max())


def test_gradients_are_derivatives_of_the_quantile_at_fixed_u(tb):
    """dz/dphi at fixed u = F(z), against central differences of scipy's truncnorm.ppf, for a
    binding interval (loc 0.8, scale 0.5 on [0, 1])."""
    loc, scale, low, high = 0.8, 0.5, 0.0, 1.0
    z, grads = tb.sample_grads(loc, scale, low, high, N_DRAWS, seed=4, dtype="float64")
    z, grads = z[:6], [g[:6] for g in grads]

    def ppf(u, m, s, lo, hi):
        return scipy.stats.truncnorm.ppf(u, (lo - m) / s, (hi - m) / s, loc=m, scale=s)

    params = np.array([loc, scale, low, high])
    u = scipy.stats.truncnorm.cdf(z, (low - loc) / scale, (high - loc) / scale, loc, scale)
    h = 1e-6
    for k in range(4):
        step = np.zeros(4)
        step[k] = h
        fd = (ppf(u, *(params + step)) - ppf(u, *(params - step))) / (2 * h)
        assert np.allclose(grads[k], fd, rtol=1e-6, atol=1e-8), k


def test_mean_gradient_in_loc_is_not_one(tb):
    """dE[z]/dloc = 0.2757 for loc=0.8, scale=0.5 on [0, 1] (not 1, as a naive rule says)."""
    h = 1e-6

    def mean(m):
        return scipy.stats.truncnorm.mean(-m / 0.5, (1 - m) / 0.5, loc=m, scale=0.5)

    exact = (mean(0.8 + h) - mean(0.8 - h)) / (2 * h)
    assert abs(exact - 0.2757) < 1e-4
    assert abs(tb.mean_grad_loc(0.8, 0.5, 0.0, 1.0) - exact) < 1e-8
    _, grads = tb.sample_grads(0.8, 0.5, 0.0, 1.0, N_DRAWS, seed=3, dtype="float64")
    d_loc = grads[0]
    se = d_loc.std() / np.sqrt(d_loc.size)
    assert abs(d_loc.mean() - exact) < 4.5 * se  # 4.5 standard errors: a 1e-5 false alarm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "loc,scale,low,high", [(0.0, 1.0, -1.0, 1.0), (0.5, 2.0, -5.5, 6.5), (0.0, 1.0, -40.0, 40.0)]
)
def test_moment_gradients_on_intervals_symmetric_about_loc(tb, dtype, loc, scale, low, high):
    """Gradients of the mean and variance in all four parameters against central differences
    of scipy's moments (step 1e-5: truncation error ~1e-10, rounding ~1e-11). An interval
    symmetric about loc, the commonest truncation, gave NaN in every one of them in both hosts
    until 2026-12-06: phi(a) - phi(b) was formed through log(1 - e^gap) at gap = 0."""
    h = 1e-5
    params = np.array([loc, scale, low, high])

    def moments(p):
        law = scipy.stats.truncnorm((p[2] - p[0]) / p[1], (p[3] - p[0]) / p[1], p[0], p[1])
        return np.array([law.mean(), law.var()])

    ref = np.array(
        [(moments(params + h * e) - moments(params - h * e)) / (2 * h) for e in np.eye(4)]
    )
    ours = tb.moment_grads(loc, scale, low, high, dtype)
    tol = 1e-6 if dtype == "float64" else 1e-4
    assert np.allclose(ours, ref.T, rtol=tol, atol=tol), (ours, ref.T)


@pytest.mark.parametrize("dtype,far", [("float32", 1e20), ("float64", 1e10), ("float64", 1e100)])
def test_a_bound_far_out_acts_as_none(tb, dtype, far):
    """high = `far` (in standard units) gives the log-CDF and log-survival function of the
    one-sided law, with its gradients (in high, 0). PyTorch gave NaN gradients in loc, scale
    and high until 2026-12-06: torch.special.log_ndtr's derivative, exp(log phi - log Phi), is
    inf, 0 or NaN that far out; pyro_implicit.special.log_ndtr replaces it."""
    for low, high, value in [(-1.0, far, 0.3), (-far, 1.0, -0.3)]:
        ours = tb.log_tails_grads(0.0, 1.0, low, high, value, dtype)
        one_sided = (low, None) if high == far else (None, high)
        ref = tb.log_tails_grads(0.0, 1.0, *one_sided, value, dtype)
        missing = 3 if high == far else 2  # the far bound's place among the gradients
        for (v, g), (v_ref, g_ref) in zip(ours, ref, strict=True):
            assert np.isclose(v, v_ref, rtol=1e-6 if dtype == "float32" else 1e-14)
            assert g[missing] == 0
            del g[missing]
            assert np.allclose(g, g_ref, rtol=1e-5 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_prob_cdf_moments_match_scipy(tb, dtype):
    tol = 1e-10 if dtype == "float64" else 2e-5
    for loc, scale, low, high in [
        (0.0, 1.0, -1.0, 2.0),
        (0.8, 0.5, 0.0, 1.0),
        (1.0, 2.0, 0.0, 8.0),
    ]:
        a, b = (low - loc) / scale, (high - loc) / scale
        ref = scipy.stats.truncnorm(a, b, loc=loc, scale=scale)
        v = np.linspace(low, high, 7)[1:-1]
        lp = tb.method("log_prob", loc, scale, low, high, v, dtype)
        assert np.allclose(lp, ref.logpdf(v), rtol=tol, atol=tol)
        cdf = tb.method("cdf", loc, scale, low, high, v, dtype)
        assert np.allclose(cdf, ref.cdf(v), rtol=tol, atol=tol)
        m, var = tb.moments(loc, scale, low, high, dtype)
        assert np.allclose(m, ref.mean(), rtol=tol) and np.allclose(var, ref.var(), rtol=10 * tol)
    lp = tb.method("log_prob", 0.0, 1.0, -1.0, 2.0, np.array([-1.5, 2.5]), dtype)
    assert np.all(lp == -np.inf)


TAILS = [(40.0, 41.0), (-41.0, -40.0), (8.0, 9.0), (40.0, None), (None, -30.0), (38.0, None)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("low,high", TAILS)
def test_tails_match_mpmath(tb, dtype, low, high):
    """log_prob, cdf, mean and variance 30-41 standard deviations out."""
    low, high = cast(dtype, low, high)
    edge = low if low is not None else high
    inward = 1.0 if low is not None else -1.0
    v = np.array([edge, edge + inward * 0.01, edge + inward * 0.1])
    v = cast(dtype, *v)
    with mp.workdps(50):
        a, b, sign, z = mp_tail(low, high)
        ref_lp = [float(mp.log(mp.npdf(t) / z)) for t in v]
        ref_cdf = [
            float((mp.ncdf(-a) - mp.ncdf(-sign * mp.mpf(t))) / z) for t in v
        ]  # F' at the mirrored point
        if sign < 0:
            ref_cdf = [1 - c for c in ref_cdf]
    ref_mean, ref_var = mp_moments(low, high)
    tol = 1e-12 if dtype == "float64" else 1e-5
    lp = tb.method("log_prob", 0.0, 1.0, low, high, np.array(v), dtype)
    assert np.allclose(lp, ref_lp, rtol=tol, atol=tol)
    cdf = tb.method("cdf", 0.0, 1.0, low, high, np.array(v), dtype)
    assert np.allclose(cdf, ref_cdf, rtol=tol, atol=tol)
    m, var = tb.moments(0.0, 1.0, low, high, dtype)
    assert abs(m / ref_mean - 1) < tol and abs(var / ref_var - 1) < tol


def mp_log_tails(loc, scale, low, high, z):
    """((log F_T(z), its gradient), (log(1 - F_T(z)), its gradient)) at 150 digits, gradients
    in (loc, scale, low, high, z) without the missing bounds. Each mass is a difference of two
    tail probabilities on the side where both are small (no cancellation), and the gradient of
    the log of the mass between standardized points p < q is the closed form
    (phi(q) dq - phi(p) dp) / (Phi(q) - Phi(p))."""
    with mp.workdps(150):
        s = mp.mpf(scale)
        a = -mp.inf if low is None else (mp.mpf(low) - loc) / s
        b = mp.inf if high is None else (mp.mpf(high) - loc) / s
        x = (mp.mpf(z) - loc) / s
        cdf, sf = mp.ncdf, lambda t: mp.ncdf(-t)
        below = cdf(x) - cdf(a) if x <= 0 else sf(a) - sf(x)
        above = sf(x) - sf(b) if x >= 0 else cdf(b) - cdf(x)
        total = cdf(b) - cdf(a) if b <= 0 else (sf(a) - sf(b) if a >= 0 else 1 - cdf(a) - sf(b))

        def moves(t, own):  # phi(t) dt/d(loc, scale, low, high, z); own: t's own parameter
            if mp.isinf(t):
                return [mp.mpf(0)] * 5
            dt = [-1 / s, -t / s, 0, 0, 0]
            dt[own] = 1 / s
            return [mp.npdf(t) * d for d in dt]

        def grad(p, q, mass):
            return [(dq - dp) / mass for dp, dq in zip(p, q, strict=True)]

        pa, pb, px = moves(a, 2), moves(b, 3), moves(x, 4)
        g_total = grad(pa, pb, total)
        g_cdf = [g - t for g, t in zip(grad(pa, px, below), g_total, strict=True)]
        g_sf = [g - t for g, t in zip(grad(px, pb, above), g_total, strict=True)]
        f, u = below / total, above / total
        log_cdf = mp.log1p(-u) if f > 0.5 else mp.log(f)
        log_sf = mp.log1p(-f) if u > 0.5 else mp.log(u)
        keep = [i for i, p in enumerate((loc, scale, low, high, z)) if p is not None]
        return [
            (float(value), [float(g[i]) for i in keep])
            for value, g in ((log_cdf, g_cdf), (log_sf, g_sf))
        ]


# (loc, scale, low, high, z): points on the far side of intervals that reach far out, where
# 1 - S(x)/S(a) in the leaning-right frame rounds to 0 (more than 14 standard deviations out in
# float32, 38 in float64), or cancels (a few out), and mirrored; and one in a far tail.
FAR_SIDE = [
    (0.0, 1.0, 8.0, 9.0, 8.2),
    (0.0, 1.0, -20.0, None, -15.0),
    (0.0, 1.0, -20.0, None, -19.9),
    (0.0, 1.0, -20.0, None, -5.0),
    (0.0, 1.0, -20.0, None, -2.9),
    (0.0, 1.0, -20.0, None, 0.5),
    (0.0, 1.0, None, 20.0, 15.0),
    (0.0, 1.0, None, None, -30.0),
    (0.5, 2.0, -80.0, 85.0, -75.0),
    (0.0, 1.0, -40.0, 45.0, -39.9),
    (1.0, 2.0, -60.0, None, -50.0),
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_cdf_and_log_sf_on_the_far_side(tb, dtype):
    """log_cdf and log_sf, and their gradients in all parameters and the value, against mpmath
    where the CDF is exp(-800) to 1 - 1e-312. Gradients are compared relative to their largest
    component: the conditioning of a log-CDF 15-40 standard deviations out, about x^2 units of
    rounding of the inputs, is 8e-5 in float32."""
    rtol, grad_rtol = (1e-12, 1e-11) if dtype == "float64" else (2e-6, 1e-4)
    tiny = np.finfo(dtype).tiny  # the smallest normal number: below it, any rounding of 0
    for case in FAR_SIDE:
        case = cast(dtype, *case)
        ours, refs = tb.log_tails_grads(*case, dtype), mp_log_tails(*case)
        for name, (value, grad), (ref_value, ref_grad) in zip(
            ("log_cdf", "log_sf"), ours, refs, strict=True
        ):
            assert abs(value - ref_value) <= rtol * abs(ref_value) + tiny, (case, name, value)
            err = max(abs(g - r) for g, r in zip(grad, ref_grad, strict=True))
            bound = grad_rtol * max(abs(r) for r in ref_grad) + tiny
            assert err <= bound, (case, name, grad, ref_grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_cdf_and_log_sf_gradients_are_finite(tb, dtype):
    """At the bounds and near them, on both sides of 0 and mirrored: no NaN in the gradients
    (each branch of the computation sees inputs where its derivative is finite)."""
    for loc, scale in [(3.0, 0.5), (-2.0, 0.7), (0.5, 1.2)]:
        for z in [-3.0, -2.9, 0.0, 3.9, 4.0]:
            for value, grad in tb.log_tails_grads(loc, scale, -3.0, 4.0, z, dtype):
                assert not np.isnan(value) and np.all(np.isfinite(grad)), (loc, scale, z)


@pytest.mark.parametrize("dtype", DTYPES)
def test_moments_of_narrow_and_moderate_intervals(tb, dtype):
    """The branches of the closed form: narrow (quadrature), one-sided tails on both sides of
    the continued-fraction switch, two-sided near 0."""
    tol = 1e-12 if dtype == "float64" else 1e-5
    for low, high in [
        (0.0, 1e-4),
        (5.0, 5.0001),
        (-0.3, 0.35),
        (2.0, 2.5),
        (2.4, None),
        (2.6, None),
        (5.9, None),
        (6.1, None),
        (-40.0, 45.0),
    ]:
        low, high = cast(dtype, low, high)
        ref_mean, ref_var = mp_moments(low, high)
        m, var = tb.moments(0.0, 1.0, low, high, dtype)
        assert abs(m - ref_mean) <= tol * max(abs(ref_mean), 1), (low, high)
        assert abs(var / ref_var - 1) < tol, (low, high, var, ref_var)


def test_icdf_inverts_the_cdf_in_the_tails(tb):
    u = np.array([1e-6, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1 - 1e-9])  # 9, as in the parity test
    for low, high in [(-1.0, 2.0), (40.0, 41.0), (-41.0, -40.0), (5.0, 5.0001), (40.0, None)]:
        z, _ = tb.icdf_grads(0.0, 1.0, low, high, u, "float64")
        # |F(z) - u| within 1e-8 relative, or within 4 float64 spacings of z (40 SD out, where
        # F varies by 1e-13 per spacing, u = 1e-6 has no closer representable quantile).
        h = 1e-7
        slope = (ref_cdf(z + h, low, high) - ref_cdf(z - h, low, high)) / (2 * h)
        err = np.abs(ref_cdf(z, low, high) - u)
        assert np.all(err <= 1e-8 * u + 4 * slope * np.spacing(z)), (low, high)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_nan_anywhere(tb, dtype):
    """Samples and gradients stay finite over a grid of extreme parameters."""
    for loc, scale, low, high in [
        (0.0, 1e-3, 0.0, 1e3),
        (0.0, 1e3, -1e-3, 1e-3),
        (100.0, 1.0, None, 0.0),
        (-100.0, 1.0, 0.0, None),
        (0.0, 1.0, None, None),
        (0.0, 1.0, -1e4, 1e4),
        (3.0, 0.01, 3.0, 3.0 + 1e-6),
    ]:
        z, grads = tb.sample_grads(loc, scale, low, high, N_DRAWS, seed=5, dtype=dtype)
        assert np.all(np.isfinite(z)), (loc, scale, low, high)
        assert all(g is None or np.all(np.isfinite(g)) for g in grads), (loc, scale, low, high)
        lo, hi = cast(dtype, low, high)
        assert (lo is None or np.all(z >= lo)) and (hi is None or np.all(z <= hi))


def test_parity_between_hosts():
    """The same quantiles and gradients at the same u, and the same log_prob, cdf, moments."""
    torch_b, jax_b = _backend("torch"), _backend("jax")
    u = np.linspace(0.01, 0.99, 9)
    for dtype in DTYPES:
        tol = 1e-12 if dtype == "float64" else 1e-5
        for loc, scale, low, high in INTERVALS:
            zt, gt = torch_b.icdf_grads(loc, scale, low, high, u, dtype)
            zj, gj = jax_b.icdf_grads(loc, scale, low, high, u, dtype)
            assert np.allclose(zt, zj, rtol=tol, atol=0), (low, high)
            # derivatives to rounding relative to the largest derivative of the draw
            largest = np.max([np.abs(g) for g in gt if g is not None], axis=0)
            for a, b in zip(gt, gj, strict=True):
                assert (a is None) == (b is None)
                if a is not None:
                    assert np.all(np.abs(a - b) <= 10 * tol * np.maximum(np.abs(a), largest))
            for name in ("log_prob", "cdf"):
                mt = torch_b.method(name, loc, scale, low, high, zt, dtype)
                mj = jax_b.method(name, loc, scale, low, high, zt, dtype)
                assert np.allclose(mt, mj, rtol=10 * tol, atol=10 * tol), (name, low, high)
            for a, b in zip(
                torch_b.moments(loc, scale, low, high, dtype),
                jax_b.moments(loc, scale, low, high, dtype),
                strict=True,
            ):
                assert np.allclose(a, b, rtol=tol), (low, high)


@pytest.mark.parametrize(
    "loc,scale,low,high,name",
    [
        (0.0, 1.0, 1.0, 0.0, "low"),
        (0.0, 1.0, 1.0, 1.0, "low"),
        (0.0, -1.0, 0.0, 1.0, "scale"),
        (0.0, 0.0, 0.0, 1.0, "scale"),
        (np.inf, 1.0, 0.0, 1.0, "loc"),
        (np.nan, 1.0, 0.0, 1.0, "loc"),
        (0.0, np.inf, 0.0, 1.0, "scale"),
    ],
)
def test_validation_errors_name_the_parameter(tb, loc, scale, low, high, name):
    with pytest.raises(ValueError, match=f"(?s){name}.*constraint|constraint.*{name}"):
        tb.dist(loc, scale, low, high, "float64", validate_args=True)


def test_log_prob_gradients_where_jax_erfcx_fails():
    """Standardized bounds near 13 (float32) or 37.6 (float64), where jax.scipy.special.erfcx
    returns 0 (jax-ml/jax#38607): the gradients stay finite and agree across dtypes and hosts."""
    import jax
    import jax.numpy as jnp
    import torch

    import numpyro_implicit
    import pyro_implicit

    jax.config.update("jax_enable_x64", True)  # as tests/backends.py does
    cases = [(-3.6414, 0.35204, -1.0, 1.0, -0.95185), (0.0, 1.0, 37.6, 38.0, 37.7)]
    for loc, scale, low, high, value in cases:
        grads = {}
        for dtype in ("float32", "float64"):

            def log_prob(loc, scale, dtype=dtype, low=low, high=high, value=value):
                d = numpyro_implicit.TruncatedNormal(loc, scale, low=low, high=high)
                return d.log_prob(jnp.asarray(value, dtype))

            args = (jnp.asarray(loc, dtype), jnp.asarray(scale, dtype))
            grads["jax", dtype] = np.array(jax.grad(log_prob, argnums=(0, 1))(*args), np.float64)
            t_loc, t_scale = (torch.tensor(v, dtype=getattr(torch, dtype)) for v in (loc, scale))
            t_loc.requires_grad_(), t_scale.requires_grad_()
            lp = pyro_implicit.TruncatedNormal(t_loc, t_scale, low, high).log_prob(
                torch.tensor(value, dtype=getattr(torch, dtype))
            )
            grads["torch", dtype] = np.array(
                [g.item() for g in torch.autograd.grad(lp, [t_loc, t_scale])]
            )
        reference = grads["torch", "float64"]
        for key, g in grads.items():
            assert np.all(np.isfinite(g)), key
            tol = 1e-10 if key[1] == "float64" else 2e-3
            np.testing.assert_allclose(g, reference, rtol=tol, atol=tol * np.abs(reference).max())
