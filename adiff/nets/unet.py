"""A small DDPM / ADM-style U-Net for images, x [B, H, W, C].

Architecture: [x, cond] -> Conv3x3(base); an encoder of `len(channel_mults)` levels, level i with
`num_res_blocks` residual blocks of `base * channel_mults[i]` channels (GroupNorm -> silu ->
Conv3x3, + Dense(time embedding), GroupNorm -> silu -> dropout -> Conv3x3, 1x1 conv on the skip
when the width changes), self-attention after each block whose spatial size (H at that level) is in
`attention_resolutions`, and a stride-2 Conv3x3 downsampling between levels; a middle
ResBlock -> attention -> ResBlock; a mirrored decoder with `num_res_blocks + 1` blocks per level
that each concatenate one encoder activation (skip connection), nearest-neighbour x2 upsampling +
Conv3x3 between levels; GroupNorm -> silu -> Conv3x3(out_channels), zero-initialised.
"""
from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from adiff.nets.embeddings import TimeEmbedding, batch_times, check_cond
from adiff.typing import Array

__all__ = ["UNet"]


class _ResBlock(nn.Module):
    features: int
    groups: int
    dropout: float

    @nn.compact
    def __call__(self, x: Array, temb: Array, *, train: bool) -> Array:
        h = nn.silu(nn.GroupNorm(num_groups=self.groups, name="norm_0")(x))
        h = nn.Conv(self.features, (3, 3), padding="SAME", name="conv_0")(h)
        h = h + nn.Dense(self.features, name="time")(temb)[:, None, None, :]
        h = nn.silu(nn.GroupNorm(num_groups=self.groups, name="norm_1")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.features, (3, 3), padding="SAME", name="conv_1")(h)
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), name="skip")(x)
        return x + h


class _AttnBlock(nn.Module):
    groups: int
    num_heads: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hh, ww, c = x.shape
        h = nn.GroupNorm(num_groups=self.groups, name="norm")(x).reshape(b, hh * ww, c)
        h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="attn")(h, h)
        return x + h.reshape(b, hh, ww, c)


class UNet(nn.Module):
    """Time-conditioned U-Net: (x [B, H, W, C], t [B], cond [B, H, W, Cc]) -> [B, H, W, out].

    Attributes:
      base_channels: channels at the first level (must be divisible by `groups`).
      channel_mults: channel multiplier per level; there are len(channel_mults) - 1 downsamplings,
        so H and W must be divisible by 2 ** (len(channel_mults) - 1).
      num_res_blocks: residual blocks per encoder level (the decoder has one more).
      attention_resolutions: spatial sizes (H at a level) at which self-attention is used.
      groups: GroupNorm groups.
      dropout: dropout rate in the residual blocks (train=True needs a "dropout" rng).
      time_dim: size of the diffusion-time embedding.
      out_channels: output channels; defaults to C = x.shape[-1].
      num_heads: heads of every attention layer (must divide base_channels).
    """

    base_channels: int = 32
    channel_mults: Tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: Tuple[int, ...] = (8,)
    groups: int = 8
    dropout: float = 0.0
    time_dim: int = 128
    out_channels: Optional[int] = None
    num_heads: int = 1

    def _validate(self, x: Array) -> None:
        if x.ndim != 4:
            raise ValueError(f"x must have shape [B, H, W, C], got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must be a floating array, got dtype {x.dtype}")
        if not self.channel_mults:
            raise ValueError("channel_mults must hold at least one level, got ()")
        factor = 2 ** (len(self.channel_mults) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"H and W must be divisible by 2**(len(channel_mults)-1) = {factor} for "
                f"channel_mults={self.channel_mults}; got H={x.shape[1]}, W={x.shape[2]}")
        if self.base_channels % self.groups:
            raise ValueError(
                f"base_channels must be divisible by groups; got base_channels="
                f"{self.base_channels}, groups={self.groups}")
        if self.base_channels % self.num_heads:
            raise ValueError(
                f"num_heads must divide base_channels; got num_heads={self.num_heads}, "
                f"base_channels={self.base_channels}")

    @nn.compact
    def __call__(self, x: Array, t: Array, cond: Optional[Array] = None, *,
                 train: bool = False) -> Array:
        """Applies the network.

        Args:
          x: [B, H, W, C] noisy images.
          t: [B] (or scalar) diffusion times in [0, 1].
          cond: optional [B, H, W, Cc] conditioning channels, concatenated to x.
          train: enables dropout.

        Returns:
          [B, H, W, out_channels] output (out_channels defaults to C).
        """
        x = jnp.asarray(x)
        self._validate(x)
        t = batch_times(t, x.shape[0])
        cond = check_cond(cond, x, 4, "[B, H, W, Cc]")
        out_channels = x.shape[-1] if self.out_channels is None else self.out_channels
        g, nh = self.groups, self.num_heads

        temb = nn.silu(TimeEmbedding(self.time_dim, name="time_embedding")(t))
        h = x if cond is None else jnp.concatenate([x, cond], axis=-1)
        h = nn.Conv(self.base_channels, (3, 3), padding="SAME", name="input")(h)
        skips = [h]
        last = len(self.channel_mults) - 1
        for i, mult in enumerate(self.channel_mults):
            for j in range(self.num_res_blocks):
                h = _ResBlock(self.base_channels * mult, g, self.dropout,
                              name=f"down_{i}_res_{j}")(h, temb, train=train)
                if h.shape[1] in self.attention_resolutions:
                    h = _AttnBlock(g, nh, name=f"down_{i}_attn_{j}")(h)
                skips.append(h)
            if i != last:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), padding="SAME",
                            name=f"down_{i}_downsample")(h)
                skips.append(h)

        ch = h.shape[-1]
        h = _ResBlock(ch, g, self.dropout, name="mid_res_0")(h, temb, train=train)
        h = _AttnBlock(g, nh, name="mid_attn")(h)
        h = _ResBlock(ch, g, self.dropout, name="mid_res_1")(h, temb, train=train)

        for i in reversed(range(len(self.channel_mults))):
            mult = self.channel_mults[i]
            for j in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = _ResBlock(self.base_channels * mult, g, self.dropout,
                              name=f"up_{i}_res_{j}")(h, temb, train=train)
                if h.shape[1] in self.attention_resolutions:
                    h = _AttnBlock(g, nh, name=f"up_{i}_attn_{j}")(h)
            if i != 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), method="nearest")
                h = nn.Conv(c, (3, 3), padding="SAME", name=f"up_{i}_upsample")(h)

        h = nn.silu(nn.GroupNorm(num_groups=g, name="output_norm")(h))
        return nn.Conv(out_channels, (3, 3), padding="SAME", kernel_init=nn.initializers.zeros,
                       name="output")(h)
