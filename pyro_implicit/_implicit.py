"""The implicit-reparameterization engine for PyTorch.

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

import torch

from ._provenance import apply

__all__ = ["implicit_reparameterize"]


def implicit_reparameterize(
    sample: torch.Tensor,
    params: Sequence[torch.Tensor],
    *,
    cdf: Callable[..., torch.Tensor] | None = None,
    log_prob: Callable[..., torch.Tensor] | None = None,
    grad: Callable[..., Sequence[torch.Tensor]] | None = None,
    vjp: Callable[..., Sequence[torch.Tensor | None]] | None = None,
) -> torch.Tensor:
    r"""Return ``sample`` with the implicit reparameterization gradient attached.

    The value is ``sample`` itself; gradients flow to ``params`` through

    .. math:: \frac{dz}{d\phi} = -\frac{\partial F(z; \phi) / \partial \phi}{q(z; \phi)},

    and the result can be differentiated again (double backward), because the backward pass is
    written in differentiable operations of the output and the parameters.

    Give either ``cdf`` and ``log_prob``, or ``grad``, or (multivariate) ``vjp``:

    :param sample: an exact draw from :math:`q_\phi`, without gradient (it is detached).
    :param params: the tensors :math:`\phi` that receive gradients, each broadcastable to
        ``sample``.
    :param cdf: ``cdf(z, *params)``, differentiable in ``params``. Any strictly increasing
        standardization works; for a tail use the log-CDF, with ``log_prob`` returning
        :math:`\log q - \log F`, the log-derivative of :math:`\log F`.
    :param log_prob: ``log_prob(z, *params)``, the log of :math:`\partial\,\mathrm{cdf}/\partial z`
        (the log-density when ``cdf`` is the CDF).
    :param grad: ``grad(z, *params)`` returning one tensor :math:`\partial z/\partial \phi_i` per
        parameter, elementwise and broadcastable to ``z``: a closed form, used instead of ``cdf``;
        ``None`` for a parameter that only informs the closed form and is never differentiated
        (e.g. the uniform variate the draw was made from).
    :param vjp: for a multivariate standardization :math:`S(z; \phi)` whose Jacobian
        :math:`J = \partial S/\partial z` has structure to exploit (e.g. triangular),
        ``vjp(z, params, grad_z, needs)`` returns the whole implicit vector-Jacobian product,
        one gradient :math:`-(J^{-\top} \bar z)^\top \partial S/\partial\phi_i` per parameter
        (summed to the parameter's shape here if broadcast), ``None`` where ``needs[i]`` is
        false. It is called inside the backward pass; when :func:`torch.is_grad_enabled` there
        (a double backward), it must be written in differentiable operations of ``z``,
        ``params`` and ``grad_z``, taking partial derivatives in ``params`` at fixed ``z``
        through aliases such as ``p.view_as(p)``, so that second derivatives follow.
    """
    params = tuple(params)
    if grad is None and vjp is None and (cdf is None or log_prob is None):
        raise TypeError(
            "implicit_reparameterize needs either `grad`, or both `cdf` and `log_prob`, or `vjp`"
        )
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params[{i}] must be a torch.Tensor, got {type(p).__name__}")
    if not any(p.requires_grad for p in params):
        return sample.detach()
    return apply(_ImplicitSample, (cdf, log_prob, grad, vjp), sample.detach(), *params)


class _ImplicitSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fns, sample, *params):
        z = sample.clone()
        ctx.fns = fns
        ctx.save_for_backward(z, *params)
        return z

    @staticmethod
    def backward(ctx, grad_z):
        z, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]
        cdf, log_prob, grad, vjp = ctx.fns
        if vjp is not None:
            vjps = vjp(z, tuple(params), grad_z, needs)
            grads = [
                (torch.zeros_like(p) if g is None else g.sum_to_size(p.shape)) if need else None
                for p, g, need in zip(params, vjps, needs, strict=True)
            ]
        elif grad is not None:
            # dz/dphi_i in closed form; sum_to_size undoes the broadcast of phi_i to z.
            dz = grad(z, *params)
            for i, (d, need) in enumerate(zip(dz, needs, strict=True)):
                if need and d is None:
                    raise TypeError(
                        f"implicit_reparameterize: `grad` gave None for params[{i}], "
                        "which requires grad"
                    )
            grads = [
                (grad_z * d).sum_to_size(p.shape) if need else None
                for p, d, need in zip(params, dz, needs, strict=True)
            ]
        else:
            grads = _cdf_vjp(cdf, log_prob, z, params, needs, grad_z)
        return (None, None, *grads)


def _cdf_vjp(cdf, log_prob, z, params, needs, grad_z):
    """``grad_z . dz/dphi = -(grad_z / q) . dF/dphi``, the partial in phi at fixed z."""
    create_graph = torch.is_grad_enabled()  # true inside a double-backward pass
    with torch.enable_grad():
        # Aliases, not the saved tensors themselves: autograd.grad then sums only the paths
        # through the aliases, i.e. the partial derivative at fixed z, while create_graph keeps
        # the result differentiable in both z and phi for second derivatives.
        if create_graph:
            inputs = [p.view_as(p) if need else p for p, need in zip(params, needs, strict=True)]
        else:
            z = z.detach()
            inputs = [
                p.detach().requires_grad_(need) for p, need in zip(params, needs, strict=True)
            ]
        standard = cdf(z, *inputs)
        weight = -grad_z * torch.exp(-log_prob(z, *inputs))
        wanted = [p for p, need in zip(inputs, needs, strict=True) if need]
        partials = iter(
            torch.autograd.grad(
                standard, wanted, weight, create_graph=create_graph, allow_unused=True
            )
        )
    out = []
    for p, need in zip(params, needs, strict=True):
        g = next(partials) if need else None
        out.append(torch.zeros_like(p) if need and g is None else g)
    return out
