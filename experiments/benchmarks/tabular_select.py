r"""Label-free choice of the tabular paradigm per set (issue 4 probe; not in the library).

The all-paradigm table shows dte_np and score_norm winning on different sets (a per-set oracle
over the two is ~0.01 above dte_np), so this probe tests the obvious label-free way to choose:
validate both on the training part against synthetic anomalies.

Per split (the random protocol of tabular.py): the training part is split 80 / 20 (seeded,
independent of the split itself); score_norm (a TabularDetector with its defaults) and dte_np are
fitted on the 80%. Synthetic anomalies are made from the 20% held-out normal rows, in the raw
feature space (the detectors standardise internally), at least 200 of each kind:

- "swap": a held-out row whose features are each, with probability 1/2, replaced by those of
  another random held-out row (keeps every marginal, breaks the dependencies between features);
- "noise0.25" and "noise1": a held-out row plus N(0, (s sd_j)^2) on feature j, sd_j the standard
  deviation of the 80% part, s = 0.25 and 1.

Proxy of a candidate = the mean over the three kinds of AUROC(held-out rows vs that kind). The
selector picks score_norm iff its proxy exceeds dte_np's by more than 0.01, else dte_np. Test
scores: dte_np fitted on the whole training part (the library default); score_norm = the network
fitted on the 80%. The rule was written before the first run (docs/results/tabular.md, "Session 10").

  python -m experiments.benchmarks.tabular_select --seeds=0 \\
      --select_out=docs/results/tabular/runs/select_seed0.json
"""
from __future__ import annotations

import json
import pathlib
import time

import numpy as np
from absl import app, flags

from adiff import metrics
from adiff.data.tabular import load_adbench_npz
from experiments.benchmarks.tabular import _DATA, _DATASETS, _SEEDS, REPO, _datasets, split

# --data_dir, --datasets and --seeds are tabular.py's flags (importing it defines them).
_OUT = flags.DEFINE_string("select_out", str(REPO / "docs" / "results" / "tabular" / "runs" / "select.json"),
                           "JSON output (per set and seed: proxies, test AUROCs, seconds); kept "
                           "across runs, so an interrupted run resumes.")

CANDIDATES = ("score_norm", "dte_np")
KINDS = ("swap", "noise0.25", "noise1")
MARGIN = 0.01  # score_norm must beat dte_np's proxy by more than this to be chosen
_BIG = 40000  # the 27 sets of the DTE-NP reference have at most this many rows


def synthetic_anomalies(held: np.ndarray, sd: np.ndarray, rng: np.random.RandomState,
                        min_count: int = 200) -> dict:
    """The probe's synthetic anomalies (see the module docstring) from held-out normal rows."""
    n = max(len(held), min_count)
    base = held[rng.randint(len(held), size=n)]
    other = held[rng.randint(len(held), size=n)]
    swap = np.where(rng.rand(*base.shape) < 0.5, other, base)
    return {"swap": swap,
            "noise0.25": base + rng.randn(*base.shape) * 0.25 * sd,
            "noise1": base + rng.randn(*base.shape) * sd}


def pick(proxy: dict, margin: float = MARGIN) -> str:
    """The selector's choice from {candidate: {kind: AUROC}}."""
    mean = {c: float(np.mean([proxy[c][k] for k in KINDS])) for c in CANDIDATES}
    return "score_norm" if mean["score_norm"] > mean["dte_np"] + margin else "dte_np"


def run_split(x: np.ndarray, y: np.ndarray, seed: int) -> dict:
    import adiff  # pylint: disable=import-outside-toplevel
    t0 = time.perf_counter()
    x_tr, x_te, y_te = split("random", x, y, seed=seed)
    rng = np.random.RandomState(10_000 + seed)
    perm = rng.permutation(len(x_tr))
    n_fit = int(round(0.8 * len(x_tr)))
    fit, held = x_tr[perm[:n_fit]], x_tr[perm[n_fit:]]
    sd = fit.std(0)
    sd[sd == 0] = 1.0
    syn = synthetic_anomalies(held, sd, rng)
    dets = {"score_norm": adiff.TabularDetector(scoring="score_norm", seed=seed).fit(fit),
            "dte_np": adiff.TabularDetector(scoring="dte_np", seed=seed).fit(fit)}
    proxy = {}
    for cand, det in dets.items():
        s_held = det.decision_function(held)
        proxy[cand] = {k: metrics.auroc(np.r_[np.zeros(len(held)), np.ones(len(v))],
                                        np.r_[s_held, det.decision_function(v)]) for k, v in syn.items()}
    full = adiff.TabularDetector(scoring="dte_np", seed=seed).fit(x_tr)
    test = {"dte_np": metrics.auroc(y_te, full.decision_function(x_te)),
            "score_norm": metrics.auroc(y_te, dets["score_norm"].decision_function(x_te))}
    return {"proxy": proxy, "test": test, "pick": pick(proxy), "seconds": time.perf_counter() - t0}


def summarise(res: dict) -> str:
    """Markdown: per seed, the selector's mean AUROC against dte_np, score_norm and the oracle."""
    lines = ["| seed | sets | score_norm picked | test prefers score_norm | selector | dte_np | "
             "score_norm (80% network) | per-set oracle |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for seed in sorted({k.rsplit("/", 1)[1] for k in res}, key=int):
        rows = [v for k, v in res.items() if k.rsplit("/", 1)[1] == seed]
        t = lambda f: np.mean([f(v) for v in rows])
        lines.append(
            f"| {seed} | {len(rows)} | {sum(v['pick'] == 'score_norm' for v in rows)} | "
            f"{sum(v['test']['score_norm'] > v['test']['dte_np'] for v in rows)} | "
            f"{t(lambda v: v['test'][v['pick']]):.4f} | {t(lambda v: v['test']['dte_np']):.4f} | "
            f"{t(lambda v: v['test']['score_norm']):.4f} | {t(lambda v: max(v['test'].values())):.4f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    out = pathlib.Path(_OUT.value)
    res = json.loads(out.read_text()) if out.exists() else {}
    for path in _datasets(pathlib.Path(_DATA.value), _DATASETS.value):
        x, y = load_adbench_npz(path)
        if len(x) > _BIG:
            continue
        for seed in (int(s) for s in _SEEDS.value):
            key = f"{path.parent.name}/{seed}"
            if key in res:
                continue
            res[key] = run_split(x, y, seed)
            r = res[key]
            print(key, "pick", r["pick"], "test", {c: round(a, 3) for c, a in r["test"].items()},
                  f"({r['seconds']:.1f} s)", flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(res, indent=1))
    print(summarise(res))


if __name__ == "__main__":
    app.run(main)
