r"""A real mixed-type table (categorical, boolean, numeric, missing values): adiff vs PyOD pipelines.

Data: ADBench `campaign` (UCI Bank Marketing, 41,188 rows, 62 columns, 11.3% anomalies = clients who
subscribed). ADBench stores it numeric: min-max scaled numerics and one-hot categoricals. We decode
it back into a mixed pandas table (`decode_campaign`): runs of consecutive 0/1 columns whose row sum
is exactly 1 on every row are one categorical column (the level is the position of the 1); a 0/1
column in no such run is a boolean; the rest stay numeric. This finds 9 categorical columns and 1
boolean, named after the UCI column order (level counts match): job 12, marital 4, education 8,
default 3, housing 3, loan 3, month 10, day_of_week 5, poutcome 3; boolean contact; numeric age,
duration, campaign, pdays, previous, emp_var_rate, cons_price_idx, cons_conf_idx, euribor3m,
nr_employed (levels are named <column>_<position>; ADBench keeps no level names).

Protocol (DESIGN.md semi-supervised split, `semisupervised_split`): per seed, half of the normal rows
train, the other half plus all anomalies test; capped here at --max_train / --max_test rows
(stratified) so a run fits in minutes. Missing values: MCAR over every cell of the 20-column mixed
table (a categorical or boolean cell is missing as a whole) at rate p, drawn once per seed on the
full table, so train and test share one mask mechanism.

(a) AUROC/AUPRC as p grows, adiff (TabularDetector on the DataFrame: NaN -> masks; "density_np",
    the default, and "dte_np" with each `missing_distance`: expected (default), zero, shared) against PyOD
    KNN (k=5, largest) / IForest / ECOD fed with the usual pipeline: mean (numeric) / mode
    (categorical, boolean) imputation fitted on train, one-hot categoricals, StandardScaler.
(b) Joint anomalies, each part normal alone: normal test rows whose `month` is swapped for a level
    (seen in >= 1% of training rows) that never co-occurs with the row's `cons_price_idx` in the
    training data (the macro-economic columns are monthly values, so month and cons_price_idx
    determine each other), and normal test rows whose `poutcome` is swapped to a level that
    never co-occurs with its `previous` count (poutcome is "nonexistent" iff previous = 0). Test set:
    the normal test rows plus 10% as many swapped rows (distinct rows); AUROC/AUPRC. Run at p = 0
    and p = 0.2 (then the test table gets its own MCAR mask after the swap, which can hide one
    of the two contradicting cells).
(c) Unsupervised: fit on a stratified sample of the whole contaminated table (anomalies included)
    and score the same rows (`decision_scores_`, leave-one-out for k-NN); adiff robust=False/True
    (robust_fraction = the true anomaly share), density_np and dte_np, against the same baselines.

  flock /tmp/adiff_heavy.lock timeout 900 python -m experiments.benchmarks.tabular_mixed \
      --seeds=0,1,2 --out=docs/results/tabular_mixed.md
"""
from __future__ import annotations

import functools
import json
import pathlib
import time

import numpy as np
import pandas as pd
from absl import app, flags

from adiff import metrics
from adiff.data.tabular import load_adbench_npz, semisupervised_split

REPO = pathlib.Path(__file__).resolve().parents[2]

_DATA = flags.DEFINE_string("data", str(REPO.parent / "shared" / "data" / "tabular" / "campaign" / "5_campaign.npz"),
                            "ADBench campaign .npz file.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (split, missingness mask, swaps).")
_RATES = flags.DEFINE_list("rates", ["0", "0.1", "0.2", "0.3"], "MCAR missingness rates for (a).")
_MAX_TRAIN = flags.DEFINE_integer("max_train", 6000, "Training rows cap (semi-supervised split).")
_MAX_TEST = flags.DEFINE_integer("max_test", 6000, "Test rows cap (stratified).")
_UNSUP_ROWS = flags.DEFINE_integer("unsup_rows", 6000, "Rows of the contaminated sample in (c).")
_NET = flags.DEFINE_string("net", "reconstruction", "Network paradigm run with mask_rate > 0 ('' skips).")
_NET_STEPS = flags.DEFINE_integer("net_steps", 1000, "Training steps of the network paradigm.")
_MASK_RATE = flags.DEFINE_float("mask_rate", 0.2, "mask_rate of the network paradigm.")
_VARIANTS = flags.DEFINE_list("missing_variants", ["zero", "shared"],
                              "Extra adiff:dte_np rows with these missing_distance values.")
_OUT = flags.DEFINE_string("out", str(REPO / "docs" / "results" / "tabular_mixed.md"), "Markdown output.")

CATEGORICAL_NAMES = ["job", "marital", "education", "default", "housing", "loan", "month", "day_of_week",
                     "poutcome"]
BOOLEAN_NAMES = ["contact"]
NUMERIC_NAMES = ["age", "duration", "campaign", "pdays", "previous", "emp_var_rate", "cons_price_idx",
                 "cons_conf_idx", "euribor3m", "nr_employed"]


def one_hot_groups(X: np.ndarray):
    """Runs [start, stop] of consecutive 0/1 columns whose row sums are exactly 1 (singletons too)."""
    binary = [set(np.unique(X[:, j])) <= {0.0, 1.0} for j in range(X.shape[1])]
    groups, j = [], 0
    while j < X.shape[1]:
        if not binary[j]:
            j += 1
            continue
        total, end, found = X[:, j].copy(), j, None
        while end + 1 < X.shape[1] and binary[end + 1]:
            end += 1
            total += X[:, end]
            if total.max() > 1:
                break
            if np.all(total == 1):
                found = end
                break
        groups.append((j, j if found is None else found))
        j = j + 1 if found is None else found + 1
    return groups


def decode_campaign(X: np.ndarray) -> pd.DataFrame:
    """ADBench campaign (numeric, one-hot) -> mixed DataFrame (see the module docstring)."""
    groups = one_hot_groups(X)
    cats = [g for g in groups if g[1] > g[0]]
    bools = [g[0] for g in groups if g[1] == g[0]]
    in_group = {j for a, b in groups for j in range(a, b + 1)}
    nums = [j for j in range(X.shape[1]) if j not in in_group]
    if (len(cats), len(bools), len(nums)) != (len(CATEGORICAL_NAMES), len(BOOLEAN_NAMES), len(NUMERIC_NAMES)):
        raise ValueError(f"unexpected layout: {len(cats)} categorical groups, {len(bools)} booleans, "
                         f"{len(nums)} numeric columns")
    cols = {}
    for name, j in zip(NUMERIC_NAMES, nums):
        cols[(j, name)] = X[:, j].astype(np.float64)
    for name, (a, b) in zip(CATEGORICAL_NAMES, cats):
        level = np.argmax(X[:, a:b + 1], axis=1)
        cols[(a, name)] = np.array([f"{name}_{i}" for i in range(b - a + 1)], dtype=object)[level]
    for name, j in zip(BOOLEAN_NAMES, bools):
        cols[(j, name)] = X[:, j] > 0.5
    return pd.DataFrame({name: v for (_, name), v in sorted(cols.items())})


def with_missing(df: pd.DataFrame, rate: float, rng: np.random.RandomState) -> pd.DataFrame:
    """MCAR: every cell missing with probability `rate` (booleans become a nullable 'boolean')."""
    if rate <= 0:
        return df
    out = df.copy()
    hide = rng.rand(*df.shape) < rate
    for j, c in enumerate(df.columns):
        if df[c].dtype == bool:
            out[c] = out[c].astype("boolean")
            out.loc[hide[:, j], c] = pd.NA
        elif df[c].dtype == object:
            out.loc[hide[:, j], c] = None
        else:
            out.loc[hide[:, j], c] = np.nan
    return out


class ImputeOneHot:
    """The usual baseline pipeline: mean/mode imputation (fit on train), one-hot, StandardScaler."""

    def fit(self, df: pd.DataFrame) -> "ImputeOneHot":
        from sklearn.preprocessing import OneHotEncoder
        self.num = [c for c in df.columns if df[c].dtype.kind == "f"]
        self.cat = [c for c in df.columns if c not in self.num]
        self.mean = df[self.num].mean()
        self.mode = {c: df[c].dropna().astype(str).mode().iloc[0] for c in self.cat}
        self.onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(self._cats(df))
        num = self._nums(df)
        self.mu, self.sd = num.mean(0), num.std(0)
        self.sd[self.sd == 0] = 1.0
        return self

    def _nums(self, df):
        return df[self.num].fillna(self.mean).to_numpy(np.float64)

    def _cats(self, df):
        return pd.DataFrame({c: df[c].astype(object).where(df[c].notna(), self.mode[c]).astype(str)
                             for c in self.cat})

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        return np.concatenate([(self._nums(df) - self.mu) / self.sd, self.onehot.transform(self._cats(df))], 1)


# The network-free paradigms, each run by name: "density_np" (the library default since session 19)
# and "dte_np" (the default before; the missing_distance variants are its).
_KNN_SCORINGS = ("density_np", "dte_np")


def _baselines(seed: int):
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    return {"KNN": lambda: KNN(n_neighbors=5, method="largest"), "IForest": lambda: IForest(random_state=seed),
            "ECOD": lambda: ECOD()}


def _adiff_methods(seed: int, contamination: float):
    import adiff
    methods = {name: functools.partial(adiff.TabularDetector, scoring=name, seed=seed,
                                       contamination=contamination) for name in _KNN_SCORINGS}
    methods = {f"adiff:{k}": v for k, v in methods.items()}
    for kind in _VARIANTS.value:  # the other k-NN distances with missing entries, for comparison
        methods[f"adiff:dte_np(missing_distance={kind})"] = functools.partial(
            adiff.TabularDetector, scoring="dte_np", seed=seed, contamination=contamination,
            missing_distance=kind)
    if _NET.value:
        methods[f"adiff:{_NET.value}(mask_rate={_MASK_RATE.value:g})"] = lambda: adiff.TabularDetector(
            scoring=_NET.value, seed=seed, contamination=contamination, mask_rate=_MASK_RATE.value,
            train_steps=_NET_STEPS.value)
    return methods


def _score(y, s, seconds):
    return dict(auroc=metrics.auroc(y, s), auprc=metrics.auprc(y, s), seconds=seconds)


def evaluate(train: pd.DataFrame, test: pd.DataFrame, y: np.ndarray, seed: int, *, net: bool = True):
    """Every method fitted on `train`, scored on `test` (labels y)."""
    rows = {}
    for name, make in _adiff_methods(seed, 0.1).items():
        if not net and not name.startswith(tuple(f"adiff:{k}" for k in _KNN_SCORINGS)):
            continue
        t = time.perf_counter()
        s = make().fit(train).decision_function(test)
        rows[name] = _score(y, s, time.perf_counter() - t)
    t0 = time.perf_counter()
    pipe = ImputeOneHot().fit(train)
    a, b = pipe.transform(train), pipe.transform(test)
    prep = time.perf_counter() - t0
    for name, make in _baselines(seed).items():
        t = time.perf_counter()
        s = make().fit(a).decision_function(b)
        rows[name] = _score(y, s, time.perf_counter() - t + prep)
    return rows


def joint_anomalies(train: pd.DataFrame, normal_test: pd.DataFrame, rng: np.random.RandomState):
    """Swapped copies of normal test rows (month vs cons_price_idx, poutcome vs previous)."""
    n_swap = max(10, len(normal_test) // 10)
    idx = rng.permutation(len(normal_test))
    base, swapped_src = normal_test.iloc[idx[n_swap:]], normal_test.iloc[idx[:n_swap]].copy()
    out = []
    for part, (cat, num) in enumerate((("month", "cons_price_idx"), ("poutcome", "previous"))):
        rows = swapped_src.iloc[part::2].copy()
        freq = train[cat].value_counts(normalize=True)
        common = [lv for lv, f in freq.items() if f >= 0.01]
        seen = set(zip(train[cat].astype(str), train[num].round(6)))
        keep = []
        for i in range(len(rows)):
            cur, val = rows[cat].iloc[i], round(float(rows[num].iloc[i]), 6)
            options = [lv for lv in common if lv != cur and (lv, val) not in seen]
            if options:
                rows.iloc[i, rows.columns.get_loc(cat)] = options[rng.randint(len(options))]
                keep.append(i)
        out.append(rows.iloc[keep])
    anomalies = pd.concat(out)
    test = pd.concat([base, anomalies], ignore_index=True)
    y = np.r_[np.zeros(len(base)), np.ones(len(anomalies))]
    return test, y, {"month": len(out[0]), "poutcome": len(out[1])}


def unsupervised(df: pd.DataFrame, y: np.ndarray, seed: int):
    import adiff
    from sklearn.model_selection import train_test_split
    idx, _ = train_test_split(np.arange(len(y)), train_size=_UNSUP_ROWS.value, stratify=y, random_state=seed)
    data, lab = df.iloc[idx].reset_index(drop=True), y[idx]
    share = float(lab.mean())
    rows = {}
    for name in _KNN_SCORINGS:
        for robust in (False, True):
            t = time.perf_counter()
            det = adiff.TabularDetector(scoring=name, seed=seed, contamination=share, robust=robust).fit(data)
            rows[f"adiff:{name} robust={robust}"] = _score(lab, det.decision_scores_, time.perf_counter() - t)
    pipe = ImputeOneHot().fit(data)
    a = pipe.transform(data)
    for name, make in _baselines(seed).items():
        t = time.perf_counter()
        rows[name] = _score(lab, make().fit(a).decision_scores_, time.perf_counter() - t)
    return rows


def _mean_table(results, key, metric):
    """{method: mean over seeds} for results[key][seed][method][metric]."""
    per = {}
    for seed_rows in results[key].values():
        for m, r in seed_rows.items():
            per.setdefault(m, []).append(r[metric])
    return {m: (float(np.mean(v)), float(np.std(v))) for m, v in per.items()}


def main(argv):
    del argv
    seeds = [int(s) for s in _SEEDS.value]
    rates = [float(r) for r in _RATES.value]
    X, y = load_adbench_npz(_DATA.value)
    df = decode_campaign(X)
    t_start = time.perf_counter()
    res = {"a": {}, "b": {}, "c": {}}
    swaps = {}
    for seed in seeds:
        tr_idx, te_idx, y_te = semisupervised_split(np.arange(len(y))[:, None], y, seed=seed,
                                                    max_train=_MAX_TRAIN.value, max_test=_MAX_TEST.value)
        tr_idx, te_idx = tr_idx[:, 0], te_idx[:, 0]
        for rate in rates:
            full = with_missing(df, rate, np.random.RandomState(1000 * seed + int(round(100 * rate))))
            rows = evaluate(full.iloc[tr_idx], full.iloc[te_idx], y_te, seed)
            res["a"].setdefault(f"{rate:g}", {})[seed] = rows
            print(f"(a) seed {seed} p={rate:g}", {m: round(r["auroc"], 3) for m, r in rows.items()}, flush=True)
        for rate in (0.0, 0.2):
            full = with_missing(df, rate, np.random.RandomState(1000 * seed + int(round(100 * rate))))
            train = full.iloc[tr_idx]
            normal_test = full.iloc[te_idx[y_te == 0]]
            # The swaps are decided on complete values (the contradiction must exist); then the
            # test table gets its own MCAR mask at the same rate, which may hide one of the two
            # contradicting cells (at p = 0.2, for about 1 - 0.8^2 = 36% of the swapped rows).
            test, yj, counts = joint_anomalies(df.iloc[tr_idx], df.iloc[te_idx[y_te == 0]],
                                               np.random.RandomState(seed))
            if rate > 0:
                test = with_missing(test, rate, np.random.RandomState(7 + seed))
            rows = evaluate(train, test, yj, seed, net=True)
            res["b"].setdefault(f"{rate:g}", {})[seed] = rows
            swaps[f"{seed}/{rate:g}"] = counts
            print(f"(b) seed {seed} p={rate:g}", counts, {m: round(r["auroc"], 3) for m, r in rows.items()}, flush=True)
        for rate in (0.0, 0.2):
            full = with_missing(df, rate, np.random.RandomState(1000 * seed + int(round(100 * rate))))
            rows = unsupervised(full, y, seed)
            res["c"].setdefault(f"{rate:g}", {})[seed] = rows
            print(f"(c) seed {seed} p={rate:g}", {m: round(r["auroc"], 3) for m, r in rows.items()}, flush=True)
        # written after every seed, so a run cut short still leaves the finished seeds
        total = time.perf_counter() - t_start
        out = pathlib.Path(_OUT.value)
        summary = {"data": _DATA.value, "seeds": seeds[:seeds.index(seed) + 1], "rates": rates,
                   "max_train": _MAX_TRAIN.value, "max_test": _MAX_TEST.value, "unsup_rows": _UNSUP_ROWS.value,
                   "net": _NET.value, "net_steps": _NET_STEPS.value, "mask_rate": _MASK_RATE.value,
                   "missing_variants": list(_VARIANTS.value),
                   "seconds_total": total, "columns": {c: str(df[c].dtype) for c in df.columns},
                   "swaps": swaps, "results": res}
        out.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=float))
        out.write_text(_markdown(summary))
        _plot(summary, out.parent / "tabular" / "mixed_missingness.png")
        print(f"wrote {out} ({total:.0f} s)", flush=True)


def _table(results, key_list, title_fmt, section):
    lines = []
    for key in key_list:
        au, ap = _mean_table(results, key, "auroc"), _mean_table(results, key, "auprc")
        sec = _mean_table(results, key, "seconds")
        lines.append(f"\n{title_fmt.format(key)}\n")
        lines.append("| method | AUROC (mean ± sd over seeds) | AUPRC | seconds (fit + score) |")
        lines.append("|---|---:|---:|---:|")
        for m in au:
            lines.append(f"| {m} | {au[m][0]:.3f} ± {au[m][1]:.3f} | {ap[m][0]:.3f} ± {ap[m][1]:.3f} | {sec[m][0]:.1f} |")
    return lines


def _markdown(s) -> str:
    res = s["results"]
    lines = ["# Mixed-type table (campaign decoded): missing values, joint anomalies, contaminated training", "",
             "Command: `flock /tmp/adiff_heavy.lock timeout 900 python -m experiments.benchmarks.tabular_mixed "
             f"--seeds={','.join(map(str, s['seeds']))} --rates={','.join(f'{r:g}' for r in s['rates'])} "
             f"--max_train={s['max_train']} --max_test={s['max_test']} --unsup_rows={s['unsup_rows']} "
             f"--net={s['net']} --net_steps={s['net_steps']} --mask_rate={s['mask_rate']:g} "
             f"--missing_variants={','.join(s['missing_variants'])}`", "",
             f"Total run time {s['seconds_total']:.0f} s. Data construction and protocol: see the docstring of "
             "experiments/benchmarks/tabular_mixed.py (summarised in the notes below). Columns: "
             + ", ".join(f"{c} ({t})" for c, t in s["columns"].items()) + ".", "",
             "## (a) Semi-supervised split, MCAR missingness p over all cells"]
    lines += _table(res["a"], list(res["a"]), "p = {}:", "a")
    lines += ["", "## (b) Joint anomalies (a category contradicting the numeric columns), normal test rows only"]
    lines.append("\nSwapped rows per seed/p (month, poutcome): " + ", ".join(
        f"{k}: {v['month']}+{v['poutcome']}" for k, v in s["swaps"].items()))
    lines += _table(res["b"], list(res["b"]), "p = {}:", "b")
    lines += ["", "## (c) Unsupervised: fit and score the same contaminated sample (decision_scores_)"]
    lines += _table(res["c"], list(res["c"]), "p = {}:", "c")
    return "\n".join(lines) + "\n"


def _plot(s, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(s["results"]["a"])
    means = {k: _mean_table(s["results"]["a"], k, "auroc") for k in keys}
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for m in means[keys[0]]:
        ax.plot([float(k) for k in keys], [means[k][m][0] for k in keys], marker="o", label=m)
    ax.set_xlabel("MCAR missing rate p")
    ax.set_ylabel("AUROC (mean over seeds)")
    ax.set_title("campaign, decoded mixed table")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
