"""Training pieces at tiny widths: schedules, losses, and each phase's jitted step."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from aspdc_jax.models import init_params, model_defaults, model_from_config
from aspdc_jax.training import (
    TrainState,
    charbonnier,
    get_loss,
    imagenet_mse,
    make_mesh,
    make_schedule,
    make_train_step,
    mse,
    parse_phases,
    steps_per_epoch,
)
from aspdc_jax.training.schedules import halving_levels
from aspdc_jax.training.sharding import replicate
from tests.helpers.train_fakes import FakeLoader

TINY = model_defaults().replace(deblur_width=4, reblur_width=4, num_groups=1)


def _phase_cfg(**kw) -> ml_collections.ConfigDict:
    base = dict(schedule="halving", lr=1e-4, min_lr=1e-6, halve_every_epochs=1000.0, num_epochs=None, warmup_epochs=0.0)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def test_paper_halving_schedule():
    assert halving_levels(1e-4, 1e-6) == 7  # 1e-4 ... 1.5625e-6
    assert halving_levels(1e-5, 1e-6) == 4  # 1e-5 ... 1.25e-6
    spe = steps_per_epoch(2103, 6)
    assert spe == 350
    s = make_schedule(_phase_cfg(), steps_per_epoch=spe)
    assert s.num_epochs == 7000 and s.total_steps == 7000 * 350
    every = 1000 * 350
    np.testing.assert_allclose(float(s.fn(0)), 1e-4, rtol=1e-6)
    np.testing.assert_allclose(float(s.fn(every - 1)), 1e-4, rtol=1e-6)
    np.testing.assert_allclose(float(s.fn(every)), 5e-5, rtol=1e-6)
    np.testing.assert_allclose(float(s.fn(s.total_steps - 1)), 1e-4 / 64, rtol=1e-6)
    ft = make_schedule(_phase_cfg(lr=1e-5, halve_every_epochs=200.0), steps_per_epoch=spe)
    assert ft.num_epochs == 800
    np.testing.assert_allclose(float(ft.fn(ft.total_steps - 1)), 1.25e-6, rtol=1e-6)


def test_constant_and_cosine_with_warmup():
    s = make_schedule(_phase_cfg(schedule="constant", lr=3e-4, num_epochs=2.0), steps_per_epoch=5)
    assert s.total_steps == 10
    np.testing.assert_allclose(float(s.fn(7)), 3e-4, rtol=1e-6)
    c = make_schedule(
        _phase_cfg(schedule="cosine", lr=1e-3, min_lr=1e-5, num_epochs=4.0, warmup_epochs=1.0),
        steps_per_epoch=10,
    )
    assert c.total_steps == 40
    np.testing.assert_allclose(float(c.fn(0)), 1e-4, rtol=1e-5)  # warm-up 1/10
    np.testing.assert_allclose(float(c.fn(10)), 1e-3, rtol=1e-5)
    assert float(c.fn(39)) < 2e-5
    with pytest.raises(ValueError, match="num_epochs"):
        make_schedule(_phase_cfg(schedule="constant"), steps_per_epoch=5)
    with pytest.raises(ValueError, match="schedule"):
        make_schedule(_phase_cfg(schedule="step"), steps_per_epoch=5)


def test_losses():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
    b = rng.uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(float(mse(a, b)), np.mean((a - b) ** 2), rtol=1e-6)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    na, nb = ((a + 1) / 2 - mean) / std, ((b + 1) / 2 - mean) / std
    np.testing.assert_allclose(float(imagenet_mse(a, b)), np.mean((na - nb) ** 2), rtol=1e-5)
    assert get_loss("imagenet_mse") is imagenet_mse
    # Charbonnier: sqrt(d^2 + 1e-6); ~|d| for large errors, quadratic near zero.
    np.testing.assert_allclose(float(charbonnier(a, b)), np.mean(np.sqrt((a - b) ** 2 + 1e-6)), rtol=1e-6)
    np.testing.assert_allclose(float(charbonnier(a, a)), 1e-3, rtol=1e-6)
    assert get_loss("charbonnier") is charbonnier
    with pytest.raises(ValueError, match="config.loss"):
        get_loss("l1")


def test_parse_phases():
    assert parse_phases("finetune,deblur") == ("deblur", "finetune")
    assert parse_phases("deblur, reblur ,finetune") == ("deblur", "reblur", "finetune")
    with pytest.raises(ValueError, match="config.phases"):
        parse_phases("deblur,finetuning")


@pytest.fixture(scope="module")
def tiny():
    deblur, reblur = model_from_config(TINY)
    rng = jax.random.key(0)
    batch = next(iter(FakeLoader(batch=2, seed=3, crop=16)))
    return {
        "deblur": deblur,
        "reblur": reblur,
        "deblur_params": init_params(deblur, rng),
        "reblur_params": init_params(reblur, jax.random.fold_in(rng, 1)),
        "batch": batch,
        "mesh": make_mesh(),
    }


@pytest.mark.parametrize("phase", ["deblur", "reblur", "finetune"])
def test_phase_step_lowers_loss_on_fixed_batch(tiny, phase):
    tx = optax.adam(3e-3, eps=1e-18)
    mesh = tiny["mesh"]
    params = tiny["reblur_params"] if phase == "reblur" else tiny["deblur_params"]
    state = replicate(TrainState.create(params, tx), mesh)
    step = make_train_step(
        phase,
        deblur=tiny["deblur"],
        reblur=tiny["reblur"],
        tx=tx,
        image_loss=mse,
        mesh=mesh,
        phase_config={"reblur_weight": 0.1},
    )
    frozen_before = jax.tree_util.tree_map(np.array, tiny["reblur_params"])
    extra = (replicate(tiny["reblur_params"], mesh),) if phase == "finetune" else ()
    losses = []
    for _ in range(8):
        state, metrics = step(state, tiny["batch"], *extra)
        losses.append(float(metrics["loss"]))
    assert all(math.isfinite(x) for x in losses)
    assert int(state.step) == 8
    assert losses[-1] < 0.97 * losses[0], losses
    assert min(losses[4:]) < min(losses[:4]), losses
    if phase == "finetune":
        assert set(metrics) >= {"deblur_loss", "reblur_loss", "grad_norm"}
        # ReblurNet is frozen: bit-identical params, and no optimizer state for it.
        after = jax.tree_util.tree_map(np.asarray, extra[0])
        for x, y in zip(jax.tree_util.tree_leaves(frozen_before), jax.tree_util.tree_leaves(after)):
            np.testing.assert_array_equal(x, y)
        n_opt = sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state))
        n_deblur = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
        assert n_opt == 2 * n_deblur + 1  # Adam mu, nu for DeblurNet + count


def test_finetune_loss_is_deblur_plus_lambda_reblur(tiny):
    from aspdc_jax.training import make_loss_fn

    fn = make_loss_fn(
        "finetune", deblur=tiny["deblur"], reblur=tiny["reblur"], image_loss=mse, phase_config={"reblur_weight": 0.25}
    )
    loss, m = jax.jit(fn)(tiny["deblur_params"], tiny["batch"], tiny["reblur_params"])
    np.testing.assert_allclose(float(loss), float(m["deblur_loss"]) + 0.25 * float(m["reblur_loss"]), rtol=1e-6)
    assert jnp.isfinite(loss)


@pytest.mark.slow  # CI time: the default tier keeps under 15 min on 2 cores
def test_bfloat16_compute_step_matches_float32_and_keeps_float32_state(tiny):
    """config.compute_dtype="bfloat16": the finetune step runs both nets in bfloat16, but
    params, optimizer state and the loss stay float32, and the loss is the float32 one to
    bfloat16 accuracy."""
    from aspdc_jax.training import make_loss_fn
    from aspdc_jax.training.loop import compute_modules

    cfg = ml_collections.ConfigDict({"compute_dtype": "bfloat16"})
    deblur, reblur = compute_modules(cfg, tiny["deblur"], tiny["reblur"])
    assert deblur.dtype == jnp.bfloat16 and reblur.dtype == jnp.bfloat16
    args = (tiny["deblur_params"], tiny["batch"], tiny["reblur_params"])
    W = {"reblur_weight": 0.1}
    ref, _ = make_loss_fn("finetune", deblur=tiny["deblur"], reblur=tiny["reblur"], image_loss=mse, phase_config=W)(
        *args
    )
    got, _ = make_loss_fn("finetune", deblur=deblur, reblur=reblur, image_loss=mse, phase_config=W)(*args)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), float(ref), rtol=2e-2)

    tx = optax.adam(3e-3, eps=1e-18)
    mesh = tiny["mesh"]
    state = replicate(TrainState.create(tiny["deblur_params"], tx), mesh)
    step = make_train_step("finetune", deblur=deblur, reblur=reblur, tx=tx, image_loss=mse, mesh=mesh, phase_config=W)
    extra = (replicate(tiny["reblur_params"], mesh),)
    losses = []
    for _ in range(6):
        state, metrics = step(state, tiny["batch"], *extra)
        losses.append(float(metrics["loss"]))
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.97 * losses[0], losses
    leaves = jax.tree_util.tree_leaves((state.params, state.opt_state))
    assert all(x.dtype in (jnp.float32, jnp.int32) for x in leaves)

    with pytest.raises(ValueError, match="compute_dtype"):
        compute_modules(ml_collections.ConfigDict({"compute_dtype": "float16"}), deblur, reblur)
