r"""Per-set AUROC scatter of a tabular benchmark result: each adiff scoring against KNN.

Reads a results JSON written by experiments/benchmarks/tabular.py (sets -> seeds -> method ->
auroc) and draws, for every "adiff:*" method, one point per set at (KNN AUROC, adiff AUROC), the
mean over seeds; points above the diagonal are sets where adiff wins. Sets with more than 40,000
rows are drawn as squares (the issue's 27-set reference excludes them).

  python -m experiments.benchmarks.tabular_plot --results=docs/results/tabular.json \
      --out=docs/results/tabular/auroc_vs_knn.png
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[2]
LARGE_ROWS = 40000


def define_flags() -> None:
    """The command-line flags (defined on demand, so importing the module for `plot` defines none
    and cannot clash with another benchmark's flags)."""
    flags.DEFINE_string("results", str(REPO / "docs" / "results" / "tabular.json"), "Results JSON.")
    flags.DEFINE_string("out", str(REPO / "docs" / "results" / "tabular" / "auroc_vs_knn.png"), "PNG output.")
    flags.DEFINE_string("reference", "KNN", "Method on the x axis.")


def per_set_means(results: dict, method: str) -> dict:
    """{set: mean AUROC over seeds} of `method` (sets that lack it are left out)."""
    out = {}
    for name, entry in results.items():
        vals = [seed[method]["auroc"] for seed in entry["seeds"] if method in seed]
        if vals:
            out[name] = float(np.mean(vals))
    return out


def plot(results: dict, path: pathlib.Path, reference: str = "KNN") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = sorted({m for e in results.values() for s in e["seeds"] for m in s if m.startswith("adiff:")})
    if not methods:
        raise ValueError("no adiff:* method in the results")
    ref = per_set_means(results, reference)
    if not ref:
        raise ValueError(f"no {reference!r} rows in the results")
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 4.2), squeeze=False)
    for ax, m in zip(axes[0], methods):
        ours = per_set_means(results, m)
        names = [n for n in ours if n in ref]
        large = np.array([results[n]["info"]["n"] > LARGE_ROWS for n in names])
        x, y = np.array([ref[n] for n in names]), np.array([ours[n] for n in names])
        lo = min(x.min(), y.min()) - 0.02
        ax.plot([lo, 1.0], [lo, 1.0], color="0.6", lw=1)
        ax.scatter(x[~large], y[~large], s=18, label="<= 40,000 rows")
        ax.scatter(x[large], y[large], s=26, marker="s", label="> 40,000 rows")
        for n, a, b in zip(names, x, y):
            if abs(b - a) > 0.02:
                ax.annotate(n, (a, b), fontsize=7, xytext=(3, -3), textcoords="offset points")
        wins, losses = int((y > x).sum()), int((y < x).sum())
        ax.set_title(f"{m}: {wins} wins / {losses} losses vs {reference}", fontsize=9)
        ax.set_xlabel(f"{reference} AUROC (mean over seeds)")
        ax.set_ylabel("adiff AUROC")
        ax.set_xlim(lo, 1.005)
        ax.set_ylim(lo, 1.005)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    f = flags.FLAGS
    results = json.loads(pathlib.Path(f.results).read_text())
    plot(results, pathlib.Path(f.out), f.reference)
    print("wrote", f.out)


if __name__ == "__main__":
    define_flags()
    app.run(main)
