"""TFDS builders: built into tmp_path as array_record, read back with data sources, compared with
the direct loaders of adiff.data exactly (fake image trees; real data where ../shared/data has it)."""
import pathlib
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from adiff.data import image as image_lib  # pylint: disable=wrong-import-position
from adiff.data import tabular, timeseries  # pylint: disable=wrong-import-position
from adiff.data import tfds_builders as tb  # pylint: disable=wrong-import-position


@pytest.fixture(autouse=True)
def _tfds_temp_dirs_in_tmp_path(tmp_path, monkeypatch):
    # tfds' DatasetInfo.initialize_from_bucket makes an empty tempfile.mkdtemp("tfds") directory for
    # every builder created before its data is prepared, and never removes it (GCS is disabled, so
    # it returns at once). Point tempfile at the test's own directory so none collect in /tmp.
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))


def _build(cls, config, data_dir, manual_dir):
    builder = cls(config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def _records(source):
    return [source[i] for i in range(len(source))]


def _text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def _save_png(path: pathlib.Path, arr: np.ndarray, fmt: str = "png"):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def test_no_tensorflow_needed():
    assert "tensorflow" not in sys.modules, "importing the builders must not import TensorFlow"


# ------------------------------------------------------------------------------------------------
# ADBench
# ------------------------------------------------------------------------------------------------
@pytest.mark.data
def test_adbench_wine_matches_loader(shared_data, tmp_path):
    builder = _build(tb.AdbenchClassical, "wine", tmp_path / "tfds", shared_data / "tabular")
    X0, y0 = tabular.load_adbench_npz(shared_data / "tabular" / "wine" / "45_wine.npz")
    src = tfds.data_source("adbench_classical/wine", data_dir=str(tmp_path / "tfds"))["full"]
    assert len(src) == len(y0) == builder.info.splits["full"].num_examples
    first = src[0]
    assert first["x"].dtype == np.float32 and first["x"].shape == (13,)
    X, y = tb.adbench_arrays(src)
    np.testing.assert_array_equal(X, X0.astype(np.float32))
    np.testing.assert_array_equal(y, y0)
    # record i is row i of the file (no writer shuffling)
    np.testing.assert_array_equal([src[i]["index"] for i in range(5)], np.arange(5))
    # the protocol split on the TFDS arrays equals the split on the loader's arrays
    a = tabular.semisupervised_split(X, y, seed=3)
    b = tabular.semisupervised_split(X0.astype(np.float32), y0, seed=3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_adbench_missing_file_names_it(tmp_path):
    with pytest.raises(ValueError, match="45_wine.npz"):
        _build(tb.AdbenchClassical, "wine", tmp_path / "tfds", tmp_path)


def test_adbench_configs_cover_the_34_sets():
    names = [c.name for c in tb.AdbenchClassical.BUILDER_CONFIGS]
    assert len(names) == len(set(names)) == 34
    assert "satimage-2" in names and "ALOI" in names


# ------------------------------------------------------------------------------------------------
# MVTec AD (fake tree in the public layout)
# ------------------------------------------------------------------------------------------------
def _fake_mvtec(root: pathlib.Path, category: str = "bottle") -> pathlib.Path:
    rng = np.random.default_rng(0)
    base = root / category
    for i in range(3):
        _save_png(base / "train" / "good" / f"{i:03d}.png", rng.integers(0, 256, (6, 8, 3), np.uint8))
    for i in range(2):
        _save_png(base / "test" / "good" / f"{i:03d}.png", rng.integers(0, 256, (6, 8, 3), np.uint8))
    for i in range(2):
        _save_png(base / "test" / "broken" / f"{i:03d}.png", rng.integers(0, 256, (6, 8, 3), np.uint8))
        mask = np.zeros((6, 8), np.uint8)
        mask[1 + i:4, 2:5 + i] = 255
        _save_png(base / "ground_truth" / "broken" / f"{i:03d}_mask.png", mask)
    return root


@pytest.mark.parametrize("size,grayscale", [(None, False), ((4, 5), True)])
def test_mvtec_matches_loader(tmp_path, size, grayscale):
    root = _fake_mvtec(tmp_path / "mvtec")
    config = "bottle" if size is None else tb.ImageConfig(
        name="bottle_4x5_gray", category="bottle", size=size, grayscale=grayscale)
    builder = _build(tb.MVTecAD, config, tmp_path / "tfds", root)
    sources = builder.as_data_source()
    assert set(sources) == {"train", "test"}
    for split in ("train", "test"):
        ref = image_lib.load_mvtec(root, "bottle", split=split, size=size, grayscale=grayscale)
        got = tb.image_set_from_source(sources[split]) if size is not None else None
        recs = _records(sources[split])
        assert len(recs) == len(ref)
        for r, img, lab, kind, path in zip(recs, ref.images, ref.labels, ref.kinds, ref.paths):
            np.testing.assert_array_equal(r["image"], img)
            assert r["label"] == lab and _text(r["defect_type"]) == kind
            assert _text(r["filename"]) == pathlib.Path(path).relative_to(root).as_posix()
        if split == "test":
            np.testing.assert_array_equal(np.stack([r["mask"][..., 0] for r in recs]), ref.masks)
            assert ref.masks.sum() > 0 and ref.labels.sum() == 2
        else:
            assert all(r["mask"].max() == 0 for r in recs)
        if got is not None:
            np.testing.assert_array_equal(got.images, ref.images)
            assert got.kinds == ref.kinds


def test_mvtec_missing_category_raises(tmp_path):
    root = _fake_mvtec(tmp_path / "mvtec", category="bottle")
    with pytest.raises(ValueError, match="cable"):
        _build(tb.MVTecAD, "cable", tmp_path / "tfds", root)


def test_image_config_validates_size():
    with pytest.raises(ValueError, match="size"):
        tb.ImageConfig(name="bad", category="x", size=(0, 4))


# ------------------------------------------------------------------------------------------------
# VisA (fake tree in the public split_csv layout)
# ------------------------------------------------------------------------------------------------
def _fake_visa(root: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(1)
    rows = ["object,split,label,image,mask"]
    anno = ["image,label,mask"]
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            rel = f"candle/Data/Images/Normal/{split}{i:02d}.JPG"
            _save_png(root / rel, rng.integers(0, 256, (10, 12, 3), np.uint8), fmt="jpeg")
            rows.append(f"candle,{split},normal,{rel},")
            anno.append(f"{rel},normal,")
    for i in range(2):
        rel = f"candle/Data/Images/Anomaly/{i:03d}.JPG"
        mrel = f"candle/Data/Masks/Anomaly/{i:03d}.png"
        _save_png(root / rel, rng.integers(0, 256, (10, 12, 3), np.uint8), fmt="jpeg")
        mask = np.zeros((10, 12), np.uint8)
        mask[2:5, 3:7] = 1          # VisA masks: small non-zero values, not 255
        mask[6:8, 8:10] = 2 + i
        _save_png(root / mrel, mask)
        rows.append(f"candle,test,anomaly,{rel},{mrel}")
        anno.append(f'{rel},{"wax missing" if i == 0 else chr(34) + "melt, scratch" + chr(34)},{mrel}')
    # another object in the csv must be ignored
    rows.append("pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    (root / "candle" / "image_anno.csv").write_text("\n".join(anno) + "\n")
    return root


def test_visa_matches_files(tmp_path):
    root = _fake_visa(tmp_path / "visa")
    builder = _build(tb.VisA, "candle", tmp_path / "tfds", root)
    src = builder.as_data_source()
    train, test = _records(src["train"]), _records(src["test"])
    assert len(train) == 3 and len(test) == 4
    assert [r["label"] for r in test] == [0, 0, 1, 1]
    assert [_text(r["defect_type"]) for r in test] == ["good", "good", "wax missing", "melt, scratch"]
    for r in train + test:
        ref = image_lib.read_image(root / _text(r["filename"]), grayscale=False)
        np.testing.assert_array_equal(r["image"], ref)
    for r in test[2:]:
        raw = image_lib.read_image(root / _text(r["filename"]).replace("Images", "Masks").replace(
            ".JPG", ".png"))[..., 0]
        np.testing.assert_array_equal(r["mask"][..., 0], (raw > 0).astype(np.uint8))
        assert r["mask"].sum() == 12 + 4
    assert all(r["mask"].max() == 0 for r in train + test[:2])


# ------------------------------------------------------------------------------------------------
# Magnetic tile (real data)
# ------------------------------------------------------------------------------------------------
@pytest.mark.data
def test_magnetic_tile_matches_loader(shared_data, tmp_path):
    root = shared_data / "image" / "magnetic_tile"
    classes = ("MT_Fray", "MT_Crack")
    cfg = tb.ImageConfig(name="fray_crack_32", size=32, grayscale=True, classes=classes)
    builder = _build(tb.MagneticTile, cfg, tmp_path / "tfds", root)
    got = tb.image_set_from_source(builder.as_data_source()["full"])
    ref = image_lib.load_magnetic_tile(root, size=32, classes=classes)
    np.testing.assert_array_equal(got.images, ref.images)
    np.testing.assert_array_equal(got.masks, ref.masks)
    np.testing.assert_array_equal(got.labels, ref.labels)
    assert got.kinds == ref.kinds and got.masks.sum() > 0


@pytest.mark.data
def test_magnetic_tile_registered_64_config_and_protocol(shared_data, tmp_path):
    root = shared_data / "image" / "magnetic_tile"
    _build(tb.MagneticTile, "64", tmp_path / "tfds", root)
    src = tfds.data_source("magnetic_tile/64", data_dir=str(tmp_path / "tfds"))["full"]
    got = tb.image_set_from_source(src)
    ref = image_lib.load_magnetic_tile(root, size=64)
    assert len(got) == 1344 and got.images.shape[1:] == (64, 64, 1)
    np.testing.assert_array_equal(got.images, ref.images)
    np.testing.assert_array_equal(got.masks, ref.masks)
    # the design's split (seeded 70% of MT_Free) is the same on the TFDS copy and the loader's
    a, b = image_lib.magnetic_tile_split(got, seed=1), image_lib.magnetic_tile_split(ref, seed=1)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert a.test.kinds == b.test.kinds


@pytest.mark.data
def test_magnetic_tile_native_size(shared_data, tmp_path):
    root = shared_data / "image" / "magnetic_tile"
    cfg = tb.ImageConfig(name="fray_native", grayscale=True, classes=("MT_Fray",))
    builder = _build(tb.MagneticTile, cfg, tmp_path / "tfds", root)
    recs = _records(builder.as_data_source()["full"])
    files = sorted((root / "MT_Fray" / "Imgs").glob("*.jpg"))
    assert len(recs) == len(files) == 32
    shapes = set()
    for r, f in zip(recs[:6], files[:6]):
        ref = image_lib.read_image(f, grayscale=True)
        np.testing.assert_array_equal(r["image"], ref)
        raw = image_lib.read_image(f.with_suffix(".png"), grayscale=True)
        np.testing.assert_array_equal(r["mask"], (raw >= 128).astype(np.uint8))
        shapes.add(r["image"].shape)
        assert r["label"] == 1 and _text(r["defect_type"]) == "MT_Fray"
    assert len(shapes) > 1  # native sizes vary
    with pytest.raises(ValueError, match="size"):
        tb.image_set_from_source(builder.as_data_source()["full"])


# ------------------------------------------------------------------------------------------------
# time series (real data)
# ------------------------------------------------------------------------------------------------
@pytest.mark.data
def test_skab_matches_loader(shared_data, tmp_path):
    root = shared_data / "timeseries" / "skab"
    src = _build(tb.Skab, None, tmp_path / "tfds", root).as_data_source()
    runs = timeseries.skab_runs(root)
    assert len(src["train"]) == 1 and len(src["test"]) == len(runs) == 34
    ref0 = timeseries.load_skab(root, runs[0])
    np.testing.assert_array_equal(src["train"][0]["values"], ref0.train)
    assert src["train"][0]["labels"].sum() == 0
    for i in (0, 17, 33):
        ref = timeseries.load_skab(root, runs[i])
        rec = src["test"][i]
        assert _text(rec["series"]) == runs[i]
        np.testing.assert_array_equal(rec["values"], ref.test)
        np.testing.assert_array_equal(rec["labels"], ref.labels)


def _assert_series(src, names, loads):
    """Record i of train/test is loader item i: name, values, labels (train labels all 0)."""
    assert len(src["train"]) == len(src["test"]) == len(names)
    for i, (name, ref) in enumerate(zip(names, loads)):
        tr, te = src["train"][i], src["test"][i]
        assert _text(tr["series"]) == _text(te["series"]) == name
        assert tr["values"].dtype == np.float32 and tr["labels"].dtype == np.int64
        np.testing.assert_array_equal(tr["values"], ref.train)
        np.testing.assert_array_equal(te["values"], ref.test)
        np.testing.assert_array_equal(te["labels"], ref.labels)
        np.testing.assert_array_equal(tr["labels"], np.zeros(len(ref.train), np.int64))


@pytest.mark.data
def test_asd_matches_loader(shared_data, tmp_path):
    root = shared_data / "timeseries" / "asd"
    _build(tb.Asd, None, tmp_path / "tfds", root)
    src = tfds.data_source("asd", data_dir=str(tmp_path / "tfds"))
    entities = timeseries.asd_entities(root)
    assert len(entities) == 12
    _assert_series(src, entities, [timeseries.load_asd(root, e) for e in entities])
    # a stored series feeds the window pipeline unchanged
    ds = timeseries.window_dataset(src["test"][0]["values"], length=16, stride=16)
    np.testing.assert_array_equal(ds[1]["x"], timeseries.load_asd(root, entities[0]).test[16:32])


# ------------------------------------------------------------------------------------------------
# NAB (real data), SMD, SMAP/MSL, UCR (fake trees in the public layouts)
# ------------------------------------------------------------------------------------------------
@pytest.mark.data
def test_nab_matches_loader(shared_data, tmp_path):
    root = shared_data / "timeseries" / "nab"
    _build(tb.Nab, None, tmp_path / "tfds", root)
    src = tfds.data_source("nab", data_dir=str(tmp_path / "tfds"))
    names = timeseries.nab_series(root)
    assert len(names) == 58  # every series, with or without label windows
    _assert_series(src, names, [timeseries.load_nab(root, n) for n in names])
    i = names.index("realKnownCause/nyc_taxi.csv")
    n = len(src["train"][i]["values"]) + len(src["test"][i]["values"])
    assert len(src["train"][i]["values"]) == timeseries.nab_train_size(n) == 750
    assert src["test"][i]["labels"].sum() > 0
    j = names.index("artificialNoAnomaly/art_flatline.csv")
    assert src["test"][j]["labels"].sum() == 0


def _fake_smd(root: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(2)
    for machine, (n_train, n_test) in (("machine-1-2", (12, 9)), ("machine-1-10", (7, 11))):
        for sub, n in (("train", n_train), ("test", n_test)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            np.savetxt(root / sub / f"{machine}.txt", rng.random((n, 38)), delimiter=",", fmt="%.6f")
        lab = np.zeros(n_test, int)
        lab[3:6] = 1
        (root / "test_label").mkdir(exist_ok=True)
        np.savetxt(root / "test_label" / f"{machine}.txt", lab, fmt="%d")
    return root


def test_smd_matches_loader(tmp_path):
    root = _fake_smd(tmp_path / "smd")
    src = _build(tb.Smd, None, tmp_path / "tfds", root).as_data_source()
    names = timeseries.smd_machines(root)
    assert names == ["machine-1-2", "machine-1-10"]
    _assert_series(src, names, [timeseries.load_smd(root, m) for m in names])
    assert src["test"][1]["values"].shape == (11, 38) and src["test"][1]["labels"].sum() == 3


def _fake_smap_msl(root: pathlib.Path, msl_width: int = 55) -> pathlib.Path:
    import pandas as pd
    rng = np.random.default_rng(3)
    rows = []
    for chan, craft, width, n_train, n_test, spans in (
            ("P-1", "SMAP", 25, 10, 8, "[[2, 3]]"), ("M-1", "MSL", msl_width, 6, 9, "[[0, 1], [7, 8]]"),
            ("E-2", "SMAP", 25, 5, 7, "[[6, 6]]")):
        for sub, n in (("train", n_train), ("test", n_test)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            arr = np.zeros((n, width))
            arr[:, 0] = rng.normal(size=n)
            arr[np.arange(n), rng.integers(1, width, n)] = 1.0  # one-hot command columns
            np.save(root / sub / f"{chan}.npy", arr)
        rows.append({"chan_id": chan, "spacecraft": craft, "anomaly_sequences": spans,
                     "class": "[point]", "num_values": n_test})
    pd.DataFrame(rows).to_csv(root / "labeled_anomalies.csv", index=False)
    return root


def test_smap_msl_matches_loader(tmp_path):
    root = _fake_smap_msl(tmp_path / "telemanom")
    for config, craft, width in (("smap", "SMAP", 25), ("msl", "MSL", 55)):
        _build(tb.SmapMsl, config, tmp_path / "tfds", root)
        src = tfds.data_source(f"smap_msl/{config}", data_dir=str(tmp_path / "tfds"))
        names = timeseries.smap_msl_channels(root, craft)
        assert names == (["P-1", "E-2"] if craft == "SMAP" else ["M-1"])
        _assert_series(src, names, [timeseries.load_smap_msl(root, c) for c in names])
        assert src["test"][0]["values"].shape[1] == width
    np.testing.assert_array_equal(np.flatnonzero(src["test"][0]["labels"]), [0, 1, 7, 8])


def test_smap_msl_channel_width(tmp_path):
    root = _fake_smap_msl(tmp_path / "telemanom", msl_width=7)
    with pytest.raises(ValueError, match="'M-1' has 7 channels"):
        _build(tb.SmapMsl, "msl", tmp_path / "tfds", root)
    # a custom config with channels=None stores any width
    cfg = tb.SmapMslConfig(name="msl_any", spacecraft="MSL", channels=None)
    src = _build(tb.SmapMsl, cfg, tmp_path / "tfds2", root).as_data_source()
    _assert_series(src, ["M-1"], [timeseries.load_smap_msl(root, "M-1")])
    assert "tensorflow" not in sys.modules  # zlib-encoded values decode without TensorFlow
    with pytest.raises(ValueError, match="spacecraft"):
        tb.SmapMslConfig(name="x", spacecraft="Mars")


def _fake_ucr(root: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(4)
    folder = root / "AnomalyDatasets_2021" / "UCR_TimeSeriesAnomalyDatasets2021" / "FilesAreInHere" / \
        "UCR_Anomaly_FullData"
    folder.mkdir(parents=True)
    (folder / "010_UCR_Anomaly_toyB_12_15_17.txt").write_text(
        "\n".join(f"{v:.5f}" for v in rng.normal(size=20)) + "\n")
    (folder / "002_UCR_Anomaly_toyA_8_9_9.txt").write_text(  # one line, space-separated
        "  ".join(f"{v:.5f}" for v in rng.normal(size=14)))
    (root / "readme.txt").write_text("not a series")
    return root


def test_ucr_matches_loader(tmp_path):
    root = _fake_ucr(tmp_path / "ucr")
    src = _build(tb.Ucr, None, tmp_path / "tfds", root).as_data_source()
    files = sorted(root.rglob("*_UCR_Anomaly_*.txt"))  # ids are zero-padded: name order = id order
    names = [f.name[:-4] for f in files]
    assert names == ["002_UCR_Anomaly_toyA_8_9_9", "010_UCR_Anomaly_toyB_12_15_17"]
    _assert_series(src, names, [timeseries.load_ucr(f) for f in files])
    assert len(src["train"][1]["values"]) == 12 and len(src["test"][1]["values"]) == 8
    # positions 15..17 of the file (1-based) = test rows 2..4
    np.testing.assert_array_equal(np.flatnonzero(src["test"][1]["labels"]), [2, 3, 4])
    np.testing.assert_array_equal(np.flatnonzero(src["test"][0]["labels"]), [0])


@pytest.mark.parametrize("cls,config,match", [
    (tb.Nab, None, "combined_windows.json"),
    (tb.Smd, None, "test_label"),
    (tb.SmapMsl, "smap", "labeled_anomalies.csv"),
    (tb.Ucr, None, "UCR_Anomaly"),
])
def test_timeseries_builders_reject_wrong_layout(tmp_path, cls, config, match):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "notes.txt").write_text("nothing of the expected layout")
    with pytest.raises(ValueError, match=match):
        _build(cls, config, tmp_path / "tfds", manual)
    with pytest.raises(ValueError, match="empty"):  # TFDS's own check, raised as ValueError
        _build(cls, config, tmp_path / "tfds", tmp_path / "missing")


def test_smap_msl_rejects_missing_spacecraft(tmp_path):
    root = _fake_smap_msl(tmp_path / "telemanom")
    import pandas as pd
    table = pd.read_csv(root / "labeled_anomalies.csv")
    table[table["spacecraft"] == "SMAP"].to_csv(root / "labeled_anomalies.csv", index=False)
    with pytest.raises(ValueError, match="no MSL channel"):
        _build(tb.SmapMsl, "msl", tmp_path / "tfds", root)
