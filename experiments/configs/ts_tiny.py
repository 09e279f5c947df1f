"""A tiny time-series config for tests, notebooks and install checks (seconds on 2 CPU cores)."""
from experiments.configs import ts_default


def get_config():
    c = ts_default.get_config()
    c.dataset = "synthetic"
    c.detector.window = 16
    c.detector.score_stride = 4
    c.detector.channels = 8
    c.detector.num_blocks = 2
    c.detector.train_steps = 150
    c.detector.batch_size = 32
    c.detector.solver_steps = 4
    c.detector.num_levels = 2
    c.detector.dilations = (1, 2)
    c.detector.num_heads = 2
    c.detector.time_dim = 16
    c.baselines = ("KNN",)
    return c
