"""Tests of adiff.data.timeseries: loaders on the shared data and on synthetic public layouts."""
import json

import numpy as np
import pandas as pd
import pytest

from adiff.data import timeseries as tsd


# ------------------------------------------------------------------------------------------------
# real data (skipped without ../shared/data)
# ------------------------------------------------------------------------------------------------
@pytest.mark.data
def test_asd_real(shared_data):
    root = shared_data / "timeseries" / "asd"
    entities = tsd.asd_entities(root)
    assert entities[:3] == ["omi-1", "omi-2", "omi-3"] and len(entities) == 12
    train, test, labels = tsd.load_asd(root, "omi-1")
    assert train.shape == (8640, 19) and test.shape == (4320, 19) and labels.shape == (4320,)
    assert train.dtype == np.float32 and set(np.unique(labels)) == {0, 1}
    assert abs(labels.mean() - 0.1021) < 1e-3  # README: omi-1 test anomaly 10.21 %
    assert tsd.load_asd(root, "omi-12").train.shape == (7291, 19)


@pytest.mark.data
def test_skab_real(shared_data):
    root = shared_data / "timeseries" / "skab"
    runs = tsd.skab_runs(root)
    assert len(runs) == 34 and "valve1/0" in runs and not any("anomaly-free" in r for r in runs)
    train, test, labels = tsd.load_skab(root, "valve1/0")
    assert train.shape == (9405, 8) and test.shape[1] == 8 and len(labels) == len(test)
    raw = pd.read_csv(root / "data" / "valve1" / "0.csv", sep=";")
    np.testing.assert_allclose(test[:, 0], raw["Accelerometer1RMS"].to_numpy(), rtol=1e-6)
    np.testing.assert_array_equal(labels, raw["anomaly"].to_numpy().astype(int))


@pytest.mark.data
def test_nab_real(shared_data):
    root = shared_data / "timeseries" / "nab"
    keys = tsd.nab_series(root)
    assert len(keys) == 58
    assert len(tsd.nab_series(root, category="realKnownCause")) == 7
    assert "artificialNoAnomaly/art_flatline.csv" not in tsd.nab_series(root, with_anomalies=True)
    train, test, labels = tsd.load_nab(root, "realKnownCause/nyc_taxi.csv")
    n = len(train) + len(test)
    assert n == 10320 and len(train) == min(int(0.15 * n), 750) == 750
    assert labels.shape == (len(test),) and 0 < labels.mean() < 0.2


# ------------------------------------------------------------------------------------------------
# synthetic files in the public layouts
# ------------------------------------------------------------------------------------------------
def test_smd_synthetic(tmp_path):
    rng = np.random.RandomState(0)
    for sub, n in (("train", 30), ("test", 20)):
        (tmp_path / sub).mkdir()
        np.savetxt(tmp_path / sub / "machine-1-2.txt", rng.rand(n, 3), delimiter=",", fmt="%.6f")
    (tmp_path / "test_label").mkdir()
    lab = np.zeros(20, int)
    lab[5:8] = 1
    np.savetxt(tmp_path / "test_label" / "machine-1-2.txt", lab, fmt="%d")
    np.savetxt(tmp_path / "train" / "machine-1-10.txt", rng.rand(4, 3), delimiter=",")
    assert tsd.smd_machines(tmp_path) == ["machine-1-2", "machine-1-10"]  # numeric order
    train, test, labels = tsd.load_smd(tmp_path, "machine-1-2")
    assert train.shape == (30, 3) and test.shape == (20, 3)
    np.testing.assert_array_equal(labels, lab)
    with pytest.raises(ValueError, match="not found"):
        tsd.load_smd(tmp_path, "machine-9-9")


def test_smap_msl_synthetic(tmp_path):
    rng = np.random.RandomState(1)
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    np.save(tmp_path / "train" / "P-1.npy", rng.rand(50, 4))
    np.save(tmp_path / "test" / "P-1.npy", rng.rand(40, 4))
    np.save(tmp_path / "train" / "M-1.npy", rng.rand(50, 4))
    np.save(tmp_path / "test" / "M-1.npy", rng.rand(40, 4))
    pd.DataFrame({"chan_id": ["P-1", "M-1"], "spacecraft": ["SMAP", "MSL"],
                  "anomaly_sequences": ["[[3, 5], [30, 31]]", "[[0, 2]]"],
                  "class": ["[point]", "[contextual]"], "num_values": [40, 40]}
                 ).to_csv(tmp_path / "labeled_anomalies.csv", index=False)
    assert tsd.smap_msl_channels(tmp_path, "SMAP") == ["P-1"]
    assert tsd.smap_msl_channels(tmp_path, "MSL") == ["M-1"]
    train, test, labels = tsd.load_smap_msl(tmp_path, "P-1")
    assert train.shape == (50, 4) and test.shape == (40, 4)
    np.testing.assert_array_equal(np.flatnonzero(labels), [3, 4, 5, 30, 31])  # inclusive ends
    with pytest.raises(ValueError, match="spacecraft"):
        tsd.smap_msl_channels(tmp_path, "Mars")


def test_ucr_synthetic(tmp_path):
    values = np.arange(1, 21, dtype=float)
    path = tmp_path / "007_UCR_Anomaly_toy_10_13_15.txt"
    path.write_text(" ".join(f"{v:g}" for v in values))  # some archive files are one line
    info = tsd.parse_ucr_name(path)
    assert info == {"id": "007", "name": "toy", "train_end": 10, "begin": 13, "end": 15}
    train, test, labels = tsd.load_ucr(path)
    np.testing.assert_array_equal(train[:, 0], values[:10])
    np.testing.assert_array_equal(test[:, 0], values[10:])
    # 1-based inclusive positions 13..15 of the file = values 13, 14, 15.
    np.testing.assert_array_equal(test[labels == 1, 0], [13.0, 14.0, 15.0])
    path2 = tmp_path / "008_UCR_Anomaly_toy_10_13_15.txt"
    path2.write_text("\n".join(f"{v:g}" for v in values[:12]))
    with pytest.raises(ValueError, match="do not fit"):
        tsd.load_ucr(path2)
    with pytest.raises(ValueError, match="UCR"):
        tsd.parse_ucr_name(tmp_path / "toy.txt")


def test_nab_and_skab_synthetic(tmp_path):
    nab = tmp_path / "nab"
    (nab / "data" / "cat").mkdir(parents=True)
    (nab / "labels").mkdir()
    stamps = pd.date_range("2020-01-01", periods=100, freq="5min")
    pd.DataFrame({"timestamp": stamps.strftime("%Y-%m-%d %H:%M:%S"), "value": np.arange(100.0)}
                 ).to_csv(nab / "data" / "cat" / "s.csv", index=False)
    windows = {"cat/s.csv": [[str(stamps[40]) + ".000000", str(stamps[44]) + ".000000"]]}
    (nab / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    train, test, labels = tsd.load_nab(nab, "cat/s.csv")
    assert len(train) == 15 and len(test) == 85  # floor(0.15 * 100)
    np.testing.assert_array_equal(test[labels == 1, 0], [40, 41, 42, 43, 44])
    assert tsd.nab_train_size(10000) == 750

    skab = tmp_path / "skab"
    (skab / "anomaly-free").mkdir(parents=True)
    (skab / "valve1").mkdir()
    cols = "datetime;a;b"
    (skab / "anomaly-free" / "anomaly-free.csv").write_text(f"{cols}\nt;1;2\nt;3;4\n")
    (skab / "valve1" / "0.csv").write_text(f"{cols};anomaly;changepoint\nt;5;6;0.0;0.0\nt;7;;1.0;1.0\n")
    assert tsd.skab_runs(skab) == ["valve1/0"]
    train, test, labels = tsd.load_skab(skab, "valve1/0")
    assert train.shape == (2, 2) and np.isnan(test[1, 1]) and list(labels) == [0, 1]


def test_windows():
    starts = tsd.window_starts(10, 4, 3)
    np.testing.assert_array_equal(starts, [0, 3, 6])
    np.testing.assert_array_equal(tsd.window_starts(11, 4, 3), [0, 3, 6, 7])  # last ends at T
    with pytest.raises(ValueError, match="at least length"):
        tsd.window_starts(3, 4, 1)
    values = np.arange(20, dtype=np.float32).reshape(10, 2)
    obs = np.ones_like(values)
    obs[2, 1] = 0
    ds = tsd.window_dataset(values, obs, length=4, stride=3)
    assert len(ds) == 3
    item = ds[1]
    np.testing.assert_array_equal(item["x"], values[3:7])
    np.testing.assert_array_equal(ds[0]["obs"][2], [1, 0])
    batch = ds.shuffle(seed=0).repeat().batch(2, drop_remainder=True)[0]
    assert batch["x"].shape == (2, 4, 2)
    with pytest.raises(ValueError, match="observed"):
        tsd.window_dataset(values, obs[:5], length=4)
