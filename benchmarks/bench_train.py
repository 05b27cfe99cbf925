"""Train-step benchmark: full-width deblur and finetune steps at 6x256x256 on this machine.

Prints a table and, with ``--json PATH``, writes::

    {"deblur_step_s", "finetune_step_s", "achieved_gflops", "matmul_gflops", "utilization",
     ...extras}

``achieved_gflops`` = model FLOPs of one deblur step / its time, with model FLOPs = 3 x the
DeblurNet forward FLOPs (XLA cost analysis of the forward at the same batch; forward +
backward ~ 3x forward). ``matmul_gflops`` = float32 matmul throughput measured in the same
run; ``utilization`` = achieved / matmul. XLA's own count for the whole step is reported too.

On CPU it preloads the best allocator installed, as ``train.py`` does (``ASPDC_MALLOC``
chooses another; see `aspdc_jax.allocator`), and reports it.

By default XLA's memory-minimising CPU scheduler is selected (``--cpu_scheduler memory``,
as the inference tools do): on the 2-core reference machine the full finetune step then
peaks at ~15 GiB RSS instead of ~22 GiB (which can exceed a 24 GiB machine), with the
same deblur step time. ``--cpu_scheduler concurrency`` keeps XLA's default.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_inference import _peak_rss_gib

from aspdc_jax.allocator import heap_in_use, tune_malloc, wait_for_heap_release
from aspdc_jax.cli import FlagParser
from aspdc_jax.inference import use_low_memory_cpu_scheduler
from aspdc_jax.models import init_params, model_defaults
from aspdc_jax.training import (
    TrainState,
    make_mesh,
    make_train_step,
    mse,
)
from aspdc_jax.training.loop import compute_modules
from aspdc_jax.training.sharding import replicate


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def _temp_gib(compiled) -> float:
    """XLA's buffer assignment for the step's temporaries (GiB): what the step itself needs."""
    try:
        return compiled.memory_analysis().temp_size_in_bytes / 2**30
    except (AttributeError, NotImplementedError):
        return 0.0


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _rss_gib() -> float:
    """Resident set size now (GiB), from /proc/self/statm (0 where there is none)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def time_step(step, state, batch, extra, steps: int) -> tuple[float, object, list[float]]:
    def run_step(state):
        # As the training loop on a CPU: wait for the step's temporaries to be freed too.
        before = heap_in_use()
        state, m = step(state, batch, *extra)
        jax.block_until_ready((state, m))
        if before is not None:
            wait_for_heap_release(before)
        return state, m

    state, m = run_step(state)  # warm-up (after compile)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = run_step(state)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), state, times


def measure_steps(batch_size: int, size: int, widths: tuple[int, int, int], steps: int, dtype: str = "float32") -> dict:
    """Compiles and times the full deblur and finetune steps (MSE; ``dtype`` is the compute
    dtype, as ``config.compute_dtype``) at ``batch_size x size x size``; returns per-phase
    ``step_s``/``compile_s``/``xla_flops`` and the model FLOPs (3 x the DeblurNet forward)."""
    nets = model_defaults().replace(deblur_width=widths[0], reblur_width=widths[1], num_groups=widths[2])
    deblur, reblur = nets.networks()
    deblur, reblur = compute_modules({"compute_dtype": dtype}, deblur, reblur)
    mesh = make_mesh()
    rng = jax.random.key(0)
    dparams = replicate(init_params(deblur, rng), mesh)
    rparams = replicate(init_params(reblur, rng), mesh)
    data = np.random.default_rng(0).integers(0, 256, (2, batch_size, size, size, 3), np.uint8)
    batch = {"blurred": data[0], "sharp": data[1]}
    tx = optax.adam(1e-4, eps=1e-18)

    # Model FLOPs: 3 x forward (XLA cost analysis of the forward at this batch).
    x = jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32)
    fwd = jax.jit(lambda p, b: deblur.apply({"params": p}, b).deblurred).lower(dparams, x).compile()
    forward_flops = _flops(fwd)

    results: dict = {"forward_flops": forward_flops, "model_flops": 3.0 * forward_flops, "memory": []}

    def mark(stage: str) -> None:  # where the peak RSS is reached, and what stays resident
        results["memory"].append({"stage": stage, "peak_rss_gib": _peak_rss_gib(), "rss_gib": _rss_gib()})

    mark("forward compiled")
    for phase in ("deblur", "finetune"):
        state = replicate(TrainState.create(jax.device_get(dparams), tx), mesh)
        step = make_train_step(
            phase, deblur=deblur, reblur=reblur, tx=tx, image_loss=mse, mesh=mesh, phase_config={"reblur_weight": 0.1}
        )
        extra = (rparams,) if phase == "finetune" else ()
        t = time.perf_counter()
        compiled = step.lower(state, batch, *extra).compile()
        compile_s = time.perf_counter() - t
        mark(f"{phase} step compiled")
        step_s, state, times = time_step(step, state, batch, extra, steps)
        mark(f"{phase} steps run")
        results[phase] = {
            "step_s": step_s,
            "step_times": times,
            "compile_s": compile_s,
            "xla_flops": _flops(compiled),
            "xla_temp_gib": _temp_gib(compiled),
        }
        del state
    return results


def main() -> None:
    parser = FlagParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps per phase (median: one slow step after the warm-up is common)"
    )
    parser.add_argument("--deblur_width", type=int, default=32)
    parser.add_argument("--reblur_width", type=int, default=16)
    parser.add_argument("--num_groups", type=int, default=6)
    parser.add_argument("--matmul_n", type=int, default=2048)
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype of the steps (config.compute_dtype)",
    )
    parser.add_argument("--json", type=str, default=None)
    parser.add_argument(
        "--cpu_scheduler",
        choices=("memory", "concurrency"),
        default="memory",
        help="XLA CPU scheduler (memory: aspdc_jax.inference.LOW_MEMORY_CPU_FLAG)",
    )
    args = parser.parse_args()
    allocator = tune_malloc(reexec=True)  # what train.py does (ASPDC_MALLOC=system: glibc's defaults)
    if args.cpu_scheduler == "memory":
        use_low_memory_cpu_scheduler()

    results = measure_steps(
        args.batch, args.size, (args.deblur_width, args.reblur_width, args.num_groups), args.steps, args.dtype
    )
    forward_flops, model_flops = results["forward_flops"], results["model_flops"]

    mm = matmul_gflops(args.matmul_n)
    achieved = model_flops / results["deblur"]["step_s"] / 1e9
    out = {
        "deblur_step_s": results["deblur"]["step_s"],
        "finetune_step_s": results["finetune"]["step_s"],
        "achieved_gflops": achieved,
        "matmul_gflops": mm,
        "utilization": achieved / mm,
        "model_gflop_per_step": model_flops / 1e9,
        "forward_gflop": forward_flops / 1e9,
        "xla_gflop_deblur_step": results["deblur"]["xla_flops"] / 1e9,
        "xla_gflop_finetune_step": results["finetune"]["xla_flops"] / 1e9,
        "deblur_step_times": results["deblur"]["step_times"],
        "finetune_step_times": results["finetune"]["step_times"],
        "deblur_xla_temp_gib": results["deblur"]["xla_temp_gib"],
        "finetune_xla_temp_gib": results["finetune"]["xla_temp_gib"],
        "deblur_compile_s": results["deblur"]["compile_s"],
        "finetune_compile_s": results["finetune"]["compile_s"],
        "dtype": args.dtype,
        "cpu_scheduler": args.cpu_scheduler,
        "peak_rss_gib": _peak_rss_gib(),
        "memory_by_stage": results["memory"],
        "batch": args.batch,
        "size": args.size,
        "widths": [args.deblur_width, args.reblur_width, args.num_groups],
        "allocator": allocator,
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "jax": jax.__version__,
    }
    rows = [
        ("deblur step", f"{out['deblur_step_s']:.2f} s", f"compile {out['deblur_compile_s']:.0f} s"),
        ("finetune step", f"{out['finetune_step_s']:.2f} s", f"compile {out['finetune_compile_s']:.0f} s"),
        (
            "model FLOPs / deblur step",
            f"{out['model_gflop_per_step']:.0f} GFLOP",
            f"3 x forward {out['forward_gflop']:.1f}; XLA step count {out['xla_gflop_deblur_step']:.0f}",
        ),
        ("achieved", f"{achieved:.1f} GFLOP/s", "deblur step"),
        ("f32 matmul", f"{mm:.1f} GFLOP/s", f"{args.matmul_n}^3, same run"),
        ("utilization", f"{out['utilization']:.3f}", "achieved / matmul"),
        ("allocator", out["allocator"], out["backend"] + f" x{out['devices']}"),
        ("peak RSS", f"{out['peak_rss_gib']:.1f} GiB", f"XLA CPU scheduler: {args.cpu_scheduler}"),
        (
            "XLA temporaries",
            f"{out['deblur_xla_temp_gib']:.1f} / {out['finetune_xla_temp_gib']:.1f} GiB",
            "deblur / finetune step (buffer assignment)",
        ),
    ]
    print(f"bench_train: {args.batch}x{args.size}x{args.size}, widths {out['widths']}")
    for name, value, note in rows:
        print(f"  {name:<28} {value:>16}   {note}")
    stages = ", ".join(f"{m['stage']} {m['peak_rss_gib']:.1f}/{m['rss_gib']:.1f}" for m in results["memory"])
    print(f"  peak/current RSS by stage (GiB): {stages}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
