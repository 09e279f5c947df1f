"""Anomaly scores from diffusion models: reconstruction, density, score norm, diffusion time, imputation.

The survey's three scoring paradigms (Liu et al., 2025) plus diffusion-time estimation (Livernoche et
al., ICLR 2024) and masked imputation, all written against a plain `score_fn(x, t)` closure and any
SDE of `adiff.sde`. Every scorer is shape-agnostic (x is [B, ...]), pure, and traceable inside
`jax.jit` wherever the underlying solver is (pass string and tuple hyper-parameters as constants,
e.g. through `functools.partial`). Each returns an `AnomalyScores`: one score per sample, higher
meaning more anomalous, and, where it makes sense, a per-element anomaly map with the shape of x.

Scores of different paradigms live on different scales; `fit_normalizer` / `normalize` put them on a
common one (z-score, robust z-score or training rank) so `ensemble` can combine them. `batched`
applies any scorer over fixed-size batches (one compilation, memory flat in N).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from adiff.sde import SDE, broadcast_to_x
from adiff.typing import Array, PRNGKey, ScoreFn

__all__ = [
    "AnomalyScores",
    "reconstruction",
    "density",
    "elbo",
    "score_norm",
    "dte_nonparametric",
    "diffused_density",
    "diffusion_variance",
    "loo_variance",
    "dte_time_loss",
    "dte_parametric",
    "imputation",
    "Normalizer",
    "fit_normalizer",
    "normalize",
    "ensemble",
    "batched",
    "SOLVERS",
    "MASKED_SOLVERS",
    "DISTANCES",
    "NORMALIZERS",
]

# Method names understood by adiff.solvers.solve (validated here so errors name this module's argument).
SOLVERS = ("euler_maruyama", "reverse_diffusion", "pc", "ddim", "dpm_solver_pp", "pf_ode")
# The solvers that take mask/known (inpainting), usable by `imputation`.
MASKED_SOLVERS = ("euler_maruyama", "reverse_diffusion", "pc", "ddim", "dpm_solver_pp")
DISTANCES = ("squared", "absolute")
AGGREGATES = ("mean", "max")
MASK_KINDS = ("random", "grid")
NORMALIZERS = ("zscore", "rank", "robust")
_DTE_STATISTICS = ("mean", "mode")
_DTE_TARGETS = ("time", "sigma")


@flax.struct.dataclass
class AnomalyScores:
    """Per-sample anomaly scores and optional per-element maps.

    Attributes:
      scores: [B] one score per sample; higher means more anomalous.
      maps: [B, ...] per-element anomaly maps with the shape of x, or None where a scorer has no
        meaningful per-element attribution.
      estimates: [B, ...] the scorer's estimate of the clean sample behind each map, where it has
        one (`diffused_density(maps=True)`: the posterior mean E[x_0 | x]); else None.
    """

    scores: Array  # [B]
    maps: Array | None = None  # [B, ...] (shape of x) or None
    estimates: Array | None = None  # [B, ...] (shape of x) or None


# ------------------------------------------------------------------------------------------------
# validation helpers
# ------------------------------------------------------------------------------------------------
def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_x(x: Any, name: str = "x", *, allow_nonfinite: Array | None = None) -> Array:
    """Checks x is a floating array [B, ...] with B >= 1 and (when concrete) finite values."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape [B, ...] with at least one feature axis (rank >= 2); "
            f"got shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one sample; got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array; got dtype {x.dtype}")
    if not _is_traced(x):
        xp = np if isinstance(x, np.ndarray) else jnp  # check on device for device arrays
        # Concrete arrays closed over by a jitted caller are checked eagerly, not traced.
        with jax.ensure_compile_time_eval():
            bad = ~xp.isfinite(x)
            if allow_nonfinite is not None and not _is_traced(allow_nonfinite):
                bad = bad & (xp.asarray(allow_nonfinite) != 0)
            n_bad = int(bad.sum())
        if n_bad:
            raise ValueError(
                f"{name} must be finite (NaN/inf are only allowed where `observed` is 0); found "
                f"{n_bad} non-finite entries")
    return jnp.asarray(x)


def _check_choice(value: str, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}; got {value!r}")
    return value


def _check_times(ts: Any, name: str, sde: SDE, *, lower: float = 0.0) -> tuple[float, ...]:
    """Normalises a float or a sequence of floats to a non-empty tuple of times in (lower, T]."""
    if isinstance(ts, (int, float)) or (hasattr(ts, "ndim") and np.ndim(ts) == 0):
        ts = (ts,)
    try:
        ts = tuple(float(t) for t in ts)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        raise TypeError(f"{name} must be a float or a sequence of Python floats; got {ts!r}") from e
    if not ts:
        raise ValueError(f"{name} must hold at least one time; got an empty sequence")
    for t in ts:
        if not (lower < t <= sde.T) or not math.isfinite(t):
            raise ValueError(f"every {name} must lie in ({lower:g}, T={sde.T:g}]; got {t!r}")
    return ts


def _check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _distance(a: Array, b: Array, kind: str) -> Array:
    d = a - b
    return d * d if kind == "squared" else jnp.abs(d)


def _mean_except_batch(x: Array) -> Array:
    return jnp.mean(x.reshape(x.shape[0], -1), axis=-1)


def _sum_except_batch(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def _solver_module():
    # Imported lazily: scoring's normalisers and DTE work without the solver stack.
    from adiff import solvers  # pylint: disable=g-import-not-at-top
    return solvers


# ------------------------------------------------------------------------------------------------
# reconstruction
# ------------------------------------------------------------------------------------------------
def reconstruction(
    score_fn: ScoreFn,
    sde: SDE,
    x: Array,
    key: PRNGKey,
    *,
    t0: float | Sequence[float] = (0.2,),
    solver: str = "ddim",
    num_steps: int = 10,
    repeats: int = 1,
    distance: str = "squared",
    feature_fn: Callable[[Array], Array] | None = None,
    aggregate: str = "mean",
    solver_kwargs: Mapping[str, Any] | None = None,
) -> AnomalyScores:
    """Reconstruction error after partial diffusion (the survey's reconstruction paradigm).

    For every start time t0, x is noised to x_t0 ~ p_t0(. | x) and denoised back to the solver's
    t_end; the per-element distance between the reconstruction and x is averaged over `repeats`
    independent noise draws, then combined over the t0 values with `aggregate`. A sample far from
    the data manifold is pulled towards it, so its error is large.

    Args:
      score_fn: score_fn(x [B, ...], t [B]) -> score, shape of x.
      sde: the forward SDE of the model.
      x: [B, ...] inputs.
      key: PRNG key for the partial-diffusion noise (and stochastic solvers).
      t0: one start time or a sequence of them, each in (t_end, T].
      solver: a method of `adiff.solvers.solve` (one of SOLVERS).
      num_steps: solver steps from t0 to t_end.
      repeats: independent noise draws per t0, averaged.
      distance: "squared" or "absolute" per-element distance.
      feature_fn: optional feature_fn(x) -> features [B, ...]; the distance is then taken between
        the features of the reconstruction and of x. Maps are returned only when the features keep
        x's shape (e.g. a per-pixel filter), otherwise maps is None.
      aggregate: "mean" or "max" over the t0 values (of scores; maps combine the same way).
      solver_kwargs: extra keyword arguments of the solver (e.g. {"eta": 1.0}, {"t_end": 1e-3}).

    Returns:
      AnomalyScores with scores [B] (mean per-element distance) and maps [B, ...] or None.
    """
    x = _check_x(x)
    solver_kwargs = dict(solver_kwargs or {})
    t_end = float(solver_kwargs.get("t_end", 1e-3))
    t0s = _check_times(t0, "t0", sde, lower=t_end)
    _check_choice(solver, "solver", SOLVERS)
    _check_choice(distance, "distance", DISTANCES)
    _check_choice(aggregate, "aggregate", AGGREGATES)
    num_steps = _check_positive_int(num_steps, "num_steps")
    repeats = _check_positive_int(repeats, "repeats")
    if feature_fn is not None and not callable(feature_fn):
        raise TypeError(f"feature_fn must be callable or None; got {type(feature_fn).__name__}")
    for reserved in ("t_start", "num_steps", "method", "mask", "known"):
        if reserved in solver_kwargs:
            raise ValueError(f"solver_kwargs must not set {reserved!r}; it is set by reconstruction")
    if solver == "pf_ode":  # adaptive: no step count
        step_kwargs = {}
    else:
        step_kwargs = {"num_steps": num_steps}
    solvers = _solver_module()
    feats = (lambda v: v) if feature_fn is None else feature_fn
    ref = feats(x)

    per_t0_scores, per_t0_maps = [], []
    for i, t in enumerate(t0s):
        keys = jax.random.split(jax.random.fold_in(key, i), repeats)

        def one_draw(k, t=t):
            k_noise, k_solve = jax.random.split(k)
            x_t = solvers.partial_noise(sde, x, t, k_noise)
            out = solvers.solve(score_fn, sde, x_t, k_solve, method=solver, t_start=t,
                                **step_kwargs, **solver_kwargs)
            return _distance(feats(out.x), ref, distance)

        err = jnp.mean(jax.lax.map(one_draw, keys), axis=0) if repeats > 1 else one_draw(keys[0])
        per_t0_maps.append(err)
        per_t0_scores.append(_mean_except_batch(err))

    reduce = jnp.mean if aggregate == "mean" else jnp.max
    scores = reduce(jnp.stack(per_t0_scores), axis=0)
    maps = reduce(jnp.stack(per_t0_maps), axis=0)
    if maps.shape != x.shape:
        maps = None
    return AnomalyScores(scores=scores, maps=maps)


# ------------------------------------------------------------------------------------------------
# density
# ------------------------------------------------------------------------------------------------
def density(
    score_fn: ScoreFn,
    sde: SDE,
    x: Array,
    key: PRNGKey | None = None,
    *,
    divergence: str = "exact",
    **log_prob_kwargs: Any,
) -> AnomalyScores:
    """Negative log-likelihood under the probability-flow ODE (the density paradigm).

    Args:
      score_fn: score_fn(x [B, ...], t [B]) -> score, shape of x.
      sde: the forward SDE of the model.
      x: [B, ...] inputs.
      key: PRNG key; needed for divergence="hutchinson".
      divergence: "exact" or "hutchinson" (see `adiff.likelihood.log_prob`).
      **log_prob_kwargs: passed to `adiff.likelihood.log_prob` (eps, rtol, atol, n_probes,
        prior_logp, ...).

    Returns:
      AnomalyScores with scores = -log p(x) in nats [B] and maps None.
    """
    x = _check_x(x)
    _check_choice(divergence, "divergence", ("exact", "hutchinson"))
    if divergence == "hutchinson" and key is None:
        raise ValueError("density with divergence='hutchinson' needs a PRNG key; got key=None")
    from adiff import likelihood  # pylint: disable=g-import-not-at-top
    out = likelihood.log_prob(score_fn, sde, x, key, divergence=divergence, **log_prob_kwargs)
    return AnomalyScores(scores=-out.logp, maps=None)


def elbo(
    score_fn: ScoreFn,
    sde: SDE,
    x: Array,
    key: PRNGKey,
    *,
    num_samples: int = 64,
    eps: float = 1e-5,
) -> AnomalyScores:
    """Variational upper bound on -log p(x) in nats (the density paradigm without an ODE solve).

    The per-sample bound of Song, Durkan, Murray & Ermon (NeurIPS 2021, Theorem 1), written in noise
    space: with x_t = alpha_t x + sigma_t z, the model's noise estimate e = -sigma_t s(x_t, t) and a
    linear drift f(x, t) = a(t) x in D dimensions,

        -log p(x) <= -E_z[log pi(x_T)]
                     + int_eps^T E_z[ g(t)^2 / (2 sigma_t^2) (|e - z|^2 - |z|^2) - a(t) D ] dt.

    The bound is tight when the score is exact and pi is the true marginal at T, so on Gaussian and
    Gaussian-mixture data it reproduces the closed-form density (tests/scoring_test.py). The prior
    term is computed in closed form (pi = N(0, prior_std^2 I)); the time integral by Monte Carlo with
    t drawn from q(t) ~ g^2 / sigma^2 (`adiff.losses.importance_sample_t`, the likelihood-weighting
    proposal), one noise draw per time. It costs `num_samples` network evaluations per input, against
    hundreds of D-fold forward-mode products for `density`'s exact divergence, so it scales to
    image- and latent-sized inputs.

    The draws (times and noise) depend only on `key` and the sample shape and are shared by every
    input: differences between inputs carry no Monte Carlo noise from different draws (common random
    numbers), and the same key gives the same draws on every chunk of a dataset, so scores of chunks
    are comparable. Each draw's estimate is unbiased for the bound; its spread over draws is large
    in absolute terms, but a control variate on the |z|^2 term (see the code) removes most of it for
    unit-scale data, and what remains is largely the same for every input.

    Args:
      score_fn: score_fn(x [B, ...], t [B]) -> score, shape of x.
      sde: the forward SDE of the model (any adiff SDE: linear drift a(t) x, Gaussian prior).
      x: [B, ...] inputs.
      key: PRNG key of the shared draws.
      num_samples: Monte Carlo draws of (t, z).
      eps: smallest time of the integral (the bound leaves out [0, eps), where the integrand is
        bounded for smooth densities).

    Returns:
      AnomalyScores with scores = the bound on -log p(x) in nats [B] and maps = its per-element
      terms (shape of x; they sum to the scores).
    """
    x = _check_x(x)
    num_samples = _check_positive_int(num_samples, "num_samples")
    if key is None:
        raise ValueError("elbo needs a PRNG key for its Monte Carlo draws; got key=None")
    if not 0.0 < float(eps) < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    from adiff import losses  # pylint: disable=g-import-not-at-top
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    b = x.shape[0]
    key_t, key_z = jax.random.split(key)
    ts, q = losses.importance_sample_t(sde, key_t, num_samples, eps=float(eps))
    zs = jax.random.normal(key_z, (num_samples,) + x.shape[1:], x.dtype)

    def term(carry, tqz):
        t, qt, z = tqz
        sigma = sde.sigma(t)
        xt = sde.alpha(t) * x + sigma * z[None]
        e = -sigma * score_fn(xt, jnp.full((b,), t, x.dtype))
        w = sde.diffusion(t) ** 2 / (2.0 * sigma ** 2)
        # The conditional-score term |z|^2 enters as c |z|^2 + (1 - c) (its mean, 1 per element):
        # unbiased for any c. c = (alpha^2 / (alpha^2 + sigma^2))^2 is the share of |z|^2 left in
        # |e - z|^2 for unit-scale data, so the two cancel draw by draw at every t (c -> 1 as t -> 0,
        # -> 0 as the signal fades) instead of leaving a |z|^2 term of variance 2 D at large t.
        a2 = sde.alpha(t) ** 2
        c = (a2 / (a2 + sigma ** 2)) ** 2
        # Per element, plus the drift's divergence a(t) (D of them sum to div f).
        per = w * ((e - z[None]) ** 2 - c * z[None] ** 2 - (1.0 - c)) - sde.drift_coef(t)
        return carry + per / qt, None

    integral, _ = jax.lax.scan(term, jnp.zeros_like(x), (ts, q, zs))
    integral = integral / num_samples
    # -E_z[log pi(x_T)], x_T = alpha_T x + sigma_T z, pi = N(0, s^2 I), per element.
    s2 = sde.prior_std() ** 2
    alpha_t, sigma_t = sde.alpha(sde.T), sde.sigma(sde.T)
    prior = 0.5 * math.log(2.0 * math.pi * s2) + 0.5 * (alpha_t ** 2 * x ** 2 + sigma_t ** 2) / s2
    maps = integral + prior
    return AnomalyScores(scores=_sum_except_batch(maps), maps=maps)


# ------------------------------------------------------------------------------------------------
# score norm
# ------------------------------------------------------------------------------------------------
def score_norm(
    score_fn: ScoreFn,
    sde: SDE,
    x: Array,
    *,
    ts: float | Sequence[float] = (0.01, 0.05, 0.1, 0.2, 0.4),
    aggregate: str = "mean",
) -> AnomalyScores:
    """Norm of the noise-scaled score at the clean input (the score paradigm).

    sigma_t s(x, t) = -E[eps | x_t = x] is the noise the model believes x carries at level t; it is
    near zero on the data manifold and large away from it. Deterministic (no noise is drawn).

    Args:
      score_fn: score_fn(x [B, ...], t [B]) -> score, shape of x.
      sde: the forward SDE of the model.
      x: [B, ...] inputs.
      ts: times in (0, T] at which the score is evaluated.
      aggregate: "mean" or "max" of the per-time norms.

    Returns:
      AnomalyScores with scores [B] (the aggregated L2 norms ||sigma_t s(x, t)||) and maps [B, ...]
      (the mean over ts of |sigma_t s(x, t)|).
    """
    x = _check_x(x)
    ts = _check_times(ts, "ts", sde)
    _check_choice(aggregate, "aggregate", AGGREGATES)
    b = x.shape[0]
    norms, maps = [], []
    for t in ts:
        tb = jnp.full((b,), t, x.dtype)
        scaled = broadcast_to_x(sde.sigma(tb), x) * score_fn(x, tb)
        norms.append(jnp.sqrt(_sum_except_batch(scaled * scaled)))
        maps.append(jnp.abs(scaled))
    reduce = jnp.mean if aggregate == "mean" else jnp.max
    return AnomalyScores(scores=reduce(jnp.stack(norms), axis=0),
                         maps=jnp.mean(jnp.stack(maps), axis=0))


# ------------------------------------------------------------------------------------------------
# diffusion-time estimation (DTE)
# ------------------------------------------------------------------------------------------------
def _knn_sq_dists(x_train: Array, x: Array, k: int, *, query_batch: int, train_batch: int,
                  return_indices: bool = False):
    """Squared Euclidean distances [B, k] to the k nearest rows of x_train, ascending (and, with
    return_indices, the rows' indices [B, k] into x_train).

    Query rows are processed in blocks of `query_batch` (lax.map) and training rows in blocks of
    `train_batch` (lax.scan with a running top-k), so working memory is query_batch * (train_batch
    + k) floats whatever the sizes. Padding rows get an infinite distance.
    """
    n, d = x_train.shape
    b = x.shape[0]
    bq, bt = min(query_batch, b), min(train_batch, n)
    nq, nt = -(-b // bq), -(-n // bt)
    xq = jnp.pad(x, ((0, nq * bq - b), (0, 0))).reshape(nq, bq, d)
    xt = jnp.pad(x_train, ((0, nt * bt - n), (0, 0))).reshape(nt, bt, d)
    valid = (jnp.arange(nt * bt) < n).reshape(nt, bt)
    rows = jnp.arange(nt * bt, dtype=jnp.int32).reshape(nt, bt)
    hi = jax.lax.Precision.HIGHEST  # no bf16/tf32 matmul: the distances decide the score

    def per_query_block(q):
        qq = jnp.sum(q * q, axis=-1, keepdims=True)

        def body(best, chunk):
            c, ok, r = chunk
            d2 = qq - 2.0 * jnp.matmul(q, c.T, precision=hi) + jnp.sum(c * c, axis=-1)[None]
            d2 = jnp.where(ok[None], jnp.maximum(d2, 0.0), jnp.inf)
            neg, pos = jax.lax.top_k(-jnp.concatenate([best[0], d2], axis=-1), k)
            if not return_indices:  # the common path carries no indices
                return (-neg,), None
            idx = jnp.take_along_axis(
                jnp.concatenate([best[1], jnp.broadcast_to(r[None], d2.shape)], axis=-1), pos, axis=-1)
            return (-neg, idx), None

        init = (jnp.full((bq, k), jnp.inf, x.dtype),)
        if return_indices:
            init += (jnp.zeros((bq, k), jnp.int32),)
        best, _ = jax.lax.scan(body, init, (xt, valid, rows))
        return best

    out = [a.reshape(nq * bq, k)[:b] for a in jax.lax.map(per_query_block, xq)]
    return tuple(out) if return_indices else out[0]


def _knn_masked_sq_dists(x_train: Array, obs_train: Array, x: Array, obs: Array, k: int, *,
                         mode: str, col_mean: Array, col_var: Array, query_batch: int,
                         train_batch: int) -> Array:
    """Squared distances [B, k] with missing entries to the k nearest rows of x_train, ascending.

    With o_q, o_r the 0/1 masks of a query row q and a reference row r (values zero where
    unobserved) and D the number of entries:
      mode "expected": d = D / |O_q| * sum_{j in O_q} [o_rj (q_j - r_j)^2
                                                      + (1 - o_rj) ((q_j - mu_j)^2 + var_j)],
        the entries the query observes, a gap of the reference replaced by its expected squared
        difference under the training marginal of column j (mean mu_j, variance var_j). +inf when
        the query observes nothing.
      mode "mean": as "expected" without the + var_j term (the reference gap mean-filled).
      mode "shared": d = D / |O_q & O_r| * sum_{j in O_q & O_r} (q_j - r_j)^2; +inf when the two
        rows share no observed entry.
    Blocked exactly as `_knn_sq_dists` (working memory query_batch * (train_batch + k) floats),
    through sum_j o_qj o_rj (q_j - r_j)^2 = (q^2) @ o_r^T - 2 q @ r^T + o_q @ (r^2)^T.
    """
    n, d = x_train.shape
    b = x.shape[0]
    bq, bt = min(query_batch, b), min(train_batch, n)
    nq, nt = -(-b // bq), -(-n // bt)
    pad_q = lambda a: jnp.pad(a, ((0, nq * bq - b), (0, 0))).reshape(nq, bq, d)
    pad_t = lambda a: jnp.pad(a, ((0, nt * bt - n), (0, 0))).reshape(nt, bt, d)
    xq, oq_all = pad_q(x), pad_q(obs)
    xt, ot = pad_t(x_train), pad_t(obs_train)
    valid = (jnp.arange(nt * bt) < n).reshape(nt, bt)
    hi = jax.lax.Precision.HIGHEST
    mm = lambda a, c: jnp.matmul(a, c.T, precision=hi)

    def per_query_block(args):
        q, oq = args
        gap_var = col_var if mode == "expected" else 0.0
        eq = oq * ((q - col_mean) ** 2 + gap_var)  # [bq, d] contributions of reference gaps
        nobs = jnp.sum(oq, axis=-1, keepdims=True)  # [bq, 1]

        def body(best, chunk):
            c, oc, ok = chunk
            ssq = jnp.maximum(mm(q * q, oc) - 2.0 * mm(q, c) + mm(oq, c * c), 0.0)
            if mode == "shared":
                count = mm(oq, oc)
                d2 = ssq * (d / jnp.maximum(count, 1.0))
            else:
                count = jnp.broadcast_to(nobs, ssq.shape)
                d2 = (ssq + mm(eq, 1.0 - oc)) * (d / jnp.maximum(count, 1.0))
            d2 = jnp.where(ok[None] & (count > 0.5), d2, jnp.inf)
            neg, _ = jax.lax.top_k(-jnp.concatenate([best, d2], axis=-1), k)
            return -neg, None

        best, _ = jax.lax.scan(body, jnp.full((bq, k), jnp.inf, x.dtype), (xt, ot, valid))
        return best

    return jax.lax.map(per_query_block, (xq, oq_all)).reshape(nq * bq, k)[:b]


def _check_observed(observed: Any, x: Array, name: str) -> Array:
    if not hasattr(observed, "shape"):
        observed = np.asarray(observed)
    if tuple(observed.shape) != tuple(np.shape(x)):
        raise ValueError(f"{name} must have the shape of its data {tuple(np.shape(x))}; "
                         f"got {tuple(observed.shape)}")
    dtype = getattr(x, "dtype", None)
    return jnp.asarray(observed, dtype if dtype is not None and jnp.issubdtype(dtype, jnp.floating)
                       else jnp.float32)


def _all_observed(observed: Any) -> bool:
    """True when `observed` is concrete and every entry is nonzero (the fast path applies)."""
    if _is_traced(observed):
        return False
    with jax.ensure_compile_time_eval():
        return bool(np.all(np.asarray(observed) != 0))


def _neighbour_sq_dists(x_train: Array, x: Array, k: int, *, exclude_self: bool, query_batch: int,
                        train_batch: int, observed_train: Array | None, observed: Array | None,
                        missing_distance: str, return_indices: bool = False):
    """Validated inputs -> (squared distances [B, k] to the k nearest rows of x_train, ascending,
    the query's own row dropped with exclude_self; the flat dimension D), and with return_indices
    (complete data only) the rows' indices [B, k] before D. The masked distances and their
    fallback are described in `dte_nonparametric`, whose arguments these are."""
    if observed_train is not None:
        observed_train = _check_observed(observed_train, x_train, "observed_train")
    if observed is not None:
        observed = _check_observed(observed, x, "observed")
    x_train = _check_x(x_train, "x_train", allow_nonfinite=observed_train)
    x = _check_x(x, allow_nonfinite=observed)
    _check_choice(missing_distance, "missing_distance", ("expected", "mean", "shared"))
    masked = not ((observed_train is None or _all_observed(observed_train))
                  and (observed is None or _all_observed(observed)))
    if x_train.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"x must have the trailing shape of x_train {tuple(x_train.shape[1:])}; "
            f"got {tuple(x.shape[1:])}")
    k = _check_positive_int(k, "k")
    query_batch = _check_positive_int(query_batch, "query_batch")
    train_batch = _check_positive_int(train_batch, "train_batch")
    k_used = k + 1 if exclude_self else k
    if k_used > x_train.shape[0]:
        raise ValueError(
            f"k{' + 1 (exclude_self)' if exclude_self else ''} must be <= the number of training "
            f"points {x_train.shape[0]}; got {k_used}")
    flat_train = x_train.reshape(x_train.shape[0], -1)
    flat_x = x.reshape(x.shape[0], -1)
    if return_indices and masked:
        raise ValueError("neighbour indices (the posterior mean maps) need complete data; got "
                         "missing entries")
    if return_indices:
        d2, idx = _knn_sq_dists(flat_train, flat_x, k_used, query_batch=query_batch,
                                train_batch=train_batch, return_indices=True)
        if exclude_self:
            d2, idx = d2[:, 1:], idx[:, 1:]
        return d2, idx, math.prod(x.shape[1:])
    if not masked:
        d2 = _knn_sq_dists(flat_train, flat_x, k_used, query_batch=query_batch,
                           train_batch=train_batch)
    else:
        ones = lambda a: jnp.ones(a.shape, a.dtype)
        o_tr = (ones(flat_train) if observed_train is None
                else (observed_train.reshape(flat_train.shape) != 0).astype(flat_train.dtype))
        o_x = ones(flat_x) if observed is None else (observed.reshape(flat_x.shape) != 0).astype(flat_x.dtype)
        flat_train = jnp.where(o_tr > 0, flat_train, 0.0)
        flat_x = jnp.where(o_x > 0, flat_x, 0.0)
        cnt = jnp.maximum(jnp.sum(o_tr, axis=0), 1.0)
        col_mean = jnp.sum(flat_train, axis=0) / cnt
        col_var = jnp.sum(o_tr * (flat_train - col_mean) ** 2, axis=0) / cnt
        d2 = _knn_masked_sq_dists(flat_train, o_tr, flat_x, o_x, k_used, mode=missing_distance,
                                  col_mean=col_mean, col_var=col_var, query_batch=query_batch,
                                  train_batch=train_batch)
        fallback = 2.0 * jnp.sum(col_var)
        d2 = jnp.where(jnp.isfinite(d2), d2, fallback)
    if exclude_self:
        d2 = d2[:, 1:]
    return d2, math.prod(x.shape[1:])


def _variance_grid(sde: SDE | None, num_steps: int, t_min: float | None,
                   dtype=jnp.float32) -> tuple[Array, Array]:
    """(times, noise variances v(t)) of the non-parametric scorers' time grid (see
    `dte_nonparametric`: DTE's discrete DDPM schedule for sde=None, else the SDE's)."""
    num_steps = _check_positive_int(num_steps, "num_steps", 2)
    if sde is None:
        if t_min is not None:
            raise ValueError("t_min is only used with an SDE; got t_min with sde=None")
        betas = np.linspace(1e-4, 0.01, num_steps, dtype=np.float64)
        return (jnp.arange(num_steps, dtype=dtype),
                jnp.asarray(1.0 - np.cumprod(1.0 - betas), dtype))
    t_lo = sde.T / num_steps if t_min is None else float(t_min)
    if not 0.0 < t_lo < sde.T:
        raise ValueError(f"t_min must lie in (0, T={sde.T:g}); got {t_min!r}")
    times = jnp.linspace(t_lo, sde.T, num_steps, dtype=dtype)
    return times, jnp.exp(-2.0 * sde.log_snr(times))


def dte_nonparametric(
    x_train: Array,
    x: Array,
    *,
    sde: SDE | None = None,
    k: int = 5,
    statistic: str = "mean",
    target: str = "time",
    num_steps: int = 300,
    t_min: float | None = None,
    exclude_self: bool = False,
    query_batch: int = 1024,
    train_batch: int = 4096,
    observed_train: Array | None = None,
    observed: Array | None = None,
    missing_distance: str = "expected",
) -> AnomalyScores:
    """Non-parametric diffusion-time estimation (DTE-NP, Livernoche et al., ICLR 2024).

    A test point is read as a noisy copy x = x_i + s z of a training point, z ~ N(0, I_D). With m
    the mean squared distance to the k nearest training points, the likelihood of the noise
    variance v = s^2 is v^(-D/2) exp(-m / (2 v)) -- an inverse-gamma kernel in v with shape D/2 - 1
    and scale m / 2 (the paper's estimator, valid here for every D >= 1). It is evaluated on a grid
    of diffusion times with a uniform prior over the grid, and the score is the posterior mean or
    mode of the time (or of the noise scale s). Points far from the training data need more noise to
    be explained, so they get a later time.

    Noise schedule:
      - sde=None: DTE's own discrete DDPM schedule (num_steps steps, linear betas 1e-4 .. 0.01,
        v_j = 1 - prod_{i<=j}(1 - beta_i)), times are step indices 0 .. num_steps-1. With
        statistic="mode" this reproduces the reference implementation's scores.
      - an SDE: num_steps times uniform in [t_min, T] (t_min defaults to T / num_steps) and
        v(t) = sigma_t^2 / alpha_t^2 = exp(-2 log_snr(t)), the noise variance of x_t / alpha_t =
        x_0 + (sigma_t / alpha_t) z in data units (exact for VE; for VP it keeps the clean-data
        scale, the variance-only kernel of the paper, instead of shrinking x).

    Missing values (`observed_train` / `observed`, 0/1 masks of the shape of x_train / x;
    unobserved entries may hold NaN). Three masked squared distances between a query row q and a
    reference row r, both rescaled to D entries so they stay comparable to a complete distance:
      - "expected" (default): over the entries q observes, D / |O_q| * sum_{j in O_q} of
        (q_j - r_j)^2 where r observes j too, and of the expected squared difference
        (q_j - mu_j)^2 + var_j (training mean and variance of column j over observed entries)
        where r misses j. The rescaling factor is the same for every reference of a query, so
        it does not change which references are nearest.
      - "mean": as "expected", but a reference's gap counts as (q_j - mu_j)^2, the reference entry
        filled with the column mean (no + var_j). Measured on the decoded campaign table with
        MCAR gaps: within 0.006 AUROC of "expected" (docs/results/tabular_mixed.md, session 8).
      - "shared": only the entries observed in both rows, D / |O_q & O_r| * sum (q_j - r_j)^2
        (+inf with nothing shared). Each distance is unbiased under entries missing at random,
        but the k-NN minimum is not: references missing exactly the query's deviating entries
        look closest, so an anomaly's score shrinks. Measured on Gaussian tables with 20% MCAR
        it loses to zero-filling when anomalies deviate in a few columns (tests/tabular_test.py).
    Where a distance is +inf (a query observing nothing, or, for "shared", fewer than k
    references sharing an entry), it is replaced by the finite fallback 2 * sum_j var_j, the
    expected squared distance between two independent training rows. Masks that are concrete
    and all ones (or None) take the unmasked fast path, bit-identical to passing no masks.

    Args:
      x_train: [N, ...] training (normal) data.
      x: [B, ...] points to score; same trailing shape as x_train.
      sde: optional SDE whose noise levels define the time grid (see above).
      k: number of nearest neighbours averaged.
      statistic: "mean" (posterior mean, smooth) or "mode" (argmax over the grid, as in DTE), or
        "distance": the sufficient statistic m itself (mean squared distance to the k nearest
        training rows; a plain k-NN score that never saturates at the end of the time grid).
      target: "time" (diffusion time / step index) or "sigma" (noise scale s = sqrt(v)).
      num_steps: size of the time grid.
      t_min: smallest grid time when an SDE is given.
      exclude_self: drop each point's nearest neighbour (use it when x is x_train, so a point is
        not its own neighbour at distance 0).
      query_batch: rows of x per distance block.
      train_batch: rows of x_train per distance block.
      observed_train: optional [N, ...] 0/1 mask of observed entries of x_train (None: all).
      observed: optional [B, ...] 0/1 mask of observed entries of x (None: all).
      missing_distance: "expected", "mean" or "shared", the masked distance (see above).

    Returns:
      AnomalyScores with scores [B] and maps None.
    """
    _check_choice(statistic, "statistic", _DTE_STATISTICS + ("distance",))
    _check_choice(target, "target", _DTE_TARGETS)
    # The grid is validated before the distances, in x's (canonical) float dtype.
    dtype = getattr(x, "dtype", None)
    dtype = (jax.dtypes.canonicalize_dtype(dtype) if dtype is not None
             and jnp.issubdtype(dtype, jnp.floating) else jnp.float32)
    times, var = _variance_grid(sde, num_steps, t_min, dtype)
    d2, dim = _neighbour_sq_dists(x_train, x, k, exclude_self=exclude_self, query_batch=query_batch,
                                  train_batch=train_batch, observed_train=observed_train,
                                  observed=observed, missing_distance=missing_distance)
    times, var = times.astype(d2.dtype), var.astype(d2.dtype)
    m = jnp.mean(d2, axis=-1)  # [B]
    if statistic == "distance":
        return AnomalyScores(scores=m, maps=None)
    log_post = -0.5 * dim * jnp.log(var)[None] - 0.5 * m[:, None] / var[None]  # [B, num_steps]
    values = times if target == "time" else jnp.sqrt(var)
    if statistic == "mode":
        scores = values[jnp.argmax(log_post, axis=-1)]
    else:
        scores = jax.nn.softmax(log_post, axis=-1) @ values
    return AnomalyScores(scores=scores, maps=None)


def diffused_density(
    x_train: Array,
    x: Array,
    *,
    variance: float | None = None,
    sde: SDE | None = None,
    k: int = 50,
    num_steps: int = 300,
    t_min: float | None = None,
    exclude_self: bool = False,
    query_batch: int = 1024,
    train_batch: int = 4096,
    observed_train: Array | None = None,
    observed: Array | None = None,
    missing_distance: str = "expected",
    maps: bool = False,
    groups_train: Array | None = None,
    groups: Array | None = None,
) -> AnomalyScores:
    """The density paradigm without a network: -log p_v(x) of the diffused empirical distribution.

    Forward diffusion of the training set's empirical distribution to noise variance v (in data
    units, the kernel of `dte_nonparametric`) gives the Gaussian mixture
    p_v(x) = 1/N sum_i N(x; x_i, v I), whose negative log-density is the score: a kernel density
    estimate whose bandwidth is a diffusion time. The sum runs over the k nearest training rows
    (the others add terms below exp(-(d_k^2 - d_1^2) / 2v) of the nearest one; k = N is exact).
    v defaults to the grid variance chosen by `diffusion_variance` (leave-one-out likelihood of
    the training rows), so no label or threshold is involved. Measured on ADBench tables
    (docs/results/tabular.md, session 18, 5 seeds): mean AUROC 0.8815 against 0.8781 for DTE-NP's
    posterior mean time on the 27 sets up to 40,000 rows, 0.8616 against 0.8687 on the 7 larger
    ones (celeba, 39 binary columns, and campaign, mostly one-hot, lose most; a separate noise
    level for binary columns does not help, session 19). On MNIST pixels with 1-pixel shifts in the memory
    and a 0.5 px blur (`ImageDetector(scoring="density_np")`, docs/results/image.md, session 20):
    0.965 mean one-vs-rest AUROC against 0.956 for KNN.

    Args:
      x_train, x, sde, k, num_steps, t_min, exclude_self, query_batch, train_batch,
      observed_train, observed, missing_distance: as in `dte_nonparametric` (the grid only
        matters when `variance` is None).
      variance: the noise variance v > 0; None chooses it with `diffusion_variance`.
      maps: also return per-entry maps (x - E[x_0 | x_v = x])^2 [B, ...], the squared distance to
        the posterior mean of the clean row under p_v (Tweedie: E[x_0 | x] = x + v grad log p_v(x),
        so the map is v^2 times the squared score, entry by entry), the weights softmax(-d^2 / 2v)
        taken over the same k nearest rows. Complete data only (no `observed` masks).
      groups_train, groups: optional integer group labels [N] of the training rows and [B] of
        the queries (both or neither; complete data only): a query's mixture leaves out every
        training row of its own group (leave-group-out, e.g. a training image and its shifted
        copies when the queries are the training images; a finer `exclude_self`).

    Returns:
      AnomalyScores with scores [B] (nats, constants included), and with maps=True the maps
      [B, ...] and the posterior means as `estimates` [B, ...] (else both None).
    """
    if variance is None:
        variance = diffusion_variance(x_train, sde=sde, k=k, num_steps=num_steps, t_min=t_min,
                                      query_batch=query_batch, train_batch=train_batch,
                                      observed_train=observed_train,
                                      missing_distance=missing_distance)
    variance = float(variance)
    if not (math.isfinite(variance) and variance > 0.0):
        raise ValueError(f"variance must be a finite number > 0; got {variance!r}")
    n = int(np.shape(x_train)[0]) - (1 if exclude_self else 0)
    if (groups_train is None) != (groups is None):
        raise ValueError("pass both groups_train and groups, or neither")
    extra = 0
    if groups is not None:
        if exclude_self:
            raise ValueError("groups already leave the query's own rows out; drop exclude_self")
        g_tr, g_q = np.asarray(groups_train).reshape(-1), np.asarray(groups).reshape(-1)
        if len(g_tr) != np.shape(x_train)[0] or len(g_q) != np.shape(x)[0]:
            raise ValueError(f"groups_train must have one label per training row and groups one per "
                             f"query; got {len(g_tr)} for {np.shape(x_train)[0]} and {len(g_q)} for "
                             f"{np.shape(x)[0]}")
        labels, counts = np.unique(g_tr, return_counts=True)
        own = np.zeros(len(g_q), np.int64)
        hit = np.isin(g_q, labels)
        own[hit] = counts[np.searchsorted(labels, g_q[hit])]
        extra = int(own.max())
        if k + extra > np.shape(x_train)[0]:
            raise ValueError(f"k + the largest group ({k} + {extra}) must be <= the number of "
                             f"training rows {np.shape(x_train)[0]}")
        n = jnp.asarray(np.shape(x_train)[0] - own, jnp.float32)
    out = _neighbour_sq_dists(x_train, x, k + extra, exclude_self=exclude_self,
                              query_batch=query_batch, train_batch=train_batch,
                              observed_train=observed_train, observed=observed,
                              missing_distance=missing_distance,
                              return_indices=maps or groups is not None)
    d2, dim = out[0], out[-1]
    if groups is not None:  # drop the query's own group, keep the k nearest others
        same = jnp.asarray(g_tr)[out[1]] == jnp.asarray(g_q)[:, None]
        order = jnp.argsort(jnp.where(same, jnp.inf, d2), axis=-1)[:, :k]
        d2 = jnp.take_along_axis(d2, order, axis=-1)
        out = (d2, jnp.take_along_axis(out[1], order, axis=-1), dim)
    log_p = (jax.nn.logsumexp(-0.5 * d2 / variance, axis=-1) - jnp.log(n)
             - 0.5 * dim * math.log(2.0 * math.pi * variance))
    if not maps:
        return AnomalyScores(scores=-log_p, maps=None)
    w = jax.nn.softmax(-0.5 * d2 / variance, axis=-1)  # [B, k] posterior weights of the rows
    flat_train = jnp.asarray(x_train).reshape(np.shape(x_train)[0], -1)
    flat_x = jnp.asarray(x).reshape(np.shape(x)[0], -1)
    step = max(1, min(int(query_batch), 256))  # gathers [step, k, D] at a time
    post = jnp.concatenate([jnp.einsum("bk,bkd->bd", w[i:i + step], flat_train[out[1][i:i + step]],
                                       precision=jax.lax.Precision.HIGHEST)
                            for i in range(0, flat_x.shape[0], step)])
    return AnomalyScores(scores=-log_p, maps=jnp.square(flat_x - post).reshape(np.shape(x)),
                         estimates=post.reshape(np.shape(x)))


def diffusion_variance(
    x_train: Array,
    *,
    sde: SDE | None = None,
    k: int = 50,
    num_steps: int = 300,
    t_min: float | None = None,
    query_batch: int = 1024,
    train_batch: int = 4096,
    observed_train: Array | None = None,
    missing_distance: str = "expected",
) -> float:
    """The grid variance v (see `dte_nonparametric`) maximising the leave-one-out log-likelihood
    1/N sum_i log p_v^(-i)(x_i) of the training rows under the diffused empirical distribution
    (each row's own term left out, the k nearest others kept). Exact duplicates of a row (distance
    0) are left out of the choice: with them the optimum would be the smallest grid variance."""
    _, var = _variance_grid(sde, num_steps, t_min)
    d2, dim = _neighbour_sq_dists(x_train, x_train, k, exclude_self=True, query_batch=query_batch,
                                  train_batch=train_batch, observed_train=observed_train,
                                  observed=observed_train, missing_distance=missing_distance)
    return loo_variance(d2, var, dim)


def loo_variance(d2_loo: Array, variances: Array, dim: int) -> float:
    """The variance among `variances` maximising the leave-one-out log-likelihood, from each
    training row's squared distances to its nearest other rows (d2_loo [N, K], its own row
    excluded) in dimension `dim` (see `diffusion_variance`, which computes the table; this part
    also serves a precomputed one). Rows at distance 0 (exact duplicates) are left out."""
    d2 = np.asarray(d2_loo, np.float64)
    d2 = np.where(d2 > 0, d2, np.inf)
    d2 = d2[np.isfinite(d2).any(axis=1)]
    if not len(d2):
        raise ValueError("every training row duplicates its neighbours; no variance can be chosen")
    v = np.asarray(variances, np.float64)
    # log-sum-exp in float64 around each row's nearest distance (stable for small v); the gaps
    # and the mean shift do not depend on v, so they are computed once for the whole grid.
    m = d2.min(axis=1, keepdims=True)
    gap, m_mean = d2 - m, float(m.mean())
    loo = [np.mean(np.log(np.sum(np.exp(gap * (-0.5 / vj)), axis=1))) - m_mean / (2.0 * vj)
           - 0.5 * dim * np.log(vj) for vj in v]
    return float(v[int(np.argmax(loo))])


def _check_t_max(sde: SDE, t_max: float | None) -> float:
    t_max = sde.T if t_max is None else float(t_max)
    if not 0.0 < t_max <= sde.T:
        raise ValueError(f"t_max must lie in (0, T={sde.T:g}]; got {t_max!r}")
    return t_max


def _check_num_bins(num_bins: int | None) -> int | None:
    if num_bins is not None:
        _check_positive_int(num_bins, "num_bins", 2)
    return num_bins


def dte_time_loss(
    time_model_fn: Callable[[Array], Array],
    sde: SDE,
    x0: Array,
    key: PRNGKey,
    *,
    num_bins: int | None = None,
    t_max: float | None = None,
) -> Array:
    """Training loss of the parametric diffusion-time estimator (DTE).

    Clean data x0 is noised by the SDE at t ~ U(0, t_max) and the network predicts t from x_t:
    regression (mean squared error on t) when num_bins is None, else classification over num_bins
    equal-width time bins with cross-entropy (DTE-Categorical).

    Args:
      time_model_fn: time_model_fn(x_t [B, ...]) -> [B] or [B, 1] predicted times (regression) or
        [B, num_bins] logits (categorical). Close over the parameters to differentiate.
      sde: the forward SDE used to noise x0.
      x0: [B, ...] clean training data.
      key: PRNG key for t and the noise.
      num_bins: None for regression, else the number of time bins (>= 2).
      t_max: largest training time, in (0, T]; defaults to T.

    Returns:
      The scalar mean loss over the batch.
    """
    x0 = _check_x(x0, "x0")
    t_max = _check_t_max(sde, t_max)
    num_bins = _check_num_bins(num_bins)
    b = x0.shape[0]
    k_t, k_noise = jax.random.split(key)
    t = jax.random.uniform(k_t, (b,), x0.dtype, 0.0, t_max)
    x_t, _ = sde.perturb(k_noise, x0, t)
    out = time_model_fn(x_t)
    if num_bins is None:
        if out.size != b:
            raise ValueError(
                f"time_model_fn must return [B] or [B, 1] times for regression; got {out.shape}")
        return jnp.mean((out.reshape(b) - t) ** 2)
    if out.shape != (b, num_bins):
        raise ValueError(
            f"time_model_fn must return [B, num_bins] = {(b, num_bins)} logits; got {out.shape}")
    labels = jnp.clip(jnp.floor(t * num_bins / t_max).astype(jnp.int32), 0, num_bins - 1)
    logp = jax.nn.log_softmax(out, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def dte_parametric(
    time_model_fn: Callable[[Array], Array],
    x: Array,
    *,
    num_bins: int | None = None,
) -> AnomalyScores:
    """Anomaly score of a trained diffusion-time estimator: the time it predicts for clean x.

    Args:
      time_model_fn: the network trained with `dte_time_loss` (same num_bins).
      x: [B, ...] inputs.
      num_bins: None for regression (score = predicted time), else the number of bins (score =
        expected bin index 0 .. num_bins-1 under the predicted softmax, as in DTE).

    Returns:
      AnomalyScores with scores [B] and maps None.
    """
    x = _check_x(x)
    num_bins = _check_num_bins(num_bins)
    b = x.shape[0]
    out = time_model_fn(x)
    if num_bins is None:
        if out.size != b:
            raise ValueError(
                f"time_model_fn must return [B] or [B, 1] times for regression; got {out.shape}")
        return AnomalyScores(scores=out.reshape(b), maps=None)
    if out.shape != (b, num_bins):
        raise ValueError(
            f"time_model_fn must return [B, num_bins] = {(b, num_bins)} logits; got {out.shape}")
    probs = jax.nn.softmax(out, axis=-1)
    return AnomalyScores(scores=probs @ jnp.arange(num_bins, dtype=probs.dtype), maps=None)


# ------------------------------------------------------------------------------------------------
# imputation
# ------------------------------------------------------------------------------------------------
def _mask_shape(x: Array, mask_axes: Sequence[int] | None) -> tuple[int, ...]:
    """Per-sample mask shape: x's size on mask_axes, 1 elsewhere (shared by the other axes)."""
    if mask_axes is None:
        return tuple(x.shape[1:])
    axes = set()
    for a in mask_axes:
        a_norm = a + x.ndim if a < 0 else a
        if not 1 <= a_norm < x.ndim:
            raise ValueError(
                f"mask_axes must name non-batch axes of x (1 .. {x.ndim - 1} or negative); got {a}")
        axes.add(a_norm)
    if not axes:
        raise ValueError("mask_axes must name at least one axis; got an empty sequence")
    return tuple(x.shape[a] if a in axes else 1 for a in range(1, x.ndim))


def imputation(
    score_fn: ScoreFn,
    sde: SDE,
    x: Array,
    key: PRNGKey,
    *,
    mask_ratio: float = 0.3,
    num_masks: int = 4,
    mask_kind: str = "random",
    solver: str = "ddim",
    num_steps: int = 10,
    observed: Array | None = None,
    distance: str = "squared",
    mask_axes: Sequence[int] | None = None,
    solver_kwargs: Mapping[str, Any] | None = None,
) -> AnomalyScores:
    """Masked-imputation error: hide entries, impute them from the rest, score the misfit.

    For each of num_masks masks the hidden entries are generated from the prior by the masked
    solver, with the visible entries held to x (mask/known of `adiff.solvers`); the distance to x
    on hidden entries only is the error. An anomalous entry is not predictable from its context.

    Args:
      score_fn: score_fn(x [B, ...], t [B]) -> score, shape of x.
      sde: the forward SDE of the model.
      x: [B, ...] inputs (NaN allowed where `observed` is 0).
      key: PRNG key for the prior draws, random masks and stochastic solvers.
      mask_ratio: fraction of mask entries hidden by each random mask (at least one), in (0, 1).
      num_masks: number of masks; the scores are averaged over them.
      mask_kind: "random" (independent per sample and mask) or "grid" (num_masks complementary
        masks, entry j of the flattened mask shape hidden in mask j mod num_masks, so every entry
        is hidden exactly once; mask_ratio is then 1 / num_masks).
      solver: a method of `adiff.solvers.solve` that supports mask/known (MASKED_SOLVERS).
      num_steps: solver steps from T to t_end.
      observed: optional [B, ...] (broadcastable to x) 0/1: 0 marks truly missing input entries,
        which are never scored and never used as known.
      distance: "squared" or "absolute" per-element distance.
      mask_axes: non-batch axes the masks vary along (e.g. (1,) to hide whole time steps of a
        [B, L, C] series); other axes share the mask. None: every element independently.
      solver_kwargs: extra solver keyword arguments (e.g. {"resample": 3}). For solver="ddim",
        eta defaults to 1.0 (ancestral) here: with deterministic DDIM the replacement
        conditioning mis-imputes (AUROC 0.85 vs 0.98 on the test mixture of
        tests/scoring_test.py, 10 steps).

    Returns:
      AnomalyScores with scores [B] (mean over masks of the mean hidden-entry distance) and maps
      [B, ...] (each entry's mean distance over the masks that hid it; 0 where it was never hidden
      or is not observed).
    """
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    if observed is not None:
        if not hasattr(observed, "shape"):
            observed = np.asarray(observed)
        try:
            ok = tuple(np.broadcast_shapes(observed.shape, x.shape)) == tuple(x.shape)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"observed must broadcast to x's shape {tuple(x.shape)}; got "
                f"{tuple(observed.shape)}")
    x = _check_x(x, allow_nonfinite=observed)
    _check_choice(mask_kind, "mask_kind", MASK_KINDS)
    _check_choice(solver, "solver", MASKED_SOLVERS)
    _check_choice(distance, "distance", DISTANCES)
    num_masks = _check_positive_int(num_masks, "num_masks")
    num_steps = _check_positive_int(num_steps, "num_steps")
    if not 0.0 < float(mask_ratio) < 1.0:
        raise ValueError(f"mask_ratio must lie in (0, 1); got {mask_ratio!r}")
    solver_kwargs = dict(solver_kwargs or {})
    for reserved in ("num_steps", "method", "mask", "known"):
        if reserved in solver_kwargs:
            raise ValueError(f"solver_kwargs must not set {reserved!r}; it is set by imputation")
    if solver == "ddim":
        # Replacement conditioning harmonises poorly with the deterministic sampler (it commits to
        # a mode before the known entries have pulled the hidden ones); ancestral DDIM does not.
        solver_kwargs.setdefault("eta", 1.0)
    ms = _mask_shape(x, mask_axes)
    n_mask = math.prod(ms)
    if mask_kind == "grid" and num_masks > n_mask:
        raise ValueError(
            f"num_masks must be <= the {n_mask} mask entries for mask_kind='grid'; got {num_masks}")
    if num_masks < 2 and mask_kind == "grid":
        raise ValueError("mask_kind='grid' needs num_masks >= 2 (one mask would hide everything)")
    n_hide = min(max(1, int(round(float(mask_ratio) * n_mask))), n_mask)

    b = x.shape[0]
    if observed is None:
        obs = jnp.ones_like(x)
    else:
        obs = jnp.broadcast_to(jnp.asarray(observed, x.dtype), x.shape)
        if not _is_traced(observed) and not np.isin(np.asarray(observed), (0, 1)).all():
            raise ValueError("observed must hold only 0 (missing) and 1 (observed) values")
    x_clean = jnp.where(obs > 0, x, 0.0)
    solvers = _solver_module()
    step_kwargs = {"num_steps": num_steps}
    flat_ids = jnp.arange(n_mask).reshape((1,) + ms)

    def one_mask(args):
        j, k = args
        k_mask, k_prior, k_solve = jax.random.split(k, 3)
        if mask_kind == "grid":
            hidden = (flat_ids % num_masks == j).astype(x.dtype)  # [1, *ms]
        else:
            u = jax.random.uniform(k_mask, (b, n_mask))
            ranks = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
            hidden = (ranks < n_hide).astype(x.dtype).reshape((b,) + ms)
        hidden = jnp.broadcast_to(hidden, x.shape)
        known_mask = (1.0 - hidden) * obs
        x_start = sde.prior_sample(k_prior, x.shape, x.dtype)
        out = solvers.solve(score_fn, sde, x_start, k_solve, method=solver, mask=known_mask,
                            known=x_clean, **step_kwargs, **solver_kwargs)
        scored = hidden * obs
        err = _distance(out.x, x_clean, distance) * scored
        return err, scored

    keys = jax.random.split(key, num_masks)
    errs, scored = jax.lax.map(one_mask, (jnp.arange(num_masks), keys))  # [M, B, ...] each
    count = jax.vmap(_sum_except_batch)(scored)  # [M, B]
    per_mask = jax.vmap(_sum_except_batch)(errs) / jnp.maximum(count, 1.0)
    used = (count > 0).astype(x.dtype)
    scores = jnp.sum(per_mask * used, axis=0) / jnp.maximum(jnp.sum(used, axis=0), 1.0)
    maps = jnp.sum(errs, axis=0) / jnp.maximum(jnp.sum(scored, axis=0), 1.0)
    return AnomalyScores(scores=scores, maps=maps)


# ------------------------------------------------------------------------------------------------
# normalisation and ensembles
# ------------------------------------------------------------------------------------------------
@flax.struct.dataclass
class Normalizer:
    """Maps raw scores of one paradigm to a common scale, fitted on training (normal) scores.

    Attributes:
      loc: [] centre (mean for "zscore", median for "robust", unused for "rank").
      scale: [] spread (std for "zscore", IQR / 1.349 for "robust", unused for "rank").
      reference: [N] sorted training scores for "rank" ([0] otherwise).
      method: "zscore", "robust" or "rank" (static).
    """

    loc: Array  # []
    scale: Array  # []
    reference: Array  # [N] (rank) or [0]
    method: str = flax.struct.field(pytree_node=False, default="zscore")


def _as_scores(scores: Any, name: str) -> Array:
    if isinstance(scores, AnomalyScores):
        scores = scores.scores
    if not hasattr(scores, "shape"):
        scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores [N]; got shape {tuple(scores.shape)}")
    return jnp.asarray(scores)


def fit_normalizer(train_scores: Array | AnomalyScores, *, method: str = "zscore") -> Normalizer:
    """Fits a score normaliser on scores of normal (training) data.

    Args:
      train_scores: [N] scores (or an AnomalyScores) of training data, N >= 1, finite.
      method: "zscore" ((s - mean) / std), "robust" ((s - median) / (IQR / 1.349), the IQR scaled
        to equal the std under a Gaussian), or "rank" (the mid-rank empirical CDF of the training
        scores, in [0, 1]). A zero spread is replaced by 1.

    Returns:
      A Normalizer.
    """
    s = _as_scores(train_scores, "train_scores")
    _check_choice(method, "method", NORMALIZERS)
    if s.shape[0] < 1:
        raise ValueError("train_scores must hold at least one score; got an empty array")
    if not jnp.issubdtype(s.dtype, jnp.floating):
        s = s.astype(jnp.float32)
    if not _is_traced(s) and not np.isfinite(np.asarray(s)).all():
        raise ValueError("train_scores must be finite")
    empty = jnp.zeros((0,), s.dtype)
    if method == "zscore":
        loc, scale, ref = jnp.mean(s), jnp.std(s), empty
    elif method == "robust":
        q1, med, q3 = jnp.quantile(s, jnp.array([0.25, 0.5, 0.75], s.dtype))
        loc, scale, ref = med, (q3 - q1) / 1.349, empty
    else:
        loc, scale, ref = jnp.zeros((), s.dtype), jnp.ones((), s.dtype), jnp.sort(s)
    scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
    return Normalizer(loc=loc, scale=scale, reference=ref, method=method)


def normalize(normalizer: Normalizer, scores: Array | AnomalyScores) -> Array:
    """Applies a fitted Normalizer to scores [B] (or an AnomalyScores) -> [B]."""
    if not isinstance(normalizer, Normalizer):
        raise TypeError(f"normalizer must be a Normalizer; got {type(normalizer).__name__}")
    s = _as_scores(scores, "scores")
    if normalizer.method == "rank":
        ref = normalizer.reference
        lo = jnp.searchsorted(ref, s, side="left")
        hi = jnp.searchsorted(ref, s, side="right")
        return (lo + hi).astype(ref.dtype) / (2.0 * ref.shape[0])
    return (s - normalizer.loc) / normalizer.scale


def ensemble(
    list_of_scores: Sequence[Array | AnomalyScores],
    list_of_normalizers: Sequence[Normalizer],
    *,
    weights: Sequence[float] | Array | None = None,
) -> Array:
    """Combines several paradigms: the weighted mean of their normalised scores.

    Args:
      list_of_scores: P score arrays [B] (or AnomalyScores) for the same samples.
      list_of_normalizers: P Normalizers fitted on each paradigm's training scores. Use one method
        for all so the normalised scales agree.
      weights: optional P non-negative weights (not all zero); equal weights by default.

    Returns:
      [B] combined scores.
    """
    if len(list_of_scores) != len(list_of_normalizers):
        raise ValueError(
            f"list_of_scores and list_of_normalizers must have the same length; got "
            f"{len(list_of_scores)} and {len(list_of_normalizers)}")
    if not list_of_scores:
        raise ValueError("ensemble needs at least one score array; got none")
    z = [normalize(n, s) for s, n in zip(list_of_scores, list_of_normalizers)]
    shapes = {tuple(v.shape) for v in z}
    if len(shapes) != 1:
        raise ValueError(f"every score array must have the same shape [B]; got {sorted(shapes)}")
    z = jnp.stack(z)  # [P, B]
    if weights is None:
        w = jnp.ones((z.shape[0],), z.dtype)
    else:
        w = jnp.asarray(weights, z.dtype)
        if w.shape != (z.shape[0],):
            raise ValueError(f"weights must have shape ({z.shape[0]},); got {tuple(w.shape)}")
        if not _is_traced(w):
            wn = np.asarray(w)
            if (wn < 0).any() or not wn.sum() > 0 or not np.isfinite(wn).all():
                raise ValueError(f"weights must be finite, non-negative and not all zero; got {wn}")
    return jnp.tensordot(w, z, axes=1) / jnp.sum(w)


# ------------------------------------------------------------------------------------------------
# batching
# ------------------------------------------------------------------------------------------------
def batched(
    fn: Callable[..., Any],
    x: Array,
    *,
    batch_size: int = 256,
    key: PRNGKey | None = None,
    batch_kwargs: Mapping[str, Array] | None = None,
    jit: bool = True,
    **kwargs: Any,
) -> Any:
    """Applies a scorer over fixed-size batches of x and concatenates the results.

    The last batch is padded (with copies of the last row) to batch_size, so `fn` is traced and
    compiled once; per-batch outputs are moved to host memory as they come, so device memory stays
    flat in N. Example: `batched(functools.partial(score_norm, score_fn, sde), x, ts=(0.1,))`.

    Args:
      fn: fn(x_batch, **kwargs) -> AnomalyScores, an array [b, ...] or any pytree of arrays with a
        leading batch axis (None leaves are kept).
      x: [N, ...] inputs.
      batch_size: rows per call.
      key: optional PRNG key, passed to fn as `key=fold_in(key, batch_index)` (independent draws
        per batch; results then differ from one unbatched call, which draws jointly).
      batch_kwargs: per-sample arrays [N, ...] sliced and padded alongside x (e.g. {"observed": m}).
      jit: compile fn once with jax.jit (kwargs are closed over as constants).
      **kwargs: further keyword arguments passed unchanged to every call.

    Returns:
      The outputs of fn concatenated along the batch axis to N rows, as host (NumPy) arrays inside
      the same pytree structure (e.g. an AnomalyScores).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable; got {type(fn).__name__}")
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have shape [N, ...] with N >= 1; got {tuple(x.shape)}")
    batch_size = _check_positive_int(batch_size, "batch_size")
    n = x.shape[0]
    batch_kwargs = dict(batch_kwargs or {})
    for name, v in batch_kwargs.items():
        if not hasattr(v, "shape") or v.ndim < 1 or v.shape[0] != n:
            raise ValueError(
                f"batch_kwargs[{name!r}] must have leading dimension N={n}; got "
                f"{getattr(v, 'shape', type(v).__name__)}")
    bs = min(batch_size, n)

    def call(xb, kb, bkw):
        if kb is not None:
            return fn(xb, key=kb, **bkw, **kwargs)
        return fn(xb, **bkw, **kwargs)

    call_fn = jax.jit(call) if jit else call

    outputs = []
    for i, start in enumerate(range(0, n, bs)):
        stop = min(start + bs, n)

        def take(v, start=start, stop=stop):
            chunk = v[start:stop]
            if stop - start < bs:  # pad with copies of the last row: finite, in-distribution shape
                reps = jnp.repeat(chunk[-1:], bs - (stop - start), axis=0)
                chunk = jnp.concatenate([jnp.asarray(chunk), reps], axis=0)
            return chunk

        kb = None if key is None else jax.random.fold_in(key, i)
        out = call_fn(take(x), kb, {name: take(v) for name, v in batch_kwargs.items()})
        outputs.append(jax.tree_util.tree_map(lambda o, m=stop - start: np.asarray(o)[:m], out))
    return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts, axis=0), *outputs)
