r"""Ray Data benchmark: images/s of ``deblur --ray`` against the local deblur CLI, same photos.

  python benchmarks/bench_ray.py --num 16 --size 256x256 --actors 1,2 --json bench_ray.json

Writes ``--num`` random smooth photos of ``--size`` (HxW) and a random full-width DeblurNet
export (``--ckpt`` to use real weights; the speed does not depend on their values), then
times, each as its own command from start to exit (Python start, JAX import, compilation
and, for Ray, starting a local Ray and its actors included):

* ``local``: ``python -m aspdc_jax.deblur --ckpt E PHOTOS --out OUT``;
* ``ray_N``: the same with ``--ray --actors N --batch_size B``, for each N of ``--actors``
  (a local Ray with the machine's CPUs; RAY_ADDRESS is cleared).

Each row gives the command's wall seconds and images/s, and for Ray the job's own seconds
(from the dataset's start to the last row, as the run's report records it). Every Ray
run's PNGs are checked against the local ones, byte for byte. The allocators are reported:
the deblur CLI's (it may re-execute itself with one preloaded, see aspdc_jax.allocator) and
the one its local Ray's actors inherit from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _export(folder: Path, width: str) -> Path:
    from bench_inference import random_params

    from aspdc_jax.models import model_config_dict, model_defaults
    from aspdc_jax.weights import save_export

    config = model_defaults()
    if width == "tiny":
        config = config.replace(deblur_width=4, reblur_width=4, num_groups=1)
    deblur, _ = config.networks()
    params = random_params(deblur)
    return save_export(folder, model_config=model_config_dict(deblur), deblur_params=params)


def _photos(folder: Path, num: int, h: int, w: int) -> None:
    import numpy as np
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(num):
        img = gaussian_filter(rng.integers(0, 256, (h, w, 3)).astype(np.float32), (2, 2, 0)) * 1.5 - 64
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"photo{i:03d}.png")


def _timed(argv: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds


_PROBE = """
from aspdc_jax.allocator import tune_malloc
cli = tune_malloc(reexec=True)  # what python -m aspdc_jax.deblur does first
import ray
from aspdc_jax.inference.ray_data import connect
connect(num_cpus=1)
probe = ray.remote(num_cpus=1)(lambda: __import__("aspdc_jax.allocator").allocator.tune_malloc())
print(cli)
print(ray.get(probe.remote()))
"""


def _allocators() -> tuple[str, str]:
    """The allocator the deblur CLI runs with, and the one its local Ray's workers get."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    cli, actor = proc.stdout.strip().splitlines()[-2:]
    return cli, actor


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=16, help="photos (default: %(default)s)")
    parser.add_argument("--size", default="256x256", help="HxW of every photo (default: %(default)s)")
    parser.add_argument("--actors", default="1,2", help="comma-separated actor counts (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=2, help="images per actor call (default: %(default)s)")
    parser.add_argument("--width", choices=("full", "tiny"), default="full", help="random network (default: full)")
    parser.add_argument("--ckpt", help="a real checkpoint instead of random weights")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()

    cli_allocator, actor_allocator = _allocators()
    h, w = (int(v) for v in args.size.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        ckpt = Path(args.ckpt) if args.ckpt else _export(work / "export", args.width)
        photos = work / "photos"
        _photos(photos, args.num, h, w)
        deblur = [sys.executable, "-m", "aspdc_jax.deblur", "--ckpt", str(ckpt), str(photos), "--quiet"]
        rows = []
        seconds = _timed([*deblur, "--out", str(work / "local")])
        rows.append({"mode": "local", "seconds": seconds, "images_per_s": args.num / seconds})
        reference = _pngs(work / "local")
        for n in (int(v) for v in args.actors.split(",")):
            out = work / f"ray_{n}"
            cmd = [*deblur, "--out", str(out), "--ray", "--actors", str(n), "--batch_size", str(args.batch_size)]
            seconds = _timed(cmd)
            job = json.loads((out / ".aspdc-deblur-ray-report.json").read_text())["seconds"]
            same = _pngs(out) == reference
            rows.append(
                {
                    "mode": f"ray_{n}",
                    "seconds": seconds,
                    "images_per_s": args.num / seconds,
                    "job_seconds": job,
                    "job_images_per_s": args.num / job,
                    "bit_equal_to_local": same,
                }
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "images": args.num,
        "size": f"{h}x{w}",
        "width": "checkpoint" if args.ckpt else args.width,
        "batch_size": args.batch_size,
        "allocator_cli": cli_allocator,
        "allocator_ray_actors": actor_allocator,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    print(
        f"{args.num} photos {h}x{w}, {result['width']} DeblurNet, {os.cpu_count()} CPUs; allocator: "
        f"{cli_allocator} (deblur CLI), {actor_allocator} (Ray actors)"
    )
    print(f"{'mode':<8} {'wall s':>8} {'img/s':>7} {'job s':>7} {'job img/s':>10}  bit-equal")
    for r in rows:
        job = f"{r['job_seconds']:>7.1f} {r['job_images_per_s']:>10.3f}" if "job_seconds" in r else f"{'':>7} {'':>10}"
        print(f"{r['mode']:<8} {r['seconds']:>8.1f} {r['images_per_s']:>7.3f} {job}  {r.get('bit_equal_to_local', '')}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
