"""PyOD contract, persistence and input validation of the detectors (tiny configs)."""
import json
import pathlib

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

import adiff
from adiff import metrics

TINY = dict(train_steps=60, batch_size=64, hidden=32, num_blocks=1, dte_hidden=(32, 32), solver_steps=4,
            t0=(0.2,), score_batch_size=128)


def _data(seed=0, n=300, d=4):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, d))
    outliers = rng.normal(size=(20, d)) * 0.5 + 5.0
    return X, np.concatenate([rng.normal(size=(80, d)), outliers]), np.r_[np.zeros(80), np.ones(20)]


@pytest.fixture(scope="module")
def fitted():
    X, X_test, y_test = _data()
    det = adiff.TabularDetector(scoring="dte", contamination=0.1, seed=0, **TINY).fit(X)
    return det, X, X_test, y_test


def test_pyod_contract(fitted):
    det, X, X_test, y_test = fitted
    # the attributes and shapes PyOD code relies on
    assert det.decision_scores_.shape == (len(X),)
    assert det.labels_.shape == (len(X),) and set(np.unique(det.labels_)) <= {0, 1}
    assert np.isscalar(det.threshold_)
    assert abs(det.labels_.mean() - 0.1) < 0.03  # about `contamination` of the training data
    s = det.decision_function(X_test)
    assert s.shape == (len(X_test),) and s.dtype == np.float64
    np.testing.assert_array_equal(det.predict(X_test), (s > det.threshold_).astype(int))
    for method in ("linear", "unify"):
        p = det.predict_proba(X_test, method=method)
        assert p.shape == (len(X_test), 2)
        np.testing.assert_allclose(p.sum(1), 1.0)
        assert ((p >= 0) & (p <= 1)).all()
    labels, conf = det.predict(X_test, return_confidence=True)
    assert conf.shape == labels.shape and ((conf >= 0) & (conf <= 1)).all()
    assert metrics.auroc(y_test, s) > 0.9  # far outliers are found even by a tiny model
    # scikit-learn / PyOD style parameter handling
    params = det.get_params()
    assert params["scoring"] == "dte" and params["contamination"] == 0.1
    assert clone(det).get_params() == params


def test_same_calls_as_a_pyod_detector(fitted):
    from pyod.models.knn import KNN
    det, X, X_test, _ = fitted
    ref = KNN(contamination=0.1).fit(X)
    for attr in ("decision_scores_", "threshold_", "labels_", "contamination"):
        assert hasattr(det, attr) and hasattr(ref, attr)
    for call in ("decision_function", "predict", "predict_proba", "fit_predict"):
        assert callable(getattr(det, call)) and callable(getattr(ref, call))
    assert det.decision_function(X_test).shape == ref.decision_function(X_test).shape


def test_save_load_gives_identical_scores(fitted, tmp_path):
    det, _, X_test, _ = fitted
    det.save(tmp_path / "det")
    cfg = json.loads((tmp_path / "det" / "adiff.json").read_text())
    assert cfg["format"] == "adiff-detector" and cfg["class"] == "TabularDetector"
    det2 = adiff.load(tmp_path / "det")
    np.testing.assert_array_equal(det2.decision_function(X_test), det.decision_function(X_test))
    assert det2.threshold_ == det.threshold_
    np.testing.assert_array_equal(det2.decision_scores_, det.decision_scores_)
    with pytest.raises(ValueError, match="not empty"):
        det.save(tmp_path / "det")


def test_load_refuses_foreign_and_corrupt_directories(fitted, tmp_path):
    det, *_ = fitted
    with pytest.raises(ValueError, match="adiff.json"):
        adiff.load(tmp_path)
    (tmp_path / "adiff.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        adiff.load(tmp_path)
    (tmp_path / "adiff.json").write_text(json.dumps({"format": "pickle"}))
    with pytest.raises(ValueError, match="format"):
        adiff.load(tmp_path)
    det.save(tmp_path / "ok")
    cfg_path = tmp_path / "ok" / "adiff.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["class"] = "os.system"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="class"):
        adiff.load(tmp_path / "ok")
    cfg["class"] = "TabularDetector"
    cfg["params"]["dte_hidden"] = [48, 32]  # the arrays no longer match the configuration
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape"):
        adiff.load(tmp_path / "ok")


def test_a_planted_pickle_is_never_executed(fitted, tmp_path):
    import pickle

    det, _, X_test, _ = fitted
    det.save(tmp_path / "d")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    for where in (tmp_path / "d" / "arrays" / "evil.pkl", tmp_path / "d" / "model.pkl"):
        where.write_bytes(pickle.dumps(Evil()))
    try:
        det2 = adiff.load(tmp_path / "d")
        np.testing.assert_array_equal(det2.decision_function(X_test), det.decision_function(X_test))
    except ValueError:
        pass  # refusing the directory is fine too; executing the pickle is not
    assert not marker.exists()


@pytest.mark.parametrize("bad, exc, match", [
    (np.zeros((0, 4)), ValueError, "empty"),
    (np.full((5, 4), np.inf), ValueError, "inf"),
    (np.zeros((5, 3)), ValueError, "columns"),
    (np.zeros(4), ValueError, "2-D"),
])
def test_bad_input_is_a_clear_error(fitted, bad, exc, match):
    det, *_ = fitted
    with pytest.raises(exc, match=match):
        det.decision_function(bad)


def test_bad_parameters():
    X, *_ = _data()
    with pytest.raises(ValueError, match="scoring"):
        adiff.TabularDetector(scoring="magic").fit(X)
    with pytest.raises(ValueError, match="contamination"):
        adiff.TabularDetector(contamination=0.7).fit(X)
    with pytest.raises(RuntimeError, match="not fitted"):
        adiff.TabularDetector().decision_function(X)


def test_mixed_types_and_missing_values():
    rng = np.random.RandomState(0)
    n = 200
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                       "color": rng.choice(["red", "green"], size=n), "flag": rng.rand(n) > 0.5})
    df.loc[::7, "a"] = np.nan
    det = adiff.TabularDetector(scoring="dte_np", **TINY).fit(df)
    test = df.iloc[:10].copy()
    test.loc[test.index[0], "color"] = "purple"  # unseen category: scored, not an error
    test.loc[test.index[1], "b"] = 40.0  # an outlier
    s = det.decision_function(test)
    assert s.shape == (10,) and np.isfinite(s).all()
    assert s[1] == s.max()
    with pytest.raises(ValueError, match="columns"):
        det.decision_function(df.drop(columns=["flag"]))


def test_chunked_scoring_equals_one_pass(fitted):
    import copy

    det, _, X_test, _ = fitted
    big = np.concatenate([X_test] * 7)  # 700 rows
    chunked = copy.copy(det)  # the same fitted state; only the scoring batch (and chunk) differ
    chunked._scorers = {}
    chunked.score_batch_size = 8
    assert chunked._score_chunk_rows() == 128 < len(big)
    ref = det.decision_function(big)  # one pass: 700 rows < 16 * 128
    np.testing.assert_allclose(chunked.decision_function(big), ref, rtol=1e-6)
    df = pd.DataFrame(big, columns=[f"x{i}" for i in range(big.shape[1])])
    np.testing.assert_allclose(chunked.decision_function(df), ref, rtol=1e-6)
