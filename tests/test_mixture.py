"""Numerical tests of MixtureSameFamily, written once and run on both hosts.

Ground truth: scipy's distributions. A draw's implicit gradient is the derivative of the inverse
of the (sequential) mixture CDF at fixed u, so it is compared with finite differences of
scipy-based re-inversions of that CDF, dimension by dimension; expectations use closed forms.
"""

import numpy as np
import pytest
import scipy.optimize
import scipy.stats

DTYPES = ["float32", "float64"]


class TruncatedGamma:
    """scipy's Gamma(a, rate) restricted to [low, high] (scipy truncates only the normal)."""

    def __init__(self, a, rate, low, high):
        self.law, self.low, self.high = scipy.stats.gamma(a, scale=1 / rate), low, high
        self.below, self.above = self.law.cdf(low), self.law.sf(high)
        self.mass = 1 - self.below - self.above

    def cdf(self, x):
        return (self.law.cdf(np.clip(x, self.low, self.high)) - self.below) / self.mass

    def sf(self, x):
        return (self.law.sf(np.clip(x, self.low, self.high)) - self.above) / self.mass

    def logpdf(self, x):
        inside = (self.low < x) & (x < self.high)
        return np.where(inside, self.law.logpdf(x) - np.log(self.mass), -np.inf)

    def ppf(self, u):
        return self.law.ppf(self.below + u * self.mass)


Z_SCORE = 4.5  # a false alarm has probability 7e-6 per check

# family: (scipy law from the parameters, parameter values for K = 3 components)
FAMILIES = {
    "Normal": (lambda p: scipy.stats.norm(p[0], p[1]), ([-2.0, 0.5, 3.0], [0.7, 1.2, 0.5])),
    "Laplace": (lambda p: scipy.stats.laplace(p[0], p[1]), ([-2.0, 0.5, 3.0], [0.7, 1.2, 0.5])),
    "Logistic": (lambda p: scipy.stats.logistic(p[0], p[1]), ([-2.0, 0.5, 3.0], [0.7, 1.2, 0.5])),
    "Cauchy": (lambda p: scipy.stats.cauchy(p[0], p[1]), ([-2.0, 0.5, 3.0], [0.7, 1.2, 0.5])),
    "Gumbel": (lambda p: scipy.stats.gumbel_r(p[0], p[1]), ([-2.0, 0.5, 3.0], [0.7, 1.2, 0.5])),
    "Gamma": (
        lambda p: scipy.stats.gamma(p[0], scale=1 / np.asarray(p[1])),
        ([0.8, 3.0, 9.0], [2.0, 1.0, 1.5]),
    ),
    "LogNormal": (
        lambda p: scipy.stats.lognorm(p[1], scale=np.exp(p[0])),
        ([-1.0, 0.5, 1.5], [0.4, 0.8, 0.3]),
    ),
    "StudentT": (
        lambda p: scipy.stats.t(p[0], p[1], p[2]),
        ([2.5, 5.0, 30.0], [-2.0, 0.5, 3.0], [0.7, 1.2, 0.5]),
    ),
    # Rice(nu, sigma), this package's
    "Rice": (
        lambda p: scipy.stats.rice(np.asarray(p[0]) / p[1], scale=p[1]),
        ([0.5, 1.5, 4.0], [0.7, 1.2, 0.5]),
    ),
    # components sharing their bounds, so that the mixture has one support; the gradient with
    # respect to the bounds is checked too
    "TruncatedNormal": (
        lambda p: scipy.stats.truncnorm(
            (np.asarray(p[2]) - p[0]) / p[1], (np.asarray(p[3]) - p[0]) / p[1], p[0], p[1]
        ),
        ([-2.0, 0.5, 3.0], [0.7, 1.2, 0.5], [-3.0] * 3, [4.0] * 3),
    ),
    # TruncatedDistribution(Gamma(a, rate), low, high)
    "TruncatedDistribution": (
        lambda p: TruncatedGamma(*p),
        ([0.8, 3.0, 9.0], [2.0, 1.0, 1.5], [0.5] * 3, [8.0] * 3),
    ),
}
LOGITS = [0.3, -0.2, 0.5]
OWN = ("Rice", "TruncatedNormal", "TruncatedDistribution")  # this package's, not the host's
# TruncatedDistribution(base(*params[:2]), low=params[2], high=params[3]), by name of the base
TRUNCATED = {"TruncatedDistribution": "Gamma", "TruncatedGumbel": "Gumbel"}


# ---- ground truth: the mixture CDF and its inverse, with scipy ------------------------------


def component_laws(family, params):
    """One frozen scipy law per component (params[i] has K entries, or [K, D] if multivariate)."""
    make = FAMILIES[family][0]
    params = [np.asarray(p, dtype=float) for p in params]
    return lambda k, d=None: make([p[k] if p.ndim == 1 else p[k, d] for p in params])


def sequential_inverse(u, logits, family, params):
    """z with S(z) = u: z_d solves sum_k w_k^(d) F_k(z_d) = u_d, w^(d) ~ pi prod_{j<d} q_k(z_j)."""
    laws = component_laws(family, params)
    k_count = len(logits)
    log_w = np.asarray(logits, float) - scipy.special.logsumexp(logits)
    z = []
    for d, u_d in enumerate(np.atleast_1d(u)):
        w = np.exp(log_w - scipy.special.logsumexp(log_w))
        comps = [laws(k, d) for k in range(k_count)]

        def g(x, w=w, comps=comps, u_d=u_d):
            # the small tail, so that the root is resolved to the last digits in both tails
            if u_d > 0.5:
                return (1 - u_d) - sum(wk * c.sf(x) for wk, c in zip(w, comps, strict=True))
            return sum(wk * c.cdf(x) for wk, c in zip(w, comps, strict=True)) - u_d

        lo = min(c.ppf(min(u_d, 0.5) * 1e-3) for c in comps)
        hi = max(c.ppf(1 - (1 - max(u_d, 0.5)) * 1e-3) for c in comps)
        x = scipy.optimize.brentq(g, lo, hi, xtol=1e-15, rtol=1e-15, maxiter=500)
        z.append(x)
        log_w = log_w + np.array([c.logpdf(x) for c in comps])
    return np.array(z)


def sequential_cdf(z, logits, family, params):
    laws = component_laws(family, params)
    log_w = np.asarray(logits, float) - scipy.special.logsumexp(logits)
    u = []
    for d, x in enumerate(np.atleast_1d(z)):
        w = np.exp(log_w - scipy.special.logsumexp(log_w))
        comps = [laws(k, d) for k in range(len(logits))]
        u.append(sum(wk * c.cdf(x) for wk, c in zip(w, comps, strict=True)))
        log_w = log_w + np.array([c.logpdf(x) for c in comps])
    return np.array(u)


_FD_CACHE = {}


def finite_difference_jacobians(u, logits, family, params, h=1e-6):
    """Cached: both hosts' tests ask for the same re-inversions (one worker runs this file)."""
    key = repr(
        (
            np.asarray(u).tolist(),
            np.asarray(logits).tolist(),
            family,
            [np.asarray(p).tolist() for p in params],
            h,
        )
    )
    if key not in _FD_CACHE:
        _FD_CACHE[key] = _finite_difference_jacobians(u, logits, family, params, h)
    return _FD_CACHE[key]


def _finite_difference_jacobians(u, logits, family, params, h=1e-6):
    """d z(u) / d(logits, *params) at fixed u (shape [N, D]) by central differences of
    re-inversions, each of shape [N, D, *param shape], with an estimate of their error: the
    difference from the same central difference with step 2h (the roundoff of the roots, about
    1e-15 |z| / h, dominates far in heavy tails)."""

    def inverse(lg, ps):
        return np.stack([sequential_inverse(row, lg, family, ps) for row in u])

    args = [np.asarray(logits, float)] + [np.asarray(p, float) for p in params]
    out, errors = [], []
    for i, a in enumerate(args):
        jac = {step: np.zeros(np.shape(u) + a.shape) for step in (h, 2 * h)}
        for step, j in jac.items():
            for idx in np.ndindex(a.shape):
                plus = [b.copy() for b in args]
                minus = [b.copy() for b in args]
                plus[i][idx] += step
                minus[i][idx] -= step
                j[(...,) + idx] = (inverse(plus[0], plus[1:]) - inverse(minus[0], minus[1:])) / (
                    2 * step
                )
        out.append(jac[h])
        errors.append(np.abs(jac[h] - jac[2 * h]))
    return out, errors


def assert_matches_finite_differences(ours, fd, errors, rtol):
    for value, ref, err in zip(ours, fd, errors, strict=True):
        ref, err = ref.reshape(value.shape), err.reshape(value.shape)
        tol = rtol * np.abs(ref) + 1e-8 * np.abs(ref).max() + 4 * err
        assert np.all(np.abs(value - ref) <= tol), np.max(np.abs(value - ref) - tol)


# ---- one facade per host --------------------------------------------------------------------


class TorchMixtures:
    name = "torch"

    def __init__(self):
        import pyro.distributions as dist
        import torch

        import pyro_implicit

        self.torch, self.dist, self.lib = torch, dist, pyro_implicit

    def _t(self, x, dtype, grad=False):
        t = self.torch.tensor(np.asarray(x), dtype=getattr(self.torch, dtype))
        return t.requires_grad_(grad)

    def make(self, family, logits, params, multivariate, weights="implicit"):
        if family in TRUNCATED:
            base = getattr(self.dist, TRUNCATED[family])(*params[:2])
            comp = self.lib.TruncatedDistribution(base, low=params[2], high=params[3])
        else:
            comp = getattr(self.lib if family in OWN else self.dist, family)(*params)
        if multivariate:
            comp = comp.to_event(1)
        return self.lib.MixtureSameFamily(
            self.dist.Categorical(logits=logits), comp, weights=weights
        )

    def jacobians(self, family, logits, params, z, multivariate, dtype):
        """dz/d(logits, *params) at the given points z (shape [N] or [N, D])."""
        args = [self._t(logits, dtype, True)] + [self._t(p, dtype, True) for p in params]
        mix = self.make(family, args[0], args[1:], multivariate)
        out = mix._reparameterize(self._t(z, dtype))
        jac = [np.zeros(out.shape + a.shape, dtype=dtype) for a in args]
        for idx in np.ndindex(tuple(out.shape)):
            grads = self.torch.autograd.grad(out[idx], args, retain_graph=True, allow_unused=True)
            for j, g in zip(jac, grads, strict=True):
                j[idx] = 0 if g is None else g.numpy()
        return out.detach().numpy(), jac

    def sample(self, family, logits, params, multivariate, n, seed, dtype):
        self.torch.manual_seed(seed)
        args = [self._t(logits, dtype)] + [self._t(p, dtype) for p in params]
        return self.make(family, args[0], args[1:], multivariate).sample((n,)).numpy()

    def per_draw_grads(self, logits, loc, scale, n, seed, dtype, f, weights="implicit"):
        """Normal components; parameters copied per draw so that each draw has its own
        gradient: returns z and df(z)/d(logits, loc, scale) per draw, [n, *param shape]."""
        self.torch.manual_seed(seed)
        multivariate = np.ndim(loc) == 2
        args = [
            self._t(np.broadcast_to(p, (n, *np.shape(p))), dtype, True)
            for p in (logits, loc, scale)
        ]
        mix = self.make("Normal", args[0], args[1:], multivariate, weights)
        z = mix.rsample()
        value = f(z)
        if weights == "score":  # the surrogate that Trace_ELBO builds from score_parts
            value = value + value.detach() * mix.score_parts(z.detach()).score_function
        grads = self.torch.autograd.grad(value.sum(), args)
        return z.detach().numpy(), [g.numpy() for g in grads]

    def finite(self, family, logits, params, multivariate, n, seed, dtype):
        """All of z and the gradient in (logits, *params) of sum z^2 + sum log q(z) (the
        terms of an ELBO with a mixture guide) finite, and z."""
        self.torch.manual_seed(seed)
        args = [self._t(logits, dtype, True)] + [self._t(p, dtype, True) for p in params]
        mix = self.make(family, args[0], args[1:], multivariate)
        z = mix.rsample((n,))
        grads = self.torch.autograd.grad(z.pow(2).sum() + mix.log_prob(z).sum(), args)
        ok = bool(self.torch.isfinite(z).all()) and all(bool(g.isfinite().all()) for g in grads)
        return ok, z.detach().numpy(), str(z.dtype).replace("torch.", "")


class JaxMixtures:
    name = "jax"

    def __init__(self):
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        import numpyro.distributions as dist

        import numpyro_implicit

        self.jax, self.jnp, self.dist, self.lib = jax, jnp, dist, numpyro_implicit
        self._fns = {}

    def _a(self, x, dtype):
        return self.jnp.asarray(np.asarray(x), dtype=dtype)

    def make(self, family, logits, params, multivariate, weights="implicit"):
        if family in TRUNCATED:
            base = getattr(self.dist, TRUNCATED[family])(*params[:2])
            comp = self.lib.TruncatedDistribution(base, low=params[2], high=params[3])
        elif family == "TruncatedNormal":  # keyword bounds, as upstream's
            comp = self.lib.TruncatedNormal(*params[:2], low=params[2], high=params[3])
        else:
            comp = getattr(self.lib if family in OWN else self.dist, family)(*params)
        if multivariate:
            comp = comp.to_event(1)
        return self.lib.MixtureSameFamily(
            self.dist.Categorical(logits=logits), comp, weights=weights
        )

    def _jitted(self, kind, family, multivariate, build):
        """One compiled function per (kind, family, multivariate), shared by the tests: calls
        with the same shapes and dtypes then reuse its compilation."""
        key = (kind, family, multivariate)
        if key not in self._fns:
            self._fns[key] = self.jax.jit(build())
        return self._fns[key]

    def jacobians(self, family, logits, params, z, multivariate, dtype):
        args = [self._a(logits, dtype)] + [self._a(p, dtype) for p in params]

        def build():
            def f(z, *a):
                return self.make(family, a[0], a[1:], multivariate)._reparameterize(z)

            jacrev = self.jax.jacrev(f, argnums=tuple(range(1, len(args) + 1)))
            return lambda z, *a: (f(z, *a), jacrev(z, *a))

        value, jac = self._jitted("jac", family, multivariate, build)(self._a(z, dtype), *args)
        return np.asarray(value), [np.asarray(j) for j in jac]

    def sample(self, family, logits, params, multivariate, n, seed, dtype):
        args = [self._a(logits, dtype)] + [self._a(p, dtype) for p in params]
        key = self.jax.random.PRNGKey(seed)

        def draw(*a):
            return self.make(family, a[0], a[1:], multivariate).sample(key, (n,))

        return np.asarray(self.jax.jit(draw)(*args))

    def per_draw_grads(self, logits, loc, scale, n, seed, dtype, f, weights="implicit"):
        multivariate = np.ndim(loc) == 2
        args = [self._a(np.broadcast_to(p, (n, *np.shape(p))), dtype) for p in (logits, loc, scale)]
        key = self.jax.random.PRNGKey(seed)
        sg = self.jax.lax.stop_gradient

        def total(*a):
            mix = self.make("Normal", a[0], a[1:], multivariate, weights)
            z = mix.sample(key)
            value = f(z)
            if weights == "score":
                value = value + sg(value) * mix.weight_score(sg(z))
            return value.sum(), z

        grads, z = self.jax.jit(self.jax.grad(total, argnums=(0, 1, 2), has_aux=True))(*args)
        return np.asarray(z), [np.asarray(g) for g in grads]

    def finite(self, family, logits, params, multivariate, n, seed, dtype):
        args = [self._a(logits, dtype)] + [self._a(p, dtype) for p in params]
        key = self.jax.random.PRNGKey(seed)

        def total(*a):
            mix = self.make(family, a[0], a[1:], multivariate)
            z = mix.sample(key, (n,))
            return (z**2).sum() + mix.log_prob(z).sum(), z

        grad = self.jax.grad(total, argnums=tuple(range(len(args))), has_aux=True)
        grads, z = self.jax.jit(grad)(*args)
        jnp = self.jnp
        ok = bool(jnp.isfinite(z).all()) and all(bool(jnp.isfinite(g).all()) for g in grads)
        return ok, np.asarray(z), str(z.dtype)


_cache = {}


@pytest.fixture(params=["torch", "jax"])
def mixtures(request):
    if request.param not in _cache:
        _cache[request.param] = {"torch": TorchMixtures, "jax": JaxMixtures}[request.param]()
    return _cache[request.param]


def supported(mixtures, family, params, multivariate=False):
    """Skip (visibly) where this host's adapter has no differentiable CDF for the family yet."""
    convert = getattr(mixtures, "_t", None) or mixtures._a
    try:
        mixtures.make(
            family,
            convert(np.zeros(len(LOGITS)), "float64"),
            [convert(p, "float64") for p in params],
            multivariate,
        )
    except AttributeError as error:  # the family is not in this host's package (yet)
        pytest.skip(f"{family} not available in the {mixtures.name} adapter: {error}")
    except (TypeError, AssertionError) as error:  # the adapter's or the host's own check
        pytest.skip(f"{family} components not supported by the {mixtures.name} adapter: {error}")


# ---- per-sample gradients against re-inversion ----------------------------------------------

# tails 1e-4 deep: further out (Cauchy: |z| ~ 1e5) the roots themselves, good to 1e-15 |z|, limit
# central differences to ~1e-4 relative
U_POINTS = np.array([1e-4, 0.03, 0.3, 0.5, 0.71, 0.97, 1 - 1e-4])


_FAMILY_MARKS = {"Normal": []}


@pytest.mark.parametrize(
    "family",
    [pytest.param(f, marks=_FAMILY_MARKS.get(f, [pytest.mark.slow])) for f in FAMILIES],
)
def test_univariate_gradients_match_reinversion(mixtures, family):
    params = FAMILIES[family][1]
    supported(mixtures, family, params)
    z = np.array([sequential_inverse(u, LOGITS, family, params)[0] for u in U_POINTS])
    out, jac = mixtures.jacobians(family, LOGITS, params, z, False, "float64")
    assert np.array_equal(out, z)
    fd, errors = finite_difference_jacobians(U_POINTS[:, None], LOGITS, family, params)
    assert_matches_finite_differences(jac, fd, errors, rtol=1e-6)


@pytest.mark.parametrize(
    "family",
    [
        "Normal",
        pytest.param("Laplace", marks=pytest.mark.slow),
        pytest.param("Gamma", marks=pytest.mark.slow),
        # per-dimension bounds that differ between components: draws outside some supports
        pytest.param("TruncatedNormal", marks=pytest.mark.slow),
    ],
)
def test_multivariate_gradients_match_sequential_reinversion(mixtures, family):
    rng = np.random.default_rng(5)
    d = 3
    base = FAMILIES[family][1]
    # per-dimension parameters: the K values of each parameter, perturbed per dimension
    params = [np.asarray(p)[:, None] * (1 + 0.3 * rng.random((3, d))) for p in base]
    supported(mixtures, family, params, multivariate=True)
    u = np.array([[0.2, 0.7, 0.4], [0.93, 0.05, 0.5], [0.6, 0.999, 1e-3]])
    z = np.stack([sequential_inverse(ui, LOGITS, family, params) for ui in u])
    assert np.allclose([sequential_cdf(zi, LOGITS, family, params) for zi in z], u, atol=1e-13)
    _, jac = mixtures.jacobians(family, LOGITS, params, z, True, "float64")
    fd, errors = finite_difference_jacobians(u, LOGITS, family, params)
    assert_matches_finite_differences(jac, fd, errors, rtol=1e-6)


def test_float32_gradients_match_float64(mixtures):
    params = FAMILIES["Normal"][1]
    z = np.array([sequential_inverse(u, LOGITS, "Normal", params)[0] for u in U_POINTS])
    z = z.astype(np.float32).astype(np.float64)  # the same points in both precisions
    _, j32 = mixtures.jacobians("Normal", LOGITS, params, z, False, "float32")
    _, j64 = mixtures.jacobians("Normal", LOGITS, params, z, False, "float64")
    for a, b in zip(j32, j64, strict=True):
        assert a.dtype == np.float32
        assert np.allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_float32_gradients_deep_in_the_tails(mixtures):
    """Conditional CDFs within 1e-6 of 0 and of 1 in float32, where the spacing of floats near 1
    is 6e-8: the differences F_k - S_d must be taken from the end that S_d is near. Measured
    relative errors: 2e-6 (PyTorch) and 1e-5 (JAX); 2% with every difference taken from one end.
    """
    rng = np.random.default_rng(7)
    base = FAMILIES["Normal"][1]
    params = [np.asarray(p)[:, None] * (1 + 0.3 * rng.random((3, 3))) for p in base]
    u = np.array([[1 - 1e-6, 1e-6, 0.4], [0.3, 1 - 1e-6, 1e-6]])
    z = np.stack([sequential_inverse(ui, LOGITS, "Normal", params) for ui in u])
    _, jac = mixtures.jacobians("Normal", LOGITS, params, z.astype(np.float32), True, "float32")
    fd, errors = finite_difference_jacobians(u, LOGITS, "Normal", params)
    assert_matches_finite_differences([j.astype(np.float64) for j in jac], fd, errors, rtol=1e-3)


def test_adapters_agree():
    rng = np.random.default_rng(7)
    params = [rng.normal(size=(3, 3)), 0.5 + rng.random((3, 3))]
    z = rng.normal(size=(3, 3)) * 2  # the shapes of the test above: one compilation in JAX
    results = []
    for name in ("torch", "jax"):
        mixtures = _cache.get(name) or {"torch": TorchMixtures, "jax": JaxMixtures}[name]()
        _cache[name] = mixtures
        results.append(mixtures.jacobians("Normal", LOGITS, params, z, True, "float64")[1])
    for a, b in zip(*results, strict=True):
        assert np.allclose(a, b, rtol=1e-10, atol=1e-12)


# ---- numerics at the edges ------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,multivariate",
    [
        ("float64", False),
        ("float32", True),
        pytest.param("float32", False, marks=pytest.mark.slow),
        pytest.param("float64", True, marks=pytest.mark.slow),
    ],
)
def test_far_components_and_tiny_weights_stay_finite(mixtures, dtype, multivariate):
    """Components 60 standard deviations apart, one of weight 1e-30 (log-weight -69)."""
    logits = [0.0, -69.0, 0.0]
    loc, scale = np.array([-60.0, 0.0, 60.0]), np.array([1.0, 1.0, 0.5])
    if multivariate:
        loc = loc[:, None] + np.arange(6.0)
        scale = np.repeat(scale[:, None], 6, 1)
    ok, z, zdtype = mixtures.finite("Normal", logits, [loc, scale], multivariate, 4000, 0, dtype)
    assert ok and zdtype == dtype
    first = z if not multivariate else z[:, 0]
    assert np.all(np.abs(np.abs(first) - 60) < 10)  # the 1e-30 component is never drawn


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_far_truncated_components_stay_finite(mixtures, dtype):
    """TruncatedNormal components 15 standard deviations apart on [-20, inf): the draws of one
    lie far on the near side of the other's lower bound, where its log-CDF needs the mirrored
    tails (NaN gradients in float32, and in NumPyro in float64, before 2026-11-22)."""
    params = [[0.0, -15.0], [1.0, 1.0], [-20.0, -20.0], [np.inf, np.inf]]
    ok, z, zdtype = mixtures.finite("TruncatedNormal", [0.0, 0.0], params, False, 2000, 0, dtype)
    assert ok and zdtype == dtype
    assert np.any(z < -10) and np.any(z > -5)  # both components drawn


@pytest.mark.parametrize("dtype,low", [("float32", 1e8), ("float64", 1e17)])
def test_components_bounded_far_out_stay_finite(mixtures, dtype, low):
    """A truncated Gamma on [low, inf) beside one near 0: the draws of the latter lie below the
    former's support, where its terms are evaluated at a stand-in inside it. low + 1 rounds to
    low at these magnitudes, where the stand-in was 1 unit inside (NaN gradients in PyTorch
    before 2026-11-22); it is now |low| inside."""
    params = [[2.0, 2.0], [1.0, 10 / low], [0.0, low], [np.inf, np.inf]]
    ok, z, _ = mixtures.finite("TruncatedDistribution", [0.0, 0.0], params, False, 500, 0, dtype)
    assert ok
    assert np.any(z < 10) and np.any(z >= low)  # both components drawn


def test_truncated_normal_far_from_the_draws_stays_finite(mixtures):
    """Float32 TruncatedNormal components on [0.018, inf) with scale 0.004 and on [355.5, inf)
    with scale 264: the second's draws lie up to 1e6 scales into the first's right tail, where
    torch.special.log_ndtr's derivative is 0 or NaN (NaN gradients in PyTorch until
    2026-12-06, found by the fuzz)."""
    params = [[0.0, 0.0], [0.004, 264.0], [0.018, 355.5], [np.inf, np.inf]]
    ok, z, _ = mixtures.finite("TruncatedNormal", [0.0, 0.0], params, False, 4000, 0, "float32")
    assert ok and np.max(z) > 900


def test_components_bounded_at_their_support_end_stay_finite(mixtures):
    """Gamma components truncated to [0, 1] and [0, 20] in two dimensions: draws of the second
    above 1 lie outside the first, whose log-density was then evaluated at its lower bound 0,
    the end of the Gamma's support, with a NaN derivative (PyTorch, before 2026-11-22)."""
    params = [
        [[2.0, 2.0], [5.0, 5.0]],
        [[1.0, 1.0]] * 2,
        [[0.0, 0.0]] * 2,
        [[1.0, 1.0], [20.0, 20.0]],
    ]
    ok, z, _ = mixtures.finite("TruncatedDistribution", [0.0, 0.0], params, True, 64, 0, "float64")
    assert ok and np.any(z > 1)


def test_gumbel_score_overflow_stays_finite(mixtures):
    """A Gumbel component 86.6 scales from a draw into its left tail, in float32: its log-density
    is finite there but its derivative in the value, about e^86.6/scale, overflows (NaN
    gradients in NumPyro before 2026-11-22); its weight is 0 long before."""
    loc, scale = [[86.6 * 0.0768, 0.0], [0.0, 0.0]], [[0.0768, 1.0], [1.0, 1.0]]
    ok, _, _ = mixtures.finite("Gumbel", [-30.0, 0.0], [loc, scale], True, 64, 0, "float32")
    assert ok


def test_gumbel_far_in_its_left_tail_stays_finite(mixtures):
    """Draws of one Gumbel component 100 to 200 scales left of the other, in float32: there
    the other's host log-density is -inf with infinite derivatives, which the host's
    ``log_prob`` multiplied by that component's weight, 0 (NaN gradients of log q(z), an
    ELBO's entropy term, in both hosts before 2026-11-22)."""
    loc, scale = [[0.0, 0.0], [150.0, 150.0]], [[1.0, 1.0], [1.0, 1.0]]
    ok, z, _ = mixtures.finite("Gumbel", [0.0, 0.0], [loc, scale], True, 64, 0, "float32")
    assert ok and np.min(z) < 150 - 100


def test_truncated_gumbel_far_in_its_left_tail_stays_finite(mixtures):
    """A truncated Gumbel component (scale 0.125) 80 to 160 scales right of the draws, in
    float32: its log-density there is about -e^114, -inf in the dtype, and the host's has an
    infinite derivative in the parameters, which the mixture multiplied by the component's
    weight, 0 (NaN gradients in both hosts before 2026-11-22, found by a fuzz)."""
    loc = [[38.62, 38.62], [28.68, 28.68]]
    scale = [[0.1253, 0.1253], [7.07, 7.07]]
    low, high = [[-np.inf] * 2] * 2, [[38.18, 38.18], [60.64, 60.64]]
    params = [loc, scale, low, high]
    ok, z, _ = mixtures.finite("TruncatedGumbel", [-30.0, 28.0], params, True, 64, 0, "float32")
    assert ok and np.min(z) < 38.62 - 80 * 0.1253


def test_far_components_gradients_are_exact(mixtures):
    logits, params = [0.0, -69.0, 0.0], ([-60.0, 0.0, 60.0], [1.0, 1.0, 0.5])
    u = np.array([1e-4, 0.2, 0.3, 0.49, 0.51, 0.8, 1 - 1e-4])
    z = np.array([sequential_inverse(ui, logits, "Normal", params)[0] for ui in u])
    _, jac = mixtures.jacobians("Normal", logits, params, z, False, "float64")
    fd, errors = finite_difference_jacobians(u[:, None], logits, "Normal", params)
    assert all(np.all(np.isfinite(j)) for j in jac)
    assert_matches_finite_differences(jac, fd, errors, rtol=1e-6)


# ---- Monte Carlo unbiasedness ---------------------------------------------------------------


def softmax(x):
    e = np.exp(np.asarray(x) - np.max(x))
    return e / e.sum()


def check_unbiased(grads, exact):
    for g, ref in zip(grads, exact, strict=True):
        mean = g.mean(0)
        se = g.std(0) / np.sqrt(len(g))
        assert np.all(np.abs(mean - ref) <= Z_SCORE * se + 1e-12), (mean, ref, se)


@pytest.mark.parametrize("weights", ["implicit", pytest.param("score", marks=pytest.mark.slow)])
def test_gradient_of_second_moment_is_unbiased(mixtures, weights):
    """E[z^2] = sum_k pi_k (mu_k^2 + s_k^2)."""
    mu, s = np.array([-2.0, 0.5, 3.0]), np.array([0.7, 1.2, 0.5])
    pi = softmax(LOGITS)
    m = mu**2 + s**2
    exact = [pi * (m - pi @ m), 2 * pi * mu, 2 * pi * s]
    _, grads = mixtures.per_draw_grads(
        LOGITS, mu, s, 20_000, 11, "float64", lambda z: z**2, weights
    )
    check_unbiased(grads, exact)


def test_gradient_of_cross_moment_is_unbiased(mixtures):
    """E[z1 z2 + z3^2 z4] = sum_k pi_k (mu1 mu2 + (mu3^2 + s3^2) mu4): it depends on the joint
    law (the components couple the dimensions), not only on the marginals."""
    rng = np.random.default_rng(3)
    mu, s = rng.normal(size=(3, 4)) * 1.5, 0.4 + rng.random((3, 4))
    pi = softmax(LOGITS)
    m = mu[:, 0] * mu[:, 1] + (mu[:, 2] ** 2 + s[:, 2] ** 2) * mu[:, 3]
    g_mu, g_s = np.zeros((3, 4)), np.zeros((3, 4))
    g_mu[:, 0], g_mu[:, 1] = pi * mu[:, 1], pi * mu[:, 0]
    g_mu[:, 2], g_mu[:, 3] = 2 * pi * mu[:, 2] * mu[:, 3], pi * (mu[:, 2] ** 2 + s[:, 2] ** 2)
    g_s[:, 2] = 2 * pi * s[:, 2] * mu[:, 3]
    exact = [pi * (m - pi @ m), g_mu, g_s]

    def f(z):
        return z[..., 0] * z[..., 1] + z[..., 2] ** 2 * z[..., 3]

    _, grads = mixtures.per_draw_grads(LOGITS, mu, s, 20_000, 12, "float64", f)
    check_unbiased(grads, exact)


# ---- goodness of fit ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family",
    [
        "Normal",
        pytest.param("Gamma", marks=pytest.mark.slow),
        pytest.param("StudentT", marks=pytest.mark.slow),
    ],
)
def test_marginals_fit(mixtures, family):
    rng = np.random.default_rng(2)
    d = 3
    params = [np.asarray(p)[:, None] * (1 + 0.3 * rng.random((3, d))) for p in FAMILIES[family][1]]
    supported(mixtures, family, params, multivariate=True)
    z = mixtures.sample(family, LOGITS, params, True, 4000, 1, "float64")
    laws, pi = component_laws(family, params), softmax(LOGITS)
    for dim in range(d):

        def cdf(x, dim=dim):
            return sum(pi[k] * laws(k, dim).cdf(x) for k in range(3))

        assert scipy.stats.kstest(z[:, dim], cdf).pvalue > 1e-4


# ---- second derivatives along the quantile path ---------------------------------------------
# The function params -> S^{-1}(u; params) at fixed u is computed by a scipy re-inversion (no
# derivative) with the implicit gradient attached: its finite differences are the truth.

U_FIXED = np.array([[0.2, 0.7, 0.4], [0.93, 0.05, 0.5]])


def quantile_path(u, logits, *params, family="Normal"):
    return np.stack([sequential_inverse(row, logits, family, params) for row in u])


def test_torch_gradcheck_and_gradgradcheck_on_quantile_path():
    import pyro.distributions as dist
    import torch

    from pyro_implicit import MixtureSameFamily

    rng = np.random.default_rng(4)
    args = [
        torch.tensor(x, requires_grad=True)
        for x in (rng.normal(size=2), 2 * rng.normal(size=(2, 3)), 0.5 + rng.random((2, 3)))
    ]

    def f(logits, loc, scale):
        z = quantile_path(U_FIXED, *(a.detach().numpy() for a in (logits, loc, scale)))
        mix = MixtureSameFamily(
            dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1)
        )
        return mix._reparameterize(torch.tensor(z))

    assert torch.autograd.gradcheck(f, args, atol=1e-6)
    assert torch.autograd.gradgradcheck(f, args, atol=1e-5)


def _quantile_path_point(family):
    """(logits, *params) of a mixture of two ``family`` components in three dimensions, and a
    direction of the same shapes, as numpy arrays."""
    rng = np.random.default_rng(4)
    logits, loc, scale = rng.normal(size=2), 2 * rng.normal(size=(2, 3)), 0.5 + rng.random((2, 3))
    shape = 1.0 + 3 * rng.random((2, 3))
    params = {"Normal": [loc, scale], "StudentT": [shape, loc, scale], "Gamma": [shape, scale]}
    args = [logits, *params[family]]
    return args, [rng.normal(size=a.shape) for a in args]


def _jax_quantile_path(family="Normal"):
    """(f, args, direction): f(logits, *params) is z at U_FIXED, a mixture of ``family``
    components re-inverted by scipy with the implicit gradient attached."""
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist

    from numpyro_implicit import MixtureSameFamily

    jax.config.update("jax_enable_x64", True)
    args, direction = _quantile_path_point(family)
    out = jax.ShapeDtypeStruct(U_FIXED.shape, jnp.float64)

    def f(logits, *params):
        z = jax.pure_callback(
            lambda *a: quantile_path(U_FIXED, *map(np.asarray, a), family=family),
            out,
            *jax.lax.stop_gradient((logits, *params)),
        )
        component = getattr(dist, family)(*params).to_event(1)
        return MixtureSameFamily(dist.Categorical(logits=logits), component)._reparameterize(z)

    return jax.jit(f), [jnp.asarray(a) for a in args], [jnp.asarray(v) for v in direction]


@pytest.mark.slow
def test_jax_check_grads_on_quantile_path():
    from jax.test_util import check_grads

    f, args, _ = _jax_quantile_path()
    check_grads(f, args, order=2, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)


def _jax_hvp(family, forward_over_reverse):
    """A Hessian-vector product of sum z^2, and the gradient as a function of the parameters."""
    import jax
    import jax.numpy as jnp

    f, args, v = _jax_quantile_path(family)
    argnums = tuple(range(len(args)))
    grad = jax.jit(jax.grad(lambda *b: jnp.sum(f(*b) ** 2), argnums=argnums))
    if forward_over_reverse:
        hvp = jax.jit(lambda *a: jax.jvp(grad, a, tuple(v))[1])(*args)
    else:

        def directional(*a):
            return sum(jnp.vdot(g, t) for g, t in zip(grad(*a), v, strict=True))

        hvp = jax.jit(jax.grad(directional, argnums=argnums))(*args)
    return [np.asarray(h) for h in hvp], lambda *a: [np.asarray(g) for g in grad(*a)]


def _torch_hvp(family):
    """As :func:`_jax_hvp`, by a double backward."""
    import pyro.distributions as dist
    import torch

    from pyro_implicit import MixtureSameFamily

    point, direction = _quantile_path_point(family)

    def grad(*a, create_graph=False):
        a = [torch.as_tensor(x).requires_grad_() for x in a]
        logits, *params = a
        z = quantile_path(U_FIXED, *(x.detach().numpy() for x in a), family=family)
        component = getattr(dist, family)(*params).to_event(1)
        mix = MixtureSameFamily(dist.Categorical(logits=logits), component)
        z = mix._reparameterize(torch.tensor(z))
        g = torch.autograd.grad(z.pow(2).sum(), a, create_graph=create_graph)
        return a, g

    a, g = grad(*point, create_graph=True)
    directional = sum((gi * torch.as_tensor(v)).sum() for gi, v in zip(g, direction, strict=True))
    hvp = torch.autograd.grad(directional, a)
    return [h.numpy() for h in hvp], lambda *x: [gi.numpy() for gi in grad(*x)[1]]


def _assert_hvp_matches_differences(hvp, grad, family):
    """The product against central differences of the gradient along the same direction."""
    args, v = _quantile_path_point(family)
    h = 1e-5
    plus = grad(*(a + h * t for a, t in zip(args, v, strict=True)))
    minus = grad(*(a - h * t for a, t in zip(args, v, strict=True)))
    for hv, p, m in zip(hvp, plus, minus, strict=True):
        assert np.allclose(hv, (p - m) / (2 * h), rtol=1e-5, atol=1e-6)


def test_jax_hvp_on_quantile_path():
    """Reverse over reverse, for normal components."""
    _assert_hvp_matches_differences(*_jax_hvp("Normal", forward_over_reverse=False), "Normal")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["StudentT", "Gamma"])
def test_hvp_through_iterative_cdfs(family):
    """The Gamma and Student t CDFs iterate. JAX goes forward through its lax.while_loop
    (forward over reverse, as jax.hessian; reverse mode raises); PyTorch, in a double
    backward, differentiates the iterations recomputed with a graph (it raised until
    2026-11-22). Each against finite differences, and the hosts against each other: PyTorch's
    trigamma errs by up to 5e-10 relative (tests/test_special_bases.py), hence 1e-8."""
    jax_hvp, jax_grad = _jax_hvp(family, forward_over_reverse=True)
    torch_hvp, torch_grad = _torch_hvp(family)
    _assert_hvp_matches_differences(jax_hvp, jax_grad, family)
    _assert_hvp_matches_differences(torch_hvp, torch_grad, family)
    for j, t in zip(jax_hvp, torch_hvp, strict=True):
        assert np.allclose(t, j, rtol=1e-8, atol=1e-12)


# ---- behaviour of the host class --------------------------------------------------------------


def test_host_behaviour_is_kept(mixtures):
    rng = np.random.default_rng(9)
    params = [rng.normal(size=(3, 2)), 0.5 + rng.random((3, 2))]
    convert = getattr(mixtures, "_t", None) or mixtures._a
    logits = convert(LOGITS, "float64")
    mix = mixtures.make("Normal", logits, [convert(p, "float64") for p in params], True)
    host = {"torch": "pyro.distributions", "jax": "numpyro.distributions"}[mixtures.name]
    host_cls = __import__(host, fromlist=["MixtureSameFamily"]).MixtureSameFamily
    assert isinstance(mix, host_cls) and mix.has_rsample
    assert tuple(mix.batch_shape) == () and tuple(mix.event_shape) == (2,)
    x = convert(rng.normal(size=(5, 2)), "float64")
    ref = np.asarray(
        scipy.special.logsumexp(
            np.log(softmax(LOGITS))
            + scipy.stats.norm(params[0], params[1]).logpdf(np.asarray(x)[:, None, :]).sum(-1),
            axis=-1,
        )
    )
    assert np.allclose(np.asarray(mix.log_prob(x)), ref, rtol=1e-12)
    assert np.allclose(np.asarray(mix.mean), softmax(LOGITS) @ params[0], rtol=1e-12)
    expanded = mix.expand((4,))
    assert type(expanded) is type(mix) or isinstance(
        getattr(expanded, "base_dist", None), type(mix)
    )
    with pytest.raises(ValueError, match="weights"):
        mixtures.make("Normal", logits, [convert(p, "float64") for p in params], True, "bad")
    with pytest.raises(TypeError, match="Independent"):
        mixtures.lib.MixtureSameFamily(
            mixtures.dist.Categorical(logits=logits),
            mixtures.dist.MultivariateNormal(
                convert(np.zeros((3, 2)), "float64"), convert(np.eye(2), "float64")
            ),
        )


@pytest.mark.parametrize(
    "case, match",
    [
        ("not categorical", "must be a Categorical"),
        ("not a distribution", "must be a .* Distribution, got float"),
        ("no component axis", r"number of components \(2\), got batch shape \(\)"),
        ("too few components", r"number of components \(2\), got batch shape \(3, 1\)"),
        ("truncated, too few", r"number of components \(2\), got batch shape \(1,\)"),
    ],
)
def test_invalid_arguments_raise_value_errors(mixtures, case, match):
    """Each bad argument is a ValueError naming it in both hosts (NumPyro's own class asserts
    the number of components; both would fail with an IndexError on a scalar component)."""
    convert = getattr(mixtures, "_t", None) or mixtures._a
    dist = mixtures.dist

    def array(value):
        return convert(np.asarray(value, dtype=float), "float64")

    logits = array([0.0, 0.0])
    mixing = dist.Normal(logits, 1.0) if case == "not categorical" else None
    if case == "not a distribution":
        component = 3.0
    elif case == "truncated, too few":  # a valid one-component mixture's truncated components
        params = [array([v]) for v in (0.0, 1.0, -1.0, 1.0)]
        component = mixtures.make("TruncatedNormal", logits[:1], params, False)
        component = component.component_distribution
    else:
        shape = {"no component axis": (), "too few components": (3, 1)}.get(case, (2,))
        component = dist.Normal(array(np.zeros(shape)), 1.0)
    with pytest.raises(ValueError, match=match):
        mixtures.lib.MixtureSameFamily(mixing or dist.Categorical(logits=logits), component)


def test_jax_jit_vmap_and_pytree():
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist

    from numpyro_implicit import MixtureSameFamily

    def draw(logits, loc, key):
        mix = MixtureSameFamily(
            dist.Categorical(logits=logits), dist.Normal(loc, 1.0), weights="score"
        )
        return mix.sample(key, (3,))

    logits, loc = jnp.zeros((4, 2)), jnp.array([[-1.0, 1.0]] * 4)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    z = jax.jit(jax.vmap(draw))(logits, loc, keys)
    assert z.shape == (4, 3)
    g = jax.jit(jax.grad(lambda lg, lc: jnp.sum(jax.vmap(draw)(lg, lc, keys) ** 2), (0, 1)))(
        logits, loc
    )
    assert np.all(np.asarray(g[0]) == 0)  # weights="score": no pathwise gradient for the weights
    assert np.all(np.isfinite(np.asarray(g[1])))
    mix = MixtureSameFamily(
        dist.Categorical(logits=logits[0]), dist.Normal(loc[0], 1.0), weights="score"
    )
    leaves, treedef = jax.tree_util.tree_flatten(mix)
    again = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(again) is MixtureSameFamily and again.weights == "score"


def test_truncated_components_with_different_supports():
    """The support is the hull of the components' supports, and log_prob is the mixture density
    where a value lies outside some of them (scipy), in both hosts."""
    import jax.numpy as jnp
    import numpyro.distributions
    import numpyro.distributions as ndist
    import pyro.distributions as pdist
    import torch

    import numpyro_implicit
    import pyro_implicit

    low, x = np.array([-1.0, 0.0, 1.0]), np.array([-0.5, 0.5, 1.5])
    ref = scipy.special.logsumexp(
        [np.log(1 / 3) + scipy.stats.truncnorm(a, np.inf).logpdf(x) for a in low], axis=0
    )
    mixtures = [
        pyro_implicit.MixtureSameFamily(
            pdist.Categorical(logits=torch.zeros(3, dtype=torch.float64)),
            pyro_implicit.TruncatedNormal(
                torch.zeros(3, dtype=torch.float64), 1.0, low=torch.tensor(low)
            ),
        ),
        numpyro_implicit.MixtureSameFamily(
            ndist.Categorical(logits=jnp.zeros(3)),
            numpyro_implicit.TruncatedNormal(jnp.zeros(3), 1.0, low=jnp.asarray(low, jnp.float32)),
        ),
    ]
    bijections = (torch.distributions.biject_to, numpyro.distributions.transforms.biject_to)
    for mix, to_array, biject_to in zip(
        mixtures, (torch.tensor, jnp.asarray), bijections, strict=True
    ):
        assert float(mix.support.lower_bound) == -1.0
        # one-sided, as the components: an unconstrained parameter maps into it, finitely
        assert np.all(np.isfinite(np.asarray(biject_to(mix.support)(to_array([-5.0, 0.0, 5.0])))))
        assert np.allclose(np.asarray(mix.log_prob(to_array(x))), ref, rtol=1e-6)


@pytest.mark.parametrize("family", ["StudentT", "TruncatedDistribution"])
def test_expanded_components_with_nested_distributions(family):
    """NumPyro: ``.expand`` of a family whose pytree holds a distribution (a StudentT's
    chi-square, a truncation's base) gives the gradients and densities of the same components
    with broadcast parameters; until 2026-12-06 such components raised a TypeError
    (``ExpandedDistribution`` defines no ``cdf``), while the README promised ``.expand``."""
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as ndist

    import numpyro_implicit

    jax.config.update("jax_enable_x64", True)  # as tests/backends.py does
    rng = np.random.default_rng(4)
    logits, loc = rng.normal(size=2), rng.normal(size=2)
    z = np.abs(rng.normal(size=(3, 4))) + 0.6  # inside [0.5, 4] for the truncation

    def component(lc, expanded):
        lc = lc[:, None] if expanded else jnp.broadcast_to(lc[:, None], (2, 4))
        if family == "StudentT":
            law = ndist.StudentT(3.0, lc, 1.5)
        else:
            law = numpyro_implicit.TruncatedDistribution(ndist.Logistic(lc, 0.7), low=0.5, high=4.0)
        return (law.expand([2, 4]) if expanded else law).to_event(1)

    def loss(lg, lc, expanded):
        mix = numpyro_implicit.MixtureSameFamily(
            ndist.Categorical(logits=lg), component(lc, expanded)
        )
        value = mix._reparameterize(jnp.asarray(z))
        return jnp.sum(value**2) + jnp.sum(mix.log_prob(jnp.asarray(z)))

    args = [jnp.asarray(p, jnp.float64) for p in (logits, loc)]
    expanded, broadcast = (jax.grad(loss, argnums=(0, 1))(*args, e) for e in (True, False))
    for g_expanded, g_broadcast in zip(expanded, broadcast, strict=True):
        assert np.all(np.isfinite(g_expanded))
        np.testing.assert_allclose(g_expanded, g_broadcast, rtol=1e-12, atol=1e-14)


def test_expanded_components():
    """Components made with ``.expand`` (NumPyro wraps them in an ``ExpandedDistribution``) give
    the gradients and densities of the same components with broadcast parameters, in both
    hosts, and the hosts agree."""
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as ndist
    import pyro.distributions as pdist
    import torch

    import numpyro_implicit
    import pyro_implicit

    jax.config.update("jax_enable_x64", True)  # as tests/backends.py does
    rng = np.random.default_rng(3)
    logits, loc, scale = rng.normal(size=3), rng.normal(size=3), 0.5 + rng.random(3)
    z = rng.normal(size=(2, 4))  # two draws of a K = 3, D = 4 mixture

    def torch_run(expanded):
        params = [torch.tensor(p, requires_grad=True) for p in (logits, loc, scale)]
        lg, lc, sc = params
        if expanded:
            component = pdist.Normal(lc[:, None], sc[:, None]).expand([3, 4])
        else:
            component = pdist.Normal(lc[:, None].expand(3, 4), sc[:, None].expand(3, 4))
        mix = pyro_implicit.MixtureSameFamily(pdist.Categorical(logits=lg), component.to_event(1))
        value = mix._reparameterize(torch.tensor(z))
        loss = (value**2).sum() + mix.log_prob(torch.tensor(z)).sum()
        return [g.numpy() for g in torch.autograd.grad(loss, params)]

    def jax_run(expanded):
        def loss(lg, lc, sc):
            if expanded:
                component = ndist.Normal(lc[:, None], sc[:, None]).expand([3, 4])
            else:
                component = ndist.Normal(
                    jnp.broadcast_to(lc[:, None], (3, 4)), jnp.broadcast_to(sc[:, None], (3, 4))
                )
            mix = numpyro_implicit.MixtureSameFamily(
                ndist.Categorical(logits=lg), component.to_event(1)
            )
            value = mix._reparameterize(jnp.asarray(z))
            return jnp.sum(value**2) + jnp.sum(mix.log_prob(jnp.asarray(z)))

        args = [jnp.asarray(p, jnp.float64) for p in (logits, loc, scale)]
        return [np.asarray(g) for g in jax.grad(loss, argnums=(0, 1, 2))(*args)]

    results = [run(expanded) for run in (torch_run, jax_run) for expanded in (True, False)]
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert np.allclose(a, b, rtol=1e-10, atol=1e-12)
