"""Benchmarks of ``TruncatedNormal`` against NumPyro's, ``jax.random.truncated_normal`` and
TensorFlow Probability's (on JAX).

* :func:`speed`: wall time of one draw of ``n`` samples from the normal ``N(0, 1)`` truncated to
  ``[-1, 2]`` plus the gradient of ``z.sum()`` in ``(loc, scale)``, float32 and float64, in one
  process (JAX with its 64-bit types on for float64 only, see :func:`timing.jax_types`). JAX
  functions are ``jax.jit(jax.value_and_grad(...))``; ``jax.random.truncated_normal`` is made
  location-scale as ``loc + scale * truncated_normal(key, (low - loc)/scale, (high -
  loc)/scale)``. Each step waits for its result. After two warm-up calls each, the
  implementations run alternately ``repeats`` times and the median is reported. PyTorch has no
  truncated normal to compare with: the time of ``pyro_implicit.TruncatedNormal`` is reported
  alone.
* :func:`tails`: for a grid of intervals (standard normal, bounds in standard deviations) and
  both dtypes, ``n // 10`` draws with per-draw gradients ``dz/dloc`` (``loc`` broadcast to one
  element per draw): the error of the sample mean relative to the exact mean (mpmath), the
  number of draws outside ``[low, high]`` and the number of non-finite gradients, for each
  implementation. A cell reads ``mean error / out of support / NaN gradients``.

A peer that cannot be imported or fails on an interval is reported as such, not hidden.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import torch
from timing import jax_types, median_times

N, N_QUICK = 1_000_000, 100_000
DTYPES = ("float32", "float64")
SPEED_INTERVAL = (-1.0, 2.0)
INTERVALS = [
    (-1.0, 2.0),
    (8.0, 9.0),
    (-40.0, -39.0),
    (38.0, np.inf),
    (-np.inf, -30.0),
    (5.0, 5.0 + 1e-4),
    (0.0, 1e-4),
]


def _bound(x):
    """None for an infinite bound (a Python float), else the bound (a float or an array)."""
    return None if isinstance(x, float) and np.isinf(x) else x


# ---- samplers: (key, loc, scale, low, high, shape) -> z, all in JAX ------------------------


def _ours(key, loc, scale, low, high, shape):
    from numpyro_implicit import TruncatedNormal

    d = TruncatedNormal(loc, scale, low=_bound(low), high=_bound(high))
    return d.sample(key, shape)


def _numpyro(key, loc, scale, low, high, shape):
    from numpyro.distributions import TruncatedNormal

    d = TruncatedNormal(loc, scale, low=_bound(low), high=_bound(high))
    return d.sample(key, shape)


def _jax_random(key, loc, scale, low, high, shape):
    dtype = jnp.result_type(loc)
    x = jax.random.truncated_normal(key, (low - loc) / scale, (high - loc) / scale, shape, dtype)
    return loc + scale * x


def _tfp(key, loc, scale, low, high, shape):
    import tensorflow_probability.substrates.jax as tfp

    d = tfp.distributions.TruncatedNormal(loc, scale, low, high)
    return d.sample(shape, seed=key)


JAX_SAMPLERS = {
    "ours (numpyro_implicit)": _ours,
    "numpyro.TruncatedNormal": _numpyro,
    "jax.random.truncated_normal": _jax_random,
    "tfp (JAX)": _tfp,
}


def _jax_step(sample, dtype, n):
    low, high = (jnp.asarray(b, dtype) for b in SPEED_INTERVAL)
    params = (jnp.asarray(0.0, dtype), jnp.asarray(1.0, dtype))
    key = jax.random.key(0)

    def loss(p, k):
        return sample(k, p[0], p[1], low, high, (n,)).sum()

    f = jax.jit(jax.value_and_grad(loss))
    return lambda: jax.block_until_ready(f(params, key))


def _torch_step(dtype, n, device):
    from pyro_implicit import TruncatedNormal

    kw = {"dtype": getattr(torch, dtype), "device": device}
    loc = torch.tensor(0.0, **kw, requires_grad=True)
    scale = torch.tensor(1.0, **kw, requires_grad=True)
    low, high = (torch.tensor(b, **kw) for b in SPEED_INTERVAL)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None

    def run():
        z = TruncatedNormal(loc, scale, low, high).rsample((n,))
        torch.autograd.grad(z.sum(), (loc, scale))
        sync()

    return run


def speed(n=N, device="cpu", repeats=7):
    """Speed: sample + gradient of z.sum() in (loc, scale), N(0, 1) on [-1, 2], median ms."""
    rows = []
    for dtype in DTYPES:
        with jax_types(dtype):
            steps = {name: _jax_step(s, dtype, n) for name, s in JAX_SAMPLERS.items()}
            t = median_times(steps, repeats)
        t_torch = median_times({"torch": _torch_step(dtype, n, device)}, repeats)["torch"]
        ours = t["ours (numpyro_implicit)"]
        rows.append(
            {
                "dtype": dtype,
                "n": n,
                **{f"{name} (ms)": 1e3 * v for name, v in t.items()},
                "ours/numpyro": ours / t["numpyro.TruncatedNormal"],
                "ours/jax.random": ours / t["jax.random.truncated_normal"],
                f"ours pyro_implicit, torch {device} (ms)": 1e3 * t_torch,
            }
        )
    return rows


# ---- tail correctness ------------------------------------------------------------------------


def exact_moments(low, high):
    """Mean and variance of N(0, 1) truncated to [low, high], closed forms in mpmath at 80
    digits (mirrored so that the tail probabilities are small ones)."""
    with mp.workdps(80):
        a = -mp.inf if np.isinf(low) else mp.mpf(low)
        b = mp.inf if np.isinf(high) else mp.mpf(high)
        sign = 1
        if a + b < 0:
            a, b, sign = -b, -a, -1
        z = mp.ncdf(-a) - mp.ncdf(-b)
        pa = mp.npdf(a) if a > -mp.inf else 0
        pb = mp.npdf(b) if b < mp.inf else 0
        mean = (pa - pb) / z
        var = 1 + ((a * pa if a > -mp.inf else 0) - (b * pb if b < mp.inf else 0)) / z - mean**2
        return float(sign * mean), float(var)


@functools.cache
def _jax_draw_fn(name, dtype, has_low, has_high):
    """Jitted per-draw (z, dz/dloc): one key and one loc per draw (vmap), bounds as arguments,
    so that one compilation serves every interval with the same finite bounds."""
    sample = JAX_SAMPLERS[name]

    def one(key, loc, low, high):
        low = low if has_low else -jnp.inf
        high = high if has_high else jnp.inf
        return sample(key, loc, jnp.asarray(1.0, dtype), low, high, ())

    grad = jax.vmap(jax.value_and_grad(one, argnums=1), in_axes=(0, 0, None, None))
    return jax.jit(grad)


def _jax_draws(name, low, high, dtype, n):
    # ours takes infinite bounds as arguments; the peers get them as missing ones
    both = name.startswith("ours")
    fn = _jax_draw_fn(name, dtype, both or np.isfinite(low), both or np.isfinite(high))
    keys = jax.random.split(jax.random.key(1), n)
    z, g = fn(keys, jnp.zeros(n, dtype), jnp.asarray(low, dtype), jnp.asarray(high, dtype))
    return np.asarray(z, np.float64), np.asarray(g, np.float64)


def _torch_draws(low, high, dtype, n, device):
    from pyro_implicit import TruncatedNormal

    kw = {"dtype": getattr(torch, dtype), "device": device}
    torch.manual_seed(1)
    loc = torch.zeros(n, **kw, requires_grad=True)
    d = TruncatedNormal(
        loc,
        torch.tensor(1.0, **kw),
        None if np.isinf(low) else torch.tensor(low, **kw),
        None if np.isinf(high) else torch.tensor(high, **kw),
    )
    z = d.rsample()
    (g,) = torch.autograd.grad(z.sum(), loc)
    return z.detach().cpu().double().numpy(), g.cpu().double().numpy()


def _cell(z, g, low, high, dtype, mean):
    lo, hi = float(np.asarray(low, dtype)), float(np.asarray(high, dtype))
    finite = np.isfinite(z)
    err = abs(z[finite].mean() - mean) / abs(mean) if finite.any() else np.inf
    out = int(np.sum((z < lo) | (z > hi) | ~finite))
    nan = int(np.sum(~np.isfinite(g)))
    return f"{err:.1e} / {out} / {nan}"


def tails(n=N, device="cpu"):
    """Tail correctness: mean error (relative) / draws out of support / NaN gradients dz/dloc."""
    n = n // 10
    rows = []
    for low, high in INTERVALS:
        for dtype in DTYPES:
            # the exact mean of the interval as the dtype holds its bounds
            lo, hi = float(np.asarray(low, dtype)), float(np.asarray(high, dtype))
            mean, var = exact_moments(lo, hi)
            row = {
                "interval": f"[{low:g}, {high:g}]",
                "dtype": dtype,
                "n": n,
                "exact mean": mean,
                # the Monte Carlo standard error of a correct sampler's mean error
                "MC s.e.": float(np.sqrt(var / n) / abs(mean)),
            }
            for name in JAX_SAMPLERS:
                try:
                    with jax_types(dtype):
                        z, g = _jax_draws(name, low, high, dtype, n)
                    row[name] = _cell(z, g, low, high, dtype, mean)
                except Exception as error:  # a peer that fails is reported, not hidden
                    print(f"note: {name} on [{low}, {high}] {dtype}: {error!r}", file=sys.stderr)
                    row[name] = f"error: {type(error).__name__}"
            z, g = _torch_draws(low, high, dtype, n, device)
            row["ours (pyro_implicit)"] = _cell(z, g, low, high, dtype, mean)
            rows.append(row)
    return rows


BENCHMARKS = [speed, tails]


def plot(tables, path):
    """Left: time per implementation and dtype. Right: relative mean error per interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
    rows = tables["speed"]
    names = [k for k in rows[0] if k.endswith("(ms)")]
    x = np.arange(len(rows))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        left.bar(x + (k - (len(names) - 1) / 2) * width, [r[name] for r in rows], width, label=name)
    left.set_xticks(x, [r["dtype"] for r in rows])
    left.set_yscale("log")
    left.set_ylabel("sample + gradient (ms)")
    left.set_title(f"Speed, n = {rows[0]['n']:.0e}, N(0, 1) on [-1, 2]")
    left.legend(fontsize="small")

    rows = tables["tails"]
    methods = [k for k in rows[0] if k not in ("interval", "dtype", "n", "exact mean", "MC s.e.")]
    x = np.arange(len(rows))
    width = 0.8 / len(methods)
    for k, name in enumerate(methods):
        errs = []
        for r in rows:
            cell = r[name]
            errs.append(float(cell.split(" / ")[0]) if not cell.startswith("error") else np.nan)
        errs = np.clip(np.nan_to_num(np.array(errs), nan=1.0, posinf=1.0), 1e-12, 1.0)
        right.bar(x + (k - (len(methods) - 1) / 2) * width, errs, width, label=name)
    right.set_yscale("log")
    right.set_xticks(x, [f"{r['interval']}\n{r['dtype']}" for r in rows], fontsize=6, rotation=90)
    right.set_ylabel("|sample mean - exact| / |exact| (1 = fails)")
    right.set_title("Tail correctness")
    right.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
