"""The implicit-reparameterization engine for JAX.

Every distribution of this package draws an exact sample without gradient and hands it to
:func:`implicit_reparameterize`, which attaches the pathwise gradient of Figurnov et al. (2018):
for a standardization :math:`S(z; \\phi)` whose value at the sample has a law free of
:math:`\\phi` (the CDF is the usual choice),

.. math::
    \\frac{dz}{d\\phi} = -\\left(\\frac{\\partial S}{\\partial z}\\right)^{-1}
    \\frac{\\partial S}{\\partial \\phi}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

__all__ = ["implicit_reparameterize"]


def implicit_reparameterize(
    sample: jax.Array,
    params: Sequence[jax.Array],
    *,
    cdf: Callable[..., jax.Array] | None = None,
    log_prob: Callable[..., jax.Array] | None = None,
    grad: Callable[..., Sequence[jax.Array]] | None = None,
    jvp: Callable[..., jax.Array] | None = None,
) -> jax.Array:
    r"""Return ``sample`` with the implicit reparameterization gradient attached.

    The value is ``sample`` itself; derivatives flow to ``params`` through

    .. math:: \frac{dz}{d\phi} = -\frac{\partial F(z; \phi) / \partial \phi}{q(z; \phi)},

    implemented as a :func:`jax.custom_jvp`, so the result works under :func:`jax.jit`,
    :func:`jax.vmap`, forward and reverse mode, and can be differentiated again: the JVP rule is
    written in differentiable operations of the output and the parameters, and the output it
    uses is the custom-JVP function itself, whose own dependence on the parameters is thereby
    differentiated in higher-order derivatives.

    Give either ``cdf`` and ``log_prob``, or ``grad``, or (multivariate) ``jvp``:

    :param sample: an exact draw from :math:`q_\phi`, without gradient (it is wrapped in
        :func:`jax.lax.stop_gradient`).
    :param params: the arrays :math:`\phi` that receive derivatives, each broadcastable to
        ``sample``.
    :param cdf: ``cdf(z, *params)``, differentiable in ``params``. Any strictly increasing
        standardization works; for a tail use the log-CDF, with ``log_prob`` returning
        :math:`\log q - \log F`, the log-derivative of :math:`\log F`.
    :param log_prob: ``log_prob(z, *params)``, the log of :math:`\partial\,\mathrm{cdf}/\partial z`
        (the log-density when ``cdf`` is the CDF).
    :param grad: ``grad(z, *params)`` returning one array :math:`\partial z/\partial \phi_i` per
        parameter, elementwise and broadcastable to ``z``: a closed form, used instead of ``cdf``;
        ``None`` for a parameter that only informs the closed form and is never differentiated
        (e.g. the uniform variate the draw was made from).
    :param jvp: for a multivariate standardization :math:`S(z; \phi)` whose Jacobian
        :math:`J = \partial S/\partial z` has structure to exploit (e.g. triangular),
        ``jvp(z, params, params_dot)`` returns the whole implicit tangent
        :math:`\dot z = -J^{-1}\,(\partial S/\partial\phi)\,\dot\phi`, with ``None`` in
        ``params_dot`` for parameters without tangent. It must be linear in the tangents (JAX
        transposes it for reverse mode) and written in differentiable JAX operations of ``z``
        and ``params`` (for higher-order derivatives).
    """
    params = tuple(params)
    if grad is None and jvp is None and (cdf is None or log_prob is None):
        raise TypeError(
            "implicit_reparameterize needs either `grad`, or both `cdf` and `log_prob`, or `jvp`"
        )
    arrays = []
    for i, p in enumerate(params):
        try:
            arrays.append(jnp.asarray(p))
        except TypeError as error:
            raise TypeError(
                f"params[{i}] must be a JAX array or array-like, got {type(p).__name__}"
            ) from error
    if jvp is not None:
        # One nondiff argument carries the rule, so the univariate signature is unchanged.
        log_prob = _Tangent(jvp)
    return _implicit_sample(cdf, log_prob, grad, lax.stop_gradient(sample), *arrays)


class _Tangent:
    """Marks a whole tangent rule ``jvp`` in the ``log_prob`` slot of :func:`_implicit_sample`."""

    def __init__(self, jvp):
        self.jvp = jvp

    def __hash__(self):
        return hash(self.jvp)

    def __eq__(self, other):
        return isinstance(other, _Tangent) and other.jvp == self.jvp


@partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _implicit_sample(cdf, log_prob, grad, sample, *params):
    return sample


@partial(_implicit_sample.defjvp, symbolic_zeros=True)
def _implicit_sample_jvp(cdf, log_prob, grad, primals, tangents):
    sample, *params = primals
    _, *params_dot = tangents
    # The output through the function itself: in a second derivative, z then carries its own
    # tangent dz/dphi, and the rule below is differentiated along it.
    z = _implicit_sample(cdf, log_prob, grad, sample, *params)
    if grad is not None:
        # dz/dphi_i in closed form, contracted with the tangents of phi_i (broadcast to z).
        z_dot = jnp.zeros(jnp.shape(z), jnp.result_type(z))
        for i, (d, p_dot) in enumerate(zip(grad(z, *params), params_dot, strict=True)):
            if _is_zero_tangent(p_dot):
                continue
            if d is None:
                raise TypeError(
                    f"implicit_reparameterize: `grad` gave None for params[{i}], which has a "
                    "tangent"
                )
            z_dot = z_dot + jnp.broadcast_to(d * p_dot, jnp.shape(z)).astype(z_dot.dtype)
    elif isinstance(log_prob, _Tangent):
        dots = [None if _is_zero_tangent(t) else t for t in params_dot]
        if all(t is None for t in dots):
            z_dot = jnp.zeros(jnp.shape(z), jnp.result_type(z))
        else:
            z_dot = log_prob.jvp(z, tuple(params), dots).astype(jnp.result_type(z))
    else:
        z_dot = _cdf_jvp(cdf, log_prob, z, params, params_dot)
    return z, z_dot


def _is_zero_tangent(t):
    """Symbolic zeros (parameters not differentiated, e.g. a random variate) and the float0
    tangents of integer parameters contribute nothing."""
    return isinstance(t, SymbolicZero) or jnp.result_type(t) == jax.dtypes.float0


def _cdf_jvp(cdf, log_prob, z, params, params_dot):
    """``dz = -(dF/dphi . dphi) / q``, the partial in phi at fixed z."""
    differentiable = [not _is_zero_tangent(t) for t in params_dot]
    if not any(differentiable):
        return jnp.zeros(jnp.shape(z), jnp.result_type(z))
    fixed = list(params)

    def cdf_of(*free):
        # Only the parameters with a tangent are arguments; the others stay fixed.
        it = iter(free)
        args = [next(it) if d else p for p, d in zip(fixed, differentiable, strict=True)]
        return cdf(z, *args)

    free = [p for p, d in zip(params, differentiable, strict=True) if d]
    free_dot = [t for t, d in zip(params_dot, differentiable, strict=True) if d]
    _, cdf_dot = jax.jvp(cdf_of, free, free_dot)
    z_dot = -cdf_dot * jnp.exp(-log_prob(z, *params))
    return jnp.broadcast_to(z_dot, jnp.shape(z)).astype(jnp.result_type(z))
