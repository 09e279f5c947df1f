r"""GPU benchmark of the U-Net at realistic sizes: train-step samples/s and model FLOP utilisation,
scoring (partial-diffusion DDIM reconstruction) and likelihood (PF-ODE, Hutchinson) throughput.

  python -m experiments.benchmarks.gpu [--peak_tflops=989] [--sizes=64,128,256] [--batch=64]
      [--dtype=bfloat16] [--out=docs/results/gpu.json]

Run it where a GPU is lent (it refuses to run on CPU unless --allow_cpu, which is only for a
smoke test: --allow_cpu --sizes=16 --batch=2 --base_channels=8 --score_batch=2 --likelihood_batch=1). For each image size: a UNet (base 128, mults (1, 2, 2, 2),
2 residual blocks, attention at 16x16; base 64 at 256x256), one full
`adiff.training.make_train_step` step (DSM eps loss, VP SDE, forward + backward + AdamW + EMA,
donated state) over all local devices (data-parallel mesh); FLOPs per step from XLA's compiled
cost analysis; MFU = achieved FLOP/s / (peak per device x devices). Peak: --peak_tflops, else a
table by device kind (dense bf16 tensor-core figures), else a measured matmul. Scoring: images/s
of a jitted DDIM reconstruction from t0 = 0.3 with 10 steps. Likelihood: images/s of
`adiff.likelihood.log_prob` with the Hutchinson divergence (1 probe), fixed tolerances.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from experiments.benchmarks.timing import median_time

REPO = pathlib.Path(__file__).resolve().parents[2]

# Dense peak TFLOP/s per device (bf16 tensor cores), by substrings of jax's device_kind.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0,
               "V100": 125.0, "T4": 65.0, "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5": 459.0}




def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float((cost or {}).get("flops", float("nan")))


def _peak(args, jax, jnp) -> tuple[float, str]:
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "--peak_tflops"
    kind = jax.devices()[0].device_kind
    for k, v in PEAK_TFLOPS.items():
        if k.lower() in kind.lower():
            return v * 1e12, f"table ({kind})"
    n = 8192 if jax.default_backend() != "cpu" else 512  # CPU: smoke tests only
    a = jnp.ones((n, n), jnp.bfloat16)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    t = median_time(lambda: dot(a, a).block_until_ready())
    return 2 * n ** 3 / t, f"measured bf16 matmul ({kind})"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="64,128,256")
    p.add_argument("--batch", type=int, default=64, help="global batch per train step")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--peak_tflops", type=float, default=0.0)
    p.add_argument("--score_batch", type=int, default=64)
    p.add_argument("--likelihood_batch", type=int, default=16)
    p.add_argument("--skip_likelihood", action="store_true")
    p.add_argument("--allow_cpu", action="store_true")
    p.add_argument("--base_channels", type=int, default=0,
                   help="override the U-Net width (0: 128, or 64 at >= 256 px); small for smoke tests")
    p.add_argument("--out", default=str(REPO / "docs" / "results" / "gpu.json"))
    args = p.parse_args(argv)

    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.FLAGS.mark_as_parsed()
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import optax  # pylint: disable=import-outside-toplevel
    from adiff import likelihood, losses, nets, parameterization, sharding, solvers, training  # pylint: disable=import-outside-toplevel
    from adiff import sde as sde_lib  # pylint: disable=import-outside-toplevel

    if jax.default_backend() == "cpu" and not args.allow_cpu:
        sys.exit("no accelerator: jax.default_backend() is 'cpu' (use --allow_cpu for a smoke test)")
    peak, peak_src = _peak(args, jax, jnp)
    ndev = jax.local_device_count()
    mesh = sharding.make_mesh()
    vp = sde_lib.VPSDE()
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    report = {"command": "python -m experiments.benchmarks.gpu " + " ".join(sys.argv[1:]),
              "device": jax.devices()[0].device_kind, "devices": ndev, "backend": jax.default_backend(),
              "jax": jax.__version__, "dtype": args.dtype, "peak_flops_per_device": peak,
              "peak_source": peak_src, "rows": []}
    for size in (int(s) for s in args.sizes.split(",")):
        base = args.base_channels or (64 if size >= 256 else 128)
        unet = nets.UNet(base_channels=base, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                         attention_resolutions=(16,), groups=32 if base >= 64 else 4,
                         time_dim=4 * base, num_heads=4)
        rng = np.random.RandomState(0)
        batch = args.batch - args.batch % ndev or ndev
        x = rng.rand(batch, size, size, 3).astype(np.float32) * 2 - 1
        params = unet.init(jax.random.key(0), x[:1], jnp.ones(1))["params"]
        n_params = int(sum(np.prod(v.shape) for v in jax.tree.leaves(params)))

        def apply(p, xt, t):
            p = jax.tree.map(lambda a: a.astype(dtype), p)
            return unet.apply({"params": p}, xt.astype(dtype), t).astype(jnp.float32)

        def loss_fn(p, xb, key):
            return losses.dsm_loss(lambda xt, t: apply(p, xt, t), vp, xb, key).loss, {}

        tx = optax.adamw(1e-4)
        step = training.make_train_step(loss_fn, tx, mesh=mesh)
        state = training.create_train_state(params, tx)
        state = jax.device_put(state, sharding.state_sharding(mesh, state))
        xb = sharding.shard_batch(x, mesh)
        key = jax.random.key(1)
        flops = _flops(step.lower(state, xb, key).compile())
        box = [state]

        def one():
            box[0], m = step(box[0], xb, key)
            m["loss"].block_until_ready()

        for _ in range(3):
            one()
        sec = median_time(one)
        row = {"size": size, "params": n_params, "batch": batch, "train_step_ms": sec * 1e3,
               "train_samples_per_s": batch / sec, "flops_per_step": flops,
               "mfu": flops / sec / (peak * ndev)}

        # Scoring: partial diffusion to t0 = 0.3 and 10 DDIM steps back (per-image error).
        ema = box[0].ema_params
        score_fn = parameterization.score_fn_from(lambda xt, t: apply(ema, xt, t), vp, "eps")
        sb = args.score_batch - args.score_batch % ndev or ndev
        xs = sharding.shard_batch(rng.rand(sb, size, size, 3).astype(np.float32) * 2 - 1, mesh)

        @jax.jit
        def reconstruct(xq, k):
            xt = solvers.partial_noise(vp, xq, 0.3, k)
            out = solvers.solve(score_fn, vp, xt, None, method="ddim", num_steps=10,
                                t_start=0.3)
            return jnp.mean(jnp.square(out.x - xq), axis=(1, 2, 3))

        try:
            reconstruct(xs, key).block_until_ready()
            ssec = median_time(lambda: reconstruct(xs, key).block_until_ready(), repeats=3, number=2)
            row["scoring_images_per_s"] = sb / ssec
        except TypeError as e:  # solver keyword names differ: record instead of failing the run
            row["scoring_error"] = str(e)

        if not args.skip_likelihood:
            lb = args.likelihood_batch
            xl = jnp.asarray(rng.rand(lb, size, size, 3).astype(np.float32) * 2 - 1)
            t0 = time.perf_counter()
            out = likelihood.log_prob(score_fn, vp, xl, key, divergence="hutchinson",
                                      rtol=1e-3, atol=1e-3)
            jax.block_until_ready(out)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            jax.block_until_ready(likelihood.log_prob(score_fn, vp, xl, key,
                                                      divergence="hutchinson", rtol=1e-3, atol=1e-3))
            row["likelihood_images_per_s"] = lb / (time.perf_counter() - t0)
            row["likelihood_first_call_s"] = first
        print(json.dumps(row), flush=True)
        report["rows"].append(row)
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
