r"""Truncation of a univariate distribution, with implicit reparameterization gradients
(JAX / NumPyro).

The truncated law of a base with CDF :math:`F`, survival :math:`S = 1 - F` and density
:math:`q` on :math:`[a, b]` has

.. math:: F_T(z) = \frac{F(z) - F(a)}{F(b) - F(a)}, \qquad q_T(z) = \frac{q(z)}{F(b) - F(a)}.

Every difference of :math:`F` is formed from whichever of :math:`F` and :math:`S` is smaller
(:math:`F(y) - F(x) = S(x) - S(y)`), in log space, so that intervals far in either tail keep
their precision where :math:`F(a)` and :math:`F(b)` both round to 0 or to 1.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random
from jax.typing import ArrayLike
from numpyro.distributions import (
    Cauchy,
    Distribution,
    Exponential,
    Gumbel,
    Laplace,
    Logistic,
    LogNormal,
    Normal,
    constraints,
)
from numpyro.distributions.util import validate_sample
from numpyro.util import is_prng_key, not_jax_tracer

from ._implicit import implicit_reparameterize
from ._validation import ConstraintMessageMixin, check_probability
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


def TruncatedDistribution(
    base_dist: Distribution,
    low: ArrayLike | None = None,
    high: ArrayLike | None = None,
    *,
    validate_args: bool | None = None,
) -> Distribution:
    r"""The distribution ``base_dist`` truncated to :math:`[\mathrm{low}, \mathrm{high}]`, with
    implicit reparameterization gradients in the base's parameters and in the bounds.

    A :class:`~numpyro.distributions.Normal` base gives this package's :class:`TruncatedNormal`;
    any other base gives a :class:`TruncatedUnivariate` (see there for the contract a base must
    meet), as NumPyro's own ``TruncatedDistribution`` returns an instance of a class of its own.

    :param base_dist: a univariate continuous distribution with a CDF.
    :param low: lower bound, or ``None`` for the lower end of the base's support.
    :param high: upper bound, or ``None`` for the upper end of the base's support.
    :param validate_args: Whether to validate input constraints, defaults to None.
    """
    if isinstance(base_dist, Normal):
        return TruncatedNormal(
            base_dist.loc, base_dist.scale, low=low, high=high, validate_args=validate_args
        )
    return TruncatedUnivariate(base_dist, low, high, validate_args=validate_args)


def _log_mass(lower, upper):
    r""":math:`\log(F(y) - F(x))` for :math:`x \le y` from ``lower = (log F(x), log S(x))`` and
    ``upper = (log F(y), log S(y))``: from :math:`F` when :math:`F(y) < S(x)`, else from
    :math:`S`, so that the larger term of the difference is the smaller of the two."""
    (log_f1, log_s1), (log_f2, log_s2) = lower, upper
    use_f = log_f2 < log_s1
    # Where the larger term underflows (both ends far in one tail), the mass is 0: -inf, not
    # the NaN of -inf - (-inf).
    empty = jnp.where(use_f, log_f2, log_s1) == -jnp.inf
    # The branch not taken gets a harmless -1, so that its derivative stays finite.
    d_f = jnp.where(use_f & ~empty, jnp.minimum(log_f1 - log_f2, 0.0), -1.0)
    d_s = jnp.where(use_f | empty, -1.0, jnp.minimum(log_s2 - log_s1, 0.0))
    mass = jnp.where(use_f, log_f2 + log1mexp(d_f), log_s1 + log1mexp(d_s))
    return jnp.where(empty, -jnp.inf, mass)


def _truncated_cdf(base, z, low, high):
    r""":math:`F_T(z)` and :math:`\log Z`, differentiable in the parameters and the bounds.

    :math:`F_T = (F(z) - F(a))/Z` left of the base's median and :math:`1 - (S(z) - S(b))/Z`
    right of it: each a difference of ratios of the smaller tail to :math:`Z`, whose derivative
    is finite at :math:`z = a` or :math:`z = b` too (unlike that of :math:`\exp\log F_T`)."""
    at_low, at_high = log_cdf_pair(base, low), log_cdf_pair(base, high)
    log_z = _log_mass(at_low, at_high)
    log_f, log_s = log_cdf_pair(base, z)
    left = log_f < log_s
    # Exponents of the branch not taken are replaced by 0, so that no inf enters a derivative.
    e1 = jnp.exp(jnp.where(left, log_f - log_z, 0.0))
    e2 = jnp.exp(jnp.where(left, at_low[0] - log_z, 0.0))
    e3 = jnp.exp(jnp.where(left, 0.0, log_s - log_z))
    e4 = jnp.exp(jnp.where(left, 0.0, at_high[1] - log_z))
    return jnp.where(left, e1 - e2, 1 - e3 + e4), log_z


def _truncated_log_prob(base, z, low, high):
    log_z = _log_mass(log_cdf_pair(base, low), log_cdf_pair(base, high))
    return base_log_prob(base, z) - log_z


def _bracket(base, low, high):
    """The bounds clipped to the base's support."""
    lower, upper = support_bounds(base)
    return jnp.maximum(low, lower), jnp.minimum(high, upper)


def _bisect(lo, hi):
    r"""The midpoint of a bracket, or a step outwards of its finite end if it is unbounded.

    Where the bracket spans more than one unit of :math:`s(x) = \operatorname{sign}(x)
    \log(1 + |x|)`, or is unbounded, this is the :func:`~.base_cdf.stand_in` of the bracket
    in :math:`s` (a step doubles :math:`|s|`), so that a bracket of hundreds of orders of
    magnitude shrinks to a factor :math:`e` in a dozen bisections, not thousands; elsewhere
    the midpoint in :math:`x`."""
    s_lo, s_hi = _signed_log(lo), _signed_log(hi)
    s = stand_in(s_lo, s_hi)
    big = jnp.finfo(lo.dtype).max
    # s_hi - s_lo is infinite where the bracket is unbounded: the midpoint in x is not taken.
    wide = s_hi - s_lo > 1
    return jnp.where(
        wide, jnp.clip(jnp.sign(s) * jnp.expm1(jnp.abs(s)), -big, big), lo + (hi - lo) / 2
    )


def _signed_log(x):
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def _initial_guess(base, target_f, target_s, use_f, log_scale):
    """The base's quantile at the target probability for the families whose quantile is in
    closed form (far in a tail it may be infinite: the bracket then takes over), else the
    base's mean (Newton converges from there in a few steps)."""
    p = jnp.where(use_f, jnp.exp(target_f), -jnp.expm1(target_s))
    if isinstance(base, _CLOSED_FORM_ICDF):
        x = base.icdf(p)
    else:
        try:
            x = jnp.broadcast_to(base.mean, p.shape)
        except NotImplementedError:
            x = jnp.zeros_like(p)
    x = jnp.asarray(x, p.dtype)
    return jnp.log(x) if log_scale else x


@partial(jax.jit, static_argnums=(0, 1))
def _quantile(treedef, log_scale, leaves, low, high, log_u, log_1mu):
    """Solve F_T(z) = u given log u and log(1 - u) (no derivative); jitted with the base's
    pytree structure static, so that repeated calls reuse the compiled loop."""
    base = jax.tree_util.tree_unflatten(treedef, leaves)
    lo, hi = _bracket(base, low, high)
    at_low, at_high = log_cdf_pair(base, low), log_cdf_pair(base, high)
    # F(z) = (1 - u) F(a) + u F(b) and S(z) = (1 - u) S(a) + u S(b): sums of positive terms.
    target_f = jnp.logaddexp(log_1mu + at_low[0], log_u + at_high[0])
    target_s = jnp.logaddexp(log_1mu + at_low[1], log_u + at_high[1])
    use_f = target_f < target_s
    target = jnp.where(use_f, target_f, target_s)
    lo, hi = jnp.broadcast_to(lo, target.shape), jnp.broadcast_to(hi, target.shape)
    # Bases on the positive half-line are solved in log z: their lower tail is a power law.
    y_lo, y_hi = (jnp.log(lo), jnp.log(hi)) if log_scale else (lo, hi)
    y = _initial_guess(base, target_f, target_s, use_f, log_scale)
    inside = jnp.isfinite(y) & (y > y_lo) & (y < y_hi)
    y = jnp.where(inside, y, _bisect(y_lo, y_hi))
    eps = jnp.finfo(y.dtype).eps
    tol = 32 * eps * jnp.maximum(jnp.abs(target), 1.0)

    def cond(state):
        i, *_, done = state
        return (i < _MAX_STEPS) & ~jnp.all(done)

    def body(state):
        i, y, y_lo, y_hi, last, before, _ = state
        x = jnp.exp(y) if log_scale else y
        log_f, log_s = log_cdf_pair(base, x)
        g = jnp.where(use_f, log_f - target_f, target_s - log_s)  # increasing in y
        to_f, to_s = log_hazards(base, x, log_f, log_s)
        log_slope = jnp.where(use_f, to_f, to_s)
        if log_scale:
            log_slope = log_slope + y
        below = g < 0
        y_lo, y_hi = jnp.where(below, y, y_lo), jnp.where(below, y_hi, y)
        newton = y - g * jnp.exp(-log_slope)
        newton_ok = jnp.isfinite(newton) & (newton > y_lo) & (newton < y_hi)
        # Converged when g is within a few dozen roundings of 0 (a CDF from a series or a
        # quadrature carries its own rounding error, below which g cannot be driven), or
        # when the Newton step is at rounding level; the last Newton step is still taken.
        done = (jnp.abs(g) <= tol) | (newton_ok & (jnp.abs(newton - y) <= 4 * eps * jnp.abs(y)))
        # A Newton step not under half the step before last converges too slowly (far in a
        # tail, float32 may give the slope no correct digit): bisect instead.
        slow = jnp.abs(newton - y) > before / 2
        take = newton_ok & (done | ~slow)
        y_next = jnp.where(take, newton, jnp.where(done, y, _bisect(y_lo, y_hi)))
        return i + 1, y_next, y_lo, y_hi, jnp.abs(y_next - y), last, done

    infinite = jnp.full(y.shape, jnp.inf, y.dtype)
    state = (0, y, y_lo, y_hi, infinite, infinite, jnp.zeros(y.shape, bool))
    _, y, *_ = lax.while_loop(cond, body, state)
    z = jnp.exp(y) if log_scale else y
    # Rounding of exp(log z) aside, z is already in the bracket.
    return jnp.minimum(jnp.maximum(z, lo), hi)


class TruncatedUnivariate(ConstraintMessageMixin, Distribution):
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
    continuous :class:`numpyro.distributions.Distribution`: ``Normal`` (use
    :func:`TruncatedDistribution` to get :class:`TruncatedNormal`), ``Laplace``, ``Cauchy``,
    ``Logistic``, ``Gumbel``, ``Exponential``, ``Gamma``, ``LogNormal``, ``StudentT``, this
    package's ``Rice`` or ``TruncatedNormal``, or any distribution that defines ``log_prob``
    and ``cdf`` (and optionally ``log_cdf`` and ``log_sf``, for precision in the tails),
    differentiable in its pytree leaves. Anything else raises a ``TypeError``. The base's
    parameters are reparameterized through its pytree leaves; ``reparametrized_params`` lists
    the bounds, as NumPyro's names can only name this distribution's own attributes.

    :param base_dist: the distribution to truncate.
    :type base_dist: numpyro.distributions.Distribution
    :param low: lower bound :math:`a`, or ``None`` for the lower end of the base's support.
    :type low: ArrayLike, optional
    :param high: upper bound :math:`b`, or ``None`` for the upper end of the base's support;
        the bounds may carry gradients.
    :type high: ArrayLike, optional
    :param validate_args: Whether to validate input constraints, defaults to None.
    :type validate_args: bool, optional
    """

    arg_constraints = {
        # +-inf stand for "no bound"; the rest is checked in __init__.
        "low": constraints.dependent(is_discrete=False, event_dim=0),
        "high": constraints.dependent(is_discrete=False, event_dim=0),
    }
    reparametrized_params = ["low", "high"]
    pytree_data_fields = ("base_dist", "low", "high")
    pytree_aux_fields = ("_has_low", "_has_high")

    def __init__(
        self,
        base_dist: Distribution,
        low: ArrayLike | None = None,
        high: ArrayLike | None = None,
        *,
        validate_args: bool | None = None,
    ) -> None:
        check_base(base_dist, "TruncatedDistribution")
        self.base_dist = base_dist
        self._has_low, self._has_high = low is not None, high is not None
        dtype = jnp.result_type(*parameters(base_dist), float)
        low = jnp.asarray(-jnp.inf if low is None else low, dtype)
        high = jnp.asarray(jnp.inf if high is None else high, dtype)
        batch_shape = lax.broadcast_shapes(base_dist.batch_shape, low.shape, high.shape)
        self.low = jnp.broadcast_to(low, batch_shape)
        self.high = jnp.broadcast_to(high, batch_shape)
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)
        if self._validate_args:
            self._check_bounds()

    def _check_bounds(self):
        lower, upper = support_bounds(self.base_dist)
        name = type(self.base_dist).__name__
        with jax.ensure_compile_time_eval():
            low, high = self.low, self.high
            if not (not_jax_tracer(low) and not_jax_tracer(high)):
                return
            low, high = np.asarray(low), np.asarray(high)
            for param, value in (("low", low), ("high", high)):
                if np.any(np.isnan(value)):
                    raise ValueError(
                        f"TruncatedDistribution got invalid {param} parameter: expected {param} "
                        f"to be a number (+-inf or None for no bound), but got NaN."
                    )
            _check_ordered("TruncatedDistribution", low, high)
            lower, upper = np.asarray(lower), np.asarray(upper)
            # -inf and +inf stand for "no bound"; a finite bound must lie in the base's support.
            low_ok = ((low >= lower) & (low < upper)) | (low == -np.inf)
            high_ok = ((high > lower) & (high <= upper)) | (high == np.inf)
            if self._has_low and not np.all(low_ok):
                raise ValueError(
                    "TruncatedDistribution got invalid low parameter: expected low to lie in the "
                    f"support of {name}, [{lower}, {upper}), but its value violates it."
                )
            if self._has_high and not np.all(high_ok):
                raise ValueError(
                    "TruncatedDistribution got invalid high parameter: expected high to lie in "
                    f"the support of {name}, ({lower}, {upper}], but its value violates it."
                )

    @property
    def has_rsample(self) -> bool:
        return True

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        lower, upper = support_bounds(self.base_dist)
        has_low = self._has_low or bool(np.isfinite(lower))
        has_high = self._has_high or bool(np.isfinite(upper))
        lo, hi = _bracket(self.base_dist, self.low, self.high)
        if has_low and has_high:
            return constraints.interval(lo, hi)
        if has_low:
            return constraints.greater_than_eq(lo)
        if has_high:
            return constraints.less_than_eq(hi)
        return constraints.real

    @property
    def _dtype(self):
        return jnp.result_type(self.low, self.high, float)

    def _params(self):
        return (*parameters(self.base_dist), self.low, self.high)

    def _functions(self):
        """The truncated CDF and log-density as functions of ``(z, *params)``, for the engine."""
        base, n = self.base_dist, len(parameters(self.base_dist))

        def cdf(z, *params):
            return _truncated_cdf(rebuild(base, params[:n]), z, *params[n:])[0]

        def log_prob(z, *params):
            return _truncated_log_prob(rebuild(base, params[:n]), z, *params[n:])

        return cdf, log_prob

    def _solve(self, log_u, log_1mu):
        leaves, treedef = jax.tree_util.tree_flatten(self.base_dist)
        lower, _ = support_bounds(self.base_dist)
        log_scale = isinstance(lower, (int, float)) and lower == 0
        leaves = [lax.stop_gradient(jnp.asarray(leaf)) for leaf in leaves]
        low, high = lax.stop_gradient(self.low), lax.stop_gradient(self.high)
        z = _quantile(treedef, log_scale, leaves, low, high, log_u, log_1mu)
        return lax.stop_gradient(z)

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        if not is_prng_key(key):
            raise TypeError(
                f"TruncatedDistribution.sample: `key` must be a JAX PRNG key, got {key!r}"
            )
        shape = sample_shape + self.batch_shape
        dtype = self._dtype
        u = random.uniform(key, shape, dtype, minval=jnp.finfo(dtype).tiny)
        z = self._solve(jnp.log(u), jnp.log1p(-u))
        cdf, log_prob = self._functions()
        return implicit_reparameterize(z, self._params(), cdf=cdf, log_prob=log_prob)

    def icdf(self, value: ArrayLike) -> jax.Array:
        """Quantile function; differentiable in ``value``, the base's parameters and the bounds."""
        u = jnp.asarray(value, self._dtype)
        if self._validate_args:
            check_probability(u, "TruncatedDistribution.icdf")
        u = jnp.broadcast_to(u, lax.broadcast_shapes(u.shape, self.batch_shape))
        z = self._solve(jnp.log(u), jnp.log1p(-u))
        cdf, log_prob = self._functions()

        def shifted_cdf(z, *params):
            return cdf(z, *params[:-1]) - params[-1]

        def log_prob_of_shifted(z, *params):
            return log_prob(z, *params[:-1])

        return implicit_reparameterize(
            z, (*self._params(), u), cdf=shifted_cdf, log_prob=log_prob_of_shifted
        )

    @validate_sample
    def log_prob(self, value: ArrayLike) -> jax.Array:
        return _compiled("_log_prob", self, jnp.asarray(value, self._dtype))

    def _log_prob(self, value):
        lo, hi = _bracket(self.base_dist, self.low, self.high)
        inside = (value >= lo) & (value <= hi)
        # The base sees only values inside the interval (elsewhere its density may be undefined,
        # and a bound at the end of its support, as 0 for a Gamma, may have no derivative).
        safe = jnp.where(inside, value, stand_in(lo, hi))
        lp = _truncated_log_prob(self.base_dist, safe, self.low, self.high)
        return jnp.where(inside, lp, -jnp.inf)

    def log_cdf(self, value: ArrayLike) -> jax.Array:
        r""":math:`\log F_T`, from log-space differences of the base's smaller tail: finite
        where :math:`F_T` underflows (base_cdf uses it for mixtures of truncated laws)."""
        return self._log_tails(value)[0]

    def log_sf(self, value: ArrayLike) -> jax.Array:
        r""":math:`\log(1 - F_T)`, likewise."""
        return self._log_tails(value)[1]

    def _log_tails(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return _compiled("_log_cdf_pair", self, jnp.asarray(value, self._dtype))

    def _log_cdf_pair(self, value):
        lo, hi = _bracket(self.base_dist, self.low, self.high)
        at_z = log_cdf_pair(self.base_dist, _clamp(value, lo, hi))
        at_low = log_cdf_pair(self.base_dist, self.low)
        at_high = log_cdf_pair(self.base_dist, self.high)
        log_z = _log_mass(at_low, at_high)
        log_cdf = _at_most_zero(_log_mass(at_low, at_z) - log_z)
        log_sf = _at_most_zero(_log_mass(at_z, at_high) - log_z)
        # Exact at and beyond the bounds: F(z) at z = a may differ from F(a) in the last bit (an
        # iterative base CDF on a vector may run more terms than on one number). At z = a,
        # log(1 - F_T) keeps its derivative, and so does log F_T at z = b.
        return (
            jnp.where(value <= lo, -jnp.inf, jnp.where(value > hi, 0.0, log_cdf)),
            jnp.where(value >= hi, -jnp.inf, jnp.where(value < lo, 0.0, log_sf)),
        )

    def cdf(self, value: ArrayLike) -> jax.Array:
        if self._validate_args:
            self._validate_sample(value)
        return _compiled("_cdf", self, jnp.asarray(value, self._dtype))

    def _cdf(self, value):
        lo, hi = _bracket(self.base_dist, self.low, self.high)
        z = _clamp(value, lo, hi)
        f = _clamp(_truncated_cdf(self.base_dist, z, self.low, self.high)[0], 0.0, 1.0)
        return jnp.where(value < lo, 0.0, jnp.where(value > hi, 1.0, f))

    def _quadrature(self):
        """Nodes z_k = F_T^{-1}(u_k), differentiable, and weights w_k (summing to one) of a
        tanh-sinh quadrature over u in (0, 1), in two panels split at the base's median (where
        the quantile function of, e.g., the Laplace has a kink); axis 0 runs over the nodes."""
        dtype = self._dtype
        half_range = _DE_RANGE if dtype == jnp.float64 else _DE_RANGE_FLOAT32
        t = np.arange(-half_range, half_range + _DE_STEP / 2, _DE_STEP)
        t = jnp.asarray(t, dtype).reshape((-1,) + (1,) * len(self.batch_shape))
        s = math.pi * jnp.sinh(t)
        log_v, log_1mv = -jax.nn.softplus(-s), -jax.nn.softplus(s)
        w = math.pi * jnp.cosh(t) * jnp.exp(log_v + log_1mv)
        w = w / w.sum()  # exact for a constant integrand
        base = lax.stop_gradient(self.base_dist)
        low, high = lax.stop_gradient(self.low), lax.stop_gradient(self.high)
        at_low, at_high = log_cdf_pair(base, low), log_cdf_pair(base, high)
        log_z = _log_mass(at_low, at_high)
        half = jnp.full_like(log_z, math.log(0.5))
        # u_m = F_T(median) = (1/2 - F(a)) / Z, 0 or 1 if the median is outside [a, b].
        split = (at_low[0] < half) & (at_high[0] > half)
        log_um = jnp.minimum(_log_mass(at_low, (half, half)) - log_z, 0.0)
        log_1mum = jnp.minimum(_log_mass((half, half), at_high) - log_z, 0.0)
        log_um = jnp.where(split, log_um, jnp.where(at_low[0] < half, 0.0, -jnp.inf))
        log_1mum = jnp.where(split, log_1mum, jnp.where(at_low[0] < half, -jnp.inf, 0.0))
        # Where the median is outside [a, b], one panel is empty (its weights are 0) and both
        # take the nodes of the whole interval.
        log_u = jnp.concatenate(
            [
                jnp.where(split, log_um + log_v, log_v),
                jnp.where(split, jnp.logaddexp(log_um, log_1mum + log_v), log_v),
            ]
        )
        log_1mu = jnp.concatenate(
            [
                jnp.where(split, jnp.logaddexp(log_1mum, log_um + log_1mv), log_1mv),
                jnp.where(split, log_1mum + log_1mv, log_1mv),
            ]
        )
        shape = (log_u.shape[0], *self.batch_shape)
        z = self._solve(jnp.broadcast_to(log_u, shape), jnp.broadcast_to(log_1mu, shape))
        weights = jnp.concatenate([jnp.exp(log_um) * w, jnp.exp(log_1mum) * w])
        cdf, log_prob = self._functions()
        return implicit_reparameterize(z, self._params(), cdf=cdf, log_prob=log_prob), weights

    def _moment_is_infinite(self, name):
        """Which tails have an infinite base moment and are left unbounded by the truncation."""
        try:
            moment = getattr(self.base_dist, name)
        except NotImplementedError:
            return None, None
        infinite = jnp.broadcast_to(~jnp.isfinite(moment), self.batch_shape)
        lo, hi = _bracket(self.base_dist, self.low, self.high)
        return infinite & jnp.isinf(lo), infinite & jnp.isinf(hi)

    @property
    def mean(self) -> jax.Array:
        return _compiled("_moments", self)[0]

    @property
    def variance(self) -> jax.Array:
        return _compiled("_moments", self)[1]

    def _moments(self):
        """Mean and variance from one quadrature."""
        z, w = self._quadrature()
        mean = jnp.sum(w * z, 0)
        variance = jnp.sum(w * (z - mean) ** 2, 0)
        left, right = self._moment_is_infinite("mean")
        if left is not None:
            # An unbounded heavy tail: -inf, +inf, or NaN when both are (as for the base).
            heavy = jnp.where(left, -jnp.inf, jnp.inf)
            mean = jnp.where(left & right, jnp.nan, jnp.where(left | right, heavy, mean))
        left, right = self._moment_is_infinite("variance")
        if left is not None:
            variance = jnp.where(left | right, jnp.inf, variance)
        return mean, variance


# The distribution is a pytree: its log_prob, cdf and moments run as one compiled function
# each (one per method and structure), where eagerly their operations took 3-15 ms a call.
@partial(jax.jit, static_argnums=0)
def _compiled(method, dist, *args):
    """``dist.<method>(*args)``, compiled."""
    return getattr(dist, method)(*args)
