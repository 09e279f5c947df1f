"""Forward SDEs: closed-form marginals against Monte Carlo of the discretised SDE, and identities."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adiff import sde as sde_lib

SDES = {
    "vp": sde_lib.VPSDE(),
    "subvp": sde_lib.SubVPSDE(),
    "ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0),
}


@pytest.mark.parametrize("name", list(SDES))
def test_marginals_match_monte_carlo_of_discretised_sde(name):
    sde = SDES[name]
    n, num_steps, t_end = 20000, 400, 0.6
    dt = t_end / num_steps
    x0 = jnp.full((n, 1), 1.5)

    def body(i, carry):
        x, key = carry
        key, sub = jax.random.split(key)
        t = jnp.full((n,), i * dt)
        f, g = sde.discretize(x, t, dt)
        return x + f + sde_lib.broadcast_to_x(g, x) * jax.random.normal(sub, x.shape), key

    x, _ = jax.jit(lambda x: jax.lax.fori_loop(0, num_steps, body, (x, jax.random.key(0))))(x0)
    mean, std = sde.marginal(x0[:1], jnp.array([t_end]))
    np.testing.assert_allclose(np.mean(x), float(mean[0, 0]), atol=4 * float(std[0]) / np.sqrt(n) + 2e-3)
    np.testing.assert_allclose(np.std(x), float(std[0]), rtol=2e-2)


@pytest.mark.parametrize("name", list(SDES))
def test_moment_odes_hold(name):
    """d alpha/dt = f alpha and d sigma^2/dt = 2 f sigma^2 + g^2 (the linear SDE's moment equations)."""
    sde = SDES[name]
    t = jnp.linspace(0.01, 1.0, 17)
    dalpha = jax.vmap(jax.grad(lambda s: sde.alpha(s)))(t)
    dvar = jax.vmap(jax.grad(lambda s: sde.sigma(s) ** 2))(t)
    np.testing.assert_allclose(dalpha, sde.drift_coef(t) * sde.alpha(t), rtol=1e-4, atol=1e-5)
    rhs = 2 * sde.drift_coef(t) * sde.sigma(t) ** 2 + sde.diffusion(t) ** 2
    np.testing.assert_allclose(dvar, rhs, rtol=1e-3, atol=1e-5)


def test_sigma_is_accurate_near_zero_in_float32():
    vp = sde_lib.VPSDE()
    t = jnp.array([1e-6, 1e-5, 1e-4], jnp.float32)
    t64 = np.array([1e-6, 1e-5, 1e-4], np.float64)
    exact = np.sqrt(-np.expm1(-(0.1 * t64 + 0.5 * 19.9 * t64 ** 2)))  # float64 reference
    np.testing.assert_allclose(vp.sigma(t), exact, rtol=1e-4)
    naive = np.sqrt(1.0 - np.float32(vp.alpha(t)) ** 2)  # what 1 - alpha^2 gives in float32
    assert np.max(np.abs(naive / exact - 1)) > 1e-2


def test_prior_logp_is_the_prior_density_and_sampling_matches():
    for sde in SDES.values():
        z = sde.prior_sample(jax.random.key(1), (4000, 3))
        np.testing.assert_allclose(np.std(z), sde.prior_std(), rtol=3e-2)
        ref = jax.scipy.stats.norm.logpdf(z, scale=sde.prior_std()).sum(axis=1)
        np.testing.assert_allclose(sde.prior_logp(z), ref, rtol=1e-5)


def test_probability_flow_and_reverse_drift_use_the_score():
    sde = SDES["vp"]
    x = jnp.ones((2, 3))
    t = jnp.array([0.2, 0.7])
    score_fn = lambda x, t: -x
    g2 = (sde.diffusion(t) ** 2)[:, None]
    np.testing.assert_allclose(sde.reverse_drift(score_fn, x, t), sde.drift(x, t) + g2 * x, rtol=1e-6)
    np.testing.assert_allclose(sde.probability_flow_drift(score_fn, x, t),
                               sde.drift(x, t) + 0.5 * g2 * x, rtol=1e-6)


def test_sdes_are_static_pytrees_and_hashable():
    traces = []

    @jax.jit
    def f(sde, t):
        traces.append(1)
        return sde.sigma(t)

    f(SDES["vp"], jnp.ones(2))
    f(sde_lib.VPSDE(), jnp.ones(2))  # equal hyper-parameters: no retrace
    assert len(traces) == 1
    assert jax.tree_util.tree_leaves(SDES["ve"]) == []
    assert hash(sde_lib.VPSDE()) == hash(sde_lib.VPSDE())


@pytest.mark.parametrize("bad", [dict(beta_min=1.0, beta_max=0.5), dict(beta_min=-1.0)])
def test_invalid_vp_hyperparameters(bad):
    with pytest.raises(ValueError, match="beta"):
        sde_lib.VPSDE(**bad)


def test_invalid_ve_hyperparameters():
    with pytest.raises(ValueError, match="sigma_min"):
        sde_lib.VESDE(sigma_min=0.0)


def test_no_nans_in_large_fused_batches():
    """Regression: XLA CPU fused sqrt(-expm1(.)) into NaNs for SubVP at batch ~8000 under jit."""
    from adiff import analytic

    gm = analytic.GaussianMixture.create([0.5, 0.5], [[-1.0, 0.0], [1.0, 1.0]], 0.3)
    n = 8192
    x = gm.sample(jax.random.key(0), n)
    t = jax.random.uniform(jax.random.key(1), (n,), minval=1e-5, maxval=1.0)
    for sde in SDES.values():
        f = jax.jit(lambda x, t: gm.score_t(sde, x, t) * (sde.diffusion(t) ** 2)[:, None] * sde.sigma(t)[:, None])
        assert not np.isnan(np.asarray(f(x, t))).any()


def test_vp_discretize_is_valid_for_large_steps():
    vp = sde_lib.VPSDE()
    x = jnp.ones((3, 2))
    t = jnp.array([0.0, 0.5, 0.9])
    f, g = vp.discretize(x, t, 0.1)  # beta(t) dt > 1 here: the naive chain gives NaN
    assert np.isfinite(np.asarray(f)).all() and np.isfinite(np.asarray(g)).all()
    # one step of the chain has the exact transition's mean and variance
    ratio = vp.alpha(t + 0.1) / vp.alpha(t)
    np.testing.assert_allclose(1 + f[:, 0], ratio, rtol=1e-6)
    np.testing.assert_allclose(g ** 2, 1 - ratio ** 2, rtol=1e-5)
