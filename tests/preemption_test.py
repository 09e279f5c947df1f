"""Preemption-safe training: SIGKILL at random steps and SIGTERM, restart, bitwise-equal result.

Runs experiments/train_tiny.py (configs/tiny.py, shortened) as a subprocess: an uninterrupted run
gives the reference final_metrics.json (global step + SHA-256 of params and EMA params); a second
workdir is killed with SIGKILL three times at random steps (restarted each time), then sent
SIGTERM (a checkpoint at the current step, exit status 143), then run to completion. The final
checksums must equal the reference's. Time budget: ~40 s on an idle 2-core machine (six short
subprocesses, the reference run in parallel with the interrupted ones).
"""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 120
OVERRIDES = [f"--config.train.num_steps={NUM_STEPS}", "--config.train.checkpoint_every=10",
             "--config.train.log_every=2", "--config.train.warmup_steps=5",
             "--config.train.keep_checkpoints=2", "--config.data.num_rows=512"]
DELAY = ["--config.step_delay_s=0.03"]  # ~30 ms per step so a kill lands mid-run
TIMEOUT_S = 120


def _env():
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["XLA_FLAGS"] = os.environ.get("ADIFF_TEST_XLA_FLAGS", "")  # no device count from a parent
    return env


def _cmd(workdir, extra=()):
    return [sys.executable, "-m", "experiments.train_tiny", f"--workdir={workdir}", *OVERRIDES,
            *extra]


def _logged_step(workdir: pathlib.Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return -1
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    try:
        return json.loads(lines[-1])["step"] if lines else -1
    except json.JSONDecodeError:  # a line being written
        return -1


def _checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def _start(workdir):
    return subprocess.Popen(_cmd(workdir, DELAY), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _interrupt_at(workdir: pathlib.Path, target: int, sig: int) -> tuple[int, int, str]:
    """Starts a run, waits until it has logged step >= target, sends `sig`; (rc, step, output)."""
    proc = _start(workdir)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while _logged_step(workdir) < target:
            if proc.poll() is not None:
                out = proc.stdout.read()
                pytest.fail(f"run finished (rc={proc.returncode}) before step {target}:\n{out[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"run did not reach step {target} within {TIMEOUT_S} s")
            time.sleep(0.005)
        step = _logged_step(workdir)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, step, out


def _final(workdir: pathlib.Path) -> dict:
    return json.loads((workdir / "final_metrics.json").read_text())


def _reference(proc, workdir) -> dict:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, out[-3000:]
    final = _final(workdir)
    assert final["step"] == NUM_STEPS and final["start_step"] == 0
    assert len(final["params_sha256"]) == 64 and len(final["ema_params_sha256"]) == 64
    return final


@pytest.mark.slow
def test_sigkill_three_times_then_sigterm_resumes_bitwise(tmp_path):
    # The uninterrupted reference run goes alongside (no delay, its own workdir).
    ref_dir = tmp_path / "uninterrupted"
    ref_proc = subprocess.Popen(_cmd(ref_dir), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        _interrupted_sequence(tmp_path / "interrupted", lambda: _reference(ref_proc, ref_dir))
    finally:
        if ref_proc.poll() is None:
            ref_proc.kill()
            ref_proc.wait()


def _interrupted_sequence(tmp_path: pathlib.Path, get_reference):
    rng = np.random.default_rng(int(time.time()) % 2**31)
    # Three random SIGKILL steps in separate windows, then a SIGTERM step after them.
    targets = [int(rng.integers(lo, lo + 20)) for lo in (6, 36, 66)]
    starts = []
    for target in targets:
        rc, step, out = _interrupt_at(tmp_path, target, signal.SIGKILL)
        assert rc == -signal.SIGKILL, out[-3000:]
        assert not (tmp_path / "final_metrics.json").exists()
        kept = _checkpoint_steps(tmp_path)
        # At most the steps since the last complete checkpoint are lost.
        last = kept[-1] if kept else 0
        # At most the steps since the last complete checkpoint are lost (one save may have been
        # in flight when the kill landed).
        assert step - last < 2 * 10 + 2, (step, kept)
        starts.append(last)
    sigterm_target = int(rng.integers(96, 106))
    rc, step, out = _interrupt_at(tmp_path, sigterm_target, signal.SIGTERM)
    assert rc == 143, out[-3000:]
    saved = [int(m) for m in re.findall(r"SIGTERM: checkpoint saved at step (\d+)", out)]
    assert len(saved) == 1 and step <= saved[0] < NUM_STEPS, (step, saved, out[-2000:])
    assert _checkpoint_steps(tmp_path)[-1] == saved[0]
    assert not (tmp_path / "final_metrics.json").exists()

    res = subprocess.run(_cmd(tmp_path), cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    final = _final(tmp_path)
    reference = get_reference()
    assert final["start_step"] == saved[0]  # resumed from the SIGTERM checkpoint itself
    assert final["step"] == reference["step"] == NUM_STEPS
    assert final["params_sha256"] == reference["params_sha256"], (targets, sigterm_target)
    assert final["ema_params_sha256"] == reference["ema_params_sha256"]
    # Every restart resumed from a later checkpoint than the previous one.
    assert starts == sorted(starts) and starts[0] >= 0

