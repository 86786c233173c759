r"""Finite mixtures with implicit reparameterization gradients (PyTorch / Pyro).

A draw is exact (a component index, then a draw of that component); its gradient comes from
implicit differentiation of the *sequential distributional transform*

.. math::
    S_d(z) = F(z_d \mid z_{<d}) = \sum_k w_k^{(d)} F_k(z_d), \qquad
    w_k^{(d)} \propto \pi_k \prod_{j<d} q_k(z_j),

whose Jacobian is lower triangular with diagonal :math:`c_d = \sum_k w_k^{(d)} q_k(z_d)` (the
conditional density) and, below it, a matrix of rank at most :math:`K`:

.. math::
    J_{dj} = \sum_k \underbrace{w_k^{(d)} \bigl(F_k(z_d) - S_d\bigr)}_{a_{dk}}
        \,\underbrace{\partial_{z_j} \log q_k(z_j)}_{b_{jk}}, \qquad j < d.

The transposed solve :math:`J^\top y = v` therefore runs backwards over :math:`d` with :math:`K`
running sums :math:`G_k = \sum_{d>j} a_{dk} y_d`, in :math:`O(DK)` time and memory per draw:
:math:`y_j = (v_j - \sum_k b_{jk} G_k) / c_j`. A univariate mixture is the case :math:`D = 1`,
where the gradient is :math:`-(\partial F/\partial\phi)/q(z)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from pyro.distributions import MixtureSameFamily as _PyroMixtureSameFamily
from pyro.distributions.score_parts import ScoreParts
from torch.distributions import Independent

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
        in 5 of 5 seeds, as ``"score"`` does; ``"score"`` got there sooner in 2 of the 5 seeds
        (at most 300 steps against up to 2650) for separated components.
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

    def rsample(self, sample_shape=_NO_SHAPE):
        return self._reparameterize(self.sample(sample_shape))

    def _reparameterize(self, z):
        """``z`` (any point of the support) with the implicit gradient of the sequential
        transform attached: the derivative of :math:`S^{-1}(u)` at fixed :math:`u = S(z)`."""
        base, multivariate = _univariate_base(self.component_distribution)
        component_params = base_cdf.parameters(base)
        logits = self.mixture_distribution.logits
        if self.weights == "score":
            logits = logits.detach()

        # The engine evaluates the standardization and then the solve at the same inputs: the
        # solve reuses the per-component terms (log-weights, CDFs) instead of recomputing them.
        shared = {}

        def standardize(z, logits, *params):
            terms = _component_terms(z, logits, base_cdf.rebuild(base, params), multivariate)
            shared.update(inputs=(z, logits, *params), terms=terms)
            return _sequential_cdf(terms, multivariate)

        def solve(z, logits, *params_and_v):
            *params, v = params_and_v
            inputs, terms = shared.pop("inputs", ()), shared.pop("terms", None)
            rebuilt = base_cdf.rebuild(base, params)
            if len(inputs) != len(params) + 2 or any(
                a is not b for a, b in zip(inputs, (z, logits, *params), strict=True)
            ):
                terms = _component_terms(z, logits, rebuilt, multivariate)
            return _transposed_solve(z, rebuilt, multivariate, v, terms)

        return implicit_reparameterize(z, (logits, *component_params), cdf=standardize, solve=solve)

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


def _cdf_pair(base, x):
    """``(F, 1 - F)``, each accurate where it is small."""
    log_cdf, log_sf = base_cdf.log_cdf_pair(base, x)
    return torch.exp(log_cdf), torch.exp(log_sf)


def _per_dim(z, multivariate):
    """``z`` as ``[..., 1, D]`` against components ``[..., K, D]`` (``D = 1`` if univariate)."""
    return z.unsqueeze(-2) if multivariate else z.unsqueeze(-1).unsqueeze(-1)


def _log_prob(base, x, multivariate):
    return base.log_prob(x) if multivariate else base.log_prob(x.squeeze(-1)).unsqueeze(-1)


def _scores(z, base, multivariate, create_graph):
    """``(log q_k(z_d), d/dz_d log q_k(z_d))``, each ``[..., K, D]``."""
    x = _per_dim(z, multivariate)
    num_components = base.batch_shape[-2] if multivariate else base.batch_shape[-1]
    x = x.expand(*x.shape[:-2], num_components, x.shape[-1])
    with torch.enable_grad():
        if not (create_graph and x.requires_grad):
            x = x.detach().requires_grad_()
        log_q = _log_prob(base, x, multivariate)
        # elementwise in [..., K, D], so the gradient of the sum is the per-element derivative
        (score,) = torch.autograd.grad(log_q.sum(), x, create_graph=create_graph)
        # Outside a component's support its later weights are 0, so its score is not used:
        # 0 there, not the NaN of differentiating log 0.
        score = torch.where(torch.isfinite(log_q), score, 0.0)
    return (log_q, score) if create_graph else (log_q.detach(), score)


def _component_terms(z, logits, base, multivariate, log_q=None):
    """Per component and dimension ``[..., K, D]``: log-weights :math:`\\log w_k^{(d)}`,
    log-densities, CDFs and survival functions."""
    x = _per_dim(z, multivariate)  # [..., 1, D]
    if log_q is None:
        log_q = _log_prob(base, x, multivariate)  # [..., K, D]
    if multivariate:
        cdf, sf = _cdf_pair(base, x)
    else:
        cdf, sf = (t.unsqueeze(-1) for t in _cdf_pair(base, x.squeeze(-1)))
    # log w_k^(d) = log pi_k + sum_{j<d} log q_k(z_j), normalized over k; the exclusive cumsum
    # is built by padding (not as cumsum - log_q, which cancels for far components).
    log_pi = torch.log_softmax(logits, dim=-1).unsqueeze(-1)  # [..., K, 1]
    prefix = torch.cumsum(log_q[..., :-1], dim=-1)  # [..., K, D-1]
    log_w = log_pi + nnf.pad(prefix, (1, 0))  # [..., K, D]
    log_w = log_w - torch.logsumexp(log_w, dim=-2, keepdim=True)
    return log_w, log_q, cdf, sf


def _sequential_cdf(terms, multivariate):
    """:math:`S_d = \\sum_k w_k^{(d)} F_k(z_d)`, returned as :math:`S_d - 1 = -\\sum_k w_k^{(d)}
    (1 - F_k)` where :math:`S_d > 1/2`: the same derivatives, without cancellation."""
    log_w, _, cdf, sf = terms
    w = torch.exp(log_w)
    lower = (w * cdf).sum(-2)  # [..., D]
    upper = (w * sf).sum(-2)
    s = torch.where(lower <= 0.5, lower, -upper)
    return s if multivariate else s.squeeze(-1)


def _transposed_solve(z, base, multivariate, v, terms):
    """:math:`y = J^{-\\top} v` for the Jacobian of :func:`_sequential_cdf`, in O(D K)."""
    # Under grad mode (a double backward) every step stays differentiable in z and parameters.
    _, b = _scores(z, base, multivariate, create_graph=torch.is_grad_enabled())  # [..., K, D]
    log_w, log_q, cdf, sf = terms
    w = torch.exp(log_w)  # [..., K, D]
    lower = (w * cdf).sum(-2, keepdim=True)  # [..., 1, D]
    upper = (w * sf).sum(-2, keepdim=True)
    # F_k - S_d from whichever tail is small, so that the difference does not cancel
    diff = torch.where(lower <= 0.5, cdf - lower, upper - sf)  # [..., K, D]
    a = w * diff  # [..., K, D]
    inv_c = torch.exp(-torch.logsumexp(log_w + log_q, dim=-2))  # [..., D], 1 / conditional density
    v = v if multivariate else v.unsqueeze(-1)  # [..., D]
    a, b, inv_c, v = torch.broadcast_tensors(a, b, inv_c.unsqueeze(-2), v.unsqueeze(-2))
    running = torch.zeros_like(a[..., 0])  # G_k = sum_{d > j} a_dk y_d, [..., K]
    ys = []
    for j in reversed(range(a.shape[-1])):
        y_j = (v[..., 0, j] - (b[..., j] * running).sum(-1)) * inv_c[..., 0, j]  # [...]
        running = running + a[..., j] * y_j.unsqueeze(-1)  # [..., K]
        ys.append(y_j)
    y = torch.stack(ys[::-1], dim=-1)  # [..., D]
    return y if multivariate else y.squeeze(-1)
