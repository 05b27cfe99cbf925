"""Input-pipeline throughput: 256x256 crop pairs per second.

Sources: a prepared GoPro-layout store of 1280x720 PNG pairs (a fake tree made from the
bundled photos, written to a temporary folder) and the synthetic source (fresh blur per
example). Each is timed with 0 and 2 worker processes after a warm-up.

    python benchmarks/bench_data.py [--pairs 8] [--batches 12] [--batch_size 8] [--json out.json]

``--json`` writes {"pairs_per_s_store", "pairs_per_s_synthetic"} (best worker setting of
each) plus the full table.
"""

from __future__ import annotations

import json
import pathlib
import tempfile
import time

from PIL import Image, ImageFilter


def make_fake_gopro(root: pathlib.Path, pairs: int, size: tuple[int, int] = (1280, 720)) -> None:
    """GOPRO_Large/{train,test}/GOPRxxxx/{blur,sharp}/NNNNNN.png from the bundled photos."""
    from aspdc_jax.data import synthetic

    photos = synthetic.builtin_photos("train") + synthetic.builtin_photos("test")
    for split, n in (("train", pairs), ("test", 1)):
        for i in range(n):
            scene = root / "GOPRO_Large" / split / f"GOPR{i // 4:04d}_11_00"
            for sub in ("blur", "sharp"):
                (scene / sub).mkdir(parents=True, exist_ok=True)
            sharp = Image.fromarray(photos[i % len(photos)][1]).resize(size, Image.BICUBIC)
            blurred = sharp.filter(ImageFilter.BoxBlur(4))
            sharp.save(scene / "sharp" / f"{i:06d}.png")
            blurred.save(scene / "blur" / f"{i:06d}.png")


def time_loader(cfg, batch_size: int, batches: int) -> tuple[float, float]:
    """(pairs per wall-clock second, CPU ms per pair of this process; meaningful for 0 workers)."""
    from aspdc_jax.data import make_train_loader

    loader = make_train_loader(cfg, global_batch_size=batch_size, seed=0)
    it = iter(loader)
    for _ in range(2):  # warm-up: worker start, first reads
        next(it)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        batch = next(it)
        assert batch["blurred"].shape == (batch_size, cfg.crop_size, cfg.crop_size, 3)
    rate = batches * batch_size / (time.perf_counter() - t0)
    cpu_ms = (time.process_time() - c0) * 1000 / (batches * batch_size)
    del it
    return rate, cpu_ms


def main() -> None:
    from aspdc_jax.cli import FlagParser

    parser = FlagParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=8, help="1280x720 training pairs in the fake store")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from aspdc_jax.allocator import tune_malloc

    allocator = tune_malloc(reexec=True)  # what train.py does
    print(f"allocator: {allocator}")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    workers = [int(w) for w in args.workers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        t0 = time.perf_counter()
        make_fake_gopro(tmp / "raw", args.pairs)
        from aspdc_jax.data import pipeline
        from aspdc_jax.data.settings import defaults

        # configs/default.py's data section (augment, read threads, blur, ...) at these sizes.
        base = defaults().replace(
            data_dir=str(tmp / "raw"), tfds_dir=str(tmp / "tfds"), crop_size=args.crop, epoch_size=10_000
        )
        store_cfg = base.replace(dataset="gopro", num_workers=0)
        pipeline.store_for(store_cfg, split="train")  # the store the loader reads
        print(f"fake GoPro store: {args.pairs} pairs of 1280x720 prepared in {time.perf_counter() - t0:.1f} s")
        for source in ("store", "synthetic"):
            for w in workers:
                if source == "store":
                    cfg = base.replace(dataset="gopro", num_workers=w)
                else:
                    # Photo crops only (no procedural scenes), as this benchmark has always measured.
                    cfg = base.replace(
                        dataset="synthetic", data_dir=None, num_workers=w, synthetic_scene_probability=0.0
                    )
                rate, cpu_ms = time_loader(cfg, args.batch_size, args.batches)
                rows.append({"source": source, "workers": w, "pairs_per_s": rate, "main_cpu_ms_per_pair": cpu_ms})
                note = f"  ({cpu_ms:.1f} CPU ms per pair)" if w == 0 else ""
                print(f"{source:10s} workers={w}  {rate:7.1f} crop pairs/s ({args.crop}x{args.crop}){note}")
    best = {s: max(r["pairs_per_s"] for r in rows if r["source"] == s) for s in ("store", "synthetic")}
    print("\n| source    | best pairs/s |\n|-----------|--------------|")
    for s, v in best.items():
        print(f"| {s:9s} | {v:12.1f} |")
    if args.json:
        out = {
            "pairs_per_s_store": best["store"],
            "pairs_per_s_synthetic": best["synthetic"],
            "rows": rows,
            "crop": args.crop,
            "batch_size": args.batch_size,
            "allocator": allocator,
        }
        pathlib.Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
