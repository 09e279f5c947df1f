r"""adiff experiment launcher (absl): --config (ml_collections file), --workdir, --mode.

  python -m experiments.main                       # default: tabular detector on sklearn data
  python -m experiments.main --mode=train --config=experiments/configs/gmm2d.py \
      --workdir=/tmp/gmm2d --config.train.num_steps=50
  python -m experiments.main --mode=score --workdir=DIR --input=rows.csv
  python -m experiments.main --config=experiments/configs/ts_skab.py --mode=evaluate --workdir=DIR

Modes (chosen by --mode and the config's `kind`):
  train      score-model configs (kind "score_model"): train, checkpoint, sample;
             detector configs: fit on the training data and save the detector
  evaluate   detector configs: fit, score the test split, metrics, plots, saved detector
  benchmark  evaluate over every seed in config.seeds
  score      load workdir/detector and score --input (a .npz with array X, or a .csv for tables;
             for kind "multimodal" a .npz with one array per modality name)
Kinds: "score_model", "tabular" (experiments/detector_job.py), "timeseries", "image", "video",
"multimodal" (experiments/modality_job.py).

Multi-host (--multihost): `jax.distributed.initialize` runs first, before any other use of jax,
with --coordinator_address / --num_processes / --process_id when given, otherwise with the
platform's auto-detection (TPU pod slices, SLURM, ...). Every process runs the same command;
training shards each global batch over the processes, checkpoints go through orbax, and only
process 0 writes logs, plots and result JSON. The detector kinds train on one host: they accept
--multihost only when it yields a single process.
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
                               "(default: a new temporary directory; required with --multihost).")
_MODE = flags.DEFINE_enum("mode", "evaluate", ["train", "evaluate", "benchmark", "score"], "What to run.")
_INPUT = flags.DEFINE_string("input", None, "File to score in --mode=score (.npz with X, or .csv).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (one "
                               "process per host, or per GPU, all running the same command).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0's "
                                   "coordinator (default: auto-detected, e.g. on TPU pods / SLURM).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (default: "
                                      "auto-detected).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (default: "
                                   "auto-detected).")
_CPU_COLLECTIVES = flags.DEFINE_string("cpu_collectives", "gloo", "With --multihost: the CPU "
                                       "backend's cross-process collectives (jax option "
                                       "jax_cpu_collectives_implementation); ignored elsewhere.")

KINDS = ("score_model", "tabular", "timeseries", "image", "video", "multimodal")


def _kind(config) -> str:
    return config.get("kind", "score_model")


def initialize_multihost(*, coordinator_address: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None, cpu_collectives: str | None = "gloo") -> None:
    """Starts jax.distributed (call before any other use of jax in the process).

    Args:
      coordinator_address: "host:port" of process 0; None lets jax auto-detect it.
      num_processes: number of processes; None: auto-detected.
      process_id: this process's index in [0, num_processes); None: auto-detected.
      cpu_collectives: implementation of cross-process collectives on the CPU backend ("gloo");
        None or "" leaves jax's setting unchanged.
    """
    import jax  # pylint: disable=import-outside-toplevel
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    if cpu_collectives and "jax_cpu_collectives_implementation" in jax.config.values:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    kwargs = {k: v for k, v in (("coordinator_address", coordinator_address),
                                ("num_processes", num_processes), ("process_id", process_id))
              if v is not None}
    jax.distributed.initialize(**kwargs)


def run(mode: str, config, workdir: str, *, input_path: str | None = None):
    """Runs one mode of the launcher on a config (also usable from Python and notebooks).

    Args:
      mode: "train", "evaluate", "benchmark" or "score".
      config: an ml_collections.ConfigDict with a `kind` (see KINDS).
      workdir: output directory.
      input_path: the file to score in mode "score".

    Returns:
      What the job returns (metrics dict for evaluate/benchmark, scores for score), or None.
    """
    from experiments import detector_job, score_model_job  # pylint: disable=import-outside-toplevel
    kind = _kind(config)
    if kind not in KINDS:
        raise app.UsageError(f"unknown config kind {kind!r}; expected one of {KINDS}")
    if mode == "score" and not input_path:
        raise app.UsageError("--mode=score needs --input=<file.npz|file.csv>")
    if kind == "score_model":
        if mode != "train":
            raise app.UsageError(f"config kind 'score_model' supports --mode=train only, got {mode!r}")
        return score_model_job.train_score_model(config, workdir)
    import jax  # pylint: disable=import-outside-toplevel
    if jax.process_count() > 1:
        raise app.UsageError(f"config kind {kind!r} trains a detector on one host; run it without "
                             f"--multihost (got {jax.process_count()} processes)")
    if kind != "tabular":
        from experiments import modality_job  # pylint: disable=import-outside-toplevel
        return modality_job.run(mode, config, workdir, input_path=input_path)
    if mode in ("evaluate", "benchmark"):
        if mode == "benchmark" and not config.get("seeds_benchmark_done"):
            with config.unlocked():
                config.seeds = tuple(config.get("benchmark_seeds", (0, 1, 2, 3, 4)))
        return detector_job.evaluate_tabular(config, workdir)
    if mode == "train":
        return detector_job.train_tabular(config, workdir)
    return detector_job.score_tabular(config, workdir, input_path)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
    if _MULTIHOST.value:
        if not _WORKDIR.value:
            raise app.UsageError("--multihost needs --workdir (a directory every process can reach)")
        initialize_multihost(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
                             cpu_collectives=_CPU_COLLECTIVES.value)
    elif any(f.present for f in (flags.FLAGS["coordinator_address"], flags.FLAGS["num_processes"],
                                 flags.FLAGS["process_id"])):
        raise app.UsageError("--coordinator_address/--num_processes/--process_id need --multihost")
    import jax  # pylint: disable=import-outside-toplevel
    main_process = jax.process_index() == 0
    if not main_process:
        logging.set_verbosity(logging.WARNING)  # only process 0 logs
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="adiff_")
    os.makedirs(workdir, exist_ok=True)
    if main_process:
        logging.info("mode=%s workdir=%s processes=%d devices=%d", _MODE.value, workdir,
                     jax.process_count(), jax.device_count())
        print(f"workdir: {workdir}", flush=True)
    try:
        run(_MODE.value, _CONFIG.value, workdir, input_path=_INPUT.value)
    finally:
        if _MULTIHOST.value:
            jax.distributed.shutdown()


if __name__ == "__main__":
    app.run(main)
