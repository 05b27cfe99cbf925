"""Tiny in-memory stand-ins for the data pipeline, shared by the training tests.

Not a test module by itself (no tests); imported by tests/test_train*.py and by the
subprocess scripts they start.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

STEPS = 6  # the tiny phase length of tiny_config


def _pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random 'photo' and its horizontally box-blurred version (uint8 HxWx3)."""
    coarse = rng.uniform(0, 255, (size // 4 + 2, size // 4 + 2, 3))
    sharp = np.kron(coarse, np.ones((4, 4, 1)))[:size, :size]
    sharp = np.clip(sharp + rng.normal(0, 20, sharp.shape), 0, 255)
    k = 5
    padded = np.pad(sharp, ((0, 0), (k // 2, k // 2), (0, 0)), mode="edge")
    blurred = sum(padded[:, i : i + size] for i in range(k)) / k
    return np.round(blurred).astype(np.uint8), np.round(sharp).astype(np.uint8)


class FakeIterator:
    def __init__(self, loader: FakeLoader):
        self.loader = loader
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.loader.seed, self.index])
        pairs = [_pair(rng, self.loader.crop) for _ in range(self.loader.batch)]
        self.index += 1
        return {
            "blurred": np.stack([p[0] for p in pairs]),
            "sharp": np.stack([p[1] for p in pairs]),
        }

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])


@dataclasses.dataclass
class FakeLoader:
    batch: int
    seed: int
    crop: int = 16
    num_examples: int = 8

    def __iter__(self) -> FakeIterator:
        return FakeIterator(self)


def fake_loader_factory(data_cfg, *, global_batch_size: int, seed: int) -> FakeLoader:
    return FakeLoader(
        batch=global_batch_size,
        seed=seed,
        crop=int(data_cfg.crop_size),
        num_examples=int(data_cfg.epoch_size),
    )


@dataclasses.dataclass
class FakePair:
    name: str
    blurred: np.ndarray
    sharp: np.ndarray
    meta: dict


def fake_eval_pairs(data_cfg, split: str = "test", limit: int | None = None):
    rng = np.random.default_rng(12345)
    for i in range(limit or 2):
        b, s = _pair(rng, 20)  # not a multiple of 8: exercises padding
        yield FakePair(name=f"fake{i}", blurred=b, sharp=s, meta={})


def tiny_config() -> ml_collections.ConfigDict:
    """configs/default.py at tiny widths and sizes: one deblur phase of STEPS steps."""
    from configs import default

    c = default.get_config()
    c.model.deblur_width = 4
    c.model.reblur_width = 4
    c.model.num_groups = 1
    c.data.crop_size = 16
    c.data.epoch_size = 8  # batch 2 -> 4 steps per epoch
    c.batch_size = 2
    for phase in ("deblur", "reblur", "finetune"):
        c[phase].schedule = "constant"
        c[phase].lr = 1e-3
        c[phase].num_epochs = STEPS / 4
    c.phases = "deblur"
    c.log_every_steps = 2
    c.checkpoint_every_steps = 2
    c.image_every_steps = 3
    c.eval_limit = 0
    c.progress_bar = False
    return c
