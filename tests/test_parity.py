"""Parity: the two adapters give the same numbers for the same inputs."""

import numpy as np
import pytest

from tests.backends import get_backend

RNG = np.random.default_rng(0)
NU = np.concatenate([[0.0, 0.0, 1e-3, 20.0, 1e4], RNG.uniform(0, 50, 60)])
SIGMA = np.concatenate([[1.0, 1e-3, 1.0, 1.0, 1.0], RNG.uniform(0.1, 3, 60)])
U = np.concatenate([[1e-12, 0.5, 0.3, 1 - 1e-10, 0.9], RNG.uniform(0, 1, 60)])
# values in the bulk and in both tails of each distribution
Z = np.abs(NU + SIGMA * RNG.normal(0, 4, NU.size)) + 1e-3


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("method", ["log_prob", "log_cdf", "log_sf", "icdf"])
def test_methods_agree(method, dtype, rtol):
    torch_, jax_ = get_backend("torch"), get_backend("jax")
    value = U if method == "icdf" else Z
    ours = [b.rice_method(method, NU, SIGMA, value, dtype) for b in (torch_, jax_)]
    finite = np.isfinite(ours[0])
    assert np.array_equal(finite, np.isfinite(ours[1]))
    assert np.allclose(ours[0][finite], ours[1][finite], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 2e-5)])
def test_moments_agree(dtype, rtol):
    torch_, jax_ = get_backend("torch"), get_backend("jax")
    for a, b in zip(torch_.moments(NU, SIGMA, dtype), jax_.moments(NU, SIGMA, dtype), strict=True):
        assert np.allclose(a, b, rtol=rtol)


def test_gradients_agree_at_the_same_points():
    """Quantile, and its derivatives in nu, sigma and u, at the same u on both hosts."""
    torch_, jax_ = get_backend("torch"), get_backend("jax")
    keep = (U > 0) & (U < 1)
    ours = [b.icdf_grads(NU[keep], SIGMA[keep], U[keep], "float64") for b in (torch_, jax_)]
    for a, b in zip(*ours, strict=True):
        assert np.allclose(a, b, rtol=1e-10, atol=1e-14)
