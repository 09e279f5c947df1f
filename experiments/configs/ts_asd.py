"""ASD (InterFusion): one entity, 19 metrics, 5-minute steps; train file / test file."""
from experiments.configs import ts_default


def get_config():
    c = ts_default.get_config()
    c.dataset = "asd:omi-1"
    return c
