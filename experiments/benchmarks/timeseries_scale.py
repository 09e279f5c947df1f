r"""Scaling benchmark of TimeSeriesDetector: peak memory and time of scoring a long series.

  flock /tmp/adiff_heavy.lock timeout 900 python -m experiments.benchmarks.timeseries_scale \
      [--sizes=10000,100000,1000000] [--scorings=imputation,reconstruction] \
      [--out=report.json] [--doc=docs/results/timeseries.md]

A small TimeSeriesDetector (CONFIG below: window 32, TemporalNet width 16, 2 blocks, 4 DDIM
steps) is fitted once on a synthetic 4-channel series of 2,000 steps (seed 0) and saved. Then, for
each paradigm and each N, a fresh subprocess loads it, warms the scorer up on a 1,000-step series
(compilation), builds the test series X [N, 4] float32 (sines plus noise, 0.1% of the entries NaN,
seed 1), reads VmRSS, resets the peak-RSS counter (/proc/self/clear_refs) and scores X:
"imputation" through `decision_function`, "reconstruction" through
`paradigm_scores(X, "reconstruction")`, both from the same network. Reported: RSS before scoring
(X included), the peak increase during scoring (VmHWM minus that VmRSS) in MiB and in bytes per
step, and seconds. The [N] float64 scores returned are 8 bytes per step; X itself is 16.

With --doc the results replace (or append) the section "Scaling: scoring a long series" of that
markdown file, with the exact command.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

from experiments.benchmarks.timing import reset_peak_rss, status_kib

REPO = pathlib.Path(__file__).resolve().parents[2]
COMMAND = "flock /tmp/adiff_heavy.lock timeout 900 python -m experiments.benchmarks.timeseries_scale"
CHANNELS = 4
TRAIN_STEPS_SERIES = 2000
SECTION = "## Scaling: scoring a long series"
CONFIG = dict(scoring="imputation", window=32, score_stride=16, channels=16, num_blocks=2,
              dilations=(1, 2), num_heads=2, time_dim=16, train_steps=200, batch_size=32,
              solver_steps=4, num_levels=2, num_grid_masks=2, num_random_masks=1, t0=(0.3,),
              uncond_prob=0.3, score_batch_size=128, seed=0)


def _series(n: int, seed: int, nan_frac: float = 0.0):
    import numpy as np  # pylint: disable=import-outside-toplevel
    rng = np.random.RandomState(seed)
    x = np.empty((n, CHANNELS), np.float32)
    step = 1 << 16  # built in pieces so the float64 temporaries stay small
    for a in range(0, n, step):
        t = np.arange(a, min(n, a + step))[:, None]
        x[a:a + len(t)] = (np.sin(2 * np.pi * t / 50 + 0.7 * np.arange(CHANNELS)[None, :])
                           + 0.1 * rng.randn(len(t), CHANNELS))
    if nan_frac > 0:
        x.reshape(-1)[rng.rand(x.size) < nan_frac] = np.nan
    return x


_status_kib, _reset_peak = status_kib, reset_peak_rss  # shared with the other benchmarks


def _fit_and_save(path: str) -> dict:
    from adiff.detectors.timeseries import TimeSeriesDetector  # pylint: disable=import-outside-toplevel
    t0 = time.perf_counter()
    TimeSeriesDetector(**CONFIG).fit(_series(TRAIN_STEPS_SERIES, 0)).save(path)
    return {"saved": path, "fit_seconds": time.perf_counter() - t0}


def _worker_rss(path: str, n: int, scoring: str) -> dict:
    import numpy as np  # pylint: disable=import-outside-toplevel
    from adiff.detectors.base import load  # pylint: disable=import-outside-toplevel
    det = load(path)
    score = (det.decision_function if scoring == det.scoring
             else lambda x: det.paradigm_scores(x, scoring))
    score(_series(1000, 2, 0.001))  # compile
    X = _series(n, 1, 0.001)
    base = _status_kib("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    s = score(X)
    dt = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    assert s.shape == (n,) and np.isfinite(s).all(), (s.shape, np.isfinite(s).mean())
    return {"scoring": scoring, "n": n, "rss_before_mib": base / 1024, "peak_mib": peak / 1024,
            "increase_mib": (peak - base) / 1024, "increase_bytes_per_step": (peak - base) * 1024 / n,
            "peak_counter_reset": reset, "seconds": dt, "steps_per_s": n / dt,
            "score_mean": float(np.mean(s))}


def _subprocess(args) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    res = subprocess.run([sys.executable, "-m", "experiments.benchmarks.timeseries_scale", *args],
                         cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    """The results section (markdown) for docs/results/timeseries.md."""
    cfg = ", ".join(f"{k}={v!r}" for k, v in report["detector"].items())
    lines = [
        SECTION, "",
        "Produced by `experiments/benchmarks/timeseries_scale.py` (issue 5: score a 1,000,000-step "
        "series in bounded memory); every figure below comes from one run of:", "",
        f"    {report['command']}", "",
        f"Machine: {report['machine']}, CPU only, shared with other jobs (times are indicative). "
        f"Detector: `TimeSeriesDetector({cfg})`, fitted on a synthetic {CHANNELS}-channel series of "
        f"{TRAIN_STEPS_SERIES} steps (seed 0, fit {report['fit_seconds']:.1f} s) and saved; each row "
        "is a fresh subprocess that loads it, compiles the scorer on a 1,000-step series, builds X "
        f"[N, {CHANNELS}] float32 (sines + noise, 0.1% of entries NaN, seed 1), resets the peak-RSS "
        "counter (/proc/self/clear_refs) and scores X. Peak increase = VmHWM during scoring minus "
        "VmRSS before it (X already allocated). For scale: X is 16 bytes per step, the returned "
        "float64 scores 8.", "",
        "| paradigm | N (steps) | RSS before (MiB) | peak increase (MiB) | bytes / step | "
        "seconds | steps / s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["memory"]:
        lines.append(f"| {r['scoring']} | {r['n']:,} | {r['rss_before_mib']:.0f} | "
                     f"{r['increase_mib']:.1f} | {r['increase_bytes_per_step']:.1f} | "
                     f"{r['seconds']:.1f} | {r['steps_per_s']:,.0f} |")
    if report.get("notes"):
        lines += ["", report["notes"]]
    return "\n".join(lines) + "\n"


def write_section(doc: pathlib.Path, section: str) -> None:
    """Replaces the SECTION of `doc` (up to the next '## ' heading) with `section`, or appends it."""
    text = doc.read_text() if doc.exists() else ""
    pattern = re.compile(re.escape(SECTION) + r".*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--scorings", default="imputation,reconstruction")
    parser.add_argument("--out", default="", help="also write the report as JSON here")
    parser.add_argument("--doc", default=str(REPO / "docs" / "results" / "timeseries.md"),
                        help="markdown file whose scaling section is written ('' = none)")
    parser.add_argument("--notes", default="", help="a paragraph appended under the table")
    parser.add_argument("--worker", choices=["rss", "fit"], default=None)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--scoring", default="imputation")
    parser.add_argument("--path", default="")
    args = parser.parse_args(argv)

    if args.worker is not None:
        from absl import flags  # pylint: disable=import-outside-toplevel
        flags.FLAGS.mark_as_parsed()
        result = (_fit_and_save(args.path) if args.worker == "fit"
                  else _worker_rss(args.path, args.n, args.scoring))
        print(json.dumps(result), flush=True)
        return

    cli = sys.argv[1:] if argv is None else list(argv)
    report = {"command": " ".join([COMMAND] + [a for a in cli if not a.startswith("--notes")]),
              "load_average_at_start": list(os.getloadavg()),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "detector": CONFIG, "channels": CHANNELS, "memory": [], "notes": args.notes}
    sizes = [int(float(v)) for v in args.sizes.split(",") if v]
    scorings = [v for v in args.scorings.split(",") if v]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "det")
        report["fit_seconds"] = _subprocess(["--worker=fit", f"--path={path}"])["fit_seconds"]
        for scoring in scorings:
            for n in sizes:
                r = _subprocess(["--worker=rss", f"--path={path}", f"--n={n}", f"--scoring={scoring}"])
                print(json.dumps(r), flush=True)
                report["memory"].append(r)
    report["load_average_at_end"] = list(os.getloadavg())
    section = markdown(report)
    print(section)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    if args.doc:
        write_section(pathlib.Path(args.doc), section)
        print(f"wrote the section {SECTION!r} of {args.doc}")


if __name__ == "__main__":
    main()
