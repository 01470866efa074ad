"""Exporting trained checkpoints: a dense Hugging Face LLaMA directory and a compact sparse file.

    from smet.export import export_checkpoint, load_compact
    export_checkpoint("outputs/2026-01-01/12-00-00-000000", "export/run1", fmt="both")
    model = load_compact("export/run1")          # our LlamaForCausalLM with SparseLinear layers

The console script is ``smet-export`` (:mod:`smet.cli.export`).
"""

from __future__ import annotations

from smet.export.compact import COMPACT_CONFIG, COMPACT_WEIGHTS, load_compact
from smet.export.exporter import DTYPES, FORMATS, ExportResult, ExportWarning, export_checkpoint
from smet.export.hf import HF_WEIGHTS
from smet.export.source import ExportError, load_run

__all__ = ["COMPACT_CONFIG", "COMPACT_WEIGHTS", "DTYPES", "FORMATS", "HF_WEIGHTS", "ExportError", "ExportResult",
           "ExportWarning", "export_checkpoint", "load_compact", "load_run"]
