"""TFDS builders for public anomaly-detection benchmarks, prepared from a manual directory.

Nothing is downloaded: every builder reads the user's copy of a dataset from
`download_config.manual_dir` (see `MANUAL_DOWNLOAD_INSTRUCTIONS` of each builder) through the
readers of `adiff.data.tabular`, `adiff.data.timeseries` and `adiff.data.image`, so a TFDS build
and a direct load give the same arrays. Builds use `file_format="array_record"` and are read
with `tfds.data_source` / `builder.as_data_source()`: TensorFlow is never imported (images are
PNG-encoded with PIL and decoded with PIL). Examples are written in the order of the readers
(`disable_shuffling=True`), so record i of a split is item i of the direct loader.

Builders (dataset name / configs / splits):

- `adbench_classical` / one config per ADBench "Classical" set ("wine", "ALOI", ...) / "full"
  {"x": [D] float32, "y": int64 (1 = anomaly), "index": int64 row in the .npz}. The split of the
  design's semi-supervised protocol is NOT baked in: it is seeded (seeds 0..4), so it stays in
  `adiff.data.tabular.semisupervised_split`; `adbench_arrays(source)` gives (X, y) for it.
- `mvtec_ad` / one config per category / "train", "test" (the published split).
- `visa` / one config per category / "train", "test" from VisA's `split_csv/1cls.csv`.
- `magnetic_tile` / "original" (native sizes) and "64" (64 x 64) / "full" (no published split;
  `magnetic_tile_split(image_set_from_source(source))` applies the design's protocol).
  Image features: {"image": [H, W, C] uint8, "mask": [H, W, 1] uint8 0/1, "label": 0/1,
  "defect_type": str ("good" for normal images), "filename": str (relative to the manual dir)}.
- `skab` / "train" (anomaly-free.csv, 1 series) and "test" (34 labelled runs);
  `asd` / "train" and "test" (12 entities each, same order). One example per series with the
  full arrays: {"series": str, "values": [T, C] float32, "labels": [T] int64}; training series
  carry no labels and have all-zero "labels". Windows are cut on access with
  `adiff.data.timeseries.window_dataset`, not stored.
- `nab` / "train" (probationary part, unlabelled) and "test" (the rest) of all 58 series;
  `smd` / "train", "test" (28 machines, 38 metrics); `smap_msl` / configs "smap" (25 columns)
  and "msl" (55) / "train", "test" (one example per channel id); `ucr_anomaly` / "train" (the
  first train_end points) and "test" (the rest) of every archive file. Same features and
  conventions as `skab` / `asd`; each split as the matching `load_*` of adiff.data.timeseries.

Custom configs (other categories in the MVTec layout, other image sizes, a subset of the
Magnetic-tile classes) are passed as instances: `MVTecAD(config=ImageConfig(name="candle_256",
category="candle", size=256), data_dir=...)`.
"""
from __future__ import annotations

import dataclasses
import io
import os
import pathlib
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from adiff.data import image as image_lib
from adiff.data import tabular
from adiff.data import timeseries

# The builders stream one image at a time with the readers of adiff.data.image (load_mvtec and
# load_magnetic_tile hold a whole folder in memory, too much for MVTec AD at native size).
_read_mask = image_lib._read_mask  # pylint: disable=protected-access
_list_images = image_lib._list_images  # pylint: disable=protected-access

__all__ = [
    "ADBENCH_CLASSICAL", "MVTEC_CATEGORIES", "VISA_CATEGORIES",
    "AdbenchConfig", "ImageConfig", "SmapMslConfig",
    "AdbenchClassical", "MVTecAD", "VisA", "MagneticTile", "Skab", "Asd",
    "Nab", "Smd", "SmapMsl", "Ucr",
    "source_arrays", "adbench_arrays", "image_set_from_source",
]

_VERSION = tfds.core.Version("1.0.0")
_LABELS = ("normal", "anomaly")

# (name as in <id>_<name>.npz, ADBench id, number of features)
ADBENCH_CLASSICAL: Tuple[Tuple[str, int, int], ...] = (
    ("ALOI", 1, 27), ("annthyroid", 2, 6), ("breastw", 4, 9), ("campaign", 5, 62),
    ("cardio", 6, 21), ("Cardiotocography", 7, 21), ("celeba", 8, 39), ("cover", 10, 10),
    ("glass", 14, 7), ("Hepatitis", 15, 19), ("http", 16, 3), ("Ionosphere", 18, 32),
    ("landsat", 19, 36), ("letter", 20, 32), ("Lymphography", 21, 18), ("mammography", 23, 6),
    ("mnist", 24, 100), ("musk", 25, 166), ("optdigits", 26, 64), ("pendigits", 28, 16),
    ("Pima", 29, 8), ("satellite", 30, 36), ("satimage-2", 31, 36), ("shuttle", 32, 9),
    ("smtp", 34, 3), ("Stamps", 37, 9), ("thyroid", 38, 6), ("vertebral", 39, 6),
    ("vowels", 40, 12), ("WBC", 42, 9), ("WDBC", 43, 30), ("wine", 45, 13), ("WPBC", 46, 33),
    ("yeast", 47, 8),
)
MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather",
                    "metal_nut", "pill", "screw", "tile", "toothbrush", "transistor", "wood",
                    "zipper")
VISA_CATEGORIES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
                   "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum")


def _manual_dir(dl_manager, builder: str) -> pathlib.Path:
    try:
        path = pathlib.Path(os.fspath(dl_manager.manual_dir))
    except AssertionError as e:  # TFDS: manual_dir missing, empty or not set
        raise ValueError(f"{builder}: {e}") from None
    if not path.is_dir():
        raise ValueError(f"{builder}: download_config.manual_dir must be an existing directory, "
                         f"got {str(path)!r}")
    return path


# ------------------------------------------------------------------------------------------------
# ADBench classical tables
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class AdbenchConfig(tfds.core.BuilderConfig):
    """One ADBench classical set.

    Attributes:
      file_id: the ADBench id in the file name `<file_id>_<name>.npz`.
      num_features: D, the number of columns of X.
    """

    file_id: int = 0
    num_features: int = 0


class AdbenchClassical(tfds.core.GeneratorBasedBuilder):
    """The 34 ADBench "Classical" tables (X [n, D], y [n], 1 = anomaly), one config per set."""

    name = "adbench_classical"
    VERSION = _VERSION
    BUILDER_CONFIGS = [AdbenchConfig(name=n, file_id=i, num_features=d,
                                     description=f"ADBench {i}_{n}.npz ({d} features)")
                       for n, i, d in ADBENCH_CLASSICAL]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Point manual_dir at a folder holding the ADBench files `<id>_<name>.npz` (ADBench's
    `adbench/datasets/Classical/` folder) or one sub-folder per set, `<name>/<id>_<name>.npz`.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=("ADBench classical anomaly-detection table (Han et al., NeurIPS 2022); "
                         "split 'full' in file order; make the protocol's train/test split with "
                         "adiff.data.tabular.semisupervised_split."),
            features=tfds.features.FeaturesDict({
                "x": tfds.features.Tensor(shape=(self.builder_config.num_features,), dtype=np.float32),
                "y": tfds.features.Scalar(dtype=np.int64),
                "index": tfds.features.Scalar(dtype=np.int64),
            }),
            supervised_keys=("x", "y"),
            disable_shuffling=True,
            homepage="https://github.com/Minqi824/ADBench",
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        root = _manual_dir(dl_manager, "adbench_classical")
        fname = f"{cfg.file_id}_{cfg.name}.npz"
        candidates = [root / fname, root / cfg.name / fname]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ValueError(f"adbench_classical/{cfg.name}: expected {fname} in manual_dir; looked at "
                             f"{[str(p) for p in candidates]}")
        X, y = tabular.load_adbench_npz(path)
        if X.shape[1] != cfg.num_features:
            raise ValueError(f"{str(path)!r} has {X.shape[1]} features; adbench_classical/{cfg.name} "
                             f"expects {cfg.num_features}")
        return {"full": self._generate_examples(X, y)}

    def _generate_examples(self, X: np.ndarray, y: np.ndarray):
        X = X.astype(np.float32)
        for i in range(len(y)):
            yield i, {"x": X[i], "y": int(y[i]), "index": i}


# ------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class ImageConfig(tfds.core.BuilderConfig):
    """One image subset.

    Attributes:
      category: the category folder (MVTec AD, VisA); unused by magnetic_tile.
      size: None (native sizes, variable) or (height, width) / an int to resize to (images
        bilinear with antialiasing, masks bilinear then thresholded, as `adiff.data.image`).
      grayscale: one channel instead of RGB.
      classes: magnetic_tile only: the MT_* folders to read.
    """

    category: str = ""
    size: Optional[Tuple[int, int]] = None
    grayscale: bool = False
    classes: Tuple[str, ...] = image_lib.MT_CLASSES

    def __post_init__(self):
        self.size = image_lib._as_size(self.size)  # pylint: disable=protected-access
        if not isinstance(self.grayscale, bool):
            raise TypeError(f"grayscale must be a bool, got {type(self.grayscale).__name__}")


def _png(arr: np.ndarray) -> bytes:
    """PNG bytes of [H, W, 1] or [H, W, 3] uint8 (PIL; lossless, so decoding gives arr back)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    arr = np.ascontiguousarray(arr)
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="png")
    return buf.getvalue()


class _ImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared features and example encoding of the image builders."""

    VERSION = _VERSION

    def _image_info(self, description: str, homepage: str) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        h, w = cfg.size if cfg.size is not None else (None, None)
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(h, w, 1 if cfg.grayscale else 3),
                                             encoding_format="png"),
                "mask": tfds.features.Image(shape=(h, w, 1), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=_LABELS),
                "defect_type": tfds.features.Text(),
                "filename": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage=homepage,
        )

    def _example(self, image: np.ndarray, mask: np.ndarray, label: int, defect_type: str,
                 filename: str) -> Dict:
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{filename}: mask shape {mask.shape} differs from image {image.shape[:2]}")
        return {"image": _png(image), "mask": _png(mask[..., None].astype(np.uint8)),
                "label": int(label), "defect_type": defect_type, "filename": filename}


class MVTecAD(_ImageBuilder):
    """MVTec AD from its public layout, one config per category (native size, RGB)."""

    name = "mvtec_ad"
    BUILDER_CONFIGS = [ImageConfig(name=c, category=c, description=f"MVTec AD {c}")
                       for c in MVTEC_CATEGORIES]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download MVTec AD (https://www.mvtec.com/company/research/datasets/mvtec-ad, CC BY-NC-SA 4.0)
    and extract it; manual_dir is the folder holding `<category>/train/good/*.png`,
    `<category>/test/<defect>/*.png` and `<category>/ground_truth/<defect>/<stem>_mask.png`.
    """

    def _info(self):
        return self._image_info("MVTec AD (Bergmann et al., CVPR 2019): industrial images, pixel "
                                "masks, the published train (good only) / test split.",
                                "https://www.mvtec.com/company/research/datasets/mvtec-ad")

    def _split_generators(self, dl_manager):
        root = _manual_dir(dl_manager, "mvtec_ad")
        base = root / self.builder_config.category
        for sub in ("train", "test"):
            if not (base / sub).is_dir():
                raise ValueError(f"mvtec_ad/{self.builder_config.name}: expected the folder "
                                 f"{str(base / sub)!r} (MVTec AD layout)")
        return {s: self._generate_examples(root, s) for s in ("train", "test")}

    def _generate_examples(self, root: pathlib.Path, split: str):
        # Same traversal as adiff.data.image.load_mvtec, one image at a time (bounded memory).
        cfg = self.builder_config
        base = root / cfg.category
        folders = sorted(p for p in (base / split).iterdir() if p.is_dir())
        if split == "train":
            folders = [p for p in folders if p.name == "good"]
        key = 0
        for folder in folders:
            good = folder.name == "good"
            gt = base / "ground_truth" / folder.name
            for p in _list_images(folder):
                img = image_lib.read_image(p, size=cfg.size, grayscale=cfg.grayscale)
                mp = gt / f"{p.stem}_mask.png"
                if good or split == "train" or not mp.is_file():
                    mask = np.zeros(img.shape[:2], np.uint8)
                else:
                    mask = _read_mask(mp, cfg.size, img.shape[:2])
                yield key, self._example(img, mask, 0 if good else 1, folder.name,
                                         p.relative_to(root).as_posix())
                key += 1


class VisA(_ImageBuilder):
    """VisA from its public layout and `split_csv/1cls.csv`, one config per category."""

    name = "visa"
    BUILDER_CONFIGS = [ImageConfig(name=c, category=c, description=f"VisA {c}")
                       for c in VISA_CATEGORIES]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download VisA (https://github.com/amazon-science/spot-diff, CC BY 4.0) and extract it;
    manual_dir is the folder holding `split_csv/1cls.csv` and `<category>/Data/Images/...`,
    `<category>/Data/Masks/...` (the paths in 1cls.csv are relative to it). Optional
    `<category>/image_anno.csv` (columns image,label,mask) gives the defect description.
    """

    def _info(self):
        return self._image_info("VisA (Zou et al., ECCV 2022): 12 objects, pixel masks, the "
                                "1cls split (train: normal only).",
                                "https://github.com/amazon-science/spot-diff")

    def _split_generators(self, dl_manager):
        import pandas as pd  # pylint: disable=import-outside-toplevel
        root = _manual_dir(dl_manager, "visa")
        csv = root / "split_csv" / "1cls.csv"
        if not csv.is_file():
            raise ValueError(f"visa: expected the split file {str(csv)!r} (VisA layout)")
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
        need = {"object", "split", "label", "image", "mask"}
        if not need <= set(table.columns):
            raise ValueError(f"{str(csv)!r} needs columns {sorted(need)}; got {list(table.columns)}")
        table = table[table["object"] == self.builder_config.category]
        if table.empty:
            raise ValueError(f"visa: category {self.builder_config.category!r} is not in {str(csv)!r}")
        bad = set(table["label"]) - set(_LABELS)
        if bad:
            raise ValueError(f"{str(csv)!r}: labels must be 'normal' or 'anomaly', got {sorted(bad)}")
        kinds = self._defect_types(root)
        return {s: self._generate_examples(root, table[table["split"] == s], kinds)
                for s in ("train", "test")}

    def _defect_types(self, root: pathlib.Path) -> Dict[str, str]:
        import pandas as pd  # pylint: disable=import-outside-toplevel
        path = root / self.builder_config.category / "image_anno.csv"
        if not path.is_file():
            return {}
        anno = pd.read_csv(path, dtype=str, keep_default_na=False)
        if not {"image", "label"} <= set(anno.columns):
            return {}
        return dict(zip(anno["image"], anno["label"]))

    def _generate_examples(self, root: pathlib.Path, rows, kinds: Dict[str, str]):
        cfg = self.builder_config
        for key, (rel, label, mask_rel) in enumerate(zip(rows["image"], rows["label"], rows["mask"])):
            img = image_lib.read_image(root / rel, size=cfg.size, grayscale=cfg.grayscale)
            if label == "anomaly" and mask_rel:
                # VisA masks mark defects with any non-zero value (not 255): binarise first.
                raw = image_lib.read_image(root / mask_rel, grayscale=True)[..., 0]
                mask = np.where(raw > 0, 255, 0).astype(np.uint8)
                if cfg.size is not None:
                    mask = image_lib.resize_images(mask[None], cfg.size)[0]
                mask = (mask >= 128).astype(np.uint8)
            else:
                mask = np.zeros(img.shape[:2], np.uint8)
            kind = "good" if label == "normal" else (kinds.get(rel) or "anomaly")
            yield key, self._example(img, mask, _LABELS.index(label), kind, rel)


class MagneticTile(_ImageBuilder):
    """Magnetic-tile surface defects (grayscale, pixel masks); split "full" (no published split)."""

    name = "magnetic_tile"
    BUILDER_CONFIGS = [
        ImageConfig(name="original", grayscale=True, description="native sizes (variable)"),
        ImageConfig(name="64", size=(64, 64), grayscale=True, description="resized to 64 x 64"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Clone https://github.com/abin24/Magnetic-tile-defect-datasets. ; manual_dir is the folder
    holding MT_Free, MT_Blowhole, MT_Break, MT_Crack, MT_Fray, MT_Uneven (each with Imgs/<id>.jpg
    and the same-name .png mask).
    """

    def _info(self):
        return self._image_info("Magnetic-tile defects (Huang et al., The Visual Computer 2020): "
                                "MT_Free normal, other classes anomalous; masks thresholded at 128.",
                                "https://github.com/abin24/Magnetic-tile-defect-datasets.")

    def _split_generators(self, dl_manager):
        root = _manual_dir(dl_manager, "magnetic_tile")
        for cls in self.builder_config.classes:
            if not (root / cls / "Imgs").is_dir():
                raise ValueError(f"magnetic_tile: expected the folder {str(root / cls / 'Imgs')!r}")
        return {"full": self._generate_examples(root)}

    def _generate_examples(self, root: pathlib.Path):
        # Same files and order as adiff.data.image.load_magnetic_tile, one image at a time.
        cfg = self.builder_config
        key = 0
        for cls in cfg.classes:
            folder = root / cls / "Imgs"
            for p in _list_images(folder, (".jpg", ".jpeg")):
                img = image_lib.read_image(p, size=cfg.size, grayscale=True)
                mp = folder / f"{p.stem}.png"
                mask = (_read_mask(mp, cfg.size, img.shape[:2]) if mp.is_file()
                        else np.zeros(img.shape[:2], np.uint8))
                yield key, self._example(img, mask, 0 if cls == "MT_Free" else 1, cls,
                                         p.relative_to(root).as_posix())
                key += 1


# ------------------------------------------------------------------------------------------------
# time series
# ------------------------------------------------------------------------------------------------
def _series_features(channels: Optional[int]) -> tfds.features.FeaturesDict:
    # channels=None: a variable trailing dimension, which TFDS stores zlib-compressed.
    values = (tfds.features.Tensor(shape=(None, channels), dtype=np.float32) if channels is not None
              else tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding="zlib"))
    return tfds.features.FeaturesDict({
        "series": tfds.features.Text(),
        "values": values,
        "labels": tfds.features.Tensor(shape=(None,), dtype=np.int64),
    })


def _series_example(name: str, values: np.ndarray, labels: Optional[np.ndarray]) -> Dict:
    values = np.asarray(values, np.float32)
    labels = np.zeros(len(values), np.int64) if labels is None else np.asarray(labels, np.int64)
    return {"series": name, "values": values, "labels": labels}


def _split_examples(items: Sequence, load, split: str, *, name=str, check=None):
    """(key, example) of one split for builders whose "train" and "test" records are the two
    parts of the same series: `load(item)` -> SeriesSplit, `name(item)` its series name,
    `check(name, data)` an optional validation of the loaded arrays."""
    for key, item in enumerate(items):
        data, series = load(item), name(item)
        if check is not None:
            check(series, data)
        if split == "train":
            yield key, _series_example(series, data.train, None)
        else:
            yield key, _series_example(series, data.test, data.labels)


class Skab(tfds.core.GeneratorBasedBuilder):
    """SKAB: "train" = anomaly-free.csv (1 series), "test" = the 34 labelled runs (8 sensors)."""

    name = "skab"
    VERSION = _VERSION
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Clone https://github.com/waico/SKAB; manual_dir is its folder holding data/ (or the data/
    folder itself: anomaly-free/, valve1/, valve2/, other/).
    """

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=("Skoltech Anomaly Benchmark: one example per series with the full "
                         "arrays; labels from the 'anomaly' column (all 0 for anomaly-free)."),
            features=_series_features(8), disable_shuffling=True,
            homepage="https://github.com/waico/SKAB")

    def _split_generators(self, dl_manager):
        root = _manual_dir(dl_manager, "skab")
        runs = timeseries.skab_runs(root)
        if not runs:
            raise ValueError(f"skab: no labelled runs (valve1/*.csv, ...) under {str(root)!r}")
        return {"train": self._generate_examples(root, None), "test": self._generate_examples(root, runs)}

    def _generate_examples(self, root, runs: Optional[Sequence[str]]):
        if runs is None:
            first = timeseries.skab_runs(root)[0]
            train = timeseries.load_skab(root, first).train
            yield 0, _series_example("anomaly-free/anomaly-free", train, None)
            return
        for key, run in enumerate(runs):
            split = timeseries.load_skab(root, run)
            yield key, _series_example(run, split.test, split.labels)


class Asd(tfds.core.GeneratorBasedBuilder):
    """ASD (InterFusion): "train" and "test" hold the 12 entities in the same order (19 metrics)."""

    name = "asd"
    VERSION = _VERSION
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    manual_dir holds processed/omi-<k>.npz with arrays train, test, test_label (InterFusion's
    pickles re-saved as npz, see the ASD section of the data README).
    """

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=("Application Server Dataset: one example per entity with the full arrays; "
                         "training series are unlabelled (labels all 0)."),
            features=_series_features(19), disable_shuffling=True,
            homepage="https://github.com/zhhlee/InterFusion")

    def _split_generators(self, dl_manager):
        root = _manual_dir(dl_manager, "asd")
        entities = timeseries.asd_entities(root)
        if not entities:
            raise ValueError(f"asd: no processed/omi-*.npz under {str(root)!r}")
        return {s: self._generate_examples(root, entities, s) for s in ("train", "test")}

    def _generate_examples(self, root, entities: Sequence[str], split: str):
        return _split_examples(entities, lambda e: timeseries.load_asd(root, e), split)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_channels(builder: str, name: str, values: np.ndarray, channels: Optional[int]) -> None:
    if channels is not None and values.shape[1] != channels:
        raise ValueError(f"{builder}: series {name!r} has {values.shape[1]} channels; expected "
                         f"{channels}")


class Nab(tfds.core.GeneratorBasedBuilder):
    """NAB: every series of combined_windows.json; "train" = probationary part, "test" = the rest."""

    name = "nab"
    VERSION = _VERSION
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Clone https://github.com/numenta/NAB; manual_dir is the clone (the folder holding
    data/<category>/<series>.csv, header timestamp,value, and labels/combined_windows.json).
    """

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=("Numenta Anomaly Benchmark: one example per series (all 58, including the "
                         "series without label windows), in sorted key order, split as "
                         "adiff.data.timeseries.load_nab: the probationary period "
                         "(min(floor(0.15 n), 750) points) trains, unlabelled; the rest is the test "
                         "part, labelled 1 inside the combined_windows.json windows."),
            features=_series_features(1), disable_shuffling=True,
            homepage="https://github.com/numenta/NAB")

    def _split_generators(self, dl_manager):
        root = _manual_dir(dl_manager, "nab")
        labels = root / "labels" / "combined_windows.json"
        _require(labels.is_file() and (root / "data").is_dir(),
                 f"nab: expected NAB's data/ folder and {str(labels)!r} (NAB layout) in manual_dir")
        series = timeseries.nab_series(root)
        _require(bool(series), f"nab: {str(labels)!r} names no series")
        return {s: self._generate_examples(root, series, s) for s in ("train", "test")}

    def _generate_examples(self, root, series: Sequence[str], split: str):
        return _split_examples(series, lambda s: timeseries.load_nab(root, s), split)


class Smd(tfds.core.GeneratorBasedBuilder):
    """SMD (ServerMachineDataset): "train" and "test" hold the 28 machines in the same order."""

    name = "smd"
    VERSION = _VERSION
    CHANNELS = 38
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Clone https://github.com/NetManAIOps/OmniAnomaly; manual_dir is its ServerMachineDataset/
    folder, holding train/, test/ and test_label/ with one <machine>.txt per machine
    (machine-1-1.txt, ...; comma-separated, one time step per line, 38 metrics).
    """

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=("Server Machine Dataset (Su et al., KDD 2019): one example per machine with "
                         "the full arrays, in numeric machine order; training series are "
                         "unlabelled (labels all 0), test labels from test_label/."),
            features=_series_features(self.CHANNELS), disable_shuffling=True,
            homepage="https://github.com/NetManAIOps/OmniAnomaly")

    def _split_generators(self, dl_manager):
        root = _manual_dir(dl_manager, "smd")
        missing = [s for s in ("train", "test", "test_label") if not (root / s).is_dir()]
        _require(not missing, f"smd: expected the folders train/, test/, test_label/ (SMD layout) "
                              f"in {str(root)!r}; missing {missing}")
        machines = timeseries.smd_machines(root)
        _require(bool(machines), f"smd: no train/<machine>.txt under {str(root)!r}")
        return {s: self._generate_examples(root, machines, s) for s in ("train", "test")}

    def _generate_examples(self, root, machines: Sequence[str], split: str):
        check = lambda m, data: _check_channels("smd", m, data.train, self.CHANNELS)
        return _split_examples(machines, lambda m: timeseries.load_smd(root, m), split, check=check)


@dataclasses.dataclass(eq=False)
class SmapMslConfig(tfds.core.BuilderConfig):
    """One spacecraft of the telemanom data.

    Attributes:
      spacecraft: "SMAP" or "MSL" (the `spacecraft` column of labeled_anomalies.csv).
      channels: columns per channel array (SMAP 25, MSL 55), or None for a variable trailing
        dimension (a copy whose arrays differ in width).
    """

    spacecraft: str = "SMAP"
    channels: Optional[int] = 25

    def __post_init__(self):
        if self.spacecraft not in ("SMAP", "MSL"):
            raise ValueError(f"spacecraft must be 'SMAP' or 'MSL', got {self.spacecraft!r}")
        if self.channels is not None and (not isinstance(self.channels, int) or self.channels < 1):
            raise ValueError(f"channels must be a positive int or None, got {self.channels!r}")


class SmapMsl(tfds.core.GeneratorBasedBuilder):
    """SMAP / MSL (telemanom): one example per channel id, configs "smap" (25 columns) and "msl" (55)."""

    name = "smap_msl"
    VERSION = _VERSION
    BUILDER_CONFIGS = [
        SmapMslConfig(name="smap", spacecraft="SMAP", channels=25,
                      description="SMAP channels of labeled_anomalies.csv, 25 columns each"),
        SmapMslConfig(name="msl", spacecraft="MSL", channels=55,
                      description="MSL channels of labeled_anomalies.csv, 55 columns each"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Get the telemanom data (https://github.com/khundman/telemanom: data.zip from
    https://s3-us-west-2.amazonaws.com/telemanom/data.zip, and labeled_anomalies.csv from the
    repository); manual_dir holds labeled_anomalies.csv, train/<chan_id>.npy and test/<chan_id>.npy.
    """

    def _info(self):
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=(f"{cfg.spacecraft} telemetry (Hundman et al., KDD 2018): one example per "
                         "channel id in labeled_anomalies.csv order with the full arrays (column 0 "
                         "the telemetry value, the others one-hot commands); training series are "
                         "unlabelled (labels all 0), test labels from anomaly_sequences."),
            features=_series_features(cfg.channels), disable_shuffling=True,
            homepage="https://github.com/khundman/telemanom")

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        root = _manual_dir(dl_manager, "smap_msl")
        csv = root / "labeled_anomalies.csv"
        _require(csv.is_file(), f"smap_msl/{cfg.name}: expected {str(csv)!r} (telemanom layout, with "
                                "train/<chan_id>.npy and test/<chan_id>.npy)")
        channels = timeseries.smap_msl_channels(root, cfg.spacecraft)
        _require(bool(channels), f"smap_msl/{cfg.name}: {str(csv)!r} lists no {cfg.spacecraft} channel")
        return {s: self._generate_examples(root, channels, s) for s in ("train", "test")}

    def _generate_examples(self, root, channels: Sequence[str], split: str):
        cfg = self.builder_config

        def check(channel, data):
            for part in (data.train, data.test):
                _check_channels(f"smap_msl/{cfg.name}", channel, part, cfg.channels)

        return _split_examples(channels, lambda c: timeseries.load_smap_msl(root, c), split, check=check)


def _ucr_files(root) -> list:
    """The UCR anomaly archive files under root (any depth), ordered by id then name.

    Raises ValueError when two files share a name (two copies of the archive under root).
    """
    files = sorted(pathlib.Path(root).rglob("*_UCR_Anomaly_*.txt"),
                   key=lambda p: (int(timeseries.parse_ucr_name(p)["id"]), p.name))
    names = [p.name for p in files]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"UCR files found twice under {str(root)!r}: {dup[:3]}")
    return files


class Ucr(tfds.core.GeneratorBasedBuilder):
    """UCR anomaly archive (KDD Cup 2021): one example per file, split at its train_end."""

    name = "ucr_anomaly"
    VERSION = _VERSION
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the UCR Time Series Anomaly Archive (UCR_TimeSeriesAnomalyDatasets2021.zip, from
    https://www.cs.ucr.edu/~eamonn/time_series_data_2018/) and extract it; manual_dir is any folder
    above the files <id>_UCR_Anomaly_<name>_<train_end>_<begin>_<end>.txt (in the archive:
    AnomalyDatasets_2021/UCR_TimeSeriesAnomalyDatasets2021/FilesAreInHere/UCR_Anomaly_FullData/).
    """

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=("UCR anomaly archive (Wu & Keogh, 2021): one univariate series per file, "
                         "in id order; as adiff.data.timeseries.load_ucr, the first train_end points "
                         "train (unlabelled), the rest is the test part, labelled 1 on positions "
                         "begin..end (1-based, inclusive, of the whole file). 'series' is the file "
                         "name without .txt."),
            features=_series_features(1), disable_shuffling=True,
            homepage="https://www.cs.ucr.edu/~eamonn/time_series_data_2018/")

    def _split_generators(self, dl_manager):
        root = _manual_dir(dl_manager, "ucr_anomaly")
        files = _ucr_files(root)
        _require(bool(files), f"ucr_anomaly: no <id>_UCR_Anomaly_<name>_<train_end>_<begin>_<end>.txt "
                              f"file under {str(root)!r}")
        return {s: self._generate_examples(files, s) for s in ("train", "test")}

    def _generate_examples(self, files: Sequence[pathlib.Path], split: str):
        return _split_examples(files, timeseries.load_ucr, split, name=lambda p: p.name[:-len(".txt")])


# ------------------------------------------------------------------------------------------------
# reading back
# ------------------------------------------------------------------------------------------------
def source_arrays(source, keys: Sequence[str], *, batch_size: int = 4096) -> Dict[str, np.ndarray]:
    """Stacks fields of every record of a data source into arrays, in record order.

    Args:
      source: a random-access source (`tfds.data_source(...)[split]`, a grain source, a list).
      keys: the feature names to stack (fixed-shape features only).
      batch_size: records read per `__getitems__` call.

    Returns:
      {key: [N, ...] array}.
    """
    n = len(source)
    if n == 0:
        raise ValueError("source is empty: expected at least one record")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    getitems = getattr(source, "__getitems__", None)
    out = {k: [] for k in keys}
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        records = getitems(idx) if getitems is not None else [source[i] for i in idx]
        for k in keys:
            if k not in records[0]:
                raise ValueError(f"key {k!r} is not a feature of the source; got {sorted(records[0])}")
            values = [np.asarray(r[k]) for r in records]
            shapes = {v.shape for v in values}
            if len(shapes) > 1:
                raise ValueError(f"feature {k!r} has different shapes across records "
                                 f"({sorted(shapes)[:3]}...); only fixed-size features stack (for "
                                 "images: build a config with a fixed size)")
            out[k].append(np.stack(values))
    return {k: np.concatenate(v) for k, v in out.items()}


def adbench_arrays(source) -> Tuple[np.ndarray, np.ndarray]:
    """(X [n, D] float32, y [n] int64) of an `adbench_classical` split, in the file's row order.

    Feed them to `adiff.data.tabular.semisupervised_split(X, y, seed=s)` for the design's protocol.
    """
    arrays = source_arrays(source, ("x", "y", "index"))
    order = np.argsort(arrays["index"], kind="stable")
    return arrays["x"][order], arrays["y"][order].astype(np.int64)


def image_set_from_source(source) -> image_lib.ImageSet:
    """An `ImageSet` (images, masks, labels, paths = filenames, kinds = defect types) from a split
    of an image builder whose config has a fixed `size` (native sizes differ and cannot stack)."""
    arrays = source_arrays(source, ("image", "mask", "label", "defect_type", "filename"), batch_size=512)
    text = lambda a: tuple(v.decode() if isinstance(v, bytes) else str(v) for v in a)
    return image_lib.ImageSet(images=arrays["image"].astype(np.uint8),
                              masks=arrays["mask"][..., 0].astype(np.uint8),
                              labels=arrays["label"].astype(np.int64),
                              paths=text(arrays["filename"]), kinds=text(arrays["defect_type"]))
