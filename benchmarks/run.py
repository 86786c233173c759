"""Run the package's benchmarks and write their results.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--only MODULE ...]

Each module named in :data:`MODULES` (a file next to this one) provides ``BENCHMARKS``, a list of
functions ``fn(n, device) -> rows`` (a list of dicts, one per table row; the first line of the
docstring titles the table), the draw counts ``N`` and ``N_QUICK`` (used with ``--quick``), and
optionally ``plot(tables, path)`` with ``tables`` keyed by function name. For each module the
runner prints markdown tables and writes them to ``results/<module>.md``, and the plot to
``results/<module>.png``. Nothing is asserted about timings.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import shlex
import sys
import time
from pathlib import Path

MODULES = ["rice", "truncated", "mixture"]
RESULTS = Path(__file__).resolve().parent / "results"

if importlib.util.find_spec("pyro_implicit") is None:  # not `pip install -e .`-ed: a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _format(value):
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def markdown_table(rows):
    if not rows:
        return "(no rows: every host was skipped)\n"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_format(row[k]) for k in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def header(device):
    import jax
    import torch

    command = shlex.join(["python", "benchmarks/run.py", *sys.argv[1:]])
    cpu = platform.processor() or platform.machine()
    return (
        f"`{command}` on {datetime.datetime.now():%Y-%m-%d %H:%M}; machine: {cpu}, "
        f"{os.cpu_count()} CPUs; torch {torch.__version__}, jax {jax.__version__} "
        f"(backend {jax.default_backend()}); torch device {device}\n"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer draws (N_QUICK)")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], help="torch device (default: cuda if available)"
    )
    parser.add_argument("--only", nargs="+", choices=MODULES, help="run only these modules")
    args = parser.parse_args()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    RESULTS.mkdir(exist_ok=True)
    for name in args.only or MODULES:
        module = importlib.import_module(name)
        n = module.N_QUICK if args.quick else module.N
        sections, tables = [f"# Benchmarks: {name}\n\n{header(device)}"], {}
        print(sections[0], flush=True)
        for fn in module.BENCHMARKS:
            start = time.perf_counter()
            tables[fn.__name__] = rows = fn(n=n, device=device)
            title = fn.__doc__.strip().splitlines()[0].rstrip(".")
            took = time.perf_counter() - start
            sections.append(f"## {title}\n\n{markdown_table(rows)}\n(took {took:.0f} s)\n")
            print(sections[-1], flush=True)
        (RESULTS / f"{name}.md").write_text("\n".join(sections))
        if hasattr(module, "plot"):
            module.plot(tables, RESULTS / f"{name}.png")
        print(f"wrote {RESULTS / name}.md and .png", file=sys.stderr)


if __name__ == "__main__":
    main()
