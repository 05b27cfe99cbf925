"""Architecture tests for DeblurNet / ASPDC / ReblurNet (tiny widths; full width only via eval_shape)."""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aspdc_jax.models import (
    ABLATIONS,
    ASPDC,
    ConvTranspose2x,
    DeblurNet,
    DeblurOutput,
    DeformBranch,
    ReblurNet,
    ResBlock,
    init_params,
    model_config_dict,
    model_defaults,
    model_from_config,
    networks_from_saved,
)

KEY = jax.random.key(0)
# Threefry random bits take ~0.2 s of XLA compile per parameter on this CPU, so jitted
# inits of whole networks use the cheap "rbg" generator, and forward tests use NumPy params.
RBG = jax.random.key(0, impl="rbg")


def _random_params(net, *inputs, seed: int = 0):
    """Random (not Xavier) params with the network's tree, made in NumPy: no compile."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(net.init, KEY, *inputs)["params"]
    return jax.tree_util.tree_map(
        lambda s: (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32),
        shapes,
    )


def _count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


def _shapes(net, *inputs):
    variables = jax.eval_shape(net.init, KEY, *inputs)
    return variables, jax.eval_shape(net.apply, variables, *inputs)


# ---------------------------------------------------------------- full width, no compile


def test_full_width_deblur_param_count_and_shapes() -> None:
    x = jax.ShapeDtypeStruct((2, 256, 192, 3), jnp.float32)
    variables, out = _shapes(DeblurNet(), x)
    assert list(variables) == ["params"]
    assert _count(variables) == 15_016_503
    assert isinstance(out, DeblurOutput)
    assert out.deblurred.shape == out.residual.shape == (2, 256, 192, 3)
    assert out.deblurred.dtype == jnp.float32
    assert len(out.offsets) == len(out.attention) == 6
    assert all(o.shape == (2, 64, 48, 54) for o in out.offsets)
    assert all(a.shape == (2, 64, 48, 4) for a in out.attention)


def test_full_width_reblur_param_count_and_shapes() -> None:
    x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    variables, out = _shapes(ReblurNet(), x, x)
    assert list(variables) == ["params"]
    assert _count(variables) == 998_802
    assert out.shape == (1, 256, 256, 3)


def test_param_tree_reads_like_the_paper() -> None:
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    params = jax.eval_shape(DeblurNet(width=4).init, KEY, x)["params"]
    assert set(params) == {
        "head_conv", "head_res1", "head_res2", "down1", "down2",
        "groups",
        "fuse_conv", "up1", "up2", "tail_conv",
    }  # fmt: skip
    aspdc = params["groups"]["aspdc"]
    assert set(aspdc) == {"feature_conv", "branch_static", "branch_d1", "branch_d2", "branch_d4", "afim", "fusion_conv"}
    assert set(aspdc["branch_static"]) == {"mask_conv", "dcn"}
    assert set(aspdc["branch_d2"]) == {"offset_conv", "mask_conv", "dcn"}
    assert aspdc["branch_d2"]["offset_conv"]["kernel"].shape == (6, 3, 3, 16, 18)
    assert set(aspdc["afim"]) == {"conv", "res1", "res2", "logits"}
    assert aspdc["afim"]["logits"]["kernel"].shape == (6, 1, 1, 16, 4)
    assert params["up1"]["kernel"].shape == (3, 3, 16, 8)


# ---------------------------------------------------------------- Table 5 ablation knobs

TABLE5 = {
    # ABLATIONS name: (n_branches, offset channels)
    "static": (1, 0),
    "d1": (1, 18),
    "d2": (1, 18),
    "d4": (1, 18),
    "d1_x3": (3, 54),
    "d2_x3": (3, 54),
    "d4_x3": (3, 54),
    "d1_d2_d4": (3, 54),
    "static_d1_d2_d4_sum": (4, 54),
    "full": (4, 54),
}


def test_ablation_table_is_covered() -> None:
    assert set(ABLATIONS) == set(TABLE5)
    assert model_from_config(model_defaults().replace(**ABLATIONS["full"]))[0] == DeblurNet()


@pytest.mark.parametrize("name", sorted(TABLE5))
def test_table5_variants_shapes(name) -> None:
    from configs.default import get_config

    n_branches, n_offsets = TABLE5[name]
    config = get_config()
    config.model.update(ABLATIONS[name])
    config.model.update({"deblur_width": 4, "num_groups": 2})
    cfg = config.model.to_dict()
    deblur, _ = model_from_config(cfg)
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    variables, out = _shapes(deblur, x)
    assert len(out.offsets) == 2
    assert all(o.shape == (1, 4, 4, n_offsets) for o in out.offsets)
    assert all(a.shape == (1, 4, 4, n_branches) for a in out.attention)
    aspdc = variables["params"]["groups"]["aspdc"]
    branches = [k for k in aspdc if k.startswith("branch_")]
    assert len(branches) == n_branches
    assert ("afim" in aspdc) == (cfg.get("fusion", "afim") == "afim")


def test_repeated_branches_have_separate_weights() -> None:
    net = ASPDC(branches=("d2",), branch_repeat=3)
    x = jax.random.normal(KEY, (1, 8, 8, 4))
    params = jax.jit(net.init)(RBG, x)["params"]
    assert {"branch_d2_1", "branch_d2_2", "branch_d2_3"} <= set(params)
    k1 = params["branch_d2_1"]["dcn"]["kernel"]
    k2 = params["branch_d2_2"]["dcn"]["kernel"]
    assert not np.allclose(k1, k2)


def test_sum_fusion_is_the_plain_sum_of_branches() -> None:
    x = jax.random.normal(KEY, (1, 8, 8, 4))
    afim = ASPDC(branches=("static", "d1"), fusion="afim")
    plain = ASPDC(branches=("static", "d1"), fusion="sum")
    params = _random_params(afim, x)
    params_sum = {k: v for k, v in params.items() if k != "afim"}
    assert set(jax.eval_shape(plain.init, KEY, x)["params"]) == set(params_sum)
    out, _, att = jax.jit(plain.apply)({"params": params_sum}, x)
    np.testing.assert_array_equal(att, np.ones((1, 8, 8, 2)))
    # Setting the AFIM logits to a constant makes the attention uniform: afim == sum / 2.
    flat = jax.tree_util.tree_map(lambda a: a, params)
    flat["afim"]["logits"]["kernel"] = jnp.zeros_like(flat["afim"]["logits"]["kernel"])
    flat["afim"]["logits"]["bias"] = jnp.zeros_like(flat["afim"]["logits"]["bias"])
    fusion = params["fusion_conv"]
    halved = dict(params_sum, fusion_conv={"kernel": fusion["kernel"] * 0.5, "bias": fusion["bias"]})
    out_afim, _, att_afim = jax.jit(afim.apply)({"params": flat}, x)
    out_half, _, _ = jax.jit(plain.apply)({"params": halved}, x)
    np.testing.assert_allclose(att_afim, 0.5, atol=1e-6)
    np.testing.assert_allclose(out_afim, out_half, atol=1e-5)
    assert out.shape == x.shape


@pytest.mark.parametrize(
    "bad",
    [
        {"branches": ("d3",)},
        {"branches": ()},
        {"branches": ("d1", "d1")},
        {"branch_repeat": 0},
        {"fusion": "mean"},
        {"deblur_width": 0},
        {"num_groups": -1},
    ],
)
def test_bad_model_config_raises(bad) -> None:
    with pytest.raises(ValueError, match=r"^config\.model[.:]") as err:
        model_defaults().replace(**bad)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError):
        model_from_config({**model_defaults().to_dict(), **bad})


# ---------------------------------------------------------------- config round trip


def test_model_config_round_trip_through_json() -> None:
    from configs.default import get_config

    deblur, reblur = model_from_config(get_config().model)
    assert deblur == DeblurNet() and reblur == ReblurNet()
    cfg = {"deblur_width": 8, "reblur_width": 4, "num_groups": 3, "branches": ["d1", "d4"],
           "branch_repeat": 3, "fusion": "sum", "zero_init_offsets": True, "remat": True,
           "reblur_residual": True}  # fmt: skip
    d, r = model_from_config(cfg)
    dumped = json.loads(json.dumps(model_config_dict(d, r)))
    assert dumped == cfg
    d2, r2 = networks_from_saved({**dumped, "has_reblur": True})
    assert (d2, r2) == (d, r)
    # Exports written before reblur_residual existed load as what they were: no residual.
    old = {k: v for k, v in dumped.items() if k != "reblur_residual"}
    assert networks_from_saved(old)[1] == dataclasses.replace(r, residual=False)
    # A one-network export records (and needs) only that network's keys.
    only_reblur = json.loads(json.dumps(model_config_dict(None, r)))
    assert set(only_reblur) == {"reblur_width", "reblur_residual"}
    assert networks_from_saved(only_reblur, deblur=False) == (None, r)
    with pytest.raises(ValueError, match="lacks deblur_width"):
        networks_from_saved(only_reblur)
    # config.model is strict: an unknown field (e.g. an export's has_reblur) or a missing one.
    with pytest.raises(ValueError, match=r"config.model has no field 'has_reblur'"):
        model_from_config({**dumped, "has_reblur": True})
    with pytest.raises(ValueError, match=r"config.model lacks the field\(s\) reblur_residual"):
        model_from_config(old)


# ---------------------------------------------------------------- layers and init


def _torch_conv_transpose(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PyTorch ConvTranspose2d(k=3, s=2, p=1, output_padding=1) by its definition (NHWC, IOHW)."""
    bsz, h, wd, _ = x.shape
    out = np.zeros((bsz, 2 * h + 2, 2 * wd + 2, w.shape[1]))  # before cropping the padding
    for ky in range(3):
        for kx in range(3):
            contrib = np.einsum("bhwc,co->bhwo", x, w[:, :, ky, kx])
            out[:, ky : ky + 2 * h : 2, kx : kx + 2 * wd : 2] += contrib
    return out[:, 1 : 1 + 2 * h, 1 : 1 + 2 * wd] + b


def test_conv_transpose_matches_pytorch_definition() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 7, 3))
    w = rng.normal(size=(3, 4, 3, 3))  # IOHW
    b = rng.normal(size=(4,))
    params = {"kernel": w.transpose(2, 3, 0, 1).astype(np.float32), "bias": b.astype(np.float32)}
    y = ConvTranspose2x(4).apply({"params": params}, jnp.asarray(x, jnp.float32))
    assert y.shape == (2, 10, 14, 4)
    np.testing.assert_allclose(y, _torch_conv_transpose(x, w, b), atol=1e-4)


def test_xavier_normal_init_and_zero_bias() -> None:
    params = jax.jit(ResBlock().init)(KEY, jnp.zeros((1, 4, 4, 128)))["params"]
    kernel = np.asarray(params["conv1"]["kernel"])
    std = np.sqrt(2.0 / (9 * 128 + 9 * 128))
    assert abs(kernel.std() / std - 1) < 0.02
    assert np.abs(kernel).max() > 3 * std  # plain normal, not truncated at 2 std
    assert not params["conv1"]["bias"].any()


def test_zero_init_offsets_gives_zero_offsets() -> None:
    x = jax.random.normal(KEY, (1, 16, 16, 4))
    branch = DeformBranch(4, zero_init_offsets=True)
    params = jax.jit(branch.init)(RBG, x)["params"]
    for conv in ("offset_conv", "mask_conv"):
        assert not params[conv]["kernel"].any() and not params[conv]["bias"].any()
    assert params["dcn"]["kernel"].any()
    _, offsets = jax.jit(branch.apply)({"params": params}, x)
    assert offsets.shape == (1, 16, 16, 18) and not np.asarray(offsets).any()
    default = jax.jit(DeformBranch(4).init)(RBG, x)["params"]
    assert default["offset_conv"]["kernel"].any()


@pytest.mark.slow  # CI time: the default tier keeps under 15 min on 2 cores
def test_remat_changes_nothing_but_memory() -> None:
    x = jax.random.uniform(KEY, (1, 16, 16, 3), minval=-1, maxval=1)
    plain = DeblurNet(width=4, num_groups=1)
    remat = DeblurNet(width=4, num_groups=1, remat=True)
    params = _random_params(plain, x)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        jax.eval_shape(remat.init, KEY, x)["params"]
    )

    def loss(net):
        return lambda p: jnp.mean(net.apply({"params": p}, x).deblurred ** 2)

    v1, g1 = jax.jit(jax.value_and_grad(loss(plain)))(params)
    v2, g2 = jax.jit(jax.value_and_grad(loss(remat)))(params)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), g1, g2)


def test_forward_runs_under_jit_and_residual_adds_up() -> None:
    x = jax.random.uniform(KEY, (2, 16, 24, 3), minval=-1, maxval=1)
    net = DeblurNet(width=4, num_groups=2)
    params = _random_params(net, x)
    out = jax.jit(net.apply)({"params": params}, x)
    np.testing.assert_allclose(out.deblurred, x + out.residual, atol=1e-6)
    np.testing.assert_allclose(np.sum(out.attention[0], -1), 1.0, atol=1e-5)
    reblur = ReblurNet(width=4)
    rparams = _random_params(reblur, x, x)
    y = jax.jit(reblur.apply)({"params": rparams}, x, out.deblurred)
    assert y.shape == x.shape and np.isfinite(np.asarray(y)).all()


# ---------------------------------------------------------------- input validation


@pytest.mark.parametrize("shape", [(1, 30, 32, 3), (1, 32, 32, 1), (32, 32, 3)])
def test_deblur_rejects_bad_shapes(shape) -> None:
    with pytest.raises(ValueError, match="DeblurNet"):
        jax.eval_shape(DeblurNet(width=4).init, KEY, jax.ShapeDtypeStruct(shape, jnp.float32))


@pytest.mark.parametrize(
    "shapes",
    [((1, 36, 32, 3), (1, 36, 32, 3)), ((1, 32, 32, 3), (1, 32, 40, 3)), ((1, 8, 32, 3), (1, 8, 32, 3))],
)
def test_reblur_rejects_bad_shapes(shapes) -> None:
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    with pytest.raises(ValueError, match="ReblurNet"):
        jax.eval_shape(ReblurNet(width=4).init, KEY, *args)


# ---------------------------------------------------------------- compile time (slow)


@pytest.mark.slow
def test_full_width_forward_compiles_in_under_a_minute() -> None:
    net = DeblurNet()
    x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    variables = jax.eval_shape(net.init, KEY, x)
    start = time.perf_counter()
    jax.jit(lambda v, x: net.apply(v, x).deblurred).lower(variables, x).compile()
    assert time.perf_counter() - start < 60


# ---------------------------------------------------------------- init


def test_init_params_has_the_init_tree_and_distribution() -> None:
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    net = DeblurNet(width=8, num_groups=2, zero_init_offsets=True)
    params = init_params(net, jax.random.key(1), x)
    reference = jax.eval_shape(net.init, KEY, x)["params"]
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(reference)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(reference), strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    groups = params["groups"]
    kernel = np.asarray(groups["res1"]["conv1"]["kernel"])  # (2, 3, 3, 32, 32)
    assert abs(kernel.std() / np.sqrt(2 / (9 * 64)) - 1) < 0.05
    assert not np.allclose(kernel[0], kernel[1])  # groups differ
    assert not np.asarray(groups["res1"]["conv1"]["bias"]).any()
    assert not np.asarray(groups["aspdc"]["branch_d1"]["offset_conv"]["kernel"]).any()
    assert np.asarray(groups["aspdc"]["branch_d1"]["dcn"]["kernel"]).any()
    branch = init_params(DeformBranch(2), jax.random.key(1), jnp.zeros((1, 8, 8, 4)))
    assert np.asarray(branch["offset_conv"]["kernel"]).any()
    # The values are module.init's own (training's fresh runs start from them).
    same = jax.jit(net.init)(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))["params"]
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(same), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
