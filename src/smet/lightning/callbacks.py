"""Training callbacks: throughput / MFU / memory monitor, end-of-run summary."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar

# the MFU definition and the peak table live in smet.perf (shared with smet-bench)
from smet.perf import PEAK_BF16_FLOPS, mfu, peak_flops_for  # noqa: E402,F401  (re-exported)


class ThroughputMonitor(L.Callback):
    """Logs tokens/s (global, all ranks), and on CUDA the peak memory and MFU.

    MFU convention: achieved FLOP/s = 6 * N * tokens/s with N = model parameters excluding the
    input embedding (dense count, i.e. as if every weight were active), attention-score FLOPs not
    counted; divided by the dense bf16 peak of the device (``peak_flops`` overrides the table)
    times the number of devices. ``train/mfu_active`` uses the active parameter count instead.
    Timing is measured between logging steps; the clock is read after a CUDA synchronise at those
    steps only (no host sync on other steps).
    """

    def __init__(self, tokens_per_step: int, flops_per_token: float, active_flops_per_token: float | None = None,
                 log_every_n_steps: int = 10, peak_flops: float | None = None):
        super().__init__()
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.active_flops_per_token = active_flops_per_token
        self.every = max(int(log_every_n_steps), 1)
        self.peak_flops = peak_flops
        self._t0: float | None = None
        self._step0 = 0
        self.last_tokens_per_s: float | None = None
        self.peak_mem_gib: float | None = None
        self._rates: list[float] = []

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        if self.peak_flops is None:
            self.peak_flops = peak_flops_for(pl_module.device)
        self._t0 = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self._t0 is None:  # first step (compilation, allocator warm-up) is not timed
            self._sync(pl_module)
            self._t0, self._step0 = time.perf_counter(), step
            return
        if step - self._step0 < self.every or step == self._step0:
            return
        self._sync(pl_module)
        now = time.perf_counter()
        steps = step - self._step0
        rate = steps * self.tokens_per_step / (now - self._t0)
        self._t0, self._step0 = now, step
        self.last_tokens_per_s = rate
        self._rates.append(rate)
        metrics = {"perf/tokens_per_s": rate}
        if pl_module.device.type == "cuda":
            metrics["perf/peak_mem_gib"] = self.peak_mem_gib = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            metrics["perf/peak_reserved_gib"] = torch.cuda.max_memory_reserved(pl_module.device) / 2**30
            if self.peak_flops:
                world = trainer.world_size
                metrics["perf/mfu"] = mfu(rate, self.flops_per_token, self.peak_flops, world)
                if self.active_flops_per_token:
                    metrics["perf/mfu_active"] = mfu(rate, self.active_flops_per_token, self.peak_flops, world)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    @property
    def mean_tokens_per_s(self) -> float | None:
        if not self._rates:
            return None
        return sum(self._rates) / len(self._rates)


class SparsityCallback(L.Callback):
    """Drives topology updates and logs what they do.

    Before each optimizer step it tells the controller which step is coming (RigL scores the
    gradient of update steps inside the backward); right after it runs the update when one is due,
    before any checkpoint of that step is written. Logs, at each update: regrown count, drop
    fraction, overall and per-layer density; at the step after: mean |update| / lr of regrown vs
    mature weights (``sparsity/update_ratio_regrown`` / ``_mature``); ``spike_window`` (k) steps
    after: the loss-spike metric = mean train loss of the k steps after the update minus the mean
    of the k steps up to it (``sparsity/spike``); from the second update on, the survival of the blocks
    regrown at the previous update (``sparsity/regrown_survival``, ``..._score_ratio``:
    ``smet.sparse.topology.survival_metrics``).

    Gradient accumulation / DDP: the RigL scoring request is made for the last micro-batch of an
    update step only (Lightning's own accumulation decision, the micro-batch DDP synchronises), so
    the cross-rank reduction of the dense gradient never runs inside ``no_sync``. With
    ``sparsity.debug_check_masks`` the ranks' masks are compared at the start of training and after
    every update (``smet.sparse.distributed``). ``SMET_DDP_TRACE=1`` (tests) writes one JSON line
    per optimizer step to ``<run dir>/ddp_trace/rank<r>.jsonl``: micro-batch losses, parameter and
    per-layer checksums, growth all-reduces issued.
    """

    def __init__(self, spike_window: int = 10, log_layer_density: bool = True, progress=None):
        super().__init__()
        self.progress = progress  # smet.console.ProgressLog: one line per topology update
        self.k = max(int(spike_window), 1)
        self.log_layer_density = log_layer_density
        self._last_step = -1
        self._losses: dict[int, torch.Tensor] = {}
        self._pending: list[int] = []
        self.spikes: list[tuple[int, float]] = []
        self.update_ratios: list[tuple[int, float, float]] = []
        self._trace_path: Path | None = None
        self._trace_losses: list[float] = []
        self._trace_reduces = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        ctrl = pl_module.sparse
        if ctrl is not None and ctrl.cfg.debug_check_masks:
            ctrl.check_ranks("at the start of training")
        if os.environ.get("SMET_DDP_TRACE") and ctrl is not None:
            from smet.sparse import distributed as sdist

            self._trace_path = Path(trainer.default_root_dir) / "ddp_trace" / f"rank{trainer.global_rank}.jsonl"
            self._trace_path.parent.mkdir(parents=True, exist_ok=True)
            self._trace_reduces = sdist.growth_reduce_calls

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.sparse is not None:
            pl_module.sparse.before_step(trainer.global_step + 1, score_growth=_last_micro_batch(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ctrl = pl_module.sparse
        step = trainer.global_step
        if self._trace_path is not None and pl_module.last_loss is not None:
            self._trace_losses.append(float(pl_module.last_loss))
        if ctrl is None or step == self._last_step:  # no optimizer step yet (gradient accumulation)
            return
        self._last_step = step
        if pl_module.last_loss is not None:
            self._losses[step] = pl_module.last_loss
        opt = ctrl.optimizer
        metrics: dict[str, float] = {}
        if opt is not None and opt.last_update_stats:
            st = opt.last_update_stats
            metrics["sparsity/update_ratio_regrown"] = st.get("regrown", float("nan"))
            metrics["sparsity/update_ratio_mature"] = st.get("mature", float("nan"))
            self.update_ratios.append((step, metrics["sparsity/update_ratio_regrown"], metrics["sparsity/update_ratio_mature"]))
            opt.last_update_stats = {}
        trace = self._trace_begin(pl_module, step) if self._trace_path is not None else None
        if getattr(pl_module, "skip_topology_update", False):  # non-finite gradients at this step
            ctrl.before_step(step + 1)  # drop any RigL scoring request of the skipped step
            stats = None
        else:
            stats = ctrl.after_step(step)
        if trace is not None:
            self._trace_end(trace, ctrl, bool(stats))
        if stats:
            metrics.update(stats)
            self._pending.append(step)
            if self.progress is not None and trainer.is_global_zero:
                self.progress.info("topology update %d at step %d: regrown %d, drop fraction %.3f, density %.4f",
                                   int(stats.get("sparsity/update", 0)), step, int(stats.get("sparsity/regrown", 0)),
                                   float(stats.get("sparsity/drop_fraction", 0.0)),
                                   float(stats.get("sparsity/density", float("nan"))))
            if self.log_layer_density:
                for name, layer in ctrl.named_layers:
                    metrics[f"density/{name}"] = layer.density
        for u in list(self._pending):
            if step >= u + self.k:
                before = [self._losses[s] for s in range(u - self.k + 1, u + 1) if s in self._losses]
                after = [self._losses[s] for s in range(u + 1, u + self.k + 1) if s in self._losses]
                if before and after:
                    spike = float(torch.stack(after).float().mean() - torch.stack(before).float().mean())
                    metrics["sparsity/spike"] = spike
                    self.spikes.append((u, spike))
                self._pending.remove(u)
        for s in [s for s in self._losses if s < step - 3 * self.k]:
            del self._losses[s]
        if metrics:
            # event metrics go straight to the loggers (self.log would repeat them on later steps);
            # step = step - 1 matches Lightning's row for the batch that made optimizer step `step`
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=step - 1)

    # ----------------------------------------------------------- DDP trace (tests)
    def _trace_begin(self, pl_module, step: int) -> dict:
        from smet.sparse import distributed as sdist
        from smet.sparse import shard

        params = list(pl_module.parameters())
        return {"step": step, "losses": self._trace_losses,
                # exact bits of every parameter after this optimizer step, before the topology update
                # (FSDP2: of the whole parameter, gathered)
                "params": [int(sdist.tensor_checksum(shard.full(p.detach()))) for p in params]}

    def _trace_end(self, trace: dict, ctrl, updated: bool) -> None:
        from smet.sparse import distributed as sdist

        trace["update"] = updated
        trace["layers"] = sdist.layer_checksums(ctrl.layers).cpu().tolist()  # after the update
        trace["growth_reduces"] = sdist.growth_reduce_calls - self._trace_reduces
        self._trace_reduces = sdist.growth_reduce_calls
        self._trace_losses = []
        with open(self._trace_path, "a") as f:
            f.write(json.dumps(trace) + "\n")


def _last_micro_batch(trainer) -> bool:
    """True when the current batch ends an accumulation cycle (the optimizer steps after it and DDP
    synchronises its backward): Lightning's own decision, valid from ``on_train_batch_start`` on."""
    loop = getattr(trainer, "fit_loop", None)
    should_accumulate = getattr(loop, "_should_accumulate", None)
    if should_accumulate is None:  # pragma: no cover - other Lightning versions: score every micro-batch
        return True
    return not should_accumulate()


class StepProgressBar(RichProgressBar):
    """Rich progress bar labelled by optimizer steps (the data stream is infinite: no epochs)."""

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's hook for the label
        return f"{'Training':{len(self.validation_description)}}"


class ConsoleProgress(L.Callback):
    """Plain progress lines for logs (stdout not a TTY: ``make train > log``, nohup, SLURM ``.out``).

    Every ``log_every_n_steps`` optimizer steps (and the last): ``step s/max  loss  lr  tokens/s
    ETA``; after each validation: its loss and perplexity. Lines go through :class:`smet.console.
    ProgressLog` (console + ``train.log``, or ``train.log`` only while a rich/tqdm bar is shown).
    Reads the loss only at the printed steps (one host sync per ``log_every_n_steps``)."""

    def __init__(self, progress, max_steps: int, log_every_n_steps: int, tokens_per_step: int):
        super().__init__()
        self.out = progress
        self.max_steps = int(max_steps)
        self.every = max(int(log_every_n_steps), 1)
        self.tokens_per_step = int(tokens_per_step)
        self._last = -1
        self._t = None
        self._s = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t, self._s = time.perf_counter(), trainer.global_step
        self._last = trainer.global_step
        if trainer.is_global_zero:
                self.out.info("training: %d steps (from step %d), %s tokens/step", self.max_steps, trainer.global_step,
                          f"{self.tokens_per_step:,}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last or (step % self.every and step < self.max_steps) or not trainer.is_global_zero:
            return
        self._last = step
        now = time.perf_counter()
        rate = eta = None
        if self._t is not None and step > self._s and now > self._t:
            sec_per_step = (now - self._t) / (step - self._s)
            rate = self.tokens_per_step / sec_per_step
            eta = sec_per_step * max(self.max_steps - step, 0)
        self._t, self._s = now, step
        loss = getattr(pl_module, "last_loss", None)
        parts = [f"step {step}/{self.max_steps}", f"loss {float(loss):.4f}" if loss is not None else "loss -"]
        opts = trainer.optimizers
        if opts:
            parts.append(f"lr {opts[0].param_groups[0]['lr']:.3e}")
        if rate is not None:
            from smet.console import fmt_duration

            parts += [f"{rate:,.0f} tok/s", f"ETA {fmt_duration(eta)}"]
        self.out.info("  ".join(parts))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        if "val/loss" in m:
            self.out.info("validation at step %d: loss %.4f, ppl %.2f", trainer.global_step,
                          float(m["val/loss"]), float(m.get("val/ppl", float("nan"))))
