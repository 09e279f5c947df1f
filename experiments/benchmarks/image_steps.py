r"""Few-step solvers against the full reverse SDE, Magnetic tile (issue 6's solver target).

  flock /tmp/adiff_heavy.lock python -m experiments.benchmarks.image_steps [--seeds=0,1,2] [--quick]

The image benchmark (experiments/benchmarks/image.py) compares the solvers on 64 test images per
seed, where one image moves the image AUROC by ~0.03. This script measures the same comparison on
a larger balanced subset (--subset, default 256: half MT_Free, half defective, drawn with the seed)
and reports each few-step solver's AUROC as a fraction of the reference's, per seed and in the
mean. Everything else is the image benchmark's: the Magnetic-tile split of the config, its
ImageDetector (configs/image_magnetic_tile.py `detector`, --train_steps), reconstruction from
t0 = 0.25 with one noise draw, batch 32, and the same map head; throughput excludes the first
(compiling) batch. Writes --out (markdown) and the raw numbers beside it (.json).
"""
from __future__ import annotations

import json
import pathlib
import platform
import sys
import time

from absl import app, flags

import numpy as np

from adiff.detectors.image import ImageDetector
from experiments.benchmarks import image as image_bench
from experiments.configs import image_magnetic_tile

REPO = pathlib.Path(__file__).resolve().parents[2]
REFERENCE = "reverse SDE"
METRICS = ("image_auroc", "pixel_auroc", "aupro")
T0 = (0.25,)

_SEEDS = _SUBSET = _SDE_STEPS = _TRAIN_STEPS = _OUT = _QUICK = None


def define_flags() -> None:
    """Defines the script's flags (only when run as a script)."""
    # pylint: disable-next=global-statement
    global _SEEDS, _SUBSET, _SDE_STEPS, _TRAIN_STEPS, _OUT, _QUICK
    _SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the split and the training.")
    _SUBSET = flags.DEFINE_integer("subset", 256, "Balanced test subset size.")
    _SDE_STEPS = flags.DEFINE_integer("sde_steps", 1000, "Steps of the reference reverse SDE.")
    _TRAIN_STEPS = flags.DEFINE_integer("train_steps", 1500, "Training steps of the pixel model.")
    _OUT = flags.DEFINE_string("out", str(REPO / "docs" / "results" / "image_steps.md"), "Results file.")
    _QUICK = flags.DEFINE_bool("quick", False, "Tiny settings (smoke test of the script).")


def solver_rows(sde_steps: int) -> list:
    """(name, ImageDetector scoring options) of the compared solvers; the reference first."""
    return [(f"{REFERENCE}, {sde_steps} steps", dict(solver="reverse_diffusion", solver_steps=sde_steps)),
            ("DDIM, 10 steps, eta = 0", dict(solver="ddim", solver_steps=10, eta=0.0)),
            ("DDIM, 10 steps, eta = 1", dict(solver="ddim", solver_steps=10, eta=1.0)),
            ("DPM-Solver++(2M), 10 steps", dict(solver="dpm_solver_pp", solver_steps=10))]


def balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of n test images, half normal (label 0) and half anomalous, drawn with seed."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    neg, pos = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    half = n // 2
    if half > len(neg) or n - half > len(pos):
        raise ValueError(f"subset {n} needs {half} normal and {n - half} anomalous images; the test "
                         f"split has {len(neg)} and {len(pos)}")
    return np.sort(np.concatenate([rng.choice(neg, half, replace=False),
                                   rng.choice(pos, n - half, replace=False)]))


def ratios(runs: list) -> dict:
    """Per solver row: each metric (and images/s) divided by the reference row's, per seed, and
    the seed mean of those ratios. `runs` is a list of {row name: {metric: value}} (one per seed)
    whose first row is the reference."""
    out = {}
    for name in runs[0]:
        per = {m: [r[name][m] / r[next(iter(r))][m] for r in runs] for m in METRICS + ("images_per_s",)}
        out[name] = {m: {"per_seed": v, "mean": float(np.mean(v))} for m, v in per.items()}
    return out


def run_seed(cfg, seed: int, *, subset: int, sde_steps: int, train_steps: int) -> dict:
    split = image_bench.load_split(cfg, seed=seed)
    sub = split.test.subset(balanced_subset(split.test.labels, subset, seed))
    base = dict(cfg.detector)
    base.update(seed=seed, train_steps=train_steps)
    t = time.perf_counter()
    det = ImageDetector(**base).fit(split.train)
    image_bench.log(f"seed {seed}: trained {time.perf_counter() - t:.0f}s; subset {len(sub)}")
    rows = {}
    for name, kw in solver_rows(sde_steps):
        det.set_params(**{**image_bench._score_defaults(base), "t0": T0, "score_batch_size": 32, **kw})
        res, ips, total = image_bench.timed_analyze(det, sub.images)
        rows[name] = {**image_bench.evaluate(sub, res.scores, res.maps), "images_per_s": ips,
                      "seconds": total}
        image_bench.log(name, rows[name])
    return rows


def write(path: pathlib.Path, res: dict) -> None:
    runs, seeds = res["runs"], res["seeds"]
    rat = ratios(runs)
    L = ["# Few-step solvers vs the full reverse SDE (Magnetic tile)", "",
         f"Command: `{res['command']}` ({res['machine']}; {res['wall_minutes']:.1f} min).", "",
         (__doc__ or "").split("\n\n", 2)[2].strip(), "",
         f"Seeds {seeds}; subset {res['subset']} test images per seed; pixel model trained "
         f"{res['train_steps']} steps at {res['size']} px.", "",
         "| solver | image AUROC | pixel AUROC | AUPRO | images/s |", "|---|---:|---:|---:|---:|"]
    for name in runs[0]:
        cell = lambda m: image_bench.mean_sd([r[name][m] for r in runs])
        L.append(f"| {name} | {cell('image_auroc')} | {cell('pixel_auroc')} | {cell('aupro')} | "
                 f"{cell('images_per_s')} |")
    L += ["", "As a fraction of the reference (per seed; mean):", "",
          "| solver | image AUROC | pixel AUROC | AUPRO | throughput |", "|---|---|---|---|---|"]
    def ratio_cell(r, per_seed_fmt, mean_fmt):  # "a / b / c; mean"
        return " / ".join(format(v, per_seed_fmt) for v in r["per_seed"]) + "; " + format(r["mean"], mean_fmt)

    for name in list(runs[0])[1:]:
        cells = [ratio_cell(rat[name][m], ".0%", ".1%") for m in METRICS]
        speed = " / ".join(f"{v:.0f}x" for v in rat[name]["images_per_s"]["per_seed"])
        speed += f"; {rat[name]['images_per_s']['mean']:.0f}x"
        L.append(f"| {name} | " + " | ".join(cells) + f" | {speed} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n")
    path.with_suffix(".json").write_text(json.dumps({**res, "ratios": rat}, indent=1))


def main(argv):
    del argv
    t0 = time.time()
    cfg = image_magnetic_tile.get_config()
    quick = _QUICK.value
    subset, sde_steps, train_steps = (16, 20, 5) if quick else (_SUBSET.value, _SDE_STEPS.value,
                                                                _TRAIN_STEPS.value)
    if quick:
        cfg.detector.base_channels, cfg.detector.channel_mults = 8, (1, 2)
    seeds = [int(s) for s in _SEEDS.value]
    runs = [run_seed(cfg, s, subset=subset, sde_steps=sde_steps, train_steps=train_steps) for s in seeds]
    res = {"command": "python -m experiments.benchmarks.image_steps " + " ".join(sys.argv[1:]),
           "machine": f"{platform.machine()}, {platform.system()}, CPU", "seeds": seeds,
           "subset": subset, "size": cfg.size, "train_steps": train_steps, "t0": list(T0),
           "runs": runs, "wall_minutes": (time.time() - t0) / 60}
    write(pathlib.Path(_OUT.value), res)
    image_bench.log(f"wrote {_OUT.value}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
