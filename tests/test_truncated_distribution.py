"""Numerical tests of TruncatedDistribution over non-normal bases, written once and run on both
hosts (see backends.py).

Ground truth: scipy.stats (log-CDF, log-survival, density, quantiles), scipy's quadrature for
moments, finite differences of scipy's quantile function at fixed u, and the closed forms
dz/da = q(a)(1 - F_T)/q(z), dz/db = q(b) F_T/q(z) (and, for location-scale families,
dz/dloc = 1 - dz/da - dz/db) evaluated from scipy's log-densities and log-tails.
"""

import numpy as np
import pytest
import scipy.integrate
import scipy.stats as st

from tests.backends import TRUNCATION_BASES, get_backend


# JAX compiles the sampler, the engine's rule and the moments once per base, shape and dtype,
# seconds each on a shared CPU: its runs are marked slow (they still run in CI), except for the
# fast subset at the end of this file; PyTorch runs everything in the fast tier.
@pytest.fixture(params=["torch", pytest.param("jax", marks=pytest.mark.slow)])
def backend(request):
    return get_backend(request.param)


INF = np.inf
N = 1000  # draws per sampling test (one compiled function per family in JAX)
N_RICE = 250  # the Marcum Q-function of Rice's CDF is costly in eager PyTorch

# family -> (parameters, an interval in the bulk)
BULK = {
    "Laplace": ((0.3, 1.5), (-1.0, 2.0)),
    "Cauchy": ((0.3, 1.5), (-1.0, 2.0)),
    "Logistic": ((0.3, 1.5), (-1.0, 2.0)),
    "Gumbel": ((0.3, 1.5), (-1.0, 2.0)),
    "Exponential": ((1.5,), (0.2, 2.0)),
    "Gamma": ((2.5, 1.5), (0.2, 2.0)),
    "LogNormal": ((0.3, 1.5), (0.2, 2.0)),
    "StudentT": ((3.5, 0.3, 1.5), (-1.0, 2.0)),
    "Rice": ((2.0, 1.5), (0.2, 2.0)),
}
# family -> (parameters, intervals far in a tail, one-sided and narrow ones included; an
# interval may carry parameters of its own)
TAILS = {
    "Laplace": ((0.0, 1.0), [(30.0, 31.0), (-INF, -40.0), (0.5, 0.5001)]),
    "Cauchy": ((0.0, 1.0), [(1e6, 1e7), (-INF, -1e5), (2.0, 2.0001)]),
    "Logistic": ((0.0, 1.0), [(-40.0, -39.0), (35.0, INF)]),
    "Gumbel": (
        (0.0, 1.0),
        [
            (-4.0, -3.5),
            (30.0, 31.0),
            (1.0, 1.0001),
            (120.0, INF),  # exp(-x) underflows in float32, where log S is still -x
            (99.0, INF, (100.0, 1.0)),  # a location 100 scales from 0, the masked stand-in's
        ],
    ),
    "Exponential": ((1.5,), [(30.0, 31.0), (1e-9, 2e-9), (40.0, INF)]),
    "Gamma": ((2.5, 1.5), [(40.0, 41.0), (1e-8, 2e-8), (1.0, 1.0001)]),
    "LogNormal": ((0.0, 1.0), [(np.exp(8.0), np.exp(8.5)), (np.exp(-8.5), np.exp(-8.0))]),
    "StudentT": ((3.5, 0.0, 1.0), [(-1e4, -5e3), (200.0, INF), (2.0, 2.0001)]),
    "Rice": (
        (2.0, 1.0),
        # nu/sigma = 1e4: far in a tail float32 gets the Newton slope from a difference of two
        # numbers near 1e8, with no correct digit
        [(7.0, 8.0), (1e-3, 2e-3), (10.0, INF), (1e4, INF, (1e4, 1.0))],
    ),
}
FAMILIES = list(TRUNCATION_BASES)
LOCATION_SCALE = {"Laplace", "Cauchy", "Logistic", "Gumbel", "StudentT"}


def scipy_dist(family, params):
    if family == "Laplace":
        return st.laplace(*params)
    if family == "Cauchy":
        return st.cauchy(*params)
    if family == "Logistic":
        return st.logistic(*params)
    if family == "Gumbel":
        return st.gumbel_r(*params)
    if family == "Exponential":
        return st.expon(scale=1 / params[0])
    if family == "Gamma":
        return st.gamma(params[0], scale=1 / params[1])
    if family == "LogNormal":
        return st.lognorm(params[1], scale=np.exp(params[0]))
    if family == "StudentT":
        return st.t(*params)
    if family == "Rice":
        return _Rice(*params)
    raise KeyError(family)


class _Rice:
    """scipy's Rice law, with its tails from the non-central chi-square (scipy.stats.rice loses
    digits and then underflows in the upper tail: log S(10) is off by 0.24 for nu = 2)."""

    def __init__(self, nu, sigma):
        self.sigma, self.rice = sigma, st.rice(nu / sigma, scale=sigma)
        self.ncx2 = st.ncx2(2, (nu / sigma) ** 2)

    def logcdf(self, x):
        return self.ncx2.logcdf((np.asarray(x) / self.sigma) ** 2)

    def logsf(self, x):
        return self.ncx2.logsf((np.asarray(x) / self.sigma) ** 2)

    def ppf(self, p):
        return self.sigma * np.sqrt(self.ncx2.ppf(p))

    def isf(self, p):
        return self.sigma * np.sqrt(self.ncx2.isf(p))

    def __getattr__(self, name):  # logpdf, pdf, median
        return getattr(self.rice, name)


def _log1mexp(x):
    x = np.minimum(x, 0.0)
    with np.errstate(divide="ignore"):
        return np.where(x > -np.log(2), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def _tails(ref, x):
    """(log F, log S) from scipy, exact at infinite x."""
    x = np.asarray(x, float)
    with np.errstate(divide="ignore"):
        log_f = np.where(x == -INF, -INF, np.where(x == INF, 0.0, ref.logcdf(x)))
        log_s = np.where(x == INF, -INF, np.where(x == -INF, 0.0, ref.logsf(x)))
    return log_f, log_s


def _log_mass(ref, x, y):
    """log(F(y) - F(x)) from the smaller of the two tails."""
    (f1, s1), (f2, s2) = _tails(ref, x), _tails(ref, y)
    use_f = f2 < s1
    with np.errstate(invalid="ignore"):
        return np.where(use_f, f2 + _log1mexp(f1 - f2), s1 + _log1mexp(s2 - s1))


def ref_log_cdf_pair(ref, z, a, b):
    """(log F_T, log(1 - F_T)) of the truncated law, from scipy."""
    log_z = _log_mass(ref, a, b)
    return _log_mass(ref, a, z) - log_z, _log_mass(ref, z, b) - log_z


def ref_bound_grads(ref, z, a, b):
    """dz/da = q(a)(1 - F_T)/q(z) and dz/db = q(b) F_T/q(z) (0 for an infinite bound)."""
    log_ft, log_1mft = ref_log_cdf_pair(ref, z, a, b)
    log_qz = ref.logpdf(z)
    with np.errstate(divide="ignore"):
        da = np.exp(ref.logpdf(a) - log_qz + log_1mft) if np.isfinite(a) else np.zeros_like(z)
        db = np.exp(ref.logpdf(b) - log_qz + log_ft) if np.isfinite(b) else np.zeros_like(z)
    return da, db


def ref_quantile(family, params, a, b, u):
    """F_T^{-1}(u) by scipy, from the smaller tail."""
    ref = scipy_dist(family, params)
    (fa, sa), (fb, sb) = _tails(ref, a), _tails(ref, b)
    left = np.logaddexp(np.log1p(-u) + fa, np.log(u) + fb)
    right = np.logaddexp(np.log1p(-u) + sa, np.log(u) + sb)
    return np.where(left < right, ref.ppf(np.exp(left)), ref.isf(np.exp(right)))


def assert_ks(z, ref, a, b):
    pvalue = st.kstest(z, lambda x: np.exp(ref_log_cdf_pair(ref, x, a, b)[0])).pvalue
    assert pvalue > 1e-3, pvalue


# --- sampling and per-sample gradients --------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_bulk_samples_and_gradients(backend, family):
    """KS fit in the bulk, and per-sample gradients against finite differences of scipy's
    quantile function of the truncated law at fixed u = F_T(z), in every parameter."""
    params, (a, b) = BULK[family]
    ref = scipy_dist(family, params)
    n = N_RICE if family == "Rice" else N
    z, grads = backend.truncated_sample_grads(family, params, a, b, n, seed=0, dtype="float64")
    assert np.all((z >= a) & (z <= b))
    assert_ks(z, ref, a, b)
    z, grads = z[:6], [g[:6] for g in grads]
    u = np.exp(ref_log_cdf_pair(ref, z, a, b)[0])
    assert np.allclose(ref_quantile(family, params, a, b, u), z, rtol=1e-10, atol=1e-12)
    theta = [*params, a, b]
    for i, g in enumerate(grads):
        h = 1e-5 * max(1.0, abs(theta[i]))
        up, down = list(theta), list(theta)
        up[i], down[i] = theta[i] + h, theta[i] - h
        fd = (
            ref_quantile(family, up[:-2], *up[-2:], u)
            - ref_quantile(family, down[:-2], *down[-2:], u)
        ) / (2 * h)
        # scipy's quantiles are root finds good to ~1e-12; central differences with h = 1e-5
        # are then good to ~1e-7 absolute on derivatives of order one.
        assert np.allclose(g, fd, rtol=1e-6, atol=2e-7), (i, g, fd)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("family", FAMILIES)
def test_tail_samples_and_gradients(backend, family, dtype):
    """Far-tail, one-sided and narrow intervals: samples inside, a KS fit, and gradients in the
    bounds (and the location for location-scale bases) against the closed forms."""
    for k, (a, b, *own) in enumerate(TAILS[family][1]):
        params = own[0] if own else TAILS[family][0]
        ref = scipy_dist(family, params)
        n = N_RICE if family == "Rice" else N
        z, grads = backend.truncated_sample_grads(family, params, a, b, n, seed=k, dtype=dtype)
        assert np.all((z >= a) & (z <= b)), (a, b, z.min(), z.max())
        assert all(np.all(np.isfinite(g)) for g in grads)
        z64 = z.astype(float)
        inside = (z64 > a) & (z64 < b)  # float32 samples may round onto a bound
        if dtype == "float64" or b - a > 1e-3 * max(1.0, abs(a)):
            assert_ks(z64, ref, a, b)
        da, db = ref_bound_grads(ref, z64[inside], a, b)
        # Relative error 1e-8 in float64, 2e-3 in float32, plus the rounding of F_T, which is a
        # difference of terms up to `cond` times larger than Z (narrow intervals), amplified by
        # q(bound)/q(z): 64 roundings of the dtype on each side.
        tol = 1e-8 if dtype == "float64" else 2e-3
        eps = np.finfo(dtype).eps
        zi = z64[inside]
        cond = np.exp(np.minimum(*_tails(ref, zi)) - _log_mass(ref, a, b))
        with np.errstate(divide="ignore"):
            ratio_a = np.exp(ref.logpdf(a) - ref.logpdf(zi)) if np.isfinite(a) else 0 * zi
            ratio_b = np.exp(ref.logpdf(b) - ref.logpdf(zi)) if np.isfinite(b) else 0 * zi
        slack_a, slack_b = 64 * eps * cond * ratio_a, 64 * eps * cond * ratio_b
        assert np.all(np.abs(grads[-2][inside] - da) <= tol * np.abs(da) + slack_a)
        assert np.all(np.abs(grads[-1][inside] - db) <= tol * np.abs(db) + slack_b)
        if family in LOCATION_SCALE:
            # 1 - da - db cancels (to 0 exactly for the Laplace's exponential tail): its error
            # is measured against its terms, which are at most 1.
            d_loc = 1 - da - db
            g_loc = grads[TRUNCATION_BASES[family].index("loc")][inside]
            slack = tol * (1 + da + db) + slack_a + slack_b
            assert np.all(np.abs(g_loc - d_loc) <= slack)


EDGES = [
    ("Gamma", (0.05, 1.0), None, 0.5),  # float32 samples reach the subnormal range
    ("Gamma", (3.0, 1.0), None, 1e-20),
    ("Cauchy", (0.0, 1.0), 1e20, None),  # x^2 overflows float32
    ("StudentT", (0.5, 0.0, 1.0), -1e6, -1e3),
    ("StudentT", (30.0, 0.0, 1.0), 10.0, None),
    ("StudentT", (0.66, 0.0, 1.0), 1e20, None),  # t^2 overflows float32
    ("Exponential", (2.0,), None, None),  # no truncation at all
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_no_nan_or_inf_at_the_edges(backend, dtype):
    for family, params, low, high in EDGES:
        z, grads = backend.truncated_sample_grads(
            family,
            params,
            -INF if low is None else low,
            INF if high is None else high,
            N,  # as in the tail tests: JAX reuses their compiled functions
            3,
            dtype,
        )
        assert np.all((z >= (low or -INF)) & (z <= (high or INF))), family
        assert all(np.all(np.isfinite(g)) for g in grads), (family, params)


# --- log_prob, cdf, icdf, moments -------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_log_prob_cdf_icdf_match_scipy(backend, family):
    params, (a, b) = BULK[family]
    ref = scipy_dist(family, params)
    z = np.linspace(a, b, 7)[1:-1]
    outside = np.array([a - 0.1, b + 0.1]) if a > 0.1 else np.array([a - 1.0, b + 1.0])
    u = np.array([1e-12, 0.1, 0.5, 0.9, 1 - 1e-12])
    # outside the support, log_prob is -inf: without validation (torch's would raise instead)
    calls = [("log_prob", z), ("log_prob", outside), ("cdf", z), ("icdf", u)]
    calls += [("log_cdf", z), ("log_sf", z)]
    lp, lp_out, cdf, icdf, log_cdf, log_sf = backend.truncated_methods(
        family, params, a, b, calls, validate_args=False
    )
    log_z = _log_mass(ref, a, b)
    assert np.allclose(lp, ref.logpdf(z) - log_z, rtol=1e-12, atol=1e-12)
    assert np.all(lp_out == -INF)
    ref_log_cdf, ref_log_sf = ref_log_cdf_pair(ref, z, a, b)
    assert np.allclose(cdf, np.exp(ref_log_cdf), rtol=1e-12, atol=1e-14)
    assert np.allclose(icdf, ref_quantile(family, params, a, b, u), rtol=1e-10, atol=1e-12)
    assert np.allclose(log_cdf, ref_log_cdf, rtol=1e-12, atol=1e-14)
    assert np.allclose(log_sf, ref_log_sf, rtol=1e-12, atol=1e-14)


def test_log_cdf_where_the_cdf_underflows(backend):
    """Gumbel(7.33, 0.344) on [-1.4093, -1.4054], 25 scales into its left tail: the mass sits
    within 1e-11 of the upper bound, and F_T in the middle of the interval is exp(-5e8). Its
    log is finite, from log-space differences (a mixture of such components needs it)."""
    params = (7.330894040043431, 0.34406430846501596)
    a, b = -1.4092665343127315, -1.4053929617959182
    ref = scipy_dist("Gumbel", params)
    z = np.array([-1.408, -1.407, -1.406])
    log_cdf, log_sf = backend.truncated_methods(
        "Gumbel", params, a, b, [("log_cdf", z), ("log_sf", z)]
    )
    ref_log_cdf, ref_log_sf = ref_log_cdf_pair(ref, z, a, b)
    assert np.all(ref_log_cdf < -1e8)
    assert np.allclose(log_cdf, ref_log_cdf, rtol=1e-9)
    assert np.all(log_sf == 0.0) and np.all(ref_log_sf == 0.0)


def test_log_cdf_where_both_bounds_underflow(backend):
    """Gumbel(30.12, 0.068) below high = 33.9, at z = -29, 870 scales into the left tail: log F
    underflows to -inf at z and at the missing lower bound alike, and log F_T is -inf (the truth,
    -exp(870), is beyond float64), not the NaN of -inf - (-inf) (before 2026-11-22)."""
    log_cdf, log_sf = backend.truncated_methods(
        "Gumbel", (30.12, 0.068), None, 33.9, [("log_cdf", -29.0), ("log_sf", -29.0)]
    )
    assert log_cdf == -np.inf and log_sf == 0.0


MOMENTS = [("mean", None), ("variance", None)]


def ref_moments(family, params, a, b):
    ref = scipy_dist(family, params)
    mass = np.exp(_log_mass(ref, a, b))
    points = [ref.median()] if a < ref.median() < b else None
    kwargs = dict(points=points, epsabs=1e-14, epsrel=1e-13, limit=200)
    mean = scipy.integrate.quad(lambda x: x * ref.pdf(x), a, b, **kwargs)[0] / mass
    var = scipy.integrate.quad(lambda x: (x - mean) ** 2 * ref.pdf(x), a, b, **kwargs)[0] / mass
    return mean, var


# Brackets of tens to hundreds of orders of magnitude: (family, params, low, high, dtype).
WIDE = [
    ("StudentT", (0.39, 0.0, 1.0), -1.0, 1e50, "float64"),  # no mean: starts from the bracket
    ("StudentT", (0.5, 0.0, 1.0), 1e3, 1e300, "float64"),
    ("StudentT", (0.365, 48.7, 7.29), -INF, 1e30, "float32"),  # t^2 overflows at the bound
    ("StudentT", (2.5, 0.0, 1.0), 1e-3, 1e30, "float32"),  # the mean lies outside
]


@pytest.mark.parametrize("family,params,low,high,dtype", WIDE)
def test_quantiles_on_intervals_of_many_orders_of_magnitude(
    backend, family, params, low, high, dtype
):
    """The quantile solver bisects in sign(x) log(1 + |x|) on wide brackets. Before 2026-11-22
    it bisected in x: its 100 steps took [-1, 1e50] down to 3.9e19 only (every draw of the
    first case), the third case drew -6.3e29 every time, and the fourth was 4.5% off.

    Tolerance: the solver stops when the log of the base's smaller tail p is within
    32 eps (1 + |log p|) of its target, which moves z by that times p/q(z); plus the rounding
    of z and the 1e-12 of scipy's root finds."""
    u = np.array([1e-6, 0.01, 0.3, 0.5, 0.7, 0.99, 1 - 1e-6]).astype(dtype)
    (z,) = backend.truncated_methods(family, params, low, high, [("icdf", u)], dtype)
    ref_z = ref_quantile(family, params, low, high, u.astype(float))
    ref = scipy_dist(family, params)
    log_p = np.minimum(*_tails(ref, ref_z))
    eps = np.finfo(dtype).eps
    slack = 32 * eps * (1 + np.abs(log_p)) * np.exp(log_p - ref.logpdf(ref_z))
    assert np.all(np.abs(z - ref_z) <= slack + (eps + 1e-12) * np.abs(ref_z)), (z, ref_z)


@pytest.mark.parametrize(
    "dtype,low,high",
    [("float32", -19.0, -18.0), ("float32", -12.0, -11.0), ("float64", -30.0, -29.0)],
)
def test_gumbel_quantiles_deep_in_its_left_tail(backend, dtype, low, high):
    """A standard Gumbel on [low, high] 11-30 scales into its left tail, where log F is about
    -e^-z (-6.6e7 at -18): log q and log F agree in every digit float32 holds there, so the
    Newton slope q/F formed from their difference had none, the solver stopped on a step at
    rounding level while 19 ulps short, and until 2026-12-06 every float32 draw on [-19, -18]
    was -18.000036, where the density is e^-2364 of its peak. The slope is now e^-x / scale in
    closed form. Exact quantiles: e^-z = e^-b - log(u + (1 - u) F(a)/F(b)).
    Tolerance: the solver stops within 32 eps |log F| of the target, which moves z by 32 eps
    (the slope of log F is e^-z, about |log F|); plus two units of rounding of z.
    On [-19, -18] in float32 the law is 1.5e-8 wide, under an ulp of 18 (1.9e-6): a draw an ulp
    off its mode has density e^-131 of it, and the gradients there are not finite (the law is
    degenerate at the dtype's resolution; README, known gaps). They are checked on the others."""
    import mpmath as mp

    u = np.array([1e-6, 0.1, 0.5, 0.9, 1 - 1e-6])
    z, grads = backend.truncated_icdf_grads("Gumbel", (0.0, 1.0), low, high, u, dtype)
    with mp.workdps(50):
        a, b = mp.mpf(low), mp.mpf(high)
        ratio = mp.exp(-(mp.exp(-a) - mp.exp(-b)))  # F(a)/F(b)
        ref = np.array([float(-mp.log(mp.exp(-b) - mp.log(v + (1 - v) * ratio))) for v in u])
    eps = np.finfo(dtype).eps
    tolerance = 32 * eps + 2 * np.spacing(np.abs(ref).astype(dtype)).astype(float)
    assert np.all(np.abs(z - ref) <= tolerance), (z, ref)
    if high != -18.0:
        assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize(
    "family", [f if f != "Rice" else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES]
)
def test_mean_variance_and_mean_gradients(backend, family):
    """Moments against scipy's quadrature; the mean's gradient against finite differences."""
    params, (a, b) = BULK[family]
    mean, var = ref_moments(family, params, a, b)
    ours_mean, ours_var, grads = backend.truncated_moments_grads(family, params, a, b)
    assert np.isclose(ours_mean, mean, rtol=1e-11)
    assert np.isclose(ours_var, var, rtol=1e-10)
    theta = [*params, a, b]
    for i, g in enumerate(grads):
        h = 1e-4 * max(1.0, abs(theta[i]))
        up, down = list(theta), list(theta)
        up[i], down[i] = theta[i] + h, theta[i] - h
        fd = (
            ref_moments(family, up[:-2], *up[-2:])[0]
            - ref_moments(family, down[:-2], *down[-2:])[0]
        ) / (2 * h)
        assert np.isclose(g, fd, rtol=1e-7, atol=1e-9), (i, g, fd)


@pytest.mark.parametrize("family", ["Laplace", "Gamma", "StudentT", "Exponential"])
def test_tail_moments(backend, family):
    params, intervals = TAILS[family]
    a, b = intervals[0]
    mean, var = ref_moments(family, params, a, b)
    ours_mean, ours_var = backend.truncated_methods(family, params, a, b, MOMENTS)
    assert np.isclose(ours_mean, mean, rtol=1e-10)
    assert np.isclose(ours_var, var, rtol=1e-7)


def test_infinite_moments_are_honest(backend):
    """A Cauchy with an unbounded tail has no mean or variance; bounded, it has both."""
    m, v = backend.truncated_methods("Cauchy", (0.0, 1.0), 0.0, None, MOMENTS)
    assert m == INF and v == INF
    (m,) = backend.truncated_methods("Cauchy", (0.0, 1.0), None, None, [("mean", None)])
    assert np.isnan(m)
    (m,) = backend.truncated_methods("Cauchy", (0.0, 1.0), None, 0.0, [("mean", None)])
    assert m == -INF
    # Student t with 1 < df <= 2: the mean exists, the variance does not.
    m, v = backend.truncated_methods("StudentT", (1.5, 0.0, 1.0), 0.0, None, MOMENTS)
    ref = st.t(1.5)
    assert np.isclose(m, ref.expect(lambda x: x, lb=0) / 0.5, rtol=1e-6)
    assert v == INF


# --- parity, errors, shapes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "family",
    [f if f == "Laplace" else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES],
)
def test_adapters_agree(family):
    torch_, jax_ = get_backend("torch"), get_backend("jax")
    u = np.array([1e-9, 0.2, 0.5, 0.8, 1 - 1e-9])
    params, (a, b) = BULK[family]
    z = np.linspace(a, b, 6)
    calls = [("log_prob", z), ("cdf", z), ("icdf", u)]
    ours = [bk.truncated_methods(family, params, a, b, calls) for bk in (torch_, jax_)]
    for (method, _), t, j in zip(calls, *ours, strict=True):
        assert np.allclose(t, j, rtol=1e-12, atol=1e-14), (family, method)
    ours = [bk.truncated_icdf_grads(family, params, a, b, u[1:-1]) for bk in (torch_, jax_)]
    assert np.allclose(ours[0][0], ours[1][0], rtol=1e-12)
    for g_torch, g_jax in zip(ours[0][1], ours[1][1], strict=True):
        assert np.allclose(g_torch, g_jax, rtol=1e-10, atol=1e-14), family


def test_unsupported_bases_raise_type_error(backend):
    for base in backend.unsupported_bases():
        with pytest.raises(TypeError, match="TruncatedDistribution: base_dist must be"):
            backend.lib.TruncatedDistribution(base, 0.0, 1.0)
    with pytest.raises(TypeError, match="TruncatedDistribution"):
        backend.lib.TruncatedDistribution("not a distribution", 0.0, 1.0)


@pytest.mark.parametrize(
    "family,params,low,high,match",
    [
        ("Laplace", (0.0, 1.0), 1.0, 1.0, "low < high"),
        ("Laplace", (0.0, 1.0), 2.0, 1.0, "low < high"),
        ("Laplace", (0.0, 1.0), np.nan, 1.0, "low"),
        ("Gamma", (2.0, 1.0), -1.0, 1.0, "low"),
        ("Exponential", (1.0,), None, -1.0, "high"),
    ],
)
def test_invalid_bounds_raise_value_error(backend, family, params, low, high, match):
    with pytest.raises(ValueError, match=match):
        backend.truncated(family, params, low, high, "float64", validate_args=True)


def test_normal_base_gives_truncated_normal(backend):
    if backend.name == "torch":
        import pyro.distributions as dist

        base = dist.Normal(backend.torch.tensor(0.5), backend.torch.tensor(2.0))
    else:
        import numpyro.distributions as dist

        base = dist.Normal(0.5, 2.0)
    d = backend.lib.TruncatedDistribution(base, -1.0, 3.0)
    assert type(d).__name__ == "TruncatedNormal"


def test_shapes_expand_and_support(backend):
    d = backend.truncated("Gamma", (2.5, 1.5), np.array([0.1, 0.5, 1.0]), 3.0, "float64")
    assert tuple(d.batch_shape) == (3,)
    assert d.has_rsample
    if backend.name == "torch":
        z = d.rsample((4,))
        e = d.expand((2, 3))
        ze = e.rsample()
    else:
        key = backend.jax.random.PRNGKey(0)
        z = d.sample(key, (4,))
        e = d.expand((2, 3))
        ze = e.sample(key)
    assert tuple(z.shape) == (4, 3) and tuple(ze.shape) == (2, 3)
    assert np.all(np.asarray(d.support.check(z)))
    lp = np.asarray(e.log_prob(ze))
    assert lp.shape == (2, 3) and np.all(np.isfinite(lp))
    # one-sided: the support runs from the bound to the end of the base's support
    d = backend.truncated("Exponential", (1.0,), None, 2.0, "float32")
    x = np.array([0.5, 2.5, -0.5], np.float32)
    x = backend.torch.tensor(x) if backend.name == "torch" else x
    inside = np.asarray(d.support.check(x))
    assert inside.tolist() == [True, False, False]


# --- Monte Carlo unbiasedness ------------------------------------------------------------------

# The sample mean of per-draw gradients must lie within a few standard errors of the exact
# gradient: 4.5 standard errors, a false alarm of probability 7e-6 per check.
Z_SCORE = 4.5


@pytest.mark.slow
@pytest.mark.parametrize("family", ["Gamma", "StudentT", "Laplace", "Rice"])
def test_monte_carlo_gradients_are_unbiased(backend, family):
    params, (a, b) = BULK[family]
    n = 20_000
    _, grads = backend.truncated_sample_grads(family, params, a, b, n, seed=11, dtype="float64")
    theta = [*params, a, b]
    for i, g in enumerate(grads):
        h = 1e-4 * max(1.0, abs(theta[i]))
        up, down = list(theta), list(theta)
        up[i], down[i] = theta[i] + h, theta[i] - h
        exact = (
            ref_moments(family, up[:-2], *up[-2:])[0]
            - ref_moments(family, down[:-2], *down[-2:])[0]
        ) / (2 * h)
        se = g.std() / np.sqrt(n)
        assert abs(g.mean() - exact) < Z_SCORE * se + 1e-9, (i, g.mean(), exact, se)


# --- the fast JAX subset ------------------------------------------------------------------------


def test_jax_fast_subset():
    """One base through sampling, per-sample gradients and a tail in JAX (all run when slow)."""
    jax_ = get_backend("jax")
    test_bulk_samples_and_gradients(jax_, "Laplace")
    test_tail_samples_and_gradients(jax_, "Laplace", "float64")


@pytest.mark.parametrize("host", ["torch", "jax"])
def test_derivatives_in_the_value_at_the_bounds(host):
    """At z = low and z = high exactly, the derivatives in z of cdf, log_prob, log(1 - F_T) (at
    low) and log F_T (at high) are the one-sided ones from inside the interval, for a
    TruncatedNormal and a truncated Gamma (a clamp by maximum and minimum halved them: a tie
    shares the derivative between its arguments)."""
    low, high = 0.2, 2.0
    laws = {
        "Normal": (st.norm(0.5, 1.5), (0.5, 1.5)),
        "Gamma": (st.gamma(2.5, scale=1 / 1.5), (2.5, 1.5)),
    }
    for family, (ref, params) in laws.items():
        mass = ref.cdf(high) - ref.cdf(low)
        for z, name in [(low, "log_sf"), (high, "log_cdf")]:
            density = ref.pdf(z) / mass
            slope = ref.logpdf(z + 1e-7) - ref.logpdf(z - 1e-7)  # d log q/dz
            expected = {
                "cdf": density,
                "log_prob": slope / 2e-7,
                name: -density if name == "log_sf" else density,
            }
            for method, want in expected.items():
                got = _value_derivative(host, family, params, low, high, method, z)
                assert abs(got - want) <= 1e-6 * abs(want), (family, z, method, got, want)


def _value_derivative(host, family, params, low, high, method, z):
    if host == "torch":
        import pyro.distributions as dist
        import torch

        import pyro_implicit as lib

        base = getattr(dist, family)(*(torch.tensor(p, dtype=torch.float64) for p in params))
        law = lib.TruncatedDistribution(base, low=torch.tensor(low, dtype=torch.float64), high=high)
        value = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        return torch.autograd.grad(getattr(law, method)(value), value)[0].item()
    import jax
    import numpyro.distributions as dist

    import numpyro_implicit as lib

    jax.config.update("jax_enable_x64", True)
    base = getattr(dist, family)(*(jax.numpy.float64(p) for p in params))
    law = lib.TruncatedDistribution(base, low=jax.numpy.float64(low), high=jax.numpy.float64(high))
    return float(jax.grad(lambda v: getattr(law, method)(v))(jax.numpy.float64(z)))
