r"""adiff experiment launcher (absl): --config (ml_collections file), --workdir, --mode.

  python -m experiments.main                       # default: tabular detector on sklearn data
  python -m experiments.main --mode=train --config=experiments/configs/gmm2d.py \
      --workdir=/tmp/gmm2d --config.train.num_steps=50
  python -m experiments.main --mode=score --workdir=DIR --input=rows.csv

Modes (each `(config, workdir) -> None`, chosen by --mode and the config's `kind`):
  train      score-model configs (kind "score_model"): train, checkpoint, sample;
             detector configs: fit on all the data and save the detector
  evaluate   detector configs: fit, score the test split, metrics, plots, saved detector
  benchmark  evaluate over every seed in config.seeds (0..4 unless the config says otherwise)
  score      load workdir/detector and score --input (a .npz with array X, or a .csv)
The ConfigDict is converted to typed values here, at the boundary; adiff never receives one.
"""
from __future__ import annotations

import os
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "tabular_default.py"),
    "Experiment config file (ml_collections).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs "
                               "(default: a new temporary directory).")
_MODE = flags.DEFINE_enum("mode", "evaluate", ["train", "evaluate", "benchmark", "score"], "What to run.")
_INPUT = flags.DEFINE_string("input", None, "File to score in --mode=score (.npz with X, or .csv).")


def _kind(config) -> str:
    return config.get("kind", "score_model")


def run(mode: str, config, workdir: str) -> None:
    """Runs one mode of the launcher on a config (also usable from Python and notebooks)."""
    from experiments import detector_job, score_model_job
    kind = _kind(config)
    if kind == "score_model":
        if mode != "train":
            raise app.UsageError(f"config kind 'score_model' supports --mode=train only, got {mode!r}")
        score_model_job.train_score_model(config, workdir)
        return
    if kind != "tabular":
        raise app.UsageError(f"unknown config kind {kind!r}")
    if mode in ("evaluate", "benchmark"):
        if mode == "benchmark" and not config.get("seeds_benchmark_done"):
            with config.unlocked():
                config.seeds = tuple(config.get("benchmark_seeds", (0, 1, 2, 3, 4)))
        detector_job.evaluate_tabular(config, workdir)
    elif mode == "train":
        detector_job.train_tabular(config, workdir)
    elif mode == "score":
        if not _INPUT.value:
            raise app.UsageError("--mode=score needs --input=<file.npz|file.csv>")
        detector_job.score_tabular(config, workdir, _INPUT.value)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="adiff_")
    os.makedirs(workdir, exist_ok=True)
    logging.info("mode=%s workdir=%s", _MODE.value, workdir)
    print(f"workdir: {workdir}", flush=True)
    run(_MODE.value, _CONFIG.value, workdir)


if __name__ == "__main__":
    app.run(main)
