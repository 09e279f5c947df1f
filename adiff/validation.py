"""Input validation shared by every public entry point: clear errors before anything is traced."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["as_float_array", "check_size", "check_total_size", "check_n_features", "check_choice", "check_positive_int",
           "check_fraction", "MAX_ELEMENTS"]

# Above this many elements a request is refused before allocation (about 4 GiB of float32).
MAX_ELEMENTS = 1 << 30


def check_size(x, *, name: str = "X", max_elements: int | None = None) -> None:
    """Refuses an input with more than `max_elements` elements, before anything is converted.

    Reads only the shape (numpy arrays and views, pandas objects, jax arrays, anything with
    `.shape`); lists and other array-likes are left to the later conversion. Call it first in a
    public entry point, so a huge request (e.g. a zero-stride `np.broadcast_to` view, or a table
    far beyond memory) is an immediate ValueError rather than an allocation failure.

    Args:
      x: the input.
      name: argument name used in the error message.
      max_elements: limit (default `MAX_ELEMENTS`, 2**30, about 4 GiB of float32).

    Raises:
      ValueError: more elements than the limit.
    """
    limit = MAX_ELEMENTS if max_elements is None else int(max_elements)
    shape = getattr(x, "shape", None)
    if shape is None:
        return
    try:
        size = int(np.prod([int(d) for d in shape], dtype=object))
    except (TypeError, ValueError):
        return
    if size > limit:
        raise ValueError(f"{name} has {size} elements (shape {tuple(shape)}), more than the limit "
                         f"{limit}; score it in chunks")


def check_total_size(items, *, name: str = "X", max_elements: int | None = None) -> None:
    """Refuses a collection of inputs (a list of clips, a dict of modalities) that is too large.

    Each item is checked with `check_size` (named `name[key]`), then their total, so neither one
    huge item nor many large ones are converted. Items without a `.shape` count as 0 here (they are
    checked after their conversion).

    Args:
      items: a sequence of inputs or a dict {key: input}; None entries are skipped.
      name: argument name used in the error messages.
      max_elements: limit (default `MAX_ELEMENTS`).

    Raises:
      ValueError: an item or the total has more elements than the limit.
    """
    limit = MAX_ELEMENTS if max_elements is None else int(max_elements)
    pairs = items.items() if hasattr(items, "items") else enumerate(items)
    total = 0
    for key, x in pairs:
        if x is None:
            continue
        check_size(x, name=f"{name}[{key!r}]", max_elements=limit)
        shape = getattr(x, "shape", None)
        if shape is not None:
            try:
                total += int(np.prod([int(d) for d in shape], dtype=object))
            except (TypeError, ValueError):
                pass
    if total > limit:
        raise ValueError(f"{name} has {total} elements in all, more than the limit {limit}; "
                         "score it in chunks")


def as_float_array(x, *, name: str = "X", ndim: int | Sequence[int] | None = None,
                   allow_nan: bool = False, min_samples: int = 1,
                   dtype=np.float32) -> np.ndarray:
    """Converts `x` to a float numpy array and validates it.

    Args:
      x: array-like (numpy, list, pandas DataFrame/Series, jax array).
      name: argument name used in error messages.
      ndim: allowed rank(s); None accepts any rank >= 1.
      allow_nan: whether NaN marks missing values (inf is always refused).
      min_samples: minimum size of the first axis.
      dtype: output dtype.

    Returns:
      The validated array.

    Raises:
      TypeError: non-numeric input (strings, objects, complex).
      ValueError: wrong rank, empty, too few samples, NaN/inf where not allowed, too large.
    """
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    check_size(x, name=name)
    if hasattr(x, "to_numpy"):  # pandas
        x = x.to_numpy()
    arr = np.asarray(x)
    if arr.dtype == object or arr.dtype.kind in "USVMmc":
        try:
            if arr.dtype.kind in "USVMmc":
                raise TypeError
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"{name} must hold real numbers, got dtype {arr.dtype}"
                + (" (use TabularDetector for mixed-type tables)" if arr.dtype == object else "")
            ) from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            raise ValueError(
                f"{name} must have rank {' or '.join(map(str, allowed))}, got shape {arr.shape}")
    if arr.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension, got a scalar")
    if arr.size > MAX_ELEMENTS:
        raise ValueError(f"{name} has {arr.size} elements, more than the limit {MAX_ELEMENTS}; "
                         "score it in chunks")
    if arr.shape[0] < min_samples or arr.size == 0:
        raise ValueError(f"{name} must have at least {min_samples} sample(s) and no empty axis, "
                         f"got shape {arr.shape}")
    arr = arr.astype(dtype, copy=False)
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains inf values; expected finite numbers")
    if not allow_nan and np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN values; expected finite numbers "
                         "(NaN means 'missing' only for tables and series)")
    return arr


def check_n_features(arr: np.ndarray, expected: tuple, *, name: str = "X") -> None:
    """Raises ValueError when the trailing shape differs from the one seen in fit."""
    got = tuple(arr.shape[1:])
    if got != tuple(expected):
        raise ValueError(f"{name} has per-sample shape {got}, but the detector was fitted on "
                         f"per-sample shape {tuple(expected)}")


def check_choice(value, choices, *, name: str):
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_positive_int(value, *, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_fraction(value, *, name: str, low: float = 0.0, high: float = 0.5,
                   inclusive_low: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    ok = (v >= low if inclusive_low else v > low) and v <= high
    if not ok:
        raise ValueError(f"{name} must be in {'[' if inclusive_low else '('}{low}, {high}], got {value!r}")
    return v


def read_saved_config(path, *, what: str = "adiff detector"):
    """Reads the `adiff.json` of a saved directory as a JSON object, with clear errors.

    Used by every loader (detectors, generators). Only parses JSON: nothing is executed or
    unpickled.

    Args:
      path: the saved directory.
      what: what the directory should hold, for the error messages.

    Returns:
      (absolute directory path, path of adiff.json, the parsed JSON value).

    Raises:
      ValueError: adiff.json is missing or is not valid JSON.
    """
    import json  # pylint: disable=import-outside-toplevel
    import pathlib  # pylint: disable=import-outside-toplevel
    path = pathlib.Path(path).absolute()
    cfg_file = path / "adiff.json"
    if not cfg_file.is_file():
        raise ValueError(f"{str(path)!r} is not a saved {what}: {cfg_file.name} is missing")
    try:
        config = json.loads(cfg_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(cfg_file)!r} is not valid JSON: {e}") from None
    return path, cfg_file, config


def restore_saved_arrays(path, target, *, check_dtypes: bool = False):
    """Restores `path/arrays` (orbax) into the tree `target`, after checking it against `target`.

    Shared by every loader (detectors, generators): the saved array metadata must exist and match
    `target`'s keys and shapes (and dtypes with `check_dtypes`) before anything is read, and every
    orbax failure on a corrupt directory becomes a ValueError naming it. Nothing is unpickled.

    Args:
      path: the saved directory (holding `arrays/`).
      target: a pytree of jax.ShapeDtypeStruct describing the expected arrays.
      check_dtypes: also require the saved dtypes to equal the target's.

    Returns:
      The restored pytree, shaped like `target`.

    Raises:
      ValueError: no arrays/ directory, unreadable metadata, a mismatch, or a failed restore.
    """
    import pathlib  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    path = pathlib.Path(path)
    arrays_dir = path / "arrays"
    if not arrays_dir.is_dir():
        raise ValueError(f"{str(path)!r} has no arrays/ directory")
    try:
        with ocp.StandardCheckpointer() as ckpt:
            saved = ckpt.metadata(arrays_dir)
            for attr in ("item_metadata", "tree"):  # where orbax keeps the array metadata tree
                saved = getattr(saved, attr, saved)
            if not saved or not jax.tree_util.tree_leaves(saved):
                # orbax reports unreadable (truncated, altered, missing) array files as no metadata
                raise ValueError(f"could not restore the arrays in {str(arrays_dir)!r}: their "
                                 "metadata is missing or unreadable (truncated or missing files?)")
            _check_array_tree(saved, target, check_dtypes=check_dtypes)
            return ckpt.restore(arrays_dir, target)
    except ValueError:
        raise
    except Exception as e:  # orbax raises many types for corrupt directories
        raise ValueError(f"could not restore the arrays in {str(arrays_dir)!r}: "
                         f"{type(e).__name__}: {e}") from None


def _check_array_tree(saved, target, *, check_dtypes: bool) -> None:
    """Raises ValueError unless the saved metadata tree matches `target` (keys, shapes, dtypes)."""
    import jax  # pylint: disable=import-outside-toplevel
    flat = lambda tree: {jax.tree_util.keystr(k): v
                         for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
    s, t = flat(saved), flat(target)
    if set(s) != set(t):
        missing, extra = sorted(set(t) - set(s))[:5], sorted(set(s) - set(t))[:5]
        raise ValueError(f"saved arrays do not match the configuration: missing {missing}, "
                         f"unexpected {extra}")
    for k, v in t.items():
        shape = tuple(getattr(s[k], "shape", ()))
        if shape != tuple(v.shape):
            raise ValueError(f"saved array {k} has shape {shape}; the configuration expects "
                             f"{tuple(v.shape)}")
        dtype = getattr(s[k], "dtype", None)
        if check_dtypes and dtype is not None and np.dtype(dtype) != np.dtype(v.dtype):
            raise ValueError(f"saved array {k} has dtype {np.dtype(dtype)}; the configuration "
                             f"expects {np.dtype(v.dtype)}")
