"""End to end on a 2-D Gaussian mixture: fit loop -> trained score model -> sampler and likelihood.

The exact score of the mixture is known, so the trained model is judged against truth: its DSM
loss approaches the exact score's, its DDIM samples match the data (MMD), and its log-likelihood
ranks held-out outliers below inliers and tracks the closed-form log-density.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adiff import analytic, likelihood, losses, parameterization, sde as sde_lib, solvers
from adiff.nets.mlp import ResidualMLP
from adiff.training import trainer


def _mmd(x, y, bandwidth=0.5):
    def k(a, b):
        d = jnp.sum((a[:, None] - b[None]) ** 2, -1)
        return jnp.exp(-d / (2 * bandwidth ** 2))
    return float(jnp.mean(k(x, x)) + jnp.mean(k(y, y)) - 2 * jnp.mean(k(x, y)))


@pytest.fixture(scope="module")
def trained():
    sde = sde_lib.VPSDE()
    gm = analytic.GaussianMixture.create([0.4, 0.6], [[-1.5, 0.0], [1.0, 1.0]], [[0.15, 0.3], [0.3, 0.1]])
    data = np.asarray(gm.sample(jax.random.key(0), 4096))
    net = ResidualMLP(features=64, num_blocks=2, time_dim=32)
    params = net.init(jax.random.key(1), jnp.zeros((1, 2)), jnp.zeros((1,)))

    def loss_fn(p, batch, key):
        return losses.dsm_loss(lambda x, t: net.apply(p, x, t), sde, batch, key).loss, {}

    cfg = trainer.TrainConfig(num_steps=2500, batch_size=256, learning_rate=3e-3, warmup_steps=100,
                              ema_decay=0.99, log_every=500, checkpoint_every=2500)
    res = trainer.fit(loss_fn, params, data, config=cfg, progress=False)
    model_score = parameterization.score_fn_from(lambda x, t: net.apply(res.state.ema_params, x, t), sde, "eps")
    return sde, gm, net, res, model_score


@pytest.mark.slow
def test_dsm_loss_approaches_the_exact_scores(trained):
    sde, gm, net, res, _ = trained
    x0 = gm.sample(jax.random.key(5), 20000)
    key = jax.random.key(6)  # the same noise and times for both
    model = losses.dsm_loss(lambda x, t: net.apply(res.state.ema_params, x, t), sde, x0, key).loss
    exact_eps = lambda x, t: -sde.sigma(t)[:, None] * gm.score_t(sde, x, t)
    oracle = losses.dsm_loss(exact_eps, sde, x0, key).loss
    untrained = losses.dsm_loss(lambda x, t: jnp.zeros_like(x), sde, x0, key).loss
    assert float(model) < float(oracle) + 0.1 * (float(untrained) - float(oracle))


@pytest.mark.slow
def test_samples_match_the_data(trained):
    sde, gm, _, _, score_fn = trained
    out = jax.jit(lambda x: solvers.ddim(score_fn, sde, x, num_steps=50))(
        sde.prior_sample(jax.random.key(7), (1500, 2)))
    ref_a = gm.sample(jax.random.key(8), 1500)
    ref_b = gm.sample(jax.random.key(9), 1500)
    baseline = _mmd(ref_a, ref_b)  # sampling noise of two true sample sets
    wrong = _mmd(ref_a, ref_b * 1.3)  # a visibly wrong distribution
    got = _mmd(out.x, ref_a)
    assert got < baseline + 0.2 * (wrong - baseline), (got, baseline, wrong)


@pytest.mark.slow
def test_log_prob_ranks_outliers_and_tracks_truth(trained):
    sde, gm, _, _, score_fn = trained
    inliers = gm.sample(jax.random.key(10), 64)
    outliers = jax.random.uniform(jax.random.key(11), (64, 2), minval=-4.0, maxval=4.0)
    outliers = outliers[gm.log_prob(outliers) < -8.0][:16]
    x = jnp.concatenate([inliers, outliers])
    lp = likelihood.log_prob(score_fn, sde, x, divergence="exact", rtol=1e-4, atol=1e-4).logp
    lp_in, lp_out = np.asarray(lp[:64]), np.asarray(lp[64:])
    assert np.mean(lp_out[:, None] < lp_in[None, :]) > 0.95
    truth = np.asarray(gm.log_prob(inliers))
    assert np.corrcoef(lp_in, truth)[0, 1] > 0.8
