"""Pure, jitted train and eval steps with NamedShardings, EMA and a NaN guard.

`loss_fn(params, batch, key) -> (loss [], aux)` is any differentiable function; `aux` is a dict of
scalars reported as metrics. The step is `jax.jit`-compiled with the state's sharding (replicated,
or FSDP-split with an "fsdp" mesh axis) and the batch split over the batch axes; the state is
donated. The per-step key is `fold_in(key, state.step)`, so a run is a pure function of
(initial state, batches, key) and a resumed run replays exactly.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from adiff import sharding as sharding_lib
from adiff.training.state import TrainState
from adiff.typing import Array, PRNGKey, PyTree

__all__ = ["LossFn", "make_train_step", "make_eval_step", "ema_update", "tree_select"]

LossFn = Callable[[PyTree, PyTree, PRNGKey], tuple[Array, dict[str, Array]]]


def ema_update(ema: PyTree, params: PyTree, decay: float | Array) -> PyTree:
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf (dtype of ema kept)."""
    return jax.tree.map(
        lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema, params)


def tree_select(pred: Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """Leafwise `jnp.where(pred, on_true, on_false)` for a scalar boolean `pred`."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _check_loss_output(out: Any) -> tuple[Array, dict]:
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError("loss_fn must return (loss, aux_dict), got "
                        f"{type(out).__name__}")
    loss, aux = out
    if not isinstance(aux, dict):
        raise TypeError(f"loss_fn's aux must be a dict of scalars, got {type(aux).__name__}")
    if jnp.shape(loss) != ():
        raise ValueError(f"loss_fn's loss must be a scalar, got shape {jnp.shape(loss)}")
    return loss, aux


def _check_mesh(mesh):
    if mesh is not None and not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__}")


class _ShardedFn:
    """Jits `fn(tree, batch, key)` on first use, with shardings derived from `tree`'s structure."""

    def __init__(self, fn, *, mesh: Mesh | None, donate: bool, tree_out: bool):
        self._fn = fn
        self._mesh = mesh
        self._donate = donate
        self._tree_out = tree_out
        self._cache: dict = {}

    def _jitted(self, tree):
        treedef = jax.tree.structure(tree)
        shapes = tuple(jnp.shape(x) for x in jax.tree.leaves(tree))
        cache_key = (treedef, shapes)
        if cache_key not in self._cache:
            donate = (0,) if self._donate else ()
            if self._mesh is None:
                jitted = jax.jit(self._fn, donate_argnums=donate)
            else:
                tree_sh = sharding_lib.state_sharding(self._mesh, tree)
                rep = sharding_lib.replicated_sharding(self._mesh)
                data = sharding_lib.data_sharding(self._mesh)
                out = (tree_sh, rep) if self._tree_out else rep
                jitted = jax.jit(self._fn, in_shardings=(tree_sh, data, rep), out_shardings=out,
                                 donate_argnums=donate)
            self._cache[cache_key] = jitted
        return self._cache[cache_key]

    def __call__(self, tree, batch, key):
        return self._jitted(tree)(tree, batch, key)

    def lower(self, tree, batch, key):
        """`jax.jit(...).lower` of the underlying function (for cost analysis)."""
        return self._jitted(tree).lower(tree, batch, key)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *,
                    ema_decay: float = 0.999, mesh: Mesh | None = None,
                    donate: bool = True) -> Callable[[TrainState, PyTree, PRNGKey],
                                                     tuple[TrainState, dict[str, Array]]]:
    """Builds `step(state, batch, key) -> (state, metrics)`.

    One step: key_s = fold_in(key, state.step); (loss, aux), grads = value_and_grad(loss_fn);
    updates from `tx`; ema <- ema_decay * ema + (1 - ema_decay) * new_params. If the loss or the
    gradient norm is not finite, the update is skipped: params, EMA and optimizer state are kept,
    only `step` advances, and `metrics["nan_skipped"]` is 1.

    Args:
      loss_fn: `(params, batch, key) -> (loss [], aux dict of scalars)`.
      tx: optax transformation (its state is `state.opt_state`).
      ema_decay: EMA decay in [0, 1].
      mesh: optional mesh; the state is replicated (FSDP-split with an "fsdp" axis) and the
        batch's leading dimension split over the batch axes. None: default device, no shardings.
      donate: donate the input state's buffers (do not reuse the passed state afterwards).

    Returns:
      The step function (compiled on first call per state structure); it also has
      `.lower(state, batch, key)`. Metrics: loss, grad_norm, nan_skipped and the aux entries.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"tx must be an optax.GradientTransformation, got {type(tx).__name__}")
    if not 0.0 <= float(ema_decay) <= 1.0:
        raise ValueError(f"ema_decay must be in [0, 1], got {ema_decay}")
    _check_mesh(mesh)
    decay = float(ema_decay)

    def _loss(params, batch, key):
        return _check_loss_output(loss_fn(params, batch, key))

    def step(state: TrainState, batch: PyTree, key: PRNGKey):
        key = jax.random.fold_in(key, state.step)
        (loss, aux), grads = jax.value_and_grad(_loss, has_aux=True)(state.params, batch, key)
        grad_norm = optax.global_norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, decay)
        new_state = TrainState(
            step=state.step + 1,
            params=tree_select(ok, params, state.params),
            ema_params=tree_select(ok, ema, state.ema_params),
            opt_state=tree_select(ok, opt_state, state.opt_state),
        )
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}
        metrics.update(loss=jnp.asarray(loss, jnp.float32), grad_norm=grad_norm,
                       nan_skipped=jnp.logical_not(ok).astype(jnp.int32))
        return new_state, metrics

    return _ShardedFn(step, mesh=mesh, donate=donate, tree_out=True)


def make_eval_step(loss_fn: LossFn, *, mesh: Mesh | None = None
                   ) -> Callable[[PyTree, PyTree, PRNGKey], dict[str, Array]]:
    """Builds `eval(params, batch, key) -> metrics` (loss and aux entries), jitted, no donation.

    Args:
      loss_fn: `(params, batch, key) -> (loss [], aux dict of scalars)`.
      mesh: optional mesh (params replicated or FSDP-split, batch split over the batch axes).

    Returns:
      The eval function; it also has `.lower(params, batch, key)`.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    _check_mesh(mesh)

    def evaluate(params, batch, key):
        loss, aux = _check_loss_output(loss_fn(params, batch, key))
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}
        metrics["loss"] = jnp.asarray(loss, jnp.float32)
        return metrics

    return _ShardedFn(evaluate, mesh=mesh, donate=False, tree_out=False)
