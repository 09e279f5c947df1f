r"""What bounds pooled pixel AUROC on Magnetic tile (session 23; information, not a probe).

Pooled pixel AUROC ranks every defect pixel of the test set against every normal pixel. Split
the defect pixels by defect type: the pooled figure is close to the types' own pixel AUROCs
weighted by their share of the defect pixels (exact if every type were ranked against the same
normal pixels; here each type's AUROC uses the normal test images plus that type's images). This
script measures

1. each type's share of the defect pixels at the given size and seed;
2. how well that weighted mean reproduces the pooled pixel AUROC of the scorers held in
   mt_map_evidence.json (session 22), and the ceiling each scorer would reach if every type but
   MT_Uneven were ranked perfectly (pixel AUROC 1), with the Uneven figure it would need for the
   issue's 0.85;
3. a network-free texture-statistics map (local mean, local std and mean absolute Sobel
   gradients in two window sizes; per pixel the squared z-score against the training images at
   that location, summed over features, and the Mahalanobis distance to all training pixels'
   features), to check whether coarse texture statistics see MT_Uneven where the
   reconstruction and density maps do not. Maps go through the baselines' head (blur 1 px, top-1%
   mean as the image score).

  flock /tmp/adiff_heavy.lock python -m experiments.benchmarks.image_uneven_bound \
      --sizes=32,64 --seeds=0,1,2 --out=docs/results/image/mt_uneven_bound.json
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import app, flags
from scipy import ndimage

from experiments.benchmarks import image as bench
from experiments.benchmarks import image_map_evidence as evidence
from experiments.configs import image_magnetic_tile

_SIZES = flags.DEFINE_list("sizes", ["32", "64"], "Image sides in pixels.")
# --seeds and --out are the session-21 probe's flags (defined when the modules above are imported).
_SEEDS, _OUT = evidence._SEEDS, evidence._OUT
_EVIDENCE = flags.DEFINE_string("evidence", "docs/results/image/mt_map_evidence.json",
                                "Session-22 results with per-type pixel AUROCs (32 px).")

TARGET = 0.85  # issue 6's pixel AUROC target on Magnetic tile
UNEVEN = "MT_Uneven"


def pixel_shares(test) -> dict:
    """Share of all defect pixels that each defect type holds."""
    masks = np.asarray(test.masks).reshape(len(test.labels), -1).astype(bool)
    kinds = np.asarray(test.kinds)
    total = masks.sum()
    return {str(k): float(masks[kinds == k].sum() / total)
            for k in sorted(set(kinds[test.labels == 1]))}


def texture_features(images: np.ndarray, windows) -> np.ndarray:
    """[N, H, W, 4 * len(windows)]: local mean, std, mean |d/dx|, mean |d/dy| per window."""
    out = []
    for a in np.asarray(images, np.float64)[..., 0]:
        gx, gy = np.abs(ndimage.sobel(a, 1)), np.abs(ndimage.sobel(a, 0))
        per = []
        for w in windows:
            mean = ndimage.uniform_filter(a, w)
            var = np.maximum(ndimage.uniform_filter(a * a, w) - mean ** 2, 0.0)
            per += [mean, np.sqrt(var), ndimage.uniform_filter(gx, w), ndimage.uniform_filter(gy, w)]
        out.append(np.stack(per, -1))
    return np.stack(out)


def texture_maps(train: np.ndarray, test: np.ndarray, size: int) -> dict:
    windows = (max(3, size // 8), max(5, size // 4))
    f_tr, f_te = texture_features(train, windows), texture_features(test, windows)
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-6
    flat = f_tr.reshape(-1, f_tr.shape[-1])
    inv = np.linalg.inv(np.cov(flat.T) + 1e-6 * np.eye(flat.shape[1]))
    d = f_te - flat.mean(0)
    return {"texture z (per location)": (((f_te - mu) / sd) ** 2).sum(-1),
            "texture Mahalanobis (global)": np.einsum("nhwi,ij,nhwj->nhw", d, inv, d)}


def weighted(shares: dict, per_type: dict, uneven=None) -> float:
    return sum(w * (uneven if (k == UNEVEN and uneven is not None) else per_type[k]["pixel_auroc"])
               for k, w in shares.items())


def evidence_rows(path: pathlib.Path, shares: dict) -> dict:
    """Pooled vs share-weighted pixel AUROC, and the Uneven-limited ceiling, per session-22 row."""
    if not path.exists():
        return {}
    held = json.loads(path.read_text())
    out = {}
    for name in held[next(iter(held))]["rows"]:
        pooled = [held[s]["rows"][name]["pixel_auroc"] for s in held]
        weighted_ = [weighted(shares, held[s]["per_kind"][name]) for s in held]
        uneven = [held[s]["per_kind"][name][UNEVEN]["pixel_auroc"] for s in held]
        out[name] = {"pooled": float(np.mean(pooled)), "share_weighted": float(np.mean(weighted_)),
                     "uneven": float(np.mean(uneven)),
                     "ceiling_others_perfect": float(np.mean([1 - shares[UNEVEN] * (1 - u) for u in uneven]))}
    return out


def main(argv):
    del argv
    cfg = image_magnetic_tile.get_config()
    result = {"target": TARGET, "sizes": {}}
    for size in [int(s) for s in _SIZES.value]:
        per_seed = {}
        for seed in [int(s) for s in _SEEDS.value]:
            split = bench.load_split(cfg, seed=seed, size=size)
            test = split.test
            shares = pixel_shares(test)
            rows = {}
            for name, raw in texture_maps(split.train, test.images, size).items():
                # The baselines' head: blur 1 px, image score = top-1% mean of the map.
                scores, maps = bench.map_head(raw, sigma=1.0, topk=0.01)
                rows[name] = {**bench.evaluate(test, scores, maps),
                              "per_kind": bench.per_kind(test, scores, maps)}
                bench.log(size, seed, name, {k: round(v, 3) for k, v in rows[name].items() if k != "per_kind"},
                          {k[3:]: round(v["pixel_auroc"], 3) for k, v in rows[name]["per_kind"].items()})
            per_seed[str(seed)] = {"shares": shares, "rows": rows}
        result["sizes"][str(size)] = per_seed
    shares32 = result["sizes"].get("32", {}).get("0", {}).get("shares")
    if shares32:
        result["evidence_rows_32px"] = evidence_rows(pathlib.Path(_EVIDENCE.value), shares32)
        need = (TARGET - (1 - shares32[UNEVEN])) / shares32[UNEVEN]
        result["uneven_needed_for_target_if_others_perfect"] = need
    print_tables(result)
    if _OUT.value:
        out = pathlib.Path(_OUT.value)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))


def print_tables(result: dict) -> None:
    for size, per_seed in result["sizes"].items():
        s0 = next(iter(per_seed.values()))
        print(f"\n{size} px, defect-pixel shares (seed {next(iter(per_seed))}): "
              + ", ".join(f"{k[3:]} {v:.3f}" for k, v in s0["shares"].items()))
        kinds = list(s0["shares"])
        print("| map (mean over seeds) | image AUROC | pixel AUROC | AUPRO | "
              + " | ".join(k[3:] for k in kinds) + " |")
        for name in s0["rows"]:
            rs = [v["rows"][name] for v in per_seed.values()]
            cells = [f"{np.mean([r[m] for r in rs]):.3f}" for m in ("image_auroc", "pixel_auroc", "aupro")]
            cells += [f"{np.mean([r['per_kind'][k]['pixel_auroc'] for r in rs]):.3f}" for k in kinds]
            print(f"| {name} | " + " | ".join(cells) + " |")
    rows = result.get("evidence_rows_32px")
    if rows:
        print("\n| session-22 row (32 px) | pooled pixel AUROC | share-weighted | Uneven | ceiling, others perfect |")
        for name, r in rows.items():
            print(f"| {name} | {r['pooled']:.3f} | {r['share_weighted']:.3f} | {r['uneven']:.3f} | "
                  f"{r['ceiling_others_perfect']:.3f} |")
        print(f"Uneven pixel AUROC needed for {TARGET} with every other type perfect: "
              f"{result['uneven_needed_for_target_if_others_perfect']:.3f}")


if __name__ == "__main__":
    app.run(main)
