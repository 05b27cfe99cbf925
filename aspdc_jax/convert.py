"""Loads the authors' PyTorch checkpoints into the Flax networks, without PyTorch.

Files: ``DeblurringNet_FT.pth`` / ``DeblurringNet_NF.pth`` (``{"epoch": ...,
"deblurring_state_dict": ...}``) and ``ReBlurringNet.pth`` (``{"blurring_state_dict":
...}``), all in ``torch.save``'s zip format: ``<archive>/data.pkl`` (a pickle) plus one raw
little-endian buffer per storage in ``<archive>/data/<key>``.

Safety: :func:`read_torch_state_dict` never imports torch and never runs code from the
file. Its unpickler resolves only these globals: ``torch._utils._rebuild_tensor_v2``,
``torch._utils._rebuild_parameter``, ``torch.<Type>Storage`` and
``collections.OrderedDict``, each replaced by a local NumPy function; anything else
(``os.system``, ``builtins.eval``, ...) raises :class:`UnsafeCheckpointError` before it is
called.

Mapping (official PyTorch name -> Flax path; ``{g}`` is a group, ``{res}`` a ResBlock
with ``.model.0`` -> ``conv1`` and ``.model.2`` -> ``conv2``). Conv weights OIHW become
``kernel`` HWIO (``w.transpose(2, 3, 1, 0)``), ``ConvTranspose2d`` weights IOHW become
``kernel`` (kh, kw, in, out) (``w.transpose(2, 3, 0, 1)``, see
``aspdc_jax.models.layers.ConvTranspose2x``), biases ``bias``.

DeblurNet (official ``DeblurringNet``). The six body groups are one ``nn.scan`` in Flax, so
every ``groups/...`` parameter is stacked along a leading axis; official groups
``en_res_group1``, ``en_res_group2``, ``en_res_group3``, ``de_res_group3``,
``de_res_group2``, ``de_res_group1`` are indices ``[0]`` .. ``[5]`` (network order):

=================================================================  ===========================================
official                                                           flax
=================================================================  ===========================================
``head.0``                                                         ``head_conv``
``head.2`` / ``head.3``                                            ``head_res1`` / ``head_res2``
``head.4`` / ``head.6``                                            ``down1`` / ``down2``
``{g}_1.0`` / ``{g}_1.1``                                          ``groups/res1[k]`` / ``groups/res2[k]``
``{g}_2.res_conv.0``                                               ``groups/aspdc/feature_conv[k]``
``{g}_2.hallucination_d0.m_conv`` / ``.dconv``                     ``.../aspdc/branch_static/mask_conv`` / ``dcn``
``{g}_2.hallucination_d{1,2,3}.hallucination_conv.p_conv``         ``.../aspdc/branch_{d1,d2,d4}/offset_conv``
``{g}_2.hallucination_d{1,2,3}.hallucination_conv.m_conv``         ``.../aspdc/branch_{d1,d2,d4}/mask_conv``
``{g}_2.hallucination_d{1,2,3}.hallucination_conv.dconv``          ``.../aspdc/branch_{d1,d2,d4}/dcn``
``{g}_2.mask_conv.0`` / ``.2`` / ``.3`` / ``.4``                   ``.../aspdc/afim/conv`` / ``res1`` / ``res2`` / ``logits``
``{g}_2.fusion_conv``                                              ``.../aspdc/fusion_conv``
``dense_conv.0``                                                   ``fuse_conv``
``tail.0`` / ``tail.2`` (ConvTranspose2d)                          ``up1`` / ``up2``
``tail.4``                                                         ``tail_conv``
=================================================================  ===========================================

ReblurNet (official ``BlurringNet``), i in 1..3:

=========================================================  ===========================================
official                                                   flax
=========================================================  ===========================================
``head_conv.0`` / ``kernel_head_conv``                     ``head_conv`` / ``kernel_head``
``body_conv_{i}.0`` / ``body_conv_{i}.1``                  ``enc{i}/down`` / ``enc{i}/res``
``kernel_conv_{i}``                                        ``kernel_enc{i}``
``body_dconv_{i}.0`` / ``body_dconv_{i}.1`` (ConvT)        ``dec{i}/res`` / ``dec{i}/up``
``kernel_dconv_{i}``                                       ``kernel_dec{i}``
``tail``                                                   ``tail_conv``
=========================================================  ===========================================

:func:`deblur_key_table` / :func:`reblur_key_table` give the same mapping key by key.

Release quirk: in the official release the static branch's mask conv
(``hallucination_d0.m_conv``) has no padding, so its mask is 2 px smaller than the output
and mmcv reads it misaligned. This implementation pads it by 1, as the paper describes
(the weights have the same shape, so they load unchanged); outputs therefore differ
slightly from the release's near that branch's use, by design.

CLI::

    python -m aspdc_jax.convert --deblur DeblurringNet_FT.pth [--reblur ReBlurringNet.pth] --out DIR
    python -m aspdc_jax.convert --reblur ReBlurringNet.pth --out DIR   # ReblurNet only

writes an export (Orbax params + ``model_config.json``) that ``aspdc_jax.weights.
load_for_inference`` and the inference / evaluation entry points load. Either file may be
left out: a DeblurNet-only export serves inference and evaluation (not ``--reblur``), a
ReblurNet-only export ``evaluate.py --reblur`` (the reblurring scores, Table 4); the
commands that need the missing network say so in one line.
"""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aspdc_jax.cli import FlagParser, returning_user_errors
from aspdc_jax.models import DeblurNet, ReblurNet, model_config_dict
from aspdc_jax.trees import flatten

__all__ = [
    "ConversionError",
    "UnsafeCheckpointError",
    "OFFICIAL_DEBLUR_GROUPS",
    "deblur_from_official",
    "deblur_key_table",
    "deblur_to_official",
    "main",
    "read_torch_state_dict",
    "reblur_from_official",
    "reblur_key_table",
    "reblur_to_official",
]

PyTree = Any


class UnsafeCheckpointError(ValueError):
    """The checkpoint's pickle asks for something other than tensor reconstruction."""


class ConversionError(ValueError):
    """A state dict does not match the network: missing, unexpected or mis-shaped keys."""


# --------------------------------------------------------------------------------------
# Restricted reader for torch.save's zip format.
# --------------------------------------------------------------------------------------


class _StorageType:
    """Stand-in for ``torch.<Type>Storage``: only carries the NumPy dtype."""

    def __init__(self, name: str, dtype: Any) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)

    def __repr__(self) -> str:
        return f"torch.{self.name}"


def _storage_types() -> dict[str, _StorageType]:
    import ml_dtypes  # noqa: PLC0415 (ships with jax)

    dtypes = {
        "DoubleStorage": np.float64,
        "FloatStorage": np.float32,
        "HalfStorage": np.float16,
        "BFloat16Storage": ml_dtypes.bfloat16,
        "LongStorage": np.int64,
        "IntStorage": np.int32,
        "ShortStorage": np.int16,
        "CharStorage": np.int8,
        "ByteStorage": np.uint8,
        "BoolStorage": np.bool_,
    }
    return {name: _StorageType(name, dt) for name, dt in dtypes.items()}


_STORAGE_TYPES = _storage_types()


def _rebuild_tensor_v2(
    storage: np.ndarray,
    storage_offset: int,
    size: Sequence[int],
    stride: Sequence[int],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    """NumPy version of ``torch._utils._rebuild_tensor_v2``: a bounds-checked strided copy."""
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, np.ndarray):
        raise UnsafeCheckpointError(f"tensor storage is a {type(storage).__name__}, not a buffer")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise UnsafeCheckpointError(f"bad tensor geometry size={size} stride={stride}")
    if offset < 0:
        raise UnsafeCheckpointError(f"negative storage offset {offset}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise UnsafeCheckpointError(
            f"tensor size={size} stride={stride} offset={offset} reads past its storage of {storage.size} elements"
        )
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
    )
    return np.array(view, copy=True)


def _rebuild_parameter(data: np.ndarray, requires_grad: bool = False, backward_hooks: Any = None) -> np.ndarray:
    del requires_grad, backward_hooks
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): st for name, st in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only the tensor-rebuild globals (see the module docstring)."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._byteorder = "<" if byteorder == "little" else ">"
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load the global {module}.{name} from the checkpoint: only "
                f"tensor data is read (allowed: torch._utils._rebuild_tensor_v2, "
                f"torch._utils._rebuild_parameter, torch.*Storage, collections.OrderedDict). "
                f"Re-save the file with torch.save(model.state_dict(), path)."
            ) from None

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unsupported persistent id in checkpoint: {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"unsupported storage type {storage_type!r}")
        key = str(key)
        if key not in self._storages:
            member = f"{self._prefix}data/{key}"
            try:
                raw = self._archive.read(member)
            except KeyError:
                raise ConversionError(f"checkpoint is missing the storage {member}") from None
            dtype = (
                storage_type.dtype.newbyteorder(self._byteorder)
                if storage_type.dtype.itemsize > 1
                else storage_type.dtype
            )
            if len(raw) % dtype.itemsize:
                raise ConversionError(f"storage {member} has {len(raw)} bytes, not a multiple of {dtype}")
            array = np.frombuffer(raw, dtype=dtype).astype(storage_type.dtype.newbyteorder("="))
            if int(numel) > array.size:
                raise ConversionError(f"storage {member} holds {array.size} elements, expected {numel}")
            self._storages[key] = array
        return self._storages[key]


_WRAPPER_KEYS = ("deblurring_state_dict", "blurring_state_dict", "state_dict", "model")


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    found = [k for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)]
    if len(found) > 1:
        raise ConversionError(f"{path} holds several state dicts {found}; cannot tell which to use")
    return obj[found[0]] if found else obj


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a ``torch.save`` zip checkpoint into NumPy arrays, without torch or code execution.

    Unwraps ``{"deblurring_state_dict": ...}``, ``{"blurring_state_dict": ...}`` (also
    ``"state_dict"`` / ``"model"``) and strips a ``module.`` prefix (DataParallel).

    Returns:
      ``{official name: array}`` in PyTorch layouts (conv OIHW, ConvTranspose IOHW), dtypes
      as stored (float32 for the released files).

    Raises:
      UnsafeCheckpointError: the pickle references anything but tensor reconstruction.
      ConversionError: not a zip checkpoint, or no dict of tensors inside.
    """
    path = Path(path)
    if path.is_dir():
        raise ConversionError(f"{path} is a folder; expected a .pth checkpoint file")
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04":
            raise ConversionError(f"{path} is a damaged (truncated?) zip archive; download or copy it again")
        raise ConversionError(
            f"{path} is not a torch.save zip checkpoint (the legacy pre-1.6 format is not "
            f"supported: re-save it with a recent torch.save)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ConversionError(f"{path}: expected one <archive>/data.pkl, found {pickles}")
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = "little"
            if f"{prefix}byteorder" in archive.namelist():
                byteorder = archive.read(f"{prefix}byteorder").decode().strip() or "little"
            obj = _RestrictedUnpickler(archive.read(pickles[0]), archive, prefix, byteorder).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, zlib.error) as err:
        raise ConversionError(f"{path} is damaged ({type(err).__name__}: {err}); download or copy it again") from err
    state = _unwrap(obj, path)
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if not isinstance(value, np.ndarray):
            raise ConversionError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        name = str(key)
        if name.startswith("module."):
            name = name[len("module.") :]
        out[name] = value
    return out


# --------------------------------------------------------------------------------------
# Official <-> Flax name tables.
# --------------------------------------------------------------------------------------

#: Official body-group prefixes in network order; Flax ``group1`` .. ``group6``.
OFFICIAL_DEBLUR_GROUPS = (
    "en_res_group1",
    "en_res_group2",
    "en_res_group3",
    "de_res_group3",
    "de_res_group2",
    "de_res_group1",
)

# (official module, flax module path, layer kind, index along the stacked group axis or
# None) with kind "conv" or "convT".
_Entry = tuple[str, str, str, "int | None"]
#: One row per parameter: (official key, flax param path, transform, group index or None).
TableRow = tuple[str, str, str, "int | None"]


def _resblock(official: str, flax: str, index: int | None = None) -> list[_Entry]:
    return [
        (f"{official}.model.0", f"{flax}/conv1", "conv", index),
        (f"{official}.model.2", f"{flax}/conv2", "conv", index),
    ]


def _deblur_modules() -> list[_Entry]:
    entries: list[_Entry] = [("head.0", "head_conv", "conv", None)]
    entries += _resblock("head.2", "head_res1") + _resblock("head.3", "head_res2")
    entries += [("head.4", "down1", "conv", None), ("head.6", "down2", "conv", None)]
    for k, g in enumerate(OFFICIAL_DEBLUR_GROUPS):
        entries += _resblock(f"{g}_1.0", "groups/res1", k) + _resblock(f"{g}_1.1", "groups/res2", k)
        a, fa = f"{g}_2", "groups/aspdc"
        entries.append((f"{a}.res_conv.0", f"{fa}/feature_conv", "conv", k))
        entries.append((f"{a}.hallucination_d0.m_conv", f"{fa}/branch_static/mask_conv", "conv", k))
        entries.append((f"{a}.hallucination_d0.dconv", f"{fa}/branch_static/dcn", "conv", k))
        for i, d in ((1, "d1"), (2, "d2"), (3, "d4")):
            h = f"{a}.hallucination_d{i}.hallucination_conv"
            entries.append((f"{h}.p_conv", f"{fa}/branch_{d}/offset_conv", "conv", k))
            entries.append((f"{h}.m_conv", f"{fa}/branch_{d}/mask_conv", "conv", k))
            entries.append((f"{h}.dconv", f"{fa}/branch_{d}/dcn", "conv", k))
        entries.append((f"{a}.mask_conv.0", f"{fa}/afim/conv", "conv", k))
        entries += _resblock(f"{a}.mask_conv.2", f"{fa}/afim/res1", k)
        entries += _resblock(f"{a}.mask_conv.3", f"{fa}/afim/res2", k)
        entries.append((f"{a}.mask_conv.4", f"{fa}/afim/logits", "conv", k))
        entries.append((f"{a}.fusion_conv", f"{fa}/fusion_conv", "conv", k))
    entries += [
        ("dense_conv.0", "fuse_conv", "conv", None),
        ("tail.0", "up1", "convT", None),
        ("tail.2", "up2", "convT", None),
        ("tail.4", "tail_conv", "conv", None),
    ]
    return entries


def _reblur_modules() -> list[_Entry]:
    entries: list[_Entry] = [
        ("head_conv.0", "head_conv", "conv", None),
        ("kernel_head_conv", "kernel_head", "conv", None),
    ]
    for i in (1, 2, 3):
        entries.append((f"body_conv_{i}.0", f"enc{i}/down", "conv", None))
        entries += _resblock(f"body_conv_{i}.1", f"enc{i}/res")
        entries.append((f"kernel_conv_{i}", f"kernel_enc{i}", "conv", None))
    for i in (3, 2, 1):
        entries += _resblock(f"body_dconv_{i}.0", f"dec{i}/res")
        entries.append((f"body_dconv_{i}.1", f"dec{i}/up", "convT", None))
        entries.append((f"kernel_dconv_{i}", f"kernel_dec{i}", "conv", None))
    entries.append(("tail", "tail_conv", "conv", None))
    return entries


def _expand(modules: list[_Entry]) -> list[TableRow]:
    """Module entries -> parameter rows (official key, flax path, transform, index)."""
    table = []
    for official, flax, kind, index in modules:
        table.append((f"{official}.weight", f"{flax}/kernel", kind, index))
        table.append((f"{official}.bias", f"{flax}/bias", "bias", index))
    return table


def deblur_key_table() -> list[TableRow]:
    """``(official key, flax param path, transform, index)`` for every DeblurNet parameter.

    transform: ``"conv"`` (OIHW <-> HWIO), ``"convT"`` (IOHW <-> HW-IO) or ``"bias"``;
    index: position along the leading (stacked) axis of the ``groups/...`` params, or None.
    """
    return _expand(_deblur_modules())


def reblur_key_table() -> list[TableRow]:
    """``(official key, flax param path, transform, None)`` for every ReblurNet parameter."""
    return _expand(_reblur_modules())


def _to_flax(array: np.ndarray, transform: str) -> np.ndarray:
    if transform == "conv":
        return array.transpose(2, 3, 1, 0)
    if transform == "convT":
        return array.transpose(2, 3, 0, 1)
    return array


def _to_official(array: np.ndarray, transform: str) -> np.ndarray:
    if transform == "conv":
        return array.transpose(3, 2, 0, 1)
    if transform == "convT":
        return array.transpose(2, 3, 0, 1)
    return array


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _convert(
    sd: Mapping[str, np.ndarray],
    table: list[TableRow],
    expected: Mapping[str, tuple[int, ...]],
    what: str,
) -> dict[str, Any]:
    table_paths = {flax for _, flax, _, _ in table}
    if table_paths != set(expected):  # a programming error, not a user error
        raise AssertionError(f"{what}: mapping table and module disagree: {sorted(table_paths ^ set(expected))}")
    known = {official for official, _, _, _ in table}
    missing = [official for official, _, _, _ in table if official not in sd]
    unexpected = sorted(k for k in sd if k not in known)
    mis_shaped = []
    flat: dict[str, np.ndarray] = {}
    for official, flax, transform, index in table:
        if official not in sd:
            continue
        array = np.asarray(sd[official])
        want = tuple(expected[flax])[0 if index is None else 1 :]
        got = _to_flax(array, transform).shape if array.ndim == len(want) else None
        if got != want:
            want_official = _to_official(np.empty(want, np.uint8), transform).shape
            mis_shaped.append(f"{official}: expected {want_official}, got {tuple(array.shape)}")
            continue
        value = np.ascontiguousarray(_to_flax(array, transform)).astype(np.float32)
        if index is None:
            flat[flax] = value
        else:  # a slice of a stacked group parameter
            flat.setdefault(flax, np.zeros(expected[flax], np.float32))[index] = value
    if missing or unexpected or mis_shaped:
        lines = [f"the state dict does not match {what}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        if mis_shaped:
            lines.append(f"  mis-shaped keys ({len(mis_shaped)}): " + "; ".join(mis_shaped))
        raise ConversionError("\n".join(lines))
    params: dict[str, Any] = {}
    for path, value in flat.items():
        _set(params, path, value)
    return params


def _param_shapes(module: Any, *inputs: jax.ShapeDtypeStruct) -> dict[str, tuple[int, ...]]:
    variables = jax.eval_shape(module.init, jax.random.key(0), *inputs)
    return {path: tuple(leaf.shape) for path, leaf in flatten(variables["params"]).items()}


def _width(sd: Mapping[str, np.ndarray], key: str, what: str) -> int:
    if key not in sd or np.ndim(sd[key]) != 4:
        other = "ReblurNet" if what == "DeblurNet" else "DeblurNet"
        other_key = "head_conv.0.weight" if other == "ReblurNet" else "head.0.weight"
        hint = f"; it looks like a {other} checkpoint: were --deblur and --reblur swapped?" if other_key in sd else ""
        raise ConversionError(
            f"cannot infer the width of {what}: the state dict has no 4-D {key!r} "
            f"(is this the right file? first keys: {list(sd)[:5]}){hint}"
        )
    return int(np.shape(sd[key])[0])


def deblur_from_official(sd: Mapping[str, np.ndarray]) -> tuple[DeblurNet, dict[str, Any]]:
    """Official ``DeblurringNet`` state dict -> ``(DeblurNet, params)``.

    The width is inferred from ``head.0.weight``; the official network always has six
    groups, four branches and AFIM. ``params`` is the ``"params"`` collection (NumPy
    float32): ``net.apply({"params": params}, x)``.

    Raises:
      ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    net = DeblurNet(width=_width(sd, "head.0.weight", "DeblurNet"))
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    params = _convert(sd, deblur_key_table(), _param_shapes(net, x), f"DeblurNet(width={net.width})")
    return net, params


def reblur_from_official(sd: Mapping[str, np.ndarray]) -> tuple[ReblurNet, dict[str, Any]]:
    """Official ``BlurringNet`` state dict -> ``(ReblurNet, params)`` (width inferred).

    Raises:
      ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    net = ReblurNet(width=_width(sd, "head_conv.0.weight", "ReblurNet"))
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    params = _convert(sd, reblur_key_table(), _param_shapes(net, x, x), f"ReblurNet(width={net.width})")
    return net, params


def _from_flax(params: Mapping[str, Any], table: list[TableRow]) -> dict[str, np.ndarray]:
    flat = flatten(params)
    missing = [flax for _, flax, _, _ in table if flax not in flat]
    if missing:
        raise ConversionError(
            "params are not those of the official architecture (6 groups, branches static, "
            f"d1, d2, d4, AFIM); missing: {', '.join(missing[:10])}"
        )
    out = {}
    for official, flax, transform, index in table:
        value = np.asarray(flat[flax])
        out[official] = _to_official(value if index is None else value[index], transform)
    return out


def deblur_to_official(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """DeblurNet ``params`` (official architecture) -> official state-dict arrays (NumPy)."""
    return _from_flax(params, deblur_key_table())


def reblur_to_official(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """ReblurNet ``params`` -> official state-dict arrays (NumPy)."""
    return _from_flax(params, reblur_key_table())


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = FlagParser(
        prog="python -m aspdc_jax.convert",
        description="Convert the official ASPDC PyTorch checkpoints (no torch needed) into "
        "an aspdc-jax export folder for inference and evaluation.",
    )
    parser.add_argument(
        "--deblur",
        type=Path,
        default=None,
        help="DeblurringNet_FT.pth or _NF.pth (leave out for a ReblurNet-only export)",
    )
    parser.add_argument(
        "--reblur", type=Path, default=None, help="ReBlurringNet.pth (leave out for a DeblurNet-only export)"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="export folder to write (new, empty, or an earlier export)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    args = parser.parse_args(argv)
    return returning_user_errors(
        lambda: _run(args), ConversionError, UnsafeCheckpointError, traceback=args.verbosity > 0
    )


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    from aspdc_jax.weights import is_export  # noqa: PLC0415 (keeps orbax off the import path)

    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not is_export(out_dir):
            raise FileExistsError(f"--out {out_dir} is not empty and holds no export; choose a new or empty folder")
        if not overwrite:
            raise FileExistsError(f"--out {out_dir} already holds an export; add --overwrite to replace it")


def _export_config(deblur: DeblurNet | None, reblur: ReblurNet | None) -> dict[str, Any]:
    """``model_config_dict`` of the networks converted: a one-network export records only
    that network's keys (the other's would describe a network it does not hold)."""
    return model_config_dict(deblur, reblur)


def _run(args: argparse.Namespace) -> int:
    from aspdc_jax.weights import save_export  # noqa: PLC0415 (keeps orbax off the import path)

    if args.deblur is None and args.reblur is None:
        raise ValueError("nothing to convert: give --deblur DeblurringNet_FT.pth, --reblur ReBlurringNet.pth or both")
    _check_out_dir(args.out.expanduser(), args.overwrite)
    deblur, deblur_params, reblur, reblur_params = None, None, None, None
    if args.deblur is not None:
        deblur, deblur_params = deblur_from_official(read_torch_state_dict(args.deblur))
    if args.reblur is not None:
        reblur, reblur_params = reblur_from_official(read_torch_state_dict(args.reblur))
    out = save_export(
        args.out,
        model_config=_export_config(deblur, reblur),
        deblur_params=deblur_params,
        reblur_params=reblur_params,
    )
    count = lambda tree: sum(int(np.size(a)) for a in flatten(tree).values())
    if deblur is not None:
        print(f"DeblurNet(width={deblur.width}): {count(deblur_params):,} parameters from {args.deblur}")
    if reblur is not None:
        print(f"ReblurNet(width={reblur.width}): {count(reblur_params):,} parameters from {args.reblur}")
    if deblur is None:
        print("no DeblurNet: this export serves evaluate.py --reblur (the reblurring scores) only")
    elif reblur is None:
        print("no ReblurNet: this export serves inference and evaluation, not evaluate.py --reblur")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
