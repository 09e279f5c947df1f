"""Tests for adiff.sharding and sharded train/eval steps on 8 simulated CPU devices.

The 8-device checks run in ONE subprocess (XLA_FLAGS must be set before jax is imported) that
prints a JSON report. Time budget: ~25 s.
"""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adiff import sharding

REPO = pathlib.Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent(r'''
    import json, os
    os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "
                               + os.environ.get("ADIFF_TEST_XLA_FLAGS", ""))
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np, optax
    import flax.linen as nn
    from adiff import sharding, training

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.silu(nn.Dense(64)(x))
            h = nn.silu(nn.Dense(64)(h))
            return nn.Dense(x.shape[-1])(h)

    model = MLP()
    rng = np.random.RandomState(0)
    x = rng.randn(32, 4).astype(np.float32)
    params = model.init(jax.random.key(0), x[:1])["params"]

    def loss_fn(p, batch, key):
        noisy = batch + 0.1 * jax.random.normal(key, batch.shape)
        err = model.apply({"params": p}, noisy) - batch
        return jnp.mean(err * err), {"abs": jnp.mean(jnp.abs(err))}

    tx = optax.adam(1e-2)
    key = jax.random.key(1)
    report = {"num_devices": jax.device_count()}

    def run(mesh, steps=3):
        step = training.make_train_step(loss_fn, tx, ema_decay=0.9, mesh=mesh)
        state = training.create_train_state(params, tx)
        if mesh is not None:
            state = jax.device_put(state, sharding.state_sharding(mesh, state))
        for s in range(steps):
            b = x[(s % 2) * 16:(s % 2) * 16 + 16]
            b = sharding.shard_batch(b, mesh) if mesh is not None else b
            state, metrics = step(state, b, key)
        return state, metrics, b

    ref, ref_m, _ = run(None)
    diffs = lambda a, b: max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
                             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    for name, mesh in [("data8", sharding.make_mesh(8)), ("data4_fsdp2", sharding.make_mesh(8, fsdp=2))]:
        st, m, b = run(mesh)
        report[name] = {
            "axes": list(mesh.axis_names), "shape": [int(mesh.shape[a]) for a in mesh.axis_names],
            "params_diff": diffs(st.params, ref.params),
            "ema_diff": diffs(st.ema_params, ref.ema_params),
            "opt_diff": diffs(st.opt_state, ref.opt_state),
            "loss_diff": abs(float(m["loss"]) - float(ref_m["loss"])),
            "batch_devices": len(b.sharding.device_set),
            "batch_shard_rows": int(b.addressable_shards[0].data.shape[0]),
            "kernel_spec": str(st.params["Dense_1"]["kernel"].sharding.spec),
            "step": int(st.step),
        }

    # Batched evaluation of a per-sample function, sharded over the batch, any N (padding).
    mesh = sharding.make_mesh(8)
    f = lambda p, z: jnp.sum(model.apply({"params": p}, z) ** 2, axis=-1)
    xs = rng.randn(37, 4).astype(np.float32)
    xp, n = sharding.pad_to_multiple(xs, 8)
    fs = jax.jit(f, in_shardings=(sharding.replicated_sharding(mesh), sharding.data_sharding(mesh)),
                 out_shardings=sharding.data_sharding(mesh))
    out = fs(params, sharding.shard_batch(xp, mesh))
    report["eval"] = {"n_valid": n, "padded": int(xp.shape[0]),
                      "out_devices": len(out.sharding.device_set),
                      "diff": float(np.max(np.abs(np.asarray(out)[:n] - np.asarray(f(params, xs)))))}
    ev = training.make_eval_step(loss_fn, mesh=mesh)
    em = ev(params, sharding.shard_batch(x, mesh), key)
    e1 = training.make_eval_step(loss_fn)(params, x, key)
    report["eval_step_diff"] = abs(float(em["loss"]) - float(e1["loss"]))

    # fit() on the 8-device mesh equals fit() on one device.
    cfg = training.TrainConfig(num_steps=6, batch_size=16, warmup_steps=2, log_every=3,
                               checkpoint_every=3)
    r8 = training.fit(loss_fn, params, x, config=cfg, mesh=mesh, progress=False)
    r1 = training.fit(loss_fn, params, x, config=cfg, progress=False)
    report["fit_params_diff"] = diffs(r8.state.params, r1.state.params)
    report["fit_state_devices"] = len(jax.tree.leaves(r8.state.params)[0].sharding.device_set)
    try:
        training.fit(loss_fn, params, x, config=training.TrainConfig(num_steps=2, batch_size=12,
                     warmup_steps=0), mesh=mesh, progress=False)
        report["bad_batch_error"] = None
    except ValueError as e:
        report["bad_batch_error"] = str(e)
    print("REPORT " + json.dumps(report))
''')


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    script = tmp_path_factory.mktemp("sharding") / "check_8dev.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):])


def test_eight_device_train_step_matches_one_device(report):
    assert report["num_devices"] == 8
    for name, axes, shape in [("data8", ["data"], [8]), ("data4_fsdp2", ["data", "fsdp"], [4, 2])]:
        r = report[name]
        assert r["axes"] == axes and r["shape"] == shape
        assert r["step"] == 3
        assert r["params_diff"] < 1e-6, r
        assert r["ema_diff"] < 1e-6, r
        assert r["opt_diff"] < 1e-6, r
        assert r["loss_diff"] < 1e-6, r
        assert r["batch_devices"] == 8 and r["batch_shard_rows"] == 2
    assert "fsdp" in report["data4_fsdp2"]["kernel_spec"]  # the 64x64 kernel is FSDP-split
    assert "fsdp" not in report["data8"]["kernel_spec"]


def test_sharded_batched_evaluation_matches_unsharded(report):
    ev = report["eval"]
    assert ev["n_valid"] == 37 and ev["padded"] == 40 and ev["out_devices"] == 8
    assert ev["diff"] < 1e-5
    assert report["eval_step_diff"] < 1e-6


def test_fit_on_mesh_matches_single_device(report):
    assert report["fit_params_diff"] < 1e-6
    assert report["fit_state_devices"] == 8
    assert "divisible" in report["bad_batch_error"]


def test_pad_to_multiple():
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    xp, n = sharding.pad_to_multiple(x, 4)
    assert n == 5 and xp.shape == (8, 2)
    np.testing.assert_array_equal(xp[:5], x)
    np.testing.assert_array_equal(xp[5:], np.repeat(x[-1:], 3, axis=0))
    same, n2 = sharding.pad_to_multiple(x, 5)
    assert same is x and n2 == 5
    tree, n3 = sharding.pad_to_multiple({"a": jnp.ones((3, 1)), "b": np.zeros(3)}, 2)
    assert n3 == 3 and tree["a"].shape == (4, 1) and tree["b"].shape == (4,)
    with pytest.raises(ValueError, match="multiple"):
        sharding.pad_to_multiple(x, 0)
    with pytest.raises(ValueError, match="at least one row"):
        sharding.pad_to_multiple(np.zeros((0, 2)), 2)
    with pytest.raises(ValueError, match="leading dimension"):
        sharding.pad_to_multiple({"a": np.zeros(3), "b": np.zeros(4)}, 2)


def test_mesh_and_shardings_single_device():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.shape["data"] == jax.device_count()
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
    assert sharding.data_sharding(mesh).spec == jax.sharding.PartitionSpec("data")
    assert sharding.replicated_sharding(mesh).spec == jax.sharding.PartitionSpec()
    b = sharding.shard_batch({"x": np.ones((4, 2), np.float32)}, mesh)
    assert isinstance(b["x"], jax.Array) and b["x"].shape == (4, 2)
    with pytest.raises(ValueError, match="num_devices"):
        sharding.make_mesh(jax.device_count() + 1)
    with pytest.raises(ValueError, match="fsdp"):
        sharding.make_mesh(1, fsdp=0)
    with pytest.raises(ValueError, match="leading dimension"):
        sharding.shard_batch({"x": np.ones((4, 2)), "y": np.ones(3)}, mesh)
