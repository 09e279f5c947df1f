r"""Train-step throughput of the core models, against the machine's measured matmul peak.

  flock /tmp/adiff_heavy.lock python -m experiments.benchmarks.core_train [--quick]

For a ResidualMLP (D = 32) and a small UNet (32x32x1), each at two batch sizes: one full
`adiff.training.make_train_step` step (DSM eps loss under the VP SDE, forward + backward + AdamW +
EMA, donated state), jitted and warmed up, timed as the median over several repeats. FLOPs per
step come from XLA's compiled cost analysis; the peak is a jitted 2048x2048 float32 `jnp.dot`
timed in the same run. The table is printed and written to docs/results/core.md between
`<!-- BEGIN train -->` and `<!-- END train -->` (other sections of that file are left alone).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from adiff import losses, nets, training
from adiff import sde as sde_lib
from experiments.benchmarks.timing import median_time

REPO = pathlib.Path(__file__).resolve().parents[2]
RESULTS = REPO / "docs" / "results" / "core.md"
BEGIN, END = "<!-- BEGIN train -->", "<!-- END train -->"
COMMAND = "flock /tmp/adiff_heavy.lock python -m experiments.benchmarks.core_train"




def matmul_peak(n: int = 2048, repeats: int = 7) -> float:
    """Measured float32 matmul throughput (GFLOP/s) of a jitted n x n `jnp.dot`."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    t = median_time(lambda: dot(a, b).block_until_ready(), repeats=repeats, number=3)
    return 2.0 * n ** 3 / t / 1e9


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def bench_model(name: str, model, shape: tuple[int, ...], batch: int, *, repeats: int,
                number: int) -> dict:
    vp = sde_lib.VPSDE()
    rng = np.random.RandomState(0)
    x = rng.randn(batch, *shape).astype(np.float32)
    params = model.init(jax.random.key(0), x[:2], jnp.ones(2))["params"]
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))

    def loss_fn(p, xb, key):
        out = losses.dsm_loss(lambda xt, t: model.apply({"params": p}, xt, t), vp, xb, key)
        return out.loss, {}

    cfg = training.TrainConfig(num_steps=10_000, batch_size=batch)
    tx = training.make_optimizer(cfg)
    step = training.make_train_step(loss_fn, tx, ema_decay=cfg.ema_decay)
    state = training.create_train_state(params, tx)
    xb = jnp.asarray(x)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = step.lower(state, xb, key).compile()
    compile_s = time.perf_counter() - t0
    flops = _flops(compiled)
    box = [state]

    def one():
        box[0], m = step(box[0], xb, key)
        m["loss"].block_until_ready()

    for _ in range(3):  # warm-up (first call compiles through the jit cache)
        one()
    sec = median_time(one, repeats=repeats, number=number)
    return {"model": name, "params": n_params, "batch": batch, "ms": sec * 1e3,
            "samples_s": batch / sec, "gflop_step": flops / 1e9, "gflops": flops / sec / 1e9,
            "compile_s": compile_s}


def render(rows: list[dict], peak: float, wall: float) -> str:
    lines = [
        "## Train-step throughput (`adiff.training.make_train_step`)",
        "",
        f"Command: `{COMMAND}`",
        "",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores visible, jax {jax.__version__} "
        f"backend `{jax.default_backend()}` ({jax.device_count()} device); shared with other jobs, "
        "so figures are indicative. One step = DSM eps loss (VP SDE) forward + backward + "
        "clip + AdamW + EMA, jitted, donated state; median over repeats after warm-up. FLOPs from "
        "XLA's compiled cost analysis; peak = measured jitted 2048x2048 float32 `jnp.dot`.",
        "",
        f"Measured matmul peak: **{peak:.1f} GFLOP/s**. Total benchmark wall time {wall:.0f} s.",
        "",
        "| model | params | batch | ms/step | samples/s | GFLOP/step | GFLOP/s | % of matmul peak | compile s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['batch']} | {r['ms']:.2f} | "
            f"{r['samples_s']:,.0f} | {r['gflop_step']:.4f} | {r['gflops']:.1f} | "
            f"{100 * r['gflops'] / peak:.1f}% | {r['compile_s']:.1f} |")
    return "\n".join(lines)


def write_section(text: str, path: pathlib.Path = RESULTS) -> None:
    """Replaces (or appends) the train section of docs/results/core.md; other sections stay."""
    block = f"{BEGIN}\n{text}\n{END}"
    if path.exists():
        content = path.read_text(encoding="utf-8")
        if BEGIN in content and END in content:
            head, rest = content.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            content = head + block + tail
        else:
            content = content.rstrip("\n") + "\n\n" + block + "\n"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        content = "# Core results\n\nMeasured tables, each with the command that produced it.\n\n" \
                  + block + "\n"
    path.write_text(content, encoding="utf-8")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no file written")
    args = parser.parse_args(argv)
    repeats, number = (3, 2) if args.quick else (7, 5)
    t0 = time.perf_counter()
    peak = matmul_peak()
    mlp = nets.ResidualMLP(features=256, num_blocks=3, time_dim=128)
    unet = nets.UNet(base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1,
                     attention_resolutions=(8,), groups=8, time_dim=64)
    rows = []
    for name, model, shape, batches in [
            ("ResidualMLP D=32 (256 wide, 3 blocks)", mlp, (32,), (256, 2048)),
            ("UNet 32x32x1 (16 ch, mults 1-2-2, attn@8)", unet, (32, 32, 1), (16, 64))]:
        for b in batches:
            r = bench_model(name, model, shape, b, repeats=repeats,
                            number=number if b * np.prod(shape) < 50_000 else 1)
            print(f"{name} batch {b}: {r['ms']:.2f} ms/step, {r['samples_s']:.0f} samples/s, "
                  f"{r['gflops']:.1f} GFLOP/s", flush=True)
            rows.append(r)
    # Peak again at the end; keep the larger (the machine is shared).
    peak = max(peak, matmul_peak())
    text = render(rows, peak, time.perf_counter() - t0)
    print(text)
    if not args.quick:
        write_section(text)
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
