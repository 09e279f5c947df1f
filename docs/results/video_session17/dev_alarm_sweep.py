"""Session 17: the two-tier alarm fusion on the dev runs' raw streams (seeds 0 and 6), per scale quantile
and gate. Usage: python dev_alarm_sweep.py dev_seed0.npz dev_seed6.npz (written by
video_session16/dev_run_seed0.py S)."""
import sys, numpy as np
from adiff import metrics
types = ["speed", "direction", "acceleration", "appearance"]
for path in sys.argv[1:]:
    d = np.load(path); K = int(d["K"]); kinds = list(d["kinds"]); nt = int(d["ntest"]); ntr = int(d["ntrain"])
    trm = np.concatenate([d[f"train_m_{i}"] for i in range(ntr)]); tra = np.concatenate([d[f"train_a_{i}"] for i in range(ntr)])
    def ctx(n):
        first = min(K, n - 1); end = np.maximum(np.arange(n), first)
        return np.clip(end[:, None] - K + np.arange(K)[None, :], 0, n - 1)
    def row(fn):
        sc = [fn(d[f"test_m_{i}"], d[f"test_a_{i}"]) for i in range(nt)]
        r = []
        for k in types:
            idx = [i for i, kk in enumerate(kinds) if kk in ("normal", k)]
            r.append(metrics.auroc(np.concatenate([d[f"label_{i}"] for i in idx]), np.concatenate([sc[i] for i in idx])))
        return r + [np.mean(r)]
    print(path, "motion", np.round(row(lambda m, a: m), 4))
    for q in (0.99, 1.0):
        qm, qa = np.quantile(trm, q), np.quantile(tra, q)
        for g in (1.5, 2.0, 2.5, 3.0):
            def f(m, a):
                zm, za = m / qm, a / qa
                keep = 1.0 - (za[ctx(len(za))].max(1) > g); al = za > g
                s = keep * zm
                return np.where(al, 1 + za / (1 + za), s / (1 + s))
            print(f"  alarm q={q} gate={g}", np.round(row(f), 4))
    za_tr = tra / np.quantile(tra, .99)
    print("  training z_a max %.2f; test normal-labelled z_a max %.2f" % (za_tr.max(), max((d[f"test_a_{i}"] / np.quantile(tra, .99))[d[f"label_{i}"] == 0].max() for i in range(nt))))
