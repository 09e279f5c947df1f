"""A small convolutional autoencoder for images [B, H, W, C].

Two uses: the first stage of latent diffusion (encode normal images to a [B, H/f, W/f, Cz]
latent, run the diffusion model there, decode back to pixels; f = 2 ** len(features)), and the
reconstruction-error baseline of the image benchmark.

Encoder: Conv3x3(features[0]) -> for each width: [GroupNorm -> silu -> Conv3x3 stride 2] ->
GroupNorm -> silu -> Conv1x1(latent_channels). Decoder mirrors it with nearest x2 upsampling +
Conv3x3, and a final Conv3x3 to the image channels. No time input (not a score network).
"""
from __future__ import annotations

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from adiff.typing import Array

__all__ = ["ConvAutoencoder"]


def _groups(features: int, groups: int) -> int:
    g = min(groups, features)
    while features % g:
        g -= 1
    return g


class _Encoder(nn.Module):
    features: Tuple[int, ...]
    latent_channels: int
    groups: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.Conv(self.features[0], (3, 3), padding="SAME", name="input")(x)
        for i, f in enumerate(self.features):
            h = nn.silu(nn.GroupNorm(num_groups=_groups(h.shape[-1], self.groups), name=f"norm_{i}")(h))
            h = nn.Conv(f, (3, 3), strides=(2, 2), padding="SAME", name=f"down_{i}")(h)
        h = nn.silu(nn.GroupNorm(num_groups=_groups(h.shape[-1], self.groups), name="norm_out")(h))
        return nn.Conv(self.latent_channels, (1, 1), name="to_latent")(h)


class _Decoder(nn.Module):
    features: Tuple[int, ...]
    out_channels: int
    groups: int

    @nn.compact
    def __call__(self, z: Array) -> Array:
        h = nn.Conv(self.features[-1], (3, 3), padding="SAME", name="input")(z)
        for i, f in enumerate(reversed(self.features)):
            h = nn.silu(nn.GroupNorm(num_groups=_groups(h.shape[-1], self.groups), name=f"norm_{i}")(h))
            b, hh, ww, c = h.shape
            h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), method="nearest")
            h = nn.Conv(f, (3, 3), padding="SAME", name=f"up_{i}")(h)
        h = nn.silu(nn.GroupNorm(num_groups=_groups(h.shape[-1], self.groups), name="norm_out")(h))
        return nn.Conv(self.out_channels, (3, 3), padding="SAME", name="output")(h)


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder: x [B, H, W, C] -> z [B, H/f, W/f, Cz] -> x_hat [B, H, W, C].

    Attributes:
      features: widths of the downsampling stages (f = 2 ** len(features)); H and W must be
        divisible by f.
      latent_channels: Cz, channels of the latent.
      out_channels: channels of the reconstruction (set it to the images' C).
      groups: GroupNorm groups (reduced to a divisor of each width).
    """

    features: Tuple[int, ...] = (32, 64)
    latent_channels: int = 4
    out_channels: int = 1
    groups: int = 8

    def _validate(self, x: Array) -> None:
        if x.ndim != 4:
            raise ValueError(f"x must have shape [B, H, W, C], got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must be a floating array, got dtype {x.dtype}")
        if not self.features:
            raise ValueError("features must hold at least one width, got ()")
        f = 2 ** len(self.features)
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"H and W must be divisible by 2**len(features) = {f}; got "
                             f"H={x.shape[1]}, W={x.shape[2]}")

    def setup(self):
        self.encoder = _Encoder(tuple(self.features), self.latent_channels, self.groups)
        self.decoder = _Decoder(tuple(self.features), self.out_channels, self.groups)

    def encode(self, x: Array) -> Array:
        """[B, H, W, C] images -> [B, H/f, W/f, latent_channels] latents."""
        self._validate(x)
        return self.encoder(x)

    def decode(self, z: Array) -> Array:
        """[B, h, w, latent_channels] latents -> [B, h*f, w*f, out_channels] images."""
        if z.ndim != 4 or z.shape[-1] != self.latent_channels:
            raise ValueError(f"z must have shape [B, h, w, {self.latent_channels}], got {z.shape}")
        return self.decoder(z)

    def __call__(self, x: Array) -> Array:
        """Reconstructs x: decode(encode(x)), [B, H, W, C]."""
        if self.out_channels != x.shape[-1]:
            raise ValueError(f"out_channels={self.out_channels} differs from the input's "
                             f"{x.shape[-1]} channels")
        return self.decode(self.encode(x))
