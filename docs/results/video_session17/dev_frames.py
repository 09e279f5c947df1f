"""Session 17: per-frame view of the "gate" fusion on a dev run (normal clips' maxima; appearance
clips' frames ranked wrongly: t, label, z_m, z_a, gated, fused). Usage: python dev_frames.py dev_seedS.npz"""
import sys, numpy as np
d = np.load(sys.argv[1]); K = int(d["K"]); kinds = list(d["kinds"]); nt = int(d["ntest"]); ntr = int(d["ntrain"])
trm = np.concatenate([d[f"train_m_{i}"] for i in range(ntr)]); tra = np.concatenate([d[f"train_a_{i}"] for i in range(ntr)])
qm, qa = np.quantile(trm, .99), np.quantile(tra, .99)
def ctx(n):
    first = min(K, n - 1); end = np.maximum(np.arange(n), first)
    return np.clip(end[:, None] - K + np.arange(K)[None, :], 0, n - 1)
g = 2.0
normal_fused = []
for i in range(nt):
    zm, za = d[f"test_m_{i}"] / qm, d[f"test_a_{i}"] / qa
    keep = 1 - (za[ctx(len(za))].max(1) > g)
    f = np.maximum(keep * zm, za * (za > g))
    if kinds[i] == "normal":
        normal_fused.append(f); print("normal clip", i, "max z_m %.2f max z_a %.2f max fused %.2f" % (zm.max(), za.max(), f.max()))
nf = np.concatenate(normal_fused); print("normal fused top5", np.round(np.sort(nf)[-5:], 2))
for i in range(nt):
    if kinds[i] != "appearance": continue
    zm, za = d[f"test_m_{i}"] / qm, d[f"test_a_{i}"] / qa; lab = d[f"label_{i}"]
    keep = 1 - (za[ctx(len(za))].max(1) > g)
    f = np.maximum(keep * zm, za * (za > g))
    bad = [(t, int(lab[t]), round(zm[t], 2), round(za[t], 2), int(1 - keep[t]), round(f[t], 2)) for t in range(len(f))
           if (lab[t] == 1 and f[t] <= nf.max()) or (lab[t] == 0 and f[t] > np.quantile(nf, .99))]
    print("app clip", i, "interval", np.flatnonzero(lab)[[0, -1]] if lab.any() else None, "problem frames (t,label,z_m,z_a,gated,fused):", bad)
    print("   z_a in interval:", np.round(za[lab == 1], 2))
