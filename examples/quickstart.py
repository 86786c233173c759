"""Quick start: recover signal amplitudes from noisy magnitude data, in Pyro and in NumPyro.

A magnitude image (MRI, radar) measures :math:`y = |A + \\sigma(\\epsilon_1 + i\\epsilon_2)|` for
a true amplitude :math:`A \\ge 0`: Rice distributed. The model has one latent amplitude per voxel,
a few repeated measurements of each, and an unknown noise level:

.. math::
    A_v \\sim \\mathrm{Gamma}(2, 1), \\qquad y_{vr} \\mid A_v \\sim \\mathrm{Rice}(A_v, \\sigma).

The guide is a Rice distribution per voxel, fitted by SVI with ``Trace_ELBO``: its samples carry
implicit reparameterization gradients. Both hosts fit the same simulated data; the script prints
the ELBO as it goes, the fitted amplitudes and noise level against the truth, and saves a plot.

A second, one-line model has a bimodal posterior: a signal :math:`s \\sim \\mathcal N(0, 2^2)`
observed only through its magnitude, :math:`y_r \\sim \\mathcal N(|s|, 0.5^2)`, cannot tell
:math:`s` from :math:`-s`. A two-component ``MixtureSameFamily`` guide (reparameterized by this
package) finds both modes; the script compares it with the exact posterior on a grid.

Run: ``python examples/quickstart.py`` (under a minute on a 2-core CPU); ``--weights score``
fits the mixture guide with the score-function estimator for its weights, ``--mixture-seed``
draws other random numbers for that fit.
"""

import argparse
import os
import time

import numpy as np

NUM_VOXELS, NUM_REPEATS, NOISE = 24, 4, 0.6


def simulate(seed=0):
    rng = np.random.default_rng(seed)
    amplitude = rng.gamma(2.0, 1.0, NUM_VOXELS)
    noise = NOISE * rng.standard_normal((2, NUM_REPEATS, NUM_VOXELS))
    y = np.hypot(amplitude + noise[0], noise[1])
    return amplitude, y


SIGN_PRIOR, SIGN_NOISE, SIGN_TRUTH, SIGN_REPEATS = 2.0, 0.5, 1.5, 5


def simulate_sign(seed=1):
    rng = np.random.default_rng(seed)
    return abs(SIGN_TRUTH) + SIGN_NOISE * rng.standard_normal(SIGN_REPEATS)


def exact_sign_posterior(y, grid):
    """The posterior density of s on a grid, by normalizing prior times likelihood."""
    log_p = -0.5 * (grid / SIGN_PRIOR) ** 2
    log_p = log_p - 0.5 * (((y[:, None] - np.abs(grid)) / SIGN_NOISE) ** 2).sum(0)
    p = np.exp(log_p - log_p.max())
    return p / (p.sum() * (grid[1] - grid[0]))


def fit_mixture_pyro(y, steps, seed=0, weights="implicit"):
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam

    import pyro_implicit

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    y = torch.as_tensor(y, dtype=torch.float32)

    def model(y):
        s = pyro.sample("s", dist.Normal(0.0, SIGN_PRIOR))
        with pyro.plate("repeats", len(y)):
            pyro.sample("y", dist.Normal(s.abs(), SIGN_NOISE), obs=y)

    def guide(y):
        logits = pyro.param("logits", torch.zeros(2))
        locs = pyro.param("locs", torch.tensor([-0.5, 0.5]))
        scales = pyro.param("scales", torch.ones(2), constraint=dist.constraints.positive)
        mixture = dist.Categorical(logits=logits)
        component = dist.Normal(locs, scales)
        pyro.sample("s", pyro_implicit.MixtureSameFamily(mixture, component, weights=weights))

    svi = SVI(
        model,
        guide,
        Adam({"lr": 0.02}),
        Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1),
    )
    losses = [svi.step(y) for _ in range(steps)]
    names = ("logits", "locs", "scales")
    return {"elbo": -np.array(losses)} | {k: pyro.param(k).detach().numpy() for k in names}


def fit_mixture_numpyro(y, steps, seed=0, weights="implicit"):
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import Adam

    import numpyro_implicit

    y = jnp.asarray(y, dtype=jnp.float32)

    def model(y):
        s = numpyro.sample("s", dist.Normal(0.0, SIGN_PRIOR))
        with numpyro.plate("repeats", len(y)):
            numpyro.sample("y", dist.Normal(jnp.abs(s), SIGN_NOISE), obs=y)

    def guide(y):
        logits = numpyro.param("logits", jnp.zeros(2))
        locs = numpyro.param("locs", jnp.array([-0.5, 0.5]))
        scales = numpyro.param("scales", jnp.ones(2), constraint=dist.constraints.positive)
        mixture = dist.Categorical(logits=logits)
        component = dist.Normal(locs, scales)
        numpyro.sample("s", numpyro_implicit.MixtureSameFamily(mixture, component, weights=weights))

    # weights="score" needs the score-function term, which NumPyro's Trace_ELBO leaves out
    elbo = numpyro_implicit.ScoreTrace_ELBO if weights == "score" else Trace_ELBO
    svi = SVI(model, guide, Adam(0.02), elbo(num_particles=16))
    result = svi.run(jax.random.PRNGKey(seed), steps, y, progress_bar=False)
    names = ("logits", "locs", "scales")
    return {"elbo": -np.asarray(result.losses)} | {k: np.asarray(result.params[k]) for k in names}


def report_mixture(name, fit, y):
    grid = np.linspace(-6, 6, 4001)
    exact = exact_sign_posterior(y, grid)
    right = grid > 0  # by symmetry each mode holds half the mass
    mode_mean = (grid[right] * exact[right]).sum() / exact[right].sum()
    mode_sd = np.sqrt(((grid[right] - mode_mean) ** 2 * exact[right]).sum() / exact[right].sum())
    weights = np.exp(fit["logits"] - np.logaddexp.reduce(fit["logits"]))
    order = np.argsort(fit["locs"])
    print(f"\n{name}, mixture guide for the sign-ambiguous signal (ELBO {fit['elbo'][-1]:.2f}):")
    print(f"  exact posterior: modes at +-{mode_mean:.3f} (sd {mode_sd:.3f}), weights 0.5 / 0.5")
    locs, scales = fit["locs"][order], fit["scales"][order]
    print(
        f"  fitted guide:    locs {locs[0]:.3f}, {locs[1]:.3f} (sd {scales[0]:.3f}, "
        f"{scales[1]:.3f}), weights {weights[order][0]:.2f} / {weights[order][1]:.2f}"
    )


def fit_pyro(y, steps, seed=0):
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam

    import pyro_implicit

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    y = torch.as_tensor(y, dtype=torch.float32)
    positive = dist.constraints.positive

    def model(y):
        noise = pyro.param("noise", torch.tensor(1.0), constraint=positive)
        with pyro.plate("voxels", NUM_VOXELS):
            amplitude = pyro.sample("A", dist.Gamma(2.0, 1.0))
            with pyro.plate("repeats", NUM_REPEATS, dim=-2):
                pyro.sample("y", pyro_implicit.Rice(amplitude, noise), obs=y)

    def guide(y):
        nu = pyro.param("nu", y.mean(0), constraint=positive)
        sigma = pyro.param("sigma", torch.full((NUM_VOXELS,), 0.5), constraint=positive)
        with pyro.plate("voxels", NUM_VOXELS):
            pyro.sample("A", pyro_implicit.Rice(nu, sigma))

    svi = SVI(
        model,
        guide,
        Adam({"lr": 0.02}),
        Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=2),
    )
    losses = [svi.step(y) for _ in range(steps)]
    posterior = pyro_implicit.Rice(pyro.param("nu"), pyro.param("sigma"))
    return {
        "elbo": -np.array(losses),
        "mean": posterior.mean.detach().numpy(),
        "std": posterior.stddev.detach().numpy(),
        "noise": pyro.param("noise").item(),
    }


def fit_numpyro(y, steps, seed=0):
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import Adam

    import numpyro_implicit

    y = jnp.asarray(y, dtype=jnp.float32)
    positive = dist.constraints.positive

    def model(y):
        noise = numpyro.param("noise", jnp.array(1.0), constraint=positive)
        with numpyro.plate("voxels", NUM_VOXELS):
            amplitude = numpyro.sample("A", dist.Gamma(2.0, 1.0))
            with numpyro.plate("repeats", NUM_REPEATS, dim=-2):
                numpyro.sample("y", numpyro_implicit.Rice(amplitude, noise), obs=y)

    def guide(y):
        nu = numpyro.param("nu", y.mean(0), constraint=positive)
        sigma = numpyro.param("sigma", jnp.full((NUM_VOXELS,), 0.5), constraint=positive)
        with numpyro.plate("voxels", NUM_VOXELS):
            numpyro.sample("A", numpyro_implicit.Rice(nu, sigma))

    svi = SVI(model, guide, Adam(0.02), Trace_ELBO(num_particles=8))
    result = svi.run(jax.random.PRNGKey(seed), steps, y, progress_bar=False)
    params = result.params
    posterior = numpyro_implicit.Rice(params["nu"], params["sigma"])
    return {
        "elbo": -np.asarray(result.losses),
        "mean": np.asarray(posterior.mean),
        "std": np.sqrt(np.asarray(posterior.variance)),
        "noise": float(params["noise"]),
    }


def report(name, fit, amplitude, seconds):
    elbo = fit["elbo"]
    marks = np.linspace(0, len(elbo) - 1, 6).astype(int)
    print(f"\n{name}: {seconds:.1f} s")
    print("  ELBO: " + "  ".join(f"step {i}: {elbo[i]:.1f}" for i in marks))
    rmse = np.sqrt(np.mean((fit["mean"] - amplitude) ** 2))
    covered = np.mean(np.abs(fit["mean"] - amplitude) < 2 * fit["std"])
    print(f"  noise level: fitted {fit['noise']:.3f}, true {NOISE}")
    print(f"  amplitudes: RMSE of posterior means {rmse:.3f}; truth within 2 sd: {covered:.0%}")
    print("  voxel  true   posterior mean +- sd")
    for v in range(4):
        print(f"  {v:5d}  {amplitude[v]:.3f}  {fit['mean'][v]:.3f} +- {fit['std'][v]:.3f}")


def plot(fits, amplitude, mixtures, y_sign, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scipy.stats

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    grid = np.linspace(-5, 5, 1001)
    ax3.plot(grid, exact_sign_posterior(y_sign, grid), "k", lw=2, label="exact posterior")
    for name, fit in mixtures.items():
        weights = np.exp(fit["logits"] - np.logaddexp.reduce(fit["logits"]))
        density = sum(
            w * scipy.stats.norm.pdf(grid, m, s)
            for w, m, s in zip(weights, fit["locs"], fit["scales"], strict=True)
        )
        ax3.plot(grid, density, "--", label=f"{name} mixture guide")
    ax3.set(xlabel="s", ylabel="density", title="Sign-ambiguous signal: mixture guide")
    ax3.legend()
    for name, fit in fits.items():
        ax1.plot(fit["elbo"], label=name, alpha=0.8)
        ax2.errorbar(amplitude, fit["mean"], yerr=fit["std"], fmt="o", label=name, alpha=0.7)
    top = max(amplitude.max(), max(f["mean"].max() for f in fits.values())) * 1.1
    ax1.set(xlabel="step", ylabel="ELBO", title="SVI with Trace_ELBO, Rice guide")
    ax1.set_ylim(np.percentile(np.concatenate([f["elbo"] for f in fits.values()]), 2), None)
    ax2.plot([0, top], [0, top], "k--", lw=1)
    ax2.set(xlabel="true amplitude", ylabel="posterior mean +- sd", title="Recovered amplitudes")
    for ax in (ax1, ax2):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    smoke = "CI" in os.environ
    parser.add_argument("--steps", type=int, default=200 if smoke else 1500)
    parser.add_argument("--mixture-steps", type=int, default=200 if smoke else 1500)
    parser.add_argument("--mixture-seed", type=int, default=0)
    parser.add_argument(
        "--weights",
        choices=("implicit", "score"),
        default="implicit",
        help="the mixture guide's gradient estimator for its weights",
    )
    parser.add_argument("--plot", default=os.path.join(os.path.dirname(__file__), "quickstart.png"))
    args = parser.parse_args()

    amplitude, y = simulate()
    fits = {}
    for name, fit in (("Pyro", fit_pyro), ("NumPyro", fit_numpyro)):
        start = time.perf_counter()
        fits[name] = fit(y, args.steps)
        report(name, fits[name], amplitude, time.perf_counter() - start)
    y_sign, mixtures = simulate_sign(), {}
    for name, fit in (("Pyro", fit_mixture_pyro), ("NumPyro", fit_mixture_numpyro)):
        mixtures[name] = fit(y_sign, args.mixture_steps, args.mixture_seed, args.weights)
        report_mixture(name, mixtures[name], y_sign)
    plot(fits, amplitude, mixtures, y_sign, args.plot)
    print(f"\nplot saved to {args.plot}")


if __name__ == "__main__":
    main()
