"""Numerical tests of Rice, written once and run on both hosts (see backends.py).

Ground truth: the mpmath table in reference/ (log-density, CDF, quantiles, moments), mpmath
evaluations of the closed-form derivatives, and finite differences of scipy's quantile function.
"""

import mpmath as mp
import numpy as np
import pytest
import scipy.stats

from tests.reference.rice import load_rice_reference

REF = load_rice_reference()
DTYPES = ["float32", "float64"]


def rel_err(x, ref, floor=0.0):
    return np.abs(x - ref) / np.maximum(np.abs(ref), floor)


def closed_form_grads(z, nu, sigma):
    """dz/dnu = I1(x)/I0(x), dz/dsigma = (z - nu r)/sigma with x = z nu / sigma^2, in mpmath."""
    with mp.workdps(40):
        out = []
        for zi, ni, si in zip(*np.broadcast_arrays(z, nu, sigma), strict=True):
            zi, ni, si = mp.mpf(float(zi)), mp.mpf(float(ni)), mp.mpf(float(si))
            x = zi * ni / si**2
            r = mp.besseli(1, x) / mp.besseli(0, x) if x > 0 else mp.mpf(0)
            out.append((float(r), float((zi - ni * r) / si)))
    return np.array(out).T.reshape((2, *np.shape(z)))


def bessel_ratio(x):
    with mp.workdps(40):
        r = [mp.besseli(1, mp.mpf(float(v))) / mp.besseli(0, mp.mpf(float(v))) for v in x]
        return np.array([float(v) for v in r]), np.array([float(1 - v) for v in r])


@pytest.mark.parametrize("dtype", DTYPES)
def test_bessel_ratio_matches_mpmath(backend, dtype):
    """I1/I0 and its complement across the switches between approximations (20, 40, 100)."""
    x = np.concatenate([np.geomspace(1e-8, 1e4, 400), np.linspace(15.0, 105.0, 400)])
    x = x.astype(dtype)  # compare at the very inputs the backend sees
    make = backend._t if backend.name == "torch" else backend._a
    ratio, complement = backend.lib.special.bessel_ratio(make(x, dtype))
    ref_ratio, ref_complement = bessel_ratio(x)
    # The ratio to a few roundings; the complement 1 - r, where it is formed by subtraction
    # (x < 100 at most), loses a factor r/(1 - r) < 2x, so it gets 200 times the tolerance.
    tol = 1e-14 if dtype == "float64" else 1e-6
    assert np.max(rel_err(np.asarray(ratio), ref_ratio)) < tol
    assert np.max(rel_err(np.asarray(complement), ref_complement)) < 200 * tol


# (nu, sigma): nu/sigma from 0 (Rayleigh) to 1e4, and a tiny scale.
GRAD_CASES = [(0.0, 1.0), (0.5, 1.0), (3.0, 1.0), (2.0, 0.5), (0.1, 1e-3), (100.0, 1.0), (1e4, 1.0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nu,sigma", GRAD_CASES)
def test_sample_gradients_match_closed_form(backend, dtype, nu, sigma):
    z, d_nu, d_sigma = backend.sample_grads(nu, sigma, 64, seed=0, dtype=dtype)
    assert np.all(z > 0) and np.all(np.isfinite(z))
    ref_nu, ref_sigma = closed_form_grads(z, nu, sigma)
    # float64: 1e-10 relative. float32: 1e-4, relative to the derivative's natural scale (the
    # derivative passes through zero, where a pure relative error is meaningless).
    tol, floor = (1e-10, 0.0) if dtype == "float64" else (1e-4, 1.0)
    assert np.all(rel_err(d_nu, ref_nu, floor=max(floor, 1e-300)) < tol)
    assert np.all(rel_err(d_sigma, ref_sigma, floor=max(floor, 1e-300)) < tol)
    if nu == 0:
        assert np.all(d_nu == 0)


@pytest.mark.parametrize("a", [0.5, 1.0, 3.0])
def test_sample_gradients_are_implicit_derivatives_of_quantile(backend, a):
    """dz/dphi at fixed u = F(z) equals the derivative of scipy's quantile function."""
    sigma = 1.3
    nu = a * sigma
    z, d_nu, d_sigma = backend.sample_grads(nu, sigma, 16, seed=1, dtype="float64")
    u = scipy.stats.rice.cdf(z, a, scale=sigma)
    keep = (u > 1e-6) & (u < 1 - 1e-6)

    def quantile(nu_, sigma_):
        return scipy.stats.rice.ppf(u[keep], nu_ / sigma_, scale=sigma_)

    h = 1e-5
    fd_nu = (quantile(nu + h, sigma) - quantile(nu - h, sigma)) / (2 * h)
    fd_sigma = (quantile(nu, sigma + h) - quantile(nu, sigma - h)) / (2 * h)
    # scipy's ppf is a root find good to ~1e-11, so a central difference with h = 1e-5 is good
    # to ~1e-6 absolute; the derivatives are of order one.
    assert np.allclose(d_nu[keep], fd_nu, rtol=0, atol=2e-5)
    assert np.allclose(d_sigma[keep], fd_sigma, rtol=0, atol=2e-5)


@pytest.mark.parametrize("nu,sigma", [(0.0, 1.0), (0.7, 1.0), (3.0, 2.0), (50.0, 1.0)])
def test_second_derivatives_of_sample(backend, nu, sigma):
    """d2z/dnu2 = r'(x) dx/dnu and d2z/dnu dsigma = r'(x) dx/dsigma along the sample path, with
    r = I1/I0, r'(x) = 1 - r/x - r^2 and x = z nu / sigma^2."""
    z, d_nu_nu, d_nu_sigma = backend.sample_second_derivs(nu, sigma, 32, seed=2, dtype="float64")
    dz_nu, dz_sigma = closed_form_grads(z, nu, sigma)
    with mp.workdps(40):
        r_prime = []
        for zi in z:
            x = mp.mpf(float(zi)) * nu / mp.mpf(sigma) ** 2
            if x == 0:
                r_prime.append(0.5)
                continue
            r = mp.besseli(1, x) / mp.besseli(0, x)
            r_prime.append(float(1 - r / x - r * r))
    r_prime = np.array(r_prime)
    ref_nu_nu = r_prime * (z + nu * dz_nu) / sigma**2
    ref_nu_sigma = r_prime * (nu * dz_sigma / sigma**2 - 2 * z * nu / sigma**3)
    assert np.allclose(d_nu_nu, ref_nu_nu, rtol=1e-9, atol=1e-12)
    assert np.allclose(d_nu_sigma, ref_nu_sigma, rtol=1e-9, atol=1e-12)


def test_log_prob_matches_mpmath(backend):
    rows = REF["logpdf"]
    nu, sigma, z, ref = (np.array([r[k] for r in rows]) for k in ("nu", "sigma", "z", "logpdf"))
    ours = backend.rice_method("log_prob", nu, sigma, z, "float64")
    # relative 1e-10, with an absolute floor of 1e-10 where the log-density crosses zero
    assert np.all(rel_err(ours, ref, floor=1.0) < 1e-10)


def test_cdf_and_survival_match_mpmath(backend):
    rows = REF["cdf"]
    a, b = (np.array([r[k] for r in rows]) for k in ("a", "b"))
    log_cdf = backend.rice_method("log_cdf", a, np.ones_like(a), b, "float64")
    log_sf = backend.rice_method("log_sf", a, np.ones_like(a), b, "float64")
    cdf = backend.rice_method("cdf", a, np.ones_like(a), b, "float64")
    ref_log_cdf = np.array([r["logcdf"] for r in rows])
    ref_log_sf = np.array([r["logsf"] for r in rows])
    ref_cdf = np.array([r["cdf"] for r in rows])
    # the criterion: relative error of the CDF at most 1e-9 wherever it exceeds 1e-290
    shown = ref_cdf > 1e-290
    assert np.all(rel_err(cdf[shown], ref_cdf[shown]) < 1e-9)
    # in log space the whole grid, both tails: |log F - log F_ref| is the relative error of F
    assert np.all(np.abs(np.expm1(log_cdf - ref_log_cdf))[np.isfinite(ref_log_cdf)] < 1e-9)
    sf_shown = ref_log_sf > -700
    assert np.all(np.abs(np.expm1(log_sf - ref_log_sf))[sf_shown] < 1e-9)
    # deep upper tail (log S < -700): relative error of log S itself
    assert np.all(rel_err(log_sf[~sf_shown], ref_log_sf[~sf_shown]) < 1e-12)


def test_lower_tail_where_scipy_fails(backend):
    """nu/sigma = 20, z/sigma = 1: the truth is 1.868e-81, scipy's rice.cdf returns 0."""
    (row,) = [r for r in REF["cdf"] if r["a"] == 20 and r["b"] == 1]
    cdf = backend.rice_method("cdf", 20.0, 1.0, 1.0, "float64")
    assert abs(cdf / row["cdf"] - 1) < 1e-9


def test_icdf_matches_mpmath(backend):
    rows = REF["icdf"]
    a, u, b = (np.array([r[k] for r in rows]) for k in ("a", "u", "b"))
    for sigma in (1.0, 0.25):
        ours = backend.rice_method("icdf", a * sigma, np.full_like(a, sigma), u, "float64")
        assert np.all(rel_err(ours, sigma * b) < 1e-10)


def test_icdf_gradients(backend):
    """icdf is differentiable: dz/du = 1/p(z), and dz/dnu, dz/dsigma are the closed forms."""
    nu, sigma = np.array([0.0, 0.8, 3.0, 30.0]), np.array([1.0, 1.0, 0.5, 2.0])
    u = np.array([0.2, 0.5, 0.9, 1e-4])
    z, d_nu, d_sigma, d_u = backend.icdf_grads(nu, sigma, u, "float64")
    ref_nu, ref_sigma = closed_form_grads(z, nu, sigma)
    density = scipy.stats.rice.pdf(z, nu / sigma, scale=sigma)
    assert np.allclose(d_nu, ref_nu, rtol=1e-8, atol=1e-12)
    assert np.allclose(d_sigma, ref_sigma, rtol=1e-8, atol=1e-12)
    assert np.allclose(d_u, 1 / density, rtol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mean_and_variance_match_mpmath(backend, dtype):
    rows = REF["moments"]
    a, mean, var = (np.array([r[k] for r in rows]) for k in ("a", "mean", "variance"))
    for sigma in (1.0, 3.0):
        m, v = backend.moments(a * sigma, np.full_like(a, sigma), dtype)
        tol = 1e-10 if dtype == "float64" else 2e-5
        assert np.all(rel_err(m, sigma * mean) < tol)
        assert np.all(rel_err(v, sigma**2 * var) < tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_nan_or_inf_at_the_edges(backend, dtype):
    nu = np.array([0.0, 0.0, 1e-30, 1.0, 1e4, 1e4, 1e-3])
    sigma = np.array([1.0, 1e-3, 1.0, 1e-3, 1.0, 1e-3, 1e-3])
    z, d_nu, d_sigma = backend.sample_grads(nu, sigma, 256, seed=3, dtype=dtype)
    for x in (z, d_nu, d_sigma):
        assert np.all(np.isfinite(x))
    assert np.all(z > 0)
    lp = backend.rice_method("log_prob", nu, sigma, z, dtype)
    assert np.all(np.isfinite(lp))


# Monte Carlo unbiasedness: the sample mean of per-draw gradients must lie within a few standard
# errors of the exact gradient. 4.5 standard errors: a false alarm has probability 7e-6 per check.
Z_SCORE = 4.5


def exact_mean_grads(nu, sigma):
    """Gradients of E[z] = sigma m(nu/sigma) with m(a) = sqrt(pi/2) L_{1/2}(-a^2/2), by mpmath."""
    with mp.workdps(30):

        def mean(n, s):
            return s * mp.sqrt(mp.pi / 2) * mp.laguerre(0.5, 0, -((n / s) ** 2) / 2)

        return float(mp.diff(lambda n: mean(n, sigma), nu)), float(
            mp.diff(lambda s: mean(nu, s), sigma)
        )


@pytest.mark.slow
@pytest.mark.parametrize("nu,sigma", [(0.5, 1.0), (1.0, 1.0), (3.0, 1.0), (4.0, 0.7)])
def test_monte_carlo_gradients_are_unbiased(backend, nu, sigma):
    n = 200_000
    z, d_nu, d_sigma = backend.sample_grads(nu, sigma, n, seed=4, dtype="float64")
    exact = {
        ("z", "nu"): exact_mean_grads(nu, sigma)[0],
        ("z", "sigma"): exact_mean_grads(nu, sigma)[1],
        ("z2", "nu"): 2 * nu,  # E[z^2] = 2 sigma^2 + nu^2
        ("z2", "sigma"): 4 * sigma,
    }
    per_draw = {
        ("z", "nu"): d_nu,
        ("z", "sigma"): d_sigma,
        ("z2", "nu"): 2 * z * d_nu,
        ("z2", "sigma"): 2 * z * d_sigma,
    }
    for key, g in per_draw.items():
        se = g.std() / np.sqrt(n)
        assert abs(g.mean() - exact[key]) < Z_SCORE * se, key


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nu,sigma", [(0.0, 1.0), (1.0, 2.0), (5.0, 1.0), (300.0, 0.1)])
def test_samples_follow_the_rice_law(backend, dtype, nu, sigma):
    z, _, _ = backend.sample_grads(nu, sigma, 20_000, seed=5, dtype=dtype)
    p = scipy.stats.kstest(z, scipy.stats.rice(nu / sigma, scale=sigma).cdf).pvalue
    assert p > 1e-3


def _log_cdf_by_y_integral(a, b):
    """log P(|(X + a, Y)| <= b) for standard normal X, Y, integrating over y with mpmath: an
    independent route to log(1 - Q_1(a, b)) that stays cheap for large a."""
    with mp.workdps(30):
        a, b = mp.mpf(a), mp.mpf(b)

        def slab(y):
            half = mp.sqrt(b * b - y * y)
            return mp.npdf(y) * (mp.ncdf(half - a) - mp.ncdf(-half - a))

        cuts = [p for p in (0.5, 1, 2, 3, 5, 8, 12, 20) if p < b]
        return float(mp.log(2 * mp.quad(slab, [0, *cuts, min(b, mp.mpf(40))])))


@pytest.mark.parametrize("a", [1e3, 1e4])
def test_cdf_for_large_noncentrality(backend, a):
    # |b - a| from 1e-4 to 1e-2 included: there the quadrature's panel next to t = pi/2 once
    # erred by up to 1e-6 (a = 1e4)
    near = np.array([1e-4, 1e-3, 4e-3, 1e-2, 0.05, 0.5, 3.0])
    b = a + np.concatenate([-near, [0.0], near])
    ours = backend.rice_method("log_cdf", np.full_like(b, a), np.ones_like(b), b, "float64")
    ref = np.array([_log_cdf_by_y_integral(a, bi) for bi in b])
    # documented accuracy: 2e-14 at a = 1e3, 7e-13 at a = 1e4
    assert np.all(rel_err(ours, ref) < 1e-11)


# (a, b - a): far into the upper tail, where log Q_1 is about -(b - a)^2/2, and into the lower
MARCUM_FAR = {
    "float32": [
        (0.0, 40.0),
        (0.5, 40.0),
        (3.0, 300.0),
        (100.0, 40.0),
        (100.0, 1000.0),
        (1e4, 300.0),
        (100.0, -40.0),
        (1e4, -60.0),
    ],
    "float64": [
        (0.0, 1e3),
        (0.5, 40.0),
        (3.0, 300.0),
        (100.0, 1e3),
        (1e4, 1e4),
        (100.0, -60.0),
        (1e4, -300.0),
    ],
}


def marcum_tail_log_derivatives(a, b):
    """(d/da, d/db) of the logarithm of the small tail at b (Q_1(a, b) for b > a, 1 - Q_1(a, b)
    for b < a) at 40 digits, from the density-to-tail ratio written without its common factor
    exp(-(b - a)^2/2): with x = b +- s,
    tail/density = int ((b +- s)/b) exp(-s|b - a| - s^2/2) I0(a(b +- s)) e^(-+as) / I0(ab) ds."""
    with mp.workdps(40):
        a, b = mp.mpf(a), mp.mpf(b)
        sign = 1 if b > a else -1
        i0_ab = mp.besseli(0, a * b)

        def ratio(s):
            x = b + sign * s
            return (
                (x / b)
                * mp.exp(-s * abs(b - a) - s * s / 2 - sign * a * s)
                * (mp.besseli(0, a * x) / i0_ab)
            )

        c = 1 / (abs(b - a) + 1)
        end = mp.inf if sign > 0 else b
        cuts = [p for p in (c, 4 * c, 16 * c, 64 * c) if p < end]
        hazard = 1 / mp.quad(ratio, [0, *cuts, end])  # density / tail
        bessel = mp.besseli(1, a * b) / i0_ab
        return float(sign * hazard * bessel), float(-sign * hazard)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_marcum_q_derivatives_far_in_the_tails(backend, dtype):
    """The derivatives of the small tail's logarithm are ratios of the density to the tail,
    both about exp(-(b - a)^2/2): formed as exp(log density - log tail), they kept only the
    digits of (b - a)^2/2 that its rounding left, 2e-5 relative in float32 at b - a = 40 and
    6e-3 at 1000, before 2026-12-06. With that factor cancelled in closed form, what is left is a
    few roundings of log b, log I0(ab) and the quadrature's logarithm, each amplified by exp:
    8 eps (1 + log(1 + b)) relative (the largest measured, over both hosts, was 1.9 times
    eps (1 + log(1 + b)); before the change, 6e3 in float32 and 1.4e6 in float64)."""
    a, b = (np.array(v) for v in zip(*[(a, a + d) for a, d in MARCUM_FAR[dtype]], strict=True))
    upper = b > a
    ref = np.array([marcum_tail_log_derivatives(ai, bi) for ai, bi in zip(a, b, strict=True)]).T
    eps = np.finfo(dtype).eps
    for output, side in ((1, upper), (0, ~upper)):
        _, grads = backend.special("log_marcum_q", (a, b), dtype, output=output)
        for ours, truth in zip(grads, ref, strict=True):
            tolerance = 8 * eps * (1 + np.log1p(b)) * np.abs(truth) + np.finfo(dtype).tiny
            assert np.all(np.abs(ours - truth)[side] <= tolerance[side]), (output, ours, truth)


@pytest.mark.parametrize("dtype", DTYPES)
def test_far_lower_tail_does_not_underflow(backend, dtype):
    """For b -> 0, 1 - Q_1(a, b) -> (b^2 / 2) exp(-a^2 / 2)."""
    b = np.array([1e-30, 1e-15]) if dtype == "float32" else np.array([1e-200, 1e-100, 1e-30])
    a = np.full_like(b, 3.0)
    ours = backend.rice_method("log_cdf", a, np.ones_like(b), b, dtype)
    ref = 2 * np.log(b) - np.log(2) - a**2 / 2
    assert np.all(rel_err(ours, ref) < (1e-12 if dtype == "float64" else 1e-6))
