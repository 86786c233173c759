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

import copy
import math
import threading

import torch
import torch.nn.functional as nnf
from pyro.distributions import MixtureSameFamily as _PyroMixtureSameFamily
from pyro.distributions.score_parts import ScoreParts
from torch.distributions import Categorical, Distribution, Independent, constraints

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
        _check_arguments(mixture_distribution, component_distribution)
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
        if self._validate_args:
            self._validate_sample(value)
        return torch.logsumexp(self._component_log_probs(value), dim=-1)

    def _component_log_probs(self, value):
        r""":math:`\log \pi_k + \log q_k(z)` ``[S..., B..., K]``, as the host's ``log_prob`` forms
        them, except that the densities come from :func:`base_cdf.log_prob` (derivatives 0, not
        NaN, where a component's host density overflows, such as a Gumbel's far in its left
        tail: the mixture multiplies them by that component's weight, 0). Truncated components
        with different supports: a value may lie outside some of them, where their density is
        0, not an error (the value is checked against the hull above): components that do not
        validate."""
        base, multivariate = _univariate_base(_unvalidated(self.component_distribution))
        log_q = base_cdf.log_prob(base, self._pad(value))
        if multivariate:
            log_q = log_q.sum(-1)
        return torch.log_softmax(self.mixture_distribution.logits, dim=-1) + log_q

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
            responsibilities = torch.softmax(self._component_log_probs(value), dim=-1)
        score = (responsibilities * log_pi).sum(-1)  # [S, B]
        return ScoreParts(log_prob=log_prob, score_function=score, entropy_term=log_prob)


def _check_arguments(mixture, component):
    """The host's checks of the arguments, made first and each a ``ValueError`` naming the
    argument (a component without batch dimensions would fail in the host with an
    ``IndexError``)."""
    if not isinstance(mixture, Categorical):
        raise ValueError(
            "MixtureSameFamily: `mixture_distribution` must be a Categorical, got "
            f"{type(mixture).__name__}"
        )
    if not isinstance(component, Distribution):
        raise ValueError(
            "MixtureSameFamily: `component_distribution` must be a torch Distribution, got "
            f"{type(component).__name__}"
        )
    size = mixture.logits.shape[-1]
    if len(component.batch_shape) == 0 or component.batch_shape[-1] != size:
        raise ValueError(
            "MixtureSameFamily: the last batch dimension of `component_distribution` must be "
            f"the number of components ({size}), got batch shape {tuple(component.batch_shape)}"
        )


def _missing(bound):
    return isinstance(bound, float) and math.isinf(bound)


def _unvalidated(dist):
    """A shallow copy of ``dist`` (and of the distribution an ``Independent`` wraps) that does
    not validate its arguments."""
    dist = copy.copy(dist)
    dist._validate_args = False
    if isinstance(dist, Independent):
        dist.base_dist = _unvalidated(dist.base_dist)
    return dist


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
    index = mixture.mixture_distribution.sample(sample_shape)  # [S..., B...]
    shape = base.batch_shape  # [B..., K(, D)]
    event = shape[-1:] if multivariate else _NO_SHAPE
    *batch, num_components = shape[: len(shape) - len(event)]
    # rows of the parameters flattened to [B... K, (D)]: index_select is an order of magnitude
    # faster than gather from the parameters expanded to the draws
    offsets = torch.arange(math.prod(batch), device=index.device).reshape(batch)
    rows = (index + offsets * num_components).reshape(-1)
    try:
        selected = [
            p.expand(shape).reshape(-1, *event).index_select(0, rows).reshape(index.shape + event)
            for p in params
        ]
        drawn = base_cdf.rebuild(base, selected)
        # the same law; a Normal's rsample (loc + scale eps) is faster than its sample
        return (drawn.rsample if drawn.has_rsample else drawn.sample)()  # [S..., B...(, D)]
    except (TypeError, ValueError, RuntimeError):
        return None


def _d_major(p, shape, num_sample):
    r"""``p`` (broadcastable to ``shape`` ``[B..., K, D]``) as ``[D, K, 1 per sample dimension...,
    B...]``: the layout of the backward pass, in which each step over :math:`d` reads contiguous
    ``[K, S..., B...]`` slices and sums over :math:`k` run along an outer axis."""
    p = p.expand(shape).movedim(-1, 0).movedim(-1, 1)  # [D, K, B...]
    return p[(slice(None), slice(None)) + (None,) * num_sample]


def _from_d_major(g, num_sample):
    """``[D, K, S..., B...]`` summed over the draws, as ``[B..., K, D]``."""
    if num_sample:
        g = g.sum(tuple(range(2, 2 + num_sample)))
    return g.movedim(1, -1).movedim(0, -1)


def _sequential_vjp(base, multivariate, z, params, grad_z, needs):
    r"""The gradients of :math:`\bar z \cdot z` in ``(logits, *component parameters)`` (``None``
    where not ``needs``), by the backward recursion of the module docstring."""
    create_graph = torch.is_grad_enabled()  # true inside a double-backward pass
    # For location-scale components the partials in (loc, scale) have a closed form in the
    # terms at hand; other families differentiate their CDF and density by autograd.
    closed_form = base_cdf.is_location_scale(base)
    track = create_graph or not closed_form  # whether the component terms need a graph
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
    shape = base.batch_shape  # [B..., K, D]; a univariate mixture is the case D = 1
    if not multivariate:
        shape, z, grad_z = shape + (1,), z.unsqueeze(-1), grad_z.unsqueeze(-1)
    num_sample = z.dim() + 1 - len(shape)  # z is [S..., B..., D]
    num_dims, draws = shape[-1], z.shape[:-1]
    rows = (num_dims + 1, shape[-2], *draws)  # [D+1, K, S..., B...]
    # Without a graph, the temporaries live in one workspace, written in place: for
    # location-scale components, the running log-weights [D+1, K, ...] (log q in rows 1:) and
    # three [D, K, ...] blocks, each reused, and a few [D, 1, ...] rows. What autograd saves
    # (for the terms of other families) stays out of it: views of one buffer share one version
    # counter, which every write moves on.
    size = (4 * num_dims + 1) * math.prod(rows[1:]) + 10 * (num_dims + 1) * math.prod(draws)
    arena = None if create_graph else _Arena(z, size)
    untracked = None if track else arena
    with torch.set_grad_enabled(track):
        per_dim = [
            _d_major(p if multivariate else p.expand(shape[:-1]).unsqueeze(-1), shape, num_sample)
            for p in component
        ]  # each [D, K, 1..., B...]
        components = base_cdf.rebuild(base, per_dim)
        # contiguous, so that the results of [D, K, ...] are (elementwise ops follow the
        # memory order of their inputs)
        x = z.movedim(-1, 0).unsqueeze(1)  # [D, 1, S..., B...]
        x = x.contiguous() if untracked is None else untracked.take(x.shape).copy_(x)
        joint = blocks = None
        if untracked is not None:
            joint = arena.take(rows)
            blocks = [arena.take((num_dims, *rows[1:])) for _ in range(3)]
        log_q, b = base_cdf.terms(
            components,
            x,
            score=num_dims > 1,
            create_graph=create_graph,
            out=blocks and (joint[1:], blocks[1]),
        )  # each [D, K, S..., B...]; b is None if D = 1
    with torch.set_grad_enabled(create_graph):
        log_pi = torch.log_softmax(logits.expand(shape[:-1]), -1).unsqueeze(-1)
        log_pi = _d_major(log_pi, shape[:-1] + (1,), num_sample)  # [1, K, 1..., B...]
        if arena is not None and joint is None:  # log q is kept for autograd: the sums beside it
            joint = arena.take(rows)
            joint[1:] = log_q
        # w_kd = e_kd / total_d: the division is folded into the factors [D+1, 1, ...]
        e, inv_total, inv_c = _weights(log_pi, log_q, joint, arena)
        e_now, e_next, inv_total_now = e[:-1], e[1:], inv_total[:-1]  # for w_kd and w_k,d+1
    with torch.set_grad_enabled(track):
        # F_k(z_d), or F_k(z_d) - 1 where S_d is to be measured from above; see _upper
        tail = base_cdf.signed_tail(
            components,
            x,
            lambda above: _upper(above, e_now, inv_total_now, untracked),
            out=blocks and blocks[0],
        )
    with torch.set_grad_enabled(create_graph):
        # a_kd / c_d = w_kd (F_k - S_d) / c_d; tail's memory is free for it
        if blocks is None:
            scale = inv_c * inv_total_now
            et = e_now * tail
            a = (et - e_now * (et.sum(1, keepdim=True) * inv_total_now)) * scale
        else:
            scale = inv_c.mul_(inv_total_now)  # [D, 1, ...]
            et = tail.mul_(e_now)
            mean = torch.sum(et, 1, keepdim=True, out=arena.take(scale.shape))
            a = et.addcmul_(e_now, mean.mul_(inv_total_now), value=-1).mul_(scale)
        # the recursion runs on r_d = c_d ybar_d, from r = -zbar
        r = grad_z.movedim(-1, 0)  # [D, S..., B...]
        r = torch.neg(r).contiguous() if arena is None else torch.neg(r, out=arena.take(r.shape))
        if num_dims == 1:
            g_excl, g_total = None, a[0] * r[0]  # [K, S..., B...]
        else:
            # b is 0 where log q_k = -inf (outside its support, see base_cdf.terms): the later
            # weights of k vanish there and G_k is exactly 0
            g_excl = None  # G before each step, [D, K, ...]
            if arena is not None:
                g_excl = arena.take(a.shape) if blocks is None else blocks[2]
            r, g_excl, g_total = _recursion(a, b, r, g_excl)
    grads = [_from_d_major(g_total.unsqueeze(0), num_sample).squeeze(-1) if needs[0] else None]
    wanted = [p for p, need in zip(per_dim, needs[1:], strict=True) if need]
    if not wanted:
        partials = iter(())
    elif closed_form:
        with torch.set_grad_enabled(create_graph):
            # w_k,d+1 r_d = e_k,d+1 r_next_d; a and the memory of the score are free now
            if arena is None:
                r_next = inv_total[1:] * r.unsqueeze(1)
            else:
                r_next = arena.take(inv_total[1:].shape)
                r_next = torch.mul(inv_total[1:], r.unsqueeze(1), out=r_next)
            spare = blocks and (a, blocks[1])
            partials = _location_scale_vjp(
                x, *per_dim, needs[1:], r_next, e_next, b, g_excl, num_sample, spare
            )
        partials = iter([g for g in partials if g is not None])
    else:
        # the cotangents of F_k(z_d) at fixed weights, and of log q_k(z_d)
        with torch.set_grad_enabled(create_graph):
            outputs, grad_outputs = [tail], [e_now * (scale * r.unsqueeze(1))]
        if g_excl is not None:
            outputs.append(log_q)
            grad_outputs.append(g_excl)
        with torch.enable_grad():
            partials = iter(
                torch.autograd.grad(
                    outputs, wanted, grad_outputs, create_graph=create_graph, allow_unused=True
                )
            )
    for need in needs[1:]:
        g = next(partials) if need else None
        if g is not None:
            g = _from_d_major(g, num_sample)  # [B..., K, D]
            g = g if multivariate else g.squeeze(-1)
        grads.append(g)
    return grads


def _upper(above, e, inv_total, arena=None):
    r"""Whether :math:`S_d` is to be measured from the upper end, a 0/1 mask ``[D, 1, ...]``,
    from the mask of :math:`F_k(z_d) > 1/2` ``[D, K, ...]`` (overwritten) and the weights
    :math:`w_{kd} = e_{kd} / \mathrm{total}_d`: where the weight of the components whose
    medians lie below :math:`z_d` exceeds 1/2. Right at either end: :math:`S_d > 1 - \delta`
    leaves at most :math:`2\delta` of weight to the others (and symmetrically), so the
    differences :math:`F_k - S_d` taken from the end that :math:`S_d` is near do not cancel;
    in between, either end is accurate."""
    vote = torch.sum(above.mul_(e), 1, keepdim=True, out=arena and arena.take(inv_total.shape))
    return vote.mul_(inv_total).gt_(0.5)


def _location_scale_vjp(x, loc, scale, needs, r_next, e_next, b, g_excl, num_sample, spare):
    r"""The gradients of ``loc`` and ``scale`` ``[D, K, 1..., B...]`` (summed over the draws)
    for a location-scale family, from the value ``x`` ``[D, 1, S..., B...]``: with
    :math:`\xi = (x - loc)/scale`, :math:`\partial F/\partial loc = -q`,
    :math:`\partial F/\partial scale = -\xi q`, :math:`\partial \log q/\partial loc = -b` and
    :math:`\partial \log q/\partial scale = -\xi b - 1/scale`. The cotangent of
    :math:`F_k(z_d)` times :math:`q_k(z_d)` is :math:`w_{kd} \bar y_d q_k(z_d) = w_{k,d+1} r_d`
    (``e_next * r_next``) and that of :math:`\log q_k(z_d)` is :math:`G_k` before step
    :math:`d` (0 at the last), so both partials are sums of
    :math:`h = w_{k,d+1} r_d + G_k b_{kd}`. ``spare``: ``None`` or two free tensors of that
    shape, for an in-place computation (no graph) that may overwrite ``b``."""
    draws = tuple(range(2, 2 + num_sample))

    def total(t):  # a new tensor, never a view of the workspace
        return t.sum(draws, keepdim=True) if draws else t.clone()

    if spare is None:
        h = e_next * r_next  # [D, K, S..., B...]
        if g_excl is not None:
            h = torch.cat([h[:-1] + b[:-1] * g_excl[:-1], h[-1:]])
        h_diff = (x - loc) * h if needs[1] else None
    else:
        h = torch.mul(e_next, r_next, out=spare[0])
        if g_excl is not None:
            h[:-1].addcmul_(b[:-1], g_excl[:-1])
        h_diff = torch.sub(x, loc, out=spare[1]).mul_(h) if needs[1] else None
    g_scale = None
    if needs[1]:  # -(sum of (x - loc) h + G) / scale
        g_scale = total(h_diff) if g_excl is None else total(h_diff) + total(g_excl)
        g_scale = -g_scale / scale
    return -total(h) if needs[0] else None, g_scale


class _Arena:
    """Tensors carved in turn from one buffer: the temporaries of a backward pass without a
    graph. On CPU a buffer of up to ``KEEP_BYTES`` is kept per thread and dtype for the next
    call, and grown as needed: fresh memory costs page faults there (about 2 us per 4 KB page,
    as much as the arithmetic on it), and glibc's malloc hands large blocks back to the system
    after some calls and not others (measured here: none or 750 faults per call, by process)."""

    KEEP_BYTES = 1 << 28
    _kept = threading.local()

    def __init__(self, like, size):
        kept = self._kept.__dict__.setdefault("buffers", {})
        buffer = kept.get(like.dtype)
        if like.device.type != "cpu" or size * like.element_size() > self.KEEP_BYTES:
            buffer = like.new_empty(size)  # a caching allocator reuses the memory on GPUs
        elif buffer is None or buffer.numel() < size:
            buffer = kept[like.dtype] = like.new_empty(size)
        self._buffer, self._used = buffer, 0

    def take(self, shape):
        """An uninitialized contiguous tensor of ``shape``: the next part of the buffer, or new
        memory beyond its end."""
        size = math.prod(shape)
        if self._used + size > self._buffer.numel():
            return self._buffer.new_empty(shape)
        self._used += size
        return self._buffer[self._used - size : self._used].view(shape)


_LOG2E = 1 / math.log(2)


def _weights(log_pi, log_q, joint=None, arena=None):
    r"""The weights :math:`w_{kd}` for :math:`d = 0, \dots, D` as :math:`e_{kd}` ``[D+1, K, ...]``
    and :math:`1/\sum_k e_{kd}` ``[D+1, 1, ...]``, and :math:`1/c_d` ``[D, 1, ...]`` with
    :math:`c_d = \sum_k w_{kd} q_k(z_d)`, from :math:`\log \pi` ``[1, K, ...]`` and
    :math:`\log q` ``[D, K, ...]``. With ``joint``, a buffer ``[D+1, K, ...]`` holding
    :math:`\log q` in its rows ``1:``, and an arena for the rest: in place (no graph)."""
    # log pi_k + sum_{j<d} log q_k(z_j), a running sum (not a difference of sums, which cancels
    # for far components), minus its maximum over k: a softmax that keeps its normalizer.
    # exp(t) is taken as exp2(t log2 e): on CPU torch.exp is not vectorized and exp2 is.
    if joint is None:
        joint = torch.cat([log_pi.expand_as(log_q[:1]), log_q]).cumsum(0)
        top = joint.detach().amax(1, keepdim=True) * _LOG2E  # [D+1, 1, ...]
        e = _flush(torch.exp2(joint * _LOG2E - top), inplace=False)
        total = e.sum(1, keepdim=True)
        # c_d = exp(top_{d+1} - top_d) total_{d+1} / total_d
        return e, 1 / total, torch.exp2(top[:-1] - top[1:]) * total[:-1] / total[1:]
    joint[0] = log_pi[0]
    rows = joint.unbind(0)  # a loop of slices: torch.cumsum along dim 0 is several times slower
    for previous, row in zip(rows[:-1], rows[1:], strict=True):
        row += previous
    shape = (joint.shape[0], 1, *joint.shape[2:])
    low = torch.amax(joint, 1, keepdim=True, out=arena.take(shape)).mul_(-_LOG2E)  # -top log2 e
    e = _flush(torch.add(low, joint, alpha=_LOG2E, out=joint).exp2_(), inplace=True)
    total = torch.sum(e, 1, keepdim=True, out=arena.take(shape))
    inv_total = torch.reciprocal(total, out=arena.take(shape))
    # c_d = exp(top_{d+1} - top_d) total_{d+1} / total_d, without log and exp (not vectorized)
    inv_c = torch.sub(low[1:], low[:-1], out=arena.take(low[1:].shape)).exp2_()
    return e, inv_total, inv_c.mul_(total[:-1]).mul_(inv_total[1:])


def _flush(e, inplace):
    """``e`` with values below twice :math:`e` times the smallest normal number set to 0 (an
    error below the dtype's resolution, next to weights summing to 1): subnormal operands slow
    down the arithmetic that follows on many CPUs."""
    cut = 2 * math.e * torch.finfo(e.dtype).tiny
    return (nnf.threshold_ if inplace else nnf.threshold)(e, cut, 0.0)


def _recursion(a, b, r, g=None):
    r"""The backward recursion over :math:`d = D-1, \dots, 0`, on :math:`r_d = c_d \bar y_d`:
    :math:`r_d = -\bar z_d - \sum_k b_{kd} G_k`, then :math:`G_k \mathrel{+}= (a_{kd}/c_d)\,
    r_d`, from ``a`` :math:`= a/c` and ``b`` ``[D, K, ...]`` and ``r`` :math:`= -\bar z`
    ``[D, ...]``. Returns :math:`r`, :math:`G` before each step ``[D, K, ...]`` and the final
    :math:`G` ``[K, ...]``. With ``g``, a buffer of the shape of ``a``, in place (no graph)."""
    num_dims = a.shape[0]
    if g is not None:
        g[-1].zero_()
        # the rows as views made once: indexing in the loop costs as much as the arithmetic
        a_, b_, r_, g_ = (t.unbind(0) for t in (a, b, r, g))
        for d in reversed(range(num_dims - 1)):
            torch.addcmul(g_[d + 1], a_[d + 1], r_[d + 1], out=g_[d])
            r_[d].sub_(torch.linalg.vecdot(b_[d], g_[d], dim=0))
        return r, g, torch.addcmul(g[0], a[0], r[0])
    # differentiable, for second derivatives
    running = torch.zeros_like(a[-1])
    rs, gs = [r[-1]], [running]
    for d in reversed(range(num_dims - 1)):
        running = running + a[d + 1] * rs[-1]
        rs.append(r[d] - (b[d] * running).sum(0))
        gs.append(running)
    return torch.stack(rs[::-1]), torch.stack(gs[::-1]), running + a[0] * rs[-1]
