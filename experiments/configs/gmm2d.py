"""Toy 2-D Gaussian mixture: a ResidualMLP eps-model under the VP SDE (1,500 steps, ~15 s on 2 CPU cores).

Run: python -m experiments.main --mode=train --config=experiments/configs/gmm2d.py \
       --workdir=/tmp/gmm2d [--config.train.num_steps=50]
"""
import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.kind = "score_model"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.num_samples = 8192
    c.data.num_components = 4     # equal-weight components on a circle
    c.data.radius = 2.0
    c.data.variance = 0.05

    c.sde = ml_collections.ConfigDict()
    c.sde.beta_min = 0.1
    c.sde.beta_max = 20.0

    c.model = ml_collections.ConfigDict()
    c.model.features = 128
    c.model.num_blocks = 3
    c.model.time_dim = 64
    c.model.dropout = 0.0
    c.model.parameterization = "eps"

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1500
    c.train.batch_size = 512
    c.train.learning_rate = 3e-3
    c.train.warmup_steps = 50
    c.train.schedule = "cosine"
    c.train.weight_decay = 0.0
    c.train.grad_clip_norm = config_dict.placeholder(float)
    c.train.grad_clip_norm = 1.0
    c.train.ema_decay = 0.99
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 2
    c.train.seed = 0

    c.sample = ml_collections.ConfigDict()
    c.sample.method = "ddim"
    c.sample.num_samples = 2048
    c.sample.num_steps = 100
    c.sample.use_ema = True
    return c
