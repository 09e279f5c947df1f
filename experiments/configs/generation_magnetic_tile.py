"""Anomaly generation benchmark config: Magnetic tile at 32 px + one ADBench table (cardio)."""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.size = 32
    c.train_defect_fraction = 1.0 / 3.0   # per defect type: this share trains the generator
    c.generator = ml_collections.ConfigDict(dict(
        train_steps=1500, batch_size=32, learning_rate=1e-3, ema_decay=0.995, p_uncond=0.2,
        num_steps=25, width=16, channel_mults=(1, 2), groups=8, anomaly_fraction=0.5,
        context=False))  # --generator_context: condition on the clean surroundings
    c.guidance = 2.0
    c.num_generated = 240                 # generated defects for the downstream segmenter
    c.segmenter = ml_collections.ConfigDict(dict(steps=600, batch_size=32, width=16, lr=2e-3))
    # ImageDetector + head part: the detector of experiments/configs/image_magnetic_tile.py
    # (detector + denoise settings) with these overrides (none at full size).
    c.image_head = ml_collections.ConfigDict(dict(detector_overrides={}))
    # Pixel-level head on the same detector's maps (image_pixel_head part): the segmenter net on
    # [image, log map per denoise time, combined log map], trained like the segmenter above.
    c.pixel_head = ml_collections.ConfigDict(dict(steps=600, batch_size=32, width=16, lr=2e-3))
    c.table = ml_collections.ConfigDict(dict(
        datasets=("cardio", "satellite"), seeds=(0, 1, 2), num_labelled=10, num_generated=500,
        train_steps=20000, guidance=2.0, clip_x0=5.0, max_train=20000))
    # SKAB downstream: the detector of experiments/configs/ts_skab.py; the first run of each
    # folder gives the few labelled anomalies (those runs leave the test set).
    c.series = ml_collections.ConfigDict(dict(
        labelled_runs=("other/1", "valve1/0", "valve2/0"), seeds=(0,), max_test_runs=40,
        labelled_stride=16, normal_stride=8, train_steps=1500, num_steps=25, width=32,
        num_generated=96, guidance=2.0, detector_overrides={}))
    return c
