"""Which GPUs the fast path runs on, decided without one: GPUs older than the compile gate's targets (the paper's
GTX 1080 Ti, sm_61; Volta and Turing) get one warning line and the reference path; Ampere and newer (sm_80+) get
the Triton kernels."""
import pytest
import torch

from vidgan_fast.fast import backend


@pytest.fixture
def fake_gpu(monkeypatch):
    def install(name, capability):
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)           # a compiled run on a GPU
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        backend._cuda_reason.cache_clear()
    yield install
    backend._cuda_reason.cache_clear()


def test_gtx_1080_ti_takes_the_reference_path_with_one_line(fake_gpu):
    fake_gpu("NVIDIA GeForce GTX 1080 Ti", (6, 1))
    reason = backend.triton_unavailable_reason(torch.device("cuda", 0))
    assert reason == "GPU NVIDIA GeForce GTX 1080 Ti (sm_61) is older than the kernels are built and checked for (sm_80)"
    assert "\n" not in reason


@pytest.mark.parametrize("capability", [(7, 0), (7, 5)])
def test_volta_and_turing_take_the_reference_path(fake_gpu, capability):
    fake_gpu("some GPU", capability)
    assert "older than the kernels are built" in backend.triton_unavailable_reason(torch.device("cuda", 0))


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (8, 9), (9, 0)])
def test_ampere_and_newer_run_the_kernels(fake_gpu, capability):
    fake_gpu("some GPU", capability)
    assert backend.triton_unavailable_reason(torch.device("cuda", 0)) is None
