r"""Figures for docs/results/video.md: the procedural presets, and frame scores against labels.

  flock /tmp/adiff_heavy.lock python -m experiments.benchmarks.video_plots [--seed=0] [--noscores]

Writes docs/results/video/procedural_presets.png: for the "standard" and "varied" presets of
adiff.data.video.procedural_benchmark, one test clip per kind (normal, then each anomaly type),
three frames around the middle of the anomalous interval (for normal clips, the same frames).
Unless --noscores: fits the procedural config's VideoDetector on the varied preset's training
clips (seed --seed; ~4 min on 2 cores) and writes docs/results/video/procedural_varied_scores.png,
the per-frame scores of one test clip per anomaly type, the detector's against the frame
difference's (each min-max scaled over the plotted clips, so the two share an axis), with the
labelled frames shaded.
"""
from __future__ import annotations

import pathlib

from absl import app, flags

import numpy as np

from adiff.data import video as video_data
from adiff.detectors.video import VideoDetector
from experiments.benchmarks import video as video_bench
from experiments.configs import video_procedural

REPO = pathlib.Path(__file__).resolve().parents[2]
_SEED = _SCORES = _OUT = None


def define_flags() -> None:
    """Defines the script's flags (only when run as a script: tests import this module beside
    other benchmark modules, whose flag names would clash)."""
    global _SEED, _SCORES, _OUT  # pylint: disable=global-statement
    _SEED = flags.DEFINE_integer("seed", 0, "Seed of the procedural sets and the network.")
    _SCORES = flags.DEFINE_bool("scores", True, "Also fit the detector and plot frame scores.")
    _OUT = flags.DEFINE_string("out_dir", str(REPO / "docs" / "results" / "video"), "Output folder.")


def _one_per_kind(test: video_data.VideoSet) -> list:
    """Index of the first test clip of each kind, in the order normal, *ANOMALY_TYPES."""
    return [test.kinds.index(k) for k in ("normal",) + video_data.ANOMALY_TYPES]


def _frames_around(labels: np.ndarray, reference: np.ndarray | None = None) -> list:
    on = np.flatnonzero(labels if reference is None else reference)
    mid = int(on[len(on) // 2]) if len(on) else len(labels) // 2
    return [mid - 2, mid, mid + 2]


def _minmax_together(scores: list) -> list:
    """Per-clip scores min-max scaled by the range over all of them (one shared axis)."""
    lo, hi = min(map(np.min, scores)), max(map(np.max, scores))
    return [(s - lo) / (hi - lo + 1e-12) for s in scores]


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported only when plotting)."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    return plt


def plot_presets(seed: int, path: pathlib.Path) -> None:
    plt = _pyplot()
    kinds = ("normal",) + video_data.ANOMALY_TYPES
    fig, axes = plt.subplots(len(kinds), 6, figsize=(9, 1.6 * len(kinds)))
    for col0, variant in ((0, "standard"), (3, "varied")):
        _, test = video_data.procedural_benchmark(seed, variant=variant)
        idx = _one_per_kind(test)
        for r, (kind, i) in enumerate(zip(kinds, idx)):
            # Normal clips have no interval: show the frames where the first anomaly clip has its own.
            frames = _frames_around(test.labels[i], test.labels[idx[1]] if kind == "normal" else None)
            for c, t in enumerate(frames):
                ax = axes[r, col0 + c]
                ax.imshow(test.clips[i][t, ..., 0], cmap="gray", vmin=0, vmax=255)
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(f"t={t}" + (" (anomalous)" if test.labels[i][t] else ""), fontsize=7)
                if c == 0:
                    ax.set_ylabel(f"{variant}\n{kind}", fontsize=8)
    fig.suptitle("Procedural presets (seed %d): standard (left) and varied (right)" % seed, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scores(seed: int, path: pathlib.Path) -> None:
    plt = _pyplot()
    cfg = video_procedural.get_config()
    cfg.variant = "varied"
    train, test = video_bench.load_split(cfg, seed=seed)
    det = VideoDetector(seed=seed, verbose=True, **dict(cfg.detector)).fit(train.clips)
    idx = _one_per_kind(test)[1:]
    clips = [test.clips[i] for i in idx]
    ours = det.decision_function(clips)
    ours = _minmax_together(ours)
    fd = _minmax_together([video_bench.frame_difference(c) for c in clips])
    fig, axes = plt.subplots(1, len(idx), figsize=(3.2 * len(idx), 2.6), sharey=True)
    for ax, i, a, b in zip(axes, idx, ours, fd):
        lab = test.labels[i]
        on = np.flatnonzero(lab)
        ax.axvspan(on[0] - 0.5, on[-1] + 0.5, color="tab:red", alpha=0.15, label="labelled anomalous")
        ax.plot(a, "k-", lw=1.5, label="adiff (configured default)")
        ax.plot(b, "--", color="tab:blue", lw=1.2, label="frame difference")
        ax.set_title(test.kinds[i], fontsize=9)
        ax.set_xlabel("frame")
    axes[0].set_ylabel("score (min-max over these clips)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Varied preset, seed {seed}: frame scores of one test clip per anomaly type", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    plot_presets(_SEED.value, out / "procedural_presets.png")
    print(f"wrote {out / 'procedural_presets.png'}")
    if _SCORES.value:
        plot_scores(_SEED.value, out / "procedural_varied_scores.png")
        print(f"wrote {out / 'procedural_varied_scores.png'}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
