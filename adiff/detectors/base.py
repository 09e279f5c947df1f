"""PyOD-compatible detector base class with orbax + JSON persistence (never pickle).

Contract (PyOD's BaseDetector): `fit(X, y=None)` sets `decision_scores_` (scores of the training
data), `threshold_` (the (1 - contamination) quantile of them) and `labels_`;
`decision_function(X)` returns one float per sample, higher = more anomalous; `predict(X)` is
`decision_function(X) > threshold_`; `predict_proba(X, method="linear"|"unify")` returns [N, 2].
Detectors derive from scikit-learn's BaseEstimator, so `get_params`/`set_params`/`clone` work and a
detector drops into PyOD / ADBench / scikit-learn pipelines.

A saved detector is a directory:
  adiff.json   {"format": "adiff-detector", "version": 1, "class": ..., "params": {...}, "meta": {...}}
  arrays/      an orbax StandardCheckpointer tree of the fitted arrays (network parameters, ...)
Loading reads the JSON (validated), rebuilds the detector from its constructor parameters, builds
the expected array shapes from the metadata and restores the arrays against them: a directory from
elsewhere with unknown format, missing files or mismatched shapes is refused with a ValueError and
nothing in it is executed or unpickled.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Dict, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from scipy.special import erf
from sklearn.base import BaseEstimator

from adiff import validation
from adiff.detectors import supervision

FORMAT = "adiff-detector"
VERSION = 1

__all__ = ["BaseDetector", "load", "FORMAT", "VERSION"]


class BaseDetector(BaseEstimator):
    """Base class of adiff detectors. Subclasses implement the hooks marked below.

    Hooks:
      _fit(X, y): train on validated X.
      _decision_function(X): np.ndarray [N] of anomaly scores (higher = more anomalous).
      _prepare(X, *, fitting): validate/convert raw input to what _fit/_decision_function take.
      _export() -> (meta: JSON-able dict, arrays: pytree of numpy arrays).
      _abstract_arrays(meta) -> pytree of jax.ShapeDtypeStruct matching `arrays` of _export.
      _import(meta, arrays): restore the fitted state.
    """

    # -- hooks -------------------------------------------------------------------------------
    def _prepare(self, X, *, fitting: bool):
        raise NotImplementedError

    def _fit(self, X, y=None) -> None:
        raise NotImplementedError

    def _decision_function(self, X) -> np.ndarray:
        raise NotImplementedError

    def _training_scores(self, data) -> np.ndarray:
        """Scores of the training data for decision_scores_ (override to leave each row out)."""
        return self._decision_function(data)

    def _export(self) -> Tuple[Dict[str, Any], Any]:
        raise NotImplementedError

    def _abstract_arrays(self, meta: Dict[str, Any]):
        raise NotImplementedError

    def _import(self, meta: Dict[str, Any], arrays) -> None:
        raise NotImplementedError

    # -- PyOD contract -----------------------------------------------------------------------
    def _check_contamination(self) -> float:
        return validation.check_fraction(self.contamination, name="contamination", low=0.0, high=0.5)

    def fit(self, X, y=None, *, anomalies=None):
        """Fits the detector on X (normal data, or contaminated data in unsupervised mode).

        Args:
          X: training data (see the subclass for the accepted shapes and types).
          y: ignored (PyOD convention), kept for API compatibility.
          anomalies: optional anomaly examples (e.g. made by `adiff.AnomalyGenerator`): after the
            unsupervised fit, a supervised head is trained on them against normal training data
            and the score becomes z + softplus(logit) (`adiff.detectors.supervision`). Format: like
            X for TabularDetector (rows) and ImageDetector (images, all anomalous; an image-level
            head on pooled anomaly-map statistics, maps unchanged); (series [T', C], step labels
            [T']) for TimeSeriesDetector. Other detectors refuse it.

        Returns:
          self, with `decision_scores_`, `threshold_` and `labels_` set.
        """
        self._check_contamination()
        validation.check_size(X, name="X")  # before pandas/astype copies a huge input
        self._check_head_support(anomalies)
        data = self._prepare(X, fitting=True)
        self.head_ = None
        self._fit(data, y)
        self.decision_scores_ = np.asarray(self._training_scores(data), np.float64)
        self._process_decision_scores()
        if anomalies is not None:
            self._fit_head(data, anomalies)
        return self

    # -- semi-supervised head (fit(X, anomalies=...)) ------------------------------------------
    def _supports_head(self) -> bool:
        return type(self)._head_features is not BaseDetector._head_features

    def _check_head_support(self, anomalies) -> None:
        if anomalies is not None and not self._supports_head():
            raise ValueError(f"{type(self).__name__} does not take anomalies= (a supervised head); "
                             f"TabularDetector, TimeSeriesDetector and ImageDetector do")

    def _scores_and_head_features(self, data) -> Tuple[np.ndarray, np.ndarray]:
        """Unsupervised scores [N] and head features [N, F] of prepared data (override to get
        both from one scoring pass)."""
        return np.asarray(self._decision_function(data), np.float64), self._head_features(data)

    def _head_features(self, data) -> np.ndarray:
        """[N, F] features of prepared data for the supervised head (subclass hook)."""
        raise NotImplementedError

    def _head_anomaly_features(self, anomalies) -> np.ndarray:
        """[M, F] features of the anomaly examples passed to fit (default: prepared like X)."""
        validation.check_size(anomalies, name="anomalies")
        return self._head_features(self._prepare(anomalies, fitting=False))

    def fit_head(self, X, anomalies):
        """(Re)trains only the supervised head of a fitted detector, keeping its unsupervised model.

        Args:
          X: the training data the detector was fitted on (its normal examples and training
            scores are recomputed from it).
          anomalies: anomaly examples, as for `fit(X, anomalies=...)`; None removes the head.

        Returns:
          self; `decision_scores_`, `threshold_` and `labels_` are updated.
        """
        self._check_fitted()
        self._check_head_support(anomalies)
        validation.check_size(X, name="X")
        data = self._prepare(X, fitting=False)
        self.head_ = None
        scores = np.asarray(self._training_scores(data), np.float64)
        if scores.shape != self.decision_scores_.shape:
            raise ValueError(f"X must be the training data of the detector: it has {len(scores)} "
                             f"samples, the fit had {len(self.decision_scores_)}")
        self.decision_scores_ = scores
        self._process_decision_scores()
        if anomalies is not None:
            self._fit_head(data, anomalies)
        return self

    def _fit_head(self, data, anomalies) -> None:
        feats = np.asarray(self._head_features(data), np.float32)
        n_cal = int(getattr(self, "n_calibration_", 0))
        normal = feats[-n_cal:] if 0 < n_cal < len(feats) else feats
        anom = np.asarray(self._head_anomaly_features(anomalies), np.float32)
        head = supervision.fit_head(normal, anom, seed=self.seed)
        head["z_loc"] = float(self._mu)
        head["z_scale"] = float(self._sigma) if self._sigma > 0 else 1.0
        self.head_ = head
        self.decision_scores_ = self._with_head(self.decision_scores_, feats)
        self._process_decision_scores()

    def _with_head(self, scores: np.ndarray, features: np.ndarray) -> np.ndarray:
        """z + softplus(logit): the unsupervised scores standardised by the reference statistics
        of the unsupervised fit, plus the head's evidence log(1 + likelihood ratio) >= 0."""
        h = self.head_
        z = (np.asarray(scores, np.float64) - h["z_loc"]) / h["z_scale"]
        return supervision.combine(z, supervision.head_logits(h, features))

    def unsupervised_scores(self, X) -> np.ndarray:
        """Scores of X by the unsupervised model alone (decision_function when no head)."""
        self._check_fitted()
        head, self.head_ = getattr(self, "head_", None), None
        try:
            return self.decision_function(X)
        finally:
            self.head_ = head

    def _process_decision_scores(self) -> None:
        """`threshold_` and the predict_proba statistics from the training scores.

        Detectors that hold the last `n_calibration_` training rows out of network training set
        that attribute: those rows' scores (normal data the networks never saw, as test data)
        then define the threshold and statistics, since the networks score their own training
        rows low. Otherwise every training score is used.
        """
        ref = self.decision_scores_
        n_cal = int(getattr(self, "n_calibration_", 0))
        if 0 < n_cal < len(ref):
            ref = ref[-n_cal:]
        self.threshold_ = float(np.quantile(ref, 1.0 - self._check_contamination()))
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(int)
        self._mu = float(np.mean(ref))
        self._sigma = float(np.std(ref))

    def _check_fitted(self) -> None:
        if not hasattr(self, "decision_scores_"):
            raise RuntimeError(f"This {type(self).__name__} is not fitted yet; call fit(X) first")

    def _score_chunk_rows(self) -> int | None:
        """Rows preprocessed and scored at a time in decision_function (None: all at once).

        Detectors whose samples are independent rows set this so that memory stays flat in N:
        only one chunk is ever converted and encoded; just the float64 scores of all N are kept.
        """
        return None

    def decision_function(self, X) -> np.ndarray:
        """Anomaly scores of X, one float per sample; higher = more anomalous."""
        self._check_fitted()
        validation.check_size(X, name="X")
        rows = self._score_chunk_rows()
        n = len(X) if hasattr(X, "__len__") else None
        if rows and n and n > rows:
            take = (lambda a, b: X.iloc[a:b]) if hasattr(X, "iloc") else (lambda a, b: X[a:b])
            return np.concatenate([self._score_rows(take(i, i + rows)) for i in range(0, n, rows)])
        return self._score_rows(X)

    def _score_rows(self, X) -> np.ndarray:
        data = self._prepare(X, fitting=False)
        if getattr(self, "head_", None) is not None:
            return self._with_head(*self._scores_and_head_features(data))
        return np.asarray(self._decision_function(data), np.float64)

    def predict(self, X, return_confidence: bool = False):
        """0/1 labels (1 = anomaly) by `threshold_`; optionally PyOD's confidence in each label."""
        scores = self.decision_function(X)
        labels = (scores > self.threshold_).astype(int)
        if return_confidence:
            return labels, self._confidence(scores, labels)
        return labels

    def fit_predict(self, X, y=None):
        return self.fit(X, y).labels_

    def predict_proba(self, X, method: str = "linear", return_confidence: bool = False):
        """Probability of being an outlier, [N, 2] (columns: normal, outlier), as in PyOD.

        Args:
          X: data to score.
          method: "linear" (min-max scaling by the training scores, clipped to [0, 1]) or
            "unify" (Kriegel et al. 2011: Gaussian scaling by the training scores' mean and std).
          return_confidence: also return PyOD's confidence of the predicted labels.
        """
        validation.check_choice(method, ("linear", "unify"), name="method")
        scores = self.decision_function(X)
        train = self.decision_scores_
        if method == "linear":
            span = float(train.max() - train.min())
            p = (scores - train.min()) / (span if span > 0 else 1.0)
            p = np.clip(p, 0.0, 1.0)
        else:
            sigma = self._sigma if self._sigma > 0 else 1.0
            p = np.clip(erf((scores - self._mu) / (sigma * math.sqrt(2.0))), 0.0, 1.0)
        proba = np.stack([1.0 - p, p], axis=1)
        if return_confidence:
            return proba, self._confidence(scores, (scores > self.threshold_).astype(int))
        return proba

    def _confidence(self, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        # PyOD's ExCeeD-style confidence: probability that the label would stay the same.
        from scipy.stats import binom
        n = len(self.decision_scores_)
        count = np.searchsorted(np.sort(self.decision_scores_), scores, side="right")
        p = (1 + count) / (2 + n)
        k = int(round(n * (1 - self.contamination)))
        conf = 1 - binom.cdf(n - k, n, p)
        return np.where(labels == 1, conf, 1 - conf)

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Saves the fitted detector to a new directory `path` (orbax arrays + JSON; no pickle)."""
        self._check_fitted()
        path = pathlib.Path(path).absolute()
        if path.exists() and any(path.iterdir()):
            raise ValueError(f"path {str(path)!r} exists and is not empty; choose a new directory")
        path.mkdir(parents=True, exist_ok=True)
        meta, arrays = self._export()
        meta = dict(meta)
        meta.update(threshold_=self.threshold_, _mu=self._mu, _sigma=self._sigma)
        arrays = {"model": arrays, "decision_scores_": np.asarray(self.decision_scores_)}
        head = getattr(self, "head_", None)
        if head is not None:
            meta["head"] = {"width": int(np.asarray(head["loc"]).shape[0]), "z_loc": head["z_loc"],
                            "z_scale": head["z_scale"]}
            arrays["head"] = {k: head[k] for k in ("params", "loc", "scale")}
        config = {"format": FORMAT, "version": VERSION, "class": type(self).__name__,
                  "params": _jsonable(self.get_params(deep=False)), "meta": _jsonable(meta)}
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(path / "arrays", arrays)
            ckpt.wait_until_finished()
        (path / "adiff.json").write_text(json.dumps(config, indent=2))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a detector's JSON config: {obj!r}")


def _detector_classes():
    # The closed set of classes `load` may rebuild; looked up by name from the JSON, never imported
    # from a path or module name found in the file.
    from adiff import detectors
    return {name: getattr(detectors, name) for name in detectors.__all__
            if isinstance(getattr(detectors, name), type)
            and issubclass(getattr(detectors, name), BaseDetector)
            and getattr(detectors, name) is not BaseDetector}


def load(path: str | os.PathLike) -> BaseDetector:
    """Loads a detector saved by `save` (or an AnomalyGenerator saved by its `save`).

    Validates the JSON and every array's shape.

    Raises:
      ValueError: the directory is missing, not an adiff detector, of another version, or its
        arrays do not match the configuration.
    """
    path, cfg_file, config = validation.read_saved_config(path, what="adiff detector")
    if isinstance(config, dict) and config.get("format") == "adiff-generator":
        # A saved AnomalyGenerator: same conventions (JSON + orbax, no pickle), its own loader.
        from adiff.generation import AnomalyGenerator  # pylint: disable=import-outside-toplevel
        return AnomalyGenerator.load(path)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{str(cfg_file)!r} has format {config.get('format') if isinstance(config, dict) else None!r}; "
                         f"expected {FORMAT!r}")
    if config.get("version") != VERSION:
        raise ValueError(f"{str(cfg_file)!r} has version {config.get('version')!r}; this adiff reads {VERSION}")
    classes = _detector_classes()
    name = config.get("class")
    if name not in classes:
        raise ValueError(f"{str(cfg_file)!r} names class {name!r}; expected one of {sorted(classes)}")
    params, meta = config.get("params"), config.get("meta")
    if not isinstance(params, dict) or not isinstance(meta, dict):
        raise ValueError(f"{str(cfg_file)!r} lacks the 'params' and 'meta' objects")
    try:
        det = classes[name](**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
    except TypeError as e:
        raise ValueError(f"{str(cfg_file)!r} has parameters that {name} does not accept: {e}") from None
    try:
        n_scores = int(meta.get("n_train", -1))
        for key in ("threshold_", "_mu", "_sigma"):
            if not isinstance(meta.get(key), (int, float)) or isinstance(meta.get(key), bool):
                raise ValueError(f"meta[{key!r}] must be a number, got {meta.get(key)!r}")
        target = {"model": det._abstract_arrays(meta),
                  "decision_scores_": jax.ShapeDtypeStruct((n_scores,), np.float64)}
        head_meta = meta.get("head")
        if head_meta is not None:
            if not det._supports_head():
                raise ValueError(f"{name} has no supervised head, but meta['head'] is set")
            width = int(head_meta["width"])
            if width < 1:
                raise ValueError(f"meta['head']['width'] must be >= 1, got {width}")
            for key in ("z_loc", "z_scale"):
                if not isinstance(head_meta.get(key), (int, float)) or isinstance(head_meta.get(key), bool):
                    raise ValueError(f"meta['head'][{key!r}] must be a number, got {head_meta.get(key)!r}")
            target["head"] = supervision.abstract_head(width)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        # Edited or foreign 'params'/'meta': a missing key, a wrong type, an invalid value.
        raise ValueError(f"{str(cfg_file)!r} has an invalid configuration for {name}: "
                         f"{type(e).__name__}: {e}") from None
    arrays = validation.restore_saved_arrays(path, target)
    try:
        det._import(meta, jax.tree.map(np.asarray, arrays["model"]))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ValueError(f"{str(cfg_file)!r} has an invalid configuration for {name}: "
                         f"{type(e).__name__}: {e}") from None
    det.head_ = None
    if head_meta is not None:
        det.head_ = dict(jax.tree.map(np.asarray, arrays["head"]), z_loc=float(head_meta["z_loc"]),
                         z_scale=float(head_meta["z_scale"]))
    det.decision_scores_ = np.asarray(arrays["decision_scores_"], np.float64)
    det.threshold_ = float(meta["threshold_"])
    det._mu, det._sigma = float(meta["_mu"]), float(meta["_sigma"])
    det.labels_ = (det.decision_scores_ > det.threshold_).astype(int)
    return det
