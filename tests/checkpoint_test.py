"""Checkpoint/resume tests for adiff.training.fit: a resumed run equals an uninterrupted one.

Time budget: ~15 s (tiny MLP, 24 steps per run).
"""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adiff import training
from adiff.training import trainer as trainer_lib


class _TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.tanh(nn.Dense(16)(x)))


_MODEL = _TinyMLP()
_DATA = {"x": np.random.RandomState(0).randn(40, 2).astype(np.float32)}
_DATA["y"] = np.sin(_DATA["x"]).astype(np.float32)
_PARAMS = _MODEL.init(jax.random.key(0), _DATA["x"][:1])["params"]


def _loss_fn(params, batch, key):
    # Uses the key (input noise), so replaying the per-step keys matters.
    x = batch["x"] + 0.1 * jax.random.normal(key, batch["x"].shape)
    err = _MODEL.apply({"params": params}, x) - batch["y"]
    return jnp.mean(err * err), {}


def _config(num_steps, schedule="constant"):
    return training.TrainConfig(num_steps=num_steps, batch_size=8, learning_rate=1e-2,
                                warmup_steps=3, schedule=schedule, log_every=4,
                                checkpoint_every=4, keep_checkpoints=2, ema_decay=0.9, seed=5)


def _assert_states_equal(a, b):
    assert int(a.step) == int(b.step)
    for name in ("params", "ema_params", "opt_state"):
        la, lb = jax.tree.leaves(getattr(a, name)), jax.tree.leaves(getattr(b, name))
        assert len(la) == len(lb) > 0
        for x, y in zip(la, lb):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
    assert jax.tree.structure(a) == jax.tree.structure(b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    return training.fit(_loss_fn, _PARAMS, _DATA, config=_config(24), workdir=str(workdir),
                        progress=False), workdir


def test_resume_from_half_equals_uninterrupted(tmp_path, uninterrupted):
    full, full_dir = uninterrupted
    half = training.fit(_loss_fn, _PARAMS, _DATA, config=_config(12), workdir=str(tmp_path),
                        progress=False)
    assert int(half.state.step) == 12
    resumed = training.fit(_loss_fn, _PARAMS, _DATA, config=_config(24), workdir=str(tmp_path),
                           progress=False)
    assert resumed.start_step == 12
    assert resumed.history[0]["step"] == 16  # first log after the resume point
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 12, 16, 20, 24]
    _assert_states_equal(resumed.state, full.state)
    # Logged losses after the resume match the uninterrupted run's.
    full_hist = {h["step"]: h["loss"] for h in full.history}
    for h in resumed.history:
        assert h["loss"] == full_hist[h["step"]]
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    final_full = json.loads((full_dir / "final_metrics.json").read_text())
    assert final["params_sha256"] == final_full["params_sha256"]
    assert final["ema_params_sha256"] == final_full["ema_params_sha256"]
    assert final["start_step"] == 12 and final["step"] == 24
    # A third call finds the run finished and changes nothing.
    again = training.fit(_loss_fn, _PARAMS, _DATA, config=_config(24), workdir=str(tmp_path),
                         progress=False)
    assert again.start_step == 24 and again.history == []
    _assert_states_equal(again.state, full.state)


def test_crash_and_resume_with_cosine_schedule(tmp_path, monkeypatch):
    """A run killed mid-way (cosine schedule, same config) resumes from its last checkpoint."""
    cfg = _config(24, schedule="cosine")
    full = training.fit(_loss_fn, _PARAMS, _DATA, config=cfg, progress=False)

    real_make_dataset = trainer_lib.make_dataset

    class _Crashing:
        def __init__(self, ds):
            self._ds = ds

        def __getitem__(self, s):
            if s == 14:
                raise KeyboardInterrupt("simulated preemption")
            return self._ds[s]

    monkeypatch.setattr(trainer_lib, "make_dataset",
                        lambda *a, **k: _Crashing(real_make_dataset(*a, **k)))
    with pytest.raises(KeyboardInterrupt):
        training.fit(_loss_fn, _PARAMS, _DATA, config=cfg, workdir=str(tmp_path), progress=False)
    monkeypatch.setattr(trainer_lib, "make_dataset", real_make_dataset)
    resumed = training.fit(_loss_fn, _PARAMS, _DATA, config=cfg, workdir=str(tmp_path),
                           progress=False)
    assert resumed.start_step == 12  # last checkpoint before the crash at step 14
    _assert_states_equal(resumed.state, full.state)


def test_checkpoints_kept_and_restorable(uninterrupted):
    full, full_dir = uninterrupted
    kept = sorted(int(p.name) for p in (full_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [20, 24]
    # The final checkpoint restores into the state's structure.
    import orbax.checkpoint as ocp
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, full.state)
    with ocp.CheckpointManager(full_dir / "checkpoints") as mngr:
        restored = mngr.restore(24, args=ocp.args.StandardRestore(abstract))
    _assert_states_equal(restored, full.state)
