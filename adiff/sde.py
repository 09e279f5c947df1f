"""Forward SDEs of score-based diffusion (Song et al., ICLR 2021): VP, sub-VP and VE.

Every SDE here is linear, dx = f(t) x dt + g(t) dW, so the perturbation kernel is Gaussian:
p_t(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I). Each class is a frozen pytree dataclass with only
static fields, so it can be passed through `jax.jit` as an ordinary argument; its methods are pure
and shape-agnostic: `x` is [B, ...] and `t` is [B] (or a scalar), broadcast against `x`.

Everything that samplers, likelihoods and scorers need is expressed through `alpha`, `sigma`,
`drift` and `diffusion`, so no code elsewhere dispatches on the SDE type.
"""
from __future__ import annotations

import math
from typing import Tuple

import flax.struct
import jax
import jax.numpy as jnp

from adiff.typing import Array, PRNGKey, ScoreFn

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "broadcast_to_x"]


def broadcast_to_x(v: Array, x: Array) -> Array:
    """Reshapes per-sample values `v` ([B] or scalar) to broadcast against `x` [B, ...]."""
    v = jnp.asarray(v, dtype=x.dtype)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _sum_except_batch(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


class SDE:
    """Shared behaviour of the linear SDEs. Subclasses define the schedule.

    Subclasses implement `log_alpha(t)`, `sigma(t)`, `beta_like(t)` pieces through
    `drift_coef(t)` (f(t) with drift f(t) x), `diffusion(t)` (g(t)), `log_alpha(t)` and `sigma(t)`,
    plus the prior.
    """

    T: float = 1.0

    # ---- schedule (overridden) -------------------------------------------------------------
    def drift_coef(self, t: Array) -> Array:
        """f(t) such that the drift is f(t) * x."""
        raise NotImplementedError

    def diffusion(self, t: Array) -> Array:
        """g(t), same shape as t."""
        raise NotImplementedError

    def log_alpha(self, t: Array) -> Array:
        """log of the marginal mean coefficient alpha_t = exp(int_0^t f)."""
        raise NotImplementedError

    def sigma(self, t: Array) -> Array:
        """Marginal standard deviation sigma_t of p_t(x_t | x_0)."""
        raise NotImplementedError

    def prior_std(self) -> float:
        raise NotImplementedError

    # ---- derived ---------------------------------------------------------------------------
    def alpha(self, t: Array) -> Array:
        """Marginal mean coefficient alpha_t: E[x_t | x_0] = alpha_t x_0."""
        return jnp.exp(self.log_alpha(t))

    def log_snr(self, t: Array) -> Array:
        """lambda_t = log(alpha_t / sigma_t), decreasing in t (used by DDIM / DPM-Solver)."""
        return self.log_alpha(t) - jnp.log(self.sigma(t))

    def drift(self, x: Array, t: Array) -> Array:
        """Forward drift f(x, t) = f(t) x."""
        return broadcast_to_x(self.drift_coef(t), x) * x

    def marginal(self, x0: Array, t: Array) -> Tuple[Array, Array]:
        """Mean [B, ...] and std [B] of p_t(x_t | x_0)."""
        return broadcast_to_x(self.alpha(t), x0) * x0, self.sigma(t)

    def perturb(self, key: PRNGKey, x0: Array, t: Array) -> Tuple[Array, Array]:
        """Samples x_t ~ p_t(. | x0). Returns (x_t, eps) with x_t = alpha x0 + sigma eps."""
        eps = jax.random.normal(key, x0.shape, x0.dtype)
        mean, std = self.marginal(x0, t)
        return mean + broadcast_to_x(std, x0) * eps, eps

    def prior_sample(self, key: PRNGKey, shape: Tuple[int, ...], dtype=jnp.float32) -> Array:
        """Draws from the prior N(0, prior_std^2 I) at time T."""
        return self.prior_std() * jax.random.normal(key, shape, dtype)

    def prior_logp(self, z: Array) -> Array:
        """Log-density of the prior, summed over all but the batch axis: [B]."""
        s = self.prior_std()
        d = math.prod(z.shape[1:])
        return -0.5 * d * math.log(2 * math.pi * s * s) - 0.5 * _sum_except_batch(z * z) / (s * s)

    def discretize(self, x: Array, t: Array, dt: float) -> Tuple[Array, Array]:
        """Euler discretisation of one forward step of size dt: x_{t+dt} = x + f + G z.

        Returns f [B, ...] and G [B] (score_sde's `discretize`).
        """
        return self.drift(x, t) * dt, self.diffusion(t) * jnp.sqrt(dt)

    def reverse_drift(self, score_fn: ScoreFn, x: Array, t: Array) -> Array:
        """Drift of the reverse-time SDE, f - g^2 s (to be integrated backwards in time)."""
        g2 = broadcast_to_x(self.diffusion(t) ** 2, x)
        return self.drift(x, t) - g2 * score_fn(x, t)

    def probability_flow_drift(self, score_fn: ScoreFn, x: Array, t: Array) -> Array:
        """Drift of the probability-flow ODE, f - g^2 s / 2."""
        g2 = broadcast_to_x(self.diffusion(t) ** 2, x)
        return self.drift(x, t) - 0.5 * g2 * score_fn(x, t)


class _LinearBeta(SDE):
    """The linear noise rate beta(t) = beta_min + t (beta_max - beta_min) shared by VP and sub-VP."""

    beta_min: float
    beta_max: float

    def __post_init__(self):
        if not 0 <= self.beta_min < self.beta_max:
            raise ValueError(
                f"{type(self).__name__} needs 0 <= beta_min < beta_max, got "
                f"beta_min={self.beta_min}, beta_max={self.beta_max}")

    def beta(self, t: Array) -> Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: Array) -> Array:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def drift_coef(self, t):
        return -0.5 * self.beta(jnp.asarray(t))

    def log_alpha(self, t):
        return -0.5 * self.integrated_beta(jnp.asarray(t))

    def prior_std(self):
        return 1.0


@flax.struct.dataclass
class VPSDE(_LinearBeta):
    """Variance-preserving SDE (the continuous DDPM): dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW."""

    beta_min: float = flax.struct.field(pytree_node=False, default=0.1)
    beta_max: float = flax.struct.field(pytree_node=False, default=20.0)

    def diffusion(self, t):
        return jnp.sqrt(self.beta(jnp.asarray(t)))

    def sigma(self, t):
        # 1 - alpha^2 through expm1: exact in float32 near t = 0 where 1 - alpha^2 ~ beta_min t.
        return jnp.sqrt(jnp.maximum(-jnp.expm1(-self.integrated_beta(jnp.asarray(t))), 0.0))

    def discretize(self, x, t, dt):
        # DDPM's discrete chain x_{i+1} = sqrt(1 - b_i) x_i + sqrt(b_i) z, with the exact
        # b_i = 1 - exp(-int_t^{t+dt} beta) rather than beta(t) dt: identical for small steps, and
        # valid for any step (beta(t) dt > 1 would give NaN with 10 steps at beta_max = 20).
        t = jnp.asarray(t)
        log_ratio = self.log_alpha(t + dt) - self.log_alpha(t)  # log sqrt(1 - b_i) <= 0
        b = -jnp.expm1(2.0 * log_ratio)
        return broadcast_to_x(jnp.expm1(log_ratio), x) * x, jnp.sqrt(jnp.maximum(b, 0.0))


@flax.struct.dataclass
class SubVPSDE(_LinearBeta):
    """Sub-VP SDE: VP drift, diffusion sqrt(beta(t) (1 - exp(-2 int beta))); variance <= VP's."""

    beta_min: float = flax.struct.field(pytree_node=False, default=0.1)
    beta_max: float = flax.struct.field(pytree_node=False, default=20.0)

    def diffusion(self, t):
        t = jnp.asarray(t)
        # The clamp guards against XLA CPU's fused expm1 returning a tiny value of the wrong sign
        # for tiny arguments in large batches (seen here: NaNs from a batch of ~8000 under jit).
        return jnp.sqrt(jnp.maximum(self.beta(t) * -jnp.expm1(-2.0 * self.integrated_beta(t)), 0.0))

    def sigma(self, t):
        return -jnp.expm1(-self.integrated_beta(jnp.asarray(t)))


@flax.struct.dataclass
class VESDE(SDE):
    """Variance-exploding SDE (SMLD/NCSN): dx = sqrt(d sigma^2(t)/dt) dW, sigma(t) geometric.

    The noise level sigma_min (sigma_max / sigma_min)^t is the scale of the *process*; the
    marginal std of p_t(x_t | x_0) starting from x_0 at t = 0 is exactly
    sqrt(sigma_min^2 ((sigma_max/sigma_min)^(2t) - 1)), which is what `sigma` returns (score_sde
    uses the process scale instead, an approximation we avoid so closed forms hold exactly).
    """

    sigma_min: float = flax.struct.field(pytree_node=False, default=0.01)
    sigma_max: float = flax.struct.field(pytree_node=False, default=50.0)

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"VESDE needs 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}")

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def noise_level(self, t: Array) -> Array:
        return self.sigma_min * jnp.exp(jnp.asarray(t) * self._log_ratio)

    def drift_coef(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=jnp.float32))

    def diffusion(self, t):
        return self.noise_level(t) * math.sqrt(2.0 * self._log_ratio)

    def log_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=jnp.float32))

    def sigma(self, t):
        t = jnp.asarray(t)
        return self.sigma_min * jnp.sqrt(jnp.expm1(2.0 * t * self._log_ratio))

    def prior_std(self):
        return self.sigma_max

    def discretize(self, x, t, dt):
        # SMLD's chain: x_{i+1} = x_i + sqrt(s(t+dt)^2 - s(t)^2) z.
        s_next = self.noise_level(t + dt)
        s = self.noise_level(t)
        return jnp.zeros_like(x), jnp.sqrt(s_next ** 2 - s ** 2)
