"""One Prefect test server for the whole session and a private PREFECT_HOME (the tiny model folder
the flows load by path is `tiny_model_dir` in tests/conftest.py)."""

from __future__ import annotations

import os
import tempfile

# Before Prefect is imported anywhere: keep its home (profiles, local result storage, logs) out of
# the user's ~/.prefect.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="selfexplain-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import pytest  # noqa: E402

FAST = {"max_new_tokens": 4, "batch_rows": 32, "top_scales": 1, "min_scale": 0.4}
"""Engine overrides that keep a tiny-model run to a second or two."""


@pytest.fixture(scope="session", autouse=True)
def _prefect(prefect_server):
    """The session's Prefect test server (tests/conftest.py), shared with tests/reliability."""
    import torch

    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
    # spin-waiting made a 0.1 s shard take 10 s.
    torch.set_num_threads(1)
    yield


@pytest.fixture
def fast():
    return dict(FAST)
