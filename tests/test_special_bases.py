"""The special functions behind the Gamma and Student t bases of TruncatedDistribution, against
mpmath, on both hosts: the regularized incomplete gamma functions in log space with their
derivative in the shape, and the Student t CDF with its derivative in the degrees of freedom;
and NumPyro's own log_ndtr (PyTorch's is accurate as it is)."""

import functools

import mpmath as mp
import numpy as np
import pytest

from tests.backends import get_backend

EPS64 = np.finfo(np.float64).eps


# JAX compiles the loops of these functions once per shape and dtype, seconds each on a shared
# CPU: the JAX runs beyond the first are marked slow (they still run in CI).
@pytest.fixture(params=["torch", pytest.param("jax", marks=pytest.mark.slow)])
def backend(request):
    return get_backend(request.param)


def test_jax_log_gammainc_pair_float64_fast():
    test_log_gammainc_pair_matches_mpmath(get_backend("jax"))


GAMMA_A = [1e-3, 0.1, 0.5, 1.0, 2.5, 10.0, 100.0, 1000.0, 1e4]
GAMMA_X = [1e-5, 0.01, 0.3, 1.0, 2.0, 5.0, 50.0, 120.0, 900.0, 1100.0, 9.8e3, 1.02e4]


@functools.cache
def gamma_reference():
    """log P, log Q and d log P/da at 40 digits, each from the tail where it is accurate."""
    rows = []
    with mp.workdps(40):
        for a in GAMMA_A:
            for x in GAMMA_X:
                p = mp.gammainc(a, 0, x, regularized=True)
                q = mp.gammainc(a, x, mp.inf, regularized=True)

                def log_p(s, x=x):
                    return mp.log(mp.gammainc(s, 0, x, regularized=True))

                def q_of(s, x=x):
                    return mp.gammainc(s, x, mp.inf, regularized=True)

                d_log_p = mp.diff(log_p, a) if p < 0.5 else -mp.diff(q_of, a) / p
                dens = mp.exp((a - 1) * mp.log(x) - x - mp.loggamma(a))
                rows.append((a, x, *(float(v) for v in (mp.log(p), mp.log(q), d_log_p, dens / p))))
    return np.array(rows).T


def complement_slack(a, x, log_p, log_q, eps):
    """Relative rounding of P and Q where each is formed as 1 minus the other: eps Q/P for P
    where x >= a + 1 (Q by the continued fraction), eps P/Q for Q where x < a + 1 (P by the
    series); 0 where computed directly. Bounded: the complement is the larger side there, or
    at least ~a E1(x) for small a."""
    series = x < a + 1
    return (
        np.where(series, 0.0, 4 * eps * np.exp(np.where(series, 0.0, log_q - log_p))),
        np.where(series, 4 * eps * np.exp(np.where(series, log_p - log_q, 0.0)), 0.0),
    )


def test_log_gammainc_pair_matches_mpmath(backend):
    a, x, log_p, log_q, d_a, d_x = gamma_reference()
    (ours_p, ours_q), (g_a, g_x) = backend.special("log_gammainc_pair", (a, x))
    # The prefactor x^a e^-x / Gamma(a) carries the rounding of lgamma(a) ~ a log a and of x;
    # the function not computed directly in its region (Q where x < a + 1, P elsewhere) is the
    # complement of the other, with a rounding of eps relative to 1.
    tol = 1e-13 + 8 * EPS64 * (a * np.abs(np.log(a)) + x)
    p_tol, q_tol = complement_slack(a, x, log_p, log_q, EPS64)
    assert np.all(np.abs(np.expm1(ours_p - log_p)) <= tol + p_tol)
    assert np.all(np.abs(np.expm1(ours_q - log_q)) <= tol + q_tol)
    # The criterion for the shape derivative: 1e-10 relative in float64.
    assert np.all(np.abs(g_a - d_a) <= 1e-10 * np.abs(d_a))
    assert np.all(np.abs(g_x - d_x) <= tol * np.abs(d_x) + 1e-300)


def test_log_gammainc_pair_float32(backend):
    a, x, log_p, log_q, d_a, d_x = gamma_reference()
    keep = (a <= 100) & (x <= 120)  # where float32 values and derivatives are representable
    (ours_p, ours_q), (g_a, g_x) = backend.special(
        "log_gammainc_pair", (a[keep], x[keep]), "float32"
    )
    slack = complement_slack(a[keep], x[keep], log_p[keep], log_q[keep], np.finfo("float32").eps)
    for ours, ref, extra in zip((ours_p, ours_q), (log_p[keep], log_q[keep]), slack, strict=True):
        finite = np.isfinite(ours)
        assert np.all(finite | (ref < -80))  # below the float32 range of log(tiny) only
        # 1e-5 of the log (the prefactor's rounding), and the complement's rounding.
        tol = 1e-5 * np.maximum(1, np.abs(ref)) + extra
        assert np.all((np.abs(ours - ref) <= tol)[finite])
    shown = np.isfinite(g_a) & (np.abs(d_a[keep]) < 1e30)
    assert np.mean(shown) > 0.8
    assert np.all(np.abs(g_a - d_a[keep])[shown] <= 1e-3 * np.abs(d_a[keep])[shown] + 1e-6)


# Far in the right tail: log q and log Q are both about -x there
GAMMA_FAR_X = {"float32": (1e3, 1e5, 1e8), "float64": (1e3, 1e8, 1e12, 1e17)}


@functools.cache
def gamma_far_reference(xs):
    """(a, x, d log Q/dx = -q/Q) at 50 digits."""
    rows = []
    with mp.workdps(50):
        for a in (0.5, 2.0, 30.0):
            for x in xs:
                log_q = mp.log(mp.gammainc(a, x, mp.inf, regularized=True))
                log_density = (a - 1) * mp.log(x) - x - mp.loggamma(a)
                rows.append((a, x, float(-mp.exp(log_density - log_q))))
    return np.array(rows).T


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_gammainc_pair_x_derivative_far_right(backend, dtype):
    """d log Q/dx = -q/Q where log q and log Q, each about -x, agree in every digit that the
    dtype holds: their difference was 0, inf or NaN before 2026-11-22 (from x = 1e8 in float32,
    1e17 in float64; 1e-3 off at x = 1e5 in float32). It is now -1/(x h) with h the continued
    fraction, whose logarithm (about -log x) carries a few roundings of its size."""
    a, x, d_x = gamma_far_reference(GAMMA_FAR_X[dtype])
    _, (_, g_x) = backend.special("log_gammainc_pair", (a, x), dtype, output=1)
    eps = np.finfo(dtype).eps
    assert np.all(np.abs(g_x - d_x) <= 4 * eps * (1 + np.log(x)) * np.abs(d_x))


STUDENT_DF = [0.5, 1.0, 2.0, 2.5, 10.0, 100.0]
STUDENT_T = [-1e8, -1e3, -30.0, -5.0, -1.0, -0.1, -1e-6, 0.0, 1e-6, 0.3, 2.0, 40.0, 1e5]


def _student_log_tails(df, t):
    """(log F, log S) of the standard Student t in mpmath."""
    df, t = mp.mpf(df), mp.mpf(t)
    lower = mp.betainc(df / 2, mp.mpf(1) / 2, 0, df / (df + t * t), regularized=True) / 2
    return (mp.log(lower), mp.log(1 - lower)) if t <= 0 else (mp.log(1 - lower), mp.log(lower))


def _student_log_pdf(df, t):
    """The log-density of the standard Student t in mpmath."""
    df, t = mp.mpf(df), mp.mpf(t)
    return (
        mp.loggamma((df + 1) / 2)
        - mp.loggamma(df / 2)
        - mp.log(df * mp.pi) / 2
        - (df + 1) / 2 * mp.log1p(t * t / df)
    )


@functools.cache
def student_reference():
    rows = []
    with mp.workdps(40):
        for df in STUDENT_DF:
            for t in STUDENT_T:
                log_f, log_s = _student_log_tails(df, t)
                if t <= 0:
                    d_df = mp.diff(lambda v, t=t: _student_log_tails(v, t)[0], df)
                else:  # F near 1: from the derivative of the small S
                    d_df = -mp.diff(
                        lambda v, t=t: mp.exp(_student_log_tails(v, t)[1]), df
                    ) / mp.exp(log_f)
                d_t = mp.exp(_student_log_pdf(df, t) - log_f)
                rows.append((df, t, *(float(v) for v in (log_f, log_s, d_df, d_t))))
    return np.array(rows).T


def test_student_t_log_cdf_pair_matches_mpmath(backend):
    df, t, log_f, log_s, d_df, d_t = student_reference()
    (ours_f, ours_s), (g_df, g_t) = backend.special("student_t_log_cdf_pair", (df, t))
    assert np.all(np.abs(np.expm1(ours_f - log_f)) <= 1e-12)
    assert np.all(np.abs(np.expm1(ours_s - log_s)) <= 1e-12)
    # d log F / d df vanishes at t = 0 and is tiny where F is near 1: relative 1e-10, with an
    # absolute floor of 1e-22 (the rounding of log F ~ 1 scaled by the 1e-6 steps near t = 0).
    assert np.all(np.abs(g_df - d_df) <= 1e-10 * np.abs(d_df) + 1e-22)
    assert np.all(np.abs(g_t - d_t) <= 1e-12 * np.abs(d_t) + 1e-300)


def test_student_t_log_cdf_pair_float32(backend):
    df, t, log_f, log_s, d_df, d_t = student_reference()
    # float32 keeps about 7 digits of the O(df log df) terms of the prefactor: df <= 10 here.
    keep = (np.abs(t) <= 1e3) & (df <= 10)
    (ours_f, ours_s), (g_df, g_t) = backend.special(
        "student_t_log_cdf_pair", (df[keep], t[keep]), "float32"
    )
    assert np.all(np.abs(ours_f - log_f[keep]) <= 1e-5 * np.maximum(1, np.abs(log_f[keep])))
    assert np.all(np.abs(ours_s - log_s[keep]) <= 1e-5 * np.maximum(1, np.abs(log_s[keep])))
    assert np.all(np.abs(g_df - d_df[keep]) <= 1e-3 * np.abs(d_df[keep]) + 1e-6)
    assert np.all(np.abs(g_t - d_t[keep]) <= 1e-4 * np.abs(d_t[keep]) + 1e-30)


STUDENT_FAR_T = {
    "float32": (1e4, 1e10, 1e19, 1e20, 1e30, 3e38),
    "float64": (1e10, 1e20, 1e154, 1e160, 1e300),
}


@functools.cache
def student_far_reference(dtype):
    """(df, t, log F, log S, d log F/d df, d log F/dt) at t = -|t| far out, at 40 digits."""
    rows = []
    with mp.workdps(40):
        for df in (0.3, 1.0, 5.0, 30.0):
            for t in STUDENT_FAR_T[dtype]:
                t = -float(np.asarray(t, dtype))  # the value the dtype holds
                log_f = _student_log_tails(df, t)[0]
                log_s = mp.log1p(-mp.exp(log_f))  # 1 - F rounds to 1 at 40 digits
                d_df = mp.diff(lambda v, t=t: _student_log_tails(v, t)[0], df)
                # q/F: mp.diff would need hundreds of digits at these t
                d_t = mp.exp(_student_log_pdf(df, t) - log_f)
                rows.append((df, t, *(float(v) for v in (log_f, log_s, d_df, d_t))))
    return np.array(rows).T


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_student_t_log_cdf_pair_far_out(backend, dtype):
    """Out to the largest finite t of the dtype, where t^2 overflows: the CDF was NaN from
    |t| ~ 1.8e19 in float32 and 1.3e154 in float64 before 2026-11-22. Both tails, and the
    derivatives of the small one (at -|t| and, by symmetry, at +|t|).

    log|t| and log df are rounded to eps relative, eps log|t| absolute, and enter log F and
    the log-density multiplied by df/2 and (df + 1)/2: the derivative in t, the exponential
    of their difference, carries about eps (1 + df)(1 + log|t|) relative error (measured: up
    to 1.05 times that; the test allows 4); log F carries a few roundings of its own size."""
    df, t, log_f, log_s, d_df, d_t = student_far_reference(dtype)
    eps, tiny = np.finfo(dtype).eps, np.finfo(dtype).tiny
    scale = 4 * eps * (1 + df) * (1 + np.log(np.abs(t)))
    # d/dt below the smallest normal number flushes to 0 on XLA's CPU: not compared there.
    normal = np.abs(d_t) > tiny
    for sign, output in ((1, 0), (-1, 1)):  # at +|t| the small tail is S, its slope -q/S
        out, (g_df, g_t) = backend.special("student_t_log_cdf_pair", (df, sign * t), dtype, output)
        small, large = out[output], out[1 - output]
        assert np.all(np.abs(small - log_f) <= 4 * eps * np.maximum(1, np.abs(log_f)))
        # log S = log(1 - F) from F, whose relative error is the absolute one of log F.
        bound = 4 * eps * np.maximum(1, np.abs(log_f)) * np.abs(log_s) + tiny
        assert np.all(np.abs(large - log_s) <= bound)
        assert np.all(np.abs(g_df - d_df) <= scale * np.abs(d_df))
        assert np.all(np.abs(sign * g_t - d_t)[normal] <= (scale * np.abs(d_t))[normal])


@pytest.mark.parametrize("df,t", [(3.0, -2.0), (1.0, 4.0)])
def test_integer_shapes_where_the_fractions_terminate(backend, df, t):
    """At df = 2 (a = 1) the continued fraction terminates while its df-derivative does not."""
    (log_f, _), (g_df, _) = backend.special("student_t_log_cdf_pair", ([2.0], [t]))
    with mp.workdps(40):
        ref = mp.diff(lambda v: _student_log_tails(v, t)[0], 2) if t <= 0 else None
        if ref is None:
            f = mp.exp(_student_log_tails(2, t)[0])
            ref = -mp.diff(lambda v: mp.exp(_student_log_tails(v, t)[1]), 2) / f
    assert abs(g_df[0] - float(ref)) <= 1e-10 * abs(float(ref))


# Points on both methods of each function, at shapes where the fractions terminate while their
# derivatives do not (a = 3 for the gamma fraction, df = 2), and at t = 0, where the Student t
# CDF is set to 1/2 and its second derivatives come from its terms of first order in t.
HESSIAN_POINTS = {
    "log_gammainc_pair": [(2.5, 0.3), (2.5, 7.0), (3.0, 5.0), (0.5, 1e-3), (50.0, 45.0)],
    "student_t_log_cdf_pair": [
        (3.0, 0.0), (3.0, 0.7), (3.0, -2.0), (2.0, -2.0), (0.8, 5.0), (30.0, -0.5), (10.0, 40.0)
    ],
    "log_marcum_q": [(0.3, 0.8), (0.5, 1.5), (2.0, 0.5), (3.0, 2.0), (3.0, 6.0), (20.0, 14.0),
                     (20.0, 27.0)],
}  # fmt: skip
# PyTorch's trigamma (the derivative of torch.digamma) errs by up to 5e-10 relative on CPU
# (measured against mpmath on [0.5, 6]), and the second derivatives in the shape combine it in
# differences such as digamma(a) - digamma(a + b): 1e-8 (measured: up to 2.3e-9). JAX's is
# accurate to rounding (measured: up to 6e-14).
HESSIAN_RTOL = {"torch": 1e-8, "jax": 1e-12}


@functools.cache
def hessian_reference(name, output):
    """The second derivatives of output ``output`` at HESSIAN_POINTS, ``[i][j]`` each an array
    over the points, by mpmath's differentiation at 40 digits."""

    def log_pair(u, v):
        if name == "student_t_log_cdf_pair":
            return _student_log_tails(u, v)
        return tuple(
            mp.log(mp.gammainc(u, lo, hi, regularized=True)) for lo, hi in ((0, v), (v, mp.inf))
        )

    with mp.workdps(40):
        rows = [
            _marcum_log_tail_hessian(mp.mpf(a), mp.mpf(b), output)
            if name == "log_marcum_q"
            else [
                float(mp.diff(lambda u, v: log_pair(u, v)[output], (mp.mpf(a), mp.mpf(b)), order))
                for order in ((2, 0), (1, 1), (0, 2))
            ]
            for a, b in HESSIAN_POINTS[name]
        ]
    aa, ab, bb = np.array(rows).T
    return [[aa, ab], [ab, bb]]


def _marcum_log_tail_hessian(a, b, output):
    """(d2/da2, d2/dadb, d2/db2) of L = log T, T = 1 - Q_1(a, b) (output 0) or Q_1(a, b), in
    closed form around an mpmath quadrature of T (mp.diff of the quadrature agrees to 16 digits,
    at 100 times the cost): with q = b e^-(a^2+b^2)/2 I0(ab), r = I1(ab)/I0(ab), h = q/T and
    s = +1 (output 0) or -1, dL/db = s h and dL/da = -s h r, and r' = 1 - r/x - r^2."""
    density = lambda x: x * mp.exp(-(x * x + a * a) / 2) * mp.besseli(0, a * x)  # noqa: E731
    s = 1 if output == 0 else -1
    tail = mp.quad(density, [0, b]) if s > 0 else mp.quad(density, [b, b + 8, mp.inf])
    h = density(b) / tail
    r = mp.besseli(1, a * b) / mp.besseli(0, a * b)
    bb = s * h * (1 / b - b + a * r) - h * h
    ab = s * h * (b * r - a) + h * h * r
    aa = -s * h * r * (b * r - a) - h * h * r * r - s * h * b * (1 - r / (a * b) - r * r)
    return [float(v) for v in (aa, ab, bb)]


@pytest.mark.parametrize("output", [0, 1])
@pytest.mark.parametrize("name", ["log_gammainc_pair", "student_t_log_cdf_pair", "log_marcum_q"])
def test_second_derivatives_match_mpmath(backend, name, output):
    """PyTorch differentiates the iterations recomputed with a graph (a double backward), JAX
    goes forward through its loops: both converge with the first derivatives. Until 2026-11-22
    PyTorch raised, and both gave d2/dt2 = 0 at t = 0 (the true value there is -4 q(0)^2).
    The Marcum Q-function's come from its closed-form first derivatives, differentiated."""
    args = np.array(HESSIAN_POINTS[name]).T
    ours = backend.special_hessian(name, args, output)
    ref = hessian_reference(name, output)
    for i in range(2):
        for j in range(2):
            error = np.abs(ours[i][j] - ref[i][j])
            assert np.all(error <= HESSIAN_RTOL[backend.name] * np.abs(ref[i][j]) + 1e-20), (i, j)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_log_ndtr_matches_mpmath(backend, dtype):
    """special.log_ndtr and its first two derivatives, on [-80, 30], beside the switches of its
    branches, and far left (to -1e18), against mpmath at 100 digits (log Phi(x) as
    log1p(-Phi(-x)) for x > 0). JAX's own log_ndtr errs by up to 9e-2 relative for 0 < x < 8;
    PyTorch's derivative, exp(log phi - log Phi), was 4.5% off at -1000 in float32, 0.399 or 0
    instead of 1e5 or 1e10 further out and NaN beyond (NaN gradients of truncated normals with a
    bound 1e10 scales out, until 2026-12-06). 100 digits: the curvature -s (x + s) at -1e18
    cancels 36 of them. Tolerances in float64: erfc errs by up to 2e-13
    relative beyond x = 20 (so does -Phi(-x) there), and the first two derivatives are formed
    from values up to 3200 (x^2/2 at -80); in float32, some units of rounding of those."""
    far = [-1e3, -1e5, -1e10, -1e18]
    grid = np.concatenate([np.linspace(-80, 30, 221), [-37.01, -10.01, 1e-3, -1e-3], far])
    x = grid.astype(dtype).astype(float)
    with mp.workdps(100):
        ref = np.array([float(mp.log1p(-mp.ncdf(-t)) if t > 0 else mp.log(mp.ncdf(t))) for t in x])
        slopes = [mp.npdf(t) / mp.ncdf(t) for t in x]
        slope = np.array([float(v) for v in slopes])
        curvature = np.array([float(-v * (t + v)) for t, v in zip(x, slopes, strict=True)])
    value, d1, d2 = backend.special_derivatives("log_ndtr", x, dtype)
    tiny = 1e6 * np.finfo(dtype).tiny  # values below it are all rounding
    rtol = (5e-13, 1e-12, 5e-12) if dtype == "float64" else (1e-5, 1e-5, 5e-5)
    big = np.abs(ref) > tiny
    assert np.all(np.abs(value - ref)[big] <= rtol[0] * np.abs(ref)[big])
    assert np.all(np.abs(value[~big]) <= tiny)
    assert np.all(np.abs(d1 - slope) <= rtol[1] * np.maximum(np.abs(slope), tiny))
    assert np.all(np.abs(d2 - curvature) <= rtol[2] * np.maximum(np.abs(curvature), 1e-3))
