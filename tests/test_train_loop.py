"""The training loop at tiny widths on an in-memory loader: SIGKILL mid-phase and resume,
skipping a finished phase, hand-off and shape guards, the NaN guard, outputs, and
loading a workdir for inference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from aspdc_jax.training import NonFiniteLossError, PhaseCheckpoints, train_and_evaluate
from aspdc_jax.weights import CheckpointError, load_for_inference, load_workdir
from tests.helpers.train_fakes import STEPS, fake_loader_factory, tiny_config

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).parent


RUNNER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from tests.helpers import train_fakes as test_train_fakes
    from tests.helpers.train_fakes import tiny_config
    from aspdc_jax.training import train_and_evaluate

    kill_at = int(sys.argv[2])
    sig = getattr(signal, sys.argv[3])
    class KillingIterator(test_train_fakes.FakeIterator):
        def __next__(self):
            if self.index == kill_at:
                os.kill(os.getpid(), sig)
            return super().__next__()
    test_train_fakes.FakeLoader.__iter__ = lambda self: KillingIterator(self)
    train_and_evaluate(tiny_config(), sys.argv[1],
                       loader_factory=test_train_fakes.fake_loader_factory, eval_pairs_fn=None)
    print("DONE")
    """
)


def _run(workdir: Path, kill_at: int, cache: Path, sig: str = "SIGKILL") -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    # Share compiled programs between the runs (same program, same results).
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    script = RUNNER.format(root=str(ROOT), tests=str(TESTS))
    return subprocess.run(
        [sys.executable, "-c", script, str(workdir), str(kill_at), sig],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(ROOT),
    )


def _final_params(workdir: Path, phase: str = "deblur"):
    with PhaseCheckpoints(workdir / phase, read_only=True) as ckpt:
        step = ckpt.latest_step()
        return step, ckpt.restore(step, items=("params",))["params"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    cache = base / "jax_cache"
    full = _run(base / "full", kill_at=-1, cache=cache)
    assert full.returncode == 0 and "DONE" in full.stdout, full.stderr[-4000:]
    # Killed while fetching the batch of step 6: the last checkpoint is step 4.
    killed = _run(base / "killed", kill_at=5, cache=cache)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-4000:])
    with PhaseCheckpoints(base / "killed" / "deblur", read_only=True) as ckpt:
        killed_step = ckpt.latest_step()
    rerun = _run(base / "killed", kill_at=-1, cache=cache)
    assert rerun.returncode == 0 and "DONE" in rerun.stdout, rerun.stderr[-4000:]
    again = _run(base / "killed", kill_at=-1, cache=cache)
    # Ctrl-C while fetching the batch of step 3: step 3 runs, is saved (not a checkpoint
    # step), and the run stops; the rerun resumes from it.
    interrupted = _run(base / "interrupted", kill_at=2, cache=cache, sig="SIGINT")
    resumed = _run(base / "interrupted", kill_at=-1, cache=cache)
    return {
        "base": base,
        "killed_step": killed_step,
        "rerun": rerun,
        "again": again,
        "interrupted": interrupted,
        "resumed": resumed,
    }


def test_sigkill_then_rerun_matches_uninterrupted_run(runs):
    assert runs["killed_step"] == 4
    assert "resuming from step 4/6" in runs["rerun"].stdout
    step_a, full = _final_params(runs["base"] / "full")
    step_b, resumed = _final_params(runs["base"] / "killed")
    assert step_a == step_b == STEPS
    import jax

    for x, y in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_ctrl_c_saves_the_current_step_and_a_rerun_resumes(runs):
    interrupted, resumed = runs["interrupted"], runs["resumed"]
    assert interrupted.returncode != 0 and "DONE" not in interrupted.stdout
    assert "SIGINT: stopping after this step" in interrupted.stdout
    assert "TrainingInterrupted" in interrupted.stderr and "stopped by SIGINT at step 3/6" in interrupted.stderr
    assert resumed.returncode == 0 and "resuming from step 3/6" in resumed.stdout, resumed.stderr[-4000:]
    _, full = _final_params(runs["base"] / "full")
    step, after = _final_params(runs["base"] / "interrupted")
    assert step == STEPS
    import jax

    for x, y in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(after)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    records = [json.loads(line) for line in (runs["base"] / "interrupted" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["event"] == "train"]
    assert train_steps == sorted(set(train_steps)) == [2, 4, 6]


def test_resume_drops_metrics_written_after_the_checkpoint(tmp_path):
    from aspdc_jax.training.summaries import MetricsWriter

    path = tmp_path / "metrics.jsonl"
    lines = [
        {"phase": "deblur", "step": 2, "event": "train"},
        {"phase": "deblur", "step": 4, "event": "train"},
        {"phase": "reblur", "step": 6, "event": "train"},
        {"phase": "deblur", "step": 6, "event": "train"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"phase": "deb')  # torn by a kill
    MetricsWriter(tmp_path, "deblur", tensorboard=False, resume_step=4).close()
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in kept] == [("deblur", 2), ("deblur", 4), ("reblur", 6)]
    # A phase started afresh (its checkpoints deleted) drops all its earlier records.
    MetricsWriter(tmp_path, "deblur", tensorboard=False, resume_step=0).close()
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in kept] == [("reblur", 6)]


def test_resume_with_another_config_names_the_changes(runs, tmp_path, capsys):
    import shutil

    workdir = tmp_path / "w"
    shutil.copytree(runs["base"] / "full", workdir)
    c = tiny_config()
    c.loss = "charbonnier"
    c.deblur.num_epochs = 2.0  # extending a phase is normal: not reported
    c.reblur.lr = 0.5  # another phase's section: not reported
    c.log_every_steps = 1  # logging cadence: not reported
    train_and_evaluate(c, workdir, loader_factory=fake_loader_factory, eval_pairs_fn=None)
    out = capsys.readouterr().out
    assert "is resumed, but was trained with another config: loss: 'mse' -> 'charbonnier'." in out, out
    assert "num_epochs" not in out and "reblur.lr" not in out and "log_every" not in out
    assert "[train] 1 cpu device on 1 host; global batch 2 (2 per device)" in out
    # A finished phase with another config is kept (skipped), and the note says how to redo it.
    c.adam_eps = 1e-3
    train_and_evaluate(c, workdir, loader_factory=fake_loader_factory, eval_pairs_fn=None)
    out = capsys.readouterr().out
    assert "finished with another config: adam_eps: 1e-18 -> 0.001. It is kept as it is; to redo" in out, out
    assert f"delete {workdir / 'deblur'}" in out and "finished earlier (step 8/8): skipped" in out


@pytest.mark.slow  # CI time: the default tier keeps under 15 min on 2 cores
def test_eval_limit_zero_disables_in_phase_evaluation_too(tmp_path):
    c = tiny_config()
    c.eval_limit = 0
    c.eval_every_steps = 1
    calls = []
    train_and_evaluate(
        c, tmp_path, loader_factory=fake_loader_factory, eval_pairs_fn=lambda *a, **k: calls.append(1) or []
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert not calls and not [r for r in records if r["event"] == "eval"]


def test_finished_phase_is_skipped(runs):
    assert runs["again"].returncode == 0
    assert "finished earlier (step 6/6): skipped" in runs["again"].stdout


def test_outputs_metrics_jsonl_tensorboard_and_checkpoint_contents(runs):
    workdir = runs["base"] / "full"
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert {"loss", "lr", "grad_norm", "steps_per_s", "epoch", "data_wait_fraction"} <= set(train[0])
    assert all(0.0 <= r["data_wait_fraction"] <= 1.0 for r in train)
    assert any(r["event"] == "phase_end" for r in records)
    events = list((workdir / "tensorboard" / "deblur").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    with PhaseCheckpoints(workdir / "deblur", read_only=True) as ckpt:
        got = ckpt.restore(6, items=("params", "opt_state", "data", "meta", "config"))
    assert got["data"] == {"index": 6}
    assert got["meta"].finished and got["meta"].total_steps == 6 and got["meta"].stopped_by is None
    assert got["config"]["model"]["deblur_width"] == 4


def test_load_workdir_for_inference(runs):
    workdir = runs["base"] / "full"
    loaded = load_for_inference(workdir)
    assert loaded.reblur is None and loaded.model_config["deblur_width"] == 4
    assert "deblur step 6" in loaded.source
    _, params = _final_params(workdir)
    import jax

    for x, y in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded.deblur_params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    phase_only = load_workdir(workdir / "deblur")
    assert phase_only.deblur.width == 4
    # A step folder loads that step (the run keeps steps 4 and 6).
    older = load_for_inference(workdir / "deblur" / "4")
    assert "deblur step 4" in older.source
    with PhaseCheckpoints(workdir / "deblur", read_only=True) as ckpt:
        want = ckpt.restore(4, items=("params",))["params"]
    for x, y in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(older.deblur_params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(CheckpointError, match=r"deblur/5 does not exist"):
        load_for_inference(workdir / "deblur" / "5")


def test_model_shape_mismatch_is_reported_before_orbax(runs):
    c = tiny_config()
    c.model.deblur_width = 8
    with pytest.raises(CheckpointError, match=r"does not match config.model(.|\n)*deblur_width: 4 vs 8"):
        train_and_evaluate(c, runs["base"] / "full", loader_factory=fake_loader_factory, eval_pairs_fn=None)


def test_finetune_without_phase_checkpoints_names_what_is_missing(tmp_path, runs):
    c = tiny_config()
    c.phases = "finetune"
    with pytest.raises(CheckpointError) as err:
        train_and_evaluate(c, tmp_path, loader_factory=fake_loader_factory, eval_pairs_fn=None)
    msg = str(err.value)
    assert "phase 'deblur': no checkpoint" in msg and "phase 'reblur': no checkpoint" in msg
    # With phase 1 done but phase 2 missing, only phase 2 is named.
    with pytest.raises(CheckpointError) as err:
        train_and_evaluate(c, runs["base"] / "full", loader_factory=fake_loader_factory, eval_pairs_fn=None)
    assert "phase 'reblur': no checkpoint" in str(err.value)
    assert "phase 'deblur'" not in str(err.value)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(runs, tmp_path):
    import shutil

    workdir = tmp_path / "nan"
    shutil.copytree(runs["base"] / "full", workdir)
    c = tiny_config()
    c.deblur.num_epochs = 3.0  # extend the finished phase: resumes at step 6
    c.deblur.lr = 1e30
    with pytest.raises(NonFiniteLossError, match=r"non-finite(.|\n)*step 6\)"):
        train_and_evaluate(c, workdir, loader_factory=fake_loader_factory, eval_pairs_fn=None)
    with PhaseCheckpoints(workdir / "deblur", read_only=True) as ckpt:
        assert ckpt.latest_step() == 6


@pytest.mark.parametrize(
    "photos, message",
    [
        (None, r"error: photo folder .*nowhere does not exist"),
        (
            [(20, 30), (300, 300)],
            r"error: photo tiny0.png is 20x30, smaller than the crop 64x64; lower config.data.crop_size",
        ),
        (
            [(300, 300), (200, 300)],
            r"error: held-out photo tiny1.png is 200x300, smaller than the test crop 256x256; "
            r"lower config.data.synthetic_test_crop_size",
        ),
        ([(300, 300), (300, 300)], r"error: config.max_checkpoints_to_keep must be >= 1, got 0"),
    ],
)
def test_train_py_bad_input_is_one_line(tmp_path, photos, message):
    """train.py: a missing photo folder, a photo smaller than the training or the test crop,
    or a bad config value gives `error: ...` and exit status 2, not a traceback, before
    anything trains."""
    import re

    from PIL import Image

    folder = tmp_path / "nowhere"
    if photos is not None:
        folder.mkdir()
        for i, (h, w) in enumerate(photos):  # two photos: tiny0 for train, tiny1 held out
            Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(folder / f"tiny{i}.png")
    extra = ["--config.max_checkpoints_to_keep=0"] if "max_checkpoints" in message else []
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "--config=configs/quickstart.py",
            f"--workdir={tmp_path / 'run'}",
            f"--config.data.data_dir={folder}",
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert re.search(message, proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "flag, message",
    [
        (
            "--config.data.root=x",
            r'error: a --config override names no config field "root"; overrides given: --config.data.root\.',
        ),
        ("--config.deblur.num_epoch=1", r'no config field "num_epoch" \(did you mean "num_epochs"\?\)'),
        ("--config.deblur.lr=fast", r"error: flag --config.deblur.lr=fast: could not convert"),
        (
            "--config=configs/missing.py",
            r"error: --config=configs/missing.py: the config file does not load: .*No such file",
        ),
        ("--bogus=1", r"error: Unknown command line flag 'bogus'"),
    ],
)
def test_train_py_bad_flags_are_one_line(tmp_path, flag, message):
    import re

    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"--workdir={tmp_path / 'run'}", flag],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert re.search(message, proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow  # CI time: the default tier keeps under 15 min on 2 cores
def test_finished_finetune_notes_a_newer_deblur_phase(runs, tmp_path, capsys):
    """A finetune finished from deblur step 6 is skipped on reruns, but once the deblur phase
    has been extended the rerun says that the finetune weights are from the older step."""
    import shutil

    workdir = tmp_path / "w"
    shutil.copytree(runs["base"] / "full", workdir)
    c = tiny_config()
    c.phases = "reblur,finetune"
    train_and_evaluate(c, workdir, loader_factory=fake_loader_factory, eval_pairs_fn=None)
    assert "starting from deblur step 6 and reblur step 6" in capsys.readouterr().out
    c.phases = "deblur,finetune"
    train_and_evaluate(c, workdir, loader_factory=fake_loader_factory, eval_pairs_fn=None)
    assert "note:" not in capsys.readouterr().out  # nothing moved
    c.deblur.num_epochs = 2.0  # deblur resumes at step 6 and runs to 8
    train_and_evaluate(c, workdir, loader_factory=fake_loader_factory, eval_pairs_fn=None)
    out = capsys.readouterr().out
    assert "[finetune] finished earlier" in out
    assert "[finetune] note: started from deblur step 6, but" in out and "is now at step 8" in out


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("data.crop_size", 20, r"crop_size must be a multiple of 8 and >= 16 for the phases deblur,reblur"),
        ("max_checkpoints_to_keep", 0, r"max_checkpoints_to_keep must be >= 1"),
        ("eval_limit", -1, r"eval_limit must be >= 0"),
        ("deblur.lr", -1.0, r"config.deblur: lr must be > 0"),
        ("deblur.warmup_epochs", 9.0, r"warmup_epochs must be in \[0, num_epochs=1.5\]"),
        ("loss", "l2", r"config.loss must be one of"),
        ("batch_size", 0, r"config.batch_size must be >= 1, got 0"),
        ("data.epoch_size", 0, r"config.data.epoch_size must be a positive int, got 0"),
        ("data.synthetic_gamma", 0.0, r"config.data.synthetic_gamma must be a number > 0, got 0.0"),
    ],
)
def test_bad_config_values_fail_before_training(tmp_path, field, value, message):
    c = tiny_config()
    c.phases = "deblur,reblur"
    c.data.dataset = "synthetic"  # epoch_size applies to it
    node, _, key = field.rpartition(".")
    (c[node] if node else c)[key] = value
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(c, tmp_path, loader_factory=fake_loader_factory, eval_pairs_fn=None)
    assert not any((tmp_path / p).exists() for p in ("deblur", "reblur"))


@pytest.mark.slow  # CI time: the default tier keeps under 15 min on 2 cores
def test_checkpoint_every_zero_means_only_at_the_end(tmp_path):
    c = tiny_config()
    c.checkpoint_every_steps = 0
    train_and_evaluate(c, tmp_path, loader_factory=fake_loader_factory, eval_pairs_fn=None)
    with PhaseCheckpoints(tmp_path / "deblur", read_only=True) as ckpt:
        assert ckpt.all_steps() == [STEPS]


@pytest.mark.slow  # CI time: the default tier keeps under 15 min on 2 cores
def test_resume_with_another_batch_size_says_so(runs, tmp_path, capsys):
    import shutil

    workdir = tmp_path / "w"
    shutil.copytree(runs["base"] / "full", workdir)
    c = tiny_config()
    c.batch_size = 1  # 8 steps per epoch instead of 4: step 6 of 6 becomes step 6 of 12
    train_and_evaluate(c, workdir, loader_factory=fake_loader_factory, eval_pairs_fn=None)
    out = capsys.readouterr().out
    assert "written at 4 steps per epoch, this config gives 8" in out and "resuming from step 6/12" in out
