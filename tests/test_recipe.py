"""The training recipe's pieces: the offset learning-rate multiplier, the residual
ReblurNet, per-band held-out scores, and checksummed published weights."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from aspdc_jax.models import ReblurNet, model_config_dict, model_defaults
from aspdc_jax.publish import main as publish_main
from aspdc_jax.training.state import make_optimizer
from aspdc_jax.training.validation import evaluate_pairs
from aspdc_jax.weights import CheckpointError, load_for_inference
from tests.helpers.models import random_params, tiny_export


def _opt_config(**kw) -> ml_collections.ConfigDict:
    base = dict(adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, grad_clip_norm=0.0, offset_lr_multiplier=1.0)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def test_offset_lr_multiplier_scales_only_the_sampling_predictors():
    params = {
        "groups": {
            "aspdc": {
                "d1": {
                    "offset_conv": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
                    "mask_conv": {"kernel": jnp.ones(4)},
                    "dcn": {"kernel": jnp.ones(5)},
                }
            }
        },
        "head_conv": {"kernel": jnp.ones(6)},
    }
    grads = jax.tree_util.tree_map(lambda x: 0.5 * jnp.ones_like(x), params)
    lr = 1e-3
    plain = make_optimizer(_opt_config(), lr)
    slow = make_optimizer(_opt_config(offset_lr_multiplier=0.1), lr)
    up_plain, _ = plain.update(grads, plain.init(params), params)
    up_slow, _ = slow.update(grads, slow.init(params), params)
    # Adam's first step is -lr * g / (|g| + eps) per weight: -lr for a positive gradient
    d1_plain, d1_slow = up_plain["groups"]["aspdc"]["d1"], up_slow["groups"]["aspdc"]["d1"]
    np.testing.assert_allclose(d1_plain["offset_conv"]["kernel"], -lr, rtol=2e-5)
    np.testing.assert_allclose(d1_slow["offset_conv"]["kernel"], -0.1 * lr, rtol=2e-5)
    np.testing.assert_allclose(d1_slow["offset_conv"]["bias"], -0.1 * lr, rtol=2e-5)
    np.testing.assert_allclose(d1_slow["mask_conv"]["kernel"], -0.1 * lr, rtol=2e-5)
    np.testing.assert_allclose(d1_slow["dcn"]["kernel"], -lr, rtol=2e-5)
    np.testing.assert_allclose(up_slow["head_conv"]["kernel"], -lr, rtol=2e-5)
    # clipping by global norm composes with it
    clipped = make_optimizer(_opt_config(offset_lr_multiplier=0.1, grad_clip_norm=0.01), optax.constant_schedule(lr))
    up_clip, _ = clipped.update(grads, clipped.init(params), params)
    np.testing.assert_allclose(up_clip["groups"]["aspdc"]["d1"]["offset_conv"]["kernel"], -0.1 * lr, rtol=1e-4)


def test_residual_reblur_net_starts_at_the_sharp_image():
    x = jnp.zeros((1, 16, 16, 3))
    net = ReblurNet(width=4, residual=True)
    params = random_params(net, x, x)
    params["tail_conv"]["kernel"] = np.zeros_like(params["tail_conv"]["kernel"])
    rng = np.random.default_rng(0)
    blurred = jnp.asarray(rng.uniform(-1, 1, (2, 16, 24, 3)), jnp.float32)
    sharp = jnp.asarray(rng.uniform(-1, 1, (2, 16, 24, 3)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(net.apply({"params": params}, blurred, sharp)), np.asarray(sharp))
    plain = dataclasses.replace(net, residual=False)  # the paper's: the tail is the image
    np.testing.assert_array_equal(np.asarray(plain.apply({"params": params}, blurred, sharp)), 0.0)
    deblur, reblur = (
        model_defaults().replace(deblur_width=4, reblur_width=4, num_groups=1, reblur_residual=True).networks()
    )
    assert reblur.residual and model_config_dict(deblur, reblur)["reblur_residual"] is True
    assert not model_defaults().reblur_net().residual  # the paper's default


@dataclasses.dataclass
class _Pair:
    blurred: np.ndarray
    sharp: np.ndarray
    meta: dict


def test_evaluate_pairs_reports_every_band():
    rng = np.random.default_rng(0)
    pairs = []
    for band, noise in (("mild", 2), ("gopro", 8), ("gopro", 8), ("strong", 20)):
        sharp = rng.integers(30, 220, (16, 16, 3)).astype(np.uint8)
        blurred = np.clip(sharp + rng.normal(0, noise, sharp.shape), 0, 255).astype(np.uint8)
        pairs.append(_Pair(blurred, sharp, {"band": band}))
    identity = {"deblur_pixels": lambda params, b: b.astype(np.float32)}
    result = evaluate_pairs("deblur", pairs, params=None, eval_fns=identity)
    assert list(result["per_band"]) == ["mild", "gopro", "strong"]
    assert [r["num_pairs"] for r in result["per_band"].values()] == [1, 2, 1]
    assert all(abs(r["psnr_gain"]) < 1e-9 for r in result["per_band"].values())  # identity gains nothing
    mild, strong = result["per_band"]["mild"]["psnr_input"], result["per_band"]["strong"]["psnr_input"]
    assert mild > strong + 10  # closed form: 20 log10(255 / sigma) -> ~42 vs ~22 dB
    assert (
        abs(
            result["psnr_input"]
            - np.mean([r["psnr_input"] for r in result["per_band"].values() for _ in range(r["num_pairs"])])
        )
        < 1e-9
    )


def test_published_weights_refuse_a_modified_file(tmp_path: pathlib.Path, capsys):
    tiny_export(tmp_path / "ckpt")
    out = tmp_path / "pub"
    assert publish_main(["--ckpt", str(tmp_path / "ckpt"), "--out", str(out), "--command", "train it"]) == 0
    assert (out / "SHA256SUMS").is_file() and (out / "training.json").is_file()
    loaded = load_for_inference(out)
    assert loaded.reblur is not None
    # a flipped bit in any weight file is refused, naming the file
    victim = max((p for p in (out / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(victim.name)):
        load_for_inference(out)
    # the CLI refuses an output folder that is not empty, in one line
    assert publish_main(["--ckpt", str(tmp_path / "ckpt"), "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_comparison_figure_zooms_where_the_output_changed_most():
    from aspdc_jax.evaluation import figures

    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (96, 120, 3)).astype(np.uint8)
    blurred = sharp.copy()
    output = sharp.copy()
    output[60:90, 80:110] = 255 - output[60:90, 80:110]  # the only change
    fig = figures.comparison(blurred, output, sharp)
    size = max(8, 96 // 3)
    y, x = figures._changed_window(blurred, output, size)
    changed = np.zeros((96, 120))
    changed[60:90, 80:110] = 1
    best = max(changed[a : a + size, b : b + size].sum() for a in range(96 - size + 1) for b in range(120 - size + 1))
    assert changed[y : y + size, x : x + size].sum() >= 0.75 * best  # on a half-window grid
    # top row: three 120-px panels with 4-px gaps under an 18-px title strip
    assert fig.shape[1] == 3 * 120 + 2 * 4 and fig.dtype == np.uint8
    np.testing.assert_array_equal(fig[18 : 18 + 96, :120], blurred)
    np.testing.assert_array_equal(fig[18 : 18 + 96, 124:244], output)
    zoom_top = 18 + 96 + 6 + 18
    np.testing.assert_array_equal(
        fig[zoom_top : zoom_top + 2 * size : 2, 2 * size + 4 : 4 * size + 4 : 2], output[y : y + size, x : x + size]
    )
