"""Determinism: the same seed gives bit-identical scores (tabular, time series) on one machine.

Two independent fits per detector with the same seed must agree bit for bit (training scores and
scores of new data); a different seed must change them (so the check can fail). Time budget:
~25 s on an idle 2-core machine (tiny configs); the reconstruction case is marked slow.
"""
import numpy as np
import pytest

from adiff.detectors.tabular import TabularDetector
from adiff.detectors.timeseries import TimeSeriesDetector

TAB = dict(train_steps=15, batch_size=32, hidden=16, num_blocks=1, dte_hidden=(16,),
           solver_steps=2, t0=(0.2,), score_batch_size=32)
TS = dict(scoring="imputation", window=16, score_stride=8, channels=8, num_blocks=1,
          dilations=(1,), num_heads=2, time_dim=8, train_steps=10, batch_size=16,
          solver_steps=2, num_levels=1, score_batch_size=32)


def _table(seed, n):
    return np.random.RandomState(seed).randn(n, 3).astype(np.float32)


def _series(seed, n):
    rng = np.random.RandomState(seed)
    return (np.sin(np.arange(n) / 4.0) + 0.1 * rng.randn(n)).astype(np.float32)


@pytest.mark.parametrize("scoring", ["dte", pytest.param("reconstruction", marks=pytest.mark.slow)])
def test_tabular_same_seed_bit_identical(scoring):
    train, test = _table(0, 96), _table(1, 40)
    runs = [TabularDetector(scoring=scoring, seed=s, **TAB).fit(train) for s in (3, 3, 4)]
    a, b, c = (r.decision_function(test) for r in runs)
    assert a.dtype == np.float64 and a.shape == (40,)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(runs[0].decision_scores_, runs[1].decision_scores_)
    assert runs[0].threshold_ == runs[1].threshold_
    # Scoring twice with the same fitted detector is also bit-identical.
    np.testing.assert_array_equal(a, runs[0].decision_function(test))
    assert not np.array_equal(a, c), "another seed gave identical scores"


def test_timeseries_same_seed_bit_identical():
    train, test = _series(0, 160), _series(1, 64)
    runs = [TimeSeriesDetector(seed=s, **TS).fit(train) for s in (2, 2, 5)]
    a, b, c = (r.decision_function(test) for r in runs)
    assert a.shape == (64,)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(runs[0].decision_scores_, runs[1].decision_scores_)
    np.testing.assert_array_equal(a, runs[1].decision_function(test))
    assert not np.array_equal(a, c), "another seed gave identical scores"
