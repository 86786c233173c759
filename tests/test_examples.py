"""The examples run, and the README's extension example gives the hosts' own gradients."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as ndist
import pytest
import torch
from pyro.distributions import Weibull

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
from custom_distribution import ImplicitWeibull, ImplicitWeibullJax  # noqa: E402


def test_custom_pyro_distribution_matches_inverse_cdf_gradient():
    """For a scale family the implicit gradient equals the inverse-CDF one: dz/dscale = z/scale.
    The concentration gradient is compared with the host's own Weibull.rsample at the same u."""
    scale = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    k = torch.tensor([0.7, 3.0], dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    z = ImplicitWeibull(scale, k).rsample((5,))
    ours = torch.autograd.grad(z.sum(), (scale, k))
    u = 1 - torch.exp(-((z.detach() / scale.detach()) ** k.detach()))
    # torch's Weibull is a transformed Exponential: invert it at the same u for a reference.
    z_ref = scale * (-torch.log1p(-u)) ** (1 / k)
    ref = torch.autograd.grad(z_ref.sum(), (scale, k))
    assert torch.allclose(z.detach(), z_ref.detach())
    for a, b in zip(ours, ref, strict=True):
        assert torch.allclose(a, b)
    assert isinstance(ImplicitWeibull(scale, k), Weibull)


def test_custom_numpyro_distribution_matches_native_gradient():
    # float64 whatever ran before: two exact gradient formulas agree to rounding there.
    jax.config.update("jax_enable_x64", True)
    key = jax.random.PRNGKey(0)
    scale, k = jnp.array([0.5, 2.0], jnp.float64), jnp.array([0.7, 3.0], jnp.float64)

    def total(cls):
        return lambda s, c: cls(s, c).sample(key, (5,)).sum()

    ours = jax.grad(total(ImplicitWeibullJax), argnums=(0, 1))(scale, k)
    native = jax.grad(total(ndist.Weibull), argnums=(0, 1))(scale, k)
    for a, b in zip(ours, native, strict=True):
        assert np.allclose(a, b, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["implicit", "score"])
def test_quickstart_runs(tmp_path, weights):
    env = {**os.environ, "CI": "1"}
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "quickstart.py"),
            *("--weights", weights, "--plot", str(tmp_path / "q.png")),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "Pyro" in out.stdout and "NumPyro" in out.stdout
    assert (tmp_path / "q.png").exists()
