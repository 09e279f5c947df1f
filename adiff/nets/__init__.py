"""Flax Linen score networks.

Every network is called as `net.apply(params, x, t, cond=None, train=False)` with continuous
diffusion times t [B] (or a scalar) in [0, 1] and returns an output shaped like x, with the channel
count overridable (`out_dim` / `out_channels`). Conditioning channels are concatenated to the
input. The final layer is zero-initialised, so an untrained network outputs exactly 0. Dropout is
active only with `train=True`, which then needs `rngs={"dropout": key}`.

- `ResidualMLP`: vectors [B, D] (tabular data, embeddings).
- `TemporalNet`: windows [B, L, C] (dilated residual convs + self-attention over time).
- `UNet`: images [B, H, W, C] (DDPM/ADM-style U-Net with GroupNorm and low-resolution attention).
"""
from adiff.nets.embeddings import GaussianFourierProjection, TimeEmbedding, sinusoidal_embedding
from adiff.nets.mlp import ResidualMLP
from adiff.nets.temporal import TemporalNet
from adiff.nets.unet import UNet

__all__ = ["GaussianFourierProjection", "TimeEmbedding", "sinusoidal_embedding", "ResidualMLP",
           "TemporalNet", "UNet"]
