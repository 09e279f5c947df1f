"""TabularDetector: masked k-NN scoring of missing values and the robust (contaminated) mode."""
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import adiff
from adiff import metrics, scoring
from adiff.detectors import tabular as tabular_lib

TINY = dict(train_steps=40, batch_size=64, hidden=32, num_blocks=1, dte_hidden=(32, 32), solver_steps=4,
            t0=(0.2,), score_batch_size=128)


# ------------------------------------------------------------------------------------------------
# masked distances
# ------------------------------------------------------------------------------------------------
def _hand_distances(q, oq, r, orr, mode):
    """Brute force: every (query, reference) masked squared distance, with explicit loops."""
    d = q.shape[1]
    cnt = orr.sum(0)
    mu = (r * orr).sum(0) / cnt
    var = (orr * (r - mu) ** 2).sum(0) / cnt
    out = np.zeros((len(q), len(r)))
    for a in range(len(q)):
        for b in range(len(r)):
            total, used = 0.0, 0
            for j in range(d):
                if mode == "shared":
                    if oq[a, j] and orr[b, j]:
                        total += (q[a, j] - r[b, j]) ** 2
                        used += 1
                elif oq[a, j]:
                    used += 1
                    gap = (q[a, j] - mu[j]) ** 2 + (var[j] if mode == "expected" else 0.0)
                    total += (q[a, j] - r[b, j]) ** 2 if orr[b, j] else gap
            out[a, b] = total * d / used if used else np.inf
    return out, 2.0 * var.sum()


@pytest.mark.parametrize("mode", ["expected", "mean", "shared"])
def test_masked_distance_equals_hand_computation(mode):
    r = np.array([[0.0, 1.0, 2.0], [1.0, -1.0, 0.5], [2.0, 0.0, -1.0], [-1.0, 3.0, 1.0]], np.float32)
    orr = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0]], np.float32)
    q = np.array([[0.5, 0.5, 0.5], [3.0, 9.0, -2.0], [1.0, 2.0, 0.0]], np.float32)
    oq = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]], np.float32)  # row 2 observes nothing
    q_nan = np.where(oq > 0, q, np.nan)  # unobserved entries may hold NaN
    r_nan = np.where(orr > 0, r, np.nan)
    hand, fallback = _hand_distances(q, oq, r * orr, orr, mode)
    for k in (1, 2, 4):
        got = scoring.dte_nonparametric(r_nan, q_nan, k=k, statistic="distance", observed_train=orr,
                                        observed=oq, missing_distance=mode, train_batch=3, query_batch=2)
        nearest = np.sort(hand, axis=1)[:, :k]  # the k nearest finite ones; +inf only if fewer
        want = np.where(np.isfinite(nearest), nearest, fallback).mean(1)  # documented fallback
        np.testing.assert_allclose(np.asarray(got.scores), want, rtol=1e-5, atol=1e-5)
    if mode == "shared":  # query 1 shares nothing with reference 2: the pair is +inf before fallback
        assert not np.isfinite(hand[1, 3]) and np.isfinite(hand[1, :3]).all()


def test_all_ones_masks_take_the_bit_identical_fast_path():
    rng = np.random.RandomState(1)
    xt, x = rng.normal(size=(64, 5)).astype(np.float32), rng.normal(size=(9, 5)).astype(np.float32)
    ref = np.asarray(scoring.dte_nonparametric(xt, x, k=3).scores)
    got = scoring.dte_nonparametric(xt, x, k=3, observed_train=np.ones_like(xt), observed=np.ones_like(x))
    np.testing.assert_array_equal(np.asarray(got.scores), ref)
    # the detector on complete data gives exactly the unmasked scorer on its encoded rows
    det = adiff.TabularDetector(scoring="dte_np", k=3).fit(xt.astype(np.float64))
    v, _ = det.encoder_.transform(x.astype(np.float64))
    np.testing.assert_array_equal(det.decision_function(x.astype(np.float64)).astype(np.float32),
                                  np.asarray(scoring.dte_nonparametric(det.train_values_, v, k=3).scores))
    with pytest.raises(ValueError, match="observed"):
        scoring.dte_nonparametric(xt, x, observed=np.ones((9, 4)))
    with pytest.raises(ValueError, match="missing_distance"):
        scoring.dte_nonparametric(xt, x, observed=np.ones_like(x), missing_distance="zero")


def test_masked_distance_is_chunked_and_jittable():
    rng = np.random.RandomState(2)
    xt, x = rng.normal(size=(50, 4)).astype(np.float32), rng.normal(size=(11, 4)).astype(np.float32)
    ot = (rng.rand(50, 4) > 0.3).astype(np.float32)
    o = (rng.rand(11, 4) > 0.3).astype(np.float32)
    one = scoring.dte_nonparametric(xt, x, observed_train=ot, observed=o).scores
    blocks = scoring.dte_nonparametric(xt, x, observed_train=ot, observed=o, query_batch=4, train_batch=7).scores
    np.testing.assert_allclose(np.asarray(blocks), np.asarray(one), rtol=1e-5)
    jitted = jax.jit(lambda a, b, c, d: scoring.dte_nonparametric(a, b, observed_train=c, observed=d).scores)
    np.testing.assert_allclose(np.asarray(jitted(xt, x, ot, o)), np.asarray(one), rtol=1e-5)


def _low_rank_table(seed, *, d=8, rank=2, n=600, hide=0.2):
    """Normal rows near a rank-2 subspace; anomalies with the same marginals, off the subspace."""
    rng = np.random.RandomState(seed)
    w = rng.normal(size=(rank, d))
    normal = lambda m: rng.normal(size=(m, rank)) @ w + 0.1 * rng.normal(size=(m, d))
    x_train = normal(n)
    x_test = np.r_[normal(200), rng.normal(size=(40, d)) * x_train.std(0) + x_train.mean(0)]
    y = np.r_[np.zeros(200), np.ones(40)]
    mask = lambda a: np.where(rng.rand(*a.shape) < hide, np.nan, a)
    return x_train, x_test, y, mask(x_train), mask(x_test)


def test_missing_values_keep_auroc_and_beat_zero_filling():
    x_train, x_test, y, h_train, h_test = _low_rank_table(0)
    full = metrics.auroc(y, adiff.TabularDetector(scoring="dte_np").fit(x_train).decision_function(x_test))
    det = adiff.TabularDetector(scoring="dte_np").fit(pd.DataFrame(h_train))  # NaN entries -> masks
    masked = metrics.auroc(y, det.decision_function(pd.DataFrame(h_test)))
    v, _ = det.encoder_.transform(pd.DataFrame(h_test))  # zero-filled (standardised: mean-imputed)
    zero = metrics.auroc(y, scoring.dte_nonparametric(det.train_values_, v).scores)
    zero_det = adiff.TabularDetector(scoring="dte_np", missing_distance="zero").fit(pd.DataFrame(h_train))
    assert metrics.auroc(y, zero_det.decision_function(pd.DataFrame(h_test))) == pytest.approx(zero, abs=1e-9)
    # measured (seeds 0-3): complete 0.985-0.997, masked 0.933-0.981, zero-filled 0.858-0.908
    assert full > 0.97
    assert masked > full - 0.06, (masked, full)
    assert masked > zero + 0.05, (masked, zero)


def test_default_density_np_scores_missing_values_through_the_masked_distance():
    """The default paradigm (density_np) on the same table: rows with gaps keep their AUROC, and the
    masked distance beats zero-filling."""
    assert adiff.TabularDetector().get_params()["scoring"] == "density_np"
    x_train, x_test, y, h_train, h_test = _low_rank_table(0)
    full = metrics.auroc(y, adiff.TabularDetector().fit(x_train).decision_function(x_test))
    masked = metrics.auroc(y, adiff.TabularDetector().fit(pd.DataFrame(h_train)).decision_function(
        pd.DataFrame(h_test)))
    zero = metrics.auroc(y, adiff.TabularDetector(missing_distance="zero").fit(
        pd.DataFrame(h_train)).decision_function(pd.DataFrame(h_test)))
    # measured (seeds 0-3): complete 0.996-1.0, masked 0.959-0.993, zero-filled 0.878-0.922
    assert full > 0.97
    assert masked > full - 0.05, (masked, full)
    assert masked > zero + 0.05, (masked, zero)


def test_shared_only_distance_loses_when_anomalies_deviate_in_few_columns():
    """Why "expected" is the default: the k-NN minimum over shared-entry distances favours the
    references that miss the query's deviating columns."""
    rng = np.random.RandomState(0)
    d = 8
    x_train, normal = rng.normal(size=(600, d)), rng.normal(size=(200, d))
    anomal = rng.normal(size=(40, d))
    for row in anomal:
        row[rng.choice(d, 2, replace=False)] += rng.choice([-4.0, 4.0], 2)
    x_test, y = np.r_[normal, anomal].astype(np.float32), np.r_[np.zeros(200), np.ones(40)]
    ot = (rng.rand(600, d) > 0.2).astype(np.float32)
    o = (rng.rand(240, d) > 0.2).astype(np.float32)
    auc = {m: metrics.auroc(y, scoring.dte_nonparametric(x_train.astype(np.float32), x_test, observed_train=ot,
                                                         observed=o, missing_distance=m).scores)
           for m in ("expected", "shared")}
    zero = metrics.auroc(y, scoring.dte_nonparametric((x_train * ot).astype(np.float32), x_test * o).scores)
    # measured: expected 0.958, zero-filled 0.956, shared 0.817
    assert auc["expected"] > auc["shared"] + 0.07, auc
    assert auc["expected"] > zero - 0.03, (auc, zero)


# ------------------------------------------------------------------------------------------------
# robust (contaminated training) mode
# ------------------------------------------------------------------------------------------------
def _contaminated(seed=0, d=6):
    """900 normal rows + 100 anomalies in a tight far cluster (10%), and a test set of both kinds."""
    rng = np.random.RandomState(seed)
    cluster = lambda m: rng.normal(size=(m, d)) * 0.05 + 4.0
    x_train = np.r_[rng.normal(size=(900, d)), cluster(100)]
    x_test = np.r_[rng.normal(size=(200, d)), cluster(40), rng.normal(size=(20, d)) * 0.5 - 5.0]
    y = np.r_[np.zeros(200), np.ones(60)]
    return x_train, x_test, y


@pytest.fixture(scope="module")
def contaminated_fits():
    x_train, x_test, y = _contaminated()
    plain = adiff.TabularDetector(scoring="dte_np", contamination=0.1).fit(x_train)
    robust = adiff.TabularDetector(scoring="dte_np", contamination=0.1, robust=True).fit(x_train)
    return x_train, x_test, y, plain, robust


def test_robust_knn_rejects_a_clustered_contamination(contaminated_fits):
    x_train, x_test, y, plain, robust = contaminated_fits
    auc_plain = metrics.auroc(y, plain.decision_function(x_test))
    auc_robust = metrics.auroc(y, robust.decision_function(x_test))
    # measured: plain k=5 k-NN 0.67 (the cluster's members are each other's neighbours), robust 1.0
    assert auc_robust > 0.97 and auc_robust > auc_plain + 0.2, (auc_plain, auc_robust)
    keep = robust.reference_keep_
    assert keep.shape == (1000,) and keep.sum() == 900
    assert not keep[900:].any()  # exactly the planted cluster is rejected
    # training scores: the rejected rows are scored as new rows, so they rank highest
    assert metrics.auroc(np.r_[np.zeros(900), np.ones(100)], robust.decision_scores_) > 0.99
    # robust=False is unchanged: the plain scorer over every training row
    v, _ = plain.encoder_.transform(x_test)
    np.testing.assert_array_equal(plain.decision_function(x_test).astype(np.float32),
                                  np.asarray(scoring.dte_nonparametric(plain.train_values_, v).scores))
    assert plain.reference_keep_ is None


def test_robust_fraction_overrides_contamination():
    x_train, _, _ = _contaminated(d=3)
    det = adiff.TabularDetector(scoring="dte_np", contamination=0.1, robust=True, robust_fraction=0.05).fit(x_train)
    assert det.reference_keep_.sum() == 950
    with pytest.raises(ValueError, match="robust_fraction"):
        adiff.TabularDetector(robust=True, robust_fraction=0.7).fit(x_train)
    with pytest.raises(TypeError, match="robust"):
        adiff.TabularDetector(robust="yes").fit(x_train)
    with pytest.raises(ValueError, match="missing_distance"):
        adiff.TabularDetector(missing_distance="median").fit(x_train)


def test_robust_save_load_round_trip(contaminated_fits, tmp_path):
    _, x_test, _, _, robust = contaminated_fits
    robust.save(tmp_path / "r")
    back = adiff.load(tmp_path / "r")
    assert back.get_params()["robust"] is True and back.get_params()["robust_fraction"] is None
    np.testing.assert_array_equal(back.reference_keep_, robust.reference_keep_)
    np.testing.assert_array_equal(back.decision_function(x_test), robust.decision_function(x_test))


def test_trimmed_loss_drops_the_largest_per_sample_losses():
    det = adiff.TabularDetector(robust=True, robust_fraction=0.25)
    per_sample = jnp.array([1.0, 2.0, 3.0, 100.0, 4.0, 5.0, 6.0, 200.0])
    assert float(det._reduce_loss(per_sample)) == pytest.approx(np.mean([1, 2, 3, 4, 5, 6]))
    g = jax.grad(lambda p: det._reduce_loss(p))(per_sample)
    np.testing.assert_allclose(np.asarray(g), np.where(np.asarray(per_sample) > 50, 0.0, 1 / 6))


def test_robust_network_paradigm_trains_with_trimming_and_round_trips(tmp_path):
    x_train, x_test, _ = _contaminated(d=3)
    assert tabular_lib.ROBUST_WARMUP * TINY["train_steps"] >= 1  # both phases run
    robust = adiff.TabularDetector(scoring="dte", seed=0, robust=True, **TINY).fit(x_train)
    s_robust = robust.decision_function(x_test)
    assert np.isfinite(s_robust).all() and robust.reference_keep_ is None  # no k-NN reference here
    robust.save(tmp_path / "n")
    np.testing.assert_array_equal(adiff.load(tmp_path / "n").decision_function(x_test), s_robust)


# ------------------------------------------------------------------------------------------------
# ensemble members
# ------------------------------------------------------------------------------------------------
def _two_blobs(seed=0):
    rng = np.random.default_rng(seed)
    x_train = rng.normal(size=(200, 3)).astype(np.float32)
    x_test = np.concatenate([rng.normal(size=(60, 3)), rng.normal(size=(20, 3)) + 4.0]).astype(np.float32)
    return x_train, x_test, np.r_[np.zeros(60), np.ones(20)]


def test_ensemble_members_select_models_and_average_training_ranks(tmp_path):
    x_train, x_test, y = _two_blobs()
    det = adiff.TabularDetector(scoring="ensemble", ensemble_members=("dte_np", "score_norm"),
                                ensemble_normalizer="robust", seed=0, **TINY).fit(x_train)
    assert set(det.model_) == {"score"} and set(det.normalizers_) == {"dte_np", "score_norm"}
    s = det.decision_function(x_test)
    parts = [np.asarray(scoring.normalize(det.normalizers_[n], det._paradigm(n, *det._prepare(x_test, fitting=False))))
             for n in ("dte_np", "score_norm")]
    np.testing.assert_allclose(s, np.mean(parts, 0), rtol=1e-5)
    assert metrics.auroc(y, s) > 0.9  # robust z-scores keep how far beyond the training range
    det.save(tmp_path / "e")
    back = adiff.load(tmp_path / "e")
    assert back.get_params()["ensemble_members"] == ("dte_np", "score_norm")
    assert back.get_params()["ensemble_normalizer"] == "robust"
    np.testing.assert_array_equal(back.decision_function(x_test), s)
    default = adiff.TabularDetector(scoring="ensemble", seed=0, **TINY).fit(x_train)
    assert set(default.model_) == {"score", "dte"}
    assert set(default.normalizers_) == set(tabular_lib.DEFAULT_ENSEMBLE)
    default.save(tmp_path / "d")  # rank normalisers keep their sorted training scores
    np.testing.assert_array_equal(adiff.load(tmp_path / "d").decision_function(x_test),
                                  default.decision_function(x_test))


@pytest.mark.parametrize("members", [("dte_np",), ("dte_np", "dte_np"), ("dte_np", "ensemble"),
                                     ("dte_np", "magic"), "dte_np"])
def test_ensemble_members_are_validated(members):
    x_train, _, _ = _two_blobs()
    with pytest.raises(ValueError):
        adiff.TabularDetector(scoring="ensemble", ensemble_members=members, **TINY).fit(x_train)


def test_ensemble_normalizer_is_validated():
    with pytest.raises(ValueError, match="ensemble_normalizer"):
        adiff.TabularDetector(scoring="ensemble", ensemble_normalizer="minmax", **TINY).fit(_two_blobs()[0])


def test_elbo_scoring_shares_draws_across_batches_and_masks_missing_entries():
    x_train, x_test, y = _two_blobs()
    # (a few hundred steps: an untrained network's bound is the same for every row)
    det = adiff.TabularDetector(scoring="elbo", seed=0, elbo_samples=32,
                                **{**TINY, "score_batch_size": 16, "train_steps": 300}).fit(x_train)
    s = det.decision_function(x_test)
    assert s.shape == (len(x_test),) and np.isfinite(s).all()
    assert metrics.auroc(y, s) > 0.9
    # The same draws in every batch of 16: a row's score does not depend on its batch.
    np.testing.assert_allclose(det.decision_function(x_test[5:7]), s[5:7], rtol=1e-5, atol=1e-4)
    # A missing entry drops its own term; the row is still scored.
    gap = x_test[:4].copy()
    gap[:, 1] = np.nan
    g = det.decision_function(gap)
    assert np.isfinite(g).all() and not np.allclose(g, s[:4])
    # A scoring parameter changed after fit takes effect (the compiled scorer is not reused).
    det.set_params(elbo_samples=64)
    assert not np.allclose(det.decision_function(x_test[:4]), s[:4])
    with pytest.raises(ValueError, match="elbo_samples"):
        adiff.TabularDetector(scoring="elbo", elbo_samples=0, **TINY).fit(x_train)


def test_density_np_scoring_fits_the_variance_and_round_trips(tmp_path):
    """scoring="density_np" is scoring.diffused_density on the encoded rows at the variance chosen
    at fit (leave-one-out on the training rows); training scores are leave-one-out; with missing
    entries the masked distance is used; robust mode chooses the variance on the kept rows; the
    variance persists."""
    x_train, x_test, y = _contaminated(seed=1)
    det = adiff.TabularDetector(scoring="density_np").fit(x_train)
    assert not det.model_  # no network
    ref = det.train_values_
    want_v = scoring.diffusion_variance(ref, k=tabular_lib.DENSITY_NP_K)
    assert det.density_variance_ == pytest.approx(want_v)
    enc = det.encoder_.transform(x_test)[0]
    want = np.asarray(scoring.diffused_density(ref, enc, variance=want_v, k=tabular_lib.DENSITY_NP_K).scores)
    np.testing.assert_allclose(det.decision_function(x_test), want, rtol=1e-6)
    loo = np.asarray(scoring.diffused_density(ref, ref, variance=want_v, k=tabular_lib.DENSITY_NP_K,
                                              exclude_self=True).scores)
    np.testing.assert_allclose(det.decision_scores_, loo, rtol=1e-6)
    det.save(tmp_path / "d")
    back = adiff.detectors.base.load(tmp_path / "d")
    assert back.density_variance_ == det.density_variance_
    np.testing.assert_allclose(back.decision_function(x_test), det.decision_function(x_test), rtol=1e-6)
    # The clustered contamination (10% at +4) looks normal to the plain fit; robust mode drops it
    # from the reference set (and from the variance choice) and ranks the cluster's test rows high.
    robust = adiff.TabularDetector(scoring="density_np", robust=True).fit(x_train)
    kept = robust.train_values_[robust.reference_keep_]
    assert robust.density_variance_ == pytest.approx(
        scoring.diffusion_variance(kept, k=tabular_lib.DENSITY_NP_K))
    assert metrics.auroc(y, robust.decision_function(x_test)) > metrics.auroc(y, det.decision_function(x_test)) + 0.1
    # Missing entries: scored through the masked distance, not an error.
    holes = x_test.copy()
    holes[::3, 0] = np.nan
    s = robust.decision_function(holes)
    full = metrics.auroc(y, robust.decision_function(x_test))
    assert np.all(np.isfinite(s)) and full > 0.9 and metrics.auroc(y, s) > full - 0.05, (full, metrics.auroc(y, s))
