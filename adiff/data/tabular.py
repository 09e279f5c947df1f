"""Tabular preprocessing: heterogeneous columns embedded into one continuous matrix plus a mask.

`TabularEncoder` is fitted on training data only. Numeric columns are scaled ("standard": mean/std,
"quantile": a rank transform to a standard normal, robust to heavy tails; scaling matters for
diffusion on tables because the noise schedule assumes unit-scale data); categorical columns
(object / category / string / bool) are one-hot encoded, an unseen category at scoring time
becomes an all-zero block (it is scored, not an error); missing entries (NaN / None / pd.NA) give an
`observed` mask of 0 and a value of 0 that the network sees together with the mask and the loss
ignores. ADBench `.npz` and ODDS `.mat` loaders live here too.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
from scipy import stats

from adiff import validation

__all__ = ["TabularEncoder", "load_adbench_npz", "load_odds_mat", "semisupervised_split"]


def _is_categorical(s: pd.Series) -> bool:
    return (s.dtype == object or isinstance(s.dtype, pd.CategoricalDtype)
            or pd.api.types.is_string_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype))


@dataclasses.dataclass
class TabularEncoder:
    """Fits column-wise transforms and maps tables to (values [N, D], observed [N, D]) float32.

    Attributes (after fit): columns, numeric (names), categories (name -> list of levels),
    loc/scale (numeric standardisation), quantiles (for "quantile" scaling), out_dim.
    """

    scaler: str = "standard"
    num_quantiles: int = 1000

    def __post_init__(self):
        validation.check_choice(self.scaler, ("standard", "quantile", "none"), name="scaler")

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _frame(X, columns: Optional[List[str]] = None, *, name: str = "X") -> pd.DataFrame:
        if isinstance(X, pd.DataFrame):
            complex_cols = [str(c) for c in X.columns if pd.api.types.is_complex_dtype(X[c].dtype)]
            if complex_cols:
                raise TypeError(f"{name} must hold real numbers or categories; columns {complex_cols} are complex")
            return X
        if isinstance(X, pd.Series):
            return X.to_frame()
        arr = np.asarray(X)
        if arr.dtype.kind == "c":
            raise TypeError(f"{name} must hold real numbers or categories, got complex dtype {arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(f"{name} must be a 2-D table [n_samples, n_features], got shape {arr.shape}")
        cols = columns if columns is not None and len(columns) == arr.shape[1] else [f"x{i}" for i in range(arr.shape[1])]
        if arr.dtype.kind in "biuf":
            return pd.DataFrame(arr, columns=cols)
        return pd.DataFrame(arr, columns=cols).infer_objects()

    def fit(self, X) -> "TabularEncoder":
        df = self._frame(X)
        if df.shape[0] < 2 or df.shape[1] < 1:
            raise ValueError(f"X must have at least 2 rows and 1 column, got shape {df.shape}")
        self.columns = [str(c) for c in df.columns]
        self.numeric, self.categories = [], {}
        for c in df.columns:
            s = df[c]
            if _is_categorical(s):
                levels = sorted({str(v) for v in s.dropna().tolist()})
                self.categories[str(c)] = levels
            else:
                self.numeric.append(str(c))
        num = self._numeric_matrix(df)
        if num.shape[1]:
            if np.isinf(num).any():
                raise ValueError("X contains inf values; expected finite numbers or NaN for missing")
            with np.errstate(all="ignore"):
                self.loc = np.nan_to_num(np.nanmean(num, axis=0)).astype(np.float64)
                scale = np.nan_to_num(np.nanstd(num, axis=0))
            self.scale = np.where(scale > 1e-12, scale, 1.0)
            qs = np.linspace(0, 1, self.num_quantiles)
            self.quantiles = np.stack([np.nanquantile(num[:, j], qs) if np.isfinite(num[:, j]).any()
                                       else np.zeros_like(qs) for j in range(num.shape[1])], axis=1)
        else:
            self.loc = np.zeros(0)
            self.scale = np.ones(0)
            self.quantiles = np.zeros((self.num_quantiles, 0))
        self.out_dim = len(self.numeric) + sum(len(v) for v in self.categories.values())
        if self.out_dim == 0:
            raise ValueError("X has no usable columns (every categorical column is entirely missing)")
        return self

    def _numeric_matrix(self, df: pd.DataFrame) -> np.ndarray:
        if not self.numeric:
            return np.zeros((len(df), 0))
        cols = []
        for c in self.numeric:
            s = df[c] if c in df.columns else df[self._col_lookup(df, c)]
            try:
                cols.append(pd.to_numeric(s, errors="raise").astype("float64").to_numpy(na_value=np.nan))
            except (TypeError, ValueError):
                raise TypeError(f"column {c!r} was numeric in fit but holds non-numeric values now") from None
        return np.stack(cols, axis=1)

    @staticmethod
    def _col_lookup(df, c):
        for col in df.columns:
            if str(col) == c:
                return col
        raise KeyError(c)

    def transform(self, X, *, name: str = "X") -> Tuple[np.ndarray, np.ndarray]:
        """Encodes X. Returns (values [N, out_dim] float32, observed [N, out_dim] float32 0/1)."""
        df = self._frame(X, self.columns, name=name)
        if df.shape[0] == 0:
            raise ValueError(f"{name} is empty: expected at least one row")
        got = [str(c) for c in df.columns]
        if len(got) != len(self.columns) or (isinstance(X, pd.DataFrame) and set(got) != set(self.columns)):
            raise ValueError(f"{name} has {len(got)} columns {got[:8]}; the detector was fitted on "
                             f"{len(self.columns)} columns {self.columns[:8]}")
        if not isinstance(X, pd.DataFrame):
            df.columns = self.columns
        num = self._numeric_matrix(df)
        if np.isinf(num).any():
            raise ValueError(f"{name} contains inf values; expected finite numbers or NaN for missing")
        obs_num = np.isfinite(num)
        if self.scaler == "standard":
            z = (num - self.loc) / self.scale
        elif self.scaler == "quantile":
            z = np.empty_like(num)
            qs = np.linspace(0, 1, self.num_quantiles)
            for j in range(num.shape[1]):
                u = np.interp(num[:, j], self.quantiles[:, j], qs)
                z[:, j] = stats.norm.ppf(np.clip(u, 1e-3, 1 - 1e-3))
            z[~obs_num] = np.nan
        else:
            z = num
        blocks, masks = [np.where(obs_num, z, 0.0)], [obs_num.astype(np.float32)]
        for c, levels in self.categories.items():
            s = df[self._col_lookup(df, c)]
            present = s.notna().to_numpy()
            vals = s.astype(str).to_numpy()
            onehot = (vals[:, None] == np.asarray(levels, dtype=object)[None, :]).astype(np.float32)
            onehot[~present] = 0.0
            blocks.append(onehot)
            masks.append(np.repeat(present[:, None], len(levels), axis=1).astype(np.float32))
        values = np.concatenate(blocks, axis=1).astype(np.float32)
        observed = np.concatenate(masks, axis=1).astype(np.float32)
        return values, observed

    # -- persistence (JSON + arrays) -----------------------------------------------------------
    def to_meta(self) -> Dict:
        return {"scaler": self.scaler, "num_quantiles": self.num_quantiles, "columns": self.columns,
                "numeric": self.numeric, "categories": self.categories}

    def arrays(self) -> Dict[str, np.ndarray]:
        return {"loc": np.asarray(self.loc, np.float64), "scale": np.asarray(self.scale, np.float64),
                "quantiles": np.asarray(self.quantiles, np.float64)}

    @classmethod
    def abstract_arrays(cls, meta: Dict):
        import jax
        d = len(meta["numeric"])
        return {"loc": jax.ShapeDtypeStruct((d,), np.float64), "scale": jax.ShapeDtypeStruct((d,), np.float64),
                "quantiles": jax.ShapeDtypeStruct((meta["num_quantiles"], d), np.float64)}

    @classmethod
    def from_meta(cls, meta: Dict, arrays: Dict[str, np.ndarray]) -> "TabularEncoder":
        enc = cls(scaler=meta["scaler"], num_quantiles=int(meta["num_quantiles"]))
        enc.columns = list(meta["columns"])
        enc.numeric = list(meta["numeric"])
        enc.categories = {k: list(v) for k, v in meta["categories"].items()}
        enc.loc, enc.scale, enc.quantiles = arrays["loc"], arrays["scale"], arrays["quantiles"]
        enc.out_dim = len(enc.numeric) + sum(len(v) for v in enc.categories.values())
        return enc


def load_adbench_npz(path: str | os.PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Loads an ADBench `.npz` (arrays X [n, d] and y [n], 1 = anomaly) without pickle."""
    with np.load(path, allow_pickle=False) as f:
        if "X" not in f or "y" not in f:
            raise ValueError(f"{path!r} is not an ADBench file: expected arrays 'X' and 'y', got {list(f.keys())}")
        X, y = np.asarray(f["X"], np.float64), np.asarray(f["y"]).astype(int).ravel()
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"{path!r}: X must be [n, d] and y [n]; got {X.shape} and {y.shape}")
    return X, y


def load_odds_mat(path: str | os.PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Loads an ODDS `.mat` file (variables X and y) with scipy (MATLAB v5; no code execution)."""
    from scipy.io import loadmat
    m = loadmat(path)
    if "X" not in m or "y" not in m:
        raise ValueError(f"{path!r} is not an ODDS file: expected variables 'X' and 'y'")
    return np.asarray(m["X"], np.float64), np.asarray(m["y"]).astype(int).ravel()


def semisupervised_split(X: np.ndarray, y: np.ndarray, *, seed: int, max_train: int = 20000,
                         max_test: int = 50000):
    """The design's semi-supervised protocol: half the normal rows (shuffled with `seed`) train;
    the other half plus all anomalies test; training capped at `max_train` rows and the test set
    at `max_test` (stratified subsample with the same seed). Returns X_train, X_test, y_test."""
    rng = np.random.RandomState(seed)
    normal = np.flatnonzero(y == 0)
    anomal = np.flatnonzero(y == 1)
    rng.shuffle(normal)
    half = len(normal) // 2
    train_idx, test_idx = normal[:half], np.concatenate([normal[half:], anomal])
    if len(train_idx) > max_train:
        train_idx = train_idx[:max_train]
    if len(test_idx) > max_test:
        from sklearn.model_selection import train_test_split
        test_idx, _ = train_test_split(test_idx, train_size=max_test, stratify=y[test_idx], random_state=seed)
    return X[train_idx], X[test_idx], y[test_idx]
