r"""ADBench classical tables: adiff's TabularDetector paradigms beside PyOD baselines, same run.

Protocol (DESIGN.md, semi-supervised, primary): for each seed, shuffle the normal rows with the
seed, train on one half, test on the other half plus all anomalies; scaling fitted on the training
part (inside the detector for adiff; a StandardScaler for the PyOD baselines); training capped at
20,000 rows and the test set at 50,000 (stratified, same seed). AUROC and AUPRC (scikit-learn).

  python -m experiments.benchmarks.tabular --seeds=0,1,2 --scorings=dte_np,dte \
      --baselines=KNN,IForest,ECOD --out=docs/results/tabular.md

Protocols (--protocol):
- "random" (primary): the design's semi-supervised split above.
- "dte": the data protocol of the DTE repository (vicliv/DTE, data_generator.py with
  test_size=0.5, normal=True, max_size=50,000), to compare with its published table: with numpy's
  global seed set to the seed, sets under 1,000 rows are resampled with replacement to 1,000 rows
  (duplicates land in train and test: this protocol leaks), sets over 50,000 rows are subsampled to
  50,000 without replacement; the first half of the normal rows *in that order* (file order for
  untouched sets) train, the rest plus all anomalies test.
- "unsupervised": no labels at training time: train on the whole contaminated set (a random
  20,000 rows at most), test on the whole set (50,000 rows at most, stratified).
A scoring may carry the suffix "+robust" (e.g. "dte_np+robust") to fit the detector with
robust=True (contamination-robust training, meant for the unsupervised protocol).

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
_PROTOCOL = flags.DEFINE_enum("protocol", "random", ["random", "dte", "unsupervised"],
                              "Data protocol (see the module docstring).")
_ENS_MEMBERS = flags.DEFINE_list("ensemble_members", [], "Members of the 'ensemble' scoring "
                                  "(default: TabularDetector's).")
_ENS_NORM = flags.DEFINE_enum("ensemble_normalizer", "rank", ["rank", "robust", "zscore"],
                              "Normaliser of the 'ensemble' scoring's members.")
_MERGE = flags.DEFINE_list("merge", [], "Instead of running: merge these result JSONs (same sets "
                           "and methods, disjoint seeds) into --out, e.g. seeds 0-2 and 3-4 run apart.")
_MERGE_COLS = flags.DEFINE_list(
    "merge_columns", [], "Instead of running: join the method columns of these result JSONs (runs "
    "of the same seeds with different scorings or sets); a method a set lacks shows as '-'.")
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


def dte_repo_split(X: np.ndarray, y: np.ndarray, *, seed: int, min_size: int = 1000,
                   max_size: int = 50000):
    """The DTE repository's semi-supervised data protocol (see the module docstring).

    Reimplemented from its description (numpy's legacy global RandomState, as that code seeds it),
    so the resampling matches the published runs' for the same seed. Returns X_train, X_test, y_test.
    """
    rng = np.random.RandomState(seed)
    if len(y) < min_size:
        idx = rng.choice(np.arange(len(y)), min_size, replace=True)
        X, y = X[idx], y[idx]
    if len(y) > max_size:
        rng = np.random.RandomState(seed)  # that code re-seeds before subsampling
        idx = rng.choice(np.arange(len(y)), max_size, replace=False)
        X, y = X[idx], y[idx]
    normal, anomal = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    n_train = int(round(0.5 * len(normal)))
    test_idx = np.concatenate([normal[n_train:], anomal])
    return X[normal[:n_train]], X[test_idx], y[test_idx]


def unsupervised_split(X: np.ndarray, y: np.ndarray, *, seed: int, max_train: int = 20000,
                       max_test: int = 50000):
    """Unsupervised protocol: train on the contaminated set itself (labels unused), test on it."""
    rng = np.random.RandomState(seed)
    test_idx = np.arange(len(y))
    if len(test_idx) > max_test:
        from sklearn.model_selection import train_test_split
        test_idx, _ = train_test_split(test_idx, train_size=max_test, stratify=y, random_state=seed)
    train_idx = rng.permutation(test_idx)[:max_train]
    return X[train_idx], X[test_idx], y[test_idx]


def split(protocol: str, X: np.ndarray, y: np.ndarray, *, seed: int):
    """X_train, X_test, y_test under one of the protocols ("random", "dte", "unsupervised")."""
    if protocol == "random":
        return semisupervised_split(X, y, seed=seed)
    if protocol == "dte":
        return dte_repo_split(X, y, seed=seed)
    if protocol == "unsupervised":
        return unsupervised_split(X, y, seed=seed)
    raise ValueError(f"protocol must be 'random', 'dte' or 'unsupervised', got {protocol!r}")


def run_one(path: pathlib.Path, seed: int, scorings, baselines, train_steps: int,
            protocol: str = "random", ensemble_kwargs: dict | None = None):
    import adiff
    X, y = load_adbench_npz(path)
    X_tr, X_te, y_te = split(protocol, X, y, seed=seed)
    if protocol == "dte":  # that code mean-fills NaNs after scaling; none of the 34 sets has any
        assert np.isfinite(X_tr).all() and np.isfinite(X_te).all(), path
    rows = {}
    for sc in scorings:
        t = time.perf_counter()
        name, _, opt = sc.partition("+")
        kwargs = {"robust": True} if opt == "robust" else {}
        if opt not in ("", "robust"):
            raise ValueError(f"unknown scoring option {opt!r} in {sc!r} (known: '+robust')")
        if name == "ensemble":
            kwargs.update(ensemble_kwargs or {})
        det = adiff.TabularDetector(scoring=name, seed=seed, train_steps=train_steps, **kwargs).fit(X_tr)
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


def _ensemble_kwargs() -> dict:
    kw = {"ensemble_normalizer": _ENS_NORM.value}
    if _ENS_MEMBERS.value:
        kw["ensemble_members"] = tuple(_ENS_MEMBERS.value)
    return kw


def merge_columns(paths):
    """Joins the methods of several result JSONs run with the same seeds: per set and seed, the
    union of the method rows (the first file that holds a method wins). Returns results, methods."""
    parts = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    results, methods = {}, []
    for part, path in zip(parts, paths):
        for name, res in part.items():
            cur = results.setdefault(name, {"info": res["info"], "seeds": [dict() for _ in res["seeds"]]})
            if len(cur["seeds"]) != len(res["seeds"]):
                raise ValueError(f"{path}: set {name!r} has {len(res['seeds'])} seeds, "
                                 f"earlier files {len(cur['seeds'])}")
            for mine, theirs in zip(cur["seeds"], res["seeds"]):
                for m, row in theirs.items():
                    mine.setdefault(m, row)
                    if m not in methods:
                        methods.append(m)
    # baselines last, as in a single run
    methods = [m for m in methods if m.startswith("adiff:")] + [m for m in methods if not m.startswith("adiff:")]
    return results, methods


def merge(paths, seeds_of):
    """Combines per-set seed lists of several result JSONs (sets in the first file's order)."""
    parts = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    results = {}
    for name in parts[0]:
        if not all(name in p for p in parts):
            raise ValueError(f"set {name!r} is missing from some of {paths}")
        results[name] = {"info": parts[0][name]["info"],
                         "seeds": [r for p in parts for r in p[name]["seeds"]]}
    seeds = [s for p in seeds_of for s in p]
    return results, seeds


def main(argv):
    del argv
    seeds = [int(s) for s in _SEEDS.value]
    if _MERGE_COLS.value or _MERGE.value:
        # --seeds lists the seeds of the merged files in order (the JSONs do not store them).
        if _MERGE_COLS.value and _MERGE.value:
            raise SystemExit("--merge and --merge_columns are exclusive")
        if _MERGE_COLS.value:
            flag, paths = "merge_columns", _MERGE_COLS.value
            note = "columns of several runs joined; each run's command in the results file"
            results, methods = merge_columns(paths)
        else:
            flag, paths = "merge", _MERGE.value
            note = "runs merged; each run's command in the session notes"
            results, _ = merge(paths, [seeds])
            methods = list(next(iter(results.values()))["seeds"][0])
        n_seeds = {len(r["seeds"]) for r in results.values()}
        if n_seeds != {len(seeds)}:
            raise SystemExit(f"--seeds has {len(seeds)} seeds but the merged files hold {n_seeds}")
        _write(pathlib.Path(_OUT.value), results, methods, seeds,
               cmd=f"python -m experiments.benchmarks.tabular --{flag}={','.join(paths)} "
                   f"--seeds={','.join(map(str, seeds))} ({note})")
        print(f"wrote {_OUT.value}")
        return
    files = _datasets(pathlib.Path(_DATA.value), _DATASETS.value)
    methods = [f"adiff:{s}" for s in _SCORINGS.value] + list(_BASELINES.value)
    results = {}
    out = pathlib.Path(_OUT.value)
    for f in files:
        name = f.parent.name
        per_seed, info = [], None
        for seed in seeds:
            rows, info = run_one(f, seed, _SCORINGS.value, _BASELINES.value, _TRAIN_STEPS.value,
                                 _PROTOCOL.value, _ensemble_kwargs())
            per_seed.append(rows)
        results[name] = {"info": info, "seeds": per_seed}
        line = "  ".join(f"{m} {np.mean([r[m]['auroc'] for r in per_seed]):.3f}" for m in methods)
        print(f"{name:<18} {line}", flush=True)
        _write(out, results, methods, seeds)
    print(f"wrote {out}")


_PROTOCOL_TEXT = {
    "random": "Protocol: semi-supervised (DESIGN.md, primary): per seed, half of the normal rows "
              "(shuffled with the seed) train; the other half plus all anomalies test; training capped "
              "at 20,000 rows, test at 50,000 (stratified).",
    "dte": "Protocol: **the DTE repository's** (vicliv/DTE data_generator.py, semi setting): sets under "
           "1,000 rows resampled with replacement to 1,000 (duplicates in train and test: leaks), sets "
           "over 50,000 rows subsampled to 50,000; the first half of the normal rows in that order "
           "train, the rest plus all anomalies test. Secondary; comparable with DTE's README table only.",
    "unsupervised": "Protocol: **unsupervised**: train on the contaminated set itself (a random 20,000 "
                    "rows at most, labels unused), test on the whole set (50,000 rows at most, stratified).",
}


def _write(out: pathlib.Path, results, methods, seeds, cmd: str | None = None):
    def mean(name, m, k):  # nan where the set lacks the method (merged columns)
        rows = results[name]["seeds"]
        return float(np.mean([r[m][k] for r in rows])) if all(m in r for r in rows) else float("nan")

    def cell(x, spec):
        return "-" if np.isnan(x) else format(x, spec)

    def over_sets(m, k, fn):
        vals = [mean(n, m, k) for n in names if not np.isnan(mean(n, m, k))]
        note = "" if len(vals) == len(names) else f" ({len(vals)} sets)"
        return fn(vals), note

    names = list(results)
    cmd = cmd or ("python -m experiments.benchmarks.tabular --seeds=" + ",".join(map(str, seeds))
           + " --scorings=" + ",".join(_SCORINGS.value) + " --baselines=" + ",".join(_BASELINES.value)
           + (" --datasets=" + ",".join(_DATASETS.value) if _DATASETS.value else "")
           + f" --train_steps={_TRAIN_STEPS.value} --protocol={_PROTOCOL.value}"
           + (" --ensemble_members=" + ",".join(_ENS_MEMBERS.value) if _ENS_MEMBERS.value else "")
           + (f" --ensemble_normalizer={_ENS_NORM.value}" if _ENS_NORM.value != "rank" else ""))
    lines = ["# Tabular anomaly detection: ADBench classical sets", "",
             f"Command: `{cmd}`", "",
             "Data: ADBench classical `.npz` files (../shared/data/tabular). " + _PROTOCOL_TEXT[_PROTOCOL.value]
             + f" Seeds: {seeds}. Baselines: PyOD with a StandardScaler fitted on the "
             "training part (KNN k=5 'largest', IForest, ECOD), run in the same script.", "",
             f"Sets: {len(names)}. Values: mean over seeds; seconds = fit + score of one seed.", "",
             "| set | n | d | " + " | ".join(f"{m} AUROC" for m in methods) + " | "
             + " | ".join(f"{m} AUPRC" for m in methods) + " | " + " | ".join(f"{m} s" for m in methods) + " |",
             "|---|---:|---:|" + "---:|" * (3 * len(methods))]
    for n in names:
        info = results[n]["info"]
        lines.append(f"| {n} | {info['n']} | {info['d']} | "
                     + " | ".join(cell(mean(n, m, 'auroc'), '.3f') for m in methods) + " | "
                     + " | ".join(cell(mean(n, m, 'auprc'), '.3f') for m in methods) + " | "
                     + " | ".join(cell(mean(n, m, 'seconds'), '.1f') for m in methods) + " |")
    agg = {(m, k): over_sets(m, k, np.median if k == "seconds" else np.mean)
           for m in methods for k in ("auroc", "auprc", "seconds")}
    lines.append("| **mean** | | | "
                 + " | ".join(f"**{agg[m, 'auroc'][0]:.3f}**{agg[m, 'auroc'][1]}" for m in methods) + " | "
                 + " | ".join(f"**{agg[m, 'auprc'][0]:.3f}**{agg[m, 'auprc'][1]}" for m in methods) + " | "
                 + " | ".join(f"{agg[m, 'seconds'][0]:.1f} (median){agg[m, 'seconds'][1]}" for m in methods) + " |")
    ref = methods[0]
    lines += ["", "Wins/losses of each method against KNN on AUROC (per set, mean over seeds):", ""]
    if "KNN" in methods:
        for m in methods:
            if m == "KNN":
                continue
            both = [n for n in names if not np.isnan(mean(n, m, "auroc") + mean(n, "KNN", "auroc"))]
            w = sum(mean(n, m, "auroc") > mean(n, "KNN", "auroc") for n in both)
            l = sum(mean(n, m, "auroc") < mean(n, "KNN", "auroc") for n in both)
            lines.append(f"- {m}: {w} wins, {l} losses, {len(both) - w - l} ties"
                         + ("" if len(both) == len(names) else f" (over the {len(both)} sets it ran on)"))
    del ref
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    app.run(main)
