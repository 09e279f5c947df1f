r"""Probe (issue 7, session 11): forward, backward and combined future-frame prediction.

  flock /tmp/adiff_heavy.lock python -m experiments.benchmarks.video_bidirectional --part=procedural
  flock /tmp/adiff_heavy.lock python -m experiments.benchmarks.video_bidirectional --part=ped2

Why: a forward predictor scores the first normal frame after an anomalous interval high, because it
is predicted from anomalous context (docs/results/video/procedural_varied_scores.png). A backward
predictor (the same configured VideoDetector fitted on time-reversed clips, its scores reversed
back) has the mirror artefact before the interval. Their per-frame minimum drops both artefacts
where both models see the anomalous frames; the mean halves them.
Sets: the varied procedural preset (seed 0) or Ped2 at the config's size; rows: forward (the
configured default), backward, min and mean, on Ped2 also with the benchmark's temporal smoothing.
Prints the results as JSON and writes them to --out.
"""
from __future__ import annotations

import json
import pathlib
import time

from absl import app, flags

import numpy as np

from adiff.detectors.video import VideoDetector
from experiments.benchmarks import video as video_bench
from experiments.configs import video_ped2, video_procedural

_PART = _OUT = None


def define_flags() -> None:
    """Defines the script's flags (only when run as a script: tests import this module beside
    other benchmark modules, whose flag names would clash)."""
    global _PART, _OUT  # pylint: disable=global-statement
    _PART = flags.DEFINE_enum("part", "procedural", ["procedural", "ped2"], "Which set.")
    _OUT = flags.DEFINE_string("out", "/tmp/video_bidirectional.json", "JSON output.")


def combine_directions(forward: list, backward: list) -> dict:
    """Rows of per-clip frame scores: forward, backward, their per-frame min and mean.

    Args:
      forward: per-clip [T] scores of the forward model.
      backward: per-clip [T] scores of the backward model, already in forward time order.
    """
    if len(forward) != len(backward) or any(len(a) != len(b) for a, b in zip(forward, backward)):
        raise ValueError("forward and backward must hold the same clips with the same lengths")
    return {"forward (default)": list(forward), "backward": list(backward),
            "min(fwd, bwd)": [np.minimum(a, b) for a, b in zip(forward, backward)],
            "mean(fwd, bwd)": [(np.asarray(a) + np.asarray(b)) / 2 for a, b in zip(forward, backward)]}


def fit_both(cfg, train, test) -> tuple:
    """Fits the config's detector forward and on reversed clips; returns (rows, fit seconds)."""
    kw = dict(cfg.detector)
    t = time.time()
    fwd = VideoDetector(seed=cfg.seed, **kw).fit(train.clips)
    bwd = VideoDetector(seed=cfg.seed, **kw).fit([c[::-1] for c in train.clips])
    fit_s = time.time() - t
    s_f = fwd.decision_function(test.clips)
    s_b = [s[::-1] for s in bwd.decision_function([c[::-1] for c in test.clips])]
    return combine_directions(s_f, s_b), fit_s


def main(argv):
    del argv
    if _PART.value == "procedural":
        cfg = video_procedural.get_config()
        cfg.variant = "varied"
        train, test = video_bench.load_split(cfg, seed=cfg.seed)
        rows, fit_s = fit_both(cfg, train, test)
        res = {k: video_bench.auroc_by_type(test, v) for k, v in rows.items()}
    else:
        cfg = video_ped2.get_config()
        train, test = video_bench.load_split(cfg, seed=cfg.seed)
        rows, fit_s = fit_both(cfg, train, test)
        res = {k: video_bench.frame_metrics(test.labels, v)
               for k, v in video_bench.with_smoothed(rows).items()}
    out = {"part": _PART.value, "seed": cfg.seed, "fit_seconds": fit_s, "results": res}
    text = json.dumps(out, indent=1, default=float)
    print(text)
    pathlib.Path(_OUT.value).write_text(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
