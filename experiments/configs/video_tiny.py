"""A tiny video config for tests and the colab's fast mode (16 x 16 procedural clips)."""
from experiments.configs import video_procedural


def get_config():
    c = video_procedural.get_config()
    c.size = 16
    c.num_frames = 20
    c.num_train = 8
    c.num_test = 2
    c.detector.base_channels = 8
    c.detector.groups = 4
    c.detector.train_steps = 300
    c.detector.ema_decay = 0.9
    c.detector.topk = 0.05
    return c
