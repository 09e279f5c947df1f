"""A plain MLP head for vectors without a time input (e.g. DTE's diffusion-time classifier)."""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from adiff.typing import Array

__all__ = ["MLPClassifier"]


class MLPClassifier(nn.Module):
    """[B, D] -> [B, num_outputs] logits: Dense + ReLU layers with dropout between hidden layers.

    DTE (Livernoche et al., ICLR 2024) uses hidden sizes (256, 512, 256), ReLU and dropout 0.5 for
    its diffusion-time classifier; those are the defaults here.

    Attributes:
      hidden: hidden layer sizes.
      num_outputs: output size (number of time bins for DTE-Categorical).
      dropout: dropout rate after every hidden layer but the first (train=True needs a "dropout" rng).
    """

    hidden: Sequence[int] = (256, 512, 256)
    num_outputs: int = 7
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x: Array, cond: Optional[Array] = None, *, train: bool = False) -> Array:
        if x.ndim != 2:
            raise ValueError(f"x must have shape [B, D], got shape {x.shape}")
        h = x if cond is None else jnp.concatenate([x, cond.astype(x.dtype)], axis=-1)
        for i, width in enumerate(self.hidden):
            h = nn.relu(nn.Dense(width, name=f"dense_{i}")(h))
            if i > 0 and self.dropout > 0:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(self.num_outputs, name="head")(h)
