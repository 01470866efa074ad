#!/usr/bin/env python
"""Train a (sparse) LLaMA-style LM. Hydra entry point; see README.md and `python train.py --help`.

    python train.py                                   # tiny model, embedded corpus, CPU
    python train.py model=60m trainer=gpu             # any group/key override
    python train.py +experiment=ablation_warmup       # an experiment preset
    python train.py -m +experiment=ablation_warmup    # its sweep (Hydra multirun)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # run from a checkout without installing

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base=None, config_path="conf", config_name="train")
def main(cfg: DictConfig):
    from smet.cli.train import main_with_errors

    summary = main_with_errors(cfg)
    return None if summary is None else summary.get("val_loss")  # the value Hydra sweepers optimise


if __name__ == "__main__":
    from smet.cli.train import precheck_output_dirs

    from smet.preflight import main_check

    precheck_output_dirs(sys.argv[1:])  # an unwritable output dir: one clear line before Hydra starts
    main_check(sys.argv[1:])  # bad overrides/keys, every grid point, an existing run: one line, exit 2
    main()
