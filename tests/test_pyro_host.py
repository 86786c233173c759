"""PyTorch/Pyro-specific behaviour: the engine, autograd checks, native distribution behaviour,
and SVI with Trace_ELBO."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

import pyro_implicit
from pyro_implicit import Rice, implicit_reparameterize


def exponential_cdf(z, rate):
    return -torch.expm1(-rate * z)


def exponential_log_prob(z, rate):
    return torch.log(rate) - rate * z


def exponential_rsample(rate, seed, **engine):
    """An Exponential whose gradient comes from the engine: exact answer dz/drate = -z/rate."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = torch.empty(rate.shape, dtype=rate.dtype).exponential_(generator=generator) / rate
    return implicit_reparameterize(z, (rate,), **engine)


CDF_ENGINE = {"cdf": exponential_cdf, "log_prob": exponential_log_prob}
GRAD_ENGINE = {"grad": lambda z, rate: (-z / rate,)}


@pytest.mark.parametrize("engine", [CDF_ENGINE, GRAD_ENGINE], ids=["cdf", "grad"])
def test_engine_first_and_second_derivatives(engine):
    rate = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64, requires_grad=True)
    z = exponential_rsample(rate, 0, **engine)
    # z = E / rate: dz/drate = -z / rate, d2z/drate2 = 2 z / rate^2
    (g,) = torch.autograd.grad(z.sum(), rate, create_graph=True)
    assert torch.allclose(g, -z / rate)
    (h,) = torch.autograd.grad(g.sum(), rate)
    assert torch.allclose(h, (2 * z / rate**2).detach())
    assert torch.autograd.gradcheck(lambda r: exponential_rsample(r, 0, **engine), (rate,))
    assert torch.autograd.gradgradcheck(lambda r: exponential_rsample(r, 0, **engine), (rate,))


def test_engine_broadcast_parameter_gets_summed_gradient():
    rate = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    generator = torch.Generator().manual_seed(1)
    z0 = torch.empty(5, dtype=torch.float64).exponential_(generator=generator) / 2.0
    z = implicit_reparameterize(z0, (rate,), **CDF_ENGINE)
    z.sum().backward()
    assert torch.allclose(rate.grad, (-z0 / 2.0).sum())


def test_engine_rejects_incomplete_specification():
    with pytest.raises(TypeError, match="either `grad`, or both `cdf` and `log_prob`"):
        implicit_reparameterize(torch.ones(2), (torch.ones(2),), cdf=exponential_cdf)
    with pytest.raises(TypeError, match=r"params\[0\] must be a torch.Tensor"):
        implicit_reparameterize(torch.ones(2), (1.0,), **GRAD_ENGINE)


def test_rice_gradcheck_and_gradgradcheck():
    """The implicit gradient is the derivative of the quantile at fixed u = F(z), not of the
    polar construction that draws the sample, so finite differences are taken along
    z(nu, sigma) = icdf(u), which uses the same engine."""
    nu = torch.tensor([0.3, 2.0, 7.0], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    z = torch.tensor([0.5, 1.8, 9.0], dtype=torch.float64, requires_grad=True)
    u = torch.tensor([0.1, 0.5, 0.97], dtype=torch.float64, requires_grad=True)
    for fn, args in [
        (lambda n, s, x: Rice(n, s).cdf(x), (nu, sigma, z)),
        (lambda n, s, p: Rice(n, s).icdf(p), (nu, sigma, u)),
    ]:
        assert torch.autograd.gradcheck(fn, args)
        assert torch.autograd.gradgradcheck(fn, args)


def test_rsample_gradient_equals_quantile_path_gradient():
    nu = torch.tensor([0.3, 2.0, 7.0], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    d = Rice(nu, sigma)
    z = d.rsample()
    g_sample = torch.autograd.grad(z.sum(), (nu, sigma))
    u = d.cdf(z).detach()
    g_quantile = torch.autograd.grad(d.icdf(u).sum(), (nu, sigma))
    for a, b in zip(g_sample, g_quantile, strict=True):
        assert torch.allclose(a, b, rtol=1e-8)


def test_rice_is_a_native_pyro_distribution():
    d = Rice(torch.tensor([1.0, 2.0]), torch.tensor(0.5))
    assert isinstance(d, dist.TorchDistribution)
    assert d.has_rsample and d.batch_shape == (2,) and d.event_shape == ()
    assert d.rsample((4, 3)).shape == (4, 3, 2)
    e = d.expand((5, 2))
    assert e.batch_shape == (5, 2) and e.rsample().shape == (5, 2)
    i = d.to_event(1)
    assert i.event_shape == (2,) and i.log_prob(i.sample()).shape == ()
    m = d.mask(torch.tensor([True, False]))
    assert m.log_prob(torch.ones(2))[1] == 0
    assert torch.allclose(d.cdf(d.icdf(torch.tensor([0.25, 0.75]))), torch.tensor([0.25, 0.75]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_follow_the_parameters(dtype):
    nu = torch.tensor([1.0, 2.0], dtype=dtype, requires_grad=True)
    d = Rice(nu, torch.tensor(1.0, dtype=dtype))
    z = d.rsample((10,))
    assert z.dtype == dtype and z.device == nu.device
    for x in (d.log_prob(z), d.cdf(z), d.icdf(torch.full((2,), 0.3, dtype=dtype)), d.mean):
        assert x.dtype == dtype
    z.sum().backward()
    assert nu.grad.dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda():
    nu = torch.tensor([0.0, 1.0, 100.0], device="cuda", requires_grad=True)
    d = Rice(nu, torch.tensor(1.0, device="cuda"))
    z = d.rsample((1000,))
    z.sum().backward()
    assert z.is_cuda and torch.isfinite(nu.grad).all()
    assert d.cdf(z).is_cuda and d.icdf(torch.full((3,), 0.5, device="cuda")).is_cuda


@pytest.mark.parametrize(
    "nu,sigma,name",
    [(-1.0, 1.0, "nu"), (1.0, 0.0, "sigma"), (float("nan"), 1.0, "nu"), (1.0, -2.0, "sigma")],
)
def test_invalid_parameters_raise_clear_errors(nu, sigma, name):
    with pytest.raises(ValueError, match=f"parameter {name}.*constraint"):
        Rice(torch.tensor(nu), torch.tensor(sigma), validate_args=True)


def test_invalid_values_raise_clear_errors():
    d = Rice(torch.tensor(1.0), torch.tensor(1.0), validate_args=True)
    with pytest.raises(ValueError, match="support"):
        d.log_prob(torch.tensor(-1.0))
    with pytest.raises(ValueError, match=r"probability in \[0, 1\]"):
        d.icdf(torch.tensor(1.5))


def fit_and_average(model, guide, names):
    """The SVI recipe of the tests below: Trace_ELBO with 64 particles, Adam whose rate decays
    from 0.05 to 0.0012 over 3000 steps, and the mean of the last 500 iterates of each named
    parameter (averaging removes optimizer noise)."""
    optim = ClippedAdam({"lr": 0.05, "lrd": 0.998})
    svi = SVI(model, guide, optim, Trace_ELBO(num_particles=64, vectorize_particles=True))
    tail = []
    for step in range(3000):
        svi.step()
        if step >= 2500:
            tail.append([pyro.param(name).item() for name in names])
    return np.mean(tail, axis=0)


@pytest.mark.slow
def test_svi_recovers_a_rice_target():
    """A Rice guide fitted by Trace_ELBO to a Rice target (no data) recovers its parameters."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    nu_true, sigma_true = 3.0, 0.8

    def model():
        pyro.sample("z", Rice(torch.tensor(nu_true), torch.tensor(sigma_true)))

    def guide():
        nu = pyro.param("nu", torch.tensor(1.0), constraint=dist.constraints.positive)
        sigma = pyro.param("sigma", torch.tensor(2.0), constraint=dist.constraints.positive)
        pyro.sample("z", pyro_implicit.Rice(nu, sigma))

    nu, sigma = fit_and_average(model, guide, ("nu", "sigma"))
    # Over 8 seeds this recipe ended within 0.006 of the target (standard deviation 0.003 in
    # both parameters): 0.02 is over six standard deviations.
    assert abs(nu - nu_true) < 0.02 and abs(sigma - sigma_true) < 0.02, (nu, sigma)
    assert np.isfinite(nu) and np.isfinite(sigma)


# Prior N(0, 1) truncated to [0, inf), likelihood y ~ N(z, 0.5^2), y = 0.3: the posterior is
# N(0.24, 0.2) truncated to [0, inf), a bound that binds (loc/scale = 0.54).
TN_Y, TN_NOISE = 0.3, 0.5
TN_LOC = TN_Y / (1 + TN_NOISE**2)
TN_SCALE = (TN_NOISE**2 / (1 + TN_NOISE**2)) ** 0.5


@pytest.mark.slow
def test_svi_recovers_a_truncated_normal_posterior():
    """A TruncatedNormal(loc, scale, low=0) guide fitted by Trace_ELBO to a positive latent
    variable recovers the exact truncated-normal posterior."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)

    def model():
        z = pyro.sample("z", pyro_implicit.TruncatedNormal(torch.tensor(0.0), 1.0, low=0.0))
        pyro.sample("y", dist.Normal(z, TN_NOISE), obs=torch.tensor(TN_Y))

    def guide():
        loc = pyro.param("loc", torch.tensor(1.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
        pyro.sample("z", pyro_implicit.TruncatedNormal(loc, scale, low=0.0))

    loc, scale = fit_and_average(model, guide, ("loc", "scale"))
    # With seeds 1-3 this recipe ended within 0.0031 of the target in loc and 0.0025 in scale
    # (NumPyro, 6 seeds: standard deviations 0.003): 0.02 is over six times the largest miss.
    assert abs(loc - TN_LOC) < 0.02 and abs(scale - TN_SCALE) < 0.02, (loc, scale)


def test_truncated_normal_gradcheck_and_native_behaviour():
    kw = {"dtype": torch.float64, "requires_grad": True}
    params = (
        torch.tensor([0.8, 0.0], **kw),
        torch.tensor([0.5, 1.0], **kw),
        torch.tensor([0.0, 8.0], **kw),
        torch.tensor([1.0, 9.0], **kw),
    )
    z = torch.tensor([0.6, 8.2], dtype=torch.float64)
    u = torch.tensor([0.3, 0.7], **kw)
    TN = pyro_implicit.TruncatedNormal
    assert torch.autograd.gradcheck(lambda *p: TN(*p).cdf(z), params)
    assert torch.autograd.gradcheck(lambda *p: TN(*p).log_prob(z), params)
    assert torch.autograd.gradcheck(lambda *p: TN(*p[:4]).icdf(p[4]), (*params, u))
    d = TN(torch.tensor([0.0, 1.0]), torch.tensor(1.0), 0.0, 2.0)
    assert d.has_rsample and d.rsample((4, 3)).shape == (4, 3, 2)
    assert d.expand((5, 2)).rsample().shape == (5, 2)
    i = d.to_event(1)
    assert i.event_shape == (2,) and i.log_prob(i.sample()).shape == ()
    assert d.mask(torch.tensor([True, False])).log_prob(torch.ones(2))[1] == 0


@pytest.mark.parametrize(
    "low,high",
    [([0.0, -2.0], [1.0, 1.0]), ([0.0, 30.0], [1.0, 30.5])],
    ids=["plain-path", "log-space-path"],  # 30 standard deviations out: log space for the batch
)
def test_truncated_normal_second_derivatives(low, high):
    """Second derivatives along the quantile path z = icdf(u), in all five arguments."""
    kw = {"dtype": torch.float64, "requires_grad": True}
    args = [torch.tensor(v, **kw) for v in ([0.8, 0.0], [0.5, 1.0], low, high, [0.3, 0.7])]
    TN = pyro_implicit.TruncatedNormal
    assert torch.autograd.gradgradcheck(lambda *p: TN(*p[:4]).icdf(p[4]), args)


@pytest.mark.parametrize("base", ["StudentT", "Gamma"])
def test_second_derivatives_through_iterative_cdfs(base):
    """Second derivatives of truncated Gamma and Student t quantiles at fixed u in all their
    parameters, the shape included (through the iterations of the CDF), against finite
    differences of the first. The Student t's lower bound is at its location (t = 0 there).
    Until 2026-11-22 a double backward through these CDFs raised; before that, one that
    reached the parameters by another path lacked their terms. The same in JAX:
    tests/test_numpyro_host.py."""
    u = torch.tensor([0.1, 0.5, 0.97], dtype=torch.float64)

    def icdf(shape, scale, low, high):
        law = dist.StudentT(shape, 0.3, scale) if base == "StudentT" else dist.Gamma(shape, scale)
        return pyro_implicit.TruncatedDistribution(law, low=low, high=high).icdf(u)

    args = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (2.5, 1.3, 0.3, 4.0)]
    assert torch.autograd.gradgradcheck(icdf, args)


# ---- MixtureSameFamily: a two-component guide fits a bimodal target ----------------------------


def _mixture_kl(weights, locs, scales):
    """KL(q || p) for p = 0.35 N(-1.5, 0.5) + 0.65 N(1.0, 0.7), on a fine grid."""
    import scipy.special
    import scipy.stats

    grid = np.linspace(-10, 10, 20001)

    def log_density(w, m, s):
        lp = scipy.stats.norm.logpdf(grid[:, None], m, s) + np.log(w)
        return scipy.special.logsumexp(lp, axis=1)

    log_q = log_density(weights, locs, scales)
    log_p = log_density([0.35, 0.65], [-1.5, 1.0], [0.5, 0.7])
    return np.trapezoid(np.exp(log_q) * (log_q - log_p), grid)


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["implicit", "score"])
def test_mixture_guide_fits_bimodal_target(weights):
    """The issue's protocol (64 draws per step, Adam 0.02) for 1000 steps from seed 0; the
    benchmark runs all 3000 steps for 5 seeds (every fit ends below KL 0.01)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    target = dist.MixtureSameFamily(
        dist.Categorical(torch.tensor([0.35, 0.65])),
        dist.Normal(torch.tensor([-1.5, 1.0]), torch.tensor([0.5, 0.7])),
    )

    def model():
        with pyro.plate("draws", 64), pyro.poutine.scale(scale=1 / 64):
            pyro.sample("z", target)

    init = torch.randn(2)

    def guide():
        logits = pyro.param("logits", torch.zeros(2))
        loc = pyro.param("mix_loc", init)
        scale = pyro.param("mix_scale", torch.ones(2), constraint=dist.constraints.positive)
        mix = pyro_implicit.MixtureSameFamily(
            dist.Categorical(logits=logits), dist.Normal(loc, scale), weights=weights
        )
        with pyro.plate("draws", 64), pyro.poutine.scale(scale=1 / 64):
            pyro.sample("z", mix)

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for _ in range(1000):
        svi.step()
    w = torch.softmax(pyro.param("logits"), -1).detach().numpy()
    loc = pyro.param("mix_loc").detach().numpy()
    scale = pyro.param("mix_scale").detach().numpy()
    assert _mixture_kl(w, loc, scale) < 0.01, (w, loc, scale)
    assert abs(w[np.argmin(loc)] - 0.35) < 0.05


def test_gradients_survive_pyro_provenance_tracking():
    """TraceGraph_ELBO wraps values downstream of non-reparameterized sites in ProvenanceTensor;
    gradients through this package's autograd Functions must be those of the plain tensors."""
    from pyro.ops.provenance import ProvenanceTensor

    nu, sigma = torch.tensor(2.0, requires_grad=True), torch.tensor(1.3, requires_grad=True)
    y = torch.tensor([0.4, 2.5, 6.0])

    def grads(wrap):
        nu_in = ProvenanceTensor(nu * 1.0, frozenset({"site"})) if wrap else nu
        rice = pyro_implicit.Rice(nu_in, sigma)
        z = rice.rsample((4,))
        total = rice.log_prob(y).sum() + rice.log_cdf(y).sum() + (z * z).sum()
        return torch.stack(torch.autograd.grad(total, [nu, sigma]))

    torch.manual_seed(0)
    plain = grads(False)
    torch.manual_seed(0)
    tracked = grads(True)
    torch.testing.assert_close(tracked.as_subclass(torch.Tensor), plain, rtol=1e-6, atol=0.0)
