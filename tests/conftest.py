"""Shared test setup: absl flags parsed (grain needs it), data-directory lookup."""
import os
import pathlib

import pytest
from absl import flags

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
