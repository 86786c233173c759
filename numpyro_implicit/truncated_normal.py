"""The truncated normal distribution with implicit reparameterization gradients (JAX / NumPyro).

Everything is computed in the standardized frame :math:`x = (z - \\mu)/\\sigma` on
:math:`[\\alpha, \\beta]`, mirrored per element so that the interval leans right
(:math:`a + b \\ge 0` for the mirrored bounds :math:`[a, b]`). There, only survival functions
:math:`S(x) = \\Phi(-x)` appear, and only through ratios that keep their relative accuracy 40
standard deviations into the tail, in float32 too, where :math:`\\Phi(\\alpha)` and
:math:`\\Phi(\\beta)` both round to 1 and :math:`\\log S` to a number near -800 with no digit
left for a difference: with the log Mills ratio :math:`\\log R(x) = \\log S(x) - \\log\\phi(x)`
(from ``erfcx``, about :math:`-\\log x`),

.. math::
    \\log\\frac{S(x)}{S(a)} = -\\frac{(x - a)(x + a)}{2} + \\log R(x) - \\log R(a).

On moderate intervals (all but far tails and narrow intervals, see ``_MODERATE``), where it is as
accurate, a plain path replaces all this: the draw solves :math:`\\Phi(x) = \\Phi(\\alpha) + uZ`
or :math:`S(x) = S(\\beta) + (1 - u)Z` (sums of positive terms) and its gradient is the closed
form at :math:`F_T(x) = u`, with no special function at all.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random
from jax.scipy.special import erfcx, ndtr, ndtri
from jax.typing import ArrayLike
from numpyro.distributions import Distribution, constraints
from numpyro.distributions.util import promote_shapes, validate_sample
from numpyro.util import is_prng_key, not_jax_tracer

from ._implicit import implicit_reparameterize
from ._validation import ConstraintMessageMixin, check_probability
from .special import log1mexp, log_ndtr

__all__ = ["TruncatedNormal"]

_TAIL_STEPS = 4  # fixed-point steps of the asymptotic tail inverse (good to ~1/x^4)
_TAIL_NEWTON_STEPS = 4  # safeguarded Newton steps after it
_REFINE_BELOW = math.log(0.05)  # Newton steps also for intervals holding p < 5% of their tail
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_HALF_LOG_PI_2 = 0.5 * math.log(math.pi / 2)
# Tail moments: (start, depth) of the continued fraction of the Mills ratio, accurate to
# rounding from there on; below it the direct formula, which loses ~1 digit at 2, 2 at 6.
_CF = {"single": (2.0, 48), "double": (6.0, 24)}
# Intervals holding less than this share of the tail beyond their lower end are narrow: their
# closed-form moments cancel, so Gauss-Legendre quadrature (exact to rounding there) is used.
_NARROW = 0.9
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)
# Below this width a log-ratio of tail functions comes from two-point Gauss-Legendre
# quadrature (error ~ width^5), above it from the difference of logarithms (~ rounding / width).
_NEAR = {"single": 0.2, "double": 4e-3}
_GAUSS2 = 1 / math.sqrt(3)
# erfcx(x/sqrt 2) overflows below -_ERFCX_FLOOR; there S(x) = 1 to rounding.
_ERFCX_FLOOR = {"single": 12.0, "double": 37.0}
_GAP_FROM = {"single": 6.0, "double": 13.0}
# Moderate intervals, where the plain formulas of :func:`_plain_quantile` and
# :func:`_plain_grad` suffice: kappa = max over the finite bounds t of (1 + |t|) phi(t)/Z at most
# this. Their gradients then err by about 6e-4 kappa (float32) and 3e-12 kappa (float64)
# relative to the largest derivative of a draw (measured on grids of intervals; at 0.95 times the
# threshold, tested, 2.6e-4 and 3e-10), within the 2e-3 and 1e-7 the log-space path meets.
_MODERATE = {"single": 1.0, "double": 100.0}


def _precision(x):
    return "double" if jnp.finfo(jnp.result_type(x)).eps < 1e-10 else "single"


def _log_sf(x):
    """log S(x) = log Phi(-x), accurate on both sides of 0; 0 at -inf, -inf at +inf."""
    finite = jnp.isfinite(x)
    # Every function sees only finite inputs, so that gradients stay finite.
    value = log_ndtr(-jnp.where(finite, x, 0.0))
    return jnp.where(finite, value, jnp.where(x > 0, -math.inf, 0.0))


def _log_phi(x):
    finite = jnp.isfinite(x)
    x = jnp.where(finite, x, 0.0)
    return jnp.where(finite, -x * x / 2 - _HALF_LOG_2PI, -math.inf)


def _half_sq_diff(x, a):
    """(x - a)(x + a)/2 = log phi(a) - log phi(x) for finite x and a (0 elsewhere)."""
    finite = jnp.isfinite(x) & jnp.isfinite(a)
    x, a = jnp.where(finite, x, 0.0), jnp.where(finite, a, 0.0)
    return (x - a) * (x + a) / 2


def _scaled_mills(x):
    """R(x)/sqrt(pi/2) = erfcx(x/sqrt 2) for finite x, kept finite: the argument is clamped at
    -_ERFCX_FLOOR, below which erfcx would overflow (and S(x) = 1 to rounding)."""
    return erfcx(jnp.maximum(x, -_ERFCX_FLOOR[_precision(x)]) / math.sqrt(2))


def _mills(x):
    """(log R(x), c(x)) with c = 1/R - x = -(log R)'(x), the mean excess of the tail beyond x,
    from one erfcx and one continued fraction (a compiled graph holds one copy of each):

    * below _GAP_FROM (6, or 13 in double precision), log R = log(sqrt(pi/2) erfcx(x/sqrt 2)),
      no cancellation for any x, and c = 1/R - x directly, losing under log10(x^2) digits;
      below -_ERFCX_FLOOR, where erfcx would overflow, S(x) = 1 to rounding and
      log R = x^2/2 + log sqrt(2 pi);
    * from _GAP_FROM on, c by 10 levels of the continued fraction of 1/R (see
      :func:`_tail_moments`), exact to rounding, and log R = -log(x + c) (JAX's erfcx returns 0
      for some large arguments in both precisions, jax-ml/jax#38607).

    log R is -inf at +inf and +inf at -inf; c is finite everywhere."""
    precision = _precision(x)
    start, floor = _GAP_FROM[precision], _ERFCX_FLOOR[precision]
    finite = jnp.isfinite(x)
    far = finite & (x >= start)
    xn = jnp.where(finite & ~far, x, 0.0)
    scaled_r = _scaled_mills(xn)
    xf = jnp.where(far, x, start)
    c_far = _continued_fraction(xf, 10)[0]
    c = jnp.where(far, c_far, 1 / (math.sqrt(math.pi / 2) * scaled_r) - xn)
    log_r = jnp.where(
        far,
        -jnp.log(xf + c_far),
        jnp.where(xn > -floor, jnp.log(scaled_r) + _HALF_LOG_PI_2, xn * xn / 2 + _HALF_LOG_2PI),
    )
    return jnp.where(finite, log_r, jnp.where(x > 0, -math.inf, math.inf)), c


def _log_mills(x):
    """log R(x) = log S(x) - log phi(x), see :func:`_mills`."""
    return _mills(x)[0]


def _log_mills_ratio(x, a):
    """(log R(x) - log R(a), log R(x)) with the first = log(S(x) phi(a) / (phi(x) S(a))) for
    finite x >= a; -inf at a = -inf. Near x = a, where the difference of two logarithms has no
    digit left, it is -integral_a^x c(t) dt by two-point Gauss-Legendre quadrature."""
    finite = jnp.isfinite(a)
    a = jnp.where(finite, a, x)
    near = x - a < _NEAR[_precision(x)]
    an, xn = jnp.where(near, a, 0.0), jnp.where(near, x, 0.0)
    mid, half = (an + xn) / 2, (xn - an) / 2
    # x, a and both nodes in one call
    points = jnp.broadcast_arrays(x, a, mid - half * _GAUSS2, mid + half * _GAUSS2)
    log_r, gap = _mills(jnp.stack(points))
    gauss = -half * (gap[2] + gap[3])
    direct = log_r[0] - log_r[1]
    return jnp.where(finite, jnp.where(near, gauss, direct), -math.inf), log_r[0]


def _log_ratios(x, a, direct=None):
    """(log S(x)/S(a), log R(x)/R(a), log R(x)) for a <= x (x may be +inf, a -inf). The first
    keeps its accuracy relative to its value through log R for a >= 0 (far right tail) and near
    x = a; elsewhere it is ``direct``, log S(x) - log S(a) (computed if not given)."""
    finite = jnp.isfinite(x)
    xf = jnp.where(finite, x, a + 1)
    log_mills, log_r = _log_mills_ratio(xf, a)
    log_mills = jnp.where(finite, log_mills, -math.inf)
    mills = jnp.where(finite, log_mills - _half_sq_diff(xf, a), -math.inf)
    near = finite & jnp.isfinite(a) & (x - a < _NEAR[_precision(x)])
    direct = _log_sf(x) - _log_sf(a) if direct is None else direct
    log_sf = jnp.where((a >= 0) | near, mills, direct)
    return log_sf, log_mills, jnp.where(finite, log_r, -math.inf)


def _interval_ratios(x, a, b):
    """(log S(x)/S(a), log S(b)/S(x), log R(x)/R(a)) for a <= x <= b: both pairs in one
    evaluation of :func:`_log_ratios` (a compiled graph holds one copy of it), and each log S
    once, in its own shape."""
    sf_x, sf_a, sf_b = _log_sf(x), _log_sf(a), _log_sf(b)
    x, a, b, direct_xa, direct_bx = jnp.broadcast_arrays(x, a, b, sf_x - sf_a, sf_b - sf_x)
    pairs = (jnp.stack([x, b]), jnp.stack([a, x]), jnp.stack([direct_xa, direct_bx]))
    log_sf, log_mills, _ = _log_ratios(*pairs)
    return log_sf[0], log_sf[1], log_mills[0]


def _log_sf_ratio(x, a):
    """log S(x) - log S(a) for a <= x, see :func:`_log_ratios`."""
    return _log_ratios(x, a)[0]


def _log_sf_over_pdf(a, x):
    """log(S(a) / phi(x)) for a <= x, x finite."""
    right = a >= 0
    via_mills = _log_mills(jnp.where(right, a, 0.0)) + _half_sq_diff(x, a)
    return jnp.where(right, via_mills, _log_sf(a) - _log_phi(x))


def _standardize(bound, loc, scale):
    finite = jnp.isfinite(bound)
    return jnp.where(finite, (jnp.where(finite, bound, 0.0) - loc) / scale, bound)


def _clamp(x, lo, hi):
    """x clamped to [lo, hi], with the derivative of x where it equals a bound (that of a
    maximum or minimum is halved at a tie): the one-sided derivative into the interval."""
    return jnp.where(x < lo, lo, jnp.where(x > hi, hi, x))


def _at_most_zero(log_p):
    """A log-ratio of probabilities clamped to at most 0 in value, with its own derivative (a
    clamp would zero it where rounding leaves the value above 0, and JAX's halves it at 0)."""
    return log_p - lax.stop_gradient(jnp.maximum(log_p, 0.0))


def _frame(loc, scale, low, high):
    """Standardized bounds, the mirror flag, the leaning-right bounds [a, b] and
    log(1 - S(b)/S(a)) = log(Z / S(a)), Z being the mass of [a, b]."""
    alpha, beta = _standardize(low, loc, scale), _standardize(high, loc, scale)
    # (-inf, beta) is mirrored, (alpha, inf) and (-inf, inf) (a NaN sum) are not.
    flip = alpha + beta < 0
    a = jnp.where(flip, -beta, alpha)
    b = jnp.where(flip, -alpha, beta)
    return alpha, beta, flip, a, b, log1mexp(jnp.minimum(_log_sf_ratio(b, a), 0.0))


def _check_ordered(owner, low, high):
    """The ValueError of ``TruncatedNormal`` and ``TruncatedDistribution`` unless low < high
    (nothing for traced bounds); call under ``jax.ensure_compile_time_eval``."""
    ordered = jnp.asarray(low) < jnp.asarray(high)
    if not_jax_tracer(ordered) and not np.all(ordered):
        raise ValueError(
            f"{owner} got invalid low, high parameters: expected them to satisfy the "
            f"constraint low < high, but {int(np.sum(~np.asarray(ordered)))} of their values "
            "violate it."
        )


def _finite_part(bound):
    """(the bound where finite, else 0; 0 where finite, else inf): x - the first is finite, and
    subtracting the second from an exponent makes it -inf for a missing bound."""
    finite = jnp.isfinite(bound)
    return jnp.where(finite, bound, 0.0), jnp.where(finite, 0.0, math.inf)


def _plain_probabilities(alpha, beta):
    """(Phi(alpha), S(beta), Z) and, elementwise, whether the interval is moderate (``_MODERATE``).
    The mass Z of [alpha, beta] comes from the side where it is a difference of small numbers."""
    (fa, _), (fb, _) = _finite_part(alpha), _finite_part(beta)
    finite_a, finite_b = jnp.isfinite(alpha), jnp.isfinite(beta)
    cdf_a, sf_a = jnp.where(finite_a, ndtr(fa), 0.0), jnp.where(finite_a, ndtr(-fa), 1.0)
    cdf_b, sf_b = jnp.where(finite_b, ndtr(fb), 1.0), jnp.where(finite_b, ndtr(-fb), 0.0)
    mass = jnp.where(alpha + beta < 0, cdf_b - cdf_a, sf_a - sf_b)
    weight_a = jnp.where(finite_a, (1 + jnp.abs(fa)) * jnp.exp(_log_phi(fa)), 0.0)
    weight_b = jnp.where(finite_b, (1 + jnp.abs(fb)) * jnp.exp(_log_phi(fb)), 0.0)
    # far out in a tail, phi and the mass both underflow to 0: not moderate
    moderate = (jnp.maximum(weight_a, weight_b) <= _MODERATE[_precision(alpha)] * mass) & (mass > 0)
    return (cdf_a, sf_b, mass), moderate


def _plain_quantile(u, alpha, beta, probabilities):
    """Solve F_T(x) = u on a moderate interval: Phi(x) = Phi(alpha) + u Z and
    S(x) = S(beta) + (1 - u) Z are sums of positive terms, and the smaller of the two, inverted,
    gives x to a few units in the last place."""
    cdf_a, sf_b, mass = probabilities
    cdf = cdf_a + u * mass
    sf = sf_b + (1 - u) * mass
    left = cdf < sf
    x = ndtri(jnp.minimum(cdf, sf))
    return jnp.clip(jnp.where(left, x, -x), alpha, beta)


def _plain_grad(x, alpha, beta, u):
    """dx/d(alpha, beta) = (1 - u) exp((x^2 - alpha^2)/2) and u exp((x^2 - beta^2)/2) at
    F_T(x) = u, and 1 - the two: no special function at all, accurate on a moderate interval."""
    (fa, off_a), (fb, off_b) = _finite_part(alpha), _finite_part(beta)
    to_a = (x - fa) * (x + fa) / 2 - off_a
    to_b = (x - fb) * (x + fb) / 2 - off_b
    v = 1 - u
    d_loc = -(v * jnp.expm1(to_a) + u * jnp.expm1(to_b))
    return d_loc, v * jnp.exp(to_a), u * jnp.exp(to_b)


def _log_cdf_pair(log_sf_xa, log_sf_bx, log_p):
    """(log F', log(1 - F')) of the truncated law in the leaning-right frame at x in [a, b], from
    log S(x)/S(a), log S(b)/S(x) and log p (see :func:`_frame_tails` for a form that stays
    accurate left of 0)."""
    log_sf_xa, log_sf_bx = jnp.minimum(log_sf_xa, 0.0), jnp.minimum(log_sf_bx, 0.0)
    return log1mexp(log_sf_xa) - log_p, log_sf_xa + log1mexp(log_sf_bx) - log_p


def _frame_tails(x, a, b, log_p):
    """(log F', log(1 - F'), F', 1 - F') of the truncated law in the leaning-right frame at x in
    [a, b], each relatively accurate, the last two with finite derivatives at the bounds too
    (exp(log F') has none at x = a).

    F' = (1 - S(x)/S(a))/p. Left of 0, S(x)/S(a) is near 1, and log S(x)/S(a) rounds to 0 once
    Phi(x) is below the resolution of log S (x < -14 in float32, -38 in float64; F_T 15
    standard deviations into the far side of [-20, inf) is exp(-116)). There
    1 - S(x)/S(a) = (Phi(x)/S(a)) (1 - Phi(a)/Phi(x)), from the ratio of the mirrored tails,
    and 1 - F' >= 1/2 (as a + b >= 0). One evaluation of :func:`_log_sf` and one of
    :func:`_log_ratios` serve all (a compiled graph holds one copy of each)."""
    left = x < 0
    xl, al = jnp.where(left, x, -1.0), jnp.where(left, a, -2.0)  # finite gradients elsewhere
    x, a, b, xl, al = jnp.broadcast_arrays(x, a, b, xl, al)
    sf_x, sf_a, sf_b, cdf_x, cdf_a = _log_sf(jnp.stack([x, a, b, -xl, -al]))
    # the first pair is mirrored where left: log Phi(a)/Phi(x) there, log S(x)/S(a) elsewhere
    first = jnp.where(left, -al, x), jnp.where(left, -xl, a)
    direct = jnp.where(left, cdf_a - cdf_x, sf_x - sf_a), sf_b - sf_x
    pairs = (jnp.stack([first[0], b]), jnp.stack([first[1], x]), jnp.stack(direct))
    ratio, log_sf_bx = _at_most_zero(_log_ratios(*pairs)[0])
    # 1 - S(x)/S(a) = exp(lead) (1 - exp(ratio)), lead = log(Phi(x)/S(a)) where left (a = al)
    lead = jnp.where(left, cdf_x - sf_a, 0.0)
    head = jnp.exp(lead) * -jnp.expm1(ratio)
    # at the bounds, -inf with a zero derivative rather than an infinite one
    at_a, at_b = x <= a, x >= b
    log_cdf = jnp.where(at_a, -jnp.inf, lead + log1mexp(jnp.where(at_a, -1.0, ratio)) - log_p)
    log_sf_xa = jnp.where(left, jnp.log1p(-jnp.where(left, head, 0.0)), ratio)
    log_sf = log_sf_xa + log1mexp(jnp.where(at_b, -1.0, log_sf_bx)) - log_p
    log_sf = jnp.where(at_b, -jnp.inf, log_sf)
    cdf = head * jnp.exp(-log_p)
    sf = jnp.where(left, 1 - cdf, jnp.exp(ratio - log_p) * -jnp.expm1(log_sf_bx))
    return log_cdf, log_sf, cdf, sf


def _refine(x, normal, target, y, a, b):
    """Where exp(target) underflows, the inverse of x^2/2 + log x + log sqrt(2 pi) = -target
    (good to ~1/x^4) instead of x; then safeguarded Newton steps on log S(x)/S(a) = y for every
    element, which resolve a narrow interval to rounding relative to its width."""
    # Bracket: S(x) < exp(-x^2/2)/2 for x > 0, Phi(x) < exp(-x^2/2)/2 for x < 0.
    hi = jnp.minimum(b, jnp.sqrt(jnp.maximum(-2 * target, 0.0)) + 1)
    lo = jnp.maximum(a, -jnp.sqrt(jnp.maximum(-2 * log1mexp(target), 0.0)) - 1)
    hi = jnp.maximum(hi, lo)
    tail = jnp.sqrt(-2 * jnp.where(normal, -1.0, target))
    for _ in range(_TAIL_STEPS):
        tail = jnp.sqrt(jnp.maximum(2 * (-target - jnp.log(tail) - _HALF_LOG_2PI), 1.0))
    x = jnp.minimum(jnp.maximum(jnp.where(normal, x, tail), lo), hi)

    def newton_step(lo, hi, x):
        log_sf, _, log_r = _log_ratios(x, a)
        g = log_sf - y  # decreasing and concave in x, with slope -1/R(x)
        lo = jnp.where(g > 0, x, lo)
        hi = jnp.where(g > 0, hi, x)
        newton = x + jnp.where(g == 0, 0.0, g * jnp.exp(log_r))
        return lo, hi, jnp.where(jnp.isfinite(newton), jnp.clip(newton, lo, hi), (lo + hi) / 2)

    _, _, x = lax.fori_loop(0, _TAIL_NEWTON_STEPS, lambda _, s: newton_step(*s), (lo, hi, x))
    return x


def _standard_quantile(u, flip, a, b, log_p):
    """Solve F_T(x) = u in the standardized original frame (no gradient).

    In the leaning-right frame (u' = 1 - u when mirrored) the root solves
    :math:`\\log S(x)/S(a) = y = \\log(1 - u' p)`, with :math:`p = 1 - S(b)/S(a)`: Newton steps
    on this relative form resolve intervals 1e-4 wide 40 standard deviations out."""
    finfo = jnp.finfo(jnp.result_type(a))
    u_safe = jnp.clip(u, finfo.tiny, 1 - finfo.eps / 2)
    log_u, log_1mu = jnp.log(u_safe), jnp.log1p(-u_safe)
    log_v, log_1mv = jnp.where(flip, log_1mu, log_u), jnp.where(flip, log_u, log_1mu)
    vp = jnp.exp(log_v + log_p)
    # log(1 - u' p) directly where that is accurate, else as log((1 - u') + u' S(b)/S(a)),
    # with log S(b)/S(a) = log(1 - p) from log p rather than computed a second time
    y = jnp.where(
        vp < 0.5,
        jnp.log1p(-jnp.where(vp < 0.5, vp, 0.0)),
        jnp.logaddexp(log_1mv, log_v + log1mexp(log_p)),
    )
    y = jnp.minimum(y, 0.0)
    target = _log_sf(a) + y  # log S(x)
    # The normal quantile where exp(target) is a normal number: Phi(x) = 1 - e^target for x < 0,
    # S(x) = e^target for x > 0, one ndtri of whichever is below 1/2. It is good to about a unit
    # in the last place of x already (an error eps |target| in the target moves x by
    # eps |target| R(x) < eps |x|), but not to a unit in the last place of the width of an
    # interval holding a small share p of the tail beyond it. Farther out and on such intervals,
    # the asymptotic inverse and Newton steps, taken only when some element needs them.
    normal = target > math.log(finfo.tiny)
    left = target > -math.log(2)
    t = jnp.where(normal, target, -1.0)
    x = ndtri(jnp.where(left, -jnp.expm1(t), jnp.exp(t)))
    x = jnp.where(left, x, -x)
    x = lax.cond(
        jnp.any(~normal | (log_p < _REFINE_BELOW)),
        lambda x: _refine(x, normal, target, y, a, b),
        lambda x: x,
        x,
    )
    x = jnp.minimum(jnp.maximum(x, a), b)
    x = jnp.where(flip, -x, x)
    alpha, beta = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    x = jnp.where(u <= 0, alpha, x)
    return jnp.where(u >= 1, beta, x)


def _dx_dbounds(x, flip, a, b, log_p):
    """log dx/dalpha, log dx/dbeta (original standardized frame) and 1 - dx/dalpha - dx/dbeta."""
    xr = _clamp(jnp.where(flip, -x, x), a, b)
    # dx/da = phi(a)/phi(x) (1 - F') = [R(x)/R(a)] (1 - S(b)/S(x)) / p: the ratio of Mills
    # ratios, never exp((x^2 - a^2)/2) times a tail probability that float32 cannot hold.
    log_sf_xa, log_sf_bx, log_mills_xa = _interval_ratios(xr, a, b)
    log_cdf, log_sf = _log_cdf_pair(log_sf_xa, log_sf_bx, log_p)
    log_da = log_mills_xa + log1mexp(jnp.minimum(log_sf_bx, 0.0)) - log_p
    log_db = jnp.where(jnp.isfinite(b), -_half_sq_diff(b, xr) + log_cdf, -math.inf)
    da, db = jnp.exp(log_da), jnp.exp(log_db)
    # 1 - da - db (the same in both frames), without cancelling the larger of the two against 1;
    # on a narrow interval, where da + db = 1 to first order, as the two small terms
    # -(1 - F') expm1((x^2 - a^2)/2) - F' expm1(-(b^2 - x^2)/2) of the same sum instead.
    d_loc = jnp.where(log_da > log_db, -jnp.expm1(log_da) - db, -jnp.expm1(log_db) - da)
    finite = jnp.isfinite(a) & jnp.isfinite(b)
    near_a = -jnp.exp(log_sf) * jnp.expm1(_half_sq_diff(xr, a))
    near_b = -jnp.exp(log_cdf) * jnp.expm1(-_half_sq_diff(b, xr))
    narrow = finite & (jnp.maximum(jnp.abs(near_a), jnp.abs(near_b)) < 0.25)
    d_loc = jnp.where(narrow, near_a + near_b, d_loc)
    return jnp.where(flip, log_db, log_da), jnp.where(flip, log_da, log_db), d_loc


@jax.jit
def _sample_grad(z, loc, scale, low, high, u):
    r"""Closed-form :math:`\partial z/\partial(\mu, \sigma, \mathrm{low}, \mathrm{high})` at
    the draw :math:`z = F_T^{-1}(u)` (``None`` for :math:`u`, a constant of the draw): the plain
    formulas on moderate intervals, the log-space ones elsewhere."""
    alpha, beta = _standardize(low, loc, scale), _standardize(high, loc, scale)
    x = (z - loc) / scale

    def log_space():
        _, _, flip, a, b, log_p = _frame(loc, scale, low, high)
        log_da, log_db, d_loc = _dx_dbounds(x, flip, a, b, log_p)
        return d_loc, jnp.exp(log_da), jnp.exp(log_db)

    moderate = jnp.all(_plain_probabilities(alpha, beta)[1])
    d_loc, da, db = lax.cond(moderate, lambda: _plain_grad(x, alpha, beta, u), log_space)
    # da = 0 where alpha = -inf, db = 0 where beta = inf
    (fa, _), (fb, _) = _finite_part(alpha), _finite_part(beta)
    d_scale = x * d_loc + (x - fa) * da + (x - fb) * db
    return d_loc, d_scale, da, db, None


@jax.jit
def _icdf_grad(z, loc, scale, low, high, u):
    d_loc, d_scale, d_low, d_high, _ = _sample_grad(z, loc, scale, low, high, u)
    _, _, flip, a, b, log_p = _frame(loc, scale, low, high)
    xr = jnp.where(flip, -1, 1) * (z - loc) / scale
    # dz/du = scale Z / phi(x), Z = S(a) p.
    d_u = jnp.exp(jnp.log(scale) + _log_sf_over_pdf(a, xr) + log_p)
    return d_loc, d_scale, d_low, d_high, d_u


@jax.jit
def _quantile(u, loc, scale, low, high):
    """F_T^{-1}(u) (no gradient): the plain inversion on moderate intervals, else the log-space
    one of :func:`_standard_quantile`; clamped to [low, high]."""
    alpha, beta = _standardize(low, loc, scale), _standardize(high, loc, scale)
    probabilities, moderate = _plain_probabilities(alpha, beta)

    def log_space(u):
        _, _, flip, a, b, log_p = _frame(loc, scale, low, high)
        return _standard_quantile(u, flip, a, b, log_p)

    plain = partial(_plain_quantile, alpha=alpha, beta=beta, probabilities=probabilities)
    x = lax.cond(jnp.all(moderate), plain, log_space, u)
    return jnp.minimum(jnp.maximum(loc + scale * x, low), high)


def _tail_moments(x):
    """(c, v) for finite x: the one-sided tail :math:`[x, \\infty)` has mean :math:`x + c` and
    variance :math:`v`, with :math:`c = 1/R(x) - x` and :math:`v = 1 - (x + c) c`. Beyond
    :math:`x = 6` (2 in single precision) both come from the continued fraction
    :math:`1/R(x) = x + 1/(x + 2/(x + \\dots))` without cancellation:
    with :math:`e = 1/(x + 3/(x + 4/(\\dots)))`, :math:`c = 1/(x + 2e)`, :math:`v = c(2e - c)`."""
    start, depth = _CF[_precision(x)]
    near = x < start
    xn = jnp.where(near, x, 0.0)
    # 1/R(x), 0 to rounding below -_ERFCX_FLOOR
    inv_r = 1 / (math.sqrt(math.pi / 2) * _scaled_mills(xn))
    c_near = inv_r - xn
    v_near = 1 - inv_r * c_near
    c_far, v_far = _continued_fraction(jnp.maximum(x, start), depth)
    return jnp.where(near, c_near, c_far), jnp.where(near, v_near, v_far)


def _continued_fraction(x, depth):
    """(c, v) of :func:`_tail_moments` by ``depth`` levels of the continued fraction of 1/R."""
    k = x
    for n in range(depth, 2, -1):
        k = x + n / k
    e = 1 / k
    c = 1 / (x + 2 * e)
    return c, c * (2 * e - c)


def _standard_moments(flip, a, b, log_p):
    """Mean and variance of the standardized truncated law (original orientation).

    In the leaning-right frame, by case: for :math:`a \\ge 0` the tail :math:`[a, \\infty)` is a
    mixture of :math:`[a, b]` (weight :math:`p`) and :math:`[b, \\infty)`, whose moments are
    :func:`_tail_moments`; for :math:`a < 0`, :math:`E[x] = (\\phi(a) - \\phi(b))/Z` and
    :math:`V[x] = 1 + (a\\phi(a) - b\\phi(b))/Z - E[x]^2`; for a narrow interval
    (:math:`p < 0.9`, where both cancel), Gauss-Legendre quadrature of
    :math:`t^k e^{-a t - t^2/2}` over :math:`t = x - a \\in [0, b - a]`."""
    finite_a, finite_b = jnp.isfinite(a), jnp.isfinite(b)
    fa = jnp.where(finite_a, a, 0.0)
    fb = jnp.where(finite_b, b, fa + 1)
    width = fb - fa
    p = jnp.exp(log_p)
    rho = jnp.exp(jnp.minimum(_log_sf_ratio(b, a), 0.0))  # S(b)/S(a) = 1 - p
    # a >= 0: moments of t = x - a from the mixture identities.
    c_a, v_a = _tail_moments(jnp.maximum(fa, 0.0))
    c_b, v_b = _tail_moments(jnp.maximum(fb, 0.0))
    beyond_b = width + c_b  # E[t | x > b]
    t1 = (c_a - rho * beyond_b) / p
    t2 = (v_a + c_a * c_a - rho * (beyond_b * beyond_b + v_b)) / p
    right_mean, right_var = fa + t1, t2 - t1 * t1
    # a < 0 (a = -inf only for the untruncated normal, where b = inf).
    log_z = _log_sf(a) + log_p
    gap = jnp.where(finite_a & finite_b, -_half_sq_diff(fb, fa), -math.inf)
    # (phi(a) - phi(b))/Z with 1 - e^gap as -expm1, smooth at gap = 0 (an interval symmetric
    # about loc), where log(1 - e^gap) has an infinite derivative (NaN gradients); gap <= 0 to
    # rounding (b >= -a here), and no clamp, whose tie at 0 would share out the derivative
    left_mean = jnp.exp(_log_phi(a) - log_z) * -jnp.expm1(gap)
    a_pa = jnp.where(finite_a, fa * jnp.exp(_log_phi(a) - log_z), 0.0)
    b_pb = jnp.where(finite_b, fb * jnp.exp(_log_phi(b) - log_z), 0.0)
    left_var = 1 + a_pa - b_pb - left_mean * left_mean
    # Narrow: quadrature, the exponent shifted by its maximum over the nodes.
    nodes = jnp.asarray(_GL_NODES, jnp.result_type(a))
    weights = jnp.asarray(_GL_WEIGHTS, jnp.result_type(a))
    narrow = p < _NARROW
    qw = jnp.where(narrow, width, 0.0)[..., None]
    t = qw * (1 + nodes) / 2
    expo = -fa[..., None] * t - t * t / 2
    f = weights * jnp.exp(expo - expo.max(-1, keepdims=True))
    total = f.sum(-1)
    q_t1 = (f * t).sum(-1) / total
    q_var = (f * (t - q_t1[..., None]) ** 2).sum(-1) / total
    right = a >= 0
    mean = jnp.where(narrow, fa + q_t1, jnp.where(right, right_mean, left_mean))
    var = jnp.where(narrow, q_var, jnp.where(right, right_var, left_var))
    return jnp.where(flip, -mean, mean), var


def _leaning_right(value, loc, scale, low, high):
    """The frame of ``value``: (flip, a, b, log p, xr), xr clamped to [a, b]."""
    _, _, flip, a, b, log_p = _frame(loc, scale, low, high)
    x = (value - loc) / scale
    xr = _clamp(jnp.where(flip, -x, x), a, b)
    return flip, a, b, log_p, xr


# log_prob, the CDF and the moments are compiled as a whole, as the sampler is: evaluated eagerly,
# their hundreds of operations took 8-18 ms a call, and seconds for the first call in a process.
@jax.jit
def _log_prob(value, loc, scale, low, high):
    _, a, _, log_p, xr = _leaning_right(value, loc, scale, low, high)
    # log(phi(x) / Z) with Z = S(a) p, the ratio phi(x)/S(a) through the Mills ratio.
    lp = -_log_sf_over_pdf(a, xr) - log_p - jnp.log(scale)
    return jnp.where((value >= low) & (value <= high), lp, -jnp.inf)


@jax.jit
def _tails(value, loc, scale, low, high):
    """(log F_T, log(1 - F_T), F_T) at ``value``."""
    flip, a, b, log_p, xr = _leaning_right(value, loc, scale, low, high)
    log_cdf, log_sf, cdf, sf = _frame_tails(xr, a, b, log_p)
    return (
        jnp.where(flip, log_sf, log_cdf),
        jnp.where(flip, log_cdf, log_sf),
        jnp.where(flip, sf, cdf),
    )


@jax.jit
def _moments(loc, scale, low, high):
    """Mean and variance of the truncated law."""
    _, _, flip, a, b, log_p = _frame(loc, scale, low, high)
    mean, variance = _standard_moments(flip, a, b, log_p)
    return loc + scale * mean, scale**2 * variance


class TruncatedNormal(ConstraintMessageMixin, Distribution):
    r"""The normal distribution :math:`\mathcal N(\mu, \sigma^2)` truncated to
    :math:`[\mathrm{low}, \mathrm{high}]`, with implicit reparameterization gradients in all
    four parameters.

    With :math:`\alpha = (\mathrm{low} - \mu)/\sigma`, :math:`\beta = (\mathrm{high} - \mu)/\sigma`
    and :math:`x = (z - \mu)/\sigma`,

    .. math::
        \frac{\partial x}{\partial\alpha} = e^{(x^2 - \alpha^2)/2}(1 - F_T(x)), \qquad
        \frac{\partial x}{\partial\beta} = e^{(x^2 - \beta^2)/2} F_T(x),

    so that :math:`\partial z/\partial\mu = 1 - \partial_\alpha x - \partial_\beta x` (not 1
    when a bound binds), :math:`\partial z/\partial\sigma = x - \alpha\,\partial_\alpha x
    - \beta\,\partial_\beta x`, :math:`\partial z/\partial\mathrm{low} = \partial_\alpha x` and
    :math:`\partial z/\partial\mathrm{high} = \partial_\beta x`; all are evaluated in log space
    through Mills ratios, so they keep their relative accuracy 40 standard deviations out.
    Samples are drawn by inverting the survival function (the normal quantile, refined by
    safeguarded Newton steps in the far tails and on narrow intervals) and always lie in
    :math:`[\mathrm{low}, \mathrm{high}]`, in the far tails and on intervals
    :math:`10^{-4}\sigma` wide too.

    :param loc: location :math:`\mu` of the untruncated normal.
    :type loc: ArrayLike
    :param scale: its scale :math:`\sigma > 0`.
    :type scale: ArrayLike
    :param low: lower bound, or ``None`` for :math:`-\infty`.
    :type low: ArrayLike, optional
    :param high: upper bound, or ``None`` for :math:`+\infty`; ``low < high``.
    :type high: ArrayLike, optional
    :param validate_args: Whether to validate input constraints, defaults to None.
    :type validate_args: bool, optional
    """

    arg_constraints = {
        "loc": constraints.real,
        "scale": constraints.positive,
        # +-inf stand for "no bound"; low < high is checked in __init__.
        "low": constraints.dependent(is_discrete=False, event_dim=0),
        "high": constraints.dependent(is_discrete=False, event_dim=0),
    }
    reparametrized_params = ["loc", "scale", "low", "high"]
    pytree_aux_fields = ("_has_low", "_has_high")

    def __init__(
        self,
        loc: ArrayLike = 0.0,
        scale: ArrayLike = 1.0,
        *,
        low: ArrayLike | None = None,
        high: ArrayLike | None = None,
        validate_args: bool | None = None,
    ) -> None:
        self._has_low, self._has_high = low is not None, high is not None
        low = -jnp.inf if low is None else low
        high = jnp.inf if high is None else high
        batch_shape = lax.broadcast_shapes(*(jnp.shape(p) for p in (loc, scale, low, high)))
        self.loc, self.scale, self.low, self.high = promote_shapes(
            loc, scale, low, high, shape=batch_shape
        )
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)
        if self._validate_args:
            self._check_finite_and_ordered()

    def _check_finite_and_ordered(self):
        with jax.ensure_compile_time_eval():
            for name in ("loc", "scale"):
                finite = jnp.isfinite(jnp.asarray(getattr(self, name)))
                if not_jax_tracer(finite) and not np.all(finite):
                    raise ValueError(
                        f"TruncatedNormal distribution got invalid {name} parameter: expected "
                        f"{name} to be finite (constraint {self.arg_constraints[name]!r}), but "
                        f"{int(np.sum(~np.asarray(finite)))} of its values are not."
                    )
            _check_ordered("TruncatedNormal distribution", self.low, self.high)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        if self._has_low and self._has_high:
            return constraints.interval(self.low, self.high)
        if self._has_low:
            return constraints.greater_than_eq(self.low)
        if self._has_high:
            return constraints.less_than_eq(self.high)
        return constraints.real

    @property
    def _dtype(self):
        """The floating dtype of the parameters: float32, or float64 with x64 enabled."""
        return jnp.result_type(self.loc, self.scale, self.low, self.high, float)

    def _params(self):
        dtype = self._dtype
        return tuple(jnp.asarray(p, dtype) for p in (self.loc, self.scale, self.low, self.high))

    def _draw(self, u, params):
        """:math:`F_T^{-1}(u)`, without gradient. Its inputs are stopped, not only its output:
        under a transformation (grad, jvp) JAX then traces no derivative of the solver, which it
        would trace and then drop (half the time that tracing the gradient of a draw took)."""
        return _quantile(*(lax.stop_gradient(t) for t in (u, *params)))

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        if not is_prng_key(key):
            raise TypeError(f"TruncatedNormal.sample: `key` must be a JAX PRNG key, got {key!r}")
        shape = sample_shape + self.batch_shape
        dtype = self._dtype
        u = random.uniform(key, shape, dtype, minval=jnp.finfo(dtype).tiny)
        params = self._params()
        return implicit_reparameterize(self._draw(u, params), (*params, u), grad=_sample_grad)

    def icdf(self, value: ArrayLike) -> jax.Array:
        """Quantile function; differentiable in ``value`` and in all four parameters."""
        u = jnp.asarray(value, self._dtype)
        if self._validate_args:
            check_probability(u, "TruncatedNormal.icdf")
        params = self._params()
        return implicit_reparameterize(self._draw(u, params), (*params, u), grad=_icdf_grad)

    @validate_sample
    def log_prob(self, value: ArrayLike) -> jax.Array:
        return _log_prob(value, *self._params())

    def _tails(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return _tails(value, *self._params())

    def log_cdf(self, value: ArrayLike) -> jax.Array:
        r""":math:`\log F_T`, computed in log space (no cancellation near the upper bound)."""
        return self._tails(value)[0]

    def log_sf(self, value: ArrayLike) -> jax.Array:
        r""":math:`\log(1 - F_T)`, computed in log space (no cancellation near the lower bound)."""
        return self._tails(value)[1]

    def cdf(self, value: ArrayLike) -> jax.Array:
        r""":math:`F_T`, with finite derivatives at the bounds too."""
        return self._tails(value)[2]

    @property
    def mean(self) -> jax.Array:
        return _moments(*self._params())[0]

    @property
    def variance(self) -> jax.Array:
        return _moments(*self._params())[1]
