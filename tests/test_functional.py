"""The one forward (deblur_forward): make_deblur_fn is bit for bit the Deblurrer's output,
under jit (batch sharded over 2 fake CPU devices, in a subprocess) and under vmap, and the
validation during training scores the same pixels; reflect padding as np.pad."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aspdc_jax.images import quantize, reflect_pad
from aspdc_jax.inference import Deblurrer, make_deblur_fn
from aspdc_jax.training.steps import make_eval_fns
from aspdc_jax.training.validation import evaluate_pairs
from aspdc_jax.weights import LoadedModels
from tests.helpers.models import smooth_image, tiny_models
from tests.helpers.processes import run_python

SIZE = (13, 18)  # odd: padded to 16x20 inside, cropped back


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    deblur, dparams, _, _ = tiny_models()
    return deblur, dparams


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.stack([smooth_image(rng, *SIZE) for _ in range(2)])


@pytest.fixture(scope="module")
def reference(tiny: tuple[Any, Any], images: np.ndarray) -> np.ndarray:
    deblur, params = tiny
    return Deblurrer(deblur, params, bucket="exact").deblur(images)


def test_reflect_pad_is_numpy_reflect() -> None:
    rng = np.random.default_rng(0)
    for h in range(1, 10):
        for w in (1, 6):
            x = rng.integers(0, 256, (2, h, w, 3)).astype(np.uint8)
            for m in (4, 8):
                hp, wp = -(-h // m) * m, -(-w // m) * m
                want = np.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)), mode="reflect")
                got = reflect_pad(jnp.asarray(x), m)
                assert isinstance(got, jax.Array)
                np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"{h}x{w} to a multiple of {m}")
                on_host = reflect_pad(x[0], height=hp, width=wp)  # (H, W, C) on the host
                assert isinstance(on_host, np.ndarray)
                np.testing.assert_array_equal(on_host, want[0])
    assert reflect_pad(x, 1) is x
    with pytest.raises(ValueError, match="cannot pad 9x6 down to 8x6"):
        reflect_pad(x[0], height=8, width=6)


def test_validation_scores_the_deblurrers_pixels(tiny: tuple[Any, Any], images: np.ndarray, reference: np.ndarray):
    deblur, params = tiny
    eval_fns = make_eval_fns(deblur, None)
    pixels = np.asarray(eval_fns["deblur_pixels"](params, images))
    assert pixels.dtype == np.float32 and pixels.shape == images.shape
    np.testing.assert_array_equal(quantize(pixels), reference)
    floats = Deblurrer(deblur, params, bucket="exact").deblur_float(images[0])
    np.testing.assert_array_equal(floats, pixels[0] / np.float32(255.0))

    class Pair:
        blurred, sharp, meta = images[0], images[1], {}

    result = evaluate_pairs("deblur", [Pair()], params=params, eval_fns=eval_fns)
    mse = np.mean(np.square(pixels[0].astype(np.float64) - images[1]))
    assert result["psnr_output"] == pytest.approx(10 * np.log10(255.0**2 / mse), rel=1e-12)


def test_jit_equals_deblurrer(tiny: tuple[Any, Any], images: np.ndarray, reference: np.ndarray) -> None:
    deblur, params = tiny
    out = jax.jit(make_deblur_fn(deblur))(params, images)
    assert out.dtype == jnp.uint8 and out.shape == images.shape
    np.testing.assert_array_equal(np.asarray(out), reference)


def test_bfloat16_self_ensemble_equals_deblurrer(tiny: tuple[Any, Any], images: np.ndarray) -> None:
    deblur, params = tiny
    options = {"dtype": "bfloat16", "self_ensemble": True}
    want = Deblurrer(deblur, params, bucket="exact", batch_size=2, **options).deblur(images)
    out = jax.jit(make_deblur_fn(deblur, **options))(params, images)
    np.testing.assert_array_equal(np.asarray(out), want)


def test_vmap_with_unmapped_params_equals_deblurrer(
    tiny: tuple[Any, Any], images: np.ndarray, reference: np.ndarray
) -> None:
    deblur, params = tiny
    fn = jax.jit(jax.vmap(make_deblur_fn(deblur), in_axes=(None, 0)))
    out = fn(params, images[:, None])  # (2, 1, H, W, 3): two batches of one
    np.testing.assert_array_equal(np.asarray(out), reference[:, None])


def test_loaded_models_shapes_and_errors(tiny: tuple[Any, Any]) -> None:
    deblur, params = tiny
    loaded = LoadedModels(deblur, params, None, None, {}, "test")
    for dtype, ensemble in (("float32", False), ("bfloat16", True)):
        fn = make_deblur_fn(loaded, dtype=dtype, self_ensemble=ensemble)
        out = jax.eval_shape(fn, params, jax.ShapeDtypeStruct((3, 7, 9, 3), jnp.uint8))
        assert (out.shape, out.dtype) == ((3, 7, 9, 3), jnp.uint8)
    fn = make_deblur_fn(deblur)
    with pytest.raises(ValueError, match="uint8"):
        jax.eval_shape(fn, params, jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        jax.eval_shape(fn, params, jax.ShapeDtypeStruct((8, 8, 3), jnp.uint8))
    with pytest.raises(ValueError, match="DeblurNet"):
        make_deblur_fn(params)
    with pytest.raises(ValueError, match="dtype"):
        make_deblur_fn(deblur, dtype="float16")


SHARDED = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from aspdc_jax.devices import DATA_AXIS
    from aspdc_jax.inference import make_deblur_fn
    from tests.helpers.models import tiny_models

    assert jax.device_count() == 2, jax.devices()
    deblur, params, _, _ = tiny_models()
    images = np.load(sys.argv[1])
    mesh = Mesh(np.array(jax.devices()), (DATA_AXIS,))
    batch, replicated = NamedSharding(mesh, P(DATA_AXIS)), NamedSharding(mesh, P())
    fn = jax.jit(make_deblur_fn(deblur), in_shardings=(replicated, batch), out_shardings=batch)
    out = fn(params, images)
    assert out.sharding.is_equivalent_to(batch, 4), out.sharding
    assert len(out.addressable_shards) == 2 and out.addressable_shards[0].data.shape[0] == 1
    np.save(sys.argv[2], np.asarray(out))
    """
)


def test_jit_with_batch_sharded_over_two_devices(images: np.ndarray, reference: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "images.npy", images)
    run_python(SHARDED, str(tmp_path / "images.npy"), str(tmp_path / "out.npy"), devices=2)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), reference)
