"""The fork test's training loop (``smet-fork``, :mod:`smet.fidelity.fork`): plain PyTorch, one device.

The static run is trained with the ordinary build (:func:`smet.build.build_training`) and step
(:func:`smet.sparse.step.train_step`, the LR schedule stepped after every optimizer step as
Lightning does) on the batches of the data pipeline ``train.py`` uses. At each fork point s its
state is copied (:func:`snapshot`); every arm builds its own run from its config, loads the copy
(:func:`restore`: parameters, compact topology, optimizer moments and steps, LR schedule position),
applies the one topology update of step s (``SparseController.update_now``; not in ``control``)
and trains the window (s, s + steps] on the same stored batches. Then the static run is restored
from the copy and goes on to the next fork point.
"""

from __future__ import annotations

import copy
import hashlib
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch


@dataclass
class Arm:
    """One treatment: its resolved run config and whether it applies the update at the fork."""

    name: str
    cfg: dict
    update: bool
    overrides: list


def device_of(cfg: dict) -> torch.device:
    return torch.device("cuda" if str(cfg["trainer"]["accelerator"]) in ("gpu", "cuda") else "cpu")


def build(cfg: dict, device: torch.device, vocab_size: int):
    """(Training, LambdaLR) of a run config, seeded as train.py seeds it."""
    from smet.build import build_training

    seed = int(cfg["seed"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tr = build_training(cfg, device, vocab_size=vocab_size, defer=device.type == "cuda")
    return tr, tr.scheduler()


class Batches:
    """The train stream, read once in order: ``get(k)`` is the batch of optimizer step k (1-based)."""

    def __init__(self, loader):
        self.it = iter(loader)
        self.read = 0
        self.kept: dict[int, torch.Tensor] = {}

    def get(self, step: int) -> torch.Tensor:
        while self.read < step:
            self.read += 1
            self.kept[self.read] = next(self.it)
        return self.kept[step]

    def forget_before(self, step: int) -> None:
        for k in [k for k in self.kept if k < step]:
            del self.kept[k]


def train(tr, sched, batches: Batches, steps: range, device: torch.device) -> tuple[list[float], list[float]]:
    """Train ``steps``; returns (loss, lr) per step (lr: the first param group's, used by that step)."""
    losses, lrs = [], []
    for step in steps:
        b = batches.get(step).to(device, non_blocking=True)
        lrs.append(float(tr.optimizer.param_groups[0]["lr"]))
        loss, _ = tr.step(b[:, :-1], b[:, 1:], step, autocast=tr.autocast(device.type))
        sched.step()
        losses.append(loss.detach().float())
    return (torch.stack(losses).tolist() if losses else []), lrs


@torch.no_grad()
def snapshot(tr, sched) -> dict:
    """The full state of a run, cloned on its device."""
    return {"model": {k: v.detach().clone() for k, v in tr.model.state_dict().items()},
            "dense": [None if layer.dense is None else layer.dense.clone() for layer in tr.controller.layers],
            "controller": copy.deepcopy(tr.controller.state_dict()),
            "optimizer": copy.deepcopy(tr.optimizer.state_dict()),
            "scheduler": copy.deepcopy(sched.state_dict())}


@torch.no_grad()
def restore(tr, sched, snap: dict) -> None:
    """Load a :func:`snapshot` into a run of the same model (its optimizer may be of another kind:
    ``SMETOptimizer.load_state_dict`` adds or drops local steps). The snapshot stays intact."""
    tr.model.load_state_dict(snap["model"])
    tr.controller.load_state_dict(snap["controller"])
    for layer, dense in zip(tr.controller.layers, snap["dense"]):
        if layer.dense is not None and dense is not None:
            layer.dense.copy_(dense)
    tr.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))  # the loaded state aliases what it is given
    sched.load_state_dict(copy.deepcopy(snap["scheduler"]))


def topology(ctrl) -> str:
    """A digest of every compact layer's live block ids (equal digests: the same topology)."""
    h = hashlib.sha256()
    for layer in ctrl.layers:
        h.update(layer.idx[: layer.n_live].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def run(base: dict, arms: list[Arm], at: list[int], steps: int, dm, log=print) -> Iterator[dict]:
    """Fork the static run ``base`` at each step of ``at``; yields one record per (fork point, arm),
    in order (``control`` first): ``at, treatment, loss, lr`` (lists over the window), ``updates``
    (topology updates the arm made), ``topology`` (digest after the update) and the update's stats."""
    device = device_of(base)
    vocab = dm.vocab_size
    batches = Batches(dm.train_dataloader())
    static, ssched = build(base, device, vocab)
    done = 0
    for s in at:
        loss, _ = train(static, ssched, batches, range(done + 1, s + 1), device)
        done = s
        batches.forget_before(s + 1)
        log(f"fork: static run at step {s} (loss {loss[-1]:.4f}); forking {len(arms)} arms for {steps} steps")
        snap = snapshot(static, ssched)
        window = range(s + 1, s + steps + 1)
        updated = set()
        for arm in arms:
            tr, sched = build(arm.cfg, device, vocab)
            restore(tr, sched, snap)
            count0 = tr.controller.update_count
            info = tr.controller.update_now(s) if arm.update else {}
            topo = topology(tr.controller)
            loss, lr = train(tr, sched, batches, window, device)
            updates = tr.controller.update_count - count0
            if updates != int(arm.update):  # the treatments must see no scheduled update in the window
                raise RuntimeError(f"fork arm {arm.name} made {updates} topology updates at fork {s}")
            if arm.update:
                updated.add(topo)
            if len(updated) > 1:
                raise RuntimeError(f"fork arm {arm.name} updated the topology differently from the arms before it")
            stats = getattr(tr.optimizer, "last_update_stats", {}) if arm.update else {}
            yield {"at": s, "treatment": arm.name, "loss": loss, "lr": lr, "updates": updates, "topology": topo,
                   "regrown": info.get("sparsity/regrown"), "drop_fraction": info.get("sparsity/drop_fraction"),
                   "first_step_update_over_lr": dict(stats)}
            del tr, sched
            if device.type == "cuda":
                torch.cuda.empty_cache()
        restore(static, ssched, snap)
        del snap
