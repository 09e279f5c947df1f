"""Tests of adiff.detectors.timeseries.TimeSeriesDetector (tiny CPU configs, budget ~120 s)."""
import numpy as np
import pandas as pd
import pytest

from adiff import metrics
from adiff import detectors
from adiff.detectors import base
from adiff.detectors.timeseries import TimeSeriesDetector

TINY = dict(window=16, score_stride=4, channels=8, num_blocks=2, dilations=(1, 2), num_heads=2,
            time_dim=16, train_steps=300, batch_size=32, solver_steps=4, num_levels=2,
            learning_rate=3e-3, uncond_prob=0.3, score_batch_size=64)


def _sine(n, seed, period=25, channels=1):
    rng = np.random.RandomState(seed)
    t = np.arange(n)[:, None]
    phase = np.arange(channels)[None, :] * 0.7
    return (np.sin(2 * np.pi * t / period + phase) + 0.05 * rng.randn(n, channels)).astype(np.float32)


@pytest.fixture(scope="module")
def uni():
    det = TimeSeriesDetector(scoring="imputation", seed=0, **TINY)
    det.fit(_sine(600, 0)[:, 0])
    test = _sine(400, 1)[:, 0]
    y = np.zeros(400, int)
    test[150:154] += 3.0  # spike
    y[150:154] = 1
    return det, test, y


def test_univariate_contract_and_planted_anomaly(uni):
    det, test, y = uni
    assert det.decision_scores_.shape == (600,) and det.n_features_in_ == 1
    s = det.decision_function(test)
    assert s.shape == (400,) and s.dtype == np.float64 and np.isfinite(s).all()
    assert metrics.auroc(y, s) > 0.9
    r = det.paradigm_scores(test, "reconstruction")
    assert r.shape == (400,) and metrics.auroc(y, r) > 0.9
    # density-style denoising error (fixed noise draws): deterministic, spike ranked on top.
    d = det.paradigm_scores(test, "denoising")
    assert d.shape == (400,) and metrics.auroc(y, d) > 0.9 and np.argmax(d) in range(146, 158)
    np.testing.assert_array_equal(det.paradigm_scores(test, "denoising"), d)
    # every step has a score, the first and last included, and the spike is the top region.
    assert s[0] > 0 and s[-1] > 0
    assert np.argmax(s) in range(146, 158)
    # A level shift is harder for local imputation (neighbours inside the shift agree with each
    # other): its onset and end still rank above 95% of the normal steps.
    shifted, ys = test.copy(), y.copy()
    shifted[300:310] -= 1.5
    ys[300:310] = 1
    s2 = det.decision_function(shifted)
    assert s2[300:311].max() > np.percentile(s2[ys == 0], 95)
    labels = det.predict(test)
    assert labels.shape == (400,) and set(np.unique(labels)) <= {0, 1}
    assert labels[150:154].all()
    proba = det.predict_proba(test)
    assert proba.shape == (400, 2)


def test_pandas_series_and_2d_input_agree(uni):
    det, test, _ = uni
    a = det.decision_function(test)
    np.testing.assert_allclose(det.decision_function(pd.Series(test)), a, rtol=1e-6)
    np.testing.assert_allclose(det.decision_function(test[:, None]), a, rtol=1e-6)


def test_centre_combine_scores_every_step(uni):
    det, test, y = uni
    centre = TimeSeriesDetector(scoring="imputation", seed=0, combine="centre", **TINY)
    centre._import({"n_features": 1, "n_train": 600}, {"loc": det.loc_, "scale": det.scale_,
                                                        "params": det.params_})
    centre.decision_scores_ = det.decision_scores_
    s = centre.paradigm_scores(test, "imputation")
    assert s.shape == (400,) and np.isfinite(s).all() and (s > 0).all()
    assert metrics.auroc(y, s) > 0.85


def test_input_errors(uni):
    det, test, _ = uni
    with pytest.raises(ValueError, match="channels"):
        det.decision_function(np.stack([test, test], axis=1))
    with pytest.raises(ValueError, match="window=16"):
        det.decision_function(test[:10])
    with pytest.raises(ValueError, match="rank"):
        det.decision_function(test.reshape(4, 100, 1))
    bad = test.copy()
    bad[3] = np.inf
    with pytest.raises(ValueError, match="inf"):
        det.decision_function(bad)
    with pytest.raises(TypeError):
        det.decision_function(np.array(["a"] * 40))
    with pytest.raises(ValueError, match="all NaN"):
        det.decision_function(np.full(40, np.nan))
    with pytest.raises(ValueError, match="window=16"):
        TimeSeriesDetector(**TINY).fit(np.zeros(8))
    with pytest.raises(ValueError, match="scoring"):
        TimeSeriesDetector(scoring="density").fit(test)
    with pytest.raises(ValueError, match="num_grid_masks"):
        TimeSeriesDetector(num_grid_masks=1).fit(test)
    with pytest.raises(ValueError, match="score_stride"):
        TimeSeriesDetector(window=8, score_stride=9).fit(test)
    with pytest.raises(ValueError, match="num_heads"):
        TimeSeriesDetector(channels=6, num_heads=4).fit(test)
    with pytest.raises(ValueError, match="denoise_t"):
        TimeSeriesDetector(denoise_t=(0.0005,)).fit(test)
    with pytest.raises(ValueError, match="scoring"):
        det.paradigm_scores(test, "dte")
    with pytest.raises(RuntimeError, match="not fitted"):
        TimeSeriesDetector().decision_function(test)


@pytest.fixture(scope="module")
def multi():
    rng = np.random.RandomState(3)
    train = _sine(500, 2, channels=3)
    train[rng.rand(*train.shape) < 0.05] = np.nan  # missing training values
    frame = pd.DataFrame(train, columns=["a", "b", "c"])
    det = TimeSeriesDetector(scoring="imputation", seed=1, mask_rate=0.1, **TINY).fit(frame)
    return det, train


def test_multivariate_with_missing_values(multi):
    det, train = multi
    assert det.n_features_in_ == 3 and det.decision_scores_.shape == (500,)
    np.testing.assert_allclose(det.loc_, np.nanmean(train, 0), atol=1e-5)
    np.testing.assert_allclose(det.scale_, np.nanstd(train, 0), rtol=1e-4)

    test = _sine(300, 4, channels=3)
    y = np.zeros(300, int)
    test[100:103, 1] += 4.0  # anomaly in one channel only
    y[100:103] = 1
    test[200:205, :] = np.nan  # fully missing steps
    test[50, 0] = np.nan
    s = det.decision_function(test)
    assert s.shape == (300,) and np.isfinite(s).all()
    assert metrics.auroc(y, s) > 0.9
    values, observed = det.transform(test)
    assert observed[50, 0] == 0 and observed[200:205].sum() == 0 and observed[51, 0] == 1
    maps = det.channel_scores(test)
    assert maps.shape == (300, 3)
    assert maps[50, 0] == 0 and (maps[200:205] == 0).all()  # missing entries are never scored
    assert np.argmax(maps[100]) == 1  # the anomalous channel carries the error

    # a missing value is a mask, not a zero: a spike hidden behind NaN is not scored high,
    # while the same position filled with the spike value is.
    spiky = _sine(300, 4, channels=3)
    spiky[150, 2] = 8.0
    hidden = spiky.copy()
    hidden[150, 2] = np.nan
    raw = lambda x: det.paradigm_scores(x, "imputation", channel_norm="none")
    assert raw(spiky)[150] > 5 * raw(hidden)[150]


def test_channel_calibration_on_held_out_tail(multi, uni):
    det, train = multi
    # "auto" calibrates a multivariate series: the last 20% (100 steps) is held out of training.
    assert det.channel_calibrated_ and det.n_calibration_ == 100 and det.channel_loc_.shape == (3, 3)
    assert not uni[0].channel_calibrated_  # univariate: no hold-out (standardising changes no ranking)
    # the statistics are each channel's mean / std of the held-out tail's per-entry errors.
    values, observed = det.transform(train[-100:])
    src = det._array_source({"values": values, "observed": observed})
    for i, p in enumerate(("reconstruction", "imputation", "denoising")):
        ent, has = det._stream(src, p, ["map"])[0]
        mu = (ent * has).sum(0) / has.sum(0)
        sd = np.sqrt((np.square(ent - mu) * has).sum(0) / has.sum(0))
        np.testing.assert_allclose(det.channel_loc_[i], mu, rtol=1e-5)
        np.testing.assert_allclose(det.channel_scale_[i], np.maximum(sd, 0.1 * np.median(sd)), rtol=1e-5)
    # threshold_ from the held-out tail's scores (normal steps the network did not train on).
    np.testing.assert_allclose(det.threshold_, np.quantile(det.decision_scores_[-100:], 0.9))
    # scores = mean (or max) over channels of the standardised map.
    test = _sine(200, 7, channels=3)
    ent, has = det._stream(det._input_source(test), "denoising", ["map"])[0]
    z = (ent - det.channel_loc_[2]) / det.channel_scale_[2]
    cal, raw, mx = det.paradigm_variants(test, "denoising", [(None, None), ("none", None), ("holdout", "max")])
    np.testing.assert_allclose(cal, z.mean(1), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(raw, ent.mean(1), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(mx, z.max(1), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(det.paradigm_scores(test, "denoising", channel_combine="max"), mx)
    with pytest.raises(ValueError, match="channel_norm='holdout'"):
        uni[0].paradigm_scores(uni[1], "denoising", channel_norm="holdout")
    with pytest.raises(ValueError, match="channel_combine"):
        det.paradigm_scores(test, "denoising", channel_combine="sum")
    with pytest.raises(ValueError, match="window=16 steps on both sides"):
        TimeSeriesDetector(channel_norm="holdout", **TINY).fit(_sine(60, 0, channels=2))
    with pytest.raises(ValueError, match="calibration_fraction"):
        TimeSeriesDetector(calibration_fraction=0.6, **TINY).fit(_sine(60, 0, channels=2))


def test_save_load_identical_scores(uni, tmp_path):
    det, test, _ = uni
    assert "TimeSeriesDetector" in detectors.__all__  # adiff.load rebuilds only exported classes
    det.save(tmp_path / "det")
    det2 = base.load(tmp_path / "det")
    assert isinstance(det2, TimeSeriesDetector) and det2.get_params() == det.get_params()
    np.testing.assert_array_equal(det2.decision_function(test), det.decision_function(test))
    np.testing.assert_array_equal(det2.decision_scores_, det.decision_scores_)
    assert det2.threshold_ == det.threshold_
    # a saved detector refuses arrays of another shape (a 2-channel configuration).
    import json
    cfg = json.loads((tmp_path / "det" / "adiff.json").read_text())
    cfg["meta"]["n_features"] = 2
    (tmp_path / "det" / "adiff.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape"):
        base.load(tmp_path / "det")


def test_save_load_keeps_channel_statistics(multi, tmp_path):
    det, _ = multi
    det.save(tmp_path / "m")
    det2 = base.load(tmp_path / "m")
    assert det2.channel_calibrated_ and det2.n_calibration_ == det.n_calibration_
    np.testing.assert_array_equal(det2.channel_scale_, det.channel_scale_)
    test = _sine(100, 8, channels=3)
    np.testing.assert_array_equal(det2.decision_function(test), det.decision_function(test))
    assert det2.threshold_ == det.threshold_


def test_benchmark_window_scorers_centre_assignment_and_dte_np():
    from experiments.benchmarks import timeseries as bench
    # centre rule (DESIGN.md): a window's score lands on its centre step, the edges take the
    # nearest centre's score; "mean" averages the covering windows.
    starts = np.arange(7)  # windows of length 4 over 10 steps
    w = np.arange(7, dtype=float) * 10
    c = bench._per_step(w, starts, 4, 10, "centre")
    np.testing.assert_array_equal(c, [0, 0, 0, 10, 20, 30, 40, 50, 60, 60])
    m = bench._per_step(w, starts, 4, 10, "mean")
    np.testing.assert_allclose(m[[0, 1, 4, 9]], [0, 5, 25, 60])
    with pytest.raises(ValueError, match="assign"):
        bench._per_step(w, starts, 4, 10, "last")
    # the non-parametric DTE window scorer ranks a planted spike above the normal steps.
    train, test = _sine(400, 5, channels=2), _sine(200, 6, channels=2)
    y = np.zeros(200, int)
    test[100:103, 0] += 3.0
    y[100:103] = 1
    for assign in ("centre", "mean"):
        info = {}
        s = bench.baseline_scores("DTE-NP", train, test, 8, seed=0, assign=assign, info=info)
        assert s.shape == (200,) and np.isfinite(s).all()
        assert metrics.auroc(y, s) > 0.9, assign
        assert info["grid"] == "dte" and info["train_median"] < 0.5  # close windows: no saturation
    # saturation rule: training windows far apart (white noise, 64 x 8 entries) crowd DTE's grid
    # end, so the VP SDE grid scores instead, and the scores are not constant.
    rng = np.random.RandomState(0)
    w_train, w_test = rng.randn(300, 512), 1.3 * rng.randn(50, 512)
    info = {}
    s = bench.dte_np_scores(w_train, w_test, info=info)
    assert info["grid"] == "vpsde" and info["train_median"] > 0.8
    assert np.unique(s).size == 50


def test_dte_np_scoring_no_network(tmp_path, monkeypatch):
    """scoring="dte_np": the benchmark's window scorer as a detector (same windows and scores),
    streamed in chunks, masks for missing values, persisted, and refusing the network's APIs."""
    from experiments.benchmarks import timeseries as bench
    train, test = _sine(700, 5, channels=2), _sine(300, 6, channels=2)
    y = np.zeros(300, int)
    test[100:103, 0] += 3.0
    y[100:103] = 1
    det = TimeSeriesDetector(scoring="dte_np", window=16, dte_max_windows=200).fit(train)
    assert det.params_ is None and det.dte_grid_ == "dte"
    assert 150 <= det.dte_windows_.shape[0] <= 200 and det.dte_windows_.shape[1] == 32
    s = det.decision_function(test)
    assert s.shape == (300,) and np.isfinite(s).all() and metrics.auroc(y, s) > 0.95
    # identical to the benchmark's adiff-dte_np row on the detector's own preprocessing
    z_train, _ = det.transform(train)
    z_test, _ = det.transform(test)
    ref = bench.baseline_scores("DTE-NP", z_train, z_test, 16, seed=0, max_windows=200)
    np.testing.assert_allclose(s, ref, rtol=1e-5)
    # streaming: small chunks (last one padded) give the same scores
    monkeypatch.setattr(TimeSeriesDetector, "_DTE_CHUNK", 37)
    np.testing.assert_allclose(det.decision_function(test), s, rtol=1e-4)  # float32 distance blocks
    monkeypatch.undo()
    # training scores leave each window's nearest neighbour out (not all ~0)
    assert det.decision_scores_.shape == (700,) and np.median(det.decision_scores_) > 0
    # missing values enter as masks: finite scores, the spike still on top
    gappy = test.copy()
    gappy[200:220, 1] = np.nan
    g = det.decision_function(gappy)
    assert np.isfinite(g).all() and metrics.auroc(y, g) > 0.95
    det.save(tmp_path / "dte")
    back = detectors.load(tmp_path / "dte")
    assert back.dte_grid_ == det.dte_grid_
    np.testing.assert_allclose(back.decision_function(test), s, rtol=1e-6)
    with pytest.raises(ValueError, match="needs a network"):
        det.paradigm_scores(test, "denoising")
    with pytest.raises(ValueError, match="anomalies="):
        TimeSeriesDetector(scoring="dte_np", window=16).fit(train, anomalies=(test, y))
