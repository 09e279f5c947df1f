"""Residual MLP score network for vectors (tabular data, embeddings, 2-D toys).

Architecture: [x, cond] -> Dense(features); `num_blocks` pre-norm residual blocks
(LayerNorm -> silu -> Dense, + Dense(time embedding), LayerNorm -> silu -> dropout -> Dense);
LayerNorm -> silu -> Dense(out_dim) with zero-initialised weights, so the untrained network
outputs exactly 0 (the "eps = 0" / "score = 0" starting point of score_sde and ADM).
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from adiff.nets.embeddings import TimeEmbedding, batch_times, check_cond
from adiff.typing import Array

__all__ = ["ResidualMLP"]


class ResidualMLP(nn.Module):
    """Time-conditioned residual MLP: (x [B, D], t [B], cond [B, Dc]) -> [B, out_dim].

    Attributes:
      features: hidden width.
      num_blocks: number of residual blocks.
      time_dim: size of the time embedding.
      dropout: dropout rate inside each block (active only with train=True, which then needs a
        "dropout" rng).
      out_dim: output size; defaults to D = x.shape[-1].
    """

    features: int = 256
    num_blocks: int = 3
    time_dim: int = 128
    dropout: float = 0.0
    out_dim: Optional[int] = None

    @nn.compact
    def __call__(self, x: Array, t: Array, cond: Optional[Array] = None, *,
                 train: bool = False) -> Array:
        """Applies the network.

        Args:
          x: [B, D] inputs (noisy samples x_t).
          t: [B] (or scalar) diffusion times in [0, 1].
          cond: optional [B, Dc] conditioning features, concatenated to x.
          train: enables dropout.

        Returns:
          [B, out_dim] output (out_dim defaults to D).
        """
        x = jnp.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"x must have shape [B, D], got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must be a floating array, got dtype {x.dtype}")
        t = batch_times(t, x.shape[0])
        cond = check_cond(cond, x, 2, "[B, Dc]")
        out_dim = x.shape[-1] if self.out_dim is None else self.out_dim

        temb = nn.silu(TimeEmbedding(self.time_dim, name="time_embedding")(t))
        h = x if cond is None else jnp.concatenate([x, cond], axis=-1)
        h = nn.Dense(self.features, name="input")(h)
        for i in range(self.num_blocks):
            r = nn.silu(nn.LayerNorm(name=f"block_{i}_norm_0")(h))
            r = nn.Dense(self.features, name=f"block_{i}_dense_0")(r)
            r = r + nn.Dense(self.features, name=f"block_{i}_time")(temb)
            r = nn.silu(nn.LayerNorm(name=f"block_{i}_norm_1")(r))
            r = nn.Dropout(self.dropout, deterministic=not train)(r)
            r = nn.Dense(self.features, name=f"block_{i}_dense_1")(r)
            h = h + r
        h = nn.silu(nn.LayerNorm(name="output_norm")(h))
        return nn.Dense(out_dim, kernel_init=nn.initializers.zeros, name="output")(h)
