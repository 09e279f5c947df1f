"""Tests of adiff.generation (budget: <= 60 s on one core; tiny nets, few steps, shared fits)."""
import json

import numpy as np
import pytest
from PIL import Image

from adiff import generation as gen_lib
from adiff.generation import (AnomalyGenerator, GenerationOutput, MaskPrior, cut_paste,
                              inject_series_anomaly, write_dataset)

TINY = dict(train_steps=40, batch_size=8, width=8, groups=4, num_steps=3)


@pytest.fixture(scope="module")
def image_setup():
    rng = np.random.default_rng(0)
    normal = (rng.random((12, 8, 8, 1)) * 60 + 100).astype(np.uint8)
    defects = normal[:4].copy()
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[:, 2:5, 3:6] = 1
    defects[masks > 0] = 10
    gen = AnomalyGenerator(modality="image", seed=0, channel_mults=(1,), **TINY).fit(
        normal, anomalies=defects, masks=masks, labels=["crack", "hole", "crack", "hole"])
    return gen, normal, masks


@pytest.fixture(scope="module")
def series_gen():
    rng = np.random.default_rng(1)
    windows = np.sin(np.linspace(0, 12, 16))[None, :, None] + 0.1 * rng.normal(size=(10, 16, 2))
    gen = AnomalyGenerator(modality="series", seed=0, **TINY).fit(windows)
    return gen, windows


def test_image_shapes_labels_and_mask_respected(image_setup):
    gen, normal, _ = image_setup
    assert gen.label_names_ == ("normal", "crack", "hole")
    out = gen.generate(base=normal[:5], guidance=2.0)
    assert isinstance(out, GenerationOutput)
    assert out.samples.shape == (5, 8, 8, 1) and out.samples.dtype == np.float32
    assert out.masks.shape == (5, 8, 8) and out.masks.dtype == np.uint8
    assert np.all(out.masks.reshape(5, -1).sum(1) > 0)  # sampled masks are non-empty
    assert set(out.labels.tolist()) <= {1, 2}
    outside = out.masks == 0
    np.testing.assert_allclose(out.samples[..., 0][outside],
                               normal[..., 0][:5][outside] / 255.0, atol=1e-6)
    # inside the mask the sample is generated, not copied
    inside = out.masks > 0
    assert np.abs(out.samples[..., 0][inside] - normal[..., 0][:5][inside] / 255.0).max() > 1e-3
    assert np.all((out.samples >= 0) & (out.samples <= 1))


def test_image_guidance_and_label_conditioning_change_samples(image_setup):
    gen, normal, masks = image_setup
    base, m = normal[:4], masks
    kw = dict(base=base, masks=m, seed=3, clip=False)  # an undertrained net may saturate
    g0 = gen.generate(label="crack", guidance=0.0, **kw)
    g3 = gen.generate(label="crack", guidance=3.0, **kw)
    h3 = gen.generate(label="hole", guidance=3.0, **kw)
    again = gen.generate(label=1, guidance=3.0, **kw)
    np.testing.assert_array_equal(g3.labels, np.ones(4))
    np.testing.assert_array_equal(h3.labels, np.full(4, 2))
    np.testing.assert_allclose(again.samples, g3.samples, atol=1e-6)  # name == index, seeded
    assert np.abs(g3.samples - g0.samples).max() > 1e-4
    assert np.abs(g3.samples - h3.samples).max() > 1e-4
    np.testing.assert_array_equal(g3.masks, m)


def test_refine_masks_keeps_only_changes_beyond_the_normal_null(image_setup):
    gen, normal, masks = image_setup
    base = normal[:4]
    out = gen.generate(base=base, masks=masks, label="crack", guidance=2.0)
    refined, tau = gen.refine_masks(base, out)
    assert refined.shape == masks.shape and refined.dtype == np.uint8 and tau > 0
    assert np.all(refined <= out.masks)  # a subset of the generated regions
    # the null itself (label "normal", the null's own seed): only its own top 1% exceeds tau
    null = gen.generate(base=base, masks=masks, label=0, guidance=2.0, seed=gen.seed + 2)
    kept, tau_null = gen.refine_masks(base, null)
    assert tau_null == tau and kept.sum() <= 0.011 * masks.sum() + 1
    # a change beyond the threshold keeps the whole region (the tiny net's null is wide, so a
    # low quantile sets the bar); no change keeps nothing
    far = np.where(base / 255.0 > 0.5, 0.0, 1.0)  # the far end of [0, 1]: a change >= 0.5
    loud = GenerationOutput(samples=np.where(masks[..., None] > 0, far, base / 255.0)
                            .astype(np.float32), masks=masks, labels=out.labels)
    kept_loud, tau_low = gen.refine_masks(base, loud, quantile=0.02)
    assert tau_low < tau and tau_low < 0.5
    assert np.array_equal(kept_loud, masks)
    quiet = GenerationOutput(samples=(base / 255.0).astype(np.float32), masks=masks, labels=out.labels)
    assert gen.refine_masks(base, quiet)[0].sum() == 0
    with pytest.raises(ValueError, match="quantile"):
        gen.refine_masks(base, out, quantile=1.0)
    with pytest.raises(ValueError, match="bases that generate"):
        gen.refine_masks(base[:3], out)


def test_image_input_validation(image_setup):
    gen, normal, _ = image_setup
    with pytest.raises(ValueError, match="base"):
        gen.generate(base=normal[:, :4])
    with pytest.raises(ValueError, match="label"):
        gen.generate(base=normal[:2], label="scratch")
    with pytest.raises(ValueError, match="guidance"):
        gen.generate(base=normal[:2], guidance=-1.0)
    with pytest.raises(ValueError, match="masks"):
        gen.generate(base=normal[:2], masks=np.ones((3, 8, 8)))
    with pytest.raises(ValueError, match="modality"):
        AnomalyGenerator(modality="audio")
    with pytest.raises(ValueError, match="masks"):
        AnomalyGenerator(modality="image", **TINY).fit(normal, anomalies=normal[:2])
    with pytest.raises(RuntimeError, match="fit"):
        AnomalyGenerator(modality="image").generate(base=normal)


def test_mask_prior_recovers_ellipse_and_samples():
    h = w = 32
    masks = np.stack([gen_lib._rasterize(h, w, 16, 16, 8, 3, 0.0) for _ in range(3)])
    prior = MaskPrior.fit(masks, np.array([1, 1, 1]), jitter=0.0)
    np.testing.assert_allclose(prior.axes[0] * [h, w], [8, 3], rtol=0.15)
    s = prior.sample(np.random.default_rng(0), 5, (h, w), np.array([1] * 5))
    assert s.shape == (5, h, w)
    np.testing.assert_allclose(s.reshape(5, -1).sum(1), masks[0].sum(), rtol=0.2)


def test_cut_paste_changes_only_inside_mask():
    rng = np.random.default_rng(0)
    imgs = rng.random((6, 16, 16, 1)).astype(np.float32)
    out, m = cut_paste(rng, imgs)
    assert out.shape == imgs.shape and m.shape == (6, 16, 16)
    np.testing.assert_array_equal(out[m == 0], imgs[m == 0])
    assert np.abs(out - imgs).max() > 0


@pytest.mark.parametrize("kind", gen_lib.SERIES_TYPES)
def test_inject_series_anomaly_stays_in_segment(kind):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 2))
    y = inject_series_anomaly(rng, x, kind, start=10, length=6)
    np.testing.assert_array_equal(y[:10], x[:10])
    np.testing.assert_array_equal(y[16:], x[16:])
    assert np.abs(y[10:16] - x[10:16]).max() > 0.1


def test_series_generation_types_and_segments(series_gen):
    gen, windows = series_gen
    assert gen.label_names_[1:] == gen_lib.SERIES_TYPES
    out = gen.generate(base=windows[:3], label="level_shift", n=6)
    assert out.samples.shape == (6, 16, 2) and out.masks.shape == (6, 16)
    np.testing.assert_array_equal(out.labels, np.full(6, 2))
    for s, m in zip(out.samples, out.masks):
        idx = np.flatnonzero(m)
        assert idx.size and np.all(np.diff(idx) == 1)  # one contiguous segment
    # outside the segment each sample equals one of the bases
    for s, m in zip(out.samples, out.masks):
        keep = m == 0
        assert min(np.abs(s[keep] - b[keep]).max() for b in windows[:3]) < 1e-5


def test_table_class_conditioned_and_unsupervised():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 4)) * [1, 2, 3, 4] + 5
    sup = AnomalyGenerator(modality="table", seed=0, **TINY).fit(X, anomalies=X[:5] + 20)
    out = sup.generate(n=9, label="anomaly", guidance=1.0)
    assert out.samples.shape == (9, 4) and out.masks is None
    np.testing.assert_array_equal(out.labels, np.ones(9))
    assert sup.label_names_ == ("normal", "anomaly")

    uns = AnomalyGenerator(modality="table", seed=0, ref_scale=2.5, **TINY).fit(X)
    assert uns.unsupervised_
    # guidance 0 samples the Gaussian reference exactly: std = ref_scale * training std
    ref = uns.generate(n=400, guidance=0.0, num_steps=20)
    z = (ref.samples - uns.mean_) / uns.std_
    np.testing.assert_allclose(z.std(0), 2.5, rtol=0.15)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=0.4)
    pushed = uns.generate(n=400, guidance=2.0, num_steps=20)
    assert np.abs(pushed.samples - ref.samples).max() > 1e-3


def test_write_dataset_image_and_table(tmp_path, image_setup):
    gen, normal, _ = image_setup
    out = gen.generate(base=normal[:3])
    path = write_dataset(out, tmp_path / "img", modality="image", extra={"seed": 0})
    man = json.loads(path.read_text())
    assert man["count"] == 3 and man["label_names"] == ["normal", "crack", "hole"]
    first = man["items"][0]
    img = np.asarray(Image.open(tmp_path / "img" / first["image"]))
    mask = np.asarray(Image.open(tmp_path / "img" / first["mask"]))
    np.testing.assert_allclose(img / 255.0, out.samples[0, ..., 0], atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(mask > 0, out.masks[0] > 0)
    assert first["type"] == out.label_names[out.labels[0]]

    tab = GenerationOutput(samples=np.arange(6.0).reshape(3, 2), masks=None,
                           labels=np.array([1, 1, 0]), label_names=("normal", "anomaly"))
    path = write_dataset(tab, tmp_path / "tab", modality="table")
    man = json.loads(path.read_text())
    with np.load(tmp_path / "tab" / man["file"]) as f:
        np.testing.assert_array_equal(f["samples"], tab.samples)
        np.testing.assert_array_equal(f["labels"], [1, 1, 0])
    assert man["labels"] == [1, 1, 0] and not list((tmp_path / "tab").glob("*.pkl"))
    with pytest.raises(TypeError, match="output"):
        write_dataset({"samples": 1}, tmp_path / "bad", modality="table")


# ------------------------------------------------------------------------------------------------
# persistence, compilation caching and augmentation (issue 9)
# ------------------------------------------------------------------------------------------------
# A table with planted anomalies of a known kind: a shifted, tight cluster.
_SHIFT = np.array([3.0, -3.0, 0.0, 0.0])


def _planted_table(seed):
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(200, 4))
    few = _SHIFT + 0.5 * rng.normal(size=(6, 4))  # the few labelled anomalies the generator sees
    test_x = np.concatenate([rng.normal(size=(100, 4)), _SHIFT + 0.5 * rng.normal(size=(50, 4))])
    test_y = np.r_[np.zeros(100), np.ones(50)]
    return normal, few, test_x, test_y


@pytest.fixture(scope="module")
def table_gen():
    normal, few, test_x, test_y = _planted_table(0)
    # 1500 cheap steps: on CPU the fit is dominated by compilation (~3 s either way)
    gen = AnomalyGenerator(modality="table", seed=0, train_steps=1500, batch_size=32, width=16,
                           num_steps=8).fit(normal, anomalies=few)
    return gen, normal, test_x, test_y


@pytest.fixture(scope="module")
def table_unsup_gen():
    X = np.random.default_rng(3).normal(size=(40, 3)) * [1.0, 2.0, 3.0]
    return AnomalyGenerator(modality="table", seed=1, **TINY).fit(X)


def _roundtrip_cases(request):
    if request.param == "image":
        gen, normal, _ = request.getfixturevalue("image_setup")
        return gen, dict(base=normal[:5], guidance=2.0, seed=7)  # masks from the shape prior
    if request.param == "series":
        gen, windows = request.getfixturevalue("series_gen")
        return gen, dict(base=windows[:3], n=5, guidance=1.5, seed=7)  # random segments, types
    if request.param == "table":
        gen = request.getfixturevalue("table_gen")[0]
        return gen, dict(n=7, label="anomaly", guidance=1.0, seed=7)
    return request.getfixturevalue("table_unsup_gen"), dict(n=7, guidance=1.0, seed=7)


@pytest.fixture(params=["image", "series", "table", "table_unsupervised"])
def fitted_case(request):
    return _roundtrip_cases(request)


def test_save_load_reproduces_generate_bit_for_bit(fitted_case, tmp_path):
    gen, kw = fitted_case
    gen.save(tmp_path / "g")
    files = {p.name for p in (tmp_path / "g").rglob("*")}
    assert "adiff.json" in files and not any(f.endswith((".pkl", ".pickle")) for f in files)
    cfg = json.loads((tmp_path / "g" / "adiff.json").read_text())
    assert cfg["format"] == "adiff-generator" and cfg["class"] == "AnomalyGenerator"
    assert cfg["params"]["modality"] == gen.modality and cfg["params"]["seed"] == gen.seed
    loaded = AnomalyGenerator.load(tmp_path / "g")
    assert loaded.label_names_ == gen.label_names_ and loaded.shape_ == gen.shape_
    assert loaded.unsupervised_ == gen.unsupervised_
    a, b = gen.generate(**kw), loaded.generate(**kw)
    np.testing.assert_array_equal(b.samples, a.samples)
    np.testing.assert_array_equal(b.labels, a.labels)
    if a.masks is None:
        assert b.masks is None
    else:
        np.testing.assert_array_equal(b.masks, a.masks)
    assert b.label_names == a.label_names
    # a different seed gives different samples, so the equality above is not vacuous
    other = loaded.generate(**{**kw, "seed": 8})
    assert np.abs(other.samples - a.samples).max() > 1e-4


def test_context_generator_sees_the_surroundings_and_round_trips(image_setup, tmp_path):
    _, normal, masks = image_setup
    gen = AnomalyGenerator(modality="image", seed=0, channel_mults=(1,), context=True, **TINY).fit(
        normal, anomalies=normal[:4], masks=masks, labels=["crack", "hole", "crack", "hole"])
    x = np.random.default_rng(3).normal(size=(4, 8, 8, 1)).astype(np.float32)
    cond = np.asarray(gen._cond(masks.astype(np.float32), np.ones(4, np.int32), x))
    assert cond.shape[-1] == 1 + 1 + gen.num_labels + 1  # mask, context, one-hot with null
    inside = masks > 0
    np.testing.assert_array_equal(cond[..., 1][inside], 0.0)  # nothing of the region leaks in
    np.testing.assert_allclose(cond[..., 1][~inside], x[..., 0][~inside])
    out = gen.generate(base=normal[:4], masks=masks, label="crack", seed=5)
    np.testing.assert_allclose(out.samples[..., 0][~inside], normal[:4, ..., 0][~inside] / 255.0, atol=1e-6)
    assert gen.get_params()["context"] is True
    gen.save(tmp_path / "g")
    loaded = AnomalyGenerator.load(tmp_path / "g")
    assert loaded.context is True
    np.testing.assert_array_equal(loaded.generate(base=normal[:4], masks=masks, label="crack", seed=5).samples,
                                  out.samples)
    with pytest.raises(TypeError, match="context must be a bool"):
        AnomalyGenerator(modality="image", context="yes")


def _edit(src, dst, change):
    import shutil
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adiff.json").read_text())
    change(cfg)
    (dst / "adiff.json").write_text(json.dumps(cfg))
    return dst


def test_load_validates_directory(table_unsup_gen, tmp_path):
    gen = table_unsup_gen
    src = gen.save(tmp_path / "ok")
    with pytest.raises(ValueError, match="not an empty directory"):
        gen.save(src)
    with pytest.raises(RuntimeError, match="fit"):
        AnomalyGenerator(modality="table").save(tmp_path / "unfitted")
    with pytest.raises(ValueError, match="adiff.json is missing"):
        AnomalyGenerator.load(tmp_path / "nowhere")

    def setter(*keys, value):
        def change(cfg):
            d = cfg
            for k in keys[:-1]:
                d = d[k]
            d[keys[-1]] = value
        return change

    cases = [
        (setter("format", value="adiff-detector"), "format"),
        (setter("version", value=2), "version"),
        (setter("class", value="TabularDetector"), "class"),
        (setter("params", "width", value=80), "shape"),  # arrays no longer match the net
        (setter("params", "modality", value="series"), "meta"),  # wrong rank for the modality
        (setter("params", "bogus", value=1), "invalid configuration"),
        (setter("meta", "shape", value=[5]), "meta"),  # mean/std have 3 entries
        (setter("meta", "label_names", value=["anomaly"]), "label_names"),
        (setter("meta", "std", value=[1.0, 0.0, 1.0]), "std"),
        (setter("meta", value=None), "meta"),
    ]
    for i, (change, match) in enumerate(cases):
        bad = _edit(src, tmp_path / f"bad{i}", change)
        with pytest.raises(ValueError, match=match):
            AnomalyGenerator.load(bad)
    # both dims and mean/std edited consistently: only the array shapes reveal the mismatch
    bad = _edit(src, tmp_path / "dims", lambda c: c["meta"].update(
        shape=[4], mean=[0.0] * 4, std=[1.0] * 4))
    with pytest.raises(ValueError, match="shape"):
        AnomalyGenerator.load(bad)
    import shutil
    shutil.rmtree(_edit(src, tmp_path / "noarrays", lambda c: None) / "arrays")
    with pytest.raises(ValueError, match="arrays"):
        AnomalyGenerator.load(tmp_path / "noarrays")
    (tmp_path / "notjson").mkdir()
    (tmp_path / "notjson" / "adiff.json").write_text("{")
    with pytest.raises(ValueError, match="JSON"):
        AnomalyGenerator.load(tmp_path / "notjson")


def test_repeated_generate_does_not_recompile(series_gen):
    import jax
    gen, windows = series_gen
    kw = dict(base=windows[:4], n=4, seed=11, guidance=1.0)
    gen.generate(**kw)  # warm-up: may compile
    fn = gen._sampler(gen.num_steps, True, False)
    size = fn._cache_size()
    events = []

    def listener(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        first = gen.generate(**kw)
        again = gen.generate(**kw)
        other = gen.generate(**{**kw, "guidance": 2.5, "seed": 12})  # traced values, same shapes
        assert events == []
        gen.generate(**{**kw, "n": 3})  # a new batch shape compiles: the listener does see it
        assert len(events) >= 1
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert fn._cache_size() == size + 1
    np.testing.assert_array_equal(again.samples, first.samples)
    assert np.abs(other.samples - first.samples).max() > 1e-4


def test_augment_images_and_series(image_setup, series_gen):
    gen, normal, _ = image_setup
    X, y, m = gen_lib.augment(normal, gen, n=6, seed=5, return_masks=True)
    assert X.shape == (18, 8, 8, 1) and X.dtype == np.float32
    np.testing.assert_array_equal(y, np.r_[np.zeros(12), np.ones(6)])
    assert m.shape == (18, 8, 8) and not m[:12].any() and np.all(m[12:].reshape(6, -1).sum(1) > 0)
    np.testing.assert_array_equal(X[:12], normal.astype(np.float32))
    ref = gen.generate(base=normal, n=6, seed=5)
    np.testing.assert_allclose(X[12:], ref.samples * 255.0, rtol=1e-6)  # the fit's units
    np.testing.assert_array_equal(m[12:], ref.masks)

    sgen, windows = series_gen
    X, y = gen_lib.augment(windows, sgen, n=4, label="spike", seed=2)
    assert X.shape == (14, 16, 2) and y.tolist() == [0] * 10 + [1] * 4
    X2, _, m2 = gen_lib.augment(windows, sgen, n=4, label="spike", seed=2, return_masks=True)
    np.testing.assert_array_equal(X2, X)
    assert m2.shape == (14, 16) and not m2[:10].any() and m2[10:].all(axis=0).sum() < 16

    with pytest.raises(ValueError, match="X_normal"):
        gen_lib.augment(windows[:, :8], sgen, n=2)
    with pytest.raises(ValueError, match="n must"):
        gen_lib.augment(windows, sgen, n=0)
    with pytest.raises(TypeError, match="generator"):
        gen_lib.augment(windows, object(), n=2)


def test_augment_trains_a_classifier_that_finds_real_anomalies(table_gen):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    gen, normal, test_x, test_y = table_gen
    X, y = gen_lib.augment(normal, gen, n=100, guidance=1.0, seed=0)
    assert X.shape == (300, 4) and y.sum() == 100
    np.testing.assert_allclose(X[:200], normal.astype(np.float32))
    with pytest.raises(ValueError, match="return_masks"):
        gen_lib.augment(normal, gen, n=2, return_masks=True)
    # trained on normal + generated only (no real anomaly); tested on unseen real anomalies.
    # Measured AUROC 0.989-1.000 over data/generator seeds 0-5 (guidance 1.0); chance is 0.5.
    clf = LogisticRegression().fit(X, y)
    auc = roc_auc_score(test_y, clf.decision_function(test_x))
    assert auc > 0.7, auc
    # the generated rows sit near the planted cluster, not around the normal data
    np.testing.assert_allclose(np.median(X[200:], 0), _SHIFT, atol=1.0)


def test_adiff_load_dispatches_to_the_generator(tmp_path):
    """`adiff.load` reads a saved generator too (format "adiff-generator"), never a pickle."""
    import adiff
    rng = np.random.RandomState(0)
    gen = adiff.AnomalyGenerator(modality="table", seed=0, train_steps=3, width=8, num_steps=2).fit(
        rng.randn(40, 3).astype(np.float32))
    gen.save(tmp_path / "g")
    again = adiff.load(tmp_path / "g")
    assert isinstance(again, adiff.AnomalyGenerator)
    a, b = gen.generate(n=4, seed=1), again.generate(n=4, seed=1)
    np.testing.assert_array_equal(np.asarray(a.samples), np.asarray(b.samples))


def test_clip_x0_stops_far_off_table_samples(table_gen):
    """Clipping the sampler's clean-sample estimate removes the rare far-off rows (network error
    amplified by 1/alpha at the noisiest steps). Measured on seeds 0-2 with 2,000 rows: 5.8-7.0%
    of rows farther than 10 from the cluster unclipped, 0.3-0.5% with clip_x0=5, none with 3."""
    gen = table_gen[0]
    far = {}
    for c in (None, 3.0):
        x = gen.generate(n=600, guidance=1.0, seed=0, clip_x0=c).samples
        far[c] = float(np.mean(np.linalg.norm(x - _SHIFT, axis=1) > 10))
    assert far[3.0] <= 0.005 and far[None] > far[3.0] + 0.02, far
    with pytest.raises(ValueError, match="clip_x0"):
        gen.generate(n=2, clip_x0=-1.0)


def test_train_steps_default_depends_on_the_modality():
    from adiff.generation import DEFAULT_TRAIN_STEPS  # pylint: disable=import-outside-toplevel
    assert AnomalyGenerator(modality="table").train_steps == DEFAULT_TRAIN_STEPS["table"] == 20000
    assert AnomalyGenerator(modality="image").train_steps == 1000
    assert AnomalyGenerator(modality="series", train_steps=7).train_steps == 7
    with pytest.raises(ValueError, match="train_steps"):
        AnomalyGenerator(modality="table", train_steps=0)


@pytest.mark.slow
def test_generation_benchmark_quick_table_part(tmp_path):
    # The benchmark script end to end on its tiny config (one small ADBench table, one seed);
    # --quick writes to a temporary directory (here --artifacts), never into docs/results.
    import pathlib  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    repo = pathlib.Path(__file__).resolve().parents[1]
    if not (repo.parent / "shared" / "data" / "tabular").is_dir():
        pytest.skip("needs ../shared/data/tabular")
    before = sorted((repo / "docs" / "results" / "generation").rglob("*"))
    out = subprocess.run([sys.executable, "-m", "experiments.benchmarks.generation", "--quick",
                          "--parts=table", f"--artifacts={tmp_path}"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("table Stamps seed 0")]
    assert line and "detector + head: adiff class-conditioned + few real=" in line[0]
    assert sorted((repo / "docs" / "results" / "generation").rglob("*")) == before


def test_benchmark_pixel_features_per_time_maps_and_head_rule():
    # The image_pixel_head part's features: image + one standardised log map per denoise time +
    # the combined log map (last); the detector's t0 is restored; score = z + softplus(logit).
    from experiments.benchmarks import generation as bench  # pylint: disable=import-outside-toplevel

    class FakeDetector:  # maps depend on t0 as ImageDetector's do after set_params
        def __init__(self, t0):
            self.t0 = t0

        def set_params(self, **kw):
            self.t0 = kw["t0"]
            return self

        def analyze(self, x):
            u, t = x[..., 0], sum(self.t0) / len(self.t0)
            return type("A", (), {"maps": 0.1 + u + 20.0 * t ** 2 * u ** 3})()

    rng = np.random.default_rng(0)
    normal, other = rng.uniform(size=(6, 5, 4, 1)), rng.uniform(size=(3, 5, 4, 1))
    det = FakeDetector((0.2, 0.5))
    f, stats = bench.pixel_features(det, normal)
    assert det.t0 == (0.2, 0.5) and f.shape == (6, 5, 4, 4)
    np.testing.assert_allclose(f[..., 0], normal[..., 0], rtol=1e-6)
    np.testing.assert_allclose(f[..., 1:].reshape(-1, 3).mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(f[..., 1:].reshape(-1, 3).std(0), 1.0, atol=1e-4)
    det.set_params(t0=(0.5,))
    z_half = np.log(det.analyze(other).maps)
    det.set_params(t0=(0.2, 0.5))
    g, _ = bench.pixel_features(det, other, stats)
    np.testing.assert_allclose(g[..., 2], (z_half - stats["mean"][1]) / stats["std"][1], rtol=1e-5)
    assert not np.allclose(g[..., 2], g[..., 3])  # combined map differs from the per-t ones
    logits = rng.normal(size=(3, 5, 4))
    np.testing.assert_allclose(bench.pixel_head_scores(g, logits),
                               g[..., 3] + np.log1p(np.exp(logits)), rtol=1e-6)
    f1, _ = bench.pixel_features(FakeDetector((0.3,)), normal)  # one time: no duplicate channel
    assert f1.shape == (6, 5, 4, 2)


def test_benchmark_real_shape_masks_and_cut_paste_in_masks():
    # The session-23 probe rows: each mask is a real mask of the sample's own type, possibly
    # flipped; cut-paste in given shapes changes pixels inside the mask only.
    from experiments.benchmarks import generation as bench  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    real = np.zeros((3, 6, 8), np.uint8)
    real[0, :2, :] = 1          # a top band ("uneven")
    real[1, 2:4, 1:3] = 1       # a blob ("hole")
    real[2, 4:, :] = 1          # a bottom band ("uneven")
    kinds = ["uneven", "hole", "uneven"]
    names = ("normal", "hole", "uneven")
    labels = np.array([2, 1, 2, 2, 1, 2, 2, 2])
    out = bench.real_shape_masks(rng, real, kinds, labels, names)
    assert out.shape == (8, 6, 8) and out.dtype == np.uint8
    for m, lab in zip(out, labels):
        pool = [real[i] for i, k in enumerate(kinds) if k == names[lab]]
        flips = [f(p) for p in pool for f in (lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1],
                                                lambda a: a[::-1, ::-1])]
        assert any(np.array_equal(m, f) for f in flips)
    assert {int(m[:, 0].sum()) for m, lab in zip(out, labels) if lab == 2} == {2}  # bands stay edge to edge

    images = rng.random((5, 6, 8, 1)).astype(np.float32)
    masks = out[:5]
    pasted = bench.cut_paste_in_masks(rng, images, masks)
    outside = np.broadcast_to(masks[..., None] == 0, images.shape)
    np.testing.assert_array_equal(pasted[outside], images[outside])
    assert not np.allclose(pasted[~outside], images[~outside])


def test_benchmark_per_kind_auroc():
    # Per defect type: that type's images against the normal test images only.
    from experiments.benchmarks import image as image_bench  # pylint: disable=import-outside-toplevel
    masks = np.zeros((4, 2, 2), np.uint8)
    masks[1, 0, 0] = masks[2, 1, 1] = 1
    test = type("T", (), {"kinds": np.array(["free", "a", "b", "free"]), "labels": np.array([0, 1, 1, 0]),
                          "masks": masks})()
    maps = np.zeros((4, 2, 2))
    maps[1, 0, 0] = 5.0          # type a: its defect pixel ranks first
    maps[2] = 1.0                # type b: a flat map, its defect pixel ties with its normal ones
    scores = np.array([0.0, 2.0, -1.0, 0.5])
    out = image_bench.per_kind(test, scores, maps)
    assert out["a"] == {"n": 1, "image_auroc": 1.0, "pixel_auroc": 1.0}
    assert out["b"]["image_auroc"] == 0.0 and 0.5 < out["b"]["pixel_auroc"] < 1.0
