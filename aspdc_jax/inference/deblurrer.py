"""Batch inference: one jit-compiled deblurring function per shape bucket, and tiling.

Typical use::

    from aspdc_jax import inference
    deblurrer = inference.load("exports/aspdc_ft")          # export or train.py workdir
    sharp = deblurrer.deblur(blurred)                        # uint8 HxWx3 -> uint8 HxWx3
    sharp_list = deblurrer.deblur([img_a, img_b])            # differently sized images
    big = deblurrer.deblur(photo_12mp, tile=512)             # bounded memory

Shapes: inputs are reflect-padded on the host to a *bucket* shape and the output is cropped
back, so a stream of mixed photo sizes compiles a handful of times (one XLA executable per
bucket shape and batch size), not once per size. The jit-compiled function is the one
forward of the package, `aspdc_jax.inference.functional.deblur_forward`: it takes uint8 in
and returns only the deblurred image (no offsets or attention maps are kept), which keeps
peak memory at the network's own working set.

Bucket policies (``bucket=``):

* ``"geometric"`` (default): a side of ``n`` pixels is rounded up to a multiple of
  ``2 ** (floor(log2 n) - 3)`` (at least the network's multiple of 4): eight sizes per
  octave, at most 12.5% extra pixels per side. 1280 stays 1280; 720 becomes 768.
* an int ``k``: sides rounded up to a multiple of ``k`` (and of 4).
* ``"exact"``: only to the next multiple of 4 (what the papers' evaluation does; one
  compilation per distinct size).

Tiling (``tile=T``, ``overlap=O``): images with a side larger than ``T`` are cut into
``T x T`` tiles whose neighbours overlap by at least ``O`` pixels; every tile runs through
the same compiled function and the outputs are blended with raised-cosine weights across
each shared band (from ~0 at a tile's interior edge to 1 where the band ends), so no seam is
visible and each pixel mostly comes from the tile in which it lies deepest. Far enough from the seams (more
than the network's effective receptive field) the result equals the untiled one.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

import jax
import numpy as np
from tqdm import tqdm

from aspdc_jax.allocator import heap_in_use, wait_for_heap_release
from aspdc_jax.devices import batch_sharding, make_mesh, replicated_sharding
from aspdc_jax.images import LoadedImage, quantize, read_image, reflect_pad
from aspdc_jax.inference.functional import deblur_forward, in_compute_dtype
from aspdc_jax.progress import show_progress
from aspdc_jax.weights import load_for_inference

__all__ = [
    "LOW_MEMORY_CPU_FLAG",
    "Deblurred",
    "Deblurrer",
    "bucket_size",
    "load",
    "tile_starts",
    "use_low_memory_cpu_scheduler",
]

PyTree = Any
Bucket = int | str
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Deblurred(Generic[T]):
    """One result of :meth:`Deblurrer.deblur_stream`.

    Attributes:
      item: the item of the input stream (an array, a path, or whatever ``read`` takes).
      image: what was read (uint8 (H, W, 3) ``rgb``, optional ``alpha``, conversion
        ``notes``); None when reading failed.
      output: the deblurred uint8 (H, W, 3) image; None when reading failed.
      error: the exception reading raised, or None.
    """

    item: T
    image: LoadedImage | None
    output: np.ndarray | None
    error: Exception | None


#: XLA's CPU compiler schedules for concurrency by default, which keeps the sampled tensors
#: of all four ASPDC branches alive at once (1.31 GiB of temporaries for a 1280x720 forward);
#: its memory-minimising scheduler needs 0.64 GiB. Read when the XLA backend starts.
LOW_MEMORY_CPU_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def use_low_memory_cpu_scheduler() -> bool:
    """Selects XLA's memory-minimising CPU scheduler (about half the peak memory of a
    DeblurNet forward on CPU, same speed within noise on 2 cores) by adding
    `LOW_MEMORY_CPU_FLAG` to ``XLA_FLAGS``.

    XLA reads the flag when its backend starts, so this must run before the first JAX
    computation (the command-line tools call it first thing); later it has no effect.
    Returns True if the flag is (now) in ``XLA_FLAGS``, False if the user chose the other
    scheduler there.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" in flags:
        return LOW_MEMORY_CPU_FLAG in flags
    os.environ["XLA_FLAGS"] = f"{flags} {LOW_MEMORY_CPU_FLAG}".strip()
    return True


def bucket_size(n: int, bucket: Bucket = "geometric", multiple: int = 4) -> int:
    """Padded length for a side of ``n`` pixels under a bucket policy (see module doc)."""
    if n < 1:
        raise ValueError(f"image side must be >= 1 pixel, got {n}")
    if bucket == "exact" or bucket is None:
        step = multiple
    elif bucket == "geometric":
        step = max(1, 2 ** (n.bit_length() - 4))
        step = math.lcm(step, multiple)
    elif isinstance(bucket, int) and not isinstance(bucket, bool) and bucket > 0:
        step = math.lcm(bucket, multiple)
    else:
        raise ValueError(f"bucket must be 'geometric', 'exact' or a positive int, got {bucket!r}")
    return -(-n // step) * step


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with >= ``overlap`` overlap.

    Every start but the last is a multiple of ``align``; the last is ``length - tile``, so
    all are when ``length - tile`` is. Pass the network's downsampling factor: a tile that
    starts off that grid sees the image on a shifted grid and its output differs from the
    untiled run everywhere, not just near the seams.
    """
    if length <= tile:
        return [0]
    span = length - tile
    # As few tiles as the overlap allows, spread evenly (every overlap >= ``overlap``).
    n = -(-(length - overlap) // (tile - overlap))
    while n <= span // align + 2:
        starts = sorted({round(i * span / (n - 1) / align) * align for i in range(n - 1)} | {span})
        if all(b - a <= tile - overlap for a, b in zip(starts, starts[1:])):
            return starts
        n += 1
    # tile - overlap < align: every grid position (the most overlap the grid allows).
    return sorted(set(range(0, span, align)) | {span})


def _edge_weights(length: int, before: int, after: int) -> np.ndarray:
    """1-D blending weights of one tile: a raised cosine rising over the ``before`` pixels it
    shares with the previous tile and falling over the ``after`` pixels shared with the next
    (0 = image border: weight 1 up to the edge). Neighbouring ramps sum to 1."""
    w = np.ones((length,), np.float32)
    for n, side in ((before, 1), (after, -1)):
        if n <= 0:
            continue
        n = min(n, length)
        ramp = np.sin(0.5 * np.pi * (np.arange(n, dtype=np.float32) + 0.5) / n) ** 2
        if side > 0:
            w[:n] = np.minimum(w[:n], ramp)
        else:
            w[length - n :] = np.minimum(w[length - n :], ramp[::-1])
    return w


def _overlaps(starts: list[int], tile: int) -> list[tuple[int, int]]:
    """(overlap with the previous tile, overlap with the next) for each tile start."""
    out = []
    for i, s in enumerate(starts):
        before = starts[i - 1] + tile - s if i > 0 else 0
        after = s + tile - starts[i + 1] if i + 1 < len(starts) else 0
        out.append((before, after))
    return out


def _check_image(image: Any, where: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(
            f"{where}: expected uint8 RGB images in [0, 255], got dtype {image.dtype} "
            "(convert with aspdc_jax.deblur.read_image or np.clip(np.round(x * 255), 0, 255).astype(np.uint8) for x in [0, 1])"
        )
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"{where}: expected an HxWx3 uint8 image, got shape {image.shape}")
    return image


class Deblurrer:
    """Deblurs uint8 images with a DeblurNet (or any flax module with the same contract).

    Args:
      module: a flax module; ``module.apply({"params": params}, x)`` with x (B, H, W, 3) in
        [-1, 1] returns an object with ``.deblurred`` (B, H, W, 3) in [-1, 1] (a bare array
        or a tuple whose first item is the image also work).
      params: the module's ``params`` collection.
      bucket: padding policy, ``"geometric"`` | ``"exact"`` | int (see module docstring).
      multiple: the module's size requirement (4 for DeblurNet).
      dtype: ``"float32"`` or ``"bfloat16"`` compute (bfloat16 also stores the params in
        bfloat16; for accelerators; on CPU it is usually slower).
      tile: tile side for images with a side larger than it (None: never tile). Must be a
        multiple of ``multiple``.
      overlap: minimum overlap between neighbouring tiles in pixels.
      batch_size: images (or tiles) of one bucket run together, in batches of up to this
        many (None: one per device). Each batch is split over ``devices``; a batch that
        does not divide evenly is filled up with copies of its last image.
      devices: the devices a batch is split over (data parallel: the params are copied to
        each once). Default: all local devices (``jax.local_devices()``).
      self_ensemble: the geometric x8 self-ensemble (`geometric_ensemble`): 8 forwards per
        image in one compiled function per shape; works with tiling.
    """

    def __init__(
        self,
        module: Any,
        params: PyTree,
        *,
        bucket: Bucket = "geometric",
        multiple: int = 4,
        dtype: str = "float32",
        tile: int | None = None,
        overlap: int = 64,
        batch_size: int | None = None,
        self_ensemble: bool = False,
        devices: Sequence[jax.Device] | None = None,
    ) -> None:
        bucket_size(64, bucket, multiple)  # validates the policy
        self.mesh = make_mesh(devices or jax.local_devices())
        num_devices = self.mesh.size
        batch_size = num_devices if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # Cast once here, so the params are stored in the compute dtype on the devices.
        module, params = in_compute_dtype(module, params, dtype)
        self.module = module
        replicated = replicated_sharding(self.mesh)
        self.params = jax.device_put(params, replicated)
        self.bucket = bucket
        self.multiple = multiple
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.overlap = int(overlap)
        self.tile = None
        if tile is not None:
            self.tile = self._check_tile(tile, overlap)
        self.self_ensemble = bool(self_ensemble)
        self._traces = 0

        def forward(params: PyTree, x_u8: jax.Array) -> jax.Array:
            self._traces += 1  # runs once per traced (compiled) shape
            return deblur_forward(
                module, params, x_u8, dtype=dtype, self_ensemble=self.self_ensemble, multiple=multiple
            )

        split = batch_sharding(self.mesh)
        self._forward = jax.jit(forward, in_shardings=(replicated, split), out_shardings=split)
        # On a CPU, wait for XLA to free each call's temporaries before the next call (see
        # aspdc_jax.allocator.wait_for_heap_release); else a call may get fresh memory.
        self._settle = self.mesh.devices.flat[0].platform == "cpu" and heap_in_use() is not None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_loaded(cls, loaded: Any, **kwargs: Any) -> Deblurrer:
        """From :class:`aspdc_jax.weights.LoadedModels`."""
        return cls(loaded.deblur, loaded.deblur_params, **kwargs)

    # ------------------------------------------------------------------ introspection
    @property
    def num_compilations(self) -> int:
        """How many shapes the forward function has been traced (and compiled) for."""
        return self._traces

    def bucket_shape(self, height: int, width: int) -> tuple[int, int]:
        """The padded (H, W) an image of this size runs at (untiled)."""
        return (
            bucket_size(height, self.bucket, self.multiple),
            bucket_size(width, self.bucket, self.multiple),
        )

    def _check_tile(self, tile: int, overlap: int) -> int:
        tile = int(tile)
        if tile % self.multiple or tile <= 0:
            raise ValueError(f"tile must be a positive multiple of {self.multiple}, got {tile}")
        if not 0 <= overlap <= tile // 2:
            raise ValueError(
                f"overlap (--overlap, default 64) must be in [0, tile/2] = [0, {tile // 2}] for tile {tile}, "
                f"got {overlap}; lower the overlap or raise the tile size"
            )
        return tile

    # ------------------------------------------------------------------ core
    @property
    def num_devices(self) -> int:
        """How many devices a batch is split over."""
        return int(self.mesh.size)

    def forward_padded(self, batch: np.ndarray) -> np.ndarray:
        """Runs the compiled network on a (B, H, W, 3) uint8 batch whose H, W are already
        valid for the module; returns float32 (B, H, W, 3) in [0, 255], not rounded.

        The batch is split over the devices; when B is not a multiple of their number it is
        filled up with copies of the last image, whose outputs are dropped."""
        n = len(batch)
        fill = -n % self.num_devices
        if fill:
            batch = np.concatenate([batch, np.repeat(batch[-1:], fill, axis=0)])
        before = heap_in_use() if self._settle else None
        out = np.asarray(self._forward(self.params, batch))[:n]
        if before is not None:
            wait_for_heap_release(before + out.nbytes)
        return out

    def _batch_sizes(self, n: int) -> Iterable[int]:
        """Splits n items into chunks of at most batch_size: power-of-two sizes on one
        device (few compiled shapes); on several, full batches and one remainder (each
        filled up to a multiple of the device count by `forward_padded`)."""
        while n > 0:
            b = min(self.batch_size, n)
            if self.num_devices == 1:
                b = 1 << (b.bit_length() - 1)
            yield b
            n -= b

    def _run_group(self, images: Sequence[np.ndarray], hb: int, wb: int) -> list[np.ndarray]:
        """Pads same-bucket images to (hb, wb), runs them in power-of-two batches, crops;
        returns float32 [0, 255] (unrounded) images."""
        outputs: list[np.ndarray] = []
        i = 0
        for b in self._batch_sizes(len(images)):
            chunk = images[i : i + b]
            batch = np.stack([reflect_pad(im, height=hb, width=wb) for im in chunk])
            y = self.forward_padded(batch)
            for im, out in zip(chunk, y):
                outputs.append(out[: im.shape[0], : im.shape[1]])
            i += b
        return outputs

    def deblur_float(self, image: np.ndarray, *, tile: int | None = None, overlap: int | None = None) -> np.ndarray:
        """Like :meth:`deblur` for one uint8 (H, W, 3) image, but returns the network's
        output before quantisation: float32 (H, W, 3) in [0, 1] (for metrics)."""
        overlap = self.overlap if overlap is None else int(overlap)
        tile = self.tile if tile is None else self._check_tile(tile, overlap)
        image = _check_image(image, "deblur_float")
        return self._deblur_list([image], tile, overlap, False)[0] / np.float32(255.0)

    def _deblur_tiled(self, image: np.ndarray, tile: int, overlap: int) -> np.ndarray:
        h, w = image.shape[:2]
        # A side shorter than the tile runs whole (padded to its bucket): the tile is then
        # (tile, bucket(w)) or (bucket(h), tile), still a handful of shapes.
        # The image is first padded to a multiple of `multiple` (as bucket="exact" does), so
        # the image borders see the same padding as an untiled run with bucket="exact".
        th = tile if h > tile else bucket_size(h, self.bucket, self.multiple)
        tw = tile if w > tile else bucket_size(w, self.bucket, self.multiple)
        hp = max(bucket_size(h, "exact", self.multiple), th)
        wp = max(bucket_size(w, "exact", self.multiple), tw)
        padded = reflect_pad(image, height=hp, width=wp)
        ph, pw = padded.shape[:2]
        acc = np.zeros((ph, pw, 3), np.float32)
        weight = np.zeros((ph, pw, 1), np.float32)
        ys = tile_starts(ph, th, overlap, self.multiple)
        xs = tile_starts(pw, tw, overlap, self.multiple)
        wys = {y: _edge_weights(th, *o) for y, o in zip(ys, _overlaps(ys, th))}
        wxs = {x: _edge_weights(tw, *o) for x, o in zip(xs, _overlaps(xs, tw))}
        boxes = [(y, x) for y in ys for x in xs]
        i = 0
        for b in self._batch_sizes(len(boxes)):
            chunk = boxes[i : i + b]
            batch = np.stack([padded[y : y + th, x : x + tw] for y, x in chunk])
            out = self.forward_padded(batch)
            for (y, x), o in zip(chunk, out):
                wgt = (wys[y][:, None] * wxs[x][None, :])[..., None]
                acc[y : y + th, x : x + tw] += o * wgt
                weight[y : y + th, x : x + tw] += wgt
            i += b
        acc /= weight
        return acc[:h, :w]

    # ------------------------------------------------------------------ public
    def deblur(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        *,
        tile: int | None = None,
        overlap: int | None = None,
        progress: bool = False,
    ) -> np.ndarray | list[np.ndarray]:
        """Deblurs uint8 RGB images.

        Args:
          images: uint8 (H, W, 3), uint8 (B, H, W, 3), or a list of uint8 (H_i, W_i, 3).
          tile: overrides the constructor's ``tile`` for this call (images with a side
            larger than it are tiled); None keeps the constructor's setting.
          overlap: overrides the constructor's ``overlap``.
          progress: show a tqdm progress bar over images.

        Returns:
          uint8 in the same structure and shapes as ``images``.
        """
        overlap = self.overlap if overlap is None else int(overlap)
        tile = self.tile if tile is None else self._check_tile(tile, overlap)
        if not isinstance(images, (list, tuple)):
            arr = np.asarray(images)
            if arr.ndim == 3:
                out = self._deblur_list([_check_image(arr, "deblur")], tile, overlap, progress)
                return quantize(out[0])
            if arr.ndim == 4:
                items = [_check_image(im, f"deblur: image {i}") for i, im in enumerate(arr)]
                out = self._deblur_list(items, tile, overlap, progress)
                return np.stack([quantize(o) for o in out]) if out else np.zeros_like(arr)
            raise ValueError(f"deblur: expected uint8 (H, W, 3), (B, H, W, 3) or a list, got shape {arr.shape}")
        items = [_check_image(im, f"deblur: image {i}") for i, im in enumerate(images)]
        return [quantize(o) for o in self._deblur_list(items, tile, overlap, progress)]

    __call__ = deblur

    def deblur_stream(
        self,
        items: Iterable[T],
        *,
        read: Callable[[T], LoadedImage | np.ndarray] | None = None,
        threads: int = 2,
        prefetch: int = 4,
    ) -> Iterator[Deblurred[T]]:
        """Deblurs a stream of images, yielding a `Deblurred` per item, in order.

        Reading and decoding run ``threads`` worker threads up to ``prefetch`` items ahead
        of the device, so they overlap the compute; consecutive images of the same bucket
        (not tiled) run as one batch of up to ``batch_size``, split over the devices. Encode
        and write the results in your own threads to overlap that too (the deblur CLI does).

        Args:
          items: anything ``read`` accepts; by default uint8 (H, W, 3) arrays or image paths
            (read with `aspdc_jax.images.read_image`: any Pillow format, alpha kept aside).
          read: item -> uint8 (H, W, 3) array or `LoadedImage`. An exception it raises is
            reported in that item's `Deblurred.error`, and the stream goes on.
          threads: reader threads.
          prefetch: items read ahead of the one being deblurred.

        Yields:
          `Deblurred` (item, what was read, the uint8 output or the read error), one per item.
        """
        read_one = _reader(read)
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="aspdc-read") as pool:
            pending: collections.deque[tuple[T, Future[LoadedImage]]] = collections.deque()
            group: list[tuple[T, LoadedImage]] = []
            for item in items:
                pending.append((item, pool.submit(read_one, item)))
                while len(pending) > prefetch:
                    yield from self._stream_step(pending.popleft(), group)
            while pending:
                yield from self._stream_step(pending.popleft(), group)
            yield from self._flush(group)

    def _stream_step(
        self, entry: tuple[T, Future[LoadedImage]], group: list[tuple[T, LoadedImage]]
    ) -> Iterator[Deblurred[T]]:
        """Adds one read item to the current same-bucket ``group``, running the group first
        when the item does not fit in it; a read error flushes the group and is yielded."""
        item, future = entry
        try:
            image = future.result()
        except Exception as err:  # reported per item; the stream goes on
            yield from self._flush(group)
            yield Deblurred(item, None, None, err)
            return
        if group and (len(group) >= self.batch_size or self._stream_key(image) != self._stream_key(group[0][1])):
            yield from self._flush(group)
        group.append((item, image))
        if self._stream_key(image) is None:  # tiled: runs alone
            yield from self._flush(group)

    def _stream_key(self, image: LoadedImage) -> tuple[int, int] | None:
        """The bucket an image runs in, or None when it is tiled."""
        h, w = image.rgb.shape[:2]
        if self.tile is not None and (h > self.tile or w > self.tile):
            return None
        return self.bucket_shape(h, w)

    def _flush(self, group: list[tuple[T, LoadedImage]]) -> Iterator[Deblurred[T]]:
        """Deblurs the buffered ``group`` as one call and empties it."""
        if not group:
            return
        outputs = self._deblur_list([image.rgb for _, image in group], self.tile, self.overlap, False)
        done = [Deblurred(item, image, quantize(out), None) for (item, image), out in zip(group, outputs)]
        group.clear()
        yield from done

    def _deblur_list(
        self, images: list[np.ndarray], tile: int | None, overlap: int, progress: bool
    ) -> list[np.ndarray]:
        results: list[np.ndarray | None] = [None] * len(images)
        # Untiled images that share a bucket run together (batch_size > 1 only matters then).
        groups: dict[tuple[int, int], list[int]] = {}
        tiled: list[int] = []
        for i, im in enumerate(images):
            h, w = im.shape[:2]
            if tile is not None and (h > tile or w > tile):
                tiled.append(i)
            else:
                groups.setdefault(self.bucket_shape(h, w), []).append(i)
        bar = None
        if show_progress(progress):
            bar = tqdm(total=len(images), unit="img", desc="deblur")
        for (hb, wb), idx in groups.items():
            step = self.batch_size
            for s in range(0, len(idx), step):
                part = idx[s : s + step]
                for i, out in zip(part, self._run_group([images[j] for j in part], hb, wb)):
                    results[i] = out
                if bar is not None:
                    bar.update(len(part))
        for i in tiled:
            assert tile is not None
            results[i] = self._deblur_tiled(images[i], tile, overlap)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return results  # type: ignore[return-value]


def _reader(read: Callable[[Any], LoadedImage | np.ndarray] | None) -> Callable[[Any], LoadedImage]:
    """``read`` (default: arrays as they are, paths by `read_image`) made to return a
    checked `LoadedImage`."""

    def read_one(item: Any) -> LoadedImage:
        if read is not None:
            loaded = read(item)
        elif isinstance(item, (str, Path)):
            loaded = read_image(item)
        else:
            loaded = np.asarray(item)
        if not isinstance(loaded, LoadedImage):
            loaded = LoadedImage(loaded, None, [])
        loaded.rgb = _check_image(
            loaded.rgb, f"deblur_stream: {item}" if isinstance(item, (str, Path)) else "deblur_stream"
        )
        return loaded

    return read_one


def load(ckpt_dir: str | Path, **kwargs: Any) -> Deblurrer:
    """Loads a :class:`Deblurrer` from an export or a ``train.py`` workdir / phase folder.

    Keyword arguments go to :class:`Deblurrer` (``bucket``, ``dtype``, ``tile``, ...).
    Raises :class:`aspdc_jax.weights.CheckpointError` for a folder without a checkpoint.
    """
    return Deblurrer.from_loaded(load_for_inference(ckpt_dir), **kwargs)
