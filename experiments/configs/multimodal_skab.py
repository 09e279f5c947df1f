"""Multimodal benchmark 2: SKAB windows, vibration vs process sensor groups."""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.benchmark = "skab_groups"
    c.kind = "multimodal"
    c.seed = 0
    c.seeds = (0, 1, 2)  # --mode=benchmark runs every seed (--mode=evaluate: `seed`)
    c.data_root = "../shared/data"  # relative to the repository root
    c.fusion = "dynamic"
    c.baselines = ("KNN concat",)
    c.data = ml_collections.ConfigDict(dict(length=32, train_stride=4, test_stride=8))
    c.modalities = {"vibration": "series", "process": "series"}
    c.missing_key = "vibration"
    c.missing_fraction = 0.3
    c.evidence = {}  # SKAB faults show in both sensor groups: no ceiling is assumed
    c.detector = ml_collections.ConfigDict(dict(
        embed_dim=16, proj_dim=32, hidden=128, num_blocks=2, encoder_steps=1500,
        diffusion_steps=3000, gate_steps=500, batch_size=256, learning_rate=1e-3, drop_rate=0.3,
        calibration_fraction=0.2, fusion_temperature=1.0, gate_bound=1.0, num_draws=4, score_batch_size=1024))
    return c
