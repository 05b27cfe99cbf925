r"""Inference benchmark: the 1280x720 forward, its utilisation, and peak memory.

  python benchmarks/bench_inference.py --json bench_inference.json

Measurements, each in a fresh subprocess so its peak RSS is its own:

1. ``matmul``: float32 (N x N) @ (N x N) FLOP/s (best of several) -- the machine's ceiling.
2. ``forward_720p``: the full-width DeblurNet (paper config) on one 1280x720 image through
   :class:`aspdc_jax.inference.Deblurrer` (uint8 in, uint8-ready float out, only the
   deblurred image returned): best of ``--repeats`` timed calls after compilation (the
   mean is in ``details``), peak RSS. Model FLOPs are
   counted from the jaxpr (2 x MACs of every convolution and matmul, the deformable
   convolutions' contraction included; bilinear sampling not counted).
3. ``tiled_12mp``: a 4000x3000 image through the tiled mode (``--tile``/``--overlap``),
   peak RSS and seconds (compilation included).

``utilization`` = model FLOP/s of (2) / matmul FLOP/s of (1).

``--devices N`` measures instead images/s of a batch split over N local devices, for each
of ``--batch_sizes`` (default 1..8) at ``--size`` (default 1280x720): on a CPU over N fake
devices sharing its cores (correct, not fast), on a GPU or TPU host over real ones. Parameters are random
(``--ckpt`` loads real ones instead); the speed does not depend on their values.
The allocator is chosen with ``--allocator`` (an ``ASPDC_MALLOC`` mode; by default the
subprocesses preload the best one installed, see `aspdc_jax.allocator`) and reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


# ----------------------------------------------------------------------------- workers
def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def count_flops(jaxpr) -> float:
    """2 x MACs of conv_general_dilated and dot_general in a (closed) jaxpr, recursively."""
    import numpy as np

    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out = eqn.outvars[0].aval.shape
            rhs = eqn.invars[1].aval.shape
            out_feat = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += 2.0 * np.prod(out) * np.prod(rhs) / out_feat
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            k = np.prod([lhs[d] for d in lhs_contract]) if lhs_contract else 1
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * k
        mult = eqn.params.get("length", 1) if name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    total += mult * count_flops(inner)
                elif hasattr(sub, "eqns"):
                    total += mult * count_flops(sub)
    return float(total)


def _model(ckpt: str | None):

    if ckpt:
        from aspdc_jax.weights import load_for_inference

        loaded = load_for_inference(ckpt)
        return loaded.deblur, loaded.deblur_params
    from aspdc_jax.models import DeblurNet

    module = DeblurNet()
    return module, random_params(module)


def random_params(module, seed: int = 0):
    """Parameters for ``module`` distributed as the models' init (Xavier-normal kernels,
    5-D ones being stacked groups; zero biases), drawn with numpy: no XLA compilation of
    the full-width init, which on a CPU takes longer than the benchmark. Speed does not
    depend on the values."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if getattr(path[-1], "key", None) != "kernel":
            return np.zeros(leaf.shape, np.float32)
        shape = leaf.shape[1:] if len(leaf.shape) == 5 else leaf.shape
        receptive = int(np.prod(shape[:-2]))
        std = np.sqrt(2.0 / (receptive * (shape[-2] + shape[-1])))
        return (std * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def worker_matmul(args) -> dict:
    import jax
    import jax.numpy as jnp

    n = args.matmul_size
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(args.matmul_repeats):
        start = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return {"matmul_size": n, "matmul_seconds": best, "matmul_flops_per_s": 2.0 * n**3 / best}


def worker_forward(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from aspdc_jax.inference import Deblurrer

    module, params = _model(args.ckpt)
    h, w = 720, 1280
    x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda p, v: module.apply({"params": p}, v).deblurred)(params, x)
    flops = count_flops(jaxpr.jaxpr)
    del jaxpr
    deblurrer = Deblurrer(module, params, bucket="exact", dtype=args.dtype)
    del params
    image = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    start = time.perf_counter()
    deblurrer.forward_padded(image)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        deblurrer.forward_padded(image)
        times.append(time.perf_counter() - start)
    return {
        # Best of the repeats (as for the matmul): on a shared machine the mean mostly
        # measures the neighbours; on a quiet one the two agree.
        "seconds_720p": float(np.min(times)),
        "seconds_720p_mean": float(np.mean(times)),
        "seconds_720p_all": times,
        "first_call_seconds_720p": first,
        "model_gflop_720p": flops / 1e9,
        "model_flops_per_s": flops / float(np.min(times)),
        "compilations": deblurrer.num_compilations,
    }


def worker_tiled(args) -> dict:
    import numpy as np

    from aspdc_jax.inference import Deblurrer

    module, params = _model(args.ckpt)
    deblurrer = Deblurrer(module, params, tile=args.tile, overlap=args.overlap, dtype=args.dtype)
    del params
    image = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    start = time.perf_counter()
    out = deblurrer.deblur(image)
    seconds = time.perf_counter() - start
    assert out.shape == image.shape and out.dtype == np.uint8
    return {
        "seconds_tiled_12mp": seconds,
        "tile": args.tile,
        "overlap": args.overlap,
        "compilations_tiled": deblurrer.num_compilations,
    }


def worker_devices(args) -> dict:
    """Images/s of `Deblurrer` over ``--devices`` local devices for each batch size."""
    import jax
    import numpy as np

    from aspdc_jax.inference import Deblurrer

    module, params = _model(args.ckpt)
    w, h = (int(v) for v in args.size.split("x"))
    devices = jax.local_devices()
    if len(devices) < args.devices:
        raise SystemExit(f"--devices {args.devices}: only {len(devices)} local devices")
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8)
    rows = []
    for b in (int(v) for v in args.batch_sizes.split(",")):
        deblurrer = Deblurrer(
            module, params, bucket="exact", dtype=args.dtype, batch_size=b, devices=devices[: args.devices]
        )
        batch = np.stack([image] * b)
        start = time.perf_counter()
        deblurrer.deblur(batch)  # compiles
        compile_s = time.perf_counter() - start
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            deblurrer.deblur(batch)
            best = min(best, time.perf_counter() - start)
        rows.append({"batch_size": b, "images_per_s": b / best, "seconds": best, "first_call_s": compile_s})
    return {"devices": args.devices, "size": args.size, "platform": devices[0].platform, "rows": rows}


WORKERS = {
    "matmul": worker_matmul,
    "forward_720p": worker_forward,
    "tiled_12mp": worker_tiled,
    "devices": worker_devices,
}


# ----------------------------------------------------------------------------- driver
def _allocator_env(choice: str) -> dict:
    """The workers' environment for ``--allocator``: ``ASPDC_MALLOC=<choice>``, which each
    worker applies with `aspdc_jax.allocator.tune_malloc` (re-executing itself with the
    library preloaded), as the entry points do. An allocator preloaded by hand is kept."""
    env = dict(os.environ)
    env["ASPDC_MALLOC"] = choice
    return env


def _run_worker(name: str, args, env: dict) -> dict:
    cmd = [
        sys.executable,
        str(HERE),
        "--worker",
        name,
        "--tile",
        str(args.tile),
        "--overlap",
        str(args.overlap),
        "--repeats",
        str(args.repeats),
        "--dtype",
        args.dtype,
        "--matmul_size",
        str(args.matmul_size),
        "--matmul_repeats",
        str(args.matmul_repeats),
    ]
    if args.ckpt:
        cmd += ["--ckpt", args.ckpt]
    cmd += ["--devices", str(args.devices), "--batch_sizes", args.batch_sizes, "--size", args.size]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker {name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def _report_devices(args, env: dict) -> int:
    """``--devices N``: one worker with N devices. The flag below splits the CPU into N fake
    devices when JAX runs on the CPU; on a GPU or TPU host it changes nothing."""
    flag = f"--xla_force_host_platform_device_count={args.devices}"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    result = _run_worker("devices", args, env)
    print(f"{result['devices']} {result['platform']} device(s), {result['size']}, allocator: {result['allocator']}")
    print(f"{'batch':>6}{'images/s':>10}{'seconds':>10}{'first call s':>14}")
    for row in result["rows"]:
        print(f"{row['batch_size']:>6}{row['images_per_s']:>10.3f}{row['seconds']:>10.2f}{row['first_call_s']:>14.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    from aspdc_jax.cli import FlagParser

    parser = FlagParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--ckpt", help="export / workdir to load (default: random full-width params)")
    parser.add_argument(
        "--allocator",
        choices=("auto", "tcmalloc", "jemalloc", "mimalloc", "glibc", "system"),
        default="auto",
        help="the ASPDC_MALLOC mode of the workers (see aspdc_jax/allocator.py); auto: the best installed",
    )
    parser.add_argument(
        "--cpu_scheduler",
        choices=("memory", "concurrency"),
        default="memory",
        help="XLA CPU scheduler: memory-minimising (aspdc_jax.inference.LOW_MEMORY_CPU_FLAG, "
        "what the CLIs use) or XLA's default concurrency-optimised one",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed 720p forwards after compiling")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--matmul_size", type=int, default=2048)
    parser.add_argument("--matmul_repeats", type=int, default=10)
    parser.add_argument("--skip_tiled", action="store_true", help="skip the 12 MP measurement")
    parser.add_argument(
        "--devices",
        type=int,
        default=0,
        help="instead of the default measurements: images/s of a batch split over N local devices "
        "(on a CPU, N fake devices: correct, not fast)",
    )
    parser.add_argument("--batch_sizes", default="1,2,3,4,5,6,7,8", help="with --devices")
    parser.add_argument("--size", default="1280x720", help="with --devices: WIDTHxHEIGHT")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        from aspdc_jax.allocator import tune_malloc

        allocator = tune_malloc(reexec=True)  # what the entry points do
        result = WORKERS[args.worker](args)
        result["allocator"] = allocator
        result["peak_rss_gib"] = _peak_rss_gib()
        print(json.dumps(result))
        return 0

    env = _allocator_env(args.allocator)
    if args.devices:
        return _report_devices(args, env)
    if args.cpu_scheduler == "memory":
        from aspdc_jax.inference import LOW_MEMORY_CPU_FLAG

        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {LOW_MEMORY_CPU_FLAG}".strip()
    import jax

    device = jax.devices()[0]
    info = {
        "device": f"{device.platform}: {device.device_kind}",
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "cpu_scheduler": args.cpu_scheduler,
        "xla_flags": env.get("XLA_FLAGS", ""),
        "dtype": args.dtype,
        "jax": jax.__version__,
    }
    # The matmul ceiling is measured before and after the forward (best of both), so a busy
    # moment on a shared machine does not inflate the utilisation.
    mm = _run_worker("matmul", args, env)
    fw = _run_worker("forward_720p", args, env)
    allocator = info["allocator"] = fw["allocator"]
    mm_after = _run_worker("matmul", args, env)
    if mm_after["matmul_flops_per_s"] > mm["matmul_flops_per_s"]:
        mm = mm_after
    results = {
        "seconds_720p": fw["seconds_720p"],
        "utilization": fw["model_flops_per_s"] / mm["matmul_flops_per_s"],
        "peak_rss_gib_720p": fw["peak_rss_gib"],
        "peak_rss_gib_tiled_12mp": None,
    }
    details = {
        **info,
        **{k: v for k, v in mm.items() if k != "peak_rss_gib"},
        **{k: v for k, v in fw.items() if k != "peak_rss_gib"},
    }
    if not args.skip_tiled:
        tl = _run_worker("tiled_12mp", args, env)
        results["peak_rss_gib_tiled_12mp"] = tl["peak_rss_gib"]
        details.update({k: v for k, v in tl.items() if k != "peak_rss_gib"})
    results["details"] = details

    bars = {"utilization": (">=", 0.75), "peak_rss_gib_720p": ("<=", 1.6), "peak_rss_gib_tiled_12mp": ("<=", 4.0)}
    print(
        f"device {info['device']}, {info['cpu_count']} cores, allocator: {allocator}, "
        f"XLA CPU scheduler: {args.cpu_scheduler}, dtype {args.dtype}"
    )
    print(f"f32 matmul {mm['matmul_size']}^3: {mm['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s")
    print(f"720p model: {fw['model_gflop_720p']:.1f} GFLOP, first call {fw['first_call_seconds_720p']:.1f} s")
    print(f"{'measure':<26}{'value':>12}  bar")
    print(
        f"{'seconds_720p':<26}{results['seconds_720p']:>12.3f}  best of {args.repeats} "
        f"(mean {fw['seconds_720p_mean']:.3f}"
        + ("; official PyTorch, full width: 39.5 s)" if not args.ckpt else f"; model from {args.ckpt})")
    )
    for key, (op, bar) in bars.items():
        value = results[key]
        if value is None:
            print(f"{key:<26}{'skipped':>12}")
            continue
        ok = value >= bar if op == ">=" else value <= bar
        print(f"{key:<26}{value:>12.3f}  {op} {bar}  {'ok' if ok else 'MISSED'}")
    if results["peak_rss_gib_tiled_12mp"] is not None:
        print(
            f"tiled 12MP: {details['seconds_tiled_12mp']:.1f} s (tile {args.tile}, overlap {args.overlap}, compilation included)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
