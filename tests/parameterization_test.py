"""Parameterization conversions are mutually consistent and recover the exact score."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adiff import analytic, parameterization as P, sde as sde_lib


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.SubVPSDE(), sde_lib.VESDE()])
@pytest.mark.parametrize("kind", P.PARAMETERIZATIONS)
def test_target_roundtrip(sde, kind):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x0 = jax.random.normal(k1, (16, 3))
    t = jax.random.uniform(k2, (16,), minval=0.05, maxval=1.0)
    xt, eps = sde.perturb(k3, x0, t)
    a, s = sde.alpha(t), sde.sigma(t)
    out = P.target(x0, eps, a, s, kind)  # the output a perfect network would give for this pair
    np.testing.assert_allclose(P.to_eps(out, xt, a, s, kind), eps, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(P.to_x0(out, xt, a, s, kind), x0, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_score_fn_from_recovers_exact_gmm_score(kind):
    sde = sde_lib.VPSDE()
    gm = analytic.GaussianMixture.create([0.5, 0.5], [[-1.0, 0.0], [1.0, 1.0]], 0.3)
    exact = gm.score_fn(sde)

    def model_fn(x, t):  # an oracle network of the given kind built from the exact score
        a, s = sde.alpha(t), sde.sigma(t)
        eps = -s[:, None] * exact(x, t)
        x0 = (x - s[:, None] * eps) / a[:, None]
        return P.target(x0, eps, a, s, kind)

    x = gm.sample(jax.random.key(1), 8)
    t = jnp.linspace(0.1, 0.9, 8)
    np.testing.assert_allclose(P.score_fn_from(model_fn, sde, kind)(x, t), exact(x, t), rtol=1e-3, atol=1e-3)


def test_unknown_parameterization():
    with pytest.raises(ValueError, match="parameterization"):
        P.score_fn_from(lambda x, t: x, sde_lib.VPSDE(), "noise")


def test_gmm_score_is_gradient_of_log_density():
    sde = sde_lib.VESDE()
    gm = analytic.GaussianMixture.create([0.2, 0.8], [[0.0, 2.0], [1.0, -1.0]], [[0.2, 0.5], [1.0, 0.1]])
    x = gm.sample(jax.random.key(2), 6)
    t = jnp.linspace(0.01, 0.5, 6)
    g = jax.grad(lambda x: gm.log_prob_t(sde, x, t).sum())(x)
    np.testing.assert_allclose(gm.score_t(sde, x, t), g, rtol=1e-4, atol=1e-5)
