"""``smet-fork``: the fork test, the causal picture of the paper's cold-start claim (docs/fork_test.md).

A static-mask run (the command line's Hydra overrides of ``conf/fork.yaml``, ``sparsity=static``
forced) is trained to each fork point s of ``fork.at``. From a copy of its full state every
treatment of ``fork.treatments`` (defined in ``fork.arms``: name -> Hydra overrides) applies ONE
topology update at step s, the same pruned and regrown weights in every arm (``control``: none),
and trains ``fork.steps`` steps on the same batches. Each arm's loss minus the control's is the
effect of that one update under the arm's optimizer treatment::

    smet-fork +experiment=fig1_mini optimizer.lr=4e-3 trainer=gpu fork.at=[500,1000] fork.steps=300

Writes ``fork.csv`` (at, treatment, step, loss, lr), ``summary.json`` (per fork point and arm: mean
loss minus control over (s, s+10], (s, s+50], (s, s+steps], its maximum and final value; config,
environment) and ``fork.png`` into ``fork.out``. The loop itself: :mod:`smet.fidelity.fork_loop`.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from smet.cli.args import OneLineParser, die
from smet.errors import SmetConfigError

PROG = "smet-fork"
CONFIG_NAME = "fork"  # conf/fork.yaml
WINDOWS = (10, 50)  # plus the whole window (s, s + fork.steps]
SMOOTH = 5  # steps of the moving average in fork.png
# what every arm must share with the base run (so the arms differ in the optimizer treatment only)
SHARED = ("seed", "model", "data", "trainer.max_steps", "trainer.precision", "trainer.accelerator", "optimizer.lr",
          "optimizer.betas", "optimizer.eps", "optimizer.weight_decay", "optimizer.schedule",
          "optimizer.warmup_fraction", "optimizer.warmup_steps", "optimizer.min_lr_ratio", "sparsity.density",
          "sparsity.block_size", "sparsity.allocation", "sparsity.erk_power_scale", "sparsity.targets",
          "sparsity.materialize", "sparsity.drop_fraction", "sparsity.drop_fraction_end", "sparsity.drop_schedule",
          "sparsity.update_stop", "sparsity.density_schedule")


def get(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def merge(base: Sequence[str], extra: Sequence[str]) -> list[str]:
    """``base`` overrides, those of a key ``extra`` names replaced by ``extra``'s."""
    keys = {_key(o) for o in extra}
    return [o for o in base if _key(o) not in keys] + list(extra)


def compose_run(overrides: list[str], where: str | None = None) -> tuple[dict, dict]:
    """(resolved run config, its fork section) of ``conf/fork.yaml`` + ``overrides``."""
    from omegaconf import OmegaConf

    from smet.compose import compose

    try:
        cfg = OmegaConf.to_container(compose(overrides, config_name=CONFIG_NAME), resolve=True)
    except SmetConfigError as err:
        if where is None:
            raise
        raise SmetConfigError(where, str(err)) from None
    return cfg, cfg.pop("fork")


def lr_factor(cfg: dict) -> tuple:
    from smet.sparse.config import lr_scale

    s = lr_scale(float(cfg["sparsity"]["density"]), str(cfg["optimizer"].get("lr_scaling", "none")))
    return (s, cfg["optimizer"].get("lr_scaling_scope") if s != 1.0 else None)


def plan(overrides: Sequence[str]):
    """Every config of the fork test, checked before any compute: (base config, arms, fork section,
    output dir). Raises SmetConfigError naming the key."""
    from smet.config import global_batch_layout
    from smet.fidelity.fork_loop import Arm

    user = list(overrides)
    for o in user:
        if _key(o) == "sparsity" and o.split("=", 1)[-1] != "static":
            what = "dense has no topology to update" if o.endswith("=dense") else "treatments pick theirs in fork.arms"
            raise SmetConfigError("sparsity", f"the fork test's base run is always static ({what}); drop {o}")
    base_ov = merge(user, ["hydra.sweeper.params=null", "sparsity=static"])  # one run, not an experiment's grid
    base, fork = compose_run(base_ov)
    if float(base["sparsity"]["density"]) >= 1.0:
        raise SmetConfigError("sparsity.density", "must be < 1: the fork test forks a sparse static run")
    if base["sparsity"]["density_schedule"].get("kind", "constant") != "constant":
        raise SmetConfigError("sparsity.density_schedule", "the fork test needs a constant density")
    if base["data"].get("global_batch_size") is not None and global_batch_layout(base) != 1:
        raise SmetConfigError("data.global_batch_size", "the fork test runs one micro-batch per step: set "
                                                        "data.batch_size to the global batch size")
    for key in ("trainer.accumulate_grad_batches", "trainer.devices", "trainer.num_nodes"):
        if get(base, key) not in (1, None):
            raise SmetConfigError(key, f"must be 1 (the fork test runs one micro-batch on one device), got {get(base, key)}")
    for key in ("trainer.gradient_clip_val", "trainer.compile"):
        if get(base, key):
            raise SmetConfigError(key, "is not supported by smet-fork (plain loop); leave it unset")
    if str(base["trainer"]["accelerator"]) in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SmetConfigError("trainer.accelerator", "gpu, but no CUDA device is visible (use trainer=cpu)")

    steps, at, total = fork.get("steps"), fork.get("at"), int(base["trainer"]["max_steps"])
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise SmetConfigError("fork.steps", f"must be an integer >= 1, got {steps!r}")
    if (not isinstance(at, list) or not at or any(not isinstance(s, int) or isinstance(s, bool) for s in at)
            or any(b <= a for a, b in zip(at, at[1:]))):
        raise SmetConfigError("fork.at", f"must be a non-empty, strictly ascending list of steps, got {at!r}")
    bad = [s for s in at if not 0 < s <= total - steps]
    if bad:
        raise SmetConfigError("fork.at", f"{bad[0]} is outside (0, trainer.max_steps - fork.steps] = (0, {total - steps}]")
    defs, names = fork.get("arms") or {}, fork.get("treatments") or []
    names = list(dict.fromkeys(["control", *names]))  # control (the baseline of every difference) first
    for name in names:
        if name not in defs:
            raise SmetConfigError("fork.treatments", f"unknown treatment {name!r}; choose from {', '.join(defs)}")
    arms = []
    for name in names:
        d = defs[name] or {}
        ov, update = d.get("overrides") or [], d.get("update", True)
        if not isinstance(ov, list) or not all(isinstance(o, str) for o in ov) or not isinstance(update, bool):
            raise SmetConfigError(f"fork.arms.{name}", "must be {overrides: [Hydra overrides], update: true|false}")
        cfg, _ = compose_run(merge(base_ov, ov), where=f"fork.arms.{name}")
        for key in SHARED:
            if get(cfg, key) != get(base, key):
                raise SmetConfigError(f"fork.arms.{name}", f"changes {key} ({get(cfg, key)!r}; the base run has "
                                                           f"{get(base, key)!r}): every arm must share it")
        if lr_factor(cfg) != lr_factor(base):
            raise SmetConfigError(f"fork.arms.{name}", f"optimizer.lr_scaling={cfg['optimizer']['lr_scaling']} gives "
                                                       "another LR than the base run's; add optimizer.lr_scaling=none")
        if update:
            if cfg["sparsity"]["growth"] != "random":
                raise SmetConfigError(f"fork.arms.{name}", f"sparsity.growth={cfg['sparsity']['growth']}: the fork's "
                                                           "update regrows at random (a set/smet preset)")
            sp = cfg["sparsity"]  # no scheduled update: the range [update_start, update_stop) is empty
            sp["update_start"] = int(sp.get("update_stop") or total)
        arms.append(Arm(name=name, cfg=cfg, update=update, overrides=ov))

    out = Path(fork["out"]) if fork.get("out") else Path("outputs/fork") / time.strftime("%Y-%m-%d_%H-%M-%S")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not fork.get("force"))):
        raise SmetConfigError("fork.out", f"{out} exists and is not an empty directory; pass fork.force=true "
                                          "or choose another directory")
    return base, arms, fork, out


# ----------------------------------------------------------------------------- results
def differences(records: list[dict], steps: int) -> list[dict]:
    """Per (at, treatment): loss minus the control arm's over the windows, its max and final value."""
    control = {r["at"]: r["loss"] for r in records if r["treatment"] == "control"}
    out = []
    for r in records:
        s, d = r["at"], [a - b for a, b in zip(r["loss"], control[r["at"]])]
        row = {"at": s, "treatment": r["treatment"]}
        for w in WINDOWS:  # (s, s + w], clipped to the window
            row[f"mean_diff_{w}"] = sum(d[:w]) / len(d[:w])
        row["mean_diff_all"] = sum(d) / len(d)
        top = max(range(len(d)), key=d.__getitem__)
        row.update(max_diff=d[top], max_diff_step=s + 1 + top, final_diff=d[-1])
        row.update({key: r[key] for key in ("updates", "topology", "regrown", "drop_fraction",
                                            "first_step_update_over_lr")})
        out.append(row)
    return out


def plot_png(records: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    points = sorted({r["at"] for r in records})
    fig, axes = plt.subplots(1, len(points), figsize=(6 * len(points), 4), squeeze=False)
    for ax, s in zip(axes[0], points):
        arms = [r for r in records if r["at"] == s]
        control = np.array(next(r["loss"] for r in arms if r["treatment"] == "control"))
        for r in arms:
            if r["treatment"] == "control":
                continue
            d = np.array(r["loss"]) - control
            w = min(SMOOTH, len(d))
            ax.plot(s + w + np.arange(len(d) - w + 1), np.convolve(d, np.ones(w) / w, mode="valid"),
                    label=r["treatment"])
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set(title=f"one topology update at step {s}", xlabel="step",
               ylabel=f"loss - control ({SMOOTH}-step mean)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(out: Path, records: list[dict], summary: dict) -> None:
    from smet.atomic import atomic_write

    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["at", "treatment", "step", "loss", "lr"])
    for r in records:
        for k, (loss, lr) in enumerate(zip(r["loss"], r["lr"])):
            w.writerow([r["at"], r["treatment"], r["at"] + 1 + k, repr(loss), repr(lr)])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "fork.csv", lambda f: f.write(text.getvalue().encode()))
    atomic_write(out / "summary.json", lambda f: f.write((json.dumps(summary, indent=2) + "\n").encode()))
    png = plot_png(records)
    atomic_write(out / "fork.png", lambda f: f.write(png))


def fork_test(overrides: Sequence[str], log=print) -> Path:
    """Run the fork test of ``overrides``; returns the output directory."""
    import platform

    import torch

    from smet.data import build_datamodule
    from smet.fidelity import fork_loop
    from smet.redact import redact_tree

    t0 = time.time()
    base, arms, fork, out = plan(overrides)
    if threads := get(base, "trainer.cpu_threads"):
        torch.set_num_threads(int(threads))
    dm = build_datamodule(base["data"])
    dm.prepare()
    steps = int(fork["steps"])
    records = []
    for r in fork_loop.run(base, arms, list(fork["at"]), steps, dm, log=log):
        records.append(r)
        if r["treatment"] != "control":
            d = differences([x for x in records if x["at"] == r["at"] and x["treatment"] in ("control", r["treatment"])],
                            steps)[-1]
            means = "  ".join(f"(s, s+{min(w, steps)}] {d[f'mean_diff_{w}']:+.4f}" for w in WINDOWS if w < steps)
            log(f"fork at {r['at']}: {r['treatment']:<17} loss - control: {means}  (s, s+{steps}] "
                f"{d['mean_diff_all']:+.4f}  max {d['max_diff']:+.4f} at {d['max_diff_step']}")
    device = fork_loop.device_of(base)
    summary = {
        "config": redact_tree({"overrides": list(overrides), "base": base,
                               "fork": {**{k: v for k, v in fork.items() if k != "arms"}, "out": str(out)},
                               "arms": {a.name: {"overrides": a.overrides, "update": a.update} for a in arms}}),
        "results": differences(records, steps),
        "env": {"torch": torch.__version__, "python": platform.python_version(),
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                "wall_s": round(time.time() - t0, 1)},
    }
    write_outputs(out, records, summary)
    log(f"fork: wrote {out / 'fork.csv'}, {out / 'summary.json'}, {out / 'fork.png'} ({summary['env']['wall_s']} s)")
    return out


DESCRIPTION = f"""The fork test (docs/fork_test.md): a static-mask run forked at fork.at into treatments that each
apply one topology update (the same one) and train fork.steps steps on the same batches.
OVERRIDE: Hydra overrides of conf/fork.yaml (conf/train.yaml plus the fork: section), e.g.
  {PROG} +experiment=fig1_mini optimizer.lr=4e-3 trainer=gpu fork.at=[500,1000] fork.steps=300
  fork.treatments=[control,naive,smet]  fork.out=DIR  fork.force=true"""


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = OneLineParser(prog=PROG, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        fork_test(args.overrides, log=lambda line: print(line, flush=True))
    except SmetConfigError as err:
        return die(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
