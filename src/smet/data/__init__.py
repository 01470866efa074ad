"""Data package: corpora, tokenizers and the Lightning data module for packed LM pre-training.

Public API::

    from smet.data import build_datamodule, LMDataModule, check_hub_reachable
"""

from smet.data.config import DataConfig, parse_data_config
from smet.data.datamodule import LMDataModule, build_datamodule
from smet.data.hub import check_hub_reachable
from smet.data.packing import StreamBatchSampler

__all__ = [
    "DataConfig",
    "LMDataModule",
    "StreamBatchSampler",
    "build_datamodule",
    "check_hub_reachable",
    "parse_data_config",
]
