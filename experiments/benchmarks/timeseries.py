r"""Time-series benchmark: adiff.TimeSeriesDetector vs PyOD/PCA window baselines (issue 5).

Protocol (docs DESIGN.md, time series): ASD (each entity's train/test split), SKAB (train on
anomaly-free.csv, every labelled run a test series), NAB (the probationary period
min(floor(0.15 n), 750) trains, the remaining points are the test series). Inputs are z-scored
with training statistics and clipped (the detector's own `transform`); every method gets one
score per test step. Metrics: VUS-PR (primary; buffer = the test series' period from the
autocorrelation, 125 when none), AUC-PR, AUROC, best F1 without point adjustment, and the
point-adjusted F1 in a separate legacy column. No threshold is tuned on test labels (best F1 and
PA-F1 are oracle-threshold figures, labelled so).

Methods, all on the same z-scored series and the same windows of length --window:
- adiff imputation / reconstruction / denoising: one TimeSeriesDetector per series (per SKAB: one
  on anomaly-free.csv), trained once with both training modes (--uncond_prob), scored by the three
  paradigms from the same network; their per-entry errors are averaged over the windows covering
  a step (the detector's combine="mean").
- Window scorers without a network: IForest, KNN (PyOD defaults, n_neighbors=5, largest distance),
  PCA reconstruction error (scikit-learn PCA keeping 95% of the variance) and adiff-dte_np
  (adiff.scoring.dte_nonparametric, k=5) on flattened sliding windows [L * C]; training windows at
  a stride that keeps at most --max_baseline_windows of them; a window's score goes to its centre
  step, the edges padded with the nearest centre (DESIGN.md; --assign=mean averages the covering
  windows instead, the rule before session 4).

Run (repository root; the CPU is shared, so take the lock):

  flock /tmp/adiff_heavy.lock python -m experiments.benchmarks.timeseries \
      --datasets=asd,skab,nab --max_entities=12 --nab_max_series=12

  # the same in pieces of < 15 minutes: later pieces add to the JSON (--merge); a piece with
  # --entity_offset=0 restarts its dataset, one with an offset continues it
  # (docs/results/timeseries.md was produced so, each piece under flock ... timeout 900)
  ... --datasets=skab,nab --max_entities=40 --nab_max_series=6 \
      && ... --datasets=asd --max_entities=6 --merge \
      && ... --datasets=asd --entity_offset=6 --max_entities=6 --merge

  # scaling: score a 1,000,000-step series with an unchanged detector (peak RSS and time)
  python -m experiments.benchmarks.timeseries --datasets= --scaling_steps=1000000

Writes docs/results/timeseries.md (--output) and a JSON of every per-series figure beside it.
"""
from __future__ import annotations

import json
import os
import pathlib
import platform
import resource
import sys
import time
from typing import Dict, List

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "timeseries"


def define_flags() -> None:
    """Defines the script's command-line flags (only when run as a script, so that the launcher
    can import this module's functions next to the other benchmark modules)."""
    flags.DEFINE_list("datasets", ["asd", "skab", "nab"], "Datasets to run (asd, skab, nab).")
    flags.DEFINE_string("data_dir", str(DEFAULT_DATA_DIR), "Directory holding asd/, skab/ and nab/.")
    flags.DEFINE_integer("max_entities", 12, "At most this many ASD entities / SKAB runs.")
    flags.DEFINE_integer("entity_offset", 0, "Skip the first this many ASD entities / SKAB runs / NAB series "
                         "(split a long campaign into pieces; use with --merge).")
    flags.DEFINE_bool("merge", False, "Keep the rows already in the JSON beside --output and add "
                      "(or replace) the series of this run, instead of starting the dataset afresh.")
    flags.DEFINE_integer("nab_max_series", 12, "At most this many NAB series (with anomalies in the "
                         "test part), taken round-robin over the categories in name order.")
    flags.DEFINE_list("paradigms", ["imputation", "reconstruction", "denoising"],
                      "adiff scoring paradigms of the network (TimeSeriesDetector.paradigm_scores).")
    flags.DEFINE_list("baselines", ["IForest", "KNN", "PCA", "DTE-NP"],
                      "Window scorers without a network: PyOD IForest / KNN, PCA, and adiff's "
                      "non-parametric DTE (adiff.scoring.dte_nonparametric, row 'adiff-dte_np').")
    flags.DEFINE_integer("seed", 0, "Seed of the detector and the baselines.")
    flags.DEFINE_integer("window", None, "Override the config's window length L (detector and baselines).")
    flags.DEFINE_integer("train_steps", None, "Override the config's detector training steps.")
    flags.DEFINE_integer("channels", None, "Override the config's TemporalNet width.")
    flags.DEFINE_integer("max_baseline_windows", 3000, "Cap on baseline training windows.")
    flags.DEFINE_enum("assign", "centre", ["centre", "mean"], "How a window scorer's window scores "
                      "become step scores: 'centre' (DESIGN.md: the window's centre step, the "
                      "first / last L // 2 steps take the nearest centre's score) or 'mean' (the "
                      "mean over the windows covering a step; the benchmark's rule before "
                      "session 4).")
    flags.DEFINE_integer("scaling_steps", 0, "If > 0, score a synthetic series of this many steps.")
    flags.DEFINE_string("output", str(REPO / "docs" / "results" / "timeseries.md"), "Results file.")


def _det_kwargs(dataset: str) -> dict:
    """Detector settings of experiments/configs/ts_<dataset>.py, with the flag overrides."""
    import importlib  # pylint: disable=import-outside-toplevel
    name = dataset if dataset in ("asd", "skab", "nab") else "default"
    cfg = importlib.import_module(f"experiments.configs.ts_{name}").get_config()
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.detector.to_dict().items()}
    for flag in ("window", "train_steps", "channels"):
        if getattr(FLAGS, flag) is not None:
            kw[flag] = getattr(FLAGS, flag)
    kw["seed"] = FLAGS.seed
    return kw


def _detector(dataset: str, **overrides):
    import adiff.detectors.timeseries as ts_det  # pylint: disable=import-outside-toplevel
    kw = _det_kwargs(dataset)
    kw.update(overrides)
    return ts_det.TimeSeriesDetector(**kw)


def _windows(values: np.ndarray, length: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    from adiff.data.timeseries import window_starts  # pylint: disable=import-outside-toplevel
    starts = window_starts(len(values), length, stride)
    idx = starts[:, None] + np.arange(length)[None, :]
    return values[idx].reshape(len(starts), -1), starts


def _per_step(window_scores: np.ndarray, starts: np.ndarray, length: int, n: int,
              assign: str = "centre") -> np.ndarray:
    """Step scores [n] from window scores [W] of the windows starting at `starts` (stride 1).

    "centre": a window's score goes to its centre step starts + length // 2 (DESIGN.md's
    time-series protocol); the steps before the first centre / after the last take the nearest
    centre's score (edges padded). "mean": each step averages the windows covering it.
    """
    if assign == "centre":
        out = np.empty(n)
        centre = starts + length // 2
        out[centre] = window_scores
        out[:centre[0]] = window_scores[0]
        out[centre[-1] + 1:] = window_scores[-1]
        return out
    if assign != "mean":
        raise ValueError(f"assign must be 'centre' or 'mean', got {assign!r}")
    acc, cnt = np.zeros(n), np.zeros(n)
    for j in range(length):
        acc[starts + j] += window_scores
        cnt[starts + j] += 1
    return acc / np.maximum(cnt, 1)


def dte_np_scores(w_train: np.ndarray, w_test: np.ndarray, *, k: int = 5,
                  info: dict | None = None) -> np.ndarray:
    """adiff-dte_np window scores with the detector's label-free grid rule
    (`adiff.detectors.timeseries.dte_window_grid`; TimeSeriesDetector(scoring="dte_np") scores
    the same windows the same way).

    Args:
      w_train: [N, D] training windows.
      w_test: [M, D] windows to score.
      k: neighbours.
      info: if given, receives "grid" ("dte" or "vpsde") and "train_median" (the median
        leave-one-out training score as a fraction of the DTE grid's last time).

    Returns:
      [M] scores.
    """
    from adiff import scoring, sde as sde_lib  # pylint: disable=import-outside-toplevel
    import adiff.detectors.timeseries as ts_det  # pylint: disable=import-outside-toplevel
    w_train, w_test = w_train.astype(np.float32), w_test.astype(np.float32)
    grid, frac = ts_det.dte_window_grid(w_train, k=k)
    if info is not None:
        info.update(grid=grid, train_median=frac)
    kw = {"sde": sde_lib.VPSDE()} if grid == "vpsde" else {}
    return np.asarray(scoring.dte_nonparametric(w_train, w_test, k=k, num_steps=ts_det.DTE_NUM_STEPS,
                                                **kw).scores)


def baseline_scores(name: str, train: np.ndarray, test: np.ndarray, length: int, *, seed: int,
                    max_windows: int = 3000, assign: str = "centre",
                    info: dict | None = None) -> np.ndarray:
    """Per-step scores [T_test] of a window baseline ("IForest", "KNN" or "PCA").

    Args:
      name: the baseline.
      train: [T_train, C] (z-scored) training series.
      test: [T_test, C] (z-scored) test series.
      length: window length L; windows are flattened to [L * C].
      seed: seed of IForest / PCA.
      max_windows: cap on the training windows (the stride is raised to keep at most this many).
      assign: "centre" or "mean", see `_per_step`.
      info: receives DTE-NP's grid choice (see `dte_np_scores`).

    Returns:
      [T_test] scores: the window scores assigned to steps by `assign`.
    """
    stride = max(1, int(np.ceil((len(train) - length + 1) / max_windows)))
    w_train, _ = _windows(train, length, stride)
    w_test, starts = _windows(test, length, 1)
    if name == "IForest":
        from pyod.models.iforest import IForest  # pylint: disable=import-outside-toplevel
        s = IForest(random_state=seed).fit(w_train).decision_function(w_test)
    elif name == "KNN":
        from pyod.models.knn import KNN  # pylint: disable=import-outside-toplevel
        s = KNN().fit(w_train).decision_function(w_test)
    elif name == "DTE-NP":
        s = dte_np_scores(w_train, w_test, k=5, info=info)
    elif name == "PCA":
        from sklearn.decomposition import PCA  # pylint: disable=import-outside-toplevel
        pca = PCA(n_components=0.95, svd_solver="full", random_state=seed).fit(w_train)
        rec = pca.inverse_transform(pca.transform(w_test))
        s = np.mean(np.square(w_test - rec), axis=1)
    else:
        raise ValueError(f"unknown baseline {name!r}; choose IForest, KNN, PCA or DTE-NP")
    return _per_step(np.asarray(s, np.float64), starts, length, len(test), assign)


def series_metrics(y: np.ndarray, s: np.ndarray, vus_win: int) -> Dict[str, float]:
    """The benchmark's metric set for per-step scores `s` [T] against labels `y` [T]: VUS-PR
    (buffer `vus_win`), AUC-PR, AUROC, best F1 and point-adjusted F1 (both oracle thresholds)."""
    from adiff import metrics  # pylint: disable=import-outside-toplevel
    return {"vus_pr": metrics.vus_pr(y, s, sliding_window=vus_win),
            "auc_pr": metrics.auprc(y, s), "auroc": metrics.auroc(y, s),
            "best_f1": float(metrics.best_f1(y, s).f1),
            "pa_f1": float(metrics.point_adjusted_f1(y, s).f1)}


def synthetic_series(seed: int = 0, *, n_train: int = 2000, n_test: int = 1000, channels: int = 3):
    """A small labelled series that needs no data files: noisy phase-shifted sines; the test part
    has a spike (4 steps, channel 1) and a level shift (30 steps, channel 0), labelled 1.

    Returns:
      `adiff.data.timeseries.SeriesSplit` (train [n_train, C], test [n_test, C], labels [n_test]).
    """
    from adiff.data.timeseries import SeriesSplit  # pylint: disable=import-outside-toplevel
    if n_test < 800 or channels < 2:
        raise ValueError(f"synthetic_series needs n_test >= 800 and channels >= 2, got "
                         f"n_test={n_test}, channels={channels}")
    rng = np.random.RandomState(seed)
    t = np.arange(n_train + n_test)[:, None]
    series = np.sin(2 * np.pi * t / 48 + np.arange(channels)[None] * 0.8)
    series = (series + 0.05 * rng.randn(*series.shape)).astype(np.float32)
    train, test = series[:n_train], series[n_train:].copy()
    labels = np.zeros(n_test, np.int64)
    test[300:304, 1] += 3.0
    labels[300:304] = 1
    test[700:730, 0] -= 1.5
    labels[700:730] = 1
    return SeriesSplit(train, test, labels)


def load_series(spec: str, data_dir, *, seed: int = 0):
    """Loads one series split from a dataset spec (the benchmark's and the launcher's loader).

    Args:
      spec: "asd:<entity>", "skab:<folder>/<run>", "nab:<category>/<file>.csv" or "synthetic".
      data_dir: directory holding asd/, skab/ and nab/ (unused for "synthetic").
      seed: seed of the synthetic series.

    Returns:
      `adiff.data.timeseries.SeriesSplit` (train, test, labels).
    """
    from adiff.data import timeseries as tsd  # pylint: disable=import-outside-toplevel
    if spec == "synthetic":
        return synthetic_series(seed)
    kind, _, name = spec.partition(":")
    loaders = {"asd": tsd.load_asd, "skab": tsd.load_skab, "nab": tsd.load_nab}
    if kind not in loaders or not name:
        raise ValueError(f"dataset must be 'asd:<entity>', 'skab:<run>', 'nab:<series>' or "
                         f"'synthetic', got {spec!r}")
    return loaders[kind](pathlib.Path(data_dir) / kind, name)


def _splits(dataset: str):
    from adiff.data import timeseries as tsd  # pylint: disable=import-outside-toplevel
    root = pathlib.Path(FLAGS.data_dir)
    if dataset == "asd":
        off = FLAGS.entity_offset
        for e in tsd.asd_entities(root / "asd")[off:off + FLAGS.max_entities]:
            yield e, load_series(f"asd:{e}", root)
    elif dataset == "skab":
        off = FLAGS.entity_offset
        for r in tsd.skab_runs(root / "skab")[off:off + FLAGS.max_entities]:
            yield r, load_series(f"skab:{r}", root)
    elif dataset == "nab":
        by_cat: Dict[str, List[str]] = {}
        for key in tsd.nab_series(root / "nab", with_anomalies=True):
            by_cat.setdefault(key.split("/")[0], []).append(key)
        order, i = [], 0
        while len(order) < sum(map(len, by_cat.values())):
            for cat in sorted(by_cat):
                if i < len(by_cat[cat]):
                    order.append(by_cat[cat][i])
            i += 1
        taken, off = 0, FLAGS.entity_offset
        for key in order:
            split = load_series(f"nab:{key}", root)
            if split.labels.min() == split.labels.max():
                continue  # no anomaly (or only anomalies) after the probationary period
            taken += 1
            if taken <= off:
                continue
            yield key, split
            if taken >= off + FLAGS.nab_max_series:
                break
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose asd, skab or nab")


def run_dataset(dataset: str, results: Dict) -> None:
    from adiff import metrics  # pylint: disable=import-outside-toplevel
    rows = results.setdefault(dataset, {})
    # the settings this run used (a merged page may hold datasets run with different overrides)
    results.setdefault("detector_kwargs", {})[dataset] = {
        k: list(v) if isinstance(v, tuple) else v for k, v in _det_kwargs(dataset).items()}
    skab_det = None
    for name, (train, test, labels) in _splits(dataset):
        if labels.min() == labels.max():
            print(f"[{dataset}] {name}: skipped (one class in the test labels)", flush=True)
            continue
        row = {"n_train": int(len(train)), "n_test": int(len(test)), "anomaly_rate": float(labels.mean())}
        vus_win = metrics.vus_window(test)
        row["vus_window"] = int(vus_win)
        t = time.perf_counter()
        if dataset == "skab" and skab_det is not None:
            det, fit_s = skab_det  # one detector for all SKAB runs (trained on anomaly-free.csv)
        else:
            det = _detector(dataset).fit(train)
            fit_s = time.perf_counter() - t
            if dataset == "skab":
                skab_det = (det, fit_s)
        scores = {}
        row["n_calibration"] = int(det.n_calibration_)
        for p in FLAGS.paradigms:
            t = time.perf_counter()
            # The detector's setting ("auto": held-out channel calibration, mean over channels, on
            # multivariate series) and, from the same pass when calibrated, the raw mean error and
            # the calibrated max over channels.
            names, variants = [f"adiff-{p}"], [(None, None)]
            if det.channel_calibrated_:
                names += [f"adiff-{p}-raw", f"adiff-{p}-max"]
                variants += [("none", "mean"), ("holdout", "max")]
            for name_v, s_v in zip(names, det.paradigm_variants(test, p, variants)):
                scores[name_v] = s_v
            for name_v in names:
                row.setdefault("seconds", {})[name_v] = {"fit": fit_s, "score": time.perf_counter() - t}
        z_train, _ = det.transform(train)
        z_test, _ = det.transform(test)
        for b in FLAGS.baselines:
            t = time.perf_counter()
            key = "adiff-dte_np" if b == "DTE-NP" else b
            info = {}
            scores[key] = baseline_scores(b, z_train, z_test, det.window, seed=FLAGS.seed,
                                          max_windows=FLAGS.max_baseline_windows, assign=FLAGS.assign,
                                          info=info)
            if info:
                row["dte_np_grid"] = info
            row["seconds"][key] = {"fit": 0.0, "score": time.perf_counter() - t}  # fit+score together
        row["metrics"] = {k: series_metrics(labels, s, vus_win) for k, s in scores.items()}
        rows[name] = row
        line = "  ".join(f"{k} {v['vus_pr']:.3f}" for k, v in row["metrics"].items())
        print(f"[{dataset}] {name}: VUS-PR {line}  (fit {fit_s:.1f}s)", flush=True)
        _write(results)


def _mean_table(rows: Dict) -> List[str]:
    methods = list(next(iter(rows.values()))["metrics"])
    out = ["| method | VUS-PR | AUC-PR | AUROC | best F1 (oracle) | PA-F1 (legacy, oracle) | "
           "fit s / 10k train steps | score s / 10k test steps |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    best = max(methods, key=lambda m: np.mean([r["metrics"][m]["vus_pr"] for r in rows.values()]))
    for m in methods:
        vals = {k: np.mean([r["metrics"][m][k] for r in rows.values()]) for k in
                ("vus_pr", "auc_pr", "auroc", "best_f1", "pa_f1")}
        n_tr = sum(r["n_train"] for r in rows.values())
        n_te = sum(r["n_test"] for r in rows.values())
        fit = sum(r["seconds"][m]["fit"] for r in rows.values())
        net = m.startswith("adiff") and m != "adiff-dte_np"  # a fitted network
        if net and len({r["seconds"][m]["fit"] for r in rows.values()}) == 1:
            fit = next(iter(rows.values()))["seconds"][m]["fit"]  # one shared model (SKAB)
            n_tr = next(iter(rows.values()))["n_train"]
        score = sum(r["seconds"][m]["score"] for r in rows.values())
        fit_txt = f"{1e4 * fit / n_tr:.1f}" if net else "(in score)"
        name = f"**{m}**" if m == best else m
        out.append(f"| {name} | {vals['vus_pr']:.3f} | {vals['auc_pr']:.3f} | {vals['auroc']:.3f} | "
                   f"{vals['best_f1']:.3f} | {vals['pa_f1']:.3f} | {fit_txt} | {1e4 * score / n_te:.1f} |")
    return out


def _entity_table(rows: Dict) -> List[str]:
    methods = list(next(iter(rows.values()))["metrics"])
    out = ["| series | steps (train / test) | anomaly % | " + " | ".join(methods) + " |",
           "|---|---|---:|" + "---:|" * len(methods)]
    for name, r in rows.items():
        best = max(methods, key=lambda m: r["metrics"][m]["vus_pr"])
        cells = [(f"**{r['metrics'][m]['vus_pr']:.3f}**" if m == best else f"{r['metrics'][m]['vus_pr']:.3f}")
                 for m in methods]
        out.append(f"| {name} | {r['n_train']} / {r['n_test']} | {100 * r['anomaly_rate']:.1f} | "
                   + " | ".join(cells) + " |")
    return out


def _write(results: Dict) -> None:
    import adiff.detectors.timeseries as ts_det  # pylint: disable=import-outside-toplevel
    path = pathlib.Path(FLAGS.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(results, indent=1, default=float))
    cmds = results.get("commands") or [
        "python -m experiments.benchmarks.timeseries " + " ".join(sys.argv[1:])]
    cmd = "\n    ".join(cmds)
    lines = [
        "# Time-series anomaly detection: adiff vs window baselines",
        "",
        "Produced by `experiments/benchmarks/timeseries.py` (issue 5); every figure below comes "
        f"from {'one run' if len(cmds) == 1 else 'these runs (merged)'} of:\n\n    {cmd}\n",
        f"Data: `{FLAGS.data_dir}` (the staged copies of ASD / InterFusion, SKAB and NAB; see "
        "../shared/data/README.md). Seed {seed}; machine: {plat}, CPU only, 2 cores shared with "
        "other jobs (timings are indicative).".format(seed=FLAGS.seed, plat=platform.platform()),
        "",
        "Protocol: ASD trains on each entity's train file and tests on its test file; SKAB trains "
        "one model on anomaly-free.csv and tests every labelled run; NAB trains on the "
        "probationary period (first min(floor(0.15 n), 750) points) and tests on the rest of the "
        "series (series without an anomaly after that period are skipped). Inputs z-scored with "
        "training statistics (clipped to +-10). VUS-PR is primary (buffer = the test series' "
        "period from the autocorrelation, 125 when none; TSB-AD definition), then AUC-PR, AUROC, "
        "best F1 without point adjustment, and point-adjusted F1 as a legacy figure only (random "
        "scores reach high PA-F1). Best F1 and PA-F1 pick the threshold on the test labels "
        "(oracle).",
        "",
        "adiff: `TimeSeriesDetector(**experiments/configs/ts_<dataset>.py detector)` = "
        + "; ".join(f"{ds}: `{results.get('detector_kwargs', {}).get(ds) or _det_kwargs(ds)}`"
                    for ds in results if ds in ("asd", "skab", "nab"))
        + ". One network per series (per dataset for SKAB) scored by three paradigms from the "
        "same network (`paradigm_scores`): imputation (grid + random masks, x0-predictions of the "
        "last DDIM steps), reconstruction (t0 = 0.1 and 0.3) and denoising (density-style: x0 "
        "error after noising to t = 0.05, 0.1, 0.2, 0.3 with fixed noise draws, one network "
        "evaluation per level); these give per-entry errors, averaged over the windows covering "
        "a step (combine='mean'). Channel calibration (the detector's default channel_norm="
        "'auto', fixed before any test figure: on for multivariate series, off for univariate "
        "ones, where it cannot change a ranking): the network trains on the first 80% of the "
        "training series, each paradigm's per-channel errors are standardised by their mean and "
        "std on the held-out last 20% and averaged over channels (row adiff-<paradigm>); "
        "-raw = the same network's unstandardised mean over channels, -max = the standardised "
        "max over channels (same scoring pass). Fit seconds include scoring the training series (PyOD's "
        "decision_scores_). Window scorers without a network, on flattened z-scored windows of "
        "the detector's length (stride 1 at test, training windows capped at "
        f"{FLAGS.max_baseline_windows}): PyOD IForest (100 trees), PyOD KNN (k = 5, largest), "
        "PCA reconstruction error (95% variance) and adiff-dte_np (adiff.scoring."
        "dte_nonparametric, k = 5, posterior-mean diffusion time; an extra paradigm of adiff, "
        "not a diffusion network; DTE's discrete grid unless the median leave-one-out score of the "
        f"training windows lies in the last {ts_det.DTE_SATURATION:.0%} of that grid, then the VP SDE's "
        "time grid: a label-free rule against saturation, fixed before any test figure). Their window scores go to "
        + ("the window's centre step, edges padded with the nearest centre (DESIGN.md)"
           if FLAGS.assign == "centre" else "every step, averaged over the covering windows")
        + ".",
        "",
    ]
    for ds, rows in results.items():
        if ds not in ("asd", "skab", "nab") or not rows:
            continue
        lines += [f"## {ds.upper()} ({len(rows)} series): mean over series", ""] + _mean_table(rows) + [
            "", f"VUS-PR per series ({ds.upper()}); bold = best:", ""] + _entity_table(rows) + [""]
    if "scaling" in results:
        s = results["scaling"]
        lines += ["## Scaling", "",
                  f"Scoring a synthetic {s['steps']:,}-step univariate series ({s['scoring']}, "
                  f"unchanged code, score_batch_size={s['score_batch_size']}): {s['seconds']:.1f} s, "
                  f"peak RSS {s['peak_rss_mib']:.0f} MiB (process peak, after fitting on "
                  f"{s['n_train']} steps; RSS before scoring {s['rss_before_mib']:.0f} MiB).", ""]
    if "notes" in results:
        lines += ["## Notes", ""] + results["notes"] + [""]
    lines += _kept_sections(path)
    path.write_text("\n".join(lines))


# Sections of the results page written by hand (findings, the SKAB protocol check) or by another
# script (the scaling benchmark of experiments/benchmarks/timeseries_scale.py): carried over when
# the page is rewritten, each up to the next "## " heading.
KEPT_SECTIONS = ("## Findings", "## SKAB protocol check", "## Scaling: scoring a long series")


def _kept_sections(path: pathlib.Path) -> List[str]:
    if not path.exists():
        return []
    out, keep = [], False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            keep = line.startswith(KEPT_SECTIONS)
        if keep:
            out.append(line)
    return out + ([""] if out else [])


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_scaling(results: Dict) -> None:
    n = FLAGS.scaling_steps
    rng = np.random.RandomState(FLAGS.seed)
    train = np.sin(2 * np.pi * np.arange(5000) / 50) + 0.1 * rng.randn(5000)
    det = _detector("default", scoring="reconstruction", train_steps=200).fit(train)
    t = np.arange(n)
    series = (np.sin(2 * np.pi * t / 50) + 0.1 * rng.randn(n)).astype(np.float32)
    before = _rss_mib()
    t0 = time.perf_counter()
    s = det.decision_function(series)
    results["scaling"] = {"steps": n, "scoring": "reconstruction", "seconds": time.perf_counter() - t0,
                          "peak_rss_mib": _rss_mib(), "rss_before_mib": before, "n_train": 5000,
                          "score_batch_size": det.score_batch_size, "n_scores": int(len(s))}
    print("scaling:", results["scaling"], flush=True)


def main(argv):
    del argv
    path = pathlib.Path(FLAGS.output).with_suffix(".json")
    keep = path.exists() and (FLAGS.merge or not FLAGS.datasets)
    results = json.loads(path.read_text()) if keep else {}
    cmd = ("flock /tmp/adiff_heavy.lock timeout 900 python -m experiments.benchmarks.timeseries "
           + " ".join(sys.argv[1:]))
    results["commands"] = (results.get("commands", []) if FLAGS.merge else []) + [cmd]
    for ds in FLAGS.datasets:
        if not FLAGS.merge or FLAGS.entity_offset == 0:
            results.pop(ds, None)  # a dataset starts afresh unless this run continues it
        run_dataset(ds, results)
    if FLAGS.scaling_steps > 0:
        run_scaling(results)
    _write(results)


if __name__ == "__main__":
    define_flags()
    app.run(main)
