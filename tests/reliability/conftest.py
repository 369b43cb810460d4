"""Fixtures of the reliability suite: a tiny model folder and SAE file on disk, and a forkserver
for relabel processes that can be SIGKILLed (helpers live in rel_common.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rel_common import D_MODEL, D_SAE, relabel_args, write_raw_sae
from cli.cli import main


@pytest.fixture(scope="session")
def model_dir(tiny_model_dir) -> str:
    """The session's tiny Llama folder (tests/conftest.py), saved once for every suite."""
    return tiny_model_dir


@pytest.fixture(scope="session")
def sae_file(tmp_path_factory) -> str:
    decoder = torch.randn(D_SAE, D_MODEL, generator=torch.Generator().manual_seed(0))
    return str(write_raw_sae(tmp_path_factory.mktemp("rel_sae") / "tiny_sae.safetensors", decoder))


@pytest.fixture(scope="session")
def procs(prefect_server):
    """A forkserver for `selfexplain relabel` processes, talking to the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    import relabel_proc

    with relabel_proc.forkserver({"PREFECT_API_URL": PREFECT_API_URL.value(),
                                  "PREFECT_LOGGING_LEVEL": "INFO",  # shard progress in the logs
                                  "OMP_NUM_THREADS": "1"}) as ctx:
        yield ctx


@pytest.fixture(scope="session")
def clean(prefect_server, model_dir, sae_file, tmp_path_factory) -> Path:
    """An undisturbed in-process run of features 0-5 (shards of 3). Tests copy it, never write it:
    a filled warehouse to keep unchanged, or the rows a disturbed run must end with."""
    path = tmp_path_factory.mktemp("clean") / "w.duckdb"
    assert main(relabel_args(model_dir, sae_file, path, "0-5")) == 0
    return path
