"""One small facade per host, so that each numerical test is written once and runs on both.

Every method takes and returns NumPy arrays; ``dtype`` is ``"float32"`` or ``"float64"``.
Per-sample derivatives are taken by broadcasting the parameters to the full sample shape first,
so that each draw has its own parameter element and a gradient of the sum is elementwise.
"""

from __future__ import annotations

import numpy as np

# Bases of TruncatedDistribution: family name -> names of its parameters, in constructor order
# (the same in both hosts; "Rice" is this package's).
TRUNCATION_BASES = {
    "Laplace": ("loc", "scale"),
    "Cauchy": ("loc", "scale"),
    "Logistic": ("loc", "scale"),
    "Gumbel": ("loc", "scale"),
    "Exponential": ("rate",),
    "Gamma": ("concentration", "rate"),
    "LogNormal": ("loc", "scale"),
    "StudentT": ("df", "loc", "scale"),
    "Rice": ("nu", "sigma"),
}


def _sample_shape(n, nu, sigma):
    return (n, *np.broadcast_shapes(np.shape(nu), np.shape(sigma)))


class TorchBackend:
    name = "torch"

    def __init__(self):
        import torch

        import pyro_implicit

        self.torch, self.lib = torch, pyro_implicit

    def _t(self, x, dtype, grad=False):
        return self.torch.tensor(np.asarray(x), dtype=getattr(self.torch, dtype)).requires_grad_(
            grad
        )

    def _full(self, nu, sigma, shape, dtype):
        return (
            self._t(np.broadcast_to(nu, shape), dtype, True),
            self._t(np.broadcast_to(sigma, shape), dtype, True),
        )

    def sample_grads(self, nu, sigma, n, seed, dtype):
        """Draws z with per-sample dz/dnu and dz/dsigma, each of shape (n, *batch)."""
        self.torch.manual_seed(seed)
        nu_t, sigma_t = self._full(nu, sigma, _sample_shape(n, nu, sigma), dtype)
        z = self.lib.Rice(nu_t, sigma_t).rsample()
        d_nu, d_sigma = self.torch.autograd.grad(z.sum(), (nu_t, sigma_t))
        return z.detach().numpy(), d_nu.numpy(), d_sigma.numpy()

    def sample_second_derivs(self, nu, sigma, n, seed, dtype):
        """Draws z with per-sample d2z/dnu2 and d2z/dnu dsigma."""
        self.torch.manual_seed(seed)
        nu_t, sigma_t = self._full(nu, sigma, _sample_shape(n, nu, sigma), dtype)
        z = self.lib.Rice(nu_t, sigma_t).rsample()
        (d_nu,) = self.torch.autograd.grad(z.sum(), nu_t, create_graph=True)
        d_nu_nu, d_nu_sigma = self.torch.autograd.grad(d_nu.sum(), (nu_t, sigma_t))
        return z.detach().numpy(), d_nu_nu.numpy(), d_nu_sigma.numpy()

    def rice_method(self, method, nu, sigma, value, dtype):
        d = self.lib.Rice(self._t(nu, dtype), self._t(sigma, dtype))
        return getattr(d, method)(self._t(value, dtype)).detach().numpy()

    def icdf_grads(self, nu, sigma, u, dtype):
        """z = icdf(u) with dz/dnu, dz/dsigma, dz/du (all elementwise, same shape)."""
        nu_t, sigma_t = self._full(
            nu, sigma, np.broadcast_shapes(*map(np.shape, (nu, sigma, u))), dtype
        )
        u_t = self._t(np.broadcast_to(u, nu_t.shape), dtype, True)
        z = self.lib.Rice(nu_t, sigma_t).icdf(u_t)
        grads = self.torch.autograd.grad(z.sum(), (nu_t, sigma_t, u_t))
        return (z.detach().numpy(), *(g.numpy() for g in grads))

    def moments(self, nu, sigma, dtype):
        d = self.lib.Rice(self._t(nu, dtype), self._t(sigma, dtype))
        return d.mean.detach().numpy(), d.variance.detach().numpy()

    # --- truncated distributions (family names and parameter order: TRUNCATION_BASES) ----------

    def _base(self, family, params):
        import pyro.distributions as dist

        cls = self.lib.Rice if family == "Rice" else getattr(dist, family)
        return cls(*params)

    def truncated(self, family, params, low, high, dtype, validate_args=None):
        """The truncated distribution itself, for error and shape checks (None bounds kept)."""
        params = [self._t(p, dtype) for p in params]
        low = None if low is None else self._t(low, dtype)
        high = None if high is None else self._t(high, dtype)
        return self.lib.TruncatedDistribution(
            self._base(family, params), low, high, validate_args=validate_args
        )

    def truncated_sample_grads(self, family, params, low, high, n, seed, dtype):
        """Draws z of shape (n,) with per-sample dz/dparam for each base parameter, then dz/dlow
        and dz/dhigh (a list of arrays of shape (n,))."""
        self.torch.manual_seed(seed)
        leaves = [self._t(np.broadcast_to(p, (n,)), dtype, True) for p in (*params, low, high)]
        d = self.lib.TruncatedDistribution(self._base(family, leaves[:-2]), *leaves[-2:])
        z = d.rsample()
        grads = self.torch.autograd.grad(z.sum(), leaves, allow_unused=True)
        grads = [np.zeros(n) if g is None else g.numpy() for g in grads]
        return z.detach().numpy(), grads

    def truncated_methods(
        self, family, params, low, high, calls, dtype="float64", validate_args=None
    ):
        """``d.<method>`` (value None) or ``d.<method>(value)`` for each ``(method, value)`` of
        ``calls``, ``d`` the truncated distribution."""
        d = self.truncated(family, params, low, high, dtype, validate_args=validate_args)
        return [
            (getattr(d, m) if v is None else getattr(d, m)(self._t(v, dtype))).detach().numpy()
            for m, v in calls
        ]

    def truncated_icdf_grads(self, family, params, low, high, u, dtype="float64"):
        """z = icdf(u) and its derivatives in the base's parameters, low, high and u."""
        shape = np.shape(u)
        leaves = [self._t(np.broadcast_to(p, shape), dtype, True) for p in (*params, low, high)]
        u_t = self._t(u, dtype, True)
        d = self.lib.TruncatedDistribution(self._base(family, leaves[:-2]), *leaves[-2:])
        z = d.icdf(u_t)
        grads = self.torch.autograd.grad(z.sum(), (*leaves, u_t))
        return z.detach().numpy(), [g.numpy() for g in grads]

    def truncated_moments_grads(self, family, params, low, high, dtype="float64"):
        """The mean, the variance and the mean's gradient in each base parameter, low and high."""
        leaves = [self._t(p, dtype, True) for p in (*params, low, high)]
        d = self.lib.TruncatedDistribution(self._base(family, leaves[:-2]), *leaves[-2:])
        mean, variance = d.mean, d.variance
        grads = self.torch.autograd.grad(mean, leaves)
        return mean.detach().numpy(), variance.detach().numpy(), [g.numpy() for g in grads]

    def unsupported_bases(self):
        import pyro.distributions as dist

        torch = self.torch
        return [
            dist.MultivariateNormal(torch.zeros(2), torch.eye(2)),
            dist.Poisson(torch.tensor(3.0)),
            dist.Normal(torch.zeros(2), 1.0).to_event(1),
        ]

    def special(self, name, args, dtype="float64", output=0):
        """special.<name>(*args) (a pair of log-values) and the gradient of the sum of its
        output ``output`` in each argument."""
        ts = [self._t(a, dtype, True) for a in args]
        out = getattr(self.lib.special, name)(*ts)
        grads = self.torch.autograd.grad(out[output].sum(), ts)
        return [o.detach().numpy() for o in out], [g.numpy() for g in grads]

    def special_derivatives(self, name, x, dtype):
        """The elementwise special.<name>(x) of one argument and its first two derivatives."""
        t = self._t(x, dtype, True)
        value = getattr(self.lib.special, name)(t)
        (d1,) = self.torch.autograd.grad(value.sum(), t, create_graph=True)
        (d2,) = self.torch.autograd.grad(d1.sum(), t)
        return [v.detach().numpy() for v in (value, d1, d2)]

    def special_hessian(self, name, args, output=0):
        """The second derivatives of output ``output`` of the elementwise special.<name>(*args),
        in float64, as ``h[i][j]`` (each per element), by a double backward."""
        ts = [self._t(a, "float64", True) for a in args]
        out = getattr(self.lib.special, name)(*ts)[output]
        grads = self.torch.autograd.grad(out.sum(), ts, create_graph=True)
        return [
            [h.numpy() for h in self.torch.autograd.grad(g.sum(), ts, retain_graph=True)]
            for g in grads
        ]


class JaxBackend:
    name = "jax"

    def __init__(self):
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        import numpyro_implicit

        self.jax, self.jnp, self.lib = jax, jnp, numpyro_implicit

    def _a(self, x, dtype):
        return self.jnp.asarray(np.asarray(x), dtype=dtype)

    def _full(self, nu, sigma, shape, dtype):
        return (
            self._a(np.broadcast_to(nu, shape), dtype),
            self._a(np.broadcast_to(sigma, shape), dtype),
        )

    def _draw(self, seed):
        key = self.jax.random.PRNGKey(seed)
        return lambda nu, sigma: self.lib.Rice(nu, sigma).sample(key)

    def sample_grads(self, nu, sigma, n, seed, dtype):
        nu_a, sigma_a = self._full(nu, sigma, _sample_shape(n, nu, sigma), dtype)
        draw = self._draw(seed)
        d_nu, d_sigma = self.jax.grad(lambda a, b: draw(a, b).sum(), argnums=(0, 1))(nu_a, sigma_a)
        return np.asarray(draw(nu_a, sigma_a)), np.asarray(d_nu), np.asarray(d_sigma)

    def sample_second_derivs(self, nu, sigma, n, seed, dtype):
        nu_a, sigma_a = self._full(nu, sigma, _sample_shape(n, nu, sigma), dtype)
        draw = self._draw(seed)
        d_nu = self.jax.grad(lambda a, b: draw(a, b).sum(), argnums=0)
        second = self.jax.grad(lambda a, b: d_nu(a, b).sum(), argnums=(0, 1))(nu_a, sigma_a)
        return (np.asarray(draw(nu_a, sigma_a)), *(np.asarray(s) for s in second))

    def rice_method(self, method, nu, sigma, value, dtype):
        d = self.lib.Rice(self._a(nu, dtype), self._a(sigma, dtype))
        return np.asarray(getattr(d, method)(self._a(value, dtype)))

    def icdf_grads(self, nu, sigma, u, dtype):
        nu_a, sigma_a = self._full(
            nu, sigma, np.broadcast_shapes(*map(np.shape, (nu, sigma, u))), dtype
        )
        u_a = self._a(np.broadcast_to(u, nu_a.shape), dtype)

        def icdf(a, b, c):
            return self.lib.Rice(a, b).icdf(c)

        grads = self.jax.grad(lambda *p: icdf(*p).sum(), argnums=(0, 1, 2))(nu_a, sigma_a, u_a)
        return (np.asarray(icdf(nu_a, sigma_a, u_a)), *(np.asarray(g) for g in grads))

    def moments(self, nu, sigma, dtype):
        d = self.lib.Rice(self._a(nu, dtype), self._a(sigma, dtype))
        return np.asarray(d.mean), np.asarray(d.variance)

    # --- truncated distributions (family names and parameter order: TRUNCATION_BASES) ----------

    def _base(self, family, params):
        import numpyro.distributions as dist

        cls = self.lib.Rice if family == "Rice" else getattr(dist, family)
        return cls(*params)

    def truncated(self, family, params, low, high, dtype, validate_args=None):
        params = [self._a(p, dtype) for p in params]
        low = None if low is None else self._a(low, dtype)
        high = None if high is None else self._a(high, dtype)
        return self.lib.TruncatedDistribution(
            self._base(family, params), low, high, validate_args=validate_args
        )

    def truncated_sample_grads(self, family, params, low, high, n, seed, dtype):
        # One compiled function per family, reused across tests (intervals and keys are data).
        cache = self.__dict__.setdefault("_truncated_draws", {})
        if family not in cache:

            def draw_and_grad(leaves, key):
                def draw(leaves):
                    base = self._base(family, leaves[:-2])
                    return self.lib.TruncatedDistribution(base, *leaves[-2:]).sample(key)

                z, vjp = self.jax.vjp(draw, leaves)
                return z, vjp(self.jnp.ones_like(z))[0]

            cache[family] = self.jax.jit(draw_and_grad)
        leaves = [self._a(np.broadcast_to(p, (n,)), dtype) for p in (*params, low, high)]
        z, grads = cache[family](leaves, self.jax.random.PRNGKey(seed))
        return np.asarray(z), [np.asarray(g) for g in grads]

    def truncated_methods(
        self, family, params, low, high, calls, dtype="float64", validate_args=None
    ):
        # One XLA compilation of all the calls, instead of one per primitive (eager) or per
        # call. Validation under jit checks the bounds only where they are concrete: none here.
        has_low, has_high = low is not None, high is not None
        leaves = [self._a(p, dtype) for p in params]
        bounds = [self._a(b, dtype) for b in (low, high) if b is not None]
        methods = [m for m, _ in calls]

        @self.jax.jit
        def evaluate(leaves, bounds, values):
            it = iter(bounds)
            lo, hi = (next(it) if has else None for has in (has_low, has_high))
            base = self._base(family, leaves)
            d = self.lib.TruncatedDistribution(base, lo, hi, validate_args=validate_args)
            return [
                getattr(d, m) if v is None else getattr(d, m)(v)
                for m, v in zip(methods, values, strict=True)
            ]

        values = [None if v is None else self._a(v, dtype) for _, v in calls]
        return [np.asarray(out) for out in evaluate(leaves, bounds, values)]

    def truncated_icdf_grads(self, family, params, low, high, u, dtype="float64"):
        leaves = [self._a(np.broadcast_to(p, np.shape(u)), dtype) for p in (*params, low, high)]
        u_a = self._a(u, dtype)

        def icdf(leaves, u):
            base = self._base(family, leaves[:-2])
            return self.lib.TruncatedDistribution(base, *leaves[-2:]).icdf(u)

        grad = self.jax.jit(self.jax.grad(lambda lv, u: icdf(lv, u).sum(), argnums=(0, 1)))
        grads = grad(leaves, u_a)
        z = self.jax.jit(icdf)(leaves, u_a)
        return np.asarray(z), [np.asarray(g) for g in (*grads[0], grads[1])]

    def truncated_moments_grads(self, family, params, low, high, dtype="float64"):
        leaves = [self._a(p, dtype) for p in (*params, low, high)]

        def moments(leaves):
            d = self.lib.TruncatedDistribution(self._base(family, leaves[:-2]), *leaves[-2:])
            return d.mean, d.variance

        grad = self.jax.jit(self.jax.value_and_grad(moments, has_aux=True))
        (mean, variance), grads = grad(leaves)
        return np.asarray(mean), np.asarray(variance), [np.asarray(g) for g in grads]

    def unsupported_bases(self):
        import numpyro.distributions as dist

        jnp = self.jnp
        return [
            dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)),
            dist.Poisson(3.0),
            dist.Normal(jnp.zeros(2), 1.0).to_event(1),
        ]

    def special(self, name, args, dtype="float64", output=0):
        arrays = [self._a(a, dtype) for a in args]
        fn = getattr(self.lib.special, name)
        out = fn(*arrays)
        argnums = tuple(range(len(arrays)))
        grads = self.jax.grad(lambda *a: fn(*a)[output].sum(), argnums=argnums)(*arrays)
        return [np.asarray(o) for o in out], [np.asarray(g) for g in grads]

    def special_derivatives(self, name, x, dtype):
        fn = getattr(self.lib.special, name)
        d1 = self.jax.vmap(self.jax.grad(fn))
        d2 = self.jax.vmap(self.jax.grad(self.jax.grad(fn)))
        t = self._a(x, dtype)
        return [np.asarray(f(t), float) for f in (fn, d1, d2)]

    def special_hessian(self, name, args, output=0):
        """As TorchBackend.special_hessian, forward over reverse: the iterations run in
        ``lax.while_loop``, which reverse mode cannot differentiate."""
        arrays = [self._a(a, "float64") for a in args]
        fn = getattr(self.lib.special, name)
        argnums = tuple(range(len(arrays)))
        grad = self.jax.grad(lambda *a: fn(*a)[output].sum(), argnums=argnums)
        columns = [
            self.jax.jvp(
                grad, arrays, [self.jnp.full_like(a, j == i) for i, a in enumerate(arrays)]
            )[1]
            for j in argnums
        ]  # columns[j][i] = d grad_i / d arg_j
        return [[np.asarray(columns[j][i]) for j in argnums] for i in argnums]


BACKENDS = {"torch": TorchBackend, "jax": JaxBackend}
_cache: dict[str, object] = {}


def get_backend(name):
    if name not in _cache:
        _cache[name] = BACKENDS[name]()
    return _cache[name]
