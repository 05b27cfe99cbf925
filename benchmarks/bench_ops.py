"""Deformable convolution versus a dense convolution of the same shape; dynamic filter.

Usage::

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \\
        python benchmarks/bench_ops.py --json /tmp/bench_ops.json

Prints a table of median milliseconds (after warm-up) and, with ``--json PATH``, writes
``{"dcn_fwd_ms", "dcn_fwdbwd_ms", "conv_fwd_ms", "conv_fwdbwd_ms", "ratio_fwd",
"ratio_fwdbwd", "allocator"}`` for the (6, 64, 64, 128) case, 3x3 128->128.
Forward+backward means the gradients for inputs, offsets, mask and kernel.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from aspdc_jax.allocator import tune_malloc
from aspdc_jax.cli import FlagParser
from aspdc_jax.ops import deform_conv2d, dynamic_filter


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_dcn(shape: tuple[int, int, int, int], out_channels: int, repeats: int) -> dict:
    b, h, w, c = shape
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], shape)
    off = 2.0 * jax.random.normal(keys[1], (b, h, w, 18))
    mask = jax.nn.sigmoid(jax.random.normal(keys[2], (b, h, w, 9)))
    kernel = jax.random.normal(keys[3], (3, 3, c, out_channels)) * 0.05

    def dcn(x, off, mask, kernel):
        return deform_conv2d(x, off, mask, kernel, padding=1)

    def conv(x, kernel):
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    dcn_fwd = jax.jit(dcn)
    dcn_bwd = jax.jit(jax.grad(lambda *a: jnp.sum(dcn(*a) ** 2), argnums=(0, 1, 2, 3)))
    conv_fwd = jax.jit(conv)
    conv_bwd = jax.jit(jax.grad(lambda *a: jnp.sum(conv(*a) ** 2), argnums=(0, 1)))
    res = {
        "dcn_fwd_ms": median_ms(lambda: dcn_fwd(x, off, mask, kernel), repeats),
        "dcn_fwdbwd_ms": median_ms(lambda: dcn_bwd(x, off, mask, kernel), repeats),
        "conv_fwd_ms": median_ms(lambda: conv_fwd(x, kernel), repeats),
        "conv_fwdbwd_ms": median_ms(lambda: conv_bwd(x, kernel), repeats),
    }
    res["ratio_fwd"] = res["dcn_fwd_ms"] / res["conv_fwd_ms"]
    res["ratio_fwdbwd"] = res["dcn_fwdbwd_ms"] / res["conv_fwdbwd_ms"]
    return res


def bench_dynamic_filter(shape: tuple[int, int, int, int], repeats: int) -> dict:
    b, h, w, _ = shape
    x = jax.random.normal(jax.random.key(0), shape)
    logits = jax.random.normal(jax.random.key(1), (b, h, w, 9))
    fwd = jax.jit(dynamic_filter)
    bwd = jax.jit(jax.grad(lambda x, logit: jnp.sum(dynamic_filter(x, logit) ** 2), argnums=(0, 1)))
    return {
        "fwd_ms": median_ms(lambda: fwd(x, logits), repeats),
        "fwdbwd_ms": median_ms(lambda: bwd(x, logits), repeats),
    }


def main() -> None:
    parser = FlagParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the (6,64,64,128) results to this file")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per measurement")
    args = parser.parse_args()
    allocator = tune_malloc()  # what the entry points do (ASPDC_MALLOC=system: glibc's defaults)

    print(f"device: {jax.devices()[0].device_kind}, allocator: {allocator}")
    header = f"{'case':<34}{'dcn fwd':>10}{'conv fwd':>10}{'ratio':>7}"
    header += f"{'dcn f+b':>10}{'conv f+b':>10}{'ratio':>7}"
    print(header)
    print("-" * len(header))
    main_case = None
    for shape in [(6, 64, 64, 128), (1, 180, 320, 128)]:
        r = bench_dcn(shape, 128, args.repeats)
        main_case = main_case or r
        print(
            f"{'deform_conv2d ' + str(shape):<34}{r['dcn_fwd_ms']:>10.1f}{r['conv_fwd_ms']:>10.1f}"
            f"{r['ratio_fwd']:>7.2f}{r['dcn_fwdbwd_ms']:>10.1f}{r['conv_fwdbwd_ms']:>10.1f}"
            f"{r['ratio_fwdbwd']:>7.2f}"
        )
    df = bench_dynamic_filter((6, 256, 256, 16), args.repeats)
    print(f"{'dynamic_filter (6, 256, 256, 16)':<34}{df['fwd_ms']:>10.1f}{'':>17}{df['fwdbwd_ms']:>10.1f}")
    print("(milliseconds, medians; f+b = gradients for inputs, offsets, mask, kernel)")
    if args.json:
        out = {k: round(v, 3) for k, v in main_case.items()}
        out["allocator"] = allocator
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
