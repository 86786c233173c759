"""Timing and JAX's dtypes, shared by the benchmark modules."""

from __future__ import annotations

import statistics
import time

import jax


def jax_types(dtype):
    """A context with JAX's 64-bit types on for ``"float64"`` runs and off (JAX's and NumPyro's
    default) for the others. No module turns them on for the whole process: with them on,
    NumPyro's ``Normal`` and ``TruncatedNormal`` compute in float64 even for float32
    parameters and return float64 draws, so float32 cells would time float64 work."""
    return jax.enable_x64(dtype == "float64")


def median_times(steps, repeats, block=1, settle=0):
    """Median wall time in seconds of each step, warmed up twice, the steps interleaved so that
    machine noise hits all of them alike: ``repeats`` rounds, each running every step ``block``
    times in a row (``block > 1`` keeps a fast step from being timed right after a slow one
    that has just churned through caches and memory), after ``settle`` untimed calls (with a
    fixed order, the same step would otherwise always pay for the churn of the one before)."""
    for run in steps.values():
        run()
        run()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, run in steps.items():
            for _ in range(settle):
                run()
            for _ in range(block):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
