"""Corrupted and foreign checkpoint directories: refused clearly, never executed, never trusted.

(a) A saved detector directory (BaseDetector.save -> adiff.load) with a truncated or altered array
    file, a missing file, an edited JSON config (wrong shapes, unknown version or class, missing or
    mistyped entries) or pickles planted in place of its files: a ValueError naming the directory
    and the problem; no pickle is ever unpickled (each would create a marker file).
(b) The trainer's workdir checkpoints (adiff.training.fit's automatic resume). Behaviour chosen:
    fall back. The newest checkpoint that is intact (metadata matches the run's state, orbax /
    tensorstore restores it - OCDBT checksums its data -, its step is the directory's, its arrays
    are finite) is restored; newer broken ones are moved to workdir/corrupt_checkpoints/ with a
    logged warning naming the directory, the steps and the reasons. When none is intact, fit raises
    a CheckpointError (a ValueError) naming the directory and every problem; it never silently
    restarts from scratch or trains from garbage.

Time budget: ~20 s (a tiny MLP and a tiny tabular detector).
"""
import json
import logging
import os
import pathlib
import pickle
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import adiff
from adiff import training
from adiff.detectors.tabular import TabularDetector
from adiff.training import trainer as trainer_lib


class _Evil:
    """Unpickling this creates `marker`: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _evil_bytes(marker) -> bytes:
    return pickle.dumps(_Evil(marker))


def _data_files(root: pathlib.Path):
    """The tensorstore data files of an orbax item directory (OCDBT 'd/' chunks)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name == "d")
    assert files, f"no array data files under {root}"
    return files


def _truncate(p: pathlib.Path):
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


def _flip(p: pathlib.Path):
    b = bytearray(p.read_bytes())
    for i in range(len(b) // 3, 2 * len(b) // 3):
        b[i] ^= 0x5A
    p.write_bytes(bytes(b))


# ------------------------------------------------------------------------------------------------
# (a) saved detector directories
# ------------------------------------------------------------------------------------------------
TAB = dict(scoring="dte_np", train_steps=5, batch_size=32, hidden=16, num_blocks=1, dte_hidden=(16,),
           solver_steps=2, t0=(0.2,), score_batch_size=64)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    rng = np.random.RandomState(0)
    det = TabularDetector(seed=0, **TAB).fit(rng.randn(64, 3).astype(np.float32))
    root = tmp_path_factory.mktemp("saved") / "det"
    det.save(root)
    x = rng.randn(5, 3).astype(np.float32)
    return root, det.decision_function(x), x


def _copy(src: pathlib.Path, tmp_path) -> pathlib.Path:
    dst = tmp_path / "det"
    shutil.copytree(src, dst)
    return dst


def _edit_json(d: pathlib.Path, edit):
    cfg = json.loads((d / "adiff.json").read_text())
    edit(cfg)
    (d / "adiff.json").write_text(json.dumps(cfg))


def test_intact_copy_loads(saved, tmp_path):
    """The baseline the corruptions below depart from: a plain copy loads and scores the same."""
    root, scores, x = saved
    np.testing.assert_array_equal(adiff.load(_copy(root, tmp_path)).decision_function(x), scores)


DETECTOR_CORRUPTIONS = [
    # (id, corrupt(dir), regex of the ValueError)
    ("truncated-array-file", lambda d: [_truncate(p) for p in _data_files(d / "arrays")],
     r"could not restore the arrays in .*arrays"),
    ("altered-array-bytes", lambda d: [_flip(p) for p in _data_files(d / "arrays")],
     r"could not restore the arrays in .*arrays"),
    ("missing-array-file", lambda d: [p.unlink() for p in _data_files(d / "arrays")],
     r"could not restore the arrays in .*arrays"),
    ("missing-array-metadata", lambda d: (d / "arrays" / "_METADATA").unlink(),
     r"arrays"),
    ("missing-arrays-dir", lambda d: shutil.rmtree(d / "arrays"), r"has no arrays/ directory"),
    ("missing-config", lambda d: (d / "adiff.json").unlink(), r"not a saved adiff detector.*adiff\.json"),
    ("version", lambda d: _edit_json(d, lambda c: c.update(version=2)),
     r"adiff\.json.*version 2; this adiff reads 1"),
    ("unknown-class", lambda d: _edit_json(d, lambda c: c.update({"class": "builtins.eval"})),
     r"names class 'builtins\.eval'; expected one of"),
    ("wrong-shapes-dim", lambda d: _edit_json(d, lambda c: c["meta"].update(dim=5)),
     r"saved array .* has shape \(64, 3\); the configuration expects \(64, 5\)"),
    ("wrong-shapes-meta", lambda d: _edit_json(d, lambda c: c["meta"].update(n_train=65)),
     r"decision_scores_.*shape \(64,\).*expects \(65,\)"),
    ("meta-missing-key", lambda d: _edit_json(d, lambda c: c["meta"].pop("threshold_")),
     r"adiff\.json.*invalid configuration.*threshold_"),
    ("meta-mistyped", lambda d: _edit_json(d, lambda c: c["meta"].update(n_train="many")),
     r"adiff\.json.*invalid configuration.*many"),
    ("params-mistyped", lambda d: _edit_json(d, lambda c: c["params"].update(hidden="wide")),
     r"adiff\.json.*(invalid configuration|hidden).*wide"),
    ("params-unknown", lambda d: _edit_json(d, lambda c: c["params"].update(__reduce__="x")),
     r"parameters that TabularDetector does not accept"),
    ("config-not-object", lambda d: (d / "adiff.json").write_text("[1, 2]"), r"format None"),
]


@pytest.mark.parametrize("case_id,corrupt,pattern", DETECTOR_CORRUPTIONS,
                         ids=[c[0] for c in DETECTOR_CORRUPTIONS])
def test_corrupted_detector_directory_is_refused(saved, tmp_path, case_id, corrupt, pattern):
    d = _copy(saved[0], tmp_path)
    corrupt(d)
    with pytest.raises(ValueError, match=pattern) as info:
        adiff.load(d)
    assert type(info.value) is ValueError, f"{case_id}: {info.value!r}"


@pytest.mark.parametrize("target", ["adiff.json", "arrays/_METADATA", "arrays/manifest.ocdbt",
                                    "data-file"])
def test_pickle_in_place_of_a_file_is_refused_and_never_run(saved, tmp_path, target):
    d = _copy(saved[0], tmp_path)
    marker = tmp_path / "pwned"
    path = _data_files(d / "arrays")[0] if target == "data-file" else d / target
    assert path.is_file()
    path.write_bytes(_evil_bytes(marker))
    for extra in ("model.pkl", "arrays/state.pkl", "arrays/d/params.pkl"):
        (d / extra).write_bytes(_evil_bytes(marker))
    with pytest.raises(ValueError, match=r"adiff\.json|arrays"):
        adiff.load(d)
    assert not marker.exists()


def test_planted_pickles_are_ignored_by_load(saved, tmp_path):
    """Extra *.pkl files next to an intact save: it loads, scores the same, runs nothing."""
    root, scores, x = saved
    d = _copy(root, tmp_path)
    marker = tmp_path / "pwned"
    for extra in ("detector.pkl", "arrays/extra.pkl", "arrays/d/evil.pkl",
                  "arrays/ocdbt.process_0/evil.pkl"):
        if (d / extra).parent.is_dir():
            (d / extra).write_bytes(_evil_bytes(marker))
    np.testing.assert_array_equal(adiff.load(d).decision_function(x), scores)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# (b) trainer workdir checkpoints
# ------------------------------------------------------------------------------------------------
class _MLP(nn.Module):
    width: int = 16

    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.tanh(nn.Dense(self.width)(x)))


_DATA = {"x": np.random.RandomState(0).randn(40, 2).astype(np.float32)}
_DATA["y"] = np.sin(_DATA["x"]).astype(np.float32)


def _loss_for(model):
    def loss_fn(params, batch, key):
        x = batch["x"] + 0.1 * jax.random.normal(key, batch["x"].shape)
        err = model.apply({"params": params}, x) - batch["y"]
        return jnp.mean(err * err), {}
    return loss_fn


_MODEL, _MODEL8 = _MLP(16), _MLP(8)
_LOSS, _LOSS8 = _loss_for(_MODEL), _loss_for(_MODEL8)
_PARAMS = _MODEL.init(jax.random.key(0), _DATA["x"][:1])["params"]
_PARAMS8 = _MODEL8.init(jax.random.key(0), _DATA["x"][:1])["params"]
_CONFIG = training.TrainConfig(num_steps=24, batch_size=8, learning_rate=1e-2, warmup_steps=3,
                               schedule="cosine", log_every=4, checkpoint_every=4,
                               keep_checkpoints=2, ema_decay=0.9, seed=5)


def _fit(workdir, *, loss=_LOSS, params=_PARAMS, config=_CONFIG):
    return training.fit(loss, params, _DATA, config=config, workdir=str(workdir), progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An intact run (checkpoints 20 and 24) and a run of a narrower model (wrong shapes)."""
    good = tmp_path_factory.mktemp("good")
    full = _fit(good)
    narrow = tmp_path_factory.mktemp("narrow")
    _fit(narrow, loss=_LOSS8, params=_PARAMS8)
    assert sorted(int(p.name) for p in (good / "checkpoints").iterdir()) == [20, 24]
    return good, full, narrow


def _states_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


def _poison_step24(wd: pathlib.Path, full):
    """Rewrites step 24 as a well-formed orbax checkpoint whose params are NaN."""
    item = wd / "checkpoints" / "24" / "default"
    shutil.rmtree(item)
    bad = full.state.replace(params=jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), full.state.params))
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(item, bad)
        ckpt.wait_until_finished()


def _wrong_shapes_step24(wd: pathlib.Path, narrow: pathlib.Path):
    item = wd / "checkpoints" / "24" / "default"
    shutil.rmtree(item)
    shutil.copytree(narrow / "checkpoints" / "24" / "default", item)


TRAINER_CORRUPTIONS = [
    # (id, corrupt(workdir, runs), steps moved aside, regex of the warning's reason)
    ("truncated-arrays", lambda wd, r: [_truncate(p) for p in _data_files(wd / "checkpoints/24")],
     [24], r"step 24: ValueError"),
    ("altered-array-bytes", lambda wd, r: [_flip(p) for p in _data_files(wd / "checkpoints/24")],
     [24], r"step 24: ValueError"),
    ("missing-array-files", lambda wd, r: [p.unlink() for p in _data_files(wd / "checkpoints/24")],
     [24], r"step 24: ValueError"),
    ("truncated-metadata", lambda wd, r: _truncate(wd / "checkpoints/24/default/_METADATA"),
     [24], r"step 24: "),
    ("wrong-shapes", lambda wd, r: _wrong_shapes_step24(wd, r[2]), [24],
     r"step 24: ValueError: array \.params\['Dense_0'\]\['kernel'\] has shape \(8, 2\); the run's "
     r"state has \(16, 2\)"),
    ("nan-params", lambda wd, r: _poison_step24(wd, r[1]), [24],
     r"step 24: ValueError: array \['params'\]\['Dense_0'\]\['bias'\] holds NaN/inf"),
    ("renamed-older-step", lambda wd, r: shutil.copytree(wd / "checkpoints/20", wd / "checkpoints/28"),
     [28], r"step 28: ValueError: it holds the state of step 20, not 28"),
    ("foreign-step-dir", lambda wd, r: (wd / "checkpoints/28").mkdir() or
     (wd / "checkpoints/28/state.pkl").write_bytes(_evil_bytes(wd.parent / "pwned")),
     [28], r"step 28: ValueError: .*28/default.* is missing"),
]


@pytest.mark.parametrize("case_id,corrupt,aside,reason", TRAINER_CORRUPTIONS,
                         ids=[c[0] for c in TRAINER_CORRUPTIONS])
def test_broken_latest_checkpoint_falls_back_to_the_previous(runs, tmp_path, caplog, case_id,
                                                             corrupt, aside, reason):
    good, full, _ = runs
    wd = tmp_path / "wd"
    shutil.copytree(good, wd)
    corrupt(wd, runs)
    with caplog.at_level(logging.WARNING, logger=trainer_lib.__name__):
        res = _fit(wd)
    # Resumed from the newest intact checkpoint, and the result equals the uninterrupted run's.
    assert res.start_step == (24 if aside == [28] else 20), case_id
    assert _states_equal(res.state, full.state), case_id
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                and r.name == trainer_lib.__name__]
    assert len(warnings) == 1, warnings
    assert str(wd / "checkpoints") in warnings[0]
    assert f"skipping unusable step(s) {aside}" in warnings[0]
    assert f"resuming from step {res.start_step}" in warnings[0]
    import re
    assert re.search(reason, warnings[0]), warnings[0]
    # The broken step is kept for inspection outside the checkpoint directory, never read again.
    moved = sorted(p.name.split("-")[0] for p in (wd / trainer_lib._QUARANTINE).iterdir())
    assert moved == [str(s) for s in aside]
    kept = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert aside[0] not in kept or aside == [24] and 24 in kept  # 24 is re-saved by the resumed run
    assert not (wd.parent / "pwned").exists()
    # A further call finds the run complete and intact: no warning, nothing to redo.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=trainer_lib.__name__):
        again = _fit(wd)
    assert again.start_step == 24 and again.history == []
    assert not [r for r in caplog.records if r.name == trainer_lib.__name__]


def test_no_intact_checkpoint_is_a_clear_error(runs, tmp_path):
    """A workdir of another model (every checkpoint mis-shaped): refused, not restarted."""
    _, _, narrow = runs
    wd = tmp_path / "wd"
    shutil.copytree(narrow, wd)
    with pytest.raises(trainer_lib.CheckpointError) as info:
        _fit(wd)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(wd / "checkpoints") in msg
    assert "step 24: ValueError: array" in msg and "step 20: ValueError: array" in msg
    assert "has shape (8, 2); the run's state has (16, 2)" in msg
    assert "new workdir" in msg
    # Nothing was moved or overwritten.
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["20", "24"]
    assert not (wd / trainer_lib._QUARANTINE).exists()


def test_foreign_pickles_in_the_workdir_are_never_unpickled(runs, tmp_path):
    good, full, _ = runs
    wd = tmp_path / "wd"
    shutil.copytree(good, wd)
    marker = tmp_path / "pwned"
    for where in ("state.pkl", "checkpoints/state.pkl", "checkpoints/24/state.pkl",
                  "checkpoints/24/default/params.pkl", "checkpoints/24/default/d/chunk.pkl"):
        (wd / where).write_bytes(_evil_bytes(marker))
    res = _fit(wd)
    assert res.start_step == 24 and _states_equal(res.state, full.state)
    assert not marker.exists()
