"""Semi-supervised head: detectors trained on normal data plus (generated) anomalies.

`detector.fit(X, anomalies=A)` (TabularDetector, TimeSeriesDetector) first fits the unsupervised
model on X exactly as `fit(X)` does, then trains a small MLP classifier, the *head*, to tell
normal examples from the anomaly examples in A (typically anomalies made by
`adiff.AnomalyGenerator`, see `adiff.generation.augment`), on per-sample features chosen by the
detector (tables: the encoded row; series: each step's per-channel calibrated errors and values).
The anomaly score becomes

    score(x) = z(x) + softplus(logit(x)) = z(x) + log(1 + LR(x)),

z the unsupervised score standardised by the statistics of the detector's reference normal scores
(the held-out rows where the detector has them, as for `threshold_`), logit the head's log-odds.
The head is trained on class-balanced batches (half normal, half anomalous), so its logit
estimates the log likelihood ratio log LR = log p(features | anomaly) / p(features | normal) of
the examples. The head only adds evidence (log(1 + LR) >= 0): a sample unlike both the normal data
and the examples is left to z. With the plain sum z + logit the head's confident "not like the
examples" (logit -20 and below) buried anomalies of a kind the examples do not show: on a 4-d
Gaussian table with examples of one kind, an unseen kind scored AUROC 0.003 (z alone: 0.989);
with softplus it keeps z's ranking there (tests/supervision_test.py).

Why a hand-written JAX MLP rather than scikit-learn's MLPClassifier: the head is saved with the
detector in its orbax tree (no pickle), trained with balanced batches for a fixed number of steps
in one compiled `lax.scan`, and scored with the detector's own jitted code.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["HEAD_HIDDEN", "HEAD_STEPS", "Head", "abstract_head", "combine", "fit_head", "head_logits"]

HEAD_HIDDEN = (64, 64)
HEAD_STEPS = 1000
HEAD_BATCH = 128  # per class and step
HEAD_LR = 1e-3
HEAD_WEIGHT_DECAY = 1e-4
_MIN_EXAMPLES = 2


class Head(nn.Module):
    """MLP on standardised features -> one logit per sample."""

    hidden: Tuple[int, ...] = HEAD_HIDDEN

    @nn.compact
    def __call__(self, x):
        h = x
        for width in self.hidden:
            h = nn.silu(nn.Dense(width)(h))
        return nn.Dense(1)(h)[..., 0]


def _check_features(f: Any, name: str, width: int | None = None) -> np.ndarray:
    f = np.asarray(f, np.float32)
    if f.ndim != 2:
        raise ValueError(f"{name} must be a [N, F] feature matrix; got shape {f.shape}")
    if len(f) < _MIN_EXAMPLES:
        raise ValueError(f"the head needs at least {_MIN_EXAMPLES} {name.split()[0]} examples; got {len(f)}")
    if width is not None and f.shape[1] != width:
        raise ValueError(f"{name} has {f.shape[1]} features; expected {width}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{name} holds non-finite values")
    return f


_OPT = optax.adamw(HEAD_LR, weight_decay=HEAD_WEIGHT_DECAY)


@jax.jit
def _train_head(params, zn, za, keys):
    """len(keys) AdamW steps on class-balanced batches; the data are arguments (not constants
    baked into the program), so fits with the same shapes reuse one compilation."""
    labels = jnp.concatenate([jnp.zeros(HEAD_BATCH), jnp.ones(HEAD_BATCH)])

    def loss_fn(p, x):
        return jnp.mean(optax.sigmoid_binary_cross_entropy(Head().apply(p, x), labels))

    def step(carry, k):
        p, o = carry
        kn, ka = jax.random.split(k)
        x = jnp.concatenate([zn[jax.random.randint(kn, (HEAD_BATCH,), 0, zn.shape[0])],
                             za[jax.random.randint(ka, (HEAD_BATCH,), 0, za.shape[0])]])
        g = jax.grad(loss_fn)(p, x)
        upd, o = _OPT.update(g, o, p)
        return (optax.apply_updates(p, upd), o), None

    (params, _), _ = jax.lax.scan(step, (params, _OPT.init(params)), keys)
    return params


def fit_head(normal: Any, anomalous: Any, *, seed: int = 0, steps: int = HEAD_STEPS
             ) -> Dict[str, Any]:
    """Trains the head on normal [N, F] vs anomalous [M, F] feature rows.

    Features are standardised by the mean and standard deviation of all N + M rows (a constant
    feature gets scale 1). Each of the `steps` AdamW steps draws HEAD_BATCH rows of each class
    with replacement (class-balanced, so the logit estimates a likelihood ratio), BCE loss.

    Returns:
      {"params": MLP parameters, "loc": [F], "scale": [F]} (numpy), the state `head_logits` uses.
    """
    xn = _check_features(normal, "normal features")
    xa = _check_features(anomalous, "anomalous features", xn.shape[1])
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    allx = np.concatenate([xn, xa])
    loc = allx.mean(0)
    scale = allx.std(0)
    scale = np.where(scale > 1e-6, scale, 1.0).astype(np.float32)
    zn, za = jnp.asarray((xn - loc) / scale), jnp.asarray((xa - loc) / scale)
    key = jax.random.key(int(seed) + 17)
    params = Head().init(key, zn[:1])
    params = _train_head(params, zn, za, jax.random.split(jax.random.fold_in(key, 1), steps))
    return {"params": jax.tree.map(np.asarray, params), "loc": loc.astype(np.float32),
            "scale": scale}


@jax.jit
def _logits(params, x):
    return Head().apply(params, x)


def head_logits(head: Dict[str, Any], features: Any, *, batch: int = 8192) -> np.ndarray:
    """The head's logits [N] of feature rows [N, F] (float64)."""
    f = np.asarray(features, np.float32)
    width = int(np.asarray(head["loc"]).shape[0])
    if f.ndim != 2 or f.shape[1] != width:
        raise ValueError(f"features must be [N, {width}]; got shape {f.shape}")
    z = np.nan_to_num((f - head["loc"]) / head["scale"], nan=0.0, posinf=1e6, neginf=-1e6)
    out = np.empty(len(z), np.float64)
    params = jax.tree.map(jnp.asarray, head["params"])
    for i in range(0, len(z), batch):
        chunk = z[i:i + batch]
        m = len(chunk)
        # pad to a power of two (<= batch): series of every length reuse a few compilations
        size = min(batch, 1 << max(0, (m - 1).bit_length()))
        if m < size:
            chunk = np.concatenate([chunk, np.zeros((size - m, width), np.float32)])
        out[i:i + m] = np.asarray(_logits(params, jnp.asarray(chunk)), np.float64)[:m]
    return out


def combine(z: Any, logits: Any) -> np.ndarray:
    """The head rule: z + softplus(logit) = z + log(1 + likelihood ratio), for standardised
    unsupervised scores z and head logits of the same shape (rows, steps or pixels)."""
    return np.asarray(z, np.float64) + np.logaddexp(0.0, np.asarray(logits, np.float64))


def abstract_head(width: int) -> Dict[str, Any]:
    """ShapeDtypeStructs of `fit_head`'s output for `width` features (for orbax restore)."""
    return {"params": jax.eval_shape(lambda: Head().init(jax.random.key(0), jnp.zeros((1, width)))),
            "loc": jax.ShapeDtypeStruct((width,), np.float32),
            "scale": jax.ShapeDtypeStruct((width,), np.float32)}
