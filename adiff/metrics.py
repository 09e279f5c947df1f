"""Evaluation metrics for anomaly detection: tables, time series, images.

Everything here runs on host (numpy) arrays; JAX arrays are accepted and converted with
`np.asarray`. Scores follow the library convention: higher means more anomalous, and a point is
predicted anomalous at threshold `thr` when `score >= thr`.

Threshold-free metrics:
  * `auroc`, `auprc` (scikit-learn's ROC AUC and average precision);
  * `pixel_auroc` (ROC AUC over every pixel of every image) and `aupro` (MVTec AD's area under the
    per-region-overlap curve up to a false-positive rate of 0.3);
  * `vus_roc`, `vus_pr`: volume under the range-based ROC / PR surfaces (Paparrizos et al., VLDB
    2022), computed exactly as TSB-AD 1.5 does (250 score quantiles as thresholds, buffers
    0..sliding_window around each labelled range), so figures compare with its published tables.
    The buffer is the series' period (`estimate_period`, or `vus_window` which falls back to 125).

Threshold metrics:
  * `best_f1` (best point-wise F1 over every threshold: an oracle figure, since the threshold is
    chosen on the test labels), `f1_at_threshold`;
  * `range_precision_recall` (Tatbul et al., NeurIPS 2018);
  * `point_adjust` / `point_adjusted_f1`: LEGACY point adjustment, kept only to compare with older
    papers. It is known to inflate results badly (a random detector can reach a high F1 on data
    with long anomalous segments; Kim et al., AAAI 2022), so never report it as a main figure.
"""
from __future__ import annotations

from typing import Optional

import flax.struct
import numpy as np
import scipy.ndimage
from sklearn import metrics as sk_metrics

__all__ = [
    "BestF1",
    "RangePrecisionRecall",
    "auroc",
    "auprc",
    "best_f1",
    "f1_at_threshold",
    "point_adjust",
    "point_adjusted_f1",
    "pixel_auroc",
    "aupro",
    "range_precision_recall",
    "vus_roc",
    "vus_pr",
    "estimate_period",
    "vus_window",
    "DEFAULT_VUS_WINDOW",
]

#: Buffer used by VUS when a series shows no clear period (TSB-AD's fallback).
DEFAULT_VUS_WINDOW = 125


# --------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------
@flax.struct.dataclass
class BestF1:
    """Best F1 over thresholds, with the operating point that reaches it.

    Attributes:
      f1: the best F1.
      precision: precision at that threshold.
      recall: recall at that threshold.
      threshold: the score threshold (predict anomalous where `score >= threshold`).
    """

    f1: float
    precision: float
    recall: float
    threshold: float


@flax.struct.dataclass
class RangePrecisionRecall:
    """Range-based precision and recall (Tatbul et al., 2018) and their harmonic mean.

    Attributes:
      precision: mean over predicted ranges of their overlap reward.
      recall: mean over true ranges of alpha * existence + (1 - alpha) * overlap reward.
      f1: 2 P R / (P + R), 0 when both are 0.
    """

    precision: float
    recall: float
    f1: float


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------
def _as_binary(y, name: str, *, ndim: Optional[int] = 1) -> np.ndarray:
    """Returns `y` as an int8 array of 0/1, raising ValueError/TypeError otherwise."""
    y = np.asarray(y)
    if ndim is not None and y.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {y.shape}.")
    if y.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {y.shape}.")
    if y.dtype == bool:
        return y.astype(np.int8)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise TypeError(f"{name} must hold binary labels (bool or numbers 0/1), "
                        f"got dtype {y.dtype}.")
    values = np.unique(y)
    if not np.all(np.isin(values, (0, 1))):
        shown = values[:5].tolist()
        raise ValueError(f"{name} must contain only 0 and 1, got values {shown}"
                         f"{' ...' if values.size > 5 else ''}.")
    return y.astype(np.int8)


def _as_scores(s, name: str, *, ndim: Optional[int] = 1) -> np.ndarray:
    """Returns `s` as a finite float64 array, raising ValueError/TypeError otherwise."""
    s = np.asarray(s)
    if ndim is not None and s.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {s.shape}.")
    if s.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {s.shape}.")
    if s.dtype == bool or not (np.issubdtype(s.dtype, np.integer)
                               or np.issubdtype(s.dtype, np.floating)):
        raise TypeError(f"{name} must be real numbers, got dtype {s.dtype}.")
    s = s.astype(np.float64)
    if not np.all(np.isfinite(s)):
        bad = int(np.sum(~np.isfinite(s)))
        raise ValueError(f"{name} must be finite, got {bad} NaN/inf value(s).")
    return s


def _check_pair(y_true, scores, *, need_negative: bool = True, scores_name: str = "scores"):
    """Validates a 1-D label vector and a same-length 1-D score vector."""
    y = _as_binary(y_true, "y_true")
    s = _as_scores(scores, scores_name)
    if y.shape != s.shape:
        raise ValueError(f"y_true and {scores_name} must have the same length, "
                         f"got {y.shape[0]} and {s.shape[0]}.")
    _check_classes(y, "y_true", need_negative=need_negative)
    return y, s


def _check_classes(y: np.ndarray, name: str, *, need_negative: bool = True) -> None:
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError(f"{name} must contain at least one anomaly (1), got none.")
    if need_negative and n_pos == y.size:
        raise ValueError(f"{name} must contain at least one normal point (0), got only 1s.")


def _segments(y: np.ndarray):
    """Inclusive [start, end] of every run of 1s in a 0/1 vector; two int arrays."""
    padded = np.concatenate([[0], y.astype(np.int8), [0]])
    d = np.diff(padded)
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1) - 1
    return starts, ends


def _entry_index(values: np.ndarray, thresholds_desc: np.ndarray) -> np.ndarray:
    """For non-increasing thresholds, the first k with values >= thresholds[k] (len if never)."""
    # Number of thresholds strictly greater than each value.
    return np.searchsorted(-thresholds_desc, -values, side="left")


def _cum_at(entry: np.ndarray, num: int, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """sum_i weights_i [entry_i <= k] for k = 0..num-1."""
    counts = np.bincount(entry, weights=weights, minlength=num + 1)
    return np.cumsum(counts)[:num]


# --------------------------------------------------------------------------------------------
# Point-wise metrics
# --------------------------------------------------------------------------------------------
def auroc(y_true, scores) -> float:
    """Area under the ROC curve (scikit-learn's `roc_auc_score`).

    Args:
      y_true: [N] binary labels (1 = anomaly), both classes present.
      scores: [N] finite anomaly scores, higher = more anomalous.

    Returns:
      The ROC AUC in [0, 1].
    """
    y, s = _check_pair(y_true, scores)
    return float(sk_metrics.roc_auc_score(y, s))


def auprc(y_true, scores) -> float:
    """Area under the precision-recall curve as average precision (scikit-learn).

    Args:
      y_true: [N] binary labels (1 = anomaly), both classes present.
      scores: [N] finite anomaly scores, higher = more anomalous.

    Returns:
      The average precision in [0, 1] (a random detector scores about the anomaly rate).
    """
    y, s = _check_pair(y_true, scores)
    return float(sk_metrics.average_precision_score(y, s))


def best_f1(y_true, scores) -> BestF1:
    """Best point-wise F1 over every threshold, WITHOUT point adjustment.

    Every distinct score is tried as a threshold (predict `score >= threshold`). The threshold is
    chosen on the evaluated labels, so this is an oracle figure; label it as such. Among equal F1
    values the highest threshold is returned.

    Args:
      y_true: [N] binary labels with at least one anomaly.
      scores: [N] finite anomaly scores.

    Returns:
      BestF1 with f1, precision, recall and threshold.
    """
    y, s = _check_pair(y_true, scores, need_negative=False)
    return _best_f1(y, s)


def _best_f1(y: np.ndarray, s: np.ndarray) -> BestF1:
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    tp = np.cumsum(y[order], dtype=np.float64)
    n_pred = np.arange(1, s.size + 1, dtype=np.float64)
    # Only cut after the last copy of each distinct score.
    last = np.append(s_sorted[1:] != s_sorted[:-1], True)
    tp, n_pred, thr = tp[last], n_pred[last], s_sorted[last]
    n_pos = float(y.sum())
    f1 = 2.0 * tp / (n_pred + n_pos)  # = 2 TP / (2 TP + FP + FN)
    i = int(np.argmax(f1))
    return BestF1(f1=float(f1[i]), precision=float(tp[i] / n_pred[i]),
                  recall=float(tp[i] / n_pos), threshold=float(thr[i]))


def f1_at_threshold(y_true, scores, threshold: float) -> float:
    """Point-wise F1 of the prediction `scores >= threshold`.

    Args:
      y_true: [N] binary labels with at least one anomaly.
      scores: [N] finite anomaly scores.
      threshold: finite score threshold.

    Returns:
      F1 in [0, 1] (0 when nothing anomalous is detected).
    """
    y, s = _check_pair(y_true, scores, need_negative=False)
    threshold = float(np.asarray(threshold))
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}.")
    pred = s >= threshold
    tp = float(np.sum(pred & (y == 1)))
    return 2.0 * tp / (float(pred.sum()) + float(y.sum()))


def point_adjust(y_true, scores) -> np.ndarray:
    """LEGACY point adjustment of scores: each true segment gets its maximum score.

    Thresholding the adjusted scores at any threshold gives the classic point-adjusted prediction
    (Xu et al., 2018): if any point of a true anomalous segment is detected, the whole segment
    counts as detected. This uses the labels of the evaluated data and inflates every
    threshold metric computed on it; it exists only to reproduce older published figures.

    Args:
      y_true: [N] binary labels.
      scores: [N] finite anomaly scores.

    Returns:
      [N] float64 adjusted scores (unchanged outside true segments).
    """
    y, s = _check_pair(y_true, scores, need_negative=False)
    return _point_adjust(y, s)


def _point_adjust(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    starts, ends = _segments(y)
    out = s.copy()
    if starts.size:
        bounds = np.stack([starts, ends + 1], 1).ravel()
        if bounds[-1] == s.size:
            bounds = bounds[:-1]
        seg_max = np.maximum.reduceat(s, bounds)[::2]
        seg_id = np.cumsum(np.diff(np.concatenate([[0], y])) == 1) - 1
        inside = y == 1
        out[inside] = seg_max[seg_id[inside]]
    return out


def point_adjusted_f1(y_true, scores) -> BestF1:
    """LEGACY best F1 after point adjustment (see `point_adjust`).

    Point adjustment inflates F1: any single hit inside a long true segment turns the whole
    segment into true positives, so even random scores reach a high F1 on data with long
    segments. Report it only as a labelled legacy figure next to `best_f1` and VUS-PR. The
    maximum is over every distinct adjusted score (TSB-AD's PA-F1 uses 100 evenly spaced
    thresholds instead, so it can be slightly lower).

    Args:
      y_true: [N] binary labels with at least one anomaly.
      scores: [N] finite anomaly scores.

    Returns:
      BestF1 of the point-adjusted scores; the threshold applies to the raw scores as well.
    """
    y, s = _check_pair(y_true, scores, need_negative=False)
    return _best_f1(y, _point_adjust(y, s))


# --------------------------------------------------------------------------------------------
# Image metrics
# --------------------------------------------------------------------------------------------
def _check_maps(masks, maps):
    m = _as_binary(masks, "masks", ndim=3)
    a = _as_scores(maps, "maps", ndim=3)
    if m.shape != a.shape:
        raise ValueError(f"masks and maps must have the same shape [N, H, W], "
                         f"got {m.shape} and {a.shape}.")
    _check_classes(m.ravel(), "masks")
    return m, a


def pixel_auroc(masks, maps) -> float:
    """Pixel-level ROC AUC over all pixels of all images.

    Args:
      masks: [N, H, W] ground-truth masks (bool or 0/1), with anomalous and normal pixels.
      maps: [N, H, W] finite anomaly maps, higher = more anomalous.

    Returns:
      ROC AUC of the flattened pixels.
    """
    m, a = _check_maps(masks, maps)
    return float(sk_metrics.roc_auc_score(m.ravel(), a.ravel()))


def aupro(masks, maps, *, fpr_limit: float = 0.3, num_thresholds: Optional[int] = None) -> float:
    """Normalised area under the per-region-overlap (PRO) curve (MVTec AD definition).

    Ground-truth regions are the 8-connected components of each mask (`scipy.ndimage.label` with
    a 3x3 structure). At a threshold, PRO is the mean over all regions of all images of the
    fraction of the region's pixels with `map >= threshold`, and FPR is the fraction of normal
    pixels above it. The PRO-vs-FPR curve, starting at (0, 0), is integrated with the trapezoid
    rule up to `fpr_limit` (the curve is linearly interpolated at the limit) and divided by
    `fpr_limit`, as in the official MVTec AD evaluation code. Images without defects contribute
    normal pixels only.

    Args:
      masks: [N, H, W] ground-truth masks (bool or 0/1), at least one anomalous and one normal
        pixel in total.
      maps: [N, H, W] finite anomaly maps.
      fpr_limit: upper integration limit, in (0, 1].
      num_thresholds: None (default) evaluates the curve at every distinct map value (exact, as
        MVTec AD). An int >= 2 uses that many evenly spaced thresholds between the minimum and
        maximum map value instead (anomalib style, an approximation).

    Returns:
      AUPRO in [0, 1]; a perfect map scores 1.
    """
    m, a = _check_maps(masks, maps)
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}.")
    if num_thresholds is not None:
        if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, (int, np.integer)):
            raise TypeError(f"num_thresholds must be None or an int, got {type(num_thresholds)}.")
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds}.")

    structure = np.ones((3, 3), dtype=int)
    pro_w = np.zeros(a.shape, dtype=np.float64)
    num_regions = 0
    for i in range(m.shape[0]):
        labelled, n = scipy.ndimage.label(m[i], structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(labelled.ravel(), minlength=n + 1).astype(np.float64)
        inv = np.zeros(n + 1)
        inv[1:] = 1.0 / sizes[1:]
        pro_w[i] = inv[labelled]
        num_regions += n
    normal = (m == 0).ravel()
    values = a.ravel()
    if num_thresholds is None:
        thresholds = np.unique(values)[::-1]
    else:
        thresholds = np.linspace(values.max(), values.min(), int(num_thresholds))
    entry = _entry_index(values, thresholds)
    k = thresholds.size
    fpr = _cum_at(entry, k, normal.astype(np.float64)) / float(normal.sum())
    pro = _cum_at(entry, k, pro_w.ravel()) / float(num_regions)
    fpr = np.clip(np.concatenate([[0.0], fpr]), 0.0, 1.0)
    pro = np.clip(np.concatenate([[0.0], pro]), 0.0, 1.0)
    return float(_trapezoid_upto(fpr, pro, fpr_limit) / fpr_limit)


def _trapezoid_upto(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) for x in [x[0], x_max]; x non-decreasing, y interpolated."""
    keep = x <= x_max
    xs, ys = x[keep], y[keep]
    area = float(np.sum(0.5 * (ys[1:] + ys[:-1]) * (xs[1:] - xs[:-1])))
    last = int(np.sum(keep))  # index of the first point beyond x_max
    if xs[-1] < x_max and last < x.size:
        x0, y0, x1, y1 = x[last - 1], y[last - 1], x[last], y[last]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at) * (x_max - x0)
    return area


# --------------------------------------------------------------------------------------------
# Range-based precision / recall (Tatbul et al., 2018)
# --------------------------------------------------------------------------------------------
_BIASES = ("flat", "front", "back", "middle")


def _positional_weights(length: int, bias: str) -> np.ndarray:
    i = np.arange(1, length + 1, dtype=np.float64)
    if bias == "flat":
        return np.ones(length)
    if bias == "front":
        return length - i + 1
    if bias == "back":
        return i
    return np.where(i <= length / 2, i, length - i + 1)  # middle


def _range_scores(ref: np.ndarray, other: np.ndarray, *, alpha: float, bias: str,
                  cardinality: str) -> float:
    """Mean over the ranges of `ref` of alpha * existence + (1 - alpha) * cardinality * overlap."""
    starts, ends = _segments(ref)
    o_starts, o_ends = _segments(other)
    total = 0.0
    for s, e in zip(starts, ends):
        hit = other[s:e + 1]
        existence = float(hit.any())
        w = _positional_weights(e - s + 1, bias)
        overlap = float(np.dot(w, hit)) / float(w.sum())
        # Number of distinct ranges of `other` that intersect [s, e].
        n_overlapping = int(np.sum((o_starts <= e) & (o_ends >= s)))
        if cardinality == "reciprocal" and n_overlapping > 1:
            overlap /= n_overlapping
        total += alpha * existence + (1.0 - alpha) * overlap
    return total / starts.size


def range_precision_recall(y_true, y_pred, *, alpha: float = 0.0, bias: str = "flat",
                           cardinality: str = "reciprocal") -> RangePrecisionRecall:
    """Range-based precision and recall (Tatbul et al., NeurIPS 2018).

    Recall averages over true ranges R: alpha * Existence(R) + (1 - alpha) * gamma(R) *
    omega(R), where Existence is 1 if any point of R is predicted, omega is the positional-bias
    weighted fraction of R covered by predictions and gamma is the cardinality factor (1 when R
    meets at most one predicted range, else 1 / number of predicted ranges it meets). Precision
    is the same with the roles swapped and no existence term. The default flat bias weights every
    point of a range equally, so omega is the covered fraction; with alpha=0, flat bias and
    reciprocal cardinality this is TSB-AD's range precision/recall.

    Args:
      y_true: [N] binary labels with at least one anomaly.
      y_pred: [N] binary predictions. With no predicted anomaly, precision is 0.
      alpha: weight of the existence reward in recall, in [0, 1].
      bias: positional bias "flat" (default), "front", "back" or "middle".
      cardinality: "reciprocal" (1/x penalty for fragmented overlaps) or "one" (no penalty).

    Returns:
      RangePrecisionRecall with precision, recall and f1.
    """
    y = _as_binary(y_true, "y_true")
    p = _as_binary(y_pred, "y_pred")
    if y.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {y.shape[0]} and "
                         f"{p.shape[0]}.")
    _check_classes(y, "y_true", need_negative=False)
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    if bias not in _BIASES:
        raise ValueError(f"bias must be one of {_BIASES}, got {bias!r}.")
    if cardinality not in ("reciprocal", "one"):
        raise ValueError(f"cardinality must be 'reciprocal' or 'one', got {cardinality!r}.")
    recall = _range_scores(y, p, alpha=alpha, bias=bias, cardinality=cardinality)
    precision = 0.0 if not p.any() else _range_scores(p, y, alpha=0.0, bias=bias,
                                                      cardinality=cardinality)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return RangePrecisionRecall(precision=float(precision), recall=float(recall), f1=float(f1))


# --------------------------------------------------------------------------------------------
# VUS (Paparrizos et al., VLDB 2022), TSB-AD 1.5 definition
# --------------------------------------------------------------------------------------------
def _merged_ranges(starts, ends, half: int, n: int):
    """Ranges grown by `half` on both sides; neighbours merged unless strictly separated."""
    new_s, new_e = [max(int(starts[0]) - half, 0)], []
    for i in range(starts.size - 1):
        if ends[i] + half < starts[i + 1] - half:
            new_e.append(int(ends[i]) + half)
            new_s.append(int(starts[i + 1]) - half)
    new_e.append(min(int(ends[-1]) + half, n - 1))
    return np.asarray(new_s), np.asarray(new_e)


def _vus(y: np.ndarray, s: np.ndarray, window: int, num_thresholds: int):
    """Returns (VUS-ROC, VUS-PR) as TSB-AD 1.5's `RangeAUC_volume_opt` computes them.

    For each buffer w in 0..window, labels get a soft buffer sqrt(1 - d / w) at distance
    d = 1..w//2 beyond each range (summed where buffers meet, capped at 1). At each of the
    `num_thresholds` thresholds (scores at evenly spaced ranks of the sorted scores):
      TP = sum of buffered labels over predicted points; P' = (P + labels counted) / 2 where
      buffered labels count only where predicted (true points always); recall = min(TP / P', 1);
      TPR = recall * (fraction of grown ranges containing a prediction); FPR = (#pred - TP) /
      (N - P'); precision = TP / #pred. ROC area by trapezoids through (0, 0) and (1, 1); PR area
      as sum of TPR increments times precision. Both are averaged over the buffers.
    """
    n = y.size
    yf = y.astype(np.float64)
    n_pos = float(yf.sum())
    starts, ends = _segments(y)
    idx = np.linspace(0, n - 1, num_thresholds).astype(int)
    thresholds = np.sort(s)[::-1][idx]
    entry = _entry_index(s, thresholds)
    k = num_thresholds
    n_pred = _cum_at(entry, k)
    tp_true = _cum_at(entry, k, yf)

    roc, pr = [], []
    for w in range(window + 1):
        half = w // 2
        ext = yf.copy()
        if half > 0:
            d = np.arange(1, half + 1)
            vals = np.sqrt(1.0 - d / w)
            after = ends[:, None] + d[None, :]
            before = starts[:, None] - d[None, :]
            v = np.broadcast_to(vals, after.shape)
            ok = after < n
            np.add.at(ext, after[ok], v[ok])
            ok = before >= 0
            np.add.at(ext, before[ok], v[ok])
            np.minimum(ext, 1.0, out=ext)
        tp = _cum_at(entry, k, ext)
        counted = n_pos + tp - tp_true
        # Existence: grown ranges hit by the prediction.
        g_s, g_e = _merged_ranges(starts, ends, half, n)
        bounds = np.stack([g_s, g_e + 1], 1).ravel()
        if bounds[-1] == n:
            bounds = bounds[:-1]
        seg_first = np.minimum.reduceat(entry, bounds)[::2]
        existence = _cum_at(seg_first, k) / float(g_s.size)

        p_new = 0.5 * (n_pos + counted)
        recall = np.minimum(tp / p_new, 1.0)
        tpr = np.concatenate([[0.0], recall * existence, [1.0]])
        fpr = np.concatenate([[0.0], (n_pred - tp) / (n - p_new), [1.0]])
        prec = tp / n_pred
        roc.append(float(np.dot(np.diff(fpr), 0.5 * (tpr[1:] + tpr[:-1]))))
        pr.append(float(np.dot(np.diff(tpr[:-1]), prec)))
    return float(np.mean(roc)), float(np.mean(pr))


def _check_vus_args(sliding_window, num_thresholds) -> tuple[int, int]:
    if sliding_window is None:
        sliding_window = DEFAULT_VUS_WINDOW
    for name, v, lo in (("sliding_window", sliding_window, 0),
                        ("num_thresholds", num_thresholds, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}.")
        if v < lo:
            raise ValueError(f"{name} must be >= {lo}, got {v}.")
    return int(sliding_window), int(num_thresholds)


def vus_roc(y_true, scores, *, sliding_window: Optional[int] = None,
            num_thresholds: int = 250) -> float:
    """Volume under the range-based ROC surface (VUS-ROC), TSB-AD 1.5 definition.

    See `vus_pr` for the construction; this is the mean over buffers 0..sliding_window of the
    range-based ROC area. It depends on the scores only through their ranks.

    Args:
      y_true: [N] binary labels, both classes present.
      scores: [N] finite anomaly scores.
      sliding_window: largest buffer (the series' period, see `vus_window`); None uses 125.
      num_thresholds: thresholds taken at evenly spaced ranks of the sorted scores (TSB-AD: 250).

    Returns:
      VUS-ROC in [0, 1].
    """
    y, s = _check_pair(y_true, scores)
    window, k = _check_vus_args(sliding_window, num_thresholds)
    return _vus(y, s, window, k)[0]


def vus_pr(y_true, scores, *, sliding_window: Optional[int] = None,
           num_thresholds: int = 250) -> float:
    """Volume under the range-based precision-recall surface (VUS-PR), TSB-AD 1.5 definition.

    VUS (Paparrizos et al., VLDB 2022) makes range-AUC free of its buffer length by averaging it
    over buffers 0..sliding_window. For a buffer w every labelled range is extended by w // 2 on
    each side with soft labels sqrt(1 - d / w) at distance d; recall rewards both the covered
    (buffered) mass and the fraction of ranges hit, precision counts buffered labels as partial
    true positives. The curves are evaluated at `num_thresholds` scores taken at evenly spaced
    ranks of the sorted scores, as TSB-AD does, so the figures match its published tables.
    This is the primary time-series metric of adiff. A random detector scores about the anomaly
    rate with no buffer and more with large ones, since buffered points count as partial hits
    (measured with 10% anomalies in 40-point ranges: 0.10 at sliding_window=0, 0.15 at 50,
    0.23 at 125), so compare detectors at the same window.

    Args:
      y_true: [N] binary labels, both classes present.
      scores: [N] finite anomaly scores.
      sliding_window: largest buffer (the series' period, see `vus_window`); None uses 125.
      num_thresholds: thresholds taken at evenly spaced ranks of the sorted scores (TSB-AD: 250).

    Returns:
      VUS-PR in [0, 1].
    """
    y, s = _check_pair(y_true, scores)
    window, k = _check_vus_args(sliding_window, num_thresholds)
    return _vus(y, s, window, k)[1]


# --------------------------------------------------------------------------------------------
# Period estimation (sets the VUS buffer)
# --------------------------------------------------------------------------------------------
def _autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Biased sample autocorrelation for lags 0..max_lag (FFT, mean removed)."""
    x = x - x.mean()
    n = x.size
    nfft = 1 << int(np.ceil(np.log2(2 * n - 1))) if n > 1 else 1
    f = np.fft.rfft(x, nfft)
    acov = np.fft.irfft(f * np.conj(f), nfft)[:n] / n
    return acov[:max_lag + 1] / acov[0]


def estimate_period(series, *, max_lag: int = 400, min_period: int = 6, max_period: int = 303,
                    max_points: int = 20000,
                    min_autocorrelation: Optional[float] = None) -> Optional[int]:
    """Period of a series from the peaks of its autocorrelation (TSB-AD's `find_length_rank`).

    The autocorrelation of the first `max_points` points is computed for lags up to `max_lag`;
    lags below 3 are dropped and the strict local maxima of the rest are the candidate peaks.
    The highest peak is the period, provided it lies in [min_period, max_period]; otherwise (or
    without any peak, or for a constant series) there is no clear period and None is returned.
    The defaults reproduce TSB-AD 1.5, which uses 125 in the None case (see `vus_window`).
    `min_autocorrelation`, off by default, additionally requires the peak's autocorrelation to
    reach that value (TSB-AD has no such check, so noise always yields some peak).

    Args:
      series: [T] series, or [T, C] of which the first channel is used (as in TSB-AD's benchmark
        scripts for multivariate data).
      max_lag: largest lag of the autocorrelation (> 4).
      min_period: smallest period accepted.
      max_period: largest period accepted.
      max_points: only the first `max_points` points are used.
      min_autocorrelation: optional minimum autocorrelation at the peak.

    Returns:
      The period as an int, or None when there is no clear period.
    """
    x = _as_scores(series, "series", ndim=None)
    if x.ndim == 2:
        x = x[:, 0]
    elif x.ndim != 1:
        raise ValueError(f"series must be [T] or [T, C], got shape {x.shape}.")
    for name, v, lo in (("max_lag", max_lag, 5), ("min_period", min_period, 1),
                        ("max_period", max_period, 1), ("max_points", max_points, 2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}.")
        if v < lo:
            raise ValueError(f"{name} must be >= {lo}, got {v}.")
    if min_period > max_period:
        raise ValueError(f"min_period must be <= max_period, got {min_period} > {max_period}.")
    x = x[:max_points]
    if x.size < 4 or np.ptp(x) == 0:
        return None
    base = 3
    ac = _autocorrelation(x, max_lag)[base:]
    if ac.size < 3:
        return None
    inner = ac[1:-1]
    peaks = np.flatnonzero((inner > ac[:-2]) & (inner > ac[2:])) + 1
    if peaks.size == 0:
        return None
    best = int(peaks[np.argmax(ac[peaks])])
    period = best + base
    if not min_period <= period <= max_period:
        return None
    if min_autocorrelation is not None and ac[best] < min_autocorrelation:
        return None
    return period


def vus_window(series, **kwargs) -> int:
    """VUS buffer for a series: `estimate_period(series, **kwargs)`, or 125 without a period.

    Args:
      series: [T] or [T, C] series (the test series whose scores are evaluated).
      **kwargs: keyword options of `estimate_period`.

    Returns:
      The sliding window to pass to `vus_pr` / `vus_roc`.
    """
    period = estimate_period(series, **kwargs)
    return DEFAULT_VUS_WINDOW if period is None else period
