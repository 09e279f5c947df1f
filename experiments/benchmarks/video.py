r"""Video anomaly detection benchmark: UCSD Ped2 subset and the procedural motion set.

  flock /tmp/adiff_heavy.lock timeout 900 python -m experiments.benchmarks.video [--quick]

Data: ../shared/data/video/ucsd_ped2 (train clips 01-04, test clips 01-04, ped2.mat labels),
grayscale, resized to configs/video_ped2.py `size`; the procedural set of
adiff.data.video.procedural_benchmark (configs/video_procedural.py).
Protocol (DESIGN.md): frame-level AUROC over all test frames of raw scores (headline); per-clip
min-max normalised AUROC (uses test-clip statistics) and per-clip AUROC reported separately.
Procedural: AUROC per anomaly type over the frames of the normal test clips plus that type's clips.
Baselines in the same script, on the same frames: frame-difference magnitude (mean |f_t - f_t-1|),
PCA reconstruction of frames (top-1% pixel error), previous frame as the prediction + PCA of the
residual (top-1% error); PCA keeps 95% of the training variance. Each baseline also appears with
the detector's temporal smoothing (sigma 2 frames), so adiff's smoothed rows have a matched
comparison.
Overrides (multi-seed runs and options): --procedural_seed (data and networks),
--procedural_variant (standard / varied: nuisance variation of the objects), --ped2_seed
(networks; the clips are fixed), --ped2_size, --motion (diff / flow / none for both detectors),
--direction (forward / both: add a backward model), --appearance (add the per-frame appearance
stream and the gated fusion to the procedural detector),
--train_steps_scale; --skip_ped2 / --skip_procedural run one part.
Writes docs/results/video.md (its generated tables; the text below KEEP_MARKER is kept) and
docs/results/video.json.
"""
from __future__ import annotations

import json
import pathlib
import platform
import sys
import time

from absl import app, flags

import jax
import numpy as np
from sklearn.decomposition import PCA

from adiff import metrics
from adiff.data import video as video_data
from adiff.detectors.video import VideoDetector, _smooth1d  # the detector's own filter, for matched baseline rows
from experiments.configs import video_ped2, video_procedural

REPO = pathlib.Path(__file__).resolve().parents[2]
_QUICK = _OUT = _SKIP_PED2 = _STEPS_SCALE = _PED2_SIZE = _SKIP_PROC = _PROC_SEED = _PED2_SEED = _MOTION = None
_PROC_VARIANT = _DIRECTION = _APPEARANCE = None


def define_flags() -> None:
    """Defines the script's command-line flags (only when run as a script, so that the launcher
    can import this module's functions next to the other benchmark modules)."""
    global _QUICK, _OUT, _SKIP_PED2, _STEPS_SCALE, _PED2_SIZE, _SKIP_PROC, _PROC_SEED, _PED2_SEED, _MOTION  # pylint: disable=global-statement
    global _PROC_VARIANT, _DIRECTION, _APPEARANCE  # pylint: disable=global-statement
    _QUICK = flags.DEFINE_bool("quick", False, "Tiny settings (smoke test of the script).")
    _OUT = flags.DEFINE_string("out", str(REPO / "docs" / "results" / "video.md"), "Results file.")
    _SKIP_PED2 = flags.DEFINE_bool("skip_ped2", False, "Only the procedural set.")
    _STEPS_SCALE = flags.DEFINE_float("train_steps_scale", 1.0,
                                      "Multiply both configs' detector train_steps by this factor.")
    _PED2_SIZE = flags.DEFINE_list("ped2_size", [], "Ped2 frame size H,W (default: the config's).")
    _SKIP_PROC = flags.DEFINE_bool("skip_procedural", False, "Only Ped2.")
    _PROC_SEED = flags.DEFINE_integer("procedural_seed", None, "Seed of the procedural set and its "
                                      "networks (default: the config's `seed`).")
    _PED2_SEED = flags.DEFINE_integer("ped2_seed", None, "Seed of the Ped2 networks (the clips are "
                                      "fixed; default: the config's `seed`).")
    _MOTION = flags.DEFINE_enum("motion", None, ["diff", "flow", "none"], "Motion features of both "
                                "detectors instead of the configs' (flow: Farneback optical flow).")
    _PROC_VARIANT = flags.DEFINE_enum("procedural_variant", None, sorted(video_data.PROCEDURAL_VARIANTS),
                                      "Preset of the procedural set (default: the config's `variant`; "
                                      "varied: 1-3 objects of varying size and brightness per clip).")
    _DIRECTION = flags.DEFINE_enum("direction", None, ["forward", "both"], "Prediction direction of "
                                   "both detectors instead of the configs' (both: forward + backward "
                                   "model, mean of their scores).")
    _APPEARANCE = flags.DEFINE_bool("appearance", None, "Procedural detector with (or, =false, without) "
                                    "the appearance stream and gated fusion, instead of the config's.")


def _f(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).reshape(len(x), -1) / 255.0


def _topk(err: np.ndarray, frac: float = 0.01) -> np.ndarray:
    k = max(1, int(round(frac * err.shape[1])))
    return np.mean(np.sort(err, axis=1)[:, -k:], axis=1)


def _residuals(x: np.ndarray) -> np.ndarray:
    """f_t - f_t-1 of flattened frames [T, P] (zero for the first frame)."""
    return np.concatenate([x[:1] * 0, x[1:] - x[:-1]])


def _fill_first(s: np.ndarray) -> np.ndarray:
    """The first frame has no predecessor: it takes the second frame's score."""
    s[0] = s[1] if len(s) > 1 else 0.0
    return s


def frame_difference(clip: np.ndarray) -> np.ndarray:
    """The frame-difference baseline of one clip [T, H, W, C]: mean |f_t - f_t-1| per frame, [T]."""
    return _fill_first(np.mean(np.abs(_residuals(_f(clip))), axis=1))


def baselines(train: list, test: list) -> dict:
    """Per-clip frame scores of the baselines, dict name -> list of [T] arrays."""
    out = {"frame difference": [], "PCA of frames": [], "previous frame + PCA residual": []}
    frames = np.concatenate([_f(c) for c in train])
    pca = PCA(n_components=0.95, svd_solver="full").fit(frames)
    res = np.concatenate([_residuals(_f(c))[1:] for c in train])
    pca_r = PCA(n_components=0.95, svd_solver="full").fit(res)
    for c in test:
        x = _f(c)
        d = _residuals(x)
        out["frame difference"].append(_fill_first(np.mean(np.abs(d), axis=1)))
        rec = pca.inverse_transform(pca.transform(x))
        out["PCA of frames"].append(_topk((x - rec) ** 2))
        rr = pca_r.inverse_transform(pca_r.transform(d))
        out["previous frame + PCA residual"].append(_fill_first(_topk((d - rr) ** 2)))
    return out


def _minmax(s):
    span = s.max() - s.min()
    return (s - s.min()) / (span if span > 0 else 1.0)


def frame_metrics(labels: list, scores: list) -> dict:
    """Frame AUROC over all test frames of raw scores ("raw", the headline), of per-clip min-max
    normalised scores ("clip_normalised") and per clip ("per_clip", NaN for one-class clips).

    Args:
      labels: per-clip frame labels, a list of [T_i] arrays (1 = anomalous frame).
      scores: per-clip frame scores, a list of [T_i] arrays.
    """
    y = np.concatenate(labels)
    raw = metrics.auroc(y, np.concatenate(scores))
    norm = metrics.auroc(y, np.concatenate([_minmax(s) for s in scores]))
    per = [metrics.auroc(l, s) if 0 < l.sum() < len(l) else float("nan") for l, s in zip(labels, scores)]
    return {"raw": raw, "clip_normalised": norm, "per_clip": per}


def load_split(cfg, *, seed: int, max_frames=None, counts=None):
    """The benchmark's (train, test) `adiff.data.video.VideoSet`s for a video config.

    Args:
      cfg: a config of experiments/configs/video_*.py: `dataset` "ucsd_ped2" (with `data_dir`,
        relative to the repository root, and `size` (H, W)) or "procedural" (with `size`,
        `num_train`, `num_test`, `num_frames` and optionally `variant`).
      seed: seed of the procedural set (the Ped2 clips are fixed).
      max_frames: Ped2 only: keep at most this many frames per clip.
      counts: procedural only: (num_train, num_test, num_frames) instead of the config's.
    """
    if cfg.dataset == "ucsd_ped2":
        root = (REPO / cfg.data_dir).resolve()
        size = tuple(cfg.size)
        return (video_data.load_ped2(root, split="training", size=size, max_frames=max_frames),
                video_data.load_ped2(root, split="testing", size=size, max_frames=max_frames))
    if cfg.dataset == "procedural":
        n_train, n_test, n_frames = counts or (cfg.num_train, cfg.num_test, cfg.num_frames)
        return video_data.procedural_benchmark(seed, num_train=n_train, num_test=n_test,
                                               num_frames=n_frames, size=cfg.size,
                                               variant=cfg.get("variant", "standard"))
    raise ValueError(f"config.dataset must be 'ucsd_ped2' or 'procedural', got {cfg.dataset!r}")


def auroc_by_type(test, scores: list) -> dict:
    """Frame AUROC per anomaly type of a procedural test set (the normal test clips' frames plus
    that type's clips), and "all" over every test frame."""
    row = {}
    for kind in video_data.ANOMALY_TYPES:
        idx = [i for i, k in enumerate(test.kinds) if k in ("normal", kind)]
        row[kind] = metrics.auroc(np.concatenate([test.labels[i] for i in idx]),
                                  np.concatenate([scores[i] for i in idx]))
    row["all"] = metrics.auroc(np.concatenate(test.labels), np.concatenate(scores))
    return row


# Temporal smoothing of the "+ temporal smoothing" rows, adiff's and the baselines' alike (matched).
SMOOTH_SIGMA = 2.0

# Other scoring settings of the fitted Ped2 model (set_params only; no refit). Each is complete, so
# a row does not depend on the config's score; the row equal to the configured score is left out.
_SCORE_KEYS = ("score", "t0", "solver_steps", "num_samples", "frame_score", "smooth_sigma")


def _scoring(score: str, t0: float, samples: int, *, steps: int = 1, frame_score: str = "topk",
             smooth: float = 0.0) -> dict:
    """A complete scoring setting (every key of _SCORE_KEYS) for set_params."""
    return dict(score=score, t0=t0, solver_steps=steps, num_samples=samples, frame_score=frame_score,
                smooth_sigma=smooth)


# The denoising score of the session-9 smoothed rows (Ped2 and procedural, same fitted models).
_DENOISE_SMOOTH = _scoring("denoise", 0.3, 4, smooth=SMOOTH_SIGMA)
_PED2_VARIANTS = (
    ("posterior mean at t=1 (the default score until session 15)", _scoring("sample", 1.0, 1)),
    ("posterior mean at t=1 + temporal smoothing (sigma 2)", _scoring("sample", 1.0, 1, smooth=2.0)),
    ("4-step DDIM samples from noise, mean of 2 (eta 0)", _scoring("sample", 1.0, 2, steps=4)),
    ("denoising error at t=0.05 (4 draws)", _scoring("denoise", 0.05, 4)),
    ("denoising error at t=0.05, whole-frame mean", _scoring("denoise", 0.05, 4, frame_score="mean")),
    ("denoising error at t=0.3 (4 draws)", _scoring("denoise", 0.3, 4)),
    ("denoising error at t=0.3 (4 draws) + temporal smoothing (sigma 2)", _DENOISE_SMOOTH),
)
_DENOISE_SMOOTH_LABEL = ("adiff, same model, denoising error at t=0.3 (4 draws) + temporal smoothing "
                         f"(sigma {SMOOTH_SIGMA:g})")


def with_smoothed(scores: dict, sigma: float = SMOOTH_SIGMA) -> dict:
    """Baseline scores dict name -> per-clip [T] arrays, plus each one temporally smoothed (the
    detector's Gaussian smoothing, `sigma` frames) as "<name> + temporal smoothing (sigma s)"."""
    out = dict(scores)
    for name, per_clip in scores.items():
        out[f"{name} + temporal smoothing (sigma {sigma:g})"] = [_smooth1d(np.asarray(s, np.float64), sigma)
                                                                 for s in per_clip]
    return out


def _norm_value(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _name(kw: dict) -> str:
    motion = {"diff": " + frame diff", "flow": " + optical flow", "none": ""}[kw.get("motion", "diff")]
    both = ", forward + backward" if kw.get("direction", "forward") == "both" else ""
    if kw.get("appearance"):
        fusion = kw.get("fusion", "alarm")
        both = (f", + appearance stream, fusion {fusion}"
                + (f" {kw.get('gate', 2.5):g}" if fusion in ("alarm", "gate", "gated_max") else ""))
    return (f"adiff VideoDetector (prediction{both}, K={kw.get('context_frames')}{motion}, "
            f"target {kw.get('target')}, {kw.get('parameterization')}, score {kw.get('score')} "
            f"t0={kw.get('t0')} steps={kw.get('solver_steps')} samples={kw.get('num_samples')}"
            + (f", temporal smoothing sigma {kw['smooth_sigma']:g}" if kw.get("smooth_sigma") else "") + ")")


def _scaled_steps(kw: dict, scale: float) -> dict:
    """kw with train_steps multiplied by `scale` (rounded; at least 1)."""
    if scale <= 0:
        raise ValueError(f"--train_steps_scale must be positive; got {scale}")
    return dict(kw, train_steps=max(1, int(round(kw["train_steps"] * scale))))


def _with_seed(cfg, seed):
    """The config with `seed` replaced (None keeps the config's)."""
    if seed is not None:
        cfg.seed = int(seed)
    return cfg


def _detector_kwargs(cfg, steps_scale: float, motion, quick: bool, direction=None) -> dict:
    """The config's VideoDetector kwargs with the run's overrides: scaled steps, --motion,
    --direction, and the tiny --quick network."""
    kw = _scaled_steps(dict(cfg.detector), steps_scale)
    if motion:
        kw["motion"] = motion
    if direction:
        kw["direction"] = direction
    if quick:
        kw.update(train_steps=20, base_channels=8, groups=4)
    return kw


def run_ped2(quick: bool, steps_scale: float = 1.0, size=None, seed=None, motion=None,
             direction=None) -> dict:
    cfg = _with_seed(video_ped2.get_config(), seed)
    if size:
        size = tuple(int(v) for v in size)
        if len(size) != 2 or min(size) < 8:
            raise ValueError(f"--ped2_size must be H,W with both >= 8; got {size}")
        cfg.size = size
    size = tuple(cfg.size)
    train, test = load_split(cfg, seed=cfg.seed, max_frames=24 if quick else None)
    kw = _detector_kwargs(cfg, steps_scale, motion, quick, direction)
    det = VideoDetector(seed=cfg.seed, **kw)
    t = time.time()
    det.fit(train.clips)
    fit_s = time.time() - t
    t = time.time()
    scores = det.decision_function(test.clips)
    score_s = time.time() - t
    res = {_name(kw): frame_metrics(test.labels, scores)}
    configured = {k: _norm_value(det.get_params()[k]) for k in _SCORE_KEYS}
    # Other scores of the same fitted model (issue 7 diagnostic rows).
    for label, extra in _PED2_VARIANTS:
        if {k: _norm_value(v) for k, v in extra.items()} == configured:
            continue  # the configured row
        det.set_params(**extra)
        res[f"adiff, same model, {label}"] = frame_metrics(test.labels, det.decision_function(test.clips))
    for name, s in with_smoothed(baselines(train.clips, test.clips)).items():
        res[name] = frame_metrics(test.labels, s)
    return {"results": res, "fit_seconds": fit_s, "score_seconds": score_s, "seed": cfg.seed, "size": list(size),
            "test_frames": test.num_frames, "train_frames": train.num_frames,
            "clips": test.names, "detector": kw}


# The same fit's other fusions of the appearance stream (rows of --appearance runs).
_FUSION_ROWS = (("motion", "motion stream alone (the forward detector)"),
                ("appearance", "appearance stream alone"), ("max", "ungated max of the streams"),
                ("gated_max", "gated max of the streams (the fusion first pre-registered in session 16)"),
                ("gate", "gate fusion (the session-16 amendment; fails on seed 6)"))


def _fusion_rows(det, clips) -> dict:
    """Scores of `clips` under each fusion of _FUSION_ROWS other than the configured one."""
    configured, rows = det.fusion, {}
    for fusion, label in _FUSION_ROWS:
        if fusion != configured:
            det.set_params(fusion=fusion)
            rows[f"adiff, same model, {label}"] = det.decision_function(clips)
    det.set_params(fusion=configured)
    return rows


def run_procedural(quick: bool, steps_scale: float = 1.0, seed=None, motion=None, variant=None,
                   direction=None, appearance=None) -> dict:
    cfg = _with_seed(video_procedural.get_config(), seed)
    if variant is not None:
        cfg.variant = variant
    n_train, n_test, n_frames = (4, 1, 16) if quick else (cfg.num_train, cfg.num_test, cfg.num_frames)
    train, test = load_split(cfg, seed=cfg.seed, counts=(n_train, n_test, n_frames))
    kw = _detector_kwargs(cfg, steps_scale, motion, quick, direction)
    if appearance is not None:
        kw["appearance"] = bool(appearance)
    methods = {}
    t = time.time()
    det = VideoDetector(seed=cfg.seed, **kw).fit(train.clips)
    fit_s = time.time() - t
    if det.appearance:  # the configured row inside the memo too: the other fusions reuse its streams
        with det.reuse_streams():
            methods[_name(kw)] = det.decision_function(test.clips)
            methods.update(_fusion_rows(det, test.clips))
        det.set_params(fusion="motion")
    else:
        methods[_name(kw)] = det.decision_function(test.clips)
    det.set_params(score="denoise", t0=0.05, num_samples=4)
    methods["adiff, same model, denoising error at t=0.05 (4 draws)"] = det.decision_function(test.clips)
    det.set_params(**_DENOISE_SMOOTH)
    methods[_DENOISE_SMOOTH_LABEL] = det.decision_function(test.clips)
    methods.update(with_smoothed(baselines(train.clips, test.clips)))
    res = {name: auroc_by_type(test, scores) for name, scores in methods.items()}
    return {"results": res, "fit_seconds": fit_s, "size": cfg.size, "seed": cfg.seed, "variant": cfg.variant,
            "num_train": n_train,
            "num_test_per_type": n_test, "num_frames": n_frames, "detector": kw}


def _seeds_text(ped2: dict | None, proc: dict | None) -> str:
    parts = [f"{k} seed {r.get('seed', 0)}" for k, r in (("Ped2", ped2), ("procedural", proc)) if r]
    return ", ".join(parts)


# The results file's generated part ends at this line; what follows it (the sessions' analyses) is
# kept when the benchmark rewrites the file.
KEEP_MARKER = "<!-- end of the generated tables; everything below is kept on a rerun -->"


def _write(out: pathlib.Path, ped2: dict | None, proc: dict | None, command: str, total_s: float) -> None:
    lines = ["# Video anomaly detection results", "",
             f"Command: `{command}` ({_seeds_text(ped2, proc)}; "
             f"{platform.processor() or platform.machine()}, "
             f"jax {jax.__version__}, CPU, 2 cores shared). Total {total_s / 60:.1f} min.", "",
             "Scores: raw frame scores are the headline (DESIGN.md video protocol); "
             "'clip-normalised' min-max normalises each test clip by its own scores (uses test-clip "
             "statistics). Baselines run in the same script on the same frames.", ""]
    if ped2 is not None:
        h, w = ped2["size"]
        lines += ["## UCSD Ped2 subset", "",
                  f"Data: ../shared/data/video/ucsd_ped2, train clips 01-04 ({ped2['train_frames']} frames), "
                  f"test clips 01-04 ({ped2['test_frames']} frames, labels from ped2.mat), grayscale "
                  f"resized to {h} x {w} px. adiff fit {ped2['fit_seconds']:.0f} s, scoring "
                  f"{ped2['score_seconds']:.0f} s. Detector: `{ped2['detector']}`.", "",
                  "| method | frame AUROC (raw) | clip-normalised | " +
                  " | ".join(f"clip {c}" for c in ped2["clips"]) + " |",
                  "|---|---:|---:|" + "---:|" * len(ped2["clips"])]
        for name, r in ped2["results"].items():
            lines.append(f"| {name} | {r['raw']:.3f} | {r['clip_normalised']:.3f} | " +
                         " | ".join(f"{v:.3f}" for v in r["per_clip"]) + " |")
        lines.append("")
    if proc is not None:
        lines += ["## Procedural motion set", "",
                  f"adiff.data.video.procedural_benchmark(seed={proc.get('seed', 0)}, "
                  f"variant={proc.get('variant', 'standard')!r}): {proc['num_train']} normal training clips, "
                  f"test {proc['num_test_per_type']} normal clips + {proc['num_test_per_type']} per anomaly type, "
                  f"{proc['num_frames']} frames of {proc['size']} x {proc['size']} px. AUROC per type over "
                  f"the frames of the normal test clips and that type's clips. adiff fit "
                  f"{proc['fit_seconds']:.0f} s. Detector: `{proc['detector']}`.", "",
                  "| method | " + " | ".join(video_data.ANOMALY_TYPES) + " | all |",
                  "|---|" + "---:|" * (len(video_data.ANOMALY_TYPES) + 1)]
        for name, r in proc["results"].items():
            lines.append(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in video_data.ANOMALY_TYPES)
                         + f" | {r['all']:.3f} |")
        lines.append("")
    lines.append(KEEP_MARKER)
    kept = ""
    if out.exists():  # hand-written sections below the marker survive a rerun
        prev = out.read_text()
        if KEEP_MARKER in prev:
            kept = prev.split(KEEP_MARKER, 1)[1].lstrip("\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n" + ("\n" + kept if kept else ""))


def main(argv):
    del argv
    t = time.time()
    command = "python -m experiments.benchmarks.video " + " ".join(sys.argv[1:])
    if _SKIP_PED2.value and _SKIP_PROC.value:
        raise app.UsageError("--skip_ped2 and --skip_procedural leave nothing to run")
    proc = ped2 = None
    if not _SKIP_PROC.value:
        proc = run_procedural(_QUICK.value, _STEPS_SCALE.value, _PROC_SEED.value, _MOTION.value,
                              _PROC_VARIANT.value, _DIRECTION.value, _APPEARANCE.value)
        print(json.dumps(proc["results"], indent=1), flush=True)
    if not _SKIP_PED2.value:
        ped2 = run_ped2(_QUICK.value, _STEPS_SCALE.value, _PED2_SIZE.value, _PED2_SEED.value, _MOTION.value,
                        _DIRECTION.value)
        print(json.dumps(ped2["results"], indent=1), flush=True)
    out = pathlib.Path(_OUT.value)
    _write(out, ped2, proc, command.strip(), time.time() - t)
    out.with_suffix(".json").write_text(json.dumps({"ped2": ped2, "procedural": proc}, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
