"""Deblurrer over several devices (2 fake CPU devices, in a subprocess) and deblur_stream."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from aspdc_jax.images import ImageReadError
from aspdc_jax.inference import Deblurrer
from tests.helpers.models import smooth_image, tiny_models
from tests.helpers.processes import run_python


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    deblur, params, _, _ = tiny_models()
    return deblur, params


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [smooth_image(rng, h, w) for h, w in ((20, 24), (19, 22), (20, 24), (13, 18), (40, 36))]


def test_deblur_stream_in_order_with_read_errors(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    deblur, params = tiny
    images = _images()
    Image.fromarray(images[1]).save(tmp_path / "b.png")
    (tmp_path / "notes.txt").write_text("not an image")
    items: list[Any] = [images[0], tmp_path / "b.png", tmp_path / "notes.txt", *images[2:]]
    deblurrer = Deblurrer(deblur, params, bucket=8, batch_size=2, tile=32, overlap=8)
    results = list(deblurrer.deblur_stream(items, threads=2, prefetch=2))

    assert [r.item for r in results] == items  # one result per item, in order
    bad = results[2]
    assert bad.output is None and isinstance(bad.error, ImageReadError) and "notes.txt" in str(bad.error)
    single = Deblurrer(deblur, params, bucket=8, tile=32, overlap=8)
    good = [r for r in results if r.error is None]
    for result, image in zip(good, images):
        assert result.image is not None and result.output is not None
        np.testing.assert_array_equal(result.image.rgb, image)
        want = single.deblur(image)
        assert result.output.dtype == np.uint8 and result.output.shape == image.shape
        assert np.abs(result.output.astype(int) - want).max() <= 1  # batch of 2 vs 1: summation order


def test_deblur_stream_passes_a_custom_reader(tiny: tuple[Any, Any]) -> None:
    deblur, params = tiny
    images = _images()[:2]
    deblurrer = Deblurrer(deblur, params, bucket=8)

    def read(index: int) -> np.ndarray:
        if index == 1:
            raise OSError("disk gone")
        return images[index]

    first, second = deblurrer.deblur_stream([0, 1], read=read)
    np.testing.assert_array_equal(first.output, deblurrer.deblur(images[0]))
    assert isinstance(second.error, OSError) and second.output is None


MULTI_DEVICE = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from aspdc_jax.inference import Deblurrer
    from tests.helpers.models import tiny_models

    assert jax.local_device_count() == 2, jax.devices()
    deblur, params, _, _ = tiny_models()
    images = list(np.load(sys.argv[1]))  # three 20x24
    deblurrer = Deblurrer(deblur, params, bucket=8, batch_size=3)
    assert deblurrer.num_devices == 2
    leaf = jax.tree_util.tree_leaves(deblurrer.params)[0]
    assert len(leaf.sharding.device_set) == 2 and leaf.sharding.is_fully_replicated
    out = deblurrer.deblur(images)  # one batch of 3, filled up to 4, split 2 + 2
    np.save(sys.argv[2], np.stack(out))
    """
)


def test_batches_split_over_two_devices_equal_one_device(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    deblur, params = tiny
    images = [im[:20, :24] for im in _images() if min(im.shape[:2]) >= 20]
    assert len(images) == 3
    np.save(tmp_path / "in.npy", np.stack(images))
    run_python(MULTI_DEVICE, str(tmp_path / "in.npy"), str(tmp_path / "out.npy"), devices=2)
    # There each device ran 2 images: [0, 1] and [2, 2 (the filler)]. Here: the same pairs.
    pairs = Deblurrer(deblur, params, bucket=8, batch_size=2)
    want = [*pairs.deblur(images[:2]), pairs.deblur([images[2], images[2]])[0]]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.stack(want))
