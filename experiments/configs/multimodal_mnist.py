"""Multimodal benchmark 1: MNIST test images + caption tokens (adiff.data.multimodal)."""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.benchmark = "mnist_captions"
    c.kind = "multimodal"
    c.seed = 0
    c.seeds = (0, 1, 2)  # --mode=benchmark runs every seed (--mode=evaluate: `seed`)
    c.data_root = "../shared/data"  # relative to the repository root
    c.fusion = "dynamic"
    c.baselines = ("KNN concat",)
    c.data = ml_collections.ConfigDict(dict(n_train=8000, n_test_normal=1000, n_per_kind=300, patch=10))
    c.modalities = {"image": "image", "caption": "text"}
    c.missing_key = "caption"      # the modality dropped for 30% of the test samples
    c.missing_fraction = 0.3
    # which modalities carry each anomaly kind's evidence (for the missing-modality ceiling)
    c.evidence = {"mismatch": ("image", "caption"), "corrupt_image": ("image",), "garbled_caption": ("caption",)}
    c.detector = ml_collections.ConfigDict(dict(
        embed_dim=16, proj_dim=32, hidden=128, num_blocks=2, encoder_steps=1500,
        diffusion_steps=3000, gate_steps=500, batch_size=256, learning_rate=1e-3, drop_rate=0.3,
        calibration_fraction=0.2, fusion_temperature=1.0, gate_bound=1.0, num_draws=4, score_batch_size=1024))
    return c
