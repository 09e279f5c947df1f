"""MultimodalDetector: early, late and dynamic fusion over per-modality diffusion embeddings.

Inputs are dicts of arrays sharing the first dimension N, e.g. {"image": [N, H, W, C],
"caption": [N, L] int tokens, "sensors": [N, T, C], "table": [N, D]}; `modalities` names the kind
of each key (see KINDS). A modality may be missing for some samples: give an all-NaN sample (float
kinds), a row of negative tokens (text), None for the whole key, or an explicit presence mask under
the reserved key "present" ({key: bool [N]}). Every sample needs at least one present modality.
Bad input is a ValueError/TypeError naming the key, before any conversion or compilation: a non-dict,
missing or unexpected keys, differing N, wrong rank or per-sample shape, non-numeric dtypes,
non-integer or out-of-vocabulary tokens, inf anywhere, NaN inside a present sample, and inputs over
`adiff.validation.MAX_ELEMENTS` elements (per key or in all).

Training, in four stages, all on normal data:
1. Encoders. One encoder per modality (adiff.nets.fusion) is trained jointly with an MLP decoder
   (reconstruction: squared error, or cross-entropy for tokens) and a projection head into a shared
   space (symmetric InfoNCE between every pair of present modalities of the same sample). The
   reconstruction term keeps each embedding informative about its own input (so a corrupted image
   moves its embedding); the contrastive term aligns the modalities (so the embedding of a caption
   predicts that of its image, which makes cross-modal inconsistency visible). The encoders are
   then frozen. Why not train them with the DSM loss on the embeddings? Jointly minimising a DSM
   loss over learned embeddings lets the encoders shrink or collapse the embeddings, which makes
   denoising trivial and scores meaningless; freezing after a reconstruction + alignment stage
   avoids that (fixed random features were the other option: they keep no cross-modal alignment).
2. Joint diffusion model (early fusion). A ResidualMLP eps-model over the concatenated,
   standardised embeddings [B, D], conditioned on two per-dimension masks: "present" and "noised".
   Each training sample draws, per modality, a role: noised target, clean context or dropped
   (modality dropout), with at least one target; the DSM loss counts target entries only. One
   network thus gives the joint, the unimodal (others dropped) and the conditional (others clean)
   denoising errors.
3. Calibration. The last `calibration_fraction` of the training samples take no part in stages
   1-2; every normaliser below is fitted on them (the networks partly memorise their own training
   samples, whose errors are therefore too small to calibrate test scores on), for every presence
   pattern: a sample with a missing modality is compared with held-out normal samples evaluated
   with the same modality missing, so it is not scored on another scale. The contamination
   threshold `threshold_` is the (1 - contamination) quantile of the held-out rows' scores too
   (`decision_scores_` keeps every training row's score); with no held-out rows, of all rows.
4. Dynamic gate (fusion="dynamic"). A ModalityGate maps a per-sample context (presence, and the
   log mean square of each present modality's standardised embedding) to bounded log prior
   weights (|.| <= gate_bound) of the three normalised scores (early, late, cross); it is trained
   on the held-out normal samples (and a copy with random modality dropout) to minimise the mean
   dynamic score, i.e. to lower a component in contexts where it raises false alarms.

Scores (denoising errors are means over fixed times `ts` and `num_draws` fixed noise draws, so
scores are deterministic):
- unimodal[m]: mean of the z-scored denoising error of m alone and (trainable kinds) the z-scored
  reconstruction error of m; normal on its own data => about 0.
- cross: mean over present m of z(E_cond[m] - E_alone[m]), the extra denoising error of m when the
  other present modalities are given as context, then standardised per presence pattern; 0 (and
  unavailable) with one modality.
- early: mean over present m of z(E_joint[m]) (all present modalities noised together), then
  standardised per presence pattern.
- late: mean of unimodal[m] over present m, then standardised per presence pattern; with
  late_scale="surprise" each unimodal[m] is first mapped to its held-out surprise (the map of
  the calibrated attention below, fitted per modality on the held-out samples where it is present).
- dynamic: attention over the available normalised scores c in (early, late, cross), a convex
  combination that leans, per sample, on the most surprised component (a smooth maximum), so a kind
  of anomaly caught by early or by late alone is not diluted by the other; early and late are
  always in it. Two scales (`attention`):
  "score" (default): w = softmax(c / fusion_temperature + gate prior), dynamic = sum_c w_c c. Far
    outside the held-out range the component with the largest magnitude takes all the weight,
    whether or not it is the informative one.
  "calibrated": each component is first mapped to its held-out surprise s = -log(exceedance
    probability among the held-out normal scores of its presence pattern), smooth, with a log
    tail s_max + log1p((c - c_max) / tau) beyond the held-out maximum c_max (s_max = log(n + 1),
    tau the score distance over which s rose by the last nat below c_max, so s is C1 there);
    w = softmax(min(s, s_max) / fusion_temperature + gate prior), dynamic = sum_c w_c s_c. The
    held-out data cannot say how much more surprising one component is than another beyond their
    held-out maxima, so there the attention saturates and the gate prior decides; no component's
    magnitude can take all the weight (see `heldout_surprise`).
"""
from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from adiff import losses, sde as sde_lib, validation
from adiff.detectors.base import BaseDetector
from adiff.nets.fusion import KINDS, ModalityGate, ModalitySpec, MultimodalAutoencoder, embedding_dim
from adiff.nets.mlp import ResidualMLP
from adiff.training import trainer
from adiff.typing import Array

FUSIONS = ("early", "late", "dynamic")
ATTENTIONS = ("score", "calibrated")
LATE_SCALES = ("z", "surprise")
UNIMODAL_SCALES = ("sd", "robust")
_SURPRISE_KNOTS = 33  # knots of each held-out surprise curve (per presence pattern and component)
_MAX_INFERRED_VOCAB = 1 << 20  # larger token ids at fit need an explicit vocab_size
PRESENT_KEY = "present"

__all__ = ["MultimodalDetector", "MultimodalScores", "FUSIONS", "ATTENTIONS", "LATE_SCALES", "UNIMODAL_SCALES", "KINDS", "PRESENT_KEY",
           "heldout_surprise"]


@flax.struct.dataclass
class MultimodalScores:
    """Score decomposition of `MultimodalDetector.decompose`.

    Attributes:
      score: [N] the detector's score (its `fusion`).
      early: [N] early-fusion score.
      late: [N] late-fusion score.
      dynamic: [N] dynamic-fusion score (attention over early, late, cross; no gate prior when
        the gate was not trained).
      components: [N, 3] the values the dynamic score combines: (early, late, cross) for
        attention="score", their held-out surprises for attention="calibrated".
      unimodal: [N, M] normalised per-modality scores (NaN where the modality is missing) on the
        `late_scale` (z-scores, or held-out surprises); the per-modality decomposition of `late`.
      cross: [N] normalised cross-modal term (0 with a single present modality).
      weights: [N, 3] dynamic weights of (early, late, cross); cross is zero where unavailable.
      contributions: [N, 3] weights * components: what each adds to the dynamic score.
      present: [N, M] presence mask.
    """

    score: Array  # [N]
    early: Array  # [N]
    late: Array  # [N]
    dynamic: Array  # [N]
    components: Array  # [N, 3]
    unimodal: Array  # [N, M]
    cross: Array  # [N]
    weights: Array  # [N, 3]
    contributions: Array  # [N, 3]
    present: Array  # [N, M]


def _patterns(m: int) -> np.ndarray:
    """All 2^m presence patterns as a [2^m, m] bool table (row p = bits of p)."""
    return np.array([[(p >> i) & 1 for i in range(m)] for p in range(2 ** m)], bool)


class MultimodalDetector(BaseDetector):
    """Multimodal diffusion anomaly detector (PyOD-compatible, dict inputs).

    Args:
      modalities: {key: kind}, kind in KINDS ("image", "text", "series", "table", "embedding").
      fusion: "early", "late" or "dynamic" (the score of decision_function).
      contamination: expected fraction of anomalies, in (0, 0.5].
      seed: random seed.
      embed_dim: embedding size of each trainable modality.
      proj_dim: size of the shared contrastive space.
      contrastive_weight: weight of the InfoNCE alignment loss (0 disables alignment).
      temperature: InfoNCE temperature.
      hidden: width of the joint score network (ResidualMLP).
      num_blocks: residual blocks of the score network.
      encoder_steps: optimisation steps of the encoder stage.
      diffusion_steps: optimisation steps of the joint diffusion model.
      gate_steps: optimisation steps of the dynamic gate (fusion="dynamic" only).
      batch_size: training batch size (capped at N).
      learning_rate: Adam peak learning rate.
      drop_rate: probability of dropping a present context modality while training (robustness to
        missing modalities).
      calibration_fraction: fraction of the training samples held out from network training; the
        score normalisers and the dynamic gate are fitted on them (0 = fit them on the training
        samples, whose errors the networks have partly memorised).
      fusion_temperature: temperature of the attention over normalised (early, late, cross) scores
        in dynamic fusion (small = max of the components, large = their mean).
      attention: scale of the dynamic attention, "score" (the normalised scores) or "calibrated"
        (their held-out surprise, saturating beyond the held-out maximum; module docstring). Set it
        before fit: the gate is trained on this scale. "score" is the default: "calibrated" fixes
        SKAB seed 0 but misses seeds 1-2 (docs/results/multimodal.md, "Calibrated attention").
      gate_bound: bound on the learned per-sample log prior weights of the dynamic gate (0 = no gate).
      late_scale: scale on which late fusion averages the per-modality scores: "z" (default; their
        held-out z-scores) or "surprise" (their held-out surprise, as `heldout_surprise`: beyond
        the held-out range a modality's score grows logarithmically, so far-off test data are not
        ranked by whichever modality has the smallest held-out spread).
      unimodal_scale: location and scale of each modality's held-out denoising and reconstruction
        errors, by which they are z-scored into unimodal[m] (and so into late fusion): "sd" (mean
        and standard deviation) or "robust" (median and IQR / 1.349, the standard deviation for
        normal data). Held-out reconstruction errors can be heavy-tailed (on SKAB one modality's sd
        is 11-14 times its IQR / 1.349 and varies 1.8x between seeds), and then a few held-out
        samples set that modality's weight in late fusion.
      ts: diffusion times at which denoising errors are measured.
      num_draws: fixed noise draws per time.
      vocab_size: text vocabulary size (token 0 = padding); None infers max token + 1 at fit.
      score_batch_size: fixed scoring batch size.
      verbose: print training progress.
    """

    def __init__(self, *, modalities: Mapping[str, str] | None = None, fusion: str = "dynamic",
                 contamination: float = 0.1, seed: int = 0, embed_dim: int = 16, proj_dim: int = 32,
                 contrastive_weight: float = 1.0, temperature: float = 0.1, hidden: int = 128,
                 num_blocks: int = 2, encoder_steps: int = 1500, diffusion_steps: int = 3000,
                 gate_steps: int = 500, batch_size: int = 256, learning_rate: float = 1e-3,
                 drop_rate: float = 0.3, calibration_fraction: float = 0.2, fusion_temperature: float = 1.0,
                 attention: str = "score", gate_bound: float = 1.0, late_scale: str = "z",
                 unimodal_scale: str = "sd", ts: Sequence[float] = (0.05, 0.2, 0.5),
                 num_draws: int = 4,
                 vocab_size: int | None = None, score_batch_size: int = 1024, verbose: bool = False):
        self.modalities = modalities
        self.fusion = fusion
        self.contamination = contamination
        self.seed = seed
        self.embed_dim = embed_dim
        self.proj_dim = proj_dim
        self.contrastive_weight = contrastive_weight
        self.temperature = temperature
        self.hidden = hidden
        self.num_blocks = num_blocks
        self.encoder_steps = encoder_steps
        self.diffusion_steps = diffusion_steps
        self.gate_steps = gate_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.drop_rate = drop_rate
        self.calibration_fraction = calibration_fraction
        self.fusion_temperature = fusion_temperature
        self.attention = attention
        self.gate_bound = gate_bound
        self.late_scale = late_scale
        self.unimodal_scale = unimodal_scale
        self.ts = ts
        self.num_draws = num_draws
        self.vocab_size = vocab_size
        self.score_batch_size = score_batch_size
        self.verbose = verbose

    # -- validation ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        if not isinstance(self.modalities, Mapping) or not self.modalities:
            raise TypeError(f"modalities must be a non-empty dict {{key: kind}}, got {self.modalities!r}")
        for k, kind in self.modalities.items():
            if not isinstance(k, str) or k == PRESENT_KEY:
                raise ValueError(f"modalities keys must be strings other than {PRESENT_KEY!r}, got {k!r}")
            validation.check_choice(kind, KINDS, name=f"modalities[{k!r}]")
        if len(self.modalities) > 6:
            raise ValueError(f"modalities must hold at most 6 keys, got {len(self.modalities)}")
        validation.check_choice(self.fusion, FUSIONS, name="fusion")
        validation.check_choice(self.attention, ATTENTIONS, name="attention")
        validation.check_choice(self.late_scale, LATE_SCALES, name="late_scale")
        validation.check_choice(self.unimodal_scale, UNIMODAL_SCALES, name="unimodal_scale")
        for name in ("embed_dim", "proj_dim", "hidden", "num_blocks", "encoder_steps",
                     "diffusion_steps", "gate_steps", "batch_size", "num_draws", "score_batch_size"):
            validation.check_positive_int(getattr(self, name), name=name)
        validation.check_fraction(self.drop_rate, name="drop_rate", low=0.0, high=0.9, inclusive_low=True)
        validation.check_fraction(self.calibration_fraction, name="calibration_fraction", low=0.0, high=0.5,
                                  inclusive_low=True)
        if not float(self.fusion_temperature) > 0:
            raise ValueError(f"fusion_temperature must be > 0, got {self.fusion_temperature!r}")
        if not float(self.gate_bound) >= 0:
            raise ValueError(f"gate_bound must be >= 0, got {self.gate_bound!r}")
        if not self.ts or any(not 0.0 < float(t) <= 1.0 for t in self.ts):
            raise ValueError(f"ts must be a non-empty sequence of times in (0, 1], got {self.ts!r}")
        if not float(self.temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not float(self.contrastive_weight) >= 0:
            raise ValueError(f"contrastive_weight must be >= 0, got {self.contrastive_weight!r}")
        if self.vocab_size is not None:
            validation.check_positive_int(self.vocab_size, name="vocab_size")

    @property
    def _keys(self) -> list:
        return list(self.modalities)

    def _prepare(self, X, *, fitting: bool):
        if fitting:
            self._check_params()
        if not isinstance(X, Mapping):
            raise TypeError(f"X must be a dict {{key: array}} with keys {self._keys}, got {type(X).__name__}")
        keys = [k for k in X if k != PRESENT_KEY]
        missing = [k for k in self._keys if k not in X]
        extra = [k for k in keys if k not in self.modalities]
        if missing or extra:
            raise ValueError(f"X must have the keys {self._keys} (a modality missing for every sample "
                             f"is given as None); missing {missing}, unexpected {extra}")
        arrays = {k: X[k] for k in self._keys}
        validation.check_total_size(arrays, name="X")  # before any conversion copies a huge input
        ns = {k: _n_samples(k, v) for k, v in arrays.items() if v is not None}
        if not ns:
            raise ValueError("X has no data: every modality is None")
        n = next(iter(ns.values()))
        if any(v != n for v in ns.values()):
            raise ValueError(f"every modality of X must have the same number of samples N; got {ns}")
        if n < 1:
            raise ValueError("X must hold at least one sample; got N=0")
        explicit = X.get(PRESENT_KEY)
        if explicit is not None and not isinstance(explicit, Mapping):
            raise TypeError(f"X[{PRESENT_KEY!r}] must be a dict {{key: bool [N]}}, got {type(explicit).__name__}")
        if explicit is not None:
            unknown = [k for k in explicit if k not in self.modalities]
            if unknown:
                raise ValueError(f"X[{PRESENT_KEY!r}] has keys {unknown} that are not modalities; "
                                 f"expected a subset of {self._keys}")
            validation.check_total_size(explicit, name=f"X[{PRESENT_KEY!r}]")
        if fitting:
            if any(v is None for v in arrays.values()):
                raise ValueError(f"fit needs data for every modality; None for {[k for k, v in arrays.items() if v is None]}")
            self._fit_input_stats(arrays)
        values, present = [], []
        for i, k in enumerate(self._keys):
            v, p = self._convert(k, arrays[k], n)
            if explicit is not None and k in explicit:
                e = np.asarray(explicit[k])
                if e.shape != (n,):
                    raise ValueError(f"X[{PRESENT_KEY!r}][{k!r}] must have shape ({n},), got {e.shape}")
                p = p & e.astype(bool)
            v = np.where(p.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0).astype(v.dtype)
            values.append(v)
            present.append(p)
        present = np.stack(present, axis=1)
        if not present.any(axis=1).all():
            bad = np.flatnonzero(~present.any(axis=1))[:5]
            raise ValueError(f"every sample needs at least one present modality; samples {bad.tolist()} have none")
        return values, present

    def _fit_input_stats(self, arrays) -> None:
        self.input_shapes_ = {}
        self.input_stats_ = {}
        vocab = {}
        for k, kind in self.modalities.items():
            a = arrays[k]
            if kind == "text":
                a = _as_tokens(k, a)
                top = int(a.max()) + 1 if a.size else 0
                if self.vocab_size is None and top > _MAX_INFERRED_VOCAB:
                    raise ValueError(f"X[{k!r}] has token ids up to {top - 1}; an inferred vocabulary "
                                     f"is limited to {_MAX_INFERRED_VOCAB} ids, pass vocab_size=")
                vocab[k] = int(self.vocab_size or max(top, 2))
                self.input_shapes_[k] = [int(a.shape[1])]
                continue
            a = self._as_float(k, a, kind)
            self.input_shapes_[k] = [int(s) for s in a.shape[1:]]
            rows = ~np.isnan(a.reshape(len(a), -1)).all(axis=1)
            if not rows.any():
                raise ValueError(f"X[{k!r}] has no present sample to fit on")
            a = a[rows]
            axes = (0, 1, 2, 3) if kind == "image" else tuple(range(a.ndim - 1))
            mean = np.nanmean(a, axis=axes)
            std = np.nanstd(a, axis=axes)
            self.input_stats_[k] = (np.asarray(mean, np.float32).reshape(-1), np.asarray(np.where(std > 1e-6, std, 1.0), np.float32).reshape(-1))
        self.vocab_ = vocab

    @staticmethod
    def _as_float(k, a, kind) -> np.ndarray:
        a = np.asarray(a)
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise TypeError(f"X[{k!r}] ({kind}) must hold real numbers, got dtype {a.dtype}")
        want = {"image": ((3, 4), "[N, H, W, C] or [N, H, W]"), "series": ((3,), "[N, T, C]"),
                "table": ((2,), "[N, D]"), "embedding": ((2,), "[N, D]")}[kind]
        if a.ndim not in want[0]:
            raise ValueError(f"X[{k!r}] ({kind}) must have shape {want[1]}, got shape {a.shape}")
        if a.dtype == np.uint8 and kind == "image":
            a = a.astype(np.float32) / 255.0
        a = a.astype(np.float32)
        if kind == "image" and a.ndim == 3:
            a = a[..., None]
        n_inf = int(np.isinf(a).sum())
        if n_inf:
            raise ValueError(f"X[{k!r}] ({kind}) must be finite (an all-NaN sample marks a missing "
                             f"one); found {n_inf} inf values")
        return a

    def _convert(self, k, a, n):
        kind = self.modalities[k]
        shape = tuple(self.input_shapes_[k])
        if a is None:
            dtype = np.int32 if kind == "text" else np.float32
            return np.zeros((n,) + shape, dtype), np.zeros(n, bool)
        if kind == "text":
            a = _as_tokens(k, a)
            if a.shape[1:] != shape:
                raise ValueError(f"X[{k!r}] must have shape [N, {shape[0]}] as in fit, got {a.shape}")
            present = ~(a < 0).all(axis=1)
            vocab = self.vocab_[k]
            bad = (a >= vocab) | ((a < 0) & present[:, None])
            if bad.any():
                raise ValueError(f"X[{k!r}] tokens must be in [0, {vocab}) (a row of negative tokens "
                                 f"marks a missing caption); got {int(bad.sum())} tokens outside, "
                                 f"e.g. {int(a[bad][0])}")
            return np.where(a < 0, 0, a).astype(np.int32), present
        a = self._as_float(k, a, kind)
        if a.shape[1:] != shape:
            raise ValueError(f"X[{k!r}] must have per-sample shape {shape} as in fit, got {a.shape[1:]}")
        flat = np.isnan(a.reshape(len(a), -1))
        present = ~flat.all(axis=1)
        if flat[present].any():
            raise ValueError(f"X[{k!r}] has NaN inside a present sample; NaN marks a whole missing sample only")
        mean, std = self.input_stats_[k]
        return ((np.nan_to_num(a) - mean) / std).astype(np.float32), present

    # -- model pieces -------------------------------------------------------------------------
    def _specs(self):
        specs = []
        for k, kind in self.modalities.items():
            shape = tuple(self.input_shapes_[k])
            if kind == "image" and len(shape) == 2:
                shape = shape + (1,)
            specs.append(ModalitySpec(k, kind, shape, int(self.vocab_.get(k, 0))))
        return tuple(specs)

    def _autoencoder(self) -> MultimodalAutoencoder:
        return MultimodalAutoencoder(self._specs(), embed_dim=self.embed_dim, proj_dim=self.proj_dim)

    def _dims(self):
        return [embedding_dim(s, self.embed_dim) for s in self._specs()]

    def _score_net(self) -> ResidualMLP:
        return ResidualMLP(features=self.hidden, num_blocks=self.num_blocks)

    def _gate(self) -> ModalityGate:
        return ModalityGate(3)  # log prior weights of (early, late, cross)

    @property
    def _sde(self):
        return sde_lib.VPSDE()

    def _train_config(self, steps: int, n: int, offset: int) -> trainer.TrainConfig:
        return trainer.TrainConfig(
            num_steps=steps, batch_size=int(min(self.batch_size, n)), learning_rate=self.learning_rate,
            warmup_steps=min(100, steps // 10), schedule="cosine", grad_clip_norm=1.0, ema_decay=0.99,
            log_every=max(1, steps // 5), checkpoint_every=steps, seed=self.seed + offset)

    def _init_params(self):
        specs = self._specs()
        dummy = [jnp.zeros((1,) + s.shape, jnp.int32 if s.kind == "text" else jnp.float32) for s in specs]
        d = sum(self._dims())
        m = len(specs)
        k1, k2, k3 = jax.random.split(jax.random.key(self.seed), 3)
        return {"autoencoder": self._autoencoder().init(k1, dummy),
                "score": self._score_net().init(k2, jnp.zeros((1, d)), jnp.zeros((1,)), jnp.zeros((1, 2 * d))),
                "gate": self._gate().init(k3, jnp.zeros((1, 2 * m)))}

    # -- stage 1: encoders --------------------------------------------------------------------
    def _recon_errors(self, specs, inputs, recons):
        """Per-sample reconstruction error [B, M] (0 for identity modalities)."""
        cols = []
        for s, x, r in zip(specs, inputs, recons):
            if r is None:
                cols.append(jnp.zeros((x.shape[0],)))
            elif s.kind == "text":
                logp = jax.nn.log_softmax(r)
                cols.append(-jnp.mean(jnp.take_along_axis(logp, x[..., None], axis=-1)[..., 0], axis=1))
            else:
                cols.append(jnp.mean((r - x.reshape(x.shape[0], -1)) ** 2, axis=1))
        return jnp.stack(cols, axis=1)

    def _fit_encoders(self, values, present, params):
        ae, specs, tau, cw = self._autoencoder(), self._specs(), float(self.temperature), float(self.contrastive_weight)
        m = len(specs)

        def loss_fn(p, batch, key):
            inputs = [batch[f"x{i}"] for i in range(m)]
            pres = batch["present"].astype(jnp.float32)
            z, rec, proj = ae.apply(p, inputs)
            rerr = self._recon_errors(specs, inputs, rec)
            recon = jnp.sum(rerr * pres) / jnp.maximum(jnp.sum(pres), 1.0)
            con = jnp.zeros(())
            for a, b in itertools.combinations(range(m), 2):
                both = pres[:, a] * pres[:, b]
                logits = proj[a] @ proj[b].T / tau
                neg = jnp.where(both[None, :] > 0, 0.0, -1e9)
                la = jax.nn.log_softmax(logits + neg, axis=1)
                lb = jax.nn.log_softmax(logits.T + neg, axis=1)
                nll = -(jnp.diag(la) + jnp.diag(lb)) / 2
                con = con + jnp.sum(nll * both) / jnp.maximum(jnp.sum(both), 1.0)
            return recon + cw * con, {"recon": recon, "contrastive": con}

        data = {f"x{i}": v for i, v in enumerate(values)}
        data["present"] = present
        res = trainer.fit(loss_fn, params, data, config=self._train_config(self.encoder_steps, len(present), 1),
                          progress=self.verbose)
        return res.state.params

    # -- stage 2: joint diffusion -------------------------------------------------------------
    def _dim_masks(self, pm: Array) -> Array:
        """[B, M] per-modality mask -> [B, D] per-dimension mask."""
        return jnp.repeat(pm, np.array(self._dims()), axis=1, total_repeat_length=sum(self._dims()))

    def _fit_diffusion(self, emb, present, params):
        net, sde, m, drop = self._score_net(), self._sde, present.shape[1], float(self.drop_rate)

        def loss_fn(p, batch, key):
            k_role, k_pick, k_drop, k_loss = jax.random.split(key, 4)
            pres = batch["present"]
            u = jax.random.uniform(k_role, pres.shape)
            noised = pres & (u < 0.5)
            pick = jnp.argmax(jnp.where(pres, jax.random.uniform(k_pick, pres.shape), -1.0), axis=1)
            noised = noised | ((~noised.any(axis=1, keepdims=True)) & jax.nn.one_hot(pick, m, dtype=bool))
            keep = jax.random.uniform(k_drop, pres.shape) >= drop
            context = pres & ~noised & keep
            obs_d = self._dim_masks((noised | context).astype(jnp.float32))
            noi_d = self._dim_masks(noised.astype(jnp.float32))
            x0 = batch["emb"] * obs_d
            cond = jnp.concatenate([obs_d, noi_d], axis=1)
            model_fn = lambda x, t: net.apply(p, jnp.where(noi_d > 0, x, x0), t, cond)
            out = losses.dsm_loss(model_fn, sde, x0, k_loss, parameterization="eps", mask=noi_d)
            return out.loss, {}

        res = trainer.fit(loss_fn, params, {"emb": emb, "present": present},
                          config=self._train_config(self.diffusion_steps, len(emb), 2), progress=self.verbose)
        return res.state.ema_params

    # -- stage 3: gate ------------------------------------------------------------------------
    def _seg(self) -> Array:
        """[D, M] matrix averaging each modality's embedding dimensions."""
        dims = np.array(self._dims())
        seg = np.zeros((int(dims.sum()), len(dims)), np.float32)
        seg[np.arange(int(dims.sum())), np.repeat(np.arange(len(dims)), dims)] = 1.0 / np.repeat(dims, dims)
        return jnp.asarray(seg)

    def _gate_context(self, emb, present):
        """Per-sample gate context [B, 2M]: presence and each present modality's mean squared
        (standardised) embedding, log1p-compressed (how typical the embedding is)."""
        pf = present.astype(emb.dtype)
        ms = jnp.log1p((emb ** 2) @ self._seg()) * pf
        return jnp.concatenate([pf, ms], axis=1)

    def _gate_logits(self, p, emb, present):
        """Bounded per-sample log prior weights [B, 3] of (early, late, cross)."""
        out = self._gate().apply(p, self._gate_context(emb, present))
        return float(self.gate_bound) * jnp.tanh(out)

    def _attend(self, keys, values, avail, prior):
        """Dynamic fusion: attention weights softmax(keys / temperature + prior) over the available
        components, and the weighted sum of their `values` (keys = values = the normalised scores
        for attention="score"; the clipped and the full held-out surprise for "calibrated")."""
        logits = jnp.where(avail, keys / float(self.fusion_temperature) + prior, -1e9)
        w = jax.nn.softmax(logits, axis=1) * avail
        w = w / jnp.sum(w, axis=1, keepdims=True)
        return w, jnp.sum(w * jnp.where(avail, values, 0.0), axis=1)

    def _fit_gate(self, emb, present, keys, values, avail, params):
        """Gate trained on held-out normal data to minimise the mean dynamic score: in contexts where
        a component raises false alarms it weighs less. Its log weights are bounded by gate_bound,
        so it cannot collapse onto one component (the attention on the scores stays in charge)."""

        def loss_fn(p, batch, key):
            _, dyn = self._attend(batch["keys"], batch["values"], batch["avail"],
                                  self._gate_logits(p, batch["emb"], batch["present"]))
            return jnp.mean(dyn), {}

        data = {"emb": emb, "present": present, "keys": keys, "values": values, "avail": avail}
        res = trainer.fit(loss_fn, params, data,
                          config=self._train_config(self.gate_steps, len(emb), 3), progress=self.verbose)
        return res.state.ema_params

    # -- jitted pieces --------------------------------------------------------------------------
    def _jit(self, name):
        cache = self.__dict__.setdefault("_jitted", {})
        if name in cache:
            return cache[name]
        specs, ae = self._specs(), self._autoencoder()
        if name == "encode":
            def fn(p, *inputs):
                z, rec, _ = ae.apply(p, list(inputs))
                return jnp.concatenate(z, axis=1), self._recon_errors(specs, inputs, rec)
        elif name == "errors":
            net, sde, dims = self._score_net(), self._sde, np.array(self._dims())
            ts = jnp.asarray([float(t) for t in self.ts], jnp.float32)
            seg = self._seg()
            draws, seed = int(self.num_draws), int(self.seed)

            def fn(p, emb, obs, noised):
                """Per-modality denoising error [B, M] of the `noised` modalities given `obs` ones."""
                obs_d, noi_d = self._dim_masks(obs), self._dim_masks(noised)
                x0 = emb * obs_d
                cond = jnp.concatenate([obs_d, noi_d], axis=1)
                total = jnp.zeros_like(x0)
                for i in range(len(self.ts)):
                    for j in range(draws):
                        eps = jax.random.normal(jax.random.fold_in(jax.random.key(seed + 11), i * 97 + j), x0.shape[1:])
                        eps = jnp.broadcast_to(eps, x0.shape)
                        t = jnp.full((x0.shape[0],), ts[i])
                        a = sde.alpha(t)[:, None]
                        s = sde.sigma(t)[:, None]
                        xt = jnp.where(noi_d > 0, a * x0 + s * eps, x0)
                        out = net.apply(p, xt, t, cond)
                        total = total + (out - eps) ** 2
                return (total / (len(self.ts) * draws) * noi_d) @ seg
        elif name == "gate":
            gate = self._gate()

            def fn(p, emb, present):
                return gate.apply(p, self._gate_context(emb, present))
        else:
            raise AssertionError(name)
        cache[name] = jax.jit(fn)
        return cache[name]

    def _batched(self, fn, params, arrays):
        n = len(arrays[0])
        bs = int(min(self.score_batch_size, n))
        outs = []
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            chunk = []
            for a in arrays:
                c = np.asarray(a[start:stop])
                if stop - start < bs:
                    c = np.concatenate([c, np.repeat(c[-1:], bs - (stop - start), axis=0)], axis=0)
                chunk.append(c)
            out = fn(params, *chunk)
            outs.append(jax.tree.map(lambda o, k=stop - start: np.asarray(o)[:k], out))
        return jax.tree.map(lambda *parts: np.concatenate(parts, axis=0), *outs)

    def _embed(self, values):
        emb, rec = self._batched(self._jit("encode"), self.params_["autoencoder"], values)
        return ((emb - self.emb_mean_) / self.emb_std_).astype(np.float32), rec.astype(np.float32)

    def _raw_errors(self, emb, present):
        """Joint [N, M], alone [N, M] and conditional [N, M] denoising errors under `present`."""
        fn, p = self._jit("errors"), self.params_["score"]
        m = present.shape[1]
        pf = present.astype(np.float32)
        joint = self._batched(fn, p, [emb, pf, pf])
        alone = np.zeros_like(joint)
        cond = np.zeros_like(joint)
        for i in range(m):
            one = np.zeros_like(pf)
            one[:, i] = pf[:, i]
            alone[:, i] = self._batched(fn, p, [emb, one, one])[:, i]
            cond[:, i] = self._batched(fn, p, [emb, pf, one])[:, i]
        return joint, alone, cond

    # -- fit ------------------------------------------------------------------------------------
    def _calibration_split(self, n: int):
        """(network rows, calibration rows): the last `calibration_fraction` of the training samples,
        in the given order, are held out for the normalisers and the gate (all rows for both when
        too few). A tail block rather than a random subset, so that overlapping windows of a series
        do not leak into the calibration set; shuffle X beforehand for exchangeable samples."""
        n_cal = int(round(float(self.calibration_fraction) * n))
        if n_cal < 8 or n - n_cal < 8:
            rows = np.arange(n)
            return rows, rows
        return np.arange(n - n_cal), np.arange(n - n_cal, n)

    def _fit(self, data, y=None) -> None:
        values, present = data
        n, m = present.shape
        self.n_features_in_ = m
        fit_rows, cal_rows = self._calibration_split(n)
        values_f, present_f = [v[fit_rows] for v in values], present[fit_rows]
        params = jax.jit(self._init_params)()  # one compile, not one per initializer op
        params["autoencoder"] = self._fit_encoders(values_f, present_f, params["autoencoder"])
        self.params_ = params
        self.__dict__.pop("_jitted", None)
        self.emb_mean_ = np.zeros(sum(self._dims()), np.float32)
        self.emb_std_ = np.ones(sum(self._dims()), np.float32)
        emb, _ = self._embed(values_f)
        pd = np.repeat(present_f, self._dims(), axis=1)
        cnt = np.maximum(pd.sum(0), 1)
        self.emb_mean_ = (np.where(pd, emb, 0).sum(0) / cnt).astype(np.float32)
        var = np.where(pd, (emb - self.emb_mean_) ** 2, 0).sum(0) / cnt
        self.emb_std_ = np.sqrt(np.where(var > 1e-8, var, 1.0)).astype(np.float32)
        emb = ((emb - self.emb_mean_) / self.emb_std_).astype(np.float32)
        self.params_["score"] = self._fit_diffusion(emb, present_f, params["score"])
        emb_c, rec_c = self._embed([v[cal_rows] for v in values])
        present_c = present[cal_rows]
        self._fit_normalizers(emb_c, rec_c, present_c)
        if self.fusion == "dynamic" and float(self.gate_bound) > 0:
            pres_g, keys, values, avail = [], [], [], []
            rng = np.random.default_rng(self.seed + 5)
            for _ in range(2):  # the observed patterns and a random-dropout copy
                pr = present_c.copy() if not pres_g else present_c & (rng.random(present_c.shape) >= self.drop_rate)
                pr[~pr.any(axis=1)] = present_c[~pr.any(axis=1)]
                parts = self._components(emb_c, rec_c, pr)
                pres_g.append(pr)
                keys.append(parts["keys"])
                values.append(parts["values"])
                avail.append(parts["avail"])
            self.params_["gate"] = self._fit_gate(np.concatenate([emb_c, emb_c]), np.concatenate(pres_g),
                                                  np.concatenate(keys), np.concatenate(values),
                                                  np.concatenate(avail), self.params_["gate"])
            self.gate_trained_ = True
        else:
            self.gate_trained_ = False
        self.n_train_ = n
        self.n_calibration_ = int(len(cal_rows))

    def _fit_normalizers(self, emb, rec, present) -> None:
        """Normalisers from (held-out) normal samples: per modality, and per presence pattern for the
        joint, cross and fused (early, late, cross) scores."""
        m = present.shape[1]
        pats = _patterns(m)
        # unimodal (pattern-free) statistics on the samples where the modality is present
        _, alone, _ = self._raw_errors(emb, present)
        self.alone_stats_ = np.zeros((2, m), np.float32)
        self.recon_stats_ = np.zeros((2, m), np.float32)
        robust = self.unimodal_scale == "robust"
        for i in range(m):
            sel = present[:, i]
            self.alone_stats_[:, i] = _loc_scale(alone[sel, i], robust=robust)
            self.recon_stats_[:, i] = _loc_scale(rec[sel, i], robust=robust)
        # held-out surprise curves of each modality's unimodal score (late_scale="surprise")
        knots, tail = _default_surprise(1)
        self.uni_knots_ = np.repeat(knots[0, :1], m, axis=0)
        self.uni_tail_ = np.repeat(tail[:, 0, :1], m, axis=1)
        if self.late_scale == "surprise":
            uni = self._unimodal_z(alone, rec, present)
            for i in range(m):
                self.uni_knots_[i], self.uni_tail_[:, i] = _fit_surprise(uni[present[:, i], i])
        # per presence pattern: statistics from the samples that have all of the pattern's
        # modalities, evaluated with only those present
        self.joint_stats_ = np.zeros((2, len(pats), m), np.float32)
        self.cross_stats_ = np.zeros((2, len(pats), m), np.float32)
        self.fused_stats_ = np.zeros((2, len(pats), 3), np.float32)
        self.joint_stats_[1] = 1.0
        self.cross_stats_[1] = 1.0
        self.fused_stats_[1] = 1.0
        self.surprise_knots_, self.surprise_tail_ = _default_surprise(len(pats))
        for p in range(1, len(pats)):
            pat = pats[p]
            rows = np.flatnonzero((present | ~pat).all(axis=1))
            if len(rows) == 0:
                continue
            pr = np.broadcast_to(pat, (len(rows), m)).copy()
            errors = self._raw_errors(emb[rows], pr)
            joint, alone_p, cond = errors
            for i in np.flatnonzero(pat):
                self.joint_stats_[:, p, i] = _loc_scale(joint[:, i])
                if pat.sum() >= 2:
                    self.cross_stats_[:, p, i] = _loc_scale(cond[:, i] - alone_p[:, i])
            raw = self._raw_components(errors, rec[rows], pr)
            for c in range(3 if pat.sum() >= 2 else 2):
                self.fused_stats_[:, p, c] = _loc_scale(raw["raw"][:, c])
                z = (raw["raw"][:, c] - self.fused_stats_[0, p, c]) / self.fused_stats_[1, p, c]
                self.surprise_knots_[p, c], self.surprise_tail_[:, p, c] = _fit_surprise(z)

    def _unimodal_z(self, alone, rec, present):
        """Per-modality unimodal scores [N, M] on the z scale (NaN where a modality is missing):
        the mean of the z-scored denoising and reconstruction errors (denoising alone for
        precomputed embeddings)."""
        z_alone = (alone - self.alone_stats_[0]) / self.alone_stats_[1]
        z_rec = (rec - self.recon_stats_[0]) / self.recon_stats_[1]
        trainable = np.array([s.kind != "embedding" for s in self._specs()])
        return np.where(present, np.where(trainable, 0.5 * (z_alone + z_rec), z_alone), np.nan)

    def _raw_components(self, errors, rec, present):
        """Per-modality z-scores and the raw (early, late, cross) scores [N, 3] before their
        per-pattern normalisation."""
        m = present.shape[1]
        joint, alone, cond = errors
        pid = (present.astype(np.int64) * (1 << np.arange(m))).sum(axis=1)
        uni = self._unimodal_z(alone, rec, present)
        if self.late_scale == "surprise":
            uni = np.stack([heldout_surprise(uni[:, i], self.uni_knots_[i], s_lo=self.uni_tail_[0, i],
                                             s_max=self.uni_tail_[1, i], tau=self.uni_tail_[2, i])
                            for i in range(m)], axis=1)
        uni = np.where(present, uni, np.nan)
        z_joint = (joint - self.joint_stats_[0, pid]) / self.joint_stats_[1, pid]
        multi = present.sum(axis=1) >= 2
        z_cross = (cond - alone - self.cross_stats_[0, pid]) / self.cross_stats_[1, pid]
        cnt = np.maximum(present.sum(axis=1), 1)
        cross = np.where(multi, np.where(present, z_cross, 0).sum(1) / cnt, 0.0)
        early = np.where(present, z_joint, 0).sum(1) / cnt
        late = np.where(present, np.nan_to_num(uni), 0).sum(1) / cnt
        return {"raw": np.stack([early, late, cross], axis=1), "uni": uni, "multi": multi, "pid": pid}

    def _components(self, emb, rec, present):
        raw = self._raw_components(self._raw_errors(emb, present), rec, present)
        pid, multi = raw["pid"], raw["multi"]
        fused = (raw["raw"] - self.fused_stats_[0, pid]) / self.fused_stats_[1, pid]
        fused[:, 2] = np.where(multi, fused[:, 2], 0.0)
        avail = np.stack([np.ones_like(multi), np.ones_like(multi), multi], axis=1)
        keys, values = self._attention_inputs(fused, pid)
        return {"fused": fused.astype(np.float32), "avail": avail, "uni": raw["uni"],
                "keys": keys, "values": values}

    def _attention_inputs(self, fused, pid):
        """(attention keys [N, 3], combined values [N, 3]) of the dynamic fusion for normalised
        scores `fused` [N, 3] under presence-pattern ids `pid` [N] (module docstring)."""
        fused = np.asarray(fused, np.float64)
        if self.attention == "score":
            return fused.astype(np.float32), fused.astype(np.float32)
        values = np.zeros_like(fused)
        keys = np.zeros_like(fused)
        for p in np.unique(pid):
            rows = pid == p
            for c in range(3):
                lo, hi, tau = self.surprise_tail_[:, p, c]
                values[rows, c] = heldout_surprise(fused[rows, c], self.surprise_knots_[p, c], s_lo=lo, s_max=hi, tau=tau)
                keys[rows, c] = np.minimum(values[rows, c], hi)
        return keys.astype(np.float32), values.astype(np.float32)

    # -- scoring ----------------------------------------------------------------------------------
    def _decompose(self, data) -> MultimodalScores:
        values, present = data
        emb, rec = self._embed(values)
        parts = self._components(emb, rec, present)
        fused, avail = parts["fused"], parts["avail"]
        if getattr(self, "gate_trained_", False):
            raw_prior = self._batched(self._jit("gate"), self.params_["gate"], [emb, present])
            prior = float(self.gate_bound) * np.tanh(raw_prior)  # as _gate_logits, outside the jit cache
        else:
            prior = np.zeros_like(fused)
        vals = parts["values"]
        w, dynamic = self._attend(jnp.asarray(parts["keys"]), jnp.asarray(vals), jnp.asarray(avail), jnp.asarray(prior))
        w, dynamic = np.asarray(w, np.float64), np.asarray(dynamic, np.float64)
        comps = np.where(avail, vals, 0.0).astype(np.float64)
        contrib = w * comps
        early, late, cross = (fused[:, c].astype(np.float64) for c in range(3))
        score = {"early": early, "late": late, "dynamic": dynamic}[self.fusion]
        return MultimodalScores(score=score, early=early, late=late, dynamic=dynamic, components=comps,
                                unimodal=parts["uni"], cross=cross, weights=w,
                                contributions=contrib, present=present)

    def decompose(self, X) -> MultimodalScores:
        """Scores of X with their decomposition per modality and cross-modal term.

        Args:
          X: dict of arrays as in fit (see the module docstring for missing modalities).

        Returns:
          A MultimodalScores (numpy arrays).
        """
        self._check_fitted()
        return self._decompose(self._prepare(X, fitting=False))

    def _decision_function(self, data) -> np.ndarray:
        return np.asarray(self._decompose(data).score, np.float64)

    # -- persistence ------------------------------------------------------------------------------
    def _export(self):
        meta = {"n_train": int(self.n_train_), "input_shapes": self.input_shapes_, "vocab": self.vocab_,
                "gate_trained": bool(self.gate_trained_), "dim": int(sum(self._dims())),
                "n_calibration": int(getattr(self, "n_calibration_", self.n_train_))}
        arrays = {"params": jax.tree.map(np.asarray, self.params_),
                  "input_stats": {k: {"mean": v[0], "std": v[1]} for k, v in self.input_stats_.items()},
                  "emb_mean": self.emb_mean_, "emb_std": self.emb_std_,
                  "alone_stats": self.alone_stats_, "recon_stats": self.recon_stats_,
                  "joint_stats": self.joint_stats_, "cross_stats": self.cross_stats_,
                  "fused_stats": self.fused_stats_, "surprise_knots": self.surprise_knots_,
                  "surprise_tail": self.surprise_tail_}
        if self.late_scale == "surprise":
            arrays.update(uni_knots=self.uni_knots_, uni_tail=self.uni_tail_)
        return meta, arrays

    def _set_meta(self, meta) -> None:
        if not isinstance(meta.get("input_shapes"), dict) or set(meta["input_shapes"]) != set(self.modalities):
            raise ValueError(f"saved input shapes {meta.get('input_shapes')!r} do not match modalities {self.modalities!r}")
        self.input_shapes_ = {k: [int(s) for s in v] for k, v in meta["input_shapes"].items()}
        self.vocab_ = {k: int(v) for k, v in meta.get("vocab", {}).items()}

    def _abstract_arrays(self, meta):
        self._check_params()
        self._set_meta(meta)
        m, d = len(self.modalities), sum(self._dims())
        sds = lambda shape: jax.ShapeDtypeStruct(tuple(shape), np.float32)
        stats = {}
        for k, kind in self.modalities.items():
            if kind == "text":
                continue
            shape = self.input_shapes_[k]
            c = 1 if kind == "image" else int(math.prod(shape[1:])) if kind == "series" else int(shape[0])
            stats[k] = {"mean": sds((c,)), "std": sds((c,))}
        out = {"params": jax.eval_shape(self._init_params), "input_stats": stats,
               "emb_mean": sds((d,)), "emb_std": sds((d,)), "alone_stats": sds((2, m)),
               "recon_stats": sds((2, m)), "joint_stats": sds((2, 2 ** m, m)),
               "cross_stats": sds((2, 2 ** m, m)), "fused_stats": sds((2, 2 ** m, 3)),
               "surprise_knots": sds((2 ** m, 3, _SURPRISE_KNOTS)), "surprise_tail": sds((3, 2 ** m, 3))}
        if self.late_scale == "surprise":
            out.update(uni_knots=sds((m, _SURPRISE_KNOTS)), uni_tail=sds((3, m)))
        return out

    def _import(self, meta, arrays) -> None:
        self._set_meta(meta)
        self.params_ = jax.tree.map(jnp.asarray, arrays["params"])
        self.input_stats_ = {k: (np.asarray(v["mean"], np.float32), np.asarray(v["std"], np.float32))
                             for k, v in arrays["input_stats"].items()}
        for name in ("emb_mean", "emb_std", "alone_stats", "recon_stats", "joint_stats", "cross_stats",
                     "fused_stats", "surprise_knots", "surprise_tail"):
            setattr(self, name + "_", np.asarray(arrays[name], np.float32))
        if self.late_scale == "surprise":
            self.uni_knots_ = np.asarray(arrays["uni_knots"], np.float32)
            self.uni_tail_ = np.asarray(arrays["uni_tail"], np.float32)
        self.gate_trained_ = bool(meta["gate_trained"])
        self.n_train_ = int(meta["n_train"])
        self.n_calibration_ = int(meta.get("n_calibration", self.n_train_))
        self.n_features_in_ = len(self.modalities)
        self.__dict__.pop("_jitted", None)


def _n_samples(k, v) -> int:
    """Leading dimension N of modality `k`'s input, with a clear error for non-arrays."""
    shape = getattr(v, "shape", None)
    if shape is None:
        if not hasattr(v, "__len__") or isinstance(v, (str, bytes, Mapping)):
            raise TypeError(f"X[{k!r}] must be an array [N, ...] (or None), got {type(v).__name__}")
        return len(v)
    if len(shape) == 0:
        raise ValueError(f"X[{k!r}] must be an array [N, ...], got a scalar of shape {tuple(shape)}")
    return int(shape[0])


def _as_tokens(k, a) -> np.ndarray:
    """Token ids [N, L] of a text modality: integers (negative = padding of a missing caption)."""
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"X[{k!r}] (text) must hold integer token ids, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"X[{k!r}] (text) must have shape [N, L], got shape {a.shape}")
    return a


def _loc_scale(x: np.ndarray, robust: bool = False):
    """(location, scale) of held-out scores: mean and sd, or (robust) median and IQR / 1.349; a
    scale <= 1e-8 becomes 1, no scores give (0, 1)."""
    x = np.asarray(x, np.float64)
    if len(x) == 0:
        return 0.0, 1.0
    if robust:
        q1, med, q3 = np.percentile(x, [25, 50, 75])
        loc, s = float(med), float(q3 - q1) / 1.349
    else:
        loc, s = float(np.mean(x)), float(np.std(x))
    return loc, (s if s > 1e-8 else 1.0)


def _fit_surprise(z: np.ndarray):
    """Held-out surprise curve of one component: (knots [K], (s_lo, s_max, tau)).

    The i-th smallest of n held-out scores has exceedance probability (n - i + 1) / (n + 1), i.e.
    surprise s_i = log((n + 1) / (n - i + 1)) from s_lo = log((n + 1) / n) to s_max = log(n + 1).
    The knots are the scores at K evenly spaced surprises from s_lo to s_max (piecewise linear in
    between); tau is the score distance over which s rose by its last nat (floored), the scale of
    the log tail beyond the maximum. Fewer than 2 scores: the standard-normal default.
    """
    z = np.sort(np.asarray(z, np.float64))
    n = len(z)
    if n < 2:
        knots, tail = _default_surprise(1)
        return knots[0, 0], tail[:, 0, 0]
    s_i = np.log((n + 1) / (n - np.arange(n)))
    grid = np.linspace(s_i[0], s_i[-1], _SURPRISE_KNOTS)
    knots = np.interp(grid, s_i, z)
    tau = max(z[-1] - float(np.interp(s_i[-1] - 1.0, s_i, z)), 1e-2 * max(z[-1] - z[0], 1e-6), 1e-6)
    return knots.astype(np.float32), np.array([s_i[0], s_i[-1], tau], np.float32)


def _default_surprise(n_patterns: int):
    """Surprise curves of a standard normal score (n = 100 notional held-out samples) for
    presence patterns without held-out data: knots [P, 3, K], tails [3, P, 3]."""
    from scipy.stats import norm
    n = 100
    grid = np.linspace(np.log((n + 1) / n), np.log(n + 1), _SURPRISE_KNOTS)
    knots = norm.isf(np.exp(-grid))
    tau = knots[-1] - norm.isf(np.exp(-(grid[-1] - 1.0)))
    tail = np.array([grid[0], grid[-1], tau], np.float32)
    return (np.broadcast_to(knots, (n_patterns, 3, _SURPRISE_KNOTS)).astype(np.float32).copy(),
            np.broadcast_to(tail[:, None, None], (3, n_patterns, 3)).astype(np.float32).copy())


def heldout_surprise(c: np.ndarray, knots: np.ndarray, *, s_lo: float, s_max: float, tau: float) -> np.ndarray:
    """Surprise -log(exceedance probability) of scores among held-out normal scores.

    Args:
      c: [N] scores.
      knots: [K] non-decreasing scores at K evenly spaced surprises from s_lo to s_max (the
        held-out minimum to maximum; `_fit_surprise`).
      s_lo: surprise of the held-out minimum, log((n + 1) / n) for n held-out scores.
      s_max: surprise of the held-out maximum, log(n + 1).
      tau: scale of the log tail beyond the held-out maximum.

    Returns:
      [N] surprise: s_lo at or below the held-out minimum, piecewise linear up to s_max at the
      held-out maximum, then s_max + log1p((c - max) / tau), which continues the curve smoothly
      (slope 1 / tau) but grows only logarithmically, so a score 1000 held-out ranges beyond the
      maximum is a few nats more surprising, not 1000.
    """
    c = np.asarray(c, np.float64)
    knots = np.maximum.accumulate(np.asarray(knots, np.float64))
    grid = np.linspace(float(s_lo), float(s_max), len(knots))
    inside = np.interp(c, knots, grid)
    beyond = float(s_max) + np.log1p(np.maximum(c - knots[-1], 0.0) / float(tau))
    return np.where(c > knots[-1], beyond, inside)
