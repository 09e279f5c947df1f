r"""Benchmark of the variational bound `adiff.scoring.elbo` against the exact likelihood.

Same problem as core_likelihood.py (a K=4 diagonal Gaussian mixture in D dimensions under
VPSDE(0.1, 20) with its exact score; B-4 mixture samples and 4 outliers), so -log p is known in
closed form. For each D, in one run:

  exact: `likelihood.log_prob` (exact divergence, adaptive Tsit5, the N(0, I) prior that the ELBO
         also uses), its error against the closed form and its time;
  ELBO:  `scoring.elbo` with S Monte Carlo draws (shared by the batch): bias (mean over the batch
         of bound - closed form, averaged over keys; zero in expectation with the exact score),
         RMS error of one call, Spearman rank correlation of one call with the closed-form -log p
         over the batch (what an anomaly ranking needs), AUROC of the 4 outliers, and time.

Run (from the repository root):

  flock /tmp/adiff_heavy.lock python -m experiments.benchmarks.core_elbo

It prints the table and, with --write (default), replaces the ELBO section of docs/results/core.md
(between <!-- BEGIN elbo --> and <!-- END elbo -->).
"""
from __future__ import annotations

import os
import platform
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from sklearn.metrics import roc_auc_score

from adiff import likelihood, scoring
from adiff import sde as sde_lib
from experiments.benchmarks.core_likelihood import make_problem, timed, write_section

BEGIN, END = "<!-- BEGIN elbo -->", "<!-- END elbo -->"


def define_flags() -> None:
    """This script's flags; --dims, --batch, --seed, --rtol, --atol, --repeats, --output and --write
    are core_likelihood's (defined when it is imported)."""
    flags.DEFINE_list("samples", ["64", "256", "1024"], "ELBO Monte Carlo draws S.")
    flags.DEFINE_integer("keys", 8, "Independent keys for the ELBO's bias.")


def run_dim(d: int, cfg, samples: list[int]) -> list[dict]:
    sde = sde_lib.VPSDE()
    gm, x = make_problem(d, cfg.batch, cfg.seed)
    score_fn = gm.score_fn(sde)
    truth = -np.asarray(gm.log_prob(x))
    y = np.r_[np.zeros(cfg.batch - 4), np.ones(4)]
    exact_fn = jax.jit(lambda x: -likelihood.log_prob(score_fn, sde, x, rtol=cfg.rtol,
                                                      atol=cfg.atol).logp)
    exact = np.asarray(exact_fn(x))
    rows = [dict(D=d, method=f"exact PF-ODE (rtol {cfg.rtol:g})", bias=float(np.mean(exact - truth)),
                 bias_se=0.0,
                 rms=float(np.sqrt(np.mean((exact - truth) ** 2))),
                 rho=float(scipy.stats.spearmanr(exact, truth)[0]),
                 auroc=float(roc_auc_score(y, exact)), s=timed(lambda: exact_fn(x), cfg.repeats))]
    for n in samples:
        fn = jax.jit(lambda x, k, n=n: scoring.elbo(score_fn, sde, x, k, num_samples=n).scores)
        runs = np.stack([np.asarray(fn(x, jax.random.key(i))) for i in range(cfg.keys)])
        one = runs[0]
        per_key = (runs - truth).mean(axis=1)  # the shared draws shift a whole call together
        rows.append(dict(D=d, method=f"ELBO, S = {n}", bias=float(per_key.mean()),
                         bias_se=float(per_key.std(ddof=1) / np.sqrt(len(per_key))),
                         rms=float(np.sqrt(np.mean((one - truth) ** 2))),
                         rho=float(scipy.stats.spearmanr(one, truth)[0]),
                         auroc=float(roc_auc_score(y, one)),
                         s=timed(lambda: fn(x, jax.random.key(0)), cfg.repeats)))
    for r in rows:
        r["speed"] = rows[0]["s"] / r["s"]
    return rows


def table(rows: list[dict]) -> str:
    out = ["| D | method | bias (nats) +- se | RMS err, one call | Spearman vs truth | outlier AUROC | s / call "
           "| x exact speed |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['D']} | {r['method']} | {r['bias']:+.3f} +- {r['bias_se']:.3f} | {r['rms']:.3f} | {r['rho']:.4f} | "
                   f"{r['auroc']:.3f} | {r['s']:.4f} | {r['speed']:.1f}x |")
    return "\n".join(out)


def main(argv):
    del argv
    cfg = flags.FLAGS
    samples = [int(s) for s in cfg.samples]
    t0 = time.time()
    rows = [r for d in cfg.dims for r in run_dim(int(d), cfg, samples)]
    tab = table(rows)
    print(tab)
    cmd = "flock /tmp/adiff_heavy.lock python -m experiments.benchmarks.core_elbo"
    if sys.argv[1:]:
        cmd += " " + " ".join(sys.argv[1:])
    body = "\n".join([
        f"Command: `{cmd}`",
        "",
        f"Problem: as in the likelihood section (VPSDE(0.1, 20), K=4 mixture with its exact score, batch "
        f"{cfg.batch} with 4 outliers, seed {cfg.seed}), but both methods use the N(0, I) prior and are "
        f"compared with the closed-form -log p_0. ELBO = `scoring.elbo` (Song et al. 2021, Thm 1; times "
        f"drawn from g^2/sigma^2, one noise draw per time, the same draws for the whole batch). Bias: mean "
        f"of bound - truth over the batch and {cfg.keys} keys (the bound is tight with the exact score, so "
        f"it should be ~0 up to the prior's mismatch; se over keys). RMS, Spearman and AUROC: one call (key 0); "
        f"because the draws are shared, most of one call's error is a shift common to the whole batch, which "
        f"leaves the ranking (Spearman, AUROC) intact. Time: "
        f"median of {cfg.repeats} after warm-up. Machine: {platform.machine()} CPU, jax {jax.__version__}, "
        f"{os.cpu_count()} cores shared with other jobs.",
        "",
        tab,
        "",
        f"Total benchmark wall time: {time.time() - t0:.0f} s.",
    ])
    if cfg.write:
        write_section(cfg.output, body, begin=BEGIN, end=END, heading="ELBO (variational bound) vs exact likelihood")
        print(f"wrote {cfg.output}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
