r"""ADBench classical tables: adiff's TabularDetector paradigms beside PyOD baselines, same run.

Protocol (DESIGN.md, semi-supervised, primary): for each seed, shuffle the normal rows with the
seed, train on one half, test on the other half plus all anomalies; scaling fitted on the training
part (inside the detector for adiff; a StandardScaler for the PyOD baselines); training capped at
20,000 rows and the test set at 50,000 (stratified, same seed). AUROC and AUPRC (scikit-learn).

  python -m experiments.benchmarks.tabular --seeds=0,1,2 --scorings=dte_np,dte \
      --baselines=KNN,IForest,ECOD --out=docs/results/tabular.md

Writes a markdown table (per set and means, with fit+score seconds) and a JSON with every row.
"""
from __future__ import annotations

import json
import pathlib
import time

import numpy as np
from absl import app, flags

from adiff import metrics
from adiff.data.tabular import load_adbench_npz, semisupervised_split

REPO = pathlib.Path(__file__).resolve().parents[2]

_DATA = flags.DEFINE_string("data_dir", str(REPO.parent / "shared" / "data" / "tabular"),
                            "Directory with ADBench <name>/<id>_<name>.npz files.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the random splits.")
_SCORINGS = flags.DEFINE_list("scorings", ["dte_np"], "TabularDetector scorings to run.")
_BASELINES = flags.DEFINE_list("baselines", ["KNN", "IForest", "ECOD"], "PyOD baselines.")
_DATASETS = flags.DEFINE_list("datasets", [], "Subset of dataset names (default: all found).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 2000, "Training steps of trained paradigms.")
_OUT = flags.DEFINE_string("out", str(REPO / "docs" / "results" / "tabular.md"), "Markdown output.")


def _baseline(name: str, seed: int):
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    return {"KNN": lambda: KNN(n_neighbors=5, method="largest"),
            "IForest": lambda: IForest(random_state=seed),
            "ECOD": lambda: ECOD()}[name]()


def _datasets(root: pathlib.Path, only):
    files = sorted(root.glob("*/*.npz"), key=lambda p: int(p.name.split("_", 1)[0]))
    if only:
        files = [f for f in files if f.parent.name in only]
    if not files:
        raise SystemExit(f"no ADBench .npz files under {root}")
    return files


def run_one(path: pathlib.Path, seed: int, scorings, baselines, train_steps: int):
    import adiff
    X, y = load_adbench_npz(path)
    X_tr, X_te, y_te = semisupervised_split(X, y, seed=seed)
    rows = {}
    for sc in scorings:
        t = time.perf_counter()
        det = adiff.TabularDetector(scoring=sc, seed=seed, train_steps=train_steps).fit(X_tr)
        s = det.decision_function(X_te)
        rows[f"adiff:{sc}"] = dict(auroc=metrics.auroc(y_te, s), auprc=metrics.auprc(y_te, s),
                                   seconds=time.perf_counter() - t)
    mu, sd = X_tr.mean(0), X_tr.std(0)
    sd[sd == 0] = 1.0
    for b in baselines:
        t = time.perf_counter()
        m = _baseline(b, seed).fit((X_tr - mu) / sd)
        s = m.decision_function((X_te - mu) / sd)
        rows[b] = dict(auroc=metrics.auroc(y_te, s), auprc=metrics.auprc(y_te, s),
                       seconds=time.perf_counter() - t)
    return rows, dict(n=len(X), d=X.shape[1], n_train=len(X_tr), n_test=len(X_te))


def main(argv):
    del argv
    seeds = [int(s) for s in _SEEDS.value]
    files = _datasets(pathlib.Path(_DATA.value), _DATASETS.value)
    methods = [f"adiff:{s}" for s in _SCORINGS.value] + list(_BASELINES.value)
    results = {}
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    for f in files:
        name = f.parent.name
        per_seed, info = [], None
        for seed in seeds:
            rows, info = run_one(f, seed, _SCORINGS.value, _BASELINES.value, _TRAIN_STEPS.value)
            per_seed.append(rows)
        results[name] = {"info": info, "seeds": per_seed}
        line = "  ".join(f"{m} {np.mean([r[m]['auroc'] for r in per_seed]):.3f}" for m in methods)
        print(f"{name:<18} {line}", flush=True)
        _write(out, results, methods, seeds)
    print(f"wrote {out}")


def _write(out: pathlib.Path, results, methods, seeds):
    def mean(name, m, k):
        return float(np.mean([r[m][k] for r in results[name]["seeds"]]))

    names = list(results)
    cmd = ("python -m experiments.benchmarks.tabular --seeds=" + ",".join(map(str, seeds))
           + " --scorings=" + ",".join(_SCORINGS.value) + " --baselines=" + ",".join(_BASELINES.value)
           + (" --datasets=" + ",".join(_DATASETS.value) if _DATASETS.value else "")
           + f" --train_steps={_TRAIN_STEPS.value}")
    lines = ["# Tabular anomaly detection: ADBench classical sets", "",
             f"Command: `{cmd}`", "",
             "Data: ADBench classical `.npz` files (../shared/data/tabular). Protocol: semi-supervised "
             "(DESIGN.md): per seed, half of the normal rows (shuffled with the seed) train; the other "
             "half plus all anomalies test; training capped at 20,000 rows, test at 50,000 "
             f"(stratified). Seeds: {seeds}. Baselines: PyOD with a StandardScaler fitted on the "
             "training part (KNN k=5 'largest', IForest, ECOD), run in the same script.", "",
             f"Sets: {len(names)}. Values: mean over seeds; seconds = fit + score of one seed.", "",
             "| set | n | d | " + " | ".join(f"{m} AUROC" for m in methods) + " | "
             + " | ".join(f"{m} AUPRC" for m in methods) + " | " + " | ".join(f"{m} s" for m in methods) + " |",
             "|---|---:|---:|" + "---:|" * (3 * len(methods))]
    for n in names:
        info = results[n]["info"]
        lines.append(f"| {n} | {info['n']} | {info['d']} | "
                     + " | ".join(f"{mean(n, m, 'auroc'):.3f}" for m in methods) + " | "
                     + " | ".join(f"{mean(n, m, 'auprc'):.3f}" for m in methods) + " | "
                     + " | ".join(f"{mean(n, m, 'seconds'):.1f}" for m in methods) + " |")
    lines.append("| **mean** | | | "
                 + " | ".join(f"**{np.mean([mean(n, m, 'auroc') for n in names]):.3f}**" for m in methods) + " | "
                 + " | ".join(f"**{np.mean([mean(n, m, 'auprc') for n in names]):.3f}**" for m in methods) + " | "
                 + " | ".join(f"{np.median([mean(n, m, 'seconds') for n in names]):.1f} (median)" for m in methods) + " |")
    ref = methods[0]
    lines += ["", "Wins/losses of each method against KNN on AUROC (per set, mean over seeds):", ""]
    if "KNN" in methods:
        for m in methods:
            if m == "KNN":
                continue
            w = sum(mean(n, m, "auroc") > mean(n, "KNN", "auroc") for n in names)
            l = sum(mean(n, m, "auroc") < mean(n, "KNN", "auroc") for n in names)
            lines.append(f"- {m}: {w} wins, {l} losses, {len(names) - w - l} ties")
    del ref
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    app.run(main)
