"""Score-model training job: a ResidualMLP eps-model on a 2-D Gaussian mixture (configs/gmm2d.py).

Trains with adiff.training.fit (orbax checkpoints, automatic resume from the workdir), then samples
with adiff.solvers and writes samples.png and sample_metrics.json.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

from absl import logging


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixtureDataConfig:
    """Equal-weight isotropic Gaussians on a circle (2-D)."""
    num_samples: int
    num_components: int
    radius: float
    variance: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class MLPModelConfig:
    features: int
    num_blocks: int
    time_dim: int
    dropout: float
    parameterization: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleConfig:
    method: str
    num_samples: int
    num_steps: int
    use_ema: bool


def train_score_model(config, workdir: str) -> None:
    """Trains a ResidualMLP eps-model on a 2-D Gaussian mixture; saves a checkpoint and a PNG."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    from adiff import analytic, losses, nets, parameterization, sharding, solvers  # pylint: disable=import-outside-toplevel
    from adiff import sde as sde_lib  # pylint: disable=import-outside-toplevel
    from adiff import training  # pylint: disable=import-outside-toplevel

    data_cfg = MixtureDataConfig(**config.data.to_dict())
    model_cfg = MLPModelConfig(**config.model.to_dict())
    sample_cfg = SampleConfig(**config.sample.to_dict())
    train_cfg = training.TrainConfig(**config.train.to_dict())
    vp = sde_lib.VPSDE(beta_min=config.sde.beta_min, beta_max=config.sde.beta_max)

    k = data_cfg.num_components
    angles = 2 * math.pi * np.arange(k) / k
    means = data_cfg.radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    mixture = analytic.GaussianMixture.create(np.ones(k), means, data_cfg.variance)
    key_data, key_init, key_sample = jax.random.split(jax.random.key(config.seed), 3)
    data = np.asarray(mixture.sample(key_data, data_cfg.num_samples))

    model = nets.ResidualMLP(features=model_cfg.features, num_blocks=model_cfg.num_blocks,
                             time_dim=model_cfg.time_dim, dropout=model_cfg.dropout)
    params = model.init(key_init, data[:2], jnp.ones(2))["params"]
    kind = model_cfg.parameterization

    def loss_fn(p, x, key):
        key_loss, key_drop = jax.random.split(key)
        apply = lambda xt, t: model.apply({"params": p}, xt, t, train=True,
                                          rngs={"dropout": key_drop})
        out = losses.dsm_loss(apply, vp, x, key_loss, parameterization=kind)
        return out.loss, {}

    # Data-parallel over every device (all processes' with --multihost): each process feeds its
    # slice of every global batch; a single device trains without a mesh.
    mesh = sharding.make_mesh() if jax.device_count() > 1 else None
    result = training.fit(loss_fn, params, data, config=train_cfg, workdir=workdir, mesh=mesh)
    p_final = result.state.ema_params if sample_cfg.use_ema else result.state.params
    if mesh is not None:  # replicated global arrays -> host copies; sampling then runs locally
        p_final = jax.tree.map(np.asarray, p_final)
    model_fn = lambda x, t: model.apply({"params": p_final}, x, t)
    shape = (sample_cfg.num_samples, 2)

    score_fn = parameterization.score_fn_from(model_fn, vp, kind)
    samples = np.asarray(solvers.sample(score_fn, vp, shape, key_sample, method=sample_cfg.method,
                                        num_steps=sample_cfg.num_steps).x)

    ref = np.asarray(mixture.sample(jax.random.fold_in(key_sample, 1), shape[0]))
    summary = {
        "step": int(result.state.step),
        "sample_mean_true_logp": float(np.mean(np.asarray(mixture.log_prob(samples)))),
        "data_mean_true_logp": float(np.mean(np.asarray(mixture.log_prob(ref)))),
        "sample_median_true_logp": float(np.median(np.asarray(mixture.log_prob(samples)))),
        "data_median_true_logp": float(np.median(np.asarray(mixture.log_prob(ref)))),
        "sampler": f"adiff.solvers.sample(method={sample_cfg.method!r})",
        "params_sha256": training.tree_sha256(result.state.params),
        "process_count": jax.process_count(),
        "written_by_process": jax.process_index(),
    }
    if jax.process_index() != 0:  # only process 0 writes results and plots
        return
    with open(os.path.join(workdir, "sample_metrics.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)

    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    axes[0].scatter(ref[:, 0], ref[:, 1], s=2, alpha=0.5)
    axes[0].set_title("data")
    axes[1].scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5, color="tab:orange")
    axes[1].set_title(f"samples ({sample_cfg.method}, {sample_cfg.num_steps} steps)")
    lim = data_cfg.radius + 1.5
    axes[0].set_xlim(-lim, lim)
    axes[0].set_ylim(-lim, lim)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "samples.png"), dpi=100)
    plt.close(fig)
    logging.info("train: %s", summary)
    print(json.dumps(summary), flush=True)
    print(f"wrote {os.path.join(workdir, 'sample_metrics.json')} and samples.png", flush=True)
