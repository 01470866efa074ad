"""``train.py`` with Lightning's DeepSpeed strategy allowed on CPU processes (tests only).

Lightning's ``DeepSpeedStrategy`` refuses any accelerator but CUDA (``setup_environment``), checks CUDA device
indices and passes ``root_device.index`` (None on CPU) to ``deepspeed.initialize``. DeepSpeed itself runs on CPU
with its CPU accelerator (``DS_ACCELERATOR=cpu``, gloo). This file lifts those three CUDA-only guards (and smet's own refusal of them) and runs
``train.py`` unchanged, so CI exercises the real DeepSpeed engine (ZeRO partitions, checkpoint directories)
under Lightning and smet's hooks; the GPU run (scripts/gpu-issue17-zero.sh) is the real thing. Lightning's
launcher re-runs this file for ranks > 0, so every rank gets the same patches.

    python tests/ds_cpu_train.py trainer=deepspeed trainer.accelerator=cpu trainer.precision=32 sparsity=smet ...
"""

import os
import runpy
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy  # noqa: E402
import lightning.pytorch.strategies.deepspeed as _ds  # noqa: E402
import lightning.pytorch.strategies.launchers.subprocess_script as _launch  # noqa: E402

import smet.config  # noqa: E402

smet.config.DEEPSPEED_ON_CPU = True  # train.py refuses trainer=deepspeed without CUDA otherwise (one line, exit 2)
DeepSpeedStrategy.setup_environment = DDPStrategy.setup_environment
DeepSpeedStrategy.root_device = property(lambda self: torch.device("cpu", 0))
_ds._validate_device_index_selection = lambda devices: None

_SELF = str(Path(__file__).resolve())
_hydra_cmd = _launch._hydra_subprocess_cmd


def _through_this_file(local_rank: int):  # ranks > 0 run this file too (runpy set sys.argv[0] to train.py)
    command, cwd = _hydra_cmd(local_rank)
    return [command[0], _SELF, *command[2:]], cwd


_launch._hydra_subprocess_cmd = _through_this_file

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "train.py"), run_name="__main__")
