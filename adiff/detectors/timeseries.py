"""TimeSeriesDetector: diffusion anomaly detection for univariate and multivariate series.

A composition of preprocessing (per-channel z-scoring fitted on the training series, NaN -> an
observed mask), a temporal score network (`adiff.nets.temporal.TemporalNet`: dilated
convolutions, channel mixing and self-attention over time) conditioned on
[observed values * known mask, known mask, observed mask], a VP SDE and one of two scorers:

- "reconstruction" (the survey's reconstruction paradigm): each window is partially diffused to
  t0 and denoised by DDIM (`adiff.scoring.reconstruction`) with no values in the conditioning
  (the known mask is all zero), the squared error per entry is the anomaly map.
- "imputation" (ImDiffusion, Chen et al., VLDB 2024): entries are hidden by grid masks (blocks of
  time steps, shifted per channel, so every entry is hidden exactly once by the `num_grid_masks`
  grid masks) and by random masks (each entry hidden with probability `mask_ratio`); the hidden
  entries are imputed by ancestral DDIM from the prior, the known entries held to their values
  (replacement) and given to the network as conditioning; the error of the imputation's
  x0-prediction on the hidden entries is averaged over the last `num_levels` noise levels of the
  trajectory and over the masks.
- "denoising" (a density-style scorer from the same network, in the spirit of the diffusion
  ELBO's denoising terms, unweighted): each window is noised to every time of `denoise_t` with
  noise drawn once from a fixed key (the same draws for every window: common random numbers),
  the network predicts x0 in its unconditional mode in one evaluation per level, and the squared
  x0 error per entry, averaged over the levels, is the anomaly map. No solver; `len(denoise_t)`
  network evaluations per window.
- "dte_np" (non-parametric diffusion-time estimation, DTE-NP, Livernoche et al., ICLR 2024; no
  network): each window, flattened, is read as a noisy copy of one of the training windows and
  scored by the posterior mean of its diffusion time given the mean squared distance to its
  `dte_k` nearest training windows (`adiff.scoring.dte_nonparametric`). Training windows are
  kept (at most `dte_max_windows`, the stride raised to fit); scoring windows start at every
  step and a window's score goes to its centre step (the first and last steps take the nearest
  centre's score). A label-free rule picks the time grid at fit (`dte_window_grid`): DTE's
  discrete grid, unless the training windows' own leave-one-out scores already crowd its last
  `DTE_SATURATION` (high-dimensional windows: test windows would then all sit on its last step,
  a constant score), then the VP SDE's unbounded time grid. Missing values enter the distance
  as masks ("expected" distance of dte_nonparametric). It is a monotone transform of a k-NN
  distance on the windows, the strongest family of window baselines here
  (docs/results/timeseries.md).

The network is trained once, by denoising score matching on windows of the training series, on
the hidden entries of a training mask drawn per window: all entries (unconditional, the mode
reconstruction uses) with probability `uncond_prob`, else a grid or random mask (the imputation
modes). Missing values (NaN) are never replaced by zeros as data: they are masked out of the
loss, of the known entries and of the score, and the network sees the observed mask. Irregularly
sampled series enter the same way: resample them to a regular grid with NaN at absent steps.

Per-channel error calibration (`channel_norm`): a channel that is hard to predict even when
normal has large errors everywhere and would dominate a plain sum over channels. With
channel_norm="holdout" (the default "auto" picks it for multivariate series) the network is
trained on all but the last `calibration_fraction` of the training series; every paradigm scores
that held-out tail (normal steps the network never trained on), and each channel's per-step error
is standardised by the mean and standard deviation of that channel's held-out errors (standard
deviations floored at 0.1 x their median over channels, so a channel that is near-constant in the
tail cannot blow up) before the channels are combined by `channel_combine` ("mean" or "max" over
the observed channels). A univariate series is not calibrated under "auto": standardising its one
channel is an increasing affine map, which changes no ranking, so holding data out would only cost
training data. When calibrated, `threshold_` is the contamination quantile of the held-out tail's
scores (normal steps the network did not see) rather than of all training steps.

Window scores become per-step scores: the series (z-scored) is padded by reflection with L // 2
steps in front and L // 2 + stride behind, windows of length L start every `score_stride` steps,
and each step's per-entry errors are combined over the windows covering it ("mean") or taken
from the one window in whose central `score_stride` positions it lies ("centre"); a step's score
is the mean over its observed channels. Every step, the first and the last included, gets a
score. Scoring streams over the series in fixed-size batches of windows with one compiled
function: the padded series is never built (windows gather their steps through the reflection
index map), the input is preprocessed one batch's range at a time, and the per-entry error sums
and counts are kept only for the steps of the current batch; a step's score is written out once
no later window covers it. Memory beyond the input and the [T] output is one batch, whatever T
(docs/results/timeseries.md, "Scaling": a 1,000,000-step series).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from adiff import losses, parameterization, scoring as scoring_lib, sde as sde_lib, validation
from adiff.data.timeseries import window_dataset, window_starts
from adiff.detectors.base import BaseDetector
from adiff.nets.temporal import TemporalNet
from adiff.training import trainer

SCORINGS = ("reconstruction", "imputation", "denoising")  # paradigms of the network
NONPARAMETRIC = ("dte_np",)  # window scorers without a network
# DTE-NP's grid rule (fixed before any test figure was seen, docs/results/timeseries.md): when the
# median leave-one-out score of the training windows lies in the last DTE_SATURATION of DTE's
# discrete grid of DTE_NUM_STEPS steps, score on the VP SDE's time grid instead.
DTE_SATURATION = 0.2
DTE_NUM_STEPS = 300
COMBINES = ("mean", "centre")
CHANNEL_NORMS = ("auto", "holdout", "none")
CHANNEL_COMBINES = ("mean", "max")
# v-prediction: its x0 error does not blow up as alpha_t -> 0 (eps-prediction's is scaled by
# sigma_t / alpha_t, ~150 at T), which the imputation trajectory from the prior needs.
PARAMETERIZATION = "v"
# Rows of the raw input validated at a time before streaming (inf check, any observed value).
_CHUNK_ROWS = 1 << 16
# source(lo, hi) -> (values, observed), both [hi - lo, C] float32: steps lo..hi-1 preprocessed.
Source = Callable[[int, int], Tuple[np.ndarray, np.ndarray]]

__all__ = ["TimeSeriesDetector", "SCORINGS", "NONPARAMETRIC", "COMBINES", "CHANNEL_NORMS",
           "CHANNEL_COMBINES", "dte_window_grid"]

# An output of `TimeSeriesDetector._stream`: "map" (the per-entry map [T, C]) or per-step scores [T]
# from (channel loc [C], channel scale [C], "mean" | "max").
Output = Any


def _net(cfg: Tuple) -> TemporalNet:
    channels, num_blocks, dilations, kernel_size, attention, num_heads, time_dim = cfg
    return TemporalNet(channels=channels, num_blocks=num_blocks, dilations=tuple(dilations),
                       kernel_size=kernel_size, attention=attention, num_heads=num_heads,
                       time_dim=time_dim)


def _cond(x: jax.Array, known: jax.Array, obs: jax.Array) -> jax.Array:
    """Conditioning channels [B, L, 3C]: known values, known mask, observed mask."""
    return jnp.concatenate([x * known, known, obs], axis=-1)


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """Index into a length-n series of position i of its reflection-padded extension.

    The extension is numpy's `np.pad(..., mode="reflect")` (mirrored about the end steps, which
    are not repeated) for any pad width: positions i < 0 or i >= n map back periodically with
    period 2 (n - 1).

    Args:
      i: integer positions relative to the series' first step (any values).
      n: series length, >= 2.

    Returns:
      Indices in [0, n), same shape as i.
    """
    period = 2 * (n - 1)
    j = np.mod(i, period)
    return np.where(j < n, j, period - j)


def _grid_mask(length: int, channels: int, num_masks: int, block: int, k) -> jax.Array:
    """[L, C] 0/1: entry (i, c) hidden when (i // block + c) % num_masks == k."""
    i = jnp.arange(length)[:, None] // block
    c = jnp.arange(channels)[None, :]
    return ((i + c) % num_masks == k).astype(jnp.float32)


def dte_window_grid(w_train: np.ndarray, *, k: int = 5,
                    observed: np.ndarray | None = None) -> Tuple[str, float]:
    """DTE-NP's label-free time-grid rule for flattened training windows `w_train` [N, D].

    Returns ("vpsde", f) when the median leave-one-out score f of the training windows (as a
    fraction of the last time of DTE's discrete grid) exceeds 1 - DTE_SATURATION, else ("dte", f).
    `observed`: optional [N, D] 0/1 mask of observed entries.
    """
    loo = scoring_lib.dte_nonparametric(w_train, w_train, k=k, exclude_self=True,
                                        num_steps=DTE_NUM_STEPS, observed_train=observed,
                                        observed=observed).scores
    frac = float(np.median(np.asarray(loo))) / (DTE_NUM_STEPS - 1)
    return ("vpsde" if frac > 1.0 - DTE_SATURATION else "dte"), frac


@functools.lru_cache(maxsize=32)
def _scorer(net_cfg: Tuple, paradigm: str, t0: Tuple[float, ...], solver_steps: int,
            num_grid: int, num_random: int, mask_ratio: float, block: int, num_levels: int,
            x0_bound: float, denoise_t: Tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)):
    """A jitted fn(params, x [B,L,C], obs [B,L,C], key) -> (err_sum, count), both [B, L, C].

    err_sum is the sum of per-entry squared errors over the estimates made for each entry
    (masks, noise levels), count the number of those estimates; cached on the static settings
    so detectors with the same configuration share one compilation.
    """
    net, sde = _net(net_cfg), sde_lib.VPSDE()

    if paradigm == "reconstruction":
        def fn(params, x, obs, key):
            cond = _cond(x, jnp.zeros_like(obs), obs)
            model_fn = lambda xt, t: net.apply(params, xt, t, cond)
            score_fn = parameterization.score_fn_from(model_fn, sde, PARAMETERIZATION)
            maps = scoring_lib.reconstruction(score_fn, sde, x, key, t0=t0,
                                              num_steps=solver_steps).maps
            return maps * obs, obs
        return jax.jit(fn)

    if paradigm == "denoising":
        levels = np.asarray(denoise_t, np.float32)

        def fn(params, x, obs, key):
            del key  # fixed draws: the same noise for every window and batch
            cond = _cond(x, jnp.zeros_like(obs), obs)
            err = jnp.zeros_like(x)
            for j, t in enumerate(levels):
                k_j = jax.random.fold_in(jax.random.key(1234), j)
                z = jax.random.normal(k_j, x.shape[1:], x.dtype)  # [L, C], shared by all windows
                a, s = sde.alpha(t), sde.sigma(t)
                xt = a * x + s * z[None]
                out = net.apply(params, xt, jnp.full((x.shape[0],), t), cond)
                x0 = parameterization.to_x0(out, xt, a, s, PARAMETERIZATION)
                x0 = jnp.clip(x0, -x0_bound, x0_bound)
                err = err + jnp.square(x0 - x) / len(levels)
            return err * obs, obs
        return jax.jit(fn)

    t_end = 1e-3
    grid = np.linspace(sde.T, t_end, solver_steps + 1).astype(np.float32)
    level_w = np.zeros(solver_steps, np.float32)
    level_w[-num_levels:] = 1.0 / num_levels

    def impute(params, x, obs, hidden, key):
        """Ancestral DDIM (eta = 1) with replacement; returns the level-averaged squared error."""
        known = (1.0 - hidden) * obs
        cond = _cond(x, known, obs)
        k0, key = jax.random.split(key)
        state = sde.prior_sample(k0, x.shape, x.dtype)

        def step(carry, inp):
            state, acc = carry
            t, tn, w, k = inp
            k_merge, k_noise = jax.random.split(k)
            tb = jnp.full((x.shape[0],), t)
            a, s = sde.alpha(t), sde.sigma(t)
            z = jax.random.normal(k_merge, x.shape, x.dtype)
            state = jnp.where(known > 0, a * x + s * z, state)
            out = net.apply(params, state, tb, cond)
            # Clip the x0-prediction to the data's range (inputs are clipped to it) and keep eps
            # consistent with it (DDPM's clip_denoised).
            x0 = jnp.clip(parameterization.to_x0(out, state, a, s, PARAMETERIZATION), -x0_bound, x0_bound)
            eps = (state - a * x0) / s
            acc = acc + w * jnp.square(x0 - x)
            an, sn = sde.alpha(tn), sde.sigma(tn)
            c2 = sn ** 2 * -jnp.expm1(2.0 * (sde.log_snr(t) - sde.log_snr(tn)))
            mean = an * x0 + jnp.sqrt(jnp.maximum(sn ** 2 - c2, 0.0)) * eps
            state = mean + jnp.sqrt(c2) * jax.random.normal(k_noise, x.shape, x.dtype)
            return (state, acc), None

        keys = jax.random.split(key, solver_steps)
        (_, acc), _ = jax.lax.scan(step, (state, jnp.zeros_like(x)),
                                   (jnp.asarray(grid[:-1]), jnp.asarray(grid[1:]),
                                    jnp.asarray(level_w), keys))
        scored = hidden * obs
        return acc * scored, scored

    def fn(params, x, obs, key):
        b, length, channels = x.shape
        err, cnt = jnp.zeros_like(x), jnp.zeros_like(x)
        for j in range(num_grid + num_random):
            k_mask, k_imp = jax.random.split(jax.random.fold_in(key, j))
            if j < num_grid:
                hidden = jnp.broadcast_to(_grid_mask(length, channels, num_grid, block, j), x.shape)
            else:
                hidden = jax.random.bernoulli(k_mask, mask_ratio, x.shape).astype(x.dtype)
            e, c = impute(params, x, obs, hidden, k_imp)
            err, cnt = err + e, cnt + c
        return err, cnt

    return jax.jit(fn)


class TimeSeriesDetector(BaseDetector):
    """Diffusion anomaly detector for series [T] or [T, C]; one score per time step.

    Args:
      scoring: "imputation" (default), "reconstruction" or "denoising" (a network's paradigm), or
        "dte_np" (no network: diffusion-time estimation on the windows); see the module docstring.
      contamination: expected fraction of anomalous steps, in (0, 0.5]; sets `threshold_`.
      seed: random seed (initialisation, training order, masks and noise).
      window: window length L (steps); series must have at least L steps.
      train_stride: step between training windows.
      score_stride: step between scoring windows (each step is covered by L / score_stride
        windows in "mean" mode).
      combine: "mean" (average over the windows covering a step) or "centre" (the window in whose
        centre the step lies).
      channels: width of the TemporalNet.
      num_blocks: dilated residual blocks of the TemporalNet.
      dilations: dilation cycle of the blocks.
      kernel_size: convolution kernel size.
      attention: self-attention over time in the TemporalNet.
      num_heads: attention heads (divide `channels`).
      time_dim: size of the diffusion-time embedding.
      train_steps: optimisation steps (CPU-sized default: 600).
      batch_size: training windows per step (capped at the number of windows).
      learning_rate: AdamW peak learning rate (cosine schedule, warm-up).
      uncond_prob: probability that a training window hides every entry (the unconditional mode
        used by reconstruction and denoising); None: 1.0 for "reconstruction" and "denoising",
        0.2 for "imputation".
      mask_rate: probability of dropping each observed entry during training (robustness to
        missing values); 0 disables.
      num_grid_masks: grid masks of the imputation scorer (every entry hidden once), >= 2, or 0.
      num_random_masks: random masks of the imputation scorer.
      mask_ratio: fraction of entries hidden by a random mask (training and scoring).
      grid_block: time steps per grid block; None: max(1, window // 16).
      num_levels: noise levels (last DDIM steps) whose x0-predictions are averaged (imputation).
      t0: partial-diffusion start times of "reconstruction".
      solver_steps: DDIM steps (reconstruction: from t0; imputation: from T).
      denoise_t: diffusion times of "denoising" (one network evaluation each).
      clip: z-scored values are clipped to [-clip, clip] (None: no clipping).
      score_batch_size: windows per scoring batch; scoring streams over the series one batch at a
        time, so memory beyond the input and the [T] scores stays flat in T.
      channel_norm: per-channel error calibration (module docstring): "holdout" (standardise each
        channel's error by its statistics on the held-out tail of the training series), "none"
        (raw errors, averaged over channels) or "auto" (default: "holdout" for multivariate
        series, "none" for univariate ones, where it changes no ranking; also "none" when the
        series is too short to hold out `window` steps on both sides).
      channel_combine: how per-channel (calibrated) errors become a step score: "mean" or "max"
        over the observed channels.
      calibration_fraction: fraction of the training series (its last steps) held out from
        training for the channel statistics when calibrating, in (0, 0.5].
      dte_k: nearest training windows of "dte_np".
      dte_max_windows: most training windows "dte_np" keeps (stride raised to fit).
      verbose: print training progress.
    """

    def __init__(self, *, scoring: str = "imputation", contamination: float = 0.1, seed: int = 0,
                 window: int = 64, train_stride: int = 1, score_stride: int = 16,
                 combine: str = "mean", channels: int = 32, num_blocks: int = 4,
                 dilations: Sequence[int] = (1, 2, 4, 8), kernel_size: int = 3,
                 attention: bool = True, num_heads: int = 4, time_dim: int = 64,
                 train_steps: int = 600, batch_size: int = 64, learning_rate: float = 2e-3,
                 uncond_prob: float | None = None, mask_rate: float = 0.0,
                 num_grid_masks: int = 2, num_random_masks: int = 2, mask_ratio: float = 0.25,
                 grid_block: int | None = None, num_levels: int = 3,
                 t0: Sequence[float] = (0.1, 0.3), solver_steps: int = 10,
                 denoise_t: Sequence[float] = (0.05, 0.1, 0.2, 0.3),
                 clip: float | None = 10.0, score_batch_size: int = 128,
                 channel_norm: str = "auto", channel_combine: str = "mean",
                 calibration_fraction: float = 0.2, dte_k: int = 5, dte_max_windows: int = 3000,
                 verbose: bool = False):
        self.scoring = scoring
        self.contamination = contamination
        self.seed = seed
        self.window = window
        self.train_stride = train_stride
        self.score_stride = score_stride
        self.combine = combine
        self.channels = channels
        self.num_blocks = num_blocks
        self.dilations = tuple(dilations)
        self.kernel_size = kernel_size
        self.attention = attention
        self.num_heads = num_heads
        self.time_dim = time_dim
        self.train_steps = train_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.uncond_prob = uncond_prob
        self.mask_rate = mask_rate
        self.num_grid_masks = num_grid_masks
        self.num_random_masks = num_random_masks
        self.mask_ratio = mask_ratio
        self.grid_block = grid_block
        self.num_levels = num_levels
        self.t0 = tuple(t0)
        self.solver_steps = solver_steps
        self.denoise_t = tuple(denoise_t)
        self.clip = clip
        self.score_batch_size = score_batch_size
        self.channel_norm = channel_norm
        self.channel_combine = channel_combine
        self.calibration_fraction = calibration_fraction
        self.dte_k = dte_k
        self.dte_max_windows = dte_max_windows
        self.verbose = verbose

    # -- validation / preprocessing ------------------------------------------------------------
    def _check_params(self) -> None:
        validation.check_choice(self.scoring, SCORINGS + NONPARAMETRIC, name="scoring")
        validation.check_choice(self.combine, COMBINES, name="combine")
        validation.check_choice(self.channel_norm, CHANNEL_NORMS, name="channel_norm")
        validation.check_choice(self.channel_combine, CHANNEL_COMBINES, name="channel_combine")
        validation.check_fraction(self.calibration_fraction, name="calibration_fraction", low=0.0, high=0.5)
        for name in ("window", "train_stride", "score_stride", "channels", "num_blocks",
                     "kernel_size", "num_heads", "time_dim", "train_steps", "batch_size",
                     "solver_steps", "score_batch_size", "num_levels", "dte_k", "dte_max_windows"):
            validation.check_positive_int(getattr(self, name), name=name)
        if self.window < 4:
            raise ValueError(f"window must be >= 4, got {self.window}")
        if self.score_stride > self.window:
            raise ValueError(f"score_stride must be <= window={self.window}, got {self.score_stride}")
        if not self.dilations or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1
                                     for d in self.dilations):
            raise ValueError(f"dilations must be a non-empty sequence of positive ints, got {self.dilations!r}")
        if self.attention and self.channels % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide channels={self.channels}")
        for name in ("num_grid_masks", "num_random_masks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if self.num_grid_masks == 1:
            raise ValueError("num_grid_masks must be 0 or >= 2 (one grid mask would hide everything)")
        if self.scoring == "imputation" and self.num_grid_masks + self.num_random_masks < 1:
            raise ValueError("imputation needs num_grid_masks + num_random_masks >= 1, got 0")
        if self.num_levels > self.solver_steps:
            raise ValueError(f"num_levels must be <= solver_steps={self.solver_steps}, got {self.num_levels}")
        if self.grid_block is not None:
            validation.check_positive_int(self.grid_block, name="grid_block")
        validation.check_fraction(self.mask_ratio, name="mask_ratio", low=0.0, high=0.9)
        validation.check_fraction(self.mask_rate, name="mask_rate", low=0.0, high=0.9, inclusive_low=True)
        if self.uncond_prob is not None:
            validation.check_fraction(self.uncond_prob, name="uncond_prob", low=0.0, high=1.0,
                                      inclusive_low=True)
        if not self.t0 or any(not 0.001 < float(t) <= 1.0 for t in self.t0):
            raise ValueError(f"t0 must be a non-empty sequence of times in (0.001, 1], got {self.t0!r}")
        if not self.denoise_t or any(not 0.001 < float(t) <= 1.0 for t in self.denoise_t):
            raise ValueError(f"denoise_t must be a non-empty sequence of times in (0.001, 1], got "
                             f"{self.denoise_t!r}")
        if self.clip is not None and not float(self.clip) > 0:
            raise ValueError(f"clip must be > 0 or None, got {self.clip!r}")
        validation.check_positive_int(self.batch_size, name="batch_size")

    def _as_series(self, X, name: str = "X") -> np.ndarray:
        arr = validation.as_float_array(X, name=name, ndim=(1, 2), allow_nan=True)
        return arr[:, None] if arr.ndim == 1 else arr

    def _prepare(self, X, *, fitting: bool) -> Dict[str, np.ndarray]:
        if fitting:
            self._check_params()
        raw = self._as_series(X)
        if fitting:
            self.n_features_in_ = raw.shape[1]
        elif raw.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {raw.shape[1]} channels, but the detector was fitted on "
                             f"{self.n_features_in_} channels")
        if raw.shape[0] < self.window:
            raise ValueError(f"X must have at least window={self.window} time steps, got {raw.shape[0]}")
        observed = np.isfinite(raw)
        if not observed.any():
            raise ValueError("X has no observed value (all NaN)")
        if fitting:
            with np.errstate(invalid="ignore", divide="ignore"):
                cnt = observed.sum(0)
                loc = np.where(cnt > 0, np.nansum(raw, 0) / np.maximum(cnt, 1), 0.0)
                var = np.where(cnt > 0, np.nansum(np.square(raw - loc), 0) / np.maximum(cnt, 1), 1.0)
            scale = np.sqrt(var)
            self.loc_ = loc.astype(np.float32)
            self.scale_ = np.where(scale > 1e-8, scale, 1.0).astype(np.float32)
        return self._normalize(raw, observed)

    def _normalize(self, raw: np.ndarray, observed: np.ndarray) -> Dict[str, np.ndarray]:
        values = (raw - self.loc_) / self.scale_
        if self.clip is not None:
            values = np.clip(values, -float(self.clip), float(self.clip))
        values = np.where(observed, values, 0.0).astype(np.float32)
        return {"values": values, "observed": observed.astype(np.float32)}

    def transform(self, X) -> Tuple[np.ndarray, np.ndarray]:
        """The detector's preprocessing: z-scored (training statistics), clipped values [T, C]
        (0 where missing) and the observed mask [T, C]; what the network and the baselines of
        experiments/benchmarks/timeseries.py see."""
        self._check_fitted()
        d = self._prepare(X, fitting=False)
        return d["values"], d["observed"]

    # -- model ---------------------------------------------------------------------------------
    @property
    def _net_cfg(self) -> Tuple:
        return (int(self.channels), int(self.num_blocks), tuple(int(d) for d in self.dilations),
                int(self.kernel_size), bool(self.attention), int(self.num_heads), int(self.time_dim))

    @property
    def _block(self) -> int:
        return int(self.grid_block) if self.grid_block is not None else max(1, self.window // 16)

    def _init_params(self, key, c: int):
        l = self.window
        return _net(self._net_cfg).init(key, jnp.zeros((1, l, c)), jnp.zeros((1,)), jnp.zeros((1, l, 3 * c)))

    def _calibration_split(self, n: int, c: int) -> int:
        """Steps held out at the end of the training series for the channel statistics (0: none).

        "auto" calibrates multivariate series (c > 1) only, and only when both parts keep at
        least `window` steps; an explicit "holdout" on too short a series is an error.
        """
        if self.channel_norm == "none" or (self.channel_norm == "auto" and c == 1):
            return 0
        n_cal = int(round(float(self.calibration_fraction) * n))
        if n_cal < self.window or n - n_cal < self.window:
            if self.channel_norm == "holdout":
                raise ValueError(f"channel_norm='holdout' needs at least window={self.window} steps "
                                 f"on both sides of the calibration split; calibration_fraction="
                                 f"{self.calibration_fraction} of {n} steps holds out {n_cal}")
            return 0
        return n_cal

    def _fit_channel_stats(self, values: np.ndarray, observed: np.ndarray) -> None:
        """Per-paradigm, per-channel mean / std [len(SCORINGS), C] of the per-step errors on the
        held-out (values, observed); identity statistics (0, 1) when nothing is held out."""
        c = int(self.n_features_in_)
        loc = np.zeros((len(SCORINGS), c), np.float32)
        scale = np.ones((len(SCORINGS), c), np.float32)
        if len(values):
            src = ((lambda lo, hi: (values[lo:hi], observed[lo:hi])), values.shape[0], c)
            for i, p in enumerate(SCORINGS):
                if p == "imputation" and int(self.num_grid_masks) + int(self.num_random_masks) < 1:
                    continue  # no imputation scorer: identity statistics
                ent, has = self._stream(src, p, ["map"])[0]
                cnt = has.sum(0)
                mu = np.where(cnt > 0, (ent * has).sum(0) / np.maximum(cnt, 1), 0.0)
                sd = np.sqrt(np.where(cnt > 0, (np.square(ent - mu) * has).sum(0) / np.maximum(cnt, 1), 0.0))
                seen = cnt > 0
                med = float(np.median(sd[seen])) if seen.any() else 1.0
                floor = max(0.1 * med, 1e-12)
                mu = np.where(seen, mu, np.median(mu[seen]) if seen.any() else 0.0)
                sd = np.where(seen, np.maximum(sd, floor), max(med, 1e-12))
                loc[i], scale[i] = mu, sd
        self.channel_loc_, self.channel_scale_ = loc, scale

    def _fit(self, data, y=None) -> None:
        if self.scoring in NONPARAMETRIC:
            self._fit_dte(data)
            return
        values_all, observed_all = data["values"], data["observed"]
        n_all, c = values_all.shape
        n_cal = self._calibration_split(n_all, c)
        values, observed = values_all[:n_all - n_cal], observed_all[:n_all - n_cal]
        l = self.window
        net, sde = _net(self._net_cfg), sde_lib.VPSDE()
        params = self._init_params(jax.random.key(self.seed), c)
        uncond = self.uncond_prob if self.uncond_prob is not None else (
            1.0 if self.scoring in ("reconstruction", "denoising") else 0.2)
        uncond, mask_rate, ratio = float(uncond), float(self.mask_rate), float(self.mask_ratio)
        num_grid, block = max(int(self.num_grid_masks), 2), self._block

        def loss_fn(p, batch, key):
            x, obs = batch["x"], batch["obs"]
            b = x.shape[0]
            k_drop, k_kind, k_rand, k_phase, k_loss = jax.random.split(key, 5)
            if mask_rate > 0:
                obs = obs * jax.random.bernoulli(k_drop, 1.0 - mask_rate, obs.shape).astype(obs.dtype)
            # Training mask per window: all hidden (unconditional) / grid / random.
            u = jax.random.uniform(k_kind, (b, 1, 1))
            phase = jax.random.randint(k_phase, (b,), 0, num_grid)
            grid = jax.vmap(lambda k: _grid_mask(l, c, num_grid, block, k))(phase)
            rand = jax.random.bernoulli(k_rand, ratio, x.shape).astype(x.dtype)
            hidden = jnp.where(u < uncond, 1.0, jnp.where(u < uncond + (1 - uncond) / 2, grid, rand))
            known = (1.0 - hidden) * obs
            cond = _cond(x, known, obs)
            model_fn = lambda xt, t: net.apply(p, xt, t, cond)
            out = losses.dsm_loss(model_fn, sde, x * obs, k_loss, parameterization=PARAMETERIZATION,
                                  mask=hidden * obs)
            return out.loss, {}

        ds = window_dataset(values, observed, length=l, stride=self.train_stride)
        cfg = trainer.TrainConfig(
            num_steps=int(self.train_steps), batch_size=int(min(self.batch_size, len(ds))),
            learning_rate=float(self.learning_rate),
            warmup_steps=min(50, self.train_steps // 10), schedule="cosine", grad_clip_norm=1.0,
            ema_decay=0.99, log_every=max(1, self.train_steps // 5),
            checkpoint_every=self.train_steps, seed=int(self.seed))
        res = trainer.fit(loss_fn, params, ds, config=cfg, progress=self.verbose)
        self.params_ = jax.tree.map(np.asarray, res.state.ema_params)
        self.n_train_ = int(n_all)
        self.n_calibration_ = int(n_cal)
        self.history_ = res.history
        self._fit_channel_stats(values_all[n_all - n_cal:], observed_all[n_all - n_cal:])

    # -- dte_np (no network) ---------------------------------------------------------------------
    _DTE_CHUNK = 4096  # scoring windows per dte_nonparametric call

    def _flat_windows(self, values: np.ndarray, observed: np.ndarray, starts: np.ndarray,
                      offset: int = 0):
        """Flattened windows [W, L * C] (values, observed) starting at `starts` (absolute steps)
        of arrays that begin at step `offset`."""
        idx = (starts - offset)[:, None] + np.arange(self.window)[None, :]
        w, o = values[idx], observed[idx]
        return w.reshape(len(starts), -1), o.reshape(len(starts), -1)

    def _fit_dte(self, data) -> None:
        values, observed = data["values"], data["observed"]
        n, c = values.shape
        l = self.window
        stride = max(1, -(-(n - l + 1) // int(self.dte_max_windows)))
        w, o = self._flat_windows(values, observed, window_starts(n, l, stride))
        self.dte_windows_ = w.astype(np.float32)
        self.dte_observed_ = o.astype(np.float32)
        masked = not bool(np.all(o))
        self.dte_grid_, self.dte_train_median_ = dte_window_grid(
            self.dte_windows_, k=int(self.dte_k), observed=self.dte_observed_ if masked else None)
        self.params_ = None
        self.n_train_, self.n_calibration_ = int(n), 0
        self.channel_loc_ = np.zeros((len(SCORINGS), c), np.float32)
        self.channel_scale_ = np.ones((len(SCORINGS), c), np.float32)

    def _dte_scores(self, src: Tuple[Source, int, int], *, exclude_self: bool = False) -> np.ndarray:
        """Per-step "dte_np" scores [T], streamed over chunks of windows (memory flat in T)."""
        source, n, _ = src
        l, half = self.window, self.window // 2
        n_win = n - l + 1
        # fixed query shape, a power of two up to _DTE_CHUNK: a few compilations, not one per length
        chunk = min(self._DTE_CHUNK, 1 << (n_win - 1).bit_length())
        kw = {"sde": sde_lib.VPSDE()} if self.dte_grid_ == "vpsde" else {}
        ref_masked = not bool(np.all(self.dte_observed_))
        out = np.empty(n)
        for a in range(0, n_win, chunk):
            b = min(a + chunk, n_win)
            vals, obs = source(a, b - 1 + l)
            starts = np.arange(a, b)
            w, o = self._flat_windows(vals, obs, starts, offset=a)
            pad = chunk - len(starts)
            if pad:  # the last chunk is padded to the common shape and cut back
                w = np.concatenate([w, np.repeat(w[-1:], pad, 0)])
                o = np.concatenate([o, np.repeat(o[-1:], pad, 0)])
            masked = ref_masked or not bool(np.all(o))
            s = scoring_lib.dte_nonparametric(
                self.dte_windows_, w, k=int(self.dte_k), num_steps=DTE_NUM_STEPS,
                exclude_self=exclude_self, observed_train=self.dte_observed_ if masked else None,
                observed=o if masked else None, **kw).scores
            out[starts + half] = np.asarray(s, np.float64)[:len(starts)]
        out[:half] = out[half]
        out[n_win - 1 + half + 1:] = out[n_win - 1 + half]
        return out

    @property
    def channel_calibrated_(self) -> bool:
        """Whether the channel errors are standardised by held-out statistics."""
        return int(getattr(self, "n_calibration_", 0)) > 0

    # -- scoring -------------------------------------------------------------------------------
    def _array_source(self, data) -> Tuple[Source, int, int]:
        """A source over already preprocessed arrays (the training series in fit)."""
        values, observed = data["values"], data["observed"]
        return (lambda lo, hi: (values[lo:hi], observed[lo:hi])), values.shape[0], values.shape[1]

    def _input_source(self, X) -> Tuple[Source, int, int]:
        """A source over the raw input X, preprocessed lazily, one requested range at a time.

        A numeric numpy array (or pandas object) of a valid shape is validated in a pass of
        `_CHUNK_ROWS`-row pieces (inf refused, at least one observed value) and never converted
        whole; anything else (lists, other dtypes or shapes) goes through `_prepare`, which
        converts it at once or raises the usual error.
        """
        arr = X.to_numpy() if hasattr(X, "to_numpy") else X
        c = int(self.n_features_in_)
        if not (isinstance(arr, np.ndarray) and arr.dtype.kind in "biuf" and arr.ndim in (1, 2)
                and arr.shape[0] >= self.window and (arr.shape[1] if arr.ndim == 2 else 1) == c):
            return self._array_source(self._prepare(X, fitting=False))
        any_observed = False
        for a in range(0, arr.shape[0], _CHUNK_ROWS):
            raw = self._as_series(arr[a:a + _CHUNK_ROWS])  # raises on inf
            any_observed = any_observed or bool(np.isfinite(raw).any())
        if not any_observed:
            raise ValueError("X has no observed value (all NaN)")

        def source(lo: int, hi: int) -> Tuple[np.ndarray, np.ndarray]:
            raw = self._as_series(arr[lo:hi])
            d = self._normalize(raw, np.isfinite(raw))
            return d["values"], d["observed"]

        return source, arr.shape[0], c

    def _stream(self, src: Tuple[Source, int, int], scoring: str, outputs: Sequence[Output] | None = None,
                *, per_channel: bool | None = None):
        """Streams the scoring windows over a series in batches of `score_batch_size` windows.

        The padded series (reflection, `front` steps before, `back` after) is never built: each
        batch gathers its windows' steps from `src` through the reflection index map. Per-entry
        error sums and counts of the windows live in accumulators covering one batch's steps; once
        a batch is done, the steps before the next batch's first window start are final (no later
        window covers them): their scores are written to the output and the accumulators shift.
        Memory beyond the output is one batch, whatever T. Batches, keys and the order of the
        float64 additions are those of accumulating over the whole padded series at once, so the
        scores do not depend on T's size relative to a batch.

        Args:
          src: (source(lo, hi) -> (values, observed) [hi - lo, C] float32 of steps lo..hi-1, T, C).
          scoring: "reconstruction", "imputation" or "denoising".
          per_channel: the older form, instead of `outputs`: True returns the map [T, C] alone,
            False the raw per-step mean error [T] alone (not a list).
          outputs: what to return, one result per entry: "map" -> (map [T, C] float64, 0 where
            unscored or missing; has [T, C] bool, the scored observed entries), or
            (loc [C], scale [C], combine) -> per-step scores [T] float64: each scored observed
            entry standardised as (error - loc) / scale, then the "mean" or "max" over a step's
            scored channels (NaN where a step has none). (0, 1, "mean") is the raw mean error.

        Returns:
          A list with one result per output (one array with `per_channel`).
        """
        if per_channel is not None:
            res = self._stream(src, scoring, ["map"] if per_channel else [(0.0, 1.0, "mean")])[0]
            return res[0] if per_channel else res
        source, t, c = src
        l, s, bs = self.window, self.score_stride, int(self.score_batch_size)
        front, back = l // 2, l // 2 + s
        n = t + front + back  # length of the padded series
        num_windows = (n - l) // s + 1
        if self.combine == "mean":
            pos_w = np.ones(l, np.float32)
        else:
            pos_w = np.zeros(l, np.float32)
            lo_c = l // 2 - s // 2
            pos_w[lo_c:lo_c + s] = 1.0
        taps = np.flatnonzero(pos_w)
        fn = _scorer(self._net_cfg, scoring, tuple(float(v) for v in self.t0), int(self.solver_steps),
                     int(self.num_grid_masks), int(self.num_random_masks), float(self.mask_ratio),
                     self._block, int(self.num_levels),
                     float(self.clip) if self.clip is not None else 1e3,
                     tuple(float(v) for v in self.denoise_t))
        params = jax.tree.map(jnp.asarray, self.params_)
        span = (bs - 1) * s + l  # padded steps one batch of windows covers
        err_acc = np.zeros((span, c), np.float64)
        cnt_acc = np.zeros((span, c), np.float64)
        obs_acc = np.zeros((span, c), np.float32)
        outs = []
        for spec in outputs:
            if isinstance(spec, str):
                if spec != "map":
                    raise ValueError(f"unknown output {spec!r}")
                outs.append((np.zeros((t, c), np.float64), np.zeros((t, c), bool)))
            else:
                outs.append(np.empty(t, np.float64))
        offsets = np.arange(l)
        key = jax.random.key(self.seed + 7)
        base = 0  # padded position of the accumulators' first row
        for i, w0 in enumerate(range(0, num_windows, bs)):
            st = s * np.arange(w0, min(w0 + bs, num_windows))  # padded window starts
            m, end = len(st), int(st[-1]) + l
            orig = _reflect_index(np.arange(base, end) - front, t)
            lo, hi = int(orig.min()), int(orig.max()) + 1
            v, o = source(lo, hi)
            vb, ob = v[orig - lo], o[orig - lo]  # [end - base, C]
            obs_acc[:end - base] = ob
            rel = st - base
            idx = rel[:, None] + offsets[None, :]
            if m < bs:  # static batch shape: repeat the last window, drop its results
                idx = np.concatenate([idx, np.repeat(idx[-1:], bs - m, axis=0)])
            e, k = fn(params, vb[idx], ob[idx], jax.random.fold_in(key, i))
            e, k = np.asarray(e, np.float64)[:m], np.asarray(k, np.float64)[:m]
            mean_e = np.where(k > 0, e / np.maximum(k, 1e-12), 0.0) * pos_w[None, :, None]
            has = (k > 0) * pos_w[None, :, None]
            for j in taps:  # starts are distinct: no duplicate indices per j
                err_acc[rel + j] += mean_e[:, j]
                cnt_acc[rel + j] += has[:, j]
            done = (int(st[-1]) + s if w0 + bs < num_windows else end) - base  # final rows
            a, b = max(base, front), min(base + done, front + t)
            if a < b:
                e_f, k_f = err_acc[a - base:b - base], cnt_acc[a - base:b - base]
                has_f = (k_f > 0) & (obs_acc[a - base:b - base] > 0)
                ent = np.where(has_f, e_f / np.maximum(k_f, 1e-12), 0.0)
                n_has = has_f.sum(1)
                for spec, out in zip(outputs, outs):
                    if isinstance(spec, str):
                        out[0][a - front:b - front] = ent
                        out[1][a - front:b - front] = has_f
                        continue
                    loc, scale, how = spec
                    z = np.where(has_f, (ent - loc) / scale, 0.0)
                    if how == "max":
                        step = np.where(has_f, z, -np.inf).max(1)
                    else:
                        step = z.sum(1) / np.maximum(n_has, 1)
                    out[a - front:b - front] = np.where(n_has > 0, step, np.nan)
            for acc in (err_acc, cnt_acc, obs_acc):
                acc[:span - done] = acc[done:].copy()
                acc[span - done:] = 0
            base += done
        return outs

    def _reduction(self, scoring: str, channel_norm: str | None = None,
                   channel_combine: str | None = None) -> Tuple[np.ndarray, np.ndarray, str]:
        """(loc [C], scale [C], combine) of a step-score output of `_stream`.

        channel_norm None: the fitted setting (calibrated iff `channel_calibrated_`); "none": raw
        errors; "holdout" (or "auto"): the held-out statistics, which the detector must have.
        """
        norm = "holdout" if channel_norm is None and self.channel_calibrated_ else (channel_norm or "none")
        validation.check_choice(norm, CHANNEL_NORMS, name="channel_norm")
        how = self.channel_combine if channel_combine is None else channel_combine
        validation.check_choice(how, CHANNEL_COMBINES, name="channel_combine")
        c = int(self.n_features_in_)
        if norm == "none" or (norm == "auto" and not self.channel_calibrated_):
            return np.zeros(c), np.ones(c), how
        if not self.channel_calibrated_:
            raise ValueError("channel_norm='holdout' needs a detector fitted with held-out channel "
                             "statistics (fit with channel_norm='holdout', or 'auto' on a "
                             "multivariate series)")
        i = SCORINGS.index(scoring)
        return (np.asarray(self.channel_loc_[i], np.float64), np.asarray(self.channel_scale_[i], np.float64),
                how)

    def _step_scores(self, src: Tuple[Source, int, int], scoring: str,
                     reductions: Sequence[Tuple] | None = None) -> np.ndarray | list:
        """Per-step scores [T] of one reduction (the fitted one when None) or a list of them."""
        one = reductions is None
        outs = self._stream(src, scoring, [self._reduction(scoring)] if one else list(reductions))
        outs = [self._fill_missing(s) for s in outs]
        return outs[0] if one else outs

    @staticmethod
    def _fill_missing(scores: np.ndarray) -> np.ndarray:
        if np.isnan(scores).any():  # steps with no observed entry: nearest scored step
            ok = np.flatnonzero(~np.isnan(scores))
            if ok.size == 0:
                raise ValueError("no time step of X has an observed value that could be scored")
            missing = np.flatnonzero(np.isnan(scores))
            pos = np.clip(np.searchsorted(ok, missing), 0, ok.size - 1)
            left = ok[np.clip(pos - 1, 0, ok.size - 1)]
            right = ok[pos]
            nearest = np.where(np.abs(missing - left) <= np.abs(right - missing), left, right)
            scores[missing] = scores[nearest]
        return scores

    def _decision_function(self, data) -> np.ndarray:
        if self.scoring in NONPARAMETRIC:
            return self._dte_scores(self._array_source(data))
        return self._step_scores(self._array_source(data), self.scoring)

    def _training_scores(self, data) -> np.ndarray:
        if self.scoring in NONPARAMETRIC:  # a training window is not its own neighbour
            return self._dte_scores(self._array_source(data), exclude_self=True)
        return self._decision_function(data)

    def _score_rows(self, X) -> np.ndarray:
        if getattr(self, "head_", None) is not None:  # the head needs the whole prepared series
            return super()._score_rows(X)
        # decision_function: the input is preprocessed piecewise while it streams (not at once).
        if self.scoring in NONPARAMETRIC:
            return self._dte_scores(self._input_source(X))
        return self._step_scores(self._input_source(X), self.scoring)

    def _check_head_support(self, anomalies) -> None:
        if anomalies is not None and self.scoring in NONPARAMETRIC:
            raise ValueError(f"scoring={self.scoring!r} has no anomaly map for a supervised head; "
                             f"fit with a network paradigm {SCORINGS} to pass anomalies=")
        super()._check_head_support(anomalies)

    def _check_network(self, what: str) -> None:
        if self.scoring in NONPARAMETRIC:
            raise ValueError(f"{what} needs a network; this detector was fitted with "
                             f"scoring={self.scoring!r}")

    def _head_features(self, data) -> np.ndarray:
        (emap, has), = self._stream(self._array_source(data), self.scoring, ["map"])
        return self._map_features(emap, has, data)

    def _scores_and_head_features(self, data):
        # one streaming pass: the step scores and the per-channel map the features come from
        steps, (emap, has) = self._stream(self._array_source(data), self.scoring,
                                          [self._reduction(self.scoring), "map"])
        return self._fill_missing(steps), self._map_features(emap, has, data)

    def _map_features(self, emap: np.ndarray, has: np.ndarray, data) -> np.ndarray:
        # Per step: each channel's (calibrated) error of the fitted paradigm and its normalised
        # value, compressed by sign(f) log(1 + |f|) so that far-off test runs stay in range.
        loc, scale, _ = self._reduction(self.scoring)
        z = np.where(has, (emap - loc) / scale, 0.0)
        vals = np.where(data["observed"], np.nan_to_num(data["values"]), 0.0)
        f = np.concatenate([z, vals], 1)
        return (np.sign(f) * np.log1p(np.abs(f))).astype(np.float32)

    def _head_anomaly_features(self, anomalies) -> np.ndarray:
        if not (isinstance(anomalies, (tuple, list)) and len(anomalies) == 2):
            raise ValueError("anomalies must be a pair (series [T', C], step labels [T']) whose "
                             "labelled steps (1) are the anomaly examples")
        series, labels = anomalies
        validation.check_size(series, name="anomalies series")
        data = self._prepare(series, fitting=False)
        labels = np.asarray(labels)
        if labels.shape != (data["values"].shape[0],):
            raise ValueError(f"anomaly step labels must have shape ({data['values'].shape[0]},) to "
                             f"match the anomalies series; got {labels.shape}")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("anomaly step labels must be 0/1")
        return self._head_features(data)[labels == 1]

    def paradigm_scores(self, X, scoring: str, *, channel_norm: str | None = None,
                        channel_combine: str | None = None) -> np.ndarray:
        """Per-step scores [T] of X by any paradigm, from the same fitted network.

        Args:
          X: series [T] or [T, C] (NaN = missing), T >= window.
          scoring: "reconstruction", "imputation" or "denoising".
          channel_norm: None (the fitted setting), "none" (raw errors) or "holdout" (needs a
            calibrated detector, `channel_calibrated_`).
          channel_combine: None (the detector's), "mean" or "max" over channels.

        Returns:
          [T] scores (higher = more anomalous); not calibrated to `threshold_` unless the
          paradigm and the channel settings are the detector's own.
        """
        return self.paradigm_variants(X, scoring, [(channel_norm, channel_combine)])[0]

    def paradigm_variants(self, X, scoring: str, variants: Sequence[Tuple[str | None, str | None]]) -> list:
        """Per-step scores [T] of several (channel_norm, channel_combine) settings (see
        `paradigm_scores`) from one scoring pass of X: the network runs once, only the channel
        reduction differs. Returns a list with one [T] array per variant."""
        self._check_fitted()
        self._check_network("paradigm_scores")
        validation.check_choice(scoring, SCORINGS, name="scoring")
        validation.check_size(X, name="X")
        reductions = [self._reduction(scoring, n, h) for n, h in variants]
        return self._step_scores(self._input_source(X), scoring, reductions)

    def channel_scores(self, X) -> np.ndarray:
        """Per-step, per-channel anomaly map [T, C] of the detector's paradigm: raw squared errors
        (not standardised by the channel statistics), 0 where a value is missing."""
        self._check_fitted()
        self._check_network("channel_scores")
        validation.check_size(X, name="X")
        return self._stream(self._input_source(X), self.scoring, ["map"])[0][0]

    # -- persistence --------------------------------------------------------------------------
    def _export(self):
        meta = {"n_train": int(self.n_train_), "n_features": int(self.n_features_in_),
                "n_calibration": int(self.n_calibration_)}
        arrays = {"loc": self.loc_, "scale": self.scale_,
                  "channel_loc": self.channel_loc_, "channel_scale": self.channel_scale_}
        if self.scoring in NONPARAMETRIC:
            meta.update(dte_grid=self.dte_grid_, dte_train_median=float(self.dte_train_median_),
                        dte_windows=int(self.dte_windows_.shape[0]))
            arrays.update(dte_windows=self.dte_windows_, dte_observed=self.dte_observed_)
        else:
            arrays["params"] = self.params_
        return meta, arrays

    def _abstract_arrays(self, meta):
        self._check_params()
        c = int(meta["n_features"])
        out = {"loc": jax.ShapeDtypeStruct((c,), np.float32),
               "scale": jax.ShapeDtypeStruct((c,), np.float32),
               "channel_loc": jax.ShapeDtypeStruct((len(SCORINGS), c), np.float32),
               "channel_scale": jax.ShapeDtypeStruct((len(SCORINGS), c), np.float32)}
        if self.scoring in NONPARAMETRIC:
            shape = (int(meta["dte_windows"]), int(self.window) * c)
            out.update(dte_windows=jax.ShapeDtypeStruct(shape, np.float32),
                       dte_observed=jax.ShapeDtypeStruct(shape, np.float32))
        else:
            out["params"] = jax.eval_shape(lambda: self._init_params(jax.random.key(0), c))
        return out

    def _import(self, meta, arrays):
        self.n_features_in_ = int(meta["n_features"])
        self.n_train_ = int(meta["n_train"])
        self.loc_ = np.asarray(arrays["loc"], np.float32)
        self.scale_ = np.asarray(arrays["scale"], np.float32)
        self.n_calibration_ = int(meta.get("n_calibration", 0))
        c = self.n_features_in_
        self.channel_loc_ = np.asarray(arrays.get("channel_loc", np.zeros((len(SCORINGS), c))), np.float32)
        self.channel_scale_ = np.asarray(arrays.get("channel_scale", np.ones((len(SCORINGS), c))), np.float32)
        if self.scoring in NONPARAMETRIC:
            self.params_ = None
            self.dte_windows_ = np.asarray(arrays["dte_windows"], np.float32)
            self.dte_observed_ = np.asarray(arrays["dte_observed"], np.float32)
            self.dte_grid_ = str(meta["dte_grid"])
            if self.dte_grid_ not in ("dte", "vpsde"):
                raise ValueError(f"checkpoint: unknown dte_grid {self.dte_grid_!r}")
            self.dte_train_median_ = float(meta["dte_train_median"])
        else:
            self.params_ = jax.tree.map(np.asarray, arrays["params"])
