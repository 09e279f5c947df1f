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
