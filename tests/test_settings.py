"""The base config (aspdc_jax/configs/default.py, shipped with the package; configs/default.py
in a checkout) is the one source of every default: typed settings round-trip its sections,
bad or unknown fields fail in one line, every configs/*.py variant gives valid settings and
states only what differs, and no library module restates a default with a fallback getter."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from aspdc_jax.configs import default
from aspdc_jax.data.settings import DataSettings, defaults
from aspdc_jax.models.config import ModelSettings, model_defaults
from aspdc_jax.settings import base_config

ROOT = Path(__file__).resolve().parents[1]
#: Every config of the checkout (configs/<name>.py), the base's path included.
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("section, cls", [("data", DataSettings), ("model", ModelSettings)])
def test_settings_round_trip_every_field_of_the_base(section: str, cls: Any) -> None:
    base = default.get_config()[section].to_dict()
    settings = cls.from_config(default.get_config()[section])
    assert settings.to_dict() == base  # same names (none unknown, none missing), same values
    assert (defaults() if section == "data" else model_defaults()) == settings


def test_the_checkout_path_is_the_shipped_base() -> None:
    checkout = importlib.import_module("configs.default")
    assert checkout.get_config is default.get_config
    assert base_config() == default.get_config() and base_config() is not base_config()
    assert {"default", "deblur", "quickstart", "demo"} <= set(CONFIGS)


@pytest.mark.parametrize("variant", CONFIGS)
def test_every_config_gives_valid_settings(variant: str) -> None:
    config = importlib.import_module(f"configs.{variant}").get_config()
    DataSettings.from_config(config.data)
    ModelSettings.from_config(config.model)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"crop_size": -3}, "config.data.crop_size must be a positive int, got -3"),
        ({"crop_size": True}, "config.data.crop_size must be a positive int, got True"),
        ({"num_workers": -1}, "config.data.num_workers must be an int >= 0, got -1"),
        ({"dataset": "imagenet"}, "config.data.dataset must be one of ('synthetic', "),
        ({"gopro_variant": "gamma"}, "config.data.gopro_variant must be one of ('blur', 'blur_gamma'), got 'gamma'"),
        ({"synthetic_jpeg_probability": 1.5}, "config.data.synthetic_jpeg_probability must be a number in [0, 1]"),
        ({"synthetic_photo_scales": ()}, "config.data.synthetic_photo_scales must be a non-empty list"),
        ({"augment": "yes"}, "config.data.augment must be True or False, got 'yes'"),
        ({"data_dir": 3}, "config.data.data_dir must be a folder path (str) or None, got 3"),
        ({"crop_sise": 64}, "config.data has no field 'crop_sise' (did you mean 'crop_size'?)"),
    ],
)
def test_bad_or_unknown_data_field_is_one_line(change: dict[str, Any], message: str) -> None:
    config = default.get_config()
    data = config.data.to_dict()
    data.update(change)
    for build in (lambda: DataSettings.from_config(data), lambda: defaults().replace(**change)):
        with pytest.raises(ValueError) as err:
            build()
        assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_missing_or_unknown_model_field_and_coercions() -> None:
    model = default.get_config().model.to_dict()
    with pytest.raises(
        ValueError, match=r"^config.model has no field 'deblur_widht' \(did you mean 'deblur_width'"
    ) as err:
        ModelSettings.from_config({**model, "deblur_widht": 4})
    assert "\n" not in str(err.value)
    del model["remat"]
    with pytest.raises(ValueError, match=r"^config.model lacks the field\(s\) remat; start from configs/default.py"):
        ModelSettings.from_config(model)
    with pytest.raises(ValueError, match=r"^config.model.num_groups must be a positive int, got 0$"):
        model_defaults().replace(num_groups=0)
    # A ConfigDict override may give branches as a string; JSON gives lists.
    assert model_defaults().replace(branches="d1, d4").branches == ("d1", "d4")
    assert defaults().replace(synthetic_photo_scales=[1, 2]).synthetic_photo_scales == (1.0, 2.0)
    assert defaults().replace(data_dir=Path("/x")).data_dir == "/x"


def test_settings_are_frozen() -> None:
    data = defaults()
    with pytest.raises(AttributeError):
        data.crop_size = 64  # type: ignore[misc]
    assert data.replace(crop_size=64).crop_size == 64 and data.crop_size == 256


def test_no_library_module_restates_a_config_default() -> None:
    """No ``_get(cfg, "key", default)``-style fallback, no second copy of a config section."""
    fallback = re.compile(r"\b_get\(\s*\w+\s*,\s*[\"']|MODEL_CONFIG_DEFAULTS|\.get\(\s*[\"']synthetic_")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "aspdc_jax").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if fallback.search(line)
    ]
    assert not offenders, offenders


def _dotted(node: ast.AST) -> str | None:
    """``config.data.crop_size`` -> ``"config.data.crop_size"``; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def _settings_in(path: Path) -> tuple[str, list[tuple[str, ast.expr]]]:
    """The module a variant starts from, and each ``config.<field> = value`` /
    ``config.<section>.update(field=value)`` in its get_config."""
    fn = next(n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == "get_config")
    parent, out = "", []
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = _dotted(node.targets[0]) or ""
            if target == "config" and isinstance(node.value, ast.Call):
                parent = (_dotted(node.value.func) or "").rpartition(".")[0]
            elif target.startswith("config."):
                out.append((target.removeprefix("config."), node.value))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
            section = _dotted(node.func.value) or ""
            if section.startswith("config."):
                out.extend((f"{section.removeprefix('config.')}.{kw.arg}", kw.value) for kw in node.keywords)
    return parent, out


@pytest.mark.parametrize("variant", [name for name in CONFIGS if name != "default"])
def test_variants_state_only_what_differs(variant: str) -> None:
    parent_name, settings = _settings_in(ROOT / "configs" / f"{variant}.py")
    parent = importlib.import_module(f"configs.{parent_name}").get_config()
    assert settings, variant
    restated = []
    for field, value in settings:
        try:
            literal = ast.literal_eval(value)
        except ValueError:
            continue
        node = parent
        for part in field.split("."):
            node = node[part]
        if node == literal:
            restated.append(f"{field} = {literal!r}")
    assert not restated, f"configs/{variant}.py restates configs/{parent_name}.py: {restated}"
