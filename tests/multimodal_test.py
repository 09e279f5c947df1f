"""Tests of adiff.detectors.multimodal and adiff.nets.fusion (budget: <= 60 s on one core).

One tiny detector (table + caption tokens, fusion="dynamic") is fitted once per module on a
synthetic set where the class of a sample fixes both the table's mean and the caption's first
token; the test anomalies pair a table of one class with the caption of another, so each modality
is normal on its own and only the cross-modal relation is broken.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adiff import metrics
from adiff.detectors import base
from adiff.detectors.multimodal import MultimodalDetector, MultimodalScores, _loc_scale, heldout_surprise
from adiff.nets.fusion import ModalitySpec, MultimodalAutoencoder

K = 4  # classes
VOCAB = K + 3


def _make(rng, n, *, mismatch=False):
    c = rng.integers(0, K, n)
    vec = (np.eye(K)[c] * 3.0 + 0.5 * rng.standard_normal((n, K))).astype(np.float32)
    c2 = (c + rng.integers(1, K, n)) % K if mismatch else c
    cap = np.stack([c2 + 1, rng.integers(K + 1, K + 3, n), np.zeros(n, int)], 1)
    return {"vec": vec, "cap": cap}


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    train = _make(rng, 400)
    normal, anomal = _make(rng, 150), _make(rng, 150, mismatch=True)
    test = {k: np.concatenate([normal[k], anomal[k]]) for k in train}
    y = np.r_[np.zeros(150), np.ones(150)]
    det = MultimodalDetector(modalities={"vec": "table", "cap": "text"}, fusion="dynamic",
                             encoder_steps=150, diffusion_steps=300, gate_steps=40, hidden=64,
                             batch_size=128, embed_dim=8, num_draws=2, vocab_size=VOCAB,
                             score_batch_size=512, seed=0)
    det.fit(train)
    return det, train, test, y


def test_contract(setup):
    det, train, test, _ = setup
    s = det.decision_function(test)
    assert s.shape == (300,) and s.dtype == np.float64 and np.isfinite(s).all()
    assert det.decision_scores_.shape == (400,)
    assert 0 < det.labels_.mean() < 0.3  # contamination 0.1 of the training scores
    pred = det.predict(test)
    assert set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (s > det.threshold_).astype(int))
    assert det.predict_proba(test).shape == (300, 2)
    # deterministic: scoring twice gives the same numbers, and scoring does not depend on batching
    np.testing.assert_allclose(det.decision_function(test), s, rtol=1e-6, atol=1e-6)
    part = det.decision_function({k: v[:7] for k, v in test.items()})
    np.testing.assert_allclose(part, s[:7], rtol=1e-4, atol=1e-4)


def test_threshold_from_calibration_rows(setup):
    # threshold_ is the (1 - contamination) quantile of the 80 held-out (calibration) rows' scores,
    # not of all 400 training scores, 320 of which come from rows the networks were trained on
    import copy
    det, _, _, _ = setup
    fresh = _make(np.random.default_rng(7), 1000)  # new normal samples
    s = det.decision_function(fresh)  # predict(X) is s > threshold_ (test_contract)
    assert 0.02 <= (s > det.threshold_).mean() <= 0.22  # about contamination = 0.1
    assert det.threshold_ == pytest.approx(np.quantile(det.decision_scores_[-80:], 0.9))
    np.testing.assert_array_equal(det.labels_, (det.decision_scores_ > det.threshold_).astype(int))
    # predict_proba(method="unify") standardises by the held-out rows' scores too
    assert (det._mu, det._sigma) == pytest.approx((det.decision_scores_[-80:].mean(), det.decision_scores_[-80:].std()))
    # memorised training rows (scored low) do not pull the threshold down: with the old rule
    # (quantile of all rows) it would be ~0.49 here and flag ~half of the held-out rows
    det1 = copy.copy(det)
    det1.decision_scores_ = np.r_[np.full(320, -5.0), np.linspace(0.0, 1.0, 80)]
    det1._process_decision_scores()
    assert det1.threshold_ == pytest.approx(0.9)
    assert det1.labels_[:320].sum() == 0 and det1.labels_[320:].mean() == pytest.approx(0.1, abs=0.02)
    # rule without held-out rows (calibration_fraction=0): the quantile of every training score
    det1.n_calibration_ = det1.n_train_
    det1._process_decision_scores()
    assert det1.threshold_ == pytest.approx(np.quantile(det1.decision_scores_, 0.9))


def test_fusion_selects_score(setup):
    det, _, test, _ = setup
    d = det.decompose(test)
    assert isinstance(d, MultimodalScores)
    np.testing.assert_allclose(d.score, d.dynamic)
    np.testing.assert_allclose(d.contributions.sum(1), d.dynamic, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d.weights.sum(1), 1.0, rtol=1e-5)
    # late is the mean unimodal score, standardised per presence pattern (one pattern here)
    mean_uni = np.nanmean(d.unimodal, axis=1)
    slope = np.polyfit(mean_uni, d.late, 1)[0]
    assert slope > 0
    np.testing.assert_allclose(d.late, np.polyval(np.polyfit(mean_uni, d.late, 1), mean_uni), rtol=1e-4, atol=1e-4)
    for fusion in ("early", "late"):
        det.set_params(fusion=fusion)
        try:
            np.testing.assert_allclose(det.decision_function(test), getattr(d, fusion), rtol=1e-5, atol=1e-5)
        finally:
            det.set_params(fusion="dynamic")


def test_cross_modal_mismatch_caught_by_joint_not_unimodal(setup):
    det, _, test, y = setup
    d = det.decompose(test)
    assert metrics.auroc(y, d.early) >= 0.8  # tiny training budget; the cross term is sharper
    assert metrics.auroc(y, d.dynamic) >= 0.9
    assert metrics.auroc(y, d.cross) >= 0.9
    for i in range(2):
        assert 0.3 <= metrics.auroc(y, d.unimodal[:, i]) <= 0.7
    assert 0.3 <= metrics.auroc(y, d.late) <= 0.7


def test_missing_modality_scored(setup):
    det, _, test, y = setup
    t = {k: v.copy() for k, v in test.items()}
    t["cap"][::3] = -1            # caption missing for every third sample
    t["vec"][1::3] = np.nan       # table missing for others
    d = det.decompose(t)
    assert np.isfinite(d.score).all() and np.isfinite(d.early).all() and np.isfinite(d.late).all()
    assert not d.present[::3, 1].any() and not d.present[1::3, 0].any() and d.present[2::3].all()
    assert np.isnan(d.unimodal[::3, 1]).all() and np.isfinite(d.unimodal[::3, 0]).all()
    assert d.weights.shape == (300, 3)                      # (early, late, cross)
    np.testing.assert_array_equal(d.weights[::3, 2], 0.0)   # no cross term with one modality
    np.testing.assert_array_equal(d.weights[1::3, 2], 0.0)
    assert (d.weights[2::3, 2] > 0).all()
    np.testing.assert_array_equal(d.cross[::3], 0.0)
    # with both present the decomposition is unchanged by the other samples' missing values
    full = det.decompose(test)
    np.testing.assert_allclose(d.score[2::3], full.score[2::3], rtol=1e-4, atol=1e-4)
    # explicit presence dict and None give the same as the in-band markers
    d2 = det.decompose({"vec": test["vec"], "cap": test["cap"],
                        "present": {"cap": np.arange(300) % 3 != 0, "vec": np.arange(300) % 3 != 1}})
    np.testing.assert_allclose(d2.score, d.score, rtol=1e-4, atol=1e-4)
    d3 = det.decompose({"vec": test["vec"], "cap": None})
    assert np.isfinite(d3.score).all() and not d3.present[:, 1].any()
    # with the caption missing, the mismatch is invisible: near chance, not a crash
    assert 0.3 <= metrics.auroc(y, d3.score) <= 0.7


def test_missing_modality_calibrated(setup):
    # normal samples with a modality missing are scored on the scale of complete normal samples
    # (per-pattern normalisers fitted on held-out normal data): neither set ranks above the other
    det, _, test, y = setup
    normal = {k: v[y == 0] for k, v in test.items()}
    half = np.arange(150) % 2 == 0
    t = {k: v.copy() for k, v in normal.items()}
    t["cap"][half] = -1
    d = det.decompose(t)
    for s in (d.early, d.late, d.dynamic):
        assert 0.25 <= metrics.auroc(half.astype(int), s) <= 0.75
    assert det.n_calibration_ == 80  # calibration_fraction 0.2 of 400 training samples


@pytest.mark.parametrize("attention", ["score", "calibrated"])
def test_dynamic_attention(setup, attention):
    # the dynamic score is a convex combination of the available components (the normalised scores,
    # or their held-out surprises), weighted towards the most anomalous one, so it is never below
    # their minimum nor above their maximum
    det, _, test, y = setup
    default = det.attention
    det.set_params(attention=attention)
    try:
        d = det.decompose(test)
        det.set_params(fusion_temperature=1e6, gate_bound=0.0)
        flat = det.decompose(test)
    finally:
        det.set_params(attention=default, fusion_temperature=1.0, gate_bound=1.0)
    comps = d.components
    fused = np.stack([d.early, d.late, d.cross], axis=1)
    if attention == "score":
        np.testing.assert_allclose(comps, fused, rtol=1e-6, atol=1e-6)
    else:  # the surprise is an increasing function of the normalised score (one presence pattern)
        for c in range(3):
            o = np.argsort(fused[:, c])
            assert (np.diff(comps[o, c]) >= -1e-5).all() and comps[o[-1], c] > comps[o[0], c]
        assert (comps >= 0).all()
    np.testing.assert_allclose(d.contributions.sum(1), d.dynamic, rtol=1e-5, atol=1e-5)
    assert (d.dynamic <= comps.max(1) + 1e-5).all() and (d.dynamic >= comps.min(1) - 1e-5).all()
    top = np.argmax(comps, axis=1)
    assert np.mean(np.argmax(d.weights, axis=1) == top) > 0.5
    assert det.gate_trained_
    assert metrics.auroc(y, d.dynamic) >= 0.9
    # a huge temperature gives (close to) the plain mean of the components, the bounded gate aside
    np.testing.assert_allclose(flat.dynamic, flat.components.mean(1), rtol=1e-3, atol=1e-3)


def test_heldout_surprise():
    # surprise = -log(exceedance probability among n held-out scores), log tail beyond the maximum
    from adiff.detectors.multimodal import _fit_surprise
    z = np.random.default_rng(3).standard_normal(300)
    knots, (lo, hi, tau) = _fit_surprise(z)
    n = len(z)
    assert lo == pytest.approx(np.log((n + 1) / n)) and hi == pytest.approx(np.log(n + 1))
    zs = np.sort(z)
    s = heldout_surprise(zs, knots, s_lo=lo, s_max=hi, tau=tau)
    exact = np.log((n + 1) / (n - np.arange(n)))
    assert np.abs(s - exact).max() < 0.2 and np.abs(s - exact)[n // 2:].max() < 0.1
    assert s[-1] == pytest.approx(hi, abs=1e-5) and (np.diff(s) >= 0).all()
    # beyond the maximum: continuous, slope 1 / tau at the maximum, then only logarithmic growth
    top = float(knots[-1])
    eps = 1e-4
    tail = heldout_surprise(np.array([top + eps, top + 10.0, top + 1e4]), knots, s_lo=lo, s_max=hi, tau=tau)
    assert (tail[0] - hi) / eps == pytest.approx(1 / tau, rel=1e-2)
    assert tail[2] == pytest.approx(hi + np.log1p(1e4 / tau), rel=1e-6)
    assert tail[2] - tail[1] < 8  # 1000x further out is log(1000) ~ 7 nats more, not 1000x
    # below the minimum: the surprise of the held-out minimum
    assert heldout_surprise(np.array([zs[0] - 5.0]), knots, s_lo=lo, s_max=hi, tau=tau)[0] == pytest.approx(lo, abs=1e-6)


def test_calibrated_attention_not_taken_by_magnitude(setup):
    # a component whose score is 1000x its held-out range away (late), next to one just beyond its
    # own held-out maximum (early), must not take ~all the weight: beyond their held-out maxima the
    # held-out data cannot rank them, so the attention saturates (the gate prior, here 0, decides).
    # The old attention on the raw normalised scores gives late ~all of it.
    det, _, _, _ = setup
    p = 3  # both modalities present
    top = det.surprise_knots_[p, :, -1]
    span = top - det.surprise_knots_[p, :, 0]
    fused = np.array([[top[0] + 0.5 * span[0], top[1] + 1000 * span[1], 0.0]], np.float32)
    pid = np.array([p])
    avail = np.ones((1, 3), bool)
    prior = np.zeros((1, 3), np.float32)
    default = det.attention
    try:
        det.set_params(attention="calibrated")
        keys, values = det._attention_inputs(fused, pid)
        w, dyn = det._attend(keys, values, avail, prior)
        det.set_params(attention="score")
        keys0, values0 = det._attention_inputs(fused, pid)
        w0, _ = det._attend(keys0, values0, avail, prior)
    finally:
        det.set_params(attention=default)
    w, w0 = np.asarray(w)[0], np.asarray(w0)[0]
    assert w0[1] > 0.999                   # old: magnitude takes all the weight
    assert w[1] < 0.6 and w[0] > 0.4       # calibrated: early and late share it
    assert w[0] == pytest.approx(w[1], abs=1e-3)  # both saturated at the held-out resolution
    # the combined value still ranks further-out scores higher (log tail), without the magnitude
    assert values[0, 1] > values[0, 0] and values[0, 1] < values[0, 0] + 10


def test_input_errors(setup):
    det, _, test, _ = setup
    with pytest.raises(TypeError, match="dict"):
        det.decision_function(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="missing \\['cap'\\]"):
        det.decision_function({"vec": test["vec"]})
    with pytest.raises(ValueError, match="unexpected \\['image'\\]"):
        det.decision_function({**test, "image": test["vec"]})
    with pytest.raises(ValueError, match="same number of samples"):
        det.decision_function({"vec": test["vec"][:5], "cap": test["cap"][:6]})
    with pytest.raises(ValueError, match="per-sample shape"):
        det.decision_function({"vec": test["vec"][:, :3], "cap": test["cap"]})
    with pytest.raises(ValueError, match="tokens must be in"):
        det.decision_function({"vec": test["vec"][:2], "cap": np.full((2, 3), VOCAB)})
    bad = test["vec"][:2].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN inside"):
        det.decision_function({"vec": bad, "cap": test["cap"][:2]})
    with pytest.raises(ValueError, match="at least one present"):
        det.decision_function({"vec": np.full((2, K), np.nan), "cap": np.full((2, 3), -1)})
    with pytest.raises(ValueError, match="modalities\\['x'\\]"):
        MultimodalDetector(modalities={"x": "audio"}).fit({"x": np.zeros((4, 2))})
    with pytest.raises(ValueError, match="fusion"):
        MultimodalDetector(modalities={"x": "table"}, fusion="middle").fit({"x": np.zeros((4, 2))})
    with pytest.raises(ValueError, match="attention must be one of"):
        MultimodalDetector(modalities={"x": "table"}, attention="rank").fit({"x": np.zeros((4, 2))})
    with pytest.raises(ValueError, match="unimodal_scale must be one of"):
        MultimodalDetector(modalities={"x": "table"}, unimodal_scale="mad").fit({"x": np.zeros((4, 2))})


def test_save_load(setup, tmp_path):
    det, _, test, _ = setup
    det.save(tmp_path / "mm")
    det2 = base.load(tmp_path / "mm")
    assert isinstance(det2, MultimodalDetector) and det2.modalities == det.modalities
    np.testing.assert_allclose(det2.decision_function(test), det.decision_function(test), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(det2.decision_scores_, det.decision_scores_)
    np.testing.assert_array_equal(det2.surprise_knots_, det.surprise_knots_)
    np.testing.assert_array_equal(det2.surprise_tail_, det.surprise_tail_)
    # a directory whose config names other modalities is refused
    import json
    cfg = json.loads((tmp_path / "mm" / "adiff.json").read_text())
    cfg["params"]["modalities"] = {"vec": "table", "cap": "text", "extra": "table"}
    (tmp_path / "mm" / "adiff.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError):
        base.load(tmp_path / "mm")


def test_exported():
    from adiff import detectors
    assert "MultimodalDetector" in detectors.__all__  # load() rebuilds only exported classes
    assert detectors.MultimodalDetector is MultimodalDetector


def test_autoencoder_all_kinds():
    specs = (ModalitySpec("img", "image", (8, 8, 1)), ModalitySpec("cap", "text", (5,), 9),
             ModalitySpec("ts", "series", (12, 3)), ModalitySpec("tab", "table", (6,)),
             ModalitySpec("emb", "embedding", (10,)))
    ae = MultimodalAutoencoder(specs, embed_dim=4, proj_dim=8)
    x = [jnp.ones((2, 8, 8, 1)), jnp.array([[1, 2, 3, 0, 0], [4, 0, 0, 0, 0]]), jnp.ones((2, 12, 3)),
         jnp.ones((2, 6)), jnp.arange(20.0).reshape(2, 10)]
    params = jax.jit(ae.init)(jax.random.key(0), x)
    # one compiled call on the batch and on a copy whose first caption has one real token changed
    x2 = [jnp.concatenate([a, a]) for a in x]
    x2[1] = x2[1].at[2, 1].set(5)
    z, rec, proj = jax.jit(ae.apply)(params, x2)
    assert [e.shape for e in z] == [(4, 4)] * 4 + [(4, 10)]
    np.testing.assert_array_equal(z[4], x2[4])  # identity for precomputed embeddings
    assert rec[0].shape == (4, 64) and rec[1].shape == (4, 5, 9) and rec[2].shape == (4, 36)
    assert rec[3].shape == (4, 6) and rec[4] is None
    for p in proj:
        np.testing.assert_allclose(jnp.linalg.norm(p, axis=1), 1.0, rtol=1e-4)
    # the changed token changes that caption's embedding only
    assert not np.allclose(z[1][2], z[1][0]) and np.allclose(z[1][3], z[1][1], atol=1e-6)
    np.testing.assert_allclose(z[0][:2], z[0][2:], atol=1e-6)


def test_image_caption_construction():
    from adiff.data import multimodal as mm
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 1, (120, 8, 8)).astype(np.float32) * 0.2
    labels = np.arange(120) % 10
    s = mm.image_caption_benchmark(images, labels, seed=0, n_train=60, n_test_normal=30, n_per_kind=10, patch=3)
    assert s.train["image"].shape == (60, 8, 8, 1) and s.train["caption"].shape == (60, mm.MAX_LEN)
    assert {k: int((s.kinds == k).sum()) for k in ("normal",) + mm.KINDS} == {
        "normal": 30, "mismatch": 10, "corrupt_image": 10, "garbled_caption": 10}
    np.testing.assert_array_equal(s.labels, (s.kinds != "normal").astype(int))
    first_digit = len(mm.VOCAB) - 10
    digit_of = lambda cap: [t - first_digit for t in cap if t >= first_digit]
    # every training caption names exactly one digit; the test images are the ones without noise
    assert all(len(digit_of(c)) == 1 for c in s.train["caption"])
    corrupt = s.test["image"][s.kinds == "corrupt_image"]
    assert (corrupt.max(axis=(1, 2, 3)) > 0.2).all()          # the noise square exceeds the 0.2 range
    assert (s.test["image"][s.kinds == "mismatch"].max() <= 0.2)
    assert mm.tokenize("handwritten seven").tolist()[:3] == [mm.VOCAB.index("handwritten"), mm.VOCAB.index("seven"), 0]
    with pytest.raises(ValueError, match="outside VOCAB"):
        mm.tokenize("a cat")
    with pytest.raises(ValueError, match="needs"):
        mm.image_caption_benchmark(images, labels, n_train=200)


@pytest.mark.data
def test_skab_groups(shared_data):
    from adiff.data import multimodal as mm
    s = mm.load_skab_groups(shared_data / "timeseries" / "skab", length=16, train_stride=64,
                            test_stride=64, runs=["valve1/0"])
    assert s.train["vibration"].shape[1:] == (16, 2) and s.train["process"].shape[1:] == (16, 6)
    assert len(s.test["vibration"]) == len(s.labels) == len(s.test["process"])
    assert 0 < s.labels.mean() < 1


def test_late_surprise_scale(setup, tmp_path):
    """late_scale="surprise": per-modality held-out surprise curves are fitted (same networks,
    so early and cross are unchanged), late grows only logarithmically with one modality's
    magnitude far beyond its held-out range, and the curves survive save/load."""
    det, train, test, y = setup
    sur = MultimodalDetector(**{**det.get_params(), "late_scale": "surprise"})
    sur.fit(train)
    d0, d1 = det.decompose(test), sur.decompose(test)
    np.testing.assert_allclose(d1.early, d0.early, rtol=1e-5, atol=1e-5)
    assert np.isfinite(d1.late).all() and sur.uni_knots_.shape[0] == 2
    assert not np.allclose(sur.uni_knots_, det.uni_knots_)  # fitted, not the default curves
    # one modality 10 vs 1000 held-out spans beyond its maximum: a log step, not a 100x step
    m = 2
    span = sur.uni_knots_[:, -1] - sur.uni_knots_[:, 0]
    alone = np.tile(sur.alone_stats_[0], (2, 1)).astype(np.float64)  # z = 0 for every modality
    rec = np.tile(sur.recon_stats_[0], (2, 1)).astype(np.float64)
    for r, f in enumerate((10.0, 1000.0)):  # modality 0's unimodal z pushed f spans past its top
        z = sur.uni_knots_[0, -1] + f * span[0]
        alone[r, 0] = sur.alone_stats_[0, 0] + z * sur.alone_stats_[1, 0]
        rec[r, 0] = sur.recon_stats_[0, 0] + z * sur.recon_stats_[1, 0]
    present = np.ones((2, m), bool)
    errors = (np.zeros((2, m)), alone, np.zeros((2, m)))
    late_s = sur._raw_components(errors, rec, present)["raw"][:, 1]
    late_z = det._raw_components(errors, rec, present)["raw"][:, 1]
    assert late_z[1] - late_z[0] > 100                # z scale: magnitude decides
    assert 0 < late_s[1] - late_s[0] < 0.5 * np.log(1000.0) + 1e-6  # surprise: log(100) / M
    sur.save(tmp_path / "sur")
    back = base.load(tmp_path / "sur")
    np.testing.assert_array_equal(back.uni_knots_, sur.uni_knots_)
    np.testing.assert_allclose(back.decision_function(test), sur.decision_function(test), rtol=1e-5, atol=1e-5)


def test_robust_unimodal_scale(setup):
    """unimodal_scale="robust": each modality's held-out errors are located and scaled by their
    median and IQR / 1.349 (the sd for normal data; unmoved by a few far-off held-out samples);
    early and cross are unchanged, unimodal and late move."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(20000)
    np.testing.assert_allclose(_loc_scale(x, robust=True), _loc_scale(x), atol=0.03)
    x[:200] = 1e3  # 1% far outliers: sd x ~10, the robust scale barely moves
    loc, scale = _loc_scale(x, robust=True)
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    assert (loc, scale) == (med, (q3 - q1) / 1.349) and scale < 1.1 and _loc_scale(x)[1] > 90
    assert _loc_scale(np.ones(5), robust=True) == (1.0, 1.0) and _loc_scale(np.zeros(0), robust=True) == (0.0, 1.0)
    # the fitted detector's normalisers refitted on its held-out rows with the robust scale
    det, train, test, _ = setup
    rob = MultimodalDetector(**{**det.get_params(), "unimodal_scale": "robust"})
    rob.__dict__.update({k: v for k, v in det.__dict__.items() if k.endswith("_") and not k.startswith("_")})
    values, present = rob._prepare(train, fitting=False)
    _, cal = rob._calibration_split(len(present))
    emb, rec = rob._embed([v[cal] for v in values])
    rob._fit_normalizers(emb, rec, present[cal])
    _, alone, _ = rob._raw_errors(emb, present[cal])
    for i in range(2):
        for stats, err in ((rob.alone_stats_, alone[:, i]), (rob.recon_stats_, rec[:, i])):
            q1, med, q3 = np.percentile(err.astype(np.float64), [25, 50, 75])
            np.testing.assert_allclose(stats[:, i], [med, (q3 - q1) / 1.349], rtol=1e-5)
    d0, d1 = det.decompose(test), rob.decompose(test)
    np.testing.assert_allclose(d1.early, d0.early, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d1.cross, d0.cross, rtol=1e-5, atol=1e-5)
    assert not np.allclose(d1.unimodal, d0.unimodal) and np.isfinite(d1.late).all()
