"""Detector jobs of experiments/main.py for the config kinds "timeseries", "image", "video" and
"multimodal": train, evaluate, benchmark and score.

The data loading, the baselines and the metric code are the benchmark scripts'
(experiments/benchmarks/{timeseries,image,video,multimodal}.py), so a launcher run and a
benchmark run of the same config report the same figures:

- timeseries: VUS-PR (primary), AUC-PR, AUROC, best F1, point-adjusted F1 per scoring paradigm
  and window baseline;
- image: image AUROC, and pixel AUROC and AUPRO where the test set has masks;
- video: frame AUROC (raw, clip-normalised, per clip) and, on the procedural set, per anomaly type;
- multimodal: AUROC per anomaly kind of the fused, early, late and unimodal scores.

Every run writes to the workdir: metrics.json (per seed and mean/std over seeds),
scores_vs_labels.png, scores.npz (the adiff test scores and labels of the first seed) and the
fitted detector of the first seed in detector/ (orbax + JSON; `adiff.load`). Mode "score" loads
detector/ and writes scores.csv.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
MODES = ("train", "evaluate", "benchmark", "score")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evaluation:
    """One seed's evaluation.

    Attributes:
      metrics: method name -> metric name -> value (or a nested dict for per-kind tables).
      scores: the adiff test scores, one value per scored unit (step, image, frame, sample).
      labels: the matching 0/1 labels.
      boundaries: unit indices where a new test sequence starts (clips), for the plot.
    """
    metrics: Dict[str, Dict[str, Any]]
    scores: np.ndarray  # [U]
    labels: np.ndarray  # [U]
    boundaries: Tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Modality:
    """How one config kind loads data, builds its detector, evaluates it and reads score inputs.

    Attributes:
      load: (config, seed) -> (train, test): training data as the detector's `fit` takes it, and
        the labelled test data.
      make: (config, seed) -> an unfitted detector.
      evaluate: (config, detector, train, test, seed) -> Evaluation.
      read_input: (path, config) -> the detector's input read from a .npz file.
      write_scores: (detector, X, path) -> scores written to the CSV `path`.
    """
    load: Callable
    make: Callable
    evaluate: Callable
    read_input: Callable
    write_scores: Callable


def _resolve(path) -> pathlib.Path:
    path = pathlib.Path(path)
    return path if path.is_absolute() else (REPO / path).resolve()


def detector_kwargs(config) -> Dict[str, Any]:
    """The config's `detector` ConfigDict as keyword arguments (lists become tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.detector.to_dict().items()}


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def _read_npz(path, key: str = "X") -> np.ndarray:
    with np.load(path, allow_pickle=False) as f:
        if key not in f:
            raise ValueError(f"input {str(path)!r} must hold an array {key!r}; it has {sorted(f.files)}")
        return f[key]


def _write_csv(path, columns: Dict[str, np.ndarray]) -> None:
    np.savetxt(path, np.stack([np.asarray(v, np.float64) for v in columns.values()], 1),
               delimiter=",", header=",".join(columns), comments="")


# ------------------------------------------------------------------------------------------------
# time series
# ------------------------------------------------------------------------------------------------
def _ts_load(config, seed):
    from experiments.benchmarks import timeseries as bench  # pylint: disable=import-outside-toplevel
    split = bench.load_series(config.dataset, _resolve(config.data_dir), seed=seed)
    return split.train, split


def _ts_make(config, seed):
    from adiff.detectors.timeseries import TimeSeriesDetector  # pylint: disable=import-outside-toplevel
    return TimeSeriesDetector(**{**detector_kwargs(config), "seed": seed})


def _ts_evaluate(config, det, train, test, seed) -> Evaluation:
    from adiff import metrics  # pylint: disable=import-outside-toplevel
    from experiments.benchmarks import timeseries as bench  # pylint: disable=import-outside-toplevel
    vus_win = metrics.vus_window(test.test)
    scores, seconds = {}, {}
    for p in tuple(config.get("paradigms", (det.scoring,))):
        scores[f"adiff-{p}"], seconds[f"adiff-{p}"] = _timed(det.paradigm_scores, test.test, p)
    z_train, _ = det.transform(train)
    z_test, _ = det.transform(test.test)
    for b in config.get("baselines", ()):
        scores[b], seconds[b] = _timed(
            lambda name: bench.baseline_scores(name, z_train, z_test, det.window, seed=seed,
                                               max_windows=config.get("max_baseline_windows", 3000)), b)
    table = {k: {**bench.series_metrics(test.labels, s, vus_win), "score_seconds": seconds[k]}
             for k, s in scores.items()}
    main = f"adiff-{det.scoring}" if f"adiff-{det.scoring}" in scores else next(iter(scores))
    return Evaluation(metrics=table, scores=scores[main], labels=np.asarray(test.labels))


# ------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------
def _image_load(config, seed):
    from experiments.benchmarks import image as bench  # pylint: disable=import-outside-toplevel
    split = bench.load_split(config, seed=seed)
    return split.train, split.test


def _image_make(config, seed):
    from adiff.detectors.image import ImageDetector  # pylint: disable=import-outside-toplevel
    return ImageDetector(**{**detector_kwargs(config), "seed": seed})


def _image_evaluate(config, det, train, test, seed) -> Evaluation:
    del seed
    from experiments.benchmarks import image as bench  # pylint: disable=import-outside-toplevel
    res, sec = _timed(det.analyze, test.images)
    table = {"adiff": {**bench.evaluate(test, res.scores, res.maps), "score_seconds": sec}}
    for b in config.get("baselines", ()):
        if b == "PCA":
            s, m = bench.map_head(bench.pca_baseline(train, test.images), sigma=det.map_sigma,
                                  topk=det.topk)
            table[b] = bench.evaluate(test, s, m)
        elif b == "KNN":
            table[b] = bench.evaluate(test, bench.knn_baseline(train, test.images))
        else:
            raise ValueError(f"config.baselines: unknown image baseline {b!r}; choose PCA or KNN")
    return Evaluation(metrics=table, scores=np.asarray(res.scores), labels=np.asarray(test.labels))


# ------------------------------------------------------------------------------------------------
# video
# ------------------------------------------------------------------------------------------------
def _video_load(config, seed):
    from experiments.benchmarks import video as bench  # pylint: disable=import-outside-toplevel
    train, test = bench.load_split(config, seed=seed)
    return train.clips, test


def _video_make(config, seed):
    from adiff.detectors.video import VideoDetector  # pylint: disable=import-outside-toplevel
    return VideoDetector(**{**detector_kwargs(config), "seed": seed})


def _video_evaluate(config, det, train, test, seed) -> Evaluation:
    del seed
    from experiments.benchmarks import video as bench  # pylint: disable=import-outside-toplevel
    scores, sec = _timed(det.decision_function, test.clips)
    methods = {"adiff": scores}
    wanted = tuple(config.get("baselines", ()))
    if wanted:
        methods.update({k: v for k, v in bench.baselines(train, test.clips).items() if k in wanted})
    table = {}
    for name, s in methods.items():
        row = bench.frame_metrics(test.labels, s)
        if config.dataset == "procedural":
            row["by_type"] = bench.auroc_by_type(test, s)
        table[name] = row
    table["adiff"]["score_seconds"] = sec
    bounds = tuple(int(b) for b in np.cumsum([len(c) for c in test.clips])[:-1])
    return Evaluation(metrics=table, scores=np.concatenate(scores),
                      labels=np.concatenate(test.labels), boundaries=bounds)


def _video_read(path, config):
    del config
    x = _read_npz(path)
    if x.ndim == 5 or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
        return list(x)  # [N, T, H, W, C] or [N, T, H, W]: N clips
    return [x]  # one clip [T, H, W, C] or [T, H, W]


def _video_write(det, clips, path):
    scores = det.decision_function(clips)
    clip = np.concatenate([np.full(len(s), i) for i, s in enumerate(scores)])
    frame = np.concatenate([np.arange(len(s)) for s in scores])
    s = np.concatenate(scores)
    _write_csv(path, {"clip": clip, "frame": frame, "score": s,
                      "label": (s > det.threshold_).astype(int)})
    return scores


# ------------------------------------------------------------------------------------------------
# multimodal
# ------------------------------------------------------------------------------------------------
def _mm_load(config, seed):
    from experiments.benchmarks import multimodal as bench  # pylint: disable=import-outside-toplevel
    split = bench.load_split(config, _resolve(config.data_root), seed)
    return split.train, split


def _mm_make(config, seed):
    from adiff.detectors.multimodal import MultimodalDetector  # pylint: disable=import-outside-toplevel
    return MultimodalDetector(modalities=dict(config.modalities), fusion=config.get("fusion", "dynamic"),
                              seed=seed, **detector_kwargs(config))


def _mm_evaluate(config, det, train, test, seed) -> Evaluation:
    del train
    from adiff import metrics  # pylint: disable=import-outside-toplevel
    from experiments.benchmarks import multimodal as bench  # pylint: disable=import-outside-toplevel
    d, sec = _timed(det.decompose, test.test)
    fused = {"early": d.early, "late": d.late, "dynamic": d.dynamic}
    rows = {f"adiff {k}": v for k, v in fused.items()}
    for i, k in enumerate(det.modalities):
        rows[f"adiff unimodal {k}"] = d.unimodal[:, i]
    if "KNN concat" in tuple(config.get("baselines", ())):
        feats = bench.knn_features(test, dict(config.modalities), seed)
        rows["KNN concat"] = bench.knn_distance(np.concatenate([f[0] for f in feats.values()], 1),
                                                np.concatenate([f[1] for f in feats.values()], 1))
    y = np.asarray(test.labels)
    table = {name: {"auroc": metrics.auroc(y, np.nan_to_num(np.asarray(s), nan=-np.inf)),
                    "auroc_by_kind": bench.auroc_by_kind(y, test.kinds, s)} for name, s in rows.items()}
    table[f"adiff {det.fusion}"]["score_seconds"] = sec
    return Evaluation(metrics=table, scores=np.asarray(fused[det.fusion]), labels=y)


def _mm_read(path, config):
    keys = list(config.modalities)
    with np.load(path, allow_pickle=False) as f:
        if sorted(f.files) != sorted(keys):
            raise ValueError(f"input {str(path)!r} must hold one array per modality {sorted(keys)}; "
                             f"it has {sorted(f.files)}")
        return {k: f[k] for k in keys}


def _write_rows(det, X, path):
    """Scores one value per row / step / image; writes score and 0/1 label (> threshold_)."""
    s = det.decision_function(X)
    _write_csv(path, {"score": s, "label": (s > det.threshold_).astype(int)})
    return s


def _read_x(path, config):
    del config
    return _read_npz(path)


def modality(kind: str) -> Modality:
    """The job functions of a config kind ("timeseries", "image", "video" or "multimodal")."""
    table = {
        "timeseries": Modality(load=_ts_load, make=_ts_make, evaluate=_ts_evaluate,
                               read_input=_read_x, write_scores=_write_rows),
        "image": Modality(load=_image_load, make=_image_make, evaluate=_image_evaluate,
                          read_input=_read_x, write_scores=_write_rows),
        "video": Modality(load=_video_load, make=_video_make, evaluate=_video_evaluate,
                          read_input=_video_read, write_scores=_video_write),
        "multimodal": Modality(load=_mm_load, make=_mm_make, evaluate=_mm_evaluate,
                               read_input=_mm_read, write_scores=_write_rows),
    }
    if kind not in table:
        raise ValueError(f"kind must be one of {sorted(table)}, got {kind!r}")
    return table[kind]


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------
def plot_scores(path, ev: Evaluation, title: str) -> None:
    """Scores vs labels: the adiff scores in test order with anomalous units shaded (top) and the
    score histograms of normal and anomalous units (bottom)."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    s, y = np.asarray(ev.scores, np.float64), np.asarray(ev.labels).astype(int)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6))
    ax1.plot(s, lw=0.8, color="k", marker="." if len(s) < 400 else None, ms=3)
    edges = np.flatnonzero(np.diff(np.r_[0, y, 0]))
    for a, b in zip(edges[::2], edges[1::2]):
        ax1.axvspan(a - 0.5, b - 0.5, color="red", alpha=0.2, lw=0)
    for b in ev.boundaries:
        ax1.axvline(b - 0.5, color="C0", lw=0.6, ls=":")
    ax1.set(title=f"{title}: adiff scores (red: labelled anomalies)", xlabel="test index", ylabel="score")
    finite = s[np.isfinite(s)]
    bins = np.linspace(finite.min(), finite.max(), 40) if len(finite) else 10
    for lab, name in ((0, "normal"), (1, "anomaly")):
        sel = s[(y == lab) & np.isfinite(s)]
        if len(sel):
            ax2.hist(sel, bins=bins, alpha=0.6, density=True, label=f"{name} ({len(sel)})")
    ax2.set(xlabel="score", ylabel="density")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _summary(per_seed: Dict[str, Dict]) -> Dict:
    """Mean and std over seeds of every scalar metric of every method."""
    first = next(iter(per_seed.values()))
    out = {}
    for method, row in first.items():
        out[method] = {}
        for name, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                vals = [per_seed[s][method][name] for s in per_seed]
                out[method][name] = [float(np.nanmean(vals)), float(np.nanstd(vals))]
    return out


def save_detector(det, workdir) -> pathlib.Path:
    """Saves `det` to workdir/detector, replacing an earlier one; returns the path."""
    out = pathlib.Path(workdir) / "detector"
    if out.exists():
        shutil.rmtree(out)
    det.save(out)
    return out


def evaluate(config, workdir, *, seeds) -> Dict:
    """Fits the config's detector per seed, scores the test split, writes metrics.json,
    scores_vs_labels.png, scores.npz and detector/ (first seed) to `workdir`.

    Args:
      config: a timeseries / image / video / multimodal config (see experiments/configs).
      workdir: output directory.
      seeds: seeds to run (each seeds the detector and, where the data has one, the split).

    Returns:
      The metrics dict written to workdir/metrics.json.
    """
    if not seeds:
        raise ValueError("seeds must name at least one seed, got an empty sequence")
    kind = config.kind
    mod = modality(kind)
    wd = pathlib.Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    results = {"kind": kind, "dataset": config.get("dataset", config.get("benchmark")),
               "detector": detector_kwargs(config), "seeds": {}, "fit_seconds": {}}
    for i, seed in enumerate(seeds):
        seed = int(seed)
        train, test = mod.load(config, seed)
        det, fit_s = _timed(lambda: mod.make(config, seed).fit(train))
        ev = mod.evaluate(config, det, train, test, seed)
        results["seeds"][str(seed)] = ev.metrics
        results["fit_seconds"][str(seed)] = fit_s
        if i == 0:
            plot_scores(wd / "scores_vs_labels.png", ev, f"{kind} {results['dataset']} (seed {seed})")
            np.savez(wd / "scores.npz", scores=ev.scores, labels=ev.labels)
            save_detector(det, wd)
        print(f"[{kind}] seed {seed}: fit {fit_s:.1f}s " + "  ".join(
            f"{m}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                                 if isinstance(v, float) and k != "score_seconds")
            for m, row in ev.metrics.items()), flush=True)
    results["summary"] = _summary(results["seeds"])
    (wd / "metrics.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"wrote {wd / 'metrics.json'}, {wd / 'scores_vs_labels.png'}, {wd / 'detector'}", flush=True)
    return results


def train(config, workdir) -> pathlib.Path:
    """Fits the config's detector (seed `config.seed`) on the training data and saves it to
    workdir/detector; returns that path."""
    mod = modality(config.kind)
    train_data, _ = mod.load(config, int(config.seed))
    det, fit_s = _timed(lambda: mod.make(config, int(config.seed)).fit(train_data))
    out = save_detector(det, pathlib.Path(workdir))
    print(f"[{config.kind}] fitted in {fit_s:.1f}s; saved {out}", flush=True)
    return out


def score(config, workdir, input_path):
    """Loads workdir/detector and scores the .npz `input_path` (array X; for multimodal one array
    per modality name); writes workdir/scores.csv and returns the scores."""
    import adiff  # pylint: disable=import-outside-toplevel
    if not str(input_path).endswith(".npz"):
        raise ValueError(f"input must be a .npz file for kind {config.kind!r}, got {str(input_path)!r}")
    mod = modality(config.kind)
    det = adiff.load(pathlib.Path(workdir) / "detector")
    out = pathlib.Path(workdir) / "scores.csv"
    s = mod.write_scores(det, mod.read_input(input_path, config), out)
    print(f"scored {str(input_path)!r} -> {out}", flush=True)
    return s


def run(mode: str, config, workdir, *, input_path=None):
    """Runs `mode` ("train", "evaluate", "benchmark" or "score") on a modality config.

    "evaluate" runs the seed `config.seed`; "benchmark" every seed in `config.seeds`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "train":
        return train(config, workdir)
    if mode == "score":
        return score(config, workdir, input_path)
    seeds: List[int] = [int(config.seed)] if mode == "evaluate" else [int(s) for s in config.seeds]
    return evaluate(config, workdir, seeds=seeds)
