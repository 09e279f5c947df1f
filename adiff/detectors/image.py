"""ImageDetector: diffusion reconstruction anomaly detection for images, with pixel maps.

A composition of preprocessing (uint8 or [0, 1] float images -> [-1, 1], resized to a working
resolution), a score network (`adiff.nets.UNet`, eps-parameterised, VP SDE), optionally a first
stage (`adiff.nets.autoencoder.ConvAutoencoder`: latent diffusion), a solver (`adiff.solvers`)
and a map-to-score head.

Identity-shortcut remedies (the model copying an anomaly back), each a named, separately
switchable option:
- partial diffusion: `t0` (start time(s) of the reconstruction, < T = 1; 1.0 = full diffusion);
- structured noise: `noise="simplex"` (multi-octave simplex, AnoDDPM) or `"lowfreq"` (upsampled
  Gaussian); the network is trained and reconstructs with that noise (`adiff.noise`);
- masked reconstruction: `scoring="masked"`: the image is covered by `num_masks` complementary
  sets of `mask_patch`-pixel patches; each set is hidden, re-generated from its visible context
  by the masked (inpainting) solver from time `mask_t0`, and the error of each pixel is taken
  from the mask that hid it;
- conditioned denoising: `guidance=w > 0` (DDAD, Mousakhan et al. 2023): every solver step's eps
  is shifted towards the input y, eps' = eps - w sigma_t alpha_t (y - x0_hat), i.e. the
  x0-prediction moves by w sigma_t^2 (y - x0_hat) towards the input.

Efficiency: `solver="ddim"` or `"dpm_solver_pp"` with few `solver_steps` (<= 10), or the
1000-step reverse SDE (`solver="reverse_diffusion", solver_steps=1000`) as reference; and
`latent=True`: an autoencoder is trained on the normal images first and the diffusion model
works on its [h/f, w/f, Cz] latents (standardised by their training std); reconstructions are
decoded and the maps are taken in pixel space against the input.

Density-style scorers (no reconstruction, hence no identity shortcut to remedy):
- `scoring="denoise"`: the one-step denoising error. For each time t in `t0` and each of `repeats`
  noise draws z (fixed draws, the same for every image: common random numbers keep scores of
  different images comparable), the input is noised to x_t = alpha_t x + sigma_t z and the
  network's clean-image estimate x0_hat = (x_t - sigma_t eps_hat) / alpha_t is compared with x per
  pixel; the map is the mean squared error over times and draws (in pixel space for latent
  diffusion: the estimate is decoded). It is a Monte-Carlo estimate of the denoising
  (ELBO-type) loss of the image restricted to a band of noise levels, so regions the model
  finds unlikely get large errors. Mid-range times (0.3 - 0.7 on the VP SDE) carry the shape
  information; small times only local texture.
- `scoring="score_norm"`: the norm of sigma_t times the score at small times (`t0`).
- `scoring="elbo"`: the density paradigm, the variational bound on -log p(x) in nats
  (`adiff.scoring.elbo`) with `elbo_samples` draws of (t, z) shared by every image (in the
  latent space with `latent=True`); the map holds each pixel's terms of the bound (summed over
  channels), so it adds up to the bound, which is the "native" image score. Gaussian noise only.
- `scoring="density_np"`: the density paradigm without a network (`adiff.scoring.
  diffused_density`, the TabularDetector default): -log p_v(x) of the training images'
  empirical distribution diffused to the noise variance v chosen by leave-one-out likelihood
  (`diffusion_variance`), over the `np_k` nearest images. Priors for small deformations: the
  memory holds every training image and its translations by up to `np_shifts` pixels (zero
  fill), and memory and queries are blurred by `np_blur` pixels first. The map is each pixel's
  squared distance to the posterior mean of the clean image, E[x_0 | x_v = x] (= v^2 times the
  squared score of p_v), which `reconstructions` hold; the "native" image score is -log p_v in nats. Fitting with this scoring
  trains no network and keeps the training images instead (measured on MNIST one-vs-rest,
  docs/results/image.md session 20: 0.966 mean AUROC on two fresh seeds, above KNN and PCA).

Maps: per-pixel distance between the input and its reconstruction, averaged over channels, over
`map_scales` (distance between 2x2, 4x4, ... average-pooled images, upsampled back: a smoothed,
multi-scale error) and over the t0 values and `repeats`; then a Gaussian blur of std
`map_sigma` pixels; maps are returned at the input resolution. The image score is the map's
max, the mean of its top `topk` fraction, its mean, or ("native") the scorer's own image score
(reconstruction: mean error; score_norm: ||sigma_t s(x, t)||; elbo: the bound in nats).

Scoring hyper-parameters (t0, solver, solver_steps, eta, repeats, scoring, mask_*, guidance,
map_*, image_score, topk) may be changed after fit with `set_params`; the network is reused, so
one fitted model serves a whole ablation. Fit-time parameters (architecture, noise, latent,
training) must not be changed after fit.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from adiff import losses, noise as noise_lib, sde as sde_lib, solvers, validation
from adiff import scoring as scoring_lib
from adiff.detectors.base import BaseDetector
from adiff.nets.autoencoder import ConvAutoencoder
from adiff.nets.unet import UNet
from adiff.training import trainer

__all__ = ["ImageDetector", "ImageAnalysis", "SCORINGS", "SOLVERS", "IMAGE_SCORES"]

SCORINGS = ("reconstruction", "masked", "score_norm", "denoise", "elbo", "density_np")
SOLVERS = ("ddim", "dpm_solver_pp", "reverse_diffusion", "euler_maruyama", "pc")
IMAGE_SCORES = ("max", "topk", "mean", "native")
DISTANCES = ("squared", "absolute")
_DETERMINISTIC = ("ddim", "dpm_solver_pp")
_NP_MEMORY_LIMIT = 4 * 2**30  # bytes of the shift-augmented density_np memory (float32)
_FIT_PARAMS = ("image_size", "base_channels", "channel_mults", "num_res_blocks",
               "attention_resolutions", "groups", "noise", "noise_frequency", "noise_octaves",
               "noise_persistence", "latent", "ae_features", "latent_channels")


@flax.struct.dataclass
class ImageAnalysis:
    """Scores, maps and reconstructions of a batch of images.

    Attributes:
      scores: [N] image anomaly scores (higher = more anomalous).
      maps: [N, H, W] anomaly maps at the input resolution.
      reconstructions: [N, H, W, C] reconstructions in [0, 1] at the input resolution (for
        scoring="score_norm", the inputs themselves; for "density_np", the posterior mean
        E[x_0 | x] of the blurred training images and their shifts).
    """

    scores: np.ndarray  # [N]
    maps: np.ndarray  # [N, H, W]
    reconstructions: np.ndarray  # [N, H, W, C]


def _gaussian_blur(maps: jax.Array, sigma: float) -> jax.Array:
    """Separable Gaussian blur of maps [B, H, W] with std `sigma` pixels (edge padding)."""
    if sigma <= 0:
        return maps
    r = max(1, int(math.ceil(3.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = jnp.asarray(k / k.sum(), maps.dtype)
    x = jnp.pad(maps, ((0, 0), (r, r), (r, r)), mode="edge")
    x = jax.vmap(lambda row: jnp.convolve(row, k, mode="valid"), in_axes=0)(
        x.reshape(-1, x.shape[-1])).reshape(x.shape[0], x.shape[1], -1)
    x = jnp.swapaxes(x, 1, 2)
    x = jax.vmap(lambda row: jnp.convolve(row, k, mode="valid"), in_axes=0)(
        x.reshape(-1, x.shape[-1])).reshape(x.shape[0], x.shape[1], -1)
    return jnp.swapaxes(x, 1, 2)


def _avg_pool(x: jax.Array, s: int) -> jax.Array:
    """Average pooling with window and stride s of x [B, H, W, C] (H, W divisible by s)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // s, s, w // s, s, c).mean(axis=(2, 4))


def _patch_masks(h: int, w: int, patch: int, num_masks: int) -> np.ndarray:
    """num_masks complementary 0/1 masks [M, h, w] of patch x patch squares (1 = hidden).

    Patch (i, j) belongs to mask ((i mod s) * s + (j mod s)) mod M with s = ceil(sqrt(M)), so
    for M = 4 each mask hides every other patch in both directions (all neighbours visible).
    """
    s = int(math.ceil(math.sqrt(num_masks)))
    ii = np.arange(h)[:, None] // patch
    jj = np.arange(w)[None, :] // patch
    group = ((ii % s) * s + (jj % s)) % num_masks
    return np.stack([(group == m).astype(np.float32) for m in range(num_masks)])



def _image_scores(maps: jax.Array, image_score: str, topk: float, native) -> jax.Array:
    """The image score [B] from maps [B, H, W]: their max, mean, top-`topk` mean, or `native`."""
    flat = maps.reshape(maps.shape[0], -1)
    if image_score == "max":
        return jnp.max(flat, axis=-1)
    if image_score == "mean":
        return jnp.mean(flat, axis=-1)
    if image_score == "topk":
        return jnp.mean(jax.lax.top_k(flat, max(1, int(round(topk * flat.shape[-1]))))[0], axis=-1)
    return native


def shift_augment(images: np.ndarray, r: int) -> np.ndarray:
    """images [N, H, W, ...] followed by their translations by (dy, dx) in [-r, r]^2 (zero fill),
    as (2r + 1)^2 blocks of N in row-major (dy, dx) order; r = 0 returns the images."""
    if int(r) == 0:
        return images
    h, w = images.shape[1:3]
    out = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            z = np.zeros_like(images)
            z[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                images[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            out.append(z)
    return np.concatenate(out)


def blur_images(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (std `sigma` pixels, zero outside) over the spatial axes of images
    [N, H, W, ...]; float32 out, the identity for sigma = 0. (scipy.ndimage: a host-side
    preprocessing step of the non-parametric scorer, no need to trace it.)"""
    if not sigma:
        return np.asarray(images, np.float32)
    from scipy import ndimage
    s = (0, float(sigma), float(sigma)) + (0,) * (np.ndim(images) - 3)
    return ndimage.gaussian_filter(np.asarray(images, np.float32), s, mode="constant")


@functools.lru_cache(maxsize=16)
def _resize_fn(hw: Tuple[int, int]):
    """One compiled bilinear resize per target size, reused across calls (no recompilation)."""
    return jax.jit(lambda x: jax.image.resize(x, (x.shape[0], hw[0], hw[1]) + tuple(x.shape[3:]),
                                              "bilinear"))

class ImageDetector(BaseDetector):
    """Diffusion anomaly detector for images [N, H, W, C] with per-pixel anomaly maps.

    Args:
      contamination: expected fraction of anomalies, in (0, 0.5]; sets `threshold_`.
      seed: random seed (initialisation, training order, noise).
      image_size: working resolution (square side, pixels); None keeps the training images'
        size. Inputs of another size are resized to it and the maps resized back.
      base_channels: UNet width at the first level (divisible by `groups`).
      channel_mults: UNet width multipliers per level.
      num_res_blocks: UNet residual blocks per level.
      attention_resolutions: spatial sizes with self-attention in the UNet.
      groups: GroupNorm groups of the UNet.
      noise: "gaussian", "simplex" or "lowfreq" (training and reconstruction noise).
      noise_frequency: structured noise: lattice cells (simplex) / coarse-grid cells (lowfreq)
        across the image at the coarsest octave.
      noise_octaves: structured noise octaves.
      noise_persistence: structured noise amplitude ratio between octaves.
      latent: diffusion in the latent space of an autoencoder trained on the normal images.
      ae_features: autoencoder stage widths (downsampling f = 2 ** len(ae_features)).
      latent_channels: autoencoder latent channels.
      ae_steps: autoencoder training steps (default: train_steps).
      train_steps: score-network training steps.
      batch_size: training batch size (capped at the number of training images).
      learning_rate: AdamW peak learning rate.
      ema_decay: decay of the parameter EMA used for scoring.
      scoring: "reconstruction", "masked" (patch-masked inpainting), "score_norm", "denoise"
        (one-step denoising error over a band of times), "elbo" (the likelihood bound) or
        "density_np" (no network: the diffused empirical density of the training images; see the
        module docstring). The scoring at fit decides what is kept: "density_np" trains no
        network (only "density_np" can score afterwards), the others train one ("density_np"
        cannot score afterwards).
      t0: partial-diffusion start time(s) in (0, 1] for "reconstruction" (the times of
        "score_norm" and "denoise").
      solver: "ddim", "dpm_solver_pp" (structured noise needs one of these two), or a stochastic
        SDE solver ("reverse_diffusion", "euler_maruyama", "pc").
      solver_steps: solver steps.
      eta: DDIM stochasticity (reconstruction; masked reconstruction with DDIM uses 1.0 unless
        the noise is structured).
      repeats: independent noise draws per t0, averaged ("denoise": fixed draws shared by all
        images).
      mask_patch: patch side (pixels, working resolution) of the masked reconstruction.
      num_masks: complementary masks of the masked reconstruction (>= 2).
      mask_t0: start time of the masked inpainting (1.0 = from pure noise).
      guidance: DDAD conditioning weight w >= 0 (0 = off).
      distance: "squared" or "absolute" per-pixel distance.
      map_scales: pooling factors of the multi-scale error (1 = pixels).
      map_sigma: Gaussian blur std of the maps in pixels of the working resolution (0 = off).
      image_score: "max", "topk", "mean" or "native" (see the module docstring).
      topk: fraction of map pixels averaged by image_score="topk".
      score_batch_size: images per scoring call (fixed, padded; memory stays flat in N).
      elbo_samples: Monte Carlo draws (t, noise) of scoring="elbo", shared by every image.
      np_k: nearest training images (with their shifts) in the mixture of "density_np".
      np_shifts: "density_np" memory: translations of every training image by up to this many
        pixels (0 = none, 1 = the eight 1-pixel shifts: 9x the memory).
      np_blur: "density_np": Gaussian blur std (pixels, working resolution) applied to memory and
        queries before the distances (0 = off).
      verbose: print training progress.
    """

    def __init__(self, *, contamination: float = 0.1, seed: int = 0,
                 image_size: Optional[int] = None, base_channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1,
                 attention_resolutions: Sequence[int] = (), groups: int = 8,
                 noise: str = "gaussian", noise_frequency: float = 4.0, noise_octaves: int = 4,
                 noise_persistence: float = 0.6, latent: bool = False,
                 ae_features: Sequence[int] = (32, 64), latent_channels: int = 4,
                 ae_steps: Optional[int] = None, train_steps: int = 2000, batch_size: int = 32,
                 learning_rate: float = 1e-3, ema_decay: float = 0.995,
                 scoring: str = "reconstruction", t0: Sequence[float] = (0.3,),
                 solver: str = "ddim", solver_steps: int = 10, eta: float = 0.0,
                 repeats: int = 1, mask_patch: int = 8, num_masks: int = 4,
                 mask_t0: float = 1.0, guidance: float = 0.0, distance: str = "squared",
                 map_scales: Sequence[int] = (1,), map_sigma: float = 0.0,
                 image_score: str = "topk", topk: float = 0.01, score_batch_size: int = 64,
                 elbo_samples: int = 256, np_k: int = 50, np_shifts: int = 1,
                 np_blur: float = 0.5, verbose: bool = False):
        self.contamination = contamination
        self.seed = seed
        self.image_size = image_size
        self.base_channels = base_channels
        self.channel_mults = tuple(channel_mults)
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.groups = groups
        self.noise = noise
        self.noise_frequency = noise_frequency
        self.noise_octaves = noise_octaves
        self.noise_persistence = noise_persistence
        self.latent = latent
        self.ae_features = tuple(ae_features)
        self.latent_channels = latent_channels
        self.ae_steps = ae_steps
        self.train_steps = train_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.ema_decay = ema_decay
        self.scoring = scoring
        self.t0 = tuple(t0) if not isinstance(t0, (int, float)) else (float(t0),)
        self.solver = solver
        self.solver_steps = solver_steps
        self.eta = eta
        self.repeats = repeats
        self.mask_patch = mask_patch
        self.num_masks = num_masks
        self.mask_t0 = mask_t0
        self.guidance = guidance
        self.distance = distance
        self.map_scales = tuple(map_scales)
        self.map_sigma = map_sigma
        self.image_score = image_score
        self.topk = topk
        self.score_batch_size = score_batch_size
        self.elbo_samples = elbo_samples
        self.np_k = np_k
        self.np_shifts = np_shifts
        self.np_blur = np_blur
        self.verbose = verbose

    # -- validation ----------------------------------------------------------------------------
    def _check_fit_params(self) -> None:
        for name in ("base_channels", "num_res_blocks", "groups", "train_steps", "batch_size",
                     "latent_channels", "noise_octaves"):
            validation.check_positive_int(getattr(self, name), name=name)
        if self.image_size is not None:
            validation.check_positive_int(self.image_size, name="image_size")
        if self.ae_steps is not None:
            validation.check_positive_int(self.ae_steps, name="ae_steps")
        if not self.channel_mults or any(
                validation.check_positive_int(m, name="channel_mults") < 1 for m in self.channel_mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of positive ints, got "
                             f"{self.channel_mults!r}")
        if not self.ae_features:
            raise ValueError("ae_features must be a non-empty sequence of positive ints, got ()")
        for f in self.ae_features:
            validation.check_positive_int(f, name="ae_features")
        validation.check_choice(self.noise, noise_lib.NOISE_KINDS, name="noise")
        if not float(self.noise_frequency) > 0:
            raise ValueError(f"noise_frequency must be > 0, got {self.noise_frequency!r}")
        validation.check_fraction(self.noise_persistence, name="noise_persistence", low=0.0, high=1.0)
        validation.check_fraction(self.ema_decay, name="ema_decay", low=0.0, high=1.0, inclusive_low=True)
        if not float(self.learning_rate) > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not isinstance(self.latent, (bool, np.bool_)):
            raise TypeError(f"latent must be a bool, got {type(self.latent).__name__}")

    def _check_score_params(self) -> None:
        validation.check_choice(self.scoring, SCORINGS, name="scoring")
        validation.check_choice(self.solver, SOLVERS, name="solver")
        validation.check_choice(self.image_score, IMAGE_SCORES, name="image_score")
        validation.check_choice(self.distance, DISTANCES, name="distance")
        for name in ("solver_steps", "repeats", "mask_patch", "score_batch_size", "elbo_samples",
                     "np_k"):
            validation.check_positive_int(getattr(self, name), name=name)
        if isinstance(self.np_shifts, bool) or not isinstance(self.np_shifts, (int, np.integer)) \
                or self.np_shifts < 0:
            raise ValueError(f"np_shifts must be an int >= 0, got {self.np_shifts!r}")
        if not (isinstance(self.np_blur, (int, float, np.number)) and math.isfinite(float(self.np_blur))
                and float(self.np_blur) >= 0.0):
            raise ValueError(f"np_blur must be a finite number >= 0, got {self.np_blur!r}")
        if self.scoring == "elbo" and self.noise != "gaussian":
            raise ValueError(f"scoring='elbo' is the bound of a Gaussian diffusion; got "
                             f"noise={self.noise!r}")
        if validation.check_positive_int(self.num_masks, name="num_masks") < 2:
            raise ValueError(f"num_masks must be >= 2, got {self.num_masks}")
        if not self.t0 or any(not 0.0 < float(t) <= 1.0 for t in self.t0):
            raise ValueError(f"t0 must be a non-empty sequence of times in (0, 1], got {self.t0!r}")
        if not 0.0 < float(self.mask_t0) <= 1.0:
            raise ValueError(f"mask_t0 must lie in (0, 1], got {self.mask_t0!r}")
        if not float(self.guidance) >= 0.0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance!r}")
        if not float(self.eta) >= 0.0:
            raise ValueError(f"eta must be >= 0, got {self.eta!r}")
        if not float(self.map_sigma) >= 0.0:
            raise ValueError(f"map_sigma must be >= 0, got {self.map_sigma!r}")
        validation.check_fraction(self.topk, name="topk", low=0.0, high=1.0)
        if not self.map_scales:
            raise ValueError("map_scales must hold at least one pooling factor, got ()")
        for s in self.map_scales:
            validation.check_positive_int(s, name="map_scales")
        if self.noise != "gaussian" and (self.solver not in _DETERMINISTIC or float(self.eta) != 0.0):
            raise ValueError(f"noise={self.noise!r} needs a deterministic solver (solver in "
                             f"{_DETERMINISTIC} with eta=0): the stochastic solvers assume white "
                             f"noise; got solver={self.solver!r}, eta={self.eta!r}")

    def _work_hw(self, hw: Tuple[int, int]) -> Tuple[int, int]:
        return (int(self.image_size),) * 2 if self.image_size is not None else tuple(hw)

    def _check_work_size(self, hw: Tuple[int, int]) -> None:
        factor = 2 ** (len(self.channel_mults) - 1)
        ae = 2 ** len(self.ae_features) if self.latent else 1
        need = factor * ae
        if hw[0] % need or hw[1] % need:
            what = "image_size" if self.image_size is not None else "the training images' size"
            raise ValueError(
                f"{what} {hw} must be divisible by {need} (2**(len(channel_mults)-1)"
                f"{' * 2**len(ae_features)' if self.latent else ''}); pass image_size=")
        for s in self.map_scales:
            if hw[0] % int(s) or hw[1] % int(s):
                raise ValueError(f"map_scales entry {s} must divide the working size {hw}")

    def _prepare(self, X, *, fitting: bool):
        validation.check_size(X, name="X")  # before any cast copies a huge input
        if fitting:
            self._check_fit_params()
            self._check_score_params()
        else:
            self._check_score_params()
            changed = [k for k in _FIT_PARAMS if _norm(getattr(self, k)) != _norm(self.fit_params_[k])]
            if changed:
                raise ValueError(f"parameters {changed} were changed after fit; they define the "
                                 "trained model (refit instead)")
        if X is None:
            raise TypeError("X must be an array of images [N, H, W, C], got None")
        arr = np.asarray(X)
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise TypeError(f"X must hold uint8 or floating values in [0, 1], got dtype {arr.dtype}")
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4:
            raise ValueError(f"X must have shape [N, H, W, C] (or [N, H, W] for grayscale), got "
                             f"shape {arr.shape}")
        if arr.shape[0] < 1 or min(arr.shape) < 1:
            raise ValueError(f"X must hold at least one non-empty image, got shape {arr.shape}")
        if arr.dtype == np.uint8:
            x = arr.astype(np.float32) / 255.0
        elif arr.dtype.kind == "f":
            x = arr.astype(np.float32)
            bad = int(np.sum(~np.isfinite(x)))
            if bad:
                raise ValueError(f"X must be finite; found {bad} NaN/inf values")
            lo, hi = float(x.min()), float(x.max())
            if lo < -1e-6 or hi > 1.0 + 1e-6:
                raise ValueError(f"float X must lie in [0, 1]; got values in [{lo:.4g}, {hi:.4g}]")
            x = np.clip(x, 0.0, 1.0)
        elif arr.dtype == np.bool_:
            raise TypeError("X must hold uint8 or floating values in [0, 1], got dtype bool")
        else:
            raise TypeError(f"integer X must be uint8 (0..255), got dtype {arr.dtype}; convert it "
                            "or pass floats in [0, 1]")
        if fitting:
            self.input_shape_ = tuple(int(v) for v in arr.shape[1:])
            self.n_channels_ = int(arr.shape[-1])
            if self.scoring != "density_np":  # the UNet's downsampling constrains the size
                self._check_work_size(self._work_hw(arr.shape[1:3]))
        elif arr.shape[-1] != self.n_channels_:
            raise ValueError(f"X has {arr.shape[-1]} channels, but the detector was fitted on "
                             f"{self.n_channels_} channels")
        return 2.0 * x - 1.0

    # -- model pieces --------------------------------------------------------------------------
    @property
    def _sde(self) -> sde_lib.VPSDE:
        return sde_lib.VPSDE()

    def _unet(self) -> UNet:
        return UNet(base_channels=self.base_channels, channel_mults=tuple(self.channel_mults),
                    num_res_blocks=self.num_res_blocks,
                    attention_resolutions=tuple(self.attention_resolutions), groups=self.groups)

    def _ae(self) -> ConvAutoencoder:
        return ConvAutoencoder(features=tuple(self.ae_features),
                               latent_channels=self.latent_channels, out_channels=self.n_channels_)

    def _diff_shape(self) -> Tuple[int, int, int]:
        h, w = self.work_hw_
        if self.latent:
            f = 2 ** len(self.ae_features)
            return h // f, w // f, int(self.latent_channels)
        return h, w, self.n_channels_

    def _noise(self, key, shape):
        kw = {}
        if self.noise == "simplex":
            kw = dict(frequency=float(self.noise_frequency), octaves=int(self.noise_octaves),
                      persistence=float(self.noise_persistence))
        elif self.noise == "lowfreq":
            scale = max(1, int(round(shape[1] / float(self.noise_frequency))))
            kw = dict(scale=scale, octaves=min(int(self.noise_octaves), max(1, int(math.log2(scale)) + 1)),
                      persistence=float(self.noise_persistence))
        return noise_lib.sample(self.noise, key, tuple(shape), **kw)

    def _train_config(self, n: int, steps: int, seed_offset: int) -> trainer.TrainConfig:
        return trainer.TrainConfig(
            num_steps=steps, batch_size=int(min(self.batch_size, n)),
            learning_rate=float(self.learning_rate), warmup_steps=min(100, steps // 10),
            schedule="cosine", grad_clip_norm=1.0, ema_decay=float(self.ema_decay),
            log_every=max(1, steps // 5), checkpoint_every=steps, seed=self.seed + seed_offset)

    def _resize(self, x: jax.Array, hw: Tuple[int, int]) -> jax.Array:
        if tuple(x.shape[1:3]) == tuple(hw):
            return x
        return jax.image.resize(x, (x.shape[0], hw[0], hw[1]) + tuple(x.shape[3:]), "bilinear")

    def _fit_ae(self, x: np.ndarray):
        ae = self._ae()
        params = jax.jit(ae.init)(jax.random.key(self.seed + 11, impl="rbg"), jnp.asarray(x[:1]))

        def loss_fn(p, batch, key):
            del key
            return jnp.mean(jnp.square(ae.apply(p, batch) - batch)), {}

        steps = int(self.ae_steps or self.train_steps)
        res = trainer.fit(loss_fn, params, x, config=self._train_config(len(x), steps, 2),
                          progress=self.verbose)
        return res.state.ema_params

    def _encode_all(self, ae_params, x: np.ndarray) -> np.ndarray:
        ae = self._ae()
        enc = jax.jit(lambda p, v: ae.apply(p, v, method=ae.encode))
        bs = 256
        return np.concatenate([np.asarray(enc(ae_params, jnp.asarray(x[i:i + bs])))
                               for i in range(0, len(x), bs)])

    def _fit(self, X, y=None) -> None:
        self.fit_params_ = {k: _norm(getattr(self, k)) for k in _FIT_PARAMS}
        self.work_hw_ = self._work_hw(X.shape[1:3])
        x = np.asarray(self._resize_np(X))
        self.model_ = {}
        self.latent_scale_ = 1.0
        self.n_train_ = int(len(X))
        self._cache = {}
        if self.scoring == "density_np":  # no network: the memory is the training images in [0, 1]
            # (np_k and the memory size are checked when fit scores the training images)
            self.model_["memory"] = ((x + 1.0) / 2.0).astype(np.float32)
            return
        if self.latent:
            self.model_["ae"] = self._fit_ae(x)
            z = self._encode_all(self.model_["ae"], x)
            self.latent_scale_ = float(np.std(z)) or 1.0
            data = (z / self.latent_scale_).astype(np.float32)
        else:
            data = x
        net, sde = self._unet(), self._sde
        params = jax.jit(net.init)(jax.random.key(self.seed, impl="rbg"),
                                   jnp.zeros((1,) + data.shape[1:]), jnp.zeros((1,)))
        kind = self.noise

        def loss_fn(p, batch, key):
            model_fn = lambda v, t: net.apply(p, v, t)
            if kind == "gaussian":
                return losses.dsm_loss(model_fn, sde, batch, key, parameterization="eps").loss, {}
            k_t, k_z = jax.random.split(key)
            t = jax.random.uniform(k_t, (batch.shape[0],), minval=1e-5, maxval=sde.T)
            z = self._noise(k_z, batch.shape)
            a = sde.alpha(t)[:, None, None, None]
            s = sde.sigma(t)[:, None, None, None]
            return jnp.mean(jnp.square(model_fn(a * batch + s * z, t) - z)), {}

        res = trainer.fit(loss_fn, params, data, config=self._train_config(len(data), int(self.train_steps), 0),
                          progress=self.verbose)
        self.model_["unet"] = res.state.ema_params

    def _resize_np(self, X: np.ndarray) -> np.ndarray:
        hw = self._work_hw(X.shape[1:3]) if not hasattr(self, "work_hw_") else self.work_hw_
        if tuple(X.shape[1:3]) == tuple(hw):
            return X
        out = []
        fn = _resize_fn(tuple(int(v) for v in hw))
        for i in range(0, len(X), 256):
            out.append(np.asarray(fn(jnp.asarray(X[i:i + 256]))))
        return np.concatenate(out)

    # -- scoring -------------------------------------------------------------------------------
    def _score_key(self, in_hw) -> tuple:
        return (tuple(in_hw), self.scoring, tuple(float(t) for t in self.t0), self.solver,
                int(self.solver_steps), float(self.eta), int(self.repeats), int(self.mask_patch),
                int(self.num_masks), float(self.mask_t0), float(self.guidance), self.distance,
                tuple(int(s) for s in self.map_scales), float(self.map_sigma), self.image_score,
                float(self.topk), int(self.elbo_samples))

    def _build(self, in_hw: Tuple[int, int]):
        """The jitted per-batch function (params, x [B, H, W, C] in [-1, 1], key) -> outputs."""
        net, sde = self._unet(), self._sde
        ae = self._ae() if self.latent else None
        work = tuple(self.work_hw_)
        scale = float(self.latent_scale_)
        t0s = tuple(float(t) for t in self.t0)
        solver, steps, eta = self.solver, int(self.solver_steps), float(self.eta)
        repeats, w = int(self.repeats), float(self.guidance)
        scoring, dist = self.scoring, self.distance
        map_scales, sigma_blur = tuple(int(s) for s in self.map_scales), float(self.map_sigma)
        image_score, topk = self.image_score, float(self.topk)
        structured = self.noise != "gaussian"
        dshape = self._diff_shape()
        f = 2 ** len(self.ae_features) if self.latent else 1
        masks = None
        if scoring == "masked":
            patch = max(1, int(self.mask_patch) // f)
            masks = jnp.asarray(_patch_masks(dshape[0], dshape[1], patch, int(self.num_masks)))
        mask_t0 = float(self.mask_t0)
        denoise_key = jax.random.key(self.seed + 13)
        elbo_samples = int(self.elbo_samples)

        def solver_kwargs(masked: bool) -> Dict[str, Any]:
            kw: Dict[str, Any] = {"num_steps": steps}
            if solver == "ddim":
                kw["eta"] = 1.0 if (masked and not structured) else eta
            return kw

        def fn(params, x, key):
            p_net = params["unet"]
            xw = self._resize(x, work)
            if ae is not None:
                encode = lambda v: ae.apply(params["ae"], v, method=ae.encode) / scale
                decode = lambda u: ae.apply(params["ae"], u * scale, method=ae.decode)
            else:
                encode = decode = lambda v: v
            u = encode(xw)

            def eps_fn(v, t):
                eps = net.apply(p_net, v, t)
                if w > 0:
                    a = sde.alpha(t)[:, None, None, None]
                    s = sde.sigma(t)[:, None, None, None]
                    x0_hat = (v - s * eps) / a
                    eps = eps - w * s * a * (u - x0_hat)
                return eps

            def score_fn(v, t):
                return -eps_fn(v, t) / sde.sigma(t)[:, None, None, None]

            native = None
            if scoring == "denoise":
                pairs_t = jnp.repeat(jnp.asarray(t0s, jnp.float32), repeats)  # [M]
                pairs_i = jnp.arange(len(t0s) * repeats)

                def one(carry, ti):
                    t, i = ti
                    a_t, s_t = sde.alpha(t), sde.sigma(t)
                    # Fixed draws (independent of the batch key): common random numbers.
                    z = self._noise(jax.random.fold_in(denoise_key, i), (1,) + tuple(u.shape[1:]))
                    u_t = a_t * u + s_t * z
                    u0 = (u_t - s_t * net.apply(p_net, u_t, jnp.full((u.shape[0],), t))) / a_t
                    x0_hat = decode(u0)
                    d = x0_hat - xw
                    e = jnp.mean(d * d if dist == "squared" else jnp.abs(d), axis=-1)
                    return (carry[0] + e, carry[1] + x0_hat), None

                zero = (jnp.zeros(xw.shape[:3], xw.dtype), jnp.zeros_like(xw))
                (err, rec_sum), _ = jax.lax.scan(one, zero, (pairs_t, pairs_i))
                maps = err / (len(t0s) * repeats)
                recon = rec_sum / (len(t0s) * repeats)  # mean clean-image estimate
                native = jnp.mean(maps.reshape(maps.shape[0], -1), axis=-1)
            elif scoring == "elbo":
                # Fixed draws (independent of the batch key), as for "denoise".
                res = scoring_lib.elbo(score_fn, sde, u, denoise_key, num_samples=elbo_samples)
                m = jnp.sum(res.maps, axis=-1)  # [B, h', w'] nats per position
                maps = self._resize(m[..., None], work)[..., 0]
                native = res.scores
                recon = xw
            elif scoring == "score_norm":
                res = scoring_lib.score_norm(score_fn, sde, u, ts=t0s)
                m = jnp.mean(res.maps, axis=-1)  # [B, h', w'] in diffusion space
                maps = self._resize(m[..., None], work)[..., 0]
                native = res.scores
                recon = xw
            else:
                recons = []
                if scoring == "reconstruction":
                    for i, t in enumerate(t0s):
                        for r in range(repeats):
                            k_n, k_s = jax.random.split(jax.random.fold_in(key, i * repeats + r))
                            z = self._noise(k_n, u.shape)
                            u_t = sde.alpha(t) * u + sde.sigma(t) * z
                            out = solvers.solve(score_fn, sde, u_t, k_s, method=solver, t_start=t,
                                                **solver_kwargs(False))
                            recons.append(out.x)
                else:  # masked: every pixel is hidden by exactly one mask
                    for r in range(repeats):
                        comp = jnp.zeros_like(u)
                        for j in range(masks.shape[0]):
                            k_n, k_s = jax.random.split(jax.random.fold_in(key, r * 1000 + j))
                            hidden = masks[j][None, :, :, None]
                            z = self._noise(k_n, u.shape)
                            u_t = sde.alpha(mask_t0) * u + sde.sigma(mask_t0) * z
                            out = solvers.solve(score_fn, sde, u_t, k_s, method=solver,
                                                t_start=mask_t0, mask=1.0 - hidden, known=u,
                                                **solver_kwargs(True))
                            comp = comp + hidden * out.x
                        recons.append(comp)
                err_maps = []
                for rec_u in recons:
                    rec = decode(rec_u)
                    per_scale = []
                    for s in map_scales:
                        a = _avg_pool(xw, s) if s > 1 else xw
                        b = _avg_pool(rec, s) if s > 1 else rec
                        d = (a - b) ** 2 if dist == "squared" else jnp.abs(a - b)
                        d = jnp.mean(d, axis=-1, keepdims=True)
                        per_scale.append(self._resize(d, work)[..., 0] if s > 1 else d[..., 0])
                    err_maps.append(jnp.mean(jnp.stack(per_scale), axis=0))
                maps = jnp.mean(jnp.stack(err_maps), axis=0)
                recon = jnp.mean(jnp.stack([decode(r) for r in recons]), axis=0)
                native = jnp.mean(maps.reshape(maps.shape[0], -1), axis=-1)
            maps = _gaussian_blur(maps, sigma_blur)
            scores = _image_scores(maps, image_score, topk, native)
            maps_in = self._resize(maps[..., None], in_hw)[..., 0]
            recon_in = self._resize(jnp.clip((recon + 1.0) / 2.0, 0.0, 1.0), in_hw)
            return scores, maps_in, recon_in

        return jax.jit(fn)

    def _density_np(self, x: np.ndarray, training: bool = False):
        """scoring="density_np" of prepared images x [N, H, W, C] in [-1, 1] (module docstring):
        an ImageAnalysis; training=True: x are the training images, each scored without itself
        and its shifts, and only the scores [N] are returned (no maps to compute)."""
        t_start = time.perf_counter()
        in_hw = tuple(int(v) for v in x.shape[1:3])
        shifts, blur, k = int(self.np_shifts), float(self.np_blur), int(self.np_k)
        key_c = ("density_np", shifts, blur, k)
        cache = getattr(self, "_cache", None)
        if cache is None:
            cache = self._cache = {}
        if key_c not in cache:
            base = np.asarray(self.model_["memory"])
            nbytes = base.nbytes * (2 * shifts + 1) ** 2
            if nbytes > _NP_MEMORY_LIMIT:
                raise ValueError(
                    f"the density_np memory would take {nbytes / 2**30:.1f} GiB ({len(base)} images x "
                    f"{(2 * shifts + 1) ** 2} shifts at {base.shape[1:]}); lower image_size or "
                    f"np_shifts, or fit on fewer images (limit {_NP_MEMORY_LIMIT / 2**30:.0f} GiB)")
            mem = blur_images(shift_augment(base, shifts), blur)
            if k > len(mem):
                raise ValueError(f"np_k={k} exceeds the density_np memory ({len(mem)} images)")
            mem = jnp.asarray(mem.reshape(len(mem), -1))
            v = scoring_lib.diffusion_variance(mem, k=k)
            if self.verbose:
                print(f"density_np: memory {mem.shape[0]} images, variance {v:.4g}", flush=True)
            cache[key_c] = (mem, v)
        mem, v = cache[key_c]
        xw = (np.asarray(self._resize_np(x)) + 1.0) / 2.0
        q = blur_images(xw, blur)
        q_flat = jnp.asarray(q.reshape(len(q), -1))
        if training:  # memory row j is a shift of training image j mod N
            n = len(self.model_["memory"])
            return np.asarray(scoring_lib.diffused_density(
                mem, q_flat, variance=v, k=k, groups_train=np.arange(mem.shape[0]) % n,
                groups=np.arange(n)).scores, np.float64)
        res = scoring_lib.diffused_density(mem, q_flat, variance=v, k=k, maps=True)
        maps = jnp.mean(res.maps.reshape(q.shape), axis=-1)
        maps = _gaussian_blur(maps, float(self.map_sigma))
        scores = _image_scores(maps, self.image_score, float(self.topk), res.scores)
        maps_in = np.asarray(self._resize(maps[..., None], in_hw)[..., 0])
        recon = self._resize(jnp.clip(res.estimates.reshape(q.shape), 0.0, 1.0), in_hw)
        self.batch_seconds_ = [time.perf_counter() - t_start]
        return ImageAnalysis(scores=np.asarray(scores, np.float64), maps=maps_in,
                             reconstructions=np.asarray(recon, np.float32))

    def _analyze(self, x: np.ndarray) -> ImageAnalysis:
        has_net = "unet" in self.model_
        if (self.scoring == "density_np") == has_net:
            raise ValueError(
                f"scoring={self.scoring!r} needs a detector fitted "
                + ("with scoring='density_np' (it keeps the training images; this one trained a "
                   "network)" if has_net else "with a network scoring (this one was fitted with "
                   "scoring='density_np' and trained none)") + "; refit")
        if not has_net:
            return self._density_np(x)
        in_hw = tuple(int(v) for v in x.shape[1:3])
        key_c = self._score_key(in_hw)
        cache = getattr(self, "_cache", None)
        if cache is None:
            cache = self._cache = {}
        if key_c not in cache:
            cache[key_c] = self._build(in_hw)
        fn = cache[key_c]
        n = len(x)
        bs = int(min(self.score_batch_size, n))
        key = jax.random.key(self.seed + 7)
        scores, maps, recons = [], [], []
        self.batch_seconds_ = []  # wall time per batch (the first includes compilation)
        for i, start in enumerate(range(0, n, bs)):
            t_start = time.perf_counter()
            xb = x[start:start + bs]
            m = len(xb)
            if m < bs:  # pad so that shapes (and the compilation) stay fixed
                xb = np.concatenate([xb, np.repeat(xb[-1:], bs - m, axis=0)])
            s, mp, rc = fn(self.model_, jnp.asarray(xb), jax.random.fold_in(key, i))
            scores.append(np.asarray(s)[:m])
            maps.append(np.asarray(mp)[:m])
            recons.append(np.asarray(rc)[:m])
            self.batch_seconds_.append(time.perf_counter() - t_start)
        return ImageAnalysis(scores=np.concatenate(scores).astype(np.float64),
                             maps=np.concatenate(maps), reconstructions=np.concatenate(recons))

    def _decision_function(self, X) -> np.ndarray:
        return self._analyze(X).scores

    def _training_scores(self, data) -> np.ndarray:
        if "memory" in self.model_ and self.scoring == "density_np":
            # Leave each training image out with its shifts: scored against the memory that holds
            # it, a training image would sit at distance 0 and the threshold would be far too low.
            return self._density_np(data, training=True)
        return self._decision_function(data)

    def _check_head_support(self, anomalies) -> None:
        super()._check_head_support(anomalies)
        if anomalies is not None and self.scoring == "density_np":
            raise ValueError("scoring='density_np' has no supervised head (anomalies=): its maps of "
                             "training images would be in-sample; use a network scoring for it")

    def _head_features(self, data) -> np.ndarray:
        return self._map_features(self._analyze(data).maps)

    def _scores_and_head_features(self, data):
        res = self._analyze(data)  # one pass gives the scores and the maps the head pools
        return res.scores, self._map_features(res.maps)

    @staticmethod
    def _map_features(maps: np.ndarray) -> np.ndarray:
        # Image-level head (fit(X, anomalies=images)): pooled statistics of the log anomaly map
        # (mean, std, max, means of the top 1% / 5% / 10% pixels, median, 90th and 99th
        # percentiles). The maps themselves are unchanged: the head re-ranks images only.
        flat = np.log(np.maximum(maps.reshape(len(maps), -1).astype(np.float64), 0.0) + 1e-8)
        srt = -np.sort(-flat, axis=1)
        n = flat.shape[1]
        top = [srt[:, :max(1, int(round(f * n)))].mean(1) for f in (0.01, 0.05, 0.1)]
        q = np.quantile(flat, (0.5, 0.9, 0.99), axis=1)
        return np.stack([flat.mean(1), flat.std(1), srt[:, 0], *top, *q], 1).astype(np.float32)

    def analyze(self, X) -> ImageAnalysis:
        """Image scores, anomaly maps and reconstructions of X in one pass.

        Args:
          X: [N, H, W, C] (or [N, H, W]) uint8 images or floats in [0, 1], C as in fit.

        Returns:
          ImageAnalysis(scores [N], maps [N, H, W], reconstructions [N, H, W, C] in [0, 1]).
        """
        self._check_fitted()
        return self._analyze(self._prepare(X, fitting=False))

    def anomaly_map(self, X) -> np.ndarray:
        """Per-pixel anomaly maps [N, H, W] at the input resolution (higher = more anomalous)."""
        return self.analyze(X).maps

    def reconstruct(self, X) -> np.ndarray:
        """Reconstructions [N, H, W, C] in [0, 1] under the current scoring options."""
        return self.analyze(X).reconstructions

    # -- persistence ---------------------------------------------------------------------------
    def _export(self):
        meta = {"n_train": self.n_train_, "input_shape": list(self.input_shape_),
                "n_channels": self.n_channels_, "work_hw": list(self.work_hw_),
                "latent_scale": self.latent_scale_, "fit_params": self.fit_params_}
        if "memory" in self.model_:
            meta["n_memory"] = int(len(self.model_["memory"]))
        return meta, jax.tree.map(np.asarray, self.model_)

    def _abstract_arrays(self, meta):
        self._check_fit_params()
        self.n_channels_ = int(meta["n_channels"])
        self.work_hw_ = tuple(int(v) for v in meta["work_hw"])
        tree = {}
        if "n_memory" in meta:
            h, w = self.work_hw_
            return {"memory": jax.ShapeDtypeStruct((int(meta["n_memory"]), h, w, self.n_channels_),
                                                   np.float32)}
        if self.latent:
            ae = self._ae()
            tree["ae"] = jax.eval_shape(lambda: ae.init(
                jax.random.key(0), jnp.zeros((1,) + self.work_hw_ + (self.n_channels_,))))
        net = self._unet()
        tree["unet"] = jax.eval_shape(lambda: net.init(
            jax.random.key(0), jnp.zeros((1,) + self._diff_shape()), jnp.zeros((1,))))
        return tree

    def _import(self, meta, arrays):
        self.n_train_ = int(meta["n_train"])
        self.input_shape_ = tuple(int(v) for v in meta["input_shape"])
        self.n_channels_ = int(meta["n_channels"])
        self.work_hw_ = tuple(int(v) for v in meta["work_hw"])
        self.latent_scale_ = float(meta["latent_scale"])
        self.fit_params_ = {k: _norm(v) for k, v in meta["fit_params"].items()}
        self.model_ = jax.tree.map(jnp.asarray, dict(arrays))
        self._cache = {}


def _norm(v):
    """Normalises a parameter value for comparison (lists and tuples alike; JSON round trip)."""
    if isinstance(v, (list, tuple)):
        return tuple(_norm(e) for e in v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v
