"""Meta-training tests run single-threaded: their tensors are small, and on a shared 2-core machine
intra-op threads spinning against other processes cost several times the work itself."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
