"""Reverse-time solvers for score-based diffusion: reverse SDE, predictor-corrector, DDIM,
DPM-Solver++(2M) and the adaptive probability-flow ODE.

Every solver works on a plain `score_fn(x, t)` (x [B, ...], t [B]) and any linear SDE of
`adiff.sde`, through its methods only (`alpha`, `sigma`, `log_snr`, `drift`, `diffusion`,
`discretize`, `reverse_drift`, `probability_flow_drift`, `prior_sample`), so nothing here depends
on the SDE type or on the shape of x. All solvers are pure and traceable: loops are
`lax.fori_loop` with a static number of steps, and callers jit the whole call, e.g.

    run = jax.jit(lambda params, x, key: solvers.ddim(make_score(params), sde, x, key))

Common arguments:

- `t_start` (default `sde.T`): the time of `x_start`. `t_start < T` is partial diffusion: start
  from a noised input (see `partial_noise`) and solve back, the basis of reconstruction scoring.
  It may be a Python float or a scalar array, traced or not (validation then happens only for
  concrete values).
- `t_end` (default 1e-3): the time of the returned state. Grids run from `t_start` to `t_end`
  with `num_steps` steps, uniform in time (DPM-Solver++ defaults to uniform in log-SNR).
- `mask`, `known` (inpainting / imputation): `mask` broadcasts against x, nonzero = known entry;
  `known` broadcasts against x (its values at unknown entries are ignored). Before every step
  the known entries of the state are replaced by a forward-noised copy of `known` at the current
  time, `alpha_t known + sigma_t z`:
    * stochastic solvers (Euler-Maruyama, reverse diffusion, predictor-corrector, DDIM with
      eta > 0) draw a fresh z each time (RePaint);
    * deterministic solvers (DDIM with eta = 0, DPM-Solver++) use one fixed z for the whole
      trajectory, the noise already present in the start state,
      z = (x_start - alpha_{t_start} known) / sigma_{t_start} on the known entries, so the known
      entries follow the exact deterministic (DDIM) path of `known` and no key is needed;
  at the end the known entries are exactly `known`.
- `resample` = r > 1 (RePaint, Lugmayr et al. 2022): after a step t -> t', the state is
  re-noised back to t with the forward transition p(x_t | x_t') and the step is repeated, r
  times in total, which harmonises the generated entries with the known ones. It costs r times
  the score evaluations.

The returned `SolverOutput.nfe` counts score evaluations per batch honestly (including
resampling and corrector steps; for `pf_ode` from diffrax's step statistics).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import diffrax
import flax.struct
import jax
import jax.numpy as jnp

from adiff.sde import SDE, broadcast_to_x
from adiff.typing import Array, PRNGKey, ScoreFn

__all__ = [
    "SolverOutput",
    "METHODS",
    "euler_maruyama",
    "reverse_diffusion",
    "predictor_corrector",
    "ddim",
    "dpm_solver_pp",
    "pf_ode",
    "solve",
    "sample",
    "partial_noise",
]

METHODS = ("euler_maruyama", "reverse_diffusion", "pc", "ddim", "dpm_solver_pp", "pf_ode")
_PREDICTORS = ("reverse_diffusion", "euler_maruyama")
_ODE_SOLVERS = ("tsit5", "dopri5")
_SPACINGS = ("logsnr", "time")


@flax.struct.dataclass
class SolverOutput:
    """Result of a reverse-time solve.

    Attributes:
      x: [B, ...] final state at t_end (for stochastic solvers: the noise-free mean of the last
        step; known entries equal `known` exactly when a mask was given).
      nfe: [] int32, number of score_fn evaluations (each on the whole batch).
    """

    x: Array  # [B, ...]
    nfe: Array  # [] int32


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------


def _concrete(v: Any) -> Optional[float]:
    """The float value of a Python number or concrete scalar array; None when traced."""
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
            jax.errors.TracerIntegerConversionError, TypeError):
        return None


def _check_x(x_start: Any, name: str = "x_start") -> Array:
    if not hasattr(x_start, "shape") or not hasattr(x_start, "dtype"):
        raise TypeError(f"{name} must be an array [B, ...], got {type(x_start).__name__}")
    x = jnp.asarray(x_start)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape [B, ...] with B >= 1, got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    return x


def _check_times(sde: SDE, t_start: Any, t_end: Any, *, allow_forward: bool = False
                 ) -> Tuple[Array, Array, Optional[float], Optional[float]]:
    """Validates (where concrete) and returns t_start, t_end as float32 scalars, followed by
    their Python values (None where traced)."""
    if t_start is None:
        t_start = sde.T
    for name, v in (("t_start", t_start), ("t_end", t_end)):
        if jnp.ndim(v) != 0:
            raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(v)}")
    ts, te = _concrete(t_start), _concrete(t_end)
    for name, v in (("t_start", ts), ("t_end", te)):
        if v is not None and not (0.0 < v <= sde.T + 1e-6):
            raise ValueError(f"{name} must lie in (0, T={sde.T}], got {v}")
    if ts is not None and te is not None:
        if allow_forward:
            if ts == te:
                raise ValueError(f"t_start and t_end must differ, got both = {ts}")
        elif te >= ts:
            raise ValueError(
                f"t_end must be < t_start for a reverse-time solve, got t_end={te}, t_start={ts}")
    return jnp.asarray(t_start, jnp.float32), jnp.asarray(t_end, jnp.float32), ts, te


def _check_num_steps(num_steps: Any, name: str = "num_steps") -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise TypeError(f"{name} must be a Python int (static), got {type(num_steps).__name__}")
    if num_steps < 1:
        raise ValueError(f"{name} must be >= 1, got {num_steps}")
    return num_steps


def _check_nonneg_int(v: Any, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be a Python int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _check_mask(x: Array, mask: Any, known: Any) -> Tuple[Optional[Array], Optional[Array]]:
    """Returns (bool mask, known) broadcast to x.shape, or (None, None)."""
    if mask is None and known is None:
        return None, None
    if mask is None or known is None:
        raise ValueError(
            "mask and known must be given together, got "
            f"mask={'None' if mask is None else 'array'}, known={'None' if known is None else 'array'}")
    mask = jnp.asarray(mask)
    known = jnp.asarray(known)
    for name, v in (("mask", mask), ("known", known)):
        try:
            shape = jnp.broadcast_shapes(v.shape, x.shape)
        except ValueError:
            shape = None
        if shape != x.shape:
            raise ValueError(
                f"{name} must broadcast to x_start's shape {x.shape}, got shape {v.shape}")
    if not jnp.issubdtype(known.dtype, jnp.floating):
        known = known.astype(x.dtype)
    mask = jnp.broadcast_to(mask != 0, x.shape)
    known = jnp.broadcast_to(known.astype(x.dtype), x.shape)
    return mask, known


def _need_key(key: Any, why: str) -> PRNGKey:
    if key is None:
        raise ValueError(f"key is required for {why}, got None")
    return key


# ---------------------------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------------------------


def _tvec(t: Array, x: Array) -> Array:
    return jnp.full((x.shape[0],), t, dtype=x.dtype)


def _time_grid(t_start: Array, t_end: Array, num_steps: int) -> Array:
    """[num_steps + 1] times from t_start to t_end, uniform in t."""
    frac = jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps
    grid = t_start + (t_end - t_start) * frac
    return grid.at[-1].set(t_end)


def _logsnr_grid(sde: SDE, t_start: Array, t_end: Array, num_steps: int) -> Array:
    """[num_steps + 1] times from t_start to t_end, uniform in log-SNR lambda_t.

    lambda_t is decreasing in t for every SDE here; it is inverted by bisection, so the grid
    needs only `sde.log_snr`.
    """
    lam_s, lam_e = sde.log_snr(t_start), sde.log_snr(t_end)
    frac = jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps
    target = lam_s + (lam_e - lam_s) * frac
    lo = jnp.full_like(target, t_end)
    hi = jnp.full_like(target, t_start)

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        go_up = sde.log_snr(mid) > target  # lambda too large -> t too small
        return jnp.where(go_up, mid, lo), jnp.where(go_up, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 40, body, (lo, hi))
    grid = 0.5 * (lo + hi)
    return grid.at[0].set(t_start).at[-1].set(t_end)


def _renoise(sde: SDE, x_next: Array, t_next: Array, t: Array, key: PRNGKey) -> Array:
    """Samples the forward transition p(x_t | x_{t_next}) for t > t_next (RePaint)."""
    ratio = sde.alpha(t) / sde.alpha(t_next)
    var = sde.sigma(t) ** 2 * -jnp.expm1(2.0 * (sde.log_snr(t) - sde.log_snr(t_next)))
    z = jax.random.normal(key, x_next.shape, x_next.dtype)
    return ratio * x_next + jnp.sqrt(jnp.maximum(var, 0.0)) * z


MergeFn = Callable[[Array, Array, PRNGKey], Array]


def _identity_merge(x: Array, t: Array, key: PRNGKey) -> Array:
    del t, key
    return x


def _stochastic_merge(sde: SDE, mask: Array, known: Array) -> MergeFn:
    def merge(x, t, key):
        z = jax.random.normal(key, x.shape, x.dtype)
        return jnp.where(mask, sde.alpha(t) * known + sde.sigma(t) * z, x)

    return merge


def _fixed_noise_merge(sde: SDE, mask: Array, known: Array, x_start: Array,
                       t_start: Array) -> MergeFn:
    z = (x_start - sde.alpha(t_start) * known) / sde.sigma(t_start)

    def merge(x, t, key):
        del key
        return jnp.where(mask, sde.alpha(t) * known + sde.sigma(t) * z, x)

    return merge


StepFn = Callable[[Array, Array, Array, PRNGKey], Tuple[Array, Array]]


def _run_steps(step: StepFn, sde: SDE, x: Array, grid: Array, key: PRNGKey, *,
               num_steps: int, resample: int) -> Array:
    """Runs `step(x, t, t_next, key) -> (x_next, x_next_mean)` over the grid, with RePaint
    resampling; returns the mean of the last step."""

    def body(i, carry):
        x, _ = carry
        t, t_next = grid[i], grid[i + 1]
        k = jax.random.fold_in(key, i)
        if resample > 1:
            def inner(j, x):
                k_step, k_noise = jax.random.split(jax.random.fold_in(k, j))
                x_next, _ = step(x, t, t_next, k_step)
                return _renoise(sde, x_next, t_next, t, k_noise)

            x = jax.lax.fori_loop(0, resample - 1, inner, x)
        return step(x, t, t_next, jax.random.fold_in(k, resample))

    _, x_mean = jax.lax.fori_loop(0, num_steps, body, (x, x))
    return x_mean


def _finish(x: Array, mask: Optional[Array], known: Optional[Array], nfe: int) -> SolverOutput:
    if mask is not None:
        x = jnp.where(mask, known, x)
    return SolverOutput(x=x, nfe=jnp.asarray(nfe, jnp.int32))


# ---------------------------------------------------------------------------------------------
# predictor-corrector family (score_sde)
# ---------------------------------------------------------------------------------------------


def _em_predictor(score_fn: ScoreFn, sde: SDE) -> StepFn:
    """Euler-Maruyama on the reverse SDE dx = [f - g^2 s] dt + g dw (dt < 0)."""

    def step(x, t, t_next, key):
        dt = t_next - t
        tv = _tvec(t, x)
        x_mean = x + sde.reverse_drift(score_fn, x, tv) * dt
        g = broadcast_to_x(sde.diffusion(tv), x)
        z = jax.random.normal(key, x.shape, x.dtype)
        return x_mean + g * jnp.sqrt(-dt) * z, x_mean

    return step


def _rd_predictor(score_fn: ScoreFn, sde: SDE, dt_static: Optional[float]) -> StepFn:
    """score_sde's ReverseDiffusionPredictor: inverts the SDE's own forward discretisation of
    the step [t_next, t]: x_mean = x - f + G^2 s, x = x_mean + G z."""

    def step(x, t, t_next, key):
        dt = dt_static if dt_static is not None else t - t_next
        try:
            f, G = sde.discretize(x, _tvec(t_next, x), dt)
        except jax.errors.ConcretizationTypeError as e:
            raise TypeError(
                f"reverse_diffusion with a traced t_start or t_end needs {type(sde).__name__}."
                "discretize to accept a traced dt; pass Python floats for t_start and t_end, "
                "or use euler_maruyama") from e
        G = broadcast_to_x(G, x)
        x_mean = x - f + G * G * score_fn(x, _tvec(t, x))
        z = jax.random.normal(key, x.shape, x.dtype)
        return x_mean + G * z, x_mean

    return step


def _langevin_corrector(score_fn: ScoreFn, sde: SDE, x: Array, t: Array, t_next: Array,
                        key: PRNGKey, *, n: int, snr: float, merge: MergeFn) -> Array:
    """score_sde's Langevin corrector at time t, `n` steps.

    The step size is 2 a (snr |z| / |s|)^2 with norms averaged over the batch (as in score_sde),
    and a = (alpha_t / alpha_{t_next})^2 (score_sde's 1 - beta_i for VP, 1 for VE), which needs
    no dispatch on the SDE type.
    """
    a = jnp.exp(2.0 * (sde.log_alpha(t) - sde.log_alpha(t_next)))
    tv = _tvec(t, x)

    def body(j, x):
        k_merge, k_noise = jax.random.split(jax.random.fold_in(key, j))
        x = merge(x, t, k_merge)
        grad = score_fn(x, tv)
        z = jax.random.normal(k_noise, x.shape, x.dtype)
        grad_norm = jnp.mean(jnp.linalg.norm(grad.reshape(grad.shape[0], -1), axis=-1))
        noise_norm = jnp.mean(jnp.linalg.norm(z.reshape(z.shape[0], -1), axis=-1))
        step = 2.0 * a * (snr * noise_norm / grad_norm) ** 2
        return x + step * grad + jnp.sqrt(2.0 * step) * z

    return jax.lax.fori_loop(0, n, body, x)


def _pc(score_fn: ScoreFn, sde: SDE, x_start: Any, key: Any, *, predictor: str,
        corrector_steps: int, snr: float, t_start: Any, t_end: Any, num_steps: int,
        mask: Any, known: Any, resample: int) -> SolverOutput:
    x = _check_x(x_start)
    if predictor not in _PREDICTORS:
        raise ValueError(f"predictor must be one of {_PREDICTORS}, got {predictor!r}")
    num_steps = _check_num_steps(num_steps)
    corrector_steps = _check_nonneg_int(corrector_steps, "corrector_steps", 0)
    resample = _check_nonneg_int(resample, "resample", 1)
    snr_c = _concrete(snr)
    if snr_c is not None and not snr_c > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    t0, t1, ts_c, te_c = _check_times(sde, t_start, t_end)
    mask, known = _check_mask(x, mask, known)
    key = _need_key(key, f"the stochastic {predictor} solver")

    merge = _identity_merge if mask is None else _stochastic_merge(sde, mask, known)
    grid = _time_grid(t0, t1, num_steps)
    dt_static = None if ts_c is None or te_c is None else (ts_c - te_c) / num_steps
    if predictor == "euler_maruyama":
        predict = _em_predictor(score_fn, sde)
    else:
        predict = _rd_predictor(score_fn, sde, dt_static)

    def step(x, t, t_next, key):
        k_merge, k_corr, k_merge2, k_pred = jax.random.split(key, 4)
        x = merge(x, t, k_merge)
        if corrector_steps:
            x = _langevin_corrector(score_fn, sde, x, t, t_next, k_corr, n=corrector_steps,
                                    snr=snr, merge=merge)
            x = merge(x, t, k_merge2)
        return predict(x, t, t_next, k_pred)

    x = _run_steps(step, sde, x, grid, key, num_steps=num_steps, resample=resample)
    return _finish(x, mask, known, num_steps * resample * (1 + corrector_steps))


def euler_maruyama(score_fn: ScoreFn, sde: SDE, x_start: Array, key: PRNGKey, *,
                   t_start: Any = None, t_end: float = 1e-3, num_steps: int = 500,
                   corrector_steps: int = 0, snr: float = 0.16, mask: Optional[Array] = None,
                   known: Optional[Array] = None, resample: int = 1) -> SolverOutput:
    """Euler-Maruyama on the reverse-time SDE (score_sde's EulerMaruyamaPredictor).

    Args:
      score_fn: score_fn(x [B, ...], t [B]) -> score, shape of x.
      sde: an SDE of `adiff.sde`.
      x_start: [B, ...] state at t_start (a prior sample for t_start = T).
      key: PRNG key.
      t_start: start time (default sde.T); < T for partial diffusion. Float or scalar array.
      t_end: final time, 0 < t_end < t_start.
      num_steps: number of uniform time steps (static).
      corrector_steps: Langevin corrector steps before each predictor step (0 = none).
      snr: signal-to-noise ratio of the Langevin corrector.
      mask: optional, broadcastable to x; nonzero = known entry.
      known: values of the known entries, broadcastable to x (required with mask).
      resample: RePaint resampling count r >= 1.

    Returns:
      SolverOutput with x [B, ...] (mean of the last step) and
      nfe = num_steps * resample * (1 + corrector_steps).
    """
    return _pc(score_fn, sde, x_start, key, predictor="euler_maruyama",
               corrector_steps=corrector_steps, snr=snr, t_start=t_start, t_end=t_end,
               num_steps=num_steps, mask=mask, known=known, resample=resample)


def reverse_diffusion(score_fn: ScoreFn, sde: SDE, x_start: Array, key: PRNGKey, *,
                      t_start: Any = None, t_end: float = 1e-3, num_steps: int = 500,
                      corrector_steps: int = 0, snr: float = 0.16,
                      mask: Optional[Array] = None, known: Optional[Array] = None,
                      resample: int = 1) -> SolverOutput:
    """Reverse diffusion (score_sde's ReverseDiffusionPredictor) through `sde.discretize`.

    Each step t -> t_next inverts the SDE's forward discretisation of [t_next, t]
    (x_t = x_{t_next} + f + G z): x_mean = x - f + G^2 s(x, t), x = x_mean + G z. Under VP
    this is the DDPM ancestral chain, under VE the SMLD chain.

    Args:
      score_fn: score_fn(x [B, ...], t [B]) -> score, shape of x.
      sde: an SDE of `adiff.sde`.
      x_start: [B, ...] state at t_start.
      key: PRNG key.
      t_start: start time (default sde.T). Float or scalar array.
      t_end: final time, 0 < t_end < t_start.
      num_steps: number of uniform time steps (static).
      corrector_steps: Langevin corrector steps before each predictor step.
      snr: signal-to-noise ratio of the Langevin corrector.
      mask: optional, broadcastable to x; nonzero = known entry.
      known: values of the known entries (required with mask).
      resample: RePaint resampling count r >= 1.

    Returns:
      SolverOutput with x [B, ...] and nfe = num_steps * resample * (1 + corrector_steps).
    """
    return _pc(score_fn, sde, x_start, key, predictor="reverse_diffusion",
               corrector_steps=corrector_steps, snr=snr, t_start=t_start, t_end=t_end,
               num_steps=num_steps, mask=mask, known=known, resample=resample)


def predictor_corrector(score_fn: ScoreFn, sde: SDE, x_start: Array, key: PRNGKey, *,
                        predictor: str = "reverse_diffusion", corrector_steps: int = 1,
                        snr: float = 0.16, t_start: Any = None, t_end: float = 1e-3,
                        num_steps: int = 500, mask: Optional[Array] = None,
                        known: Optional[Array] = None, resample: int = 1) -> SolverOutput:
    """Predictor-corrector sampling (score_sde): Langevin corrector, then a predictor step.

    Args:
      score_fn: score_fn(x [B, ...], t [B]) -> score, shape of x.
      sde: an SDE of `adiff.sde`.
      x_start: [B, ...] state at t_start.
      key: PRNG key.
      predictor: "reverse_diffusion" or "euler_maruyama".
      corrector_steps: Langevin steps per time step (score_sde's n_steps_each).
      snr: signal-to-noise ratio of the corrector (0.16 for images in score_sde).
      t_start: start time (default sde.T). Float or scalar array.
      t_end: final time, 0 < t_end < t_start.
      num_steps: number of uniform time steps (static).
      mask: optional, broadcastable to x; nonzero = known entry.
      known: values of the known entries (required with mask).
      resample: RePaint resampling count r >= 1.

    Returns:
      SolverOutput with x [B, ...] and nfe = num_steps * resample * (1 + corrector_steps).
    """
    return _pc(score_fn, sde, x_start, key, predictor=predictor,
               corrector_steps=corrector_steps, snr=snr, t_start=t_start, t_end=t_end,
               num_steps=num_steps, mask=mask, known=known, resample=resample)


# ---------------------------------------------------------------------------------------------
# DDIM and DPM-Solver++
# ---------------------------------------------------------------------------------------------


def _eps_x0(score_fn: ScoreFn, sde: SDE, x: Array, t: Array) -> Tuple[Array, Array]:
    """eps-hat and x0-hat (Tweedie) from the score at scalar time t."""
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    eps = -sigma * score_fn(x, _tvec(t, x))
    return eps, (x - sigma * eps) / alpha


def ddim(score_fn: ScoreFn, sde: SDE, x_start: Array, key: Optional[PRNGKey] = None, *,
         t_start: Any = None, t_end: float = 1e-3, num_steps: int = 50, eta: float = 0.0,
         mask: Optional[Array] = None, known: Optional[Array] = None,
         resample: int = 1) -> SolverOutput:
    """DDIM (Song, Meng & Ermon, 2021) for any (alpha_t, sigma_t): VP, sub-VP and VE.

    With eps = -sigma_t s(x, t) and x0 = (x - sigma_t eps) / alpha_t, a step t -> s is
    x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z with
    c^2 = eta^2 sigma_s^2 (1 - exp(2 (lambda_t - lambda_s))) (the posterior variance for
    eta = 1, i.e. ancestral sampling). eta = 0 is deterministic (the first-order solver of the
    probability-flow ODE in log-SNR) and needs no key unless resample > 1.

    Args:
      score_fn: score_fn(x [B, ...], t [B]) -> score, shape of x.
      sde: an SDE of `adiff.sde`.
      x_start: [B, ...] state at t_start.
      key: PRNG key; may be None when eta == 0 and resample == 1.
      t_start: start time (default sde.T). Float or scalar array.
      t_end: final time, 0 < t_end < t_start.
      num_steps: number of uniform time steps (static).
      eta: stochasticity, a Python float >= 0 (0 = deterministic).
      mask: optional, broadcastable to x; nonzero = known entry.
      known: values of the known entries (required with mask).
      resample: RePaint resampling count r >= 1 (needs a key when > 1).

    Returns:
      SolverOutput with x [B, ...] (noise-free mean of the last step) and
      nfe = num_steps * resample.
    """
    x = _check_x(x_start)
    num_steps = _check_num_steps(num_steps)
    resample = _check_nonneg_int(resample, "resample", 1)
    eta_c = _concrete(eta)
    if eta_c is not None and eta_c < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    deterministic = eta_c == 0.0
    t0, t1, _, _ = _check_times(sde, t_start, t_end)
    mask, known = _check_mask(x, mask, known)
    if not deterministic:
        key = _need_key(key, "ddim with eta > 0")
    if resample > 1:
        key = _need_key(key, "resample > 1")
    if key is None:
        key = jax.random.key(0)  # never used for randomness on this path
    if mask is None:
        merge = _identity_merge
    elif deterministic:
        merge = _fixed_noise_merge(sde, mask, known, x, t0)
    else:
        merge = _stochastic_merge(sde, mask, known)

    def step(x, t, t_next, key):
        k_merge, k_noise = jax.random.split(key)
        x = merge(x, t, k_merge)
        eps, x0 = _eps_x0(score_fn, sde, x, t)
        alpha_n, sigma_n = sde.alpha(t_next), sde.sigma(t_next)
        if deterministic:
            x_next = alpha_n * x0 + sigma_n * eps
            return x_next, x_next
        c2 = eta ** 2 * sigma_n ** 2 * -jnp.expm1(2.0 * (sde.log_snr(t) - sde.log_snr(t_next)))
        mean = alpha_n * x0 + jnp.sqrt(jnp.maximum(sigma_n ** 2 - c2, 0.0)) * eps
        z = jax.random.normal(k_noise, x.shape, x.dtype)
        return mean + jnp.sqrt(c2) * z, mean

    grid = _time_grid(t0, t1, num_steps)
    x = _run_steps(step, sde, x, grid, key, num_steps=num_steps, resample=resample)
    return _finish(x, mask, known, num_steps * resample)


def dpm_solver_pp(score_fn: ScoreFn, sde: SDE, x_start: Array, key: Optional[PRNGKey] = None,
                  *, t_start: Any = None, t_end: float = 1e-3, num_steps: int = 20,
                  order: int = 2, mask: Optional[Array] = None, known: Optional[Array] = None,
                  spacing: str = "logsnr") -> SolverOutput:
    """DPM-Solver++(2M) (Lu et al., 2022): multistep, data prediction, deterministic.

    With h = lambda_s - lambda_t (lambda = log-SNR) and D the data prediction,
    x_s = (sigma_s / sigma_t) x_t - alpha_s expm1(-h) D. The first step uses D = x0(x_t)
    (order 1, i.e. DDIM); later steps use D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1} with
    r = h_{i-1} / h_i. With fewer than 15 steps the last step is first order
    ("lower_order_final", as in the reference implementation), which stabilises few-step runs.

    The default time grid is uniform in log-SNR (the paper's choice for low-dimensional data;
    the grid is found by bisection on `sde.log_snr`); spacing="time" gives a uniform grid in t.

    Args:
      score_fn: score_fn(x [B, ...], t [B]) -> score, shape of x.
      sde: an SDE of `adiff.sde`.
      x_start: [B, ...] state at t_start.
      key: unused (deterministic); accepted for a uniform solver signature.
      t_start: start time (default sde.T). Float or scalar array.
      t_end: final time, 0 < t_end < t_start.
      num_steps: number of steps = number of score evaluations (static).
      order: 1 (DDIM) or 2 (2M).
      mask: optional, broadcastable to x; nonzero = known entry (fixed-noise replacement).
      known: values of the known entries (required with mask).
      spacing: "logsnr" (default) or "time".

    Returns:
      SolverOutput with x [B, ...] and nfe = num_steps.
    """
    del key
    x = _check_x(x_start)
    num_steps = _check_num_steps(num_steps)
    if order not in (1, 2) or isinstance(order, bool):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if spacing not in _SPACINGS:
        raise ValueError(f"spacing must be one of {_SPACINGS}, got {spacing!r}")
    t0, t1, _, _ = _check_times(sde, t_start, t_end)
    mask, known = _check_mask(x, mask, known)
    merge = (_identity_merge if mask is None else _fixed_noise_merge(sde, mask, known, x, t0))
    grid = (_logsnr_grid(sde, t0, t1, num_steps) if spacing == "logsnr"
            else _time_grid(t0, t1, num_steps))
    lam = sde.log_snr(grid)  # [N + 1]
    lower_final = num_steps < 15
    dummy = jax.random.key(0)

    def body(i, carry):
        x, x0_prev = carry
        t, t_next = grid[i], grid[i + 1]
        x = merge(x, t, dummy)
        _, x0 = _eps_x0(score_fn, sde, x, t)
        h = lam[i + 1] - lam[i]
        if order == 2:
            h_prev = lam[i] - lam[jnp.maximum(i - 1, 0)]
            r = h_prev / h
            d2 = x0 + (x0 - x0_prev) / (2.0 * r)
            use_first = i == 0
            if lower_final:
                use_first = use_first | (i == num_steps - 1)
            d = jnp.where(use_first, x0, d2)
        else:
            d = x0
        x_next = (sde.sigma(t_next) / sde.sigma(t)) * x - sde.alpha(t_next) * jnp.expm1(-h) * d
        return x_next, x0

    x, _ = jax.lax.fori_loop(0, num_steps, body, (x, jnp.zeros_like(x)))
    return _finish(x, mask, known, num_steps)


# ---------------------------------------------------------------------------------------------
# adaptive probability-flow ODE
# ---------------------------------------------------------------------------------------------


def pf_ode(score_fn: ScoreFn, sde: SDE, x_start: Array, key: Optional[PRNGKey] = None, *,
           t_start: Any = None, t_end: float = 1e-3, rtol: float = 1e-5, atol: float = 1e-5,
           solver: str = "tsit5", max_steps: int = 4096) -> SolverOutput:
    """Integrates the probability-flow ODE dx/dt = f - g^2 s / 2 with diffrax (adaptive).

    Deterministic and invertible: t_end > t_start integrates forward (data -> latent), which
    the reverse call undoes up to the tolerance. The step-size controller (PID) measures the
    error over the whole batch, so step sizes are shared by the batch. Exceeding `max_steps`
    raises at run time (diffrax's `throw=True`).

    Args:
      score_fn: score_fn(x [B, ...], t [B]) -> score, shape of x.
      sde: an SDE of `adiff.sde`.
      x_start: [B, ...] state at t_start.
      key: unused (deterministic); accepted for a uniform solver signature.
      t_start: start time (default sde.T). Float or scalar array.
      t_end: final time, != t_start; either direction is allowed.
      rtol: relative tolerance of the PID controller.
      atol: absolute tolerance of the PID controller.
      solver: "tsit5" or "dopri5" (both 5th order, FSAL).
      max_steps: maximum number of (accepted + rejected) steps (static).

    Returns:
      SolverOutput with x [B, ...] and nfe = 6 * steps + 1 (six new stages per attempted
      step, accepted or rejected, of a FSAL 7-stage method, plus the evaluation at the start
      that the initial step-size selection shares with the first step).
    """
    del key
    x = _check_x(x_start)
    if solver not in _ODE_SOLVERS:
        raise ValueError(f"solver must be one of {_ODE_SOLVERS}, got {solver!r}")
    max_steps = _check_num_steps(max_steps, "max_steps")
    for name, v in (("rtol", rtol), ("atol", atol)):
        vc = _concrete(v)
        if vc is not None and not vc > 0:
            raise ValueError(f"{name} must be > 0, got {v}")
    t0, t1, _, _ = _check_times(sde, t_start, t_end, allow_forward=True)

    def vector_field(t, y, args):
        del args
        return sde.probability_flow_drift(score_fn, y, _tvec(t, y))

    method = diffrax.Tsit5() if solver == "tsit5" else diffrax.Dopri5()
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), method, t0=t0, t1=t1, dt0=None, y0=x,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
    nfe = 6 * sol.stats["num_steps"] + 1
    return SolverOutput(x=sol.ys[0], nfe=jnp.asarray(nfe, jnp.int32))


# ---------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------


def solve(score_fn: ScoreFn, sde: SDE, x_start: Array, key: Optional[PRNGKey], *,
          method: str = "ddim", **kwargs: Any) -> SolverOutput:
    """Runs the solver named `method` from x_start at t_start (default T) to t_end.

    Args:
      score_fn: score_fn(x [B, ...], t [B]) -> score, shape of x.
      sde: an SDE of `adiff.sde`.
      x_start: [B, ...] start state.
      key: PRNG key (None allowed for deterministic methods).
      method: one of "euler_maruyama", "reverse_diffusion", "pc", "ddim", "dpm_solver_pp",
        "pf_ode".
      **kwargs: keyword arguments of that solver.

    Returns:
      The solver's SolverOutput.
    """
    if method == "euler_maruyama":
        fn = euler_maruyama
    elif method == "reverse_diffusion":
        fn = reverse_diffusion
    elif method == "pc":
        fn = predictor_corrector
    elif method == "ddim":
        fn = ddim
    elif method == "dpm_solver_pp":
        fn = dpm_solver_pp
    elif method == "pf_ode":
        fn = pf_ode
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return fn(score_fn, sde, x_start, key, **kwargs)


def sample(score_fn: ScoreFn, sde: SDE, shape: Sequence[int], key: PRNGKey, *,
           method: str = "pc", **kwargs: Any) -> SolverOutput:
    """Draws samples: x_T from `sde.prior_sample`, then `solve` from T to t_end.

    Args:
      score_fn: score_fn(x [B, ...], t [B]) -> score, shape of x.
      sde: an SDE of `adiff.sde`.
      shape: (B, ...) shape of the batch.
      key: PRNG key.
      method: see `solve`.
      **kwargs: keyword arguments of that solver (t_start is not accepted: sampling starts
        from the prior at T; use `solve` with `partial_noise` for t_start < T).

    Returns:
      SolverOutput with x of shape `shape`.
    """
    if "t_start" in kwargs:
        raise ValueError("sample starts from the prior at sde.T and takes no t_start; "
                         "use solve(..., t_start=t0) with partial_noise for partial diffusion")
    shape = tuple(shape)
    if len(shape) < 1 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"shape must be a tuple of positive ints (B, ...), got {shape}")
    if key is None:
        raise ValueError("key is required for sample (the prior draw), got None")
    k_prior, k_solve = jax.random.split(key)
    x_start = sde.prior_sample(k_prior, shape)
    return solve(score_fn, sde, x_start, k_solve, method=method, **kwargs)


def partial_noise(sde: SDE, x0: Array, t0: Any, key: PRNGKey) -> Array:
    """Forward-noises data to time t0: x_{t0} = alpha_{t0} x0 + sigma_{t0} z.

    The start of reconstruction (partial diffusion, SDEdit): solve back from t_start = t0.

    Args:
      sde: an SDE of `adiff.sde`.
      x0: [B, ...] clean data.
      t0: scalar or [B] time(s) in (0, T].
      key: PRNG key.

    Returns:
      [B, ...] noised data.
    """
    x0 = _check_x(x0, "x0")
    t0 = jnp.asarray(t0, jnp.float32)
    if t0.ndim not in (0, 1) or (t0.ndim == 1 and t0.shape[0] != x0.shape[0]):
        raise ValueError(f"t0 must be a scalar or [B={x0.shape[0]}], got shape {t0.shape}")
    t0c = _concrete(t0) if t0.ndim == 0 else None
    if t0c is not None and not 0.0 <= t0c <= sde.T + 1e-6:
        raise ValueError(f"t0 must lie in [0, T={sde.T}], got {t0c}")
    x_t, _ = sde.perturb(key, x0, t0)
    return x_t
