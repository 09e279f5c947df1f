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
    return c
