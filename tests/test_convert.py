"""Converter tests: the official fixture nets (w=4) through the .pth reader and the Flax models."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aspdc_jax import convert
from aspdc_jax.convert import (
    OFFICIAL_DEBLUR_GROUPS,
    ConversionError,
    UnsafeCheckpointError,
    deblur_from_official,
    deblur_to_official,
    read_torch_state_dict,
    reblur_from_official,
    reblur_to_official,
)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def official() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "official_nets.npz") as data:
        return {k: data[k] for k in data.files}


def _sub(official: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in official.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def deblur_sd(official) -> dict[str, np.ndarray]:
    return _sub(official, "deblur/")


@pytest.fixture(scope="module")
def reblur_sd(official) -> dict[str, np.ndarray]:
    return _sub(official, "reblur/")


@pytest.fixture
def x64():
    """Enables float64 for one test and restores the previous setting afterwards."""
    with jax.enable_x64(True):
        yield


def _nhwc(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).transpose(0, 2, 3, 1)


# ---------------------------------------------------------------- the .pth reader


def test_pth_reader_returns_exactly_the_npz_arrays(deblur_sd, reblur_sd) -> None:
    for name, expected in (("DeblurringNet_FT.pth", deblur_sd), ("ReBlurringNet.pth", reblur_sd)):
        got = read_torch_state_dict(FIXTURES / name)
        assert list(got) == list(expected)
        for key, value in expected.items():
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            np.testing.assert_array_equal(got[key], value, err_msg=key)


def _write_pth(path: Path, payload: bytes, archive: str = "ckpt") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{archive}/data.pkl", payload)
        zf.writestr(f"{archive}/byteorder", "little")
    return path


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("wrapped", [False, True])
def test_pth_reader_refuses_code_execution(tmp_path, wrapped) -> None:
    marker = tmp_path / "pwned"
    obj = _RunsShell(marker)
    if wrapped:
        obj = {"deblurring_state_dict": {"head.0.weight": obj}}
    path = _write_pth(tmp_path / "evil.pth", pickle.dumps(obj, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="system"):
        read_torch_state_dict(path)
    assert not marker.exists()


def test_pth_reader_refuses_builtins(tmp_path) -> None:
    path = _write_pth(tmp_path / "evil.pth", pickle.dumps(_CallsEval(), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"eval"):
        read_torch_state_dict(path)


def test_pth_reader_unwraps_and_strips_module_prefix(tmp_path) -> None:
    # Re-pack the fixture's pickle with every key prefixed by "module." (DataParallel).
    src = FIXTURES / "ReBlurringNet.pth"
    dst = tmp_path / "parallel.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item.endswith("data.pkl"):
                data = data.replace(
                    b"X\x12\x00\x00\x00head_conv.0.weight", b"X\x19\x00\x00\x00module.head_conv.0.weight"
                )
            zout.writestr(item, data)
    sd = read_torch_state_dict(dst)
    assert "head_conv.0.weight" in sd and not any(k.startswith("module.") for k in sd)


def test_pth_reader_rejects_non_zip(tmp_path) -> None:
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ConversionError, match="zip"):
        read_torch_state_dict(path)


# ---------------------------------------------------------------- conversion


def test_conversion_errors_list_every_bad_key(deblur_sd) -> None:
    sd = dict(deblur_sd)
    del sd["head.0.bias"]
    del sd["en_res_group2_2.hallucination_d3.hallucination_conv.p_conv.weight"]
    sd["extra.weight"] = np.zeros(3, np.float32)
    sd["tail.2.weight"] = np.zeros((8, 4, 5, 5), np.float32)
    with pytest.raises(ConversionError) as err:
        deblur_from_official(sd)
    msg = str(err.value)
    assert "missing keys (2)" in msg and "head.0.bias" in msg
    assert "en_res_group2_2.hallucination_d3.hallucination_conv.p_conv.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "tail.2.weight: expected (8, 4, 3, 3), got (8, 4, 5, 5)" in msg


def test_reblur_given_deblur_weights_is_refused(deblur_sd) -> None:
    with pytest.raises(ConversionError, match="head_conv.0.weight"):
        reblur_from_official(deblur_sd)


def test_full_width_official_names_and_shapes_convert() -> None:
    shapes = json.loads((FIXTURES / "official_full_width_shapes.json").read_text())
    for key, from_official, to_official, count in (
        ("deblurring", deblur_from_official, deblur_to_official, 15_016_503),
        ("blurring", reblur_from_official, reblur_to_official, 998_802),
    ):
        sd = {k: np.zeros(s, np.float32) for k, s in shapes[key].items()}
        net, params = from_official(sd)
        assert sum(a.size for a in jax.tree_util.tree_leaves(params)) == count
        back = to_official(params)
        assert {k: list(v.shape) for k, v in back.items()} == shapes[key]
    assert net.width == 16


def test_round_trip_to_official_is_exact(deblur_sd, reblur_sd) -> None:
    _, params = deblur_from_official(deblur_sd)
    back = deblur_to_official(params)
    assert set(back) == set(deblur_sd)
    for k, v in deblur_sd.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    _, rparams = reblur_from_official(reblur_sd)
    assert all(np.array_equal(reblur_to_official(rparams)[k], v) for k, v in reblur_sd.items())


# ---------------------------------------------------------------- numerics vs the official code


def _check_outputs(official, deblur_sd, reblur_sd, dtype, atol: float) -> None:
    net, params = deblur_from_official(deblur_sd)
    rnet, rparams = reblur_from_official(reblur_sd)
    assert net.width == 4 and rnet.width == 4
    net, rnet = net.clone(dtype=dtype), rnet.clone(dtype=dtype)
    cast = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)
    params, rparams = cast(params), cast(rparams)
    blurry = jnp.asarray(_nhwc(official["input/blurry"]), dtype)
    sharp = jnp.asarray(_nhwc(official["input/sharp"]), dtype)

    deblur = jax.jit(lambda p, x: net.apply({"params": p}, x, mutable=["intermediates"]))
    out, state = deblur(params, blurry)
    reblur = jax.jit(lambda p, b, s: rnet.apply({"params": p}, b, s))
    got = {
        "output/deblurred": out.deblurred,
        "output/residual": out.residual,
        "output/reblurred": reblur(rparams, blurry, out.deblurred),
        "output/reblurred_sharp": reblur(rparams, blurry, sharp),
    }
    for k, group in enumerate(OFFICIAL_DEBLUR_GROUPS):
        got[f"aspdc_out/{group}_2"] = state["intermediates"]["aspdc_out"][0][k]
        got[f"aspdc_offsets/{group}_2"] = out.offsets[k]
    expected_keys = {k for k in official if not k.startswith(("deblur/", "reblur/", "input/"))}
    assert set(got) == expected_keys
    for key, value in got.items():
        assert value.dtype == dtype, key
        err = float(np.max(np.abs(np.asarray(value, np.float64) - _nhwc(official[key]))))
        assert err <= atol, f"{key}: max abs error {err:.3g} > {atol:g}"


def test_outputs_match_official_float64(official, deblur_sd, reblur_sd, x64) -> None:
    _check_outputs(official, deblur_sd, reblur_sd, jnp.float64, 1e-8)


def test_outputs_match_official_float32(official, deblur_sd, reblur_sd) -> None:
    assert not jax.config.jax_enable_x64  # the x64 fixture did not leak
    _check_outputs(official, deblur_sd, reblur_sd, jnp.float32, 2e-4)


# ---------------------------------------------------------------- CLI


def test_cli_writes_an_export_that_loads(tmp_path, official, deblur_sd, capsys) -> None:
    from aspdc_jax.weights import load_for_inference

    out_dir = tmp_path / "export"
    rc = convert.main(
        [
            "--deblur", str(FIXTURES / "DeblurringNet_FT.pth"),
            "--reblur", str(FIXTURES / "ReBlurringNet.pth"),
            "--out", str(out_dir),
        ]
    )  # fmt: skip
    assert rc == 0
    assert "305,079 parameters" in capsys.readouterr().out
    loaded = load_for_inference(out_dir)
    assert loaded.deblur.width == 4 and loaded.reblur is not None and loaded.reblur.width == 4
    back = deblur_to_official(loaded.deblur_params)
    for k, v in deblur_sd.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    blurry = jnp.asarray(_nhwc(official["input/blurry"]), jnp.float32)
    out = jax.jit(loaded.deblur.apply)({"params": loaded.deblur_params}, blurry)
    np.testing.assert_allclose(out.deblurred, _nhwc(official["output/deblurred"]), atol=2e-4)


def test_cli_reports_bad_files(tmp_path, capsys) -> None:
    rc = convert.main(["--deblur", str(FIXTURES / "ReBlurringNet.pth"), "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "head.0.weight" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_damaged_files_and_out_folder(tmp_path, capsys) -> None:
    deblur_pth = FIXTURES / "DeblurringNet_FT.pth"
    raw = deblur_pth.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(raw[: len(raw) // 2])
    with zipfile.ZipFile(deblur_pth) as zin, zipfile.ZipFile(tmp_path / "cutpkl.pth", "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            zout.writestr(item, data[: len(data) // 2] if item.endswith("data.pkl") else data)
    cases = {
        "trunc.pth": "damaged (truncated?) zip archive",
        "cutpkl.pth": "is damaged (",
        ".": "is a folder; expected a .pth checkpoint file",
    }
    for name, message in cases.items():
        assert convert.main(["--deblur", str(tmp_path / name), "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err, name
    # Swapped files: the message says so.
    assert convert.main(["--deblur", str(FIXTURES / "ReBlurringNet.pth"), "--out", str(tmp_path / "x")]) == 2
    assert "were --deblur and --reblur swapped?" in capsys.readouterr().err
    # --out: a file, a non-empty non-export folder, an earlier export (needs --overwrite).
    (tmp_path / "afile").write_text("x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    for out, message in (("afile", "is not a folder"), ("busy", "holds no export")):
        assert convert.main(["--deblur", str(deblur_pth), "--out", str(tmp_path / out)]) == 2
        assert message in capsys.readouterr().err
    assert convert.main(["--deblur", str(deblur_pth), "--out", str(tmp_path / "e")]) == 0
    assert convert.main(["--deblur", str(deblur_pth), "--out", str(tmp_path / "e")]) == 2
    assert "add --overwrite" in capsys.readouterr().err
    assert convert.main(["--deblur", str(deblur_pth), "--out", str(tmp_path / "e"), "--overwrite"]) == 0


def test_cli_one_network_exports(tmp_path, reblur_sd, capsys) -> None:
    """Either .pth alone gives a loadable export: ReblurNet-only for evaluate.py --reblur
    (refused, in one line, where the DeblurNet is needed), DeblurNet-only for inference."""
    from aspdc_jax.weights import CheckpointError, load_for_inference

    assert convert.main(["--out", str(tmp_path / "none")]) == 2
    assert "error: nothing to convert: give --deblur" in capsys.readouterr().err
    out = tmp_path / "reblur_only"
    assert convert.main(["--reblur", str(FIXTURES / "ReBlurringNet.pth"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ReblurNet(width=4)" in printed and "DeblurNet" not in printed.split("\n")[0]
    config = json.loads((out / "model_config.json").read_text())
    assert config["has_deblur"] is False and config["has_reblur"] is True and "deblur_width" not in config
    with pytest.raises(CheckpointError, match=r"holds only a ReblurNet .*--deblur DeblurringNet_FT.pth") as err:
        load_for_inference(out)
    assert "\n" not in str(err.value)
    loaded = load_for_inference(out, require_deblur=False)
    assert loaded.deblur is None and loaded.deblur_params is None and loaded.reblur.width == 4
    back = reblur_to_official(loaded.reblur_params)
    assert all(np.array_equal(back[k], v) for k, v in reblur_sd.items())

    out = tmp_path / "deblur_only"
    assert convert.main(["--deblur", str(FIXTURES / "DeblurringNet_FT.pth"), "--out", str(out)]) == 0
    assert "no ReblurNet" in capsys.readouterr().out
    loaded = load_for_inference(out)
    assert loaded.deblur.width == 4 and loaded.reblur is None and loaded.reblur_params is None
    # A DeblurringNet file given as --reblur alone: the swapped-files hint, exit 2.
    assert convert.main(["--reblur", str(FIXTURES / "DeblurringNet_FT.pth"), "--out", str(tmp_path / "x")]) == 2
    assert "were --deblur and --reblur swapped?" in capsys.readouterr().err
