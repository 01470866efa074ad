"""LightningModule wrapping the (optionally sparse) LLaMA model and its optimizer."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from smet.build import Training, build_training

log = logging.getLogger("smet")


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states in types torch.load(weights_only=True) accepts."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.copy()), int(pos), int(has_gauss),
                                                     float(cached)], "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(cfg: Any) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def _is_fsdp(strategy) -> bool:
    from lightning.pytorch.strategies import ModelParallelStrategy

    return isinstance(strategy, ModelParallelStrategy)


def _is_deepspeed(strategy) -> bool:
    try:
        from lightning.pytorch.strategies import DeepSpeedStrategy
    except ImportError:  # pragma: no cover - lightning without the deepspeed strategy
        return False
    return isinstance(strategy, DeepSpeedStrategy)


class LMModule(L.LightningModule):
    """Causal-LM pre-training: loss, validation perplexity, LR schedule, sparse hooks.

    ``cfg`` is the resolved run config (a dict with keys model, sparsity, optimizer, data, trainer ...).
    """

    def __init__(self, cfg: dict, vocab_size: int, defer_init: bool = False):
        """``defer_init``: build the model on the meta device now and allocate + initialise it on the
        strategy's device in :meth:`configure_model` (``smet.build``): the dense weights of sparse
        layers are never allocated and nothing model-sized passes through host RAM (LLaMA-13B).
        ``smet-train`` uses it on CUDA (see ``smet.cli.train.defer_init``). Initial masks then come
        from a CUDA generator (``smet.sparse.topology.init_sparse_layers``). Default: the classic
        build on CPU (bit-identical to earlier versions); Lightning moves it to the device."""
        super().__init__()
        cfg = _plain(cfg)
        # logger=False: the loggers get the run config once, at their creation (W&B showed it twice, also as `cfg`)
        self.save_hyperparameters({"cfg": cfg, "vocab_size": vocab_size}, logger=False)
        self.cfg = cfg
        self._deferred_init = bool(defer_init)
        # smet.build: Lightning places and converts the model (device=None); deferred: the controller
        # holds meta compact layers until configure_model. The optimizer comes in configure_optimizers.
        self._built: Training = build_training(cfg, None, vocab_size=vocab_size, defer=self._deferred_init)
        self.model = self._built.model
        # None for the dense baseline; else the controller of the compact sparse layers
        self.sparse = self._built.controller
        # train/max_logit: the largest output logit of each training batch (LlamaForCausalLM.loss)
        self.model.track_max_logit = True
        self.last_loss: torch.Tensor | None = None
        # non-finite loss/gradients: skip the step (default), stop with a checkpoint, or off
        self.nonfinite_policy = str(cfg["trainer"].get("on_nonfinite", "skip"))
        self.nonfinite_events: list[tuple[int, str]] = []
        self.nonfinite_stop: int | None = None
        self.nonfinite_limit = int(cfg["trainer"].get("max_consecutive_nonfinite") or 20)
        self.nonfinite_run = 0  # consecutive skipped steps (skip escalates to a stop at nonfinite_limit)
        self.nonfinite_reason: str | None = None
        self.skip_topology_update = False
        self._val_sum = None
        self._val_count = None
        self.last_val_step: int | None = None

    # ------------------------------------------------------------------ deferred init
    def materialize(self, device: torch.device | str) -> None:
        """Allocate and initialise a meta-built model on ``device`` (no-op when already done)."""
        if not getattr(self, "_deferred_init", False):
            return
        self._built.materialize(device)
        self._deferred_init = False

    def configure_model(self) -> None:
        """Lightning hook (before checkpoint restore and optimizer setup): deferred init on the
        strategy's root device (each DDP rank its own GPU). Also called by ``load_from_checkpoint``
        (no trainer attached; nothing deferred there)."""
        trainer = self._trainer
        if getattr(self, "_deferred_init", False):
            self.materialize(trainer.strategy.root_device if trainer is not None else torch.device("cpu"))
        if trainer is not None and _is_fsdp(trainer.strategy) and not getattr(self, "_sharded", False):
            self._shard(trainer)

    def _shard(self, trainer) -> None:
        """``trainer=fsdp``: FSDP2 over the data-parallel mesh (``smet.build.fully_shard_llama``), after the
        precision plugin's dtype conversion (FSDP2 shards the parameters as they are then)."""
        from smet.build import fully_shard_llama

        self.model.to(trainer.strategy.root_device)
        trainer.precision_plugin.convert_module(self.model)
        fully_shard_llama(self.model, self.device_mesh["data_parallel"], self.sparse)
        self._sharded = True

    # ------------------------------------------------------------------ training
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def _loss(self, batch: torch.Tensor) -> torch.Tensor:
        x, y = batch[:, :-1], batch[:, 1:]
        return self.model.loss(x, y)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor | None:
        loss = self._loss(batch)
        # all ranks agree (a rank that alone skipped backward would leave the others waiting in DDP)
        if self.nonfinite_policy != "off" and not self.trainer.strategy.reduce_boolean_decision(
                bool(torch.isfinite(loss)), all=True):
            self._nonfinite("loss", float(loss))
            return None  # Lightning skips backward and the optimizer step of this batch
        self.last_loss = loss.detach()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        if getattr(self.model, "last_max_logit", None) is not None:
            self.log("train/max_logit", self.model.last_max_logit, on_step=True, on_epoch=False)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Non-finite gradients: drop them (the step updates nothing) and skip this step's topology update."""
        self.skip_topology_update = False
        if getattr(optimizer, "fused_backward", False):
            # the updates ran inside backward and freed the gradients; their norms were summed on the way
            # (trainer.on_nonfinite=skip is refused with optimizer.fused_backward: smet.config)
            norm = optimizer.pop_grad_norm()
            norms = None if norm is None else norm.unsqueeze(0)
        else:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norms = torch.stack(torch._foreach_norm(grads)).float() if grads else None
        if norms is not None:  # before clipping (Lightning clips after this hook); no host sync here
            self.log("train/grad_norm", norms.norm(), on_step=True, on_epoch=False)
        if self.nonfinite_policy == "off":
            return
        if norms is None or bool(norms.isfinite().all()):
            self.nonfinite_run = 0  # a real step: the run of skipped steps is over
            return
        self._nonfinite("gradient", float("nan"))
        for p in self.model.parameters():
            p.grad = None
        self.skip_topology_update = True

    def _nonfinite(self, what: str, value: float) -> None:
        step = self.trainer.global_step + 1
        self.nonfinite_events.append((step, what))
        self.log("train/nonfinite_events", float(len(self.nonfinite_events)), on_step=True, on_epoch=False)
        self.nonfinite_run += 1
        if self.nonfinite_policy == "stop":
            self.nonfinite_stop = step
            self.nonfinite_reason = "trainer.on_nonfinite=stop"
            self.trainer.should_stop = True
            log.error("non-finite %s (%s) at step %d: stopping (trainer.on_nonfinite=stop)", what, value, step)
        elif self.nonfinite_run >= self.nonfinite_limit:
            self.nonfinite_stop = step
            self.nonfinite_reason = (f"{self.nonfinite_run} consecutive skipped steps, "
                                     f"trainer.max_consecutive_nonfinite={self.nonfinite_limit}")
            self.trainer.should_stop = True
            log.error("non-finite %s (%s) at step %d: %d steps in a row skipped; stopping", what, value, step,
                      self.nonfinite_run)
        else:
            log.warning("non-finite %s (%s) at step %d: step skipped (trainer.on_nonfinite=skip)", what, value, step)

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

    def on_validation_end(self) -> None:
        """``trainer=fsdp``: FSDP2 keeps the root unit (embedding, final norm, head) unsharded after a forward
        (a backward would follow); after validation none does, so reshard it: otherwise every rank holds those
        parameters whole until the next training backward (docs/sharding.md, per-rank memory)."""
        if self._trainer is not None and _is_fsdp(self.trainer.strategy) and hasattr(self.model, "reshard"):
            self.model.reshard()

    def on_validation_epoch_end(self) -> None:
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._val_count, reduce_op="sum")
        if float(count) == 0:
            return
        val_loss = float(total / count)
        self.log("val/loss", val_loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", math.exp(min(val_loss, 50.0)), prog_bar=True, sync_dist=False)
        self.last_val_step = self.trainer.global_step

    def on_fit_start(self) -> None:
        """``trainer=deepspeed``: bind each sparse layer's ZeRO partition to the SMET optimizer (after
        ``deepspeed.initialize``, before a checkpoint's optimizer state is restored)."""
        if self.sparse is None or not _is_deepspeed(self.trainer.strategy):
            return
        from smet import zero

        engine = self.trainer.strategy.deepspeed_engine
        inner = zero.smet_optimizer_of(self._built.optimizer)
        if inner is None:
            raise ValueError("trainer.strategy: the SMET optimizer is not the one DeepSpeed wraps")
        zero.bind(engine.optimizer, inner)

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.sparse is not None:
            checkpoint["smet_sparse"] = self.sparse.state_dict()
        checkpoint["smet_rng"] = rng_state()
        # the run's tokenizer travels inside every checkpoint, so a .ckpt copied alone still decodes
        if getattr(self, "_tokenizer_entry", None) is None and self._trainer is not None:
            from smet.export.run_tokenizer import checkpoint_entry

            self._tokenizer_entry = checkpoint_entry(self.trainer.default_root_dir, self.hparams.get("cfg") or {}) or {}
        if getattr(self, "_tokenizer_entry", None):
            from smet.export.run_tokenizer import CKPT_KEY

            checkpoint[CKPT_KEY] = self._tokenizer_entry

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.sparse is not None and "smet_sparse" in checkpoint:
            self.sparse.load_state_dict(checkpoint["smet_sparse"])
        if "smet_rng" in checkpoint:
            set_rng_state(checkpoint["smet_rng"])

    # ----------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        # on the strategy's device, after precision conversion; under DeepSpeed ZeRO one param group per
        # sparse layer, so that each rank's flat partition is one contiguous range of one layer (smet.zero)
        deepspeed = self._trainer is not None and _is_deepspeed(self.trainer.strategy)
        optimizer = self._built.build_optimizer(per_layer_groups=deepspeed and self.sparse is not None)
        if getattr(optimizer, "fused_backward", False):
            optimizer.track_grad_norm = True  # train/grad_norm and the non-finite check
        sched = self._built.scheduler(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}
