r"""Multimodal benchmark: early / late / dynamic fusion vs unimodal scores and KNN baselines.

Writes docs/results/multimodal.md (+ .json). Run from the repository root:

  flock /tmp/adiff_heavy.lock timeout 900 python -m experiments.benchmarks.multimodal \
      --configs=multimodal_mnist --seeds=0,1,2
  flock /tmp/adiff_heavy.lock timeout 900 python -m experiments.benchmarks.multimodal \
      --configs=multimodal_skab --seeds=0,1,2 --merge

Each (config, seed) result is kept in the .json next to the markdown; `--merge` adds (or replaces)
this run's results in it, so a campaign can be split into runs of under 15 minutes each. The
markdown reports mean +- sd over the seeds present for each config.

`--quick` uses the tiny sizes of experiments/configs/multimodal_tiny.py (a smoke test, not a result).

For each benchmark one MultimodalDetector(fusion="dynamic") is fitted; its `decompose` gives the
early, late and dynamic scores, the per-modality (unimodal) scores and the cross-modal term from the
same fitted networks. Baselines in the same script: KNN (mean distance to the 5 nearest training
samples, standardised features; images reduced by PCA to 32 components, captions one-hot per
position) on each modality alone and on the concatenation. AUROC per anomaly kind is computed on
the normal test samples plus the samples of that kind. Missing-modality robustness: `missing_key`
is removed from a random 30% of the test samples (seed + 1) and every adiff score is recomputed.
predict()'s flag rate on the normal test samples is reported for the detector's `threshold_` (the
contamination quantile of the held-out calibration rows' scores) and, for comparison, for the
quantile of all training rows' scores.
"""
from __future__ import annotations

import importlib
import json
import pathlib
import time

import numpy as np
from absl import app, flags
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from adiff import metrics
from adiff.data import multimodal as mmdata
from adiff.detectors.multimodal import MultimodalDetector

REPO = pathlib.Path(__file__).resolve().parents[2]

FLAGS = flags.FLAGS
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"


def define_flags() -> None:
    """Defines the script's command-line flags (only when run as a script, so that the launcher
    can import this module's functions next to the other benchmark modules)."""
    flags.DEFINE_list("configs", ["multimodal_mnist", "multimodal_skab"], "experiments.configs modules to run.")
    flags.DEFINE_string("data_root", str(DEFAULT_DATA_ROOT), "Root of the shared benchmark data.")
    flags.DEFINE_string("out", str(REPO / "docs" / "results" / "multimodal.md"), "Markdown output.")
    flags.DEFINE_boolean("quick", False, "Tiny sizes (smoke test of the script, not a result).")
    flags.DEFINE_list("seeds", ["0"], "Seeds (split, anomalies, networks); one fit per config and seed.")
    flags.DEFINE_enum("attention", None, ["score", "calibrated"], "Dynamic-fusion attention scale of the "
                      "detector (MultimodalDetector(attention=)); unset: the detector's default.")
    flags.DEFINE_enum("late_scale", None, ["z", "surprise"], "Late-fusion scale of the detector "
                      "(MultimodalDetector(late_scale=)); unset: the detector's default.")
    flags.DEFINE_enum("unimodal_scale", None, ["sd", "robust"], "Held-out scale of each modality's "
                      "errors (MultimodalDetector(unimodal_scale=)); unset: the detector's default.")
    flags.DEFINE_string("missing_key", None, "Modality dropped for the config's missing_fraction of the "
                        "test samples (unset: the config's missing_key).")
    flags.DEFINE_boolean("merge", False, "Add this run's results to those already in the .json output "
                         "(same config and seed replaced) instead of starting afresh.")


def load_split(cfg, root: pathlib.Path, seed: int):
    """The benchmark's `MultimodalSplit` for a config (`benchmark` "mnist_captions" or
    "skab_groups", `data` keyword arguments of the loader) under the shared data root."""
    if cfg.benchmark == "mnist_captions":
        return mmdata.load_mnist_captions(root / "image" / "mnist", seed=seed, **cfg.data.to_dict())
    if cfg.benchmark == "skab_groups":
        return mmdata.load_skab_groups(root / "timeseries" / "skab", **cfg.data.to_dict())
    raise ValueError(f"unknown benchmark {cfg.benchmark!r}")


def knn_features(split, modalities, seed):
    """Per-modality flat features for the KNN baselines (fitted on training data)."""
    out = {}
    for k, kind in modalities.items():
        tr, te = split.train[k], split.test[k]
        if kind == "text":
            v = int(max(tr.max(), te.max())) + 1
            tr, te = np.eye(v)[tr].reshape(len(tr), -1), np.eye(v)[te].reshape(len(te), -1)
        else:
            tr, te = tr.reshape(len(tr), -1), te.reshape(len(te), -1)
            if kind == "image":
                pca = PCA(32, random_state=seed).fit(tr)
                tr, te = pca.transform(tr), pca.transform(te)
        sc = StandardScaler().fit(tr)
        out[k] = (sc.transform(tr), sc.transform(te))
    return out


def knn_distance(tr, te, k=5):
    """Mean distance of each test row to its k nearest training rows (the KNN baselines)."""
    nn = NearestNeighbors(n_neighbors=k).fit(tr)
    return nn.kneighbors(te)[0].mean(axis=1)


def auroc_by_kind(y, kinds, scores):
    """AUROC per anomaly kind: the normal test samples plus the samples of that kind (NaN scores
    rank lowest)."""
    res = {}
    for kind in sorted(set(kinds) - {"normal"}):
        sel = (kinds == "normal") | (kinds == kind)
        res[kind] = metrics.auroc(y[sel], np.nan_to_num(np.asarray(scores)[sel], nan=-np.inf))
    return res


def _drop(test, key, kind, frac, seed):
    rng = np.random.default_rng(seed + 1)
    n = len(next(iter(test.values())))
    idx = rng.choice(n, int(round(frac * n)), replace=False)
    out = {k: v.copy() for k, v in test.items()}
    if kind == "text":
        out[key][idx] = -1
    else:
        out[key] = out[key].astype(np.float32)
        out[key][idx] = np.nan
    return out


def run_one(name: str, root: pathlib.Path, seed: int, quick: bool, attention: str | None = None,
            late_scale: str | None = None, missing_key: str | None = None,
            unimodal_scale: str | None = None) -> dict:
    cfg = importlib.import_module(f"experiments.configs.{name}").get_config()
    if missing_key is not None:
        if missing_key not in cfg.modalities:
            raise ValueError(f"--missing_key must name a modality of {name} "
                             f"{sorted(cfg.modalities)}; got {missing_key!r}")
        cfg.missing_key = missing_key
    if quick:
        tiny = importlib.import_module("experiments.configs.multimodal_tiny").get_config()
        cfg.detector = tiny.detector
        if cfg.benchmark == "mnist_captions":
            cfg.data = tiny.data
        else:
            cfg.data.train_stride, cfg.data.test_stride = 16, 64
    split = load_split(cfg, root, seed)
    modalities = dict(cfg.modalities)
    t0 = time.time()
    kwargs = cfg.detector.to_dict()
    if attention is not None:
        kwargs["attention"] = attention
    if late_scale is not None:
        kwargs["late_scale"] = late_scale
    if unimodal_scale is not None:
        kwargs["unimodal_scale"] = unimodal_scale
    det = MultimodalDetector(modalities=modalities, fusion="dynamic", seed=seed, **kwargs)
    det.fit(split.train)
    fit_s = time.time() - t0
    t0 = time.time()
    d = det.decompose(split.test)
    score_s = time.time() - t0
    y, kinds = split.labels, split.kinds
    rows = {"adiff early": d.early, "adiff late": d.late, "adiff dynamic": d.dynamic,
            "adiff cross term": d.cross}
    for i, k in enumerate(modalities):
        rows[f"adiff unimodal {k}"] = d.unimodal[:, i]
    feats = knn_features(split, modalities, seed)
    for k, (tr, te) in feats.items():
        rows[f"KNN {k}"] = knn_distance(tr, te)
    rows["KNN concat"] = knn_distance(np.concatenate([f[0] for f in feats.values()], 1),
                                      np.concatenate([f[1] for f in feats.values()], 1))
    table = {r: auroc_by_kind(y, kinds, s) for r, s in rows.items()}
    miss_test = _drop(split.test, cfg.missing_key, modalities[cfg.missing_key], cfg.missing_fraction, seed)
    dm = det.decompose(miss_test)
    missing = {}
    for r, s in (("adiff early", dm.early), ("adiff late", dm.late), ("adiff dynamic", dm.dynamic)):
        missing[r] = auroc_by_kind(y, kinds, s)
    mean_w = {f"w_{c}": float(np.mean(d.weights[:, i])) for i, c in enumerate(("early", "late", "cross"))}
    # predict()'s flag rate on the normal test samples (contamination = 0.1): the detector's
    # threshold_ (quantile of the held-out calibration rows' scores) against the quantile of all
    # training rows' scores (most of them seen, and partly memorised, by the networks)
    normal = kinds == "normal"
    all_rows = float(np.quantile(det.decision_scores_, 1.0 - det.contamination))
    flag = {"contamination": float(det.contamination),
            "threshold_calibration": float(np.mean(d.score[normal] > det.threshold_)),
            "threshold_all_training": float(np.mean(d.score[normal] > all_rows))}
    # information ceiling with the modality missing: an anomaly whose evidence lies only in the
    # dropped modality (`evidence` in the config) can at best be ranked like a normal sample, so a
    # score with complete-data AUROC A cannot exceed (1 - f) A + f / 2 on that kind, f the fraction
    # of its samples that lost the modality
    lost = ~np.asarray(dm.present[:, list(modalities).index(cfg.missing_key)])
    ceiling = {}
    for r in missing:
        ceiling[r] = {}
        for kind, a in table[r].items():
            needs = cfg.get("evidence", {}).get(kind, ())
            f = float(lost[kinds == kind].mean()) if cfg.missing_key in needs else 0.0
            ceiling[r][kind] = (1 - f) * a + f * 0.5
    return {"name": name, "seed": int(seed), "config": cfg.to_dict(), "n_train": int(len(next(iter(split.train.values())))),
            "n_test": int(len(y)), "counts": {str(k): int((kinds == k).sum()) for k in sorted(set(kinds))},
            "fit_s": fit_s, "score_s": score_s, "auroc": table, "missing": missing, "ceiling": ceiling,
            "mean_weights": mean_w, "flag_rate_normal": flag, "attention": det.attention,
            "late_scale": det.late_scale, "unimodal_scale": det.unimodal_scale}


def _stat(values, sign: bool = False) -> str:
    """'mean +- sd' over seeds (sd with ddof=1; just the value for one seed)."""
    v = np.asarray(values, np.float64)
    m = f"{v.mean():+.3f}" if sign else f"{v.mean():.3f}"
    return f"{m} +- {v.std(ddof=1):.3f}" if len(v) > 1 else m


def _markdown(results, command_lines, quick):
    names = list(dict.fromkeys(r["name"] for r in results))
    seeds = sorted({int(r.get("seed", r["config"]["seed"])) for r in results})
    lines = ["# Multimodal anomaly detection: early, late and dynamic fusion", ""]
    lines += ["Command" + ("s" if len(command_lines) > 1 else "") + ": "
              + "; ".join(f"`{c}`" for c in command_lines) + (" (QUICK smoke sizes: not a result)" if quick else ""),
              "", "Data: ../shared/data/image/mnist (t10k split) and ../shared/data/timeseries/skab; "
              "constructions in adiff/data/multimodal.py (module docstring). Seeds: "
              f"{', '.join(map(str, seeds))} (split, anomalies and networks); figures are mean +- sd "
              "over the seeds (sd with ddof=1).", ""]
    for name in names:
        runs = sorted((r for r in results if r["name"] == name), key=lambda r: r.get("seed", 0))
        res = runs[0]
        kinds = sorted(next(iter(res["auroc"].values())))
        weights = {k: _stat([r["mean_weights"][k] for r in runs]) for k in res["mean_weights"]}
        lines += [f"## {name}", "",
                  f"Seeds {[r.get('seed') for r in runs]}; dynamic attention "
                  f"{sorted({r.get('attention', 'score') for r in runs})}; train {res['n_train']}, test {res['n_test']} "
                  f"({res['counts']}); fit {np.mean([r['fit_s'] for r in runs]):.0f} s, score "
                  f"{np.mean([r['score_s'] for r in runs]):.1f} s per seed (CPU). Mean dynamic weights: "
                  + ", ".join(f"{k} {v}" for k, v in weights.items()), "",
                  "| AUROC | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        for r in res["auroc"]:
            lines.append(f"| {r} | " + " | ".join(_stat([x["auroc"][r][k] for x in runs]) for k in kinds) + " |")
        key = res["config"]["missing_key"]
        lines += ["", f"With `{key}` missing for {res['config']['missing_fraction']:.0%} of the test samples "
                  "(AUROC, the drop from the complete test set, and in brackets the information "
                  "ceiling (1 - f) A + f/2 for kinds whose evidence lies only in the dropped modality, "
                  "A = complete-data AUROC, f = fraction of that kind's samples that lost it; each "
                  "mean +- sd over the seeds):", "",
                  "| AUROC (missing) | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        for r in res["missing"]:
            cells = []
            for k in kinds:
                miss = [x["missing"][r][k] for x in runs]
                drop = [x["missing"][r][k] - x["auroc"][r][k] for x in runs]
                ceil = [x.get("ceiling", {}).get(r, {}).get(k, x["auroc"][r][k]) for x in runs]
                cells.append(f"{_stat(miss)} ({_stat(drop, sign=True)}) [{_stat(ceil)}]")
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
        if all("flag_rate_normal" in x for x in runs):
            fr = [x["flag_rate_normal"] for x in runs]
            lines += ["", f"predict() on the normal test samples (contamination {fr[0]['contamination']}): flags "
                      f"{_stat([f['threshold_calibration'] for f in fr])} with `threshold_` from the held-out "
                      f"calibration rows, {_stat([f['threshold_all_training'] for f in fr])} with the quantile "
                      "of all training rows' scores."]
        gaps = {k: [x["auroc"]["adiff dynamic"][k] - max(x["auroc"]["adiff early"][k], x["auroc"]["adiff late"][k])
                    for x in runs] for k in kinds}
        lines += ["", "Dynamic minus max(early, late), per seed: " + "; ".join(
            f"{k} " + ", ".join(f"{g:+.3f}" for g in v) for k, v in gaps.items()), ""]
    return "\n".join(lines)


def main(argv):
    del argv
    import sys
    root = pathlib.Path(FLAGS.data_root)
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    argv_line = "python -m experiments.benchmarks.multimodal " + " ".join(sys.argv[1:])
    old = {"results": [], "commands": []}
    if FLAGS.merge and out.with_suffix(".json").exists():
        loaded = json.loads(out.with_suffix(".json").read_text())
        old = loaded if isinstance(loaded, dict) else {"results": loaded, "commands": []}
    results = list(old["results"])
    for name in FLAGS.configs:
        for seed in (int(s) for s in FLAGS.seeds):
            res = run_one(name, root, seed, FLAGS.quick, FLAGS.attention, FLAGS.late_scale,
                          FLAGS.missing_key, FLAGS.unimodal_scale)
            results = [r for r in results if (r["name"], r.get("seed")) != (name, seed)] + [res]
            print(f"{name} seed {seed}: fit {res['fit_s']:.0f} s; "
                  + json.dumps({r: {k: round(v, 3) for k, v in a.items()} for r, a in res["auroc"].items()
                                if r.startswith("adiff") and "unimodal" not in r}), flush=True)
            # written after every fit, so a run stopped by its time limit keeps what it finished
            commands = list(dict.fromkeys(old["commands"] + [argv_line]))
            # other top-level keys of a merged .json (e.g. "variants": results of non-default
            # options kept for the record) are carried over untouched
            out.with_suffix(".json").write_text(json.dumps({**old, "commands": commands, "results": results},
                                                           indent=1, default=str))
            out.write_text(_markdown(results, commands, FLAGS.quick))
    print(out.read_text())


if __name__ == "__main__":
    define_flags()
    app.run(main)
