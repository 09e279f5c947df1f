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


# ------------------------------------------------------------------------------------------------
# time series, image, video and multimodal kinds (in process, tiny configs, few training steps)
# ------------------------------------------------------------------------------------------------
def _tiny(module: str, **detector):
    import importlib
    cfg = importlib.import_module(f"experiments.configs.{module}").get_config()
    cfg.detector.update(detector)
    return cfg


def _launch(mode, cfg, wd, **kw):
    from experiments import main
    return main.run(mode, cfg, str(wd), **kw)


def _check_outputs(wd, seeds):
    m = json.loads((wd / "metrics.json").read_text())
    assert sorted(m["seeds"]) == sorted(str(s) for s in seeds)
    assert (wd / "scores_vs_labels.png").stat().st_size > 5000
    assert (wd / "detector" / "adiff.json").is_file()
    saved = np.load(wd / "scores.npz")
    assert saved["scores"].shape == saved["labels"].shape and np.isfinite(saved["scores"]).all()
    return m


def test_timeseries_benchmark_then_score(tmp_path):
    from experiments.benchmarks import timeseries as bench
    cfg = _tiny("ts_tiny", train_steps=20, num_blocks=1, dilations=(1,), num_levels=1)
    cfg.paradigms, cfg.baselines, cfg.seeds = ("imputation",), ("KNN",), (1,)
    wd = tmp_path / "ts"
    _launch("benchmark", cfg, wd)  # runs config.seeds (here seed 1), not config.seed
    m = _check_outputs(wd, [1])
    row = m["seeds"]["1"]
    assert set(row) == {"adiff-imputation", "KNN"}
    assert set(row["KNN"]) >= {"vus_pr", "auc_pr", "auroc", "best_f1", "pa_f1"}
    # The figures are the benchmark's metric code on the saved scores.
    split = bench.synthetic_series(1)
    saved = np.load(wd / "scores.npz")
    from adiff import metrics
    ref = bench.series_metrics(split.labels, saved["scores"], metrics.vus_window(split.test))
    assert abs(ref["vus_pr"] - row["adiff-imputation"]["vus_pr"]) < 1e-12
    assert m["summary"]["KNN"]["auroc"][0] == row["KNN"]["auroc"]
    # The synthetic spike and level shift are easy: the window KNN baseline finds them.
    assert row["KNN"]["auroc"] > 0.9
    np.savez(tmp_path / "series.npz", X=split.test[:300])
    s = _launch("score", cfg, wd, input_path=str(tmp_path / "series.npz"))
    out = np.loadtxt(wd / "scores.csv", delimiter=",", skiprows=1)
    assert out.shape == (300, 2) and np.allclose(out[:, 0], s)


def test_video_train_then_score(tmp_path):
    cfg = _tiny("video_tiny", train_steps=20, channel_mults=(1,))
    wd = tmp_path / "video"
    _launch("train", cfg, wd)
    assert (wd / "detector" / "adiff.json").is_file() and not (wd / "metrics.json").exists()
    from adiff.data import video as video_data
    _, test = video_data.procedural_benchmark(0, num_train=1, num_test=1, num_frames=cfg.num_frames,
                                              size=cfg.size)
    np.savez(tmp_path / "clips.npz", X=np.stack(test.clips[:2]))  # [N, T, H, W, C]
    scores = _launch("score", cfg, wd, input_path=str(tmp_path / "clips.npz"))
    out = np.loadtxt(wd / "scores.csv", delimiter=",", skiprows=1)
    assert len(scores) == 2 and out.shape == (2 * cfg.num_frames, 4)
    np.testing.assert_array_equal(out[:, 0], np.repeat([0, 1], cfg.num_frames))
    np.testing.assert_allclose(out[:, 2], np.concatenate(scores))


@pytest.mark.data
def test_image_evaluate_then_score(tmp_path, shared_data):
    cfg = _tiny("image_tiny", train_steps=20, channel_mults=(1,))
    cfg.baselines = ("KNN",)
    wd = tmp_path / "image"
    _launch("evaluate", cfg, wd)
    m = _check_outputs(wd, [cfg.seed])
    adiff_row = m["seeds"]["0"]["adiff"]
    assert {"image_auroc", "pixel_auroc", "aupro"} <= set(adiff_row)
    assert 0.0 <= adiff_row["pixel_auroc"] <= 1.0 and set(m["seeds"]["0"]) == {"adiff", "KNN"}
    x = np.zeros((3, cfg.size, cfg.size, 1), np.uint8)
    x[1, 4:9, 4:9] = 255  # a bright square on a black image
    np.savez(tmp_path / "images.npz", X=x)
    s = _launch("score", cfg, wd, input_path=str(tmp_path / "images.npz"))
    assert s.shape == (3,) and np.isfinite(s).all()


@pytest.mark.data
def test_image_mnist_density_np_config_evaluates(tmp_path, shared_data):
    """The MNIST best configuration (no network) through the launcher: digit 1 against the rest."""
    from experiments.configs import image_mnist_density_np
    cfg = image_mnist_density_np.get_config()
    cfg.normal_class, cfg.baselines = 1, ("KNN",)
    wd = tmp_path / "mnist"
    _launch("evaluate", cfg, wd)
    row = _check_outputs(wd, [cfg.seed])["seeds"]["0"]
    assert row["adiff"]["image_auroc"] > 0.98 and row["KNN"]["image_auroc"] > 0.98


@pytest.mark.data
def test_multimodal_evaluate_then_score(tmp_path, shared_data):
    cfg = _tiny("multimodal_tiny", encoder_steps=20, diffusion_steps=20, gate_steps=10,
                num_blocks=1)
    wd = tmp_path / "mm"
    _launch("evaluate", cfg, wd)
    m = _check_outputs(wd, [cfg.seed])
    row = m["seeds"]["0"]
    assert {"adiff early", "adiff late", "adiff dynamic", "KNN concat"} <= set(row)
    kinds = row["adiff dynamic"]["auroc_by_kind"]
    assert len(kinds) >= 2 and all(0.0 <= v <= 1.0 for v in kinds.values())
    from experiments.benchmarks import multimodal as bench
    split = bench.load_split(cfg, shared_data, cfg.seed)
    np.savez(tmp_path / "mm.npz", **{k: v[:5] for k, v in split.test.items()})
    s = _launch("score", cfg, wd, input_path=str(tmp_path / "mm.npz"))
    assert s.shape == (5,) and np.isfinite(s).all()
    np.savez(tmp_path / "bad.npz", X=split.test["image"][:5])
    with pytest.raises(ValueError, match="one array per modality"):
        _launch("score", cfg, wd, input_path=str(tmp_path / "bad.npz"))


def test_unknown_kind_and_missing_input(tmp_path):
    from absl import app
    cfg = _tiny("video_tiny")
    cfg.kind = "audio"
    with pytest.raises(app.UsageError, match="unknown config kind 'audio'"):
        _launch("evaluate", cfg, tmp_path)
    cfg.kind = "video"
    with pytest.raises(app.UsageError, match="--input"):
        _launch("score", cfg, tmp_path)


# ------------------------------------------------------------------------------------------------
# --multihost: two processes over loopback vs one process with two devices
# ------------------------------------------------------------------------------------------------
_GMM_TINY = ["--config=experiments/configs/gmm2d.py", "--mode=train",
             "--config.train.num_steps=16", "--config.train.warmup_steps=4",
             "--config.train.batch_size=32", "--config.train.log_every=8",
             "--config.train.checkpoint_every=16", "--config.data.num_samples=256",
             "--config.model.features=16", "--config.model.num_blocks=1",
             "--config.model.time_dim=16", "--config.sample.num_samples=32",
             "--config.sample.num_steps=2"]


@pytest.mark.slow
def test_multihost_two_processes_match_one(tmp_path):
    import jax
    import socket
    if "jax_cpu_collectives_implementation" not in jax.config.values:
        pytest.skip("this jax has no CPU multi-process collectives option")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = os.environ.get("ADIFF_TEST_XLA_FLAGS", "")  # no device count from a parent
    cmds = [[sys.executable, "-m", "experiments.main", *_GMM_TINY, f"--workdir={tmp_path / 'multi'}",
             "--multihost", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
             f"--process_id={i}"] for i in range(2)]
    # The reference: one process, two CPU devices, the same global batch and mesh shape.
    cmds.append([sys.executable, "-m", "experiments.main", *_GMM_TINY,
                 f"--workdir={tmp_path / 'single'}"])
    envs = [env, env, dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2 " + env["XLA_FLAGS"])]
    procs = [subprocess.Popen(c, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for c, e in zip(cmds, envs)]
    from tests.multihost_test import communicate_all  # pylint: disable=import-outside-toplevel
    logs = communicate_all(procs, timeout=300)
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    multi = json.loads((tmp_path / "multi" / "sample_metrics.json").read_text())
    single = json.loads((tmp_path / "single" / "sample_metrics.json").read_text())
    assert multi["process_count"] == 2 and multi["written_by_process"] == 0
    assert single["process_count"] == 1
    # Only process 0 wrote results and plots; both trained.
    assert "wrote " in logs[0] and "wrote " not in logs[1] and "workdir:" not in logs[1]
    assert (tmp_path / "multi" / "samples.png").is_file()
    final_multi = json.loads((tmp_path / "multi" / "final_metrics.json").read_text())
    final_single = json.loads((tmp_path / "single" / "final_metrics.json").read_text())
    assert final_multi["step"] == final_single["step"] == 16
    # Bit-identical final parameters (two-way all-reduce sums are order-independent).
    assert final_multi["params_sha256"] == final_single["params_sha256"] == multi["params_sha256"]
    assert final_multi["ema_params_sha256"] == final_single["ema_params_sha256"]


def test_benchmark_overrides_are_checked():
    """The session-7 benchmark flags: --train_steps_scale scales (and rejects a non-positive
    factor), --missing_key must name one of the config's modalities (checked before any data)."""
    from experiments.benchmarks import multimodal as mm_bench
    from experiments.benchmarks import video as video_bench
    assert video_bench._scaled_steps({"train_steps": 700, "seed": 1}, 3.0) == {"train_steps": 2100, "seed": 1}
    assert video_bench._scaled_steps({"train_steps": 3}, 0.1)["train_steps"] == 1
    with pytest.raises(ValueError, match="train_steps_scale"):
        video_bench._scaled_steps({"train_steps": 700}, 0.0)
    with pytest.raises(ValueError, match="--ped2_size must be H,W"):
        video_bench.run_ped2(True, 1.0, ["64"])
    # The results header names the seed of each part that ran (--procedural_seed).
    assert video_bench._seeds_text({"seed": 0}, {"seed": 2}) == "Ped2 seed 0, procedural seed 2"
    assert video_bench._seeds_text(None, {"seed": 1}) == "procedural seed 1"
    with pytest.raises(ValueError, match="--ped2_size must be H,W"):  # --ped2_seed: same checks
        video_bench.run_ped2(True, 1.0, ["64"], seed=3)
    with pytest.raises(ValueError, match="--missing_key must name a modality"):
        mm_bench.run_one("multimodal_mnist", pathlib.Path("/nonexistent"), 0, True, missing_key="audio")


def test_image_benchmark_merges_magnetic_tile_seeds():
    """--merge_mt keeps held seeds (older entries take their seed from the run's seed list), a
    seed run again replaces its entry, and a held run of another size or length is refused."""
    from experiments.benchmarks import image as image_bench
    prev = {"size": 32, "train_steps": 1500, "seeds": [0, 3],
            "magnetic_tile": [{"rows": "old0"}, {"rows": "old3", "seed": 3}]}
    merged = image_bench.merge_mt_seeds(prev, 32, 1500, [{"rows": "new3", "seed": 3},
                                                        {"rows": "new1", "seed": 1}])
    assert [(e["seed"], e["rows"]) for e in merged] == [(0, "old0"), (1, "new1"), (3, "new3")]
    with pytest.raises(ValueError, match="size 32 and 1500 steps"):
        image_bench.merge_mt_seeds(prev, 64, 1500, [])
    with pytest.raises(FileNotFoundError, match="--merge_mt"):
        image_bench.merge_mt_seeds({}, 32, 1500, [])


def test_image_steps_subset_and_ratios():
    """The solver benchmark's subset is balanced and seeded, refuses an impossible size, and its
    ratios divide every row by the first (reference) row of the same seed."""
    from experiments.benchmarks import image_steps
    labels = np.array([0] * 10 + [1] * 6)
    idx = image_steps.balanced_subset(labels, 8, seed=3)
    assert len(idx) == 8 and labels[idx].sum() == 4 and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, image_steps.balanced_subset(labels, 8, seed=3))
    with pytest.raises(ValueError, match="anomalous"):
        image_steps.balanced_subset(labels, 14, seed=0)
    row = lambda a, ips: {"image_auroc": a, "pixel_auroc": a, "aupro": a, "images_per_s": ips}
    runs = [{"ref": row(0.8, 1.0), "fast": row(0.76, 50.0)}, {"ref": row(0.5, 2.0), "fast": row(0.55, 100.0)}]
    r = image_steps.ratios(runs)
    assert r["fast"]["image_auroc"]["per_seed"] == pytest.approx([0.95, 1.1])
    assert r["fast"]["image_auroc"]["mean"] == pytest.approx(1.025)
    assert r["fast"]["images_per_s"]["mean"] == pytest.approx(50.0)
    assert r["ref"]["aupro"]["mean"] == pytest.approx(1.0)


def test_video_benchmark_smoothed_baselines_match_the_detector_filter():
    """Each baseline gains a smoothed copy made with the detector's own temporal filter; the
    unsmoothed scores are kept as they were."""
    from adiff.detectors.video import _smooth1d
    from experiments.benchmarks import video as video_bench
    s = {"b": [np.array([0.0, 0.0, 5.0, 0.0, 0.0]), np.array([1.0, 2.0])]}
    out = video_bench.with_smoothed(s, 1.0)
    assert list(out) == ["b", "b + temporal smoothing (sigma 1)"]
    assert out["b"] is s["b"]
    sm = out["b + temporal smoothing (sigma 1)"]
    np.testing.assert_allclose(sm[0], _smooth1d(s["b"][0], 1.0))
    assert sm[0][2] < 5.0 and sm[0][1] > 0.0 and sm[0].sum() == pytest.approx(5.0, rel=0.2)


def test_core_elbo_benchmark_writes_its_section(tmp_path):
    out = tmp_path / "core.md"
    out.write_text("# Core benchmarks\n\n## Likelihood\n\n<!-- BEGIN likelihood -->\nkept\n<!-- END likelihood -->\n")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmarks.core_elbo", "--dims=2",
                           "--samples=16", "--keys=2", "--repeats=1", "--rtol=1e-3", "--atol=1e-3",
                           f"--output={out}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "kept" in text  # the likelihood section is left alone
    section = text.split("<!-- BEGIN elbo -->")[1].split("<!-- END elbo -->")[0]
    rows = [l for l in section.splitlines() if l.startswith("| 2 |")]
    assert len(rows) == 2 and "ELBO, S = 16" in rows[1]


def test_video_benchmark_ped2_rows_are_complete_scoring_settings():
    """Every extra Ped2 row sets all scoring keys (so it does not inherit the config's score), and
    the configured score is one of them (that row is then the configured row, not repeated)."""
    from experiments.benchmarks import video as video_bench
    from experiments.configs import video_ped2
    det = dict(video_ped2.get_config().detector)
    configured = {k: video_bench._norm_value(det.get(k, 0.0)) for k in video_bench._SCORE_KEYS}
    matches = 0
    for _, extra in video_bench._PED2_VARIANTS:
        assert set(extra) == set(video_bench._SCORE_KEYS)
        matches += {k: video_bench._norm_value(v) for k, v in extra.items()} == configured
    assert matches == 1
    assert "temporal smoothing sigma 2" in video_bench._name(det)


def test_video_benchmark_rewrite_keeps_the_text_below_the_marker(tmp_path):
    from experiments.benchmarks import video as video_bench
    out = tmp_path / "video.md"
    proc = {"seed": 0, "variant": "standard", "num_train": 1, "num_test_per_type": 1, "num_frames": 4,
            "size": 8, "fit_seconds": 1.0, "detector": {},
            "results": {"m": {k: 0.5 for k in ("speed", "direction", "acceleration", "appearance", "all")}}}
    video_bench._write(out, None, proc, "cmd", 1.0)
    assert out.read_text().rstrip().endswith(video_bench.KEEP_MARKER)
    out.write_text(out.read_text() + "\n## Session notes\nhand-written\n")
    proc["results"]["m"]["speed"] = 0.75
    video_bench._write(out, None, proc, "cmd2", 1.0)
    text = out.read_text()
    assert "| m | 0.750 |" in text and "`cmd2`" in text and "`cmd`" not in text
    assert text.count(video_bench.KEEP_MARKER) == 1 and text.endswith("## Session notes\nhand-written\n")
