"""Tests for adiff.metrics (host numpy metrics; no JAX compilation involved)."""
import numpy as np
import pytest
from sklearn import metrics as skm

from adiff import metrics


def _segment_labels(n, starts, length):
    y = np.zeros(n, dtype=int)
    for s in starts:
        y[s:s + length] = 1
    return y


# ------------------------------------------------------------------------------------------
# Point-wise metrics
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_auroc_auprc_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounding creates ties
    assert metrics.auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-6)
    assert metrics.auprc(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-6)
    # Boolean labels and float32 scores are accepted.
    assert metrics.auroc(y.astype(bool), s.astype(np.float32)) == pytest.approx(
        skm.roc_auc_score(y, s.astype(np.float32)), abs=1e-6)


def test_auroc_direction():
    y = np.array([0, 0, 1, 1])
    assert metrics.auroc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.auroc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_best_f1_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 12
    y = rng.integers(0, 2, n)
    y[0] = 1
    s = rng.integers(0, 5, n).astype(float)  # many ties
    best = -1.0
    for thr in np.unique(s):
        best = max(best, skm.f1_score(y, s >= thr))
    res = metrics.best_f1(y, s)
    assert res.f1 == pytest.approx(best, abs=1e-12)
    pred = s >= res.threshold
    assert res.precision == pytest.approx(skm.precision_score(y, pred), abs=1e-12)
    assert res.recall == pytest.approx(skm.recall_score(y, pred), abs=1e-12)
    assert metrics.f1_at_threshold(y, s, res.threshold) == pytest.approx(res.f1, abs=1e-12)


def test_f1_at_threshold_matches_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 50)
    s = rng.normal(size=50)
    for thr in (-0.5, 0.0, 0.7, 10.0):
        assert metrics.f1_at_threshold(y, s, thr) == pytest.approx(
            skm.f1_score(y, s >= thr, zero_division=0.0), abs=1e-12)


def test_point_adjust_hand_case():
    y = np.array([0, 1, 1, 1, 0, 1, 1])
    s = np.array([5., 1., 3., 2., 0., 4., 0.])
    np.testing.assert_array_equal(metrics.point_adjust(y, s), [5., 3., 3., 3., 0., 4., 4.])


def test_point_adjusted_f1_inflates_random_detector():
    rng = np.random.default_rng(0)
    y = _segment_labels(2000, range(100, 2000, 400), 100)  # 25% anomalous, long segments
    s = rng.normal(size=y.size)  # a detector that knows nothing
    plain = metrics.best_f1(y, s)
    adjusted = metrics.point_adjusted_f1(y, s)
    assert plain.f1 < 0.45  # about 2 * 0.25 / 1.25, predicting everything
    assert adjusted.f1 > 0.9  # point adjustment turns a few lucky hits into whole segments
    # With the same threshold, adjusted predictions are a superset of the raw ones.
    raw_f1 = metrics.f1_at_threshold(y, s, adjusted.threshold)
    assert adjusted.f1 > raw_f1


@pytest.mark.parametrize("seed", range(3))
def test_point_adjusted_f1_at_least_best_f1(seed):
    rng = np.random.default_rng(seed)
    y = _segment_labels(400, rng.choice(380, 4, replace=False), 15)
    s = rng.normal(size=y.size) + 0.8 * y
    assert metrics.point_adjusted_f1(y, s).f1 >= metrics.best_f1(y, s).f1 - 1e-12


# ------------------------------------------------------------------------------------------
# Image metrics
# ------------------------------------------------------------------------------------------
def test_pixel_auroc_matches_sklearn():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 8, 8)) < 0.2
    maps = rng.normal(size=(3, 8, 8)) + masks
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(
        skm.roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-6)


def _two_region_masks():
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[0, 1:3, 1:3] = True  # region A
    masks[1, 3:5, 2:6] = True  # region B (other image)
    return masks


def test_aupro_perfect_map_is_one():
    masks = _two_region_masks()
    rng = np.random.default_rng(0)
    maps = np.where(masks, 2.0 + rng.random(masks.shape), rng.random(masks.shape))
    assert metrics.aupro(masks, maps) == pytest.approx(1.0, abs=1e-12)


def test_aupro_one_of_two_regions():
    masks = _two_region_masks()
    rng = np.random.default_rng(1)
    region_a = np.zeros_like(masks)
    region_a[0] = masks[0]
    # Region A above everything, region B below every normal pixel: PRO stays 1/2 up to FPR 1.
    maps = np.where(region_a, 2.0, np.where(masks, -1.0, rng.random(masks.shape)))
    assert metrics.aupro(masks, maps) == pytest.approx(0.5, abs=1e-12)
    # B tied with all normal pixels: the curve jumps from (0, 1/2) to (1, 1); the trapezoid up
    # to 0.3 is 0.3 * (0.5 + 0.65) / 2, normalised by 0.3.
    maps_tied = np.where(region_a, 1.0, 0.0)
    assert metrics.aupro(masks, maps_tied) == pytest.approx(0.575, abs=1e-12)


def test_aupro_hand_computed():
    masks = np.array([[[1, 1, 0], [0, 0, 0]]], dtype=bool)
    maps = np.array([[[0.9, 0.5, 0.8], [0.1, 0.2, 0.3]]])
    # Curve (FPR, PRO): (0,0) (0,.5) (.25,.5) (.25,1) (.5,1) (.75,1) (1,1).
    assert metrics.aupro(masks, maps, fpr_limit=0.5) == pytest.approx(0.75, abs=1e-12)
    assert metrics.aupro(masks, maps) == pytest.approx((0.125 + 0.05) / 0.3, abs=1e-12)
    assert metrics.aupro(masks, maps, fpr_limit=0.1) == pytest.approx(0.5, abs=1e-12)
    # Second region pixel after two false positives: curve (0,0) (0,.5) (.25,.5) (.5,.5) (.5,1)
    # ..., so PRO is 1/2 on [0, 0.3].
    maps2 = np.array([[[0.9, 0.4, 0.8], [0.5, 0.2, 0.3]]])
    assert metrics.aupro(masks, maps2) == pytest.approx(0.5, abs=1e-12)


def test_aupro_uses_8_connectivity():
    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, 1, 1] = masks[0, 1, 2] = masks[0, 2, 1] = True  # L-shape
    masks[0, 3, 2] = True  # touches (2, 1) only diagonally: one 8-connected region of 4 pixels
    maps = np.where(masks, -1.0, 0.0)
    maps[0, 3, 2] = 1.0  # only the diagonal pixel is detected
    # 8-connected: one region, PRO 1/4 until FPR 1 -> 0.25 (4-connected would give 0.5).
    assert metrics.aupro(masks, maps) == pytest.approx(0.25, abs=1e-12)


def test_aupro_thresholds_approximate_exact():
    rng = np.random.default_rng(2)
    masks = np.zeros((4, 16, 16), dtype=bool)
    masks[:, 4:9, 5:11] = True
    masks[2, 12:15, 1:4] = True
    maps = rng.normal(size=masks.shape) + 1.5 * masks
    exact = metrics.aupro(masks, maps)
    approx = metrics.aupro(masks, maps, num_thresholds=2000)
    assert 0.1 < exact < 0.99
    assert approx == pytest.approx(exact, abs=0.01)


# ------------------------------------------------------------------------------------------
# Range-based precision / recall
# ------------------------------------------------------------------------------------------
def test_range_precision_recall_hand_cases():
    y = np.array([0, 1, 1, 1, 1, 0, 0, 1, 1, 0])
    p = np.array([0, 1, 1, 0, 0, 0, 0, 0, 1, 1])
    r = metrics.range_precision_recall(y, p)
    assert r.recall == pytest.approx(0.5)  # (2/4 + 1/2) / 2
    assert r.precision == pytest.approx(0.75)  # (2/2 + 1/2) / 2
    assert r.f1 == pytest.approx(2 * 0.5 * 0.75 / 1.25)
    assert metrics.range_precision_recall(y, p, alpha=0.5).recall == pytest.approx(0.75)


def test_range_precision_recall_cardinality_and_bias():
    y = np.array([1, 1, 1, 1, 0])
    p = np.array([1, 0, 1, 0, 0])  # two predicted ranges inside one true range
    assert metrics.range_precision_recall(y, p).recall == pytest.approx(0.25)
    assert metrics.range_precision_recall(y, p, cardinality="one").recall == pytest.approx(0.5)
    p2 = np.array([1, 1, 0, 0, 0])
    assert metrics.range_precision_recall(y, p2, bias="front").recall == pytest.approx(0.7)
    assert metrics.range_precision_recall(y, p2, bias="back").recall == pytest.approx(0.3)
    assert metrics.range_precision_recall(y, np.zeros(5, int)).precision == 0.0


# ------------------------------------------------------------------------------------------
# VUS
# ------------------------------------------------------------------------------------------
def test_vus_perfect_scores():
    rng = np.random.default_rng(0)
    y = _segment_labels(600, [0, 150, 400, 590], 10)  # ranges at both ends too
    noisy = y + 0.01 * rng.random(y.size)
    perfect = y.astype(float)
    for w in (0, 7, 40):
        assert metrics.vus_pr(y, perfect, sliding_window=w) == pytest.approx(1.0, abs=1e-12)
        assert metrics.vus_roc(y, perfect, sliding_window=w) == pytest.approx(1.0, abs=1e-12)
        # Distinct perfect scores: the 250 rank-spaced thresholds step over the boundary
        # between the last anomaly and the first normal point, which costs a little.
        assert 0.995 < metrics.vus_pr(y, noisy, sliding_window=w) <= 1.0
        assert 0.995 < metrics.vus_roc(y, noisy, sliding_window=w) <= 1.0


def test_vus_random_scores_near_base_rate():
    rng = np.random.default_rng(0)
    y = _segment_labels(2000, range(100, 2000, 400), 40)  # 10% anomalous
    pr0 = np.mean([metrics.vus_pr(y, rng.normal(size=y.size), sliding_window=0)
                   for _ in range(4)])
    roc0 = np.mean([metrics.vus_roc(y, rng.normal(size=y.size), sliding_window=0)
                    for _ in range(4)])
    assert pr0 == pytest.approx(0.1, abs=0.03)
    assert roc0 == pytest.approx(0.5, abs=0.05)
    # A detector that sees the anomalies does much better than the base rate.
    good = metrics.vus_pr(y, rng.normal(size=y.size) + 2.0 * y, sliding_window=20)
    assert good > 0.5


def test_vus_invariant_to_monotone_transforms():
    rng = np.random.default_rng(1)
    y = _segment_labels(700, [50, 300, 310, 640], 12)
    s = rng.normal(size=y.size) + y
    ref_roc = metrics.vus_roc(y, s, sliding_window=30)
    ref_pr = metrics.vus_pr(y, s, sliding_window=30)
    for t in (np.exp(s), 3.0 * s + 1.0, np.arctan(s)):
        assert metrics.vus_roc(y, t, sliding_window=30) == pytest.approx(ref_roc, abs=1e-12)
        assert metrics.vus_pr(y, t, sliding_window=30) == pytest.approx(ref_pr, abs=1e-12)
    # A non-monotone change does change it (the check above can fail).
    assert metrics.vus_roc(y, -s, sliding_window=30) < ref_roc - 0.1


def test_vus_default_window_is_125():
    rng = np.random.default_rng(2)
    y = _segment_labels(500, [100, 300], 20)
    s = rng.normal(size=y.size) + 0.5 * y
    assert metrics.vus_pr(y, s) == metrics.vus_pr(y, s, sliding_window=125)
    assert metrics.vus_pr(y, s) != metrics.vus_pr(y, s, sliding_window=10)


def test_vus_window_zero_hand_case():
    # No buffer, one range, every point its own threshold (n <= num_thresholds).
    y = np.array([0, 1, 1, 0])
    s = np.array([0.4, 0.9, 0.1, 0.3])
    # The 250 rank-spaced thresholds visit every score; curve points (FPR, TPR, precision):
    # .9 -> (0, .5, 1); .4 -> (.5, .5, .5); .3 -> (1, .5, 1/3); .1 -> (1, 1, .5).
    # PR area = .5 * 1 + .5 * .5 = .75. ROC trapezoids from (0, 0) to (1, 1): 0 + .25 + .25 + 0.
    assert metrics.vus_pr(y, s, sliding_window=0) == pytest.approx(0.75, abs=1e-12)
    assert metrics.vus_roc(y, s, sliding_window=0) == pytest.approx(0.5, abs=1e-12)


# ------------------------------------------------------------------------------------------
# Period estimation
# ------------------------------------------------------------------------------------------
def test_estimate_period_periodic_series():
    rng = np.random.default_rng(0)
    t = np.arange(3000)
    assert metrics.estimate_period(np.sin(2 * np.pi * t / 50)) == 50
    square = ((t % 37) < 12).astype(float) + 0.05 * rng.normal(size=t.size)
    assert metrics.estimate_period(square) == 37
    # Multivariate input uses the first channel.
    both = np.stack([np.sin(2 * np.pi * t / 80), np.sin(2 * np.pi * t / 20)], axis=1)
    assert metrics.estimate_period(both) == 80
    assert metrics.vus_window(np.sin(2 * np.pi * t / 64)) == 64


def test_estimate_period_no_period():
    rng = np.random.default_rng(1)
    assert metrics.estimate_period(np.ones(500)) is None
    assert metrics.vus_window(np.ones(500)) == 125
    # A period outside the accepted range.
    t = np.arange(4000)
    assert metrics.estimate_period(np.sin(2 * np.pi * t / 4)) is None
    assert metrics.estimate_period(np.sin(2 * np.pi * t / 350)) is None
    # White noise always has some ACF peak; min_autocorrelation rejects it.
    noise = rng.normal(size=3000)
    assert metrics.estimate_period(noise, min_autocorrelation=0.3) is None


def test_autocorrelation_matches_direct_sum():
    rng = np.random.default_rng(2)
    x = rng.normal(size=257)
    ac = metrics._autocorrelation(x, 30)
    xc = x - x.mean()
    direct = np.array([np.dot(xc[:x.size - k], xc[k:]) for k in range(31)]) / np.dot(xc, xc)
    np.testing.assert_allclose(ac, direct, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [metrics.auroc, metrics.auprc, metrics.vus_pr, metrics.vus_roc])
def test_validation_errors(fn):
    y = np.array([0, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="same length"):
        fn(y, s[:3])
    with pytest.raises(ValueError, match="y_true must be 1-D"):
        fn(y[None], s)
    with pytest.raises(ValueError, match="only 0 and 1"):
        fn(np.array([0, 2, 0, 1]), s)
    with pytest.raises(ValueError, match="at least one anomaly"):
        fn(np.zeros(4, int), s)
    with pytest.raises(ValueError, match="at least one normal"):
        fn(np.ones(4, int), s)
    with pytest.raises(ValueError, match="finite"):
        fn(y, np.array([0.1, np.nan, 0.3, 0.4]))
    with pytest.raises(TypeError, match="real numbers"):
        fn(y, np.array(["a", "b", "c", "d"]))
    with pytest.raises(ValueError, match="empty"):
        fn(np.array([], int), np.array([]))


def test_validation_errors_other():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="sliding_window"):
        metrics.vus_pr(y, s, sliding_window=-1)
    with pytest.raises(TypeError, match="sliding_window"):
        metrics.vus_pr(y, s, sliding_window=2.5)
    with pytest.raises(ValueError, match="threshold must be finite"):
        metrics.f1_at_threshold(y, s, np.inf)
    with pytest.raises(ValueError, match="at least one anomaly"):
        metrics.best_f1(np.zeros(4, int), s)
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 1, 1] = True
    with pytest.raises(ValueError, match="same shape"):
        metrics.aupro(masks, np.zeros((1, 4, 5)))
    with pytest.raises(ValueError, match="masks must be 3-D"):
        metrics.pixel_auroc(masks[0], np.zeros((4, 4)))
    with pytest.raises(ValueError, match="fpr_limit"):
        metrics.aupro(masks, np.zeros((1, 4, 4)), fpr_limit=0.0)
    with pytest.raises(ValueError, match="at least one anomaly"):
        metrics.aupro(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="alpha"):
        metrics.range_precision_recall(y, y, alpha=1.5)
    with pytest.raises(ValueError, match="bias"):
        metrics.range_precision_recall(y, y, bias="diagonal")
    with pytest.raises(ValueError, match="series must be"):
        metrics.estimate_period(np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="finite"):
        metrics.estimate_period(np.array([1.0, np.nan, 2.0, 3.0, 4.0]))
