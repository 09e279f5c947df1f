"""Structured noise for image diffusion: Gaussian, multi-octave simplex, low-frequency Gaussian.

White Gaussian noise destroys fine texture long before it destroys large defects, so a model
that reconstructs from partially noised input tends to copy a large anomaly back (the identity
shortcut). AnoDDPM (Wyatt et al., CVPR-W 2022) trains and reconstructs with multi-octave simplex
noise instead, whose energy sits at low spatial frequencies, so large structures are corrupted
too. This module provides that noise, and a cheaper low-frequency Gaussian field, both as
zero-mean, unit-variance fields per (sample, channel) that drop in wherever eps ~ N(0, I) is used
with an eps-prediction network (x_t = alpha_t x_0 + sigma_t eps). Deterministic DDIM and
DPM-Solver++ stay exact for such noise through the network's eps prediction; stochastic SDE
solvers assume white noise and should not be used with it.

All functions are pure and jit-compatible; shapes are static Python ints.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from adiff.typing import Array, PRNGKey

__all__ = ["NOISE_KINDS", "gaussian", "simplex", "lowfreq", "sample", "simplex_2d"]

NOISE_KINDS = ("gaussian", "simplex", "lowfreq")

_F2 = 0.5 * (math.sqrt(3.0) - 1.0)
_G2 = (3.0 - math.sqrt(3.0)) / 6.0


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(shape)
    if len(shape) != 4 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"shape must be a tuple of 4 positive ints (B, H, W, C); got {shape!r}")
    return shape


def _standardize(z: Array) -> Array:
    """Zero mean, unit variance over (H, W) for every (sample, channel)."""
    z = z - jnp.mean(z, axis=(1, 2), keepdims=True)
    return z / jnp.sqrt(jnp.mean(z * z, axis=(1, 2), keepdims=True) + 1e-12)


def gaussian(key: PRNGKey, shape: Sequence[int], dtype=jnp.float32) -> Array:
    """White Gaussian noise N(0, I) of `shape` (B, H, W, C)."""
    return jax.random.normal(key, _check_shape(shape), dtype)


def simplex_2d(x: Array, y: Array, angles: Array) -> Array:
    """2-D simplex noise (Perlin 2001 / Gustavson's formulation) at coordinates (x, y).

    Args:
      x: [...] coordinates in lattice units.
      y: [...] coordinates, same shape as x.
      angles: [P, P] gradient angles of the (periodic) lattice; lattice point (i, j) uses
        angles[i mod P, j mod P].

    Returns:
      [...] noise values, roughly in [-1, 1].
    """
    p = angles.shape[0]
    s = (x + y) * _F2
    i = jnp.floor(x + s)
    j = jnp.floor(y + s)
    t = (i + j) * _G2
    x0 = x - (i - t)
    y0 = y - (j - t)
    upper = x0 > y0
    i1 = jnp.where(upper, 1.0, 0.0)
    j1 = 1.0 - i1
    corners = ((0.0, 0.0, x0, y0),
               (i1, j1, x0 - i1 + _G2, y0 - j1 + _G2),
               (1.0, 1.0, x0 - 1.0 + 2.0 * _G2, y0 - 1.0 + 2.0 * _G2))
    total = jnp.zeros_like(x)
    for di, dj, dx, dy in corners:
        ii = jnp.mod(i + di, p).astype(jnp.int32)
        jj = jnp.mod(j + dj, p).astype(jnp.int32)
        a = angles[ii, jj]
        falloff = jnp.maximum(0.5 - dx * dx - dy * dy, 0.0)
        total = total + falloff ** 4 * (jnp.cos(a) * dx + jnp.sin(a) * dy)
    return 70.0 * total


def simplex(key: PRNGKey, shape: Sequence[int], *, frequency: float = 4.0, octaves: int = 4,
            persistence: float = 0.6, dtype=jnp.float32) -> Array:
    """Multi-octave simplex noise (AnoDDPM), standardised per sample and channel.

    Octave o samples simplex noise with `frequency * 2**o` lattice cells across the image width
    and weight `persistence**o`; every (sample, channel, octave) has its own random gradients and
    random offset.

    Args:
      key: PRNG key.
      shape: (B, H, W, C).
      frequency: lattice cells across the image at the first (coarsest) octave, > 0.
      octaves: number of octaves, >= 1.
      persistence: amplitude ratio between successive octaves, in (0, 1].
      dtype: output dtype.

    Returns:
      [B, H, W, C] noise with zero mean and unit variance over (H, W).
    """
    b, h, w, c = _check_shape(shape)
    if not float(frequency) > 0:
        raise ValueError(f"frequency must be > 0; got {frequency!r}")
    if isinstance(octaves, bool) or not isinstance(octaves, int) or octaves < 1:
        raise ValueError(f"octaves must be an int >= 1; got {octaves!r}")
    if not 0.0 < float(persistence) <= 1.0:
        raise ValueError(f"persistence must lie in (0, 1]; got {persistence!r}")
    size = max(h, w)
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    period = 64  # lattice period; larger than any cell count used at these resolutions

    def one(k):  # one (sample, channel) field [H, W]
        out = jnp.zeros((h, w), jnp.float32)
        for o in range(octaves):
            k_a, k_off = jax.random.split(jax.random.fold_in(k, o))
            angles = jax.random.uniform(k_a, (period, period), maxval=2.0 * math.pi)
            off = jax.random.uniform(k_off, (2,), maxval=float(period))
            scale = float(frequency) * 2 ** o / size
            out = out + float(persistence) ** o * simplex_2d(xx * scale + off[0], yy * scale + off[1],
                                                             angles)
        return out

    keys = jax.random.split(key, b * c)
    z = jax.vmap(one)(keys).reshape(b, c, h, w).transpose(0, 2, 3, 1)
    return _standardize(z).astype(dtype)


def lowfreq(key: PRNGKey, shape: Sequence[int], *, scale: int = 4, octaves: int = 2,
            persistence: float = 0.5, dtype=jnp.float32) -> Array:
    """Low-frequency Gaussian noise: white noise on coarse grids, upsampled and summed.

    Octave o draws N(0, 1) on a grid `scale / 2**o` times coarser than the image (at least 1x1),
    resizes it bilinearly to (H, W) and weights it by `persistence**o`.

    Args:
      key: PRNG key.
      shape: (B, H, W, C).
      scale: downsampling factor of the coarsest octave, >= 1.
      octaves: number of octaves, >= 1.
      persistence: amplitude ratio between octaves, in (0, 1].
      dtype: output dtype.

    Returns:
      [B, H, W, C] noise with zero mean and unit variance over (H, W).
    """
    b, h, w, c = _check_shape(shape)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an int >= 1; got {scale!r}")
    if isinstance(octaves, bool) or not isinstance(octaves, int) or octaves < 1:
        raise ValueError(f"octaves must be an int >= 1; got {octaves!r}")
    if not 0.0 < float(persistence) <= 1.0:
        raise ValueError(f"persistence must lie in (0, 1]; got {persistence!r}")
    out = jnp.zeros((b, h, w, c), jnp.float32)
    for o in range(octaves):
        f = max(scale / 2 ** o, 1.0)
        gh, gw = max(1, int(round(h / f))), max(1, int(round(w / f)))
        coarse = jax.random.normal(jax.random.fold_in(key, o), (b, gh, gw, c))
        out = out + float(persistence) ** o * jax.image.resize(coarse, (b, h, w, c), "bilinear")
    return _standardize(out).astype(dtype)


def sample(kind: str, key: PRNGKey, shape: Sequence[int], dtype=jnp.float32, **kwargs) -> Array:
    """Draws noise of the named kind ("gaussian", "simplex" or "lowfreq").

    Args:
      kind: one of NOISE_KINDS.
      key: PRNG key.
      shape: (B, H, W, C).
      dtype: output dtype.
      **kwargs: hyper-parameters of that kind's function (ignored for "gaussian").

    Returns:
      [B, H, W, C] noise.
    """
    if kind == "gaussian":
        return gaussian(key, shape, dtype)
    if kind == "simplex":
        return simplex(key, shape, dtype=dtype, **kwargs)
    if kind == "lowfreq":
        return lowfreq(key, shape, dtype=dtype, **kwargs)
    raise ValueError(f"kind must be one of {NOISE_KINDS}; got {kind!r}")
