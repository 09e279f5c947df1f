"""The tabular benchmark's data protocols (experiments/benchmarks/tabular.py): the design's random
semi-supervised split, the DTE repository's split, and the unsupervised one. Time budget: ~2 s."""
import numpy as np
import pytest

from experiments.benchmarks import tabular as bench


def _data(n, every=10):
    X = np.arange(n * 2, dtype=np.float64).reshape(n, 2)  # row i holds 2i, 2i+1: rows identifiable
    y = (np.arange(n) % every == 0).astype(int)
    return X, y


def test_dte_split_keeps_file_order_for_midsize_sets():
    X, y = _data(1200)
    X_tr, X_te, y_te = bench.dte_repo_split(X, y, seed=0)
    normal_rows = X[y == 0]
    np.testing.assert_array_equal(X_tr, normal_rows[:540])  # first half of the normals, file order
    assert len(X_te) == 1200 - 540 and y_te.sum() == 120
    assert not set(X_tr[:, 0]) & set(X_te[:, 0])  # no row in both


def test_dte_split_resamples_small_sets_with_duplicates_across_train_and_test():
    X, y = _data(300)
    X_tr, X_te, y_te = bench.dte_repo_split(X, y, seed=0)
    assert len(X_tr) + len(X_te) == 1000
    assert set(X_tr[:, 0]) & set(X_te[:, 0]), "the DTE protocol leaks duplicates (documented)"
    # numpy's legacy global seeding: the same draw as np.random.seed(0); np.random.choice(...)
    idx = np.random.RandomState(0).choice(np.arange(300), 1000, replace=True)
    np.testing.assert_array_equal(np.sort(np.concatenate([X_tr, X_te])[:, 0]), np.sort(X[idx, 0]))


def test_dte_split_subsamples_large_sets():
    X, y = _data(600)
    X_tr, X_te, _ = bench.dte_repo_split(X, y, seed=1, min_size=10, max_size=500)
    assert len(X_tr) + len(X_te) == 500
    assert len(np.unique(np.concatenate([X_tr, X_te])[:, 0])) == 500  # without replacement


def test_unsupervised_split_trains_on_the_contaminated_test_set():
    X, y = _data(1000)
    X_tr, X_te, y_te = bench.unsupervised_split(X, y, seed=0, max_train=300, max_test=800)
    assert len(X_tr) == 300 and len(X_te) == 800
    assert set(X_tr[:, 0]) <= set(X_te[:, 0])
    assert abs(y_te.mean() - 0.1) < 0.01  # stratified
    anomalous_rows = set(X[y == 1, 0])
    assert set(X_tr[:, 0]) & anomalous_rows, "training data must contain anomalies"


def test_random_protocol_is_the_design_split_and_unknown_protocol_is_an_error():
    X, y = _data(400)
    a = bench.split("random", X, y, seed=3)
    from adiff.data.tabular import semisupervised_split
    for u, v in zip(a, semisupervised_split(X, y, seed=3)):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="protocol"):
        bench.split("leaky", X, y, seed=0)


def test_dte_np_posterior_mean_is_monotone_in_the_knn_distance():
    """The fact tabular_np_variants.py rests on: DTE-NP's posterior mean time is an increasing
    function of m (mean squared k-NN distance), so its ranking is m's."""
    from adiff import scoring
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(200, 6)).astype(np.float32)
    x = (rng.normal(size=(300, 6)) * rng.uniform(0.5, 3.0, size=(300, 1))).astype(np.float32)
    m = np.asarray(scoring.dte_nonparametric(x_train, x, statistic="distance").scores)
    t = np.asarray(scoring.dte_nonparametric(x_train, x, statistic="mean").scores)
    order = np.argsort(m)
    assert np.all(np.diff(t[order]) >= -1e-4)
    assert np.ptp(t) > 10  # not saturated: the check above is not vacuous


def test_np_variants_match_the_library_estimator():
    """V0 ranks like adiff's dte_np; the mixture posterior over one neighbour is DTE-NP's k=1
    posterior mean (same schedule, same uniform prior)."""
    from adiff import scoring, metrics
    from experiments.benchmarks import tabular_np_variants as nv
    rng = np.random.default_rng(1)
    a = rng.normal(size=(120, 4))
    b = np.concatenate([rng.normal(size=(60, 4)), rng.normal(size=(20, 4)) * 3.0])
    y = np.r_[np.zeros(60), np.ones(20)]
    s = nv.variant_scores(a, b, seed=0)
    assert set(s) == set(nv.VARIANTS)
    lib = np.asarray(scoring.dte_nonparametric(a.astype(np.float32), b.astype(np.float32)).scores)
    assert abs(metrics.auroc(y, s["V0"]) - metrics.auroc(y, lib)) < 1e-6
    d2 = ((b[:, None] - a[None]) ** 2).sum(-1)
    one = nv.mixture_posterior_time(np.sort(d2, 1)[:, :1], 4)
    lib1 = np.asarray(scoring.dte_nonparametric(a.astype(np.float32), b.astype(np.float32), k=1).scores)
    np.testing.assert_allclose(one, lib1, rtol=1e-3, atol=1e-2)
    assert metrics.auroc(y, s["V5"]) > 0.8
    # V7, the reference code's float32 posterior mean, agrees with the library's (float64) one.
    lib5 = np.asarray(scoring.dte_nonparametric(a.astype(np.float32), b.astype(np.float32), k=5,
                                                statistic="mean").scores)
    np.testing.assert_allclose(s["V7"], lib5, rtol=1e-3, atol=0.05)
    # A duplicate of a training row (m = 0) is NaN in that computation and scored 0, as there.
    mean, mode = nv.reference_dte_time(np.array([0.0, 1.0, 50.0]), 4)
    assert mean[0] == 0.0 and mode[0] == 0.0 and 0 < mean[1] < mean[2] <= 299


def test_loo_bandwidth_density_and_bagged_variant():
    """V9 picks the step variance maximising the leave-one-out likelihood (checked by brute force
    over the full mixture) and scores -log p at it; duplicates do not drive it to the smallest
    step. V10 is the mean of per-dimension log m_5 over subspaces, deterministic in the seed."""
    from scipy.special import logsumexp
    from experiments.benchmarks import tabular_np_variants as nv
    rng = np.random.default_rng(2)
    a = rng.normal(size=(40, 3)) * 0.3
    b = rng.normal(size=(10, 3)) * 0.3
    d2_aa = ((a[:, None] - a[None]) ** 2).sum(-1)
    d2_tr = np.sort(d2_aa + np.diag(np.full(40, np.inf)), 1)[:, :39]  # all other rows
    d2_te = ((b[:, None] - a[None]) ** 2).sum(-1)
    v = nv._ddpm_variances()
    loo = [np.mean(logsumexp(-d2_tr / (2 * vj), 1)) - 1.5 * np.log(vj) for vj in v]
    vs = v[int(np.argmax(loo))]
    assert v[0] < vs < v[-1]  # an interior optimum for data of sd 0.3
    want = -(logsumexp(-d2_te / (2 * vs), 1) - 1.5 * np.log(vs))
    np.testing.assert_allclose(nv.loo_bandwidth_density(d2_tr, d2_te, 3), want, rtol=1e-10)
    dup = np.concatenate([np.zeros((40, 1)), d2_tr[:, :-1]], 1)  # every row has a twin
    np.testing.assert_allclose(nv.loo_bandwidth_density(dup, d2_te, 3), want, rtol=1e-10)
    a = rng.normal(size=(30, 6))
    b = rng.normal(size=(8, 6))
    s = nv.bagged_log_m5(a, b, seed=3)
    assert s.shape == (8,) and np.all(np.isfinite(s))
    np.testing.assert_array_equal(s, nv.bagged_log_m5(a, b, seed=3))
    assert not np.allclose(s, nv.bagged_log_m5(a, b, seed=4))


def test_merge_columns_joins_methods_and_marks_missing_cells(tmp_path):
    import json
    row = lambda a: {"auroc": a, "auprc": a / 2, "seconds": 1.0}
    info = {"n": 10, "d": 2, "n_train": 4, "n_test": 6}
    a = {"s1": {"info": info, "seeds": [{"adiff:dte_np": row(0.9), "KNN": row(0.8)}]},
         "s2": {"info": info, "seeds": [{"adiff:dte_np": row(0.7), "KNN": row(0.6)}]}}
    b = {"s1": {"info": info, "seeds": [{"adiff:score_norm": row(0.95), "KNN": row(0.8)}]}}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    results, methods = bench.merge_columns([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert methods == ["adiff:dte_np", "adiff:score_norm", "KNN"]
    assert set(results["s1"]["seeds"][0]) == set(methods)
    assert "adiff:score_norm" not in results["s2"]["seeds"][0]
    b["s1"]["seeds"].append(b["s1"]["seeds"][0])  # two seeds against one: refused
    (tmp_path / "b.json").write_text(json.dumps(b))
    with pytest.raises(ValueError, match="seeds"):
        bench.merge_columns([str(tmp_path / "a.json"), str(tmp_path / "b.json")])


def test_select_probe_anomalies_and_rule():
    """tabular_select.py: "swap" keeps each feature's values (a row's entries come from held-out
    rows, column by column) but breaks the dependence; the noise kinds move rows by the stated
    scale; the selector needs score_norm's mean proxy to beat dte_np's by more than the margin."""
    from experiments.benchmarks import tabular_select as ts
    rng = np.random.default_rng(3)
    z = rng.normal(size=(300, 1))
    held = np.concatenate([z, z + 0.01 * rng.normal(size=(300, 1))], 1)  # two equal columns
    syn = ts.synthetic_anomalies(held, np.ones(2), np.random.RandomState(0))
    assert set(syn) == set(ts.KINDS) and all(v.shape == (300, 2) for v in syn.values())
    for j in range(2):  # every swapped entry is some held-out row's value in that column
        assert np.isin(syn["swap"][:, j], held[:, j]).all()
    gap = lambda v: np.abs(v[:, 0] - v[:, 1]).mean()
    assert gap(syn["swap"]) > 20 * gap(held)  # the dependence is broken
    assert 0.5 < gap(syn["noise1"]) / 1.13 < 1.5  # |N(0, 2)| has mean 2 / sqrt(pi) = 1.13
    assert ts.synthetic_anomalies(held[:50], np.ones(2), np.random.RandomState(0))["swap"].shape == (200, 2)
    proxy = lambda sn, dn: {"score_norm": dict.fromkeys(ts.KINDS, sn), "dte_np": dict.fromkeys(ts.KINDS, dn)}
    assert ts.pick(proxy(0.90, 0.85)) == "score_norm"
    assert ts.pick(proxy(0.855, 0.85)) == "dte_np"  # within the margin: the default stays
    assert ts.pick(proxy(0.80, 0.85)) == "dte_np"


def test_auroc_scatter_plot_counts_wins_and_writes_a_png(tmp_path):
    from experiments.benchmarks import tabular_plot
    seed = lambda a, k: {"adiff:density_np": {"auroc": a}, "KNN": {"auroc": k}}
    results = {"small": {"info": {"n": 100}, "seeds": [seed(0.9, 0.8), seed(0.8, 0.8)]},
               "big": {"info": {"n": 50000}, "seeds": [seed(0.6, 0.7)]}}
    assert tabular_plot.per_set_means(results, "adiff:density_np") == {"small": pytest.approx(0.85), "big": 0.6}
    tabular_plot.plot(results, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="IForest"):
        tabular_plot.plot(results, tmp_path / "q.png", reference="IForest")


def test_two_level_density_equals_v9_without_binary_columns_and_fits_two_levels_with_them():
    """V11: no binary column -> exactly V9; with binary columns the (v_c, v_b) it picks is a
    coordinate-wise optimum of the leave-one-out likelihood, at least as likely as one shared level."""
    from sklearn.neighbors import NearestNeighbors
    from experiments.benchmarks import tabular_np_variants as nv
    rng = np.random.default_rng(4)

    def tables(a, b):
        nn = NearestNeighbors(n_neighbors=20).fit(a)
        d_te, i_te = nn.kneighbors(b)
        d_tr, i_tr = nn.kneighbors(a, n_neighbors=21)
        return i_tr[:, 1:], i_te, d_tr[:, 1:] ** 2, d_te ** 2

    a, b = rng.normal(size=(80, 4)), rng.normal(size=(12, 4))
    i_tr, i_te, d2_tr, d2_te = tables(a, b)
    np.testing.assert_array_equal(nv.two_level_density(a, b, i_tr, i_te, d2_tr, d2_te),
                                  nv.loo_bandwidth_density(d2_tr, d2_te, 4))
    # two continuous columns of sd 0.3 and three binary columns (+-1): very different scales
    a = np.c_[rng.normal(size=(120, 2)) * 0.3, rng.choice([-1.0, 1.0], size=(120, 3))]
    b = np.c_[rng.normal(size=(10, 2)) * 0.3, rng.choice([-1.0, 1.0], size=(10, 3))]
    i_tr, i_te, d2_tr, d2_te = tables(a, b)
    s = nv.two_level_density(a, b, i_tr, i_te, d2_tr, d2_te)
    assert s.shape == (10,) and np.all(np.isfinite(s))
    tc, tb = nv.two_level_tables(a, i_tr, np.arange(2), np.arange(2, 5))
    grid = nv._ddpm_variances()
    v0 = nv.scoring.loo_variance(d2_tr, grid, 5)
    vc, vb = nv.two_level_variances(tc, tb, (2, 3), grid, v0)
    best = nv.two_level_loo(tc, tb, (2, 3), vc, vb)
    assert best >= nv.two_level_loo(tc, tb, (2, 3), v0, v0) - 1e-9
    assert best >= max(nv.two_level_loo(tc, tb, (2, 3), g, vb) for g in grid) - 1e-9
    assert best >= max(nv.two_level_loo(tc, tb, (2, 3), vc, g) for g in grid) - 1e-9
