"""Allocator benchmark: one training command under each malloc, as whole processes, paired.

Runs the quickstart's deblur phase (``--steps`` train steps at batch 8 on 64x64 crops, no
evaluation, a fresh workdir each run) once per allocator per round, the allocators in a
rotated order each round, and reports per allocator the median wall seconds, CPU seconds
and peak RSS (the process's own ``ru_maxrss``), and the median of the per-round ratios
to ``--reference``. Prints a table and, with ``--json PATH``, writes::

    {"command", "steps", "rounds", "reference", "machine": {...},
     "allocators": {NAME: {"wall_s": [...], "cpu_s": [...], "peak_rss_gib": [...],
                           "median_wall_s", "median_peak_rss_gib", "wall_ratio"}}}

Allocators are ``ASPDC_MALLOC`` modes (``tcmalloc``, ``jemalloc``, ``mimalloc``, ``glibc``,
``system``, ``auto``), each run as a new user runs ``train.py``. ``NAME=PATH`` preloads
the library at PATH by hand instead (e.g. a tcmalloc that is unpacked but not installed,
so that ``auto`` still sees a machine without it), and ``NAME+VAR=VALUE`` adds an
environment variable (``mimalloc+MIMALLOC_PURGE_DELAY=0``)::

    python benchmarks/bench_allocators.py --rounds 3 --steps 256 \\
        --allocators tcmalloc=/tmp/libtcmalloc_minimal.so.4,mimalloc,system,glibc
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aspdc_jax.cli import FlagParser

STEPS_PER_EPOCH = 32  # the quickstart's nominal epoch: 256 examples at batch 8


def _environment(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME[=PATH][+VAR=VALUE...]`` -> (label, environment of the run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASPDC_MALLOC")}
    head, *extras = spec.split("+")
    name, _, path = head.partition("=")
    if path:
        if not Path(path).is_file():
            raise SystemExit(f"error: --allocators {spec}: {path} is not a file")
        env["LD_PRELOAD"] = path
    env["ASPDC_MALLOC"] = name
    for extra in extras:
        key, eq, value = extra.partition("=")
        if not eq:
            raise SystemExit(f"error: --allocators {spec}: {extra!r} is not VAR=VALUE")
        env[key] = value
    label = name + "".join(f"+{e}" for e in extras)
    return label, env


def _run(command: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    start = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: the run failed (exit {os.waitstatus_to_exitcode(status)}); see {log}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_gib": usage.ru_maxrss / 2**20,  # KiB on Linux
    }


def main() -> None:
    parser = FlagParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allocators", default="tcmalloc,mimalloc,system,glibc", help="comma-separated specs")
    parser.add_argument("--reference", default=None, help="ratios are to this one (default: the first)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per allocator (default %(default)s)")
    parser.add_argument("--steps", type=int, default=256, help="train steps per run, a multiple of 32")
    parser.add_argument("--log", default=None, help="the runs' output (default: a temporary file)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    specs = [_environment(s) for s in args.allocators.split(",") if s]
    labels = [label for label, _ in specs]
    reference = args.reference or labels[0]
    if reference not in labels:
        raise SystemExit(f"error: --reference {reference} is not one of {', '.join(labels)}")
    log = Path(args.log or tempfile.mkstemp(prefix="bench_allocators_", suffix=".log")[1])
    epochs = max(1, args.steps // STEPS_PER_EPOCH)
    results: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    for round_ in range(args.rounds):
        order = specs[round_ % len(specs) :] + specs[: round_ % len(specs)]
        for label, env in order:
            with tempfile.TemporaryDirectory(prefix="bench_alloc_") as workdir:
                command = [
                    sys.executable,
                    "train.py",
                    "--config=configs/quickstart.py",
                    f"--workdir={workdir}",
                    "--config.phases=deblur",
                    f"--config.deblur.num_epochs={epochs}",
                    "--config.eval_limit=0",
                    "--config.progress_bar=False",
                ]
                run = _run(command, env, log)
            results[label].append(run)
            print(
                f"round {round_ + 1} {label:>28}: {run['wall_s']:7.1f} s wall, {run['cpu_s']:7.1f} s cpu, "
                f"{run['peak_rss_gib']:.2f} GiB",
                flush=True,
            )

    summary: dict[str, dict] = {}
    for label in labels:
        runs = results[label]
        ratios = [r["wall_s"] / ref["wall_s"] for r, ref in zip(runs, results[reference])]
        summary[label] = {
            **{key: [r[key] for r in runs] for key in ("wall_s", "cpu_s", "peak_rss_gib")},
            "median_wall_s": statistics.median(r["wall_s"] for r in runs),
            "median_cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "median_peak_rss_gib": statistics.median(r["peak_rss_gib"] for r in runs),
            "wall_ratio": statistics.median(ratios),
        }
    print(f"\n{epochs * STEPS_PER_EPOCH} quickstart deblur steps, {args.rounds} rounds, {os.cpu_count()} cores")
    print(f"| allocator | wall s (median) | cpu s | peak RSS GiB | wall / {reference} (paired median) |")
    print("|---|---:|---:|---:|---:|")
    for label, s in summary.items():
        print(
            f"| {label} | {s['median_wall_s']:.1f} | {s['median_cpu_s']:.1f} | {s['median_peak_rss_gib']:.2f} "
            f"| {s['wall_ratio']:.2f} |"
        )
    if args.json:
        out = {
            "command": "train.py --config=configs/quickstart.py --config.phases=deblur",
            "steps": epochs * STEPS_PER_EPOCH,
            "rounds": args.rounds,
            "reference": reference,
            "machine": {
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "date": time.strftime("%Y-%m-%d"),
            },
            "allocators": summary,
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
