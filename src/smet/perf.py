"""Model FLOPs utilisation (MFU): the one definition shared by training and ``smet-bench``.

Pure PyTorch (no Lightning), so ``smet-bench`` can use it on a machine without Lightning/Hydra.

Convention (the same everywhere in smet): achieved FLOP/s = 6 * N * tokens/s, N = model
parameters EXCLUDING the input embedding (a lookup, no matmul) but including the LM head and the
norms; attention-score FLOPs are not counted. Two N's:

* ``N_dense`` = ``LlamaConfig.num_params(include_embedding=False)``: every weight counted as if
  active (``smet.models.llama.flops_per_token`` = 6 * N_dense); MFU against what a dense model
  of the same shape would do;
* ``N_active`` = ``SparseController.active_params_excluding_embedding()``: only the active weights
  of the sparse layers (plus all the dense ones); equals N_dense for a dense model.

The peak is the device's DENSE bf16 tensor-core peak (vendor datasheet, no 2:4 sparsity), whatever
the training precision.
"""

from __future__ import annotations

import torch

# Dense bf16 tensor-core peak (FLOP/s) by device-name substring, vendor datasheets (no sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "4090": 165e12,
    "V100": 125e12,
}


def peak_flops_for(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of a CUDA device from :data:`PEAK_BF16_FLOPS` (None on CPU / unknown)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, val in PEAK_BF16_FLOPS.items():
        if key in name:
            return val
    return None


def mfu(tokens_per_s: float | None, flops_per_token: float | None, peak_flops: float | None,
        world: int = 1) -> float | None:
    """tokens/s * flops_per_token / (peak_flops * world); None when any input is missing."""
    if not tokens_per_s or not flops_per_token or not peak_flops:
        return None
    return float(tokens_per_s) * float(flops_per_token) / (float(peak_flops) * int(world))
