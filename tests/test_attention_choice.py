"""The attention decision (wan.attention.choose_attention): made once from the user's choice, the device's capability,
the compute dtype and the installed packages. (That the loader's model runs it and its log names it is checked in
test_loader_workflow.py, with ComfyUI.)

A CUDA device is stood in for by its capability (torch.cuda.get_device_capability patched), so the GPU rules are
checked on any machine; no kernel runs in those checks.
"""

import pytest
import torch

from lightx2v_nodes.errors import LightX2VError
from lightx2v_nodes.wan import attention
from lightx2v_nodes.wan.attention import BACKENDS, choose_attention


@pytest.fixture
def gpu(monkeypatch):
    """choose_attention's view of a CUDA GPU of a given compute capability, with Triton installed."""

    def make(capability):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"a GPU of capability {capability}")
        real = attention._installed
        monkeypatch.setattr(attention, "_installed", lambda package: package == "triton" or real(package))
        return torch.device("cuda")

    return make


def test_auto_with_fp32_compute_is_exact_attention(gpu):
    device = gpu((9, 0))
    backend = choose_attention("auto", device, torch.float32)
    assert backend.name == "sdpa" and backend.from_projections is None
    assert "fp32" in backend.description


@pytest.mark.parametrize("capability", [(8, 9), (9, 0), (10, 0), (12, 0)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_auto_picks_the_8bit_kernel_where_it_can_run(gpu, capability, dtype):
    backend = choose_attention("auto", gpu(capability), dtype)
    assert backend.name == "lightx2v-int8" and backend.from_projections is not None
    assert backend.description.startswith("lightx2v-int8 (auto")


@pytest.mark.parametrize("requested", ["auto", "lightx2v-int8"])
def test_no_fp8_tensor_cores_runs_sdpa_and_says_why(gpu, requested):
    backend = choose_attention(requested, gpu((8, 6)), torch.bfloat16)
    assert backend.name == "sdpa" and backend.from_projections is None
    assert "fp8 tensor cores" in backend.description and "8.6" in backend.description


def test_requested_8bit_on_the_cpu_reports_sdpa():
    pytest.importorskip("triton")  # without Triton the request is an error (below)
    backend = choose_attention("lightx2v-int8", torch.device("cpu"), torch.bfloat16)
    assert backend.name == "sdpa"
    assert backend.description.startswith("sdpa instead of the requested lightx2v-int8")
    q, k, v = (torch.randn(1, 40, 2, 64) for _ in range(3))
    assert torch.equal(backend.call(q, k, v), attention.SDPA.call(q, k, v))


def test_requested_8bit_with_fp32_compute_reports_sdpa(gpu):
    backend = choose_attention("lightx2v-int8", gpu((9, 0)), torch.float32)
    assert backend.name == "sdpa" and "float32" in backend.description


def test_auto_on_the_cpu_is_sdpa():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert choose_attention("auto", torch.device("cpu"), dtype).name == "sdpa"


def test_8bit_backend_routes_short_key_sequences_and_other_head_dims_to_sdpa():
    """The only per-call routing: by shape. These calls never reach the kernel, so they run on the CPU."""
    backend = attention.eight_bit_backend()
    for keys, head_dim in ((40, 64), (attention.MIN_KEYS_8BIT - 1, 128), (attention.MIN_KEYS_8BIT, 96)):
        q = torch.randn(1, 8, 2, head_dim)
        k, v = torch.randn(1, keys, 2, head_dim), torch.randn(1, keys, 2, head_dim)
        assert torch.equal(backend.call(q, k, v), attention.SDPA.call(q, k, v)), (keys, head_dim)


def test_bad_choices_are_named():
    with pytest.raises(LightX2VError, match="Unknown attention backend 'xformers-magic'"):
        choose_attention("xformers-magic", torch.device("cpu"), torch.float32)
    for backend, package in (("sage", "sageattention"), ("flash", "flash_attn")):
        if not attention._installed(package):
            with pytest.raises(LightX2VError, match=f"needs the Python package '{package}'"):
                choose_attention(backend, torch.device("cpu"), torch.bfloat16)


def test_every_choice_the_loader_offers_resolves_on_the_cpu():
    for name in BACKENDS:
        if name in ("sage", "flash") and not attention._installed({"sage": "sageattention", "flash": "flash_attn"}[name]):
            continue
        if name == "lightx2v-int8" and not attention._installed("triton"):
            continue
        assert choose_attention(name, torch.device("cpu"), torch.float32).name == "sdpa", name
