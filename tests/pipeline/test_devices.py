import pytest
import torch

from node.pipeline.devices import DeviceError, supported_precisions


def test_a_cpu_computes_every_declared_precision():
    assert supported_precisions("cpu") == ("fp32", "bf16", "fp16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_cuda_device_on_a_machine_without_one_is_refused_in_a_line():
    with pytest.raises(DeviceError, match="no CUDA or ROCm device"):
        supported_precisions("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm device; none on this machine")
def test_a_cuda_device_computes_fp32_and_fp16_and_bf16_where_it_has_it():
    assert supported_precisions("cuda")[:1] == ("fp32",) and "fp16" in supported_precisions("cuda")
    assert ("bf16" in supported_precisions("cuda")) == torch.cuda.is_bf16_supported()


def test_a_name_torch_does_not_know_is_refused():
    with pytest.raises(DeviceError, match="not a torch device"):
        supported_precisions("gpu0")
