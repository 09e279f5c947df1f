"""Tests for adiff.training: NaN guard, EMA, schedules, config validation, fit, and the launcher.

Time budget (with checkpoint_test and sharding_test): ~150 s in all; this file ~40 s.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adiff import training
from adiff.training import trainer as trainer_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _quad_loss(params, batch, key):
    """0.5 * ||w - mean(x)||^2 + poison; gradient w - mean(x)."""
    del key
    d = params["w"] - jnp.mean(batch["x"], axis=0)
    loss = 0.5 * jnp.sum(d * d) + batch["poison"]
    return loss, {"dist": jnp.sqrt(jnp.sum(d * d))}


def _batch(x, poison=0.0):
    return {"x": jnp.asarray(x, jnp.float32), "poison": jnp.asarray(poison, jnp.float32)}


# One jitted step per optimizer, reused across tests.
_SGD = optax.sgd(0.1)
_SGD_STEP = training.make_train_step(_quad_loss, _SGD, ema_decay=0.9, donate=False)
_ADAM = optax.adam(0.05)
_ADAM_STEP = training.make_train_step(_quad_loss, _ADAM, ema_decay=0.9, donate=False)


def _leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_nan_loss_skips_update_but_advances_step():
    key = jax.random.key(0)
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    state = training.create_train_state({"w": jnp.zeros(2)}, _ADAM)
    state, m0 = _ADAM_STEP(state, _batch(x), key)
    assert int(m0["nan_skipped"]) == 0
    before = state
    state, m1 = _ADAM_STEP(state, _batch(x, np.nan), key)
    assert int(m1["nan_skipped"]) == 1
    assert not np.isfinite(float(m1["loss"]))
    assert int(state.step) == 2
    assert _leaves_equal(state.params, before.params)
    assert _leaves_equal(state.ema_params, before.ema_params)
    assert _leaves_equal(state.opt_state, before.opt_state)
    # The next finite step updates again.
    state, m2 = _ADAM_STEP(state, _batch(x), key)
    assert int(m2["nan_skipped"]) == 0
    assert not _leaves_equal(state.params, before.params)


def test_nonfinite_gradient_with_finite_loss_is_skipped():
    def loss_fn(params, batch, key):
        del key
        # Finite value 0 at w == c, but d/dw sqrt|w - c| is NaN there.
        return jnp.sum(jnp.sqrt(jnp.abs(params["w"] - batch))), {}

    step = training.make_train_step(loss_fn, optax.sgd(0.1), donate=False)
    state = training.create_train_state({"w": jnp.ones(2)}, optax.sgd(0.1))
    new, m = step(state, jnp.ones(2), jax.random.key(0))
    assert np.isfinite(float(m["loss"])) and not np.isfinite(float(m["grad_norm"]))
    assert int(m["nan_skipped"]) == 1
    assert _leaves_equal(new.params, state.params) and int(new.step) == 1
    new, m = step(state, jnp.zeros(2), jax.random.key(0))  # finite gradient: updates
    assert int(m["nan_skipped"]) == 0 and not _leaves_equal(new.params, state.params)


def test_ema_and_sgd_math_match_closed_form():
    rng = np.random.RandomState(0)
    w = np.array([1.0, -2.0])
    ema = w.copy()
    state = training.create_train_state({"w": jnp.asarray(w, jnp.float32)}, _SGD)
    for _ in range(4):
        x = rng.randn(5, 2).astype(np.float32)
        state, metrics = _SGD_STEP(state, _batch(x), jax.random.key(1))
        grad = w - x.mean(0)
        np.testing.assert_allclose(float(metrics["grad_norm"]), np.linalg.norm(grad), rtol=1e-5)
        w = w - 0.1 * grad
        ema = 0.9 * ema + 0.1 * w
    np.testing.assert_allclose(np.asarray(state.params["w"]), w, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state.ema_params["w"]), ema, rtol=1e-5)
    assert int(state.step) == 4


def test_step_uses_fold_in_of_step():
    seen = []

    def loss_fn(params, batch, key):
        del batch
        return jnp.sum(params["w"] * jax.random.normal(key, (2,))), {}

    tx = optax.sgd(1.0)
    step = training.make_train_step(loss_fn, tx, ema_decay=0.0, donate=False)
    state = training.create_train_state({"w": jnp.zeros(2)}, tx)
    key = jax.random.key(7)
    for s in range(2):
        new, _ = step(state, jnp.zeros(1), key)
        seen.append(np.asarray(state.params["w"] - new.params["w"]))  # = noise of the step
        state = new
    for s, g in enumerate(seen):
        np.testing.assert_allclose(g, np.asarray(jax.random.normal(jax.random.fold_in(key, s),
                                                                   (2,))), rtol=1e-6)
    assert not np.allclose(seen[0], seen[1])


def test_eval_step_reports_loss_and_aux():
    ev = training.make_eval_step(_quad_loss)
    x = np.ones((4, 2), np.float32)
    m = ev({"w": jnp.zeros(2)}, _batch(x), jax.random.key(0))
    np.testing.assert_allclose(float(m["loss"]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(m["dist"]), np.sqrt(2.0), rtol=1e-6)


def test_donation_never_deletes_callers_params():
    tx = optax.sgd(0.1)
    step = training.make_train_step(_quad_loss, tx)  # donate=True
    params = {"w": jnp.ones(2)}
    state = training.create_train_state(params, tx)
    state, _ = step(state, _batch(np.zeros((2, 2))), jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(params["w"]), np.ones(2))


def test_schedules():
    cos = training.TrainConfig(num_steps=110, warmup_steps=10, learning_rate=1e-2)
    f = training.make_schedule(cos)
    np.testing.assert_allclose(float(f(0)), 0.0, atol=1e-9)
    np.testing.assert_allclose(float(f(5)), 5e-3, rtol=1e-5)
    np.testing.assert_allclose(float(f(10)), 1e-2, rtol=1e-5)
    np.testing.assert_allclose(float(f(60)), 5e-3, rtol=1e-4)  # half-way through the cosine
    np.testing.assert_allclose(float(f(110)), 0.0, atol=1e-8)
    const = training.TrainConfig(num_steps=110, warmup_steps=10, learning_rate=1e-2,
                                 schedule="constant")
    g = training.make_schedule(const)
    np.testing.assert_allclose([float(g(s)) for s in (0, 5, 10, 100)], [0, 5e-3, 1e-2, 1e-2],
                               rtol=1e-5, atol=1e-9)
    no_warm = training.make_schedule(training.TrainConfig(num_steps=10, warmup_steps=0,
                                                          learning_rate=1e-2))
    np.testing.assert_allclose(float(no_warm(0)), 1e-2, rtol=1e-5)


def test_optimizer_clips_gradient_norm():
    # Adam's first update is ~lr * g / (|g| + 1e-8): about lr * sign(g) for a large gradient, but
    # far smaller once the gradient is clipped to a norm comparable with Adam's eps.
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.array([300.0, 0.0, 400.0])}

    def first_update(clip):
        cfg = training.TrainConfig(num_steps=10, warmup_steps=0, learning_rate=1.0,
                                   schedule="constant", grad_clip_norm=clip)
        tx = training.make_optimizer(cfg)
        return np.asarray(tx.update(grads, tx.init(params), params)[0]["w"])

    unclipped, clipped = first_update(None), first_update(1e-8)
    np.testing.assert_allclose(unclipped, [-1.0, 0.0, -1.0], rtol=1e-4)
    # Clipped gradient 1e-8 * [0.6, 0, 0.8] -> update -[0.6/1.6, 0, 0.8/1.8].
    np.testing.assert_allclose(clipped, [-0.6 / 1.6, 0.0, -0.8 / 1.8], rtol=1e-3)


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(num_steps=0), ValueError, "num_steps"),
    (dict(num_steps=2.5), TypeError, "num_steps"),
    (dict(batch_size=-1), ValueError, "batch_size"),
    (dict(learning_rate=0.0), ValueError, "learning_rate"),
    (dict(learning_rate=float("nan")), ValueError, "learning_rate"),
    (dict(num_steps=10, warmup_steps=20), ValueError, "warmup_steps"),
    (dict(schedule="linear"), ValueError, "schedule"),
    (dict(grad_clip_norm=-1.0), ValueError, "grad_clip_norm"),
    (dict(ema_decay=1.5), ValueError, "ema_decay"),
    (dict(log_every=0), ValueError, "log_every"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(weight_decay="0.1"), TypeError, "weight_decay"),
])
def test_config_validation(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        training.TrainConfig(**kwargs)


def test_config_is_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        training.TrainConfig(100)  # pylint: disable=too-many-function-args
    cfg = training.TrainConfig()
    with pytest.raises(Exception):
        cfg.num_steps = 3


def test_fit_validates_inputs():
    cfg = training.TrainConfig(num_steps=2, batch_size=2, warmup_steps=0)
    p = {"w": jnp.zeros(2)}
    with pytest.raises(TypeError, match="config"):
        training.fit(_quad_loss, p, np.zeros((4, 2)), config={"num_steps": 2})
    with pytest.raises(ValueError, match="N=0"):
        training.fit(_quad_loss, p, np.zeros((0, 2)), config=cfg)
    with pytest.raises(ValueError, match="leading dimension"):
        training.fit(_quad_loss, p, {"x": np.zeros((4, 2)), "y": np.zeros(3)}, config=cfg)
    with pytest.raises(TypeError, match="loss_fn"):
        training.fit("loss", p, np.zeros((4, 2)), config=cfg)


def test_dataset_is_deterministic_and_reshuffles_per_epoch():
    data = {"x": np.arange(12, dtype=np.float32)[:, None], "y": np.arange(12)}
    ds = training.make_dataset(data, batch_size=4, seed=3)
    ds2 = training.make_dataset(data, batch_size=4, seed=3)
    epoch0 = np.concatenate([ds[s]["y"] for s in range(3)])
    epoch1 = np.concatenate([ds[s]["y"] for s in range(3, 6)])
    assert sorted(epoch0.tolist()) == list(range(12)) == sorted(epoch1.tolist())
    assert not np.array_equal(epoch0, epoch1)
    np.testing.assert_array_equal(ds[4]["y"], ds2[4]["y"])  # batch s is a pure function of s
    np.testing.assert_array_equal(ds[4]["x"][:, 0], ds[4]["y"].astype(np.float32))
    other = training.make_dataset(data, batch_size=4, seed=4)
    assert not np.array_equal(np.concatenate([other[s]["y"] for s in range(3)]), epoch0)


def test_fit_gaussian_decreases_loss_and_writes_logs(tmp_path):
    from adiff import losses, nets, sde as sde_lib
    vp = sde_lib.VPSDE()
    model = nets.ResidualMLP(features=32, num_blocks=1, time_dim=16)
    rng = np.random.RandomState(0)
    data = (rng.randn(512, 2) * np.array([0.3, 0.1]) + np.array([1.0, -1.0])).astype(np.float32)
    params = model.init(jax.random.key(0), data[:2], jnp.ones(2))["params"]

    def loss_fn(p, x, key):
        out = losses.dsm_loss(lambda xt, t: model.apply({"params": p}, xt, t), vp, x, key)
        return out.loss, {}

    cfg = training.TrainConfig(num_steps=300, batch_size=128, learning_rate=3e-3,
                               warmup_steps=20, log_every=50, checkpoint_every=150)
    res = training.fit(loss_fn, params, data, config=cfg, workdir=str(tmp_path), progress=False)
    losses_logged = [h["loss"] for h in res.history]
    assert [h["step"] for h in res.history] == [50, 100, 150, 200, 250, 300]
    assert losses_logged[-1] < 0.7 * losses_logged[0], losses_logged
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [50, 100, 150, 200, 250, 300]
    for key in ("loss", "lr", "grad_norm", "steps_per_sec", "nan_skipped"):
        assert key in lines[0]
    np.testing.assert_allclose(lines[0]["lr"], float(trainer_lib.make_schedule(cfg)(49)),
                               rtol=1e-6)
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert final["step"] == 300 == int(res.state.step)
    assert final["params_sha256"] == training.tree_sha256(res.state.params)
    assert final["params_sha256"] != training.tree_sha256(params)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["150", "300"]
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))


def test_tree_sha256_sensitivity():
    a = {"w": np.zeros(3, np.float32)}
    assert training.tree_sha256(a) == training.tree_sha256({"w": jnp.zeros(3)})
    assert training.tree_sha256(a) != training.tree_sha256({"w": np.array([0, 0, 1e-30],
                                                                           np.float32)})
    assert training.tree_sha256(a) != training.tree_sha256({"v": np.zeros(3, np.float32)})


def test_main_train_mode_writes_checkpoint(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.main", "--mode=train", f"--workdir={workdir}",
           "--config=experiments/configs/gmm2d.py", "--config.train.num_steps=50", "--config.train.log_every=25",
           "--config.sample.num_samples=64", "--config.sample.num_steps=10"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (workdir / "checkpoints" / "50").is_dir()
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["step"] == 50
    assert (workdir / "samples.png").stat().st_size > 1000


def test_grain_dataset_input_matches_array_input():
    import grain
    data = {"x": np.arange(10, dtype=np.float32)[:, None] * 2, "y": np.arange(10)}
    examples = grain.MapDataset.source([{"x": data["x"][i], "y": data["y"][i]} for i in range(10)])
    a = training.make_dataset(data, batch_size=4, seed=1)
    b = training.make_dataset(examples, batch_size=4, seed=1)
    for s in (0, 2, 7):
        np.testing.assert_array_equal(a[s]["y"], b[s]["y"])
        np.testing.assert_array_equal(a[s]["x"], b[s]["x"])
    with pytest.raises(ValueError, match="at least one example"):
        training.make_dataset(grain.MapDataset.source([]), batch_size=2, seed=0)
