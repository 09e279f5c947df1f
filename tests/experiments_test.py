"""The launcher's detector modes run end to end from the command line on a tiny config."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "experiments.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_evaluate_then_score(tmp_path):
    wd = tmp_path / "run"
    out = _run(["--config=experiments/configs/tabular_tiny.py", f"--workdir={wd}"], tmp_path)
    assert "AUROC" in out and "KNN" in out
    m = json.loads((wd / "metrics.json").read_text())
    assert m["dataset"] == "sklearn_breast_cancer"
    for name in ("adiff", "KNN"):
        assert 0.5 < m["summary"][name]["auroc"][0] <= 1.0
    for png in ("roc_pr.png", "score_histograms.png"):
        assert (wd / png).stat().st_size > 5000
    assert any((wd / "tensorboard").iterdir())
    assert (wd / "detector" / "adiff.json").is_file()
    from sklearn.datasets import load_breast_cancer
    X = load_breast_cancer().data[:20]
    np.savez(tmp_path / "rows.npz", X=X)
    _run(["--config=experiments/configs/tabular_tiny.py", f"--workdir={wd}", "--mode=score",
          f"--input={tmp_path / 'rows.npz'}"], tmp_path)
    scores = np.loadtxt(wd / "scores.csv", delimiter=",", skiprows=1)
    assert scores.shape == (20, 2) and np.isfinite(scores).all()
