"""Turning your own distribution with a CDF into a reparameterized one, in both hosts.

The pattern: draw an exact sample without gradient (any sampler will do: rejection, a
construction, numerical inversion), then hand it to ``implicit_reparameterize`` with the
parameters, the CDF and the log-density. The Weibull serves as the example because both hosts
also reparameterize it by inverting its CDF in closed form, which gives the same gradient: the
test suite checks that the two agree.
"""

import jax
import jax.numpy as jnp
import numpyro.distributions as ndist
import torch
from pyro.distributions import Weibull

import numpyro_implicit
import pyro_implicit


class ImplicitWeibull(Weibull):
    """Pyro: a Weibull whose ``rsample`` differentiates its CDF implicitly."""

    has_rsample = True

    def rsample(self, sample_shape=()):
        with torch.no_grad():
            z = self.sample(sample_shape)  # any exact sampler, no gradient needed
        return pyro_implicit.implicit_reparameterize(
            z,
            (self.scale, self.concentration),
            cdf=lambda z, scale, k: -torch.expm1(-((z / scale) ** k)),
            log_prob=lambda z, scale, k: Weibull(scale, k).log_prob(z),
        )


class ImplicitWeibullJax(ndist.Weibull):
    """NumPyro: the same, with ``sample`` differentiable through ``jax.custom_jvp``."""

    def sample(self, key, sample_shape=()):
        z = super().sample(key, sample_shape)  # stop_gradient is applied by the engine
        return numpyro_implicit.implicit_reparameterize(
            z,
            (self.scale, self.concentration),
            cdf=lambda z, scale, k: -jnp.expm1(-((z / scale) ** k)),
            log_prob=lambda z, scale, k: ndist.Weibull(scale, k).log_prob(z),
        )


if __name__ == "__main__":
    scale = torch.tensor(2.0, requires_grad=True)
    z = ImplicitWeibull(scale, torch.tensor(1.5)).rsample((4,))
    z.sum().backward()
    print("pyro    dE[sum z]/dscale estimate:", scale.grad.item())
    grad = jax.grad(lambda s: ImplicitWeibullJax(s, 1.5).sample(jax.random.PRNGKey(0), (4,)).sum())
    print("numpyro dE[sum z]/dscale estimate:", float(grad(2.0)))
