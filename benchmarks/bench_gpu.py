r"""Accelerator benchmark: the full-width model on a GPU, in float32 and bfloat16.

  python benchmarks/bench_gpu.py --json bench_gpu.json

Each measurement runs in a fresh subprocess, so its peak device memory
(``memory_stats()["peak_bytes_in_use"]``) is its own:

1. ``matmul``: 8192^3 products in float32 (XLA's default precision, which may use TF32
   tensor cores, and ``precision=HIGHEST``) and bfloat16: the card's ceilings.
2. ``forward``: the paper-width DeblurNet through :class:`aspdc_jax.inference.Deblurrer`
   on 1280x720 (batch 1 and ``--batch``), float32 and bfloat16 compute: compile seconds,
   best-of-``--repeats`` seconds, model TFLOP/s (FLOPs counted from the jaxpr as in
   ``bench_inference.py``), peak device memory. Parameters are random Xavier (the speed
   does not depend on them); the input is a bundled photo, and the bfloat16 output is
   compared with the float32 one (PSNR, in dB).
3. ``train``: the full deblur and finetune train steps at 6x256x256 (MSE), as in
   ``bench_train.py``, with float32 and bfloat16 compute (``config.compute_dtype``).
4. ``fixture``: the official fixture nets (``tests/fixtures/official_nets.npz``, computed
   in float64 by the PyTorch release) in float32 at default and HIGHEST matmul precision
   and in bfloat16: max abs error of the deblurred image.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parent))


def _peak_gib() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def _photo_720p():
    import numpy as np
    from PIL import Image

    from aspdc_jax.data.synthetic import builtin_photos

    _, photo = builtin_photos("train")[0]
    return np.asarray(Image.fromarray(photo).resize((1280, 720), Image.BICUBIC))


def worker_matmul(args) -> dict:
    import jax
    import jax.numpy as jnp

    n = args.matmul_size
    out = {"matmul_size": n}
    for label, dtype, precision in (
        ("f32_default", jnp.float32, None),
        ("f32_highest", jnp.float32, jax.lax.Precision.HIGHEST),
        ("bf16", jnp.bfloat16, None),
    ):
        a = jax.random.normal(jax.random.key(0), (n, n), dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), dtype)
        f = jax.jit(lambda x, y, p=precision: jnp.dot(x, y, precision=p))
        f(a, b).block_until_ready()
        best = float("inf")
        for _ in range(10):
            t = time.perf_counter()
            f(a, b).block_until_ready()
            best = min(best, time.perf_counter() - t)
        out[f"{label}_tflops"] = 2.0 * n**3 / best / 1e12
    return out


def worker_forward(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from bench_inference import _model, count_flops

    from aspdc_jax.inference import Deblurrer

    module, params = _model(None)
    x = jax.ShapeDtypeStruct((1, 720, 1280, 3), jnp.float32)
    flops = count_flops(jax.make_jaxpr(lambda p, v: module.apply({"params": p}, v).deblurred)(params, x).jaxpr)
    deblurrer = Deblurrer(module, params, bucket="exact", dtype=args.dtype)
    image = _photo_720p()[None]
    out: dict = {"dtype": args.dtype, "model_gflop_720p": flops / 1e9}
    for batch in sorted({1, args.batch}):
        images = np.repeat(image, batch, axis=0)
        t = time.perf_counter()
        y = deblurrer.forward_padded(images)
        out[f"first_call_s_b{batch}"] = time.perf_counter() - t
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            deblurrer.forward_padded(images)
            times.append(time.perf_counter() - t)
        out[f"seconds_b{batch}"] = float(np.min(times))
        out[f"seconds_b{batch}_mean"] = float(np.mean(times))
        out[f"model_tflops_b{batch}"] = batch * flops / float(np.min(times)) / 1e12
        if batch == 1:
            np.save(args.save, y[0])
    out["peak_device_gib"] = _peak_gib()
    return out


def worker_train(args) -> dict:
    from bench_train import measure_steps

    r = measure_steps(6, 256, (32, 16, 6), steps=args.repeats, dtype=args.dtype)
    return {
        "dtype": args.dtype,
        "deblur_step_s": r["deblur"]["step_s"],
        "finetune_step_s": r["finetune"]["step_s"],
        "deblur_compile_s": r["deblur"]["compile_s"],
        "finetune_compile_s": r["finetune"]["compile_s"],
        "model_gflop_per_step": r["model_flops"] / 1e9,
        "model_tflops": r["model_flops"] / r["deblur"]["step_s"] / 1e12,
        "peak_device_gib": _peak_gib(),
    }


def worker_fixture(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from aspdc_jax.convert import deblur_from_official

    with np.load(ROOT / "tests" / "fixtures" / "official_nets.npz") as data:
        official = {k: data[k] for k in data.files}
    sd = {k[len("deblur/") :]: v for k, v in official.items() if k.startswith("deblur/")}
    net, params = deblur_from_official(sd)
    blurry = official["input/blurry"].transpose(0, 2, 3, 1)
    expected = official["output/deblurred"].transpose(0, 2, 3, 1)
    out = {}
    for label, dtype, precision in (
        ("f32_default", jnp.float32, "default"),
        ("f32_highest", jnp.float32, "highest"),
        ("bf16", jnp.bfloat16, "default"),
    ):
        n = net.clone(dtype=dtype)
        p = jax.tree_util.tree_map(lambda a, d=dtype: jnp.asarray(a, d), params)
        with jax.default_matmul_precision(precision):
            y = jax.jit(lambda q, v, n=n: n.apply({"params": q}, v).deblurred)(p, jnp.asarray(blurry, dtype))
        out[f"max_abs_err_{label}"] = float(np.max(np.abs(np.asarray(y, np.float64) - expected)))
    return out


WORKERS = {"matmul": worker_matmul, "forward": worker_forward, "train": worker_train, "fixture": worker_fixture}


def _run(name: str, args, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        str(HERE),
        "--worker",
        name,
        "--repeats",
        str(args.repeats),
        "--batch",
        str(args.batch),
        "--matmul_size",
        str(args.matmul_size),
        *extra,
    ]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"worker {name} {extra} ran past --timeout {args.timeout:g} s; skipped", flush=True)
        return {"error": f"timed out after {args.timeout:g} s"}
    if proc.returncode != 0:
        print(f"worker {name} {extra} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
        return {"error": proc.stderr[-3000:]}
    result = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    result["wall_s"] = time.perf_counter() - t
    print(f"{name} {' '.join(extra)}: {json.dumps(result)}", flush=True)
    return result


def _psnr(a, b) -> float:
    from aspdc_jax.evaluation.metrics import psnr_numpy

    return psnr_numpy(a, b, peak=255.0)


def main(argv: list[str] | None = None) -> int:
    from aspdc_jax.cli import FlagParser

    parser = FlagParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after compiling")
    parser.add_argument("--batch", type=int, default=4, help="second forward batch size at 720p")
    parser.add_argument("--matmul_size", type=int, default=8192)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per measurement")
    parser.add_argument(
        "--only",
        default="matmul,forward,train,fixture",
        help="comma-separated subset of matmul, forward, train, fixture (default: all)",
    )
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--save", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0
    unknown = set(args.only.split(",")) - set(WORKERS)
    if unknown:
        parser.error(f"--only: unknown measurement(s) {sorted(unknown)}; choose from {sorted(WORKERS)}")

    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import numpy as np

    device = jax.devices()[0]
    results: dict = {"device": f"{device.platform}: {device.device_kind}", "jax": jax.__version__}
    print(f"bench_gpu on {results['device']}, jax {jax.__version__}", flush=True)
    if device.platform == "cpu":
        print("warning: no GPU found; these are CPU numbers (the full-width 720p steps are slow here)", flush=True)
    only = set(args.only.split(","))
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    if "matmul" in only:
        results["matmul"] = _run("matmul", args, [])
    if "forward" in only:
        for dtype in ("float32", "bfloat16"):
            results[f"forward_{dtype}"] = _run(
                "forward", args, ["--dtype", dtype, "--save", str(tmp / f"y_{dtype}.npy")]
            )
        try:
            results["bf16_vs_f32_psnr_db"] = _psnr(np.load(tmp / "y_float32.npy"), np.load(tmp / "y_bfloat16.npy"))
        except OSError:
            pass
    if "train" in only:
        for dtype in ("float32", "bfloat16"):
            results[f"train_{dtype}"] = _run("train", args, ["--dtype", dtype])
    if "fixture" in only:
        results["fixture"] = _run("fixture", args, [])

    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
