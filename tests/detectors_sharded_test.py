"""Detector scoring over 8 simulated CPU devices equals 1-device scoring (subprocess: XLA_FLAGS
must be set before jax is imported)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
import numpy as np
import jax
import adiff
rng = np.random.RandomState(0)
X = rng.normal(size=(203, 5)).astype(np.float32)
Xt = rng.normal(size=(37, 5)).astype(np.float32)
out = {"devices": jax.local_device_count()}
for scoring in ("dte", "reconstruction"):
    det = adiff.TabularDetector(scoring=scoring, train_steps=30, batch_size=64, hidden=16,
                                num_blocks=1, dte_hidden=(16, 16), solver_steps=3, t0=(0.2,),
                                score_batch_size=16).fit(X)
    out[scoring] = det.decision_function(Xt).tolist()
print(json.dumps(out))
"""


def _run(ndev):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={ndev} "
               + os.environ.get("ADIFF_TEST_XLA_FLAGS", ""), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_scoring_on_8_devices_matches_1_device():
    import numpy as np
    one, eight = _run(1), _run(8)
    assert one["devices"] == 1 and eight["devices"] == 8
    for scoring in ("dte", "reconstruction"):
        np.testing.assert_allclose(eight[scoring], one[scoring], rtol=1e-4, atol=1e-5)
