"""A tiny generation config for tests and the colab's fast mode (seconds on 2 CPU cores)."""
from experiments.configs import generation_magnetic_tile


def get_config():
    c = generation_magnetic_tile.get_config()
    c.size = 16
    c.generator.train_steps = 40
    c.generator.batch_size = 8
    c.generator.width = 8
    c.generator.groups = 4
    c.generator.num_steps = 5
    c.num_generated = 16
    c.segmenter.steps = 20
    c.table.seeds = (0,)
    c.table.train_steps = 40
    c.table.num_generated = 50
    c.image_head.detector_overrides = dict(train_steps=20, base_channels=8, channel_mults=(1, 2),
                                           groups=4, t0=(0.2, 0.4), repeats=1)
    c.pixel_head.steps = 20
    c.table.datasets = ("Stamps",)
    c.table.num_labelled = 5
    c.series.seeds = (0,)
    c.series.max_test_runs = 2
    c.series.train_steps = 20
    c.series.num_steps = 4
    c.series.width = 8
    c.series.num_generated = 8
    c.series.detector_overrides = dict(train_steps=20, channels=8, num_blocks=2, window=16,
                                       score_stride=8, scoring="denoising")
    return c
