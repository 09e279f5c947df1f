"""Conversions between network outputs (eps, x0, v, score) and the score of p_t.

This is the one place where a network output becomes a score. With x_t = alpha x0 + sigma eps:

- "eps":   the network predicts eps;            score = -eps / sigma
- "x0":    the network predicts x0;             score = (alpha x0 - x_t) / sigma^2
- "v":     the network predicts v = alpha eps - sigma x0 (Salimans & Ho, 2022), valid for any
           (alpha, sigma): x0 = (alpha x - sigma v) / r, eps = (sigma x + alpha v) / r with
           r = alpha^2 + sigma^2 (r = 1 under VP)
- "score": the network predicts the score directly.

`alpha` and `sigma` are per-sample arrays [B] (or scalars) that broadcast against x.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from adiff.sde import SDE, broadcast_to_x
from adiff.typing import Array, ScoreFn

PARAMETERIZATIONS = ("eps", "x0", "v", "score")

__all__ = ["PARAMETERIZATIONS", "check", "to_eps", "to_x0", "to_score", "target", "score_fn_from"]


def check(kind: str) -> str:
    if kind not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {kind!r}")
    return kind


def _ab(x, alpha, sigma):
    return broadcast_to_x(alpha, x), broadcast_to_x(sigma, x)


def to_eps(out: Array, x: Array, alpha: Array, sigma: Array, kind: str) -> Array:
    """Converts a network output of `kind` at x_t = x into the eps prediction."""
    a, s = _ab(x, alpha, sigma)
    if kind == "eps":
        return out
    if kind == "x0":
        return (x - a * out) / s
    if kind == "v":
        return (s * x + a * out) / (a * a + s * s)
    if kind == "score":
        return -s * out
    return check(kind)


def to_x0(out: Array, x: Array, alpha: Array, sigma: Array, kind: str) -> Array:
    """Converts a network output of `kind` into the x0 prediction (Tweedie's mean for 'score')."""
    a, s = _ab(x, alpha, sigma)
    if kind == "x0":
        return out
    if kind == "v":
        return (a * x - s * out) / (a * a + s * s)
    return (x - s * to_eps(out, x, alpha, sigma, kind)) / a


def to_score(out: Array, x: Array, alpha: Array, sigma: Array, kind: str) -> Array:
    """Converts a network output of `kind` into the score grad log p_t(x)."""
    if kind == "score":
        return out
    s = broadcast_to_x(sigma, x)
    return -to_eps(out, x, alpha, sigma, kind) / s


def target(x0: Array, eps: Array, alpha: Array, sigma: Array, kind: str) -> Array:
    """The regression target of denoising score matching for `kind`, given x0 and the noise."""
    a, s = _ab(x0, alpha, sigma)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return a * eps - s * x0
    if kind == "score":
        return -eps / s
    return check(kind)


def score_fn_from(model_fn: Callable[[Array, Array], Array], sde: SDE, kind: str) -> ScoreFn:
    """Wraps `model_fn(x, t) -> output of kind` into a `score_fn(x, t)` under `sde`."""
    check(kind)

    def score_fn(x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        return to_score(model_fn(x, t), x, sde.alpha(t), sde.sigma(t), kind)

    return score_fn
