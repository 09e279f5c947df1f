"""Tiny tabular score-model run: resume tests and install checks (about a minute on 2 CPU cores).

A ResidualMLP eps-model under the VP SDE, trained by denoising score matching on a fixed synthetic
table (a seeded two-cluster Gaussian mixture with correlated features), checkpointing every few
steps. Launched by `experiments/train_tiny.py`:

  python -m experiments.train_tiny --config=experiments/configs/tiny.py --workdir=/tmp/tiny
  # kill it (kill -9 or kill -TERM) and run the same command again: it resumes, and
  # /tmp/tiny/final_metrics.json records the global step and the SHA-256 of the final params.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.num_rows = 2048
    c.data.num_features = 8

    c.model = ml_collections.ConfigDict()
    c.model.features = 64
    c.model.num_blocks = 2
    c.model.time_dim = 32

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 6000
    c.train.batch_size = 64
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 20
    c.train.schedule = "cosine"
    c.train.weight_decay = 0.0
    c.train.grad_clip_norm = 1.0
    c.train.ema_decay = 0.99
    c.train.log_every = 50
    c.train.checkpoint_every = 100
    c.train.keep_checkpoints = 2
    c.train.seed = 0

    # Test knob: seconds of sleep per training batch while loading it (slows a run down so a test
    # can interrupt it at a chosen step; it changes nothing in the computation). 0 in real use.
    c.step_delay_s = 0.0
    return c
