"""Time-series anomaly benchmarks: plain numpy/pandas readers and a grain window pipeline.

Every loader takes the path of the user's copy of a dataset (nothing is downloaded) and returns a
`SeriesSplit(train, test, labels)`: `train` [T_train, C] and `test` [T_test, C] float32 values
(NaN where a value is missing), `labels` [T_test] int 0/1 (1 = anomaly). The splits follow the
design's time-series protocol:

- ASD (InterFusion's npz per entity): the file's train / test / test_label arrays.
- SKAB: train = anomaly-free/anomaly-free.csv; every labelled run (valve1/0.csv, ...) is one test
  series, labels from its `anomaly` column.
- NAB: the probationary period, the first min(floor(0.15 n), 750) points of a series, is the
  training part; the remaining points are the test part, labelled 1 inside the series' windows of
  labels/combined_windows.json (timestamps, both ends inclusive).
- SMD (ServerMachineDataset): train/<machine>.txt, test/<machine>.txt, test_label/<machine>.txt
  (comma-separated values, one time step per line).
- SMAP / MSL (telemanom layout): train/<chan>.npy, test/<chan>.npy and labeled_anomalies.csv
  (column anomaly_sequences holds [[start, end], ...], 0-based, both ends inclusive).
- UCR anomaly archive: <id>_UCR_Anomaly_<name>_<train_end>_<begin>_<end>.txt; the first
  `train_end` points train, the rest test; the anomaly spans positions begin..end (1-based, both
  ends inclusive) of the whole file.

`window_dataset` turns a series into a `grain.MapDataset` of fixed-length windows (sliced on
access, so memory stays that of the series), which `adiff.training.trainer.fit` consumes directly.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import re
from typing import List, NamedTuple, Optional

import numpy as np
import pandas as pd

__all__ = [
    "SeriesSplit",
    "load_asd", "asd_entities",
    "load_skab", "skab_runs",
    "load_nab", "nab_series", "nab_train_size",
    "load_smd", "smd_machines",
    "load_smap_msl", "smap_msl_channels",
    "load_ucr", "parse_ucr_name",
    "window_starts", "window_dataset",
]


class SeriesSplit(NamedTuple):
    """A train/test split of one series (unpacks as `train, test, labels = split`).

    Attributes:
      train: [T_train, C] float32 training values (NaN = missing).
      test: [T_test, C] float32 test values (NaN = missing).
      labels: [T_test] int64 test labels, 1 = anomaly.
    """

    train: np.ndarray  # [T_train, C]
    test: np.ndarray  # [T_test, C]
    labels: np.ndarray  # [T_test]


def _dir(root, name: str = "root") -> pathlib.Path:
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(root).__name__}")
    path = pathlib.Path(root)
    if not path.is_dir():
        raise ValueError(f"{name} must be an existing directory, got {str(path)!r}")
    return path


def _file(path: pathlib.Path, what: str) -> pathlib.Path:
    if not path.is_file():
        raise ValueError(f"{what} not found: expected the file {str(path)!r}")
    return path


def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float32)
    return a[:, None] if a.ndim == 1 else a


def _numeric_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


# ------------------------------------------------------------------------------------------------
# ASD
# ------------------------------------------------------------------------------------------------
def asd_entities(root) -> List[str]:
    """Entity names ("omi-1", ...) found under root/processed, in numeric order."""
    proc = _dir(root) / "processed"
    if not proc.is_dir():
        raise ValueError(f"root must hold the ASD folder 'processed/', not found in {str(root)!r}")
    return sorted((p.stem for p in proc.glob("omi-*.npz")), key=_numeric_key)


def load_asd(root, entity: str) -> SeriesSplit:
    """Loads one ASD entity from root/processed/<entity>.npz (keys train, test, test_label).

    Args:
      root: the ASD directory (holding processed/).
      entity: e.g. "omi-1".

    Returns:
      SeriesSplit with train [T, 19], test [4320, 19], labels [4320].
    """
    path = _file(_dir(root) / "processed" / f"{entity}.npz", f"ASD entity {entity!r}")
    with np.load(path, allow_pickle=False) as f:
        missing = {"train", "test", "test_label"} - set(f.keys())
        if missing:
            raise ValueError(f"{str(path)!r} lacks arrays {sorted(missing)}; got {sorted(f.keys())}")
        train, test, labels = _as_2d(f["train"]), _as_2d(f["test"]), np.asarray(f["test_label"])
    return SeriesSplit(train, test, _labels(labels, len(test), path))


def _labels(labels: np.ndarray, n: int, path) -> np.ndarray:
    labels = np.asarray(labels).ravel()
    if len(labels) != n:
        raise ValueError(f"{str(path)!r}: {len(labels)} labels for {n} test steps")
    return (labels > 0).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# SKAB
# ------------------------------------------------------------------------------------------------
_SKAB_LABELS = ("anomaly", "changepoint")


def skab_runs(root) -> List[str]:
    """Labelled SKAB runs as "<folder>/<name>" (e.g. "valve1/0"), sorted; anomaly-free excluded."""
    data = _skab_data(root)
    runs = [f"{p.parent.name}/{p.stem}" for p in data.glob("*/*.csv") if p.parent.name != "anomaly-free"]
    return sorted(runs, key=_numeric_key)


def _skab_data(root) -> pathlib.Path:
    root = _dir(root)
    data = root / "data" if (root / "data").is_dir() else root
    if not (data / "anomaly-free").is_dir():
        raise ValueError(f"root must hold SKAB's anomaly-free/ folder (or data/anomaly-free/); "
                         f"not found in {str(root)!r}")
    return data


def _read_skab(path: pathlib.Path) -> pd.DataFrame:
    df = pd.read_csv(path, sep=";")
    if "datetime" in df.columns:
        df = df.drop(columns=["datetime"])
    return df


def load_skab(root, run: str) -> SeriesSplit:
    """Loads a SKAB run: train = anomaly-free.csv, test = the run's sensors, labels = `anomaly`.

    Args:
      root: the SKAB directory (holding data/ or directly anomaly-free/, valve1/, ...).
      run: "<folder>/<name>", e.g. "valve1/0" (see `skab_runs`).

    Returns:
      SeriesSplit with train [9405, 8], test [T, 8], labels [T].
    """
    data = _skab_data(root)
    train_df = _read_skab(_file(data / "anomaly-free" / "anomaly-free.csv", "SKAB anomaly-free.csv"))
    test_df = _read_skab(_file(data / f"{run}.csv", f"SKAB run {run!r}"))
    if "anomaly" not in test_df.columns:
        raise ValueError(f"SKAB run {run!r} has no 'anomaly' column; got {list(test_df.columns)}")
    sensors = [c for c in test_df.columns if c not in _SKAB_LABELS]
    if [c for c in train_df.columns if c not in _SKAB_LABELS] != sensors:
        raise ValueError(f"SKAB run {run!r} has sensors {sensors}, anomaly-free.csv has "
                         f"{list(train_df.columns)}")
    return SeriesSplit(_as_2d(train_df[sensors].to_numpy()), _as_2d(test_df[sensors].to_numpy()),
                       _labels(test_df["anomaly"].to_numpy(), len(test_df), data / f"{run}.csv"))


# ------------------------------------------------------------------------------------------------
# NAB
# ------------------------------------------------------------------------------------------------
def nab_train_size(n: int) -> int:
    """NAB's probationary period: min(floor(0.15 n), 750) points."""
    return int(min(math.floor(0.15 * n), 750))


def nab_series(root, *, category: Optional[str] = None, with_anomalies: bool = False) -> List[str]:
    """NAB series as "<category>/<file>.csv" keys (those of the label JSON), sorted.

    Args:
      root: the NAB directory (holding data/ and labels/).
      category: only this category (e.g. "realKnownCause").
      with_anomalies: only series with at least one label window.
    """
    windows = _nab_windows(root)
    keys = sorted(windows)
    if category is not None:
        keys = [k for k in keys if k.split("/")[0] == category]
    if with_anomalies:
        keys = [k for k in keys if windows[k]]
    return keys


def _nab_windows(root) -> dict:
    path = _file(_dir(root) / "labels" / "combined_windows.json", "NAB labels")
    with open(path, encoding="utf-8") as f:
        windows = json.load(f)
    if not isinstance(windows, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object keyed by series")
    return windows


def load_nab(root, series: str, *, train_fraction: float = 0.15, max_train: int = 750) -> SeriesSplit:
    """Loads a NAB series; the probationary period trains, the rest is the labelled test part.

    Args:
      root: the NAB directory (holding data/ and labels/combined_windows.json).
      series: "<category>/<file>.csv", e.g. "realKnownCause/nyc_taxi.csv".
      train_fraction: fraction of the series in the training part (NAB: 0.15).
      max_train: cap on the training part (NAB: 750).

    Returns:
      SeriesSplit with train [n_train, 1], test [n - n_train, 1], labels [n - n_train].
    """
    root = _dir(root)
    windows = _nab_windows(root)
    if series not in windows:
        raise ValueError(f"series {series!r} is not in NAB's combined_windows.json")
    path = _file(root / "data" / series, f"NAB series {series!r}")
    df = pd.read_csv(path)
    if list(df.columns[:2]) != ["timestamp", "value"]:
        raise ValueError(f"{str(path)!r} must have columns timestamp,value; got {list(df.columns)}")
    stamps = pd.to_datetime(df["timestamp"])
    labels = np.zeros(len(df), np.int64)
    for start, end in windows[series]:
        labels[((stamps >= pd.Timestamp(start)) & (stamps <= pd.Timestamp(end))).to_numpy()] = 1
    n_train = int(min(math.floor(train_fraction * len(df)), max_train))
    if n_train < 1 or n_train >= len(df):
        raise ValueError(f"NAB series {series!r} with {len(df)} points leaves no train/test split")
    values = _as_2d(df["value"].to_numpy())
    return SeriesSplit(values[:n_train], values[n_train:], labels[n_train:])


# ------------------------------------------------------------------------------------------------
# SMD
# ------------------------------------------------------------------------------------------------
def smd_machines(root) -> List[str]:
    """Machine names ("machine-1-1", ...) in root/train, in numeric order."""
    train = _dir(root) / "train"
    if not train.is_dir():
        raise ValueError(f"root must hold SMD's train/ folder; not found in {str(root)!r}")
    return sorted((p.stem for p in train.glob("*.txt")), key=_numeric_key)


def load_smd(root, machine: str) -> SeriesSplit:
    """Loads one SMD machine from train/, test/ and test_label/ (comma-separated text files).

    Args:
      root: the ServerMachineDataset directory.
      machine: e.g. "machine-1-1".

    Returns:
      SeriesSplit with train [T, 38], test [T', 38], labels [T'].
    """
    root = _dir(root)
    read = lambda sub: _as_2d(np.loadtxt(_file(root / sub / f"{machine}.txt", f"SMD {sub}/{machine}"),
                                         delimiter=",", ndmin=1))
    train, test = read("train"), read("test")
    lab_path = _file(root / "test_label" / f"{machine}.txt", f"SMD test_label/{machine}")
    labels = np.loadtxt(lab_path, delimiter=",", ndmin=1)
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"SMD {machine}: train has {train.shape[1]} columns, test {test.shape[1]}")
    return SeriesSplit(train, test, _labels(labels, len(test), lab_path))


# ------------------------------------------------------------------------------------------------
# SMAP / MSL
# ------------------------------------------------------------------------------------------------
def _smap_table(root) -> pd.DataFrame:
    path = _file(_dir(root) / "labeled_anomalies.csv", "SMAP/MSL labeled_anomalies.csv")
    df = pd.read_csv(path)
    need = {"chan_id", "spacecraft", "anomaly_sequences"}
    if not need <= set(df.columns):
        raise ValueError(f"{str(path)!r} needs columns {sorted(need)}; got {list(df.columns)}")
    return df


def smap_msl_channels(root, spacecraft: str = "SMAP") -> List[str]:
    """Channel ids of one spacecraft ("SMAP" or "MSL") in labeled_anomalies.csv, in file order."""
    if spacecraft not in ("SMAP", "MSL"):
        raise ValueError(f"spacecraft must be 'SMAP' or 'MSL', got {spacecraft!r}")
    df = _smap_table(root)
    return [str(c) for c in df.loc[df["spacecraft"] == spacecraft, "chan_id"]]


def load_smap_msl(root, channel: str) -> SeriesSplit:
    """Loads one SMAP/MSL channel (telemanom layout: train/<chan>.npy, test/<chan>.npy).

    All columns of the arrays are kept (column 0 is the telemetry value, the others are one-hot
    command channels).

    Args:
      root: the directory holding train/, test/ and labeled_anomalies.csv.
      channel: a chan_id, e.g. "P-1".

    Returns:
      SeriesSplit with train [T, C], test [T', C], labels [T'] from anomaly_sequences.
    """
    root = _dir(root)
    df = _smap_table(root)
    rows = df[df["chan_id"] == channel]
    if rows.empty:
        raise ValueError(f"channel {channel!r} is not in labeled_anomalies.csv")
    train = _as_2d(np.load(_file(root / "train" / f"{channel}.npy", f"SMAP/MSL train/{channel}"),
                           allow_pickle=False))
    test = _as_2d(np.load(_file(root / "test" / f"{channel}.npy", f"SMAP/MSL test/{channel}"),
                          allow_pickle=False))
    labels = np.zeros(len(test), np.int64)
    try:
        spans = json.loads(str(rows.iloc[0]["anomaly_sequences"]))
    except json.JSONDecodeError as e:
        raise ValueError(f"anomaly_sequences of {channel!r} is not a JSON list: {e}") from None
    for start, end in spans:
        if not 0 <= int(start) <= int(end) < len(test):
            raise ValueError(f"anomaly span [{start}, {end}] of {channel!r} lies outside its "
                             f"{len(test)} test steps")
        labels[int(start):int(end) + 1] = 1
    return SeriesSplit(train, test, labels)


# ------------------------------------------------------------------------------------------------
# UCR anomaly archive
# ------------------------------------------------------------------------------------------------
_UCR_NAME = re.compile(r"^(?P<id>\d+)_UCR_Anomaly_(?P<name>.+)_(?P<train>\d+)_(?P<begin>\d+)_(?P<end>\d+)\.txt$")


def parse_ucr_name(path) -> dict:
    """Parses a UCR archive file name -> {"id", "name", "train_end", "begin", "end"}."""
    m = _UCR_NAME.match(pathlib.Path(path).name)
    if m is None:
        raise ValueError(f"not a UCR anomaly archive file name "
                         f"(<id>_UCR_Anomaly_<name>_<train_end>_<begin>_<end>.txt): {str(path)!r}")
    return {"id": m["id"], "name": m["name"], "train_end": int(m["train"]),
            "begin": int(m["begin"]), "end": int(m["end"])}


def load_ucr(path) -> SeriesSplit:
    """Loads one UCR anomaly archive file (values separated by newlines or spaces).

    Args:
      path: the .txt file; its name carries the train boundary and the anomaly range.

    Returns:
      SeriesSplit with train = the first train_end points [train_end, 1], test = the rest
      [n - train_end, 1], labels = 1 on the anomaly range (1-based, inclusive, of the whole file).
    """
    path = pathlib.Path(path)
    info = parse_ucr_name(path)
    values = np.asarray(_file(path, "UCR file").read_text().split(), np.float64)
    n, cut, begin, end = len(values), info["train_end"], info["begin"], info["end"]
    if not 0 < cut < n or not cut < begin <= end <= n:
        raise ValueError(f"{path.name}: boundaries train_end={cut}, anomaly {begin}..{end} do not fit "
                         f"a series of {n} points after its training part")
    labels = np.zeros(n, np.int64)
    labels[begin - 1:end] = 1
    values = _as_2d(values)
    return SeriesSplit(values[:cut], values[cut:], labels[cut:])


# ------------------------------------------------------------------------------------------------
# windows
# ------------------------------------------------------------------------------------------------
def window_starts(n: int, length: int, stride: int) -> np.ndarray:
    """Start indices of windows of `length` with `stride` over n steps, the last one ending at n.

    Every step in [0, n) is covered by at least one window.

    Args:
      n: series length (>= length).
      length: window length.
      stride: step between consecutive starts.

    Returns:
      [W] int64 start indices, increasing.
    """
    for name, v in (("n", n), ("length", length), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if n < length:
        raise ValueError(f"the series must have at least length={length} steps, got {n}")
    starts = np.arange(0, n - length + 1, stride, dtype=np.int64)
    if starts[-1] != n - length:
        starts = np.append(starts, n - length)
    return starts


class _WindowSource:
    """A random-access source of windows {"x": [L, C], "obs": [L, C]} (grain MapDataset source)."""

    def __init__(self, values: np.ndarray, observed: np.ndarray, length: int, stride: int):
        self.values, self.observed, self.length = values, observed, length
        self.starts = window_starts(len(values), length, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict:
        s = int(self.starts[i])
        return {"x": self.values[s:s + self.length], "obs": self.observed[s:s + self.length]}


def window_dataset(values: np.ndarray, observed: np.ndarray | None = None, *, length: int,
                   stride: int = 1):
    """A `grain.MapDataset` of windows of a series, sliced on access.

    Args:
      values: [T, C] float values (missing entries any finite number, e.g. 0).
      observed: optional [T, C] 0/1 (1 = observed); ones by default.
      length: window length L.
      stride: step between window starts (the last window ends at T).

    Returns:
      grain.MapDataset whose items are {"x": [L, C] float32, "obs": [L, C] float32}.
    """
    import grain  # pylint: disable=import-outside-toplevel
    values = np.asarray(values, np.float32)
    if values.ndim != 2:
        raise ValueError(f"values must have shape [T, C], got {values.shape}")
    if observed is None:
        observed = np.ones_like(values)
    observed = np.asarray(observed, np.float32)
    if observed.shape != values.shape:
        raise ValueError(f"observed must have the shape of values {values.shape}, got {observed.shape}")
    return grain.MapDataset.source(_WindowSource(values, observed, int(length), int(stride)))
