r"""Scale benchmarks: scoring memory vs N (tabular) and throughput on 1/2/8 simulated devices.

  flock /tmp/adiff_heavy.lock timeout 900 python -m experiments.benchmarks.scale \
      [--sizes=10000,100000,1000000] [--devices=1,2,8] [--out=docs/results/scale.json]

1. Memory: a TabularDetector (scoring="dte", score_batch_size=2048, 16 numeric features) is fitted
   once on 4,000 synthetic rows (seed 0) and saved; for each N a fresh subprocess loads it, warms
   the scorer up, builds X [N, 16] float32 (seed 1), then resets the peak-RSS counter
   (/proc/self/clear_refs) and scores X. Reported: RSS before scoring (X included) and the peak
   increase during scoring, in MiB and bytes per row. The scorer works in fixed-size batches, so
   what grows with N is only O(N) host arrays (encoded rows, observation mask, scores).
2. Throughput: for each device count k a subprocess with
   XLA_FLAGS=--xla_force_host_platform_device_count=k (simulated CPU devices sharing the same
   cores) times, on a data-parallel mesh of k devices: the tabular train step (ResidualMLP 256x3,
   DSM eps loss, batch 1024, D = 16), the image train step (UNet base 16, mults (1, 2), 32x32x1,
   batch 32) and sharded scoring (eps-network forward over 8,192 rows). Median of 5 repeats.
   Simulated devices share the machine's cores, so these figures show the overhead of sharding on
   one CPU, not a speed-up.
The PyTorch comparison asked for in issue 10 is not run here: torch is not installed in this
environment (the bench extra pins torch==2.13.0); see docs/results/scale.md.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from experiments.benchmarks.timing import median_time

REPO = pathlib.Path(__file__).resolve().parents[2]
COMMAND = ("flock /tmp/adiff_heavy.lock timeout 900 python -m experiments.benchmarks.scale")
NUM_FEATURES = 16


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _detector_kwargs():
    return dict(scoring="dte", train_steps=200, batch_size=256, dte_hidden=(64, 64),
                score_batch_size=2048, seed=0)


def _fit_and_save(path: str) -> None:
    import numpy as np  # pylint: disable=import-outside-toplevel
    from adiff.detectors.tabular import TabularDetector  # pylint: disable=import-outside-toplevel
    X = np.random.RandomState(0).randn(4000, NUM_FEATURES).astype(np.float32)
    TabularDetector(**_detector_kwargs()).fit(X).save(path)


def _worker_rss(path: str, n: int) -> dict:
    import numpy as np  # pylint: disable=import-outside-toplevel
    from adiff.detectors.base import load  # pylint: disable=import-outside-toplevel
    det = load(path)
    rng = np.random.RandomState(1)
    det.decision_function(rng.randn(4096, NUM_FEATURES).astype(np.float32))  # compile
    X = rng.randn(n, NUM_FEATURES).astype(np.float32)
    base = _status_kib("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    s = det.decision_function(X)
    dt = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    assert s.shape == (n,) and np.isfinite(s).all()
    return {"n": n, "rss_before_mib": base / 1024, "peak_mib": peak / 1024,
            "increase_mib": (peak - base) / 1024, "increase_bytes_per_row": (peak - base) * 1024 / n,
            "peak_counter_reset": reset, "seconds": dt, "rows_per_s": n / dt}




def _worker_throughput() -> dict:
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import optax  # pylint: disable=import-outside-toplevel
    from adiff import losses, nets, sharding, training  # pylint: disable=import-outside-toplevel
    from adiff import sde as sde_lib  # pylint: disable=import-outside-toplevel

    k = jax.device_count()
    mesh = sharding.make_mesh(k)
    vp = sde_lib.VPSDE()
    key = jax.random.key(0)
    out = {"devices": k}

    def bench_train(model, x, init_args, name):
        params = model.init(jax.random.key(1), *init_args)["params"]

        def loss_fn(p, batch, kk):
            o = losses.dsm_loss(lambda xt, t: model.apply({"params": p}, xt, t), vp, batch, kk)
            return o.loss, {}

        tx = optax.adamw(1e-3)
        step = training.make_train_step(loss_fn, tx, mesh=mesh)
        state = jax.device_put(training.create_train_state(params, tx),
                               sharding.state_sharding(mesh, training.create_train_state(params, tx)))
        batch = sharding.shard_batch(x, mesh)
        holder = [state]

        def run():
            holder[0], m = step(holder[0], batch, key)
            jax.block_until_ready(m)

        run()
        run()
        dt = median_time(run)
        out[name] = {"batch": int(x.shape[0]), "step_ms": dt * 1e3, "samples_per_s": x.shape[0] / dt}

    rng = np.random.RandomState(0)
    mlp = nets.ResidualMLP(features=256, num_blocks=3, time_dim=128)
    xt = rng.randn(1024, NUM_FEATURES).astype(np.float32)
    bench_train(mlp, xt, (xt[:2], jnp.ones(2)), "tabular_train")
    unet = nets.UNet(base_channels=16, channel_mults=(1, 2), attention_resolutions=(), groups=8)
    xi = rng.randn(32, 32, 32, 1).astype(np.float32)
    bench_train(unet, xi, (xi[:2], jnp.ones(2)), "image_train")

    params = mlp.init(jax.random.key(1), xt[:2], jnp.ones(2))["params"]
    params = jax.device_put(params, sharding.replicated_sharding(mesh))
    xs = sharding.shard_batch(rng.randn(8192, NUM_FEATURES).astype(np.float32), mesh)
    ts = sharding.shard_batch(np.full(8192, 0.3, np.float32), mesh)
    fwd = jax.jit(lambda p, x, t: mlp.apply({"params": p}, x, t))
    run = lambda: jax.block_until_ready(fwd(params, xs, ts))
    run()
    dt = median_time(run)
    out["tabular_scoring"] = {"batch": 8192, "call_ms": dt * 1e3, "rows_per_s": 8192 / dt}
    return out


def _subprocess(args, env_extra=None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    env.update(env_extra or {})
    res = subprocess.run([sys.executable, "-m", "experiments.benchmarks.scale", *args], cwd=REPO,
                         env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--devices", default="1,2,8")
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "scale.json"))
    parser.add_argument("--worker", choices=["rss", "throughput", "fit"], default=None)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--path", default="")
    args = parser.parse_args(argv)

    if args.worker is not None:
        from absl import flags  # pylint: disable=import-outside-toplevel
        flags.FLAGS.mark_as_parsed()
        if args.worker == "fit":
            _fit_and_save(args.path)
            result = {"saved": args.path}
        elif args.worker == "rss":
            result = _worker_rss(args.path, args.n)
        else:
            result = _worker_throughput()
        print(json.dumps(result), flush=True)
        return

    report = {"command": "python -m experiments.benchmarks.scale "
                         + " ".join(sys.argv[1:] if argv is None else argv),
              "recommended_command": COMMAND,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "detector": _detector_kwargs(), "num_features": NUM_FEATURES, "memory": [],
              "throughput": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "det")
        _subprocess(["--worker=fit", f"--path={path}"])
        for n in (int(float(v)) for v in args.sizes.split(",") if v):
            r = _subprocess(["--worker=rss", f"--path={path}", f"--n={n}"])
            print(json.dumps(r), flush=True)
            report["memory"].append(r)
    for k in (int(v) for v in args.devices.split(",") if v):
        r = _subprocess(["--worker=throughput"],
                        {"XLA_FLAGS": f"--xla_force_host_platform_device_count={k}"})
        print(json.dumps(r), flush=True)
        report["throughput"].append(r)
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
