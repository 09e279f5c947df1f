r"""Anomaly generation benchmark: Magnetic tile (downstream gain, C2ST, diversity, mask alignment)
and one ADBench table (downstream gain).

  flock /tmp/adiff_heavy.lock timeout 900 python -m experiments.benchmarks.generation [--quick]

Magnetic tile (grayscale, resized to cfg.size px): normal images split by the DESIGN protocol
(random 70% of MT_Free trains, seed); for every defect type a random third (seed) of its images
trains the generator, the other two thirds are test data only. Test = the held-out 30% MT_Free +
those two thirds. Downstream model: a small fully-convolutional per-pixel segmenter (BCE) trained
on the normal training images (all-zero masks) plus synthetic anomalies: (i) adiff generated
defects, (ii) cut-paste, (iii) reference: the real training third itself. "none" cannot train a
supervised segmenter, so the "none" row is the unsupervised PCA reconstruction error on the same
normal images. Image score = mean of the top 10 pixel logits.
Fidelity: classifier two-sample test (logistic regression on pixels, 5-fold CV accuracy) between
held-out real defect images and as many generated ones. Diversity: mean pairwise L2 distance among
samples in the PCA(32) space of the normal training images. Mask alignment: share of changed
pixels (|sample - base| > 2/255) that lie inside the mask.
Table: ADBench cardio, DESIGN semi-supervised protocol (seeds), cfg.table.num_labelled real
anomalies (removed from test) train the class-conditioned generator; downstream an MLP classifier
normal-vs-anomaly with: generated anomalies, the few real ones only, uniform noise (naive), and
"none" = KNN (PyOD) on normals; also the unsupervised generator mode (no labels).
"""
from __future__ import annotations

import json
import pathlib
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from adiff import metrics
from adiff.data import image as image_data
from adiff.data import tabular as tabular_data
from adiff.generation import AnomalyGenerator, cut_paste, write_dataset
from experiments.configs import generation_magnetic_tile, generation_tiny

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "docs" / "results"


class Segmenter(nn.Module):
    width: int = 16

    @nn.compact
    def __call__(self, x):
        h = x
        for i, d in enumerate((1, 2, 4, 1)):
            h = nn.silu(nn.Conv(self.width, (3, 3), kernel_dilation=d, padding="SAME")(h))
        return nn.Conv(1, (1, 1))(h)[..., 0]


def train_segmenter(images, masks, *, steps, batch_size, width, lr, seed):
    net = Segmenter(width)
    key = jax.random.key(seed)
    params = net.init(key, jnp.zeros((1,) + images.shape[1:]))
    tx = optax.adam(lr)
    opt = tx.init(params)
    pos = max(masks.mean(), 1e-3)

    @jax.jit
    def step(p, o, x, m):
        def loss(p):
            logit = net.apply(p, x)
            w = jnp.where(m > 0, 0.5 / pos, 0.5 / (1 - pos))
            return jnp.mean(w * optax.sigmoid_binary_cross_entropy(logit, m))
        l, g = jax.value_and_grad(loss)(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, l

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        i = rng.integers(0, len(images), batch_size)
        x, m = images[i], masks[i]
        if rng.random() < 0.5:
            x, m = x[:, :, ::-1], m[:, :, ::-1]
        params, opt, _ = step(params, opt, jnp.asarray(x), jnp.asarray(m, jnp.float32))
    apply = jax.jit(net.apply)
    return lambda x: np.concatenate([np.asarray(apply(params, jnp.asarray(x[s:s + 128])))
                                     for s in range(0, len(x), 128)])


def image_metrics(maps, test):
    flat = maps.reshape(len(maps), -1)
    img = np.sort(flat, axis=1)[:, -10:].mean(1)
    return {"image_auroc": metrics.auroc(test.labels, img),
            "pixel_auroc": metrics.pixel_auroc(test.masks, maps),
            "aupro": metrics.aupro(test.masks, maps)}


def pairwise_mean(f):
    d = np.sqrt(np.maximum(((f[:, None] - f[None]) ** 2).sum(-1), 0))
    return float(d[np.triu_indices(len(f), 1)].mean())


def c2st(real, fake, seed):
    n = min(len(real), len(fake))
    rng = np.random.default_rng(seed)
    r = real[rng.permutation(len(real))[:n]].reshape(n, -1)
    f = fake[rng.permutation(len(fake))[:n]].reshape(n, -1)
    X = np.concatenate([r, f])
    y = np.r_[np.zeros(n), np.ones(n)]
    clf = LogisticRegression(C=0.1, max_iter=2000)
    return float(cross_val_score(clf, X, y, cv=5).mean()), int(n)


def run_image(cfg, log):
    t0 = time.time()
    data = image_data.load_magnetic_tile(DATA / "image" / "magnetic_tile", size=cfg.size)
    split = image_data.magnetic_tile_split(data, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    kinds = np.asarray(split.test.kinds)
    gen_idx, keep = [], np.ones(len(split.test), bool)
    for k in sorted(set(kinds) - {"MT_Free"}):
        idx = rng.permutation(np.flatnonzero(kinds == k))
        n_tr = max(1, int(round(cfg.train_defect_fraction * len(idx))))
        gen_idx.extend(idx[:n_tr])
        keep[idx[:n_tr]] = False
    gen_idx = np.asarray(sorted(gen_idx))
    train_def = split.test.subset(gen_idx)
    test = split.test.subset(np.flatnonzero(keep))
    normal = split.train.astype(np.float32) / 255.0
    log(f"normal train {len(normal)}, generator defects {len(train_def)}, test {len(test)} "
        f"({int(test.labels.sum())} defective), load {time.time() - t0:.0f}s")

    g = cfg.generator
    gen = AnomalyGenerator(modality="image", seed=cfg.seed, train_steps=g.train_steps,
                           batch_size=g.batch_size, learning_rate=g.learning_rate,
                           ema_decay=g.ema_decay, p_uncond=g.p_uncond, num_steps=g.num_steps,
                           width=g.width, channel_mults=tuple(g.channel_mults), groups=g.groups,
                           anomaly_fraction=g.anomaly_fraction, verbose=True)
    t1 = time.time()
    gen.fit(normal, anomalies=train_def.images.astype(np.float32) / 255.0, masks=train_def.masks,
            labels=list(train_def.kinds))
    t_fit = time.time() - t1
    t1 = time.time()
    base = normal[rng.integers(0, len(normal), cfg.num_generated)]
    out = gen.generate(base=base, guidance=cfg.guidance)
    t_gen = time.time() - t1
    out0 = gen.generate(base=base[:64], masks=out.masks[:64], label=out.labels[:64], guidance=0.0)
    log(f"generator fit {t_fit:.0f}s, generate {cfg.num_generated} in {t_gen:.0f}s")

    cp_img, cp_mask = cut_paste(np.random.default_rng(cfg.seed + 7), base)
    seg = cfg.segmenter
    res = {}
    # none: unsupervised PCA reconstruction error
    pca = PCA(n_components=16, random_state=cfg.seed).fit(normal.reshape(len(normal), -1))
    xt = test.images.astype(np.float32) / 255.0
    rec = pca.inverse_transform(pca.transform(xt.reshape(len(xt), -1))).reshape(xt.shape)
    res["none (PCA reconstruction, unsupervised)"] = image_metrics(((xt - rec) ** 2)[..., 0], test)
    sets = {
        "cut-paste + normal (segmenter)": (cp_img, cp_mask),
        "adiff generated + normal (segmenter)": (out.samples, out.masks),
        "reference: real training third + normal (segmenter)":
            (train_def.images.astype(np.float32) / 255.0, train_def.masks),
    }
    zero = np.zeros(normal.shape[:3], np.uint8)
    for name, (ai, am) in sets.items():
        t1 = time.time()
        X = np.concatenate([normal, ai.astype(np.float32)])
        M = np.concatenate([zero, am.astype(np.uint8)])
        f = train_segmenter(X, M, steps=seg.steps, batch_size=seg.batch_size, width=seg.width,
                            lr=seg.lr, seed=cfg.seed)
        res[name] = image_metrics(f(xt), test)
        log(f"{name}: {res[name]} ({time.time() - t1:.0f}s)")

    real_test_def = test.images[test.labels == 1].astype(np.float32) / 255.0
    fid = {"adiff (guidance %.1f)" % cfg.guidance: c2st(real_test_def, out.samples, cfg.seed),
           "adiff (guidance 0)": c2st(real_test_def, out0.samples, cfg.seed),
           "cut-paste": c2st(real_test_def, cp_img, cfg.seed),
           "normal images (reference)": c2st(real_test_def,
                                             xt[test.labels == 0], cfg.seed)}
    feat = lambda a: pca32.transform(a.reshape(len(a), -1))
    pca32 = PCA(n_components=32, random_state=cfg.seed).fit(normal.reshape(len(normal), -1))
    div = {"adiff": pairwise_mean(feat(out.samples)), "cut-paste": pairwise_mean(feat(cp_img)),
           "real held-out defects": pairwise_mean(feat(real_test_def)),
           "adiff defect residual (sample - base)": pairwise_mean(
               (out.samples - base).reshape(len(base), -1)),
           "real-defect residual proxy n/a": None}
    div.pop("real-defect residual proxy n/a")
    changed = np.abs(out.samples - base)[..., 0] > 2.0 / 255.0
    changed_cp = np.abs(cp_img - base)[..., 0] > 2.0 / 255.0
    align = {"adiff": float((changed & (out.masks > 0)).sum() / max(changed.sum(), 1)),
             "cut-paste": float((changed_cp & (cp_mask > 0)).sum() / max(changed_cp.sum(), 1)),
             "adiff mean |change| inside mask": float(
                 np.abs(out.samples - base)[..., 0][out.masks > 0].mean()),
             "adiff guidance 0 mean |change| inside mask": float(
                 np.abs(out0.samples - base[:64])[..., 0][out0.masks > 0].mean())}

    # grids
    grid_path = OUT / "generation" / "magnetic_tile_grid.png"
    save_grid(grid_path, base[:8], out.samples[:8], out.masks[:8], train_def, cp_img[:8])
    write_dataset(gen.generate(base=base[:4], masks=out.masks[:4], label=out.labels[:4],
                               guidance=cfg.guidance),
                  OUT / "generation" / "sample_dataset", modality="image",
                  extra={"source": "magnetic tile benchmark", "seed": cfg.seed})
    return {"downstream": res, "c2st": fid, "diversity": div, "mask_alignment": align,
            "counts": {"normal_train": len(normal), "generator_defects": len(train_def),
                       "test": len(test), "test_defective": int(test.labels.sum()),
                       "generated": cfg.num_generated},
            "label_names": list(out.label_names),
            "times_s": {"generator_fit": t_fit, "generate": t_gen}}


def save_grid(path, base, gen, masks, real, cp):
    from PIL import Image
    h = base.shape[1]
    rows = [base[..., 0], gen[..., 0], masks.astype(np.float32),
            real.images[:8, ..., 0].astype(np.float32) / 255.0, cp[..., 0]]
    canvas = np.ones((len(rows) * (h + 2), 8 * (h + 2)), np.float32)
    for r, row in enumerate(rows):
        for c in range(min(8, len(row))):
            canvas[r * (h + 2):r * (h + 2) + h, c * (h + 2):c * (h + 2) + h] = row[c]
    img = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8))
    img = img.resize((img.width * 3, img.height * 3), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)


def run_table(cfg, log):
    from pyod.models.knn import KNN
    t = cfg.table
    X, y = tabular_data.load_adbench_npz(next((DATA / "tabular" / t.dataset).glob("*.npz")))
    rows = {k: [] for k in ("none: KNN on normals (PyOD)", "naive: uniform noise (MLP)",
                            "few real anomalies only (MLP)", "adiff class-conditioned (MLP)",
                            "adiff unsupervised, low-density (MLP)")}
    for seed in t.seeds:
        rng = np.random.default_rng(seed)
        normal, anom = X[y == 0], X[y == 1]
        perm = rng.permutation(len(normal))
        tr = normal[perm[: len(normal) // 2]]
        te_n = normal[perm[len(normal) // 2:]]
        ap = rng.permutation(len(anom))
        few, te_a = anom[ap[: t.num_labelled]], anom[ap[t.num_labelled:]]
        sc = StandardScaler().fit(tr)
        tr, few = sc.transform(tr), sc.transform(few)
        Xte = sc.transform(np.concatenate([te_n, te_a]))
        yte = np.r_[np.zeros(len(te_n)), np.ones(len(te_a))]

        def clf_auc(neg, pos):
            Xc = np.concatenate([neg, pos])
            yc = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
            w = np.where(yc == 1, len(neg) / len(pos), 1.0)
            rep = np.repeat(np.arange(len(Xc)), np.maximum(1, np.round(w).astype(int)))
            m = MLPClassifier((64, 64), max_iter=300, random_state=seed).fit(Xc[rep], yc[rep])
            return metrics.auroc(yte, m.predict_proba(Xte)[:, 1])

        rows["none: KNN on normals (PyOD)"].append(
            metrics.auroc(yte, KNN().fit(tr).decision_function(Xte)))
        lo, hi = tr.min(0), tr.max(0)
        span = hi - lo
        noise = rng.uniform(lo - 0.1 * span, hi + 0.1 * span, (t.num_generated, tr.shape[1]))
        rows["naive: uniform noise (MLP)"].append(clf_auc(tr, noise))
        rows["few real anomalies only (MLP)"].append(clf_auc(tr, few))
        gen = AnomalyGenerator(modality="table", seed=seed, train_steps=t.train_steps,
                               batch_size=64, num_steps=25).fit(tr, anomalies=few)
        g = gen.generate(n=t.num_generated, label="anomaly", guidance=t.guidance).samples
        rows["adiff class-conditioned (MLP)"].append(clf_auc(tr, np.concatenate([g, few])))
        gu = AnomalyGenerator(modality="table", seed=seed, train_steps=t.train_steps,
                              batch_size=64, num_steps=25).fit(tr)
        g2 = gu.generate(n=t.num_generated, guidance=t.guidance).samples
        rows["adiff unsupervised, low-density (MLP)"].append(clf_auc(tr, g2))
        log(f"table seed {seed}: " + ", ".join(f"{k}={v[-1]:.3f}" for k, v in rows.items()))
    return {k: {"mean": float(np.mean(v)), "sd": float(np.std(v)), "runs": v}
            for k, v in rows.items()}


def fmt(v):
    return "n/a" if v is None else f"{v:.3f}"


def write_markdown(res, path):
    im, cfg = res.get("image", {}), res["config"]
    L = ["# Anomaly generation results", "",
         f"Command: `{res['command']}` (total {res.get('total_s', 0):.0f} s on a shared 2-core CPU).",
         "", __doc__.split("\n\n", 1)[1].strip(), "",
         f"Reductions (CPU budget of 15 min): {cfg['size']} px images; generator "
         f"{cfg['generator']['train_steps']} steps, width {cfg['generator']['width']}, "
         f"mults {cfg['generator']['channel_mults']}, DDIM {cfg['generator']['num_steps']} steps; "
         f"{cfg['num_generated']} generated defects; segmenter {cfg['segmenter']['steps']} steps; "
         f"one seed ({cfg['seed']}) for images, seeds {cfg['table']['seeds']} for the table.", ""]
    if im:
        L += ["## Magnetic tile: downstream (test = held-out normals + the two unseen thirds of "
              "each defect type)", "", f"Counts: {im['counts']}", "",
              "| training anomalies | image AUROC | pixel AUROC | AUPRO |", "|---|---:|---:|---:|"]
        L += [f"| {k} | {fmt(v['image_auroc'])} | {fmt(v['pixel_auroc'])} | {fmt(v['aupro'])} |"
              for k, v in im["downstream"].items()]
        L += ["", "## Fidelity: classifier two-sample test vs held-out real defects "
              "(5-fold CV accuracy; 0.5 best)", "", "| samples | accuracy | n per side |",
              "|---|---:|---:|"]
        L += [f"| {k} | {fmt(v[0])} | {v[1]} |" for k, v in im["c2st"].items()]
        L += ["", "## Diversity (mean pairwise L2 in PCA(32) of normal training pixels; the "
              "residual row is in pixel space)", "", "| set | distance |", "|---|---:|"]
        L += [f"| {k} | {fmt(v)} |" for k, v in im["diversity"].items()]
        L += ["", "## Mask alignment (share of changed pixels inside the mask)", "",
              "| measure | value |", "|---|---:|"]
        L += [f"| {k} | {fmt(v)} |" for k, v in im["mask_alignment"].items()]
        L += ["", "Adiff's alignment is 1 by construction (masked DDIM copies every pixel outside "
              "the mask), so it measures the implementation, not the model.", "",
              "Grid (rows: normal base, generated, mask, real training defects, cut-paste): "
              "![grid](generation/magnetic_tile_grid.png)", ""]
    if "table" in res:
        t = res["table"]
        L += [f"## Table: {cfg['table']['dataset']} (semi-supervised protocol, "
              f"{cfg['table']['num_labelled']} labelled anomalies removed from test)", "",
              "| detector | AUROC mean | sd |", "|---|---:|---:|"]
        L += [f"| {k} | {fmt(v['mean'])} | {fmt(v['sd'])} |" for k, v in t.items()]
    path.write_text("\n".join(L) + "\n")


def main(argv):
    quick = "--quick" in argv
    cfg = generation_tiny.get_config() if quick else generation_magnetic_tile.get_config()
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    t0 = time.time()
    res = {"config": cfg.to_dict(), "quick": quick}
    name = "generation_quick.json" if quick else "generation.json"
    (OUT / "generation").mkdir(parents=True, exist_ok=True)
    save = lambda: (OUT / "generation" / name).write_text(json.dumps(res, indent=1, default=str))
    res["command"] = "flock /tmp/adiff_heavy.lock timeout 900 python -m " \
                     "experiments.benchmarks.generation" + (" --quick" if quick else "")
    res["image"] = run_image(cfg, log)
    save()
    if not quick:
        write_markdown(res, OUT / "generation.md")
    res["table"] = run_table(cfg, log)
    res["total_s"] = time.time() - t0
    res["command"] = "flock /tmp/adiff_heavy.lock timeout 900 python -m " \
                     "experiments.benchmarks.generation" + (" --quick" if quick else "")
    save()
    if not quick:
        write_markdown(res, OUT / "generation.md")
    log(f"total {res['total_s']:.0f}s")


if __name__ == "__main__":
    main(sys.argv[1:])
