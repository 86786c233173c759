"""One small facade per host, so that each numerical test is written once and runs on both.

Every method takes and returns NumPy arrays; ``dtype`` is ``"float32"`` or ``"float64"``.
Per-sample derivatives are taken by broadcasting the parameters to the full sample shape first,
so that each draw has its own parameter element and a gradient of the sum is elementwise.
"""

from __future__ import annotations

import numpy as np


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


BACKENDS = {"torch": TorchBackend, "jax": JaxBackend}
_cache: dict[str, object] = {}


def get_backend(name):
    if name not in _cache:
        _cache[name] = BACKENDS[name]()
    return _cache[name]
