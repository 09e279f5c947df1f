"""Multi-process training over loopback: two jax.distributed processes (CPU, gloo collectives)
train the same tiny model as one process with the same global batch; params agree to float
tolerance, and both processes compute the same SHA-256 (a collective) that process 0 writes.

Each process owns one CPU device; the mesh spans both (2 global devices), each process feeds its
half of every global batch (`adiff.training.fit` slices it, `adiff.sharding.shard_batch` builds
the global array). Time budget: ~20 s.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

_WORKER = textwrap.dedent(r'''
    import json, os, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = os.environ.get("ADIFF_TEST_XLA_FLAGS", "")
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, port, workdir, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=pid, initialization_timeout=60)
    from absl import flags
    flags.FLAGS.mark_as_parsed()
    sys.path.insert(0, os.getcwd())
    import numpy as np
    from adiff import sharding, training
    from tests.multihost_test import CONFIG, DATA, PARAMS, loss_fn
    assert jax.process_count() == 2 and jax.device_count() == 2, (jax.process_count(), jax.device_count())
    mesh = sharding.make_mesh()
    result = training.fit(loss_fn, PARAMS, DATA, config=training.TrainConfig(**CONFIG), mesh=mesh,
                          workdir=workdir, progress=False)
    params = jax.tree.map(lambda a: np.asarray(a).tolist(), result.state.params)
    with open(out, "w") as f:
        json.dump({"params": params, "sha": training.tree_sha256(result.state.params),
                   "loss": result.history[-1]["loss"], "process": jax.process_index()}, f)
    jax.distributed.shutdown()
''')

CONFIG = dict(num_steps=12, batch_size=8, learning_rate=1e-2, warmup_steps=2, schedule="cosine",
              log_every=4, checkpoint_every=6, keep_checkpoints=1, ema_decay=0.9, seed=3)
DATA = np.random.RandomState(0).randn(40, 3).astype(np.float32)
PARAMS = {"w1": (np.random.RandomState(1).randn(3, 16) * 0.5).astype(np.float32),
          "b1": np.zeros(16, np.float32),
          "w2": (np.random.RandomState(2).randn(16, 3) * 0.5).astype(np.float32)}


def loss_fn(params, batch, key):
    noisy = batch + 0.1 * jax.random.normal(key, batch.shape)
    out = jnp.tanh(noisy @ params["w1"] + params["b1"]) @ params["w2"]
    err = out - batch
    return jnp.mean(err * err), {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def communicate_all(procs, *, timeout: float):
    """Waits for every process and returns their outputs; kills the rest if one times out."""
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return logs


def _gloo_available() -> bool:
    return "jax_cpu_collectives_implementation" in jax.config.values


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    if not _gloo_available():
        pytest.skip("this jax has no 'jax_cpu_collectives_implementation' (no CPU multi-process "
                    "collectives)")
    from adiff import training
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    workdir = tmp_path / "work"
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), str(workdir),
                               str(tmp_path / f"out{i}.json")], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = communicate_all(procs, timeout=120)
    for p, log in zip(procs, logs):
        if p.returncode != 0 and ("gloo" in log.lower() and "not" in log.lower()
                                  and "available" in log.lower()):
            pytest.skip(f"CPU gloo collectives unavailable here: {log[-500:]}")
        assert p.returncode == 0, log[-4000:]
    outs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]

    single = training.fit(loss_fn, PARAMS, DATA, config=training.TrainConfig(**CONFIG),
                          progress=False)
    ref = jax.tree.map(np.asarray, single.state.params)
    for out in outs:
        for k in ref:
            np.testing.assert_allclose(np.asarray(out["params"][k], np.float32), ref[k],
                                       rtol=1e-5, atol=1e-6, err_msg=k)
        # Training moved the params (the comparison is not between two initial states).
        assert np.max(np.abs(np.asarray(out["params"]["w1"]) - PARAMS["w1"])) > 1e-3
    # Both processes hold the same global params: same checksum; process 0 wrote it.
    assert outs[0]["sha"] == outs[1]["sha"]
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["step"] == CONFIG["num_steps"] and final["params_sha256"] == outs[0]["sha"]
    assert abs(outs[0]["loss"] - single.history[-1]["loss"]) < 1e-4
