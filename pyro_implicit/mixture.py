r"""Finite mixtures with implicit reparameterization gradients (PyTorch / Pyro).

A draw is exact (a component index, then a draw of that component); its gradient comes from
implicit differentiation of the *sequential distributional transform*

.. math::
    S_d(z) = F(z_d \mid z_{<d}) = \sum_k w_{kd} F_k(z_d), \qquad
    w_{kd} \propto \pi_k \prod_{j<d} q_k(z_j),

whose Jacobian is lower triangular with diagonal :math:`c_d = \sum_k w_{kd} q_k(z_d)` (the
conditional density) and, below it, a matrix of rank at most :math:`K`:

.. math::
    J_{dj} = \sum_k \underbrace{w_{kd} \bigl(F_k(z_d) - S_d\bigr)}_{a_{kd}}
        \,\underbrace{\partial_{z_j} \log q_k(z_j)}_{b_{kj}}, \qquad j < d.

For a cotangent :math:`\bar z` the gradient is :math:`-(J^{-\top} \bar z)^\top
\partial S/\partial\phi`. The transposed solve runs backwards over :math:`d` with :math:`K`
running sums :math:`G_k` (zero at the start), in :math:`O(DK)` time and memory per draw:

.. math::
    \bar y_d = -\Bigl(\bar z_d + \sum_k b_{kd} G_k\Bigr) / c_d, \qquad
    G_k \leftarrow G_k + a_{kd} \bar y_d.

The parameters enter :math:`S` through the weights and through :math:`F_k` at fixed weights,
so the gradient of the logits is the final :math:`G` (the normalization of :math:`\pi` drops
out, as :math:`\sum_k a_{kd} = 0`), and that of the component parameters is the partial
derivative at fixed :math:`z` of :math:`F_k(z_d)` with cotangent :math:`w_{kd} \bar y_d` and of
:math:`\log q_k(z_d)` with cotangent :math:`G_k` before step :math:`d`: a closed form for
location-scale families, autograd for the others. A univariate mixture is the case
:math:`D = 1`, where the gradient is :math:`-(\partial F/\partial\phi)/q(z)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from pyro.distributions import MixtureSameFamily as _PyroMixtureSameFamily
from pyro.distributions.score_parts import ScoreParts
from torch.distributions import Independent, constraints

from . import base_cdf
from ._implicit import implicit_reparameterize

__all__ = ["MixtureSameFamily"]

_WEIGHT_ESTIMATORS = ("implicit", "score")
_NO_SHAPE = torch.Size()


class MixtureSameFamily(_PyroMixtureSameFamily):
    r"""``pyro.distributions.MixtureSameFamily`` with :meth:`rsample`: pathwise gradients with
    respect to the mixture logits (or probs) and every component parameter, by implicit
    differentiation of the mixture CDF (univariate components) or of the sequential
    distributional transform (``Independent(univariate, 1)`` components); see the module
    docstring. Time and memory per draw are :math:`O(DK)`; second derivatives work.

    :param mixture_distribution: a ``Categorical`` over the :math:`K` components.
    :param component_distribution: a univariate distribution with a differentiable CDF, or an
        ``Independent`` of one with one reinterpreted dimension; its last batch dimension is
        :math:`K`.
    :param str weights: the gradient estimator for the mixture weights. ``"implicit"`` (the
        default): the pathwise implicit gradient, unbiased for any loss of the sample.
        ``"score"``: conditional reparameterization; the sample carries no gradient for the
        weights, and :meth:`score_parts` adds the Rao-Blackwellized score-function term
        :math:`f(z) \sum_k r_k(z) \nabla\log\pi_k` with responsibilities
        :math:`r_k(z) = \pi_k q_k(z)/q(z)`. It is unbiased under Pyro's ELBOs (which call
        :meth:`score_parts`); a bare ``rsample()`` then gives no gradient for the weights.
        ``"implicit"`` is the default because it is correct for any loss and, measured on the
        issue's protocol (``benchmarks/mixture.py``), fits a two-component guide to KL < 0.01
        in 5 of 5 seeds, as ``"score"`` does, in about as many steps.
        For components far apart (the guide with hardly any mass between them) use
        ``"score"``: the implicit weight gradient is made of draws in that gap and, though
        unbiased, is then heavy-tailed (README, "Mixtures"). The score term multiplies
        :math:`f`, so a baseline (a constant near the ELBO subtracted in the model) helps.
    """

    has_rsample = True

    def __init__(
        self,
        mixture_distribution,
        component_distribution,
        validate_args=None,
        *,
        weights="implicit",
    ):
        if weights not in _WEIGHT_ESTIMATORS:
            raise ValueError(
                f"MixtureSameFamily: `weights` must be one of {_WEIGHT_ESTIMATORS}, got {weights!r}"
            )
        _univariate_base(component_distribution)  # TypeError for unsupported components
        self.weights = weights
        super().__init__(mixture_distribution, component_distribution, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MixtureSameFamily, _instance)
        new.weights = self.weights
        return super().expand(batch_shape, _instance=new)

    @constraints.dependent_property
    def support(self):
        """The host's support, except for components whose supports depend on their parameters
        (truncations): the hull of their supports, where the host's would demand a value
        inside every component's."""
        base, multivariate = _univariate_base(self.component_distribution)
        lower, upper = base_cdf.support_bounds(base)
        if not any(isinstance(b, torch.Tensor) and b.dim() > 0 for b in (lower, upper)):
            return super().support
        axis = -2 if multivariate else -1  # the components' axis

        def hull(bound, reduce):
            bound = torch.as_tensor(bound).expand(base.batch_shape)
            return reduce(bound, axis)

        # a missing bound (support_bounds' float infinity) stays missing: a one-sided support
        if _missing(upper):
            support = constraints.greater_than_eq(hull(lower, torch.amin))
        elif _missing(lower):
            support = constraints.less_than(hull(upper, torch.amax))
        else:
            support = constraints.interval(hull(lower, torch.amin), hull(upper, torch.amax))
        return constraints.independent(support, 1) if multivariate else support

    def log_prob(self, value):
        # Truncated components with different supports: a value may lie outside some of them,
        # where their density is 0, not an error (the value is checked against the hull above).
        component = self.component_distribution
        layers = [component, getattr(component, "base_dist", component)]
        saved = [layer._validate_args for layer in layers]
        try:
            for layer in layers:
                layer._validate_args = False
            return super().log_prob(value)
        finally:
            for layer, flag in zip(layers, saved, strict=True):
                layer._validate_args = flag

    def rsample(self, sample_shape=_NO_SHAPE):
        return self._reparameterize(self.sample(sample_shape))

    def sample(self, sample_shape=_NO_SHAPE):
        with torch.no_grad():
            draw = _sample_selected(self, sample_shape)
        return super().sample(sample_shape) if draw is None else draw

    def _reparameterize(self, z):
        """``z`` (any point of the support) with the implicit gradient of the sequential
        transform attached: the derivative of :math:`S^{-1}(u)` at fixed :math:`u = S(z)`."""
        base, multivariate = _univariate_base(self.component_distribution)
        logits = self.mixture_distribution.logits
        if self.weights == "score":
            logits = logits.detach()

        def vjp(z, params, grad_z, needs):
            return _sequential_vjp(base, multivariate, z, params, grad_z, needs)

        return implicit_reparameterize(z, (logits, *base_cdf.parameters(base)), vjp=vjp)

    def score_parts(self, value):
        log_prob = self.log_prob(value)
        if self.weights == "implicit":
            return ScoreParts(log_prob=log_prob, score_function=0, entropy_term=log_prob)
        log_pi = torch.log_softmax(self.mixture_distribution.logits, dim=-1)  # [B, K]
        with torch.no_grad():
            pad = value.unsqueeze(-1 - len(self.event_shape))
            log_joint = log_pi + self.component_distribution.log_prob(pad)  # [S, B, K]
            responsibilities = torch.softmax(log_joint, dim=-1)
        score = (responsibilities * log_pi).sum(-1)  # [S, B]
        return ScoreParts(log_prob=log_prob, score_function=score, entropy_term=log_prob)


def _missing(bound):
    return isinstance(bound, float) and math.isinf(bound)


def _univariate_base(component):
    """``(univariate distribution, multivariate?)`` for a supported component distribution."""
    multivariate = False
    if len(component.event_shape) == 1:
        if not (isinstance(component, Independent) and component.reinterpreted_batch_ndims == 1):
            raise TypeError(
                "MixtureSameFamily: a multivariate `component_distribution` must be "
                f"Independent(univariate, 1) (factorized), got {type(component).__name__}"
            )
        component, multivariate = component.base_dist, True
    if len(component.event_shape) != 0:
        raise TypeError(
            "MixtureSameFamily: `component_distribution` must be univariate or "
            f"Independent(univariate, 1), got event shape {tuple(component.event_shape)}"
        )
    base_cdf.check_base(component, "MixtureSameFamily")
    return component, multivariate


def _sample_selected(mixture, sample_shape):
    """A draw of the drawn component only: its parameters gathered at the drawn indices, then
    one draw of the base rebuilt at them (the host draws all :math:`K` components and keeps
    one). ``None`` where the base cannot be rebuilt so."""
    base, multivariate = _univariate_base(mixture.component_distribution)
    params = base_cdf.parameters(base)
    if not all(isinstance(p, torch.Tensor) for p in params):
        return None
    index = mixture.mixture_distribution.sample(sample_shape)  # [S, B]
    axis = -2 if multivariate else -1  # the components' axis
    shape = index.shape + base.batch_shape[axis:]  # [S, B, K(, D)]
    if multivariate:
        index = index[..., None, None].expand(*shape[:-2], 1, shape[-1])  # [S, B, 1, D]
    else:
        index = index.unsqueeze(-1)  # [S, B, 1]
    try:
        selected = [p.expand(shape).gather(axis, index).squeeze(axis) for p in params]
        return base_cdf.rebuild(base, selected).sample()  # [S, B(, D)]
    except (TypeError, ValueError, RuntimeError):
        return None


def _per_dim(z, params, multivariate):
    """``z`` as ``[..., 1, D]`` and the component parameters as ``[..., K, D]`` (``D = 1`` if
    univariate)."""
    if multivariate:
        return z.unsqueeze(-2), params
    return z[..., None, None], [p.unsqueeze(-1) for p in params]


def _sequential_vjp(base, multivariate, z, params, grad_z, needs):
    r"""The gradients of :math:`\bar z \cdot z` in ``(logits, *component parameters)`` (``None``
    where not ``needs``), by the backward recursion of the module docstring."""
    create_graph = torch.is_grad_enabled()  # true inside a double-backward pass
    # Without a graph to keep, the temporaries of [..., K, D] are reused in place: allocating
    # them anew is a large part of the time on CPU.
    inplace = not create_graph
    # For location-scale components the partials in (loc, scale) have a closed form in the
    # terms at hand; other families differentiate their CDF and density by autograd.
    closed_form = base_cdf.is_location_scale(base)
    # Aliases, not the saved tensors themselves: autograd.grad then differentiates at fixed z,
    # while create_graph keeps the result differentiable in both z and the parameters.
    if create_graph:
        params = [p.view_as(p) if need else p for p, need in zip(params, needs, strict=True)]
    else:
        z = z.detach()
        params = [
            p.detach().requires_grad_(need and not closed_form)
            for p, need in zip(params, needs, strict=True)
        ]
    logits, *component = params
    with torch.set_grad_enabled(create_graph or not closed_form):
        x, per_dim = _per_dim(z, component, multivariate)  # [..., 1, D], each [..., K, D]
        rebuilt = base_cdf.rebuild(base, per_dim)
        num_dims = x.shape[-1]
        log_q, cdf, sf, b = base_cdf.terms(
            rebuilt, x, score=num_dims > 1, create_graph=create_graph
        )  # each [..., K, D]; b is not used if D = 1
    with torch.set_grad_enabled(create_graph):
        weights, inv_c = _weights(logits, log_q, inplace)  # [..., K, D+1], [..., D]
        w, w_next = weights[..., :-1], weights[..., 1:]  # w_kd and w_k,d+1
        lower = (w * cdf).sum(-2, keepdim=True)  # [..., 1, D]
        upper = (w * sf).sum(-2, keepdim=True)
        # F_k - S_d from whichever tail is small, so that the difference does not cancel; lerp
        # with weights 0 and 1 selects exactly, and faster than torch.where
        large = (lower > 0.5).to(w.dtype)
        if inplace and closed_form:
            # No autograd needs the terms any more: their memory is reused (fresh memory costs
            # page faults on CPU), and a_kd / c_d is formed in place (the recursion then runs
            # on r_d = c_d ybar_d).
            del log_q
            a = cdf.sub_(lower).lerp_(sf.neg_().add_(upper), large).mul_(w)
            a = a.mul_(inv_c.unsqueeze(-2))  # [..., K, D]
            del cdf, sf
        else:
            a = torch.lerp(cdf - lower, upper - sf, large) * w * inv_c.unsqueeze(-2)
        neg_grad_z = -(grad_z if multivariate else grad_z.unsqueeze(-1))  # [..., D]
        if num_dims == 1:
            r, g_excl, g_total = neg_grad_z, None, a.squeeze(-1) * neg_grad_z  # [..., K]
        else:
            # d leading and contiguous, so that each step of the recursion reads contiguous
            # [..., K] slices; b_d is not used at the last step (where G = 0)
            a = a.movedim(-1, 0).contiguous()  # [D, ..., K]
            b = b[..., :-1].movedim(-1, 0).contiguous()  # [D-1, ..., K]
            # Where log q_k = -inf (outside its support) the later weights of k vanish and G_k
            # is exactly 0, so b there, the NaN or inf of differentiating log 0, may be 0.
            b = (b.nan_to_num_ if inplace else b.nan_to_num)(nan=0.0, posinf=0.0, neginf=0.0)
            r, g_excl, g_total = _recursion(a, b, neg_grad_z, inplace)  # g_excl [D, ..., K]
            del a
    wanted = [p for p, need in zip(per_dim, needs[1:], strict=True) if need]
    if not wanted:
        partials = iter(())
    elif closed_form:
        with torch.set_grad_enabled(create_graph):
            partials = _location_scale_vjp(x, *per_dim, needs[1:], r, w_next, b, g_excl, inplace)
        partials = iter([g for g in partials if g is not None])
    else:
        with torch.set_grad_enabled(create_graph):
            # the cotangent of F at fixed weights
            outputs, grad_outputs = [cdf], [w * (inv_c * r).unsqueeze(-2)]
        if g_excl is not None:
            outputs.append(log_q)
            grad_outputs.append(g_excl.movedim(0, -1))
        with torch.enable_grad():
            partials = iter(
                torch.autograd.grad(
                    outputs, wanted, grad_outputs, create_graph=create_graph, allow_unused=True
                )
            )
    grads = [g_total if needs[0] else None]
    for p, q, need in zip(component, per_dim, needs[1:], strict=True):
        g = next(partials) if need else None
        # summed over the draws, and back from the per-dimension layout of univariate components
        grads.append(None if g is None else g.sum_to_size(q.shape).reshape(p.shape))
    return grads


def _location_scale_vjp(x, loc, scale, needs, r, w_next, b, g_excl, inplace):
    r"""The gradients of ``loc`` and ``scale`` (``[..., K, D]``, to be summed) for a
    location-scale family: with :math:`x = (z - loc)/scale`, :math:`\partial F/\partial loc = -q`,
    :math:`\partial F/\partial scale = -x q`, :math:`\partial \log q/\partial loc = -b` and
    :math:`\partial \log q/\partial scale = -x b - 1/scale`; the cotangent of :math:`F_k(z_d)`
    times :math:`q_k(z_d)` is :math:`w_{kd} \bar y_d q_k(z_d) = w_{k,d+1} r_d`. ``b`` and
    ``g_excl`` (:math:`G` before each step) have d leading, as the recursion leaves them."""
    h = w_next * r.unsqueeze(-2)  # [..., K, D]
    g_loc = g_scale = None
    if needs[0]:
        g_loc = -h.sum_to_size(loc.shape)
    if needs[1]:
        # (loc - x) h / scale, summed before the division by the parameter-shaped scale
        g_scale = (torch.sub(loc, x).mul_(h) if inplace else (loc - x) * h).sum_to_size(scale.shape)
    if g_excl is not None:
        # The terms in G_k b_kd (d < D-1; G = 0 at the last step) are summed with d leading, the
        # layout of G, and then turned back: [..., K, D-1] plus a column of zeros.
        gb = b.mul_(g_excl[:-1]) if inplace else g_excl[:-1] * b  # [D-1, ..., K]

        def leading(p):  # [..., K, D] as [D-1, 1 per dimension of the draws, ..., K]
            # small; contiguous, so that the results of [D-1, ..., K] are too (for speed)
            p = p.movedim(-1, 0)[:-1].contiguous()
            return p[(slice(None),) + (None,) * (gb.dim() - p.dim())]

        def summed(t):
            return nnf.pad(t.sum_to_size(leading(loc).shape).movedim(0, -1), (0, 1))

        if needs[0]:
            g_loc = g_loc - summed(gb).sum_to_size(loc.shape)
        if needs[1]:
            dx = leading(loc) - x.movedim(-1, 0)[:-1].contiguous()  # [D-1, ..., K]
            dx = dx.mul_(gb).sub_(g_excl[:-1]) if inplace else dx * gb - g_excl[:-1]
            g_scale = g_scale + summed(dx).sum_to_size(scale.shape)
    return g_loc, None if g_scale is None else g_scale / scale


def _weights(logits, log_q, inplace):
    r""":math:`w_{kd}` for :math:`d = 0, \dots, D` ``[..., K, D+1]`` and :math:`1/c_d`
    ``[..., D]``, with :math:`c_d = \sum_k w_{kd} q_k(z_d)`."""
    log_pi = torch.log_softmax(logits, dim=-1).unsqueeze(-1)  # [..., K, 1]
    # log pi_k + sum_{j<d} log q_k(z_j), the cumsum padded (not a difference of cumsums, which
    # cancels for far components), minus its maximum over k: a softmax that keeps its normalizer
    if inplace:
        joint = log_q.new_empty(*log_q.shape[:-1], log_q.shape[-1] + 1)  # [..., K, D+1]
        joint[..., 0] = 0
        torch.cumsum(log_q, dim=-1, out=joint[..., 1:])
        joint = joint.add_(log_pi)
    else:
        joint = log_pi + nnf.pad(torch.cumsum(log_q, dim=-1), (1, 0))
    top = joint.detach().amax(-2, keepdim=True)  # [..., 1, D+1]
    e = _exp_flushed(joint.sub_(top) if inplace else joint - top, inplace)
    total = e.sum(-2, keepdim=True)
    norm = top + torch.log(total)  # log sum_k pi_k prod_{j<d} q_k(z_j), [..., 1, D+1]
    # c_d = exp(norm_{d+1} - norm_d)
    inv_c = torch.exp(norm[..., :-1] - norm[..., 1:]).squeeze(-2)
    return (e.div_(total) if inplace else e / total), inv_c


def _exp_flushed(x, inplace):
    """``exp(x)`` for ``x <= 0``, with results below twice :math:`e` times the smallest normal
    number flushed to 0 (an error below the dtype's resolution, next to weights summing to 1):
    exp is an order of magnitude slower where it underflows, and near there."""
    cut = math.log(torch.finfo(x.dtype).tiny) + 1
    if inplace:
        return nnf.threshold_(x.clamp_(min=cut).exp_(), 2 * math.exp(cut), 0.0)
    return nnf.threshold(torch.exp(x.clamp(min=cut)), 2 * math.exp(cut), 0.0)


def _recursion(a, b, r, inplace):
    r"""The backward recursion over :math:`d = D-1, \dots, 0`, on :math:`r_d = c_d \bar y_d`:
    :math:`r_d = -\bar z_d - \sum_k b_{kd} G_k`, then :math:`G_k \mathrel{+}= (a_{kd}/c_d)\,
    r_d`, from ``a`` :math:`= a/c` ``[D, ..., K]`` and ``b`` ``[D-1, ..., K]`` (d leading) and
    ``r`` :math:`= -\bar z` ``[..., D]``. Returns :math:`r` ``[..., D]``, :math:`G` before each
    step ``[D, ..., K]`` and the final :math:`G` ``[..., K]``."""
    num_dims = a.shape[0]
    r = r.movedim(-1, 0).contiguous()  # [D, ...]
    if inplace:  # g[d + 1] is G before step d, g[0] the final G
        g = a.new_zeros(num_dims + 1, *a.shape[1:])  # [D+1, ..., K]
        torch.mul(a[-1], r[-1].unsqueeze(-1), out=g[-2])
        for d in reversed(range(num_dims - 1)):
            r[d] -= torch.linalg.vecdot(b[d], g[d + 1])
            torch.addcmul(g[d + 1], a[d], r[d].unsqueeze(-1), out=g[d])
        g_excl, g_total = g[1:], g[0]
    else:  # differentiable, for second derivatives
        running = a[-1] * r[-1].unsqueeze(-1)
        rs, gs = [r[-1]], [torch.zeros_like(running)]
        for d in reversed(range(num_dims - 1)):
            r_d = r[d] - (b[d] * running).sum(-1)
            rs.append(r_d)
            gs.append(running)
            running = running + a[d] * r_d.unsqueeze(-1)
        r, g_excl, g_total = torch.stack(rs[::-1]), torch.stack(gs[::-1]), running
    return r.movedim(0, -1).contiguous(), g_excl, g_total
