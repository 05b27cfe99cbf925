"""Deformable convolution against the fastest dense convolution of the same shape, with a roofline.

Usage::

    python benchmarks/bench_ops.py --json /tmp/bench_ops.json

For each shape (3x3, 128->128) it times, in one run, ``deform_conv2d`` and three dense
convolutions: XLA's ``lax.conv_general_dilated`` with XLA's gradient, ``aspdc_jax.ops.conv2d``
(XLA's forward, an im2col kernel gradient) and an im2col matmul (9 strided slices, one
matmul). The dense baseline is the fastest of the three, separately for the forward and for
forward+backward (gradients for inputs and kernel; the DCN's also for offsets and mask).

The roofline is the least time the deformable conv could take on this machine, measured in
the same run: the bytes its bilinear gathers and scatters must move at the machine's
streaming bandwidth, plus the dense FLOPs at its float32 matmul rate. With ``E = B*H*W * k*k
* 4 * 128`` gathered elements (4 bilinear corners per tap, 128 channels) the forward
gathers ``E`` and does ``2*B*H*W*k*k*128*128`` FLOPs; forward+backward adds a gather (the
offset and mask gradients) and a scatter-add (the input gradient: read and write) of ``E``
each, and twice the FLOPs. Bandwidth is the best of an XLA ``2*x`` over 256 MiB (read +
write); the matmul rate the best of a 4096^3 float32 matmul. ``roofline fraction`` = limit /
measured time (1.0 = at the limit).

Prints a table of median milliseconds (after warm-up) and, with ``--json PATH``, writes the
(6, 64, 64, 128) case (the shape of each ASPDC branch in the paper's training step):
``dcn_fwd_ms, dcn_fwdbwd_ms, conv_fwd_ms, conv_fwdbwd_ms`` (fastest dense), ``conv_*_impl``,
``dense_ms`` (every dense variant), ``ratio_fwd, ratio_fwdbwd``, ``roofline_fwd_ms,
roofline_fwdbwd_ms, roofline_fraction_fwd, roofline_fraction_fwdbwd``, ``bandwidth_gbs,
matmul_gflops`` and ``allocator``.
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
from aspdc_jax.ops import conv2d, deform_conv2d, dynamic_filter
from aspdc_jax.ops.conv import tap_windows

KERNEL = 3
CORNERS = 4


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    """Least of ``repeats`` timed runs: the machine's best, for the roofline's rates."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def machine_rates(repeats: int) -> dict:
    """Streaming bandwidth (GB/s, read + write) and float32 matmul rate (GFLOP/s)."""
    vector = jnp.ones((64 << 20,), jnp.float32)  # 256 MiB
    double = jax.jit(lambda v: v * 2.0)
    stream_ms = best_ms(lambda: double(vector), repeats)
    n = 4096
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul_ms = best_ms(lambda: matmul(a), max(3, repeats // 2))
    return {
        "bandwidth_gbs": 2 * vector.nbytes / stream_ms / 1e6,
        "matmul_gflops": 2 * n**3 / matmul_ms / 1e6,
    }


def dense_convs(shape: tuple[int, int, int, int]) -> dict[str, Callable]:
    """The dense 3x3 convolutions this stack has, ``(x, kernel) -> y``, same results."""
    _, h, w, _ = shape
    geometry = ((1, 1), ((1, 1), (1, 1)), (1, 1), (1, 1))

    def xla(x, kernel):
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def ours(x, kernel):
        return conv2d(x, kernel, padding=((1, 1), (1, 1)))

    def im2col(x, kernel):
        columns = jnp.concatenate(tap_windows(x, (KERNEL, KERNEL), (h, w), geometry), axis=-1)
        out = columns @ kernel.reshape(-1, kernel.shape[-1])
        return out.reshape(*x.shape[:3], kernel.shape[-1])

    return {"lax.conv": xla, "aspdc conv2d": ours, "im2col matmul": im2col}


def bench_dcn(shape: tuple[int, int, int, int], out_channels: int, repeats: int, rates: dict) -> dict:
    b, h, w, c = shape
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], shape)
    off = 2.0 * jax.random.normal(keys[1], (b, h, w, 2 * KERNEL * KERNEL))
    mask = jax.nn.sigmoid(jax.random.normal(keys[2], (b, h, w, KERNEL * KERNEL)))
    kernel = jax.random.normal(keys[3], (KERNEL, KERNEL, c, out_channels)) * 0.05

    def dcn(x, off, mask, kernel):
        return deform_conv2d(x, off, mask, kernel, padding=1)

    dcn_fwd = jax.jit(dcn)
    dcn_bwd = jax.jit(jax.grad(lambda *a: jnp.sum(dcn(*a) ** 2), argnums=(0, 1, 2, 3)))
    res = {
        "dcn_fwd_ms": median_ms(lambda: dcn_fwd(x, off, mask, kernel), repeats),
        "dcn_fwdbwd_ms": median_ms(lambda: dcn_bwd(x, off, mask, kernel), repeats),
    }
    dense: dict[str, dict[str, float]] = {}
    for name, conv in dense_convs(shape).items():
        fwd = jax.jit(conv)
        bwd = jax.jit(jax.grad(lambda x, k, conv=conv: jnp.sum(conv(x, k) ** 2), argnums=(0, 1)))
        dense[name] = {
            "fwd": median_ms(lambda fwd=fwd: fwd(x, kernel), repeats),
            "fwdbwd": median_ms(lambda bwd=bwd: bwd(x, kernel), repeats),
        }
    for part in ("fwd", "fwdbwd"):
        name = min(dense, key=lambda n: dense[n][part])
        res[f"conv_{part}_ms"] = dense[name][part]
        res[f"conv_{part}_impl"] = name
        res[f"ratio_{part}"] = res[f"dcn_{part}_ms"] / dense[name][part]
    res["dense_ms"] = dense

    gathered = b * h * w * KERNEL * KERNEL * CORNERS * out_channels * x.dtype.itemsize  # bytes of E
    flops = 2 * b * h * w * KERNEL * KERNEL * c * out_channels
    for part, passes, flop_passes in (("fwd", 1, 1), ("fwdbwd", 1 + 1 + 2, 3)):
        limit = passes * gathered / rates["bandwidth_gbs"] / 1e6 + flop_passes * flops / rates["matmul_gflops"] / 1e6
        res[f"roofline_{part}_ms"] = limit
        res[f"roofline_fraction_{part}"] = limit / res[f"dcn_{part}_ms"]
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
    allocator = tune_malloc(reexec=True)  # what the entry points do (see aspdc_jax/allocator.py)

    rates = machine_rates(args.repeats)
    print(f"device: {jax.devices()[0].device_kind}, allocator: {allocator}")
    print(f"machine: {rates['bandwidth_gbs']:.1f} GB/s streaming, {rates['matmul_gflops']:.0f} GFLOP/s f32 matmul")
    header = f"{'case':<34}{'dcn fwd':>10}{'dense':>9}{'ratio':>7}{'roofline':>10}"
    header += f"{'dcn f+b':>10}{'dense':>9}{'ratio':>7}{'roofline':>10}"
    print(header)
    print("-" * len(header))
    main_case = None
    for shape in [(6, 64, 64, 128), (1, 180, 320, 128)]:
        r = bench_dcn(shape, 128, args.repeats, rates)
        main_case = main_case or r
        print(
            f"{'deform_conv2d ' + str(shape):<34}{r['dcn_fwd_ms']:>10.1f}{r['conv_fwd_ms']:>9.1f}"
            f"{r['ratio_fwd']:>7.2f}{r['roofline_fraction_fwd']:>10.2f}{r['dcn_fwdbwd_ms']:>10.1f}"
            f"{r['conv_fwdbwd_ms']:>9.1f}{r['ratio_fwdbwd']:>7.2f}{r['roofline_fraction_fwdbwd']:>10.2f}"
        )
        dense = ", ".join(f"{n} {t['fwd']:.1f} / {t['fwdbwd']:.1f}" for n, t in r["dense_ms"].items())
        print(f"{'':<4}dense fwd / f+b: {dense}")
        print(f"{'':<4}roofline limit fwd / f+b: {r['roofline_fwd_ms']:.1f} / {r['roofline_fwdbwd_ms']:.1f} ms")
    df = bench_dynamic_filter((6, 256, 256, 16), args.repeats)
    print(f"{'dynamic_filter (6, 256, 256, 16)':<34}{df['fwd_ms']:>10.1f}{'':>26}{df['fwdbwd_ms']:>10.1f}")
    print(
        "(milliseconds, medians; dense = the fastest dense conv; roofline = limit / measured, "
        "1.0 at the limit; f+b = gradients for inputs, offsets, mask, kernel)"
    )
    if args.json:
        out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in main_case.items()}
        out["dense_ms"] = {n: {p: round(t, 3) for p, t in d.items()} for n, d in main_case["dense_ms"].items()}
        out.update({k: round(v, 3) for k, v in rates.items()})
        out["allocator"] = allocator
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
