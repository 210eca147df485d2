"""Process environment every rank sets before torch.distributed initialises."""

import os

# NVLink multicast (NVLS) off in NCCL, PyTorch's symmetric memory and NVSHMEM: the GPU machines this is run on
# do not support it, and NCCL would otherwise try it on NVSwitch systems.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def disable_multicast(env=os.environ) -> dict:
    for key, value in MULTICAST_OFF.items():
        env[key] = value
    return env
