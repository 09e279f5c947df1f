"""Tests of adiff.solvers against closed forms: Gaussian-mixture data has an exact score under
every SDE, so each sampler's output can be compared with the true distribution.

Time budget: about 90 s on one CPU core (compile time dominates; shapes are fixed and every
jitted function is reused across calls where possible).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adiff import sde as sde_lib
from adiff import solvers
from adiff.analytic import GaussianMixture

N = 2000  # samples per distribution check

# Two well-separated 2-D components with unequal weights and anisotropic variances.
W = np.array([0.3, 0.7])
MU = np.array([[-1.5, -0.5], [1.0, 1.0]])
VAR = np.array([[0.2, 0.1], [0.1, 0.3]])
GM = GaussianMixture.create(W, MU, VAR)

SDES = {
    "vp": sde_lib.VPSDE(),
    "subvp": sde_lib.SubVPSDE(),
    "ve": sde_lib.VESDE(),
}


def _true_moments():
    mean = W @ MU
    second = sum(W[k] * (np.diag(VAR[k]) + np.outer(MU[k], MU[k])) for k in range(len(W)))
    return mean, second - np.outer(mean, mean)


@jax.jit
def _mmd2(x, y):
    """Biased MMD^2 with a sum of RBF kernels at several bandwidths."""

    def k(a, b):
        d2 = jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
        return sum(jnp.exp(-d2 / (2.0 * h * h)) for h in (0.25, 0.5, 1.0, 2.0))

    return k(x, x).mean() + k(y, y).mean() - 2.0 * k(x, y).mean()


@pytest.fixture(scope="module")
def reference():
    """True samples, and an MMD threshold calibrated on independent true-vs-true pairs."""
    ref = GM.sample(jax.random.key(100), N)
    null = [float(_mmd2(GM.sample(jax.random.key(200 + i), N), ref)) for i in range(6)]
    return {
        "x": ref,
        "mmd_threshold": 3.0 * float(np.mean(null)),
        "logp": float(GM.log_prob(GM.sample(jax.random.key(300), 20 * N)).mean()),
    }


def _check_distribution(x, reference, *, mean_tol=0.1, cov_tol=0.15, logp_tol=0.15):
    x = np.asarray(x)
    assert np.all(np.isfinite(x))
    mean, cov = _true_moments()
    np.testing.assert_allclose(x.mean(0), mean, atol=mean_tol)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=cov_tol)
    # Mean log-density under the true mixture: too wide -> lower, too narrow -> higher.
    assert abs(float(GM.log_prob(jnp.asarray(x)).mean()) - reference["logp"]) < logp_tol
    mmd = float(_mmd2(jnp.asarray(x), reference["x"]))
    assert mmd < reference["mmd_threshold"], (mmd, reference["mmd_threshold"])


SAMPLERS = [
    ("euler_maruyama", dict(num_steps=200)),
    ("reverse_diffusion", dict(num_steps=200)),
    ("pc", dict(num_steps=100, corrector_steps=1)),
    ("ddim", dict(num_steps=100)),
    ("ddim", dict(num_steps=200, eta=1.0)),
    ("dpm_solver_pp", dict(num_steps=20)),
    ("pf_ode", dict()),
]
# Every sampler under every SDE, plus the Euler-Maruyama predictor with corrector under VP.
CASES = [(name, m, kw) for name in SDES for m, kw in SAMPLERS]
CASES.append(("vp", "pc", dict(num_steps=100, predictor="euler_maruyama")))


@pytest.mark.parametrize("sde_name,method,kwargs", CASES,
                         ids=[f"{n}-{m}-{'-'.join(f'{k}{v}' for k, v in kw.items())}"
                              for n, m, kw in CASES])
def test_samples_match_mixture(sde_name, method, kwargs, reference):
    sde = SDES[sde_name]
    score_fn = GM.score_fn(sde)
    run = jax.jit(lambda key: solvers.sample(score_fn, sde, (N, 2), key, method=method,
                                             **kwargs))
    out = run(jax.random.key(0))
    assert out.x.shape == (N, 2)
    _check_distribution(out.x, reference)
    steps = kwargs.get("num_steps")
    if method in ("euler_maruyama", "reverse_diffusion", "ddim", "dpm_solver_pp"):
        assert int(out.nfe) == steps
    elif method == "pc":
        assert int(out.nfe) == 2 * steps
    else:
        assert 20 < int(out.nfe) < 4096 * 6


def test_broken_score_is_detected(reference):
    """The distribution check must reject a sampler with a wrong score scale (a wrong sigma)."""
    sde = SDES["vp"]
    for scale in (0.8, 1.25):
        score_fn = lambda x, t, s=scale: s * GM.score_t(sde, x, t)
        out = solvers.sample(score_fn, sde, (N, 2), jax.random.key(0), method="pc",
                             num_steps=100)
        with pytest.raises(AssertionError):
            _check_distribution(out.x, reference)


# ---------------------------------------------------------------------------------------------
# deterministic solvers: determinism, agreement, invertibility
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _det_runners(sde_name):
    sde = SDES[sde_name]
    sf = GM.score_fn(sde)
    return {
        "pf": jax.jit(lambda x, key: solvers.pf_ode(sf, sde, x, key, rtol=1e-6, atol=1e-6)),
        "pf_dopri": jax.jit(lambda x: solvers.pf_ode(sf, sde, x, solver="dopri5")),
        "ddim": jax.jit(lambda x, key: solvers.ddim(sf, sde, x, key, num_steps=500)),
        "dpm": jax.jit(lambda x: solvers.dpm_solver_pp(sf, sde, x, num_steps=50)),
    }


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_ddim_dpm_and_pf_ode_are_deterministic_and_agree(sde_name):
    sde = SDES[sde_name]
    r = _det_runners(sde_name)
    x_T = sde.prior_sample(jax.random.key(1), (500, 2))
    pf1, pf2 = r["pf"](x_T, jax.random.key(2)), r["pf"](x_T, jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(pf1.x), np.asarray(pf2.x))
    d1, d2 = r["ddim"](x_T, jax.random.key(2)), r["ddim"](x_T, None)
    np.testing.assert_array_equal(np.asarray(d1.x), np.asarray(d2.x))
    ref = np.asarray(pf1.x)
    for name, out, med_tol, p99_tol in (
            ("ddim500", d1, 1e-2, 4e-2),
            ("dpm50", r["dpm"](x_T), 1e-2, 6e-2),
            ("dopri5", r["pf_dopri"](x_T), 1e-4, 3e-3)):
        err = np.abs(np.asarray(out.x) - ref).max(axis=1)
        assert np.median(err) < med_tol, (name, np.median(err))
        assert np.quantile(err, 0.99) < p99_tol, (name, np.quantile(err, 0.99))
    # The outputs are not trivially close: the starting noise matters.
    assert np.abs(ref - np.asarray(x_T)).mean() > 0.1


def test_dpm_solver_converges_at_second_order():
    sde = SDES["vp"]
    sf = GM.score_fn(sde)
    x_T = sde.prior_sample(jax.random.key(4), (500, 2))
    ref = np.asarray(_det_runners("vp")["pf"](x_T, None).x)
    errs = {}
    for n in (25, 50):
        for order in (1, 2):
            out = solvers.dpm_solver_pp(sf, sde, x_T, num_steps=n, order=order)
            errs[n, order] = np.median(np.abs(np.asarray(out.x) - ref).max(axis=1))
    assert errs[25, 2] < 0.5 * errs[25, 1]
    assert errs[50, 2] < 0.5 * errs[50, 1]
    assert errs[25, 2] / errs[50, 2] > 3.0  # ~4 for second order, ~2 for first


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_pf_ode_is_invertible(sde_name):
    sde = SDES[sde_name]
    sf = GM.score_fn(sde)
    x0 = GM.sample(jax.random.key(5), 500)
    fwd = jax.jit(lambda x: solvers.pf_ode(sf, sde, x, t_start=1e-3, t_end=sde.T))
    bwd = jax.jit(lambda z: solvers.pf_ode(sf, sde, z, t_start=sde.T, t_end=1e-3))
    z = fwd(x0).x
    # The latent is distributed like the prior (closed form of p_T).
    z_std = np.asarray(z).std(0)
    np.testing.assert_allclose(z_std, sde.prior_std(), rtol=0.15)
    back = np.asarray(bwd(z).x)
    np.testing.assert_allclose(back, np.asarray(x0), atol=5e-3)
    assert np.abs(np.asarray(z) - np.asarray(x0)).mean() > 0.3


# ---------------------------------------------------------------------------------------------
# partial diffusion (reconstruction)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sde_name,method,kwargs", [
    ("vp", "pc", dict(num_steps=60)),
    ("vp", "euler_maruyama", dict(num_steps=100)),
    ("subvp", "ddim", dict(num_steps=60)),
    ("ve", "reverse_diffusion", dict(num_steps=100)),
    ("vp", "dpm_solver_pp", dict(num_steps=20)),
])
def test_partial_diffusion_keeps_the_distribution(sde_name, method, kwargs, reference):
    sde = SDES[sde_name]
    sf = GM.score_fn(sde)
    x0 = GM.sample(jax.random.key(6), N)

    @jax.jit
    def recon(key, t0):
        k1, k2 = jax.random.split(key)
        x_t = solvers.partial_noise(sde, x0, t0, k1)
        return solvers.solve(sf, sde, x_t, k2, method=method, t_start=t0, **kwargs).x

    x_rec = recon(jax.random.key(7), 0.3)
    _check_distribution(x_rec, reference)
    if method == "pc":
        # Langevin corrector steps sample p_t afresh (in 2-D their step is set by the data
        # scale, not by sigma_t), so PC is not a reconstruction method at small t0.
        return
    far = np.abs(np.asarray(x_rec - x0)).mean()
    near = np.abs(np.asarray(recon(jax.random.key(7), 0.01) - x0)).mean()
    assert near < 0.05, near
    assert far > 3 * near, (far, near)


def test_partial_noise_marginal():
    sde = SDES["ve"]
    x0 = jnp.ones((4000, 2))
    x_t = solvers.partial_noise(sde, x0, 0.3, jax.random.key(8))
    np.testing.assert_allclose(np.asarray(x_t).mean(0), 1.0, atol=0.1)
    np.testing.assert_allclose(np.asarray(x_t).std(0), float(sde.sigma(0.3)), rtol=0.05)
    per_sample = solvers.partial_noise(sde, x0[:2], jnp.array([0.0, 0.5]), jax.random.key(8))
    np.testing.assert_array_equal(np.asarray(per_sample[0]), np.ones(2))


# ---------------------------------------------------------------------------------------------
# inpainting
# ---------------------------------------------------------------------------------------------

# Two components with unequal variances, so x[:,1] | x[:,0] is a state-dependent mixture.
W2 = np.array([0.4, 0.6])
MU2 = np.array([[-1.0, -1.2], [1.0, 0.8]])
VAR2 = np.array([[0.4, 0.15], [0.3, 0.2]])
GM2 = GaussianMixture.create(W2, MU2, VAR2)


def _conditional(x0):
    """Closed-form mean and variance of x1 | x0 under GM2."""
    logw = np.log(W2) - 0.5 * (x0[:, None] - MU2[:, 0]) ** 2 / VAR2[:, 0] - 0.5 * np.log(VAR2[:, 0])
    p = np.exp(logw - logw.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    mean = p @ MU2[:, 1]
    return mean, p @ (VAR2[:, 1] + MU2[:, 1] ** 2) - mean ** 2


@pytest.mark.parametrize("sde_name,method,kwargs", [
    ("vp", "pc", dict(num_steps=100, resample=10)),
    ("ve", "pc", dict(num_steps=100, resample=10)),
    ("subvp", "ddim", dict(num_steps=100, resample=10, eta=1.0)),
])
def test_inpainting_follows_conditional(sde_name, method, kwargs):
    sde = SDES[sde_name]
    data = np.asarray(GM2.sample(jax.random.key(9), N))
    mask = jnp.array([1.0, 0.0])
    known = jnp.asarray(data) * mask  # unknown entries are ignored: zero them
    run = jax.jit(lambda key: solvers.sample(GM2.score_fn(sde), sde, (N, 2), key,
                                             method=method, mask=mask, known=known, **kwargs))
    out = run(jax.random.key(10))
    x = np.asarray(out.x)
    np.testing.assert_array_equal(x[:, 0], data[:, 0])  # known entries returned exactly
    mean, var = _conditional(data[:, 0])
    r = (x[:, 1] - mean) / np.sqrt(var)
    assert abs(r.mean()) < 0.1, r.mean()
    assert abs((r * r).mean() - 1.0) < 0.2, (r * r).mean()
    assert int(out.nfe) == kwargs["num_steps"] * kwargs["resample"] * (2 if method == "pc" else 1)


def test_inpainting_without_resampling_is_worse():
    """Plain replacement is biased for a correlated target; resampling is what fixes it."""
    sde = SDES["ve"]
    data = np.asarray(GM2.sample(jax.random.key(9), N))
    mask = jnp.array([True, False])
    out = solvers.sample(GM2.score_fn(sde), sde, (N, 2), jax.random.key(10), method="pc",
                         num_steps=100, mask=mask, known=jnp.asarray(data))
    mean, var = _conditional(data[:, 0])
    r2 = (((np.asarray(out.x)[:, 1] - mean) ** 2) / var).mean()
    assert r2 > 1.4, r2


@pytest.mark.parametrize("method,kwargs", [
    ("reverse_diffusion", dict(num_steps=3, resample=2)),
    ("ddim", dict(num_steps=4)),
])
def test_known_entries_follow_the_forward_marginal(method, kwargs):
    """What the score sees at known entries is alpha_t known + sigma_t z: fresh z for stochastic
    solvers, the start state's own z for deterministic ones."""
    sde = SDES["vp"]
    seen = []
    base = GM.score_fn(sde)

    def spy_score(x, t):
        jax.debug.callback(lambda t, x: seen.append((np.asarray(t)[0], np.asarray(x))), t, x)
        return base(x, t)

    b, value = 4000, 0.7
    x_T = sde.prior_sample(jax.random.key(18), (b, 2))
    mask = jnp.array([1.0, 0.0])
    known = jnp.full((b, 2), value)
    out = solvers.solve(spy_score, sde, x_T, jax.random.key(19), method=method, mask=mask,
                        known=known, **kwargs)
    jax.effects_barrier()
    assert len(seen) == int(out.nfe)
    zs = [(x[:, 0] - float(sde.alpha(t)) * value) / float(sde.sigma(t)) for t, x in seen]
    if method == "ddim":
        z_start = (np.asarray(x_T[:, 0]) - float(sde.alpha(1.0)) * value) / float(sde.sigma(1.0))
        for z in zs:
            np.testing.assert_allclose(z, z_start, atol=1e-3)
    else:
        for (t, _), z in zip(seen, zs):
            assert abs(z.mean()) < 0.1 and abs(z.std() - 1.0) < 0.05, (t, z.mean(), z.std())
        assert abs(np.corrcoef(zs[0], zs[1])[0, 1]) < 0.1  # fresh noise at every step


@pytest.mark.parametrize("method", ["ddim", "dpm_solver_pp"])
def test_deterministic_inpainting_needs_no_key(method):
    sde = SDES["vp"]
    sf = GM2.score_fn(sde)
    x_T = sde.prior_sample(jax.random.key(11), (64, 2))
    known = jnp.asarray(GM2.sample(jax.random.key(12), 64))
    mask = jnp.zeros((64, 2)).at[:32, 0].set(1.0)  # per-sample masks
    a = solvers.solve(sf, sde, x_T, None, method=method, num_steps=20, mask=mask, known=known)
    b = solvers.solve(sf, sde, x_T, None, method=method, num_steps=20, mask=mask, known=known)
    np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))
    np.testing.assert_array_equal(np.asarray(a.x[:32, 0]), np.asarray(known[:32, 0]))
    plain = solvers.solve(sf, sde, x_T, None, method=method, num_steps=20)
    # Unmasked rows are unaffected by the mask of other rows; masked rows change.
    np.testing.assert_allclose(np.asarray(a.x[32:]), np.asarray(plain.x[32:]), atol=1e-5)
    assert np.abs(np.asarray(a.x[:32, 1] - plain.x[:32, 1])).mean() > 1e-3


# ---------------------------------------------------------------------------------------------
# jit: params closure, no recompilation, traced t_start; nfe counted honestly
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,kwargs", [
    ("euler_maruyama", dict(num_steps=8, corrector_steps=1)),
    ("reverse_diffusion", dict(num_steps=8)),
    ("pc", dict(num_steps=8, resample=2)),
    ("ddim", dict(num_steps=8, eta=0.5, resample=2)),
    ("dpm_solver_pp", dict(num_steps=8)),
    ("pf_ode", dict(rtol=1e-3, atol=1e-3)),
])
def test_jit_with_params_closure_does_not_retrace(method, kwargs):
    sde = SDES["vp"]
    traces = []

    def make_score(params):
        gm = GaussianMixture.create(jnp.array([0.5, 0.5]), params["means"], params["var"])
        return gm.score_fn(sde)

    @jax.jit
    def run(params, x, key, t0):
        traces.append(1)
        return solvers.solve(make_score(params), sde, x, key, method=method, t_start=t0,
                             **kwargs)

    p1 = {"means": jnp.array([[-1.0, 0.0], [1.0, 0.0]]), "var": jnp.array(0.1)}
    p2 = {"means": jnp.array([[-2.0, 0.0], [2.0, 0.0]]), "var": jnp.array(0.2)}
    x = jax.random.normal(jax.random.key(13), (16, 2))
    o1 = run(p1, x, jax.random.key(14), jnp.float32(1.0))
    o2 = run(p2, x, jax.random.key(15), jnp.float32(0.5))
    assert len(traces) == 1
    assert o1.x.shape == o2.x.shape == (16, 2)
    assert np.all(np.isfinite(np.asarray(o2.x)))
    assert not np.allclose(np.asarray(o1.x), np.asarray(o2.x))


def test_nfe_matches_counted_score_calls():
    sde = SDES["ve"]
    calls = []
    base = GM.score_fn(sde)

    def counting_score(x, t):
        jax.debug.callback(lambda _: calls.append(1), t[0])
        return base(x, t)

    x = sde.prior_sample(jax.random.key(16), (32, 2))
    for method, kwargs in (("pc", dict(num_steps=5, corrector_steps=2, resample=3)),
                           ("ddim", dict(num_steps=7)),
                           ("dpm_solver_pp", dict(num_steps=6)),
                           ("pf_ode", dict(rtol=1e-4, atol=1e-4))):
        calls.clear()
        out = solvers.solve(counting_score, sde, x, jax.random.key(17), method=method, **kwargs)
        jax.effects_barrier()
        assert int(out.nfe) == len(calls), (method, int(out.nfe), len(calls))
    assert len(calls) > 20


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


def test_validation_errors():
    sde = SDES["vp"]
    sf = GM.score_fn(sde)
    x = jnp.zeros((4, 2))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="method"):
        solvers.solve(sf, sde, x, key, method="heun")
    with pytest.raises(ValueError, match="num_steps"):
        solvers.ddim(sf, sde, x, num_steps=0)
    with pytest.raises(TypeError, match="num_steps"):
        solvers.ddim(sf, sde, x, num_steps=2.0)
    with pytest.raises(ValueError, match="t_end"):
        solvers.ddim(sf, sde, x, t_start=0.3, t_end=0.5)
    with pytest.raises(ValueError, match="t_end"):
        solvers.euler_maruyama(sf, sde, x, key, t_start=0.3, t_end=0.3)
    with pytest.raises(ValueError, match="t_start"):
        solvers.ddim(sf, sde, x, t_start=1.5)
    with pytest.raises(ValueError, match="t_end"):
        solvers.ddim(sf, sde, x, t_end=0.0)
    with pytest.raises(ValueError, match="mask"):
        solvers.ddim(sf, sde, x, mask=jnp.ones((3, 2)), known=x)
    with pytest.raises(ValueError, match="known"):
        solvers.predictor_corrector(sf, sde, x, key, mask=jnp.ones(2), known=jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="together"):
        solvers.reverse_diffusion(sf, sde, x, key, mask=jnp.ones(2))
    with pytest.raises(ValueError, match="predictor"):
        solvers.predictor_corrector(sf, sde, x, key, predictor="ancestral")
    with pytest.raises(ValueError, match="key"):
        solvers.euler_maruyama(sf, sde, x, None)
    with pytest.raises(ValueError, match="key"):
        solvers.ddim(sf, sde, x, None, eta=1.0)
    with pytest.raises(ValueError, match="resample"):
        solvers.ddim(sf, sde, x, key, resample=0)
    with pytest.raises(ValueError, match="order"):
        solvers.dpm_solver_pp(sf, sde, x, order=3)
    with pytest.raises(ValueError, match="spacing"):
        solvers.dpm_solver_pp(sf, sde, x, spacing="karras")
    with pytest.raises(ValueError, match="solver"):
        solvers.pf_ode(sf, sde, x, solver="euler")
    with pytest.raises(ValueError, match="differ"):
        solvers.pf_ode(sf, sde, x, t_start=0.5, t_end=0.5)
    with pytest.raises(ValueError, match="x_start"):
        solvers.ddim(sf, sde, jnp.zeros(()))
    with pytest.raises(TypeError, match="x_start"):
        solvers.ddim(sf, sde, jnp.zeros((4, 2), jnp.int32))
    with pytest.raises(ValueError, match="t_start"):
        solvers.sample(sf, sde, (4, 2), key, method="ddim", t_start=0.5)
    with pytest.raises(ValueError, match="shape"):
        solvers.sample(sf, sde, (0, 2), key)
    with pytest.raises(ValueError, match="t0"):
        solvers.partial_noise(sde, x, jnp.ones(3), key)
