"""Streaming scoring of TimeSeriesDetector (issue 5, scaling): the chunked scorer equals scoring the
whole padded series at once, handles missing values as masks, scores the first and last steps, and
keeps host memory flat in T. Tiny untrained networks (random parameters): budget <= 30 s."""
import tracemalloc

import jax
import numpy as np
import pandas as pd
import pytest

from adiff.detectors import timeseries as ts
from adiff.detectors.timeseries import TimeSeriesDetector

C = 2
TINY = dict(window=8, score_stride=3, channels=8, num_blocks=1, dilations=(1,), num_heads=2,
            time_dim=8, solver_steps=2, num_levels=1, num_grid_masks=2, num_random_masks=1,
            t0=(0.2, 0.5), score_batch_size=4, seed=3)


def _detector(**kw) -> TimeSeriesDetector:
    """A 'fitted' detector with random network parameters (no training: only equality matters)."""
    det = TimeSeriesDetector(**{**TINY, **kw})
    det._check_params()
    params = det._init_params(jax.random.key(0), C)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [np.asarray(v + 0.3 * jax.random.normal(k, v.shape))
                                       for k, v in zip(keys, leaves)])
    det._import({"n_features": C, "n_train": 1},
                {"loc": np.array([0.5, -1.0], np.float32), "scale": np.array([2.0, 0.5], np.float32),
                 "params": params})
    det.decision_scores_ = np.zeros(1)
    det._process_decision_scores()
    return det


def _dense_entry_errors(det, values, observed, scoring):
    """Reference: the whole padded series built at once, every window's errors accumulated into
    [T + pads, C] arrays (the scorer before streaming), same batches and keys."""
    t, c = values.shape
    l, s, bs = det.window, det.score_stride, det.score_batch_size
    front, back = l // 2, l // 2 + s
    vpad = np.pad(values, ((front, back), (0, 0)), mode="reflect")
    opad = np.pad(observed, ((front, back), (0, 0)), mode="reflect")
    starts = np.arange(0, len(vpad) - l + 1, s)
    pos_w = np.ones(l)
    if det.combine == "centre":
        pos_w = np.zeros(l)
        pos_w[l // 2 - s // 2:l // 2 - s // 2 + s] = 1.0
    fn = ts._scorer(det._net_cfg, scoring, tuple(det.t0), det.solver_steps, det.num_grid_masks,
                    det.num_random_masks, det.mask_ratio, det._block, det.num_levels,
                    float(det.clip))
    params = jax.tree.map(jax.numpy.asarray, det.params_)
    err, cnt = np.zeros((len(vpad), c)), np.zeros((len(vpad), c))
    key = jax.random.key(det.seed + 7)
    for i, b0 in enumerate(range(0, len(starts), bs)):
        st = starts[b0:b0 + bs]
        m = len(st)
        st_full = np.concatenate([st, np.full(bs - m, st[-1])])
        idx = st_full[:, None] + np.arange(l)[None, :]
        e, k = fn(params, vpad[idx], opad[idx], jax.random.fold_in(key, i))
        e, k = np.asarray(e, np.float64)[:m], np.asarray(k, np.float64)[:m]
        mean_e = np.where(k > 0, e / np.maximum(k, 1e-12), 0.0) * pos_w[None, :, None]
        for j in np.flatnonzero(pos_w):
            err[st + j] += mean_e[:, j]
            cnt[st + j] += (k[:, j] > 0) * pos_w[j]
    err, cnt = err[front:front + t], cnt[front:front + t]
    has = (cnt > 0) & (observed > 0)
    return np.where(has, err / np.maximum(cnt, 1e-12), 0.0), has, len(starts)


def _series(t, seed=0):
    rng = np.random.RandomState(seed)
    x = np.sin(np.arange(t)[:, None] / 4.0 + np.arange(C)) * 3 + rng.randn(t, C) * 0.3
    x[[0, 1, 40], 1] = np.nan  # missing entries, the first steps included
    x[60:63] = np.nan  # three fully missing steps
    x[100, 0] += 8.0  # a spike
    return x.astype(np.float32)


def test_reflect_index_matches_numpy_pad():
    for n in (2, 3, 4, 5, 9):
        for pad in (0, 1, n - 1, n, 2 * n + 3, 5 * n):
            want = np.pad(np.arange(n), (pad, pad + 1), mode="reflect")
            got = ts._reflect_index(np.arange(-pad, n + pad + 1), n)
            np.testing.assert_array_equal(got, want, err_msg=f"n={n} pad={pad}")


@pytest.mark.parametrize("scoring,combine", [("imputation", "mean"), ("reconstruction", "mean"),
                                             ("imputation", "centre")])
def test_chunked_equals_dense(scoring, combine):
    det = _detector(scoring=scoring, combine=combine)
    x = _series(157)
    values, observed = det.transform(x)
    ref_err, ref_has, num_windows = _dense_entry_errors(det, values, observed, scoring)
    assert num_windows > 10 * det.score_batch_size  # many chunks
    # Per-entry maps (NaN entries are masks: no error there) and per-step scores.
    maps = det.channel_scores(x)
    np.testing.assert_allclose(maps, ref_err, rtol=1e-10, atol=0)
    assert np.all(maps[np.isnan(x)] == 0) and np.all(maps[~np.isnan(x)] > 0)
    n = ref_has.sum(1)
    ref = np.where(n > 0, ref_err.sum(1) / np.maximum(n, 1), np.nan)
    raw = det._stream(det._input_source(x), scoring, per_channel=False)
    np.testing.assert_allclose(raw, ref, rtol=1e-10, atol=0, equal_nan=True)
    assert np.isnan(raw[60:63]).all() and np.isfinite(np.delete(raw, [60, 61, 62])).all()
    s = det.decision_function(x)
    assert s.shape == (157,) and np.isfinite(s).all() and s[0] > 0 and s[-1] > 0
    np.testing.assert_array_equal(s[60:63], [ref[59], ref[59], ref[63]])  # nearest scored step
    np.testing.assert_allclose(np.delete(s, [60, 61, 62]), np.delete(ref, [60, 61, 62]), rtol=1e-10)
    # Same scores from the preprocessed-array path (fit's) and from pandas / float64 / list input.
    np.testing.assert_array_equal(det._step_scores(det._array_source(det._prepare(x, fitting=False)),
                                                   scoring), s)
    np.testing.assert_array_equal(det.decision_function(pd.DataFrame(x.astype(np.float64))), s)
    np.testing.assert_array_equal(det.decision_function(x.tolist()), s)


def test_result_independent_of_input_chunk_rows(monkeypatch):
    det = _detector(scoring="reconstruction")
    x = _series(157)
    s = det.decision_function(x)
    monkeypatch.setattr(ts, "_CHUNK_ROWS", 7)
    np.testing.assert_array_equal(det.decision_function(x), s)
    bad = x.copy()
    bad[150, 0] = np.inf  # found by the validation pass, in its last piece
    with pytest.raises(ValueError, match="X contains inf"):
        det.decision_function(bad)
    with pytest.raises(ValueError, match="no observed value"):
        det.decision_function(np.full((50, C), np.nan, np.float32))
    with pytest.raises(ValueError, match="channels"):
        det.paradigm_scores(np.zeros((50, C + 1), np.float32), "imputation")
    # The shortest series (T = window): more padding than series, every step scored.
    short = det.paradigm_scores(x[:8], "imputation")
    assert short.shape == (8,) and np.isfinite(short).all() and (short > 0).all()


def test_host_memory_flat_in_length():
    """Traced numpy allocations while scoring stay near the [T] output (8 bytes a step); the
    scorer before streaming held ~200 bytes a step (padded copies, [T, C] float64 accumulators)."""
    det = _detector(scoring="reconstruction", window=8, score_stride=8, t0=(0.3,))
    rng = np.random.RandomState(0)
    peaks = {}
    for t in (4_000, 40_000):
        x = rng.randn(t, C).astype(np.float32)
        det.decision_function(x[:100])  # compile outside the measurement
        tracemalloc.start()
        s = det.decision_function(x)
        peaks[t] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert s.shape == (t,) and np.isfinite(s).all()
    growth = (peaks[40_000] - peaks[4_000]) / 36_000
    assert growth < 24, peaks  # bytes per extra step: the float64 output plus small temporaries


def test_benchmark_section_is_replaced_not_duplicated(tmp_path):
    from experiments.benchmarks import timeseries_scale as bench
    row = {"scoring": "imputation", "n": 1000, "rss_before_mib": 500.0, "increase_mib": 3.5,
           "increase_bytes_per_step": 3670.0, "seconds": 0.5, "steps_per_s": 2000.0}
    report = {"command": bench.COMMAND, "machine": "test", "detector": {"window": 32},
              "fit_seconds": 1.0, "memory": [row], "notes": "NOTE-A"}
    doc = tmp_path / "ts.md"
    doc.write_text("# Title\n\n## ASD\n\ntable\n")
    bench.write_section(doc, bench.markdown(report))
    bench.write_section(doc, bench.markdown({**report, "notes": "NOTE-B"}))
    text = doc.read_text()
    assert text.count(bench.SECTION) == 1 and "NOTE-B" in text and "NOTE-A" not in text
    assert text.startswith("# Title\n\n## ASD\n\ntable\n") and "| imputation | 1,000 | 500 | 3.5 |" in text
    doc.write_text(text + "\n## Later\n\nkept\n")  # a section after it survives a rewrite
    bench.write_section(doc, bench.markdown({**report, "notes": "NOTE-C"}))
    text = doc.read_text()
    assert "NOTE-C" in text and "NOTE-B" not in text and text.endswith("## Later\n\nkept\n")
