"""LightningModule wrapping the (optionally sparse) LLaMA model and its optimizer."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from smet.models.llama import build_model
from smet.optim import build_optimizer, lr_lambda
from smet.sparse import attach_sparsity


def _plain(cfg: Any) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


class LMModule(L.LightningModule):
    """Causal-LM pre-training: loss, validation perplexity, LR schedule, sparse hooks.

    ``cfg`` is the resolved run config (a dict with keys model, sparsity, optimizer, data, trainer ...).
    """

    def __init__(self, cfg: dict, vocab_size: int):
        super().__init__()
        cfg = _plain(cfg)
        self.save_hyperparameters({"cfg": cfg, "vocab_size": vocab_size})
        self.cfg = cfg
        self.model = build_model(cfg["model"], vocab_size=vocab_size, max_seq_len=cfg["data"]["seq_len"])
        # None for the dense baseline; else the controller of the compact sparse layers
        self.sparse = attach_sparsity(self.model, cfg.get("sparsity") or {"method": "dense"},
                                      total_steps=int(cfg["trainer"]["max_steps"]), seed=int(cfg.get("seed", 0)))
        if self.sparse is not None:
            precision = str(cfg["trainer"].get("precision", "32"))
            self.sparse.set_dense_dtype(torch.bfloat16 if precision.startswith("bf16") else torch.float32)
        self.last_loss: torch.Tensor | None = None
        self._val_sum = None
        self._val_count = None
        self.last_val_step: int | None = None

    # ------------------------------------------------------------------ training
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def _loss(self, batch: torch.Tensor) -> torch.Tensor:
        x, y = batch[:, :-1], batch[:, 1:]
        return self.model.loss(x, y)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.last_loss = loss.detach()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        opt = self.optimizers()
        if isinstance(opt, list):  # pragma: no cover - one optimizer by construction
            opt = opt[0]
        self.log("train/lr", opt.param_groups[0]["lr"], on_step=True, on_epoch=False)

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_count = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        loss = self._loss(batch)
        n = batch.shape[0]
        self._val_sum += loss.detach().double() * n
        self._val_count += n

    def on_validation_epoch_end(self) -> None:
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._val_count, reduce_op="sum")
        if float(count) == 0:
            return
        val_loss = float(total / count)
        self.log("val/loss", val_loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", math.exp(min(val_loss, 50.0)), prog_bar=True, sync_dist=False)
        self.last_val_step = self.trainer.global_step

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.sparse is not None:
            checkpoint["smet_sparse"] = self.sparse.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.sparse is not None and "smet_sparse" in checkpoint:
            self.sparse.load_state_dict(checkpoint["smet_sparse"])

    # ----------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        ocfg = self.cfg["optimizer"]
        optimizer = build_optimizer(self.model, ocfg, sparse=self.sparse)
        total = int(self.cfg["trainer"]["max_steps"])
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(ocfg, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}
