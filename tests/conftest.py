"""Shared test setup. TRITON_INTERPRET=1 is set before anything imports triton, so every Triton kernel
runs (not skips) on CPU under the interpreter."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def digits():
    from bioplaus.data import digits as load

    return load()


@pytest.fixture
def compose():
    """compose(*overrides) -> the bioplaus-run config, as Hydra composes it for the CLI."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    def _compose(*overrides):
        with initialize_config_module(config_module="bioplaus.configs", version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))

    return _compose


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (restored afterwards): tiny nets and small graphs run fastest on one
    thread, and two threads on a busy 2-core machine spin-wait for each other (up to 8x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
