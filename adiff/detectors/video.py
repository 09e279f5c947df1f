"""VideoDetector: future-frame diffusion conditioned on past frames and motion (and a
reconstruction variant), with per-frame scores and per-pixel maps.

Paradigms:
- "prediction" (default): a conditional diffusion model (`adiff.nets.UNet`, VP SDE, network
  output `parameterization`, default "v") generates frame t given conditioning channels: the
  K = `context_frames` previous frames and, with `motion="diff"`, their K - 1 consecutive frame
  differences, or with `motion="flow"` the K - 1 dense optical-flow fields between them (two
  channels each, x and y displacement; Farneback's classical estimator from OpenCV, see
  `optical_flow`), as motion features; with K = 1 the conditioning holds the frame only. With `target="residual"` (default) the diffused variable is the motion residual
  frame_t - frame_{t-1}, scaled to unit standard deviation by a factor fitted on the training
  windows (`target_scale_`), and the predicted frame is frame_{t-1} + predicted residual: the
  diffusion analogue of "previous frame as the prediction", so the model spends no capacity on
  re-synthesising the static background. `target="frame"` diffuses the frame itself.
  Scoring, `score="sample"` (default): `num_samples` predictions by DDIM with `solver_steps`
  steps from time `t0` (x_t0 = alpha(t0) * start + sigma(t0) * z, start = the previous frame or
  zero residual; pure noise at t0 = 1); the observed frame is compared with their mean. With the
  defaults (t0 = 1, one step, one sample) this is the network's posterior mean E[frame_t | past]
  at t = 1, a deterministic conditional-mean prediction (up to alpha(1) ~ 0.006 of the start).
  `score="denoise"`: the observed target is noised to t0 and the error of the network's x0
  prediction (Tweedie's mean) is averaged over `num_samples` noise draws (a denoising-error,
  density-like score of the residual given the past).
  Speed, direction and acceleration anomalies change where the object is in frame t given
  frames t-K..t-1, so a motion-conditioned predictor sees them where a per-frame appearance
  model cannot.
  Why these defaults (issue 7): with an eps-parameterised frame model, the x0 estimate at high
  noise is (x - sigma eps_hat) / alpha with alpha(1) ~ 0.006, so the first DDIM steps from pure
  noise amplify the network's eps error ~150x and a few-step sample is dominated by that error,
  not by the scene: Ped2 frame AUROC was at chance (0.49). A v- (or x0-) parameterised model
  gives a well-conditioned posterior mean at every t, and the residual target removes the
  background from what must be generated (docs/results/video.md).
  `direction="both"` (prediction only) fits a second, backward model of the same settings on
  the time-reversed clips: it predicts frame t from the K *following* frames. A frame's raw score,
  map and prediction are the mean of the forward and the backward ones. Why: a forward model
  scores the first normal frames after an anomalous interval high, because they are predicted
  from anomalous context; the backward model has that carry-over before the interval instead, so
  the mean halves both. Where an interval ends within K frames of the clip's end, the backward
  model has no future context (those frames take padded scores) and the carry-over stays. Measured
  on the procedural set it trades speed and direction for acceleration and appearance, and is not
  in the configs (docs/results/video.md, sessions 11 and 15). It doubles fit and score time.
  `appearance=True` (prediction, forward only) adds a second stream: an unconditional diffusion
  model of single frames (the same UNet settings, seed + 1), scored by the denoising error of the
  frame averaged over t in `APPEARANCE_TIMES` x `APPEARANCE_DRAWS` noise draws (the same map and
  frame-score settings). Each stream's raw frame score is divided by its `SCALE_QUANTILE` quantile
  on the training frames (its normal ceiling, fitted for the scoring settings in force; see
  `calibrate`), and `fusion` combines them. "alarm" (default): a frame whose appearance score is
  above `gate` raises an alarm and ranks above every frame that does not (within the alarms, by
  appearance score); a frame whose prediction was conditioned on a context frame above `gate` loses
  its motion score, because a prediction from a context already judged anomalous is no evidence
  about the frame it predicts (the carry-over after an appearance anomaly); every other frame takes
  its motion score. The fused score is bounded and monotone in each tier: s / (1 + s) below the
  alarm, 1 + z / (1 + z) for an alarm. The tiers exist because the two streams' scales are not
  comparable on unseen clips: the motion stream's normal test frames reached 7.8 times its
  training ceiling on one seed, its anomalous-appearance frames' appearance scores about 5 (session
  17). "gate" voids motion scores the same way but takes max(motion, appearance alarm) on one
  scale; "gated_max" takes max(motion, appearance) (below the gate too); "max" is the ungated
  maximum; "motion" and "appearance" one raw stream alone (the former equals the forward
  detector). Measured: docs/results/video.md, sessions 16-17.
- "reconstruction": an unconditional diffusion model of short clips (the K + 1 frames t-K..t
  stacked along channels); scoring noises the clip to time `t0`, reconstructs it with DDIM and
  measures the error of the last frame.

Per-frame pipeline: pixel error map (squared or absolute distance, mean over channels, optional
Gaussian blur of `map_sigma` px) -> frame score (mean of the top `topk` fraction of the map, its
max or its mean) -> optional per-clip normalisation (`normalize="minmax"` or `"zscore"`: uses the
scored clip's own statistics, so report it separately from raw scores) -> optional temporal
Gaussian smoothing (`smooth_sigma` frames). The first K frames of a clip have no full context:
they receive the score (and map) of frame K (padding), so every frame gets a score.

Scoring options (score, t0, solver_steps, eta, num_samples, distance, map_sigma, frame_score, topk,
normalize, smooth_sigma, score_batch_size) may change after fit via set_params; fit-time
options may not.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
from typing import Any, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from adiff import losses, parameterization as param_lib, sde as sde_lib, solvers, validation
from adiff.detectors.base import BaseDetector
from adiff.nets.unet import UNet
from adiff.training import trainer

__all__ = ["VideoDetector", "PARADIGMS", "MOTIONS", "TARGETS", "PARAMETERIZATIONS", "SCORES",
           "DIRECTIONS", "FUSIONS", "FRAME_SCORES", "NORMALIZATIONS", "optical_flow"]

PARADIGMS = ("prediction", "reconstruction")
MOTIONS = ("diff", "flow", "none")
TARGETS = ("residual", "frame")
PARAMETERIZATIONS = ("v", "eps", "x0")
SCORES = ("sample", "denoise")
DIRECTIONS = ("forward", "both")
FUSIONS = ("alarm", "gate", "gated_max", "max", "motion", "appearance")
_GATING = ("alarm", "gate", "gated_max")  # the fusions that void motion scores after an alarm
# The appearance stream's denoising times and noise draws per time (appearance=True), and the
# training-frame quantile that scales each stream for the fusion.
APPEARANCE_TIMES = (0.05, 0.1, 0.2)
APPEARANCE_DRAWS = 2
SCALE_QUANTILE = 0.99
FRAME_SCORES = ("topk", "max", "mean")
NORMALIZATIONS = ("none", "minmax", "zscore")
DISTANCES = ("squared", "absolute")
_FIT_PARAMS = ("paradigm", "context_frames", "motion", "target", "parameterization", "image_size",
               "base_channels", "channel_mults", "num_res_blocks", "attention_resolutions", "groups",
               "direction", "appearance")
# Models saved before `target` / `parameterization` existed were frame-target, eps models; those
# saved before `direction` / `appearance` existed were forward-only, motion-only.
_LEGACY_FIT = {"target": "frame", "parameterization": "eps", "direction": "forward", "appearance": False}


def _norm(v):
    if isinstance(v, (list, tuple)):
        return tuple(_norm(e) for e in v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _blur2d(maps: jax.Array, sigma: float) -> jax.Array:
    """Separable Gaussian blur of maps [B, H, W] (std `sigma` px, edge padding)."""
    if sigma <= 0:
        return maps
    r = max(1, int(math.ceil(3.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = jnp.asarray(k / k.sum(), maps.dtype)
    x = jnp.pad(maps, ((0, 0), (r, r), (r, r)), mode="edge")
    n = 2 * r + 1
    x = sum(k[i] * x[:, i:i + x.shape[1] - n + 1, :] for i in range(n))
    x = sum(k[i] * x[:, :, i:i + x.shape[2] - n + 1] for i in range(n))
    return x


def optical_flow(clip: np.ndarray) -> np.ndarray:
    """Dense optical flow [T, H, W, 2] (x, y displacement in pixels) from frame t-1 to frame t.

    Farneback's polynomial-expansion estimator (OpenCV `calcOpticalFlowFarneback`) on the frames'
    channel mean, quantised to 8 bits; flow[0] is zero. The pyramid depth and window size follow
    the frame size (coarsest level >= 8 px; window ~ 1/8 of the shorter side, at least 5 px), so
    the same call serves 32 px and full-resolution frames. A classical estimator (no training), as
    the survey's video methods use; OpenCV's implementation rather than our own because it is the
    reference one, well tested and fast on the host (the flow is computed once per frame, outside
    the jitted network).

    Args:
      clip: [T, H, W, C] frames with values in [0, 1] (or [-1, 1]: any affine range works, the
        frames are min-max quantised per clip).

    Returns:
      float32 [T, H, W, 2].
    """
    try:
        import cv2  # pylint: disable=import-outside-toplevel
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("motion='flow' needs OpenCV: pip install 'adiff[video]' "
                          "(opencv-python-headless)") from e
    x = np.asarray(clip, np.float32)
    if x.ndim != 4:
        raise ValueError(f"clip must have shape [T, H, W, C], got {x.shape}")
    gray = x.mean(axis=-1)
    lo, hi = float(gray.min()), float(gray.max())
    q = np.round(255.0 * (gray - lo) / (hi - lo if hi > lo else 1.0)).astype(np.uint8)
    h, w = q.shape[1:]
    side = min(h, w)
    levels = max(1, int(math.floor(math.log2(max(side, 8) / 8.0))) + 1)
    win = max(5, (side // 8) | 1)
    out = np.zeros(x.shape[:3] + (2,), np.float32)
    for t in range(1, len(q)):
        out[t] = cv2.calcOpticalFlowFarneback(q[t - 1], q[t], None, pyr_scale=0.5, levels=levels,
                                              winsize=win, iterations=3, poly_n=5, poly_sigma=1.1,
                                              flags=0)
    return out


def _smooth1d(s: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0 or len(s) < 2:
        return s
    r = max(1, int(math.ceil(3.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    return np.convolve(np.pad(s, r, mode="edge"), k, mode="valid")


class VideoDetector(BaseDetector):
    """Diffusion video anomaly detector: one score per frame, per-pixel maps.

    Input: a clip [T, H, W, C] (or [T, H, W]) of uint8 frames or floats in [0, 1], or a list
    of clips (same H, W, C). `fit(list_of_clips)`; `decision_function(clip) -> [T]` (a list of
    clips gives a list of arrays); `anomaly_map(clip) -> [T, H, W]`. At scoring time the channel
    count must match fit; clips of another height/width are resized to the working size (maps come
    back at the input size); a clip shorter than K + 1 frames (even a single frame) is scored with
    its first frame repeated as the missing context. NaN/inf, empty clips, wrong rank, non-numeric
    or non-uint8 integer dtypes and inputs over `adiff.validation.MAX_ELEMENTS` elements are a
    ValueError/TypeError before any conversion or compilation.

    Args:
      contamination: expected anomaly fraction in (0, 0.5]; sets `threshold_` on training frames.
      seed: random seed (initialisation, batches, sampling noise).
      paradigm: "prediction" (conditional future-frame diffusion) or "reconstruction".
      context_frames: K, the previous frames that condition the prediction (clip length K + 1
        for reconstruction).
      motion: "diff" (frame differences of the context as extra conditioning channels), "flow"
        (optical flow between the context frames, `optical_flow`; needs OpenCV) or "none".
      target: "residual" (diffuse frame_t - frame_{t-1}, scaled to unit std) or "frame"
        (prediction paradigm only; the reconstruction paradigm always diffuses the clip).
      parameterization: network output, "v", "eps" or "x0" (see `adiff.parameterization`).
      direction: "forward" (predict frame t from the K previous frames) or "both" (also a
        backward model fitted on reversed clips; scores, maps and predictions are the mean of the
        two; prediction paradigm only; twice the fit and score time).
      appearance: also fit a per-frame appearance model and fuse the two streams (prediction
        paradigm, direction="forward"; about twice the fit time). See `fusion` and `gate`.
      image_size: working resolution: None (the training frames' size), an int (square) or
        (height, width); both divisible by 2 ** (len(channel_mults) - 1).
      base_channels, channel_mults, num_res_blocks, attention_resolutions, groups: the UNet.
      train_steps, batch_size, learning_rate, ema_decay: training.
      score: "sample" (DDIM predictions from t0, error of their mean) or "denoise" (error of the
        x0-prediction from the observed target noised to t0).
      t0: sampling start time / denoising time in (0, 1] (1.0 = from pure noise).
      solver_steps: DDIM steps (score="sample").
      eta: DDIM stochasticity (0 = deterministic).
      num_samples: predictions (or reconstructions) per frame, averaged before the error.
      distance: "squared" or "absolute" per-pixel distance.
      map_sigma: Gaussian blur std (px, working resolution) of the error maps; 0 = off.
      frame_score: "topk", "max" or "mean" of the map.
      topk: fraction of pixels averaged by frame_score="topk".
      normalize: "none" (raw, the headline), "minmax" or "zscore" per clip.
      smooth_sigma: temporal Gaussian smoothing std in frames (0 = off).
      fusion: with appearance=True, "alarm", "gate", "gated_max", "max", "motion" or
        "appearance" (see the module docstring); ignored otherwise.
      gate: the appearance score (in units of its training-frame ceiling) above which a frame
        raises an appearance alarm (fusion="alarm" and "gate") and voids the motion score of the
        frames it conditions ("alarm", "gate" and "gated_max"). 2.5 lies between the highest
        normal frame (1.5) and the lowest anomalous-appearance frame (4.2) of the two development
        seeds (docs/results/video.md, session 17).
      score_batch_size: frames per scoring call (fixed, padded).
      verbose: print training progress.
    """

    def __init__(self, *, contamination: float = 0.1, seed: int = 0,
                 paradigm: str = "prediction", context_frames: int = 2, motion: str = "diff",
                 target: str = "residual", parameterization: str = "v", direction: str = "forward",
                 appearance: bool = False, image_size=None, base_channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 1, attention_resolutions: Sequence[int] = (),
                 groups: int = 8, train_steps: int = 1000, batch_size: int = 32,
                 learning_rate: float = 1e-3, ema_decay: float = 0.995, score: str = "sample",
                 t0: float = 1.0, solver_steps: int = 1, eta: float = 0.0, num_samples: int = 1,
                 distance: str = "squared", map_sigma: float = 1.0, frame_score: str = "topk",
                 topk: float = 0.02, normalize: str = "none", smooth_sigma: float = 0.0,
                 fusion: str = "alarm", gate: float = 2.5, score_batch_size: int = 64,
                 verbose: bool = False):
        self.contamination = contamination
        self.seed = seed
        self.paradigm = paradigm
        self.context_frames = context_frames
        self.motion = motion
        self.target = target
        self.parameterization = parameterization
        self.direction = direction
        self.appearance = appearance
        self.image_size = tuple(image_size) if isinstance(image_size, (list, tuple)) else image_size
        self.base_channels = base_channels
        self.channel_mults = tuple(channel_mults)
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.groups = groups
        self.train_steps = train_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.ema_decay = ema_decay
        self.score = score
        self.t0 = t0
        self.solver_steps = solver_steps
        self.eta = eta
        self.num_samples = num_samples
        self.distance = distance
        self.map_sigma = map_sigma
        self.frame_score = frame_score
        self.topk = topk
        self.normalize = normalize
        self.smooth_sigma = smooth_sigma
        self.fusion = fusion
        self.gate = gate
        self.score_batch_size = score_batch_size
        self.verbose = verbose

    # -- validation ----------------------------------------------------------------------------
    def _check_fit_params(self) -> None:
        validation.check_choice(self.paradigm, PARADIGMS, name="paradigm")
        validation.check_choice(self.motion, MOTIONS, name="motion")
        validation.check_choice(self.target, TARGETS, name="target")
        validation.check_choice(self.parameterization, PARAMETERIZATIONS, name="parameterization")
        validation.check_choice(self.direction, DIRECTIONS, name="direction")
        if self.direction == "both" and self.paradigm != "prediction":
            raise ValueError(f"direction='both' needs paradigm='prediction', got {self.paradigm!r}")
        if not isinstance(self.appearance, (bool, np.bool_)):
            raise TypeError(f"appearance must be True or False, got {self.appearance!r}")
        if self.appearance and (self.paradigm != "prediction" or self.direction != "forward"):
            raise ValueError("appearance=True needs paradigm='prediction' and direction='forward'; got "
                             f"paradigm={self.paradigm!r}, direction={self.direction!r}")
        for name in ("context_frames", "base_channels", "num_res_blocks", "groups",
                     "train_steps", "batch_size"):
            validation.check_positive_int(getattr(self, name), name=name)
        if not self.channel_mults:
            raise ValueError("channel_mults must be a non-empty sequence of positive ints, got ()")
        for m in self.channel_mults:
            validation.check_positive_int(m, name="channel_mults")
        if self.image_size is not None:
            hw = self.image_size if isinstance(self.image_size, tuple) else (self.image_size,) * 2
            if len(hw) != 2:
                raise ValueError(f"image_size must be an int or (height, width), got {self.image_size!r}")
            for v in hw:
                validation.check_positive_int(v, name="image_size")
        if not float(self.learning_rate) > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        validation.check_fraction(self.ema_decay, name="ema_decay", low=0.0, high=1.0, inclusive_low=True)

    def _check_score_params(self) -> None:
        validation.check_choice(self.score, SCORES, name="score")
        validation.check_choice(self.distance, DISTANCES, name="distance")
        validation.check_choice(self.frame_score, FRAME_SCORES, name="frame_score")
        validation.check_choice(self.normalize, NORMALIZATIONS, name="normalize")
        validation.check_choice(self.fusion, FUSIONS, name="fusion")
        if not float(self.gate) > 0.0:
            raise ValueError(f"gate must be > 0, got {self.gate!r}")
        for name in ("solver_steps", "num_samples", "score_batch_size"):
            validation.check_positive_int(getattr(self, name), name=name)
        if not 0.0 < float(self.t0) <= 1.0:
            raise ValueError(f"t0 must lie in (0, 1], got {self.t0!r}")
        for name in ("eta", "map_sigma", "smooth_sigma"):
            if not float(getattr(self, name)) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        validation.check_fraction(self.topk, name="topk", low=0.0, high=1.0)

    def _work_hw(self, hw) -> Tuple[int, int]:
        if self.image_size is None:
            return int(hw[0]), int(hw[1])
        if isinstance(self.image_size, tuple):
            return int(self.image_size[0]), int(self.image_size[1])
        return int(self.image_size), int(self.image_size)

    def _as_clip(self, clip, name: str) -> np.ndarray:
        if clip is None:
            raise TypeError(f"{name} must be an array [T, H, W, C], got None")
        validation.check_size(clip, name=name)  # before any copy of a huge (e.g. broadcast) clip
        arr = np.asarray(clip)
        if arr.dtype == object or arr.dtype.kind not in "buif":
            raise TypeError(f"{name} must hold uint8 or floating values in [0, 1], got dtype {arr.dtype}")
        if arr.dtype == np.bool_:
            raise TypeError(f"{name} must hold uint8 or floating values in [0, 1], got dtype bool")
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4:
            raise ValueError(f"{name} must have shape [T, H, W, C] (or [T, H, W]), got shape {arr.shape}")
        if min(arr.shape) < 1:
            raise ValueError(f"{name} must hold at least one non-empty frame, got shape {arr.shape}")
        if arr.dtype == np.uint8:
            return arr.astype(np.float32) / 255.0
        if arr.dtype.kind in "iu":
            raise TypeError(f"integer {name} must be uint8 (0..255), got dtype {arr.dtype}")
        x = arr.astype(np.float32)
        bad = int(np.sum(~np.isfinite(x)))
        if bad:
            raise ValueError(f"{name} must be finite values in [0, 1]; found {bad} NaN/inf values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-6 or hi > 1.0 + 1e-6:
            raise ValueError(f"float {name} must lie in [0, 1]; got values in [{lo:.4g}, {hi:.4g}]")
        return np.clip(x, 0.0, 1.0)

    def _prepare(self, X, *, fitting: bool):
        """Returns (list of clips [T, h, w, C] in [-1, 1] at the working size, input (H, W) list)."""
        if fitting:
            self._check_fit_params()
        else:
            changed = [k for k in _FIT_PARAMS
                       if _norm(getattr(self, k)) != _norm(self.fit_params_.get(k, _LEGACY_FIT.get(k)))]
            if changed:
                raise ValueError(f"parameters {changed} were changed after fit; they define the "
                                 "trained model (refit instead)")
        self._check_score_params()
        if isinstance(X, (list, tuple)):
            if len(X) == 0:
                raise ValueError("X must hold at least one clip, got an empty list")
            validation.check_total_size(X, name="X")
            names = [f"X[{i}]" for i in range(len(X))]
            clips = [self._as_clip(c, n) for c, n in zip(X, names)]
        else:
            names = ["X"]
            clips = [self._as_clip(X, "X")]
        shapes = {c.shape[1:] for c in clips}
        if fitting:
            if len(shapes) != 1:
                raise ValueError(f"X: training clips must share [H, W, C]; got {sorted(shapes)}")
            shape = clips[0].shape[1:]
            self.input_shape_ = tuple(int(v) for v in shape)
            self.n_channels_ = int(shape[-1])
            hw = self._work_hw(shape[:2])
            f = 2 ** (len(self.channel_mults) - 1)
            if hw[0] % f or hw[1] % f:
                raise ValueError(f"the working size {hw} must be divisible by 2**(len(channel_mults)-1)"
                                 f" = {f}; pass image_size=")
            self.work_hw_ = hw
        for n, c in zip(names, clips):
            if c.shape[-1] != self.n_channels_:
                raise ValueError(f"{n} has {c.shape[-1]} channels (shape {c.shape}), but the detector "
                                 f"was fitted on {self.n_channels_} channels")
        out = [np.asarray(self._resize(2.0 * c - 1.0)) for c in clips]
        if self._flow():  # flow channels after the frame channels (see _split)
            out = [np.concatenate([c, optical_flow(c)], axis=-1) for c in out]
        return out

    def _resize(self, x: np.ndarray) -> np.ndarray:
        hw = tuple(self.work_hw_)
        if tuple(x.shape[1:3]) == hw:
            return x
        out = jax.image.resize(jnp.asarray(x), (x.shape[0],) + hw + (x.shape[-1],), "bilinear")
        return np.asarray(out)

    # -- model pieces --------------------------------------------------------------------------
    @property
    def _sde(self) -> sde_lib.VPSDE:
        return sde_lib.VPSDE()

    def _unet(self) -> UNet:
        return UNet(base_channels=self.base_channels, channel_mults=tuple(self.channel_mults),
                    num_res_blocks=self.num_res_blocks,
                    attention_resolutions=tuple(self.attention_resolutions), groups=self.groups)

    def _shapes(self) -> Tuple[Tuple[int, ...], Optional[Tuple[int, ...]]]:
        """(x shape, cond shape or None) of one example."""
        h, w = self.work_hw_
        c, k = self.n_channels_, int(self.context_frames)
        if self.paradigm == "reconstruction":
            return (h, w, (k + 1) * c), None
        n_motion = {"diff": c, "flow": 2}.get(self.motion, 0)
        n_cond = k * c + max(k - 1, 0) * n_motion
        return (h, w, c), (h, w, n_cond)

    def _windows(self, clip: np.ndarray) -> np.ndarray:
        """[T, K + 1, h, w, C] windows ending at every frame (the start padded by frame 0)."""
        k = int(self.context_frames)
        padded = np.concatenate([np.repeat(clip[:1], k, axis=0), clip], axis=0)
        idx = np.arange(len(clip))[:, None] + np.arange(k + 1)[None, :]
        return padded[idx]

    def _flow(self) -> bool:
        """Whether the prepared clips carry flow channels (prediction with K >= 2 only)."""
        return self.paradigm == "prediction" and self.motion == "flow" and int(self.context_frames) > 1

    def _residual(self) -> bool:
        return self.paradigm == "prediction" and self.target == "residual"

    def _split(self, win: jax.Array, scale: float = 1.0, flow_scale: float = 1.0):
        """windows [B, K + 1, h, w, C (+ 2 flow channels)] -> (x0 [B, h, w, Cx], cond or None).

        x0 is the clip (reconstruction), the frame (target="frame") or the scaled residual
        `scale * (frame - previous frame)` (target="residual"). With motion="flow" the last two
        channels of every frame hold the flow into it; the flows between the context frames,
        times `flow_scale`, join the conditioning."""
        c = self.n_channels_
        frames = win[..., :c]
        b, k1, h, w, _ = win.shape
        if self.paradigm == "reconstruction":
            return jnp.moveaxis(frames, 1, 3).reshape(b, h, w, k1 * c), None
        ctx = frames[:, :-1]
        parts = [jnp.moveaxis(ctx, 1, 3).reshape(b, h, w, (k1 - 1) * c)]
        if self.motion == "diff" and k1 > 2:
            d = ctx[:, 1:] - ctx[:, :-1]
            parts.append(jnp.moveaxis(d, 1, 3).reshape(b, h, w, (k1 - 2) * c))
        if self._flow():
            f = win[:, 1:-1, ..., c:] * flow_scale
            parts.append(jnp.moveaxis(f, 1, 3).reshape(b, h, w, (k1 - 2) * 2))
        x0 = (frames[:, -1] - frames[:, -2]) * scale if self._residual() else frames[:, -1]
        return x0, jnp.concatenate(parts, axis=-1)

    def _train_config(self, n: int, seed: Optional[int] = None) -> trainer.TrainConfig:
        steps = int(self.train_steps)
        return trainer.TrainConfig(
            num_steps=steps, batch_size=int(min(self.batch_size, n)),
            learning_rate=float(self.learning_rate), warmup_steps=min(100, steps // 10),
            schedule="cosine", grad_clip_norm=1.0, ema_decay=float(self.ema_decay),
            log_every=max(1, steps // 5), checkpoint_every=steps,
            seed=self.seed if seed is None else int(seed))

    # -- fit -----------------------------------------------------------------------------------
    def _reversed(self, clip: np.ndarray) -> np.ndarray:
        """A prepared clip in reverse time order (flow channels, if any, recomputed: the flow into
        frame t then comes from frame t + 1)."""
        c = self.n_channels_
        frames = clip[::-1, ..., :c]
        if self._flow():
            return np.concatenate([frames, optical_flow(frames)], axis=-1)
        return np.ascontiguousarray(frames)

    def _fit(self, X, y=None) -> None:
        self.fit_params_ = {k: _norm(getattr(self, k)) for k in _FIT_PARAMS}
        self.params_, self.target_scale_, self.flow_scale_ = self._train(X)
        if self.direction == "both":
            # Same settings and seed on the reversed clips: the backward model.
            self.params_bwd_, self.target_scale_bwd_, self.flow_scale_bwd_ = self._train(
                [self._reversed(c) for c in X])
        self.n_train_ = int(sum(len(c) for c in X))
        self._cache = {}
        if self.appearance:  # (the stream scales are fitted with the training scores, below)
            self.params_app_ = self._train_appearance(X)

    def _training_scores(self, data) -> np.ndarray:
        """appearance=True: one pass of the two streams over the training clips serves both the
        stream scales and the training scores."""
        if not self.appearance:
            return super()._training_scores(data)
        with self.reuse_streams():
            self._calibrate(data)
            return self._decision_function(data)

    def _fit_unet(self, data: np.ndarray, cond_shape, seed: int, split) -> Any:
        """Initialises the UNet with `seed` and trains it by denoising score matching on `data`;
        `split(batch) -> (x0, cond)` cuts a training batch into target and conditioning. Returns
        the EMA params. Shared by the motion model and the appearance model."""
        net, sde, kind = self._unet(), self._sde, self.parameterization
        xs, _ = self._shapes()
        params = jax.jit(net.init)(jax.random.key(seed, impl="rbg"), jnp.zeros((1,) + xs),
                                   jnp.zeros((1,)),
                                   None if cond_shape is None else jnp.zeros((1,) + cond_shape))

        def loss_fn(p, batch, key):
            x0, cond = split(batch)
            return losses.dsm_loss(lambda v, t: net.apply(p, v, t, cond), sde, x0, key,
                                   parameterization=kind).loss, {}

        res = trainer.fit(loss_fn, params, data, config=self._train_config(len(data), seed),
                          progress=self.verbose)
        return res.state.ema_params

    def _train_appearance(self, X):
        """Trains the unconditional single-frame model of appearance=True; returns EMA params."""
        c = self.n_channels_
        data = np.concatenate([np.asarray(v)[..., :c] for v in X]).astype(np.float32)
        return self._fit_unet(data, None, self.seed + 1, lambda batch: (batch, None))

    def _train(self, X) -> tuple:
        """Trains one model on prepared clips; returns (EMA params, target scale, flow scale)."""
        k = int(self.context_frames)
        # Training windows start at frame K (full real context); short clips contribute none.
        wins = [self._windows(c)[k:] for c in X]
        wins = [w for w in wins if len(w)]
        if not wins:
            raise ValueError(f"training clips must have more than context_frames={k} frames; got "
                             f"lengths {[len(c) for c in X]}")
        data = np.concatenate(wins).astype(np.float32)
        # Residual target: frame differences are mostly ~0 (static background), far below the unit
        # scale the VP SDE assumes; scale them to unit std (fitted on the training windows).
        c = self.n_channels_
        scale = 1.0
        if self._residual():
            sd = float(np.std(data[:, -1, ..., :c] - data[:, -2, ..., :c]))
            scale = 1.0 / sd if sd > 1e-6 else 1.0
        # The conditioning flows (between context frames) to unit std as well: pixels of
        # displacement, mostly ~0 on the static background.
        flow_scale = 1.0
        if self._flow():
            sd = float(np.std(data[:, 1:-1, ..., c:]))
            flow_scale = 1.0 / sd if sd > 1e-6 else 1.0
        _, cs = self._shapes()
        split = self._split
        params = self._fit_unet(data, cs, self.seed,
                                lambda batch: split(batch, scale, flow_scale))
        return params, scale, flow_scale

    # -- scoring -------------------------------------------------------------------------------
    def _score_key(self) -> tuple:
        return (self.score, float(self.t0), int(self.solver_steps), float(self.eta), int(self.num_samples),
                self.distance, float(self.map_sigma), self.frame_score, float(self.topk),
                int(self.score_batch_size))

    def _build(self):
        """The jitted per-batch scorer. The target and flow scales are arguments, not constants, so
        the forward and backward models of direction="both" share one compiled function."""
        net, sde = self._unet(), self._sde
        t0, steps, eta = float(self.t0), int(self.solver_steps), float(self.eta)
        n_samples, dist = int(self.num_samples), self.distance
        sigma_blur, reduce = float(self.map_sigma), self._frame_reduce()
        c = self.n_channels_
        recon = self.paradigm == "reconstruction"
        residual = self._residual()
        kind, mode = self.parameterization, self.score
        split = self._split

        def fn(params, win, key, scale, flow_scale):
            x0, cond = split(win, scale, flow_scale)
            win = win[..., :c]  # the frames (flow channels, if any, only condition)
            # SDEdit start: the clip (reconstruction), the previous frame (frame target) or zero
            # motion (residual target); irrelevant at t0 = 1 (pure noise).
            start = x0 if recon else (jnp.zeros_like(x0) if residual else win[:, -2])
            model_fn = lambda v, t: net.apply(params, v, t, cond)
            score_fn = param_lib.score_fn_from(model_fn, sde, kind)

            preds = []
            for r in range(n_samples):
                k_n, k_s = jax.random.split(jax.random.fold_in(key, r))
                z = jax.random.normal(k_n, x0.shape, x0.dtype)
                if mode == "denoise":
                    # Denoising error: noise the observed target to t0 and take the network's
                    # x0-prediction (Tweedie's posterior mean) from it.
                    tt = jnp.full((x0.shape[0],), t0, x0.dtype)
                    a, s = sde.alpha(tt), sde.sigma(tt)
                    u = sde_lib.broadcast_to_x(a, x0) * x0 + sde_lib.broadcast_to_x(s, x0) * z
                    preds.append(param_lib.to_x0(model_fn(u, tt), u, a, s, kind))
                else:
                    u = sde.alpha(t0) * start + sde.sigma(t0) * z
                    out = solvers.ddim(score_fn, sde, u, k_s, t_start=t0, num_steps=steps, eta=eta)
                    preds.append(out.x)
            pred = jnp.mean(jnp.stack(preds), axis=0)
            if residual:  # back to frames: previous frame + predicted motion residual
                target, pred = win[:, -1], win[:, -2] + pred / scale
            else:
                target = x0[..., -c:]
                pred = pred[..., -c:]
            d = (target - pred) ** 2 if dist == "squared" else jnp.abs(target - pred)
            maps = _blur2d(jnp.mean(d, axis=-1), sigma_blur)
            return reduce(maps), maps, jnp.clip((pred + 1.0) / 2.0, 0.0, 1.0)

        return jax.jit(fn)

    def _app_key(self) -> tuple:
        return ("appearance", self.distance, float(self.map_sigma), self.frame_score, float(self.topk),
                int(self.score_batch_size))

    def _build_appearance(self):
        """The jitted per-batch scorer of the appearance stream: frames [B, h, w, C] -> (scores
        [B], maps [B, h, w]), the denoising-error map averaged over APPEARANCE_TIMES x
        APPEARANCE_DRAWS noise draws."""
        net, sde, kind = self._unet(), self._sde, self.parameterization
        dist, sigma_blur = self.distance, float(self.map_sigma)
        reduce = self._frame_reduce()

        def fn(params, x0, key):
            total = jnp.zeros(x0.shape[:-1], x0.dtype)
            for i, tv in enumerate(APPEARANCE_TIMES):
                tt = jnp.full((x0.shape[0],), tv, x0.dtype)
                a, s = sde.alpha(tt), sde.sigma(tt)
                for r in range(APPEARANCE_DRAWS):
                    z = jax.random.normal(jax.random.fold_in(key, i * APPEARANCE_DRAWS + r), x0.shape,
                                          x0.dtype)
                    u = sde_lib.broadcast_to_x(a, x0) * x0 + sde_lib.broadcast_to_x(s, x0) * z
                    pred = param_lib.to_x0(net.apply(params, u, tt, None), u, a, s, kind)
                    d = (x0 - pred) ** 2 if dist == "squared" else jnp.abs(x0 - pred)
                    total = total + jnp.mean(d, axis=-1)
            maps = _blur2d(total / (len(APPEARANCE_TIMES) * APPEARANCE_DRAWS), sigma_blur)
            return reduce(maps), maps

        return jax.jit(fn)

    def _appearance_clip(self, clip: np.ndarray, clip_index: int):
        """Raw appearance-stream scores [T] and maps [T, h, w] of one prepared clip."""
        key_c = self._app_key()
        cache = self.__dict__.setdefault("_cache", {})
        if key_c not in cache:
            cache[key_c] = self._build_appearance()
        fn = cache[key_c]
        frames = np.asarray(clip)[..., :self.n_channels_]
        bs = int(self.score_batch_size)
        key = jax.random.fold_in(jax.random.key(self.seed + 8), clip_index)
        s_out, m_out = [], []
        for i, b0 in enumerate(range(0, len(frames), bs)):
            fb = frames[b0:b0 + bs]
            m = len(fb)
            if m < bs:
                fb = np.concatenate([fb, np.repeat(fb[-1:], bs - m, axis=0)])
            s, mp = fn(self.params_app_, jnp.asarray(fb), jax.random.fold_in(key, i))
            s_out.append(np.asarray(s)[:m])
            m_out.append(np.asarray(mp)[:m])
        return np.concatenate(s_out).astype(np.float64), np.concatenate(m_out)

    def _context_index(self, n_frames: int) -> np.ndarray:
        """[T, K] indices of the context frames that conditioned each frame's motion score (frames
        < K are scored as frame K, so they share its context; clip starts padded by frame 0)."""
        k = int(self.context_frames)
        first = min(k, n_frames - 1)
        end = np.maximum(np.arange(n_frames), first)
        return np.clip(end[:, None] - k + np.arange(k)[None, :], 0, n_frames - 1)

    def _streams(self, clip: np.ndarray, clip_index: int) -> dict:
        """Both streams' raw scores, maps and the motion predictions of one prepared clip (from the
        memo of `reuse_streams` where one is open and holds them)."""
        memo = self.__dict__.get("_stream_memo")
        if memo is not None:
            key = (int(clip_index), hashlib.sha1(np.ascontiguousarray(clip).tobytes()).hexdigest(),
                   clip.shape, repr(self._score_key()), repr(self._app_key()))
            if key in memo:
                return memo[key]
        s_m, m_m, pred = self._raw_one(clip, clip_index, "forward")
        s_a, m_a = self._appearance_clip(clip, clip_index)
        out = {"motion": s_m, "motion_maps": m_m, "predictions": pred, "appearance": s_a,
               "appearance_maps": m_a}
        if memo is not None:
            memo[key] = out
        return out

    @contextlib.contextmanager
    def reuse_streams(self):
        """Context manager (appearance=True): inside it, scoring a clip again with the same scoring
        settings (and at the same position in its call, which keys the noise) reuses the two
        streams' raw scores and maps instead of recomputing them, so comparing `fusion` or `gate`
        settings costs one scoring pass. Holds every scored clip's maps and predictions in memory
        until the block ends.

        Example:
          with det.reuse_streams():
              for f in ("alarm", "max"):
                  det.set_params(fusion=f)
                  scores[f] = det.decision_function(clips)
        """
        if not self.appearance:
            raise ValueError("reuse_streams needs a detector with appearance=True")
        if "_stream_memo" in self.__dict__:  # nested: the open block's memo serves
            yield self
            return
        self._stream_memo = {}
        try:
            yield self
        finally:
            self.__dict__.pop("_stream_memo", None)

    def _scales(self) -> Tuple[float, float]:
        """(motion, appearance) training-frame ceilings for the scoring settings in force."""
        sc = getattr(self, "stream_scales_", None)
        if sc is None or _norm(tuple(sc["key"])) != _norm(tuple(self._scales_key())):
            raise ValueError("the stream scales of fusion=" + repr(self.fusion) + " were fitted for other "
                             "scoring settings; call calibrate(normal_clips) (e.g. the training clips) "
                             "for the current ones, or use fusion='motion' / 'appearance'")
        return float(sc["motion"]), float(sc["appearance"])

    def _scales_key(self) -> list:
        """The scoring settings that the stream scales belong to."""
        return [_norm(v) for v in self._score_key()] + [_norm(v) for v in self._app_key()]

    def _gated(self, z_a: np.ndarray) -> np.ndarray:
        """[T] 0/1 from scaled appearance scores z_a [T]: the frames whose motion score a gating
        fusion voids (a context frame's z_a is above `gate`)."""
        return (z_a[self._context_index(len(z_a))].max(axis=1) > float(self.gate)).astype(int)

    def _fuse(self, st: dict):
        """Fused (scores [T], maps [T, h, w]) of `_streams` output, by `fusion`."""
        if self.fusion == "motion":
            return st["motion"], st["motion_maps"]
        if self.fusion == "appearance":
            return st["appearance"], st["appearance_maps"]
        q_m, q_a = self._scales()
        z_m, z_a = st["motion"] / q_m, st["appearance"] / q_a
        keep = 1.0 - self._gated(z_a) if self.fusion in _GATING else np.ones_like(z_a)
        # "alarm" / "gate": the appearance stream counts only where it raises an alarm (above the gate).
        gated_alarm = self.fusion in ("alarm", "gate")
        alarm = (z_a > float(self.gate)).astype(z_a.dtype) if gated_alarm else np.ones_like(z_a)
        if self.fusion == "alarm":  # two tiers: every alarm above every other frame
            s = keep * z_m
            scores = np.where(alarm > 0, 1.0 + z_a / (1.0 + z_a), s / (1.0 + s))
        else:
            scores = np.maximum(keep * z_m, alarm * z_a)
        maps = np.maximum(keep[:, None, None] * st["motion_maps"] / q_m,
                          alarm[:, None, None] * st["appearance_maps"] / q_a)
        return scores, maps

    def _calibrate(self, clips: List[np.ndarray]) -> None:
        motion, app = [], []
        for i, c in enumerate(clips):
            st = self._streams(c, i)
            motion.append(st["motion"])
            app.append(st["appearance"])
        q = [float(np.quantile(np.concatenate(v), SCALE_QUANTILE)) for v in (motion, app)]
        self.stream_scales_ = {"key": self._scales_key(), "motion": max(q[0], 1e-12),
                               "appearance": max(q[1], 1e-12)}

    def calibrate(self, X):
        """Refits the two streams' scales (appearance=True) on normal clips for the scoring settings
        in force, and with them `decision_scores_` and `threshold_`. Needed after set_params changes
        a scoring setting, unless fusion is "motion" or "appearance" (fit calibrates on the training
        clips).

        Args:
          X: normal clips (a clip or a list; the training clips are the natural choice).

        Returns:
          self.
        """
        self._check_fitted()
        if not self.appearance:
            raise ValueError("calibrate needs a detector fitted with appearance=True")
        clips = self._prepare(X if isinstance(X, (list, tuple)) else [X], fitting=False)
        self.decision_scores_ = np.asarray(self._training_scores(clips), np.float64)
        self._process_decision_scores()
        return self

    def _frame_reduce(self):
        """maps [B, h, w] -> frame scores [B] by frame_score / topk."""
        fscore, topk = self.frame_score, float(self.topk)

        def reduce(maps):
            flat = maps.reshape(maps.shape[0], -1)
            if fscore == "max":
                return jnp.max(flat, axis=-1)
            if fscore == "mean":
                return jnp.mean(flat, axis=-1)
            kk = max(1, int(round(topk * flat.shape[-1])))
            return jnp.mean(jax.lax.top_k(flat, kk)[0], axis=-1)

        return reduce

    def _raw_clip(self, clip: np.ndarray, clip_index: int):
        """Raw frame scores [T], maps [T, h, w] and predictions [T, h, w, C] of one prepared clip
        (direction="both": the mean of the forward model's and the backward model's;
        appearance=True: the fused streams, by `fusion`)."""
        if self.appearance and self.fusion != "motion":  # ("motion" needs no appearance stream)
            st = self._streams(clip, clip_index)
            return self._fuse(st) + (st["predictions"],)
        fwd = self._raw_one(clip, clip_index, "forward")
        if self.direction != "both":
            return fwd
        bwd = self._raw_one(self._reversed(clip), clip_index, "backward")
        return tuple((a + b[::-1]) / 2 for a, b in zip(fwd, bwd))

    def _raw_one(self, clip: np.ndarray, clip_index: int, which: str):
        """`_raw_clip` of one model: "forward", or "backward" on an already reversed clip."""
        if which == "forward":
            params = self.params_
            scales = (getattr(self, "target_scale_", 1.0), getattr(self, "flow_scale_", 1.0))
        else:
            params, scales = self.params_bwd_, (self.target_scale_bwd_, self.flow_scale_bwd_)
        key_c = self._score_key()
        cache = getattr(self, "_cache", None)
        if cache is None:
            cache = self._cache = {}
        if key_c not in cache:
            cache[key_c] = self._build()
        fn = cache[key_c]
        scale, flow_scale = (jnp.float32(v) for v in scales)
        k = int(self.context_frames)
        wins = self._windows(clip)
        # Frames < K have no full context: they are scored as frame K (or the last frame).
        first = min(k, len(clip) - 1)
        idx = np.concatenate([np.full(first, first), np.arange(first, len(clip))]).astype(int)
        uniq = np.arange(first, len(clip))
        bs = int(self.score_batch_size)
        key = jax.random.fold_in(jax.random.key(self.seed + 7), clip_index)
        s_out, m_out, p_out = [], [], []
        for i, b0 in enumerate(range(0, len(uniq), bs)):
            sel = uniq[b0:b0 + bs]
            wb = wins[sel]
            m = len(wb)
            if m < bs:
                wb = np.concatenate([wb, np.repeat(wb[-1:], bs - m, axis=0)])
            s, mp, pr = fn(params, jnp.asarray(wb), jax.random.fold_in(key, i), scale, flow_scale)
            s_out.append(np.asarray(s)[:m])
            m_out.append(np.asarray(mp)[:m])
            p_out.append(np.asarray(pr)[:m])
        pos = idx - first
        return (np.concatenate(s_out)[pos].astype(np.float64), np.concatenate(m_out)[pos],
                np.concatenate(p_out)[pos])

    def _post(self, s: np.ndarray) -> np.ndarray:
        if self.normalize == "minmax":
            span = s.max() - s.min()
            s = (s - s.min()) / (span if span > 0 else 1.0)
        elif self.normalize == "zscore":
            sd = s.std()
            s = (s - s.mean()) / (sd if sd > 0 else 1.0)
        return _smooth1d(s, float(self.smooth_sigma))

    def _scores_list(self, clips: List[np.ndarray]) -> List[np.ndarray]:
        return [self._post(self._raw_clip(c, i)[0]) for i, c in enumerate(clips)]

    def _decision_function(self, X) -> np.ndarray:
        return np.concatenate(self._scores_list(X))

    def decision_function(self, X):
        """Per-frame anomaly scores (higher = more anomalous).

        Args:
          X: a clip [T, H, W, C] / [T, H, W] (uint8 or floats in [0, 1]) or a list of clips.

        Returns:
          [T] float64 scores for a clip; a list of such arrays for a list of clips.
        """
        self._check_fitted()
        out = self._scores_list(self._prepare(X, fitting=False))
        return out if isinstance(X, (list, tuple)) else out[0]

    def predict(self, X, return_confidence: bool = False):
        """0/1 frame labels by `threshold_` (a list of arrays for a list of clips)."""
        if isinstance(X, (list, tuple)):
            if return_confidence:
                raise ValueError("return_confidence=True needs a single clip, got a list of clips")
            return [(s > self.threshold_).astype(int) for s in self.decision_function(X)]
        return super().predict(X, return_confidence=return_confidence)

    def predict_proba(self, X, method: str = "linear", return_confidence: bool = False):
        if isinstance(X, (list, tuple)):
            raise ValueError("predict_proba takes a single clip [T, H, W, C], got a list of clips")
        return super().predict_proba(X, method=method, return_confidence=return_confidence)

    def analyze(self, clip) -> dict:
        """Raw scores [T], maps [T, H, W] and predicted frames [T, H, W, C] in [0, 1] of one clip
        (at the input resolution; no normalisation or smoothing). With appearance=True also the
        raw stream scores "motion_scores" and "appearance_scores" [T] and "gated" [T] (1 where
        the motion score was voided by an anomalous-looking context frame; all 0 unless fusion is
        "alarm", "gate" or "gated_max")."""
        self._check_fitted()
        if isinstance(clip, (list, tuple)):
            raise ValueError("analyze takes a single clip [T, H, W, C], got a list of clips")
        arr = np.asarray(clip)
        prepared = self._prepare(arr, fitting=False)[0]
        extra = {}
        if self.appearance:
            st = self._streams(prepared, 0)
            (s, maps), preds = self._fuse(st), st["predictions"]
            gated = (self._gated(st["appearance"] / self._scales()[1]) if self.fusion in _GATING
                     else np.zeros(len(s), int))
            extra = {"motion_scores": st["motion"], "appearance_scores": st["appearance"], "gated": gated}
        else:
            s, maps, preds = self._raw_clip(prepared, 0)
        hw = tuple(arr.shape[1:3])
        if tuple(maps.shape[1:]) != hw:
            maps = np.asarray(jax.image.resize(jnp.asarray(maps), (len(maps),) + hw, "bilinear"))
            preds = np.asarray(jax.image.resize(jnp.asarray(preds), (len(preds),) + hw + preds.shape[-1:],
                                                "bilinear"))
        return {"scores": s, "maps": maps, "predictions": preds, **extra}

    def anomaly_map(self, X):
        """Per-pixel anomaly maps [T, H, W] at the input resolution (a list for a list of clips)."""
        if isinstance(X, (list, tuple)):
            return [self.analyze(c)["maps"] for c in X]
        return self.analyze(X)["maps"]

    # -- persistence ---------------------------------------------------------------------------
    def _export(self):
        meta = {"n_train": self.n_train_, "input_shape": list(self.input_shape_),
                "n_channels": self.n_channels_, "work_hw": list(self.work_hw_),
                "fit_params": self.fit_params_, "target_scale": float(self.target_scale_),
                "flow_scale": float(getattr(self, "flow_scale_", 1.0))}
        if self.direction == "both":
            meta.update(target_scale_bwd=float(self.target_scale_bwd_),
                        flow_scale_bwd=float(self.flow_scale_bwd_))
            return meta, jax.tree.map(np.asarray, {"forward": self.params_, "backward": self.params_bwd_})
        if self.appearance:
            meta["stream_scales"] = self.stream_scales_
            return meta, jax.tree.map(np.asarray, {"forward": self.params_, "appearance": self.params_app_})
        return meta, jax.tree.map(np.asarray, self.params_)

    def _abstract_arrays(self, meta):
        self._check_fit_params()
        self.n_channels_ = int(meta["n_channels"])
        self.work_hw_ = tuple(int(v) for v in meta["work_hw"])
        net = self._unet()
        xs, cs = self._shapes()
        one = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1,) + xs), jnp.zeros((1,)),
                                              None if cs is None else jnp.zeros((1,) + cs)))
        if self.direction == "both":
            return {"forward": one, "backward": one}
        if self.appearance:
            app = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1,) + xs), jnp.zeros((1,)),
                                                  None))
            return {"forward": one, "appearance": app}
        return one

    def _import(self, meta, arrays):
        self.n_train_ = int(meta["n_train"])
        self.input_shape_ = tuple(int(v) for v in meta["input_shape"])
        self.n_channels_ = int(meta["n_channels"])
        self.work_hw_ = tuple(int(v) for v in meta["work_hw"])
        self.fit_params_ = {k: _norm(v) for k, v in meta["fit_params"].items()}
        self.target_scale_ = float(meta.get("target_scale", 1.0))
        self.flow_scale_ = float(meta.get("flow_scale", 1.0))
        for k, v in _LEGACY_FIT.items():  # models saved before these options existed
            if k not in self.fit_params_:
                self.fit_params_[k] = v
                setattr(self, k, v)
        if self.direction == "both":
            self.params_ = jax.tree.map(jnp.asarray, arrays["forward"])
            self.params_bwd_ = jax.tree.map(jnp.asarray, arrays["backward"])
            self.target_scale_bwd_ = float(meta["target_scale_bwd"])
            self.flow_scale_bwd_ = float(meta["flow_scale_bwd"])
        elif self.appearance:
            self.params_ = jax.tree.map(jnp.asarray, arrays["forward"])
            self.params_app_ = jax.tree.map(jnp.asarray, arrays["appearance"])
            self.stream_scales_ = {"key": list(meta["stream_scales"]["key"]),
                                   "motion": float(meta["stream_scales"]["motion"]),
                                   "appearance": float(meta["stream_scales"]["appearance"])}
        else:
            self.params_ = jax.tree.map(jnp.asarray, arrays)
        self._cache = {}
