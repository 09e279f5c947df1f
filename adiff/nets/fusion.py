"""Per-modality encoders, decoders and the gate of multimodal fusion (Flax Linen).

`MultimodalAutoencoder` holds one encoder per modality (conv for images, pooled 1-D conv for
series, MLP for tables, token embedding + a small transformer for text, identity for precomputed
embeddings), one MLP decoder per trainable modality (reconstruction signal) and one projection head
per modality (cross-modal contrastive alignment into a shared space). `ModalityGate` maps a
per-sample context to per-component log prior weights, from which dynamic fusion derives its
per-sample weights over the (early, late, cross) scores.

A modality is described by a `ModalitySpec` (a hashable tuple: key, kind, per-sample shape, vocab
size), so modules stay pure functions of their attributes.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from adiff.typing import Array

KINDS = ("image", "text", "series", "table", "embedding")

__all__ = ["KINDS", "ModalitySpec", "ImageEncoder", "SeriesEncoder", "TableEncoder", "TextEncoder",
           "VectorDecoder", "MultimodalAutoencoder", "ModalityGate", "embedding_dim"]


class ModalitySpec(NamedTuple):
    """Static description of one modality.

    Attributes:
      key: the input dict key.
      kind: one of KINDS.
      shape: per-sample shape ([H, W, C] image, [L] text, [T, C] series, [D] table/embedding).
      vocab_size: text vocabulary size (token 0 = padding); 0 for other kinds.
    """

    key: str
    kind: str
    shape: Tuple[int, ...]
    vocab_size: int = 0


def embedding_dim(spec: ModalitySpec, embed_dim: int) -> int:
    """Embedding size of a modality: its own width for "embedding" (identity), else embed_dim."""
    return int(spec.shape[-1]) if spec.kind == "embedding" else int(embed_dim)


class ImageEncoder(nn.Module):
    """[B, H, W, C] -> [B, embed_dim]: two stride-2 3x3 convs, flatten, Dense."""

    embed_dim: int = 16
    features: Tuple[int, ...] = (16, 32)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = x
        for i, f in enumerate(self.features):
            h = nn.silu(nn.Conv(f, (3, 3), strides=(2, 2), name=f"conv_{i}")(h))
        h = h.reshape((h.shape[0], -1))
        h = nn.silu(nn.Dense(4 * self.embed_dim, name="hidden")(h))
        return nn.Dense(self.embed_dim, name="out")(h)


class SeriesEncoder(nn.Module):
    """[B, T, C] -> [B, embed_dim]: 1-D convs (one stride 2), mean and max pooling over time."""

    embed_dim: int = 16
    features: int = 32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.silu(nn.Conv(self.features, (5,), name="conv_0")(x))
        h = nn.silu(nn.Conv(self.features, (5,), strides=(2,), name="conv_1")(h))
        h = jnp.concatenate([h.mean(axis=1), h.max(axis=1)], axis=-1)
        return nn.Dense(self.embed_dim, name="out")(h)


class TableEncoder(nn.Module):
    """[B, D] -> [B, embed_dim]: two-layer MLP."""

    embed_dim: int = 16
    hidden: int = 64

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.silu(nn.Dense(self.hidden, name="hidden")(x))
        return nn.Dense(self.embed_dim, name="out")(h)


class TextEncoder(nn.Module):
    """[B, L] int tokens (0 = padding) -> [B, embed_dim].

    Token + learned position embeddings, one pre-norm transformer block (self-attention with the
    padding masked out, then an MLP), a mean over non-padding positions and a Dense.
    """

    embed_dim: int = 16
    vocab_size: int = 32
    max_len: int = 16
    width: int = 32
    heads: int = 2

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        valid = tokens > 0  # [B, L]
        h = nn.Embed(self.vocab_size, self.width, name="tokens")(tokens)
        pos = self.param("positions", nn.initializers.normal(0.02), (self.max_len, self.width))
        h = h + pos[None, : tokens.shape[1]]
        attn_mask = nn.make_attention_mask(valid, valid)
        r = nn.LayerNorm(name="norm_0")(h)
        h = h + nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attention")(r, r, mask=attn_mask)
        r = nn.LayerNorm(name="norm_1")(h)
        h = h + nn.Dense(self.width, name="mlp_1")(nn.gelu(nn.Dense(2 * self.width, name="mlp_0")(r)))
        w = valid.astype(h.dtype)[..., None]
        pooled = (h * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1.0)
        return nn.Dense(self.embed_dim, name="out")(pooled)


class VectorDecoder(nn.Module):
    """[B, E] -> [B, out_size]: MLP decoder to a flattened target (pixels, values or logits)."""

    out_size: int
    hidden: int = 128

    @nn.compact
    def __call__(self, z: Array) -> Array:
        h = nn.silu(nn.Dense(self.hidden, name="hidden")(z))
        return nn.Dense(self.out_size, name="out")(h)


class MultimodalAutoencoder(nn.Module):
    """Encoders, decoders and contrastive projection heads for a tuple of ModalitySpec.

    Attributes:
      specs: tuple of ModalitySpec, in the detector's modality order.
      embed_dim: embedding size of each trainable modality.
      proj_dim: size of the shared (contrastive) space.
    """

    specs: Tuple[ModalitySpec, ...]
    embed_dim: int = 16
    proj_dim: int = 32

    def setup(self):
        encoders, decoders, heads = [], [], []
        for i, s in enumerate(self.specs):
            if s.kind == "image":
                enc = ImageEncoder(self.embed_dim, name=f"encoder_{i}")
            elif s.kind == "series":
                enc = SeriesEncoder(self.embed_dim, name=f"encoder_{i}")
            elif s.kind == "table":
                enc = TableEncoder(self.embed_dim, name=f"encoder_{i}")
            elif s.kind == "text":
                enc = TextEncoder(self.embed_dim, vocab_size=s.vocab_size, max_len=s.shape[0],
                                  name=f"encoder_{i}")
            elif s.kind == "embedding":
                enc = None
            else:
                raise ValueError(f"kind must be one of {KINDS}, got {s.kind!r}")
            encoders.append(enc)
            if enc is None:
                decoders.append(None)
            else:
                size = s.shape[0] * s.vocab_size if s.kind == "text" else int(math.prod(s.shape))
                decoders.append(VectorDecoder(size, name=f"decoder_{i}"))
            heads.append(nn.Dense(self.proj_dim, name=f"projection_{i}"))
        self.encoders, self.decoders, self.heads = encoders, decoders, heads

    def encode(self, inputs: Sequence[Array]) -> Tuple[Array, ...]:
        """Per-modality embeddings, a tuple of [B, E_m] (identity for "embedding")."""
        return tuple(x if enc is None else enc(x) for enc, x in zip(self.encoders, inputs))

    def decode(self, embeddings: Sequence[Array]) -> Tuple[Array | None, ...]:
        """Per-modality reconstructions [B, prod(shape)] (text: [B, L, V] logits); None for identity."""
        outs = []
        for s, dec, z in zip(self.specs, self.decoders, embeddings):
            if dec is None:
                outs.append(None)
            elif s.kind == "text":
                outs.append(dec(z).reshape((z.shape[0], s.shape[0], s.vocab_size)))
            else:
                outs.append(dec(z))
        return tuple(outs)

    def project(self, embeddings: Sequence[Array]) -> Tuple[Array, ...]:
        """L2-normalised projections into the shared space, a tuple of [B, proj_dim]."""
        outs = []
        for head, z in zip(self.heads, embeddings):
            p = head(z)
            outs.append(p / jnp.sqrt(jnp.sum(p * p, axis=-1, keepdims=True) + 1e-8))
        return tuple(outs)

    def __call__(self, inputs: Sequence[Array]):
        """Returns (embeddings, reconstructions, projections), each a tuple over modalities."""
        z = self.encode(inputs)
        return z, self.decode(z), self.project(z)


class ModalityGate(nn.Module):
    """Context [B, Dc] -> per-component log prior weights [B, K] (dynamic fusion; the detector
    bounds them and adds them to the components' normalised scores before a softmax).

    The last layer is zero-initialised: an untrained gate gives equal weights.
    """

    num_components: int
    hidden: int = 64

    @nn.compact
    def __call__(self, context: Array) -> Array:
        h = nn.silu(nn.Dense(self.hidden, name="hidden_0")(context))
        h = nn.silu(nn.Dense(self.hidden, name="hidden_1")(h))
        return nn.Dense(self.num_components, kernel_init=nn.initializers.zeros, name="out")(h)
