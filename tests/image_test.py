"""Tests of ImageDetector, adiff.noise and the conv autoencoder.

Budget: ~100 s on 2 CPU cores (compilation dominates): one tiny grayscale detector (16 x 16, an
8-channel two-level UNet) is fitted once per module and reused by every scoring option through
set_params; one tiny RGB latent detector covers float RGB input, latent diffusion and save/load;
one tiny simplex-noise detector covers structured noise.
"""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

import adiff.detectors
from adiff import metrics, noise
from adiff.detectors import base as base_lib
from adiff.detectors.image import ImageDetector, _gaussian_blur, _patch_masks
from adiff.nets.autoencoder import ConvAutoencoder

TINY = dict(base_channels=8, channel_mults=(1, 2), groups=4, batch_size=16, learning_rate=3e-3,
            ema_decay=0.9, score_batch_size=32, solver_steps=5)


def _texture(rng, n, size=16):
    """Smooth stripes with a random phase and orientation, plus mild noise, in [0, 1]."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    out = []
    for _ in range(n):
        th, ph = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        v = 0.35 + 0.15 * np.sin(0.8 * (np.cos(th) * xx + np.sin(th) * yy) + ph)
        out.append(v + 0.02 * rng.standard_normal((size, size)))
    return np.clip(np.stack(out)[..., None], 0, 1).astype(np.float32)


def _plant_blobs(rng, x):
    """A bright disc of radius 2.5 at a random place in each image; returns images and masks."""
    n, h, w, _ = x.shape
    yy, xx = np.mgrid[:h, :w]
    x, masks = x.copy(), np.zeros((n, h, w), np.uint8)
    for i in range(n):
        cy, cx = rng.integers(4, h - 4), rng.integers(4, w - 4)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= 2.5 ** 2
        x[i, m, 0] = 0.95
        masks[i] = m
    return x, masks


@pytest.fixture(scope="module")
def gray():
    rng = np.random.default_rng(0)
    train = (_texture(rng, 96) * 255).round().astype(np.uint8)
    normal = _texture(rng, 16)
    anomal, masks = _plant_blobs(rng, _texture(rng, 16))
    test = np.concatenate([normal, anomal])
    labels = np.r_[np.zeros(16), np.ones(16)].astype(int)
    masks = np.concatenate([np.zeros_like(masks), masks])
    det = ImageDetector(**TINY, train_steps=300, t0=(0.4,), seed=0).fit(train)
    return det, train, test, labels, masks


def test_contract_shapes_dtypes(gray):
    det, train, test, _, _ = gray
    assert det.decision_scores_.shape == (96,) and np.isfinite(det.decision_scores_).all()
    s = det.decision_function(test)
    assert s.shape == (32,) and s.dtype == np.float64 and np.isfinite(s).all()
    # uint8 and float in [0, 1] are the same images
    u8 = (test * 255).round().astype(np.uint8)
    np.testing.assert_allclose(det.decision_function(u8), det.decision_function(u8 / 255.0), rtol=1e-5)
    # grayscale without the channel axis is accepted
    np.testing.assert_allclose(det.decision_function(test[..., 0]), s, rtol=1e-6)
    maps = det.anomaly_map(test)
    assert maps.shape == (32, 16, 16) and np.isfinite(maps).all() and (maps >= 0).all()
    # another input size: maps at the input resolution
    big = np.repeat(np.repeat(test[:4], 2, axis=1), 2, axis=2)  # 32 x 32
    assert det.anomaly_map(big).shape == (4, 32, 32)
    rec = det.reconstruct(test[:4])
    assert rec.shape == (4, 16, 16, 1) and rec.min() >= 0 and rec.max() <= 1
    labels = det.predict(test)
    assert set(np.unique(labels)) <= {0, 1} and labels.shape == (32,)
    assert det.predict_proba(test).shape == (32, 2)
    # the same call twice gives the same scores (fixed keys)
    np.testing.assert_array_equal(det.decision_function(test), s)


def test_blob_ranked_high_and_localised(gray):
    det, _, test, labels, masks = gray
    res = det.analyze(test)
    assert metrics.auroc(labels, res.scores) > 0.9
    anomalous = labels == 1
    assert metrics.pixel_auroc(masks[anomalous], res.maps[anomalous]) > 0.85
    # the reconstruction removes the blob: inside the blob it is much darker than the input
    inside = masks[anomalous].astype(bool)
    assert (test[anomalous][..., 0][inside] - res.reconstructions[anomalous][..., 0][inside]).mean() > 0.2


@pytest.mark.parametrize("option", [
    dict(scoring="masked", mask_patch=4, num_masks=4),
    dict(guidance=2.0),
    dict(scoring="score_norm", t0=(0.05, 0.2), image_score="native"),
    dict(map_scales=(1, 2, 4), map_sigma=1.0, image_score="max"),
    dict(solver="dpm_solver_pp"),
    dict(t0=(0.2, 0.4), repeats=2, distance="absolute"),
    dict(scoring="denoise", t0=(0.2, 0.4), repeats=2, image_score="topk"),
])
def test_each_remedy_runs_and_separates(gray, option):
    det, _, test, labels, _ = gray
    params = det.get_params()
    try:
        det.set_params(**option)
        res = det.analyze(test)
    finally:
        det.set_params(**{k: params[k] for k in option})
    assert res.scores.shape == (32,) and res.maps.shape == (32, 16, 16)
    assert np.isfinite(res.scores).all() and np.isfinite(res.maps).all()
    assert metrics.auroc(labels, res.scores) > 0.75, option


def test_elbo_maps_add_up_to_the_bound_and_the_draws_are_shared(gray):
    det, _, test, labels, masks = gray
    params = det.get_params()
    keys = ("scoring", "elbo_samples", "image_score", "map_sigma")
    try:
        det.set_params(scoring="elbo", elbo_samples=64, image_score="native", map_sigma=0.0)
        res = det.analyze(test)
        # the per-pixel terms add up to the image's bound (the native score)
        np.testing.assert_allclose(res.maps.reshape(32, -1).sum(1), res.scores, rtol=1e-4)
        # the same draws for every batch: an image's score does not depend on its batch-mates
        np.testing.assert_allclose(det.decision_function(test[20:22]), res.scores[20:22], rtol=1e-5)
        # it is scoring.elbo of the network's score on the [-1, 1] image, with the detector's key
        net, sde = det._unet(), det._sde
        x = 2.0 * jnp.asarray(test[:3]) - 1.0
        score_fn = lambda v, t: -net.apply(det.model_["unet"], v, t) / sde.sigma(t)[:, None, None, None]
        from adiff import scoring
        want = scoring.elbo(score_fn, sde, x, jax.random.key(det.seed + 13), num_samples=64).scores
        np.testing.assert_allclose(res.scores[:3], np.asarray(want), rtol=1e-4)
        assert metrics.auroc(labels, res.scores) > 0.75
        with pytest.raises(ValueError, match="Gaussian"):
            det.set_params(noise="simplex")
            det.decision_function(test[:2])
    finally:
        det.set_params(**{k: params[k] for k in keys + ("noise",)})


def test_denoise_is_the_x0_error_and_independent_of_the_batch(gray):
    det, _, test, labels, masks = gray
    params = det.get_params()
    try:
        det.set_params(scoring="denoise", t0=(0.3,), repeats=2, image_score="mean", map_sigma=0.0)
        res = det.analyze(test)
        # fixed (common) noise draws: an image's score does not depend on its batch-mates
        alone = det.decision_function(test[20:21])
        np.testing.assert_allclose(alone, res.scores[20:21], rtol=1e-5)
        # the map is the squared error of the one-step clean-image estimate, recomputed by hand
        net, sde = det._unet(), det._sde
        x = 2.0 * jnp.asarray(test[:3]) - 1.0
        t = 0.3
        want = 0.0
        for i in range(2):
            z = jax.random.normal(jax.random.fold_in(jax.random.key(det.seed + 13), i), (1,) + x.shape[1:])
            x_t = sde.alpha(t) * x + sde.sigma(t) * z
            x0 = (x_t - sde.sigma(t) * net.apply(det.model_["unet"], x_t, jnp.full((3,), t))) / sde.alpha(t)
            want = want + jnp.mean((x0 - x) ** 2, axis=-1) / 2
        np.testing.assert_allclose(res.maps[:3], np.asarray(want), rtol=2e-4, atol=1e-6)
    finally:
        det.set_params(**{k: params[k] for k in ("scoring", "t0", "repeats", "image_score", "map_sigma")})
    # the planted blobs are where the denoising error is
    anomalous = labels == 1
    assert metrics.pixel_auroc(masks[anomalous], res.maps[anomalous]) > 0.85


def test_masked_covers_every_pixel_and_guidance_pulls_to_input(gray):
    det, _, test, _, _ = gray
    masks = _patch_masks(16, 16, 4, 4)
    np.testing.assert_array_equal(masks.sum(axis=0), np.ones((16, 16)))  # complementary cover
    assert (masks[0][:4, :4] == 1).all() and (masks[0][4:8, :4] == 0).all()
    x = test[16:24]  # with blobs
    base_err = np.mean((det.reconstruct(x) - x) ** 2)
    det.set_params(guidance=5.0)
    try:
        guided_err = np.mean((det.reconstruct(x) - x) ** 2)
    finally:
        det.set_params(guidance=0.0)
    assert guided_err < 0.7 * base_err  # conditioning towards the input shrinks the error


def test_gaussian_blur_matches_scipy():
    from scipy.ndimage import gaussian_filter
    m = np.random.default_rng(0).random((2, 12, 12)).astype(np.float32)
    got = np.asarray(_gaussian_blur(jnp.asarray(m), 1.0))
    want = np.stack([gaussian_filter(v, 1.0, mode="nearest", truncate=3.0) for v in m])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_validation_errors(gray):
    det = gray[0]
    x = np.zeros((2, 16, 16, 1), np.float32)
    with pytest.raises(ValueError, match="shape"):
        det.decision_function(np.zeros((16, 16)))
    with pytest.raises(ValueError, match="channels"):
        det.decision_function(np.zeros((2, 16, 16, 3), np.float32))
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        det.decision_function(bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        det.decision_function(x + 2.0)
    with pytest.raises(TypeError, match="uint8"):
        det.decision_function(x.astype(np.int16))
    with pytest.raises(TypeError, match="dtype"):
        det.decision_function(np.full((2, 16, 16, 1), "a"))
    with pytest.raises(ValueError, match="scoring"):
        ImageDetector(scoring="nope").fit(x)
    with pytest.raises(ValueError, match="divisible"):
        ImageDetector(**TINY).fit(np.zeros((2, 15, 15, 1), np.float32))
    with pytest.raises(ValueError, match="deterministic solver"):
        ImageDetector(noise="simplex", solver="reverse_diffusion").fit(x)
    with pytest.raises(ValueError, match="t0"):
        ImageDetector(t0=(1.5,)).fit(x)
    with pytest.raises(RuntimeError, match="not fitted"):
        ImageDetector().decision_function(x)
    det.set_params(base_channels=16)
    try:
        with pytest.raises(ValueError, match="changed after fit"):
            det.decision_function(x)
    finally:
        det.set_params(base_channels=TINY["base_channels"])


def test_latent_rgb_float_and_save_load(tmp_path):
    rng = np.random.default_rng(1)
    train = np.concatenate([_texture(rng, 32)] * 3, axis=-1) * np.array([1.0, 0.8, 0.6], np.float32)
    det = ImageDetector(**{**TINY, "channel_mults": (1,)}, latent=True, ae_features=(8, 8),
                        latent_channels=2, train_steps=20, ae_steps=20, seed=2).fit(train)
    assert det.model_["ae"] is not None and det.latent_scale_ > 0
    test = train[:5]
    s = det.decision_function(test)
    maps = det.anomaly_map(test)
    assert s.shape == (5,) and maps.shape == (5, 16, 16) and det.reconstruct(test).shape == (5, 16, 16, 3)
    with pytest.raises(ValueError, match="channels"):
        det.decision_function(test[..., :1])
    assert "ImageDetector" in adiff.detectors.__all__  # load() rebuilds only exported classes
    det.save(tmp_path / "det")
    det2 = base_lib.load(tmp_path / "det")
    assert isinstance(det2, ImageDetector) and det2.latent
    np.testing.assert_allclose(det2.decision_function(test), s, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(det2.anomaly_map(test), maps, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(det2.decision_scores_, det.decision_scores_)
    assert det2.threshold_ == det.threshold_


def test_structured_noise_detector():
    rng = np.random.default_rng(2)
    train = _texture(rng, 32)
    det = ImageDetector(**TINY, noise="lowfreq", noise_frequency=2.0, train_steps=10, seed=1).fit(train)
    s = det.decision_function(train[:4])
    assert s.shape == (4,) and np.isfinite(s).all()
    det.set_params(solver="reverse_diffusion")
    with pytest.raises(ValueError, match="deterministic solver"):
        det.decision_function(train[:4])


@pytest.mark.parametrize("kind", noise.NOISE_KINDS)
def test_noise_moments_and_spectrum(kind):
    z = np.asarray(noise.sample(kind, jax.random.key(0), (8, 32, 32, 2)))
    assert z.shape == (8, 32, 32, 2) and np.isfinite(z).all()
    np.testing.assert_allclose(z.mean(axis=(1, 2)), 0.0, atol=0.1 if kind == "gaussian" else 1e-5)
    np.testing.assert_allclose(z.std(axis=(1, 2)), 1.0, atol=0.1 if kind == "gaussian" else 1e-4)
    lag1 = np.mean(z[:, 1:] * z[:, :-1])  # neighbour correlation: 0 for white noise
    if kind == "gaussian":
        assert abs(lag1) < 0.05
    else:
        assert lag1 > 0.5
    # different keys and channels give different fields
    assert not np.allclose(z[..., 0], z[..., 1])
    with pytest.raises(ValueError, match="shape"):
        noise.sample(kind, jax.random.key(0), (32, 32))


def test_simplex_lattice_properties():
    angles = jnp.zeros((8, 8))  # every gradient = (1, 0)
    # zero at lattice points (all corner offsets vanish at (0, 0) except distant corners)
    v0 = noise.simplex_2d(jnp.zeros(()), jnp.zeros(()), angles)
    np.testing.assert_allclose(v0, 0.0, atol=1e-6)
    xs = jnp.linspace(0.0, 8.0, 400)
    vals = np.asarray(noise.simplex_2d(xs, 0.3 * xs, jax.random.uniform(jax.random.key(0), (8, 8), maxval=6.28)))
    assert np.abs(vals).max() <= 1.0 + 1e-5 and vals.std() > 0.05  # bounded, not flat
    with pytest.raises(ValueError, match="octaves"):
        noise.simplex(jax.random.key(0), (1, 8, 8, 1), octaves=0)
    with pytest.raises(ValueError, match="kind"):
        noise.sample("pink", jax.random.key(0), (1, 8, 8, 1))


def test_autoencoder_shapes_and_validation():
    ae = ConvAutoencoder(features=(4, 8), latent_channels=3, out_channels=2)
    x = jnp.ones((2, 8, 12, 2))
    p = ae.init(jax.random.key(0), x)
    assert ae.apply(p, x).shape == (2, 8, 12, 2)
    z = ae.apply(p, x, method=ae.encode)
    assert z.shape == (2, 2, 3, 3)
    assert ae.apply(p, z, method=ae.decode).shape == (2, 8, 12, 2)
    with pytest.raises(ValueError, match="divisible"):
        ae.apply(p, jnp.ones((1, 6, 8, 2)))
    with pytest.raises(ValueError, match="out_channels"):
        ae.apply(p, jnp.ones((1, 8, 8, 1)))


def test_density_np_is_the_diffused_density_of_the_shifted_blurred_memory(gray, tmp_path, monkeypatch):
    """scoring="density_np" (no network): the score is scoring.diffused_density of the blurred,
    shift-augmented training images; training images are scored without themselves and their
    shifts; the blob is ranked high and localised; it round-trips; and the two kinds of fitted
    state refuse each other's scorings."""
    from adiff import scoring
    from adiff.detectors.image import blur_images, shift_augment
    net_det, train, test, labels, masks = gray
    det = ImageDetector(scoring="density_np", image_score="native", np_k=20, np_shifts=1,
                        np_blur=0.5, map_sigma=1.0).fit(train)
    assert "unet" not in det.model_ and det.model_["memory"].shape == (96, 16, 16, 1)
    mem = blur_images(shift_augment(train.astype(np.float32) / 255.0, 1), 0.5).reshape(9 * 96, -1)
    q = blur_images(test, 0.5).reshape(len(test), -1)
    v = scoring.diffusion_variance(mem, k=20)
    ref = np.asarray(scoring.diffused_density(mem, q, variance=v, k=20).scores)
    res = det.analyze(test)
    np.testing.assert_allclose(res.scores, ref, rtol=1e-5, atol=1e-3)
    # The reconstruction is the posterior mean of the (blurred, shifted) memory.
    post = scoring.diffused_density(mem, q, variance=v, k=20, maps=True).estimates
    np.testing.assert_allclose(res.reconstructions, np.clip(np.asarray(post), 0, 1).reshape(test.shape), atol=1e-5)
    assert metrics.auroc(labels, res.scores) > 0.9
    assert metrics.auroc(masks[16:].ravel(), res.maps[16:].ravel()) > 0.9
    # Leave-group-out training scores: scored against the memory that holds them, the training
    # images would all sit far below the held-out normal images.
    g = dict(groups_train=np.arange(9 * 96) % 96, groups=np.arange(96))
    mem_tr = blur_images(train.astype(np.float32) / 255.0, 0.5).reshape(96, -1)
    loo = np.asarray(scoring.diffused_density(mem, mem_tr, variance=v, k=20, **g).scores)
    np.testing.assert_allclose(det.decision_scores_, loo, rtol=1e-5, atol=1e-3)
    inside = np.asarray(scoring.diffused_density(mem, mem_tr, variance=v, k=20).scores)
    assert np.median(inside) < np.median(det.decision_scores_) - 50
    # ... so the contamination threshold holds on fresh normal images (10% expected).
    fresh = _texture(np.random.default_rng(1), 200)
    assert 0.03 < np.mean(det.decision_function(fresh) > det.threshold_) < 0.25
    det.save(tmp_path / "np")
    np.testing.assert_array_equal(base_lib.load(tmp_path / "np").decision_function(test), res.scores)
    with pytest.raises(ValueError, match="network scoring"):
        det.set_params(scoring="denoise").decision_function(test)
    with pytest.raises(ValueError, match="scoring='density_np'"):
        ImageDetector(scoring="density_np").fit(train, anomalies=test[16:])
    before = net_det.get_params()["scoring"]
    net_det.set_params(scoring="density_np")
    try:
        with pytest.raises(ValueError, match="keeps the training images"):
            net_det.decision_function(test)
    finally:
        net_det.set_params(scoring=before)
    with pytest.raises(ValueError, match="np_shifts"):
        ImageDetector(scoring="density_np", np_shifts=-1).fit(train)
    with pytest.raises(ValueError, match="np_k"):
        ImageDetector(scoring="density_np", np_k=10_000).fit(train)
    import adiff.detectors.image as image_lib
    monkeypatch.setattr(image_lib, "_NP_MEMORY_LIMIT", 9 * train[:, :, :, :1].size * 4 - 1)
    with pytest.raises(ValueError, match="lower image_size or np_shifts"):
        ImageDetector(scoring="density_np", np_k=20).fit(train)
