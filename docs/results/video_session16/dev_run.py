"""Session 16-17 dev run (varied seed 0, seen before): fit appearance=True with the procedural config, dump the raw
stream scores of the training and test clips to /tmp/s17/dev_seed{seed}.npz (read by dev_analysis.py)."""
import sys, time, numpy as np
from experiments.benchmarks import video as vb
from experiments.configs import video_procedural
from adiff import VideoDetector
seed = int(sys.argv[1])
cfg = vb._with_seed(video_procedural.get_config(), seed)
cfg.variant = "varied"
train, test = vb.load_split(cfg, seed=cfg.seed)
kw = vb._detector_kwargs(cfg, 1.0, None, False, None)
kw["appearance"] = True
t = time.time()
det = VideoDetector(seed=cfg.seed, **kw).fit(train.clips)
print("fit", time.time() - t, flush=True)
tr = det._prepare(train.clips, fitting=False)
te = det._prepare(test.clips, fitting=False)
out = {}
for name, clips in (("train", tr), ("test", te)):
    for i, c in enumerate(clips):
        st = det._streams(c, i)
        out[f"{name}_m_{i}"] = st["motion"]; out[f"{name}_a_{i}"] = st["appearance"]
for i, l in enumerate(test.labels):
    out[f"label_{i}"] = np.asarray(l)
np.savez(f"/tmp/s17/dev_seed{seed}.npz", kinds=np.array(test.kinds), ntrain=len(tr), ntest=len(te),
         K=det.context_frames, **out)
print("scales", det.stream_scales_, flush=True)
