"""Benchmarks of ``MixtureSameFamily``: speed, scaling, gradient variance, weight estimators.

Both hosts are measured in the same process: PyTorch (``pyro_implicit``, on the requested
device) and JAX (``numpyro_implicit``, on JAX's default backend), in float32.

* :func:`speed`: wall time of one draw of ``n`` samples of a mixture of ``K = 8`` diagonal
  normals in ``D = 64`` dimensions plus the gradient of the mean of ``|z|^2`` with respect to
  all parameters (logits, locations, scales), against a diagonal-normal ``rsample`` of the same
  size (the floor) and, on JAX, TensorFlow Probability's
  ``MixtureSameFamily(reparameterize=True)`` (``tfp-nightly``, skipped when absent). JAX
  functions are ``jax.jit(jax.grad(...))``, run with 64-bit types off (NumPyro's default; see
  :func:`timing.jax_types`); each call waits for its result. After two warm-up calls each, the
  implementations take turns, ``repeats`` rounds of one untimed and ``BLOCK`` timed calls
  each, and the median timed call is reported. The untimed call is there because each of
  TFP's calls, which build a D x D Jacobian per draw, touches about 1.6 GB of fresh memory
  (420,000 page faults), and the calls that follow it run slower, now and then ten times
  slower: without it (and with 64-bit types on), this package's JAX call, which always
  follows TFP's, took 15-17 ms against 12-14 ms (9.6-11 ms timed alone), and TFP / this was
  98-125x against 121-154x in the same three runs.
* :func:`scaling`: the same measurement for ``D`` from 4 to 1024 (``n = 512``), for the plot
  (TFP up to ``D = 64``: beyond, its dense per-draw Jacobian takes tens of seconds per call).
* :func:`gradient_variance`: per-draw gradients of ``|z|^2`` with respect to the locations and
  scales of a ``K = 3``, ``D = 4`` mixture, from this package and from Pyro's
  ``MixtureOfDiagNormals`` (a different pathwise estimator of the same gradient), in float64:
  the summed variances and their ratio; the means must agree within the standard error.
* :func:`weight_estimators`: a two-component guide fitted with ``Trace_ELBO`` (Pyro) or
  ``ScoreTrace_ELBO`` (NumPyro; the same as ``Trace_ELBO`` for ``weights="implicit"``) to
  ``0.35 N(-1.5, 0.5) + 0.65 N(1.0, 0.7)`` (separated) and ``0.35 N(-0.5, 1) + 0.65 N(0.8, 0.8)``
  (overlapping), 64 draws per step, Adam 0.02, 3000 steps, 5 seeds, for each weight estimator
  in each host: final KL(q || p) (numerical integration), error of the weight of the left
  component, and the first step (checked every 50) from which the KL stays below 0.01. With
  ``--quick``: seed 0 and the separated target only.

A host whose adapter cannot be imported is skipped with a note on stderr.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import torch
from timing import median_times

N, N_QUICK = 2048, 512  # draws per speed measurement; --quick also fits one seed, one target
K, D = 8, 64
SCALING_D = (4, 16, 64, 256, 1024)
SCALING_N = 512
BLOCK = 3  # timed calls in a row per implementation and round (timing.median_times)
SETTLE = 1  # untimed calls before them
SEEDS = (0, 1, 2, 3, 4)
TARGETS = {
    "separated": ((0.35, 0.65), (-1.5, 1.0), (0.5, 0.7)),
    "overlapping": ((0.35, 0.65), (-0.5, 0.8), (1.0, 0.8)),
}
STEPS, DRAWS, LR, CHECK_EVERY = 3000, 64, 0.02, 50
GRID = np.linspace(-12, 12, 24001)


def _mixture_params(k, d, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=k).astype(dtype),
        (2 * rng.normal(size=(k, d))).astype(dtype),
        (0.5 + rng.random((k, d))).astype(dtype),
    )


def _torch_steps(k, d, n, device):
    import pyro.distributions as dist

    from pyro_implicit import MixtureSameFamily

    params = [torch.tensor(p, device=device, requires_grad=True) for p in _mixture_params(k, d)]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def implicit():
        logits, loc, scale = params
        mix = MixtureSameFamily(
            dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1)
        )
        z = mix.rsample((n,))
        torch.autograd.grad(z.pow(2).sum(-1).mean(), params)
        sync()

    def diagonal():
        loc, scale = params[1][0], params[2][0]
        z = dist.Normal(loc, scale).rsample((n,))
        torch.autograd.grad(z.pow(2).sum(-1).mean(), (loc, scale))
        sync()

    return {"implicit": implicit, "diagonal normal": diagonal}


def _jax_steps(k, d, n):
    import numpyro.distributions as dist

    from numpyro_implicit import MixtureSameFamily

    params = tuple(jnp.asarray(p) for p in _mixture_params(k, d))
    key = jax.random.PRNGKey(0)

    def implicit_loss(params):
        logits, loc, scale = params
        mix = MixtureSameFamily(
            dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1)
        )
        return jnp.mean(jnp.sum(mix.sample(key, (n,)) ** 2, -1))

    def diagonal_loss(params):
        z = dist.Normal(params[1][0], params[2][0]).sample(key, (n,))
        return jnp.mean(jnp.sum(z**2, -1))

    losses = {"implicit": implicit_loss, "diagonal normal": diagonal_loss}
    try:
        from tensorflow_probability.substrates import jax as tfp

        tfd = tfp.distributions

        def tfp_loss(params):
            logits, loc, scale = params
            mix = tfd.MixtureSameFamily(
                tfd.Categorical(logits=logits),
                tfd.Independent(tfd.Normal(loc, scale), 1),
                reparameterize=True,
            )
            return jnp.mean(jnp.sum(mix.sample(n, seed=key) ** 2, -1))

        losses["TFP"] = tfp_loss
    except ImportError:
        print("tensorflow_probability not installed: TFP skipped", file=sys.stderr)
    steps = {}
    for name, loss in losses.items():
        grad = jax.jit(jax.grad(loss))
        steps[name] = lambda grad=grad: jax.block_until_ready(grad(params))
    return steps


def speed(n, device, repeats=7):
    """Sample + gradient of mean |z|^2, K = 8, D = 64: time per call (ms) and ratios."""
    rows = []
    for host, steps in (
        ("pyro", lambda: _torch_steps(K, D, n, device)),
        ("numpyro", lambda: _jax_steps(K, D, n)),
    ):
        times = median_times(steps(), repeats, BLOCK, SETTLE)
        for name, t in times.items():
            row = {"host": host, "estimator": name, "K": K, "D": D, "n": n, "ms": 1e3 * t}
            row["x diagonal normal"] = t / times["diagonal normal"]
            row["TFP / this"] = times["TFP"] / t if "TFP" in times else "-"
            rows.append(row)
    return rows


def scaling(n, device, repeats=3):
    """Scaling in D (K = 8, n = 512): time per sample + gradient (ms)."""
    rows = []
    for d in SCALING_D:
        t_torch = median_times(_torch_steps(K, d, SCALING_N, device), repeats, BLOCK, SETTLE)
        steps = _jax_steps(K, d, SCALING_N)
        if d > 64:  # TFP's dense D x D Jacobian per draw: tens of seconds per call beyond
            steps.pop("TFP", None)
        t_jax = median_times(steps, repeats, BLOCK, SETTLE)
        rows.append(
            {
                "D": d,
                "pyro ms": 1e3 * t_torch["implicit"],
                "numpyro ms": 1e3 * t_jax["implicit"],
                "numpyro TFP ms": 1e3 * t_jax["TFP"] if "TFP" in t_jax else "-",
                "pyro diag ms": 1e3 * t_torch["diagonal normal"],
                "numpyro diag ms": 1e3 * t_jax["diagonal normal"],
            }
        )
    return rows


def gradient_variance(n, device):
    """Per-draw gradient variance of |z|^2 against Pyro's MixtureOfDiagNormals (K=3, D=4)."""
    import pyro.distributions as dist

    from pyro_implicit import MixtureSameFamily

    logits, loc, scale = (torch.tensor(p, dtype=torch.float64) for p in _mixture_params(3, 4, 1))
    m = 100_000
    rows = []
    for name in ("implicit (this package)", "MixtureOfDiagNormals"):
        torch.manual_seed(0)
        locs = loc.expand(m, 3, 4).clone().requires_grad_()
        scales = scale.expand(m, 3, 4).clone().requires_grad_()
        if name.startswith("implicit"):
            mix = MixtureSameFamily(
                dist.Categorical(logits=logits.expand(m, 3)), dist.Normal(locs, scales).to_event(1)
            )
        else:
            mix = dist.MixtureOfDiagNormals(locs, scales, logits.expand(m, 3))
        z = mix.rsample()
        g_loc, g_scale = torch.autograd.grad(z.pow(2).sum(), (locs, scales))
        g = torch.cat([g_loc.reshape(m, -1), g_scale.reshape(m, -1)], -1).numpy()
        rows.append(
            {
                "estimator": name,
                "sum of variances": float(g.var(0).sum()),
                "mean (first loc)": float(g[:, 0].mean()),
                "s.e.": float(g[:, 0].std() / np.sqrt(m)),
            }
        )
    ratio = rows[1]["sum of variances"] / rows[0]["sum of variances"]
    for row in rows:
        row["MixtureOfDiagNormals / this"] = ratio
    return rows


# ---- weight estimators: SVI fits of a two-component guide ----------------------------------


def _kl(weights, locs, scales, target):
    """KL(q || p) on a fine grid (both densities are far below 1e-30 at its ends)."""
    t_w, t_loc, t_scale = (np.asarray(x) for x in target)

    def log_density(w, loc, scale):
        lp = scipy.stats.norm.logpdf(GRID[:, None], np.asarray(loc), np.asarray(scale))
        return scipy.special.logsumexp(lp + np.log(np.asarray(w)), axis=1)

    log_q, log_p = log_density(weights, locs, scales), log_density(t_w, t_loc, t_scale)
    return float(np.trapezoid(np.exp(log_q) * (log_q - log_p), GRID))


def _summary(weights, locs, target):
    left = int(np.argmin(locs))
    return abs(float(weights[left]) - target[0][0])


def _fit_pyro(estimator, seed, target):
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import Adam

    from pyro_implicit import MixtureSameFamily

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    t_w, t_loc, t_scale = (torch.tensor(x) for x in target)
    target_dist = dist.MixtureSameFamily(dist.Categorical(t_w), dist.Normal(t_loc, t_scale))
    init_loc = torch.randn(2)

    def model():
        with pyro.plate("draws", DRAWS), pyro.poutine.scale(scale=1 / DRAWS):
            pyro.sample("z", target_dist)

    def guide():
        logits = pyro.param("logits", torch.zeros(2))
        loc = pyro.param("loc", init_loc)
        scale = pyro.param("scale", torch.ones(2), constraint=dist.constraints.positive)
        mix = MixtureSameFamily(
            dist.Categorical(logits=logits), dist.Normal(loc, scale), weights=estimator
        )
        with pyro.plate("draws", DRAWS), pyro.poutine.scale(scale=1 / DRAWS):
            pyro.sample("z", mix)

    svi = SVI(model, guide, Adam({"lr": LR}), Trace_ELBO())
    kls = []
    for step in range(1, STEPS + 1):
        svi.step()
        if step % CHECK_EVERY == 0:
            store = pyro.get_param_store()
            w = torch.softmax(store["logits"], -1).detach().numpy()
            loc, scale = store["loc"].detach().numpy(), store["scale"].detach().numpy()
            kls.append(_kl(w, loc, scale, target))
    return kls, w, loc


def _fit_numpyro(estimator, seed, target):
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI
    from numpyro.optim import Adam

    from numpyro_implicit import MixtureSameFamily, ScoreTrace_ELBO

    t_w, t_loc, t_scale = (jnp.asarray(x, jnp.float32) for x in target)
    target_dist = dist.MixtureSameFamily(dist.Categorical(t_w), dist.Normal(t_loc, t_scale))
    key_init, key_run = jax.random.split(jax.random.PRNGKey(seed))
    init_loc = jax.random.normal(key_init, (2,), jnp.float32)

    def model():
        with numpyro.plate("draws", DRAWS), numpyro.handlers.scale(scale=1 / DRAWS):
            numpyro.sample("z", target_dist)

    def guide():
        logits = numpyro.param("logits", jnp.zeros(2, jnp.float32))
        loc = numpyro.param("loc", init_loc)
        scale = numpyro.param(
            "scale", jnp.ones(2, jnp.float32), constraint=dist.constraints.positive
        )
        mix = MixtureSameFamily(
            dist.Categorical(logits=logits), dist.Normal(loc, scale), weights=estimator
        )
        with numpyro.plate("draws", DRAWS), numpyro.handlers.scale(scale=1 / DRAWS):
            numpyro.sample("z", mix)

    svi = SVI(model, guide, Adam(LR), ScoreTrace_ELBO())
    state = svi.init(key_run)

    def chunk(state, _):
        def one(state, _):
            state, _ = svi.update(state)
            return state, None

        state, _ = jax.lax.scan(one, state, None, length=CHECK_EVERY)
        return state, svi.get_params(state)

    state, trajectory = jax.jit(
        lambda s: jax.lax.scan(chunk, s, None, length=STEPS // CHECK_EVERY)
    )(state)
    kls = []
    for i in range(STEPS // CHECK_EVERY):
        p = jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), trajectory)
        w = np.exp(p["logits"] - scipy.special.logsumexp(p["logits"]))
        kls.append(_kl(w, p["loc"], p["scale"], target))
    return kls, w, p["loc"]


def weight_estimators(n, device, seeds=None, targets=None, hosts=("pyro", "numpyro")):
    """Weight estimators: 5-seed SVI fits of a two-component guide (3000 steps, 64 draws)."""
    quick = n == N_QUICK
    seeds = seeds or ((0,) if quick else SEEDS)
    targets = targets or (("separated",) if quick else tuple(TARGETS))
    fits = {"pyro": _fit_pyro, "numpyro": _fit_numpyro}
    rows = []
    for target_name in targets:
        target = TARGETS[target_name]
        for host in hosts:
            for estimator in ("implicit", "score"):
                kls, errors, reached = [], [], []
                for seed in seeds:
                    trace, w, loc = fits[host](estimator, seed, target)
                    kls.append(trace[-1])
                    errors.append(_summary(w, loc, target))
                    below = np.asarray(trace) < 0.01
                    stays = [i for i in range(len(trace)) if below[i:].all()]
                    reached.append((stays[0] + 1) * CHECK_EVERY if stays else None)
                rows.append(
                    {
                        "target": target_name,
                        "host": host,
                        "weights": estimator,
                        "final KL per seed": " ".join(f"{k:.4f}" for k in kls),
                        "KL < 0.01": f"{sum(k < 0.01 for k in kls)}/{len(kls)}",
                        "weight error per seed": " ".join(f"{e:.3f}" for e in errors),
                        "steps to KL < 0.01": " ".join(str(r) if r else "-" for r in reached),
                    }
                )
                print(rows[-1], file=sys.stderr, flush=True)
    return rows


BENCHMARKS = [speed, scaling, gradient_variance, weight_estimators]


def plot(tables, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = tables["scaling"]
    d = [r["D"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("pyro ms", "numpyro ms", "numpyro TFP ms", "pyro diag ms", "numpyro diag ms"):
        pts = [(x, r[key]) for x, r in zip(d, rows, strict=True) if r[key] != "-"]
        if pts:
            ax.loglog(*zip(*pts, strict=True), "o-", label=key.replace(" ms", ""))
    ref = np.array(d, dtype=float)
    ax.loglog(ref, rows[0]["numpyro ms"] * ref / ref[0], "k:", label="linear in D")
    ax.set_xlabel("D (K = 8, n = 512)")
    ax.set_ylabel("sample + gradient (ms)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
