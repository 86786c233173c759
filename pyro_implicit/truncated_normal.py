"""The truncated normal distribution with implicit reparameterization gradients (PyTorch / Pyro).

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

import numpy as np
import torch
from pyro.distributions import TorchDistribution, constraints
from torch.distributions.utils import broadcast_all
from torch.special import erfc, erfcx, ndtri

from ._implicit import implicit_reparameterize
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
    return "double" if torch.finfo(x.dtype).eps < 1e-10 else "single"


def _log_sf(x):
    """log S(x) = log Phi(-x), accurate on both sides of 0; 0 at -inf, -inf at +inf."""
    finite = torch.isfinite(x)
    # Every function sees only finite inputs, so that gradients stay finite.
    value = log_ndtr(-torch.where(finite, x, 0.0))
    return torch.where(finite, value, torch.where(x > 0, -math.inf, 0.0))


def _log_phi(x):
    finite = torch.isfinite(x)
    x = torch.where(finite, x, 0.0)
    return torch.where(finite, -x * x / 2 - _HALF_LOG_2PI, -math.inf)


def _half_sq_diff(x, a):
    """(x - a)(x + a)/2 = log phi(a) - log phi(x) for finite x and a (0 elsewhere)."""
    finite = torch.isfinite(x) & torch.isfinite(a)
    x, a = torch.where(finite, x, 0.0), torch.where(finite, a, 0.0)
    return (x - a) * (x + a) / 2


def _scaled_mills(x):
    """R(x)/sqrt(pi/2) = erfcx(x/sqrt 2) for finite x, kept finite: the argument is clamped at
    -_ERFCX_FLOOR, below which erfcx would overflow (and S(x) = 1 to rounding)."""
    return erfcx(torch.clamp(x, min=-_ERFCX_FLOOR[_precision(x)]) / math.sqrt(2))


def _mills(x):
    """(log R(x), c(x)) with c = 1/R - x = -(log R)'(x), the mean excess of the tail beyond x,
    from one erfcx and one continued fraction:

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
    finite = torch.isfinite(x)
    far = finite & (x >= start)
    xn = torch.where(finite & ~far, x, 0.0)
    scaled_r = _scaled_mills(xn)
    xf = torch.where(far, x, start)
    c_far = _continued_fraction(xf, 10)[0]
    c = torch.where(far, c_far, 1 / (math.sqrt(math.pi / 2) * scaled_r) - xn)
    log_r = torch.where(
        far,
        -torch.log(xf + c_far),
        torch.where(xn > -floor, torch.log(scaled_r) + _HALF_LOG_PI_2, xn * xn / 2 + _HALF_LOG_2PI),
    )
    return torch.where(finite, log_r, torch.where(x > 0, -math.inf, math.inf)), c


def _log_mills(x):
    """log R(x) = log S(x) - log phi(x), see :func:`_mills`."""
    return _mills(x)[0]


def _log_mills_ratio(x, a):
    """(log R(x) - log R(a), log R(x)) with the first = log(S(x) phi(a) / (phi(x) S(a))) for
    finite x >= a; -inf at a = -inf. Near x = a, where the difference of two logarithms has no
    digit left, it is -integral_a^x c(t) dt by two-point Gauss-Legendre quadrature."""
    finite = torch.isfinite(a)
    a = torch.where(finite, a, x)
    near = x - a < _NEAR[_precision(x)]
    an, xn = torch.where(near, a, 0.0), torch.where(near, x, 0.0)
    mid, half = (an + xn) / 2, (xn - an) / 2
    # x, a and both nodes in one call
    points = torch.broadcast_tensors(x, a, mid - half * _GAUSS2, mid + half * _GAUSS2)
    log_r, gap = _mills(torch.stack(points))
    gauss = -half * (gap[2] + gap[3])
    direct = log_r[0] - log_r[1]
    return torch.where(finite, torch.where(near, gauss, direct), -math.inf), log_r[0]


def _log_ratios(x, a, direct=None):
    """(log S(x)/S(a), log R(x)/R(a), log R(x)) for a <= x (x may be +inf, a -inf). The first
    keeps its accuracy relative to its value through log R for a >= 0 (far right tail) and near
    x = a; elsewhere it is ``direct``, log S(x) - log S(a) (computed if not given)."""
    finite = torch.isfinite(x)
    xf = torch.where(finite, x, a + 1)
    log_mills, log_r = _log_mills_ratio(xf, a)
    log_mills = torch.where(finite, log_mills, -math.inf)
    mills = torch.where(finite, log_mills - _half_sq_diff(xf, a), -math.inf)
    near = finite & torch.isfinite(a) & (x - a < _NEAR[_precision(x)])
    direct = _log_sf(x) - _log_sf(a) if direct is None else direct
    log_sf = torch.where((a >= 0) | near, mills, direct)
    return log_sf, log_mills, torch.where(finite, log_r, -math.inf)


def _interval_ratios(x, a, b):
    """(log S(x)/S(a), log S(b)/S(x), log R(x)/R(a)) for a <= x <= b: both pairs in one
    evaluation of :func:`_log_ratios` (half the operations to dispatch), and each log S once,
    in its own shape."""
    sf_x, sf_a, sf_b = _log_sf(x), _log_sf(a), _log_sf(b)
    x, a, b, direct_xa, direct_bx = torch.broadcast_tensors(x, a, b, sf_x - sf_a, sf_b - sf_x)
    pairs = (torch.stack([x, b]), torch.stack([a, x]), torch.stack([direct_xa, direct_bx]))
    log_sf, log_mills, _ = _log_ratios(*pairs)
    return log_sf[0], log_sf[1], log_mills[0]


def _log_sf_ratio(x, a):
    """log S(x) - log S(a) for a <= x, see :func:`_log_ratios`."""
    return _log_ratios(x, a)[0]


def _log_sf_over_pdf(a, x):
    """log(S(a) / phi(x)) for a <= x, x finite."""
    right = a >= 0
    via_mills = _log_mills(torch.where(right, a, 0.0)) + _half_sq_diff(x, a)
    return torch.where(right, via_mills, _log_sf(a) - _log_phi(x))


def _standardize(bound, loc, scale):
    finite = torch.isfinite(bound)
    return torch.where(finite, (torch.where(finite, bound, 0.0) - loc) / scale, bound)


def _clamp(x, lo, hi):
    """x clamped to [lo, hi], with the derivative of x where it equals a bound (that of a
    maximum or minimum is halved at a tie): the one-sided derivative into the interval."""
    return torch.where(x < lo, lo, torch.where(x > hi, hi, x))


def _at_most_zero(log_p):
    """A log-ratio of probabilities clamped to at most 0 in value, with its own derivative (a
    clamp would zero it where rounding leaves the value above 0)."""
    return log_p - log_p.detach().clamp(min=0.0)


def _frame(loc, scale, low, high):
    """Standardized bounds, the mirror flag, the leaning-right bounds [a, b] and
    log(1 - S(b)/S(a)) = log(Z / S(a)), Z being the mass of [a, b]."""
    alpha, beta = _standardize(low, loc, scale), _standardize(high, loc, scale)
    # (-inf, beta) is mirrored, (alpha, inf) and (-inf, inf) (a NaN sum) are not.
    flip = alpha + beta < 0
    a = torch.where(flip, -beta, alpha)
    b = torch.where(flip, -alpha, beta)
    return alpha, beta, flip, a, b, log1mexp(torch.clamp(_log_sf_ratio(b, a), max=0.0))


def _ndtr(x):
    """Phi(x), relatively accurate for x < 0 too (torch.special.ndtr is not: 6.1e-16 for
    Phi(-8) = 6.2e-16, 0 for Phi(-9))."""
    return erfc(-x / math.sqrt(2)) / 2


def _check_ordered(owner, low, high):
    """The ValueError of ``TruncatedNormal`` and ``TruncatedDistribution`` unless low < high."""
    if not torch.all(low < high):
        raise ValueError(
            f"{owner}: expected parameters low and high to satisfy the constraint low < high, "
            "but found invalid values"
        )


def _finite_part(bound):
    """(the bound where finite, else 0; 0 where finite, else inf): x - the first is finite, and
    subtracting the second from an exponent makes it -inf for a missing bound."""
    finite = torch.isfinite(bound)
    return torch.where(finite, bound, 0.0), torch.where(finite, 0.0, math.inf)


def _plain_probabilities(alpha, beta):
    """(Phi(alpha), S(beta), Z) and whether every interval is moderate (see ``_MODERATE``).
    The mass Z of [alpha, beta] comes from the side where it is a difference of small numbers."""
    (fa, _), (fb, _) = _finite_part(alpha), _finite_part(beta)
    finite_a, finite_b = torch.isfinite(alpha), torch.isfinite(beta)
    cdf_a, sf_a = torch.where(finite_a, _ndtr(fa), 0.0), torch.where(finite_a, _ndtr(-fa), 1.0)
    cdf_b, sf_b = torch.where(finite_b, _ndtr(fb), 1.0), torch.where(finite_b, _ndtr(-fb), 0.0)
    mass = torch.where(alpha + beta < 0, cdf_b - cdf_a, sf_a - sf_b)
    weight_a = torch.where(finite_a, (1 + fa.abs()) * torch.exp(_log_phi(fa)), 0.0)
    weight_b = torch.where(finite_b, (1 + fb.abs()) * torch.exp(_log_phi(fb)), 0.0)
    # far out in a tail, phi and the mass both underflow to 0: not moderate
    moderate = (torch.maximum(weight_a, weight_b) <= _MODERATE[_precision(alpha)] * mass) & (
        mass > 0
    )
    return (cdf_a, sf_b, mass), bool(moderate.all())


def _plain_quantile(u, alpha, beta, probabilities):
    """Solve F_T(x) = u on a moderate interval: Phi(x) = Phi(alpha) + u Z and
    S(x) = S(beta) + (1 - u) Z are sums of positive terms, and the smaller of the two, inverted,
    gives x to a few units in the last place."""
    cdf_a, sf_b, mass = probabilities
    cdf = torch.addcmul(cdf_a, u, mass)
    sf = torch.addcmul(sf_b, 1 - u, mass)
    left = cdf < sf
    x = ndtri(torch.minimum(cdf, sf))
    return torch.clamp(torch.where(left, x, -x), alpha, beta)


def _plain_grad(x, alpha, beta, u):
    """dx/d(alpha, beta) = (1 - u) exp((x^2 - alpha^2)/2) and u exp((x^2 - beta^2)/2) at
    F_T(x) = u, and 1 - the two: no special function at all, accurate on a moderate interval."""
    (fa, off_a), (fb, off_b) = _finite_part(alpha), _finite_part(beta)
    to_a = (x - fa) * (x + fa) / 2 - off_a
    to_b = (x - fb) * (x + fb) / 2 - off_b
    v = 1 - u
    d_loc = -(v * torch.expm1(to_a) + u * torch.expm1(to_b))
    return d_loc, v * torch.exp(to_a), u * torch.exp(to_b)


def _log_cdf_pair(log_sf_xa, log_sf_bx, log_p):
    """(log F', log(1 - F')) of the truncated law in the leaning-right frame at x in [a, b], from
    log S(x)/S(a), log S(b)/S(x) and log p (see :func:`_frame_tails` for a form that stays
    accurate left of 0)."""
    log_sf_xa, log_sf_bx = torch.clamp(log_sf_xa, max=0.0), torch.clamp(log_sf_bx, max=0.0)
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
    :func:`_log_ratios` serve all (each special function runs once, on the stacked points)."""
    left = x < 0
    xl, al = torch.where(left, x, -1.0), torch.where(left, a, -2.0)  # finite gradients elsewhere
    x, a, b, xl, al = torch.broadcast_tensors(x, a, b, xl, al)
    sf_x, sf_a, sf_b, cdf_x, cdf_a = _log_sf(torch.stack([x, a, b, -xl, -al]))
    # the first pair is mirrored where left: log Phi(a)/Phi(x) there, log S(x)/S(a) elsewhere
    first = torch.where(left, -al, x), torch.where(left, -xl, a)
    direct = torch.where(left, cdf_a - cdf_x, sf_x - sf_a), sf_b - sf_x
    pairs = (torch.stack([first[0], b]), torch.stack([first[1], x]), torch.stack(direct))
    ratio, log_sf_bx = _at_most_zero(_log_ratios(*pairs)[0])
    # 1 - S(x)/S(a) = exp(lead) (1 - exp(ratio)), lead = log(Phi(x)/S(a)) where left (a = al)
    lead = torch.where(left, cdf_x - sf_a, 0.0)
    head = torch.exp(lead) * -torch.expm1(ratio)
    # at the bounds, -inf with a zero derivative rather than an infinite one
    at_a, at_b = x <= a, x >= b
    log_cdf = torch.where(at_a, -math.inf, lead + log1mexp(torch.where(at_a, -1.0, ratio)) - log_p)
    log_sf_xa = torch.where(left, torch.log1p(-torch.where(left, head, 0.0)), ratio)
    log_sf = log_sf_xa + log1mexp(torch.where(at_b, -1.0, log_sf_bx)) - log_p
    log_sf = torch.where(at_b, -math.inf, log_sf)
    cdf = head * torch.exp(-log_p)
    sf = torch.where(left, 1 - cdf, torch.exp(ratio - log_p) * -torch.expm1(log_sf_bx))
    return log_cdf, log_sf, cdf, sf


def _refine(x, normal, target, y, a, b):
    """Where exp(target) underflows, the inverse of x^2/2 + log x + log sqrt(2 pi) = -target
    (good to ~1/x^4) instead of x; then safeguarded Newton steps on log S(x)/S(a) = y for every
    element, which resolve a narrow interval to rounding relative to its width."""
    # Bracket: S(x) < exp(-x^2/2)/2 for x > 0, Phi(x) < exp(-x^2/2)/2 for x < 0.
    hi = torch.minimum(b, torch.sqrt(torch.clamp(-2 * target, min=0.0)) + 1)
    lo = torch.maximum(a, -torch.sqrt(torch.clamp(-2 * log1mexp(target), min=0.0)) - 1)
    hi = torch.maximum(hi, lo)
    tail = torch.sqrt(-2 * torch.where(normal, -1.0, target))
    for _ in range(_TAIL_STEPS):
        tail = torch.sqrt(torch.clamp(2 * (-target - torch.log(tail) - _HALF_LOG_2PI), min=1.0))
    x = torch.minimum(torch.maximum(torch.where(normal, x, tail), lo), hi)

    def newton_step(lo, hi, x):
        log_sf, _, log_r = _log_ratios(x, a)
        g = log_sf - y  # decreasing and concave in x, with slope -1/R(x)
        lo = torch.where(g > 0, x, lo)
        hi = torch.where(g > 0, hi, x)
        newton = x + torch.where(g == 0, 0.0, g * torch.exp(log_r))
        return (
            lo,
            hi,
            torch.where(torch.isfinite(newton), torch.clamp(newton, lo, hi), (lo + hi) / 2),
        )

    for _ in range(_TAIL_NEWTON_STEPS):
        lo, hi, x = newton_step(lo, hi, x)
    return x


def _standard_quantile(u, flip, a, b, log_p):
    """Solve F_T(x) = u in the standardized original frame (no gradient).

    In the leaning-right frame (u' = 1 - u when mirrored) the root solves
    :math:`\\log S(x)/S(a) = y = \\log(1 - u' p)`, with :math:`p = 1 - S(b)/S(a)`: Newton steps
    on this relative form resolve intervals 1e-4 wide 40 standard deviations out."""
    finfo = torch.finfo(a.dtype)
    u_safe = torch.clamp(u, finfo.tiny, 1 - finfo.eps / 2)
    log_u, log_1mu = torch.log(u_safe), torch.log1p(-u_safe)
    log_v, log_1mv = torch.where(flip, log_1mu, log_u), torch.where(flip, log_u, log_1mu)
    vp = torch.exp(log_v + log_p)
    # log(1 - u' p) directly where that is accurate, else as log((1 - u') + u' S(b)/S(a)),
    # with log S(b)/S(a) = log(1 - p) from log p rather than computed a second time
    y = torch.where(
        vp < 0.5,
        torch.log1p(-torch.where(vp < 0.5, vp, 0.0)),
        torch.logaddexp(log_1mv, log_v + log1mexp(log_p)),
    )
    y = torch.clamp(y, max=0.0)
    target = _log_sf(a) + y  # log S(x)
    # The normal quantile where exp(target) is a normal number: Phi(x) = 1 - e^target for x < 0,
    # S(x) = e^target for x > 0, one ndtri of whichever is below 1/2. It is good to about a unit
    # in the last place of x already (an error eps |target| in the target moves x by
    # eps |target| R(x) < eps |x|), but not to a unit in the last place of the width of an
    # interval holding a small share p of the tail beyond it. Farther out and on such intervals,
    # the asymptotic inverse and Newton steps, taken only when some element needs them.
    normal = target > math.log(finfo.tiny)
    left = target > -math.log(2)
    t = torch.where(normal, target, -1.0)
    x = ndtri(torch.where(left, -torch.expm1(t), torch.exp(t)))
    x = torch.where(left, x, -x)
    if bool(torch.any(~normal | (log_p < _REFINE_BELOW))):
        x = _refine(x, normal, target, y, a, b)
    x = torch.minimum(torch.maximum(x, a), b)
    x = torch.where(flip, -x, x)
    alpha, beta = torch.where(flip, -b, a), torch.where(flip, -a, b)
    x = torch.where(u <= 0, alpha, x)
    return torch.where(u >= 1, beta, x)


def _dx_dbounds(x, flip, a, b, log_p):
    """log dx/dalpha, log dx/dbeta (original standardized frame) and 1 - dx/dalpha - dx/dbeta."""
    xr = _clamp(torch.where(flip, -x, x), a, b)
    # dx/da = phi(a)/phi(x) (1 - F') = [R(x)/R(a)] (1 - S(b)/S(x)) / p: the ratio of Mills
    # ratios, never exp((x^2 - a^2)/2) times a tail probability that float32 cannot hold.
    log_sf_xa, log_sf_bx, log_mills_xa = _interval_ratios(xr, a, b)
    log_cdf, log_sf = _log_cdf_pair(log_sf_xa, log_sf_bx, log_p)
    log_da = log_mills_xa + log1mexp(torch.clamp(log_sf_bx, max=0.0)) - log_p
    log_db = torch.where(torch.isfinite(b), -_half_sq_diff(b, xr) + log_cdf, -math.inf)
    da, db = torch.exp(log_da), torch.exp(log_db)
    # 1 - da - db (the same in both frames), without cancelling the larger of the two against 1;
    # on a narrow interval, where da + db = 1 to first order, as the two small terms
    # -(1 - F') expm1((x^2 - a^2)/2) - F' expm1(-(b^2 - x^2)/2) of the same sum instead.
    d_loc = torch.where(log_da > log_db, -torch.expm1(log_da) - db, -torch.expm1(log_db) - da)
    finite = torch.isfinite(a) & torch.isfinite(b)
    near_a = -torch.exp(log_sf) * torch.expm1(_half_sq_diff(xr, a))
    near_b = -torch.exp(log_cdf) * torch.expm1(-_half_sq_diff(b, xr))
    narrow = finite & (torch.maximum(torch.abs(near_a), torch.abs(near_b)) < 0.25)
    d_loc = torch.where(narrow, near_a + near_b, d_loc)
    return torch.where(flip, log_db, log_da), torch.where(flip, log_da, log_db), d_loc


def _sample_grad(z, loc, scale, low, high, u):
    r"""Closed-form :math:`\partial z/\partial(\mu, \sigma, \mathrm{low}, \mathrm{high})` at
    the draw :math:`z = F_T^{-1}(u)` (``None`` for :math:`u`, a constant of the draw): the plain
    formulas on moderate intervals, the log-space ones elsewhere."""
    alpha, beta = _standardize(low, loc, scale), _standardize(high, loc, scale)
    x = (z - loc) / scale
    if _plain_probabilities(alpha, beta)[1]:
        d_loc, da, db = _plain_grad(x, alpha, beta, u)
    else:
        _, _, flip, a, b, log_p = _frame(loc, scale, low, high)
        log_da, log_db, d_loc = _dx_dbounds(x, flip, a, b, log_p)
        da, db = torch.exp(log_da), torch.exp(log_db)
    # da = 0 where alpha = -inf, db = 0 where beta = inf
    (fa, _), (fb, _) = _finite_part(alpha), _finite_part(beta)
    d_scale = x * d_loc + (x - fa) * da + (x - fb) * db
    return d_loc, d_scale, da, db, None


def _icdf_grad(z, loc, scale, low, high, u):
    d_loc, d_scale, d_low, d_high, _ = _sample_grad(z, loc, scale, low, high, u)
    _, _, flip, a, b, log_p = _frame(loc, scale, low, high)
    xr = torch.where(flip, -1, 1) * (z - loc) / scale
    # dz/du = scale Z / phi(x), Z = S(a) p.
    d_u = torch.exp(torch.log(scale) + _log_sf_over_pdf(a, xr) + log_p)
    return d_loc, d_scale, d_low, d_high, d_u


def _quantile(u, loc, scale, low, high):
    """F_T^{-1}(u) (no gradient): the plain inversion on moderate intervals, else the log-space
    one of :func:`_standard_quantile`; clamped to [low, high]."""
    alpha, beta = _standardize(low, loc, scale), _standardize(high, loc, scale)
    probabilities, moderate = _plain_probabilities(alpha, beta)
    if moderate:
        x = _plain_quantile(u, alpha, beta, probabilities)
    else:
        _, _, flip, a, b, log_p = _frame(loc, scale, low, high)
        x = _standard_quantile(u, flip, a, b, log_p)
    return torch.minimum(torch.maximum(loc + scale * x, low), high)


def _tail_moments(x):
    """(c, v) for finite x: the one-sided tail :math:`[x, \\infty)` has mean :math:`x + c` and
    variance :math:`v`, with :math:`c = 1/R(x) - x` and :math:`v = 1 - (x + c) c`. Beyond
    :math:`x = 6` (2 in single precision) both come from the continued fraction
    :math:`1/R(x) = x + 1/(x + 2/(x + \\dots))` without cancellation:
    with :math:`e = 1/(x + 3/(x + 4/(\\dots)))`, :math:`c = 1/(x + 2e)`, :math:`v = c(2e - c)`."""
    start, depth = _CF[_precision(x)]
    near = x < start
    xn = torch.where(near, x, 0.0)
    # 1/R(x), 0 to rounding below -_ERFCX_FLOOR
    inv_r = 1 / (math.sqrt(math.pi / 2) * _scaled_mills(xn))
    c_near = inv_r - xn
    v_near = 1 - inv_r * c_near
    c_far, v_far = _continued_fraction(torch.clamp(x, min=start), depth)
    return torch.where(near, c_near, c_far), torch.where(near, v_near, v_far)


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
    finite_a, finite_b = torch.isfinite(a), torch.isfinite(b)
    fa = torch.where(finite_a, a, 0.0)
    fb = torch.where(finite_b, b, fa + 1)
    width = fb - fa
    p = torch.exp(log_p)
    rho = torch.exp(torch.clamp(_log_sf_ratio(b, a), max=0.0))  # S(b)/S(a) = 1 - p
    # a >= 0: moments of t = x - a from the mixture identities.
    c_a, v_a = _tail_moments(torch.clamp(fa, min=0.0))
    c_b, v_b = _tail_moments(torch.clamp(fb, min=0.0))
    beyond_b = width + c_b  # E[t | x > b]
    t1 = (c_a - rho * beyond_b) / p
    t2 = (v_a + c_a * c_a - rho * (beyond_b * beyond_b + v_b)) / p
    right_mean, right_var = fa + t1, t2 - t1 * t1
    # a < 0 (a = -inf only for the untruncated normal, where b = inf).
    log_z = _log_sf(a) + log_p
    gap = torch.where(finite_a & finite_b, -_half_sq_diff(fb, fa), -math.inf)
    # (phi(a) - phi(b))/Z with 1 - e^gap as -expm1, smooth at gap = 0 (an interval symmetric
    # about loc), where log(1 - e^gap) has an infinite derivative (NaN gradients); gap <= 0 to
    # rounding (b >= -a here), and no clamp, whose tie at 0 would share out the derivative
    left_mean = torch.exp(_log_phi(a) - log_z) * -torch.expm1(gap)
    a_pa = torch.where(finite_a, fa * torch.exp(_log_phi(a) - log_z), 0.0)
    b_pb = torch.where(finite_b, fb * torch.exp(_log_phi(b) - log_z), 0.0)
    left_var = 1 + a_pa - b_pb - left_mean * left_mean
    # Narrow: quadrature, the exponent shifted by its maximum over the nodes.
    nodes = torch.as_tensor(_GL_NODES, dtype=a.dtype, device=a.device)
    weights = torch.as_tensor(_GL_WEIGHTS, dtype=a.dtype, device=a.device)
    narrow = p < _NARROW
    qw = torch.where(narrow, width, 0.0)[..., None]
    t = qw * (1 + nodes) / 2
    expo = -fa[..., None] * t - t * t / 2
    f = weights * torch.exp(expo - expo.amax(-1, keepdim=True))
    total = f.sum(-1)
    q_t1 = (f * t).sum(-1) / total
    q_var = (f * (t - q_t1[..., None]) ** 2).sum(-1) / total
    right = a >= 0
    mean = torch.where(narrow, fa + q_t1, torch.where(right, right_mean, left_mean))
    var = torch.where(narrow, q_var, torch.where(right, right_var, left_var))
    return torch.where(flip, -mean, mean), var


class TruncatedNormal(TorchDistribution):
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
    :param scale: its scale :math:`\sigma > 0`.
    :param low: lower bound, or ``None`` for :math:`-\infty`.
    :param high: upper bound, or ``None`` for :math:`+\infty`; ``low < high``.
    """

    arg_constraints = {
        "loc": constraints.real,
        "scale": constraints.positive,
        "low": constraints.real,  # torch's real admits +-inf, which stand for "no bound"
        "high": constraints.real,
    }
    has_rsample = True

    def __init__(self, loc, scale, low=None, high=None, validate_args=None):
        self._has_low, self._has_high = low is not None, high is not None
        low = -math.inf if low is None else low
        high = math.inf if high is None else high
        self.loc, self.scale, self.low, self.high = broadcast_all(loc, scale, low, high)
        super().__init__(self.loc.shape, validate_args=validate_args)
        if self._validate_args:
            self._check_finite_and_ordered()

    def _check_finite_and_ordered(self):
        for name in ("loc", "scale"):
            if not torch.all(torch.isfinite(getattr(self, name))):
                raise ValueError(
                    f"TruncatedNormal: expected parameter {name} to be finite "
                    f"(constraint {self.arg_constraints[name]}), but found invalid values"
                )
        _check_ordered("TruncatedNormal", self.low, self.high)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TruncatedNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        for name in ("loc", "scale", "low", "high"):
            setattr(new, name, getattr(self, name).expand(batch_shape))
        new._has_low, new._has_high = self._has_low, self._has_high
        super(TruncatedNormal, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        if self._has_low and self._has_high:
            return constraints.interval(self.low, self.high)
        if self._has_low:
            return constraints.greater_than_eq(self.low)
        if self._has_high:
            # torch has no closed less_than_eq: the closed interval (-inf, high].
            return constraints.interval(self.low, self.high)
        return constraints.real

    def _params(self):
        return self.loc, self.scale, self.low, self.high

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            u = u.clamp(min=torch.finfo(u.dtype).tiny)
            z = self._quantile(u)
        return implicit_reparameterize(z, (*self._params(), u), grad=_sample_grad)

    def _quantile(self, u):
        return _quantile(u, *self._params())

    def icdf(self, value):
        """Quantile function; differentiable in ``value`` and in all four parameters."""
        u = torch.as_tensor(value, dtype=self.loc.dtype, device=self.loc.device)
        if self._validate_args and not torch.all((u >= 0) & (u <= 1)):
            raise ValueError("TruncatedNormal.icdf: `value` must be a probability in [0, 1]")
        with torch.no_grad():
            z = self._quantile(u)
        return implicit_reparameterize(z, (*self._params(), u), grad=_icdf_grad)

    def _leaning_right(self, value):
        """The frame of ``value``: (flip, a, b, log p, xr), xr clamped to [a, b]."""
        loc, scale, low, high = self._params()
        _, _, flip, a, b, log_p = _frame(loc, scale, low, high)
        x = (value - loc) / scale
        xr = _clamp(torch.where(flip, -x, x), a, b)
        return flip, a, b, log_p, xr

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        _, a, _, log_p, xr = self._leaning_right(value)
        # log(phi(x) / Z) with Z = S(a) p, the ratio phi(x)/S(a) through the Mills ratio.
        lp = -_log_sf_over_pdf(a, xr) - log_p - torch.log(self.scale)
        return torch.where((value >= self.low) & (value <= self.high), lp, -math.inf)

    def _tails(self, value):
        """(log F_T, log(1 - F_T), F_T) at ``value``."""
        if self._validate_args:
            self._validate_sample(value)
        flip, a, b, log_p, xr = self._leaning_right(value)
        log_cdf, log_sf, cdf, sf = _frame_tails(xr, a, b, log_p)
        return (
            torch.where(flip, log_sf, log_cdf),
            torch.where(flip, log_cdf, log_sf),
            torch.where(flip, sf, cdf),
        )

    def log_cdf(self, value):
        r""":math:`\log F_T`, computed in log space (no cancellation near the upper bound)."""
        return self._tails(value)[0]

    def log_sf(self, value):
        r""":math:`\log(1 - F_T)`, computed in log space (no cancellation near the lower bound)."""
        return self._tails(value)[1]

    def cdf(self, value):
        r""":math:`F_T`, with finite derivatives at the bounds too."""
        return self._tails(value)[2]

    def _standard_moments(self):
        _, _, flip, a, b, log_p = _frame(*self._params())
        return _standard_moments(flip, a, b, log_p)

    @property
    def mean(self):
        return self.loc + self.scale * self._standard_moments()[0]

    @property
    def variance(self):
        return self.scale**2 * self._standard_moments()[1]
