"""Temporal score network for windows of multivariate time series, x [B, L, C].

Architecture (a WaveNet / TimesNet-style residual stack, as in diffusion imputers such as CSDI):
[x, cond] -> Dense(channels) (1x1 conv); `num_blocks` residual blocks, block i using dilation
`dilations[i % len(dilations)]`: LayerNorm -> silu -> dilated Conv1D (SAME padding) + Dense(time
embedding), LayerNorm -> silu -> dropout -> Dense (channel mixing), added to the residual stream;
optionally a pre-norm multi-head self-attention block over the time axis followed by a feed-forward
block (after the first half of the conv blocks and again at the end, so attention sees both local
and long-range features); LayerNorm -> silu -> Dense(out_channels), zero-initialised.

The convolutions are non-causal (the whole window is observed, as in reconstruction and
imputation scoring).
"""
from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from adiff.nets.embeddings import TimeEmbedding, batch_times, check_cond
from adiff.typing import Array

__all__ = ["TemporalNet"]


class _AttentionBlock(nn.Module):
    """Pre-norm self-attention over the time axis plus a feed-forward block, both residual."""

    num_heads: int
    dropout: float

    @nn.compact
    def __call__(self, h: Array, *, train: bool) -> Array:
        c = h.shape[-1]
        a = nn.LayerNorm(name="norm_attn")(h)
        a = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dropout_rate=self.dropout,
                                            deterministic=not train, name="attn")(a, a)
        h = h + a
        f = nn.LayerNorm(name="norm_ff")(h)
        f = nn.Dense(2 * c, name="ff_0")(f)
        f = nn.Dropout(self.dropout, deterministic=not train)(nn.gelu(f))
        return h + nn.Dense(c, name="ff_1")(f)


class TemporalNet(nn.Module):
    """Time-conditioned dilated-conv network: (x [B, L, C], t [B], cond [B, L, Cc]) -> [B, L, out].

    Attributes:
      channels: width of the residual stream.
      num_blocks: number of dilated residual conv blocks.
      dilations: dilation cycle of the conv blocks.
      kernel_size: conv kernel size along time.
      attention: add self-attention blocks over time.
      num_heads: attention heads (must divide `channels`).
      time_dim: size of the diffusion-time embedding.
      dropout: dropout rate (active only with train=True, which then needs a "dropout" rng).
      out_channels: output channels; defaults to C = x.shape[-1].
    """

    channels: int = 64
    num_blocks: int = 4
    dilations: Tuple[int, ...] = (1, 2, 4, 8)
    kernel_size: int = 3
    attention: bool = True
    num_heads: int = 4
    time_dim: int = 128
    dropout: float = 0.0
    out_channels: Optional[int] = None

    @nn.compact
    def __call__(self, x: Array, t: Array, cond: Optional[Array] = None, *,
                 train: bool = False) -> Array:
        """Applies the network.

        Args:
          x: [B, L, C] noisy windows.
          t: [B] (or scalar) diffusion times in [0, 1].
          cond: optional [B, L, Cc] conditioning channels, concatenated to x.
          train: enables dropout.

        Returns:
          [B, L, out_channels] output (out_channels defaults to C).
        """
        x = jnp.asarray(x)
        if x.ndim != 3:
            raise ValueError(f"x must have shape [B, L, C], got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must be a floating array, got dtype {x.dtype}")
        if not self.dilations or any(d < 1 for d in self.dilations):
            raise ValueError(f"dilations must be positive ints, got {self.dilations}")
        if self.attention and self.channels % self.num_heads:
            raise ValueError(
                f"num_heads must divide channels; got num_heads={self.num_heads}, "
                f"channels={self.channels}")
        t = batch_times(t, x.shape[0])
        cond = check_cond(cond, x, 3, "[B, L, Cc]")
        out_channels = x.shape[-1] if self.out_channels is None else self.out_channels

        temb = nn.silu(TimeEmbedding(self.time_dim, name="time_embedding")(t))
        h = x if cond is None else jnp.concatenate([x, cond], axis=-1)
        h = nn.Dense(self.channels, name="input")(h)
        half = self.num_blocks // 2
        for i in range(self.num_blocks):
            if self.attention and half > 0 and i == half:
                h = _AttentionBlock(self.num_heads, self.dropout, name="attention_mid")(
                    h, train=train)
            d = self.dilations[i % len(self.dilations)]
            r = nn.silu(nn.LayerNorm(name=f"block_{i}_norm_0")(h))
            r = nn.Conv(self.channels, (self.kernel_size,), kernel_dilation=(d,), padding="SAME",
                        name=f"block_{i}_conv")(r)
            r = r + nn.Dense(self.channels, name=f"block_{i}_time")(temb)[:, None, :]
            r = nn.silu(nn.LayerNorm(name=f"block_{i}_norm_1")(r))
            r = nn.Dropout(self.dropout, deterministic=not train)(r)
            r = nn.Dense(self.channels, name=f"block_{i}_mix")(r)
            h = h + r
        if self.attention:
            h = _AttentionBlock(self.num_heads, self.dropout, name="attention_out")(h, train=train)
        h = nn.silu(nn.LayerNorm(name="output_norm")(h))
        return nn.Dense(out_channels, kernel_init=nn.initializers.zeros, name="output")(h)
