r"""Non-parametric estimator variants beside DTE-NP on the ADBench tables (issue 4 ablation).

DTE-NP's posterior mean of the diffusion time is a strictly increasing function of m_k, the mean
squared distance to the k nearest training rows (the inverse-gamma likelihood family has a
monotone likelihood ratio in m_k), so its AUROC is that of m_k up to float ties: a better
estimator has to change the statistic, not the kernel. This script scores the variants below
from one neighbour table per split (scikit-learn's NearestNeighbors: the table of the 50 nearest
rows serves every variant at once, which adiff.scoring.dte_nonparametric, built to return one
statistic, does not), under the same random protocol and standardisation as tabular.py:

- V0: m_5 (the default, rank-equal to adiff's dte_np and DTE-NP's posterior mean);
- V1: m_3;
- V2: multi-scale, the mean over k in {3, 5, 10} of log m_k;
- V3: relative time, log m_5(q) minus the mean of log m_5 over q's 5 nearest training rows
  (leave-one-out for those rows) -- a local-density correction in the manner of LOF;
- V4: half-relative, log m_5(q) minus half of that neighbour mean;
- V5: the exact posterior mean of the DDPM time (DTE's 300-step schedule, uniform prior) under
  the empirical mixture of the 50 nearest rows, p(x | t) = sum_i N(x; x_i, v_t I);
- V6: m_5 after whitening with the Ledoit-Wolf covariance of the training part;
- V7 / V8: DTE-NP's time posterior computed the way the DTE repository's code does it (float32:
  the inverse-gamma log-density of each of the 300 step variances given m_5, normalised over the
  steps, then the posterior mean (V7, the issue's reference variant) or the argmax (V8, its HEAD);
  a test row with m_5 = 0, a duplicate of a training row, gives NaN there and is scored 0, as its
  run script does). Session 11: tells whether the reference's 0.881 / 0.861 differ from V0 through
  the estimator (float ties, saturation) or through the splits;
- V9 (session 18): -log p_t(x) of the diffused empirical mixture of the 50 nearest training rows,
  at the step t chosen per split by the leave-one-out log-likelihood of the training rows (a
  label-free bandwidth choice: the density paradigm with the noise level fitted to the data);
- V10 (session 18): feature-bagged DTE-NP, the mean over 10 random feature subspaces (size uniform
  in ceil(d / 2) .. d - 1, drawn with the seed) of log(m_5 / |S|), the per-dimension noise level
  that DTE-NP's time estimate follows (comparable across subspace sizes);
- V11 (session 19): V9 with two noise levels, one for the binary columns (exactly two values in
  the training part) and one for the rest, p(x) = 1/N sum_i N(x_c; x_i,c, v_c I) N(x_b; x_i,b, v_b I)
  over the 50 nearest rows (full distance), (v_c, v_b) chosen on V9's grid by coordinate ascent
  of the same leave-one-out likelihood, starting at V9's v. Equal to V9 on a set without binary
  columns (or with only binary ones). Motivation: density_np, the default since session 19, loses
  on celeba and campaign, mostly one-hot / binary tables, where one noise level might fit the
  discrete and the continuous directions badly (refuted by the run: docs/results/tabular.md). Rule, written before its first run (informational: no
  adoption in session 19, which had no time to rerun the four tables): build it into density_np
  next iff with seeds 0-2 (1) on the sets that have binary columns its mean AUROC is above V9's,
  (2) its 34-set mean is above V9's and (3) its mean over the 7 sets over 40,000 rows is at least
  V0's (dte_np's).
- KNN: PyOD KNN (k = 5, largest), the baseline of tabular.py.

  python -m experiments.benchmarks.tabular_np_variants --seeds=0,1,2 --small_only \\
      --variants_out=docs/results/tabular_np_variants.json
"""
from __future__ import annotations

import functools
import json
import pathlib
import time

import numpy as np
from absl import app, flags

from adiff import metrics, scoring
from adiff.data.tabular import load_adbench_npz
from experiments.benchmarks.tabular import _DATA, _SEEDS, REPO, _baseline, _datasets, split

# --data_dir and --seeds are tabular.py's flags (importing it defines them).
_SMALL = flags.DEFINE_bool("small_only", True, "Only the 27 sets with at most 40,000 rows (the "
                           "sets of the issue's DTE-NP reference).")
_OUT = flags.DEFINE_string("variants_out", str(REPO / "docs" / "results" / "tabular_np_variants.json"),
                           "JSON output (per set, per seed AUROC of every variant).")

VARIANTS = ("V0", "V1", "V2", "V3", "V4", "V5", "V6", "V7", "V8", "V9", "V10", "V11", "KNN")
_ONLY = flags.DEFINE_list("variants", list(VARIANTS), "Variants to compute (the others are skipped; "
                          "V0 and KNN are always computed, the references of the summary).")
_BIG = 40000


def _ddpm_variances(num_steps: int = 300, dtype=np.float64) -> np.ndarray:
    """v_j of DTE's discrete schedule (linear betas 1e-4 .. 0.01), as in scoring.dte_nonparametric;
    dtype=np.float32 computes it in float32 throughout, as DTE's own (torch) code does."""
    return 1.0 - np.cumprod(1.0 - np.linspace(1e-4, 0.01, num_steps, dtype=dtype), dtype=dtype)


def mixture_posterior_time(d2: np.ndarray, dim: int) -> np.ndarray:
    """Posterior mean of the step index under sum_i N(x; x_i, v_j I) over the rows of d2 [B, K]."""
    from scipy.special import logsumexp  # pylint: disable=import-outside-toplevel
    v = _ddpm_variances()
    lp = logsumexp(-d2[:, :, None] / (2.0 * v), axis=1) - 0.5 * dim * np.log(v)
    p = np.exp(lp - lp.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)) @ np.arange(len(v))


def reference_dte_time(m5: np.ndarray, dim: int) -> tuple:
    """(posterior mean, argmax) of the step index given m_5, in float32 as DTE's code computes it.

    The likelihood of variance v given m is the inverse-gamma density with shape dim / 2 - 1 and
    scale m / 2 (scipy, float64, then rounded to float32); the normalisation over the steps, the
    exponent and the mean are float32. NaN (m = 0) becomes 0, as in the reference run script.
    """
    from scipy.special import logsumexp  # pylint: disable=import-outside-toplevel
    from scipy.stats import invgamma  # pylint: disable=import-outside-toplevel
    steps = _ddpm_variances(dtype=np.float32)
    m = np.asarray(m5, np.float32)
    with np.errstate(all="ignore"):
        logp = invgamma.logpdf(steps[None, :].astype(np.float64), a=0.5 * dim - 1.0, loc=0.0,
                               scale=m[:, None].astype(np.float64) / 2.0).astype(np.float32)
        logp = logp - logsumexp(logp, axis=1, keepdims=True).astype(np.float32)
        post = np.exp(logp, dtype=np.float32)
        mean = (post * np.arange(len(steps), dtype=np.float32)).sum(1, dtype=np.float32)
    mode = np.where(np.isnan(post).any(1), 0.0, post.argmax(1).astype(np.float32))
    return np.where(np.isnan(mean), 0.0, mean), mode


def loo_bandwidth_density(d2_tr: np.ndarray, d2_te: np.ndarray, dim: int) -> np.ndarray:
    """V9: -log p_v(x) under sum_i N(x; x_i, v I) over the rows of d2_te [B, K], with v the step
    variance of DTE's schedule that maximises the leave-one-out log-likelihood of the training
    rows (d2_tr [N, K], each row's own distance excluded). Constants shared by all rows dropped."""
    from scipy.special import logsumexp  # pylint: disable=import-outside-toplevel
    # The library's choice (adiff.scoring.loo_variance: exact duplicates, distance 0, are left out
    # of it, not of the score), applied to this script's float64 neighbour table.
    vs = scoring.loo_variance(d2_tr, _ddpm_variances(), dim)
    return -(logsumexp(-d2_te / (2.0 * vs), axis=1) - 0.5 * dim * np.log(vs))


def _split_sq_dists(a: np.ndarray, b: np.ndarray, idx: np.ndarray, cols: np.ndarray, chunk: int = 2048):
    """Squared distances [B, K] from rows b to their neighbours a[idx] over the columns `cols`."""
    out = np.empty(idx.shape)
    for i in range(0, len(b), chunk):
        diff = b[i:i + chunk, None, :][..., cols] - a[idx[i:i + chunk]][..., cols]
        out[i:i + chunk] = (diff ** 2).sum(-1)
    return out


def two_level_loo(tc: np.ndarray, tb: np.ndarray, dims: tuple, vc: float, vb: float) -> float:
    """Mean leave-one-out log-likelihood (constants dropped) of the two-level mixture, from each
    training row's squared distances to its neighbours over the continuous (tc) and binary (tb)
    columns ([N, K] each; inf marks a left-out pair) in dimensions dims = (d_c, d_b)."""
    from scipy.special import logsumexp  # pylint: disable=import-outside-toplevel
    lse = logsumexp(-tc / (2.0 * vc) - tb / (2.0 * vb), axis=1)
    return float(np.mean(lse)) - 0.5 * dims[0] * np.log(vc) - 0.5 * dims[1] * np.log(vb)


def two_level_variances(tc, tb, dims, grid, start: float, rounds: int = 4) -> tuple:
    """(v_c, v_b) on `grid` by coordinate ascent of `two_level_loo` from (start, start)."""
    vc = vb = start
    for _ in range(rounds):
        new_vc = grid[int(np.argmax([two_level_loo(tc, tb, dims, g, vb) for g in grid]))]
        new_vb = grid[int(np.argmax([two_level_loo(tc, tb, dims, new_vc, g) for g in grid]))]
        if (new_vc, new_vb) == (vc, vb):
            break
        vc, vb = new_vc, new_vb
    return float(vc), float(vb)


def two_level_tables(a: np.ndarray, i_tr: np.ndarray, cc: np.ndarray, cb: np.ndarray) -> tuple:
    """(tc, tb): each training row's squared distances to its neighbours a[i_tr] over the columns
    cc and cb, a pair at total distance 0 (an exact duplicate) set to inf and rows whose every
    neighbour is a duplicate dropped, as `scoring.loo_variance` does for one level."""
    parts = [_split_sq_dists(a, a, i_tr, c) for c in (cc, cb)]
    total = parts[0] + parts[1]
    keep = (total > 0).any(1)
    return tuple(np.where(total > 0, p, np.inf)[keep] for p in parts)


def two_level_density(a, b, i_tr, i_te, d2_tr, d2_te) -> np.ndarray:
    """V11 (see the docstring): two noise levels, binary and other columns, each chosen by the
    leave-one-out likelihood of the training rows on V9's grid (coordinate ascent from V9's v)."""
    from scipy.special import logsumexp  # pylint: disable=import-outside-toplevel
    binary = np.array([len(np.unique(a[:, j])) == 2 for j in range(a.shape[1])])
    if binary.all() or not binary.any():
        return loo_bandwidth_density(d2_tr, d2_te, a.shape[1])
    cb, cc = np.flatnonzero(binary), np.flatnonzero(~binary)
    grid = _ddpm_variances()
    tc, tb = two_level_tables(a, i_tr, cc, cb)
    dims = (len(cc), len(cb))
    vc, vb = two_level_variances(tc, tb, dims, grid, scoring.loo_variance(d2_tr, grid, a.shape[1]))
    pc, pb = (_split_sq_dists(a, b, i_te, c) for c in (cc, cb))
    return -(logsumexp(-pc / (2.0 * vc) - pb / (2.0 * vb), axis=1)
             - 0.5 * dims[0] * np.log(vc) - 0.5 * dims[1] * np.log(vb))


def bagged_log_m5(a: np.ndarray, b: np.ndarray, seed: int, n_bags: int = 10) -> np.ndarray:
    """V10: mean over random feature subspaces S of log(m_5(S) / |S|) (see the docstring)."""
    from sklearn.neighbors import NearestNeighbors  # pylint: disable=import-outside-toplevel
    d = a.shape[1]
    if d < 3:
        return np.log((NearestNeighbors(n_neighbors=5).fit(a).kneighbors(b)[0] ** 2).mean(1) / d)
    rng = np.random.default_rng(seed)
    out = np.zeros(len(b))
    for _ in range(n_bags):
        cols = rng.choice(d, size=int(rng.integers(-(-d // 2), d)), replace=False)
        dist, _ = NearestNeighbors(n_neighbors=5).fit(a[:, cols]).kneighbors(b[:, cols])
        out += np.log((dist ** 2).mean(1) / len(cols) + 1e-12)
    return out / n_bags


def variant_scores(a: np.ndarray, b: np.ndarray, seed: int, variants=VARIANTS) -> dict:
    """Scores of the `variants` (always with V0 and KNN, the summary's references) for test rows b
    given standardised training rows a."""
    from sklearn.covariance import LedoitWolf  # pylint: disable=import-outside-toplevel
    from sklearn.neighbors import NearestNeighbors  # pylint: disable=import-outside-toplevel
    k_max = min(50, len(a) - 1)
    nn = NearestNeighbors(n_neighbors=k_max).fit(a)
    d_te, i_te = nn.kneighbors(b)
    d_tr, i_tr = nn.kneighbors(a, n_neighbors=k_max + 1)
    d2_te, d2_tr = d_te ** 2, d_tr[:, 1:] ** 2  # training rows: leave-one-out
    m = lambda d2, k: d2[:, :k].mean(1)
    log_m = lambda d2, k: np.log(m(d2, k) + 1e-12)
    want = set(variants) | {"V0", "KNN"}
    unknown = want - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; known: {VARIANTS}")

    def white_m5():
        w, u = np.linalg.eigh(LedoitWolf().fit(a).covariance_)
        white = u / np.sqrt(np.maximum(w, 1e-12))
        d_w, _ = NearestNeighbors(n_neighbors=5).fit(a @ white).kneighbors(b @ white)
        return (d_w ** 2).mean(1)

    # shared by two variants each (V7 / V8, V3 / V4): computed once, when first asked for
    reference = functools.cache(lambda: reference_dte_time((d2_te[:, :5].astype(np.float32)).mean(1), a.shape[1]))
    neighbour_mean = functools.cache(lambda: log_m(d2_tr, 5)[i_te[:, :5]].mean(1))
    make = {"V0": lambda: m(d2_te, 5), "V1": lambda: m(d2_te, 3),
            "V2": lambda: np.mean([log_m(d2_te, k) for k in (3, 5, 10)], 0),
            "V3": lambda: log_m(d2_te, 5) - neighbour_mean(),
            "V4": lambda: log_m(d2_te, 5) - 0.5 * neighbour_mean(),
            "V5": lambda: mixture_posterior_time(d2_te, a.shape[1]),
            "V6": white_m5,
            "V7": lambda: reference()[0], "V8": lambda: reference()[1],
            "V9": lambda: loo_bandwidth_density(d2_tr, d2_te, a.shape[1]),
            "V10": lambda: bagged_log_m5(a, b, seed),
            "V11": lambda: two_level_density(a, b, i_tr[:, 1:], i_te, d2_tr, d2_te),
            "KNN": lambda: _baseline("KNN", seed).fit(a).decision_function(b)}
    return {v: make[v]() for v in VARIANTS if v in want}


def summarise(res: dict) -> str:
    """Mean AUROC per variant over sets (seed means), wins/losses vs KNN and V0, per-seed means."""
    present = [v for v in VARIANTS if v in next(iter(res.values()))[0]]
    seed_mean = {s: {v: np.mean([r[v] for r in rows]) for v in present} for s, rows in res.items()}
    lines = [f"{len(res)} sets, {len(next(iter(res.values())))} seeds", "",
             "| variant | mean AUROC | wins/losses vs KNN | wins/losses vs V0 | per-seed means |",
             "|---|---:|---|---|---|"]
    for v in present:
        wl = lambda ref: (sum(sm[v] > sm[ref] + 1e-9 for sm in seed_mean.values()),
                          sum(sm[v] < sm[ref] - 1e-9 for sm in seed_mean.values()))
        per_seed = [np.mean([rows[i][v] for rows in res.values()])
                    for i in range(len(next(iter(res.values()))))]
        lines.append(f"| {v} | {np.mean([sm[v] for sm in seed_mean.values()]):.4f} | "
                     f"{'%d / %d' % wl('KNN')} | {'%d / %d' % wl('V0')} | "
                     f"{' / '.join(f'{x:.4f}' for x in per_seed)} |")
    return "\n".join(lines)


def main(argv):
    del argv
    seeds = [int(s) for s in _SEEDS.value]
    res = {}
    for path in _datasets(pathlib.Path(_DATA.value), []):
        x, y = load_adbench_npz(path)
        if _SMALL.value and len(x) > _BIG:
            continue
        res[path.parent.name] = []
        for seed in seeds:
            t = time.perf_counter()
            x_tr, x_te, y_te = split("random", x, y, seed=seed)
            mu, sd = x_tr.mean(0), x_tr.std(0)
            sd[sd == 0] = 1.0
            scores = variant_scores((x_tr - mu) / sd, (x_te - mu) / sd, seed, _ONLY.value)
            row = {v: metrics.auroc(y_te, s) for v, s in scores.items()}
            res[path.parent.name].append(row)
            print(path.parent.name, seed, " ".join(f"{v} {a:.3f}" for v, a in row.items()),
                  f"({time.perf_counter() - t:.1f} s)", flush=True)
    out = pathlib.Path(_OUT.value)
    out.write_text(json.dumps({"seeds": seeds, "results": res}, indent=1))
    table = summarise(res)
    out.with_suffix(".md").write_text(
        "# Non-parametric estimator variants (issue 4 ablation)\n\n"
        f"Command: `python -m experiments.benchmarks.tabular_np_variants --seeds={','.join(map(str, seeds))}"
        f"{'' if _SMALL.value else ' --nosmall_only'}"
        f"{'' if set(_ONLY.value) >= set(VARIANTS) else ' --variants=' + ','.join(_ONLY.value)}`. Variants: the module docstring of "
        "experiments/benchmarks/tabular_np_variants.py. Random protocol of tabular.py; AUROC, mean "
        "over sets of the per-set seed means; per-seed means in the last column.\n\n" + table + "\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
