"""adiff: diffusion models for anomaly detection and anomaly generation, in JAX/Flax.

The curated public API. Names are resolved lazily (PEP 562) so that `import adiff` stays cheap
and a submodule is imported only when used:

    import adiff
    det = adiff.TabularDetector(scoring="dte", contamination=0.1, seed=0).fit(X_train)
    scores = det.decision_function(X_test)
    det.save(path); det2 = adiff.load(path)

    from adiff import sde as sde_lib, likelihood, solvers, scoring, metrics
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # detectors (PyOD-compatible)
    "BaseDetector": "adiff.detectors.base",
    "TabularDetector": "adiff.detectors.tabular",
    "ImageDetector": "adiff.detectors.image",
    "ImageAnalysis": "adiff.detectors.image",
    "MultimodalDetector": "adiff.detectors.multimodal",
    "MultimodalScores": "adiff.detectors.multimodal",
    "TimeSeriesDetector": "adiff.detectors.timeseries",
    "VideoDetector": "adiff.detectors.video",
    "load": "adiff.detectors.base",
    # anomaly generation
    "AnomalyGenerator": "adiff.generation",
    "GenerationOutput": "adiff.generation",
    "augment": "adiff.generation",
    # diffusion foundations
    "VPSDE": "adiff.sde",
    "SubVPSDE": "adiff.sde",
    "VESDE": "adiff.sde",
    "GaussianMixture": "adiff.analytic",
    "log_prob": "adiff.likelihood",
    "AnomalyScores": "adiff.scoring",
    "TrainConfig": "adiff.training.trainer",
    "CheckpointError": "adiff.training.trainer",
    "fit": "adiff.training.trainer",
}
_SUBMODULES = ("analytic", "data", "detectors", "generation", "likelihood", "losses", "metrics", "nets", "noise",
               "parameterization", "scoring", "sde", "sharding", "solvers", "training", "validation")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"adiff.{name}")
    raise AttributeError(f"module 'adiff' has no attribute {name!r}")


def __dir__():
    return __all__
