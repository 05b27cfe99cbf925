"""The checkpoint schema (aspdc_jax.checkpoint): the meta record, the fill for older
formats, and a workdir written by main 6946628 (tests/fixtures/main_6946628_workdir, see
its README.txt) that still loads for inference and resumes training."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from aspdc_jax.checkpoint import CheckpointError, Item, PhaseFolder, PhaseMeta, read_workdir
from aspdc_jax.training.start import RUN_SETTINGS, resume_free_fields
from aspdc_jax.trees import flatten
from tests.helpers.train_fakes import fake_eval_pairs, fake_loader_factory, tiny_config

OLD_WORKDIR = Path(__file__).parent / "fixtures" / "main_6946628_workdir"


def _old_config():
    """The config the fixture was written with (its README.txt)."""
    c = tiny_config()
    c.phases = "deblur,reblur"
    c.max_checkpoints_to_keep = 1
    c.eval_limit = 1
    c.eval_every_steps = 3
    c.image_every_steps = 0
    return c


def test_meta_round_trips_and_fills_older_formats():
    meta = PhaseMeta(
        phase="finetune",
        step=3,
        total_steps=6,
        finished=False,
        model_config={"deblur_width": 4},
        param_shapes={"a/kernel": [3, 3, 3, 4]},
        network="deblur",
        frozen_network="reblur",
        phase_index=2,
        frozen_shapes={"b/kernel": [1, 1, 4, 3]},
        ema=True,
        started_from={"deblur": 6, "reblur": 6},
    )
    assert PhaseMeta.from_json(json.loads(json.dumps(meta.to_json()))) == meta
    assert meta.weights_item == Item.EMA and dataclasses.replace(meta, ema=False).weights_item == Item.PARAMS
    # The oldest format: no network, frozen_network, phase_index (nor any later field).
    old = {k: v for k, v in meta.to_json().items() if k in ("phase", "step", "total_steps", "finished")}
    old.update(model_config={}, param_shapes={}, some_future_key=1)
    filled = PhaseMeta.from_json(old)
    assert (filled.network, filled.frozen_network, filled.phase_index) == ("deblur", "reblur", 2)
    assert filled.stopped_by is None and filled.ema is False and filled.started_from is None
    with pytest.raises(CheckpointError, match=r"WORKDIR/x/4: its meta lacks param_shapes"):
        PhaseMeta.from_json({k: v for k, v in old.items() if k != "param_shapes"}, where="WORKDIR/x/4")


def test_resume_free_fields_are_config_fields():
    """Every field that may change on resume without a note names a field of the config
    (a renamed field fails here instead of silently turning into a note)."""
    fields = set(flatten(tiny_config().to_dict(), sep="."))
    assert set(RUN_SETTINGS) <= resume_free_fields()
    assert resume_free_fields() <= fields, resume_free_fields() - fields
    assert {"log_every_steps", "checkpoint_every_steps", "max_train_seconds"} <= resume_free_fields()


def test_a_main_6946628_workdir_reads_with_the_schema():
    with PhaseFolder(OLD_WORKDIR / "deblur") as folder:
        assert folder.all_steps() == [6]
        meta = folder.meta(6)
        config = folder.saved_config()
    assert (meta.phase, meta.network, meta.phase_index, meta.finished) == ("deblur", "deblur", 0, True)
    assert meta.stopped_by is None and meta.weights_item == Item.PARAMS
    assert config["model"]["deblur_width"] == 4
    weights = read_workdir(OLD_WORKDIR)
    assert "deblur step 6" in weights.source and "reblur step 6" in weights.source
    assert weights.model_config["deblur_width"] == 4 and weights.reblur_params is not None


def test_a_main_6946628_workdir_loads_for_inference():
    from aspdc_jax import inference

    blurred = np.random.default_rng(0).integers(0, 256, (20, 24, 3), np.uint8)
    for folder in (OLD_WORKDIR, OLD_WORKDIR / "deblur" / "best"):
        deblurrer = inference.load(folder)
        out = deblurrer(blurred)
        assert out.shape == blurred.shape and out.dtype == np.uint8
    assert json.loads((OLD_WORKDIR / "deblur" / "best" / "best.json").read_text())["step"] in (3, 6)


@pytest.mark.slow  # CI time: two phases compile (the deblur step resumed, the finetune step)
def test_a_main_6946628_workdir_resumes_and_hands_off(tmp_path, capsys):
    """Its deblur phase resumes at step 6 (extended to 8 steps), its finished reblur phase
    is skipped, and a finetune starts from both."""
    from aspdc_jax.training import PhaseCheckpoints, train_and_evaluate

    workdir = tmp_path / "old"
    shutil.copytree(OLD_WORKDIR, workdir)
    c = _old_config()
    c.phases = "deblur,reblur,finetune"
    c.deblur.num_epochs = 2.0  # 8 steps
    c.finetune.num_epochs = 0.5  # 2 steps
    c.eval_every_steps = 0
    summary = train_and_evaluate(c, workdir, loader_factory=fake_loader_factory, eval_pairs_fn=fake_eval_pairs)
    out = capsys.readouterr().out
    assert "[deblur] resuming from step 6/8" in out, out
    assert "[reblur] finished earlier (step 6/6): skipped" in out
    assert "[finetune] starting from deblur step 8 and reblur step 6" in out
    assert summary["deblur"]["final_step"] == 8 and summary["finetune"]["final_step"] == 2
    with PhaseCheckpoints(workdir / "deblur", read_only=True) as ckpt:
        got = ckpt.restore(8, items=(Item.DATA, Item.META))
    assert got[Item.DATA] == {"index": 8} and got[Item.META].finished
    # The finetune's frozen ReblurNet is the old reblur phase's weights, bit for bit.
    with PhaseFolder(workdir / "finetune") as folder:
        frozen = flatten(folder.restore_numpy(2, Item.FROZEN))
    with PhaseFolder(OLD_WORKDIR / "reblur") as folder:
        reblur = flatten(folder.restore_numpy(6, Item.PARAMS))
    assert frozen.keys() == reblur.keys()
    for key, value in reblur.items():
        np.testing.assert_array_equal(frozen[key], value)
