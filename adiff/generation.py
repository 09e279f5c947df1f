"""Anomaly generation with conditional diffusion models (the survey's "anomaly generation" part).

`AnomalyGenerator(modality=...)` trains one conditional denoiser (eps-prediction, VP SDE) and
samples anomalies from it with classifier-free guidance (CFG):

- "image": a UNet on [B, H, W, C] in [-1, 1], conditioned on a mask channel (where the defect
  goes) and a one-hot anomaly type broadcast over the image. Normal images are trained with a
  mask drawn from the shape prior and the label "normal"; defect images with their real masks and
  types. `generate` inpaints a defect into normal `base` images inside given or sampled masks with
  masked DDIM (pixels outside the mask are copied from `base` exactly).
- "series": a TemporalNet on windows [B, L, C], conditioned on a time mask and a one-hot type.
  Without labelled anomalies, training anomalies of four parametric types ("spike",
  "level_shift", "pattern_change", "noise_burst") are injected into normal windows; with labelled
  anomalies those are used instead. `generate` regenerates a masked segment of normal windows.
- "table": a ResidualMLP on standardised rows conditioned on a one-hot class. With labelled
  anomalies it is class-conditioned (CFG toward the anomaly class). Without any, the unsupervised
  mode samples low-density regions by guiding a broad Gaussian reference away from the normal
  score: s = s_ref + w (s_ref - s_normal).

CFG: with probability `p_uncond` the label is replaced by a null label during training; at
sampling eps = (1 + w) eps(x, c) - w eps(x, null) with w = `guidance` (w = 0: plain conditional).
The mask channel is structural and is never dropped.

`MaskPrior` fits ellipse statistics (semi-axes from second moments, orientation) of real masks
and rasterises new ones; `cut_paste` is the naive baseline; `write_dataset` writes a generated
set to disk (PNG or npz + a JSON manifest, no pickle).

Persistence: `gen.save(path)` / `AnomalyGenerator.load(path)` store a directory with
`adiff.json` (format "adiff-generator": constructor parameters, shapes, label names, normalisation,
mask prior) and `arrays/` (orbax, the EMA network parameters), the convention of the detectors
(`adiff.detectors.base`); nothing is pickled. `augment(X_normal, gen, n=...)` returns the normal
data plus `n` generated anomalies with 0/1 labels, ready for a supervised model.
"""
from __future__ import annotations

import inspect
import json
import os
import pathlib
import time
from typing import Any, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from adiff import sde as sde_lib
from adiff import solvers, validation
from adiff.losses import dsm_loss
from adiff.nets.mlp import ResidualMLP
from adiff.nets.temporal import TemporalNet
from adiff.nets.unet import UNet
from adiff.typing import Array

__all__ = ["AnomalyGenerator", "GenerationOutput", "MaskPrior", "SERIES_TYPES", "augment",
           "cut_paste", "inject_series_anomaly", "write_dataset"]

MODALITIES = ("image", "series", "table")
FORMAT = "adiff-generator"
VERSION = 1
_RANK = {"image": 4, "series": 3, "table": 2}
SERIES_TYPES = ("spike", "level_shift", "pattern_change", "noise_burst")
DEFAULT_TRAIN_STEPS = {"image": 1000, "series": 1000, "table": 20000}


@flax.struct.dataclass
class GenerationOutput:
    """Generated anomalies.

    Attributes:
      samples: images [N, H, W, C] float32 in [0, 1]; series windows [N, L, C] or table rows
        [N, D] in the original units.
      masks: images [N, H, W] uint8 (1 = generated region); series [N, L] uint8 (per-step
        anomaly labels); None for tables.
      labels: [N] int64 anomaly-type index into `label_names` (0 is "normal").
      label_names: the type names, static.
    """

    samples: np.ndarray  # [N, ...]
    masks: Optional[np.ndarray]  # [N, H, W] / [N, L] uint8 or None
    labels: np.ndarray  # [N] int64
    label_names: Tuple[str, ...] = flax.struct.field(pytree_node=False, default=())


# ------------------------------------------------------------------------------------------------
# mask shape prior
# ------------------------------------------------------------------------------------------------
def _ellipse_params(mask: np.ndarray) -> Optional[Tuple[float, float, float]]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    pts = np.stack([ys, xs], 1).astype(np.float64)
    cov = np.cov(pts.T) if ys.size > 1 else np.zeros((2, 2))
    evals, evecs = np.linalg.eigh(cov + 0.25 * np.eye(2))  # + pixel-size variance (1/12 ~ .25)
    a, b = 2.0 * np.sqrt(evals[::-1])  # uniform ellipse: variance along an axis = r^2 / 4
    theta = float(np.arctan2(evecs[1, -1], evecs[0, -1]))
    return float(a), float(b), theta


def _rasterize(h: int, w: int, cy: float, cx: float, a: float, b: float, theta: float
               ) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(theta), np.sin(theta)
    u = dy * c + dx * s
    v = -dy * s + dx * c
    m = (u / max(a, 0.5)) ** 2 + (v / max(b, 0.5)) ** 2 <= 1.0
    if not m.any():
        m[int(np.clip(round(cy), 0, h - 1)), int(np.clip(round(cx), 0, w - 1))] = True
    return m.astype(np.uint8)


@flax.struct.dataclass
class MaskPrior:
    """Ellipse shape prior fitted to real masks (one ellipse per mask, by second moments).

    Attributes:
      axes: [M, 2] semi-axes (major, minor) as fractions of the image height/width.
      angles: [M] orientations (radians).
      labels: [M] type index of each fitted mask.
      jitter: log-normal scale jitter of the axes and normal jitter of the angle (std).
    """

    axes: np.ndarray  # [M, 2]
    angles: np.ndarray  # [M]
    labels: np.ndarray  # [M] int64
    jitter: float = flax.struct.field(pytree_node=False, default=0.2)

    @classmethod
    def fit(cls, masks: np.ndarray, labels: Optional[np.ndarray] = None, *,
            jitter: float = 0.2) -> "MaskPrior":
        """Fits the prior.

        Args:
          masks: [N, H, W] 0/1 masks (empty masks are skipped).
          labels: optional [N] integer types.
          jitter: std of the log-axis and angle jitter used by `sample`.

        Returns:
          A MaskPrior (a default small-blob prior when every mask is empty).
        """
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"masks must have shape [N, H, W], got shape {masks.shape}")
        labels = np.zeros(len(masks), np.int64) if labels is None else np.asarray(labels, np.int64)
        h, w = masks.shape[1:]
        axes, angles, labs = [], [], []
        for m, lab in zip(masks, labels):
            p = _ellipse_params(m > 0)
            if p is not None:
                axes.append([p[0] / h, p[1] / w])
                angles.append(p[2])
                labs.append(lab)
        if not axes:
            axes, angles, labs = [[0.15, 0.1]], [0.0], [int(labels[0]) if len(labels) else 1]
        return cls(axes=np.asarray(axes, np.float64), angles=np.asarray(angles, np.float64),
                   labels=np.asarray(labs, np.int64), jitter=float(jitter))

    def sample(self, rng: np.random.Generator, n: int, shape: Tuple[int, int],
               label: Optional[np.ndarray] = None) -> np.ndarray:
        """Samples `n` masks [n, H, W] uint8 (of the given types where the prior has them)."""
        h, w = shape
        out = np.zeros((n, h, w), np.uint8)
        for i in range(n):
            pool = np.arange(len(self.axes))
            if label is not None:
                same = np.flatnonzero(self.labels == int(label[i]))
                pool = same if same.size else pool
            j = rng.choice(pool)
            a = self.axes[j, 0] * h * np.exp(self.jitter * rng.normal())
            b = self.axes[j, 1] * w * np.exp(self.jitter * rng.normal())
            a, b = min(a, 0.45 * h), min(b, 0.45 * w)
            theta = self.angles[j] + self.jitter * rng.normal()
            cy = rng.uniform(min(a, h / 2), max(h - a, h / 2))
            cx = rng.uniform(min(b, w / 2), max(w - b, w / 2))
            out[i] = _rasterize(h, w, cy, cx, a, b, theta)
        return out


# ------------------------------------------------------------------------------------------------
# baselines and parametric series anomalies
# ------------------------------------------------------------------------------------------------
def cut_paste(rng: np.random.Generator, images: np.ndarray, *, min_frac: float = 0.1,
              max_frac: float = 0.3) -> Tuple[np.ndarray, np.ndarray]:
    """Naive cut-paste augmentation: a random rectangle of another image pasted elsewhere.

    Args:
      rng: numpy Generator.
      images: [N, H, W, C] images (any dtype).
      min_frac, max_frac: side lengths as fractions of the image side.

    Returns:
      (images [N, H, W, C] same dtype, masks [N, H, W] uint8).
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape [N, H, W, C], got shape {images.shape}")
    n, h, w, _ = images.shape
    out, masks = images.copy(), np.zeros((n, h, w), np.uint8)
    for i in range(n):
        ph = max(1, int(rng.uniform(min_frac, max_frac) * h))
        pw = max(1, int(rng.uniform(min_frac, max_frac) * w))
        src = images[rng.integers(n)]
        y0, x0 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        y1, x1 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        out[i, y1:y1 + ph, x1:x1 + pw] = src[y0:y0 + ph, x0:x0 + pw]
        masks[i, y1:y1 + ph, x1:x1 + pw] = 1
    return out, masks


def inject_series_anomaly(rng: np.random.Generator, window: np.ndarray, kind: str, *,
                          start: int, length: int, scale: float = 1.0) -> np.ndarray:
    """Injects a parametric anomaly of type `kind` into a standardised window [L, C].

    Args:
      rng: numpy Generator.
      window: [L, C] window (roughly unit scale).
      kind: one of SERIES_TYPES.
      start, length: the anomalous segment [start, start + length).
      scale: magnitude multiplier.

    Returns:
      The modified copy [L, C].
    """
    if kind not in SERIES_TYPES:
        raise ValueError(f"kind must be one of {SERIES_TYPES}, got {kind!r}")
    x = np.array(window, np.float64, copy=True)
    seg = slice(start, start + length)
    c = x.shape[1]
    sign = rng.choice([-1.0, 1.0], size=c)
    if kind == "spike":
        pos = start + rng.integers(length)
        x[pos] += sign * scale * rng.uniform(3.0, 5.0, c)
    elif kind == "level_shift":
        x[seg] += sign * scale * rng.uniform(1.5, 3.0, c)
    elif kind == "pattern_change":
        tt = np.arange(length)[:, None]
        period = rng.uniform(3.0, 8.0)
        x[seg] = x[seg].mean(0) + scale * 1.5 * np.sin(2 * np.pi * tt / period + rng.uniform(0, 6))
    else:  # noise_burst
        x[seg] += scale * rng.normal(0.0, 1.5, (length, c))
    return x


# ------------------------------------------------------------------------------------------------
# the generator
# ------------------------------------------------------------------------------------------------
def _check_n(n: int, shape: Tuple[int, ...]) -> None:
    """A positive sample count whose output fits the size limit (checked before allocating)."""
    if n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    total = int(n) * int(np.prod(shape))
    if total > validation.MAX_ELEMENTS:
        raise ValueError(f"n={n} samples of shape {tuple(shape)} would hold {total:,} values; the "
                         f"limit is {validation.MAX_ELEMENTS:,} (generate in several calls)")


def _as_float(x: Any, name: str, ndim: int) -> np.ndarray:
    validation.check_size(x, name=name)  # before any copy: a huge request is a ValueError
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (no NaN/inf)")
    return arr


class AnomalyGenerator:
    """Mask- and type-conditioned diffusion anomaly generator with classifier-free guidance.

    Example:
      gen = AnomalyGenerator(modality="image", seed=0).fit(normal, anomalies=defects,
                                                            masks=defect_masks, labels=types)
      out = gen.generate(base=normal[:8], guidance=2.0)   # out.samples, out.masks, out.labels
    """

    def __init__(self, modality: str = "image", seed: int = 0, *, train_steps: Optional[int] = None,
                 batch_size: int = 32, learning_rate: float = 1e-3, ema_decay: float = 0.995,
                 p_uncond: float = 0.2, num_steps: int = 50, width: int = 32,
                 channel_mults: Tuple[int, ...] = (1, 2), groups: int = 8,
                 anomaly_fraction: float = 0.5, ref_scale: float = 2.5,
                 segment_fraction: Tuple[float, float] = (0.1, 0.3), context: bool = False,
                 verbose: bool = False):
        """Creates an unfitted generator.

        Args:
          modality: "image", "series" or "table".
          seed: seeds parameters, batches, masks and sampling noise.
          train_steps: optimiser steps; None: the modality's default (DEFAULT_TRAIN_STEPS:
            1000 for images and series, 20000 for tables, whose small MLP steps are cheap and
            whose samples were far off at 1500 steps: on cardio 54% of normal-label samples lay
            beyond 10 training standard deviations, 1.6% at 20000, against 1% of real rows).
          batch_size: training batch size.
          learning_rate: Adam peak learning rate (cosine decay).
          ema_decay: parameter EMA decay (the EMA parameters sample).
          p_uncond: probability of dropping the label during training (CFG).
          num_steps: default DDIM steps at generation.
          width: base width of the network (UNet base channels, TemporalNet channels, MLP width).
          channel_mults: UNet levels.
          groups: UNet GroupNorm groups.
          anomaly_fraction: share of anomalous samples per training batch when anomalies exist.
          ref_scale: std (standardised units) of the Gaussian reference of the unsupervised table
            mode.
          segment_fraction: (min, max) anomalous segment length as a fraction of a series window.
          context: images and series: also condition the denoiser on the clean input outside
            the region (zeros inside it), as inpainting models do, so that what it paints
            continues its surroundings; without it the surroundings enter only through the
            sampler's known-region replacement. On Magnetic tile (seed 0) it made generated
            defects better teachers of where a defect is (docs/results/generation_notes.md,
            session 7); not the default yet. No effect on tables.
          verbose: print training progress.
        """
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if train_steps is None:
            train_steps = DEFAULT_TRAIN_STEPS[modality]
        for name, v in (("train_steps", train_steps), ("batch_size", batch_size),
                        ("num_steps", num_steps), ("width", width)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0.0 <= p_uncond < 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1), got {p_uncond!r}")
        if not 0.0 < anomaly_fraction < 1.0:
            raise ValueError(f"anomaly_fraction must lie in (0, 1), got {anomaly_fraction!r}")
        self.modality, self.seed = modality, int(seed)
        self.train_steps, self.batch_size = int(train_steps), int(batch_size)
        self.learning_rate, self.ema_decay, self.p_uncond = learning_rate, ema_decay, p_uncond
        self.num_steps, self.width = int(num_steps), int(width)
        self.channel_mults, self.groups = tuple(channel_mults), int(groups)
        self.anomaly_fraction, self.ref_scale = float(anomaly_fraction), float(ref_scale)
        self.segment_fraction = tuple(segment_fraction)
        if not isinstance(context, (bool, np.bool_)):
            raise TypeError(f"context must be a bool, got {type(context).__name__} {context!r}")
        self.context = bool(context)
        self.verbose = verbose
        self.sde = sde_lib.VPSDE()
        self._fitted = False

    # ---------------------------------------------------------------- helpers
    @property
    def num_labels(self) -> int:
        """Number of type labels including "normal" (index 0); the null label is this index."""
        return len(self.label_names_)

    def _check_fitted(self):
        if not self._fitted:
            raise RuntimeError("this AnomalyGenerator is not fitted; call fit() first")

    def _label_index(self, labels, n: int) -> np.ndarray:
        if labels is None:
            return np.ones(n, np.int64)
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got shape {labels.shape}")
        return labels

    def _to_model(self, x: np.ndarray) -> np.ndarray:
        if self.modality == "image":
            return x / self.scale_ * 2.0 - 1.0
        return (x - self.mean_) / self.std_

    def _from_model(self, z: np.ndarray) -> np.ndarray:
        if self.modality == "image":
            return np.clip((z + 1.0) / 2.0, 0.0, 1.0)
        return z * self.std_ + self.mean_

    def _onehot(self, labels: Array, spatial: Tuple[int, ...]) -> Array:
        oh = jax.nn.one_hot(labels, self.num_labels + 1)  # last = null
        return jnp.broadcast_to(oh.reshape((oh.shape[0],) + (1,) * len(spatial) + (oh.shape[-1],)),
                                (oh.shape[0],) + spatial + (oh.shape[-1],))

    def _cond(self, mask: Optional[Array], labels: Array, x: Array,
              known: Optional[Array] = None) -> Array:
        """Conditioning channels: [mask, (context: clean input outside the mask,) one-hot label].
        `known` is the clean input (default x itself, as in training on clean samples)."""
        spatial = x.shape[1:-1]
        oh = self._onehot(labels, spatial)
        if mask is None:
            return oh
        parts = [mask[..., None].astype(x.dtype)]
        if self.context:
            ref = x if known is None else known
            parts.append((ref * (1.0 - mask[..., None])).astype(x.dtype))
        return jnp.concatenate(parts + [oh.astype(x.dtype)], axis=-1)

    def _make_net(self, channels: int) -> nn.Module:
        if self.modality == "image":
            return UNet(base_channels=self.width, channel_mults=self.channel_mults,
                        groups=self.groups, attention_resolutions=(), num_res_blocks=1,
                        time_dim=4 * self.width)
        if self.modality == "series":
            return TemporalNet(channels=self.width, num_blocks=3, dilations=(1, 2, 4),
                               num_heads=1, time_dim=4 * self.width)
        return ResidualMLP(features=max(self.width, 64), num_blocks=3, time_dim=64)

    # ---------------------------------------------------------------- fit
    def fit(self, normal: Any, anomalies: Any = None, masks: Any = None,
            labels: Optional[Sequence] = None) -> "AnomalyGenerator":
        """Trains the conditional denoiser.

        Args:
          normal: images [N, H, W, C] (uint8 0..255 or float 0..1), series windows [N, L, C] or
            table rows [N, D].
          anomalies: optional real anomalies of the same shape (few are enough).
          masks: images [M, H, W] / series [M, L] 0/1 masks of `anomalies` (images: required
            with anomalies; series: optional, default whole window).
          labels: optional [M] anomaly types (str or int) of `anomalies`; default one type.

        Returns:
          self.
        """
        rank = {"image": 4, "series": 3, "table": 2}[self.modality]
        normal = _as_float(normal, "normal", rank)
        rng = np.random.default_rng(self.seed)
        if anomalies is not None:
            anomalies = _as_float(anomalies, "anomalies", rank)
            if anomalies.shape[1:] != normal.shape[1:]:
                raise ValueError(f"anomalies must have per-sample shape {normal.shape[1:]} like "
                                 f"normal, got {anomalies.shape[1:]}")
        if labels is not None:
            if anomalies is None:
                raise ValueError("labels need anomalies")
            labels = list(np.asarray(labels).tolist())
            if len(labels) != len(anomalies):
                raise ValueError(f"labels must have length {len(anomalies)}, got {len(labels)}")
        self.shape_ = normal.shape[1:]

        # ---- normalisation
        if self.modality == "image":
            self.scale_ = 255.0 if normal.max() > 1.0 else 1.0
        else:
            axes = tuple(range(normal.ndim - 1))
            self.mean_ = normal.mean(axis=axes).astype(np.float32)
            self.std_ = np.maximum(normal.std(axis=axes), 1e-6).astype(np.float32)

        # ---- training anomalies and labels
        an_masks = None
        self.unsupervised_ = False
        if self.modality == "series" and anomalies is None:
            names = list(SERIES_TYPES)
            anomalies, an_masks, an_labels = self._synthetic_series(rng, normal, names)
        elif anomalies is None:
            if self.modality == "image":
                raise ValueError("the image modality needs a few real anomalies (with masks)")
            names, an_labels = [], np.zeros(0, np.int64)
            self.unsupervised_ = True
        else:
            names = sorted({str(v) for v in labels}) if labels is not None else ["anomaly"]
            lab_str = [str(v) for v in labels] if labels is not None else ["anomaly"] * len(anomalies)
            an_labels = np.asarray([names.index(v) + 1 for v in lab_str], np.int64)
        self.label_names_ = ("normal",) + tuple(names)

        if self.modality == "image":
            if masks is None:
                raise ValueError("masks must be given with image anomalies")
            an_masks = (np.asarray(masks) > 0).astype(np.float32)
            if an_masks.shape != anomalies.shape[:3]:
                raise ValueError(f"masks must have shape {anomalies.shape[:3]}, got "
                                 f"{an_masks.shape}")
            self.mask_prior_ = MaskPrior.fit(an_masks, an_labels)
        elif self.modality == "series" and an_masks is None:
            if masks is None:
                an_masks = np.ones(anomalies.shape[:2], np.float32)
            else:
                an_masks = (np.asarray(masks) > 0).astype(np.float32)
                if an_masks.shape != anomalies.shape[:2]:
                    raise ValueError(f"masks must have shape {anomalies.shape[:2]}, got "
                                     f"{an_masks.shape}")

        xn = self._to_model(normal).astype(np.float32)
        xa = None if anomalies is None else self._to_model(anomalies).astype(np.float32)
        self._train(rng, xn, xa, an_masks, an_labels)
        self._fitted = True
        return self

    def _synthetic_series(self, rng, normal, names):
        z = (normal - self.mean_) / self.std_
        n, length, _ = z.shape
        m = max(4 * len(names), min(4 * n, 512))
        out = np.empty((m,) + z.shape[1:], np.float32)
        masks = np.zeros((m, length), np.float32)
        labs = np.zeros(m, np.int64)
        for i in range(m):
            k = i % len(names)
            start, seg = self._segment(rng, length)
            out[i] = inject_series_anomaly(rng, z[rng.integers(n)], names[k], start=start,
                                           length=seg)
            masks[i, start:start + seg] = 1
            labs[i] = k + 1
        return out * self.std_ + self.mean_, masks, labs

    def _segment(self, rng, length):
        lo, hi = self.segment_fraction
        seg = int(np.clip(round(rng.uniform(lo, hi) * length), 1, length))
        return int(rng.integers(0, length - seg + 1)), seg

    def _normal_masks(self, rng, n):
        if self.modality == "image":
            return self.mask_prior_.sample(rng, n, self.shape_[:2]).astype(np.float32)
        if self.modality == "series":
            length = self.shape_[0]
            out = np.zeros((n, length), np.float32)
            for i in range(n):
                s, seg = self._segment(rng, length)
                out[i, s:s + seg] = 1
            return out
        return None

    def _train(self, rng, xn, xa, an_masks, an_labels):
        key = jax.random.key(self.seed)
        channels = self.shape_[-1]
        self.net_ = self._make_net(channels)
        bs = self.batch_size
        has_mask = self.modality != "table"
        null = self.num_labels

        dummy = jnp.zeros((2,) + self.shape_, jnp.float32)
        dmask = jnp.zeros((2,) + self.shape_[:-1]) if has_mask else None
        params = self.net_.init(key, dummy, jnp.zeros((2,)),
                                self._cond(dmask, jnp.zeros((2,), jnp.int32), dummy))
        sched = optax.warmup_cosine_decay_schedule(0.0, self.learning_rate,
                                                   min(100, self.train_steps // 10 + 1),
                                                   self.train_steps)
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched))
        opt = tx.init(params)
        ema = params
        sde, net, decay, p_uncond = self.sde, self.net_, self.ema_decay, self.p_uncond

        def loss_fn(p, x, m, lab, k):
            k_drop, k_loss = jax.random.split(k)
            drop = jax.random.bernoulli(k_drop, p_uncond, lab.shape)
            lab = jnp.where(drop, null, lab)
            cond = self._cond(m, lab, x)
            return dsm_loss(lambda xt, t: net.apply(p, xt, t, cond), sde, x, k_loss).loss

        @jax.jit
        def step(p, e, o, x, m, lab, k):
            loss, g = jax.value_and_grad(loss_fn)(p, x, m, lab, k)
            upd, o = tx.update(g, o, p)
            p = optax.apply_updates(p, upd)
            e = jax.tree.map(lambda a, b: decay * a + (1 - decay) * b, e, p)
            return p, e, o, loss

        n_an = 0 if xa is None else int(round(self.anomaly_fraction * bs))
        n_no = bs - n_an
        t0 = time.time()
        self.losses_ = []
        for it in range(self.train_steps):
            idx = rng.integers(0, len(xn), n_no)
            x = xn[idx]
            m = self._normal_masks(rng, n_no)
            lab = np.zeros(n_no, np.int64)
            if n_an:
                j = rng.integers(0, len(xa), n_an)
                x = np.concatenate([x, xa[j]])
                lab = np.concatenate([lab, an_labels[j]])
                if has_mask:
                    am = an_masks[j]
                    if self.modality == "image":  # random flips keep the few defects fresh
                        if rng.random() < 0.5:
                            x[n_no:], am = x[n_no:, :, ::-1], am[:, :, ::-1]
                        if rng.random() < 0.5:
                            x[n_no:], am = x[n_no:, ::-1], am[:, ::-1]
                    m = np.concatenate([m, am])
            k = jax.random.fold_in(key, it)
            params, ema, opt, loss = step(params, ema, opt, jnp.asarray(x),
                                          None if m is None else jnp.asarray(m),
                                          jnp.asarray(lab, jnp.int32), k)
            if it % 100 == 0 or it == self.train_steps - 1:
                self.losses_.append(float(loss))
                if self.verbose:
                    print(f"[generation] step {it} loss {float(loss):.4f} "
                          f"({time.time() - t0:.0f}s)", flush=True)
        self.params_ = ema
        self._sample_fns = {}

    # ---------------------------------------------------------------- generate
    def _eps(self, params, x, t, mask, lab, known=None):
        null = jnp.full_like(lab, self.num_labels)
        xx = jnp.concatenate([x, x])
        tt = jnp.concatenate([t, t])
        mm = None if mask is None else jnp.concatenate([mask, mask])
        kk = None if known is None else jnp.concatenate([known, known])
        cond = self._cond(mm, jnp.concatenate([lab, null]), xx, kk)
        out = self.net_.apply(params, xx, tt, cond)
        return out[: x.shape[0]], out[x.shape[0]:]

    def _sampler(self, num_steps: int, masked: bool, unsupervised: bool,
                 clip_x0: Optional[float] = None):
        key_ = (num_steps, masked, unsupervised, clip_x0)
        if key_ in self._sample_fns:
            return self._sample_fns[key_]
        sde, ref2 = self.sde, self.ref_scale ** 2

        def run(params, x_start, mask, known, lab, w, key):
            def guided_score(x, t):
                sigma = sde_lib.broadcast_to_x(sde.sigma(t), x)
                e_c, e_u = self._eps(params, x, t, mask, lab, known)
                if unsupervised:  # guide a broad Gaussian reference away from the normal score
                    alpha = sde_lib.broadcast_to_x(sde.alpha(t), x)
                    s_ref = -x / (alpha ** 2 * ref2 + sigma ** 2)
                    s_norm = -e_c / sigma
                    return s_ref + w * (s_ref - s_norm)
                return -((1.0 + w) * e_c - w * e_u) / sigma

            def score_fn(x, t):
                s = guided_score(x, t)
                if clip_x0 is None:
                    return s
                # The clean-sample estimate x0 = (x + sigma^2 s) / alpha divides by alpha (0.006 at
                # t = 1 on the VP SDE), so network error is amplified ~150x at the noisiest steps.
                # Clip it to the data range (model units) and return the score consistent with it.
                alpha = sde_lib.broadcast_to_x(sde.alpha(t), x)
                sigma = sde_lib.broadcast_to_x(sde.sigma(t), x)
                x0 = jnp.clip((x + sigma ** 2 * s) / alpha, -clip_x0, clip_x0)
                return (alpha * x0 - x) / sigma ** 2

            if masked:
                keep = (1.0 - mask)[..., None] > 0.5
                keep = jnp.broadcast_to(keep, x_start.shape)
                return solvers.ddim(score_fn, sde, x_start, key, num_steps=num_steps,
                                    mask=keep, known=known).x
            return solvers.ddim(score_fn, sde, x_start, key, num_steps=num_steps).x

        fn = jax.jit(run)
        self._sample_fns[key_] = fn
        return fn

    def _resolve_label(self, label, n, rng) -> np.ndarray:
        k = self.num_labels
        if label is None:
            if k < 2:
                return np.zeros(n, np.int64)
            return rng.integers(1, k, n).astype(np.int64)
        vals = np.atleast_1d(np.asarray(label, dtype=object))
        out = []
        for v in vals:
            if isinstance(v, str):
                if v not in self.label_names_:
                    raise ValueError(f"label must be one of {self.label_names_}, got {v!r}")
                out.append(self.label_names_.index(v))
            else:
                iv = int(v)
                if not 0 <= iv < k:
                    raise ValueError(f"label index must lie in [0, {k}), got {iv}")
                out.append(iv)
        out = np.asarray(out, np.int64)
        if out.size == 1:
            return np.full(n, out[0])
        if out.size != n:
            raise ValueError(f"label must be one value or {n} values, got {out.size}")
        return out

    def generate(self, base: Any = None, masks: Any = None, label: Any = None, *,
                 guidance: float = 2.0, n: Optional[int] = None, num_steps: Optional[int] = None,
                 seed: Optional[int] = None, batch_size: int = 64,
                 clip: bool = True, clip_x0: Optional[float] = None) -> GenerationOutput:
        """Generates anomalies.

        Args:
          base: images [N, H, W, C] / series windows [N, L, C] to insert anomalies into (required
            for image and series; ignored for tables). With `n` > N, bases are drawn with
            replacement.
          masks: optional [N, H, W] / [N, L] 0/1 masks of the region to generate; sampled from the
            shape prior (images) or as random segments (series) when None.
          label: None (random anomaly types), a type name/index, or one per sample.
          guidance: CFG strength w >= 0 (table unsupervised mode: strength of the push away from
            the normal score).
          n: number of samples (default len(base); required for tables).
          num_steps: DDIM steps (default: the constructor's).
          seed: sampling seed (default: the constructor's seed + 1).
          batch_size: samples per solver call.
          clip: clip generated images to [0, 1] (images only; False returns the raw solver
            output mapped to the [0, 1] scale, useful for diagnostics).
          clip_x0: if set, clip the sampler's clean-sample estimate at every step to
            [-clip_x0, clip_x0] in model units (images are in [-1, 1]; series and tables are
            standardised), which stops the network's error at the noisiest steps from being
            amplified into far-off samples (about 5% of table rows without it). None (default)
            keeps the unclipped sampler that the published generation results used.

        Returns:
          GenerationOutput(samples, masks, labels, label_names).
        """
        self._check_fitted()
        guidance = float(guidance)
        if not np.isfinite(guidance) or guidance < 0:
            raise ValueError(f"guidance must be a finite float >= 0, got {guidance!r}")
        if clip_x0 is not None:
            clip_x0 = float(clip_x0)
            if not np.isfinite(clip_x0) or clip_x0 <= 0:
                raise ValueError(f"clip_x0 must be None or a finite float > 0, got {clip_x0!r}")
        num_steps = self.num_steps if num_steps is None else int(num_steps)
        seed = self.seed + 1 if seed is None else int(seed)
        rng = np.random.default_rng(seed)
        key = jax.random.key(seed)
        rank = {"image": 4, "series": 3, "table": 2}[self.modality]
        if n is not None and (not isinstance(n, (int, np.integer)) or isinstance(n, bool)):
            raise TypeError(f"n must be a positive int, got {type(n).__name__} {n!r}")
        if self.modality == "table":
            if base is not None:  # only its length is used; still refuse what is not a table
                base = _as_float(base, "base", rank)
                if base.shape[1:] != self.shape_:
                    raise ValueError(f"base must have per-sample shape {self.shape_}, got "
                                     f"{base.shape[1:]}")
            if n is None:
                n = 1 if base is None else len(base)
            _check_n(n, self.shape_)
            base_m, m = np.zeros((n,) + self.shape_, np.float32), None
        else:
            if base is None:
                raise ValueError(f"base must be given for modality {self.modality!r}")
            base = _as_float(base, "base", rank)
            if base.shape[1:] != self.shape_:
                raise ValueError(f"base must have per-sample shape {self.shape_}, got "
                                 f"{base.shape[1:]}")
            if n is None:
                n = len(base)
            _check_n(n, self.shape_)
            if n != len(base):
                base = base[rng.integers(0, len(base), n)]
            base_m = self._to_model(base).astype(np.float32)
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        labels = self._resolve_label(label, n, rng)
        if self.modality != "table":
            if masks is None:
                if self.modality == "image":
                    m = self.mask_prior_.sample(rng, n, self.shape_[:2], labels)
                else:
                    m = self._normal_masks(rng, n)
            else:
                m = np.asarray(masks)
                if m.shape != (n,) + self.shape_[:-1]:
                    raise ValueError(f"masks must have shape {(n,) + self.shape_[:-1]}, got "
                                     f"{m.shape}")
            m = (m > 0).astype(np.float32)
        unsup = self.unsupervised_ and self.modality == "table"
        fn = self._sampler(num_steps, m is not None, unsup, clip_x0)
        out = []
        for s in range(0, n, batch_size):
            sl = slice(s, min(n, s + batch_size))
            k = jax.random.fold_in(key, s)
            x0 = self.sde.prior_sample(k, (sl.stop - sl.start,) + self.shape_)
            lab = labels[sl] if not unsup else np.zeros(sl.stop - sl.start, np.int64)
            res = fn(self.params_, x0, None if m is None else jnp.asarray(m[sl]),
                     jnp.asarray(base_m[sl]), jnp.asarray(lab, jnp.int32),
                     jnp.float32(guidance), k)
            out.append(np.asarray(res))
        z = np.concatenate(out)
        samples = (self._from_model(z) if clip or self.modality != "image"
                   else (z + 1.0) / 2.0).astype(np.float32)
        if m is not None:  # copy the untouched region bit-exactly
            keep = np.broadcast_to((m < 0.5)[..., None], samples.shape)
            ref = base / self.scale_ if self.modality == "image" else base
            samples = np.where(keep, ref, samples).astype(np.float32)
        return GenerationOutput(samples=samples,
                                masks=None if m is None else m.astype(np.uint8),
                                labels=labels, label_names=self.label_names_)

    def refine_masks(self, base: Any, output: GenerationOutput, *, quantile: float = 0.99,
                     guidance: float = 2.0, num_steps: Optional[int] = None,
                     seed: Optional[int] = None) -> Tuple[np.ndarray, float]:
        """Masks of the pixels that a generated defect actually changed beyond normal variation.

        `generate` marks its whole sampled region (an ellipse of the shape prior) as anomalous,
        but the defect it paints need not fill it: the rest of the region is re-synthesised
        normal texture, which a pixel-level model trained on these masks learns to call
        anomalous. This inpaints the same bases inside the same regions with the "normal" label
        (index 0), takes the per-pixel change |inpainted - base| (max over channels) inside the
        regions as the null distribution of re-synthesising normal texture, and keeps the pixels
        of each region whose change under the anomaly exceeds its `quantile`. Label-free: only
        normal data and the generator are used. Where re-synthesised normal texture itself
        differs a lot from the base pixel by pixel, the threshold is high and little is kept
        (Magnetic tile, 32 px, docs/results/generation_notes.md, session 7: 0.78 of the grey
        range, under 1% of the regions kept, and refined masks did not help a pixel head there).

        Args:
          base: the images [N, H, W, C] passed to `generate` (same order, N = len(output)).
          output: the GenerationOutput of `generate(base=base, ...)`.
          quantile: quantile of the null change that a kept pixel must exceed, in (0, 1).
          guidance, num_steps, seed: of the null inpainting (default: generate's defaults with
            seed = the constructor's seed + 2).

        Returns:
          (refined masks [N, H, W] uint8 (a subset of output.masks; may be empty for a sample
          whose change stays within normal variation), the threshold on the [0, 1] scale).
        """
        self._check_fitted()
        if self.modality != "image":
            raise ValueError(f"refine_masks is for images; this generator's modality is "
                             f"{self.modality!r}")
        quantile = float(quantile)
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must lie in (0, 1), got {quantile!r}")
        base = _as_float(base, "base", 4)
        if output.masks is None or len(output.samples) != len(base) or output.masks.shape != base.shape[:3]:
            raise ValueError("refine_masks needs the bases that generate() used (one per sample, same "
                             f"shape) and its masks; got base {base.shape}, samples "
                             f"{np.shape(output.samples)}, masks {np.shape(output.masks)}")
        region = np.asarray(output.masks) > 0
        if not region.any():
            return region.astype(np.uint8), 0.0
        null = self.generate(base=base, masks=output.masks, label=0, guidance=guidance,
                             num_steps=num_steps, seed=self.seed + 2 if seed is None else seed)
        ref = base / self.scale_
        change = lambda x: np.max(np.abs(np.asarray(x, np.float32) - ref), axis=-1)  # [N, H, W]
        tau = float(np.quantile(change(null.samples)[region], quantile))
        return (region & (change(output.samples) > tau)).astype(np.uint8), tau

    # ---------------------------------------------------------------- persistence
    def get_params(self) -> dict:
        """The constructor parameters (JSON-able: tuples become lists)."""
        names = [k for k in inspect.signature(type(self).__init__).parameters if k != "self"]
        return {k: (list(getattr(self, k)) if isinstance(getattr(self, k), tuple)
                    else getattr(self, k)) for k in names}

    def _abstract_params(self):
        dummy = jnp.zeros((2,) + self.shape_, jnp.float32)
        dmask = jnp.zeros((2,) + self.shape_[:-1]) if self.modality != "table" else None
        cond = self._cond(dmask, jnp.zeros((2,), jnp.int32), dummy)
        return jax.eval_shape(lambda: self.net_.init(jax.random.key(0), dummy, jnp.zeros((2,)),
                                                     cond))

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Saves the fitted generator to a new directory (orbax arrays + JSON; never pickle).

        The directory holds `adiff.json` ({"format": "adiff-generator", "version": 1, "class",
        "params": constructor parameters, "meta": shapes, label names, normalisation, mask prior})
        and `arrays/` (an orbax StandardCheckpointer tree of the EMA network parameters).

        Args:
          path: a directory that does not exist or is empty.

        Returns:
          The directory path.
        """
        self._check_fitted()
        path = pathlib.Path(path).absolute()
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ValueError(f"path {str(path)!r} exists and is not an empty directory; choose a "
                             "new directory")
        meta = {"shape": [int(v) for v in self.shape_], "label_names": list(self.label_names_),
                "unsupervised": bool(self.unsupervised_),
                "losses": [float(v) for v in getattr(self, "losses_", [])]}
        if self.modality == "image":
            mp = self.mask_prior_
            meta["scale"] = float(self.scale_)
            meta["mask_prior"] = {"axes": np.asarray(mp.axes, np.float64).tolist(),
                                  "angles": np.asarray(mp.angles, np.float64).tolist(),
                                  "labels": np.asarray(mp.labels, np.int64).tolist(),
                                  "jitter": float(mp.jitter)}
        else:  # float32 -> Python float -> JSON -> float32 is exact
            meta["mean"] = np.asarray(self.mean_, np.float32).tolist()
            meta["std"] = np.asarray(self.std_, np.float32).tolist()
        config = {"format": FORMAT, "version": VERSION, "class": type(self).__name__,
                  "params": self.get_params(), "meta": meta}
        text = json.dumps(config, indent=1)  # fails before anything is written
        path.mkdir(parents=True, exist_ok=True)
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(path / "arrays", {"params": jax.tree.map(np.asarray, self.params_)})
            ckpt.wait_until_finished()
        (path / "adiff.json").write_text(text)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AnomalyGenerator":
        """Loads a generator saved by `save`; validates the JSON and every array's shape and dtype.

        Args:
          path: the directory written by `save`.

        Returns:
          A fitted AnomalyGenerator whose `generate` reproduces the saved one bit for bit.

        Raises:
          ValueError: missing files, another format/version/class, invalid parameters or
            metadata, or arrays that do not match the configuration. Nothing is unpickled or
            executed from the directory.
        """
        path, cfg_file, config = validation.read_saved_config(path, what="AnomalyGenerator")
        fmt = config.get("format") if isinstance(config, dict) else None
        if fmt != FORMAT:
            raise ValueError(f"{str(cfg_file)!r} has format {fmt!r}; expected {FORMAT!r}")
        if config.get("version") != VERSION:
            raise ValueError(f"{str(cfg_file)!r} has version {config.get('version')!r}; this "
                             f"adiff reads {VERSION}")
        if config.get("class") != cls.__name__:
            raise ValueError(f"{str(cfg_file)!r} holds class {config.get('class')!r}; expected "
                             f"{cls.__name__!r}")
        params, meta = config.get("params"), config.get("meta")
        if not isinstance(params, dict) or not isinstance(meta, dict):
            raise ValueError(f"{str(cfg_file)!r} lacks the 'params' and 'meta' objects")
        try:
            gen = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
            gen._import_meta(meta)
            target = {"params": gen._abstract_params()}
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise ValueError(f"{str(cfg_file)!r} has an invalid configuration: "
                             f"{type(e).__name__}: {e}") from None
        arrays = validation.restore_saved_arrays(path, target, check_dtypes=True)
        gen.params_ = jax.tree.map(jnp.asarray, arrays["params"])
        gen._sample_fns = {}
        gen._fitted = True
        return gen

    def _import_meta(self, meta: dict) -> None:
        shape = meta["shape"]
        rank = _RANK[self.modality] - 1
        if (not isinstance(shape, list) or len(shape) != rank
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
            raise ValueError(f"meta['shape'] must be {rank} positive ints for modality "
                             f"{self.modality!r}, got {shape!r}")
        names = meta["label_names"]
        if (not isinstance(names, list) or not names or names[0] != "normal"
                or not all(isinstance(v, str) for v in names) or len(set(names)) != len(names)):
            raise ValueError(f"meta['label_names'] must be distinct strings starting with "
                             f"'normal', got {names!r}")
        unsup = meta["unsupervised"]
        if not isinstance(unsup, bool) or (unsup and self.modality != "table"):
            raise ValueError(f"meta['unsupervised'] must be a bool (True only for tables), got "
                             f"{unsup!r}")
        if (len(names) == 1) != unsup:
            raise ValueError(f"meta['label_names'] {names!r} does not match "
                             f"unsupervised={unsup}")
        self.shape_ = tuple(shape)
        self.label_names_ = tuple(names)
        self.unsupervised_ = unsup
        self.losses_ = [float(v) for v in meta.get("losses", [])]
        if self.modality == "image":
            scale = meta["scale"]
            if scale not in (1.0, 255.0) or isinstance(scale, bool):
                raise ValueError(f"meta['scale'] must be 1.0 or 255.0, got {scale!r}")
            self.scale_ = float(scale)
            mp = meta["mask_prior"]
            axes = np.asarray(mp["axes"], np.float64)
            angles = np.asarray(mp["angles"], np.float64)
            labels = np.asarray(mp["labels"])
            m = len(axes)
            if (axes.ndim != 2 or axes.shape != (m, 2) or m == 0 or angles.shape != (m,)
                    or labels.shape != (m,) or not np.issubdtype(labels.dtype, np.integer)
                    or not np.all(np.isfinite(axes)) or not np.all(axes > 0)
                    or not np.all(np.isfinite(angles))
                    or not np.all((labels >= 0) & (labels < len(names)))):
                raise ValueError("meta['mask_prior'] must hold axes [M, 2] > 0, angles [M] and "
                                 f"labels [M] in [0, {len(names)}), got shapes {axes.shape}, "
                                 f"{angles.shape}, {labels.shape}")
            jitter = mp["jitter"]
            if not isinstance(jitter, (int, float)) or isinstance(jitter, bool) or jitter < 0:
                raise ValueError(f"meta['mask_prior']['jitter'] must be a float >= 0, got "
                                 f"{jitter!r}")
            self.mask_prior_ = MaskPrior(axes=axes, angles=angles, labels=labels.astype(np.int64),
                                         jitter=float(jitter))
        else:
            for key in ("mean", "std"):
                v = np.asarray(meta[key], np.float64)
                if v.shape != (shape[-1],) or not np.all(np.isfinite(v)):
                    raise ValueError(f"meta[{key!r}] must be {shape[-1]} finite floats (one per "
                                     f"channel), got shape {v.shape}")
                if key == "std" and not np.all(v > 0):
                    raise ValueError("meta['std'] must be > 0")
                setattr(self, key + "_", v.astype(np.float32))
        self.net_ = self._make_net(shape[-1])


# ------------------------------------------------------------------------------------------------
# augmentation: normal data + generated anomalies for a supervised model
# ------------------------------------------------------------------------------------------------
def augment(X_normal: Any, generator: AnomalyGenerator, *, n: int, label: Any = None,
            guidance: float = 2.0, seed: Optional[int] = None, num_steps: Optional[int] = None,
            return_masks: bool = False):
    """Normal data plus `n` generated anomalies with 0/1 labels, to train a supervised model.

    Images and series windows: the anomalies are inserted into bases drawn from `X_normal`
    (with replacement when `n` > len(X_normal)) inside sampled masks; tables: rows sampled from
    the generator (class-conditioned, or the unsupervised low-density mode).

    Args:
      X_normal: normal images [N, H, W, C], series windows [N, L, C] or rows [N, D], in the units
        the generator was fitted in (e.g. uint8-range images if it was fitted on uint8).
      generator: a fitted AnomalyGenerator of the same modality and per-sample shape.
      n: number of generated anomalies (> 0).
      label: anomaly type(s) passed to `generate` (None: random types).
      guidance: CFG strength passed to `generate`.
      seed: sampling seed passed to `generate`.
      num_steps: DDIM steps (default: the generator's).
      return_masks: also return per-pixel / per-step masks (images and series only).

    Returns:
      (X [N + n, ...] float32 — X_normal first, then the generated anomalies —, y [N + n] int64
      with 0 = normal, 1 = generated), or (X, y, masks [N + n, H, W] / [N + n, L] uint8, all zero
      for the normal rows) with `return_masks`.
    """
    if not isinstance(generator, AnomalyGenerator):
        raise TypeError(f"generator must be an AnomalyGenerator, got {type(generator).__name__}")
    generator._check_fitted()
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    modality = generator.modality
    if return_masks and modality == "table":
        raise ValueError("return_masks needs the image or series modality, got 'table'")
    X = _as_float(X_normal, "X_normal", _RANK[modality])
    if X.shape[1:] != tuple(generator.shape_):
        raise ValueError(f"X_normal must have per-sample shape {tuple(generator.shape_)} like the "
                         f"generator's training data, got {X.shape[1:]}")
    out = generator.generate(base=None if modality == "table" else X, n=int(n), label=label,
                             guidance=guidance, seed=seed, num_steps=num_steps)
    samples = out.samples
    if modality == "image":  # back to the units of the training data
        samples = samples * np.float32(generator.scale_)
    X_all = np.concatenate([X, samples.astype(np.float32)])
    y = np.concatenate([np.zeros(len(X), np.int64), np.ones(int(n), np.int64)])
    if not return_masks:
        return X_all, y
    masks = np.concatenate([np.zeros((len(X),) + out.masks.shape[1:], np.uint8),
                            out.masks.astype(np.uint8)])
    return X_all, y, masks


# ------------------------------------------------------------------------------------------------
# writing a generated dataset
# ------------------------------------------------------------------------------------------------
def write_dataset(output: GenerationOutput, directory: str | os.PathLike, *, modality: str,
                  extra: Optional[dict] = None) -> pathlib.Path:
    """Writes a generated dataset to disk with a JSON manifest (never pickle).

    Images go to `images/<i>.png` and `masks/<i>.png` (uint8 0/255); series and tables to
    `samples.npz` (arrays samples, masks (series), labels). `manifest.json` lists the files,
    shapes, label names and per-sample labels.

    Args:
      output: a GenerationOutput.
      directory: target folder (created).
      modality: "image", "series" or "table".
      extra: optional JSON-serialisable metadata stored under "extra".

    Returns:
      The manifest path.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if not isinstance(output, GenerationOutput):
        raise TypeError(f"output must be a GenerationOutput, got {type(output).__name__}")
    root = pathlib.Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    samples = np.asarray(output.samples)
    labels = np.asarray(output.labels).astype(int)
    manifest = {"format": "adiff.generation/1", "modality": modality, "count": int(len(samples)),
                "shape": list(samples.shape[1:]), "label_names": list(output.label_names),
                "extra": extra or {}}
    if modality == "image":
        from PIL import Image
        (root / "images").mkdir(exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        items = []
        for i, img in enumerate(samples):
            u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
            u8 = u8[..., 0] if u8.shape[-1] == 1 else u8
            Image.fromarray(u8).save(root / "images" / f"{i:05d}.png")
            entry = {"image": f"images/{i:05d}.png", "label": int(labels[i]),
                     "type": output.label_names[labels[i]] if output.label_names else None}
            if output.masks is not None:
                Image.fromarray((np.asarray(output.masks[i]) > 0).astype(np.uint8) * 255).save(
                    root / "masks" / f"{i:05d}.png")
                entry["mask"] = f"masks/{i:05d}.png"
            items.append(entry)
        manifest["items"] = items
    else:
        arrays = {"samples": samples, "labels": labels}
        if output.masks is not None:
            arrays["masks"] = np.asarray(output.masks)
        np.savez(root / "samples.npz", **arrays)
        manifest["file"] = "samples.npz"
        manifest["arrays"] = {k: list(v.shape) for k, v in arrays.items()}
        manifest["labels"] = labels.tolist()
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path


def generate_dataset(normal_path: str, out_dir: str, *, modality: str = "table", n: int = 100,
                     guidance: float = 2.0, seed: int = 0, train_steps: Optional[int] = None,
                     anomalies_path: Optional[str] = None) -> pathlib.Path:
    """CLI-able end to end: fit on npz arrays and write a generated dataset.

    Args:
      normal_path: .npz with array "X" (normal samples; images [N, H, W, C] for "image").
      out_dir: output folder.
      modality: "image", "series" or "table".
      n: number of samples.
      guidance: CFG strength.
      seed: seed.
      train_steps: generator training steps (None: the modality's default).
      anomalies_path: optional .npz with "X" (anomalies) and optional "masks", "labels".

    Returns:
      The manifest path.
    """
    with np.load(normal_path) as f:
        normal = f["X"]
    kw = {}
    if anomalies_path:
        with np.load(anomalies_path) as f:
            kw = {"anomalies": f["X"], "masks": f["masks"] if "masks" in f else None,
                  "labels": f["labels"] if "labels" in f else None}
    gen = AnomalyGenerator(modality=modality, seed=seed, train_steps=train_steps).fit(normal, **kw)
    base = None if modality == "table" else normal
    out = gen.generate(base=base, n=n, guidance=guidance)
    return write_dataset(out, out_dir, modality=modality,
                         extra={"normal": str(normal_path), "anomalies": anomalies_path,
                                "seed": seed, "guidance": guidance, "train_steps": gen.train_steps})


def main(argv=None):  # pragma: no cover - thin CLI
    """`python -m adiff.generation --normal X.npz --out DIR [--modality table] [--n 100]`."""
    import argparse
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--normal", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--modality", default="table", choices=MODALITIES)
    p.add_argument("--anomalies", default=None)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train_steps", type=int, default=None)
    a = p.parse_args(argv)
    print(generate_dataset(a.normal, a.out, modality=a.modality, n=a.n, guidance=a.guidance,
                           seed=a.seed, train_steps=a.train_steps, anomalies_path=a.anomalies))


if __name__ == "__main__":  # pragma: no cover
    main()
