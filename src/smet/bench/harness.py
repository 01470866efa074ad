"""One benchmark run: built from its composed config, stepped with the reference training step.

:class:`Run` builds model + sparse controller + optimizer (+ the LR schedule) with
:func:`smet.build.build_training` (meta build materialised on the target device: the dense weights
of sparse layers are never allocated) and takes steps with :func:`smet.sparse.train_step`, the same
sequence for dense and sparse: before_step, forward (bf16 autocast for ``bf16-mixed``), backward,
optimizer.step, [static memory measured here, grads alive], zero_grad, after_step (topology update).
The phases are profiler ranges ``smet/forward``, ``smet/backward``, ``smet/optimizer``.
"""

from __future__ import annotations

import time
from typing import Any

from smet.bench.grid import BenchRun
from smet.bench.profile import phase


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Run:
    """One benchmark run, built from its seed (``torch.manual_seed``) on the meta device and
    materialised on ``args.device``; ``total_steps``: the controller's and the LR schedule's horizon."""

    def __init__(self, spec: BenchRun, args, total_steps: int):
        import torch

        from smet.build import build_training

        self.spec = spec
        self.device = torch.device(args.device)
        torch.manual_seed(spec.seed)
        t0 = time.perf_counter()
        training = build_training(spec.run_config(total_steps), self.device, vocab_size=spec.vocab, defer=True)
        self.model, self.ctrl, self.opt = training.model, training.controller, training.optimizer
        self.model.train()
        self.sched = training.scheduler()
        sync(self.device)
        self.build_time_s = time.perf_counter() - t0
        # MFU parameter counts (smet.perf convention: input embedding excluded)
        self.n_flop_params_dense = self.model.config.num_params(include_embedding=False)
        self.n_flop_params_active = (self.ctrl.active_params_excluding_embedding() if self.ctrl is not None
                                     else self.n_flop_params_dense)
        if spec.compile:
            torch._dynamo.reset()  # a fresh graph per model: no recompile limit across runs
            self.model.compile()
        self.autocast = training.autocast(self.device.type)
        self.step = 0
        self.last_loss = float("nan")
        self.last_update_drop: float | None = None  # the drop fraction of the last topology update

    def train_step(self, x, y, measure: bool = False) -> tuple[bool, dict | None]:
        """One optimizer step. Returns (was a topology update step, static breakdown if measured)."""
        from smet.sparse import train_step

        self.step += 1
        s, ctrl = self.step, self.ctrl
        update = ctrl is not None and ctrl.is_update_step(s)
        if update:
            self.last_update_drop = float(ctrl.drop(s))
        stat: dict[str, Any] = {}

        def measure_static() -> None:  # after optimizer.step(), before zero_grad: grads still alive
            from smet.sparse.memory import measure_static

            stat["static"] = measure_static(self.model, self.opt, ctrl)

        loss, _ = train_step(self.model, ctrl, self.opt, x, y, s, autocast=self.autocast, phase=phase,
                             after_optimizer_step=measure_static if measure else None)
        self.sched.step()
        if measure:
            self.last_loss = float(loss.detach())
        return update, stat.get("static")


def batches(runs: list[BenchRun], device) -> dict[tuple, Any]:
    """4 batches of synthetic uniform random tokens per (seed, vocab, batch, seq_len) of the runs."""
    import torch

    out: dict[tuple, Any] = {}
    for r in runs:
        key = (r.seed, r.vocab, r.batch, r.seq_len)
        if key not in out:
            gen = torch.Generator().manual_seed(r.seed)
            out[key] = torch.randint(0, r.vocab, (4, r.batch, r.seq_len + 1), generator=gen).to(device)
    return out


def data_of(run: BenchRun, data: dict[tuple, Any]):
    return data[(run.seed, run.vocab, run.batch, run.seq_len)]


def timed_step(run: Run, data, measure: bool = False) -> tuple[float, bool, dict | None]:
    """One step of ``run`` on the next of its batches, timed (device synchronised around it)."""
    if isinstance(data, dict):
        data = data_of(run.spec, data)
    b = data[run.step % data.shape[0]]
    sync(run.device)
    t0 = time.perf_counter()
    update, stat = run.train_step(b[:, :-1], b[:, 1:], measure=measure)
    sync(run.device)
    return time.perf_counter() - t0, update, stat
