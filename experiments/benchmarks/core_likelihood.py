r"""Benchmark of adiff.likelihood.log_prob against a score_sde-style host loop and a compute floor.

Problem: a K=4 diagonal Gaussian mixture in D dimensions under VPSDE(0.1, 20) with its exact
score (adiff.analytic.GaussianMixture) and the true log p_T as prior, so log p_eps(x) is known in
closed form. The batch holds B-4 samples of the mixture and 4 outliers (samples shifted by
N(0, 4 I) noise: anomalies are what adiff scores). For each D it measures, in one run:

  (a) adiff: `likelihood.log_prob`, exact divergence, one compiled diffrax Tsit5 solve.
  (b) host loop: what score_sde does, `scipy.integrate.solve_ivp(method="RK45")` with the same
      rtol/atol, calling a jitted drift-and-exact-divergence function once per evaluation.
  (c) floor: adiff's NFE times the time of one jitted drift+exact-divergence evaluation, timed
      inside a compiled `lax.fori_loop` (no solver overhead at all).

and the pitfalls: (1) diffrax's default RMS error norm vs adiff's per-sample max norm, (2) the
N(0, I) prior vs the true p_T, (3) Hutchinson with 1, 4 and 16 probes, and the design choice of
one joint solve vs `vmap` over per-sample solves.

Run (from the repository root):

  flock /tmp/adiff_heavy.lock python -m experiments.benchmarks.core_likelihood

It prints the tables and, with --write (default), replaces the likelihood section of
docs/results/core.md (between <!-- BEGIN likelihood --> and <!-- END likelihood -->).
"""
from __future__ import annotations

import math
import os
import platform
import re
import statistics
import sys
import time
from typing import Callable, Dict, List

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import scipy.integrate

from adiff import analytic, likelihood
from adiff import sde as sde_lib

FLAGS = flags.FLAGS
flags.DEFINE_list("dims", ["2", "16", "64"], "Data dimensions D.")
flags.DEFINE_integer("batch", 64, "Batch size B.")
flags.DEFINE_float("rtol", 1e-5, "Relative tolerance (all solvers).")
flags.DEFINE_float("atol", 1e-5, "Absolute tolerance (all solvers).")
flags.DEFINE_float("eps", 1e-5, "Start time of the probability-flow ODE.")
flags.DEFINE_integer("repeats", 3, "Timed repeats after warm-up (the median is reported).")
flags.DEFINE_integer("seed", 0, "Seed of the mixture and the batch.")
flags.DEFINE_list("probes", ["1", "4", "16"], "Hutchinson probe counts for pitfall (3).")
flags.DEFINE_string("output", "docs/results/core.md", "Results file (likelihood section).")
flags.DEFINE_bool("write", True, "Write the likelihood section of --output.")

BEGIN, END = "<!-- BEGIN likelihood -->", "<!-- END likelihood -->"
TRAIN_BEGIN, TRAIN_END = "<!-- BEGIN train -->", "<!-- END train -->"


# ---------------------------------------------------------------------------------------------
# Problem.
# ---------------------------------------------------------------------------------------------


def make_problem(d: int, batch: int, seed: int):
    rng = np.random.default_rng(seed + d)
    gm = analytic.GaussianMixture.create(
        [0.4, 0.3, 0.2, 0.1], rng.normal(0.0, 1.5, (4, d)), rng.uniform(0.05, 0.5, (4, d)))
    x = gm.sample(jax.random.key(seed), batch)
    # The last 4 become outliers: mixture samples shifted by N(0, 2^2 I) noise.
    shift = jnp.asarray(rng.normal(0.0, 2.0, (4, d)), jnp.float32)
    x = x.at[-4:].add(shift)
    return gm, x


def timed(fn: Callable[[], object], repeats: int, min_time: float = 0.2) -> float:
    """Seconds per call: median over `repeats` of the mean over enough calls to last min_time."""
    jax.block_until_ready(fn())  # warm-up (compilation)
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    inner = max(1, math.ceil(min_time / max(time.perf_counter() - t0, 1e-9)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            out = fn()
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------
# (b) score_sde-style host loop.
# ---------------------------------------------------------------------------------------------


def host_loop_log_prob(score_fn, sde, x, prior_logp, *, eps, rtol, atol):
    """score_sde's likelihood: scipy RK45 on the host, one jitted drift+divergence per call."""
    b = x.shape[0]
    shape = x.shape

    @jax.jit
    def step(x_flat, t):
        h, div = likelihood.drift_and_exact_divergence(score_fn, sde, x_flat.reshape(shape), t)
        return h.reshape(-1), div

    def ode_func(t, y):
        xs = jnp.asarray(y[:-b], jnp.float32)
        h, div = step(xs, jnp.float32(t))
        return np.concatenate([np.asarray(h, np.float64), np.asarray(div, np.float64)])

    y0 = np.concatenate([np.asarray(x, np.float64).reshape(-1), np.zeros(b)])
    sol = scipy.integrate.solve_ivp(ode_func, (eps, sde.T), y0, rtol=rtol, atol=atol,
                                    method="RK45")
    y_end = sol.y[:, -1]
    x_t = jnp.asarray(y_end[:-b], jnp.float32).reshape(shape)
    logp = np.asarray(prior_logp(x_t), np.float64) + y_end[-b:]
    return logp, int(sol.nfev)


# ---------------------------------------------------------------------------------------------
# (c) floor: one drift + exact divergence evaluation, timed inside a compiled loop.
# ---------------------------------------------------------------------------------------------


def eval_time(score_fn, sde, x, n_iter: int, repeats: int) -> float:
    @jax.jit
    def loop(x):
        def body(i, carry):
            xc, acc = carry
            t = 0.5 + 1e-3 * i.astype(jnp.float32) / n_iter  # varies, so nothing is hoisted
            h, div = likelihood.drift_and_exact_divergence(score_fn, sde, xc, t)
            return xc + 1e-6 * h, acc + div

        return jax.lax.fori_loop(0, n_iter, body, (x, jnp.zeros(x.shape[0], x.dtype)))

    return timed(lambda: loop(x), repeats) / n_iter


# ---------------------------------------------------------------------------------------------
# Runs.
# ---------------------------------------------------------------------------------------------


def per_sample_vmap_solve(score_fn, sde, prior, *, eps, rtol, atol):
    """Design alternative: vmap over samples, each with its own adaptive solve (batch of 1).

    Returns a jitted function x [B, D] -> (logp [B], nfe [B]); build it once and reuse it.
    """

    def one(xi):
        out = likelihood._log_prob_jit(  # pylint: disable=protected-access
            xi[None], None, score_fn=score_fn, sde=sde, divergence="exact", n_probes=1,
            probe="rademacher", eps=eps, rtol=rtol, atol=atol, prior_logp=prior, solver="tsit5",
            max_steps=4096, chunk_size=None, error_norm="max")
        return out.logp[0], out.nfe

    return jax.jit(jax.vmap(one))


def run_dim(d: int) -> Dict[str, object]:
    sde = sde_lib.VPSDE()
    gm, x = make_problem(d, FLAGS.batch, FLAGS.seed)
    score_fn = gm.score_fn(sde)  # one object: reused, so every call hits the jit cache
    prior = gm.prior_logp_fn(sde)
    tol = dict(eps=FLAGS.eps, rtol=FLAGS.rtol, atol=FLAGS.atol)
    truth = np.asarray(gm.log_prob_t(sde, x, jnp.full((x.shape[0],), FLAGS.eps)), np.float64)
    r: Dict[str, object] = {"D": d}

    def err(logp):
        e = np.abs(np.asarray(logp, np.float64) - truth)
        return float(e.max()), float(e.mean())

    # (a) adiff.
    run_a = lambda: likelihood.log_prob(score_fn, sde, x, prior_logp=prior, **tol)
    r["adiff_s"] = timed(run_a, FLAGS.repeats)
    out = run_a()
    r["adiff_max"], r["adiff_mean"] = err(out.logp)
    r["adiff_nfe"] = int(out.nfe)

    # (b) host loop.
    host = lambda: host_loop_log_prob(score_fn, sde, x, prior, **tol)
    host()  # warm-up: compiles the step function
    times = []
    for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        logp_h, nfe_h = host()
        times.append(time.perf_counter() - t0)
    r["host_s"] = statistics.median(times)
    r["host_max"], r["host_mean"] = err(logp_h)
    r["host_nfe"] = nfe_h

    # (c) floor.
    per_eval = eval_time(score_fn, sde, x, n_iter=max(1000, r["adiff_nfe"]), repeats=FLAGS.repeats)
    r["eval_us"] = per_eval * 1e6
    r["floor_s"] = per_eval * r["adiff_nfe"]

    # Pitfall (1): diffrax's default RMS norm over all N*(D+1) entries.
    rms = likelihood.log_prob(score_fn, sde, x, prior_logp=prior, error_norm="rms", **tol)
    r["rms_max"], r["rms_mean"] = err(rms.logp)
    r["rms_nfe"] = int(rms.nfe)

    # Pitfall (2): the SDE's N(0, I) prior instead of the true p_T.
    default = likelihood.log_prob(score_fn, sde, x, **tol)
    r["prior_max"], r["prior_mean"] = err(default.logp)

    # Pitfall (3): Hutchinson.
    r["hutch"] = []
    for p in [int(v) for v in FLAGS.probes]:
        h = likelihood.log_prob(score_fn, sde, x, jax.random.key(FLAGS.seed + 1),
                                divergence="hutchinson", n_probes=p, prior_logp=prior, **tol)
        e = np.asarray(h.logp, np.float64) - truth
        stderr = np.asarray(h.stderr, np.float64)
        hs = timed(lambda: likelihood.log_prob(
            score_fn, sde, x, jax.random.key(FLAGS.seed + 1), divergence="hutchinson",
            n_probes=p, prior_logp=prior, **tol), FLAGS.repeats)
        r["hutch"].append(dict(
            probes=p, rms=float(np.sqrt(np.mean(e ** 2))), max=float(np.abs(e).max()),
            stderr=float(np.sqrt(np.mean(stderr ** 2))) if p > 1 else float("nan"),
            cover=float(np.mean(np.abs(e) <= 2 * stderr)) if p > 1 else float("nan"),
            nfe=int(h.nfe), s=hs))

    # Design: one joint solve vs vmap over per-sample solves.
    vmap_fn = per_sample_vmap_solve(score_fn, sde, prior, **tol)
    vm = lambda: vmap_fn(x)
    r["vmap_s"] = timed(vm, FLAGS.repeats)
    logp_v, nfe_v = vm()
    r["vmap_max"], _ = err(logp_v)
    r["vmap_nfe_max"] = int(np.max(nfe_v))
    r["vmap_nfe_mean"] = float(np.mean(nfe_v))
    return r


# ---------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------


def tables(results: List[Dict[str, object]]) -> str:
    lines = [
        "| D | adiff max / mean err (nats) | adiff NFE | adiff s | host max / mean err | host NFE "
        "| host s | host / adiff | floor s (eval µs) | adiff / floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['D']} | {r['adiff_max']:.1e} / {r['adiff_mean']:.1e} | {r['adiff_nfe']} "
            f"| {r['adiff_s']:.4f} | {r['host_max']:.1e} / {r['host_mean']:.1e} | {r['host_nfe']} "
            f"| {r['host_s']:.3f} | **{r['host_s'] / r['adiff_s']:.1f}x** "
            f"| {r['floor_s']:.4f} ({r['eval_us']:.1f}) | **{r['adiff_s'] / r['floor_s']:.2f}x** |")
    lines += [
        "",
        "Pitfalls (1) and (2), and the joint-solve design choice:",
        "",
        "| D | max-norm (adiff) max err / NFE | RMS norm (diffrax default) max err / NFE "
        "| N(0,I) prior: max / mean err | vmap per-sample solves: max err, NFE max / mean, s |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['D']} | {r['adiff_max']:.1e} / {r['adiff_nfe']} "
            f"| {r['rms_max']:.1e} / {r['rms_nfe']} "
            f"| {r['prior_max']:.2e} / {r['prior_mean']:.2e} "
            f"| {r['vmap_max']:.1e}, {r['vmap_nfe_max']} / {r['vmap_nfe_mean']:.0f}, "
            f"{r['vmap_s']:.4f} (joint {r['adiff_s']:.4f}) |")
    lines += [
        "",
        "Pitfall (3), Hutchinson (Rademacher probes fixed along the path; error vs closed form; "
        "stderr = RMS over samples of the reported standard error):",
        "",
        "| D | probes | RMS err (nats) | max err | reported stderr | share with err <= 2 stderr "
        "| NFE | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for h in r["hutch"]:
            lines.append(
                f"| {r['D']} | {h['probes']} | {h['rms']:.3f} | {h['max']:.3f} "
                f"| {h['stderr']:.3f} | {h['cover']:.2f} | {h['nfe']} | {h['s']:.4f} |")
    return "\n".join(lines)


def write_section(path: str, body: str, *, begin: str = BEGIN, end: str = END,
                  heading: str = "Likelihood") -> None:
    """Replaces the text between the `begin` and `end` markers of `path` (appending them, under
    `heading`, when absent)."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    else:
        text = ""
    if begin not in text or end not in text:
        if not text:
            text = "# Core benchmarks\n\n"
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n{begin}\n{end}\n"
        if begin == BEGIN and TRAIN_BEGIN not in text:  # the train benchmark writes its own heading
            text += f"\n{TRAIN_BEGIN}\n{TRAIN_END}\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text, count=1)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv):
    del argv
    t_start = time.time()
    results = [run_dim(int(d)) for d in FLAGS.dims]
    table = tables(results)
    print(table)
    cmd = "flock /tmp/adiff_heavy.lock python -m experiments.benchmarks.core_likelihood"
    extra = " ".join(a for a in sys.argv[1:])
    if extra:
        cmd += " " + extra
    d2 = [r for r in results if r["D"] == 2]
    target_lines = []
    if d2:
        ratio = d2[0]["host_s"] / d2[0]["adiff_s"]
        target_lines.append(f"- >= 10x the host loop at D=2: {ratio:.1f}x "
                            f"({'met' if ratio >= 10 else 'MISSED'}).")
    worst = max(r["adiff_s"] / r["floor_s"] for r in results)
    target_lines.append(f"- <= 1.5x the floor at every D: worst {worst:.2f}x "
                        f"({'met' if worst <= 1.5 else 'MISSED'}).")
    body = "\n".join([
        f"Command: `{cmd}`",
        "",
        f"Problem: VPSDE(0.1, 20), K=4 diagonal Gaussian mixture with its exact score and the "
        f"true log p_T as prior, batch {FLAGS.batch} ({FLAGS.batch - 4} mixture samples + 4 "
        f"outliers: samples shifted by N(0, 4 I)), eps={FLAGS.eps:g}, "
        f"rtol=atol={FLAGS.rtol:g}, float32, seed {FLAGS.seed}. Errors are "
        f"|log p - closed-form log p_eps| per sample. Times: median of {FLAGS.repeats} after "
        f"warm-up (each the mean over enough calls to last 0.2 s). Machine: "
        f"{platform.machine()} CPU, jax {jax.__version__} ({jax.devices()[0].platform}), "
        f"{os.cpu_count()} cores shared with other jobs.",
        "",
        "adiff = `likelihood.log_prob` (exact divergence, one compiled diffrax Tsit5 solve, "
        "per-sample max error norm); host = score_sde-style "
        "`scipy.integrate.solve_ivp(RK45)` calling a jitted drift+exact-divergence per "
        "evaluation (its RMS norm is over all entries, as in score_sde); floor = adiff's NFE "
        "x one drift+exact-divergence evaluation timed inside a compiled `lax.fori_loop`.",
        "",
        table,
        "",
        "Targets:",
        *target_lines,
        "",
        f"Total benchmark wall time: {time.time() - t_start:.0f} s.",
    ])
    print("\n" + "\n".join(target_lines))
    if FLAGS.write:
        write_section(FLAGS.output, body)
        print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
