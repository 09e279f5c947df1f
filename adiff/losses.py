"""Denoising score matching (DSM) losses for continuous-time diffusion, with masks and weighting.

Notation: x_t = alpha_t x0 + sigma_t z with z ~ N(0, I) (the SDE's perturbation kernel), g(t) the
SDE's diffusion coefficient, `out = model_fn(x_t, t)` the network output of the chosen
parameterization ("eps", "x0", "v" or "score", see `adiff.parameterization`). `reduce(.)` turns
the element-wise squared error of one sample into a number: `reduce="mean"` averages it over the
(observed) entries and `reduce="sum"` sums it. The batch loss is the mean of the per-sample losses.

Which loss `dsm_loss` computes, per sample:

- Default (`likelihood_weighting=False`), t ~ U(eps, T): the parameterization's natural regression,
  reduce((out - target)^2), with target = z ("eps"), x0 ("x0"), v = alpha z - sigma x0 ("v"),
  -z / sigma ("score"). For "eps" this is DDPM's simple loss. Each is the score-space DSM loss
  reduce((s_theta + z / sigma_t)^2) times a weight lambda(t): sigma^2 ("eps"), sigma^4 / alpha^2
  ("x0"), sigma^2 (alpha^2 + sigma^2)^2 / alpha^2 ("v"), 1 ("score"), so every choice has the
  exact score of p_t as its minimiser.
- `likelihood_weighting=True`, t ~ U(eps, T): the score-space DSM loss with weight
  lambda(t) = g(t)^2 (Song, Durkan, Murray & Ermon 2021, "Maximum likelihood training of
  score-based diffusion models"):
      g(t)^2 reduce((s_theta(x_t, t) + z / sigma_t)^2)
        = g(t)^2 / sigma_t^2 reduce((eps_theta - z)^2),
  computed in eps space (eps_theta = to_eps(out)) for numerical stability. With reduce="sum",
  (T - eps) / 2 times its expectation plus a constant independent of the model bounds the
  negative log-likelihood -E log p_0(x0) from above (up to the prior term and the eps cut-off);
  with "mean" it is that bound divided by the number of entries.
- `likelihood_weighting=True, importance_sampling=True`: the same expectation, estimated with t
  drawn from q(t) proportional to g(t)^2 / sigma_t^2 on [eps, T] (the likelihood weight in eps
  space) and each term multiplied by (g(t)^2 / sigma_t^2) / ((T - eps) q(t)), which is almost
  constant: the estimator is unbiased for the uniform-t expectation and its variance is far lower,
  since g^2/sigma^2 ~ 1/t blows up near t = 0. q is sampled by inverse CDF: the weight is
  integrated (trapezoid rule) on a geometric grid of `_IS_GRID` points in log t, the CDF is
  piecewise linear in log t, and the division uses the exact density of that piecewise sampler, so
  no discretisation bias enters the estimate. Works for every SDE through its `diffusion` and
  `sigma` (no dispatch on the SDE type).

`mask` (1 = observed) restricts the loss to observed entries: the noise is added to every entry
(the model sees a fully perturbed x_t), and each sample's loss is the mean ("mean") or sum
("sum") of the error over its observed entries only; a sample with no observed entries has loss 0.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp

from adiff import parameterization as param_lib
from adiff.sde import SDE, broadcast_to_x
from adiff.typing import Array, PRNGKey

__all__ = ["LossOutput", "dsm_loss", "importance_sample_t", "likelihood_weight"]

_IS_GRID = 2048


@flax.struct.dataclass
class LossOutput:
    """Result of `dsm_loss`.

    Attributes:
      loss: [] mean over the batch of the weighted per-sample losses.
      per_sample: [B] weighted per-sample losses.
      t: [B] the diffusion times used.
    """

    loss: Array  # []
    per_sample: Array  # [B]
    t: Array  # [B]


def likelihood_weight(sde: SDE, t: Array) -> Array:
    """The likelihood weight in eps space, g(t)^2 / sigma_t^2, same shape as t."""
    t = jnp.asarray(t, jnp.float32)
    return sde.diffusion(t) ** 2 / sde.sigma(t) ** 2


def _is_table(sde: SDE, eps: float):
    """Grid in u = log t and the unnormalised CDF of q(t) ~ g^2/sigma^2 (trapezoid rule)."""
    u = jnp.linspace(math.log(eps), math.log(sde.T), _IS_GRID)
    # In u = log t the density is w(t) t, which stays bounded as t -> 0 for VP, sub-VP and VE.
    h = likelihood_weight(sde, jnp.exp(u)) * jnp.exp(u)
    seg = 0.5 * (h[1:] + h[:-1]) * (u[1:] - u[:-1])  # [G-1] mass of each segment
    cdf = jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(seg)])
    return u, seg, cdf


def importance_sample_t(sde: SDE, key: PRNGKey, n: int, *, eps: float = 1e-5):
    """Draws t from q(t) proportional to g(t)^2 / sigma_t^2 on [eps, T] (piecewise, by inverse CDF).

    Args:
      sde: the SDE (any with `diffusion`, `sigma` and `T`).
      key: PRNG key.
      n: number of times.
      eps: the smallest time.

    Returns:
      (t [n], q [n]): the times and the exact density of the sampler at them.
    """
    u, seg, cdf = _is_table(sde, eps)
    r = jax.random.uniform(key, (n,), jnp.float32) * cdf[-1]
    ut = jnp.interp(r, cdf, u)
    t = jnp.clip(jnp.exp(ut), eps, sde.T)
    return t, _is_density(u, seg, cdf, t)


def _is_density(u, seg, cdf, t):
    """Density in t of the piecewise sampler: segment mass / (width in u * t * total mass)."""
    ut = jnp.log(t)
    idx = jnp.clip(jnp.searchsorted(u, ut, side="right") - 1, 0, seg.shape[0] - 1)
    du = u[idx + 1] - u[idx]
    return seg[idx] / (du * t * cdf[-1])


def _validate(x0, parameterization, mask, eps, t, reduce, importance_sampling,
              likelihood_weighting, sde):
    param_lib.check(parameterization)
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    if x0.ndim < 2:
        raise ValueError(f"x0 must have shape [B, ...] with at least 2 dims, got shape {x0.shape}")
    if x0.shape[0] == 0:
        raise ValueError(f"x0 must hold at least one sample, got shape {x0.shape}")
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise TypeError(f"x0 must be a floating array, got dtype {x0.dtype}")
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    if importance_sampling and not likelihood_weighting:
        raise ValueError(
            "importance_sampling=True samples t for the likelihood weighting; it needs "
            "likelihood_weighting=True, got likelihood_weighting=False")
    if mask is not None:
        mask = jnp.asarray(mask)
        try:
            shape = jnp.broadcast_shapes(mask.shape, x0.shape)
        except ValueError:
            shape = None
        if shape != x0.shape:
            raise ValueError(
                f"mask must have the shape of x0 {x0.shape} or broadcast to it; got shape "
                f"{mask.shape}")
    if t is not None:
        t = jnp.asarray(t)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x0.shape[0]):
            raise ValueError(
                f"t must be a scalar or have shape [B] = ({x0.shape[0]},); got shape {t.shape}")


def dsm_loss(model_fn: Callable[[Array, Array], Array], sde: SDE, x0: Array, key: PRNGKey, *,
             parameterization: str = "eps", likelihood_weighting: bool = False,
             importance_sampling: bool = False, mask: Optional[Array] = None,
             eps: float = 1e-5, t: Optional[Array] = None,
             reduce: str = "mean") -> LossOutput:
    """Denoising score matching loss (see the module docstring for the exact definitions).

    Args:
      model_fn: `model_fn(x_t [B, ...], t [B]) -> output` of `parameterization`, shape of x0.
      sde: the forward SDE (VPSDE, SubVPSDE, VESDE, ...).
      x0: [B, ...] clean data.
      key: PRNG key (split for t and the noise).
      parameterization: "eps", "x0", "v" or "score": what `model_fn` predicts.
      likelihood_weighting: weight the score-space loss by g(t)^2 (maximum-likelihood training).
      importance_sampling: draw t ~ g^2/sigma^2 and reweight (needs likelihood_weighting).
      mask: optional 0/1 array of x0's shape (or broadcastable to it), 1 = observed; the loss only
        counts observed entries.
      eps: the smallest time; t ~ U(eps, T) by default.
      t: optional given times, scalar or [B] (overrides the sampling; with importance_sampling they
        are treated as draws from its proposal and reweighted accordingly).
      reduce: "mean" or "sum" of the squared error over the entries of a sample.

    Returns:
      LossOutput(loss [], per_sample [B], t [B]).
    """
    x0 = jnp.asarray(x0)
    _validate(x0, parameterization, mask, eps, t, reduce, importance_sampling,
              likelihood_weighting, sde)
    batch = x0.shape[0]
    key_t, key_z = jax.random.split(key)

    # ---- times and their weights -------------------------------------------------------------
    is_weight = None
    if importance_sampling:
        if t is None:
            t, q = importance_sample_t(sde, key_t, batch, eps=eps)
        else:
            t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
            q = _is_density(*_is_table(sde, eps), t)
        is_weight = likelihood_weight(sde, t) / ((sde.T - eps) * q)
    elif t is None:
        t = jax.random.uniform(key_t, (batch,), jnp.float32, minval=eps, maxval=sde.T)
    else:
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))

    # ---- perturb and predict -----------------------------------------------------------------
    x_t, z = sde.perturb(key_z, x0, t.astype(x0.dtype))
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    out = model_fn(x_t, t)
    if out.shape != x0.shape:
        raise ValueError(
            f"model_fn output must have the shape of x0 {x0.shape}; got shape {out.shape}")

    if likelihood_weighting:
        eps_hat = param_lib.to_eps(out, x_t, alpha, sigma, parameterization)
        err = jnp.square(eps_hat - z)
        weight = is_weight if importance_sampling else likelihood_weight(sde, t)
    else:
        tgt = param_lib.target(x0, z, alpha, sigma, parameterization)
        err = jnp.square(out - tgt)
        weight = None

    # ---- reduce over entries (observed ones only) --------------------------------------------
    flat = err.reshape(batch, -1)
    if mask is None:
        per_sample = jnp.sum(flat, axis=-1)
        if reduce == "mean":
            per_sample = per_sample / flat.shape[-1]
    else:
        m = jnp.broadcast_to(jnp.asarray(mask, err.dtype), x0.shape).reshape(batch, -1)
        per_sample = jnp.sum(jnp.where(m > 0, flat, 0.0) * m, axis=-1)
        if reduce == "mean":
            per_sample = per_sample / jnp.maximum(jnp.sum(m, axis=-1), 1.0)
    if weight is not None:
        per_sample = per_sample * broadcast_to_x(weight, per_sample).astype(per_sample.dtype)
    return LossOutput(loss=jnp.mean(per_sample), per_sample=per_sample, t=t)
