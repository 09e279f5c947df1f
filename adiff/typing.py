"""Type aliases shared across adiff."""
from typing import Any, Callable

import jax

Array = jax.Array
PRNGKey = jax.Array
PyTree = Any
# A score function maps a batch x [B, ...] and times t [B] to the score of p_t at x, shape of x.
ScoreFn = Callable[[Array, Array], Array]
