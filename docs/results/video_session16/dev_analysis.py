"""Fusion sweep on the dev run's raw streams: AUROC per type (speed, direction, acceleration,
appearance, mean) of each stream, the gated max at several scale quantiles / gates, z_a ranges per
clip, the appearance-alarm fusion (the session-16 amendment) and the two-tier alarm (session 17).
Usage: python dev_analysis.py dev_seed0.npz (written by dev_run.py)"""
import sys, numpy as np
from adiff import metrics
d = np.load(sys.argv[1]); K = int(d["K"])
kinds = list(d["kinds"]); nt = int(d["ntest"]); ntr = int(d["ntrain"])
trm = np.concatenate([d[f"train_m_{i}"] for i in range(ntr)]); tra = np.concatenate([d[f"train_a_{i}"] for i in range(ntr)])
def ctx(n):
    first = min(K, n - 1); end = np.maximum(np.arange(n), first)
    return np.clip(end[:, None] - K + np.arange(K)[None, :], 0, n - 1)
types = ["speed", "direction", "acceleration", "appearance"]
def row(fn):
    sc = [fn(d[f"test_m_{i}"], d[f"test_a_{i}"]) for i in range(nt)]
    r = []
    for k in types:
        idx = [i for i, kk in enumerate(kinds) if kk in ("normal", k)]
        r.append(metrics.auroc(np.concatenate([d[f"label_{i}"] for i in idx]), np.concatenate([sc[i] for i in idx])))
    return r + [np.mean(r)]
print("motion     ", np.round(row(lambda m, a: m), 4))
print("appearance ", np.round(row(lambda m, a: a), 4))
for q in (0.99, 0.999, 1.0):
    qm, qa = np.quantile(trm, q), np.quantile(tra, q)
    for g in (None, 1.5, 2.0, 3.0, 5.0, 10.0):
        def f(m, a):
            zm, za = m / qm, a / qa
            keep = np.ones_like(zm) if g is None else 1.0 - (za[ctx(len(za))].max(1) > g)
            return np.maximum(keep * zm, za)
        print(f"q={q} gate={g}", np.round(row(f), 4))
for i in range(nt):
    za = d[f"test_a_{i}"] / np.quantile(tra, 0.99)
    print(kinds[i], "z_a max normal-labelled %.2f, max anomalous %.2f" % (za[d[f"label_{i}"] == 0].max(), za[d[f"label_{i}"] == 1].max() if d[f"label_{i}"].any() else -1))
print("--- alarm fusion: max(keep*z_m, z_a*[z_a>g])")
for q in (0.99, 0.999, 1.0):
    qm, qa = np.quantile(trm, q), np.quantile(tra, q)
    for g in (1.5, 2.0, 3.0):
        def f(m, a):
            zm, za = m / qm, a / qa
            keep = 1.0 - (za[ctx(len(za))].max(1) > g)
            return np.maximum(keep * zm, za * (za > g))
        print(f"q={q} gate={g}", np.round(row(f), 4))
print("--- session 17: two-tier alarm fusion (alarms above every other frame)")
for q in (0.99, 1.0):
    qm, qa = np.quantile(trm, q), np.quantile(tra, q)
    for g in (1.5, 2.0, 2.5, 3.0):
        def f(m, a):
            zm, za = m / qm, a / qa
            s = (1.0 - (za[ctx(len(za))].max(1) > g)) * zm
            return np.where(za > g, 1 + za / (1 + za), s / (1 + s))
        print(f"  alarm q={q} gate={g}", np.round(row(f), 4))
za_tr = tra / np.quantile(tra, .99)
print("  training z_a max %.2f; test normal-labelled z_a max %.2f" % (za_tr.max(), max(
    (d[f"test_a_{i}"] / np.quantile(tra, .99))[d[f"label_{i}"] == 0].max() for i in range(nt))))
