r"""Truncation of a univariate distribution, with implicit reparameterization gradients
(PyTorch / Pyro).

The truncated law of a base with CDF :math:`F`, survival :math:`S = 1 - F` and density
:math:`q` on :math:`[a, b]` has

.. math:: F_T(z) = \frac{F(z) - F(a)}{F(b) - F(a)}, \qquad q_T(z) = \frac{q(z)}{F(b) - F(a)}.

Every difference of :math:`F` is formed from whichever of :math:`F` and :math:`S` is smaller
(:math:`F(y) - F(x) = S(x) - S(y)`), in log space, so that intervals far in either tail keep
their precision where :math:`F(a)` and :math:`F(b)` both round to 0 or to 1.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import (
    Cauchy,
    Exponential,
    Gumbel,
    Laplace,
    Logistic,
    LogNormal,
    Normal,
    TorchDistribution,
    constraints,
)
from torch.distributions.utils import broadcast_all

from ._implicit import implicit_reparameterize
from .base_cdf import (
    check_base,
    log_cdf_pair,
    log_hazards,
    parameters,
    rebuild,
    stand_in,
    support_bounds,
)
from .base_cdf import log_prob as base_log_prob
from .special import log1mexp
from .truncated_normal import TruncatedNormal, _at_most_zero, _check_ordered, _clamp

__all__ = ["TruncatedDistribution", "TruncatedUnivariate"]

_MAX_STEPS = 100  # safeguarded Newton steps; the usual count is under 10
_DE_STEP = 1 / 8  # tanh-sinh quadrature for the moments: step and half-range in t
_DE_RANGE = 4.5  # u(t) reaches 1e-61, below anything that matters in float64
_DE_RANGE_FLOAT32 = 3.5  # u(t) reaches 3e-23 (and the quantiles of a Cauchy stay finite)
_CLOSED_FORM_ICDF = (Cauchy, Exponential, Gumbel, Laplace, Logistic, LogNormal)


def TruncatedDistribution(base_dist, low=None, high=None, validate_args=None):
    r"""The distribution ``base_dist`` truncated to :math:`[\mathrm{low}, \mathrm{high}]`, with
    implicit reparameterization gradients in the base's parameters and in the bounds.

    A :class:`~pyro.distributions.Normal` base gives this package's :class:`TruncatedNormal`;
    any other base gives a :class:`TruncatedUnivariate` (see there for the contract a base must
    meet), as NumPyro's ``TruncatedDistribution`` returns an instance of a class of its own.

    :param base_dist: a univariate continuous distribution with a CDF.
    :param low: lower bound, or ``None`` for the lower end of the base's support.
    :param high: upper bound, or ``None`` for the upper end of the base's support.
    """
    if isinstance(base_dist, Normal):
        loc, scale = base_dist.loc, base_dist.scale
        return TruncatedNormal(loc, scale, low, high, validate_args=validate_args)
    return TruncatedUnivariate(base_dist, low, high, validate_args=validate_args)


def _log_mass(lower, upper):
    r""":math:`\log(F(y) - F(x))` for :math:`x \le y` from ``lower = (log F(x), log S(x))`` and
    ``upper = (log F(y), log S(y))``: from :math:`F` when :math:`F(y) < S(x)`, else from
    :math:`S`, so that the larger term of the difference is the smaller of the two."""
    (log_f1, log_s1), (log_f2, log_s2) = lower, upper
    use_f = log_f2 < log_s1
    # Where the larger term underflows (both ends far in one tail), the mass is 0: -inf, not
    # the NaN of -inf - (-inf).
    empty = torch.where(use_f, log_f2, log_s1) == -math.inf
    # The branch not taken gets a harmless -1, so that its gradient stays finite.
    d_f = torch.where(use_f & ~empty, torch.clamp(log_f1 - log_f2, max=0.0), -1.0)
    d_s = torch.where(use_f | empty, -1.0, torch.clamp(log_s2 - log_s1, max=0.0))
    mass = torch.where(use_f, log_f2 + log1mexp(d_f), log_s1 + log1mexp(d_s))
    return torch.where(empty, -math.inf, mass)


def _truncated_cdf(base, z, low, high):
    r""":math:`F_T(z)` and :math:`\log Z`, differentiable in the parameters and the bounds.

    :math:`F_T = (F(z) - F(a))/Z` left of the base's median and :math:`1 - (S(z) - S(b))/Z`
    right of it: each a difference of ratios of the smaller tail to :math:`Z`, whose gradient
    is finite at :math:`z = a` or :math:`z = b` too (unlike that of :math:`\exp\log F_T`)."""
    at_low, at_high = log_cdf_pair(base, low), log_cdf_pair(base, high)
    log_z = _log_mass(at_low, at_high)
    log_f, log_s = log_cdf_pair(base, z)
    left = log_f < log_s
    # Exponents of the branch not taken are replaced by 0, so that no inf enters a gradient.
    e1 = torch.exp(torch.where(left, log_f - log_z, 0.0))
    e2 = torch.exp(torch.where(left, at_low[0] - log_z, 0.0))
    e3 = torch.exp(torch.where(left, 0.0, log_s - log_z))
    e4 = torch.exp(torch.where(left, 0.0, at_high[1] - log_z))
    return torch.where(left, e1 - e2, 1 - e3 + e4), log_z


def _bisect(lo, hi):
    r"""The midpoint of a bracket, or a step outwards of its finite end if it is unbounded.

    Where the bracket spans more than one unit of :math:`s(x) = \operatorname{sign}(x)
    \log(1 + |x|)`, or is unbounded, this is the :func:`~.base_cdf.stand_in` of the bracket
    in :math:`s` (a step doubles :math:`|s|`), so that a bracket of hundreds of orders of
    magnitude shrinks to a factor :math:`e` in a dozen bisections, not thousands; elsewhere
    the midpoint in :math:`x`."""
    s_lo, s_hi = _signed_log(lo), _signed_log(hi)
    s = stand_in(s_lo, s_hi)
    big = torch.finfo(lo.dtype).max
    # s_hi - s_lo is infinite where the bracket is unbounded: the midpoint in x is not taken.
    wide = s_hi - s_lo > 1
    return torch.where(
        wide, torch.clamp(torch.sign(s) * torch.expm1(s.abs()), -big, big), lo + (hi - lo) / 2
    )


def _signed_log(x):
    return torch.sign(x) * torch.log1p(x.abs())


class TruncatedUnivariate(TorchDistribution):
    r"""A univariate continuous distribution truncated to :math:`[a, b]`, with exact samples and
    implicit reparameterization gradients in the base's parameters and in the bounds.

    .. math::
        q_T(z) = \frac{q(z)}{F(b) - F(a)}, \qquad F_T(z) = \frac{F(z) - F(a)}{F(b) - F(a)},

    and, by implicit differentiation of :math:`F_T(z) = u` (Figurnov et al., 2018),

    .. math::
        \frac{\partial z}{\partial a} = \frac{q(a)(1 - F_T(z))}{q(z)}, \quad
        \frac{\partial z}{\partial b} = \frac{q(b) F_T(z)}{q(z)}, \quad
        \frac{\partial z}{\partial\theta} = -\frac{\partial_\theta F(z) - \partial_\theta F(a)
            - F_T(z)(\partial_\theta F(b) - \partial_\theta F(a))}{q(z)}.

    Samples solve :math:`F_T(z) = u` by safeguarded Newton steps on :math:`\log F` left of the
    base's median and on :math:`\log S` right of it (in :math:`\log z` for bases on the positive
    half-line), bracketed by the bounds, so they always lie in :math:`[a, b]`, far in a tail and
    for narrow intervals too; where the bracket spans orders of magnitude, it is bisected in
    :math:`\operatorname{sign}(z)\log(1 + |z|)`. ``mean`` and ``variance`` are tanh-sinh
    quadratures of the quantile function (differentiable); where the base's moment is infinite
    or undefined and the truncation leaves that tail unbounded they are :math:`\pm\infty` or
    NaN.

    **Contract for the base.** ``base_dist`` must be a univariate (``event_shape == ()``)
    continuous :class:`torch.distributions.Distribution`: ``Normal`` (use
    :func:`TruncatedDistribution` to get :class:`TruncatedNormal`), ``Laplace``, ``Cauchy``,
    ``Logistic``, ``Gumbel``, ``Exponential``, ``Gamma``, ``LogNormal``, ``StudentT``, this
    package's ``Rice`` or ``TruncatedNormal``, or any distribution that defines ``log_prob``
    and ``cdf`` (and optionally ``log_cdf`` and ``log_sf``, for precision in the tails),
    differentiable in the tensors named in its ``arg_constraints``, with a constructor that
    accepts those names as keywords. Anything else raises a ``TypeError``.

    :param base_dist: the distribution to truncate.
    :param low: lower bound :math:`a`, or ``None`` for the lower end of the base's support.
    :param high: upper bound :math:`b`, or ``None`` for the upper end of the base's support;
        the bounds may carry gradients.
    """

    # torch's real admits +-inf, which stand for "no bound"; the rest is checked in __init__.
    arg_constraints = {"low": constraints.real, "high": constraints.real}
    has_rsample = True

    def __init__(self, base_dist, low=None, high=None, validate_args=None):
        check_base(base_dist, "TruncatedDistribution")
        params = parameters(base_dist)
        like = params[0] if params else torch.zeros(())
        self._has_low, self._has_high = low is not None, high is not None
        low = torch.as_tensor(-math.inf if low is None else low, dtype=like.dtype)
        high = torch.as_tensor(math.inf if high is None else high, dtype=like.dtype)
        low, high = low.to(like.device), high.to(like.device)
        batch_shape = torch.broadcast_shapes(base_dist.batch_shape, low.shape, high.shape)
        if base_dist.batch_shape != batch_shape:
            base_dist = base_dist.expand(batch_shape)
        self.base_dist = base_dist
        self.low, self.high = broadcast_all(low.expand(batch_shape), high)
        super().__init__(batch_shape, validate_args=validate_args)
        if self._validate_args:
            self._check_bounds()

    def _check_bounds(self):
        lower, upper = support_bounds(self.base_dist)
        for name, value in (("low", self.low), ("high", self.high)):
            if torch.any(torch.isnan(value)):
                raise ValueError(
                    f"TruncatedDistribution: expected parameter {name} to be a number "
                    f"(+-inf or None for no bound), but found NaN"
                )
        _check_ordered("TruncatedDistribution", self.low, self.high)
        # -inf and +inf stand for "no bound"; a finite bound must lie in the base's support.
        low_ok = ((self.low >= lower) & (self.low < upper)) | (self.low == -math.inf)
        high_ok = ((self.high > lower) & (self.high <= upper)) | (self.high == math.inf)
        if self._has_low and not torch.all(low_ok):
            raise ValueError(
                f"TruncatedDistribution: expected parameter low to lie in the support of "
                f"{type(self.base_dist).__name__}, [{lower}, {upper}), but found invalid values"
            )
        if self._has_high and not torch.all(high_ok):
            raise ValueError(
                f"TruncatedDistribution: expected parameter high to lie in the support of "
                f"{type(self.base_dist).__name__}, ({lower}, {upper}], but found invalid values"
            )

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TruncatedUnivariate, _instance)
        batch_shape = torch.Size(batch_shape)
        new.base_dist = self.base_dist.expand(batch_shape)
        new.low, new.high = self.low.expand(batch_shape), self.high.expand(batch_shape)
        new._has_low, new._has_high = self._has_low, self._has_high
        super(TruncatedUnivariate, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _bracket(self):
        """The bounds clipped to the base's support."""
        lower, upper = support_bounds(self.base_dist)
        return torch.clamp(self.low, min=lower), torch.clamp(self.high, max=upper)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        lo, hi = self._bracket()
        finite_lo, finite_hi = bool(torch.isfinite(lo).all()), bool(torch.isfinite(hi).all())
        if finite_lo and finite_hi:
            return constraints.interval(lo, hi)
        if finite_lo:
            return constraints.greater_than_eq(lo)
        if finite_hi:
            # torch has no closed less_than_eq: the closed interval (-inf, high].
            return constraints.interval(lo, hi)
        return constraints.real

    def _params(self):
        return (*parameters(self.base_dist), self.low, self.high)

    def _functions(self):
        """The truncated CDF and log-density as functions of ``(z, *params)``, for the engine."""
        base, n = self.base_dist, len(parameters(self.base_dist))

        def cdf(z, *params):
            return _truncated_cdf(rebuild(base, params[:n]), z, *params[n:])[0]

        def log_prob(z, *params):
            b = rebuild(base, params[:n])
            log_z = _log_mass(log_cdf_pair(b, params[n]), log_cdf_pair(b, params[n + 1]))
            return base_log_prob(b, z) - log_z

        return cdf, log_prob

    def _unchecked_base(self):
        return rebuild(self.base_dist, parameters(self.base_dist))

    def _quantile(self, log_u, log_1mu):
        """Solve F_T(z) = u given log u and log(1 - u) (no gradient)."""
        base = self._unchecked_base()
        lo, hi = self._bracket()
        at_low, at_high = log_cdf_pair(base, self.low), log_cdf_pair(base, self.high)
        # F(z) = (1 - u) F(a) + u F(b) and S(z) = (1 - u) S(a) + u S(b): sums of positive terms.
        target_f = torch.logaddexp(log_1mu + at_low[0], log_u + at_high[0])
        target_s = torch.logaddexp(log_1mu + at_low[1], log_u + at_high[1])
        use_f = target_f < target_s
        target = torch.where(use_f, target_f, target_s)
        lower, _ = support_bounds(base)
        # Bases on the positive half-line are solved in log z: their lower tail is a power law.
        log_scale = isinstance(lower, (int, float)) and lower == 0
        lo, hi = torch.broadcast_tensors(lo, hi, target)[:2]
        y_lo, y_hi = (torch.log(lo), torch.log(hi)) if log_scale else (lo, hi)
        y = self._initial_guess(base, target_f, target_s, use_f, log_scale)
        inside = torch.isfinite(y) & (y > y_lo) & (y < y_hi)
        y = torch.where(inside, y, _bisect(y_lo, y_hi))
        eps = torch.finfo(y.dtype).eps
        tol = 32 * eps * torch.clamp(target.abs(), min=1.0)
        last = before = torch.full_like(y, math.inf)  # the sizes of the last two steps
        for _ in range(_MAX_STEPS):
            x = torch.exp(y) if log_scale else y
            log_f, log_s = log_cdf_pair(base, x)
            g = torch.where(use_f, log_f - target_f, target_s - log_s)  # increasing in y
            to_f, to_s = log_hazards(base, x, log_f, log_s)
            log_slope = torch.where(use_f, to_f, to_s)
            if log_scale:
                log_slope = log_slope + y
            below = g < 0
            y_lo, y_hi = torch.where(below, y, y_lo), torch.where(below, y_hi, y)
            newton = y - g * torch.exp(-log_slope)
            newton_ok = torch.isfinite(newton) & (newton > y_lo) & (newton < y_hi)
            # Converged when g is within a few dozen roundings of 0 (a CDF from a series or a
            # quadrature carries its own rounding error, below which g cannot be driven), or
            # when the Newton step is at rounding level; the last Newton step is still taken.
            done = (g.abs() <= tol) | (newton_ok & ((newton - y).abs() <= 4 * eps * y.abs()))
            # A Newton step not under half the step before last converges too slowly (far in
            # a tail, float32 may give the slope no correct digit): bisect instead.
            slow = (newton - y).abs() > before / 2
            take = newton_ok & (done | ~slow)
            y_next = torch.where(take, newton, torch.where(done, y, _bisect(y_lo, y_hi)))
            last, before, y = (y_next - y).abs(), last, y_next
            if bool(done.all()):
                break
        z = torch.exp(y) if log_scale else y
        # Rounding of exp(log z) aside, z is already in the bracket.
        return torch.minimum(torch.maximum(z, lo), hi)

    def _initial_guess(self, base, target_f, target_s, use_f, log_scale):
        """The base's quantile at the target probability for the families whose quantile is in
        closed form (far in a tail it may be infinite: the bracket then takes over), else the
        base's mean (Newton converges from there in a few steps)."""
        p = torch.where(use_f, torch.exp(target_f), -torch.expm1(target_s))
        if isinstance(base, _CLOSED_FORM_ICDF):
            x = base.icdf(p)
        else:
            try:
                x = base.mean.expand(p.shape)
            except NotImplementedError:
                x = torch.zeros_like(p)
        x = x.to(p.dtype)
        return torch.log(x) if log_scale else x

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(sample_shape)
        params = self._params()
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.low.dtype, device=self.low.device)
            u = u.clamp(min=torch.finfo(u.dtype).tiny)
            z = self._quantile(torch.log(u), torch.log1p(-u))
        cdf, log_prob = self._functions()
        return implicit_reparameterize(z, params, cdf=cdf, log_prob=log_prob)

    def icdf(self, value):
        """Quantile function; differentiable in ``value``, the base's parameters and the bounds."""
        u = torch.as_tensor(value, dtype=self.low.dtype, device=self.low.device)
        if self._validate_args and not torch.all((u >= 0) & (u <= 1)):
            raise ValueError("TruncatedDistribution.icdf: `value` must be a probability in [0, 1]")
        with torch.no_grad():
            z = self._quantile(torch.log(u), torch.log1p(-u))
        cdf, log_prob = self._functions()

        def shifted_cdf(z, *params):
            return cdf(z, *params[:-1]) - params[-1]

        def log_prob_of_shifted(z, *params):
            return log_prob(z, *params[:-1])

        u = u.expand(z.shape) if u.shape != z.shape else u
        return implicit_reparameterize(
            z, (*self._params(), u), cdf=shifted_cdf, log_prob=log_prob_of_shifted
        )

    def _log_mass(self, base):
        return _log_mass(log_cdf_pair(base, self.low), log_cdf_pair(base, self.high))

    def _checked(self, value):
        """``value`` (validated) as a tensor of the bounds' dtype, and the bracket."""
        if self._validate_args:
            self._validate_sample(value)
        value = torch.as_tensor(value, dtype=self.low.dtype, device=self.low.device)
        return value, *self._bracket()

    def log_prob(self, value):
        value, lo, hi = self._checked(value)
        base = self._unchecked_base()
        inside = (value >= lo) & (value <= hi)
        # The base sees only values inside the interval (its own log_prob may reject the others,
        # and a bound at the end of its support, as 0 for a Gamma, has a NaN derivative there).
        safe = torch.where(inside, value, stand_in(lo, hi))
        lp = base_log_prob(base, safe) - self._log_mass(base)
        return torch.where(inside, lp, -math.inf)

    def log_cdf(self, value):
        r""":math:`\log F_T`, from log-space differences of the base's smaller tail: finite
        where :math:`F_T` underflows (base_cdf uses it for mixtures of truncated laws)."""
        return self._log_cdf_pair(value)[0]

    def log_sf(self, value):
        r""":math:`\log(1 - F_T)`, likewise."""
        return self._log_cdf_pair(value)[1]

    def _log_cdf_pair(self, value):
        value, lo, hi = self._checked(value)
        base = self._unchecked_base()
        at_z = log_cdf_pair(base, _clamp(value, lo, hi))
        at_low, at_high = log_cdf_pair(base, self.low), log_cdf_pair(base, self.high)
        log_z = _log_mass(at_low, at_high)
        log_cdf = _at_most_zero(_log_mass(at_low, at_z) - log_z)
        log_sf = _at_most_zero(_log_mass(at_z, at_high) - log_z)
        # Exact at and beyond the bounds: F(z) at z = a may differ from F(a) in the last bit (an
        # iterative base CDF on a vector may run more terms than on one number). At z = a,
        # log(1 - F_T) keeps its derivative, and so does log F_T at z = b.
        return (
            torch.where(value <= lo, -math.inf, torch.where(value > hi, 0.0, log_cdf)),
            torch.where(value >= hi, -math.inf, torch.where(value < lo, 0.0, log_sf)),
        )

    def cdf(self, value):
        value, lo, hi = self._checked(value)
        z = _clamp(value, lo, hi)
        f = torch.clamp(_truncated_cdf(self._unchecked_base(), z, self.low, self.high)[0], 0, 1)
        return torch.where(value < lo, 0.0, torch.where(value > hi, 1.0, f))

    def _quadrature(self):
        """Nodes z_k = F_T^{-1}(u_k), differentiable, and weights w_k (summing to one) of a
        tanh-sinh quadrature over u in (0, 1), in two panels split at the base's median (where
        the quantile function of, e.g., the Laplace has a kink); axis 0 runs over the nodes."""
        dtype, device = self.low.dtype, self.low.device
        half_range = _DE_RANGE if dtype == torch.float64 else _DE_RANGE_FLOAT32
        t = torch.arange(-half_range, half_range + _DE_STEP / 2, _DE_STEP, dtype=dtype)
        t = t.to(device).reshape((-1,) + (1,) * len(self.batch_shape))
        s = math.pi * torch.sinh(t)
        log_v, log_1mv = -torch.nn.functional.softplus(-s), -torch.nn.functional.softplus(s)
        w = math.pi * torch.cosh(t) * torch.exp(log_v + log_1mv)
        w = w / w.sum()  # exact for a constant integrand
        with torch.no_grad():
            base = self._unchecked_base()
            at_low, at_high = log_cdf_pair(base, self.low), log_cdf_pair(base, self.high)
            log_z = _log_mass(at_low, at_high)
            half = torch.full_like(log_z, math.log(0.5))
            # u_m = F_T(median) = (1/2 - F(a)) / Z, 0 or 1 if the median is outside [a, b].
            split = (at_low[0] < half) & (at_high[0] > half)
            log_um = torch.clamp(_log_mass(at_low, (half, half)) - log_z, max=0.0)
            log_1mum = torch.clamp(_log_mass((half, half), at_high) - log_z, max=0.0)
            log_um = torch.where(split, log_um, torch.where(at_low[0] < half, 0.0, -math.inf))
            log_1mum = torch.where(split, log_1mum, torch.where(at_low[0] < half, -math.inf, 0.0))
            # Where the median is outside [a, b], one panel is empty (its weights are 0) and
            # both take the nodes of the whole interval.
            log_u = torch.cat(
                [
                    torch.where(split, log_um + log_v, log_v),
                    torch.where(split, torch.logaddexp(log_um, log_1mum + log_v), log_v),
                ]
            )
            log_1mu = torch.cat(
                [
                    torch.where(split, torch.logaddexp(log_1mum, log_um + log_1mv), log_1mv),
                    torch.where(split, log_1mum + log_1mv, log_1mv),
                ]
            )
            shape = (log_u.shape[0], *self.batch_shape)
            z = self._quantile(log_u.expand(shape), log_1mu.expand(shape))
        weights = torch.cat([torch.exp(log_um) * w, torch.exp(log_1mum) * w])
        cdf, log_prob = self._functions()
        return implicit_reparameterize(z, self._params(), cdf=cdf, log_prob=log_prob), weights

    def _moment_is_infinite(self, name):
        """Which tails have an infinite base moment and are left unbounded by the truncation."""
        try:
            moment = getattr(self.base_dist, name)
        except NotImplementedError:
            return None, None
        infinite = ~torch.isfinite(moment).expand(self.batch_shape)
        lo, hi = self._bracket()
        return infinite & torch.isinf(lo), infinite & torch.isinf(hi)

    @property
    def mean(self):
        z, w = self._quadrature()
        mean = (w * z).sum(0)
        left, right = self._moment_is_infinite("mean")
        if left is not None:
            # An unbounded heavy tail: -inf, +inf, or NaN when both are (as for the base).
            heavy = torch.where(left, -math.inf, math.inf)
            mean = torch.where(left & right, math.nan, torch.where(left | right, heavy, mean))
        return mean

    @property
    def variance(self):
        z, w = self._quadrature()
        mean = (w * z).sum(0)
        variance = (w * (z - mean) ** 2).sum(0)
        left, right = self._moment_is_infinite("variance")
        if left is not None:
            variance = torch.where(left | right, math.inf, variance)
        return variance
