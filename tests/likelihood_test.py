"""Tests of adiff.likelihood against closed-form Gaussian-mixture densities.

Time budget: ~90 s on one CPU core (compilation dominates: each distinct score_fn / sde / option
set is one compile, so the jitted score functions and inputs are built once per module).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

from adiff import analytic, likelihood
from adiff import sde as sde_lib

EPS = 1e-5
B = 16


def _mixture(d: int) -> analytic.GaussianMixture:
    rng = np.random.default_rng(d)
    means = rng.normal(0.0, 1.0, (3, d))
    variances = rng.uniform(0.05, 0.3, (3, d))
    return analytic.GaussianMixture.create([0.5, 0.3, 0.2], means, variances)


def _points(gm: analytic.GaussianMixture, n: int, seed: int = 0) -> jax.Array:
    """n - 2 samples of the mixture plus two outliers far from every component."""
    x = gm.sample(jax.random.key(seed), n - 2)
    far = jnp.stack([jnp.full((gm.dim,), 3.5), jnp.full((gm.dim,), -3.0)])
    return jnp.concatenate([x, far])


GM2 = _mixture(2)
GM8 = _mixture(8)
SDES = {
    "vp": sde_lib.VPSDE(),
    "subvp": sde_lib.SubVPSDE(),
    "ve": sde_lib.VESDE(),
}


class _Traced:
    """A score function that counts how often it is traced (a Python side effect)."""

    def __init__(self, fn):
        self.fn = fn
        self.traces = 0

    def __call__(self, x, t):
        self.traces += 1
        return self.fn(x, t)


def _truth(gm, sde, x):
    return gm.log_prob_t(sde, x, jnp.full((x.shape[0],), EPS))


# ---------------------------------------------------------------------------------------------
# Exact divergence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,solver", [("vp", "tsit5"), ("subvp", "dopri5"), ("ve", "tsit5")])
def test_exact_matches_closed_form_and_does_not_recompile(name, solver):
    sde = SDES[name]
    score_fn = _Traced(GM2.score_fn(sde))
    prior = GM2.prior_logp_fn(sde)
    x = _points(GM2, B, seed=0)
    out = likelihood.log_prob(score_fn, sde, x, eps=EPS, prior_logp=prior, solver=solver)
    err = np.abs(np.asarray(out.logp - _truth(GM2, sde, x)))
    assert err.max() < 1e-2, err
    assert out.logp.shape == out.prior_logp.shape == out.delta_logp.shape == (B,)
    np.testing.assert_allclose(out.logp, out.prior_logp + out.delta_logp, rtol=1e-6)
    np.testing.assert_array_equal(out.stderr, np.zeros(B))
    assert out.nfe.dtype == jnp.int32 and 20 < int(out.nfe) < 4096 * 6
    traces = score_fn.traces
    assert traces > 0

    # Second call: same score_fn object, sde and shapes, new values: no re-trace, still exact.
    x2 = _points(GM2, B, seed=1)
    out2 = likelihood.log_prob(score_fn, sde, x2, eps=EPS, prior_logp=prior, solver=solver)
    assert score_fn.traces == traces
    err2 = np.abs(np.asarray(out2.logp - _truth(GM2, sde, x2)))
    assert err2.max() < 1e-2, err2


def test_nfe_counts_score_evaluations():
    sde = SDES["vp"]
    calls = {"n": 0}

    def count(x):
        calls["n"] += 1
        return x

    @jax.custom_jvp
    def counted(x):
        return io_callback(count, jax.ShapeDtypeStruct(x.shape, x.dtype), x, ordered=True)

    @counted.defjvp
    def _counted_jvp(primals, tangents):
        return counted(primals[0]), tangents[0]

    base = GM2.score_fn(sde)
    out = likelihood.log_prob(lambda x, t: base(counted(x), t), sde, _points(GM2, 4), rtol=1e-4,
                              atol=1e-4)
    jax.block_until_ready(out)
    assert int(out.nfe) == calls["n"]


def test_exact_chunked_matches_unchunked_and_default_prior_is_approximate():
    sde = SDES["vp"]
    score_fn = GM8.score_fn(sde)
    prior = GM8.prior_logp_fn(sde)
    x = _points(GM8, B)
    truth = _truth(GM8, sde, x)
    full = likelihood.log_prob(score_fn, sde, x, prior_logp=prior)
    chunked = likelihood.log_prob(score_fn, sde, x, prior_logp=prior, chunk_size=3)
    assert np.abs(np.asarray(full.logp - truth)).max() < 1e-2
    np.testing.assert_allclose(chunked.logp, full.logp, atol=1e-3)
    # The N(0, I) prior is not p_T: same path, so same delta_logp, but a different prior term.
    default = likelihood.log_prob(score_fn, sde, x)
    np.testing.assert_allclose(default.delta_logp, full.delta_logp, atol=1e-3)
    assert np.abs(np.asarray(default.logp - full.logp)).max() > 1e-3


def test_per_sample_max_norm_beats_rms_norm_on_the_worst_sample():
    # With diffrax's RMS norm each sample's log-density is 1/(B (D+1)) of the error norm, so
    # the worst sample drifts; the per-sample max norm keeps every sample within tolerance.
    sde = SDES["vp"]
    score_fn = GM8.score_fn(sde)
    prior = GM8.prior_logp_fn(sde)
    x = _points(GM8, B)
    truth = np.asarray(_truth(GM8, sde, x))
    worst = {}
    for norm in likelihood.ERROR_NORMS:
        out = likelihood.log_prob(score_fn, sde, x, prior_logp=prior, rtol=1e-4, atol=1e-4,
                                  error_norm=norm)
        worst[norm] = np.abs(np.asarray(out.logp) - truth).max()
    assert worst["max"] < 1.5e-2, worst
    assert worst["rms"] > 2 * worst["max"], worst


# ---------------------------------------------------------------------------------------------
# Hutchinson
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hutch_setup():
    sde = SDES["vp"]
    score_fn = GM8.score_fn(sde)
    prior = GM8.prior_logp_fn(sde)
    x = _points(GM8, B)
    return sde, score_fn, prior, x, np.asarray(_truth(GM8, sde, x))


def test_hutchinson_error_shrinks_with_probes_and_stderr_is_calibrated(hutch_setup):
    sde, score_fn, prior, x, truth = hutch_setup
    errs, stderrs = {}, {}
    # n_probes >= 4: with 2 Rademacher probes in D = 8, v and -v (same estimate) are likely.
    for n_probes, n_keys in [(4, 4), (64, 1)]:
        e, s = [], []
        for k in range(n_keys):
            out = likelihood.log_prob(score_fn, sde, x, jax.random.key(k), divergence="hutchinson",
                                      n_probes=n_probes, prior_logp=prior)
            e.append(np.asarray(out.logp) - truth)
            s.append(np.asarray(out.stderr))
        errs[n_probes], stderrs[n_probes] = np.concatenate(e), np.concatenate(s)
        assert np.all(np.isfinite(stderrs[n_probes])) and np.all(stderrs[n_probes] > 0)
    rms = {n: math.sqrt(np.mean(e ** 2)) for n, e in errs.items()}
    # Variance ~ 1/n_probes: 16x more probes should cut the RMS error ~4x; ask for > 2x.
    assert rms[64] < rms[4] / 2, rms
    # The reported stderr matches the observed spread (within a factor 2).
    for n in errs:
        ratio = rms[n] / math.sqrt(np.mean(stderrs[n] ** 2))
        assert 0.5 < ratio < 2.0, (n, ratio)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(hutch_setup, probe):
    sde, score_fn, prior, x, truth = hutch_setup
    out = likelihood.log_prob(score_fn, sde, x, jax.random.key(7), divergence="hutchinson",
                              n_probes=64, probe=probe, prior_logp=prior)
    err = np.asarray(out.logp) - truth
    stderr = np.asarray(out.stderr)
    # The mean error over B samples is within 4 standard errors of 0 (plus the ODE tolerance).
    bound = 4 * math.sqrt(np.sum(stderr ** 2)) / B + 1e-2
    assert abs(err.mean()) < bound, (err.mean(), bound)
    assert np.all(np.abs(err) < 6 * stderr + 1e-2), (err, stderr)


def test_hutchinson_single_probe_has_nan_stderr(hutch_setup):
    sde, score_fn, prior, x, truth = hutch_setup
    out = likelihood.log_prob(score_fn, sde, x[:4], jax.random.key(0), divergence="hutchinson")
    assert np.all(np.isnan(out.stderr))
    assert np.all(np.isfinite(out.logp))


# ---------------------------------------------------------------------------------------------
# Bits per dimension
# ---------------------------------------------------------------------------------------------


def test_bits_per_dim_matches_discretised_closed_form():
    sde = SDES["vp"]
    # A broad mixture on [-1, 1]: its density barely changes within one bin of width 2/256.
    gm = analytic.GaussianMixture.create([0.6, 0.4], [[-0.3, 0.2], [0.4, -0.1]], 0.1)
    y = jnp.clip(gm.sample(jax.random.key(3), 8), -0.99, 0.99)
    x_uint8 = jnp.floor((y + 1.0) / 2.0 * 256).astype(jnp.uint8)
    bpd = likelihood.bits_per_dim(gm.score_fn(sde), sde, x_uint8, jax.random.key(0),
                                  prior_logp=gm.prior_logp_fn(sde))
    assert bpd.shape == (8,) and np.all(np.isfinite(bpd))
    # -log2 P(bin) / D with P(bin) ~ p(bin centre) * width^D, width = 2 / 256.
    centres = -1.0 + (x_uint8.astype(jnp.float32) + 0.5) * (2.0 / 256)
    expected = -(_truth(gm, sde, centres) + 2 * math.log(2.0 / 256)) / (2 * math.log(2.0))
    np.testing.assert_allclose(bpd, expected, atol=0.02)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x,kwargs,error,match",
    [
        (np.zeros((4,), np.float32), {}, ValueError, "rank"),
        (np.zeros((4, 2), np.int32), {}, TypeError, "floating"),
        (np.full((4, 2), np.nan, np.float32), {}, ValueError, "finite"),
        (np.zeros((0, 2), np.float32), {}, ValueError, "non-empty"),
        (np.zeros((4, 2), np.float32), {"divergence": "trace"}, ValueError, "divergence"),
        (np.zeros((4, 2), np.float32), {"probe": "normal"}, ValueError, "probe"),
        (np.zeros((4, 2), np.float32), {"solver": "euler"}, ValueError, "solver"),
        (np.zeros((4, 2), np.float32), {"divergence": "hutchinson", "n_probes": 0}, ValueError,
         "n_probes"),
        (np.zeros((4, 2), np.float32), {"divergence": "hutchinson"}, ValueError, "key"),
        (np.zeros((4, 2), np.float32), {"eps": 1.5}, ValueError, "eps"),
        (np.zeros((4, 2), np.float32), {"rtol": -1.0}, ValueError, "rtol"),
        (np.zeros((4, 2), np.float32), {"chunk_size": 0}, ValueError, "chunk_size"),
        (np.zeros((4, 2), np.float32), {"prior_logp": 3}, TypeError, "prior_logp"),
    ],
)
def test_log_prob_validation(x, kwargs, error, match):
    sde = SDES["vp"]
    with pytest.raises(error, match=match):
        likelihood.log_prob(GM2.score_fn(sde), sde, x, **kwargs)


def test_bits_per_dim_validation():
    sde = SDES["vp"]
    score_fn = GM2.score_fn(sde)
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="integer"):
        likelihood.bits_per_dim(score_fn, sde, np.zeros((2, 2), np.float32), key)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        likelihood.bits_per_dim(score_fn, sde, np.full((2, 2), 16, np.uint8), key, num_bins=16)
    with pytest.raises(ValueError, match="data_range"):
        likelihood.bits_per_dim(score_fn, sde, np.zeros((2, 2), np.uint8), key,
                                data_range=(1.0, -1.0))
    with pytest.raises(TypeError, match="sde"):
        likelihood.log_prob(score_fn, "vp", np.zeros((2, 2), np.float32))
