"""Benchmarks of ``Rice``: implicit reparameterization against the polar construction.

The baseline is the exact construction ``z = |nu + sigma*e1 + i*sigma*e2|`` = ``hypot(nu +
sigma*e1, sigma*e2)`` of two standard normals, differentiated by ordinary autodiff. Both hosts
are measured in the same process: PyTorch (``pyro_implicit``, on the requested device) and JAX
(``numpyro_implicit``, on JAX's default backend).

* :func:`speed`: wall time of one draw of ``n`` samples plus the gradient of ``z.sum()`` with
  respect to scalar ``nu`` and ``sigma``. JAX functions are ``jax.jit(jax.value_and_grad(...))``.
  Each step waits for its result (``block_until_ready``, ``torch.cuda.synchronize``). After two
  warm-up calls each, the implementations run alternately ``repeats`` times, so that machine
  noise hits both alike, and the median is reported.
* :func:`gradient_variance`: per-draw pathwise gradients ``dz/dnu`` and ``dz/dsigma`` (``nu``
  and ``sigma`` broadcast to one element per draw, so the gradient of the sum is per draw), in
  float64, at ``sigma = 1``. Reports their variances under both estimators and the ratio
  polar/implicit. Both are unbiased for ``dE[z]/dphi``, so their means must agree: a warning is
  printed when they differ by more than 5 standard errors.

A host whose adapter cannot be imported is skipped with a note on stderr.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch
from timing import jax_types, median_times

N, N_QUICK = 1_000_000, 100_000  # draws per measurement; the runner's --quick uses N_QUICK
DTYPES = ("float32", "float64")
RATIOS = (0.5, 1.0, 3.0)  # nu / sigma, with sigma = 1
MEAN_Z_LIMIT = 5.0


# ---- samplers: implicit (the package) and polar (the explicit construction) ----------------


def _torch_samplers():
    """``{name: sample(nu, sigma, sample_shape)}`` for PyTorch."""
    from pyro_implicit import Rice

    def implicit(nu, sigma, sample_shape):
        return Rice(nu, sigma).rsample(sample_shape)

    def polar(nu, sigma, sample_shape):
        shape = (*sample_shape, *torch.broadcast_shapes(nu.shape, sigma.shape))
        e = torch.randn((2, *shape), dtype=nu.dtype, device=nu.device)
        return torch.hypot(nu + sigma * e[0], sigma * e[1])

    return {"implicit": implicit, "polar": polar}


def _jax_samplers():
    """``{name: sample(key, nu, sigma, sample_shape)}`` for JAX."""
    from numpyro_implicit import Rice

    def implicit(key, nu, sigma, sample_shape):
        return Rice(nu, sigma).sample(key, sample_shape)

    def polar(key, nu, sigma, sample_shape):
        shape = (*sample_shape, *jnp.broadcast_shapes(jnp.shape(nu), jnp.shape(sigma)))
        e = jax.random.normal(key, (2, *shape), dtype=jnp.result_type(nu))
        return jnp.hypot(nu + sigma * e[0], sigma * e[1])

    return {"implicit": implicit, "polar": polar}


# ---- per host: timed steps and per-draw gradients ------------------------------------------


def _torch_steps(dtype, n, device):
    """One callable per implementation: draw n samples, take d(sum z)/d(nu, sigma), wait."""
    nu, sigma = (
        torch.tensor(1.0, dtype=getattr(torch, dtype), device=device, requires_grad=True)
        for _ in range(2)
    )
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None

    def step(sample):
        def run():
            torch.autograd.grad(sample(nu, sigma, (n,)).sum(), (nu, sigma))
            sync()

        return run

    return {name: step(sample) for name, sample in _torch_samplers().items()}


def _jax_steps(dtype, n, device):
    params = (jnp.asarray(1.0, dtype), jnp.asarray(1.0, dtype))
    key = jax.random.key(0)

    def step(sample):
        loss = jax.jit(jax.value_and_grad(lambda p, k: sample(k, *p, (n,)).sum()))
        return lambda: jax.block_until_ready(loss(params, key))

    return {name: step(sample) for name, sample in _jax_samplers().items()}


def _torch_draw_grads(ratio, n, device, seed):
    """``{name: (dz/dnu, dz/dsigma)}``, per draw, float64 NumPy arrays."""
    out = {}
    for i, (name, sample) in enumerate(_torch_samplers().items()):
        torch.manual_seed(seed + i)
        nu = torch.full((n,), ratio, dtype=torch.float64, device=device, requires_grad=True)
        sigma = torch.ones(n, dtype=torch.float64, device=device, requires_grad=True)
        grads = torch.autograd.grad(sample(nu, sigma, ()).sum(), (nu, sigma))
        out[name] = tuple(g.cpu().numpy() for g in grads)
    return out


def _jax_draw_grads(ratio, n, device, seed):
    """As :func:`_torch_draw_grads`; JAX runs on its default backend whatever ``device``."""

    def draw_grads(sample, key):
        nu, sigma = jnp.full(n, ratio, jnp.float64), jnp.ones(n, jnp.float64)
        grad = jax.jit(jax.grad(lambda nu, sigma: sample(key, nu, sigma, ()).sum(), (0, 1)))
        return tuple(np.asarray(g) for g in grad(nu, sigma))

    samplers = _jax_samplers().items()
    with jax_types("float64"):
        return {
            name: draw_grads(s, jax.random.key(seed + i)) for i, (name, s) in enumerate(samplers)
        }


HOSTS = {"torch": (_torch_steps, _torch_draw_grads), "jax": (_jax_steps, _jax_draw_grads)}


def _host_label(host, device):
    return f"{host} ({device if host == 'torch' else jax.default_backend()})"


def _available(host):
    try:
        (_torch_samplers if host == "torch" else _jax_samplers)()
    except ImportError as error:
        print(f"note: skipping host {host}: {error}", file=sys.stderr)
        return False
    return True


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---- the benchmarks ------------------------------------------------------------------------


def speed(n=N, device=None, repeats=7):
    """Speed: rsample + gradient of z.sum() in (nu, sigma) = (1, 1), median wall time."""
    device = device or default_device()
    rows = []
    for host, (make_steps, _) in HOSTS.items():
        if not _available(host):
            continue
        for dtype in DTYPES:
            with jax_types(dtype):  # harmless for torch
                t = median_times(make_steps(dtype, n, device), repeats)
            rows.append(
                {
                    "host": _host_label(host, device),
                    "dtype": dtype,
                    "n": n,
                    "implicit (ms)": 1e3 * t["implicit"],
                    "polar (ms)": 1e3 * t["polar"],
                    "implicit/polar": t["implicit"] / t["polar"],
                }
            )
    return rows


def gradient_variance(n=N, device=None, seed=0):
    """Gradient variance: per-draw dz/dnu and dz/dsigma, polar vs implicit, float64, sigma = 1."""
    device = device or default_device()
    rows = []
    for host, (_, draw_grads) in HOSTS.items():
        if not _available(host):
            continue
        for ratio in RATIOS:
            grads = draw_grads(ratio, n, device, seed)
            row = {"host": _host_label(host, device), "nu/sigma": ratio, "n": n}
            worst = 0.0
            for j, param in enumerate(("nu", "sigma")):
                polar, implicit = grads["polar"][j], grads["implicit"][j]
                var_p, var_i = polar.var(ddof=1), implicit.var(ddof=1)
                z = (polar.mean() - implicit.mean()) / np.sqrt((var_p + var_i) / n)
                worst = max(worst, abs(z))
                if abs(z) > MEAN_Z_LIMIT:
                    print(
                        f"WARNING: {row['host']}, nu/sigma={ratio}: mean dz/d{param} differs, "
                        f"polar {polar.mean():.6g} vs implicit {implicit.mean():.6g} (z = {z:.1f})",
                        file=sys.stderr,
                    )
                row |= {
                    f"var_polar d/d{param}": var_p,
                    f"var_implicit d/d{param}": var_i,
                    f"ratio d/d{param}": var_p / var_i,
                }
            rows.append(row | {"max mean z": worst})
    return rows


BENCHMARKS = [speed, gradient_variance]  # the runner titles each table by its docstring


def plot(tables, path):
    """Left: time per host/dtype, implicit vs polar. Right: variance ratio per nu/sigma."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed_rows, var_rows = tables["speed"], tables["gradient_variance"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(speed_rows))
    for offset, name in ((-0.2, "implicit"), (0.2, "polar")):
        left.bar(x + offset, [r[f"{name} (ms)"] for r in speed_rows], 0.4, label=name)
    for i, r in enumerate(speed_rows):
        top = max(r["implicit (ms)"], r["polar (ms)"])
        left.annotate(f"x{r['implicit/polar']:.2f}", (i, top), ha="center", va="bottom")
    left.set_xticks(x, [f"{r['host']}\n{r['dtype']}" for r in speed_rows])
    left.set_ylabel("time per rsample + backward (ms)")
    n = speed_rows[0]["n"] if speed_rows else 0
    left.set_title(f"Speed, n = {n:.0e} draws (labels: implicit/polar)")
    left.legend()

    hosts = list(dict.fromkeys(r["host"] for r in var_rows))
    series = [(h, p) for p in ("nu", "sigma") for h in hosts]
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(RATIOS))
    for k, (host, param) in enumerate(series):
        ratios = [r[f"ratio d/d{param}"] for r in var_rows if r["host"] == host]
        right.bar(
            x + (k - (len(series) - 1) / 2) * width, ratios, width, label=f"{host} d/d{param}"
        )
    right.axhline(1, color="gray", lw=0.8)
    right.set_yscale("log")
    right.set_xticks(x, [f"nu/sigma = {r:g}" for r in RATIOS])
    right.set_ylabel("var polar / var implicit")
    right.set_title("Gradient variance reduction (float64)")
    right.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
