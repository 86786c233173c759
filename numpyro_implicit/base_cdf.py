r"""Differentiable CDFs of univariate distributions, for truncation and mixtures (JAX).

A *base* is a univariate continuous :class:`numpyro.distributions.Distribution`
(``event_shape`` ``()``) whose CDF this module can differentiate in the value and in the
parameters:

* the families with closed forms in log space: ``Normal`` (``log_ndtr``), ``Laplace``,
  ``Cauchy``, ``Logistic``, ``Gumbel``, ``Exponential``, ``LogNormal``;
* ``Gamma`` through :func:`~numpyro_implicit.special.gamma_log_cdf_pair` and ``StudentT``
  through :func:`~numpyro_implicit.special.student_t_log_cdf_pair` (JAX's ``betainc`` has no
  derivative in its shape parameters);
* this package's ``Rice`` through the log Marcum Q-function;
* any other distribution that defines ``cdf`` and ``log_prob`` (optionally ``log_cdf`` and
  ``log_sf`` for accuracy in the tails), differentiable in its pytree leaves.

:func:`parameters` and :func:`rebuild` are NumPyro's pytree flattening and unflattening, so
that a function of the parameters can rebuild the distribution and be differentiated.
:func:`log_cdf_pair` returns :math:`(\log F(v), \log S(v))` with :math:`S = 1 - F`, each
accurate in its own tail; values outside the support give :math:`(-\infty, 0)` or
:math:`(0, -\infty)` with zero (not NaN) derivatives.
:func:`log_prob` is the host's log-density, except for ``Cauchy`` and ``StudentT``, where it is
formed without overflow far in the float32 tails. The Gamma and Student t CDFs carry their
shape derivatives through iterations, through which forward mode goes (second derivatives in
forward over reverse mode); reverse over reverse raises JAX's error for ``lax.while_loop``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import erfc
from numpyro.distributions import (
    Cauchy,
    Distribution,
    Exponential,
    Gamma,
    Gumbel,
    Laplace,
    Logistic,
    LogNormal,
    Normal,
    StudentT,
)

from .rice import Rice
from .special import (
    _log1p_square,
    cauchy_log_cdf_pair,
    gamma_log_cdf_pair,
    log1mexp,
    log_marcum_q,
    log_ndtr,
    student_t_log_cdf_pair,
)

__all__ = [
    "cdf",
    "cdf_pair",
    "check_base",
    "location_scale",
    "log_cdf_pair",
    "log_hazards",
    "log_prob",
    "parameters",
    "rebuild",
    "support_bounds",
]

_LOG_HALF = math.log(0.5)
_SQRT_HALF = math.sqrt(0.5)

_CONTRACT = (
    "a univariate continuous NumPyro Distribution (event_shape ()) with a CDF: Normal, Laplace, "
    "Cauchy, Logistic, Gumbel, Exponential, Gamma, LogNormal, StudentT, this package's Rice or "
    "TruncatedNormal, or any distribution defining `cdf` and `log_prob` (optionally `log_cdf` "
    "and `log_sf`), differentiable in its pytree leaves"
)


def _standard(dist, value):
    return (value - dist.loc) / dist.scale


def _normal(dist, v):
    x = _standard(dist, v)
    return log_ndtr(x), log_ndtr(-x)


def _laplace(dist, v):
    x = _standard(dist, v)
    negative = x < 0
    # |x| written with the branch chosen at 0, so that the derivative there is the density's.
    ax = jnp.where(negative, -x, x)
    near = jnp.log1p(-0.5 * jnp.exp(-ax))
    far = _LOG_HALF - ax
    return jnp.where(negative, far, near), jnp.where(negative, near, far)


def _cauchy(dist, v):
    return cauchy_log_cdf_pair(_standard(dist, v))


def _logistic(dist, v):
    x = _standard(dist, v)
    return -jax.nn.softplus(-x), -jax.nn.softplus(x)


def _gumbel_exponent(x):
    """e = exp(-x) of a standardized Gumbel value, at x clamped where e is finite, and the mask
    of the x left of that: there log F = -e and the log-density -x - e are -inf in the dtype,
    and the clamp keeps their derivatives 0 rather than NaN."""
    lowest = 1 - math.log(jnp.finfo(x.dtype).max)
    return jnp.exp(-jnp.maximum(x, lowest)), x < lowest


def _gumbel(dist, v):
    # F = exp(-e) with e = exp(-x). Right of x = 20, log S = log(1 - exp(-e)) = -x - e/2 within
    # e^2/24: e underflows beyond x = 88 in float32, where log S is still -x.
    x = _standard(dist, v)
    e, left = _gumbel_exponent(x)
    far = x > 20
    log_s = jnp.where(far, -x - e / 2, log1mexp(-jnp.where(far, 1.0, e)))
    return jnp.where(left, -jnp.inf, -e), log_s


def _exponential(dist, v):
    log_sf = -dist.rate * v
    return log1mexp(log_sf), log_sf


def _lognormal(dist, v):
    x = (jnp.log(v) - dist.loc) / dist.scale
    return log_ndtr(x), log_ndtr(-x)


def _gamma(dist, v):
    return gamma_log_cdf_pair(dist.concentration, dist.rate, v)


def _student_t(dist, v):
    return student_t_log_cdf_pair(dist.df, _standard(dist, v))


def _rice(dist, v):
    return log_marcum_q(dist.nu / dist.sigma, v / dist.sigma)


# The families are disjoint (NumPyro's LogNormal is not a Normal).
_FAMILIES = (
    (Normal, _normal),
    (Laplace, _laplace),
    (Cauchy, _cauchy),
    (Logistic, _logistic),
    (Gumbel, _gumbel),
    (Exponential, _exponential),
    (LogNormal, _lognormal),
    (Gamma, _gamma),
    (StudentT, _student_t),
    (Rice, _rice),
)


def _family(dist):
    for cls, fn in _FAMILIES:
        if isinstance(dist, cls):
            return fn
    return None


def _overrides(dist, name):
    method = getattr(type(dist), name, None)
    return method is not None and method is not getattr(Distribution, name, None)


def _generic(dist, v):
    if _overrides(dist, "log_cdf") and _overrides(dist, "log_sf"):
        return dist.log_cdf(v), dist.log_sf(v)
    f = dist.cdf(v)
    return jnp.log(f), jnp.log1p(-f)


def check_base(dist, owner: str) -> None:
    """Raise a ``TypeError`` naming ``owner`` unless ``dist`` is a base this module supports."""
    if not isinstance(dist, Distribution):
        raise TypeError(f"{owner}: base_dist must be {_CONTRACT}; got {type(dist).__name__}")
    if tuple(dist.event_shape) != ():
        raise TypeError(
            f"{owner}: base_dist must be {_CONTRACT}; got {type(dist).__name__} with event_shape "
            f"{tuple(dist.event_shape)}"
        )
    support = dist.support
    if support.is_discrete or getattr(support, "event_dim", 0) != 0:
        raise TypeError(
            f"{owner}: base_dist must be {_CONTRACT}; got {type(dist).__name__}, whose support "
            f"{support} is not a continuous univariate set"
        )
    if _family(dist) is None and not (_overrides(dist, "cdf") and _overrides(dist, "log_prob")):
        raise TypeError(
            f"{owner}: base_dist must be {_CONTRACT}; {type(dist).__name__} defines no `cdf`"
        )


def support_bounds(dist):
    """Lower and upper bounds of the support of ``dist`` (``-inf``/``inf`` where unbounded)."""
    support = dist.support
    lower = getattr(support, "lower_bound", -math.inf)
    upper = getattr(support, "upper_bound", math.inf)
    return lower, upper


def parameters(dist) -> tuple[jax.Array, ...]:
    """The pytree leaves of ``dist``: the arrays it is a function of."""
    leaves, _ = jax.tree_util.tree_flatten(dist)
    return tuple(jnp.asarray(leaf) for leaf in leaves)


def rebuild(dist, params):
    """A distribution of the type of ``dist`` with ``params`` (as from :func:`parameters`)."""
    _, treedef = jax.tree_util.tree_flatten(dist)
    return jax.tree_util.tree_unflatten(treedef, params)


def stand_in(lower, upper, centre=0.0):
    r"""A point strictly inside ``(lower, upper)`` (either end possibly infinite): the
    midpoint, or :math:`\max(1, |b|)` inside the one finite end :math:`b` (1 inside would round
    onto a large bound, or sit where a truncated CDF rounds to 0), or ``centre``."""
    finite_lower, finite_upper = jnp.isfinite(lower), jnp.isfinite(upper)
    safe_lower = jnp.where(finite_lower, lower, 0.0)
    safe_upper = jnp.where(finite_upper, upper, 0.0)
    return jnp.where(
        finite_lower & finite_upper,
        (safe_lower + safe_upper) / 2,
        jnp.where(
            finite_lower,
            safe_lower + jnp.maximum(jnp.abs(safe_lower), 1),
            jnp.where(finite_upper, safe_upper - jnp.maximum(jnp.abs(safe_upper), 1), centre),
        ),
    )


def log_cdf_pair(dist, value):
    r""":math:`(\log F(v), \log(1 - F(v)))` of the univariate ``dist`` at ``value``,
    differentiable in ``value`` and in the parameters of ``dist``; each accurate in its own
    tail. Outside the support (and at infinite values) the result is the exact constant
    :math:`(-\infty, 0)` or :math:`(0, -\infty)`, with zero derivatives."""
    value = jnp.asarray(value)
    lower, upper = support_bounds(dist)
    lower, upper = jnp.asarray(lower, value.dtype), jnp.asarray(upper, value.dtype)
    below, above = value <= lower, value >= upper
    inside = ~(below | above)
    # A stand-in inside the support where the value is not, so that no branch sees a value at
    # which it is undefined (its derivative would otherwise turn the masked zeros into NaN).
    # On the whole line, the base's location where it has one: 0 may lie hundreds of scales out
    # (where a Gumbel's exp(-x) overflows).
    centre = getattr(dist, "loc", None)
    centre = 0.0 if centre is None else lax.stop_gradient(jnp.asarray(centre, value.dtype))
    v = jnp.where(inside, value, stand_in(lower, upper, centre))
    fn = _family(dist) or _generic
    log_f, log_s = fn(dist, v)
    log_f = jnp.where(inside, log_f, jnp.where(below, -jnp.inf, 0.0))
    log_s = jnp.where(inside, log_s, jnp.where(below, 0.0, -jnp.inf))
    return log_f, log_s


def cdf(dist, value):
    """The CDF of ``dist`` at ``value``, differentiable in both (see :func:`log_cdf_pair`)."""
    return jnp.exp(log_cdf_pair(dist, value)[0])


def cdf_pair(dist, value):
    r""":math:`(F(v), 1 - F(v))`, each accurate where it is small (for mixtures, whose CDFs
    enter linearly). For ``Normal`` one ``erfc`` of :math:`|x|` gives the small tail, a third of
    the cost of the two ``log_ndtr`` of :func:`log_cdf_pair`; other families exponentiate that."""
    if isinstance(dist, Normal):
        x = _standard(dist, jnp.asarray(value))
        negative = x < 0
        # |x| with the branch chosen at 0, so that the derivative there is the density's
        small = 0.5 * erfc(jnp.where(negative, -x, x) * _SQRT_HALF)
        return jnp.where(negative, small, 1 - small), jnp.where(negative, 1 - small, small)
    log_f, log_s = log_cdf_pair(dist, value)
    return jnp.exp(log_f), jnp.exp(log_s)


# The families whose CDF is F0((v - loc) / scale) with F0 free of parameters, and whose
# parameters are exactly (loc, scale).
_LOCATION_SCALE = (Normal, Laplace, Cauchy, Logistic, Gumbel)


def location_scale(dist):
    r"""For a location-scale family parametrized by ``(loc, scale)`` alone, the positions of
    ``loc`` and ``scale`` in :func:`parameters`; else ``None``. Then
    :math:`\partial F/\partial\mathrm{loc} = -q` and :math:`\partial F/\partial\mathrm{scale}
    = -x q` with :math:`x = (v - loc)/scale`."""
    if not isinstance(dist, _LOCATION_SCALE):
        return None
    fields = type(dist).gather_pytree_data_fields()
    return fields.index("loc"), fields.index("scale")


def log_hazards(dist, value, log_f, log_s):
    r""":math:`(\log q - \log F, \log q - \log S)` at ``value``, given :math:`\log F` and
    :math:`\log S` there: the logarithms of the slopes of :math:`\log F` and :math:`-\log S`.
    For the ``Gumbel`` the first is :math:`-x - \log\mathrm{scale}` in closed form: far in its
    left tail :math:`\log q` and :math:`\log F` are both about :math:`-e^{-x}` (-6.6e7 at
    :math:`x = -18`) and agree in every digit float32 holds, so their difference has none."""
    log_q = log_prob(dist, value)
    to_f, to_s = log_q - log_f, log_q - log_s
    if isinstance(dist, Gumbel):
        to_f = -_standard(dist, value) - jnp.log(dist.scale)
    return to_f, to_s


def log_prob(dist, value):
    r"""The log-density of ``dist`` at ``value``: the host's, except for the heavy-tailed
    ``Cauchy`` and ``StudentT``, whose :math:`\log(1 + x^2/\nu)` is formed without overflow of
    :math:`x^2` (float32 would give :math:`-\infty` beyond :math:`|x| \approx 10^{19}`), and
    the ``Gumbel``, whose :math:`e^{-x}` overflows far in its left tail (88 scales out in
    float32): :math:`-\infty` there, as the host's, but with derivatives 0, not NaN (a mixture
    multiplies them by a weight of 0)."""
    if isinstance(dist, Cauchy):
        x = _standard(dist, value)
        return -math.log(math.pi) - jnp.log(dist.scale) - _log1p_square(x, 1.0)
    if isinstance(dist, StudentT):
        df = dist.df
        x = _standard(dist, value)
        return (
            lax.lgamma((df + 1) / 2)
            - lax.lgamma(df / 2)
            - 0.5 * jnp.log(df * math.pi)
            - jnp.log(dist.scale)
            - (df + 1) / 2 * _log1p_square(x, df)
        )
    if isinstance(dist, Gumbel):
        x = _standard(dist, value)
        e, left = _gumbel_exponent(x)
        return jnp.where(left, -jnp.inf, -jnp.log(dist.scale) - x - e)
    return dist.log_prob(value)
