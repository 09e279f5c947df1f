"""Embeddings of the continuous diffusion time t in [0, 1].

`sinusoidal_embedding` is the Transformer / DDPM position encoding applied to `scale * t` (with the
default `scale = 1000` a continuous t in [0, 1] covers the same range as DDPM's integer steps).
`GaussianFourierProjection` is the random-feature embedding of NCSN++ (score_sde), with fixed
(non-trained) frequencies. `TimeEmbedding` is the usual sinusoidal -> Dense -> silu -> Dense MLP
that every network in `adiff.nets` conditions its blocks on.
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from adiff.typing import Array

__all__ = ["sinusoidal_embedding", "GaussianFourierProjection", "TimeEmbedding", "batch_times",
           "check_cond"]


def batch_times(t: Array, batch: int, *, dtype=jnp.float32) -> Array:
    """Returns the diffusion times as a [batch] float array; a scalar t is broadcast.

    Args:
      t: scalar or [batch] times.
      batch: the batch size B of the network input.
      dtype: floating dtype of the result.

    Returns:
      [batch] array of times.

    Raises:
      ValueError: if t is neither a scalar nor of shape [batch].
    """
    t = jnp.asarray(t)
    if t.ndim == 0:
        t = jnp.broadcast_to(t, (batch,))
    if t.shape != (batch,):
        raise ValueError(
            f"t must be a scalar or have shape [B] = ({batch},) matching x; got shape {t.shape}")
    return t.astype(dtype)


def check_cond(cond: Optional[Array], x: Array, rank: int, what: str) -> Optional[Array]:
    """Validates conditioning channels: rank `rank` and x's leading (non-channel) dims.

    Args:
      cond: None or the conditioning array.
      x: the network input.
      rank: expected number of dims of cond.
      what: the expected shape in words, for the error message (e.g. "[B, L, Cc]").

    Returns:
      None, or cond cast to x's dtype.
    """
    if cond is None:
        return None
    cond = jnp.asarray(cond)
    if cond.ndim != rank or cond.shape[:-1] != x.shape[:-1]:
        raise ValueError(
            f"cond must have shape {what} = {x.shape[:-1] + ('Cc',)} matching x {x.shape}; "
            f"got shape {cond.shape}")
    return cond.astype(x.dtype)


def sinusoidal_embedding(t: Array, dim: int, *, max_period: float = 10000.0,
                         scale: float = 1000.0) -> Array:
    """Sinusoidal embedding of times t (DDPM / Transformer style).

    The frequencies are `max_period ** (-k / half)` for k = 0..half-1 with half = dim // 2; the
    embedding is `[sin(scale t f_k), cos(scale t f_k)]`, zero-padded by one column when dim is odd.

    Args:
      t: [B] times (continuous, typically in [0, 1]).
      dim: embedding size (>= 1).
      max_period: the longest period of the sinusoids (in units of `scale * t`).
      scale: multiplier applied to t before the sinusoids.

    Returns:
      [B, dim] float32 embedding.
    """
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    t = jnp.asarray(t, jnp.float32)
    if t.ndim != 1:
        raise ValueError(f"t must have shape [B], got shape {t.shape}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half, 1))
    args = (scale * t)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of t (Tancik et al. 2020; NCSN++ in score_sde).

    Frequencies W ~ N(0, scale^2) are stored as a parameter "W" but never trained (gradient
    stopped). Output: `[sin(2 pi t W), cos(2 pi t W)]`, zero-padded to `dim` when dim is odd.

    Attributes:
      dim: output size.
      scale: standard deviation of the random frequencies.
    """

    dim: int = 64
    scale: float = 16.0

    @nn.compact
    def __call__(self, t: Array) -> Array:
        """Embeds t [B] -> [B, dim]."""
        t = jnp.asarray(t, jnp.float32)
        if t.ndim != 1:
            raise ValueError(f"t must have shape [B], got shape {t.shape}")
        half = self.dim // 2
        w = self.param("W", nn.initializers.normal(stddev=self.scale), (half,))
        w = jax.lax.stop_gradient(w)
        args = 2.0 * math.pi * t[:, None] * w[None, :]
        emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
        if self.dim % 2:
            emb = jnp.pad(emb, ((0, 0), (0, 1)))
        return emb


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of t followed by Dense -> silu -> Dense.

    Attributes:
      dim: size of the sinusoidal features and of the output.
    """

    dim: int = 128

    @nn.compact
    def __call__(self, t: Array) -> Array:
        """Embeds t [B] -> [B, dim]."""
        h = sinusoidal_embedding(t, self.dim)
        h = nn.Dense(self.dim, name="dense_0")(h)
        h = nn.silu(h)
        return nn.Dense(self.dim, name="dense_1")(h)
