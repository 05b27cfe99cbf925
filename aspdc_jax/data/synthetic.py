"""Physically based synthetic motion blur (DESIGN.md section 7, paper eq. 1).

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
of sharp/blurred examples.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import numbers
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from aspdc_jax.cli import FlagParser

__all__ = [
    "BUILTIN_TEST_PHOTOS",
    "BUILTIN_TRAIN_PHOTOS",
    "SyntheticBlurConfig",
    "builtin_photos",
    "load_photos",
    "photo_scales",
    "photo_source",
    "psnr_u8",
    "random_crop_pair",
    "rescaled_photos",
    "synthesize_blur",
    "synthetic_test_pairs",
]

# Held-out photos never used for training; the stereo pair stays together in train.
BUILTIN_TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "motorcycle_left",
    "motorcycle_right",
    "hubble_deep_field",
)
BUILTIN_TEST_PHOTOS: tuple[str, ...] = ("chelsea", "rocket")
_BUILTIN_FILES = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
}


@dataclasses.dataclass(frozen=True)
class SyntheticBlurConfig:
    """Knobs of the blur model (all lengths in pixels of the output crop).

    strength: global multiplier of every motion (0 = no blur, 1 = default, 2 = strong).
    max_camera_blur: longest camera blur path (at the image corner that moves most) at
        strength 1; the per-example length is drawn uniformly in
        [min_fraction, 1] * max_camera_blur * strength.
    object_probability: chance that an example gets moving objects (1 or 2 patches).
    max_object_blur: longest object motion (added to the camera motion) at strength 1.
    gamma: the CRF is ``linear ** (1 / gamma)`` (gamma 2.2 ~ sRGB).
    noise_sigma: maximum std of the additive Gaussian noise on the blurred image in [0, 1]
        units; the per-example sigma is uniform in [0, noise_sigma].
    max_frames: cap on the number of rendered frames.
    """

    strength: float = 1.0
    max_camera_blur: float = 20.0
    min_fraction: float = 0.3
    object_probability: float = 0.5
    max_object_blur: float = 20.0
    gamma: float = 2.2
    noise_sigma: float = 0.01
    max_frames: int = 41

    def margin(self) -> int:
        """Border (px) around the output crop that the source patch must provide."""
        return int(np.ceil(max(self.max_camera_blur, 1.0) * max(self.strength, 0.0))) + 2


# ----------------------------------------------------------------------------- photos


def _skimage_data_dir() -> pathlib.Path:
    import skimage.data

    return pathlib.Path(skimage.data.__file__).parent


@functools.lru_cache(maxsize=None)
def _load_builtin(name: str) -> np.ndarray:
    from aspdc_jax.data import imageio

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
    from aspdc_jax.data import imageio

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
    from PIL import Image

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
            resized = Image.fromarray(photo).resize(size, Image.LANCZOS)
            out.append((f"{name}@{scale:g}", np.asarray(resized)))
    return out


# ----------------------------------------------------------------------------- blur model


def _crf_tables(gamma: float) -> np.ndarray:
    return ((np.arange(256, dtype=np.float64) / 255.0) ** gamma).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _inverse_crf_lut(gamma: float) -> np.ndarray:
    return _crf_tables(gamma)


def _trajectory_params(rng: np.random.Generator, size: int) -> np.ndarray:
    """Random smooth camera motion: per-parameter cubic polynomial coefficients.

    Returns (6, 3) coefficients c[k] so that p_k(t) = c1 t + c2 t^2 + c3 t^3 (p(0) = 0) for
    k in (tx, ty, rotation, log-zoom, tilt_x, tilt_y); units are pixels for translation and
    radians / fractions otherwise, before rescaling to the drawn blur length.
    """
    c = rng.normal(size=(6, 3))
    c[:, 1] *= 0.7  # curvature
    c[:, 2] *= 0.5  # wiggle
    c[2] *= 0.8 / size  # rotation: comparable corner displacement to translation
    c[3] *= 0.4 / size  # zoom
    c[4:] *= 0.4 / size**2  # perspective tilt (per pixel of distance)
    # Handshake is dominated by translation-like motion with some rotation; sometimes
    # nearly pure rotation or zoom.
    c[:2] *= rng.uniform(0.3, 1.0)
    return c


def _homographies(c: np.ndarray, t: np.ndarray, centre: float) -> np.ndarray:
    """Homographies (F, 3, 3) mapping output pixel (x, y, 1) to source coordinates."""
    powers = np.stack([t, t**2, t**3], axis=-1)  # (F, 3)
    p = powers @ c.T  # (F, 6)
    tx, ty, rot, logz, gx, gy = p.T
    s = np.exp(logz)
    cos, sin = np.cos(rot) * s, np.sin(rot) * s
    f = t.shape[0]
    h = np.zeros((f, 3, 3))
    # about the centre: x' = A (x - c) + c + t ; then perspective row.
    h[:, 0, 0], h[:, 0, 1] = cos, -sin
    h[:, 1, 0], h[:, 1, 1] = sin, cos
    h[:, 0, 2] = tx + centre - (cos - sin) * centre
    h[:, 1, 2] = ty + centre - (sin + cos) * centre
    h[:, 2, 0], h[:, 2, 1] = gx, gy
    h[:, 2, 2] = 1.0 - gx * centre - gy * centre
    return h


def _apply_h(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """h (F,3,3), pts (P,2) -> (F,P,2)."""
    hom = np.concatenate([pts, np.ones((pts.shape[0], 1))], axis=1)
    out = np.einsum("fij,pj->fpi", h, hom)
    return out[..., :2] / out[..., 2:3]


def _odd(n: int) -> int:
    return n if n % 2 == 1 else n + 1


def synthesize_blur(
    source: np.ndarray,
    crop_size: int,
    rng: np.random.Generator,
    config: SyntheticBlurConfig = SyntheticBlurConfig(),
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render one (blurred, sharp) pair from a sharp source patch.

    Args:
      source: uint8 (crop_size + 2 * m, crop_size + 2 * m, 3) sharp patch, m =
        config.margin(); the output crop is its centre, the border feeds the motion.
      crop_size: output side S.
      rng: numpy Generator; the result is a deterministic function of its state.
      config: blur model knobs.
    Returns:
      blurred uint8 (S,S,3), sharp uint8 (S,S,3) (the middle frame), and a dict with the
      drawn parameters (camera blur length px, number of frames, objects, noise sigma).
    """
    m = config.margin()
    if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
        raise ValueError(f"source must be uint8 (H,W,3), got {source.dtype} {source.shape}")
    if source.shape[0] != crop_size + 2 * m or source.shape[1] != crop_size + 2 * m:
        raise ValueError(
            f"source must be {crop_size + 2 * m}x{crop_size + 2 * m} (crop {crop_size} + 2 x "
            f"margin {m}), got {source.shape[0]}x{source.shape[1]}"
        )
    s = crop_size
    side = s + 2 * m
    lut = _inverse_crf_lut(float(config.gamma))
    lin = lut[source].reshape(side * side, 3)

    # --- camera trajectory, rescaled so that the most moving corner travels `length` px.
    length = rng.uniform(config.min_fraction, 1.0) * config.max_camera_blur * config.strength
    coeffs = _trajectory_params(rng, s)
    dense_t = np.linspace(-0.5, 0.5, 33)
    corners = np.array([[0, 0], [s - 1, 0], [0, s - 1], [s - 1, s - 1], [s / 2, s / 2]], float)
    centre = (s - 1) / 2.0

    def corner_paths(c):
        return _apply_h(_homographies(c, dense_t, centre), corners)  # (33, 5, 2)

    def path_stats(paths):
        disp = paths - corners[None]
        extent = np.max(np.linalg.norm(disp[:, None] - disp[None, :], axis=-1))
        seg = np.linalg.norm(np.diff(paths, axis=0), axis=-1).sum(axis=0).max()
        return extent, seg

    extent, _ = path_stats(corner_paths(coeffs))
    if length > 0 and extent > 1e-9:
        coeffs = coeffs * (length / extent)
        extent, path_len = path_stats(corner_paths(coeffs))
        # nonlinearity (rotation, perspective) can overshoot; shrink once more if needed.
        if extent > m - 1:
            coeffs = coeffs * ((m - 1) / extent)
            extent, path_len = path_stats(corner_paths(coeffs))
    else:
        coeffs = coeffs * 0.0
        path_len = 0.0

    # --- moving objects (soft ellipses textured from elsewhere in the patch).
    objects = []
    if config.strength > 0 and rng.uniform() < config.object_probability:
        for _ in range(int(rng.integers(1, 3))):
            r = rng.uniform(0.1, 0.3, size=2) * s
            centre_o = rng.uniform(0.2, 0.8, size=2) * s
            ang = rng.uniform(0, np.pi)
            obj_len = rng.uniform(0.3, 1.0) * config.max_object_blur * config.strength
            direction = rng.normal(size=2)
            direction /= np.linalg.norm(direction) + 1e-9
            bend = rng.normal(size=2) * 0.3
            offset = rng.uniform(-0.35, 0.35, size=2) * s
            objects.append(dict(r=r, c=centre_o, ang=ang, len=obj_len, dir=direction, bend=bend, off=offset))
    obj_len_max = max([o["len"] for o in objects], default=0.0)

    n_frames = _odd(int(np.ceil(max(path_len, obj_len_max * 1.3) / 1.0)) + 1)
    cap = config.max_frames if config.max_frames % 2 else config.max_frames - 1
    n_frames = int(np.clip(n_frames, 1, max(cap, 1)))
    t = np.linspace(-0.5, 0.5, n_frames) if n_frames > 1 else np.zeros(1)
    hs = _homographies(coeffs, t, centre)
    mid = n_frames // 2
    hs[mid] = np.eye(3)
    hs[mid, 0, 2] = hs[mid, 1, 2] = 0.0

    xs = np.arange(s, dtype=np.float32)
    acc = np.zeros((s, s, 3), np.float32)
    sharp_lin = None
    maxc = side - 1
    for f in range(n_frames):
        h = hs[f].astype(np.float32)
        w = h[2, 0] * xs[None, :] + (h[2, 1] * xs[:, None] + h[2, 2])
        inv_w = 1.0 / w
        qx = (h[0, 0] * xs[None, :] + (h[0, 1] * xs[:, None] + h[0, 2])) * inv_w
        qy = (h[1, 0] * xs[None, :] + (h[1, 1] * xs[:, None] + h[1, 2])) * inv_w
        # scene coordinates in the source patch (+ margin), nearest sample.
        ix = np.clip(np.rint(qx + m), 0, maxc).astype(np.int32)
        iy = np.clip(np.rint(qy + m), 0, maxc).astype(np.int32)
        frame = np.take(lin, iy * side + ix, axis=0)  # (s, s, 3)
        for o in objects:
            d = o["len"] * (o["dir"] * t[f] + o["bend"] * t[f] ** 2)  # d(0) = 0: sharp = mid frame
            # Only the window around the object (camera motion moves it by < margin px).
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
            # soft edge ~1.5 px wide
            alpha = np.clip((1.0 - np.sqrt(u * u + v * v)) * np.float32(min(o["r"]) / 1.5), 0.0, 1.0)
            tx_ = np.clip(np.rint(wx - d[0] + o["off"][0] + m), 0, maxc).astype(np.int32)
            ty_ = np.clip(np.rint(wy - d[1] + o["off"][1] + m), 0, maxc).astype(np.int32)
            tex = np.take(lin, ty_ * side + tx_, axis=0)
            win = frame[ya:yb, xa:xb]
            a = alpha[:, :, None]
            frame[ya:yb, xa:xb] = win + (tex - win) * a
        acc += frame
        if f == mid:
            sharp_lin = frame
    blur_lin = np.minimum(acc * (1.0 / n_frames), 1.0)
    inv_gamma = 1.0 / config.gamma
    blurred = blur_lin ** inv_gamma
    sigma = float(rng.uniform(0.0, config.noise_sigma)) if config.noise_sigma > 0 else 0.0
    if sigma > 0:
        blurred += np.float32(sigma) * rng.standard_normal(size=blurred.shape, dtype=np.float32)
    blurred_u8 = np.clip(np.rint(blurred * 255.0), 0, 255).astype(np.uint8)
    if objects:
        sharp_u8 = np.clip(np.rint(sharp_lin ** inv_gamma * 255.0), 0, 255).astype(np.uint8)
    else:  # exact: the middle frame is the untouched centre of the source
        sharp_u8 = np.ascontiguousarray(source[m : m + s, m : m + s])
    info = {
        "camera_blur_px": float(extent),
        "frames": n_frames,
        "objects": len(objects),
        "noise_sigma": sigma,
    }
    return blurred_u8, sharp_u8, info


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
    crops_per_photo: int = 6,
    crop_size: int = 256,
    seed: int = 0,
    config: SyntheticBlurConfig = SyntheticBlurConfig(),
) -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
    """Fixed, seeded evaluation pairs: ``crops_per_photo`` crops of every photo.

    Each pair depends only on (seed, photo name, crop index), so adding photos never
    changes the existing pairs. Returns a list of (name, blurred, sharp, info) with
    name = "<photo>_<k>", images uint8 (crop_size, crop_size, 3). No augmentation.
    """
    out = []
    for pname, photo in photos:
        stem = pathlib.Path(pname).stem
        if min(photo.shape[:2]) < crop_size:
            raise ValueError(
                f"held-out photo {pname} is {photo.shape[0]}x{photo.shape[1]}, smaller than the test crop "
                f"{crop_size}x{crop_size}; lower config.data.synthetic_test_crop_size or remove the photo"
            )
        for k in range(crops_per_photo):
            rng = np.random.default_rng([seed, _name_seed(stem), k])
            blurred, sharp, info = random_crop_pair(photo, crop_size, rng, config, augment=False)
            info = dict(info, photo=stem, crop_index=k)
            out.append((f"{stem}_{k:02d}", blurred, sharp, info))
    return out


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB, peak 255) between two uint8 images."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


# ----------------------------------------------------------------------------- CLI


def _preview(path: str, strength: float, crop_size: int, rows: int, seed: int, photo_dir: str | None) -> None:
    from PIL import Image

    from aspdc_jax.data.imageio import IMAGE_EXTENSIONS

    out = pathlib.Path(path)
    if out.is_dir():
        raise ValueError(f"--preview {path} is a folder; give a file name such as {out / 'preview.png'}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--preview {path}: the folder {out.parent} does not exist")
    if out.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"--preview {path}: give an image file name ending in .png (or .jpg)")
    config = SyntheticBlurConfig(strength=strength)
    if photo_dir is None:
        photos = builtin_photos("train") + builtin_photos("test")
    else:
        photos = load_photos(photo_dir)  # every photo: a preview needs no held-out split
    small = [f"{n} ({p.shape[0]}x{p.shape[1]})" for n, p in photos if min(p.shape[:2]) < crop_size]
    if small:
        raise ValueError(f"photos smaller than --crop_size {crop_size}: {', '.join(small)}")
    rng = np.random.default_rng(seed)
    tiles = []
    psnrs = []
    for r in range(rows):
        name, photo = photos[r % len(photos)]
        blurred, sharp, info = random_crop_pair(photo, crop_size, rng, config)
        psnrs.append(psnr_u8(blurred, sharp))
        print(
            f"{name:18s} blur {info['camera_blur_px']:5.1f}px frames {info['frames']:2d} "
            f"objects {info['objects']} noise {info['noise_sigma'] * 255:4.2f}/255 "
            f"PSNR(blurred, sharp) {psnrs[-1]:5.2f} dB"
        )
        tiles.append(np.concatenate([sharp, np.full((crop_size, 4, 3), 255, np.uint8), blurred], axis=1))
    sep = np.full((4, tiles[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([x for t in tiles for x in (t, sep)][:-1], axis=0)
    Image.fromarray(grid).save(path)
    print(f"wrote {path}: {rows} rows of sharp (left) | blurred (right); mean PSNR {np.mean(psnrs):.2f} dB")


def main(argv: Sequence[str] | None = None) -> int:
    parser = FlagParser(
        prog="python -m aspdc_jax.data.synthetic",
        description="Preview the built-in synthetic motion blur: a grid of sharp | blurred crops.",
    )
    parser.add_argument("--preview", required=True, help="output PNG: grid of sharp | blurred pairs")
    parser.add_argument("--strength", type=float, default=1.0, help="blur strength multiplier, >= 0 (default: %(default)s)")
    parser.add_argument("--crop_size", type=int, default=256, help="side of each crop in pixels (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=6, help="number of examples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--photo_dir", default=None, help="folder of sharp photos (default: the built-in ones)")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.crop_size < 1 or not (np.isfinite(args.strength) and args.strength >= 0):
        parser.error("--rows and --crop_size must be >= 1 and --strength a finite number >= 0")
    try:
        _preview(args.preview, args.strength, args.crop_size, args.rows, args.seed, args.photo_dir)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
