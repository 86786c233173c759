r"""Special functions that PyTorch lacks.

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
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch.distributions.utils import broadcast_all
from torch.special import i0e, i1e

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

# I1(x)/I0(x) ~ x P(x/x0)/Q(x/x0) on [0, x0): weighted least squares in relative error
# (tests/reference/make_bessel_ratio_rational.py), per dtype: {dtype: (x0, P, Q)}.
_RATIO_RATIONAL = {
    torch.float32: (
        100.0,
        (0.50000000137667720557, 23.00167987391676576, 1057.179482630176879,
         31933.669848015626214, 781343.62424428330295, 14721739.089531495588,
         278111649.01098124918, 1746346884.1729323314, 64402082991.800760734),
        (1.0, 46.003401089488111612, 3364.2985311331077352, 121403.03038567344575,
         3676673.5215011794463, 86529950.692142835566, 1620462709.6779721264,
         28925440761.323376061, 206836054380.94537577, 6440208194156.1574262),
    ),
    torch.float64: (
        40.0,
        (0.50000000000000003389, 6.5790630940679740836, 132.64741292646983843,
         1356.8561482981970612, 12893.080945633355566, 94407.771096097412572,
         595328.12366642472036, 3176092.1903583756629, 14635428.063209594904,
         58274795.138428156547, 201330552.92996055289, 589612977.38494024284,
         1550139270.2633087436, 2675549803.6579600262, 6571325489.0866967449),
        (1.0, 13.158126188136739192, 465.29482585202214464, 5345.3375346123360771,
         65511.793644539418077, 556116.32985832462424, 4143956.6925067379853,
         25476685.024679224862, 135088481.09000374602, 616426040.75599800207,
         2437738648.2784466534, 8363110979.0876281963, 24386283389.506733873,
         63404924488.927616697, 110307661389.40211256, 262853018847.81883825),
    ),
}  # fmt: skip
# 1 - I1(x)/I0(x) ~ sum_k c_k / x^k from x0 on (truncation error below 1e-15 relative at 40).
_RATIO_ASYMPTOTIC = (
    1 / 2, 1 / 8, 1 / 8, 25 / 128, 13 / 32, 1073 / 1024, 103 / 32, 375733 / 32768,
    23797 / 512, 55384775 / 262144, 2180461 / 2048, 24713030909 / 4194304, 72763141 / 2048,
)  # fmt: skip
# Var Rice(a, 1) ~ sum_k d_k / y^k with y = a^2 / 4, for y >= 30 (truncation error < 1e-17).
_VARIANCE_ASYMPTOTIC = (
    1, -1 / 8, -1 / 32, -11 / 512, -51 / 2048, -669 / 16384, -5685 / 65536,
    -475155 / 2097152, -5894595 / 8388608, -169413615 / 67108864, -2768244255 / 268435456,
    -202794141375 / 4294967296, -4115096976375 / 17179869184,
)  # fmt: skip
_VARIANCE_ASYMPTOTIC_FROM = 30.0


class _I0eNonnegative(torch.autograd.Function):
    """``i0e(x)`` for ``x >= 0``, differentiated from the right at ``x = 0``: torch takes the
    derivative of ``exp(-|x|) I0(x)`` at its kink as 0 (``sgn(0) = 0``), not ``i1e - i0e``."""

    @staticmethod
    def forward(ctx, x):
        y = i0e(x)
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return grad * (i1e(x) - y)


def i0e_nonnegative(x):
    return _I0eNonnegative.apply(x)


@functools.lru_cache
def _coefficient_tensor(coeffs, dtype, device):
    return torch.tensor(coeffs, dtype=dtype, device=device)


def _polyval(coeffs, x):
    """sum_k coeffs[k] * x^k by Horner's rule, one fused multiply-add pass per coefficient."""
    c = _coefficient_tensor(coeffs, x.dtype, x.device)
    out = c[-1].expand_as(x).clone()
    # In place where no graph is recorded: a fresh buffer per step costs more than the arithmetic.
    in_place = not (torch.is_grad_enabled() and x.requires_grad)
    for k in range(len(coeffs) - 2, -1, -1):
        out = torch.addcmul(c[k], out, x, out=out if in_place else None)
    return out


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(1 - e^x)` for :math:`x \le 0`, accurate on both sides of :math:`-\log 2`."""
    near = x > -math.log(2)
    # Each branch sees only inputs where it is finite, so that gradients stay finite.
    x_near = torch.where(near, x, -1.0)
    x_far = torch.where(near, -1.0, x)
    return torch.where(near, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


def bessel_ratio(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`r = I_1(x)/I_0(x)` and :math:`1 - r` for :math:`x \ge 0`, each to a few roundings
    (the complement loses at most :math:`\log_{10}(2x_0)` digits, near :math:`x_0`).

    Below :math:`x_0` (100 in float32, 40 in float64) :math:`r` comes from a rational
    approximation :math:`r \approx x P(x/x_0)/Q(x/x_0)` with positive coefficients, fitted to
    mpmath in relative error (3e-16 in float64, 1e-8 in float32); above, :math:`1 - r` from its
    asymptotic series in :math:`1/x`. PyTorch's CPU kernel for ``i0e`` is not vectorized and
    costs ten times ``i1e``, so this is what keeps :class:`~pyro_implicit.Rice`'s gradient cheap.
    """
    x0, p, q = _RATIO_RATIONAL[torch.float64 if x.dtype == torch.float64 else torch.float32]
    # The rational branch sees only inputs where it is finite (a clamp, because `where` with a
    # scalar costs as much as the whole rational on CPU); the series replaces it above x0.
    x_small = torch.clamp(x, max=x0)
    y = x_small * (1 / x0)
    ratio = x_small * _polyval(p, y) / _polyval(q, y)
    complement = 1 - ratio
    # The series is evaluated only on the elements that need it: in eager PyTorch it would
    # otherwise cost a dozen full-size passes per call (XLA fuses the JAX twin's `where`).
    if x.numel() and x.max() >= x0:
        large = x >= x0
        inv = 1 / x[large]
        complement = complement.masked_scatter(large, inv * _polyval(_RATIO_ASYMPTOTIC, inv))
        ratio = torch.where(large, 1 - complement, ratio)
    return ratio, complement


def rice_standard_moments(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and variance of :math:`\mathrm{Rice}(a, 1)`.

    :math:`m = \sqrt{\pi/2}\,L_{1/2}(-a^2/2)
    = \sqrt{\pi/2}\,[(1 + 2y) I_0^e(y) + 2y I_1^e(y)]` with :math:`y = a^2/4` and
    exponentially scaled Bessel functions; :math:`v = 2 + a^2 - m^2`, by its asymptotic series
    in :math:`1/y` where the difference would cancel.
    """
    y = a * a / 4
    mean = math.sqrt(math.pi / 2) * ((1 + 2 * y) * i0e_nonnegative(y) + 2 * y * i1e(y))
    large = y >= _VARIANCE_ASYMPTOTIC_FROM
    direct = 2 + a * a - mean * mean
    inv = 1 / torch.where(large, y, _VARIANCE_ASYMPTOTIC_FROM)
    variance = torch.where(large, _polyval(_VARIANCE_ASYMPTOTIC, inv), direct)
    return mean, variance


def _gauss_panel(a, b, lo, hi):
    """Gauss-Legendre integral over [lo, hi] of the lower-tail integrand without its factors
    exp(-(a-b)^2/2) and b^2; a, b, lo, hi broadcast together."""
    nodes = torch.as_tensor(_NODES, dtype=a.dtype, device=a.device)
    weights = torch.as_tensor(_WEIGHTS, dtype=a.dtype, device=a.device)
    a, b, lo, hi = (v.unsqueeze(-1) for v in (a, b, lo, hi))
    t = lo + (hi - lo) * nodes
    sin_t, cos_t = torch.sin(t), torch.cos(t)
    sin_phi = (b / a) * sin_t
    # cos^2 phi = cos^2 t + (1 - b^2/a^2) sin^2 t: positive even where sin_phi rounds to 1 (t
    # near pi/2 with b close to a), where sqrt((1 - sin_phi)(1 + sin_phi)) would give 0 and a NaN.
    cos_phi = torch.sqrt(cos_t**2 + ((a - b) / a) * ((a + b) / a) * sin_t**2)
    # excess = r_1 - (a - b), written without cancellation near t = 0
    excess = 2 * b * torch.sin(t / 2) ** 2 - a * sin_phi**2 / (1 + cos_phi)
    # (b cos t / (a cos phi)) (1 - e^-y) with y = 2ab cos phi cos t equals
    # 2 b^2 cos^2 t (1 - e^-y) / y: b^2 is taken out (the caller adds 2 log b), so that the far
    # lower tail, b -> 0, does not underflow.
    y = 2 * a * b * cos_phi * cos_t
    relative_expm1 = torch.where(y > 0, -torch.expm1(-y) / torch.where(y > 0, y, 1.0), 1.0)
    integrand = torch.exp(-excess * (excess + 2 * (a - b)) / 2) * 2 * cos_t**2 * relative_expm1
    return ((hi - lo) * (integrand * weights).sum(-1, keepdim=True)).squeeze(-1)


def _log_lower_tail(a, b):
    """log(1 - Q_1(a, b)) for 0 < b <= a."""
    width = torch.sqrt(a / b) / (a - b)  # of the Gaussian peak at t = 0; inf when a == b
    cut = _PEAK_WIDTHS * width < _HALF_PI
    end = torch.where(cut, _PEAK_WIDTHS * width, _HALF_PI)
    # Without the cut, two more panels resolve the approach to t = pi/2: there the near-side
    # distance grows like (a - b) / cos t, so the integrand falls off over ~(a - b), and a layer
    # shrinks with the distance of b/a from 1 and with 1/sqrt(ab).
    layer = _LAYER_WIDTHS * (torch.sqrt((1 - b / a) * (1 + b / a)) + torch.rsqrt(a * b))
    falloff = torch.maximum(2 * layer, _FALLOFF_WIDTHS * (a - b))
    first = torch.where(cut, end / 2, end - torch.minimum(end / 2, falloff))
    second = torch.where(cut, 3 * end / 4, end - torch.minimum(end / 4, layer))
    zero = torch.zeros_like(a)
    total = (
        _gauss_panel(a, b, zero, first)
        + _gauss_panel(a, b, first, second)
        + _gauss_panel(a, b, second, end)
    )
    return -((a - b) ** 2) / 2 + 2 * torch.log(b) + torch.log(total / math.pi)


def _log_small_lower_tail(a, b):
    """log(1 - Q_1(a, b)) for a <= b < 1 by the Poisson series."""
    x, lam = b * b / 2, a * a / 2
    lam_term = torch.ones_like(x)
    lam_sum = torch.zeros_like(x)
    x_term = torch.ones_like(x)  # x^(n-1) / n!
    total = torch.zeros_like(x)
    for n in range(1, _SERIES_TERMS + 1):
        lam_sum = lam_sum + lam_term
        lam_term = lam_term * lam / n
        x_term = x_term / n if n > 1 else x_term
        total = total + x_term * lam_sum
        x_term = x_term * x
    return torch.log(x) + torch.log(total) - x - lam


def _log_marcum_q(a, b):
    lower = b < a
    hi, lo = torch.maximum(a, b), torch.minimum(a, b)
    positive = lo > 0
    log_lower = torch.where(
        positive,
        _log_lower_tail(torch.where(positive, hi, 2.0), torch.where(positive, lo, 1.0)),
        -math.inf,
    )
    # Q_1(a, b) = exp(-(a^2+b^2)/2) I_0(ab) + 1 - Q_1(b, a) for b >= a: both terms positive.
    log_q_upper = torch.logaddexp(-((b - a) ** 2) / 2 + torch.log(i0e(a * b)), log_lower)
    small = b < 1
    log_p_small = _log_small_lower_tail(torch.where(small, a, 0.5), torch.where(small, b, 0.5))
    log_p = torch.where(lower, log_lower, torch.where(small, log_p_small, log1mexp(log_q_upper)))
    log_q = torch.where(lower, log1mexp(log_lower), log_q_upper)
    return log_p, log_q


class _LogMarcumQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        with torch.no_grad():
            log_p, log_q = _log_marcum_q(a, b)
        ctx.save_for_backward(a, b, log_p, log_q)
        return log_p, log_q

    @staticmethod
    def backward(ctx, grad_p, grad_q):
        a, b, log_p, log_q = ctx.saved_tensors
        # d(1-Q)/db = b exp(-(a^2+b^2)/2) I0(ab) (the density), d(1-Q)/da = -b e^.. I1(ab).
        peak = torch.log(b) - (b - a) ** 2 / 2
        log_db = peak + torch.log(i0e_nonnegative(a * b))
        # I1 as a factor, not through log(i1e): its derivative stays finite at a = 0, where
        # I1(ab) = 0, so that second derivatives there are not 0 * inf.
        i1_scaled = i1e(a * b)
        da = (-grad_p * torch.exp(peak - log_p) + grad_q * torch.exp(peak - log_q)) * i1_scaled
        db = grad_p * torch.exp(log_db - log_p) - grad_q * torch.exp(log_db - log_q)
        return da, db


def log_marcum_q(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Return :math:`(\log(1 - Q_1(a, b)), \log Q_1(a, b))` for :math:`a, b \ge 0`.

    :math:`1 - Q_1(a, b)` is the CDF at :math:`b` of :math:`\mathrm{Rice}(a, 1)`, and of the
    non-central chi distribution with two degrees of freedom. Both outputs are accurate in
    their own tail, where the other is :math:`\log 1 = 0`. Differentiable (to any order) in
    :math:`a` and :math:`b` through the closed forms
    :math:`\partial_b (1 - Q_1) = b e^{-(a^2+b^2)/2} I_0(ab)` and
    :math:`\partial_a (1 - Q_1) = -b e^{-(a^2+b^2)/2} I_1(ab)`.
    """
    a, b = broadcast_all(a, b)
    return _LogMarcumQ.apply(a, b)
