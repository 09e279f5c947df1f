"""Anomaly scorers on analytic Gaussian-mixture data with the exact score (adiff.analytic).

Every paradigm must rank planted outliers above inliers; density must equal the closed-form
-log p_eps(x); DTE-NP must reproduce the reference estimator; normalisers and batching are checked
against direct computations. Time budget: about 120 s on one CPU core (see --durations).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from adiff import analytic, scoring
from adiff import sde as sde_lib

VP = sde_lib.VPSDE()
VE = sde_lib.VESDE()
D = 4
# Three components whose coordinates are tied together: any 3 coordinates determine the 4th, so
# an outlier that breaks the pattern is detectable by density, score, reconstruction, DTE and
# imputation alike.
GM = analytic.GaussianMixture.create(
    jnp.ones(3), jnp.array([[2.0, 2, 2, 2], [-2, -2, -2, -2], [2, -2, 2, -2]]), 0.1)
N_IN, N_OUT = 64, 64


def _data():
    x_in = GM.sample(jax.random.key(0), N_IN)
    # Outliers: (a) an inlier with one coordinate's sign flipped (distance 4 from every mean),
    # (b) points near the origin, between the components.
    flip = jnp.where(jnp.arange(D)[None] == (jnp.arange(N_OUT // 2) % D)[:, None], -1.0, 1.0)
    x_a = x_in[: N_OUT // 2] * flip
    x_b = 0.3 * jax.random.normal(jax.random.key(1), (N_OUT // 2, D))
    x = jnp.concatenate([x_in, x_a, x_b])
    y = np.r_[np.zeros(N_IN), np.ones(N_OUT)]
    return x, y


X, Y = _data()
SCORE_VP = GM.score_fn(VP)
SCORE_VE = GM.score_fn(VE)


def _auroc(out):
    s = np.asarray(out.scores if isinstance(out, scoring.AnomalyScores) else out)
    assert s.shape == (X.shape[0],) and np.isfinite(s).all()
    return roc_auc_score(Y, s)


# ---------------------------------------------------------------------------------------------
# reconstruction
# ---------------------------------------------------------------------------------------------
def test_reconstruction_ranks_outliers_and_is_jittable():
    fn = functools.partial(scoring.reconstruction, SCORE_VP, VP, t0=(0.2,), num_steps=10)
    out = jax.jit(fn)(X, jax.random.key(2))
    assert _auroc(out) > 0.9
    assert out.maps.shape == X.shape
    np.testing.assert_allclose(out.scores, out.maps.mean(axis=1), rtol=1e-5)
    eager = fn(X, jax.random.key(2))
    np.testing.assert_allclose(eager.scores, out.scores, rtol=1e-4, atol=1e-6)


def test_reconstruction_repeats_t0_aggregate_and_features():
    key = jax.random.key(3)
    kw = dict(t0=(0.1, 0.3), num_steps=8, repeats=2)
    mean = scoring.reconstruction(SCORE_VP, VP, X, key, aggregate="mean", **kw)
    mx = scoring.reconstruction(SCORE_VP, VP, X, key, aggregate="max", **kw)
    assert _auroc(mean) > 0.9
    # Same draws, so the max over the two t0 values is >= their mean, strictly somewhere.
    assert np.all(np.asarray(mx.scores) >= np.asarray(mean.scores) - 1e-6)
    assert np.any(np.asarray(mx.scores) > np.asarray(mean.scores) + 1e-4)
    # A feature map 2x: squared distances scale by 4; maps kept (shape of x).
    doubled = scoring.reconstruction(SCORE_VP, VP, X, key, aggregate="mean",
                                     feature_fn=lambda v: 2.0 * v, **kw)
    np.testing.assert_allclose(doubled.scores, 4.0 * np.asarray(mean.scores), rtol=1e-4)
    # Features of another shape: no maps, absolute distance on the first two coordinates only.
    sub = scoring.reconstruction(SCORE_VP, VP, X, key, aggregate="mean", distance="absolute",
                                 feature_fn=lambda v: v[:, :2], **kw)
    assert sub.maps is None and sub.scores.shape == (X.shape[0],)


def test_reconstruction_under_vesde():
    out = scoring.reconstruction(SCORE_VE, VE, X, jax.random.key(4), t0=0.4, num_steps=10)
    assert _auroc(out) > 0.9


# ---------------------------------------------------------------------------------------------
# density
# ---------------------------------------------------------------------------------------------
def test_density_equals_closed_form_and_ranks_outliers():
    eps = 1e-5
    out = scoring.density(SCORE_VP, VP, X, divergence="exact", eps=eps,
                          prior_logp=GM.prior_logp_fn(VP))
    exact = -np.asarray(GM.log_prob_t(VP, X, jnp.full((X.shape[0],), eps)))
    assert out.maps is None
    np.testing.assert_allclose(out.scores, exact, atol=1e-2, rtol=0)
    assert _auroc(out) > 0.9


# ---------------------------------------------------------------------------------------------
# ELBO (variational bound on -log p)
# ---------------------------------------------------------------------------------------------
_ELBO_FN = {}


def _elbo_runs(score_fn, sde, x, *, reps=16, num_samples=2048):
    """The Monte Carlo bound under `reps` independent keys: [reps, B]. One compiled function per
    (score_fn, sde, num_samples); keyed by the function itself, which the cache keeps alive."""
    key = (score_fn, sde, num_samples)
    if key not in _ELBO_FN:
        _ELBO_FN[key] = jax.jit(lambda x, k: scoring.elbo(score_fn, sde, x, k,
                                                          num_samples=num_samples).scores)
    return np.stack([np.asarray(_ELBO_FN[key](x, jax.random.key(i))) for i in range(reps)])


def _se(runs):
    return runs.std(0, ddof=1) / np.sqrt(len(runs))


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.SubVPSDE(), sde_lib.VESDE(sigma_max=20.0)],
                         ids=["vp", "subvp", "ve"])
def test_elbo_is_tight_with_the_exact_score(sde):
    # With the exact score and a prior close to p_T, the bound equals -log p(x) (zero gap); an
    # error in any term (weights, drift divergence, prior, proposal density) shifts it by O(1).
    g = analytic.GaussianMixture.create([1.0], [[0.5, -1.0]], [[0.3, 0.8]])
    x = jnp.array([[0.5, -1.0], [1.5, 0.0], [0.0, -2.0]])
    runs = _elbo_runs(g.score_fn(sde), sde, x)
    mean, se = runs.mean(0), _se(runs)
    exact = -np.asarray(g.log_prob(x))
    assert np.all(se < 0.08), se  # precise enough that an O(1) error cannot hide
    np.testing.assert_array_less(np.abs(mean - exact), 4 * se + 0.02)


def test_elbo_bounds_the_cross_entropy_maps_and_shared_draws():
    x_in = X[:N_IN]
    exact = -np.asarray(GM.log_prob(x_in)).mean()
    # Exact score: the bound averages to the entropy E[-log p] (its standard error over keys,
    # from the mean over points: the draws are shared by the points, so their errors correlate) ...
    per_key = _elbo_runs(SCORE_VP, VP, x_in, reps=8).mean(1)
    se = _se(per_key)
    assert se < 0.1 and abs(per_key.mean() - exact) < 4 * se + 0.02, (per_key.mean(), exact, se)
    # ... and another model's bound averages above it (cross-entropy >= entropy).
    wrong = lambda x, t: 0.7 * SCORE_VP(x, t)
    assert _elbo_runs(wrong, VP, x_in, reps=4).mean() > exact + 0.5
    key = jax.random.key(3)
    out = scoring.elbo(SCORE_VP, VP, X, key, num_samples=256)
    assert _auroc(out) > 0.9
    assert out.maps.shape == X.shape
    np.testing.assert_allclose(np.asarray(out.maps).sum(1), out.scores, rtol=1e-5, atol=1e-4)
    # The draws depend on the key only: a chunk scores as it does inside the whole batch.
    part = scoring.elbo(SCORE_VP, VP, X[5:9], key, num_samples=256)
    np.testing.assert_allclose(part.scores, np.asarray(out.scores)[5:9], rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="num_samples"):
        scoring.elbo(SCORE_VP, VP, X, key, num_samples=0)
    with pytest.raises(ValueError, match="key"):
        scoring.elbo(SCORE_VP, VP, X, None)
    with pytest.raises(ValueError, match="eps"):
        scoring.elbo(SCORE_VP, VP, X, key, eps=1.0)


# ---------------------------------------------------------------------------------------------
# score norm
# ---------------------------------------------------------------------------------------------
def test_score_norm_matches_closed_form_and_ranks_outliers():
    out = scoring.score_norm(SCORE_VP, VP, X)
    assert _auroc(out) > 0.9
    assert out.maps.shape == X.shape
    t = 0.1
    single = scoring.score_norm(SCORE_VP, VP, X, ts=(t,))
    s = np.asarray(VP.sigma(t)) * np.asarray(GM.score_t(VP, X, jnp.full((X.shape[0],), t)))
    np.testing.assert_allclose(single.scores, np.linalg.norm(s, axis=1), rtol=1e-5)
    np.testing.assert_allclose(single.maps, np.abs(s), rtol=1e-5, atol=1e-7)
    mx = scoring.score_norm(SCORE_VP, VP, X, aggregate="max")
    assert np.all(np.asarray(mx.scores) >= np.asarray(out.scores) - 1e-6)


# ---------------------------------------------------------------------------------------------
# DTE
# ---------------------------------------------------------------------------------------------
def test_dte_nonparametric_ranks_outliers():
    x_train = GM.sample(jax.random.key(5), 500)
    for kw in (dict(), dict(statistic="mode"), dict(sde=VP), dict(sde=VE, target="sigma")):
        assert _auroc(scoring.dte_nonparametric(x_train, X, **kw)) > 0.9, kw


def test_dte_nonparametric_matches_reference_estimator():
    """DTE-NP of the paper's repository: argmax over its DDPM steps of the inverse-gamma density."""
    dim, k, steps = 6, 5, 300
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(103, dim)).astype(np.float32)
    x = np.concatenate([rng.normal(size=(30, dim)), 3 * rng.normal(size=(7, dim))]).astype(np.float32)
    dist, _ = NearestNeighbors(n_neighbors=k).fit(x_train).kneighbors(x)
    m = np.mean(dist.astype(np.float64) ** 2, axis=1)
    var = 1.0 - np.cumprod(1.0 - np.linspace(1e-4, 0.01, steps))
    logpdf = scipy.stats.invgamma.logpdf(var[None], a=0.5 * dim - 1, scale=m[:, None] / 2)
    ref_mode = np.argmax(logpdf, axis=1)
    # Small blocks exercise the padded query and training blocks and the running top-k.
    kw = dict(k=k, num_steps=steps, query_batch=16, train_batch=20)
    mode = np.asarray(scoring.dte_nonparametric(x_train, x, statistic="mode", **kw).scores)
    assert np.max(np.abs(mode - ref_mode)) <= 1 and np.mean(mode == ref_mode) > 0.9
    post = np.exp(logpdf - logpdf.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    mean_sigma = scoring.dte_nonparametric(x_train, x, statistic="mean", target="sigma", **kw)
    np.testing.assert_allclose(mean_sigma.scores, post @ np.sqrt(var), rtol=1e-3)
    # exclude_self: scoring the training set against itself skips the zero self-distance.
    dist_self, _ = NearestNeighbors(n_neighbors=k + 1).fit(x_train).kneighbors(x_train)
    m_self = np.mean(dist_self[:, 1:] ** 2, axis=1)
    own = scoring.dte_nonparametric(x_train, x_train, sde=VE, statistic="mode", target="sigma",
                                    exclude_self=True, num_steps=2000, **{"k": k})
    # The mode of v^(-D/2) exp(-m / 2v) is v = m / D (on a fine grid of the VE's noise levels).
    np.testing.assert_allclose(own.scores, np.sqrt(m_self / dim), rtol=2e-2)


def test_diffused_density_is_the_exact_mixture_nll_and_the_variance_the_loo_optimum():
    """diffused_density with k = N is -log of 1/N sum_i N(x; x_i, v I) (scipy, float64); the
    chosen variance maximises the leave-one-out likelihood over the grid (brute force); exact
    duplicates do not drag it to the smallest grid variance; k < N truncates the mixture."""
    from scipy.special import logsumexp
    rng = np.random.default_rng(5)
    a = (rng.normal(size=(60, 3)) * 0.4).astype(np.float32)
    b = np.concatenate([rng.normal(size=(6, 3)) * 0.4, rng.normal(size=(4, 3)) * 2.0]).astype(np.float32)
    v = 0.05
    want = -np.array([logsumexp(scipy.stats.multivariate_normal.logpdf(a.astype(np.float64), q, v))
                      for q in b.astype(np.float64)]) + np.log(60)
    got = np.asarray(scoring.diffused_density(a, b, variance=v, k=60).scores)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert got[6:].min() > got[:6].max()  # the far points are the least likely
    # Truncation keeps the nearest terms: -log p can only grow, and barely at k = 30.
    trunc = np.asarray(scoring.diffused_density(a, b, variance=v, k=30).scores)
    assert np.all(trunc >= got - 1e-4) and np.max(trunc - got) < 0.05
    # The leave-one-out choice against a brute force over the DTE grid.
    grid = 1.0 - np.cumprod(1.0 - np.linspace(1e-4, 0.01, 300))
    d2 = ((a[:, None].astype(np.float64) - a[None]) ** 2).sum(-1) + np.diag(np.full(60, np.inf))
    loo = [np.mean(logsumexp(-d2 / (2 * g), axis=1)) - 1.5 * np.log(g) for g in grid]
    chosen = scoring.diffusion_variance(a, k=59)
    assert grid[0] < chosen < grid[-1]
    np.testing.assert_allclose(chosen, grid[int(np.argmax(loo))], rtol=1e-5)
    assert scoring.diffusion_variance(np.concatenate([a, a]), k=59) > grid[0]  # every row twice
    # Default: the chosen variance, and training rows scored leave-one-out.
    np.testing.assert_allclose(scoring.diffused_density(a, b, k=59).scores,
                               scoring.diffused_density(a, b, k=59, variance=chosen).scores)
    self_scores = np.asarray(scoring.diffused_density(a, a, variance=v, k=59, exclude_self=True).scores)
    np.testing.assert_allclose(self_scores, -logsumexp(-d2 / (2 * v), axis=1) + np.log(59)
                               + 1.5 * np.log(2 * np.pi * v), rtol=1e-4)
    with pytest.raises(ValueError, match="variance"):
        scoring.diffused_density(a, b, variance=0.0)
    with pytest.raises(ValueError, match="k"):
        scoring.diffused_density(a, b, variance=v, k=61)


def test_diffused_density_maps_are_the_tweedie_error_and_groups_leave_out_their_rows():
    """maps=True: (x - E[x_0 | x_v = x])^2 per entry with the posterior weights of the mixture
    (brute force; blocked queries and training rows, [B, ...] shapes kept); groups leave a query's
    whole group out of its mixture (brute force), singleton groups are exclude_self."""
    from scipy.special import logsumexp, softmax
    rng = np.random.default_rng(6)
    a = rng.normal(size=(90, 2, 3)).astype(np.float32)
    b = rng.normal(size=(11, 2, 3)).astype(np.float32)
    v = 0.7
    fa, fb = a.reshape(90, -1).astype(np.float64), b.reshape(11, -1).astype(np.float64)
    d2 = ((fb[:, None] - fa[None]) ** 2).sum(-1)
    res = scoring.diffused_density(a, b, variance=v, k=90, maps=True, query_batch=4, train_batch=16)
    post = softmax(-d2 / (2 * v), axis=1) @ fa
    assert res.maps.shape == b.shape
    np.testing.assert_allclose(np.asarray(res.maps).reshape(11, -1), (fb - post) ** 2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.estimates).reshape(11, -1), post, rtol=1e-4, atol=1e-5)
    assert scoring.diffused_density(a, b, variance=v, k=90).estimates is None
    np.testing.assert_allclose(res.scores, scoring.diffused_density(a, b, variance=v, k=90).scores, rtol=1e-6)
    # Groups: rows of a's group g are left out of the query with label g.
    g_tr, g_q = np.arange(90) % 30, np.arange(11) * 2
    got = scoring.diffused_density(a, b, variance=v, k=80, maps=True, groups_train=g_tr, groups=g_q)
    keep = g_tr[None] != g_q[:, None]
    lse = np.array([logsumexp(-d2[i][keep[i]] / (2 * v)) for i in range(11)])
    want = -lse + np.log(87) + 3 * np.log(2 * np.pi * v)
    np.testing.assert_allclose(got.scores, want, rtol=1e-4)
    w = np.where(keep, np.exp(-(d2 - d2.min(1, keepdims=True)) / (2 * v)), 0.0)
    post = (w / w.sum(1, keepdims=True)) @ fa
    np.testing.assert_allclose(np.asarray(got.maps).reshape(11, -1), (fb - post) ** 2, rtol=1e-4, atol=1e-5)
    ones = scoring.diffused_density(a, a[:7], variance=v, k=20, groups_train=np.arange(90), groups=np.arange(7))
    np.testing.assert_allclose(ones.scores, scoring.diffused_density(a, a[:7], variance=v, k=20,
                                                                     exclude_self=True).scores, rtol=1e-6)
    with pytest.raises(ValueError, match="both"):
        scoring.diffused_density(a, b, variance=v, groups_train=g_tr)
    with pytest.raises(ValueError, match="exclude_self"):
        scoring.diffused_density(a, b, variance=v, groups_train=g_tr, groups=g_q, exclude_self=True)
    with pytest.raises(ValueError, match="complete data"):
        scoring.diffused_density(a, b, variance=v, maps=True,
                                 observed=np.where(np.arange(b.size).reshape(b.shape) == 0, 0, 1))


def test_dte_time_loss_labels_and_parametric_readout():
    ve = sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0)
    dim, b, t_max, bins = 4096, 512, 0.8, 7
    x0 = jnp.zeros((b, dim))
    log_ratio = np.log(ve.sigma_max / ve.sigma_min)

    def oracle_t(x_t):  # x_t = sigma_t z with D large: t from ||x_t||^2 / D = sigma_t^2
        s2 = jnp.mean(x_t * x_t, axis=1)
        return jnp.log(s2 / ve.sigma_min ** 2 + 1.0) / (2 * log_ratio)

    key = jax.random.key(6)
    zero = scoring.dte_time_loss(lambda v: jnp.zeros((v.shape[0],)), ve, x0, key, t_max=t_max)
    assert abs(float(zero) - t_max ** 2 / 3) < 0.1 * t_max ** 2 / 3  # E[t^2], t ~ U(0, t_max)
    good = scoring.dte_time_loss(lambda v: oracle_t(v)[:, None], ve, x0, key, t_max=t_max)
    assert float(good) < 1e-3 * float(zero)
    flat = scoring.dte_time_loss(lambda v: jnp.zeros((v.shape[0], bins)), ve, x0, key,
                                 t_max=t_max, num_bins=bins)
    np.testing.assert_allclose(float(flat), np.log(bins), rtol=1e-5)

    def oracle_logits(v):
        j = jnp.clip(jnp.floor(oracle_t(v) * bins / t_max), 0, bins - 1).astype(jnp.int32)
        return 10.0 * jax.nn.one_hot(j, bins)

    sharp = scoring.dte_time_loss(oracle_logits, ve, x0, key, t_max=t_max, num_bins=bins)
    assert float(sharp) < 0.3
    logits = jax.random.normal(jax.random.key(7), (5, bins))
    read = scoring.dte_parametric(lambda v: logits, jnp.zeros((5, 3)), num_bins=bins)
    np.testing.assert_allclose(read.scores, jax.nn.softmax(logits) @ np.arange(bins), rtol=1e-5)


class _TimeMLP(nn.Module):
    out: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(64)(x))
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(self.out)(x)


@pytest.mark.parametrize("num_bins", [None, 7])
def test_dte_parametric_training_reduces_loss_and_ranks_outliers(num_bins):
    model = _TimeMLP(1 if num_bins is None else num_bins)
    data = GM.sample(jax.random.key(8), 2048)
    params = model.init(jax.random.key(9), data[:1])
    tx = optax.adam(3e-3)

    def loss_fn(p, xb, k):
        return scoring.dte_time_loss(lambda v: model.apply(p, v), VP, xb, k, num_bins=num_bins)

    def step(carry, k):
        p, opt = carry
        k_idx, k_loss = jax.random.split(k)
        xb = data[jax.random.randint(k_idx, (256,), 0, data.shape[0])]
        loss, g = jax.value_and_grad(loss_fn)(p, xb, k_loss)
        upd, opt = tx.update(g, opt, p)
        return (optax.apply_updates(p, upd), opt), loss

    train = jax.jit(lambda p, keys: jax.lax.scan(step, (p, tx.init(p)), keys))
    eval_key = jax.random.key(10)
    before = float(loss_fn(params, data[:1024], eval_key))
    (trained, _), losses = train(params, jax.random.split(jax.random.key(11), 400))
    after = float(loss_fn(trained, data[:1024], eval_key))
    assert np.isfinite(np.asarray(losses)).all()
    assert after < 0.7 * before, (before, after)
    out = scoring.dte_parametric(lambda v: model.apply(trained, v), X, num_bins=num_bins)
    assert _auroc(out) > 0.9


# ---------------------------------------------------------------------------------------------
# imputation
# ---------------------------------------------------------------------------------------------
def test_imputation_grid_and_random_rank_outliers():
    # RePaint resampling (2) harmonises the replacement conditioning: AUROC 0.98-1.0 over seeds
    # (0.95 without); random masks: 0.96-0.98 with 8 masks (0.90-0.95 with 4).
    grid = scoring.imputation(SCORE_VP, VP, X, jax.random.key(12), mask_kind="grid",
                              num_masks=D, num_steps=10, solver_kwargs={"resample": 2})
    assert _auroc(grid) > 0.9
    # D grid masks of one entry each: every entry hidden once, so the score is the map's mean.
    np.testing.assert_allclose(grid.scores, np.asarray(grid.maps).mean(axis=1), rtol=1e-5)
    rand = scoring.imputation(SCORE_VP, VP, X, jax.random.key(13), mask_kind="random",
                              mask_ratio=0.3, num_masks=8, num_steps=10)
    assert _auroc(rand) > 0.9
    assert rand.maps.shape == X.shape and np.all(np.asarray(rand.maps) >= 0)


def test_imputation_never_uses_or_scores_missing_entries(monkeypatch):
    from adiff import solvers
    x = np.array(X[:16])
    observed = np.ones_like(x)
    observed[:, 1] = 0.0
    observed[::3, 3] = 0.0
    real_solve = solvers.solve

    def spy_solve(score_fn, sde, x_start, key, *, mask, known, **kw):
        # A missing entry passed as known would poison the output (and so the scores).
        leak = jnp.sum(jnp.where(jnp.asarray(observed) == 0, jnp.asarray(mask, x_start.dtype), 0.0))
        out = real_solve(score_fn, sde, x_start, key, mask=mask, known=known, **kw)
        return out.replace(x=out.x + 1e6 * leak)

    monkeypatch.setattr(solvers, "solve", spy_solve)
    key = jax.random.key(14)
    kw = dict(mask_kind="grid", num_masks=2, num_steps=6, observed=observed)
    x_nan = np.where(observed > 0, x, np.nan)
    x_big = np.where(observed > 0, x, 1e3)
    a = scoring.imputation(SCORE_VP, VP, x_nan, key, **kw)
    b = scoring.imputation(SCORE_VP, VP, x_big, key, **kw)
    np.testing.assert_array_equal(np.asarray(a.scores), np.asarray(b.scores))
    assert np.isfinite(np.asarray(a.scores)).all() and np.max(np.asarray(a.scores)) < 1e3
    monkeypatch.undo()
    assert np.all(np.asarray(a.maps)[observed == 0] == 0)
    # Masks shared along the last axis of a [B, 2, 2] layout.
    xr = jnp.reshape(X[:16], (16, 2, 2))
    out = scoring.imputation(SCORE_VP, VP, xr, key, mask_kind="grid", num_masks=2, num_steps=6,
                             mask_axes=(1,))
    assert out.maps.shape == xr.shape
    # Row j of the layout is hidden in mask j and both its entries are scored together.
    assert np.all((np.asarray(out.maps) > 0).sum(axis=(1, 2)) >= 2)


# ---------------------------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------------------------
def test_batched_equals_unbatched_and_compiles_once():
    traces = []

    def fn(xb, *, ts):
        traces.append(xb.shape)
        return scoring.score_norm(SCORE_VP, VP, xb, ts=ts)

    full = scoring.score_norm(SCORE_VP, VP, X, ts=(0.05, 0.2))
    out = scoring.batched(fn, X, batch_size=48, ts=(0.05, 0.2))  # 128 = 48 + 48 + 32 (padded)
    assert len(traces) == 1 and traces[0][0] == 48
    assert out.scores.shape == (X.shape[0],) and out.maps.shape == X.shape
    # jit fuses differently from eager: float32 rounding only.
    np.testing.assert_allclose(out.scores, full.scores, rtol=1e-4)
    np.testing.assert_allclose(out.maps, full.maps, rtol=1e-4, atol=1e-6)
    x_train = GM.sample(jax.random.key(15), 200)
    dte = functools.partial(scoring.dte_nonparametric, x_train)
    np.testing.assert_allclose(scoring.batched(dte, X, batch_size=50).scores,
                               dte(X).scores, rtol=1e-4)
    # Per-sample keyword arrays travel with their rows; keys are folded per batch.
    obs = np.ones(X.shape, np.float32)
    imp = scoring.batched(functools.partial(scoring.imputation, SCORE_VP, VP), X, batch_size=100,
                          key=jax.random.key(16), batch_kwargs={"observed": obs},
                          mask_kind="grid", num_masks=2, num_steps=4)
    assert imp.scores.shape == (X.shape[0],) and np.isfinite(imp.scores).all()


# ---------------------------------------------------------------------------------------------
# normalisers and ensembles
# ---------------------------------------------------------------------------------------------
def test_normalizers():
    rng = np.random.default_rng(1)
    train = (3.0 + 2.0 * rng.normal(size=500)).astype(np.float32)
    z = scoring.fit_normalizer(train, method="zscore")
    zt = np.asarray(scoring.normalize(z, train))
    np.testing.assert_allclose([zt.mean(), zt.std()], [0.0, 1.0], atol=1e-5)
    r = scoring.fit_normalizer(scoring.AnomalyScores(scores=jnp.asarray(train)), method="robust")
    q1, med, q3 = np.quantile(train, [0.25, 0.5, 0.75])
    np.testing.assert_allclose(scoring.normalize(r, np.array([med, q1, q3], np.float32)),
                               [0.0, -(med - q1) / ((q3 - q1) / 1.349), (q3 - med) / ((q3 - q1) / 1.349)],
                               atol=1e-4)
    ties = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 8.0], np.float32)
    rk = scoring.fit_normalizer(ties, method="rank")
    query = np.array([0.0, 1.0, 2.0, 2.5, 8.0, 9.0], np.float32)
    expected = [scipy.stats.percentileofscore(ties, q, kind="mean") / 100 for q in query]
    np.testing.assert_allclose(scoring.normalize(rk, query), expected, rtol=1e-6)
    const = scoring.fit_normalizer(np.full(10, 2.0, np.float32), method="zscore")
    np.testing.assert_allclose(scoring.normalize(const, np.array([3.0], np.float32)), [1.0])


def test_ensemble_is_weighted_mean_of_normalised_scores():
    rng = np.random.default_rng(2)
    tr1, tr2 = rng.normal(size=100).astype(np.float32), (5 * rng.normal(size=100)).astype(np.float32)
    s1, s2 = rng.normal(size=7).astype(np.float32), rng.normal(size=7).astype(np.float32)
    n1, n2 = scoring.fit_normalizer(tr1), scoring.fit_normalizer(tr2)
    z1 = (s1 - tr1.mean()) / tr1.std()
    z2 = (s2 - tr2.mean()) / tr2.std()
    np.testing.assert_allclose(scoring.ensemble([s1, s2], [n1, n2]), (z1 + z2) / 2, rtol=1e-4)
    np.testing.assert_allclose(
        scoring.ensemble([scoring.AnomalyScores(scores=jnp.asarray(s1)), s2], [n1, n2],
                         weights=[1.0, 3.0]), (z1 + 3 * z2) / 4, rtol=1e-4)
    # Ensembling the exact density and DTE on the test mixture keeps the ranking.
    x_train = GM.sample(jax.random.key(17), 300)
    dens_train = -GM.log_prob(x_train)
    dte_train = scoring.dte_nonparametric(x_train, x_train, exclude_self=True)
    combo = scoring.ensemble(
        [-GM.log_prob(X), scoring.dte_nonparametric(x_train, X)],
        [scoring.fit_normalizer(dens_train, method="rank"),
         scoring.fit_normalizer(dte_train, method="rank")])
    assert _auroc(combo) > 0.9 and float(jnp.min(combo)) >= 0 and float(jnp.max(combo)) <= 1


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def test_solver_names_match_the_solvers_module():
    from adiff import solvers
    assert set(scoring.SOLVERS) == set(solvers.METHODS)
    assert set(scoring.MASKED_SOLVERS) <= set(scoring.SOLVERS)


def test_validation_errors():
    key = jax.random.key(0)
    x = X[:4]
    rec = functools.partial(scoring.reconstruction, SCORE_VP, VP)
    with pytest.raises(ValueError, match="rank >= 2"):
        rec(jnp.ones(4), key)
    with pytest.raises(ValueError, match="finite"):
        rec(x.at[0, 0].set(jnp.nan), key)
    with pytest.raises(TypeError, match="floating"):
        rec(jnp.ones((4, 2), jnp.int32), key)
    for bad_t0 in (0.0, 1.5, (), (0.0005,)):
        with pytest.raises(ValueError, match="t0"):
            rec(x, key, t0=bad_t0)
    with pytest.raises(ValueError, match="solver"):
        rec(x, key, solver="rk4")
    with pytest.raises(ValueError, match="distance"):
        rec(x, key, distance="l3")
    with pytest.raises(ValueError, match="aggregate"):
        rec(x, key, aggregate="median")
    with pytest.raises(ValueError, match="repeats"):
        rec(x, key, repeats=0)
    with pytest.raises(ValueError, match="t_start"):
        rec(x, key, solver_kwargs={"t_start": 0.5})
    with pytest.raises(ValueError, match="ts"):
        scoring.score_norm(SCORE_VP, VP, x, ts=(2.0,))
    with pytest.raises(ValueError, match="key"):
        scoring.density(SCORE_VP, VP, x, divergence="hutchinson")
    with pytest.raises(ValueError, match="divergence"):
        scoring.density(SCORE_VP, VP, x, divergence="trace")
    with pytest.raises(ValueError, match="k"):
        scoring.dte_nonparametric(x[:3], x, k=5)
    with pytest.raises(ValueError, match="trailing shape"):
        scoring.dte_nonparametric(jnp.ones((10, 3)), x)
    with pytest.raises(ValueError, match="statistic"):
        scoring.dte_nonparametric(X, x, statistic="median")
    with pytest.raises(ValueError, match="t_max"):
        scoring.dte_time_loss(lambda v: v[:, 0], VP, x, key, t_max=2.0)
    with pytest.raises(ValueError, match="num_bins"):
        scoring.dte_time_loss(lambda v: v[:, :1], VP, x, key, num_bins=1)
    with pytest.raises(ValueError, match="num_bins"):
        scoring.dte_parametric(lambda v: v, x, num_bins=3)  # [B, 4] logits for 3 bins
    with pytest.raises(ValueError, match="regression"):
        scoring.dte_parametric(lambda v: v, x)
    imp = functools.partial(scoring.imputation, SCORE_VP, VP)
    with pytest.raises(ValueError, match="mask_ratio"):
        imp(x, key, mask_ratio=1.0)
    with pytest.raises(ValueError, match="mask_kind"):
        imp(x, key, mask_kind="checker")
    with pytest.raises(ValueError, match="num_masks"):
        imp(x, key, mask_kind="grid", num_masks=5)
    with pytest.raises(ValueError, match="observed"):
        imp(x, key, observed=jnp.full(x.shape, 0.5))
    with pytest.raises(ValueError, match="finite"):
        imp(x.at[0, 0].set(jnp.nan), key, observed=jnp.ones(x.shape))
    with pytest.raises(ValueError, match="solver"):
        imp(x, key, solver="pf_ode")  # no mask/known support
    with pytest.raises(ValueError, match="observed"):
        imp(x, key, observed=jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="mask_axes"):
        imp(x, key, mask_axes=(0,))
    with pytest.raises(ValueError, match="method"):
        scoring.fit_normalizer(np.ones(3, np.float32), method="minmax")
    with pytest.raises(ValueError, match="1-D"):
        scoring.fit_normalizer(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="finite"):
        scoring.fit_normalizer(np.array([1.0, np.inf], np.float32))
    n = scoring.fit_normalizer(np.arange(5, dtype=np.float32))
    with pytest.raises(ValueError, match="same length"):
        scoring.ensemble([np.ones(3, np.float32)], [n, n])
    with pytest.raises(ValueError, match="weights"):
        scoring.ensemble([np.ones(3, np.float32)] * 2, [n, n], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="batch_size"):
        scoring.batched(lambda v: v, x, batch_size=0)
    with pytest.raises(ValueError, match="batch_kwargs"):
        scoring.batched(lambda v, observed: v, x, batch_kwargs={"observed": jnp.ones((3, 4))})
