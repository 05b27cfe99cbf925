"""deform_conv2d, dynamic_filter and conv2d against torchvision fixtures, numpy loop references and XLA."""

from __future__ import annotations

import json
from pathlib import Path

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aspdc_jax.ops import conv2d, deform_conv2d, dynamic_filter

FIXTURES = Path(__file__).parent / "fixtures"
CASES = json.loads((FIXTURES / "deform_conv_cases.json").read_text())["cases"]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def nhwc(a: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(np.moveaxis(a, 1, -1))


def nchw(a: jax.Array) -> np.ndarray:
    return np.moveaxis(np.asarray(a), -1, 1)


# --------------------------------------------------------------------------- references


def bilinear_ref(img: np.ndarray, y: float, x: float) -> np.ndarray:
    """Obviously-correct bilinear read of img (H, W, C) with zeros outside."""
    h, w, _ = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return np.zeros(img.shape[-1])
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    out = np.zeros(img.shape[-1])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[yy, xx]
    return out


def deform_conv_ref(x, off, mask, kernel, bias, stride, pad, dil, groups):
    """Slow loop over every output pixel, tap and group."""
    b, h, w, c = x.shape
    k, _, _, o = kernel.shape
    ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    cpg = c // groups
    out = np.zeros((b, ho, wo, o))
    for n in range(b):
        for y in range(ho):
            for xx in range(wo):
                acc = np.zeros(o) if bias is None else bias.astype(np.float64).copy()
                for g in range(groups):
                    sl = slice(g * cpg, (g + 1) * cpg)
                    for i in range(k * k):
                        ky, kx = divmod(i, k)
                        dy = off[n, y, xx, g * 2 * k * k + 2 * i]
                        dx = off[n, y, xx, g * 2 * k * k + 2 * i + 1]
                        m = 1.0 if mask is None else mask[n, y, xx, g * k * k + i]
                        py = y * stride - pad + ky * dil + dy
                        px = xx * stride - pad + kx * dil + dx
                        v = bilinear_ref(x[n, :, :, sl], py, px)
                        acc += m * v @ kernel[ky, kx, sl, :]
                out[n, y, xx] = acc
    return out


# --------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_deform_conv_matches_torchvision(case, x64):
    data = np.load(FIXTURES / "deform_conv_cases.npz")
    get = lambda key: data[f"{case['name']}/{key}"]
    args = [
        nhwc(get("input")),
        nhwc(get("offset")),
        nhwc(get("mask")) if case["mask"] else None,
        jnp.asarray(get("weight").transpose(2, 3, 1, 0)),
        jnp.asarray(get("bias")),
    ]

    def f(x, off, m, w, b):
        return deform_conv2d(
            x,
            off,
            m,
            w,
            b,
            stride=case["stride"],
            padding=case["pad"],
            dilation=case["dil"],
            offset_groups=case["ogroups"],
        )

    out, vjp = jax.vjp(f, *args)
    assert out.dtype == jnp.float64
    grads = vjp(nhwc(get("cotangent")))
    np.testing.assert_allclose(nchw(out), get("output"), rtol=0, atol=1e-9)
    np.testing.assert_allclose(nchw(grads[0]), get("grad_input"), rtol=0, atol=1e-9)
    np.testing.assert_allclose(nchw(grads[1]), get("grad_offset"), rtol=0, atol=1e-9)
    if case["mask"]:
        np.testing.assert_allclose(nchw(grads[2]), get("grad_mask"), rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(grads[3]).transpose(3, 2, 0, 1), get("grad_weight"), rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(grads[4]), get("grad_bias"), rtol=0, atol=1e-9)


def test_dynamic_filter_matches_fixture(x64):
    data = np.load(FIXTURES / "dynamic_filter_case.npz")
    out, vjp = jax.vjp(dynamic_filter, nhwc(data["input"]), nhwc(data["kernel_logits"]))
    grad_input, grad_logits = vjp(nhwc(data["cotangent"]))
    np.testing.assert_allclose(nchw(out), data["output"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(nchw(grad_input), data["grad_input"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(nchw(grad_logits), data["grad_kernel_logits"], rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize(
    "stride,padding,dilation,k",
    [(1, 1, 1, 3), (2, 1, 1, 3), (1, 2, 2, 3), (2, 0, 1, 5), (1, (1, 2), (1, 2), 3)],
)
def test_zero_offsets_equal_dense_conv(stride, padding, dilation, k, x64):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 11, 10, 4)))
    kernel = jnp.asarray(rng.normal(size=(k, k, 4, 3)))
    pad = (padding, padding) if isinstance(padding, int) else padding
    dil = (dilation, dilation) if isinstance(dilation, int) else dilation
    ref = jax.lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        [(pad[0], pad[0]), (pad[1], pad[1])],
        rhs_dilation=dil,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    zeros = jnp.zeros(ref.shape[:3] + (2 * k * k,))
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    np.testing.assert_allclose(deform_conv2d(x, zeros, None, kernel, **kw), ref, atol=1e-12)
    # offsets=None is the gather-free path for the same thing, with a mask too.
    np.testing.assert_allclose(deform_conv2d(x, None, None, kernel, **kw), ref, atol=1e-12)
    mask = jnp.asarray(rng.uniform(size=ref.shape[:3] + (k * k,)))
    np.testing.assert_allclose(
        deform_conv2d(x, None, mask, kernel, **kw),
        deform_conv2d(x, zeros, mask, kernel, **kw),
        atol=1e-12,
    )


def test_integer_offset_is_a_shift(x64):
    """A 1x1 kernel with offset (dy, dx) = (1, -2) reads the pixel (y+1, x-2)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 6, 7, 3)))
    off = jnp.broadcast_to(jnp.array([1.0, -2.0]), (1, 6, 7, 2))
    out = deform_conv2d(x, off, None, jnp.eye(3)[None, None], padding=0)
    expected = np.zeros((1, 6, 7, 3))
    expected[:, :5, 2:] = np.asarray(x)[:, 1:, :5]
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_gradients_match_finite_differences(x64):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(1, 5, 6, 2)))
    off = jnp.asarray(rng.uniform(-1.5, 1.5, size=(1, 5, 6, 18)))
    mask = jnp.asarray(rng.uniform(size=(1, 5, 6, 9)))
    kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 2)))
    jax.test_util.check_grads(
        lambda *a: deform_conv2d(*a),
        (x, off, mask, kernel),
        order=1,
        modes=["rev"],
        eps=1e-6,
    )


# --------------------------------------------------------------------------- properties


@st.composite
def deform_problems(draw):
    k = draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.integers(1, 2))
    c = groups * draw(st.integers(1, 2))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, 2))
    dil = draw(st.integers(1, 2))
    h = draw(st.integers(max(1, dil * (k - 1) + 1 - 2 * pad), 7))
    w = draw(st.integers(max(1, dil * (k - 1) + 1 - 2 * pad), 7))
    ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    b, o = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    floats = lambda lo, hi: st.floats(lo, hi, allow_nan=False, width=64)
    x = draw(hnp.arrays(np.float64, (b, h, w, c), elements=floats(-2, 2)))
    # Offsets include exact integers and points far outside the image.
    off = draw(
        hnp.arrays(
            np.float64,
            (b, ho, wo, 2 * k * k * groups),
            elements=st.one_of(floats(-4, 4), st.integers(-3, 3).map(float)),
        )
    )
    use_mask = draw(st.booleans())
    mask = draw(hnp.arrays(np.float64, (b, ho, wo, k * k * groups), elements=floats(0, 1)))
    kernel = draw(hnp.arrays(np.float64, (k, k, c, o), elements=floats(-1, 1)))
    bias = draw(st.one_of(st.none(), hnp.arrays(np.float64, (o,), elements=floats(-1, 1))))
    return x, off, mask if use_mask else None, kernel, bias, stride, pad, dil, groups


@pytest.mark.slow  # CI time: the default tier keeps under 15 min on 2 cores
@settings(max_examples=15, deadline=None)
@given(deform_problems())
def test_deform_conv_matches_loop_reference(problem):
    x, off, mask, kernel, bias, stride, pad, dil, groups = problem
    with jax.enable_x64(True):
        out = deform_conv2d(
            jnp.asarray(x),
            jnp.asarray(off),
            None if mask is None else jnp.asarray(mask),
            jnp.asarray(kernel),
            None if bias is None else jnp.asarray(bias),
            stride=stride,
            padding=pad,
            dilation=dil,
            offset_groups=groups,
        )
        ref = deform_conv_ref(x, off, mask, kernel, bias, stride, pad, dil, groups)
        np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-10)


def dynamic_filter_ref(x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    b, h, w, c = x.shape
    k = int(round(np.sqrt(logits.shape[-1])))
    r = k // 2
    xp = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    out = np.zeros_like(x)
    for n in range(b):
        for y in range(h):
            for xx in range(w):
                e = np.exp(logits[n, y, xx] - logits[n, y, xx].max())
                p = e / e.sum()
                for i in range(k * k):
                    ky, kx = divmod(i, k)
                    out[n, y, xx] += p[i] * xp[n, y + ky, xx + kx]
    return out


@settings(max_examples=8, deadline=None)
@given(
    st.integers(1, 2),
    st.integers(2, 6),
    st.integers(2, 6),
    st.integers(1, 3),
    st.sampled_from([1, 3]),
    st.integers(0, 2**31 - 1),
)
def test_dynamic_filter_matches_loop_reference(b, h, w, c, k, seed):
    if k == 3 and min(h, w) < 2:
        return
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, h, w, c))
    logits = 3 * rng.normal(size=(b, h, w, k * k))
    with jax.enable_x64(True):
        out = dynamic_filter(jnp.asarray(x), jnp.asarray(logits))
        np.testing.assert_allclose(np.asarray(out), dynamic_filter_ref(x, logits), atol=1e-12)


# --------------------------------------------------------------------------- transforms, dtypes


def small_problem(dtype=jnp.float32, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(k[0], (2, 8, 9, 4), dtype)
    off = 1.5 * jax.random.normal(k[1], (2, 8, 9, 18), dtype)
    mask = jax.nn.sigmoid(jax.random.normal(k[2], (2, 8, 9, 9), dtype))
    kernel = jax.random.normal(k[3], (3, 3, 4, 5), dtype)
    return x, off, mask, kernel


def test_jit_vmap_grad_agree():
    x, off, mask, kernel = small_problem()
    eager = deform_conv2d(x, off, mask, kernel)
    np.testing.assert_allclose(jax.jit(deform_conv2d)(x, off, mask, kernel), eager, atol=1e-5)
    # vmap over an extra leading axis equals running each slice.
    xs, offs, masks = (jnp.stack([a, a[::-1]]) for a in (x, off, mask))
    batched = jax.vmap(deform_conv2d, in_axes=(0, 0, 0, None))(xs, offs, masks, kernel)
    np.testing.assert_allclose(batched[0], eager, atol=1e-5)
    np.testing.assert_allclose(batched[1], deform_conv2d(x[::-1], off[::-1], mask[::-1], kernel), atol=1e-5)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(deform_conv2d(*a) ** 2), argnums=(0, 1, 2, 3)))(x, off, mask, kernel)
    assert all(bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0 for g in grads)


def test_bfloat16_inputs_accumulate_in_float32():
    x, off, mask, kernel = small_problem()
    ref = deform_conv2d(x, off, mask, kernel)
    out = deform_conv2d(*(a.astype(jnp.bfloat16) for a in (x, off, mask, kernel)))
    assert out.dtype == jnp.bfloat16
    scale = float(jnp.abs(ref).max())
    # bf16 inputs (8-bit mantissa) with f32 accumulation: error ~ input rounding only.
    assert float(jnp.abs(out.astype(jnp.float32) - ref).max()) < 0.03 * scale
    g = jax.grad(
        lambda a: jnp.sum(
            deform_conv2d(a, off.astype(jnp.bfloat16), None, kernel.astype(jnp.bfloat16)).astype(jnp.float32)
        )
    )(x.astype(jnp.bfloat16))
    assert g.dtype == jnp.bfloat16


def test_dynamic_filter_is_convex_combination():
    x = jax.random.normal(jax.random.key(0), (1, 6, 7, 2))
    logits = jnp.zeros((1, 6, 7, 9)).at[..., 4].set(50.0)  # all weight on the centre tap
    np.testing.assert_allclose(dynamic_filter(x, logits), x, atol=1e-6)
    const = jnp.full((1, 6, 7, 2), 0.3)
    np.testing.assert_allclose(
        dynamic_filter(const, jax.random.normal(jax.random.key(1), (1, 6, 7, 9))),
        const,
        atol=1e-6,
    )


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "shapes,kwargs,match",
    [
        (
            ((2, 8, 8, 4), (2, 8, 8, 17), (2, 8, 8, 9), (3, 3, 4, 5)),
            {},
            r"offsets must have shape \(2, 8, 8, 18\).*got \(2, 8, 8, 17\)",
        ),
        (
            ((2, 8, 8, 4), (2, 8, 8, 18), (2, 8, 8, 8), (3, 3, 4, 5)),
            {},
            r"mask must have shape \(2, 8, 8, 9\).*got \(2, 8, 8, 8\)",
        ),
        (((2, 8, 8, 4), (2, 8, 8, 18), None, (3, 3, 3, 5)), {}, r"kernel input channels 3.*\(3, 3, 3, 5\).*4 channels"),
        (
            ((2, 8, 8, 5), (2, 8, 8, 36), None, (3, 3, 5, 5)),
            {"offset_groups": 2},
            r"channels 5.*not divisible by offset_groups=2",
        ),
        (((8, 8, 4), (2, 8, 8, 18), None, (3, 3, 4, 5)), {}, r"inputs must be 4-D.*\(8, 8, 4\)"),
        (
            ((2, 8, 8, 4), (2, 4, 4, 18), None, (3, 3, 4, 5)),
            {"stride": 2},
            r"offsets must have shape \(2, 4, 4, 18\)|got",
        ),
        (((2, 8, 8, 4), (2, 8, 8, 18), None, (3, 3, 4)), {}, r"kernel must be 4-D"),
    ],
)
def test_bad_shapes_raise_before_tracing(shapes, kwargs, match, monkeypatch):
    # Any attempt to trace or compile would go through jnp: make it explode loudly.
    xs, os_, ms, ks = shapes
    arrays = [np.zeros(s, np.float32) if s is not None else None for s in (xs, os_, ms, ks)]
    if shapes[1] == (2, 4, 4, 18):  # a correct call: must not raise
        assert deform_conv2d(*arrays, **kwargs).shape == (2, 4, 4, 5)
        return
    monkeypatch.setattr(jnp, "take", lambda *a, **k: pytest.fail("traced before validating"))
    with pytest.raises(ValueError, match=match):
        deform_conv2d(*arrays, **kwargs)


def test_bad_bias_and_dynamic_filter_shapes():
    x, off, mask, kernel = small_problem()
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        deform_conv2d(x, off, mask, kernel, jnp.zeros(4))
    with pytest.raises(ValueError, match=r"disagree on \(B, H, W\)"):
        dynamic_filter(jnp.zeros((1, 6, 6, 3)), jnp.zeros((1, 5, 6, 9)))
    with pytest.raises(ValueError, match=r"k\*k channels for an odd k.*got 8"):
        dynamic_filter(jnp.zeros((1, 6, 6, 3)), jnp.zeros((1, 6, 6, 8)))
    with pytest.raises(ValueError, match=r"4-D"):
        dynamic_filter(jnp.zeros((6, 6, 3)), jnp.zeros((6, 6, 9)))


# --------------------------------------------------------------------------- conv2d


@pytest.mark.parametrize(
    "geometry",
    [
        dict(stride=1, padding=((1, 1), (1, 1))),
        dict(stride=2, padding=((1, 1), (1, 1))),
        dict(rhs_dilation=2, padding=((2, 2), (2, 2))),
        dict(lhs_dilation=2, padding=((1, 2), (1, 2))),  # ConvTranspose2x
        dict(stride=(2, 1), padding=((0, 1), (2, 0)), rhs_dilation=(1, 3)),
    ],
    ids=["plain", "stride2", "dilated", "transposed", "mixed"],
)
def test_conv2d_matches_xla_convolution_and_its_gradients(geometry, x64):
    x = jax.random.normal(jax.random.key(0), (2, 9, 11, 3), jnp.float64)
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 5), jnp.float64)
    pair = lambda v: (v, v) if isinstance(v, int) else v

    def reference(x, kernel):
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=pair(geometry.get("stride", 1)),
            padding=geometry["padding"],
            lhs_dilation=pair(geometry.get("lhs_dilation", 1)),
            rhs_dilation=pair(geometry.get("rhs_dilation", 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )

    out, vjp = jax.vjp(lambda x, k: conv2d(x, k, **geometry), x, kernel)
    ref_out, ref_vjp = jax.vjp(reference, x, kernel)
    cotangent = jax.random.normal(jax.random.key(2), out.shape, jnp.float64)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-12)
    for got, want in zip(vjp(cotangent), ref_vjp(cotangent)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-11)
    # ... and the kernel gradient is right in absolute terms (finite differences).
    jax.test_util.check_grads(lambda k: conv2d(x, k, **geometry), (kernel,), order=1, modes=["rev"])


def test_conv2d_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(2, 8, 8, 3\).*\(3, 3, 4, 5\)"):
        conv2d(jnp.zeros((2, 8, 8, 3)), jnp.zeros((3, 3, 4, 5)))
