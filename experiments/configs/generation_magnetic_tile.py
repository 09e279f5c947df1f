"""Anomaly generation benchmark config: Magnetic tile at 32 px + one ADBench table (cardio)."""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.size = 32
    c.train_defect_fraction = 1.0 / 3.0   # per defect type: this share trains the generator
    c.generator = ml_collections.ConfigDict(dict(
        train_steps=1500, batch_size=32, learning_rate=1e-3, ema_decay=0.995, p_uncond=0.2,
        num_steps=25, width=16, channel_mults=(1, 2), groups=8, anomaly_fraction=0.5))
    c.guidance = 2.0
    c.num_generated = 240                 # generated defects for the downstream segmenter
    c.segmenter = ml_collections.ConfigDict(dict(steps=600, batch_size=32, width=16, lr=2e-3))
    c.table = ml_collections.ConfigDict(dict(
        dataset="cardio", seeds=(0, 1, 2), num_labelled=10, num_generated=500,
        train_steps=1500, guidance=2.0))
    return c
