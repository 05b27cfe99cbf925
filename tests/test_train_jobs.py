"""The periodic jobs of the step loop (aspdc_jax.training.jobs): their cadence, the time
budget (config.max_train_seconds) and the input-pipeline wait share in metrics.jsonl."""

from __future__ import annotations

import json
import time
import types

import pytest

from aspdc_jax.checkpoint import Item, PhaseCheckpoints
from aspdc_jax.training import train_and_evaluate
from aspdc_jax.training.jobs import TimeBudget
from aspdc_jax.training.periodic import PeriodicJob, Tick, TimedIterator
from tests.helpers.train_fakes import fake_eval_pairs, fake_loader_factory, tiny_config


class _Count(PeriodicJob):
    def __init__(self, every: int, at_last: bool = True):
        super().__init__(every, at_last=at_last)
        self.steps: list[int] = []

    def apply(self, tick: Tick) -> None:
        self.steps.append(tick.step)


def _ticks(total: int):
    return [Tick(step, None, None, None, last=step == total) for step in range(1, total + 1)]


def test_a_job_runs_every_n_steps_and_at_the_last():
    jobs = [_Count(2), _Count(4, at_last=False), _Count(0), _Count(0, at_last=False)]
    for tick in _ticks(7):
        for job in jobs:
            job(tick)
    assert [job.steps for job in jobs] == [[2, 4, 6, 7], [4], [7], []]


def test_time_budget_ends_the_phase_at_the_first_step_past_it(capsys):
    run = types.SimpleNamespace(name="deblur", total=100, config=types.SimpleNamespace(max_train_seconds=0.05))
    budget = TimeBudget(run)  # type: ignore[arg-type]
    first = Tick(1, None, None, None, last=False)
    budget(first)
    assert not first.last and first.stopped_by is None
    time.sleep(0.06)
    second = Tick(2, None, None, None, last=False)
    budget(second)
    assert second.last and second.stopped_by == "max_train_seconds"
    assert "[deblur] max_train_seconds=0.05 reached" in capsys.readouterr().out
    end = Tick(100, None, None, None, last=True)  # the schedule's own end is not a budget stop
    budget(end)
    assert end.stopped_by is None


def test_timed_iterator_counts_the_wait_and_keeps_the_state():
    class Slow:
        index = 0

        def __next__(self):
            time.sleep(0.02)
            self.index += 1
            return self.index

        def get_state(self):
            return {"index": self.index}

        def set_state(self, state):
            self.index = state["index"]

    data = TimedIterator(Slow(), {"index": 5})  # type: ignore[arg-type]
    assert next(data) == 6 and data.get_state() == {"index": 6}
    assert 0.015 <= data.take_waited() < 1.0 and data.take_waited() == 0.0


@pytest.mark.slow  # CI time: a train step and the evaluation compile (the budget's logic: above)
def test_max_train_seconds_ends_a_phase_like_its_schedule(tmp_path, capsys):
    """A phase stopped by its time budget saves a finished checkpoint, is evaluated and
    logs as at its end; metrics.jsonl has the input pipeline's wait share."""
    c = tiny_config()
    c.max_train_seconds = 1e-6  # ends at step 1
    c.eval_limit = 1
    c.log_every_steps = 4
    c.image_every_steps = 0
    summary = train_and_evaluate(c, tmp_path, loader_factory=fake_loader_factory, eval_pairs_fn=fake_eval_pairs)
    out = capsys.readouterr().out
    assert "[deblur] max_train_seconds=1e-06 reached" in out and "the phase ends at step 1/6" in out
    deblur = summary["deblur"]
    assert deblur["final_step"] == 1 and deblur["stopped_by"] == "max_train_seconds" and "eval" in deblur
    with PhaseCheckpoints(tmp_path / "deblur", read_only=True) as ckpt:
        assert ckpt.all_steps() == [1]
        meta = ckpt.meta(1)
    assert meta.finished and meta.stopped_by == "max_train_seconds" and meta.total_steps == 6
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["event"], r["step"]) for r in records] == [("train", 1), ("eval", 1), ("phase_end", 1)]
    assert 0.0 <= records[0]["data_wait_fraction"] <= 1.0
    assert records[-1]["stopped_by"] == "max_train_seconds"


@pytest.mark.slow  # CI time: three phases compile
def test_phases_cut_by_the_time_budget_hand_off(tmp_path, capsys):
    """deblur and reblur end after one step each; finetune starts from those steps; a rerun
    (budget off) resumes each phase from its step to the end of its schedule."""
    c = tiny_config()
    c.phases = "deblur,reblur,finetune"
    c.max_train_seconds = 1e-6
    c.finetune.num_epochs = 0.5  # 2 steps
    summary = train_and_evaluate(c, tmp_path, loader_factory=fake_loader_factory, eval_pairs_fn=None)
    assert [summary[p]["final_step"] for p in ("deblur", "reblur", "finetune")] == [1, 1, 1]
    assert "[finetune] starting from deblur step 1 and reblur step 1" in capsys.readouterr().out
    with PhaseCheckpoints(tmp_path / "finetune", read_only=True) as ckpt:
        meta = ckpt.restore(1, items=(Item.META,))[Item.META]
    assert meta.started_from == {"deblur": 1, "reblur": 1} and meta.stopped_by == "max_train_seconds"
    c.max_train_seconds = 0.0
    summary = train_and_evaluate(c, tmp_path, loader_factory=fake_loader_factory, eval_pairs_fn=None)
    out = capsys.readouterr().out
    assert [summary[p]["final_step"] for p in ("deblur", "reblur", "finetune")] == [6, 6, 2]
    assert "[deblur] resuming from step 1/6" in out and "[finetune] resuming from step 1/2" in out
    assert "[finetune] note: started from deblur step 1, but" in out
