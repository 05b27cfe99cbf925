"""Physically based synthetic motion blur (paper eq. 1).

A blurred image is the average, in linear light, of N sharp frames seen by a camera that
moves along a smooth random trajectory during the exposure (one homography per frame:
in-plane rotation, zoom, small perspective tilt and translation), with independently
moving object patches composited on top. The camera response (CRF, a gamma curve) is
inverted before averaging and re-applied afterwards, then mild noise is added. The sharp
target is the middle frame (identity homography, objects at their mid-exposure position),
which is exactly how GoPro was made from 240 fps video.

Everything is vectorised numpy: every frame is one nearest-neighbour gather of a
linear-light source patch, and the number of frames adapts to the trajectory so that no
pixel moves more than ~1 px between consecutive frames (the average of many sub-pixel
spaced nearest samples approximates the continuous exposure integral without ghosting).
A 256x256 pair takes ~10-40 ms on one core depending on the blur length.

Built-in photographs are the colour images inside the scikit-image wheel, split by image
so test photos never appear in training (the stereo pair motorcycle_left/right stays in
one split). Users' own photos work too (`load_photos(folder)`).

CLI: ``python -m aspdc_jax.data.synthetic --preview out.png [--strength 1.0]`` writes a grid
of sharp/blurred examples (the package's ``__main__``; this module has no command line).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import numbers
import pathlib
from collections.abc import Sequence

import numpy as np
import skimage.data
from PIL import Image

from aspdc_jax.data import imageio
from aspdc_jax.images import psnr_numpy

__all__ = [
    "BUILTIN_TEST_PHOTOS",
    "BUILTIN_TRAIN_PHOTOS",
    "BANDS",
    "PATH_KINDS",
    "SyntheticBlurConfig",
    "band_config",
    "builtin_photos",
    "builtin_textures",
    "dead_leaves_scene",
    "load_photos",
    "photo_scales",
    "photo_source",
    "psnr_u8",
    "random_crop_pair",
    "rescaled_photos",
    "scene_crop_pair",
    "synthesize_blur",
    "synthetic_test_pairs",
]

# Every suitable photo inside the scikit-image wheel. Held-out photos are never used for
# training in any form (no crops, no rescaled copies, no textures); the stereo pair
# motorcycle_left/right stays together in train. Grey photos are used as grey RGB.
BUILTIN_TRAIN_PHOTOS: tuple[str, ...] = (
    "motorcycle_left",
    "motorcycle_right",
    "hubble_deep_field",
    "retina",
    "camera",
    "brick",
    "grass",
    "gravel",
    "moon",
    "coins",
    "cell",
)
BUILTIN_TEST_PHOTOS: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket")
#: Grey training photos whose patches texture the procedural scenes.
TEXTURE_PHOTOS: tuple[str, ...] = ("brick", "grass", "gravel")
_BUILTIN_FILES = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "retina": "retina.jpg",
    "camera": "camera.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "moon": "moon.png",
    "coins": "coins.png",
    "cell": "cell.png",
}


PATH_KINDS: tuple[str, ...] = ("smooth", "jitter", "rotation", "zoom")


@dataclasses.dataclass(frozen=True)
class SyntheticBlurConfig:
    """Knobs of the blur model (all lengths in pixels of the output crop).

    strength: global multiplier of every motion (0 = no blur, 1 = default, 2 = strong).
    min_blur, max_camera_blur: the camera blur length (the largest displacement of any
        point of the crop during the exposure) is log-uniform in [min_blur, max_camera_blur]
        * strength, so short blurs are as common as long ones (blurred-vs-sharp PSNR from
        ~22 to ~34 dB on typical photos).
    sharp_probability: share of examples with almost no motion (length < min_blur), so
        that a model learns to leave sharp content alone.
    path_weights: relative frequency of the camera path kinds `PATH_KINDS`: smooth
        (cubic polynomial), jitter (a random walk with momentum: hand shake), rotation
        (rotation about a point dominates) and zoom (the camera moves along its axis).
    object_probability: chance that an example gets moving objects (1 or 2 patches).
    max_object_blur: longest object motion (added to the camera motion) at strength 1.
    gamma, gamma_jitter: the camera response is ``linear ** (1 / g)`` with g uniform in
        gamma +- gamma_jitter; frames are averaged in linear light.
    saturation_probability: chance that the near-white pixels (every channel >= 240) are
        light sources brighter than white: their linear value is multiplied by 1.5-4 before
        the averaging and the result is clipped afterwards, so highlights bloom as in real
        night shots (RSBlur, Rim et al. 2022). The sharp target is clipped the same way.
    noise_sigma: maximum noise std (in [0, 1] output units at mid-grey); the noise is
        Poisson-Gaussian, added in linear light before the camera response.
    jpeg_probability, jpeg_quality: chance that the blurred image is JPEG-compressed, at a
        quality uniform in the given range.
    max_frames: cap on the number of rendered frames.
    """

    strength: float = 1.0
    min_blur: float = 1.0
    max_camera_blur: float = 24.0
    sharp_probability: float = 0.1
    path_weights: tuple[float, ...] = (0.4, 0.3, 0.15, 0.15)
    object_probability: float = 0.3
    max_object_blur: float = 16.0
    gamma: float = 2.2
    gamma_jitter: float = 0.2
    saturation_probability: float = 0.25
    noise_sigma: float = 0.01
    jpeg_probability: float = 0.25
    jpeg_quality: tuple[int, int] = (60, 95)
    max_frames: int = 61

    def margin(self) -> int:
        """Border (px) around the output crop that the source patch must provide."""
        longest = max(self.max_camera_blur, self.min_blur, 1.0) * max(self.strength, 0.0)
        return int(np.ceil(longest)) + 2


#: Fixed blur settings of the held-out test bands: camera blur length range (px) at
#: strength 1. Calibrated so the blurred inputs average ~32 / ~26 / ~23 dB on the
#: built-in test photos at 256 px (32.1 / 26.2 / 22.6 dB on the 36 test pairs; GoPro's
#: inputs average ~26 dB).
BANDS: dict[str, tuple[float, float]] = {"mild": (2.0, 3.5), "gopro": (7.0, 11.0), "strong": (16.0, 24.0)}


def band_config(band: str, base: SyntheticBlurConfig = SyntheticBlurConfig()) -> SyntheticBlurConfig:
    """The blur config of one test band: ``base`` with the band's blur range, no sharp
    examples, and the base's other camera factors."""
    if band not in BANDS:
        raise ValueError(f"unknown band {band!r}; expected one of {tuple(BANDS)}")
    lo, hi = BANDS[band]
    return dataclasses.replace(base, min_blur=lo, max_camera_blur=hi, sharp_probability=0.0)


# ----------------------------------------------------------------------------- photos


def _skimage_data_dir() -> pathlib.Path:
    return pathlib.Path(skimage.data.__file__).parent


@functools.cache
def _load_builtin(name: str) -> np.ndarray:
    if name not in _BUILTIN_FILES:
        raise ValueError(f"unknown built-in photo {name!r}; expected one of {sorted(_BUILTIN_FILES)}")
    return imageio.read_rgb8(_skimage_data_dir() / _BUILTIN_FILES[name])


def builtin_photos(split: str) -> list[tuple[str, np.ndarray]]:
    """The bundled scikit-image photos of one split: list of (name, uint8 HxWx3)."""
    if split == "train":
        names = BUILTIN_TRAIN_PHOTOS
    elif split == "test":
        names = BUILTIN_TEST_PHOTOS
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return [(n, _load_builtin(n)) for n in names]


def load_photos(folder: str | pathlib.Path, split: str | None = None) -> list[tuple[str, np.ndarray]]:
    """Sharp photos from a user's folder: list of (file name, uint8 HxWx3), sorted by name.

    If ``folder/train`` and ``folder/test`` exist and ``split`` is given, that subfolder is
    used; otherwise every image of ``folder`` is returned (the caller splits by image).
    Grayscale / RGBA / 16-bit files are converted to 8-bit RGB (see imageio.read_rgb8).
    """
    folder = pathlib.Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"photo folder {folder} does not exist")
    if split is not None and (folder / split).is_dir():
        folder = folder / split
    files = imageio.list_images(folder)
    if not files:
        raise FileNotFoundError(f"no images (.png/.jpg/.jpeg/.bmp/.tif) found in {folder}")
    return [(f.name, imageio.read_rgb8(f)) for f in files]


def photo_source(photo_dir: str | None, split: str) -> list[tuple[str, np.ndarray]]:
    """Photos for one split: built-in ones when ``photo_dir`` is None, else the user's.

    A user folder without train/ and test/ subfolders is split by image: the last
    ``max(1, n // 5)`` photos (sorted by name) are the test photos (needs >= 2 photos).
    """
    if photo_dir is None:
        return builtin_photos(split)
    folder = pathlib.Path(photo_dir).expanduser()
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return load_photos(folder, split)
    photos = load_photos(folder)
    if len(photos) < 2:
        raise ValueError(
            f"{folder} holds {len(photos)} photo(s); need at least 2 so that test photos are "
            "held out from training (or add train/ and test/ subfolders)"
        )
    n_test = max(1, len(photos) // 5)
    return photos[-n_test:] if split == "test" else photos[:-n_test]


def photo_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """Validated, de-duplicated photo scales (numbers in (0, 8]); raises ValueError."""
    bad = [s for s in scales if isinstance(s, bool) or not isinstance(s, numbers.Real) or not 0 < float(s) <= 8]
    if not scales or bad:
        raise ValueError(f"photo scales must be a non-empty list of numbers in (0, 8], got {list(scales)!r}")
    return tuple(dict.fromkeys(float(s) for s in scales))


def rescaled_photos(
    photos: Sequence[tuple[str, np.ndarray]], scales: Sequence[float], min_side: int = 1
) -> list[tuple[str, np.ndarray]]:
    """Each photo at every scale in ``scales`` (Lanczos resampling), as extra photos.

    Upscaled copies (scale > 1) are softer, like many real photos; downscaled ones (< 1)
    are denser in detail. A copy whose shorter side would fall below ``min_side`` is
    skipped; scale 1 keeps the photo itself. Names get a ``@<scale>`` suffix (none for 1).
    Returns a list of (name, uint8 HxWx3).
    """
    out = []
    for scale in photo_scales(scales):
        for name, photo in photos:
            if scale == 1.0:
                out.append((name, photo))
                continue
            h, w = photo.shape[:2]
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            if min(size) < min_side:
                continue
            resized = Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS)
            out.append((f"{name}@{scale:g}", np.asarray(resized)))
    return out


# ----------------------------------------------------------------------------- blur model

_DENSE = 65  # time samples of the dense camera path (t in [-1/2, 1/2])


def _camera_path(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """A random camera path of one kind, before scaling: (65, 4) = (tx, ty, rot, log-zoom).

    Translation in pixels, rotation in radians, zoom as log-scale, sampled at 65 equally
    spaced times of the exposure; the unit of each is chosen so that it moves the crop's
    corners by comparable amounts.
    """
    t = np.linspace(-0.5, 0.5, _DENSE)
    if kind == "jitter":  # hand shake: a random walk with momentum, then integrated
        momentum = rng.uniform(0.6, 0.95)
        acc = rng.normal(size=(_DENSE, 4))
        vel = np.zeros((_DENSE, 4))
        for k in range(1, _DENSE):
            vel[k] = momentum * vel[k - 1] + acc[k]
        path = np.cumsum(vel, axis=0)
    else:  # smooth: a cubic polynomial
        c = rng.normal(size=(3, 4)) * np.array([1.0, 0.7, 0.5])[:, None]
        path = np.stack([t, t**2, t**3], axis=-1) @ c
    # Units: 1 = about one crop-size of corner displacement per unit of path.
    weights = np.array([1.0, 1.0, 1.2 / size, 0.6 / size])
    if kind == "rotation":
        weights *= np.array([0.15, 0.15, 2.0, 0.2])
    elif kind == "zoom":
        weights *= np.array([0.15, 0.15, 0.2, 3.0])
    else:
        weights *= np.array([1.0, 1.0, rng.uniform(0.0, 0.6), rng.uniform(0.0, 0.4)])
    return path * weights


def _homographies(path: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(F, 4) = (tx, ty, rot, log-zoom) about ``centre`` (x, y) -> (F, 3, 3) homographies
    mapping output pixel (x, y, 1) to source coordinates."""
    tx, ty, rot, logz = path.T
    s = np.exp(logz)
    cos, sin = np.cos(rot) * s, np.sin(rot) * s
    h = np.zeros((path.shape[0], 3, 3))
    cx, cy = centre
    # x' = A (x - c) + c + t
    h[:, 0, 0], h[:, 0, 1] = cos, -sin
    h[:, 1, 0], h[:, 1, 1] = sin, cos
    h[:, 0, 2] = tx + cx - (cos * cx - sin * cy)
    h[:, 1, 2] = ty + cy - (sin * cx + cos * cy)
    h[:, 2, 2] = 1.0
    return h


def _apply_h(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """h (F,3,3), pts (P,2) -> (F,P,2)."""
    hom = np.concatenate([pts, np.ones((pts.shape[0], 1))], axis=1)
    out = np.einsum("fij,pj->fpi", h, hom)
    return out[..., :2] / out[..., 2:3]


def _odd(n: int) -> int:
    return n if n % 2 == 1 else n + 1


def _blur_length(rng: np.random.Generator, config: SyntheticBlurConfig) -> float:
    """Camera blur length (px): log-uniform in [min_blur, max_camera_blur] * strength, or
    below min_blur for the ``sharp_probability`` share of examples."""
    lo, hi = config.min_blur * config.strength, config.max_camera_blur * config.strength
    if hi <= 0:
        return 0.0
    if rng.uniform() < config.sharp_probability or hi <= lo:
        return float(rng.uniform(0.0, min(lo, hi) if lo > 0 else hi))
    return float(np.exp(rng.uniform(np.log(max(lo, 1e-3)), np.log(hi))))


def _objects(rng: np.random.Generator, s: int, config: SyntheticBlurConfig) -> list[dict]:
    """Moving objects (soft ellipses textured from elsewhere in the patch)."""
    objects: list[dict] = []
    if config.strength > 0 and rng.uniform() < config.object_probability:
        for _ in range(int(rng.integers(1, 3))):
            direction = rng.normal(size=2)
            objects.append(
                dict(
                    r=rng.uniform(0.1, 0.3, size=2) * s,
                    c=rng.uniform(0.2, 0.8, size=2) * s,
                    ang=rng.uniform(0, np.pi),
                    len=rng.uniform(0.3, 1.0) * config.max_object_blur * config.strength,
                    dir=direction / (np.linalg.norm(direction) + 1e-9),
                    bend=rng.normal(size=2) * 0.3,
                    off=rng.uniform(-0.35, 0.35, size=2) * s,
                )
            )
    return objects


def _scaled_camera(
    rng: np.random.Generator, s: int, length: float, margin: int, config: SyntheticBlurConfig
) -> tuple[np.ndarray, float, float, str]:
    """Camera homographies on the dense time grid, scaled so the most moving point of the
    crop travels ``length`` px and centred so the mean displacement over the exposure is 0.

    Returns (dense homographies (65,3,3), extent px, path length px, kind).
    """
    weights = np.asarray(config.path_weights, float)
    kind = PATH_KINDS[int(rng.choice(len(PATH_KINDS), p=weights / weights.sum()))]
    path = _camera_path(rng, kind, s)
    # rotation / zoom about a random point near the crop (not always its centre).
    centre = rng.uniform(-0.25, 1.25, size=2) * (s - 1) if kind in ("rotation", "zoom") else np.full(2, (s - 1) / 2)
    probe = np.stack(np.meshgrid(np.linspace(0, s - 1, 5), np.linspace(0, s - 1, 5)), -1).reshape(-1, 2)

    def stats(p: np.ndarray) -> tuple[np.ndarray, float, float]:
        hs = _homographies(p, centre)
        pts = _apply_h(hs, probe)  # (65, 25, 2)
        disp = pts - probe[None]
        # Centre the path in time: the mean displacement of the probes is zero, so the
        # sharp target (identity) sits at the centroid of the blur, where a blind model
        # can place it.
        mean = disp.mean(axis=(0, 1))
        hs[:, 0, :] -= mean[0] * hs[:, 2, :]
        hs[:, 1, :] -= mean[1] * hs[:, 2, :]
        disp = disp - mean
        extent = float(np.max(np.linalg.norm(disp[:, None] - disp[None, :], axis=-1)))
        seg = float(np.linalg.norm(np.diff(pts, axis=0), axis=-1).sum(axis=0).max())
        return hs, extent, seg

    hs, extent, seg = stats(path)
    if length <= 0 or extent < 1e-9:
        return _homographies(np.zeros_like(path), centre), 0.0, 0.0, kind
    path = path * (length / extent)
    hs, extent, seg = stats(path)
    # The most displaced point must stay inside the margin of the source patch.
    reach = float(np.abs(_apply_h(hs, probe) - probe[None]).max())
    if reach > margin - 1:
        path = path * ((margin - 1) / reach)
        hs, extent, seg = stats(path)
    return hs, extent, seg, kind


def _frame_homographies(dense: np.ndarray, n_frames: int) -> np.ndarray:
    """Interpolates the dense (65,3,3) homographies at ``n_frames`` equally spaced times."""
    td = np.linspace(-0.5, 0.5, dense.shape[0])
    t = np.linspace(-0.5, 0.5, n_frames) if n_frames > 1 else np.zeros(1)
    flat = dense.reshape(dense.shape[0], 9)
    return np.stack([np.interp(t, td, flat[:, j]) for j in range(9)], axis=-1).reshape(n_frames, 3, 3)


def _render_frame(
    lin: np.ndarray, h: np.ndarray, side: int, s: int, m: int, objects: list[dict], tf: float, centred: bool
) -> np.ndarray:
    """One linear-light frame (s,s,3): the source warped by ``h`` (nearest samples) with the
    objects at their position at time ``tf`` (``centred``: paths centred in time)."""
    xs = np.arange(s, dtype=np.float32)
    h = h.astype(np.float32)
    maxc = side - 1
    inv_w = 1.0 / (h[2, 0] * xs[None, :] + (h[2, 1] * xs[:, None] + h[2, 2]))
    qx = (h[0, 0] * xs[None, :] + (h[0, 1] * xs[:, None] + h[0, 2])) * inv_w
    qy = (h[1, 0] * xs[None, :] + (h[1, 1] * xs[:, None] + h[1, 2])) * inv_w
    ix = np.clip(np.rint(qx + m), 0, maxc).astype(np.int32)
    iy = np.clip(np.rint(qy + m), 0, maxc).astype(np.int32)
    frame = np.take(lin, iy * side + ix, axis=0)  # (s, s, 3)
    for o in objects:
        # centred in time (mean of t^2 over the exposure is 1/12): the sharp position is
        # the centroid of the object's blur.
        d = o["len"] * (o["dir"] * tf + o["bend"] * (tf**2 - (1.0 / 12.0 if centred else 0.0)))
        rr = max(o["r"]) + m + 1
        cy, cx = o["c"][1] + d[1], o["c"][0] + d[0]
        ya, yb = int(max(cy - rr, 0)), int(min(cy + rr + 1, s))
        xa, xb = int(max(cx - rr, 0)), int(min(cx + rr + 1, s))
        if ya >= yb or xa >= xb:
            continue
        wx, wy = qx[ya:yb, xa:xb], qy[ya:yb, xa:xb]
        dx, dy = wx - np.float32(cx), wy - np.float32(cy)
        ca, sa = np.float32(np.cos(o["ang"])), np.float32(np.sin(o["ang"]))
        u = (ca * dx + sa * dy) * np.float32(1.0 / o["r"][0])
        v = (ca * dy - sa * dx) * np.float32(1.0 / o["r"][1])
        alpha = np.clip((1.0 - np.sqrt(u * u + v * v)) * np.float32(min(o["r"]) / 1.5), 0.0, 1.0)
        tx_ = np.clip(np.rint(wx - d[0] + o["off"][0] + m), 0, maxc).astype(np.int32)
        ty_ = np.clip(np.rint(wy - d[1] + o["off"][1] + m), 0, maxc).astype(np.int32)
        tex = np.take(lin, ty_ * side + tx_, axis=0)
        win = frame[ya:yb, xa:xb]
        frame[ya:yb, xa:xb] = win + (tex - win) * alpha[:, :, None]
    return frame


def _camera_pipeline(
    blur_lin: np.ndarray, rng: np.random.Generator, gamma: float, config: SyntheticBlurConfig
) -> tuple[np.ndarray, float, int]:
    """Linear-light average (s,s,3) -> uint8 blurred image, as a camera would record it:
    clip at white, Poisson-Gaussian noise in linear light, the response curve, 8-bit
    quantisation and sometimes JPEG. Returns (image, noise sigma, JPEG quality or 0)."""
    lin = np.minimum(blur_lin, 1.0)
    sigma = float(rng.uniform(0.0, config.noise_sigma)) if config.noise_sigma > 0 else 0.0
    if sigma > 0:
        # sigma is the std at mid-grey (linear 0.2) in output units; the CRF's slope there
        # is ~1, so it is also the linear std. Mostly shot noise (variance ~ signal).
        read = 0.15 * sigma * rng.uniform()
        shot2 = (sigma**2 - read**2) / 0.2
        std = np.sqrt(shot2 * lin + read**2).astype(np.float32)
        lin = np.clip(lin + std * rng.standard_normal(size=lin.shape, dtype=np.float32), 0.0, 1.0)
    out = np.clip(np.rint(lin ** np.float32(1.0 / gamma) * 255.0), 0, 255).astype(np.uint8)
    quality = 0
    if rng.uniform() < config.jpeg_probability:
        quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=quality)
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out, sigma, quality


def synthesize_blur(
    source: np.ndarray,
    crop_size: int,
    rng: np.random.Generator,
    config: SyntheticBlurConfig = SyntheticBlurConfig(),
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render one (blurred, sharp) pair from a sharp source patch.

    The scene (the source in linear light, highlights possibly brighter than white) is
    averaged over the frames of a random camera path plus moving objects, then passed
    through `_camera_pipeline`. The path is centred in time, so the sharp target is the
    scene at the centroid of the motion: for a camera-only example, exactly the centre
    crop of ``source``.

    Args:
      source: uint8 (crop_size + 2 * m, crop_size + 2 * m, 3) sharp patch, m =
        config.margin(); the output crop is its centre, the border feeds the motion.
      crop_size: output side S.
      rng: numpy Generator; the result is a deterministic function of its state.
      config: blur model knobs.
    Returns:
      blurred uint8 (S,S,3), sharp uint8 (S,S,3), and a dict with the drawn parameters
      (camera blur length px, path kind, number of frames, objects, saturation gain,
      noise sigma, JPEG quality).
    """
    m = config.margin()
    if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
        raise ValueError(f"source must be uint8 (H,W,3), got {source.dtype} {source.shape}")
    if source.shape[0] != crop_size + 2 * m or source.shape[1] != crop_size + 2 * m:
        raise ValueError(
            f"source must be {crop_size + 2 * m}x{crop_size + 2 * m} (crop {crop_size} + 2 x "
            f"margin {m}), got {source.shape[0]}x{source.shape[1]}"
        )
    s, side = crop_size, crop_size + 2 * m
    gamma = float(config.gamma + rng.uniform(-1.0, 1.0) * config.gamma_jitter)
    lin = ((np.arange(256, dtype=np.float32) / np.float32(255.0)) ** np.float32(gamma))[source].reshape(side * side, 3)
    gain = 1.0
    if rng.uniform() < config.saturation_probability:
        # near-white pixels are light sources brighter than the sensor's white point
        bright = source.reshape(side * side, 3).min(axis=1) >= 240
        if bright.any():
            gain = float(rng.uniform(1.5, 4.0))
            lin[bright] *= np.float32(gain)

    length = _blur_length(rng, config)
    dense, extent, path_len, kind = _scaled_camera(rng, s, length, m, config)
    objects = _objects(rng, s, config)
    obj_len_max = max([o["len"] for o in objects], default=0.0)
    cap = config.max_frames if config.max_frames % 2 else config.max_frames - 1
    n_frames = int(np.clip(_odd(int(np.ceil(max(path_len, obj_len_max * 1.3))) + 1), 1, max(cap, 1)))
    hs = _frame_homographies(dense, n_frames)
    times = np.linspace(-0.5, 0.5, n_frames) if n_frames > 1 else np.zeros(1)

    acc = np.zeros((s, s, 3), np.float32)
    for h, tf in zip(hs, times):
        acc += _render_frame(lin, h, side, s, m, objects, float(tf), centred=True)
    blurred_u8, sigma, quality = _camera_pipeline(acc * np.float32(1.0 / n_frames), rng, gamma, config)
    if objects or gain != 1.0:  # the scene at the centroid of the motion, clipped at white
        sharp_lin = np.minimum(_render_frame(lin, np.eye(3), side, s, m, objects, 0.0, centred=True), 1.0)
        sharp_u8 = np.clip(np.rint(sharp_lin ** np.float32(1.0 / gamma) * 255.0), 0, 255).astype(np.uint8)
    else:  # exact: the untouched centre of the source
        sharp_u8 = np.ascontiguousarray(source[m : m + s, m : m + s])
    info = {
        "camera_blur_px": float(extent),
        "path": kind,
        "frames": n_frames,
        "objects": len(objects),
        "saturation_gain": gain,
        "noise_sigma": sigma,
        "jpeg_quality": quality,
    }
    return blurred_u8, sharp_u8, info


# ----------------------------------------------------------------------------- scenes


def dead_leaves_scene(side: int, rng: np.random.Generator, textures: Sequence[np.ndarray] = ()) -> np.ndarray:
    """A fresh procedural scene: uint8 (side, side, 3), made of layered, textured shapes.

    A "dead leaves" image (occluding shapes with a power-law size distribution, the
    statistics of natural images' edges and scales): a graded background, then 40-150
    ellipses and rotated rectangles painted from the largest to the smallest, each filled with a colour,
    a linear shading gradient and a texture (stripes, blurred noise, or a patch of one of
    ``textures``: grey uint8 images). Edges are anti-aliased (~1 px), so the scene is
    sharp but not aliased. Every call draws a new scene from ``rng``.
    """
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    palette = rng.uniform(0.2, 0.8, 3)
    spread = rng.uniform(0.05, 0.2)
    g = rng.normal(size=3) * 0.3 / side
    img = np.clip(palette + ((xx * g[0] + yy * g[1])[..., None] * rng.uniform(0.5, 1.5, 3)), 0, 1)
    img = img.astype(np.float32)
    r_min, r_max = 3.0, side / 2.0
    # radius density ~ r^-2 (1/r uniform), painted from the largest to the smallest so
    # that the big shapes cover the background and the small ones stay visible.
    radii = np.sort(1.0 / rng.uniform(1.0 / r_max, 1.0 / r_min, int(rng.integers(40, 151))))[::-1]
    for r in radii:
        cx, cy = rng.uniform(-0.1, 1.1, 2) * side
        a, b = r, r * rng.uniform(0.3, 1.0)
        ang = rng.uniform(0, np.pi)
        half = int(np.ceil(max(a, b))) + 2
        x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 1, side)
        y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 1, side)
        if x0 >= x1 or y0 >= y1:
            continue
        dx, dy = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
        ca, sa = np.cos(ang), np.sin(ang)
        u, v = ca * dx + sa * dy, ca * dy - sa * dx
        if rng.uniform() < 0.6:  # ellipse; signed distance to the edge ~ (1 - rho) * b
            dist = (1.0 - np.sqrt((u / a) ** 2 + (v / b) ** 2)) * b
        else:  # rotated rectangle
            dist = np.minimum(a - np.abs(u), b - np.abs(v))
        alpha = np.clip(dist + 0.5, 0.0, 1.0)[..., None]
        # colours scatter around the scene's palette (natural contrast, not confetti)
        colour = np.clip(palette + rng.normal(0.0, spread, 3) + rng.normal(0.0, spread), 0.05, 0.95).astype(np.float32)
        shade = 1.0 + (rng.normal() * u + rng.normal() * v)[..., None] * (0.3 / max(a, 1.0))
        fill = colour * shade
        kind = rng.uniform()
        if kind < 0.3:  # stripes
            freq = rng.uniform(0.05, 0.9)
            wave = np.sin(freq * (u * np.cos(ang * 3) + v * np.sin(ang * 3)) + rng.uniform(0, 6.3))
            fill = fill * (1.0 + rng.uniform(0.05, 0.3) * wave[..., None])
        elif kind < 0.6 and textures:  # a patch of a texture photo
            tex = textures[int(rng.integers(len(textures)))]
            th, tw = y1 - y0, x1 - x0
            if tex.shape[0] > th and tex.shape[1] > tw:
                ty, tx = int(rng.integers(tex.shape[0] - th)), int(rng.integers(tex.shape[1] - tw))
                patch = tex[ty : ty + th, tx : tx + tw].astype(np.float32) / 255.0
                fill = fill * (0.6 + 0.8 * patch[..., None])
        elif kind < 0.75:  # fine noise
            fill = fill * (1.0 + rng.uniform(0.05, 0.3) * rng.standard_normal(fill.shape[:2] + (1,)).astype(np.float32))
        win = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = win + (np.clip(fill, 0.0, 1.0) - win) * alpha
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- crops


def random_crop_pair(
    photo: np.ndarray,
    crop_size: int,
    rng: np.random.Generator,
    config: SyntheticBlurConfig = SyntheticBlurConfig(),
    augment: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fresh synthetic pair from a random crop of a sharp photo (uint8 HxWx3).

    The crop window (crop + 2 x margin) is drawn uniformly; photos smaller than that are
    reflect-padded (the output crop itself must fit: photo sides >= crop_size). With
    ``augment`` the source patch is randomly flipped / transposed first.
    Returns (blurred, sharp, info) as in `synthesize_blur`.
    """
    h, w = photo.shape[:2]
    if h < crop_size or w < crop_size:
        raise ValueError(f"photo of {h}x{w} is smaller than the crop {crop_size}x{crop_size}")
    m = config.margin()
    side = crop_size + 2 * m
    y0 = int(rng.integers(0, h - crop_size + 1)) - m
    x0 = int(rng.integers(0, w - crop_size + 1)) - m
    ys = np.arange(y0, y0 + side)
    xs = np.arange(x0, x0 + side)
    if y0 < 0 or x0 < 0 or y0 + side > h or x0 + side > w:
        ys = _reflect(ys, h)
        xs = _reflect(xs, w)
        patch = photo[ys[:, None], xs[None, :]]
    else:
        patch = photo[y0 : y0 + side, x0 : x0 + side]
    if augment:
        patch = _flip_transpose(patch, int(rng.integers(0, 8)))
    return synthesize_blur(np.ascontiguousarray(patch), crop_size, rng, config)


def scene_crop_pair(
    crop_size: int,
    rng: np.random.Generator,
    config: SyntheticBlurConfig = SyntheticBlurConfig(),
    textures: Sequence[np.ndarray] = (),
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fresh synthetic pair of a fresh procedural scene (`dead_leaves_scene`)."""
    side = crop_size + 2 * config.margin()
    return synthesize_blur(dead_leaves_scene(side, rng, textures), crop_size, rng, config)


@functools.lru_cache(maxsize=1)
def builtin_textures() -> tuple[np.ndarray, ...]:
    """Grey uint8 texture photos (training photos only) used inside procedural scenes."""
    return tuple(_load_builtin(n)[..., 0] for n in TEXTURE_PHOTOS)


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def _flip_transpose(img: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 dihedral transforms (code 0 = identity) of an HxWxC array."""
    if code & 1:
        img = img[:, ::-1]
    if code & 2:
        img = img[::-1]
    if code & 4:
        img = img.transpose(1, 0, 2)
    return img


def _name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def synthetic_test_pairs(
    photos: Sequence[tuple[str, np.ndarray]],
    *,
    crops_per_photo: int = 3,
    crop_size: int = 256,
    seed: int = 0,
    config: SyntheticBlurConfig = SyntheticBlurConfig(),
    bands: Sequence[str] = tuple(BANDS),
) -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
    """Fixed, seeded evaluation pairs: ``crops_per_photo`` crops of every photo in every
    strength band (`BANDS`; ``config`` gives the other camera factors).

    Each pair depends only on (seed, photo name, band, crop index), so adding photos never
    changes the existing pairs. Returns a list of (name, blurred, sharp, info) with
    name = "<photo>_<band>_<k>" and ``info["band"]``, images uint8 (crop_size, crop_size,
    3), crop index first, then photo, then band. No augmentation.
    """
    for pname, photo in photos:
        if min(photo.shape[:2]) < crop_size:
            raise ValueError(
                f"held-out photo {pname} is {photo.shape[0]}x{photo.shape[1]}, smaller than the test crop "
                f"{crop_size}x{crop_size}; lower config.data.synthetic_test_crop_size or remove the photo"
            )
    band_cfgs = {band: band_config(band, config) for band in bands}
    out = []
    # crop-major order: any prefix of the list (an evaluation with a limit) covers every
    # band and photo as evenly as it can.
    for k in range(crops_per_photo):
        for pname, photo in photos:
            stem = pathlib.Path(pname).stem
            for band, band_cfg in band_cfgs.items():
                rng = np.random.default_rng([seed, _name_seed(stem), _name_seed(band), k])
                blurred, sharp, info = random_crop_pair(photo, crop_size, rng, band_cfg, augment=False)
                info = dict(info, photo=stem, crop_index=k, band=band)
                out.append((f"{stem}_{band}_{k:02d}", blurred, sharp, info))
    return out


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB, peak 255) between two uint8 images."""
    return psnr_numpy(a, b, peak=255.0)
