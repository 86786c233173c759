"""Quick start: recover signal amplitudes from noisy magnitude data, in Pyro and in NumPyro.

A magnitude image (MRI, radar) measures :math:`y = |A + \\sigma(\\epsilon_1 + i\\epsilon_2)|` for
a true amplitude :math:`A \\ge 0`: Rice distributed. The model has one latent amplitude per voxel,
a few repeated measurements of each, and an unknown noise level:

.. math::
    A_v \\sim \\mathrm{Gamma}(2, 1), \\qquad y_{vr} \\mid A_v \\sim \\mathrm{Rice}(A_v, \\sigma).

The guide is a Rice distribution per voxel, fitted by SVI with ``Trace_ELBO``: its samples carry
implicit reparameterization gradients. Both hosts fit the same simulated data; the script prints
the ELBO as it goes, the fitted amplitudes and noise level against the truth, and saves a plot.

Run: ``python examples/quickstart.py`` (under a minute on a 2-core CPU).
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


def plot(fits, amplitude, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
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
    parser.add_argument("--plot", default=os.path.join(os.path.dirname(__file__), "quickstart.png"))
    args = parser.parse_args()

    amplitude, y = simulate()
    fits = {}
    for name, fit in (("Pyro", fit_pyro), ("NumPyro", fit_numpyro)):
        start = time.perf_counter()
        fits[name] = fit(y, args.steps)
        report(name, fits[name], amplitude, time.perf_counter() - start)
    plot(fits, amplitude, args.plot)
    print(f"\nplot saved to {args.plot}")


if __name__ == "__main__":
    main()
