"""Tests of adiff.losses against closed forms (Gaussian data has an exact score under every SDE)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adiff import losses
from adiff import sde as sde_lib
from adiff.analytic import GaussianMixture
from adiff.nets import ResidualMLP

KINDS = ("eps", "x0", "v", "score")
MU = np.array([0.5, -1.0], np.float32)
VAR = 0.3


def _from_score(s, x, alpha, sigma, kind):
    """The output of `kind` that corresponds to the score s at x."""
    a, sg = alpha[:, None], sigma[:, None]
    eps = -sg * s
    x0 = (x + sg * sg * s) / a
    return {"eps": eps, "x0": x0, "v": a * eps - sg * x0, "score": s}[kind]


def _exact_model(gm, sde, kind):
    def model_fn(x, t):
        return _from_score(gm.score_t(sde, x, t), x, sde.alpha(t), sde.sigma(t), kind)
    return model_fn


def _gauss():
    return GaussianMixture.create(jnp.ones((1,)), MU[None], VAR)


def _gmm():
    return GaussianMixture.create(jnp.array([0.3, 0.7]), jnp.array([[1.0, -1.0], [-1.0, 0.5]]),
                                  0.2)


def _closed_form(sde, t, kind, weighted):
    """Expected per-entry loss of the exact score for N(MU, VAR I) data at times t."""
    a = np.asarray(sde.alpha(t), np.float64)
    s = np.asarray(sde.sigma(t), np.float64)
    r = a * a * VAR / (a * a * VAR + s * s)  # E (eps_hat - z)^2 per entry
    if weighted:
        return np.asarray(losses.likelihood_weight(sde, t), np.float64) * r
    return {"eps": r, "x0": s * s * r / (a * a), "v": (a * a + s * s) ** 2 * r / (a * a),
            "score": r / (s * s)}[kind]


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.VESDE()], ids=["vp", "ve"])
def test_exact_score_loss_matches_closed_form(sde):
    gm = _gauss()
    n = 1200
    t_vals = jnp.array([0.05, 0.3, 0.7], jnp.float32)
    t = jnp.repeat(t_vals, n)
    x0 = gm.sample(jax.random.key(0), t.shape[0])
    for kind in KINDS:
        for weighted in (False, True):
            out = losses.dsm_loss(_exact_model(gm, sde, kind), sde, x0, jax.random.key(1),
                                  parameterization=kind, likelihood_weighting=weighted, t=t)
            np.testing.assert_array_equal(out.t, t)
            ps = np.asarray(out.per_sample).reshape(3, n)
            want = _closed_form(sde, t_vals, kind, weighted)
            se = ps.std(axis=1) / np.sqrt(n)
            assert np.all(np.abs(ps.mean(axis=1) - want) < 5 * se + 1e-6), (kind, weighted)
            # The check can fail: an output shifted by 0.5 misses the closed form.
            bad = losses.dsm_loss(lambda x, tt: _exact_model(gm, sde, kind)(x, tt) + 0.5, sde, x0,
                                  jax.random.key(1), parameterization=kind,
                                  likelihood_weighting=weighted, t=t)
            bad_ps = np.asarray(bad.per_sample).reshape(3, n)
            assert np.any(np.abs(bad_ps.mean(axis=1) - want) > 5 * se), (kind, weighted)


@pytest.mark.parametrize("kind", KINDS)
def test_exact_score_is_the_minimum(kind):
    """Shifting the exact output by delta raises the loss by delta^2 (the cross term averages 0)."""
    sde = sde_lib.VPSDE()
    gm = _gmm()
    x0 = gm.sample(jax.random.key(2), 4000)
    exact = _exact_model(gm, sde, kind)
    fn = jax.jit(lambda model_shift: losses.dsm_loss(
        lambda x, t: exact(x, t) + model_shift, sde, x0, jax.random.key(3),
        parameterization=kind, eps=1e-3).per_sample)
    base = np.asarray(fn(jnp.zeros((2,))))
    # The score output has a noisy cross term (variance ~ 1/sigma^2), so it needs larger shifts.
    scale = 4.0 if kind == "score" else 1.0
    for shift in ([0.3 * scale, 0.0], [-0.2 * scale, 0.25 * scale]):
        d = np.asarray(fn(jnp.array(shift))) - base
        want = np.mean(np.square(shift))
        se = d.std() / np.sqrt(d.size)
        assert se < want / 3
        assert d.mean() > 0
        assert abs(d.mean() - want) < 5 * se


def _quad_weighted(sde, eps):
    """(1 / (T - eps)) int_eps^T w(t) r(t) dt for N(MU, VAR I) data, on a fine log grid."""
    u = np.linspace(np.log(eps), 0.0, 200001)
    t = np.exp(u)
    f = _closed_form(sde, jnp.asarray(t, jnp.float32), "eps", True) * t
    return np.trapezoid(f, u) / (sde.T - eps)


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.VESDE()], ids=["vp", "ve"])
def test_importance_sampling_same_mean_lower_variance(sde):
    gm = _gauss()
    eps = 1e-3
    x0 = gm.sample(jax.random.key(4), 8192)
    model = _exact_model(gm, sde, "eps")
    fn = jax.jit(lambda key, imp: losses.dsm_loss(
        model, sde, x0, key, likelihood_weighting=True, importance_sampling=imp, eps=eps),
        static_argnums=1)
    uni, imp = fn(jax.random.key(5), False), fn(jax.random.key(6), True)
    pu, pi = np.asarray(uni.per_sample), np.asarray(imp.per_sample)
    su, si = pu.std() / np.sqrt(pu.size), pi.std() / np.sqrt(pi.size)
    truth = _quad_weighted(sde, eps)
    assert abs(pu.mean() - pi.mean()) < 4 * np.hypot(su, si)
    assert abs(pu.mean() - truth) < 4 * su
    assert abs(pi.mean() - truth) < 4 * si
    assert pi.var() < pu.var() / 4
    ti = np.asarray(imp.t)
    assert ti.min() >= eps and ti.max() <= sde.T
    # The proposal puts far more mass near t = 0 than the uniform one.
    assert np.mean(ti < 0.05) > 3 * np.mean(np.asarray(uni.t) < 0.05)


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.SubVPSDE(), sde_lib.VESDE()],
                         ids=["vp", "subvp", "ve"])
def test_importance_sampler_density(sde):
    """E_q[1/q] = T - eps and E_q[t] = int t w / int w: q is the sampler's exact density."""
    eps = 1e-4
    t, q = jax.jit(lambda k: losses.importance_sample_t(sde, k, 20000, eps=eps))(
        jax.random.key(7))
    t, q = np.asarray(t, np.float64), np.asarray(q, np.float64)
    inv = 1.0 / q
    assert abs(inv.mean() - (sde.T - eps)) < 4 * inv.std() / np.sqrt(inv.size)
    u = np.linspace(np.log(eps), 0.0, 100001)
    tg = np.exp(u)
    w = np.asarray(losses.likelihood_weight(sde, jnp.asarray(tg, jnp.float32)), np.float64) * tg
    mean_t = np.trapezoid(w * tg, u) / np.trapezoid(w, u)
    assert abs(t.mean() - mean_t) < 4 * t.std() / np.sqrt(t.size)
    assert abs(t.mean() - (eps + sde.T) / 2) > 0.1  # not uniform


def test_mask_ignores_unobserved_entries():
    sde = sde_lib.VPSDE()
    b, d = 64, 5
    x0 = jax.random.normal(jax.random.key(8), (b, d))
    mask = (jax.random.uniform(jax.random.key(9), (b, d)) < 0.6).astype(jnp.float32)
    mask = mask.at[0].set(0.0)  # a sample without observed entries has loss 0

    def model(x, t):  # element-wise, so unobserved x0 entries cannot leak into observed outputs
        return 0.7 * x

    def junk_model(x, t):
        return jnp.where(mask > 0, 0.7 * x, jnp.nan)

    x0_alt = jnp.where(mask > 0, x0, x0 + 100.0)
    key = jax.random.key(10)
    for kwargs in ({}, {"likelihood_weighting": True}, {"parameterization": "x0"}):
        ref = losses.dsm_loss(model, sde, x0, key, mask=mask, **kwargs)
        alt = losses.dsm_loss(junk_model, sde, x0_alt, key, mask=mask, **kwargs)
        np.testing.assert_allclose(alt.per_sample, ref.per_sample, rtol=1e-6)
        assert np.all(np.isfinite(ref.per_sample))
        assert float(ref.per_sample[0]) == 0.0
        # Without the mask the same change does alter the loss.
        full = losses.dsm_loss(model, sde, x0_alt, key, **kwargs)
        assert not np.allclose(full.per_sample, ref.per_sample)
    # Per-sample normalisation: "mean" = "sum" / number of observed entries.
    s = losses.dsm_loss(model, sde, x0, key, mask=mask, reduce="sum").per_sample
    m = losses.dsm_loss(model, sde, x0, key, mask=mask, reduce="mean").per_sample
    cnt = np.asarray(mask.sum(-1))
    np.testing.assert_allclose(np.asarray(m)[1:] * cnt[1:], np.asarray(s)[1:], rtol=1e-5)
    # A full mask equals no mask; a broadcastable [D] mask equals its broadcast.
    np.testing.assert_allclose(
        losses.dsm_loss(model, sde, x0, key, mask=jnp.ones((b, d))).loss,
        losses.dsm_loss(model, sde, x0, key).loss, rtol=1e-6)
    row = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(
        losses.dsm_loss(model, sde, x0, key, mask=row).per_sample,
        losses.dsm_loss(model, sde, x0, key, mask=jnp.broadcast_to(row, (b, d))).per_sample,
        rtol=1e-6)


def test_reduce_sum_is_entries_times_mean():
    sde = sde_lib.VESDE()
    x0 = jax.random.normal(jax.random.key(11), (8, 3, 4))
    model = lambda x, t: 0.1 * x
    key = jax.random.key(12)
    m = losses.dsm_loss(model, sde, x0, key)
    s = losses.dsm_loss(model, sde, x0, key, reduce="sum")
    np.testing.assert_allclose(s.per_sample, 12 * m.per_sample, rtol=1e-5)
    np.testing.assert_allclose(m.loss, np.mean(m.per_sample), rtol=1e-6)
    assert m.per_sample.shape == (8,) and m.t.shape == (8,) and m.loss.shape == ()


@pytest.mark.parametrize("kind,lw,imp", [("eps", False, False), ("x0", False, False),
                                         ("v", True, False), ("score", True, True)])
def test_gradients_are_finite(kind, lw, imp):
    sde = sde_lib.VPSDE()
    net = ResidualMLP(features=16, num_blocks=1, time_dim=8)
    x0 = jax.random.normal(jax.random.key(13), (32, 3))
    params = net.init(jax.random.key(14), x0, jnp.zeros((32,)))

    def loss_fn(p):
        return losses.dsm_loss(lambda x, t: net.apply(p, x, t), sde, x0, jax.random.key(15),
                               parameterization=kind, likelihood_weighting=lw,
                               importance_sampling=imp).loss

    grads = jax.grad(loss_fn)(params)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert float(jnp.sum(jnp.abs(grads["params"]["output"]["kernel"]))) > 0


def test_tiny_mlp_training_reduces_loss():
    sde = sde_lib.VPSDE()
    gm = GaussianMixture.create(jnp.ones((1,)), jnp.array([[1.0, -1.0]]), 0.25)
    net = ResidualMLP(features=32, num_blocks=2, time_dim=16)
    params = net.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    opt = optax.adam(3e-3)
    x_eval = gm.sample(jax.random.key(100), 4096)

    def eval_loss(p):
        return losses.dsm_loss(lambda x, t: net.apply(p, x, t), sde, x_eval,
                               jax.random.key(101)).loss

    @jax.jit
    def train(p):
        def step(carry, i):
            p, s = carry
            key = jax.random.fold_in(jax.random.key(1), i)
            kx, kl = jax.random.split(key)
            x0 = gm.sample(kx, 128)
            loss, g = jax.value_and_grad(lambda q: losses.dsm_loss(
                lambda x, t: net.apply(q, x, t), sde, x0, kl).loss)(p)
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), loss
        (p, _), hist = jax.lax.scan(step, (p, opt.init(p)), jnp.arange(400))
        return p, hist

    before = float(jax.jit(eval_loss)(params))
    trained, _ = train(params)
    after = float(jax.jit(eval_loss)(trained))
    # An untrained (zero) network has the eps loss E z^2 = 1; the exact score reaches
    # E_t[a^2 v / (a^2 v + s^2)], roughly 0.1 here.
    tt = jnp.linspace(1e-5, 1.0, 2001)
    a, s = sde.alpha(tt), sde.sigma(tt)
    optimum = float(jnp.mean(a * a * 0.25 / (a * a * 0.25 + s * s)))
    assert abs(before - 1.0) < 0.1
    assert after < 0.5 * before
    assert after > optimum - 0.05
    assert after < optimum + 0.15


def test_validation_errors():
    sde = sde_lib.VPSDE()
    x0 = jnp.zeros((4, 3))
    model = lambda x, t: x
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="parameterization"):
        losses.dsm_loss(model, sde, x0, key, parameterization="noise")
    with pytest.raises(ValueError, match="mask"):
        losses.dsm_loss(model, sde, x0, key, mask=jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="t must"):
        losses.dsm_loss(model, sde, x0, key, t=jnp.ones((3,)))
    with pytest.raises(ValueError, match="model_fn output"):
        losses.dsm_loss(lambda x, t: x[:, :2], sde, x0, key)
    with pytest.raises(ValueError, match="likelihood_weighting"):
        losses.dsm_loss(model, sde, x0, key, importance_sampling=True)
    with pytest.raises(ValueError, match="reduce"):
        losses.dsm_loss(model, sde, x0, key, reduce="max")
    with pytest.raises(ValueError, match="x0"):
        losses.dsm_loss(model, sde, jnp.zeros((4,)), key)
    with pytest.raises(TypeError, match="x0"):
        losses.dsm_loss(model, sde, jnp.zeros((4, 3), jnp.int32), key)
    with pytest.raises(ValueError, match="eps"):
        losses.dsm_loss(model, sde, x0, key, eps=0.0)
