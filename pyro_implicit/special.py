r"""Special functions that PyTorch lacks.

* :func:`log_marcum_q`: the logarithms of :math:`1 - Q_1(a, b)` and :math:`Q_1(a, b)`, where
  :math:`Q_1` is the Marcum Q-function, with closed-form derivatives in :math:`a` and :math:`b`.
  Relative error in float64 against mpmath: about 1e-12 for :math:`a \le 10^3` in both tails,
  7e-13 at :math:`a = 10^4` (:math:`b` within 3 of :math:`a`, down to :math:`|b - a| = 10^{-4}`).
* :func:`bessel_ratio`: :math:`I_1(x)/I_0(x)` and its complement, both without cancellation.
* :func:`log_ndtr`: :math:`\log\Phi(x)` with a derivative that stays accurate far left
  (``torch.special.log_ndtr``'s does not).
* :func:`rice_standard_moments`: mean and variance of :math:`\mathrm{Rice}(a, 1)`.

The Marcum Q-function is computed from the probability that a standard bivariate normal vector
lies in a disc of radius :math:`b` centred at distance :math:`a` from the origin. Integrating the
radial Gaussian mass along the rays from the origin that cross the disc gives, for
:math:`b \le a`, with :math:`\sin\phi = (b/a)\sin t` and
:math:`r_1 = a\cos\phi - b\cos t` the distance to the near side,

.. math::
    1 - Q_1(a, b) = \frac{1}{\pi}\int_0^{\pi/2} e^{-r_1^2/2}
        \left(1 - e^{-2ab\cos\phi\cos t}\right) \frac{b\cos t}{a\cos\phi}\,dt,

an integral of positive terms, evaluated with four Gauss-Legendre panels: on the Gaussian peak
at :math:`t = 0` (width :math:`\sqrt{a/b}/(a-b)`), split once more towards its end, and on the
fall-off (over :math:`\sim a - b`) and the boundary layer that precede :math:`t = \pi/2`.
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
from torch.special import erfc, erfcx, i0e, i1e

from ._provenance import apply

__all__ = [
    "bessel_ratio",
    "gammainc",
    "gammaincc",
    "i0e_nonnegative",
    "log1mexp",
    "log_gammainc_pair",
    "log_marcum_q",
    "log_ndtr",
    "rice_standard_moments",
    "student_t_log_cdf_pair",
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
    return apply(_I0eNonnegative, x)


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


_MILLS_SERIES = (-1.0, 3.0, -15.0, 105.0, -945.0, 10395.0)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def _log_ndtr_and_slope(x):
    """(log Phi(x), s = phi(x)/Phi(x), x + s), see :func:`log_ndtr`."""
    positive = x > 0
    cut = -37.0 if torch.finfo(x.dtype).eps < 1e-10 else -10.0
    far = x <= cut
    # Each branch sees only inputs where it is accurate (and finite); one Phi(-|x|) serves two,
    # through erfc (torch.special.ndtr cancels in its lower tail: 4% off at -5 in float32, 0 at
    # -20 in float64).
    xn = torch.where(far, cut, x)
    small = erfc(torch.where(positive, xn, -xn) * _SQRT_HALF) / 2
    near = torch.where(positive, torch.log1p(-small), torch.log(torch.where(positive, 0.5, small)))
    xf = torch.where(far, x, cut)
    inv = 1 / (xf * xf)
    series = inv * _polyval(_MILLS_SERIES, inv)
    sum_ = 1 + series  # Phi(x) -x / phi(x)
    far_value = -xf * xf / 2 - torch.log(-xf) - _HALF_LOG_2PI + torch.log(sum_)
    # phi/Phi: for x < 0 as sqrt(2/pi)/erfcx(-x/sqrt 2), free of the rounding of two exponents of
    # about -x^2/2 (1e-13 relative at -35 in float64, 1e-10 in x + s below)
    slope = torch.where(
        far,
        -xf / sum_,
        torch.where(
            positive,
            torch.exp(-xn * xn / 2 - _HALF_LOG_2PI - near),
            _SQRT_2_OVER_PI / erfcx(torch.where(positive, 0.0, -xn) * _SQRT_HALF),
        ),
    )
    # x + s, which cancels far left: x (sum - 1)/sum there
    shifted = torch.where(far, xf * series / sum_, xn + slope)
    return torch.where(far, far_value, near), slope, shifted


class _LogNdtr(torch.autograd.Function):
    """``(log Phi(x), s = phi(x)/Phi(x))``: the second output is the first's derivative, and
    :math:`-s(x + s)` its own, so that derivatives of any order follow."""

    @staticmethod
    def forward(ctx, x):
        with torch.no_grad():
            value, slope, shifted = _log_ndtr_and_slope(x)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, slope, shifted)
        return value, slope

    @staticmethod
    def backward(ctx, grad_value, grad_slope):
        x, slope, shifted = ctx.saved_tensors
        if grad_value is None and grad_slope is None:
            return None
        grad = 0.0 if grad_value is None else grad_value * slope
        if grad_slope is not None:
            if torch.is_grad_enabled():  # a higher derivative: x + s's own, at its exact value
                direct = x + slope
                shifted = shifted + (direct - direct.detach())
            grad = grad - grad_slope * slope * shifted
        return grad


def log_ndtr(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\Phi(x)`, the log-CDF of the standard normal, relatively accurate on the
    whole line, with a derivative that is too. ``torch.special.log_ndtr``'s derivative is
    :math:`\exp(\log\phi - \log\Phi)`, which fails far left, where both are about
    :math:`-x^2/2`: 4.5% off at :math:`x = -1000` in float32, 0.399 or 0 instead of
    :math:`10^5` or :math:`10^{10}`, and inf or NaN further out; its value takes
    :math:`\log(\Phi(x))` for :math:`x > 0`, 1e-9 off at :math:`x = 10` in float64. Here, as
    in ``numpyro_implicit.special.log_ndtr``: :math:`\mathrm{log1p}(-\Phi(-x))` for
    :math:`x > 0`, :math:`\log\Phi(x)` down to -37 (float64) or -10 (float32), and six terms
    of the series

    .. math::
        \log\Phi(x) = -\frac{x^2}{2} - \log(-x\sqrt{2\pi})
            + \log\Bigl(1 + \sum_{n=1}^{6} \frac{(-1)^n (2n-1)!!}{x^{2n}}\Bigr)

    below; the derivative :math:`s = \phi/\Phi` is :math:`-x` over that sum there, and
    :math:`\exp(\log\phi - \log\Phi)` elsewhere; the second derivative is
    :math:`-s(x + s)`."""
    return apply(_LogNdtr, x)[0]


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
    """log(1 - Q_1(a, b)) + (a - b)^2/2 for 0 < b <= a: the tail without its Gaussian factor."""
    width = torch.sqrt(a / b) / (a - b)  # of the Gaussian peak at t = 0; inf when a == b
    cut = _PEAK_WIDTHS * width < _HALF_PI
    end = torch.where(cut, _PEAK_WIDTHS * width, _HALF_PI)
    # Without the cut, more panels resolve the approach to t = pi/2: there the near-side
    # distance grows like (a - b) / cos t, so the integrand falls off over ~(a - b), and a layer
    # shrinks with the distance of b/a from 1 and with 1/sqrt(ab).
    layer = _LAYER_WIDTHS * (torch.sqrt((1 - b / a) * (1 + b / a)) + torch.rsqrt(a * b))
    falloff = torch.maximum(2 * layer, _FALLOFF_WIDTHS * (a - b))
    first = torch.where(cut, end / 2, end - torch.minimum(end / 2, falloff))
    second = torch.where(cut, 3 * end / 4, end - torch.minimum(end / 4, layer))
    zero = torch.zeros_like(a)
    # The integrand changes near pi/2 on the scale of its distance from there, so a panel from
    # 0 to `falloff` short of pi/2 converges slowly when falloff << pi/2 (large a with b near a:
    # 7e-7 relative error at a = 1e4, a - b = 1e-3). A split where the distance from the end
    # is the geometric mean of the panel's two takes its length-to-distance ratio to the root.
    middle = end - torch.sqrt((end - first) * end)
    total = (
        _gauss_panel(a, b, zero, middle)
        + _gauss_panel(a, b, middle, first)
        + _gauss_panel(a, b, first, second)
        + _gauss_panel(a, b, second, end)
    )
    return 2 * torch.log(b) + torch.log(total / math.pi)


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
    """(log(1 - Q_1), log Q_1) and the logarithms of the density over each: the latter with the
    Gaussian factor exp(-(b - a)^2/2) of density and small tail cancelled in closed form (as
    differences of logarithms they would keep only the digits of (b - a)^2/2 that its rounding
    leaves: 2e-5 relative in float32 at b - a = 40, 6e-3 at 1000)."""
    lower = b < a
    hi, lo = torch.maximum(a, b), torch.minimum(a, b)
    positive = lo > 0
    gauss = -((b - a) ** 2) / 2
    # log(1 - Q_1(hi, lo)) without the Gaussian factor
    lower_rest = torch.where(
        positive,
        _log_lower_tail(torch.where(positive, hi, 2.0), torch.where(positive, lo, 1.0)),
        -math.inf,
    )
    log_lower = gauss + lower_rest
    # Q_1(a, b) = exp(-(a^2+b^2)/2) I_0(ab) + 1 - Q_1(b, a) for b >= a: both terms positive.
    log_i0 = torch.log(i0e(a * b))
    q_upper_rest = torch.logaddexp(log_i0, lower_rest)
    log_q_upper = gauss + q_upper_rest
    small = b < 1
    log_p_small = _log_small_lower_tail(torch.where(small, a, 0.5), torch.where(small, b, 0.5))
    log_p = torch.where(lower, log_lower, torch.where(small, log_p_small, log1mexp(log_q_upper)))
    log_q = torch.where(lower, log1mexp(log_lower), log_q_upper)
    # log(b e^gauss I0e(ab)) - log(tail), the small tail's without the factor
    log_b_i0 = torch.log(b) + log_i0
    ratio_p = torch.where(lower, log_b_i0 - lower_rest, log_b_i0 + gauss - log_p)
    ratio_q = torch.where(lower, log_b_i0 + gauss - log_q, log_b_i0 - q_upper_rest)
    return log_p, log_q, ratio_p, ratio_q


class _LogMarcumQ(torch.autograd.Function):
    """``(log(1 - Q_1), log Q_1, log(q/(1 - Q_1)), log(q/Q_1))`` with ``q`` the density: the last
    two carry the first derivatives, and their own derivatives the second ones."""

    @staticmethod
    def forward(ctx, a, b):
        with torch.no_grad():
            outputs = _log_marcum_q(a, b)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(a, b, *outputs[2:])
        return outputs

    @staticmethod
    def backward(ctx, grad_p, grad_q, grad_ratio_p, grad_ratio_q):
        a, b, ratio_p, ratio_q = ctx.saved_tensors
        if all(g is None for g in (grad_p, grad_q, grad_ratio_p, grad_ratio_q)):
            return None, None
        # d log(1-Q) = (q/(1-Q)) (db - r da) and d log Q = -(q/Q) (db - r da), r = I1(ab)/I0(ab)
        # (d(1-Q)/db = q = b e^-(a^2+b^2)/2 I0(ab), d(1-Q)/da = -b e^.. I1(ab)); each ratio is
        # log q minus its tail's logarithm, d log q = (b r - a) da + (1/b + a r - b) db.
        tail = 0.0
        for grad, grad_ratio, ratio, sign in (
            (grad_p, grad_ratio_p, ratio_p, 1),
            (grad_q, grad_ratio_q, ratio_q, -1),
        ):
            if grad is not None or grad_ratio is not None:
                grad = (0.0 if grad is None else grad) - (0.0 if grad_ratio is None else grad_ratio)
                tail = tail + sign * grad * torch.exp(ratio)
        r, _ = bessel_ratio(a * b)
        da, db = -tail * r, tail
        ratios = [g for g in (grad_ratio_p, grad_ratio_q) if g is not None]
        if ratios:  # only under a double backward: 1/b is infinite at b = 0
            density = sum(ratios)
            da = da + density * (b * r - a)
            db = db + density * (1 / b + a * r - b)
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
    return apply(_LogMarcumQ, a, b)[:2]


# --- Incomplete gamma and Student t CDF, in log space with parameter derivatives -------------
#
# PyTorch's ``gammainc`` has no derivative in the shape and there is no Student t CDF at all.
# Both are computed here in log space (so that both tails stay accurate) by the classical
# series and continued fractions, carrying the derivative in the shape parameters along the
# iteration (forward mode), which converges with the value itself. Second derivatives come
# from autograd through the same iterations, recomputed with a graph in a double backward.

_MAX_ITERATIONS = 2000  # enough for shapes up to ~1e4 at the slowest point x ~ a
_FPMIN = 1e-30  # Lentz's guard against division by zero (representable in float32)


def _eps(x):
    return torch.finfo(x.dtype).eps


def _log_gammainc_series(a, x):
    """log P(a, x), its a-derivative and log(x q/P) = log(a / sum_n t_n) (q the density) by the
    series, for 0 < x < a + 1."""
    # P = x^a e^-x / Gamma(a + 1) sum_n t_n, t_n = prod_{k<=n} x / (a + k); carry
    # d(log t_n)/da = -sum_{k<=n} 1 / (a + k).
    term, dlog_term = torch.ones_like(x), torch.zeros_like(x)
    total, dtotal = torch.ones_like(x), torch.zeros_like(x)
    eps = _eps(x)
    for n in range(1, _MAX_ITERATIONS + 1):
        term = term * x / (a + n)
        dlog_term = dlog_term - 1 / (a + n)
        total = total + term
        dtotal = dtotal + term * dlog_term
        # Stop when the value and its derivative have both converged.
        if n % 8 == 0 and bool(
            torch.all((term <= eps * total) & ((term * dlog_term).abs() <= eps * dtotal.abs()))
        ):
            break
    log_total = torch.log(total)
    log_p = a * torch.log(x) - x - torch.lgamma(a + 1) + log_total
    dlog_p = torch.log(x) - torch.digamma(a + 1) + dtotal / total
    return log_p, dlog_p, torch.log(a) - log_total


def _log_gammaincc_cf(a, x):
    """log Q(a, x), its a-derivative and log(x q/Q) = -log h (q the density) by Legendre's
    continued fraction (modified Lentz), for x >= a + 1."""
    # Q = x^a e^-x / Gamma(a) h, h = 1/(b0 + a1/(b1 + a2/(b2 + ...))), b_i = x + 2i + 1 - a,
    # a_i = -i (i - a). Tangents in a are carried as logarithmic derivatives r = d log(.)/da.
    eps = _eps(x)
    b = x + 1 - a
    d = 1 / b
    r_d = 1 / b  # d log(1/b)/da with db/da = -1
    c = torch.full_like(x, 1 / _FPMIN)
    r_c = torch.zeros_like(x)
    log_h, r_h = torch.log(d), r_d
    for i in range(1, _MAX_ITERATIONS + 1):
        an = -i * (i - a)  # d an/da = i
        b = b + 2
        big_d = an * d + b
        r_big_d = (i * d + an * d * r_d - 1) / big_d
        big_d = torch.where(big_d.abs() < _FPMIN, _FPMIN, big_d)
        big_c = b + an / c
        r_big_c = (-1 + i / c - an / c * r_c) / big_c
        big_c = torch.where(big_c.abs() < _FPMIN, _FPMIN, big_c)
        d, r_d = 1 / big_d, -r_big_d
        c, r_c = big_c, r_big_c
        delta = d * c
        log_h, r_h = log_h + torch.log(delta), r_h + r_d + r_c
        # The derivative can lag the value: at integer a the fraction terminates (a_a = 0) while
        # its a-derivative does not, so both must have converged.
        if bool(torch.all(((delta - 1).abs() <= eps) & ((r_d + r_c).abs() <= eps * r_h.abs()))):
            break
    log_q = a * torch.log(x) - x - torch.lgamma(a) + log_h
    dlog_q = torch.log(x) - torch.digamma(a) + r_h
    return log_q, dlog_q, -log_h


def _log_gammainc_impl(a, x):
    """(log P, log Q, d log P/da, d log Q/da, log d log P/d log x, log -d log Q/d log x) for
    a > 0, x > 0."""
    series = x < a + 1
    # Each method sees only inputs in its own region (others get a harmless stand-in).
    log_p_s, dlog_p_s, log_dp_s = _log_gammainc_series(a, torch.where(series, x, a / 2))
    a_cf = torch.where(series, torch.ones_like(a), a)
    log_q_c, dlog_q_c, log_dq_c = _log_gammaincc_cf(a_cf, torch.where(series, a_cf + 2, x))
    log_p = torch.where(series, log_p_s, log1mexp(torch.clamp(log_q_c, max=0.0)))
    log_q = torch.where(series, log1mexp(torch.clamp(log_p_s, max=0.0)), log_q_c)
    # P dlogP/da = -Q dlogQ/da, each formed from the smaller side, so that no ratio overflows.
    dlog_p = torch.where(series, dlog_p_s, -torch.exp(log_q - log_p) * dlog_q_c)
    dlog_q = torch.where(series, -torch.exp(log_p - log_q) * dlog_p_s, dlog_q_c)
    # x q/P and x q/Q from the terms of each method, where x^a e^-x / Gamma(a) cancels: formed
    # on its own, its logarithm has no correct digit left once x is large (1e8 in float32; the
    # terms are about -x), and the derivatives in x would be 0, inf or NaN.
    log_dp = torch.where(series, log_dp_s, log_dq_c + log_q - log_p)
    log_dq = torch.where(series, log_dp_s + log_p - log_q, log_dq_c)
    return log_p, log_q, dlog_p, dlog_q, log_dp, log_dq


def _log_x_cotangent(grad_p, grad_q, log_dp, log_dq):
    """The cotangent of log x from those of (log P, log Q), from :func:`_log_gammainc_impl`."""
    return grad_p * torch.exp(log_dp) - grad_q * torch.exp(log_dq)


def _variable_cotangent(grad_f, grad_s, log_f, log_s, log_density):
    r"""The cotangent of the variable from those of :math:`(\log F, \log S)`: with
    :math:`dF = -dS = q\,dx`, :math:`\bar x = \bar f\,q/F - \bar s\,q/S`, each ratio the
    exponential of a difference of logarithms, so that none underflows."""
    return grad_f * torch.exp(log_density - log_f) - grad_s * torch.exp(log_density - log_s)


def _recomputed_under_graph(recompute, n_inputs):
    """Decorator for the backward of a Function whose forward saved its ``n_inputs`` inputs,
    then the results of ``recompute(*inputs)``, an iteration run without a graph that carries
    the first derivatives along. The backward is called as ``backward(ctx, inputs, results,
    *grads)``. Under ``create_graph`` (a second derivative) with inputs that need gradients, the
    results are recomputed with a graph, through which autograd differentiates the iteration:
    the derivative of the truncated series or fraction, converged with it (as JAX's forward
    mode through the same loops)."""

    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            saved = ctx.saved_tensors
            inputs, results = saved[:n_inputs], saved[n_inputs:]
            if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
                results = recompute(*inputs)
            return backward(ctx, inputs, results, *grads)

        return wrapper

    return decorate


class _LogGammaincPair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, x):
        results = _log_gammainc_impl(a, x)
        ctx.save_for_backward(a, x, *results)
        return results[:2]

    @staticmethod
    @_recomputed_under_graph(_log_gammainc_impl, 2)
    def backward(ctx, inputs, results, grad_p, grad_q):
        (_, x), (_, _, dlog_p, dlog_q, log_dp, log_dq) = inputs, results
        grad_a = grad_p * dlog_p + grad_q * dlog_q
        return grad_a, _log_x_cotangent(grad_p, grad_q, log_dp, log_dq) / x


def log_gammainc_pair(a: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Return :math:`(\log P(a, x), \log Q(a, x))`, the logarithms of the regularized lower and
    upper incomplete gamma functions, for :math:`a > 0`, :math:`x > 0`.

    .. math:: P(a, x) = \frac{1}{\Gamma(a)}\int_0^x t^{a-1} e^{-t}\,dt, \qquad Q = 1 - P.

    :math:`P` comes from the series
    :math:`P = \frac{x^a e^{-x}}{\Gamma(a+1)}\sum_{n\ge0}\prod_{k=1}^n\frac{x}{a+k}` where
    :math:`x < a + 1`, :math:`Q` from Legendre's continued fraction elsewhere, each in log space,
    and the other from :math:`\log(1 - e^{\cdot})`, so that both tails are accurate. Differentiable
    in :math:`a` and :math:`x`: the :math:`a`-derivative is carried through the series or
    the continued fraction (relative error below 1e-11 in float64 against mpmath for
    :math:`a \le 10^4`), the
    :math:`x`-derivative is the density :math:`x^{a-1}e^{-x}/\Gamma(a)`. Shapes up to about
    :math:`10^4` (the iteration count grows like :math:`\sqrt a`). Values carry the rounding of
    :math:`\log\Gamma(a)` (relative :math:`\sim\epsilon\,a\log a`), and the function taken as
    the complement of the other (:math:`Q` for :math:`x < a + 1`, :math:`P` otherwise) a relative
    error :math:`\sim\epsilon P/Q` (resp. :math:`\epsilon Q/P`), up to 1e-11 for small shapes.
    Second derivatives differentiate the iterations (in a double backward); they carry the
    error of PyTorch's trigamma, up to 5e-10 relative on CPU.
    """
    a, x = broadcast_all(a, x)
    return apply(_LogGammaincPair, a, x)


def gammainc(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""The regularized lower incomplete gamma function :math:`P(a, x)`, differentiable in
    :math:`a` and :math:`x` (see :func:`log_gammainc_pair`)."""
    return torch.exp(log_gammainc_pair(a, x)[0])


def gammaincc(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""The regularized upper incomplete gamma function :math:`Q(a, x) = 1 - P(a, x)`."""
    return torch.exp(log_gammainc_pair(a, x)[1])


def _lbeta(a, b):
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


def _log_betainc_cf(a, b, x, y, log_x, log_y):
    """log I_x(a, b) with its derivatives in a and b at fixed x, for x < (a+1)/(a+b+2), y = 1-x,
    by the continued fraction of Numerical Recipes (modified Lentz), carrying log-derivatives.
    ``log_x`` and ``log_y`` are passed apart: x may underflow where log x is still finite."""
    eps = _eps(x)
    # front = x^a y^b / (a B(a, b))
    log_front = a * log_x + b * log_y - torch.log(a) - _lbeta(a, b)
    dfront_a = log_x - 1 / a - torch.digamma(a) + torch.digamma(a + b)
    dfront_b = log_y - torch.digamma(b) + torch.digamma(a + b)
    one = torch.ones_like(x)
    big_d = 1 - (a + b) * x / (a + 1)
    # d/da (a+b)/(a+1) = (1-b)/(a+1)^2, d/db = 1/(a+1)
    rd_a = (-x * (1 - b) / (a + 1) ** 2) / big_d
    rd_b = (-x / (a + 1)) / big_d
    big_d = torch.where(big_d.abs() < _FPMIN, _FPMIN, big_d)
    d, rd_a, rd_b = 1 / big_d, -rd_a, -rd_b
    c, rc_a, rc_b = one, torch.zeros_like(x), torch.zeros_like(x)
    log_h, rh_a, rh_b = torch.log(d), rd_a, rd_b

    def step(aa, daa_a, daa_b, d, rd_a, rd_b, c, rc_a, rc_b):
        big_d = 1 + aa * d
        rbd_a = (daa_a * d + aa * d * rd_a) / big_d
        rbd_b = (daa_b * d + aa * d * rd_b) / big_d
        big_d = torch.where(big_d.abs() < _FPMIN, _FPMIN, big_d)
        big_c = 1 + aa / c
        rbc_a = (daa_a - aa * rc_a) / c / big_c
        rbc_b = (daa_b - aa * rc_b) / c / big_c
        big_c = torch.where(big_c.abs() < _FPMIN, _FPMIN, big_c)
        return 1 / big_d, -rbd_a, -rbd_b, big_c, rbc_a, rbc_b

    for m in range(1, _MAX_ITERATIONS + 1):
        m2 = 2 * m
        # even step: aa = m (b - m) x / ((a - 1 + 2m)(a + 2m))
        aa = m * (b - m) * x / ((a - 1 + m2) * (a + m2))
        daa_a = -aa * (1 / (a - 1 + m2) + 1 / (a + m2))
        daa_b = m * x / ((a - 1 + m2) * (a + m2))
        d, rd_a, rd_b, c, rc_a, rc_b = step(aa, daa_a, daa_b, d, rd_a, rd_b, c, rc_a, rc_b)
        log_h = log_h + torch.log(d * c)
        rh_a, rh_b = rh_a + rd_a + rc_a, rh_b + rd_b + rc_b
        # odd step: aa = -(a + m)(a + b + m) x / ((a + 2m)(a + 1 + 2m))
        aa = -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1 + m2))
        daa_a = aa * (1 / (a + m) + 1 / (a + b + m) - 1 / (a + m2) - 1 / (a + 1 + m2))
        daa_b = aa / (a + b + m)
        d, rd_a, rd_b, c, rc_a, rc_b = step(aa, daa_a, daa_b, d, rd_a, rd_b, c, rc_a, rc_b)
        delta = d * c
        log_h = log_h + torch.log(delta)
        step_a, step_b = rd_a + rc_a, rd_b + rc_b
        rh_a, rh_b = rh_a + step_a, rh_b + step_b
        # The derivatives can lag the value (the fraction terminates at integer b, its
        # b-derivative does not), so all three must have converged.
        if bool(
            torch.all(
                ((delta - 1).abs() <= eps)
                & (step_a.abs() <= eps * rh_a.abs())
                & (step_b.abs() <= eps * rh_b.abs())
            )
        ):
            break
    return log_front + log_h, dfront_a + rh_a, dfront_b + rh_b


def _log_betainc_impl(a, b, x, y, log_x, log_y):
    """log I_x(a, b), log(1 - I_x(a, b)) and d log I/da at fixed x, y = 1 - x."""
    direct = x < (a + 1) / (a + b + 2)
    # I_x(a, b) = 1 - I_y(b, a): each side evaluated where its continued fraction converges.
    xs, ys = torch.where(direct, x, y), torch.where(direct, y, x)
    log_xs, log_ys = torch.where(direct, log_x, log_y), torch.where(direct, log_y, log_x)
    first, second = torch.where(direct, a, b), torch.where(direct, b, a)
    log_j, dj_first, dj_second = _log_betainc_cf(first, second, xs, ys, log_xs, log_ys)
    log_jc = log1mexp(torch.clamp(log_j, max=0.0))
    log_i = torch.where(direct, log_j, log_jc)
    log_ic = torch.where(direct, log_jc, log_j)
    # d I/da = -d J/d(second slot) on the symmetric side.
    dlog_i = torch.where(direct, dj_first, -torch.exp(log_j - log_jc) * dj_second)
    return log_i, log_ic, dlog_i


def _student_t_xy(df, t):
    """x = df / (df + t^2), y = 1 - x and their logarithms, without forming t^2, which overflows
    (float32 beyond |t| ~ 1e19): x and y may underflow where their logarithms stay finite."""
    t_abs, root = torch.abs(t), torch.sqrt(df)
    big = t_abs > root
    # r <= 1, and q = r^2 is t^2/df inside |t| <= sqrt(df), df/t^2 outside.
    near, far = torch.minimum(t_abs, root), torch.maximum(t_abs, root)
    r = near / far
    log_r = torch.where(
        r >= torch.finfo(t.dtype).tiny, torch.log(r), torch.log(near) - torch.log(far)
    )
    q = r * r
    log_1pq = torch.log1p(q)
    # 1/(1+q) is x inside and y outside; q/(1+q) the other.
    p_one, p_q = 1 / (1 + q), q / (1 + q)
    log_one, log_q = -log_1pq, 2 * log_r - log_1pq
    x, y = torch.where(big, p_q, p_one), torch.where(big, p_one, p_q)
    log_x, log_y = torch.where(big, log_q, log_one), torch.where(big, log_one, log_q)
    return x, y, log_x, log_y


def _student_t_log_pdf(df, t):
    return (
        torch.lgamma((df + 1) / 2)
        - torch.lgamma(df / 2)
        - 0.5 * torch.log(df * math.pi)
        - (df + 1) / 2 * _log1p_square(t, df)
    )


def _student_t_impl(df, t):
    """(log F, log S, d log F/d df, d log S/d df) of the standard Student t at t."""
    # The lower tail L = F(-|t|) = I_x(df/2, 1/2) / 2 with x = df / (df + t^2).
    zero = t == 0
    # At t = 0, L = 1/2 exactly (set below). There x = 1 and log y = -inf, with infinite
    # derivatives: the stand-in t = sqrt(df), where x = y = 1/2, keeps the branches and their
    # derivatives finite.
    x, y, log_x, log_y = _student_t_xy(df, torch.where(zero, torch.sqrt(df), t))
    half = torch.full_like(df, 0.5)
    a = df / 2
    log_i, log_ic, dlog_i_da = _log_betainc_impl(a, half, x, y, log_x, log_y)
    log_l = log_i - math.log(2)
    log_lc = log1mexp(torch.clamp(log_l, max=0.0))
    # dL/d df / L = (1/2) dlogI/da + x^a y^(1/2) / (B(a, 1/2) df I) (x moves with df too).
    log_dx_term = a * log_x + 0.5 * log_y - _lbeta(a, half) - torch.log(df)
    dlog_l = 0.5 * dlog_i_da + torch.exp(log_dx_term - log_i)
    # At t = 0, L = 1/2 for every df. Its terms of first order in t (taken as +0), with q0 the
    # density at 0, log L = -log 2 - 2 t q0 and d log L/d df = -2 t dq0/d df, vanish there but
    # give the second derivatives in t.
    q0 = torch.exp(_student_t_log_pdf(df, torch.zeros_like(t)))
    dlog_q0 = 0.5 * (torch.digamma((df + 1) / 2) - torch.digamma(df / 2)) - 0.5 / df
    slope = 2 * t * q0
    log_l = torch.where(zero, -math.log(2) - slope, log_l)
    log_lc = torch.where(zero, -math.log(2) + slope, log_lc)
    dlog_l = torch.where(zero, -slope * dlog_q0, dlog_l)
    dlog_lc = -torch.exp(log_l - log_lc) * dlog_l  # L <= 1/2: the ratio is at most 1
    negative = t < 0
    log_f = torch.where(negative, log_l, log_lc)
    log_s = torch.where(negative, log_lc, log_l)
    dlog_f = torch.where(negative, dlog_l, dlog_lc)
    dlog_s = torch.where(negative, dlog_lc, dlog_l)
    return log_f, log_s, dlog_f, dlog_s


class _StudentTLogCdfPair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, df, t):
        results = _student_t_impl(df, t)
        ctx.save_for_backward(df, t, *results)
        return results[:2]

    @staticmethod
    @_recomputed_under_graph(_student_t_impl, 2)
    def backward(ctx, inputs, results, grad_f, grad_s):
        (df, t), (log_f, log_s, dlog_f, dlog_s) = inputs, results
        log_pdf = _student_t_log_pdf(df, t)
        grad_df = grad_f * dlog_f + grad_s * dlog_s
        grad_t = _variable_cotangent(grad_f, grad_s, log_f, log_s, log_pdf)
        return grad_df, grad_t


def student_t_log_cdf_pair(df: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Return :math:`(\log F_\nu(t), \log(1 - F_\nu(t)))` for the standard Student t
    distribution with :math:`\nu > 0` degrees of freedom, accurate in both tails.

    .. math:: F_\nu(t) = \tfrac12 I_{\nu/(\nu + t^2)}\left(\tfrac\nu2, \tfrac12\right)
        \quad (t \le 0), \qquad F_\nu(t) = 1 - F_\nu(-t),

    with the regularized incomplete beta function :math:`I` from its continued fraction (and
    :math:`I_x(a, b) = 1 - I_{1-x}(b, a)` where that converges faster, with :math:`1 - x` formed
    without cancellation). Differentiable in :math:`t` (the density) and in :math:`\nu`, whose
    derivative is carried through the continued fraction; second derivatives differentiate
    that iteration (in a double backward).
    """
    df, t = broadcast_all(df, t)
    return apply(_StudentTLogCdfPair, df, t)


def _gamma_impl(a, rate, value):
    return _log_gammainc_impl(a, rate * value)


class _GammaLogCdfPair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, rate, value):
        results = _gamma_impl(a, rate, value)
        ctx.save_for_backward(a, rate, value, *results)
        return results[:2]

    @staticmethod
    @_recomputed_under_graph(_gamma_impl, 3)
    def backward(ctx, inputs, results, grad_p, grad_q):
        (_, rate, value), (_, _, dlog_p, dlog_q, log_dp, log_dq) = inputs, results
        # in log x = log rate + log value: finite where x is subnormal in float32 (a small shape
        # puts mass there), where d log P / dx overflows
        grad_log_x = _log_x_cotangent(grad_p, grad_q, log_dp, log_dq)
        grad_a = grad_p * dlog_p + grad_q * dlog_q
        grad_rate = grad_log_x / rate if ctx.needs_input_grad[1] else None
        grad_value = grad_log_x / value if ctx.needs_input_grad[2] else None
        return grad_a, grad_rate, grad_value


def gamma_log_cdf_pair(
    concentration: torch.Tensor, rate: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Return :math:`(\log F(v), \log(1 - F(v)))` of :math:`\mathrm{Gamma}(a, \beta)` at
    :math:`v > 0`, i.e. :func:`log_gammainc_pair` at :math:`(a, \beta v)`, differentiable (twice and
    more) in all three; the derivatives in :math:`\beta` and :math:`v` go through
    :math:`\partial\log P/\partial\log x = x^a e^{-x}/(\Gamma(a) P)`, which stays finite where
    :math:`\beta v` is subnormal (float32 samples of a small shape)."""
    concentration, rate, value = broadcast_all(concentration, rate, value)
    return apply(_GammaLogCdfPair, concentration, rate, value)


def _cauchy_log_tails(x):
    """(log F, log S) of the standard Cauchy, F(x) = atan2(1, -x)/pi: no cancellation."""
    one = torch.ones_like(x)
    return torch.log(torch.atan2(one, -x) / math.pi), torch.log(torch.atan2(one, x) / math.pi)


def _log1p_square(x, c):
    """log(1 + x^2 / c) without overflow of x^2 (float32 overflows beyond |x| ~ 1e19)."""
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    big = torch.abs(x) > torch.sqrt(c)
    # Each branch sees only the inputs where it is used, so that gradients stay finite.
    x_big = torch.where(big, x, 1.0)
    x_small = torch.where(big, 0.0, x)
    return torch.where(
        big,
        2 * torch.log(torch.abs(x_big)) - torch.log(c) + torch.log1p(c / (x_big * x_big)),
        torch.log1p(x_small * x_small / c),
    )


def _cauchy_log_density(x):
    """log(1/(pi (1 + x^2))) without overflow of x^2."""
    return -math.log(math.pi) - _log1p_square(x, 1.0)


class _CauchyLogCdfPair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        log_f, log_s = _cauchy_log_tails(x)
        ctx.save_for_backward(x, log_f, log_s)
        return log_f, log_s

    @staticmethod
    def backward(ctx, grad_f, grad_s):
        x, log_f, log_s = ctx.saved_tensors
        # q/F and q/S as exponentials of differences: autograd through atan2 forms 1/(1 + x^2),
        # which underflows in float32 for |x| > 1e19 and turns these ratios into 0.
        log_q = _cauchy_log_density(x)
        return _variable_cotangent(grad_f, grad_s, log_f, log_s, log_q)


def cauchy_log_cdf_pair(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Return :math:`(\log F(x), \log(1 - F(x)))` of the standard Cauchy distribution,
    :math:`F(x) = \operatorname{atan2}(1, -x)/\pi`, exact in both tails, with the derivative
    :math:`\partial_x \log F = q/F` formed in log space (finite far into the float32 tails)."""
    return apply(_CauchyLogCdfPair, x)
