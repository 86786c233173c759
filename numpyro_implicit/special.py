r"""Special functions that JAX lacks.

* :func:`log_marcum_q`: the logarithms of :math:`1 - Q_1(a, b)` and :math:`Q_1(a, b)`, where
  :math:`Q_1` is the Marcum Q-function, with closed-form derivatives in :math:`a` and :math:`b`.
  Relative error in float64 against mpmath: about 1e-12 for :math:`a \le 10^3` in both tails,
  1.5e-10 at :math:`a = 10^4` (there the conditioning of the inputs alone is about 1e-12).
* :func:`bessel_ratio`: :math:`I_1(x)/I_0(x)` and its complement, both without cancellation.
* :func:`rice_standard_moments`: mean and variance of :math:`\mathrm{Rice}(a, 1)`.

The Marcum Q-function is computed from the probability that a standard bivariate normal vector
lies in a disc of radius :math:`b` centred at distance :math:`a` from the origin. Integrating the
radial Gaussian mass along the rays from the origin that cross the disc gives, for
:math:`b \le a`, with :math:`\sin\phi = (b/a)\sin t` and
:math:`r_1 = a\cos\phi - b\cos t` the distance to the near side,

.. math::
    1 - Q_1(a, b) = \frac{1}{\pi}\int_0^{\pi/2} e^{-r_1^2/2}
        \left(1 - e^{-2ab\cos\phi\cos t}\right) \frac{b\cos t}{a\cos\phi}\,dt,

an integral of positive terms, evaluated with three Gauss-Legendre panels: on the Gaussian peak
at :math:`t = 0` (width :math:`\sqrt{a/b}/(a-b)`), and on the fall-off (over :math:`\sim a - b`)
and the boundary layer that precede :math:`t = \pi/2`.
For :math:`b > a` the identity
:math:`Q_1(a, b) = e^{-(a^2+b^2)/2} I_0(ab) + 1 - Q_1(b, a)` reduces to the same integral, again
without cancellation, and for :math:`a \le b < 1` the Poisson series
:math:`1 - Q_1 = e^{-(a^2+b^2)/2}\sum_{n\ge1} \frac{(b^2/2)^n}{n!}\sum_{m<n}\frac{(a^2/2)^m}{m!}`
gives the small lower tail.

Every function works in the dtype of its input (float32 stays float32 with x64 enabled).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import i0e, i1e

__all__ = [
    "bessel_ratio",
    "i0e_nonnegative",
    "log1mexp",
    "log_marcum_q",
    "rice_standard_moments",
]

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(32)
_NODES, _WEIGHTS = (_NODES + 1) / 2, _WEIGHTS / 2  # on [0, 1]
_PEAK_WIDTHS = 13.0  # the peak is cut 13 widths out, where it is below exp(-84)
_LAYER_WIDTHS = 5.0
_FALLOFF_WIDTHS = 4.0
_SERIES_TERMS = 20  # the small-b series: (1/2)^20 / 20! < 1e-24
_HALF_PI = math.pi / 2

# 1 - I1(x)/I0(x) ~ sum_k c_k / x^k for x >= 100 (truncation error below 1e-17 there).
_RATIO_ASYMPTOTIC = (
    1 / 2, 1 / 8, 1 / 8, 25 / 128, 13 / 32, 1073 / 1024, 103 / 32, 375733 / 32768,
    23797 / 512, 55384775 / 262144, 2180461 / 2048, 24713030909 / 4194304, 72763141 / 2048,
)  # fmt: skip
_RATIO_ASYMPTOTIC_FROM = 100.0
# Var Rice(a, 1) ~ sum_k d_k / y^k with y = a^2 / 4, for y >= 30 (truncation error < 1e-17).
_VARIANCE_ASYMPTOTIC = (
    1, -1 / 8, -1 / 32, -11 / 512, -51 / 2048, -669 / 16384, -5685 / 65536,
    -475155 / 2097152, -5894595 / 8388608, -169413615 / 67108864, -2768244255 / 268435456,
    -202794141375 / 4294967296, -4115096976375 / 17179869184,
)  # fmt: skip
_VARIANCE_ASYMPTOTIC_FROM = 30.0


def _as_float(*xs):
    """The inputs as arrays of their common floating dtype (float32 stays float32)."""
    dtype = jnp.result_type(*xs, float)
    return tuple(jnp.asarray(x, dtype) for x in xs)


@jax.custom_jvp
def i0e_nonnegative(x):
    r""":math:`I_0^e(x) = e^{-x} I_0(x)` for :math:`x \ge 0`, differentiated from the right at 0.

    ``jax.scipy.special.i0e`` is :math:`e^{-|x|} I_0(x)`, whose derivative at the kink
    :math:`x = 0` it takes as 0 (with :math:`\mathrm{sign}(0) = 0`). The arguments here (``ab``,
    ``z nu / sigma^2``, ``a^2 / 4``) are nonnegative, and the derivative that keeps
    :math:`\log I_0(x) = x + \log I_0^e(x)` smooth at :math:`\nu = 0` is :math:`I_1^e - I_0^e`.
    """
    return i0e(x)


@i0e_nonnegative.defjvp
def i0e_nonnegative_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    y = i0e_nonnegative(x)
    return y, (i1e(x) - y) * x_dot


def _polyval(coeffs, x):
    """sum_k coeffs[k] * x^k by Horner's rule."""
    out = jnp.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * x + c
    return out


def log1mexp(x: jax.Array) -> jax.Array:
    r""":math:`\log(1 - e^x)` for :math:`x \le 0`, accurate on both sides of :math:`-\log 2`."""
    (x,) = _as_float(x)
    near = x > -math.log(2)
    # Each branch sees only inputs where it is finite, so that gradients stay finite.
    x_near = jnp.where(near, x, -1.0)
    x_far = jnp.where(near, -1.0, x)
    return jnp.where(near, jnp.log(-jnp.expm1(x_near)), jnp.log1p(-jnp.exp(x_far)))


def bessel_ratio(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    r""":math:`r = I_1(x)/I_0(x)` and :math:`1 - r` for :math:`x \ge 0`, each to a few roundings:
    the complement by its asymptotic series for large :math:`x`, where :math:`1 - r` would
    cancel."""
    (x,) = _as_float(x)
    large = x >= _RATIO_ASYMPTOTIC_FROM
    # Each branch sees only inputs where it is finite, so that gradients stay finite.
    x_small = jnp.where(large, 0.0, x)
    inv = 1 / jnp.where(large, x, _RATIO_ASYMPTOTIC_FROM)
    direct = i1e(x_small) / i0e(x_small)
    complement = jnp.where(large, inv * _polyval(_RATIO_ASYMPTOTIC, inv), 1 - direct)
    return jnp.where(large, 1 - complement, direct), complement


def rice_standard_moments(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    r"""Mean and variance of :math:`\mathrm{Rice}(a, 1)`.

    :math:`m = \sqrt{\pi/2}\,L_{1/2}(-a^2/2)
    = \sqrt{\pi/2}\,[(1 + 2y) I_0^e(y) + 2y I_1^e(y)]` with :math:`y = a^2/4` and
    exponentially scaled Bessel functions; :math:`v = 2 + a^2 - m^2`, by its asymptotic series
    in :math:`1/y` where the difference would cancel.
    """
    (a,) = _as_float(a)
    y = a * a / 4
    mean = math.sqrt(math.pi / 2) * ((1 + 2 * y) * i0e_nonnegative(y) + 2 * y * i1e(y))
    large = y >= _VARIANCE_ASYMPTOTIC_FROM
    direct = 2 + a * a - mean * mean
    inv = 1 / jnp.where(large, y, _VARIANCE_ASYMPTOTIC_FROM)
    variance = jnp.where(large, _polyval(_VARIANCE_ASYMPTOTIC, inv), direct)
    return mean, variance


def _gauss_panel(a, b, lo, hi):
    """Gauss-Legendre integral over [lo, hi] of the lower-tail integrand without its factors
    exp(-(a-b)^2/2) and b^2; a, b, lo, hi broadcast together."""
    nodes = jnp.asarray(_NODES, dtype=a.dtype)
    weights = jnp.asarray(_WEIGHTS, dtype=a.dtype)
    a, b, lo, hi = (v[..., None] for v in (a, b, lo, hi))
    t = lo + (hi - lo) * nodes
    sin_t, cos_t = jnp.sin(t), jnp.cos(t)
    sin_phi = (b / a) * sin_t
    # cos^2 phi = cos^2 t + (1 - b^2/a^2) sin^2 t: positive even where sin_phi rounds to 1 (t
    # near pi/2 with b close to a), where sqrt((1 - sin_phi)(1 + sin_phi)) would give 0 and a NaN.
    cos_phi = jnp.sqrt(cos_t**2 + ((a - b) / a) * ((a + b) / a) * sin_t**2)
    # excess = r_1 - (a - b), written without cancellation near t = 0
    excess = 2 * b * jnp.sin(t / 2) ** 2 - a * sin_phi**2 / (1 + cos_phi)
    # (b cos t / (a cos phi)) (1 - e^-y) with y = 2ab cos phi cos t equals
    # 2 b^2 cos^2 t (1 - e^-y) / y: b^2 is taken out (the caller adds 2 log b), so that the far
    # lower tail, b -> 0, does not underflow.
    y = 2 * a * b * cos_phi * cos_t
    relative_expm1 = jnp.where(y > 0, -jnp.expm1(-y) / jnp.where(y > 0, y, 1.0), 1.0)
    integrand = jnp.exp(-excess * (excess + 2 * (a - b)) / 2) * 2 * cos_t**2 * relative_expm1
    return ((hi - lo) * jnp.sum(integrand * weights, axis=-1, keepdims=True))[..., 0]


def _log_lower_tail(a, b):
    """log(1 - Q_1(a, b)) for 0 < b <= a."""
    width = jnp.sqrt(a / b) / (a - b)  # of the Gaussian peak at t = 0; inf when a == b
    cut = _PEAK_WIDTHS * width < _HALF_PI
    end = jnp.where(cut, _PEAK_WIDTHS * width, _HALF_PI)
    # Without the cut, two more panels resolve the approach to t = pi/2: there the near-side
    # distance grows like (a - b) / cos t, so the integrand falls off over ~(a - b), and a layer
    # shrinks with the distance of b/a from 1 and with 1/sqrt(ab).
    layer = _LAYER_WIDTHS * (jnp.sqrt((1 - b / a) * (1 + b / a)) + lax.rsqrt(a * b))
    falloff = jnp.maximum(2 * layer, _FALLOFF_WIDTHS * (a - b))
    first = jnp.where(cut, end / 2, end - jnp.minimum(end / 2, falloff))
    second = jnp.where(cut, 3 * end / 4, end - jnp.minimum(end / 4, layer))
    zero = jnp.zeros_like(a)
    total = (
        _gauss_panel(a, b, zero, first)
        + _gauss_panel(a, b, first, second)
        + _gauss_panel(a, b, second, end)
    )
    return -((a - b) ** 2) / 2 + 2 * jnp.log(b) + jnp.log(total / math.pi)


def _log_small_lower_tail(a, b):
    """log(1 - Q_1(a, b)) for a <= b < 1 by the Poisson series."""
    x, lam = b * b / 2, a * a / 2
    lam_term = jnp.ones_like(x)
    lam_sum = jnp.zeros_like(x)
    x_term = jnp.ones_like(x)  # x^(n-1) / n!
    total = jnp.zeros_like(x)
    for n in range(1, _SERIES_TERMS + 1):
        lam_sum = lam_sum + lam_term
        lam_term = lam_term * lam / n
        x_term = x_term / n if n > 1 else x_term
        total = total + x_term * lam_sum
        x_term = x_term * x
    return jnp.log(x) + jnp.log(total) - x - lam


def _log_marcum_q(a, b):
    lower = b < a
    hi, lo = jnp.maximum(a, b), jnp.minimum(a, b)
    positive = lo > 0
    log_lower = jnp.where(
        positive,
        _log_lower_tail(jnp.where(positive, hi, 2.0), jnp.where(positive, lo, 1.0)),
        -jnp.inf,
    )
    # Q_1(a, b) = exp(-(a^2+b^2)/2) I_0(ab) + 1 - Q_1(b, a) for b >= a: both terms positive.
    log_q_upper = jnp.logaddexp(-((b - a) ** 2) / 2 + jnp.log(i0e(a * b)), log_lower)
    small = b < 1
    log_p_small = _log_small_lower_tail(jnp.where(small, a, 0.5), jnp.where(small, b, 0.5))
    log_p = jnp.where(lower, log_lower, jnp.where(small, log_p_small, log1mexp(log_q_upper)))
    log_q = jnp.where(lower, log1mexp(log_lower), log_q_upper)
    return log_p, log_q


@jax.custom_jvp
def _log_marcum_q_ad(a, b):
    return _log_marcum_q(a, b)


@_log_marcum_q_ad.defjvp
def _log_marcum_q_jvp(primals, tangents):
    a, b = primals
    a_dot, b_dot = tangents
    # The outputs through the function itself, so that the rule differentiates again.
    log_p, log_q = _log_marcum_q_ad(a, b)
    # d(1-Q)/db = b exp(-(a^2+b^2)/2) I0(ab) (the density), d(1-Q)/da = -b e^.. I1(ab).
    peak = jnp.log(b) - (b - a) ** 2 / 2
    log_db = peak + jnp.log(i0e_nonnegative(a * b))
    # I1 as a factor, not through log(i1e): its derivative stays finite at a = 0, where
    # I1(ab) = 0, so that second derivatives there are not 0 * inf.
    i1_scaled = i1e(a * b)
    p_dot = -jnp.exp(peak - log_p) * i1_scaled * a_dot + jnp.exp(log_db - log_p) * b_dot
    q_dot = jnp.exp(peak - log_q) * i1_scaled * a_dot - jnp.exp(log_db - log_q) * b_dot
    return (log_p, log_q), (p_dot, q_dot)


def log_marcum_q(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    r"""Return :math:`(\log(1 - Q_1(a, b)), \log Q_1(a, b))` for :math:`a, b \ge 0`.

    :math:`1 - Q_1(a, b)` is the CDF at :math:`b` of :math:`\mathrm{Rice}(a, 1)`, and of the
    non-central chi distribution with two degrees of freedom. Both outputs are accurate in
    their own tail, where the other is :math:`\log 1 = 0`. Differentiable (to any order, by a
    :func:`jax.custom_jvp`) in :math:`a` and :math:`b` through the closed forms
    :math:`\partial_b (1 - Q_1) = b e^{-(a^2+b^2)/2} I_0(ab)` and
    :math:`\partial_a (1 - Q_1) = -b e^{-(a^2+b^2)/2} I_1(ab)`.
    """
    a, b = jnp.broadcast_arrays(*_as_float(a, b))
    return _log_marcum_q_ad(a, b)
