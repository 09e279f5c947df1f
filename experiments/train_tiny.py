r"""Standalone absl entry point for the tiny tabular score-model run (configs/tiny.py).

  python -m experiments.train_tiny --config=experiments/configs/tiny.py --workdir=DIR \
      [--config.train.num_steps=200 --config.train.checkpoint_every=10]

Resumes automatically from DIR/checkpoints; a SIGTERM saves a checkpoint at the current step and
exits with status 143; on completion DIR/final_metrics.json holds the global step and the SHA-256
of the final params and EMA params (compare two runs from outside with it).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "tiny.py"),
    "Tiny run config (ml_collections).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoint and log directory (required).")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TinyDataConfig:
    num_rows: int
    num_features: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class TinyModelConfig:
    features: int
    num_blocks: int
    time_dim: int


def make_table(*, num_rows: int, num_features: int, seed: int):
    """The fixed synthetic table: two correlated Gaussian clusters, float32 [num_rows, num_features]."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    rng = np.random.RandomState(seed)
    mix = rng.randn(num_features, num_features) / np.sqrt(num_features)
    centres = np.stack([np.full(num_features, -1.5), np.full(num_features, 1.5)])
    labels = rng.randint(0, 2, size=num_rows)
    x = centres[labels] + rng.randn(num_rows, num_features) @ mix
    return x.astype(np.float32)


def train(config, workdir: str):
    """Trains the tiny model in `workdir` (resuming from its checkpoints); returns the FitResult."""
    import grain  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    from adiff import losses, nets  # pylint: disable=import-outside-toplevel
    from adiff import sde as sde_lib  # pylint: disable=import-outside-toplevel
    from adiff import training  # pylint: disable=import-outside-toplevel

    data_cfg = TinyDataConfig(**config.data.to_dict())
    model_cfg = TinyModelConfig(**config.model.to_dict())
    train_cfg = training.TrainConfig(**config.train.to_dict())
    delay = float(config.step_delay_s)
    if delay < 0:
        raise ValueError(f"step_delay_s must be >= 0, got {delay}")

    table = make_table(num_rows=data_cfg.num_rows, num_features=data_cfg.num_features,
                       seed=config.seed)
    model = nets.ResidualMLP(features=model_cfg.features, num_blocks=model_cfg.num_blocks,
                             time_dim=model_cfg.time_dim)
    params = model.init(jax.random.key(config.seed), table[:2], jnp.ones(2))["params"]
    vp = sde_lib.VPSDE()

    def loss_fn(p, x, key):
        out = losses.dsm_loss(lambda xt, t: model.apply({"params": p}, xt, t), vp, x, key,
                              parameterization="eps")
        return out.loss, {}

    data = table
    if delay > 0:
        per_row = delay / train_cfg.batch_size

        def slow(row):
            time.sleep(per_row)
            return row

        data = grain.MapDataset.source(table).map(slow)
    return training.fit(loss_fn, params, data, config=train_cfg, workdir=workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required (checkpoints and resume live there)")
    os.makedirs(_WORKDIR.value, exist_ok=True)
    result = train(_CONFIG.value, _WORKDIR.value)
    print(f"done: step {int(result.state.step)} (started at {result.start_step})", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
