r"""Differentiable CDFs of univariate distributions, for truncation and mixtures (PyTorch).

A *base* is a univariate continuous :class:`torch.distributions.Distribution` (``event_shape``
``()``) whose CDF this module can differentiate in the value and in the parameters:

* the families with closed forms in log space: ``Normal`` (``log_ndtr``), ``Laplace``,
  ``Cauchy``, ``Logistic`` (Pyro's), ``Gumbel``, ``Exponential``, ``LogNormal``;
* ``Gamma`` through :func:`~pyro_implicit.special.gamma_log_cdf_pair` and ``StudentT`` through
  :func:`~pyro_implicit.special.student_t_log_cdf_pair` (PyTorch has no Student t CDF and no
  shape derivative of the incomplete gamma);
* this package's ``Rice`` through the log Marcum Q-function;
* any other distribution that defines ``cdf`` and ``log_prob`` (optionally ``log_cdf`` and
  ``log_sf`` for accuracy in the tails), differentiable in the tensors named in its
  ``arg_constraints``, and whose constructor accepts those names as keyword arguments (so
  that :func:`rebuild` can make a copy at other parameter values); this package's truncations
  count their base's parameters, then the bounds, as theirs.

:func:`log_cdf_pair` returns :math:`(\log F(v), \log S(v))` with :math:`S = 1 - F`, each
accurate in its own tail; values outside the support give :math:`(-\infty, 0)` or
:math:`(0, -\infty)` with zero (not NaN) gradients. :func:`cdf_pair` is the same pair in linear
space, and :func:`signed_tail` one of the two, chosen per element (cheaper for a Normal);
:func:`terms` gathers the log-density and its derivative in the value, sharing work where a
closed form allows.
:func:`log_prob` is the host's log-density, except for ``Cauchy`` and ``StudentT``, where it is
formed without overflow far in the float32 tails. The Gamma and Student t CDFs carry their
shape derivatives through iterations; a double backward differentiates those iterations.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import Logistic
from torch.distributions import (
    Cauchy,
    Distribution,
    Exponential,
    Gamma,
    Gumbel,
    Laplace,
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
    "is_location_scale",
    "log_cdf_pair",
    "log_hazards",
    "log_prob",
    "parameters",
    "rebuild",
    "signed_tail",
    "support_bounds",
    "terms",
]

_LOG_HALF = math.log(0.5)
_SQRT_HALF = math.sqrt(0.5)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

_CONTRACT = (
    "a univariate continuous torch Distribution (event_shape ()) with a CDF: Normal, Laplace, "
    "Cauchy, Logistic, Gumbel, Exponential, Gamma, LogNormal, StudentT, this package's Rice or "
    "TruncatedNormal, or any distribution defining `cdf` and `log_prob` (optionally `log_cdf` "
    "and `log_sf`) whose parameters are the tensors named in `arg_constraints`"
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
    ax = torch.where(negative, -x, x)
    near = torch.log1p(-0.5 * torch.exp(-ax))
    far = _LOG_HALF - ax
    return torch.where(negative, far, near), torch.where(negative, near, far)


def _cauchy(dist, v):
    return cauchy_log_cdf_pair(_standard(dist, v))


def _logistic(dist, v):
    x = _standard(dist, v)
    return -torch.nn.functional.softplus(-x), -torch.nn.functional.softplus(x)


def _gumbel_exponent(x):
    """e = exp(-x) of a standardized Gumbel value, at x clamped where e is finite, and the mask
    of the x left of that: there log F = -e and the log-density -x - e are -inf in the dtype,
    and the clamp keeps their derivatives 0 rather than NaN."""
    lowest = 1 - math.log(torch.finfo(x.dtype).max)
    return torch.exp(-torch.clamp(x, min=lowest)), x < lowest


def _gumbel(dist, v):
    # F = exp(-e) with e = exp(-x). Right of x = 20, log S = log(1 - exp(-e)) = -x - e/2 within
    # e^2/24: e underflows beyond x = 88 in float32, where log S is still -x.
    x = _standard(dist, v)
    e, left = _gumbel_exponent(x)
    far = x > 20
    log_s = torch.where(far, -x - e / 2, log1mexp(-torch.where(far, 1.0, e)))
    return torch.where(left, -math.inf, -e), log_s


def _exponential(dist, v):
    log_sf = -dist.rate * v
    return log1mexp(log_sf), log_sf


def _lognormal(dist, v):
    x = (torch.log(v) - dist.loc) / dist.scale
    return log_ndtr(x), log_ndtr(-x)


def _normal_tails(x):
    r""":math:`(\Phi(x), 1 - \Phi(x))`, each from its own ``erfc``, accurate where it is small
    (``torch.special.ndtr`` has no relative accuracy below 0)."""
    return 0.5 * torch.special.erfc(x * -_SQRT_HALF), 0.5 * torch.special.erfc(x * _SQRT_HALF)


def _normal_terms(dist, v, score, out):
    """:func:`terms` of a Normal, from one standardized value; without autograd, into ``out``
    (two tensors or ``None``)."""
    loc, scale = dist.loc, dist.scale
    log_q, d = out
    if torch.is_grad_enabled():
        x = (v - loc) / scale
    else:  # the standardized value in the memory of the score, which overwrites it
        x = torch.sub(v, loc, out=d).div_(scale)
    log_q = torch.addcmul(-(torch.log(scale) + _HALF_LOG_2PI), x, x, value=-0.5, out=log_q)
    return log_q, (torch.div(x, -scale, out=d) if score else None)


def _normal_signed_tail(dist, v, upper, out):
    r""":func:`signed_tail` of a Normal, :math:`-\tfrac{s}{2}\operatorname{erfc}(s x/\sqrt 2)`
    with :math:`s = 2\,\mathrm{upper} - 1 = \pm 1`: one ``erfc``; without autograd, into
    ``out``, overwriting ``upper``."""
    if torch.is_grad_enabled():
        sign = 2 * upper - 1
        return torch.special.erfc(_standard(dist, v) * (sign * _SQRT_HALF)) * (sign * -0.5)
    sign = upper.mul_(2 * _SQRT_HALF).sub_(_SQRT_HALF)  # s / sqrt(2)
    x = torch.sub(v, dist.loc, out=out).div_(dist.scale).mul_(sign).erfc_()
    return x.mul_(sign.mul_(-_SQRT_HALF))  # times -s / 2


def _normal_linear(dist, v):
    return _normal_tails(_standard(dist, v))


def _lognormal_linear(dist, v):
    return _normal_tails((torch.log(v) - dist.loc) / dist.scale)


def _gamma(dist, v):
    return gamma_log_cdf_pair(dist.concentration, dist.rate, v)


def _student_t(dist, v):
    return student_t_log_cdf_pair(dist.df, _standard(dist, v))


def _rice(dist, v):
    return log_marcum_q(dist.nu / dist.sigma, v / dist.sigma)


# Order matters only for subclasses; the families are disjoint.
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


# Linear-space pairs where they are cheaper than the exponentials of the log-space ones.
_LINEAR_FAMILIES = ((Normal, _normal_linear), (LogNormal, _lognormal_linear))


# The families whose CDF is F0((v - loc) / scale) with F0 free of parameters, and whose
# parameters are exactly (loc, scale).
_LOCATION_SCALE = (Normal, Laplace, Cauchy, Logistic, Gumbel)


def _family(dist, families=_FAMILIES):
    for cls, fn in families:
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
    return torch.log(f), torch.log1p(-f)


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


def support_bounds(dist) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    """Lower and upper bounds of the support of ``dist`` (``-inf``/``inf`` where unbounded)."""
    support = dist.support
    lower = getattr(support, "lower_bound", -math.inf)
    upper = getattr(support, "upper_bound", math.inf)
    return lower, upper


def _truncation(dist):
    """Whether ``dist`` is this package's truncation of a base, which its constructor takes."""
    from .truncated import TruncatedUnivariate  # here: truncated.py imports this module

    return isinstance(dist, TruncatedUnivariate)


def parameters(dist) -> tuple[torch.Tensor, ...]:
    """The tensors that parametrize ``dist``, in the order of its ``arg_constraints`` (after
    those of the base, for this package's truncations)."""
    own = tuple(getattr(dist, name) for name in dist.arg_constraints)
    return (*parameters(dist.base_dist), *own) if _truncation(dist) else own


def rebuild(dist, params):
    """A distribution of the type of ``dist`` with ``params`` (as from :func:`parameters`)."""
    params, args = tuple(params), ()
    if _truncation(dist):
        n = len(parameters(dist.base_dist))
        args, params = (rebuild(dist.base_dist, params[:n]),), params[n:]
    kwargs = dict(zip(dist.arg_constraints, params, strict=True))
    # This package's truncations keep their one-sidedness (their support) in flags.
    for name, flag in (("low", "_has_low"), ("high", "_has_high")):
        if not getattr(dist, flag, True):
            kwargs[name] = None
    return type(dist)(*args, **kwargs, validate_args=False)


def _inside(dist, value):
    """``(v, inside, below)``: ``value`` with a stand-in inside the support where it is not, so
    that no branch sees a value at which it is undefined (its gradient would otherwise turn the
    masked constants into NaN), and the masks of the values inside and below the support."""
    value = torch.as_tensor(value)
    lower, upper = support_bounds(dist)
    below, above = value <= lower, value >= upper
    inside = ~(below | above)
    lower = torch.as_tensor(lower, dtype=value.dtype, device=value.device)
    upper = torch.as_tensor(upper, dtype=value.dtype, device=value.device)
    # On the whole line, the base's location where it has one: 0 may lie hundreds of scales out
    # (where a Gumbel's exp(-x) overflows).
    centre = getattr(dist, "loc", None)
    centre = centre.detach() if isinstance(centre, torch.Tensor) else 0.0
    return torch.where(inside, value, stand_in(lower, upper, centre)), inside, below


def stand_in(lower, upper, centre=0.0):
    r"""A point strictly inside ``(lower, upper)`` (tensors, either end possibly infinite): the
    midpoint, or :math:`\max(1, |b|)` inside the one finite end :math:`b` (1 inside would round
    onto a large bound, or sit where a truncated CDF rounds to 0), or ``centre``."""
    finite_lower, finite_upper = torch.isfinite(lower), torch.isfinite(upper)
    safe_lower = torch.where(finite_lower, lower, 0.0)
    safe_upper = torch.where(finite_upper, upper, 0.0)
    return torch.where(
        finite_lower & finite_upper,
        (safe_lower + safe_upper) / 2,
        torch.where(
            finite_lower,
            safe_lower + safe_lower.abs().clamp(min=1),
            torch.where(finite_upper, safe_upper - safe_upper.abs().clamp(min=1), centre),
        ),
    )


def log_cdf_pair(dist, value) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`(\log F(v), \log(1 - F(v)))` of the univariate ``dist`` at ``value``,
    differentiable in ``value`` and in the parameters of ``dist``; each accurate in its own
    tail. Outside the support (and at infinite values) the result is the exact constant
    :math:`(-\infty, 0)` or :math:`(0, -\infty)`, with zero gradients."""
    v, inside, below = _inside(dist, value)
    log_f, log_s = (_family(dist) or _generic)(dist, v)
    log_f = torch.where(inside, log_f, torch.where(below, -math.inf, 0.0))
    log_s = torch.where(inside, log_s, torch.where(below, 0.0, -math.inf))
    return log_f, log_s


def cdf_pair(dist, value) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`(F(v), 1 - F(v))`, each accurate where it is small, with the support handling of
    :func:`log_cdf_pair` (the constants :math:`(0, 1)` or :math:`(1, 0)` outside)."""
    linear = _family(dist, _LINEAR_FAMILIES)
    if linear is None:
        log_f, log_s = log_cdf_pair(dist, value)
        return torch.exp(log_f), torch.exp(log_s)
    v, inside, below = _inside(dist, value)
    f, s = linear(dist, v)
    if bool(inside.all()):  # the usual case; the masks would broadcast to the full shape
        return f, s
    below = below.to(f.dtype)
    return torch.where(inside, f, 1 - below), torch.where(inside, s, below)


def is_location_scale(dist) -> bool:
    r"""Whether ``dist`` is a location-scale family parametrized by ``(loc, scale)`` alone, so
    that :math:`\partial F/\partial\mathrm{loc} = -q` and
    :math:`\partial F/\partial\mathrm{scale} = -x q` with :math:`x = (v - loc)/scale`."""
    return isinstance(dist, _LOCATION_SCALE)


def _all_finite(value):
    """Whether no element of ``value`` is infinite or NaN, from their sum (no temporary of the
    size of ``value``); a sum that overflows answers no, which is safe for the callers here."""
    return bool(torch.isfinite(value.sum()))


def terms(dist, value, *, score=False, create_graph=False, out=None):
    r"""The per-element terms of an implicit gradient at ``value``, each of the broadcast shape
    of ``value`` and the batch of ``dist``: ``(log q, d/dv log q)``, i.e. :func:`log_prob` and,
    if ``score``, the derivative of the log-density in the value (else ``None``), set to 0
    where it is not finite (where :math:`\log q = -\infty`, outside the support). A Normal has
    them in closed form from one standardized value; other families differentiate
    :func:`log_prob` by autograd, with ``create_graph`` for higher derivatives. ``out``: two
    tensors of that shape to hold the results, without autograd (to spare the allocations of a
    caller that reuses its memory)."""
    value = torch.as_tensor(value)
    if out is None:
        out = (None, None)
    if isinstance(dist, Normal) and _all_finite(value):
        return _normal_terms(dist, value, score, out)
    if not score:
        results = (log_prob(dist, value), None)
    else:
        # at a copy of the value per element, so that the gradient of the sum is elementwise
        v = value.expand(torch.broadcast_shapes(value.shape, dist.batch_shape))
        if not (create_graph and v.requires_grad):
            v = v.detach().requires_grad_()
        with torch.enable_grad():
            log_q = log_prob(dist, v)
            (d,) = torch.autograd.grad(log_q.sum(), v, retain_graph=True, create_graph=create_graph)
        results = (log_q, d.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0))
    return tuple(
        r if o is None or r is None else o.copy_(r) for r, o in zip(results, out, strict=True)
    )


def signed_tail(dist, value, choose, *, out=None) -> torch.Tensor:
    r"""The CDF measured from one end of the support: :math:`F(v)` from the lower end and
    :math:`F(v) - 1 = -(1 - F(v))` from the upper, each accurate where it is small; its
    derivatives in the parameters are those of :math:`F`. ``choose`` maps the 0/1 mask of
    :math:`F(v) > 1/2` (of the broadcast shape, a temporary it may overwrite) to the choice of
    end, 0 (lower) or 1 (upper), broadcastable to it. A Normal needs one ``erfc`` for this,
    where :func:`cdf_pair` takes two; ``out`` (a Normal, without autograd): a tensor of the
    broadcast shape to hold the result."""
    value = torch.as_tensor(value)
    if isinstance(dist, Normal) and _all_finite(value):
        with torch.no_grad():
            upper = choose(torch.gt(value, dist.loc, out=out).to(value.dtype))
        return _normal_signed_tail(dist, value, upper, out)
    f, s = cdf_pair(dist, value)
    with torch.no_grad():
        upper = choose((f > s).to(f.dtype))
    return torch.lerp(f, -s, upper)  # weights 0 and 1 select exactly


def cdf(dist, value) -> torch.Tensor:
    """The CDF of ``dist`` at ``value``, differentiable in both (see :func:`log_cdf_pair`)."""
    return torch.exp(log_cdf_pair(dist, value)[0])


def log_hazards(dist, value, log_f, log_s):
    r""":math:`(\log q - \log F, \log q - \log S)` at ``value``, given :math:`\log F` and
    :math:`\log S` there: the logarithms of the slopes of :math:`\log F` and :math:`-\log S`.
    For the ``Gumbel`` the first is :math:`-x - \log\mathrm{scale}` in closed form: far in its
    left tail :math:`\log q` and :math:`\log F` are both about :math:`-e^{-x}` (-6.6e7 at
    :math:`x = -18`) and agree in every digit float32 holds, so their difference has none."""
    log_q = log_prob(dist, value)
    to_f, to_s = log_q - log_f, log_q - log_s
    if isinstance(dist, Gumbel):
        to_f = -_standard(dist, value) - torch.log(dist.scale)
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
        return -math.log(math.pi) - torch.log(dist.scale) - _log1p_square(x, 1.0)
    if isinstance(dist, StudentT):
        df = dist.df
        x = _standard(dist, value)
        return (
            torch.lgamma((df + 1) / 2)
            - torch.lgamma(df / 2)
            - 0.5 * torch.log(df * math.pi)
            - torch.log(dist.scale)
            - (df + 1) / 2 * _log1p_square(x, df)
        )
    if isinstance(dist, Gumbel):
        x = _standard(dist, value)
        e, left = _gumbel_exponent(x)
        return torch.where(left, -math.inf, -torch.log(dist.scale) - x - e)
    return dist.log_prob(value)
