"""Closed-form diffusion of Gaussian-mixture data: exact scores and densities under every SDE.

For data x0 ~ sum_k w_k N(mu_k, diag(v_k)) and a linear SDE with p_t(x_t | x_0) =
N(alpha_t x_0, sigma_t^2 I), the marginal is again a mixture:
p_t = sum_k w_k N(alpha_t mu_k, diag(alpha_t^2 v_k + sigma_t^2)).
This gives exact `score_fn`s and `log p_t` to test samplers, likelihoods and scorers against truth,
and a reference "oracle" model for benchmarks. Data points are [B, ...] and are flattened to D.
"""
from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from adiff.sde import SDE
from adiff.typing import Array, PRNGKey, ScoreFn

__all__ = ["GaussianMixture"]


@flax.struct.dataclass
class GaussianMixture:
    """A diagonal-covariance Gaussian mixture in D dimensions.

    Attributes:
      weights: [K] mixture weights (sum to 1).
      means: [K, D] component means.
      variances: [K, D] per-dimension component variances (> 0).
    """

    weights: Array  # [K]
    means: Array  # [K, D]
    variances: Array  # [K, D]

    @classmethod
    def create(cls, weights, means, variances) -> "GaussianMixture":
        weights = jnp.asarray(weights, jnp.float32)
        means = jnp.asarray(means, jnp.float32)
        variances = jnp.broadcast_to(jnp.asarray(variances, jnp.float32), means.shape)
        if weights.ndim != 1 or means.ndim != 2 or means.shape[0] != weights.shape[0]:
            raise ValueError(
                f"weights must be [K] and means [K, D]; got {weights.shape} and {means.shape}")
        return cls(weights / jnp.sum(weights), means, variances)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, key: PRNGKey, n: int) -> Array:
        """Draws n samples [n, D]."""
        kc, kn = jax.random.split(key)
        comp = jax.random.choice(kc, self.weights.shape[0], (n,), p=self.weights)
        noise = jax.random.normal(kn, (n, self.dim))
        return self.means[comp] + jnp.sqrt(self.variances[comp]) * noise

    def _comp_logpdf(self, x: Array, means: Array, variances: Array) -> Array:
        # x [B, D], means/variances [B, K, D] or [K, D] -> [B, K]
        diff = x[:, None, :] - means
        return -0.5 * jnp.sum(diff * diff / variances + jnp.log(2 * math.pi * variances), axis=-1)

    def _at(self, sde: SDE, t: Array, batch: int):
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
        a = sde.alpha(t)[:, None, None]
        s = sde.sigma(t)[:, None, None]
        return a * self.means[None], a * a * self.variances[None] + s * s

    def log_prob(self, x: Array) -> Array:
        """log p_0(x) for x [B, ...] -> [B]."""
        xf = x.reshape(x.shape[0], -1)
        lp = self._comp_logpdf(xf, self.means, self.variances)
        return logsumexp(lp + jnp.log(self.weights), axis=-1)

    def log_prob_t(self, sde: SDE, x: Array, t: Array) -> Array:
        """log p_t(x) under `sde` for x [B, ...] and t [B] or scalar -> [B]."""
        xf = x.reshape(x.shape[0], -1)
        m, v = self._at(sde, t, x.shape[0])
        return logsumexp(self._comp_logpdf(xf, m, v) + jnp.log(self.weights), axis=-1)

    def score_t(self, sde: SDE, x: Array, t: Array) -> Array:
        """The exact score grad_x log p_t(x), shape of x."""
        xf = x.reshape(x.shape[0], -1)
        m, v = self._at(sde, t, x.shape[0])
        lp = self._comp_logpdf(xf, m, v) + jnp.log(self.weights)
        resp = jax.nn.softmax(lp, axis=-1)  # [B, K]
        comp_scores = (m - xf[:, None, :]) / v  # [B, K, D]
        return jnp.sum(resp[..., None] * comp_scores, axis=1).reshape(x.shape)

    def score_fn(self, sde: SDE) -> ScoreFn:
        """A `score_fn(x, t)` with the exact score of p_t under `sde`."""
        return lambda x, t: self.score_t(sde, x, t)

    def prior_logp_fn(self, sde: SDE, t: float | None = None):
        """log p_T as a callable z [B, ...] -> [B]: the *true* marginal at T (not the SDE's prior)."""
        t_end = sde.T if t is None else t
        return lambda z: self.log_prob_t(sde, z, jnp.full((z.shape[0],), t_end))
