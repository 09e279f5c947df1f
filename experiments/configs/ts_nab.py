"""NAB: univariate; the probationary period (min(floor(0.15 n), 750) points) trains, so training is short: fewer steps and batch 32."""
from experiments.configs import ts_default


def get_config():
    c = ts_default.get_config()
    c.dataset = "nab:realKnownCause/nyc_taxi.csv"
    c.detector.train_steps = 400
    c.detector.batch_size = 32
    c.baselines = ("IForest", "KNN")
    return c
