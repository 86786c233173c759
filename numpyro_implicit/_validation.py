"""Parameter validation whose error messages name the parameter and its constraint.

NumPyro's :meth:`~numpyro.distributions.Distribution.validate_args` raises
``ValueError("Rice distribution got invalid sigma parameter.")``. :class:`ConstraintMessageMixin`
keeps that check, its ``ValueError`` and the start of its message, and completes the message
with the constraint and the offending values::

    Rice distribution got invalid sigma parameter: expected sigma to satisfy the constraint
    Positive(lower_bound=0.0), i.e. sigma > 0.0, but got -1.0.

Put the mixin before the NumPyro base class: ``class Rice(ConstraintMessageMixin, Distribution)``.
"""

from __future__ import annotations

import jax
import numpy as np
from numpyro.distributions import constraints
from numpyro.distributions.util import lazy_property
from numpyro.util import not_jax_tracer

__all__ = [
    "ConstraintMessageMixin",
    "check_probability",
    "describe_constraint",
    "invalid_parameter_message",
]


class ConstraintMessageMixin:
    """Mixin for :class:`numpyro.distributions.Distribution` subclasses: the upstream
    validation, with a ``ValueError`` that names the parameter and the constraint."""

    def __init__(self, *args, **kwargs):
        # NumPyro < 0.16 validates inline in Distribution.__init__, without validate_args.
        try:
            super().__init__(*args, **kwargs)
        except ValueError as error:
            _raise_with_constraint(self, error)

    def validate_args(self, strict: bool = True) -> None:
        try:
            super().validate_args(strict)
        except ValueError as error:
            _raise_with_constraint(self, error)


def _raise_with_constraint(dist, error: ValueError):
    message = invalid_parameter_message(dist)
    if message is None or message == str(error):
        raise error
    raise ValueError(message) from error


def _parameters(dist):
    """``(name, value)`` of the parameters in ``arg_constraints`` that ``dist`` holds (lazily
    computed ones only once computed), as upstream validation sees them."""
    for name in dist.arg_constraints:
        if name not in dist.__dict__ and isinstance(getattr(type(dist), name, None), lazy_property):
            continue
        yield name, getattr(dist, name)


def invalid_parameter_message(dist) -> str | None:
    """The message for the first parameter of ``dist`` that violates its constraint, in the
    order of ``arg_constraints``; ``None`` when no concrete parameter does."""
    with jax.ensure_compile_time_eval():
        for name, value in _parameters(dist):
            constraint = dist.arg_constraints[name]
            if constraints.is_dependent(constraint):
                continue
            is_valid = constraint(value)
            if not not_jax_tracer(is_valid):
                continue
            is_valid = np.asarray(is_valid)
            if np.all(is_valid):
                continue
            n_bad, n_all = int(np.sum(~is_valid)), int(is_valid.size)
            message = (
                f"{type(dist).__name__} distribution got invalid {name} parameter: expected "
                f"{name} to satisfy the constraint {describe_constraint(constraint, name)}"
            )
            values = np.asarray(value)
            if values.size == 1:
                message += f", but got {values.item()!r}"
            elif n_all == 1:
                message += ", but its value violates it"
            elif values.shape == is_valid.shape:
                example = values[~is_valid].flat[0].item()
                message += f", but {n_bad} of its {n_all} values violate it, e.g. {example!r}"
            else:
                message += f", but {n_bad} of its {n_all} batch elements violate it"
            return message + "."
    return None


def check_probability(value, where: str) -> None:
    """A ``ValueError`` naming ``where`` (e.g. ``"Rice.icdf"``) if a concrete ``value`` lies
    outside [0, 1]. Evaluated at trace time: inside ``jit`` a closed-over constant is concrete,
    while comparisons on it would be staged (and their truth value a tracer)."""
    with jax.ensure_compile_time_eval():
        if not_jax_tracer(value) and not np.all(
            (np.asarray(value) >= 0) & (np.asarray(value) <= 1)
        ):
            raise ValueError(f"{where}: `value` must be a probability in [0, 1]")


def describe_constraint(constraint, name: str = "x") -> str:
    """``repr(constraint)``, followed for the common constraints by the condition it imposes on
    ``name`` (e.g. ``Positive(lower_bound=0.0), i.e. sigma > 0.0``)."""
    condition = _condition(constraint, name)
    return f"{constraint!r}, i.e. {condition}" if condition else repr(constraint)


def _bound(value, name: str) -> str:
    value = np.asarray(value)
    return repr(value.item()) if value.size == 1 else f"{name} (elementwise)"


def _condition(c, name):
    lower = _bound(getattr(c, "lower_bound", None), "lower_bound")
    upper = _bound(getattr(c, "upper_bound", None), "upper_bound")
    if isinstance(c, constraints._IndependentConstraint):
        base = _condition(c.base_constraint, name)
        return base and f"{base} (with {c.reinterpreted_batch_ndims} event dimension(s))"
    if isinstance(c, constraints._Real):
        return f"{name} is finite"
    if isinstance(c, constraints._Boolean):
        return f"{name} is 0 or 1"
    if isinstance(c, constraints._GreaterThanEq):
        return f"{name} >= {lower}"
    if isinstance(c, constraints._GreaterThan):
        return f"{name} > {lower}"
    if isinstance(c, constraints._LessThanEq):
        return f"{name} <= {upper}"
    if isinstance(c, constraints._LessThan):
        return f"{name} < {upper}"
    if isinstance(c, constraints._OpenInterval):
        return f"{lower} < {name} < {upper}"
    if isinstance(c, constraints._Interval):
        return f"{lower} <= {name} <= {upper}"
    if isinstance(c, constraints._IntegerInterval):
        return f"{name} is an integer in [{lower}, {upper}]"
    if isinstance(c, constraints._IntegerGreaterThan):
        return f"{name} is an integer >= {lower}"
    return None
