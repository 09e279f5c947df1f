"""A tiny tabular config for tests and install checks (seconds on 2 CPU cores)."""
from experiments.configs import tabular_default


def get_config():
    c = tabular_default.get_config()
    c.detector.train_steps = 60
    c.detector.hidden = 32
    c.detector.num_blocks = 1
    c.detector.dte_hidden = (32, 32)
    c.baselines = ("KNN",)
    return c
