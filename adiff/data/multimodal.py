"""Multimodal benchmark constructions from real data (no public multimodal AD set is reachable).

1. Image + caption (`image_caption_benchmark`, `load_mnist_captions`): each digit image is paired
   with a short caption naming its digit, drawn from CAPTION_TEMPLATES (wording variety), tokenised
   with VOCAB (token 0 = padding). Training pairs are normal. Test anomalies, three kinds:
   - "mismatch": a normal image with a caption naming another digit (each modality normal alone);
   - "corrupt_image": a correct caption with an image whose random `patch` x `patch` square is
     replaced by uniform noise in [0, 1];
   - "garbled_caption": a normal image with a caption of random vocabulary words, of a template's
     length, that still contains the correct digit word at a random position.
2. SKAB sensor groups (`load_skab_groups`): the pump test bed's 8 channels split into "vibration"
   (Accelerometer1RMS, Accelerometer2RMS) and "process" (Current, Pressure, Temperature,
   Thermocouple, Voltage, Volume Flow RateRMS); samples are windows of `length` steps; training
   windows come from anomaly-free.csv, test windows from the labelled runs, a window is anomalous
   when its centre step is labelled anomalous (kind "skab").
"""
from __future__ import annotations

import os
import pathlib
from typing import Dict, NamedTuple, Sequence

import numpy as np
import pandas as pd

from adiff.data.image import load_mnist
from adiff.data.timeseries import skab_runs, window_starts

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (
    "a photo of the digit {d}",
    "handwritten {d}",
    "this is a {d}",
    "the number {d}",
    "an image showing a {d}",
    "digit {d} written by hand",
    "a handwritten number {d}",
)
_WORDS = sorted({w for t in CAPTION_TEMPLATES for w in t.replace("{d}", "").split()})
VOCAB = ("<pad>",) + tuple(_WORDS) + DIGITS
MAX_LEN = max(len(t.split()) for t in CAPTION_TEMPLATES)
VIBRATION = ("Accelerometer1RMS", "Accelerometer2RMS")
PROCESS = ("Current", "Pressure", "Temperature", "Thermocouple", "Voltage", "Volume Flow RateRMS")
KINDS = ("mismatch", "corrupt_image", "garbled_caption")

__all__ = ["MultimodalSplit", "DIGITS", "CAPTION_TEMPLATES", "VOCAB", "MAX_LEN", "VIBRATION", "PROCESS",
           "KINDS", "tokenize", "captions", "image_caption_benchmark", "load_mnist_captions",
           "load_skab_groups"]


class MultimodalSplit(NamedTuple):
    """A multimodal benchmark split.

    Attributes:
      train: dict of training arrays (normal samples), common first dimension.
      test: dict of test arrays, common first dimension N.
      labels: [N] 1 = anomaly.
      kinds: [N] str, "normal" or the anomaly kind.
    """

    train: Dict[str, np.ndarray]
    test: Dict[str, np.ndarray]
    labels: np.ndarray
    kinds: np.ndarray


def tokenize(text: str) -> np.ndarray:
    """Caption -> [MAX_LEN] int32 tokens (VOCAB indices, 0-padded). Unknown words raise ValueError."""
    index = {w: i for i, w in enumerate(VOCAB)}
    words = text.split()
    if len(words) > MAX_LEN:
        raise ValueError(f"caption {text!r} has {len(words)} words; at most {MAX_LEN}")
    try:
        ids = [index[w] for w in words]
    except KeyError as e:
        raise ValueError(f"caption {text!r} has a word outside VOCAB: {e}") from None
    return np.array(ids + [0] * (MAX_LEN - len(ids)), np.int32)


def captions(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random-template captions naming `digits` [N] -> tokens [N, MAX_LEN]."""
    t = rng.integers(0, len(CAPTION_TEMPLATES), len(digits))
    return np.stack([tokenize(CAPTION_TEMPLATES[j].format(d=DIGITS[int(d)])) for j, d in zip(t, digits)])


def _garble(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((len(digits), MAX_LEN), np.int32)
    first_digit = len(VOCAB) - len(DIGITS)
    for i, d in enumerate(digits):
        n = len(CAPTION_TEMPLATES[rng.integers(0, len(CAPTION_TEMPLATES))].split())
        out[i, :n] = rng.integers(1, len(VOCAB), n)
        out[i, rng.integers(0, n)] = first_digit + int(d)
    return out


def _corrupt(images: np.ndarray, rng: np.random.Generator, patch: int) -> np.ndarray:
    out = images.copy()
    h, w = images.shape[1:3]
    for i in range(len(out)):
        r, c = rng.integers(0, h - patch + 1), rng.integers(0, w - patch + 1)
        out[i, r:r + patch, c:c + patch] = rng.uniform(0, 1, (patch, patch) + images.shape[3:])
    return out


def image_caption_benchmark(images: np.ndarray, labels: np.ndarray, *, seed: int = 0, n_train: int = 4000,
                            n_test_normal: int = 1000, n_per_kind: int = 300, patch: int = 10) -> MultimodalSplit:
    """Builds the image + caption benchmark from labelled digit images.

    Args:
      images: [N, H, W] or [N, H, W, 1] images (uint8 0..255 or float in [0, 1]).
      labels: [N] digits 0..9.
      seed: seeds the split, the captions and the anomalies.
      n_train: normal training pairs.
      n_test_normal: normal test pairs.
      n_per_kind: test anomalies of each kind in KINDS.
      patch: side of the noise square of "corrupt_image".

    Returns:
      MultimodalSplit with {"image": float32 [N, H, W, 1] in [0, 1], "caption": int32 [N, MAX_LEN]}.
    """
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"images must be [N, H, W(, 1)] matching labels [N]; got {images.shape} and {labels.shape}")
    images = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
    need = n_train + n_test_normal + len(KINDS) * n_per_kind
    if need > len(images):
        raise ValueError(f"the benchmark needs {need} images, got {len(images)}")
    if min(patch, n_train, n_test_normal, n_per_kind) < 1 or patch > min(images.shape[1:3]):
        raise ValueError("n_train, n_test_normal, n_per_kind and patch must be >= 1 (patch within the image)")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(images))
    tr, rest = idx[:n_train], idx[n_train:need]
    train = {"image": images[tr], "caption": captions(labels[tr], rng)}
    parts_img, parts_cap, kinds = [], [], []
    te_n, rest = rest[:n_test_normal], rest[n_test_normal:]
    parts_img.append(images[te_n]); parts_cap.append(captions(labels[te_n], rng)); kinds += ["normal"] * len(te_n)
    for j, kind in enumerate(KINDS):
        ids = rest[j * n_per_kind:(j + 1) * n_per_kind]
        img, dig = images[ids], labels[ids]
        if kind == "mismatch":
            cap = captions((dig + rng.integers(1, 10, len(dig))) % 10, rng)
        elif kind == "corrupt_image":
            img, cap = _corrupt(img, rng, patch), captions(dig, rng)
        else:
            cap = _garble(dig, rng)
        parts_img.append(img); parts_cap.append(cap); kinds += [kind] * len(ids)
    kinds = np.array(kinds)
    test = {"image": np.concatenate(parts_img), "caption": np.concatenate(parts_cap)}
    return MultimodalSplit(train, test, (kinds != "normal").astype(np.int64), kinds)


def load_mnist_captions(root: str | os.PathLike, **kwargs) -> MultimodalSplit:
    """The image + caption benchmark on the MNIST test split in `root` (t10k idx files, .gz or not)."""
    root = pathlib.Path(root)
    def find(stem):
        for name in (stem + ".gz", stem):
            for p in [root / name, *root.rglob(name)]:
                if p.is_file():
                    return p
        raise ValueError(f"{stem}(.gz) not found under {str(root)!r}")
    images, labels = load_mnist(find("t10k-images-idx3-ubyte"), find("t10k-labels-idx1-ubyte"))
    return image_caption_benchmark(images, labels, **kwargs)


def _read(path: pathlib.Path) -> pd.DataFrame:
    return pd.read_csv(path, sep=";")


def load_skab_groups(root: str | os.PathLike, *, length: int = 32, train_stride: int = 4,
                     test_stride: int = 8, runs: Sequence[str] | None = None) -> MultimodalSplit:
    """SKAB as two modalities, vibration [N, length, 2] and process [N, length, 6] windows.

    Args:
      root: the SKAB directory (see adiff.data.timeseries.load_skab).
      length: window length (steps of 1 s).
      train_stride: stride of the training windows (anomaly-free.csv).
      test_stride: stride of the test windows (every labelled run, windows never cross runs).
      runs: labelled runs to use (default: all, see `skab_runs`).

    Returns:
      MultimodalSplit with {"vibration", "process"} raw sensor windows (float32), labels from the
      window's centre step, kinds "normal" / "skab".
    """
    root = pathlib.Path(root)
    data = root / "data" if (root / "data").is_dir() else root
    runs = list(runs) if runs is not None else skab_runs(root)

    def windows(df, stride):
        starts = window_starts(len(df), length, stride)
        vib = df[list(VIBRATION)].to_numpy(np.float32)
        pro = df[list(PROCESS)].to_numpy(np.float32)
        idx = starts[:, None] + np.arange(length)[None]
        return vib[idx], pro[idx], starts + length // 2

    v, p, _ = windows(_read(data / "anomaly-free" / "anomaly-free.csv"), train_stride)
    train = {"vibration": v, "process": p}
    vs, ps, ys = [], [], []
    for run in runs:
        df = _read(data / f"{run}.csv")
        v, p, centre = windows(df, test_stride)
        vs.append(v); ps.append(p); ys.append(df["anomaly"].to_numpy()[centre] > 0.5)
    y = np.concatenate(ys).astype(np.int64)
    return MultimodalSplit(train, {"vibration": np.concatenate(vs), "process": np.concatenate(ps)}, y,
                           np.where(y == 1, "skab", "normal"))
