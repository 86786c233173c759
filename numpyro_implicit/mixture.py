r"""Finite mixtures with implicit reparameterization gradients (JAX / NumPyro).

A draw is exact (a component index, then a draw of that component only); its derivatives come
from implicit differentiation of the *sequential distributional transform*

.. math::
    S_d(z) = F(z_d \mid z_{<d}) = \sum_k w_k^{(d)} F_k(z_d), \qquad
    \log w_k^{(d)} = \log\pi_k + \sum_{j<d} \log q_k(z_j) - \text{normalizer},

whose Jacobian is lower triangular with diagonal :math:`c_d = \sum_k w_k^{(d)} q_k(z_d)` (the
conditional density) and, below it, a matrix of rank at most :math:`K`. Differentiating
:math:`S_d(z) = u_d` at fixed :math:`u` gives a forward substitution over :math:`d`,

.. math::
    \dot z_d = -\frac{1}{c_d} \sum_k \Bigl[ w_k^{(d)} \dot F_k(z_d)
        + a_{dk}\, \bigl(\dot\ell_k + t_k^{(d)}\bigr) \Bigr], \qquad
    a_{dk} = w_k^{(d)} \bigl(F_k(z_d) - S_d\bigr), \qquad
    t_k^{(d+1)} = t_k^{(d)} + \dot{\log q_k}(z_d) + \partial_z \log q_k(z_d)\, \dot z_d,

with :math:`\dot F_k, \dot{\log q_k}` the parameter tangents at fixed :math:`z`,
:math:`\dot\ell` the logits' tangent and :math:`t_k` the tangent of
:math:`\sum_{j<d}\log q_k(z_j)` with the earlier :math:`z_j` moving too (the :math:`a_{dk}`
sum to zero over :math:`k`, so the normalizer drops out). It is one :func:`jax.lax.scan` over
:math:`d` whose step does all the work of dimension :math:`d`: :math:`O(DK)` time and memory per
draw, never a :math:`D \times D` matrix. For reverse mode JAX transposes it into a scan
backwards (each step recomputing its coefficients but the conditional density, kept from the
forward pass), and differentiates it again for higher orders. A univariate mixture is the
case :math:`D = 1`, where :math:`\dot z = -\dot F/q(z)`.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax, random
from jax.ad_checkpoint import checkpoint_name
from numpyro.distributions import (
    CategoricalLogits,
    CategoricalProbs,
    Distribution,
    ExpandedDistribution,
    Independent,
    constraints,
)
from numpyro.distributions import MixtureSameFamily as _NumPyroMixtureSameFamily
from numpyro.handlers import seed
from numpyro.infer import Trace_ELBO
from numpyro.infer.util import get_importance_trace

from . import base_cdf
from ._implicit import implicit_reparameterize

__all__ = ["MixtureSameFamily", "ScoreTrace_ELBO"]

_WEIGHT_ESTIMATORS = ("implicit", "score")
# the name under which reverse mode keeps log c_d (see _tangent), apart from any user's names
_LOG_C = "numpyro_implicit.mixture.log_c"


class MixtureSameFamily(_NumPyroMixtureSameFamily):
    r"""``numpyro.distributions.MixtureSameFamily`` whose samples carry pathwise derivatives with
    respect to the mixture logits (or probs) and every component parameter, by implicit
    differentiation of the mixture CDF (univariate components) or of the sequential
    distributional transform (``Independent(univariate, 1)`` components); see the module
    docstring. Time and memory per draw are :math:`O(DK)`; forward, reverse and higher-order
    derivatives work.

    :param mixing_distribution: a ``Categorical`` over the :math:`K` components.
    :param component_distribution: a univariate distribution with a differentiable CDF, or an
        ``Independent`` of one with one reinterpreted dimension; its last batch dimension is
        :math:`K`.
    :param str weights: the gradient estimator for the mixture weights. ``"implicit"`` (the
        default): the pathwise implicit derivative, unbiased for any loss of the sample.
        ``"score"``: conditional reparameterization; the sample carries no derivative for the
        weights, whose gradient then comes from the score-function term
        :math:`f(z)\sum_k r_k(z)\nabla\log\pi_k` (responsibilities
        :math:`r_k = \pi_k q_k(z)/q(z)`) that :class:`numpyro_implicit.ScoreTrace_ELBO` adds;
        under NumPyro's own ``Trace_ELBO`` the weights would get no gradient. ``"implicit"`` is
        the default because it is correct for any loss and, measured on the issue's protocol
        (``benchmarks/mixture.py``), fits a two-component guide to KL < 0.01 in 5 of 5 seeds,
        as ``"score"`` does.
        For components far apart (the guide with hardly any mass between them) use
        ``"score"``: the implicit weight gradient is made of draws in that gap and, though
        unbiased, is then heavy-tailed (README, "Mixtures"). The score term multiplies
        :math:`f`, so a baseline (a constant near the ELBO subtracted in the model) helps.
    """

    pytree_aux_fields = ("weights",)

    def __init__(
        self,
        mixing_distribution,
        component_distribution,
        *,
        weights: str = "implicit",
        validate_args: bool | None = None,
    ):
        if weights not in _WEIGHT_ESTIMATORS:
            raise ValueError(
                f"MixtureSameFamily: `weights` must be one of {_WEIGHT_ESTIMATORS}, got {weights!r}"
            )
        _check_arguments(mixing_distribution, component_distribution)
        component_distribution = _unexpanded(component_distribution)
        _univariate_base(component_distribution)  # TypeError for unsupported components
        self.weights = weights
        if _parameter_free(component_distribution.support):
            super().__init__(
                mixing_distribution, component_distribution, validate_args=validate_args
            )
            return
        # The host accepts only supports free of parameters (its `support` would keep the
        # component axis); truncated components are welcome here, with the hull of their
        # supports as the mixture's (`support` below). Otherwise the host's own initialization.
        self._mixture_size = jnp.shape(mixing_distribution.probs)[-1]
        self._mixing_distribution = mixing_distribution
        self._component_distribution = component_distribution
        batch_shape = lax.broadcast_shapes(
            mixing_distribution.batch_shape, component_distribution.batch_shape[:-1]
        )
        Distribution.__init__(
            self, batch_shape, component_distribution.event_shape, validate_args=validate_args
        )

    @constraints.dependent_property
    def support(self):
        """The components' support if free of parameters, else the hull of their supports."""
        support = self.component_distribution.support
        if _parameter_free(support):
            return support
        base, multivariate = _univariate_base(self.component_distribution)
        lower, upper = base_cdf.support_bounds(base)
        axis = -2 if multivariate else -1  # the components' axis

        def hull(bound, reduce):
            return reduce(jnp.broadcast_to(bound, base.batch_shape), axis)

        # a missing bound (support_bounds' float infinity) stays missing: a one-sided support
        if _missing(upper):
            hull_support = constraints.greater_than(hull(lower, jnp.min))
        elif _missing(lower):
            hull_support = constraints.less_than(hull(upper, jnp.max))
        else:
            hull_support = constraints.interval(hull(lower, jnp.min), hull(upper, jnp.max))
        return constraints.independent(hull_support, 1) if multivariate else hull_support

    def component_log_probs(self, value):
        r""":math:`\log \pi_k + \log q_k(z)`, as the host's method forms them, except that the
        densities come from :func:`base_cdf.log_prob` (derivatives 0, not NaN, where a
        component's host density overflows, such as a Gumbel's far in its left tail: the
        mixture multiplies them by that component's weight, 0). Truncated components with
        different supports: a value may lie outside some of them, where their density is 0,
        not a warning (the value is checked against the hull): components that do not
        validate."""
        base, multivariate = _univariate_base(_unvalidated(self.component_distribution))
        log_q = base_cdf.log_prob(base, jnp.expand_dims(value, self.mixture_dim))
        if multivariate:
            log_q = log_q.sum(-1)
        return jax.nn.log_softmax(self.mixing_distribution.logits) + log_q

    @property
    def has_rsample(self) -> bool:
        return True

    @property
    def reparametrized_params(self):
        return []

    def sample_with_intermediates(self, key, sample_shape=()):
        z, intermediates = self._sample_selected(key, sample_shape)
        # the parameters' dtype: a float32 mixture stays float32 even with x64 enabled
        base, _ = _univariate_base(self.component_distribution)
        dtype = jnp.result_type(self.mixing_distribution.logits, *jax.tree_util.tree_leaves(base))
        return self._reparameterize(lax.stop_gradient(z).astype(dtype)), intermediates

    def _sample_selected(self, key, sample_shape):
        """The host's draw (component index, then that component), but drawing only the selected
        component instead of all :math:`K` and keeping one: :math:`K` times fewer variates."""
        key_comp, key_ind = random.split(key)
        indices = jnp.asarray(
            self.mixing_distribution.expand(sample_shape + self.batch_shape).sample(key_ind)
        )
        base, multivariate = _univariate_base(self.component_distribution)
        selected = _select_component(base, indices, multivariate)
        if selected is None:  # a base whose parameters cannot be gathered: the host's draw
            return super().sample_with_intermediates(key, sample_shape)
        return selected.sample(key_comp), [indices]

    def _reparameterize(self, z):
        """``z`` (any point of the support) with the implicit derivative of the sequential
        transform attached: the derivative of :math:`S^{-1}(u)` at fixed :math:`u = S(z)`."""
        base, multivariate = _univariate_base(self.component_distribution)
        leaves, treedef = jax.tree_util.tree_flatten(base)
        logits = self.mixing_distribution.logits
        if self.weights == "score":
            logits = lax.stop_gradient(logits)

        batch = tuple(base.batch_shape)
        location_scale = base_cdf.location_scale(base)

        def jvp(z, params, dots):
            return _tangent(z, params, dots, treedef, batch, multivariate, location_scale)

        return implicit_reparameterize(z, (logits, *leaves), jvp=jvp)

    def weight_score(self, value):
        r""":math:`\sum_k r_k(z) \log\pi_k` with the responsibilities :math:`r_k` held constant:
        its gradient is the Rao-Blackwellized score of the component index given ``value``."""
        log_pi = jax.nn.log_softmax(self.mixing_distribution.logits, axis=-1)
        log_joint = lax.stop_gradient(self.component_log_probs(value))
        return jnp.sum(jax.nn.softmax(log_joint, axis=-1) * log_pi, axis=-1)


class ScoreTrace_ELBO(Trace_ELBO):
    r"""NumPyro's ``Trace_ELBO`` plus the score-function term of every guide site drawn from a
    :class:`MixtureSameFamily` with ``weights="score"`` (what Pyro's ``Trace_ELBO`` does through
    ``score_parts``): the surrogate :math:`\sum_i s_i(z_i)\,ot(f_i)` with
    :math:`s_i = \sum_k ot(r_k(z_i)) \log\pi_k` and :math:`f_i` the draw's
    :math:`\log p - \log q`, summed over all sites: elementwise for sites of the mixture site's
    batch shape (e.g. the same plate), whole for the others. Sites of any other distribution are
    treated exactly as by ``Trace_ELBO`` (they must be reparameterized)."""

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        def particle(key):
            model_key, guide_key = random.split(key)
            model_trace, guide_trace = get_importance_trace(
                seed(model, model_key), seed(guide, guide_key), args, kwargs, param_map
            )
            costs = [
                sign * site["log_prob"]
                for sign, tr in ((1, model_trace), (-1, guide_trace))
                for site in tr.values()
                if site["type"] == "sample"
            ]
            elbo = sum(jnp.sum(c) for c in costs)
            for site in guide_trace.values():
                if site["type"] != "sample":
                    continue
                score = weight_score(site["fn"], site["value"])
                if score is None:
                    continue
                cost = sum(c if jnp.shape(c) == jnp.shape(score) else jnp.sum(c) for c in costs)
                surrogate = jnp.sum(score * lax.stop_gradient(cost))
                elbo = elbo + surrogate - lax.stop_gradient(surrogate)
            return elbo

        if self.num_particles == 1:
            return {"loss": -particle(rng_key), "mutable_state": None}
        elbos = self.vectorize_particles_fn(particle, random.split(rng_key, self.num_particles))
        return {"loss": -jnp.mean(elbos), "mutable_state": None}


def weight_score(fn, value):
    """The weight score of a guide site's distribution (unwrapping ``expand``, ``mask`` and
    ``to_event`` layers), or ``None`` if it is not a mixture with ``weights="score"``."""
    while not isinstance(fn, MixtureSameFamily) and hasattr(fn, "base_dist"):
        fn = fn.base_dist
    if isinstance(fn, MixtureSameFamily) and fn.weights == "score":
        return fn.weight_score(value)
    return None


def _check_arguments(mixing, component):
    """The host's checks of the arguments, made first and each a ``ValueError`` naming the
    argument (the host asserts the number of components, and a component without batch
    dimensions would fail with an ``IndexError``)."""
    if not isinstance(mixing, (CategoricalLogits, CategoricalProbs)):
        raise ValueError(
            "MixtureSameFamily: `mixing_distribution` must be a Categorical, got "
            f"{type(mixing).__name__}"
        )
    if not isinstance(component, Distribution):
        raise ValueError(
            "MixtureSameFamily: `component_distribution` must be a NumPyro Distribution, got "
            f"{type(component).__name__}"
        )
    size = jnp.shape(mixing.logits)[-1]
    if len(component.batch_shape) == 0 or component.batch_shape[-1] != size:
        raise ValueError(
            "MixtureSameFamily: the last batch dimension of `component_distribution` must be "
            f"the number of components ({size}), got batch shape {tuple(component.batch_shape)}"
        )


def _missing(bound):
    return isinstance(bound, float) and math.isinf(bound)


def _parameter_free(support):
    while isinstance(support, constraints._IndependentConstraint):
        support = support.base_constraint
    return isinstance(support, constraints.ParameterFreeConstraint)


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


def _select_component(base, indices, multivariate):
    """``base`` with its mixture axis replaced by the components ``indices`` (sample and batch
    shape) select, or ``None`` unless ``base``'s pytree data are batch-shaped arrays (or
    distributions of them, as a StudentT's chi-square or a truncation's base)."""
    batch = tuple(base.batch_shape)
    axis = len(batch) - (2 if multivariate else 1)  # the mixture axis of the base's batch
    shape = indices.shape[: indices.ndim - axis] + batch
    index = indices.reshape(indices.shape + (1,) * (len(batch) - axis))

    def select(datum):
        datum = jnp.broadcast_to(datum, shape)
        return jnp.squeeze(
            jnp.take_along_axis(datum, index, axis=axis - len(batch)), axis - len(batch)
        )

    return _map_data(base, select, indices.shape + batch[axis + 1 :])


def _broadcast(dist, shape):
    """``dist`` with its pytree data broadcast to the batch shape ``shape`` (see
    :func:`_map_data`), or ``None``."""
    return _map_data(dist, lambda datum: jnp.broadcast_to(datum, shape), shape)


def _map_data(dist, fn, batch_shape):
    """A distribution of the type of ``dist`` with ``fn`` applied to each array of its pytree
    data, and to those of the distributions among them (a StudentT's chi-square, a truncation's
    base), each with the batch shape ``batch_shape``; ``None`` where a datum is neither or
    ``fn`` refuses it."""
    data, aux = dist.tree_flatten()
    mapped = []
    for datum in data:
        if isinstance(datum, Distribution):
            datum = _map_data(datum, fn, batch_shape)
            if datum is None:
                return None
        else:
            try:
                datum = fn(jnp.asarray(datum))
            except (TypeError, ValueError):
                return None
        mapped.append(datum)
    aux = list(aux)
    aux[type(dist).gather_pytree_aux_fields().index("_batch_shape")] = tuple(batch_shape)
    return type(dist).tree_unflatten(tuple(aux), tuple(mapped))


def _unexpanded(component):
    """``component`` with NumPyro's ``ExpandedDistribution`` (what ``.expand`` makes of a
    distribution) replaced by the distribution it wraps, its parameters broadcast to the
    expanded batch shape, so that the family (its CDF and parameters) is seen; ``component``
    itself where the parameters are not arrays (or distributions of them)."""
    if isinstance(component, Independent):
        base = _unexpanded(component.base_dist)
        if base is component.base_dist:
            return component
        return Independent(base, component.reinterpreted_batch_ndims)
    if not isinstance(component, ExpandedDistribution):
        return component
    inner = _unexpanded(component.base_dist)
    shape = tuple(component.batch_shape)
    if isinstance(inner, Independent):  # the wrapped batch is the expanded one, then the event
        base, shape = inner.base_dist, shape + tuple(inner.event_shape)
    else:
        base = inner
    base = _broadcast(base, shape)
    if base is None:
        return component
    if isinstance(inner, Independent):
        return Independent(base, inner.reinterpreted_batch_ndims)
    return base


def _d_major(t, batch, sample_ndim, multivariate):
    """A component parameter (or its tangent) broadcast to the base's batch shape
    ``[B..., K, D]`` (``[B..., K]`` if univariate) and laid out as ``[D, K, 1 (sample)..., B...]``:
    the scan over ``d`` then reads contiguous slices, and sums over the components are sums of
    whole rows, which XLA fuses with the work around them."""
    t = jnp.broadcast_to(t, batch)
    if not multivariate:
        t = t[..., None]
    t = jnp.moveaxis(jnp.moveaxis(t, -1, 0), -1, 1)  # [D, K, B...]
    return t.reshape(t.shape[:2] + (1,) * sample_ndim + t.shape[2:])


def _k_major(t, sample_ndim):
    """``[B..., K]`` (logits or their tangent) as ``[K, 1 (sample)..., B...]``."""
    t = jnp.moveaxis(t, -1, 0)
    return t.reshape(t.shape[:1] + (1,) * sample_ndim + t.shape[1:])


# Jitted: outside a user's jit (an eager gradient), the scan would otherwise be traced and
# compiled anew at every call, its step being a new closure each time (2.2 s a call, Gamma).
@partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _tangent(z, params, dots, treedef, batch, multivariate, location_scale=None):
    r""":math:`\dot z = -J^{-1}\dot S` in O(DK) (module docstring): one scan over :math:`d`
    whose step does all the work of dimension :math:`d` on ``[K, sample..., batch...]``
    slices, which stay in cache; in reverse mode JAX runs the transposed scan backwards, each
    step recomputing its coefficients (checkpointed) but :math:`\log c_d`.
    ``location_scale``: the positions of ``(loc, scale)`` among the leaves of a location-scale
    family (:func:`base_cdf.location_scale`), whose partials then have a closed form."""
    logits, *leaves = params
    logits_dot, *leaf_dots = dots
    sample_ndim = jnp.ndim(z) - (len(batch) - 1)
    x = jnp.moveaxis(z, -1, 0) if multivariate else z[None]  # [D, sample..., batch...]
    leaves = [_d_major(t, batch, sample_ndim, multivariate) for t in leaves]
    free = [i for i, t in enumerate(leaf_dots) if t is not None]
    free_dots = [_d_major(leaf_dots[i], batch, sample_ndim, multivariate) for i in free]

    def step(carry, inputs):
        # log_w: log w_k^(d) (normalized over k); t: the tangent of sum_{j<d} log q_k(z_j),
        # z_j moving too
        log_w, t = carry
        x_d, leaves_d, dots_d = inputs
        x_d = x_d[None]

        def terms(*args):  # per component, at fixed z_d
            base = jax.tree_util.tree_unflatten(treedef, args)
            return base.log_prob(x_d), base_cdf.cdf_pair(base, x_d)

        log_q, (cdf, sf) = terms(*leaves_d)
        # d/dz log q_k(z): log_q is elementwise, so a JVP with ones gives it
        base = jax.tree_util.tree_unflatten(treedef, leaves_d)
        x_full = jnp.broadcast_to(x_d, log_q.shape)
        _, b = jax.jvp(base.log_prob, (x_full,), (jnp.ones_like(x_full),))
        # Outside a component's support its later weights are 0, so its score is not used: 0
        # there, not the NaN of differentiating log 0; so too where the score overflows (a
        # Gumbel 87 scales into its left tail in float32, where e^-x/scale does), its weight
        # having underflowed long before.
        finite = jnp.isfinite(log_q)
        b = jnp.where(finite & jnp.isfinite(b), b, 0.0)
        w = jnp.exp(log_w)
        lower = jnp.sum(w * cdf, axis=0)  # S_d
        upper = jnp.sum(w * sf, axis=0)  # 1 - S_d
        # F_k - S_d from whichever tail is small, so that the difference does not cancel
        a = w * jnp.where(lower <= 0.5, cdf - lower, upper - sf)
        log_joint = log_w + log_q
        # the log conditional density, per draw: kept from the forward pass (see below)
        log_c = checkpoint_name(jax.nn.logsumexp(log_joint, axis=0), _LOG_C)
        # The tangents enter last, each times a coefficient computed from the primal values:
        # reverse mode then keeps these few coefficients per step, not every intermediate.
        # S-dot_d = sum_k [w_k F-dot_k + a_k (log-pi-dot_k + t_k)], t including earlier z_j.
        s_dot = a * t if logits_dot is None else a * (t + logits_dot)
        t_next = t
        if location_scale is not None:
            # With xi = (z - loc)/scale: F-dot = -q u and log-q-dot = -b u - scale-dot/scale,
            # where u = loc-dot + xi scale-dot moves z_d in units of z.
            tangent = dict(zip(free, dots_d, strict=True))
            i_loc, i_scale = location_scale
            loc_dot, scale_dot = tangent.get(i_loc), tangent.get(i_scale)
            u = 0.0 if loc_dot is None else loc_dot
            if scale_dot is not None:
                scale = leaves_d[i_scale]
                u = u + (x_d - leaves_d[i_loc]) / scale * scale_dot
                t_next = t_next - scale_dot / scale
            if loc_dot is not None or scale_dot is not None:
                s_dot = s_dot - jnp.exp(log_joint) * u
                t_next = t_next - b * u
        else:
            for i, dot in zip(free, dots_d, strict=True):  # elementwise partials in parameter i
                _, (d_log_q, (d_cdf, _)) = jax.jvp(
                    lambda leaf, i=i: terms(*leaves_d[:i], leaf, *leaves_d[i + 1 :]),
                    (leaves_d[i],),
                    (jnp.ones_like(leaves_d[i]),),
                )
                # Far in a component's tail the partials of log q and log F overflow (a Gumbel
                # 87 scales into its left tail in float32, where they are e^-x/scale), and
                # that of F = 0 is 0 * inf: each is 0 in the dtype, and log q is about -e^87,
                # so that the later weights of the component are 0 too.
                d_cdf = jnp.where(jnp.isfinite(d_cdf), d_cdf, 0.0)
                d_log_q = jnp.where(finite & jnp.isfinite(d_log_q), d_log_q, 0.0)
                s_dot = s_dot + (w * d_cdf) * dot
                t_next = t_next + d_log_q * dot
        z_dot_d = -jnp.sum(s_dot, axis=0) * jnp.exp(-log_c)
        return (log_joint - log_c, t_next + b * z_dot_d), z_dot_d

    log_pi = _k_major(jax.nn.log_softmax(logits, axis=-1), sample_ndim)
    if logits_dot is not None:
        logits_dot = _k_major(logits_dot, sample_ndim)
    carry_shape = jnp.broadcast_shapes(
        (1,) + x.shape[1:], log_pi.shape, *(leaf.shape[1:] for leaf in leaves)
    )
    dtype = jnp.result_type(x, *leaves)
    init = (jnp.broadcast_to(log_pi, carry_shape).astype(dtype), jnp.zeros(carry_shape, dtype))
    # Checkpointed: reverse mode recomputes each step's coefficients [K, ...] rather than
    # storing them for all D steps (about 5% faster here, and less memory), except log c_d,
    # one number per draw that the forward pass forms anyway (another 15% faster).
    policy = jax.checkpoint_policies.save_only_these_names(_LOG_C)
    step = jax.checkpoint(step, prevent_cse=False, policy=policy)
    _, z_dot = lax.scan(step, init, (x, leaves, free_dots))
    return jnp.moveaxis(z_dot, 0, -1) if multivariate else z_dot[0]
