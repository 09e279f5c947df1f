"""The fit loop: grain input pipeline, optimizer, orbax checkpoints with automatic resume, logging.

Determinism and resumption: the batch number `s` (0-based) is a pure function of (data, seed,
batch_size, s). The pipeline is grain's `MapDataset`: indices -> shuffle(seed) -> repeat -> batch
(drop_remainder), where grain's shuffle draws a fresh permutation per epoch (seed + epoch), and
batch `s` is the slice [s * B, (s + 1) * B) of that endless stream (a batch may straddle two
epochs). The step key is `fold_in(key(seed), step)`. So a run resumed from a checkpoint at step s
reads exactly the batches and keys an uninterrupted run would, and ends in the same state,
provided the `TrainConfig` is the same (the cosine schedule's horizon is `num_steps`: resuming with
a different `num_steps` changes the learning rates of the remaining steps).

Preemption: a SIGKILL at any moment loses at most the steps since the last checkpoint (orbax
writes each checkpoint to a temporary directory and renames it when complete, so a half-written
one is never restored). A SIGTERM (the usual advance warning of a preemption) makes `fit` finish
the current step, save a checkpoint at that step, and raise `Preempted` (a `SystemExit` with code
143), so an unhandled SIGTERM still ends the process after the save.

Damaged or foreign checkpoints: the resume restores the newest *intact* checkpoint (metadata
matching the run's state, data that tensorstore reads back with valid checksums, the directory's
step, finite arrays). Newer broken ones are moved to `workdir/corrupt_checkpoints/` with a logged
warning; if none is intact, `fit` raises `CheckpointError` naming the directory and the problems.
Nothing in a workdir is ever unpickled.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import threading
import time
from typing import Any, Mapping

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from adiff import sharding as sharding_lib
from adiff.training.state import TrainState, create_train_state
from adiff.training.step import LossFn, make_train_step
from adiff.typing import PyTree

__all__ = ["TrainConfig", "FitResult", "Preempted", "CheckpointError", "make_schedule",
           "make_optimizer", "make_dataset", "tree_sha256", "fit"]

SCHEDULES = ("cosine", "constant")
_LOG = logging.getLogger(__name__)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_float(name: str, value: Any, *, minimum: float, maximum: float = float("inf"),
                 open_min: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} ({value!r})")
    bad_min = value <= minimum if open_min else value < minimum
    if not np.isfinite(value) or bad_min or value > maximum:
        bracket = "(" if open_min else "["
        raise ValueError(f"{name} must be in {bracket}{minimum}, {maximum}], got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyper-parameters of `fit` (validated on construction).

    Attributes:
      num_steps: total number of train steps (the run's global step at the end).
      batch_size: global batch size (divisible by the mesh's batch shards).
      learning_rate: peak learning rate of AdamW.
      warmup_steps: linear warm-up from 0 to `learning_rate` (<= num_steps).
      schedule: "cosine" (decay to 0 at num_steps) or "constant" after warm-up.
      weight_decay: AdamW decoupled weight decay.
      grad_clip_norm: clip the gradient's global norm to this value; None disables clipping.
      ema_decay: decay of the parameter EMA, in [0, 1].
      log_every: metrics are logged every this many steps (and at the last step).
      checkpoint_every: orbax save interval in steps (a final save is always made).
      keep_checkpoints: number of checkpoints kept.
      seed: seeds the data order and the step keys.
    """

    num_steps: int = 2000
    batch_size: int = 256
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    schedule: str = "cosine"
    weight_decay: float = 0.0
    grad_clip_norm: float | None = 1.0
    ema_decay: float = 0.999
    log_every: int = 100
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    seed: int = 0

    def __post_init__(self):
        _check_int("num_steps", self.num_steps, minimum=1)
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_float("learning_rate", self.learning_rate, minimum=0.0, open_min=True)
        _check_int("warmup_steps", self.warmup_steps, minimum=0)
        if self.warmup_steps > self.num_steps:
            raise ValueError(f"warmup_steps must be <= num_steps={self.num_steps}, "
                             f"got {self.warmup_steps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _check_float("weight_decay", self.weight_decay, minimum=0.0)
        if self.grad_clip_norm is not None:
            _check_float("grad_clip_norm", self.grad_clip_norm, minimum=0.0, open_min=True)
        _check_float("ema_decay", self.ema_decay, minimum=0.0, maximum=1.0)
        _check_int("log_every", self.log_every, minimum=1)
        _check_int("checkpoint_every", self.checkpoint_every, minimum=1)
        _check_int("keep_checkpoints", self.keep_checkpoints, minimum=1)
        _check_int("seed", self.seed, minimum=0)
        if self.seed >= 2**32:
            raise ValueError(f"seed must be < 2**32, got {self.seed}")


@dataclasses.dataclass(frozen=True)
class FitResult:
    """Output of `fit`.

    Attributes:
      state: the final `TrainState`.
      history: the logged metric dicts of this call (step, loss, lr, grad_norm, steps_per_sec,
        nan_skipped and aux entries), in order.
      start_step: the step this call started from (> 0 when resumed from a checkpoint).
    """

    state: TrainState
    history: list[dict]
    start_step: int = 0


class Preempted(SystemExit):
    """Raised by `fit` after a SIGTERM, once the checkpoint of the current step is saved.

    A `SystemExit` (code 143 = 128 + SIGTERM), so a script that does not catch it exits with the
    conventional status of a process ended by SIGTERM. Attribute `step`: the saved global step.
    """

    def __init__(self, step: int):
        super().__init__(128 + signal.SIGTERM)
        self.step = step

    def __str__(self) -> str:
        return f"training preempted by SIGTERM; checkpoint saved at step {self.step}"


class _SigtermFlag:
    """Installs a SIGTERM handler (main thread only) that records the request; restores on exit."""

    def __init__(self, enabled: bool):
        self.requested = False
        self._prev = None
        self._installed = enabled and threading.current_thread() is threading.main_thread()

    def _handler(self, signum, frame):  # pylint: disable=unused-argument
        self.requested = True

    def __enter__(self):
        if self._installed:
            self._prev = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGTERM, self._prev)
        return False

    def agreed(self) -> bool:
        """The request, OR-ed over processes (a collective when there are several)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
        flags = multihost_utils.process_allgather(np.asarray([int(self.requested)], np.int32))
        return bool(np.max(flags))


def make_schedule(config: TrainConfig) -> optax.Schedule:
    """Learning-rate schedule: linear warm-up from 0, then cosine decay to 0 or constant."""
    _check_config(config)
    lr, warm, total = config.learning_rate, config.warmup_steps, config.num_steps
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=warm,
            decay_steps=max(total, warm + 1), end_value=0.0)
    if warm == 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)], [warm])


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """AdamW with the config's schedule and weight decay, after global-norm clipping."""
    _check_config(config)
    adamw = optax.adamw(learning_rate=make_schedule(config), weight_decay=config.weight_decay)
    if config.grad_clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)


def _check_config(config) -> None:
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")


def _as_arrays(data: Any) -> dict[str, np.ndarray] | np.ndarray:
    if isinstance(data, Mapping):
        if not data:
            raise ValueError("data must be a non-empty dict of arrays, got an empty dict")
        out = {k: np.asarray(v) for k, v in data.items()}
        sizes = {k: (v.shape[0] if v.ndim else None) for k, v in out.items()}
        if len(set(sizes.values())) != 1 or None in sizes.values():
            raise ValueError(f"data arrays must share a leading dimension N, got {sizes}")
        n = next(iter(sizes.values()))
    else:
        out = np.asarray(data)
        if out.ndim == 0:
            raise ValueError(f"data must be an array [N, ...], got a scalar of shape {out.shape}")
        n = out.shape[0]
    if n == 0:
        raise ValueError("data must contain at least one example, got N=0")
    if any(a.dtype == object for a in jax.tree.leaves(out)):
        raise TypeError("data arrays must be numeric, got dtype object")
    return out


def make_dataset(data: Any, *, batch_size: int, seed: int) -> grain.MapDataset:
    """The endless, deterministic batch pipeline used by `fit`.

    Args:
      data: numpy (or jax) array [N, ...], dict of arrays with a common N, or a finite
        `grain.MapDataset` of examples.
      batch_size: examples per batch.
      seed: shuffle seed (grain draws a new permutation per epoch from seed + epoch).

    Returns:
      A `grain.MapDataset` whose item `s` is batch number `s` (a pure function of data, seed,
      batch_size and s); batches of arrays are gathered by index (no per-example Python work).
    """
    _check_int("batch_size", batch_size, minimum=1)
    _check_int("seed", seed, minimum=0)
    if isinstance(data, grain.MapDataset):
        if len(data) == 0:
            raise ValueError("data must contain at least one example, got an empty MapDataset")
        return data.shuffle(seed=seed).repeat().batch(batch_size, drop_remainder=True)
    arrays = _as_arrays(data)
    n = jax.tree.leaves(arrays)[0].shape[0]
    indices = grain.MapDataset.range(n).shuffle(seed=seed).repeat()
    indices = indices.batch(batch_size, drop_remainder=True)
    return indices.map(lambda idx: jax.tree.map(lambda a: a[np.asarray(idx)], arrays))


def _host_tree(tree: PyTree) -> PyTree:
    """Host copy of `tree`; with several processes, global arrays are gathered (a collective)."""
    if jax.process_count() > 1 and any(
            isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(tree)):
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.device_get(tree)


def tree_sha256(tree: PyTree) -> str:
    """SHA-256 over the leaves' key paths, dtypes, shapes and bytes (host copy, flatten order).

    With several processes and non-addressable global arrays this gathers them, so every process
    must call it (it is a collective); all processes then get the same digest.
    """
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(_host_tree(tree))[0]:
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _Logger:
    """metrics.jsonl + TensorBoard + console, written by process 0 only."""

    def __init__(self, workdir: str | None, progress: bool):
        self._main = jax.process_index() == 0
        self._progress = progress and self._main
        self._jsonl = None
        self._tb = None
        if workdir is not None and self._main:
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
            from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
            self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))

    def log(self, record: dict, *, total: int, eta: float) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step":
                    self._tb.add_scalar(f"train/{k}", v, record["step"])
        if self._progress:
            print(f"step {record['step']}/{total}  loss {record['loss']:.5g}  "
                  f"{record['steps_per_sec']:.1f} it/s  ETA {_format_eta(eta)}"
                  + (f"  nan_skipped {record['nan_skipped']}" if record["nan_skipped"] else ""),
                  flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _summarize(window: list[dict], step: int, lr: float, dt: float) -> dict:
    host = jax.device_get(window)
    record: dict[str, Any] = {"step": step}
    for k in host[0]:
        vals = np.asarray([m[k] for m in host], np.float64)
        if k == "nan_skipped":
            record[k] = int(vals.sum())
        else:
            finite = vals[np.isfinite(vals)]
            record[k] = float(finite.mean()) if finite.size else float("nan")
    record["lr"] = float(lr)
    record["steps_per_sec"] = len(window) / max(dt, 1e-9)
    return record


class CheckpointError(ValueError):
    """No checkpoint in a workdir can be restored into the run's state (see `fit`)."""


_QUARANTINE = "corrupt_checkpoints"


def _check_restorable(item_dir: str, abstract: PyTree) -> None:
    """Raises ValueError naming what in the checkpoint item `item_dir` does not match `abstract`.

    Reads only orbax's JSON metadata (never unpickles anything): the tree structure and each
    array's shape must match the run's state, so a foreign or re-purposed workdir is refused with a
    readable message instead of a tensorstore trace. Without readable metadata the check is left
    to the restore, whose error then says what is wrong.
    """
    with ocp.StandardCheckpointer() as ckpt:
        meta = ckpt.metadata(item_dir)
    for attr in ("item_metadata", "tree"):
        meta = getattr(meta, attr, meta)
    if meta is None:
        return
    norm = lambda k: "".join(c for c in k if c not in "'\".[]")
    saved = {norm(jax.tree_util.keystr(k)): v
             for k, v in jax.tree_util.tree_flatten_with_path(meta, is_leaf=_is_array_meta)[0]}
    want = {norm(jax.tree_util.keystr(k)): (jax.tree_util.keystr(k), v)
            for k, v in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    missing = sorted(k for n, (k, _) in want.items() if n not in saved)
    extra = sorted(n for n in saved if n not in want)
    if missing or extra:
        raise ValueError(f"its arrays do not match the run's state: missing {missing[:4]}, "
                         f"unexpected {extra[:4]}")
    for n, (k, v) in want.items():
        shape = tuple(getattr(saved[n], "shape", None) or ())
        if shape != tuple(v.shape):
            raise ValueError(f"array {k} has shape {shape}; the run's state has {tuple(v.shape)}")


def _is_array_meta(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _check_restored(state: TrainState, step: int) -> None:
    """A restored state must be at its checkpoint's step and hold finite numbers only."""
    got = int(jax.device_get(state.step))
    if got != step:
        raise ValueError(f"it holds the state of step {got}, not {step}")
    tree = {"params": state.params, "ema_params": state.ema_params, "opt_state": state.opt_state}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            continue
        # A reduction on device: works for global (multi-process) arrays; the result is replicated.
        if not bool(jax.device_get(jnp.all(jnp.isfinite(leaf)))):
            raise ValueError(f"array {jax.tree_util.keystr(path)} holds NaN/inf")


def _restore_latest_intact(manager: ocp.CheckpointManager, state: TrainState, workdir: str,
                           config: TrainConfig):
    """Restores the newest intact checkpoint; moves newer broken ones aside with a warning.

    A checkpoint is intact when its metadata matches the run's state (structure and shapes),
    orbax restores it (tensorstore's OCDBT storage checksums its data, so truncated or altered
    array files fail here), its step is the directory's and its arrays are finite. Newer
    checkpoints that fail are moved to `workdir/corrupt_checkpoints/` (process 0; kept for
    inspection, never read again) and a warning is logged, so training resumes from the last
    good state rather than from garbage. When none is intact, a `CheckpointError` names the
    directory and every problem (training is not silently restarted from scratch). Nothing in
    the directory is ever unpickled: orbax reads JSON metadata and tensorstore arrays only.

    Returns:
      (restored state, checkpoint manager over the cleaned directory).
    """
    ckpt_dir = os.path.join(workdir, "checkpoints")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    problems: list[tuple[int, str]] = []
    restored = None
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            item_dir = os.path.join(ckpt_dir, str(step), "default")
            if not os.path.isdir(item_dir):
                raise ValueError(f"{item_dir!r} is missing (not a checkpoint written by fit)")
            _check_restorable(item_dir, abstract)
            # A fresh checkpointer per candidate: a broken step must not poison the next restore.
            with ocp.StandardCheckpointer() as ckpt:
                candidate = ckpt.restore(item_dir, abstract)
            _check_restored(candidate, step)
        except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore raise many types
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            problems.append((step, f"{type(e).__name__}: {msg[:300]}"))
            continue
        restored = candidate
        break
    detail = "; ".join(f"step {s}: {m}" for s, m in problems)
    if restored is None:
        raise CheckpointError(
            f"no checkpoint in {ckpt_dir!r} can be restored into this run's state ({detail}). "
            "Use a new workdir (or move that directory away) to start from scratch.")
    if problems:
        good = int(jax.device_get(restored.step))
        aside = os.path.join(workdir, _QUARANTINE)
        _LOG.warning(
            "checkpoints in %r: skipping unusable step(s) %s (%s); resuming from step %d; "
            "the skipped ones are moved to %r", ckpt_dir, [s for s, _ in problems], detail, good,
            aside)
        if jax.process_index() == 0:
            os.makedirs(aside, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for s, _ in problems:
                src = os.path.join(ckpt_dir, str(s))
                if os.path.exists(src):
                    os.replace(src, os.path.join(aside, f"{s}-{stamp}-{os.getpid()}"))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
            multihost_utils.sync_global_devices("adiff_checkpoint_quarantine")
        manager.close()
        manager = ocp.CheckpointManager(
            ckpt_dir, options=ocp.CheckpointManagerOptions(
                max_to_keep=config.keep_checkpoints, save_interval_steps=config.checkpoint_every))
    return restored, manager


def fit(loss_fn: LossFn, init_params: PyTree, data: Any, *, config: TrainConfig,
        workdir: str | None = None, mesh: Mesh | None = None,
        progress: bool = True, handle_sigterm: bool = True) -> FitResult:
    """Trains `init_params` on `data` by minimizing `loss_fn`, with checkpoints and logs.

    With a `workdir`, the run resumes automatically from the latest intact checkpoint in
    `workdir/checkpoints` (orbax, restored into the abstract state; a newer truncated, altered,
    mis-shaped, mis-numbered or non-finite one is moved to `workdir/corrupt_checkpoints/` with a
    logged warning), saves every
    `checkpoint_every` steps and at the end, appends metrics to `workdir/metrics.jsonl` and
    TensorBoard files under `workdir/tensorboard`, and writes `workdir/final_metrics.json`
    (global step and SHA-256 of the final params and EMA params).

    Args:
      loss_fn: `(params, batch, key) -> (loss [], aux dict of scalars)`; `batch` is what the
        pipeline yields (an array [B, ...] or a dict of arrays).
      init_params: initial parameters (used when there is no checkpoint to resume from).
      data: array [N, ...], dict of arrays with a common N, or a finite `grain.MapDataset`.
      config: a `TrainConfig`.
      workdir: directory for checkpoints and logs; None trains in memory only.
      mesh: optional device mesh (see `adiff.sharding.make_mesh`); None uses the default device.
      progress: print a progress line at every log step.
      handle_sigterm: with a `workdir`, catch SIGTERM while training (main thread only): finish
        the current step, save a checkpoint and raise `Preempted`. With several processes the
        request is agreed at checkpoint steps (every `checkpoint_every` steps).

    Returns:
      A `FitResult` with the final state, the logged history and the start step.

    Raises:
      Preempted: after a SIGTERM, once the checkpoint of the current step is saved.
      CheckpointError: `workdir/checkpoints` holds checkpoints but none restores into this run's
        state (e.g. the workdir of another model); nothing is moved or overwritten then.
    """
    _check_config(config)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if mesh is not None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__}")
        shards = sharding_lib.batch_axis_size(mesh)
        if config.batch_size % shards:
            raise ValueError(f"config.batch_size must be divisible by the mesh's batch shards "
                             f"({shards}), got {config.batch_size}")
        if config.batch_size % jax.process_count():
            raise ValueError(f"config.batch_size must be divisible by the process count "
                             f"({jax.process_count()}), got {config.batch_size}")
    dataset = make_dataset(data, batch_size=config.batch_size, seed=config.seed)

    tx = make_optimizer(config)
    schedule = make_schedule(config)
    state = create_train_state(init_params, tx)
    if mesh is not None:
        state = jax.device_put(state, sharding_lib.state_sharding(mesh, state))

    manager = None
    if workdir is not None:
        workdir = os.path.abspath(os.fspath(workdir))
        os.makedirs(workdir, exist_ok=True)
        manager = ocp.CheckpointManager(
            os.path.join(workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                                 save_interval_steps=config.checkpoint_every))
        if manager.all_steps():
            state, manager = _restore_latest_intact(manager, state, workdir, config)

    start = int(jax.device_get(state.step))
    train_step = make_train_step(loss_fn, tx, ema_decay=config.ema_decay, mesh=mesh)
    key = jax.random.key(config.seed)
    # Multi-host: each process feeds its contiguous slice of the global batch.
    nproc, pid = jax.process_count(), jax.process_index()
    local = config.batch_size // nproc

    logger = _Logger(workdir, progress)
    history: list[dict] = []
    window: list[dict] = []
    t_run = t_window = time.perf_counter()
    preempted = False
    sigterm = _SigtermFlag(handle_sigterm and manager is not None)
    try:
        sigterm.__enter__()
        for s in range(start, config.num_steps):
            batch = dataset[s]
            if nproc > 1:
                batch = jax.tree.map(lambda a: a[pid * local:(pid + 1) * local], batch)
            if mesh is not None:
                batch = sharding_lib.shard_batch(batch, mesh)
            state, metrics = train_step(state, batch, key)
            window.append(metrics)
            done = s + 1
            if done % config.log_every == 0 or done == config.num_steps:
                jax.block_until_ready(metrics)
                now = time.perf_counter()
                record = _summarize(window, done, schedule(s), now - t_window)
                rate = (done - start) / max(now - t_run, 1e-9)
                logger.log(record, total=config.num_steps,
                           eta=(config.num_steps - done) / max(rate, 1e-9))
                history.append(record)
                window, t_window = [], time.perf_counter()
            if manager is not None and done % config.checkpoint_every == 0:
                manager.save(done, args=ocp.args.StandardSave(state))
            if sigterm.requested if nproc == 1 else (
                    done % config.checkpoint_every == 0 and sigterm.agreed()):
                preempted = True
                break
        final_step = int(jax.device_get(state.step))
        if manager is not None and manager.latest_step() != final_step:
            manager.save(final_step, args=ocp.args.StandardSave(state), force=True)
    finally:
        if manager is not None:
            manager.wait_until_finished()
            manager.close()
        logger.close()
        sigterm.__exit__(None, None, None)

    if preempted:
        if jax.process_index() == 0 and progress:
            print(f"SIGTERM: checkpoint saved at step {final_step}; exiting", flush=True)
        raise Preempted(final_step)
    if workdir is not None:
        # Checksums first, on every process (they gather sharded arrays); process 0 writes.
        params_sha, ema_sha = tree_sha256(state.params), tree_sha256(state.ema_params)
    if workdir is not None and jax.process_index() == 0:
        final = {
            "step": final_step,
            "start_step": start,
            "params_sha256": params_sha,
            "ema_params_sha256": ema_sha,
            "loss": history[-1]["loss"] if history else None,
            "wall_time_s": time.perf_counter() - t_run,
        }
        with open(os.path.join(workdir, "final_metrics.json"), "w", encoding="utf-8") as f:
            json.dump(final, f, indent=2)
    return FitResult(state=state, history=history, start_step=start)
