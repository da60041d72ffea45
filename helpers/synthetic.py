"""A synthetic stand-in for HAM10000, in the real layout: the offline default for demos, CI and tests.

Each class gets a recognisable visual signature (colour, border irregularity, texture, structures such
as vessels or lobules) so that a small CNN can learn it, while lesions vary in size, shape, position and skin
tone, and each lesion is photographed several times (shifted, rotated, re-lit), as in the real dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from helpers.classes import CLASS_NAMES

DEFAULT_N_IMAGES = 600
IMAGE_SIZE = (600, 450)  # width, height, as HAM10000
_DRAW_SIZE = (300, 225)  # drawn at half size, then upsampled: fast and smooth
REAL_SHARES = {
    "akiec": 0.033,
    "bcc": 0.051,
    "bkl": 0.110,
    "df": 0.011,
    "mel": 0.111,
    "nv": 0.669,
    "vasc": 0.014,
}
MASK_DIR = "HAM10000_segmentations_lesion_tschandl"
"""The Dataverse folder name of the lesion masks (``<image_id>_segmentation.png``)."""
MIN_SHARE = 0.05
_STAMP = "synthetic.json"

# class -> (base RGB, radius range as a fraction of the short side, border irregularity, texture strength)
_STYLE = {
    "akiec": ((196, 110, 100), (0.22, 0.32), 0.10, 0.30),
    "bcc": ((222, 168, 170), (0.20, 0.30), 0.06, 0.10),
    "bkl": ((170, 120, 75), (0.24, 0.36), 0.12, 0.20),
    "df": ((150, 100, 70), (0.12, 0.18), 0.03, 0.08),
    "mel": ((70, 42, 30), (0.28, 0.40), 0.24, 0.25),
    "nv": ((125, 80, 50), (0.16, 0.28), 0.03, 0.08),
    "vasc": ((150, 40, 70), (0.14, 0.24), 0.08, 0.10),
}
_SKIN = [(236, 200, 180), (224, 180, 150), (205, 160, 125), (240, 210, 195)]
_AGE_MEAN = {"akiec": 67, "bcc": 66, "bkl": 59, "df": 52, "mel": 61, "nv": 43, "vasc": 50}
_DX_TYPE = {"mel": "histo", "bcc": "histo", "akiec": "histo", "df": "consensus", "vasc": "consensus"}
_SOURCES = {"vidir_molemax": 0.40, "vidir_modern": 0.33, "rosendahl": 0.22, "vienna_dias": 0.05}
"""The Dataverse metadata's ``dataset`` column (source clinic) with HAM10000's shares, drawn per lesion."""
_VERSION = 3  # 2: the dataset column; 3: lesion masks
_SITES = ["back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "scalp", "neck"]


def class_counts(n_images: int) -> dict[str, int]:
    """Images per class: the real HAM10000 shares with a 5% floor (rare classes exist); nv takes the rest."""
    counts = {c: max(round(n_images * s), round(n_images * MIN_SHARE)) for c, s in REAL_SHARES.items()}
    counts["nv"] = n_images - sum(v for c, v in counts.items() if c != "nv")
    if counts["nv"] < 1:
        raise ValueError(f"n_images={n_images} is too small; use at least 30.")
    return counts


def make_synthetic_dataset(out_dir: str | Path, n_images: int = DEFAULT_N_IMAGES, seed: int = 0) -> Path:
    """Write a synthetic dataset in the HAM10000 layout and return its folder.

    ``out_dir/HAM10000_metadata.csv`` (columns ``lesion_id, image_id, dx, dx_type, age, sex, localization,
    dataset``, as the Dataverse file), 600×450 JPEGs split over ``HAM10000_images_part_1/`` and
    ``HAM10000_images_part_2/``, and each image's lesion mask in ``HAM10000_segmentations_lesion_tschandl/``
    (the lesion as drawn: white on black). Deterministic for a seed. The folder is built aside and moved into
    place: an interrupted run leaves nothing half-made.
    """
    if not isinstance(n_images, int) or n_images < 30:
        raise ValueError(f"n_images must be an int ≥ 30, got {n_images!r}.")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = _metadata_rows(class_counts(n_images), rng)
    _add_sources(rows, np.random.default_rng([seed, 1]))  # its own stream: the images do not change
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-") as tmp:
        work = Path(tmp) / "dataset"
        for folder in ("HAM10000_images_part_1", "HAM10000_images_part_2", MASK_DIR):
            (work / folder).mkdir(parents=True)
        lesion_params: dict[str, dict] = {}
        jobs = []
        for i, row in enumerate(rows):
            params = lesion_params.setdefault(row["lesion_id"], _lesion_params(row["dx"], rng))
            part = 1 if i < len(rows) // 2 else 2
            path = work / f"HAM10000_images_part_{part}" / f"{row['image_id']}.jpg"
            jobs.append((row["dx"], params, int(rng.integers(2**63)), path))
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # numpy and PIL release the GIL
            list(pool.map(lambda job: _write_image(*job), jobs))
        pd.DataFrame(rows).to_csv(work / "HAM10000_metadata.csv", index=False)
        (work / _STAMP).write_text(json.dumps(_stamp(n_images, seed)))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    return out_dir


def ensure_synthetic_dataset(out_dir: str | Path, n_images: int = DEFAULT_N_IMAGES, seed: int = 0) -> Path:
    """Return ``out_dir`` holding the synthetic dataset for these settings, generating it if needed."""
    out_dir = Path(out_dir)
    stamp = out_dir / _STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == _stamp(n_images, seed):
        return out_dir
    print(f"Generating the synthetic dataset ({n_images} images) in {out_dir} ...")
    return make_synthetic_dataset(out_dir, n_images=n_images, seed=seed)


def _stamp(n_images: int, seed: int) -> dict:
    return {"n_images": n_images, "seed": seed, "version": _VERSION}


def _add_sources(rows: list[dict], rng: np.random.Generator) -> None:
    """A source clinic per lesion (all images of a lesion from one source)."""
    lesions = sorted({row["lesion_id"] for row in rows})
    drawn = rng.choice(list(_SOURCES), size=len(lesions), p=list(_SOURCES.values()))
    source = dict(zip(lesions, drawn, strict=True))
    for row in rows:
        row["dataset"] = str(source[row["lesion_id"]])


def _write_image(dx: str, params: dict, seed: int, path: Path) -> None:
    image, mask = _draw(dx, params, np.random.default_rng(seed))
    image.save(path, quality=90)
    mask.save(path.parent.parent / MASK_DIR / f"{path.stem}_segmentation.png")


def _metadata_rows(counts: dict[str, int], rng: np.random.Generator) -> list[dict]:
    rows, lesion_no = [], 0
    for dx in CLASS_NAMES:
        remaining = counts[dx]
        while remaining > 0:
            n = min(remaining, int(rng.choice([1, 2, 3, 4], p=[0.5, 0.3, 0.15, 0.05])))
            lesion = _lesion_meta(dx, rng)
            lesion["lesion_id"] = f"HAM_{lesion_no:07d}"
            rows += [dict(lesion) for _ in range(n)]
            lesion_no += 1
            remaining -= n
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    for i, row in enumerate(rows):
        row["image_id"] = f"ISIC_{9_000_000 + i:07d}"
    columns = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    return [{c: row[c] for c in columns} for row in rows]


def _lesion_meta(dx: str, rng: np.random.Generator) -> dict:
    age = float(np.clip(5 * round(rng.normal(_AGE_MEAN[dx], 12) / 5), 5, 85))
    return {
        "dx": dx,
        "dx_type": _DX_TYPE.get(dx, str(rng.choice(["histo", "follow_up", "consensus"], p=[0.4, 0.4, 0.2]))),
        "age": age if rng.random() > 0.02 else np.nan,
        "sex": str(rng.choice(["male", "female", "unknown"], p=[0.53, 0.45, 0.02])),
        "localization": str(rng.choice(_SITES)),
    }


def _lesion_params(dx: str, rng: np.random.Generator) -> dict:
    base, (r_lo, r_hi), irregular, texture = _STYLE[dx]
    return {
        "base": np.array(base, float) * rng.uniform(0.85, 1.15),
        "skin": np.array(_SKIN[rng.integers(len(_SKIN))], float),
        "radius": rng.uniform(r_lo, r_hi),
        "aspect": rng.uniform(0.7, 1.0),
        "harmonics": rng.normal(0, irregular, size=6) / np.arange(1, 7) ** 0.5,
        "phases": rng.uniform(0, 2 * np.pi, size=6),
        "texture": texture,
        "seed": int(rng.integers(2**31)),
    }


def draw_lesion(dx: str, params: dict, rng: np.random.Generator) -> Image.Image:
    """One photograph of a lesion: skin, the lesion blob with its class's structures, vignette, noise."""
    return _draw(dx, params, rng)[0]


def _draw(dx: str, params: dict, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """:func:`draw_lesion`'s photograph and its lesion mask (8-bit, 255 inside the drawn border)."""
    w, h = _DRAW_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)  # float32 halves the work; 8-bit output needs no more
    cx, cy = w / 2 + rng.normal(0, w * 0.05), h / 2 + rng.normal(0, h * 0.05)
    angle = rng.uniform(0, 2 * np.pi)
    radius = params["radius"] * h * rng.uniform(0.92, 1.08)
    dx_, dy_ = xx - cx, yy - cy
    u = dx_ * np.cos(angle) + dy_ * np.sin(angle)
    v = (-dx_ * np.sin(angle) + dy_ * np.cos(angle)) / params["aspect"]
    theta, rho = np.arctan2(v, u), np.hypot(u, v)
    k = np.arange(1, 7)[:, None, None]
    border = radius * (
        1 + (params["harmonics"][:, None, None] * np.sin(k * theta + params["phases"][:, None, None])).sum(0)
    )
    inside = np.clip((border - rho) / (0.08 * radius) + 0.5, 0, 1)[..., None]

    lesion_rng = np.random.default_rng(params["seed"])
    texture = _smooth_noise(lesion_rng, h, w, scale=8) * params["texture"]
    colour = params["base"].astype(np.float32) * (1 + texture[..., None])
    colour = _class_structures(dx, colour, rho / radius, theta, lesion_rng)
    skin = params["skin"].astype(np.float32) * (1 + 0.04 * _smooth_noise(rng, h, w, scale=20)[..., None])
    img = skin * (1 - inside) + colour * inside
    img = _overlay_drawings(dx, img, (cx, cy), radius, angle, lesion_rng)
    vignette = (
        1 - 0.45 * np.clip(np.hypot(xx - w / 2, yy - h / 2) / (0.62 * w) - 0.55, 0, 1)[..., None] ** 1.5
    )
    img = img * vignette * rng.uniform(0.9, 1.1) + 4 * rng.standard_normal(img.shape, dtype=np.float32)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7))
    mask = Image.fromarray(np.where(inside[..., 0] >= 0.5, 255, 0).astype(np.uint8))
    return out.resize(IMAGE_SIZE, Image.BILINEAR), mask.resize(IMAGE_SIZE, Image.NEAREST)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    small = rng.normal(0, 1, size=(max(2, h // scale), max(2, w // scale))).astype(np.float32)
    img = Image.fromarray(small, mode="F").resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _class_structures(dx: str, colour: np.ndarray, r: np.ndarray, theta: np.ndarray, rng) -> np.ndarray:
    """Colour structures that live inside the lesion (r is the radius fraction)."""
    if dx == "mel":  # blue-grey veil on one side, darker centre, black dots
        veil = np.clip(np.cos(theta - rng.uniform(0, 2 * np.pi)), 0, 1)[..., None] * (r < 0.8)[..., None]
        colour = colour * (1 - 0.6 * veil) + np.array([90, 100, 130]) * 0.6 * veil
        colour = colour * (0.7 + 0.3 * np.clip(r, 0, 1))[..., None]
    elif dx == "nv":  # regular pigment network
        net = (np.sin(theta * 24) * np.sin(r * 40) > 0.7)[..., None]
        colour = colour * (1 - 0.25 * net)
    elif dx == "df":  # white central scar
        colour = np.where((r < 0.45)[..., None], np.array([235, 225, 215]), colour)
    elif dx == "bkl":  # light crypts
        colour = colour + 60 * (_smooth_noise(rng, *r.shape, scale=3) > 1.3)[..., None]
    elif dx == "akiec":  # white scale
        colour = colour + 90 * (rng.random(r.shape) > 0.93)[..., None]
    return colour


def _overlay_drawings(dx: str, img: np.ndarray, centre, radius: float, angle: float, rng) -> np.ndarray:
    """Line and blob structures: bcc vessels, vasc lobules, mel dots."""
    if dx not in ("bcc", "vasc", "mel"):
        return img
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    cx, cy = centre
    if dx == "bcc":
        for _ in range(rng.integers(4, 8)):
            pts, a = [(cx, cy)], rng.uniform(0, 2 * np.pi)
            for _ in range(5):
                a += rng.normal(0, 0.6)
                step = radius * 0.18
                pts.append((pts[-1][0] + step * np.cos(a), pts[-1][1] + step * np.sin(a)))
            draw.line(pts, fill=(200, 30, 40), width=2)
    elif dx == "vasc":
        for _ in range(rng.integers(3, 7)):
            r, a = radius * rng.uniform(0, 0.6), rng.uniform(0, 2 * np.pi)
            x, y, s = cx + r * np.cos(a + angle), cy + r * np.sin(a + angle), radius * rng.uniform(0.2, 0.35)
            draw.ellipse(
                [x - s, y - s, x + s, y + s], fill=(120 + rng.integers(60), 10, 50 + rng.integers(60))
            )
    else:
        for _ in range(rng.integers(6, 15)):
            r, a = radius * rng.uniform(0, 0.8), rng.uniform(0, 2 * np.pi)
            x, y, s = cx + r * np.cos(a), cy + r * np.sin(a), rng.uniform(1.5, 3.5)
            draw.ellipse([x - s, y - s, x + s, y + s], fill=(20, 15, 15))
    return np.asarray(canvas, dtype=float)
