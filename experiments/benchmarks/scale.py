r"""Scale benchmarks: scoring memory vs N (tabular) and throughput on 1/2/8 simulated devices.

  flock /tmp/adiff_heavy.lock timeout 900 python -m experiments.benchmarks.scale \
      [--sizes=10000,100000,1000000] [--devices=1,2,8] [--out=docs/results/scale.json] \
      [--torch=true] [--torch_compile=true] [--torch_cpus=all,1] [--torch_repeats=7]

1. Memory: a TabularDetector (scoring="dte", score_batch_size=2048, 16 numeric features) is fitted
   once on 4,000 synthetic rows (seed 0) and saved; for each N a fresh subprocess loads it, warms
   the scorer up, builds X [N, 16] float32 (seed 1), then resets the peak-RSS counter
   (/proc/self/clear_refs) and scores X. Reported: RSS before scoring (X included) and the peak
   increase during scoring, in MiB and bytes per row. The scorer works in fixed-size batches, so
   what grows with N is only O(N) host arrays (encoded rows, observation mask, scores).
2. Throughput: for each device count k a subprocess with
   XLA_FLAGS=--xla_force_host_platform_device_count=k (simulated CPU devices sharing the same
   cores) times, on a data-parallel mesh of k devices: the tabular train step (ResidualMLP 256x3,
   DSM eps loss, clip 1.0 + AdamW + EMA, batch 1024, D = 16), the image train step (UNet base 16,
   mults (1, 2), 32x32x1, batch 32) and sharded scoring (eps-network forward over 8,192 rows).
   Median of 5 repeats.
   Simulated devices share the machine's cores, so these figures show the overhead of sharding on
   one CPU, not a speed-up.
3. Against PyTorch (skipped with a message when torch is not installed; the bench extra pins
   torch==2.13.0): one subprocess (one XLA device) builds the same tabular network and train step
   in PyTorch (experiments/benchmarks/torch_ref.py, initialised with adiff's parameters; the
   parameter counts are asserted equal and the forward outputs compared), sets torch's intra-op
   thread count to the number of schedulable cores (the size of XLA's CPU thread pool), warms all
   variants up, then alternates timed blocks: adiff jitted train step, torch eager train step,
   torch.compile'd train step (--torch_compile, skipped if compiling fails), and the same for
   scoring (forward over 8,192 rows at t = 0.3, no gradients). Reported: median ms per step/call
   over the blocks and the ratio torch / adiff (> 1: adiff faster). Each entry of --torch_cpus
   (default "all,1") is its own subprocess pinned to that many cores before jax and torch start.
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
from experiments.benchmarks.timing import median_time, reset_peak_rss, status_kib

REPO = pathlib.Path(__file__).resolve().parents[2]
COMMAND = ("flock /tmp/adiff_heavy.lock timeout 900 python -m experiments.benchmarks.scale")
NUM_FEATURES = 16


_status_kib, _reset_peak = status_kib, reset_peak_rss  # shared with the other benchmarks


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




def _optimizer():
    """The trainer's default optimizer (adiff.training.make_optimizer): clip 1.0, then AdamW."""
    import optax  # pylint: disable=import-outside-toplevel
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))


def _worker_throughput() -> dict:
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
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

        tx = _optimizer()
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


def _torch_available() -> bool:
    import importlib.util  # pylint: disable=import-outside-toplevel
    return importlib.util.find_spec("torch") is not None


def _worker_torch(*, compile_torch: bool, repeats: int, number: int) -> dict:
    """adiff vs PyTorch, same network / train step / batch / threads, alternating timed blocks."""
    import statistics  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    from adiff import losses, nets, sharding, training  # pylint: disable=import-outside-toplevel
    from adiff import sde as sde_lib  # pylint: disable=import-outside-toplevel
    from experiments.benchmarks import torch_ref  # pylint: disable=import-outside-toplevel

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    out = {"load_average_at_start": list(os.getloadavg()),
           "torch_version": torch.__version__, "jax_version": jax.__version__,
           "threads": threads, "torch_num_threads": torch.get_num_threads(),
           "jax_devices": jax.device_count(), "batch": 1024, "num_features": NUM_FEATURES,
           "repeats": repeats, "steps_per_block": number}

    # ---- the same network in both frameworks, same initial parameters ------------------------
    mlp = nets.ResidualMLP(features=256, num_blocks=3, time_dim=128)
    rng = np.random.RandomState(0)
    x_np = rng.randn(1024, NUM_FEATURES).astype(np.float32)
    params = mlp.init(jax.random.key(1), x_np[:2], jnp.ones(2))["params"]
    tmodel = torch_ref.TorchResidualMLP(NUM_FEATURES, features=256, num_blocks=3, time_dim=128)
    n_jax = int(sum(np.size(v) for v in jax.tree.leaves(params)))
    n_torch = torch_ref.num_params(tmodel)
    assert n_jax == n_torch, (n_jax, n_torch)
    out["num_params"] = {"adiff": n_jax, "torch": n_torch}
    # Forward check with random (non-zero) parameters: the zero-initialised output layer would
    # make any two networks agree.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    rand = jax.tree.unflatten(treedef, [0.1 * jax.random.normal(k, v.shape)
                                        for k, v in zip(keys, leaves)])
    torch_ref.load_flax_params(tmodel, rand)
    t_chk = np.linspace(1e-3, 1.0, 256, dtype=np.float32)
    y_j = np.asarray(mlp.apply({"params": rand}, x_np[:256], t_chk))
    with torch.no_grad():
        y_t = tmodel(torch.from_numpy(x_np[:256].copy()), torch.from_numpy(t_chk)).numpy()
    out["forward_max_abs_diff"] = float(np.max(np.abs(y_j - y_t)))
    assert out["forward_max_abs_diff"] < 1e-3 * max(1.0, float(np.max(np.abs(y_j)))), out
    torch_ref.load_flax_params(tmodel, params)  # both start from adiff's initialisation

    # ---- adiff: the jitted train step exactly as the throughput worker times it (1 device) ----
    vp = sde_lib.VPSDE()
    mesh = sharding.make_mesh(1)

    def loss_fn(p, batch, kk):
        o = losses.dsm_loss(lambda xt, t: mlp.apply({"params": p}, xt, t), vp, batch, kk)
        return o.loss, {}

    tx = _optimizer()
    step = training.make_train_step(loss_fn, tx, mesh=mesh)
    state0 = training.create_train_state(params, tx)
    holder = [jax.device_put(state0, sharding.state_sharding(mesh, state0))]
    batch = sharding.shard_batch(x_np, mesh)
    key = jax.random.key(0)

    def adiff_train():
        holder[0], m = step(holder[0], batch, key)
        jax.block_until_ready(m)

    xs_np = rng.randn(8192, NUM_FEATURES).astype(np.float32)
    rep = sharding.replicated_sharding(mesh)
    p_rep = jax.device_put(params, rep)
    xs = sharding.shard_batch(xs_np, mesh)
    ts = sharding.shard_batch(np.full(8192, 0.3, np.float32), mesh)
    fwd = jax.jit(lambda p, x, t: mlp.apply({"params": p}, x, t))
    adiff_score = lambda: jax.block_until_ready(fwd(p_rep, xs, ts))

    # ---- torch -------------------------------------------------------------------------------
    x_t = torch.from_numpy(x_np.copy())
    tstep = torch_ref.TorchTrainStep(tmodel)
    out["torch_optimizer"] = f"AdamW({tstep.optimizer_impl})"
    torch_train = lambda: tstep(x_t)
    xs_t = torch.from_numpy(xs_np.copy())
    ts_t = torch.full((8192,), 0.3)
    smodel = torch_ref.TorchResidualMLP(NUM_FEATURES, features=256, num_blocks=3, time_dim=128)
    torch_ref.load_flax_params(smodel, params)
    smodel.eval()

    def torch_score():
        with torch.inference_mode():
            smodel(xs_t, ts_t)

    train_fns = {"adiff": adiff_train, "torch_eager": torch_train}
    score_fns = {"adiff": adiff_score, "torch_eager": torch_score}
    compile_s = {}
    if compile_torch:
        try:
            cmodel = torch_ref.TorchResidualMLP(NUM_FEATURES, features=256, num_blocks=3,
                                                time_dim=128)
            torch_ref.load_flax_params(cmodel, params)
            cstep = torch_ref.TorchTrainStep(cmodel, compile=True)
            t0 = time.perf_counter()
            for _ in range(3):
                cstep(x_t)
            compile_s["train"] = time.perf_counter() - t0
            smodel_c = torch.compile(smodel)
            t0 = time.perf_counter()
            with torch.inference_mode():
                for _ in range(3):
                    smodel_c(xs_t, ts_t)
            compile_s["score"] = time.perf_counter() - t0

            def torch_score_c():
                with torch.inference_mode():
                    smodel_c(xs_t, ts_t)

            train_fns["torch_compile"] = lambda: cstep(x_t)
            score_fns["torch_compile"] = torch_score_c
            out["torch_compile_warmup_s"] = compile_s
        except Exception as e:  # pylint: disable=broad-except
            out["torch_compile_skipped"] = f"{type(e).__name__}: {str(e)[:300]}"
    else:
        out["torch_compile_skipped"] = "disabled (--torch_compile=false)"

    t0 = time.perf_counter()
    for fn in (*train_fns.values(), *score_fns.values()):  # warm-up (adiff: compile)
        for _ in range(3):
            fn()
    out["warmup_s"] = time.perf_counter() - t0

    def alternate(fns):
        times = {k: [] for k in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                time.sleep(0.1)  # let the other framework's worker threads go idle
                t0 = time.perf_counter()
                for _ in range(number):
                    fn()
                times[name].append((time.perf_counter() - t0) / number * 1e3)
        return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v)}
                for k, v in times.items()}

    out["train"] = alternate(train_fns)
    out["score"] = alternate(score_fns)
    for kind, rows in (("train", 1024), ("score", 8192)):
        base = out[kind]["adiff"]["median_ms"]
        for name, r in out[kind].items():
            r["rows_per_s"] = rows / r["median_ms"] * 1e3
            r["ratio_to_adiff"] = r["median_ms"] / base
    out["torch_train_steps_skipped_nonfinite"] = tstep.skipped
    out["load_average_at_end"] = list(os.getloadavg())
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
    parser.add_argument("--torch", default="true", choices=["true", "false"],
                        help="run the PyTorch comparison (skipped with a message without torch)")
    parser.add_argument("--torch_compile", default="true", choices=["true", "false"],
                        help="also time a torch.compile'd train step and scoring")
    parser.add_argument("--torch_repeats", type=int, default=7)
    parser.add_argument("--torch_cpus", default="all,1",
                        help="comma list of CPU counts for the PyTorch comparison ('all' = every "
                             "schedulable core); each runs in its own subprocess pinned to that many "
                             "cores, so XLA's pool and torch's intra-op threads match")
    parser.add_argument("--cpus", default="all", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["rss", "throughput", "fit", "torch"], default=None)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--path", default="")
    args = parser.parse_args(argv)

    if args.worker is not None:
        if args.cpus != "all":  # before jax / torch start their thread pools
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(args.cpus)])
        from absl import flags  # pylint: disable=import-outside-toplevel
        flags.FLAGS.mark_as_parsed()
        if args.worker == "fit":
            _fit_and_save(args.path)
            result = {"saved": args.path}
        elif args.worker == "torch":
            result = _worker_torch(compile_torch=args.torch_compile == "true",
                                   repeats=args.torch_repeats, number=5)
        elif args.worker == "rss":
            result = _worker_rss(args.path, args.n)
        else:
            result = _worker_throughput()
        print(json.dumps(result), flush=True)
        return

    report = {"command": "python -m experiments.benchmarks.scale "
                         + " ".join(sys.argv[1:] if argv is None else argv),
              "load_average_at_start": list(os.getloadavg()),
              "recommended_command": COMMAND,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "detector": _detector_kwargs(), "num_features": NUM_FEATURES, "memory": [],
              "throughput": []}
    sizes = [int(float(v)) for v in args.sizes.split(",") if v]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "det")
        if sizes:
            _subprocess(["--worker=fit", f"--path={path}"])
        for n in sizes:
            r = _subprocess(["--worker=rss", f"--path={path}", f"--n={n}"])
            print(json.dumps(r), flush=True)
            report["memory"].append(r)
    for k in (int(v) for v in args.devices.split(",") if v):
        r = _subprocess(["--worker=throughput"],
                        {"XLA_FLAGS": f"--xla_force_host_platform_device_count={k}"})
        print(json.dumps(r), flush=True)
        report["throughput"].append(r)
    if args.torch == "true":
        if _torch_available():
            report["torch"] = []
            for cpus in (v for v in args.torch_cpus.split(",") if v):
                r = _subprocess(["--worker=torch", f"--torch_compile={args.torch_compile}",
                                 f"--torch_repeats={args.torch_repeats}", f"--cpus={cpus}"])
                print(json.dumps(r), flush=True)
                report["torch"].append(r)
        else:
            msg = ("torch is not installed: PyTorch comparison skipped "
                   "(pip install -e .[bench] installs torch==2.13.0)")
            print(msg, flush=True)
            report["torch"] = {"skipped": msg}
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
