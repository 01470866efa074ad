"""``smet-bench --profile DIR``: 2 steady steps of a run under torch.profiler.

The harness's step (``smet.sparse.train_step``) names its phases ``smet/forward``,
``smet/backward`` and ``smet/optimizer`` (``torch.profiler.record_function``); the record gets the
per-phase host / device time and the device kernel launches per step, DIR/<label>.txt the top ops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def phase(name: str):
    """A profiler range (free when no profiler is running)."""
    import torch

    return torch.profiler.record_function(name)


def safe_name(label: str) -> str:
    """A file name of a run label: ``smet d=0.5 transient`` -> ``smet_d_0.5_transient``."""
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in label)


def profile_run(run, data, out_dir: Path, label: str) -> dict[str, Any]:
    """Profile 2 steady steps: per-phase wall/device time, kernel launches, top ops -> a text table."""
    import torch

    from smet.bench.harness import sync, timed_step

    acts = [torch.profiler.ProfilerActivity.CPU]
    if run.device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    for _ in range(2):
        timed_step(run, data)
    sync(run.device)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(2):
            timed_step(run, data)
        sync(run.device)
    events = prof.key_averages()
    phases: dict[str, dict[str, float]] = {}
    for e in events:
        if e.key.startswith("smet/"):
            phases[e.key[5:]] = {"host_ms": e.cpu_time_total / 1000 / 2,
                                 "device_ms": getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0)) / 1000 / 2}
    kernels = sum(e.count for e in events if getattr(e, "device_type", None) is not None
                  and str(e.device_type).endswith("CUDA") and e.key and not e.key.startswith("smet/")) / 2
    sort_key = "self_cuda_time_total" if run.device.type == "cuda" else "self_cpu_time_total"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{safe_name(label)}.txt").write_text(events.table(sort_by=sort_key, row_limit=40))
    return {"phases_per_step": phases, "device_ops_per_step": kernels}
