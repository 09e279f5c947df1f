"""Detector jobs for experiments/main.py: fit, evaluate against labels, score, with plots.

Each job writes to the workdir: metrics.json, ROC/PR curves and score histograms (PNG), TensorBoard
events and the saved detector (orbax + JSON).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Dict, Tuple

import numpy as np

import adiff
from adiff import metrics
from adiff.data.tabular import load_adbench_npz, load_odds_mat, semisupervised_split
from experiments.modality_job import detector_kwargs, save_detector


def load_tabular(dataset: str) -> Tuple[np.ndarray, np.ndarray]:
    """Returns (X, y) for a dataset spec: "sklearn_breast_cancer", "adbench:<path>", "odds:<path>"."""
    if dataset == "sklearn_breast_cancer":
        from sklearn.datasets import load_breast_cancer
        d = load_breast_cancer()
        # sklearn's target: 0 = malignant, 1 = benign. Benign is normal; malignant is the anomaly.
        return d.data.astype(np.float64), (d.target == 0).astype(int)
    if dataset.startswith("adbench:"):
        return load_adbench_npz(dataset.split(":", 1)[1])
    if dataset.startswith("odds:"):
        return load_odds_mat(dataset.split(":", 1)[1])
    raise ValueError(f"config.dataset must be 'sklearn_breast_cancer', 'adbench:<path>' or "
                     f"'odds:<path>', got {dataset!r}")


def _baseline(name: str, contamination: float, seed: int):
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.lof import LOF
    table = {"KNN": lambda: KNN(contamination=contamination),
             "LOF": lambda: LOF(contamination=contamination),
             "IForest": lambda: IForest(contamination=contamination, random_state=seed)}
    if name not in table:
        raise ValueError(f"unknown baseline {name!r}; choose from {sorted(table)}")
    return table[name]()


def _plots(workdir: pathlib.Path, y: np.ndarray, scores: Dict[str, np.ndarray], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax1.plot(fpr, tpr, label=f"{name} (AUROC {metrics.auroc(y, s):.3f})")
        p, r, _ = precision_recall_curve(y, s)
        ax2.plot(r, p, label=f"{name} (AUPRC {metrics.auprc(y, s):.3f})")
    ax1.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax1.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}")
    ax2.axhline(y.mean(), color="k", ls=":", lw=0.8)
    ax2.set(xlabel="recall", ylabel="precision", title=f"PR: {title}")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(workdir / "roc_pr.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(scores), figsize=(4 * len(scores), 3.2), squeeze=False)
    for ax, (name, s) in zip(axes[0], scores.items()):
        bins = np.linspace(np.min(s), np.max(s), 40)
        ax.hist(s[y == 0], bins=bins, alpha=0.6, label="normal", density=True)
        ax.hist(s[y == 1], bins=bins, alpha=0.6, label="anomaly", density=True)
        ax.set(title=name, xlabel="anomaly score")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(workdir / "score_histograms.png", dpi=110)
    plt.close(fig)


def evaluate_tabular(config, workdir: str) -> Dict:
    """Fits the configured TabularDetector and PyOD baselines per seed; writes metrics and plots.

    Returns:
      The metrics dict written to workdir/metrics.json.
    """
    from tensorboardX import SummaryWriter

    wd = pathlib.Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    X, y = load_tabular(config.dataset)
    seeds = tuple(config.seeds) if config.get("seeds") else (config.seed,)
    det_kwargs = detector_kwargs(config)
    results = {"dataset": config.dataset, "n_rows": int(len(X)), "n_features": int(X.shape[1]),
               "anomaly_rate": float(y.mean()), "protocol": "semi-supervised, half of normal rows train",
               "detector": det_kwargs, "seeds": {}}
    writer = SummaryWriter(str(wd / "tensorboard"))
    for seed in seeds:
        X_tr, X_te, y_te = semisupervised_split(X, y, seed=seed)
        mean, std = X_tr.mean(0), X_tr.std(0)
        std[std == 0] = 1.0
        row, scores = {}, {}
        t = time.perf_counter()
        det = adiff.TabularDetector(seed=seed, **det_kwargs).fit(X_tr)
        scores["adiff"] = det.decision_function(X_te)
        row["adiff"] = {"seconds": time.perf_counter() - t}
        for name in config.baselines:
            t = time.perf_counter()
            b = _baseline(name, det_kwargs.get("contamination", 0.1), seed).fit((X_tr - mean) / std)
            scores[name] = b.decision_function((X_te - mean) / std)
            row[name] = {"seconds": time.perf_counter() - t}
        for name, s in scores.items():
            bf1 = metrics.best_f1(y_te, s)
            row[name].update(auroc=metrics.auroc(y_te, s), auprc=metrics.auprc(y_te, s),
                             best_f1=float(bf1.f1))
            writer.add_scalar(f"auroc/{name}", row[name]["auroc"], seed)
            writer.add_scalar(f"auprc/{name}", row[name]["auprc"], seed)
        results["seeds"][str(seed)] = row
        if seed == seeds[0]:
            _plots(wd, y_te, scores, f"{config.dataset} (seed {seed})")
            save_detector(det, wd)
    writer.close()
    names = list(results["seeds"][str(seeds[0])])
    results["summary"] = {
        n: {m: (float(np.mean([results["seeds"][str(s)][n][m] for s in seeds])),
                float(np.std([results["seeds"][str(s)][n][m] for s in seeds])))
            for m in ("auroc", "auprc", "best_f1")} for n in names}
    (wd / "metrics.json").write_text(json.dumps(results, indent=2))
    print(f"\n{config.dataset}: {len(X)} rows, {X.shape[1]} features, {y.mean():.1%} anomalies; "
          f"seeds {list(seeds)}")
    print(f"{'method':<10} {'AUROC':>15} {'AUPRC':>15} {'best F1':>15}")
    for n, m in results["summary"].items():
        print(f"{n:<10} " + " ".join(f"{m[k][0]:>8.4f} ± {m[k][1]:.3f}" for k in ("auroc", "auprc", "best_f1")))
    print(f"\nwrote {wd / 'metrics.json'}, {wd / 'roc_pr.png'}, {wd / 'score_histograms.png'}, "
          f"{wd / 'detector'}")
    return results


def train_tabular(config, workdir: str) -> None:
    """Fits the configured TabularDetector on all rows labelled normal (or all rows when the
    dataset has no anomalies) and saves it to workdir/detector."""
    X, y = load_tabular(config.dataset)
    det = adiff.TabularDetector(seed=config.seed, **detector_kwargs(config)).fit(
        X[y == 0] if (y == 0).any() else X)
    out = save_detector(det, workdir)
    print(f"fitted on {int((y == 0).sum())} normal rows; saved {out}")


def score_tabular(config, workdir: str, input_path: str) -> np.ndarray:
    """Loads the detector saved in workdir/detector and scores a .npz (array X) or .csv file."""
    det = adiff.load(pathlib.Path(workdir) / "detector")
    if input_path.endswith(".npz"):
        with np.load(input_path, allow_pickle=False) as f:
            X = f["X"]
    else:
        import pandas as pd
        X = pd.read_csv(input_path)
    s = det.decision_function(X)
    out = pathlib.Path(workdir) / "scores.csv"
    np.savetxt(out, np.stack([s, det.predict(X)], 1), delimiter=",", header="score,label", comments="")
    print(f"scored {len(s)} rows -> {out}")
    return s
