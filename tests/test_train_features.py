"""What users of BasicSR-style codebases expect from training: gradient accumulation, an EMA
of the weights, and validation that keeps the best checkpoint."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aspdc_jax.models import init_params, model_defaults, model_from_config
from aspdc_jax.training import (
    PhaseCheckpoints,
    TrainState,
    make_mesh,
    make_train_step,
    mse,
    train_and_evaluate,
)
from aspdc_jax.training.sharding import replicate
from aspdc_jax.training.state import ema_decay_at
from aspdc_jax.weights import load_for_inference
from tests.helpers.train_fakes import FakeLoader, fake_eval_pairs, fake_loader_factory, tiny_config

TINY = model_defaults().replace(deblur_width=4, reblur_width=4, num_groups=1)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_two_accumulated_half_batches_give_the_full_batch_update():
    """k=2 micro-batches of 2 == one batch of 4, in float64 (SGD lr 1: the update is -grad)."""
    with jax.enable_x64(True):
        deblur, reblur = model_from_config(TINY)
        deblur, reblur = deblur.clone(dtype=jnp.float64), reblur.clone(dtype=jnp.float64)
        params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), init_params(deblur, jax.random.key(0)))
        batch = next(iter(FakeLoader(batch=4, seed=7, crop=16)))
        mesh, tx = make_mesh(), optax.sgd(1.0)
        out = {}
        for k in (1, 2):
            step = make_train_step(
                "deblur",
                deblur=deblur,
                reblur=reblur,
                tx=tx,
                image_loss=mse,
                mesh=mesh,
                grad_accum_steps=k,
                donate=False,
            )
            state = replicate(TrainState.create(params, tx), mesh)
            out[k] = step(state, batch)
        (full, m1), (acc, m2) = out[1], out[2]
        for a, b in zip(_leaves(full.params), _leaves(acc.params)):
            assert a.dtype == np.float64
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)
        np.testing.assert_allclose(float(m1["grad_norm"]), float(m2["grad_norm"]), rtol=1e-6)
        with pytest.raises(ValueError, match="grad_accum_steps=3"):
            make_train_step(
                "deblur", deblur=deblur, reblur=reblur, tx=tx, image_loss=mse, mesh=mesh, grad_accum_steps=3
            )(state, batch)


def test_ema_follows_its_recurrence_with_warmup():
    assert float(ema_decay_at(0, 0.999)) == pytest.approx(0.1)
    assert float(ema_decay_at(8, 0.999)) == pytest.approx(0.5)
    assert float(ema_decay_at(10**6, 0.999)) == pytest.approx(0.999)
    deblur, reblur = model_from_config(TINY)
    params = init_params(deblur, jax.random.key(0))
    batch = next(iter(FakeLoader(batch=2, seed=1, crop=16)))
    mesh, tx = make_mesh(), optax.adam(1e-2)
    step = make_train_step(
        "deblur", deblur=deblur, reblur=reblur, tx=tx, image_loss=mse, mesh=mesh, ema_decay=0.9, donate=False
    )
    state = replicate(TrainState.create(params, tx, ema=True), mesh)
    expected = _leaves(params)
    for t in range(4):
        state, _ = step(state, batch)
        d = min(0.9, (1 + t) / (10 + t))
        expected = [d * e + (1 - d) * p for e, p in zip(expected, _leaves(state.params))]
    for a, b in zip(expected, _leaves(state.ema_params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert state.eval_params is state.ema_params


def test_ema_and_best_checkpoint_in_a_run(tmp_path, capsys):
    """ema_decay + eval_every_steps: the EMA is saved, resumed bit for bit and exported;
    WORKDIR/deblur/best holds the best validated step and loads for inference."""
    c = tiny_config()
    c.ema_decay = 0.99
    c.eval_every_steps = 2
    c.eval_limit = 2
    workdir = tmp_path / "w"
    train_and_evaluate(c, workdir, loader_factory=fake_loader_factory, eval_pairs_fn=fake_eval_pairs)
    out = capsys.readouterr().out
    assert "best so far" in out
    best = workdir / "deblur" / "best"
    info = json.loads((best / "best.json").read_text())
    assert info["split"] == "val" and info["step"] in (2, 4, 6)
    loaded = load_for_inference(best)
    assert loaded.deblur.width == 4
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if r["event"] == "val"]
    assert [r["step"] for r in vals] == [2, 4, 6]
    assert max(r["psnr_output"] for r in vals) == pytest.approx(info["psnr_output"])
    # inference from the workdir uses the EMA, and says so
    from_workdir = load_for_inference(workdir)
    assert "EMA" in from_workdir.source
    with PhaseCheckpoints(workdir / "deblur", read_only=True) as ckpt:
        saved = ckpt.restore(6, items=("ema",))["ema"]
    for a, b in zip(_leaves(saved), _leaves(from_workdir.deblur_params)):
        np.testing.assert_array_equal(a, b)
    # resumed for two more steps, the EMA is bit-identical to a run that never stopped
    c.deblur.num_epochs = 2.0
    c.eval_every_steps = 0
    train_and_evaluate(c, workdir, loader_factory=fake_loader_factory, eval_pairs_fn=fake_eval_pairs)
    straight = tmp_path / "straight"
    train_and_evaluate(c, straight, loader_factory=fake_loader_factory, eval_pairs_fn=fake_eval_pairs)
    emas = []
    for w in (workdir, straight):
        with PhaseCheckpoints(w / "deblur", read_only=True) as ckpt:
            assert ckpt.latest_step() == 8
            emas.append(ckpt.restore(8, items=("ema",))["ema"])
    for a, b in zip(_leaves(emas[0]), _leaves(emas[1])):
        np.testing.assert_array_equal(a, b)
