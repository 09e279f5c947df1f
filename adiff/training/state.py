"""The training state: step counter, parameters, their EMA and the optimizer state."""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import optax

from adiff.typing import Array, PyTree

__all__ = ["TrainState", "create_train_state"]


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes; a pytree (jit, shard and checkpoint it whole).

    Attributes:
      step: [] int32, number of steps taken (NaN-skipped steps included).
      params: model parameters.
      ema_params: exponential moving average of `params` (same structure).
      opt_state: state of the optax transformation.
    """

    step: Array  # [] int32
    params: PyTree
    ema_params: PyTree
    opt_state: PyTree


def create_train_state(params: PyTree, tx: optax.GradientTransformation) -> TrainState:
    """Creates the initial state: step 0, EMA equal to `params`, fresh optimizer state.

    Args:
      params: initial parameters (pytree of arrays).
      tx: the optax transformation that `make_train_step` will use.

    Returns:
      A `TrainState`.
    """
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"tx must be an optax.GradientTransformation, got {type(tx).__name__}")
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("params must contain at least one array, got an empty pytree")
    # Fresh copies: the train step donates the state, which must never delete the caller's
    # arrays, and `ema_params` must not alias `params`.
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    ema_params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema_params,
                      opt_state=tx.init(params))
