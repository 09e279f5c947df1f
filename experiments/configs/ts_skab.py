"""SKAB: one network on anomaly-free.csv (8 sensors, 1 s steps), tested on a labelled run."""
from experiments.configs import ts_default


def get_config():
    c = ts_default.get_config()
    c.dataset = "skab:valve1/0"
    return c
