"""Shared test setup: absl flags parsed (grain needs it), data-directory lookup."""
import os
import pathlib
import shutil
import tempfile

import pytest
from absl import flags

# XLA compiler flags for the test processes (set before any test module imports jax; subprocess
# and notebook tests pass them on through ADIFF_TEST_XLA_FLAGS). The suite compiles hundreds of
# small programs once each and runs them on tiny inputs, so compile time dominates it: with the
# backend at optimisation level 0 and LLVM's expensive passes off, scoring_test ran in 64 s
# instead of 80 s and image_test in 130 s instead of 187 s (session 14, one run each, 2 cores).
# They trade the compiled code's speed for compile time; results may differ from the defaults'
# in the last bits (other fusions), and the suite passes with either setting (22:01 with the
# defaults, 17:18 with these, same machine). Benchmarks and users keep XLA's defaults;
# ADIFF_TEST_FULL_OPT=1 runs the tests with them too.
TEST_XLA_FLAGS = ("" if os.environ.get("ADIFF_TEST_FULL_OPT") == "1" else
                  "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("ADIFF_TEST_XLA_FLAGS", TEST_XLA_FLAGS)
if os.environ["ADIFF_TEST_XLA_FLAGS"] not in os.environ.get("XLA_FLAGS", ""):  # xdist workers inherit it
    os.environ["XLA_FLAGS"] = " ".join(
        f for f in (os.environ.get("XLA_FLAGS", ""), os.environ["ADIFF_TEST_XLA_FLAGS"]) if f)

# A persistent compilation cache shared by the test processes of one run (xdist workers and the
# subprocesses that inherit the environment): many tests compile the same programs again (a
# detector fitted twice with one seed, a training run resumed after a kill, forward and reversed
# video models of one shape), and a cached executable is the one a fresh compile would give.
# Measured on 2 cores (session 18): determinism_test 59 s -> 47 s, the video bidirectional test
# 92 s -> 69 s, from a cold cache. A fresh directory per run (made by the controlling process,
# inherited by the workers, removed at the end), so a run never reads an earlier run's cache;
# ADIFF_TEST_JAX_CACHE=0 turns it off, and a JAX_COMPILATION_CACHE_DIR of the user's is kept.
_OWN_CACHE = None
if (os.environ.get("ADIFF_TEST_JAX_CACHE", "1") != "0"
        and "JAX_COMPILATION_CACHE_DIR" not in os.environ):
    _OWN_CACHE = tempfile.mkdtemp(prefix="adiff-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
    del config
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("ADIFF_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


# Parallel runs (`pytest -n 2 --dist loadgroup`, the README's command): the tests of one module
# share a worker, so its module-scoped fitted detectors and its jit caches are built once rather
# than once per worker; the notebook executions share no fixture and are the longest tests, so
# they are spread over the workers one by one (grouped, they ran back to back on one worker).
_UNGROUPED_MODULES = {"colabs_test"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.stem not in _UNGROUPED_MODULES:
            item.add_marker(pytest.mark.xdist_group(name=item.path.stem))
