"""adiff.metrics against the TSB-AD 1.5 reference implementation (skipped when TSB-AD is absent).

Install the reference for this test only: `pip install --no-deps TSB-AD==1.5`. Its metric module
is loaded by file path, so TSB-AD's own heavy dependencies (torch, ...) are not needed; the period
check additionally needs statsmodels. adiff itself never imports TSB-AD.
"""
import importlib.util
import pathlib

import numpy as np
import pytest

from adiff import metrics


def _load(relative: str, name: str):
    spec = importlib.util.find_spec("TSB_AD")
    if spec is None or spec.origin is None:
        pytest.skip("TSB-AD is not installed (pip install --no-deps TSB-AD==1.5)")
    path = pathlib.Path(spec.origin).parent / relative
    if not path.is_file():
        pytest.skip(f"TSB-AD file {path} not found")
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tsb():
    return _load("evaluation/basic_metrics.py", "_tsb_ad_basic_metrics")


def _random_case(rng):
    n = int(rng.integers(30, 700))
    y = np.zeros(n, dtype=int)
    for _ in range(int(rng.integers(1, 7))):
        s = int(rng.integers(0, n))
        y[s:s + int(rng.integers(1, 40))] = 1
    if y.all():
        y[0] = 0
    scores = rng.normal(size=n) + rng.uniform(0, 2) * y
    if rng.random() < 0.4:
        scores = np.round(scores, 1)  # ties
    return y, scores


@pytest.mark.parametrize("seed", range(4))
def test_vus_matches_tsb_ad_random(tsb, seed):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        y, s = _random_case(rng)
        window = int(rng.integers(0, 60))
        *_, ref_roc, ref_pr = tsb.generate_curve(y, s, window)
        assert metrics.vus_roc(y, s, sliding_window=window) == pytest.approx(ref_roc, abs=1e-10)
        assert metrics.vus_pr(y, s, sliding_window=window) == pytest.approx(ref_pr, abs=1e-10)


def test_vus_matches_tsb_ad_structured(tsb):
    rng = np.random.default_rng(7)
    n = 400
    cases = []
    # Ranges touching both ends, adjacent ranges, single points, buffers that overlap.
    y = np.zeros(n, int)
    y[:5] = 1
    y[100:101] = 1
    y[103:110] = 1
    y[390:] = 1
    cases.append((y, rng.normal(size=n) + y))
    cases.append((y, y.astype(float)))  # perfect, all ties
    cases.append((y, np.zeros(n)))  # constant scores
    cases.append((y, -y + 0.1 * rng.normal(size=n)))  # inverted detector
    periodic = np.sin(np.arange(n) / 5.0)
    cases.append((y, periodic))
    y_short = np.array([0, 1, 1, 0, 0, 1, 0, 0])  # fewer points than thresholds
    cases.append((y_short, rng.normal(size=y_short.size)))
    for y_c, s_c in cases:
        for window in (0, 1, 2, 15, 125):
            *_, ref_roc, ref_pr = tsb.generate_curve(y_c, s_c, window)
            assert metrics.vus_roc(y_c, s_c, sliding_window=window) == pytest.approx(
                ref_roc, abs=1e-10)
            assert metrics.vus_pr(y_c, s_c, sliding_window=window) == pytest.approx(
                ref_pr, abs=1e-10)


def test_range_precision_recall_matches_tsb_ad(tsb):
    rng = np.random.default_rng(3)
    grader = tsb.basic_metricor()
    for _ in range(20):
        y, s = _random_case(rng)
        pred = (s > np.quantile(s, rng.uniform(0.5, 0.98))).astype(int)
        if not pred.any():
            continue
        ref_recall = grader.range_recall_new(y, pred, 0.2)[0]
        ref_precision = grader.range_recall_new(pred, y, 0)[0]
        res = metrics.range_precision_recall(y, pred, alpha=0.2)
        assert res.recall == pytest.approx(ref_recall, abs=1e-12)
        assert res.precision == pytest.approx(ref_precision, abs=1e-12)


def test_point_adjust_matches_tsb_ad(tsb):
    rng = np.random.default_rng(4)
    grader = tsb.basic_metricor()
    for _ in range(20):
        y, s = _random_case(rng)
        thr = np.quantile(s, rng.uniform(0.3, 0.99))
        ref = grader._adjust_predicts(s, y, pred=(s >= thr).copy())
        ours = metrics.point_adjust(y, s) >= thr
        np.testing.assert_array_equal(ours, ref.astype(bool))


def test_estimate_period_matches_tsb_ad():
    pytest.importorskip("statsmodels")
    sliding = _load("utils/slidingWindows.py", "_tsb_ad_sliding_windows")
    rng = np.random.default_rng(5)
    for trial in range(16):
        n = int(rng.integers(200, 25000))
        t = np.arange(n)
        period = int(rng.integers(3, 340))
        kind = trial % 4
        if kind == 0:
            x = np.sin(2 * np.pi * t / period) + rng.normal(scale=rng.uniform(0, 2), size=n)
        elif kind == 1:
            x = rng.normal(size=n)
        elif kind == 2:
            x = np.cumsum(rng.normal(size=n))
        else:
            x = ((t % period) < period / 3).astype(float) + 0.1 * rng.normal(size=n)
        assert metrics.vus_window(x) == sliding.find_length_rank(x, rank=1)
