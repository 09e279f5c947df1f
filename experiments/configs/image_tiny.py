"""A tiny image config for tests, colab fast mode and install checks (seconds on 2 CPU cores)."""
from experiments.configs import image_magnetic_tile


def get_config():
    c = image_magnetic_tile.get_config()
    c.size = 16
    c.detector.base_channels = 8
    c.detector.channel_mults = (1, 2)
    c.detector.groups = 4
    c.detector.train_steps = 60
    c.detector.batch_size = 16
    c.detector.ema_decay = 0.9
    c.detector.score_batch_size = 32
    return c
