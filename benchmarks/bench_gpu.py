r"""Accelerator benchmark: the paper's train steps, 720p inference and the demo step, float32 and bfloat16.

  python benchmarks/bench_gpu.py --json bench_gpu.json [--md bench_gpu.md]
  python benchmarks/bench_gpu.py --smoke                # tiny sizes: checks the script on a CPU

Every measurement runs in its own subprocess, so its peak device memory
(``memory_stats()["peak_bytes_in_use"]``) is its own. Up to ``--parallel`` of them run at
once: they build and compile concurrently (XLA compiles on the host's cores, so 16 cores
finish a dozen full-width programs in about the time of three), while a lock file keeps the
timed part exclusive: a worker compiles and runs its first call under a shared lock and is
timed under an exclusive one, so no timing overlaps another process's kernels (XLA's
autotuning included). ``--parallel 1`` runs them one after another.

1. ``matmul``: 8192^3 products in float32 (XLA's default precision, TF32 tensor cores on
   NVIDIA GPUs, and ``precision=HIGHEST``) and bfloat16: the card's ceilings.
2. ``forward_<dtype>``: the paper-width DeblurNet through :class:`aspdc_jax.inference.Deblurrer`
   on 1280x720 at batch 1 and ``--batch`` (4): first call (compile) seconds, best of
   ``--repeats`` seconds, model TFLOP/s (FLOPs counted from the jaxpr as in
   ``bench_inference.py``), peak device memory. The bfloat16 output is compared with the
   float32 one (PSNR, dB).
3. ``train_<dtype>_<plain|remat>``: the paper's deblur and finetune train steps at
   6x256x256 (full width, MSE, Adam) with and without ``config.model.remat``: median step
   seconds, compile seconds, peak device memory (after the deblur steps, and after the
   finetune steps, which is the process's peak) and XLA's own estimate of each step
   program (arguments + outputs + temporaries), against the paper's 11 GiB card
   (RTX 2080 Ti).
4. ``demo``: one train step of ``configs/gpu_demo.py`` (its network, batch, crop, dtype,
   loss, optimizer and EMA; ``--demo_override key=value`` changes a field): steps/s and
   crops/s. ``benchmarks/device_check.py`` sizes the demo's schedule from it.
5. ``fixture``: the official fixture nets (``tests/fixtures/official_nets.npz``) in float32 at
   the default and HIGHEST precision and in bfloat16: max abs error of the deblurred image.

Parameters are random (the speed does not depend on them). ``--json`` writes every number,
``--md`` the table that ``--json``'s ``table`` holds too.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parent))

#: The paper's card (RTX 2080 Ti, 11 GiB): does a train step fit?
PAPER_CARD_GIB = 11.0
MEASUREMENTS = ("matmul", "forward", "train", "demo", "fixture")

# Sizes: (name -> value) for the real run and for --smoke (tiny, CPU-friendly).
FULL = {
    "matmul_size": 8192,
    "forward_hw": (720, 1280),
    "forward_widths": (32, 6),
    "train_batch": 6,
    "train_size": 256,
    "train_widths": (32, 16, 6),
    "branches": None,  # the paper's four
    "train_phases": ("deblur", "finetune"),
}
# XLA's CPU compile dominates a smoke run: one ASPDC branch halves it, and the finetune
# step (ReblurNet in the graph) takes as long again as the deblur step, so it is left out.
SMOKE = {
    "matmul_size": 256,
    "forward_hw": (48, 64),
    "forward_widths": (4, 1),
    "train_batch": 2,
    "train_size": 32,
    "train_widths": (4, 4, 1),
    "branches": ("d1",),
    "train_phases": ("deblur",),
}
#: Tiny demo network and data for --smoke (device_check.py's smoke training extends these).
SMOKE_DEMO_OVERRIDES = (
    "model.deblur_width=4",
    "model.reblur_width=4",
    "model.num_groups=1",
    "data.crop_size=32",
    "batch_size=2",
    "model.branches=('d1',)",
)


# ----------------------------------------------------------------------------- worker helpers


@contextlib.contextmanager
def _lock(path: str, exclusive: bool) -> Iterator[None]:
    """Shared (compile, first call) or exclusive (timing) hold of the lock file ``path``."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _peak_gib() -> float | None:
    """The process's peak device memory (GiB); None where the backend does not say (CPU)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def _program_gib(compiled: Any) -> float | None:
    """XLA's buffer assignment of one compiled program: arguments + outputs + temporaries
    - donated (aliased) bytes, in GiB; None where the backend does not say."""
    try:
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    except (AttributeError, NotImplementedError, TypeError):
        return None
    return total / 2**30


def _random_params(module: Any, *inputs: Any, seed: int = 0) -> Any:
    """Xavier-scaled random params with the module's tree, made in NumPy (no init compile)."""
    import jax
    import numpy as np

    shapes = jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"]
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if len(leaf.shape) < 2:
            return np.zeros(leaf.shape, np.float32)
        fan = int(np.prod(leaf.shape[-4:-1])) if len(leaf.shape) >= 4 else leaf.shape[0]
        return (rng.standard_normal(leaf.shape) / np.sqrt(2.0 * fan)).astype(np.float32)

    return jax.tree_util.tree_map(fill, shapes)


def _timed(fn: Any, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _photo(h: int, w: int):
    import numpy as np
    from PIL import Image

    from aspdc_jax.data.synthetic import builtin_photos

    _, photo = builtin_photos("train")[0]
    return np.asarray(Image.fromarray(photo).resize((w, h), Image.BICUBIC))


# ----------------------------------------------------------------------------- workers


def worker_matmul(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp

    n = spec["matmul_size"]
    out: dict = {"matmul_size": n}
    for label, dtype, precision in (
        ("f32_default", jnp.float32, None),
        ("f32_highest", jnp.float32, jax.lax.Precision.HIGHEST),
        ("bf16", jnp.bfloat16, None),
    ):
        a = jax.random.normal(jax.random.key(0), (n, n), dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), dtype)
        with _lock(spec["lock"], exclusive=False):
            f = jax.jit(lambda x, y, p=precision: jnp.dot(x, y, precision=p))
            f(a, b).block_until_ready()
        with _lock(spec["lock"], exclusive=True):
            best = min(_timed(lambda f=f, a=a, b=b: f(a, b).block_until_ready(), 10))
        out[f"{label}_tflops"] = 2.0 * n**3 / best / 1e12
    return out


def worker_forward(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from bench_inference import count_flops

    from aspdc_jax.inference import Deblurrer
    from aspdc_jax.models import DeblurNet

    h, w = spec["forward_hw"]
    width, groups = spec["forward_widths"]
    module = DeblurNet(width=width, num_groups=groups, **_branches(spec))
    params = _random_params(module, jnp.zeros((1, 16, 16, 3)))
    x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    flops = count_flops(jax.make_jaxpr(lambda p, v: module.apply({"params": p}, v).deblurred)(params, x).jaxpr)
    deblurrer = Deblurrer(module, params, bucket="exact", dtype=spec["dtype"])
    image = _photo(h, w)[None]
    out: dict = {"dtype": spec["dtype"], "size": [h, w], "widths": [width, groups], "model_gflop": flops / 1e9}
    for batch in sorted({1, spec["batch"]}):
        images = np.repeat(image, batch, axis=0)
        with _lock(spec["lock"], exclusive=False):
            t = time.perf_counter()
            y = deblurrer.forward_padded(images)
            out[f"first_call_s_b{batch}"] = time.perf_counter() - t
        with _lock(spec["lock"], exclusive=True):
            deblurrer.forward_padded(images)  # warm-up
            times = _timed(lambda images=images: deblurrer.forward_padded(images), spec["repeats"])
        out[f"seconds_b{batch}"] = float(np.min(times))
        out[f"seconds_b{batch}_mean"] = float(np.mean(times))
        out[f"model_tflops_b{batch}"] = batch * flops / float(np.min(times)) / 1e12
        if batch == 1 and spec.get("save"):
            np.save(spec["save"], y[0])
    out["peak_device_gib"] = _peak_gib()
    return out


def _branches(spec: dict) -> dict:
    return {} if not spec.get("branches") else {"branches": tuple(spec["branches"])}


def _train_programs(spec: dict) -> Iterator[tuple[str, Any, Any, tuple, Any]]:
    """(phase, step, state, extra args, compiled) of the deblur and finetune steps."""
    import numpy as np
    import optax

    from aspdc_jax.models import model_defaults
    from aspdc_jax.training import TrainState, make_mesh, make_train_step, mse
    from aspdc_jax.training.loop import compute_modules
    from aspdc_jax.training.sharding import put_global_batch, replicate

    dw, rw, groups = spec["train_widths"]
    nets = model_defaults().replace(
        deblur_width=dw, reblur_width=rw, num_groups=groups, remat=spec["remat"], **_branches(spec)
    )
    deblur, reblur = nets.networks()
    deblur, reblur = compute_modules({"compute_dtype": spec["dtype"]}, deblur, reblur)
    x = np.zeros((1, 16, 16, 3), np.float32)
    dparams, rparams = _random_params(deblur, x), _random_params(reblur, x, x, seed=1)
    mesh = make_mesh()
    b, s = spec["train_batch"], spec["train_size"]
    data = np.random.default_rng(0).integers(0, 256, (2, b, s, s, 3), np.uint8)
    batch = put_global_batch({"blurred": data[0], "sharp": data[1]}, mesh)
    tx = optax.adam(1e-4, eps=1e-18)
    for phase in spec["train_phases"]:
        step = make_train_step(
            phase, deblur=deblur, reblur=reblur, tx=tx, image_loss=mse, mesh=mesh, phase_config={"reblur_weight": 0.1}
        )
        state = replicate(TrainState.create(dparams, tx), mesh)
        extra = (replicate(rparams, mesh),) if phase == "finetune" else ()
        compiled = step.lower(state, batch, *extra).compile()
        yield phase, compiled, state, extra, batch


def worker_train(spec: dict) -> dict:
    import jax
    import numpy as np

    out: dict = {
        "dtype": spec["dtype"],
        "remat": spec["remat"],
        "batch": spec["train_batch"],
        "size": spec["train_size"],
        "widths": list(spec["train_widths"]),
    }
    programs = _train_programs(spec)
    while True:
        with _lock(spec["lock"], exclusive=False):
            t = time.perf_counter()
            item = next(programs, None)
            if item is None:
                break
            phase, compiled, state, extra, batch = item
            out[f"{phase}_compile_s"] = time.perf_counter() - t
            state, metrics = compiled(state, batch, *extra)  # first call
            jax.block_until_ready((state, metrics))
        holder = {"state": state}

        def one_step(compiled=compiled, extra=extra, batch=batch, holder=holder):
            holder["state"], m = compiled(holder["state"], batch, *extra)
            jax.block_until_ready((holder["state"], m))

        with _lock(spec["lock"], exclusive=True):
            one_step()
            times = _timed(one_step, spec["repeats"])
        out[f"{phase}_step_s"] = float(np.median(times))
        out[f"{phase}_step_times"] = times
        out[f"{phase}_program_gib"] = _program_gib(compiled)
        out[f"{phase}_peak_device_gib"] = _peak_gib()
        del holder, state
    peaks = [out.get(f"{p}_peak_device_gib") or out.get(f"{p}_program_gib") for p in spec["train_phases"]]
    known = [p for p in peaks if p is not None]
    out["peak_gib"] = max(known) if known else None
    out["fits_paper_card"] = None if not known else bool(max(known) <= PAPER_CARD_GIB)
    return out


def demo_config(overrides: list[str] | tuple[str, ...] = ()):
    """``configs/gpu_demo.py`` with ``key=value`` overrides (values parsed as JSON, else str)."""
    from configs import gpu_demo

    config = gpu_demo.get_config()
    for item in overrides:
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            try:  # ('d1',) for a tuple field, as train.py's --config.<field> takes it
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
        node = config
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        current = node[leaf]
        for kind in (bool, int, float):  # "1" for a float field, "true" for a bool one
            if isinstance(current, kind) and value is not None:
                value = kind(value)
                break
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        node[leaf] = value
    return config


def worker_demo(spec: dict) -> dict:
    import jax
    import numpy as np

    from aspdc_jax.models import model_from_config
    from aspdc_jax.training import TrainState, make_mesh, make_optimizer, make_train_step
    from aspdc_jax.training.loop import compute_modules
    from aspdc_jax.training.losses import get_loss
    from aspdc_jax.training.sharding import put_global_batch, replicate

    config = demo_config(spec["demo_overrides"])
    deblur, reblur = model_from_config(config.model)
    x = np.zeros((1, 16, 16, 3), np.float32)
    params = _random_params(deblur, x)
    deblur, reblur = compute_modules(config, deblur, reblur)
    mesh = make_mesh()
    tx = make_optimizer(config, 1e-4)
    ema = float(config.ema_decay)
    step = make_train_step(
        "deblur",
        deblur=deblur,
        reblur=reblur,
        tx=tx,
        image_loss=get_loss(config.loss),
        mesh=mesh,
        phase_config=config.deblur,
        grad_accum_steps=int(config.grad_accum_steps),
        ema_decay=ema,
    )
    b, c = int(config.batch_size), int(config.data.crop_size)
    data = np.random.default_rng(0).integers(0, 256, (2, b, c, c, 3), np.uint8)
    batch = put_global_batch({"blurred": data[0], "sharp": data[1]}, mesh)
    holder = {"state": replicate(TrainState.create(params, tx, ema=ema > 0), mesh)}

    def one_step():
        holder["state"], m = step(holder["state"], batch)
        jax.block_until_ready((holder["state"], m))

    with _lock(spec["lock"], exclusive=False):
        t = time.perf_counter()
        one_step()
        first = time.perf_counter() - t
    with _lock(spec["lock"], exclusive=True):
        one_step()
        times = _timed(one_step, max(spec["repeats"], 5))
    step_s = float(np.median(times))
    return {
        "batch": b,
        "crop": c,
        "widths": [int(config.model.deblur_width), int(config.model.num_groups)],
        "dtype": str(config.compute_dtype),
        "first_call_s": first,
        "step_s": step_s,
        "steps_per_s": 1.0 / step_s,
        "crops_per_s": b / step_s,
        "peak_device_gib": _peak_gib(),
    }


def worker_fixture(spec: dict) -> dict:
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
    with _lock(spec["lock"], exclusive=False):
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


WORKERS = {
    "matmul": worker_matmul,
    "forward": worker_forward,
    "train": worker_train,
    "demo": worker_demo,
    "fixture": worker_fixture,
}


# ----------------------------------------------------------------------------- the parent


def plan(only: set[str], sizes: dict, args: argparse.Namespace, lock: str, tmp: Path) -> list[tuple[str, str, dict]]:
    """(result key, worker, spec) in launch order: the paper's numbers first."""
    base = dict(sizes, lock=lock, repeats=args.repeats, batch=args.batch, demo_overrides=list(args.demo_override))
    jobs: list[tuple[str, str, dict]] = []
    if "train" in only:
        variants = [("float32", False), ("bfloat16", False), ("float32", True), ("bfloat16", True)]
        for dtype, remat in variants[::3] if args.smoke else variants:  # smoke: f32 plain, bf16 remat
            jobs.append(
                (f"train_{dtype}_{'remat' if remat else 'plain'}", "train", dict(base, dtype=dtype, remat=remat))
            )
    if "demo" in only:
        jobs.append(("demo", "demo", base))
    if "forward" in only:
        for dtype in ("float32", "bfloat16"):
            jobs.append((f"forward_{dtype}", "forward", dict(base, dtype=dtype, save=str(tmp / f"y_{dtype}.npy"))))
    if "matmul" in only:
        jobs.append(("matmul", "matmul", base))
    if "fixture" in only:
        jobs.append(("fixture", "fixture", base))
    return jobs


def run_jobs(jobs: list[tuple[str, str, dict]], parallel: int, deadline: float, log: Any = None) -> dict[str, dict]:
    """Runs the workers, at most ``parallel`` at once, all ended by ``deadline``
    (``time.monotonic()``); a failed or unfinished one is recorded as ``{"error": ...}``."""
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONUNBUFFERED="1")
    pending = list(jobs)
    running: dict[str, tuple[subprocess.Popen, float, Any, Any]] = {}
    results: dict[str, dict] = {}

    def say(text: str) -> None:
        print(text, flush=True)
        if log is not None:
            log.write(text + "\n")
            log.flush()

    while pending or running:
        while pending and len(running) < max(1, parallel) and time.monotonic() < deadline:
            key, worker, spec = pending.pop(0)
            out_f, err_f = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            cmd = [sys.executable, str(HERE), "--worker", worker, "--spec", json.dumps(spec)]
            running[key] = (subprocess.Popen(cmd, stdout=out_f, stderr=err_f, env=env), time.monotonic(), out_f, err_f)
        if not running:
            for key, _, _ in pending:
                results[key] = {"error": "not started: the time budget (--budget_s) ran out"}
                say(f"{key}: not started (budget)")
            break
        time.sleep(0.2)
        for key, (proc, started, out_f, err_f) in list(running.items()):
            late = time.monotonic() > deadline
            if proc.poll() is None and not late:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out_f.seek(0)
            err_f.seek(0)
            stdout, stderr = out_f.read(), err_f.read()
            out_f.close()
            err_f.close()
            del running[key]
            wall = time.monotonic() - started
            lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
            if late and proc.returncode != 0:
                results[key] = {"error": f"timed out: still running when the budget ran out ({wall:.0f} s)"}
            elif proc.returncode != 0 or not lines:
                results[key] = {"error": f"exit {proc.returncode}: {stderr.strip()[-2000:]}"}
            else:
                results[key] = dict(json.loads(lines[-1]), wall_s=wall)
            status = "error" if "error" in results[key] else "ok"
            say(f"{key}: {status} in {wall:.1f} s: {json.dumps(results[key])[:600]}")
    return results


def _ms(seconds: Any) -> str:
    return "-" if not isinstance(seconds, (int, float)) else f"{seconds * 1e3:.1f} ms"


def _gib(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.2f} GiB"


def _cell(result: dict | None, text: str) -> str:
    if not result:
        return "not run"
    if "error" in result:
        return "failed" if not result["error"].startswith(("timed out", "not started")) else "out of time"
    return text


def format_table(results: dict) -> str:
    """The markdown table of a ``--json`` result (float32 and bfloat16 columns)."""
    rows: list[tuple[str, str, str]] = []
    fwd = {d: results.get(f"forward_{d}") for d in ("float32", "bfloat16")}
    size = next((r["size"] for r in fwd.values() if r and "size" in r), None)
    label = f"{size[1]}x{size[0]}" if size else "forward"
    batches = sorted(
        {int(k[len("seconds_b") :]) for r in fwd.values() if r for k in r if k[len("seconds_b") :].isdigit()}
    )
    for b in batches:
        cells = []
        for d in ("float32", "bfloat16"):
            r = fwd[d] or {}
            text = f"{_ms(r.get(f'seconds_b{b}'))} ({r.get(f'model_tflops_b{b}', 0):.0f} TFLOP/s)"
            cells.append(_cell(fwd[d], text))
        rows.append((f"{label} forward, batch {b}", *cells))
    if batches:
        rows.append(
            (
                "first call (compile + run), batch 1",
                *(_cell(fwd[d], f"{(fwd[d] or {}).get('first_call_s_b1', 0):.1f} s") for d in ("float32", "bfloat16")),
            )
        )
        rows.append(
            (
                f"peak device memory (batches {' and '.join(map(str, batches))}, one process)",
                *(_cell(fwd[d], _gib((fwd[d] or {}).get("peak_device_gib"))) for d in ("float32", "bfloat16")),
            )
        )
    for remat in ("plain", "remat"):
        trains = {d: results.get(f"train_{d}_{remat}") for d in ("float32", "bfloat16")}
        shape = next((r for r in trains.values() if r and "batch" in r), None)
        if shape is None and not any(trains.values()):
            continue
        what = f"{shape['batch']}x{shape['size']}x{shape['size']}" if shape else "train"
        cells = []
        for d in ("float32", "bfloat16"):
            r = trains[d] or {}
            fits = r.get("fits_paper_card")
            fit = "" if fits is None else (" (fits 11 GiB)" if fits else " (over 11 GiB)")
            text = (
                f"{_ms(r.get('deblur_step_s'))} / {_ms(r.get('finetune_step_s'))}, peak {_gib(r.get('peak_gib'))}{fit}"
            )
            cells.append(_cell(trains[d], text))
        rows.append((f"train step {what}, deblur / finetune{', remat' if remat == 'remat' else ''}", *cells))
    demo = results.get("demo")
    if demo is not None:
        d = demo.get("dtype", "bfloat16")
        text = _cell(
            demo,
            f"{_ms(demo.get('step_s'))} = {demo.get('crops_per_s', 0):.0f} crops/s "
            f"({demo.get('batch')}x{demo.get('crop')}^2, width {demo.get('widths')})",
        )
        rows.append(("demo train step (configs/gpu_demo.py)", *((text, "") if d == "float32" else ("", text))))
    mm = results.get("matmul")
    if mm is not None:
        rows.append(
            (
                f"{mm.get('matmul_size', '')}^3 matmul",
                _cell(
                    mm,
                    f"{mm.get('f32_default_tflops', 0):.0f} TFLOP/s (default), "
                    f"{mm.get('f32_highest_tflops', 0):.0f} (HIGHEST)",
                ),
                _cell(mm, f"{mm.get('bf16_tflops', 0):.0f} TFLOP/s"),
            )
        )
    fx = results.get("fixture")
    if fx is not None:
        rows.append(
            (
                "official fixture, max abs error",
                _cell(
                    fx,
                    f"{fx.get('max_abs_err_f32_default', 0):.1e} (default), {fx.get('max_abs_err_f32_highest', 0):.1e}",
                ),
                _cell(fx, f"{fx.get('max_abs_err_bf16', 0):.1e}"),
            )
        )
    lines = ["| measure | float32 | bfloat16 |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from aspdc_jax.cli import FlagParser

    parser = FlagParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--md", help="write the markdown table here")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up")
    parser.add_argument("--batch", type=int, default=4, help="second forward batch size")
    parser.add_argument("--parallel", type=int, default=6, help="measurements that build and compile at once")
    parser.add_argument("--budget_s", type=float, default=600, help="end every measurement by then (seconds)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU check of this script)")
    parser.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        help=f"comma-separated subset of {', '.join(MEASUREMENTS)} (default: all)",
    )
    parser.add_argument(
        "--demo_override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a field of configs/gpu_demo.py for the demo step, e.g. batch_size=32 (repeatable)",
    )
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.spec))))
        return 0
    only = {m.strip() for m in args.only.split(",") if m.strip()}
    unknown = only - set(MEASUREMENTS)
    if unknown:
        parser.error(f"--only: unknown measurement(s) {sorted(unknown)}; choose from {', '.join(MEASUREMENTS)}")
    deadline = time.monotonic() + args.budget_s
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import numpy as np

    device = jax.devices()[0]
    demo_overrides = list(SMOKE_DEMO_OVERRIDES) + args.demo_override if args.smoke else args.demo_override
    args.demo_override = demo_overrides
    results: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": f"{device.platform}: {device.device_kind}",
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "smoke": bool(args.smoke),
        "parallel": args.parallel,
        "paper_card_gib": PAPER_CARD_GIB,
    }
    print(f"bench_gpu on {results['device']}, jax {jax.__version__}", flush=True)
    if device.platform == "cpu" and not args.smoke:
        print("warning: no GPU found; these are CPU numbers (the full-width 720p steps are slow here)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        lock = str(Path(tmp) / "timing.lock")
        jobs = plan(only, SMOKE if args.smoke else FULL, args, lock if args.parallel > 1 else "", Path(tmp))
        results.update(run_jobs(jobs, args.parallel, deadline))
        try:
            from aspdc_jax.evaluation.metrics import psnr_numpy

            y32, y16 = np.load(Path(tmp) / "y_float32.npy"), np.load(Path(tmp) / "y_bfloat16.npy")
            results["bf16_vs_f32_psnr_db"] = float(psnr_numpy(y32, y16, peak=255.0))
        except OSError:
            pass
    results["table"] = format_table(results)
    print(results["table"], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.md:
        Path(args.md).write_text(results["table"] + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
