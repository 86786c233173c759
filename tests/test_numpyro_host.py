"""JAX/NumPyro-specific behaviour: the engine under jit, vmap, forward and reverse mode and
higher orders, native distribution behaviour (pytree, expand, to_event, mask), and SVI."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.test_util import check_grads
from numpyro.infer import SVI, Trace_ELBO
from numpyro.optim import Adam

import numpyro_implicit
from numpyro_implicit import Rice, implicit_reparameterize

jax.config.update("jax_enable_x64", True)


def exponential_cdf(z, rate):
    return -jnp.expm1(-rate * z)


def exponential_log_prob(z, rate):
    return jnp.log(rate) - rate * z


CDF_ENGINE = {"cdf": exponential_cdf, "log_prob": exponential_log_prob}
GRAD_ENGINE = {"grad": lambda z, rate: (-z / rate,)}


def exponential_sample(rate, engine, seed=0):
    """An Exponential whose gradient comes from the engine: exact answer dz/drate = -z/rate."""
    e = jax.random.exponential(jax.random.PRNGKey(seed), jnp.shape(rate), jnp.result_type(rate))
    return implicit_reparameterize(e / rate, (rate,), **engine)


@pytest.mark.parametrize("engine", [CDF_ENGINE, GRAD_ENGINE], ids=["cdf", "grad"])
def test_engine_all_modes_and_orders(engine):
    rate = jnp.array([0.5, 1.0, 3.0])

    def f(r):
        return exponential_sample(r, engine)

    z = f(rate)
    # z = E / rate: dz/drate = -z / rate, d2z/drate2 = 2 z / rate^2
    assert np.allclose(jax.jacfwd(f)(rate), np.diag(-z / rate))
    assert np.allclose(jax.jacrev(f)(rate), np.diag(-z / rate))
    assert np.allclose(
        jax.grad(lambda r: jax.grad(lambda s: f(s).sum())(r).sum())(rate), 2 * z / rate**2
    )
    check_grads(f, (rate,), order=2, modes=["fwd", "rev"])
    jitted = jax.jit(jax.grad(lambda r: f(r).sum()))
    assert np.allclose(jitted(rate), -z / rate)
    z_each = jax.vmap(f)(rate)  # one scalar draw per element, from the same key
    vmapped = jax.vmap(jax.grad(f))(rate)
    assert np.allclose(vmapped, -z_each / rate)


def test_engine_rejects_incomplete_specification():
    with pytest.raises(TypeError, match="either `grad`, or both `cdf` and `log_prob`"):
        implicit_reparameterize(jnp.ones(2), (jnp.ones(2),), cdf=exponential_cdf)


def test_rice_check_grads_along_the_quantile_path():
    """The implicit gradient is the derivative of the quantile at fixed u, so the numerical
    derivatives of check_grads are taken along z(nu, sigma) = icdf(u), the same engine."""
    nu, sigma = jnp.array([0.3, 2.0, 7.0]), jnp.array([1.0, 0.5, 2.0])
    z, u = jnp.array([0.5, 1.8, 9.0]), jnp.array([0.1, 0.5, 0.97])
    cdf = jax.jit(lambda n, s, x: Rice(n, s).cdf(x))
    icdf = jax.jit(lambda n, s, p: Rice(n, s).icdf(p))
    check_grads(cdf, (nu, sigma, z), order=2, modes=["fwd", "rev"])
    check_grads(icdf, (nu, sigma, u), order=2, modes=["fwd", "rev"])


def test_sample_gradient_equals_quantile_path_gradient():
    nu, sigma = jnp.array([0.3, 2.0, 7.0]), jnp.array([1.0, 0.5, 2.0])
    key = jax.random.PRNGKey(1)
    z = Rice(nu, sigma).sample(key)
    u = Rice(nu, sigma).cdf(z)
    g_sample = jax.grad(lambda n, s: Rice(n, s).sample(key).sum(), argnums=(0, 1))(nu, sigma)
    g_quantile = jax.grad(lambda n, s: Rice(n, s).icdf(u).sum(), argnums=(0, 1))(nu, sigma)
    for a, b in zip(g_sample, g_quantile, strict=True):
        assert np.allclose(a, b, rtol=1e-8)


def test_rice_is_a_native_numpyro_distribution():
    d = Rice(jnp.array([1.0, 2.0]), 0.5)
    assert isinstance(d, dist.Distribution)
    assert d.has_rsample and set(d.reparametrized_params) == {"nu", "sigma"}
    assert d.batch_shape == (2,) and d.event_shape == ()
    key = jax.random.PRNGKey(0)
    assert d.sample(key, (4, 3)).shape == (4, 3, 2)
    e = d.expand((5, 2))
    assert e.batch_shape == (5, 2) and e.sample(key).shape == (5, 2)
    i = d.to_event(1)
    assert i.event_shape == (2,) and i.log_prob(i.sample(key)).shape == ()
    m = d.mask(jnp.array([True, False]))
    assert m.log_prob(jnp.ones(2))[1] == 0
    assert np.allclose(d.cdf(d.icdf(jnp.array([0.25, 0.75]))), [0.25, 0.75])


def test_pytree_survives_jit_and_vmap():
    d = Rice(jnp.array([1.0, 2.0]), jnp.array([0.5, 1.5]))
    assert np.allclose(jax.jit(lambda d: d.mean)(d), d.mean)
    leaves, treedef = jax.tree_util.tree_flatten(d)
    assert isinstance(jax.tree_util.tree_unflatten(treedef, leaves), Rice)
    nus = jnp.array([0.5, 1.0, 4.0])
    means = jax.vmap(lambda n: Rice(n, 1.0).mean)(nus)
    assert np.allclose(means, Rice(nus, 1.0).mean)
    key = jax.random.PRNGKey(0)
    grads = jax.jit(jax.vmap(jax.grad(lambda n: Rice(n, 1.0).sample(key))))(nus)
    assert grads.shape == (3,) and np.all(np.isfinite(grads))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_follows_the_parameters(dtype):
    nu = jnp.array([1.0, 2.0], dtype=dtype)
    d = Rice(nu, jnp.array(1.0, dtype=dtype))
    z = d.sample(jax.random.PRNGKey(0), (10,))
    assert z.dtype == dtype
    for x in (d.log_prob(z), d.cdf(z), d.icdf(jnp.full((2,), 0.3, dtype=dtype)), d.mean):
        assert x.dtype == dtype
    grad = jax.grad(lambda n: Rice(n, jnp.array(1.0, dtype)).sample(jax.random.PRNGKey(0)).sum())
    assert grad(nu).dtype == dtype


@pytest.mark.parametrize(
    "nu,sigma,name,constraint",
    [
        (-1.0, 1.0, "nu", "nonnegative"),
        (1.0, 0.0, "sigma", "positive"),
        (float("nan"), 1.0, "nu", "nonnegative"),
    ],
)
def test_invalid_parameters_raise_clear_errors(nu, sigma, name, constraint):
    with pytest.raises(ValueError, match=f"(?i){name}.*{constraint}"):
        Rice(nu, sigma, validate_args=True)


def fit_and_average(model, guide, names):
    """The SVI recipe of the tests below: Trace_ELBO with 64 particles, Adam whose rate decays
    from 0.05 to 0.0012 over 3000 steps, and the mean of the last 500 iterates of each named
    parameter (averaging removes optimizer noise)."""
    schedule = lambda step: 0.05 * 0.998**step  # noqa: E731
    svi = SVI(model, guide, Adam(schedule), Trace_ELBO(num_particles=64))
    state = svi.init(jax.random.PRNGKey(0))

    def step(state, _):
        state, _ = svi.update(state)
        return state, svi.get_params(state)

    _, trace = jax.lax.scan(step, state, None, length=3000)
    return [float(trace[name][2500:].mean()) for name in names]


@pytest.mark.slow
def test_svi_recovers_a_rice_target():
    """A Rice guide fitted by Trace_ELBO to a Rice target (no data) recovers its parameters."""
    nu_true, sigma_true = 3.0, 0.8

    def model():
        numpyro.sample("z", Rice(nu_true, sigma_true))

    def guide():
        nu = numpyro.param("nu", 1.0, constraint=dist.constraints.positive)
        sigma = numpyro.param("sigma", 2.0, constraint=dist.constraints.positive)
        numpyro.sample("z", numpyro_implicit.Rice(nu, sigma))

    nu, sigma = fit_and_average(model, guide, ("nu", "sigma"))
    # Over 8 seeds this recipe ended within 0.008 of the target (standard deviations 0.005 and
    # 0.002): 0.02 is four standard deviations or more.
    assert abs(nu - nu_true) < 0.02 and abs(sigma - sigma_true) < 0.02, (nu, sigma)


# Prior N(0, 1) truncated to [0, inf), likelihood y ~ N(z, 0.5^2), y = 0.3: the posterior is
# N(0.24, 0.2) truncated to [0, inf), a bound that binds (loc/scale = 0.54).
TN_Y, TN_NOISE = 0.3, 0.5
TN_LOC = TN_Y / (1 + TN_NOISE**2)
TN_SCALE = (TN_NOISE**2 / (1 + TN_NOISE**2)) ** 0.5


@pytest.mark.slow
def test_svi_recovers_a_truncated_normal_posterior():
    """A TruncatedNormal(loc, scale, low=0) guide fitted by Trace_ELBO to a positive latent
    variable recovers the exact truncated-normal posterior."""

    def model():
        z = numpyro.sample("z", numpyro_implicit.TruncatedNormal(0.0, 1.0, low=0.0))
        numpyro.sample("y", dist.Normal(z, TN_NOISE), obs=TN_Y)

    def guide():
        loc = numpyro.param("loc", 1.0)
        scale = numpyro.param("scale", 1.0, constraint=dist.constraints.positive)
        numpyro.sample("z", numpyro_implicit.TruncatedNormal(loc, scale, low=0.0))

    loc, scale = fit_and_average(model, guide, ("loc", "scale"))
    # Over 6 seeds this recipe ended within 0.0054 of the target (standard deviations 0.0029 in
    # loc, 0.0023 in scale): 0.02 is about seven standard deviations.
    assert abs(loc - TN_LOC) < 0.02 and abs(scale - TN_SCALE) < 0.02, (loc, scale)


def test_truncated_normal_is_a_native_numpyro_distribution():
    d = numpyro_implicit.TruncatedNormal(jnp.array([0.0, 1.0]), 1.0, low=0.0, high=2.0)
    assert d.has_rsample and set(d.reparametrized_params) == {"loc", "scale", "low", "high"}
    key = jax.random.PRNGKey(0)
    assert d.sample(key, (4, 3)).shape == (4, 3, 2)
    assert d.expand((5, 2)).sample(key).shape == (5, 2)
    i = d.to_event(1)
    assert i.event_shape == (2,) and i.log_prob(i.sample(key)).shape == ()
    assert d.mask(jnp.array([True, False])).log_prob(jnp.ones(2))[1] == 0
    assert np.allclose(jax.jit(lambda d: d.mean)(d), d.mean)
    leaves, treedef = jax.tree_util.tree_flatten(d)
    assert isinstance(
        jax.tree_util.tree_unflatten(treedef, leaves), numpyro_implicit.TruncatedNormal
    )
    locs = jnp.array([-1.0, 0.5, 3.0])
    grads = jax.jit(
        jax.vmap(jax.grad(lambda m: numpyro_implicit.TruncatedNormal(m, 1.0, low=0.0).sample(key)))
    )(locs)
    assert grads.shape == (3,) and np.all(np.isfinite(grads))


def test_truncated_normal_check_grads():
    """cdf, log_prob and the quantile (the implicit gradient at fixed u) against numerical
    derivatives in all four parameters."""
    params = (
        jnp.array([0.8, 0.0]),
        jnp.array([0.5, 1.0]),
        jnp.array([0.0, 8.0]),
        jnp.array([1.0, 9.0]),
    )

    def make(m, s, lo, hi):
        return numpyro_implicit.TruncatedNormal(m, s, low=lo, high=hi)

    z, u = jnp.array([0.6, 8.2]), jnp.array([0.3, 0.7])
    # jitted: traced once, where eager evaluation would dispatch thousands of operations per call
    check_grads(jax.jit(lambda *p: make(*p).cdf(z)), params, order=1, modes=["rev"])
    check_grads(jax.jit(lambda *p: make(*p).log_prob(z)), params, order=1, modes=["rev"])
    icdf = jax.jit(lambda *p: make(*p[:4]).icdf(p[4]))
    check_grads(icdf, (*params, u), order=1, modes=["fwd", "rev"])


def test_truncated_normal_second_derivatives():
    """The Hessian along the quantile path z = icdf(u), in all five arguments, against central
    differences of the gradient, on moderate intervals (the plain path; the log-space path's
    second derivatives are checked in Pyro: here they cost minutes of compilation)."""

    def icdf_sum(p):
        loc, scale, low, high, u = p
        return numpyro_implicit.TruncatedNormal(loc, scale, low=low, high=high).icdf(u).sum()

    p = jnp.array([[0.8, 0.0], [0.5, 1.0], [0.0, -2.0], [1.0, 1.0], [0.3, 0.7]])
    hessian = jax.jit(jax.hessian(icdf_sum))(p).reshape(10, 10)
    grad, h = jax.jit(jax.grad(icdf_sum)), 1e-5
    steps = h * np.eye(10).reshape(10, *p.shape)
    fd = np.stack([(grad(p + e) - grad(p - e)).ravel() / (2 * h) for e in steps])
    # central differences err by about h^2 (third derivatives) + 1e-16 / h: 1e-9 here
    np.testing.assert_allclose(hessian, fd, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("base", ["StudentT", "Gamma"])
def test_second_derivatives_through_iterative_cdfs(base):
    """As in tests/test_pyro_host.py: the Hessian of truncated Gamma and Student t quantiles at
    fixed u in (shape, scale, low, high), forward over reverse, against central differences of
    the gradient. The Student t's lower bound is at its location, where t = 0: there the
    second derivatives in t were 0 until 2026-11-22."""
    u = jnp.array([0.1, 0.5, 0.97])

    def icdf_sum(p):
        shape, scale, low, high = p
        law = dist.StudentT(shape, 0.3, scale) if base == "StudentT" else dist.Gamma(shape, scale)
        return numpyro_implicit.TruncatedDistribution(law, low=low, high=high).icdf(u).sum()

    p = jnp.array([2.5, 1.3, 0.3, 4.0])
    hessian = jax.jit(jax.hessian(icdf_sum))(p)
    grad, h = jax.jit(jax.grad(icdf_sum)), 1e-5
    fd = np.stack([(grad(p + e) - grad(p - e)) / (2 * h) for e in h * np.eye(4)])
    # central differences err by about h^2 (third derivatives) + 1e-16 / h: 1e-9 here
    np.testing.assert_allclose(hessian, fd, atol=1e-7)


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


@pytest.mark.parametrize("weights", ["implicit", "score"])
def test_mixture_guide_fits_bimodal_target(weights):
    """The issue's protocol (64 draws per step, Adam 0.02) for 1000 steps from seed 0, with
    ScoreTrace_ELBO (the same as Trace_ELBO for weights="implicit"); the benchmark runs all
    3000 steps for 5 seeds (every fit ends below KL 0.01)."""
    target = dist.MixtureSameFamily(
        dist.Categorical(jnp.array([0.35, 0.65])),
        dist.Normal(jnp.array([-1.5, 1.0]), jnp.array([0.5, 0.7])),
    )

    def model():
        with numpyro.plate("draws", 64), numpyro.handlers.scale(scale=1 / 64):
            numpyro.sample("z", target)

    key_init, key_run = jax.random.split(jax.random.PRNGKey(0))
    init = jax.random.normal(key_init, (2,))

    def guide():
        logits = numpyro.param("logits", jnp.zeros(2))
        loc = numpyro.param("loc", init)
        scale = numpyro.param("scale", jnp.ones(2), constraint=dist.constraints.positive)
        mix = numpyro_implicit.MixtureSameFamily(
            dist.Categorical(logits=logits), dist.Normal(loc, scale), weights=weights
        )
        with numpyro.plate("draws", 64), numpyro.handlers.scale(scale=1 / 64):
            numpyro.sample("z", mix)

    svi = SVI(model, guide, Adam(0.02), numpyro_implicit.ScoreTrace_ELBO())
    result = svi.run(key_run, 1000, progress_bar=False)
    p = result.params
    w = np.asarray(jax.nn.softmax(p["logits"]))
    loc, scale = np.asarray(p["loc"]), np.asarray(p["scale"])
    assert _mixture_kl(w, loc, scale) < 0.01, (w, loc, scale)
    assert abs(w[np.argmin(loc)] - 0.35) < 0.05


def test_icdf_validates_a_probability_closed_over_in_jit():
    """A constant closed over inside jit is concrete: icdf checks it, where until 2026-11-22
    the staged comparison raised a TracerBoolConversionError."""
    laws = [
        numpyro_implicit.Rice(1.0, 1.0, validate_args=True),
        numpyro_implicit.TruncatedNormal(0.0, 1.0, low=-1.0, high=1.0, validate_args=True),
        numpyro_implicit.TruncatedDistribution(
            dist.Gamma(2.0, 1.0), low=0.5, high=3.0, validate_args=True
        ),
    ]
    good, bad = jnp.array([0.2, 0.9]), jnp.array([0.2, 1.5])
    for law in laws:
        assert np.all(np.isfinite(jax.jit(lambda law=law: law.icdf(good))()))
        with pytest.raises(ValueError, match=r"icdf: `value` must be a probability in \[0, 1\]"):
            jax.jit(lambda law=law: law.icdf(bad))()


@pytest.mark.parametrize("family", ["StudentT", "TruncatedDistribution"])
def test_mixture_draws_gather_nested_components(family):
    """A mixture draw makes the variates of the drawn component only, its parameters gathered,
    also for families whose pytree holds a distribution (a StudentT's chi-square, a
    truncation's base), which drew all K components until 2026-12-06; the draws follow the
    mixture's law (Kolmogorov-Smirnov against scipy, p > 1e-4)."""
    import scipy.stats

    from numpyro_implicit.mixture import _select_component

    logits = jnp.array([0.3, -0.2, 0.1])
    if family == "StudentT":
        component = dist.StudentT(jnp.array([2.5, 4.0, 9.0]), jnp.array([-3.0, 0.0, 4.0]), 0.8)
        laws = [scipy.stats.t(df, loc, 0.8) for df, loc in ((2.5, -3.0), (4.0, 0.0), (9.0, 4.0))]
    else:
        rates = jnp.array([2.0, 1.0, 0.5])
        component = numpyro_implicit.TruncatedDistribution(
            dist.Gamma(3.0, rates), low=0.5, high=jnp.array([4.0, 6.0, 12.0])
        )
        laws = [
            _Truncated(scipy.stats.gamma(3.0, scale=1 / rate), 0.5, high)
            for rate, high in ((2.0, 4.0), (1.0, 6.0), (0.5, 12.0))
        ]
    mix = numpyro_implicit.MixtureSameFamily(dist.Categorical(logits=logits), component)
    assert _select_component(component, jnp.array([0, 2]), False) is not None
    z = np.asarray(mix.sample(jax.random.PRNGKey(5), (4000,)), float)
    pi = np.asarray(jax.nn.softmax(logits), float)

    def cdf(x):
        return sum(p * law.cdf(x) for p, law in zip(pi, laws, strict=True))

    assert scipy.stats.kstest(z, cdf).pvalue > 1e-4


class _Truncated:
    """The law of a scipy distribution truncated to [low, high] (its CDF)."""

    def __init__(self, base, low, high):
        self.base, self.low, self.high = base, low, high

    def cdf(self, x):
        lo, hi = self.base.cdf(self.low), self.base.cdf(self.high)
        return np.clip((self.base.cdf(x) - lo) / (hi - lo), 0.0, 1.0)
