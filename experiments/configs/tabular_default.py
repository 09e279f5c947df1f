"""Default job: TabularDetector on scikit-learn's bundled breast-cancer table (no download).

The task is arranged like ADBench's breastw: benign tumours are normal, malignant ones anomalous;
semi-supervised split (half of the normal rows, shuffled with the seed, train; the rest plus all
anomalies test), StandardScaler-like scaling fitted on the training part inside the detector.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.kind = "tabular"
    c.dataset = "sklearn_breast_cancer"  # or "adbench:<path to .npz>", "odds:<path to .mat>"
    c.seed = 0
    c.seeds = (0,)  # mode=benchmark runs every seed
    c.detector = ml_collections.ConfigDict(dict(
        scoring="density_np",  # the library default, chosen by the benchmark (docs/results/tabular.md)
        contamination=0.1,
        train_steps=1500,
        batch_size=128,
        learning_rate=1e-3,
        hidden=256,
        num_blocks=3,
        num_bins=7,
        k=5,
    ))
    c.baselines = ("KNN", "IForest")  # PyOD baselines run side by side
    return c
