"""ImageDetector on MNIST (test split) one-vs-rest: 80% of the normal digit trains (seeded)."""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.kind = "image"
    c.dataset = "mnist"
    c.images = "../shared/data/image/mnist/t10k-images-idx3-ubyte.gz"
    c.labels = "../shared/data/image/mnist/t10k-labels-idx1-ubyte.gz"
    c.digits = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
    c.normal_class = 0  # the launcher's normal digit (the benchmark script runs --digits)
    c.seed = 0  # --mode=evaluate; --mode=benchmark runs every seed in `seeds`
    c.seeds = (0,)
    c.baselines = ("PCA", "KNN")
    c.train_fraction = 0.8
    c.detector = ml_collections.ConfigDict(dict(
        contamination=0.1,
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        groups=8,
        train_steps=1000,
        batch_size=32,
        learning_rate=2e-3,
        ema_decay=0.995,
        solver="ddim",
        solver_steps=10,
        t0=(0.5,),
        map_scales=(1, 2),
        map_sigma=1.0,
        image_score="mean",
        score_batch_size=128,
    ))
    # The denoising-error scorer (scoring="denoise"): mid-range times carry the digit's shape. The
    # band was chosen in an exploratory run on digit 2 (seed 0); the other digits never informed it.
    c.denoise = ml_collections.ConfigDict(dict(
        scoring="denoise",
        t0=(0.3, 0.4, 0.5, 0.6, 0.7),
        repeats=8,
        map_sigma=0.0,
        image_score="mean",
    ))
    return c
