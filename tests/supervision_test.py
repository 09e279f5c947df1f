"""fit(X, anomalies=...): the semi-supervised head of the tabular and time-series detectors."""
import numpy as np
import pytest

import adiff
from adiff import metrics
from adiff.detectors import supervision
from adiff.detectors.tabular import TabularDetector
from adiff.detectors.timeseries import TimeSeriesDetector

TINY_TS = dict(window=16, score_stride=4, channels=8, num_blocks=2, dilations=(1, 2), num_heads=2,
               time_dim=16, train_steps=300, batch_size=32, learning_rate=3e-3, score_batch_size=64,
               scoring="denoising")


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(400, 4))
    examples = rng.normal([3.0, -3.0, 0.0, 0.0], 0.5, size=(20, 4))  # the kind the head sees
    test = np.concatenate([rng.normal(size=(200, 4)),
                           rng.normal([3.0, -3.0, 0.0, 0.0], 0.5, size=(50, 4)),  # seen kind
                           rng.normal([0.0, 0.0, 0.0, 4.0], 0.5, size=(50, 4))])  # unseen kind
    unsup = TabularDetector().fit(normal)
    semi = TabularDetector().fit(normal, anomalies=examples)
    return normal, examples, test, unsup, semi


def test_head_separates_examples_from_normal():
    rng = np.random.default_rng(1)
    xn, xa = rng.normal(size=(300, 3)), rng.normal(2.5, 0.5, size=(40, 3))
    head = supervision.fit_head(xn, xa, seed=0, steps=300)
    logits = supervision.head_logits(head, np.concatenate([xn, xa]))
    assert logits.shape == (340,)
    assert metrics.auroc(np.r_[np.zeros(300), np.ones(40)], logits) > 0.99
    # class-balanced training: the logits straddle 0 (normal mostly below, examples above)
    assert np.median(logits[:300]) < 0 < np.median(logits[300:])


def test_head_input_errors():
    with pytest.raises(ValueError, match="at least 2"):
        supervision.fit_head(np.zeros((10, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="expected 3"):
        supervision.fit_head(np.zeros((10, 3)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        supervision.fit_head(np.full((10, 3), np.nan), np.zeros((5, 3)))
    head = supervision.fit_head(np.zeros((10, 3)), np.ones((5, 3)), steps=5)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        supervision.head_logits(head, np.zeros((4, 2)))


def test_tabular_head_lifts_the_seen_kind_and_keeps_the_unseen_one(table):
    _, _, test, unsup, semi = table
    s0, s1 = unsup.decision_function(test), semi.decision_function(test)
    seen = np.r_[np.zeros(200), np.ones(50)]
    # the seen kind: the head adds evidence on top of z (AUROC at least as high, here ~1)
    assert metrics.auroc(seen, s1[:250]) >= metrics.auroc(seen, s0[:250]) - 1e-9
    assert metrics.auroc(seen, s1[:250]) > 0.99
    # the unseen kind stays detected (softplus: the head never subtracts evidence)
    unseen_scores = np.r_[s1[:200], s1[250:]]
    assert metrics.auroc(seen, unseen_scores) > 0.95
    # the unsupervised part is the unsupervised detector, unchanged
    np.testing.assert_allclose(semi.unsupervised_scores(test), s0)
    assert semi.threshold_ == pytest.approx(np.quantile(semi.decision_scores_, 0.9))
    assert unsup.head_ is None and semi.head_ is not None


def test_tabular_head_roundtrip(table, tmp_path):
    _, _, test, _, semi = table
    semi.save(tmp_path / "m")
    back = adiff.load(tmp_path / "m")
    np.testing.assert_array_equal(back.decision_function(test), semi.decision_function(test))
    assert back.threshold_ == semi.threshold_


def test_tabular_head_input_errors(table):
    normal, _, _, _, _ = table
    with pytest.raises(ValueError, match="4 columns|columns"):
        TabularDetector().fit(normal, anomalies=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="does not take anomalies"):
        adiff.VideoDetector().fit(np.zeros((4, 8, 8, 8, 1)), anomalies=np.zeros((2, 8, 8, 8, 1)))


def _sine(n, seed, channels=2):
    rng = np.random.RandomState(seed)
    t = np.arange(n)[:, None]
    return np.sin(2 * np.pi * t / 25 + np.arange(channels)[None] * 0.7) + 0.05 * rng.randn(n, channels)


@pytest.mark.slow
def test_series_head_with_labelled_examples(tmp_path):
    train = _sine(800, 0)
    ex = _sine(300, 1)
    ex_labels = np.zeros(300, int)
    for a in (40, 120, 200):  # level-shift examples on channel 0
        ex[a:a + 6, 0] += 2.5
        ex_labels[a:a + 6] = 1
    test = _sine(400, 2)
    y = np.zeros(400, int)
    test[150:156, 0] += 2.5
    y[150:156] = 1
    semi = TimeSeriesDetector(seed=0, **TINY_TS).fit(train, anomalies=(ex, ex_labels))
    s = semi.decision_function(test)
    assert s.shape == (400,) and np.isfinite(s).all()
    assert metrics.auroc(y, s) > 0.9
    # threshold from the held-out tail, as without the head
    n_cal = semi.n_calibration_
    assert 0 < n_cal < 800
    assert semi.threshold_ == pytest.approx(np.quantile(semi.decision_scores_[-n_cal:], 0.9))
    semi.save(tmp_path / "ts")
    np.testing.assert_array_equal(adiff.load(tmp_path / "ts").decision_function(test), s)
    with pytest.raises(ValueError, match="pair"):
        semi._head_anomaly_features(ex)
    with pytest.raises(ValueError, match="shape"):
        semi._head_anomaly_features((ex, ex_labels[:10]))


def test_fit_head_replaces_only_the_head(table):
    normal, examples, test, unsup, semi = table
    det = TabularDetector().fit(normal)
    s0 = det.decision_function(test)
    det.fit_head(normal, examples)
    np.testing.assert_allclose(det.decision_function(test), semi.decision_function(test), rtol=1e-6)
    det.fit_head(normal, None)
    np.testing.assert_allclose(det.decision_function(test), s0)
    assert det.head_ is None
    with pytest.raises(ValueError, match="training data"):
        det.fit_head(normal[:100], examples)


def test_image_head_on_pooled_map_features(tmp_path):
    from adiff.detectors.image import ImageDetector  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16].astype(np.float32)

    def texture(n):
        out = [0.35 + 0.15 * np.sin(0.8 * (np.cos(t) * xx + np.sin(t) * yy) + p)
               + 0.02 * rng.standard_normal((16, 16))
               for t, p in zip(rng.uniform(0, np.pi, n), rng.uniform(0, 2 * np.pi, n))]
        return np.clip(np.stack(out)[..., None], 0, 1).astype(np.float32)

    def blobs(x, value):
        x = x.copy()
        for i in range(len(x)):
            cy, cx = rng.integers(4, 12, 2)
            x[i, (yy - cy) ** 2 + (xx - cx) ** 2 <= 2.5 ** 2, 0] = value
        return x

    train = texture(64)
    det = ImageDetector(base_channels=8, channel_mults=(1, 2), groups=4, batch_size=16,
                        learning_rate=3e-3, ema_decay=0.9, score_batch_size=32, train_steps=150,
                        scoring="denoise", t0=(0.3,), seed=0).fit(train)
    test = np.concatenate([texture(16), blobs(texture(16), 0.95)])
    y = np.r_[np.zeros(16), np.ones(16)]
    s0 = det.decision_function(test)
    feats = det._head_features(det._prepare(test, fitting=False))
    assert feats.shape == (32, 9) and np.isfinite(feats).all()
    det.fit_head(train, blobs(texture(24), 0.95))
    s1 = det.decision_function(test)
    assert s1.shape == (32,) and np.isfinite(s1).all()
    assert metrics.auroc(y, s1) >= 0.9
    np.testing.assert_allclose(det.unsupervised_scores(test), s0)
    np.testing.assert_allclose(det.anomaly_map(test), det.anomaly_map(test))  # maps unchanged
    det.save(tmp_path / "img")
    np.testing.assert_allclose(adiff.load(tmp_path / "img").decision_function(test), s1, rtol=1e-6)
