#!/usr/bin/env python
"""The figures and tables of docs/results.md (issue 14, "Figure 1 mini"), from run directories.

    python docs/data/fig1_mini/figures.py OUT_DIR RUNS_DIR [RUNS_DIR ...]

RUNS_DIR: any directory above run directories (config.yaml + metrics.csv), e.g. the unpacked
call_a/call_b/call_c tarballs. A run of one (method, variant, LR, seed) found twice counts once: the
one that reached more steps (call B re-ran smet 2e-3 / 4e-3 of call A to the end).
Writes OUT_DIR/fig1_mini_loss.png (raw train loss, set vs smet, same LR and seed, update markers),
fig1_mini_offsets.png (set - smet and W=0 - smet paired offset per update, with the midway noise
floor), fig1_mini_ppl_vs_lr.png (final val ppl vs LR per method; dots: seeds) and prints the
Markdown tables (val ppl per method x LR with mean ± sd over seeds; offsets per pair).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from smet.report.coldstart import FLOOR_FACTOR, MIN_OFFSET, cold_start, is_smet, is_treated
from smet.report.paired import loss_by_step, pair_key
from smet.report.runs import discover_runs, load_run_dir

ARMS = [("dense", None, False, "dense"), ("static", None, False, "static"), ("set", None, False, "set (naive DST)"),
        ("rigl", None, False, "rigl"), ("smet", None, False, "smet"), ("smet", "no_warmup", False, "smet, W = 0"),
        ("smet", "momentum_warmup", False, "smet, momentum damping"),
        ("dense", None, True, "dense, bf16-mixed"), ("smet", None, True, "smet, bf16-mixed")]


def arm(r) -> tuple:
    """(method, variant, bf16-mixed?): runs of another precision are another arm (call D)."""
    return (r.method, r.cfg("sparsity.variant") or None, str(r.cfg("trainer.precision")) == "bf16-mixed")


def key(r) -> tuple:
    return arm(r) + (float(r.cfg("optimizer.lr")), int(r.cfg("seed")), str(r.cfg("trainer.precision")))


def load(dirs: list[str]) -> list:
    best: dict[tuple, object] = {}
    for d in dirs:
        for rd in discover_runs(Path(d)):
            r = load_run_dir(rd)
            k = key(r)
            if k not in best or (r.steps or 0) > (best[k].steps or 0):
                best[k] = r
    return list(best.values())


def rerun_log_ppl(r) -> float | None:
    """Call B re-ran smet 2e-3 / 4e-3 seed 0 to the end as plain train.py processes; only their logs were
    kept (docs/data/fig1_mini/smet_lr<lr>-s<seed>.log): the final val ppl of a finished re-run, from the log."""
    import re

    f = Path(__file__).parent / f"{r.method}_lr{float(r.cfg('optimizer.lr')):g}-s{r.cfg('seed')}.log"
    if r.cfg("sparsity.variant") or not f.is_file():
        return None
    txt = f.read_text()
    m = re.search(r"Training finished .*?: (\d+) steps", txt)
    p = re.search(r"final validation perplexity: ([0-9.]+)", txt)
    if m and p and int(m.group(1)) == int(r.cfg("trainer.max_steps")):
        return float(p.group(1))
    return None


def final_ppl(r) -> float | None:
    """Final val ppl of a run that reached max_steps, else None (compared at equal steps only)."""
    if (r.steps or 0) < int(r.cfg("trainer.max_steps")):
        return rerun_log_ppl(r)
    return r.final_val_ppl


def ppl_at(r, step: int) -> float | None:
    """Validation ppl logged at optimizer step ``step`` (every run of the study has steps 250 ... 1250)."""
    st, v = r.series("val/ppl")
    for s_, x in zip(r.opt_step(st).tolist(), np.asarray(v, dtype=float).tolist()):
        if int(s_) == step:
            return float(x)
    return None


def ppl_table(runs, at: int | None = None) -> str:
    """Final val ppl (at None) or the val ppl at step ``at``: mean ± sd over seeds per method x LR."""
    lrs = sorted({float(r.cfg("optimizer.lr")) for r in runs})
    cell: dict[tuple, list] = defaultdict(list)
    for r in runs:
        p = final_ppl(r) if at is None else ppl_at(r, at)
        cell[(arm(r), float(r.cfg("optimizer.lr")))].append((int(r.cfg("seed")), p, r.steps))
    out = ["| method | " + " | ".join(f"LR {lr:g}" for lr in lrs) + " |", "|---|" + "---:|" * len(lrs)]
    for m, v, mixed, name in ARMS:
        if not any(a == (m, v, mixed) for a, _ in cell):
            continue
        row = []
        for lr in lrs:
            xs = cell.get(((m, v, mixed), lr), [])
            done = [p for _, p, _ in xs if p is not None]
            short = [f"s{s}: stopped at {st}" for s, p, st in xs if p is None]
            if not xs:
                row.append("-")
                continue
            txt = (f"{np.mean(done):.2f}" + (f" ± {np.std(done, ddof=1):.2f} (n={len(done)})" if len(done) > 1 else
                                              f" (s{[s for s, p, _ in xs if p is not None][0]})")) if done else ""
            row.append(" ".join([txt] + ([f"[{', '.join(short)}]"] if short else [])).strip())
        out.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(out)


# model keys added to the config after calls A-C: the exact loss and no activation checkpointing reproduce what
# those runs did; `pointwise: fused` (fused rotary / norm kernels) computes the same model with other roundings.
# Call D's seed-0 rigl / momentum-damping arms pair with call A's seed-0 smet across this code change;
# cross_code.py measures what the change alone moves (the same runs in calls C and D).
NEW_MODEL_KEYS = {"loss_impl": "exact", "activation_checkpointing": None, "checkpoint_every": 1,
                  "loss_chunk_tokens": None, "pointwise": None}


def study_key(r) -> tuple:
    """smet.report.paired.pair_key, blind to NEW_MODEL_KEYS at their legacy values."""
    model = dict(r.cfg("model") or {})
    legacy = model.get("loss_impl", "exact") == "exact" and model.get("activation_checkpointing") is None
    if not legacy:
        return pair_key(r)
    i = 1  # PAIR_KEYS[1] == "model"
    k = list(pair_key(r))
    k[i] = tuple(item for item in k[i] if not (isinstance(item, tuple) and item[0] in NEW_MODEL_KEYS))
    return tuple(k)


def offsets(runs):
    smets = {}
    for r in runs:
        if is_smet(r) and r.update_steps:
            smets.setdefault(study_key(r), r)
    pairs = []
    for r in runs:
        if is_treated(r) and study_key(r) in smets:
            pairs.append(cold_start(r, smets[study_key(r)]))
    return sorted(pairs, key=lambda c: (arm(c.treated), float(c.treated.cfg("optimizer.lr")), int(c.treated.cfg("seed"))))


def offsets_table(pairs) -> str:
    out = ["| treated vs smet | LR | seed | updates | mean offset | counted (>= 0.01 and >= 3x floor) | floor SD | "
           "mean late (u+99) | mean peak |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in pairs:
        t = c.treated
        late = np.mean(list(c.late.values())) if c.late else float("nan")
        peak = np.mean([p for p, _ in c.peak.values()]) if c.peak else float("nan")
        name = t.method + (f" {t.cfg('sparsity.variant')}" if t.cfg("sparsity.variant") else "")
        out.append(f"| {name} | {float(t.cfg('optimizer.lr')):g} | {t.cfg('seed')} | {len(c.offsets)} | "
                   f"{c.mean_offset:+.4f} | {c.hits} / {len(c.offsets)} | {c.floor:.4f} | {late:+.4f} | {peak:+.4f} |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    runs = load(argv[1:])
    print(f"{len(runs)} runs\n\n## val ppl (final, step 1500)\n\n{ppl_table(runs)}\n")
    print(f"## val ppl at step 1250 (the last validation every run reached)\n\n{ppl_table(runs, 1250)}\n")
    pairs = offsets(runs)
    print(f"## cold-start offsets\n\n{offsets_table(pairs)}\n")

    # 1. raw loss, set vs smet at 4e-3, every seed found
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1.6, 1]})
    for c in pairs:
        t, s = c.treated, c.smet
        if t.method != "set" or float(t.cfg("optimizer.lr")) != 4e-3:
            continue
        for r, col in ((t, "tab:red"), (s, "tab:blue")):
            loss = loss_by_step(r)
            st = np.array(sorted(loss))
            v = np.array([loss[x] for x in st])
            lab = f"{'set (naive DST)' if r is t else 'smet'} s{r.cfg('seed')}"
            ls = "-" if int(r.cfg("seed")) == 0 else "--"
            axes[0].plot(st, v, color=col, lw=0.6, ls=ls, label=lab, alpha=0.8)
        a, b = loss_by_step(t), loss_by_step(s)
        st = np.array(sorted(a.keys() & b.keys()))
        d = np.array([a[x] - b[x] for x in st])
        sm = np.convolve(d, np.ones(5) / 5, mode="valid")  # mean of steps t-4..t, drawn at t
        axes[1].plot(st[4:], sm, lw=0.9, ls="-" if int(t.cfg("seed")) == 0 else "--", label=f"s{t.cfg('seed')}")
    for ax in axes:
        for u in range(100, 1500, 100):
            ax.axvline(u, color="k", lw=0.4, alpha=0.35)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.2)
    axes[0].set_ylim(2.5, 6.5)
    axes[0].set_ylabel("train loss (per step)")
    axes[0].set_title("LLaMA-60M, d = 0.25, LR 4e-3: set vs smet, same batches (vertical lines: updates)", fontsize=9)
    axes[1].set_title("set − smet, per step (5-step mean), same seed", fontsize=9)
    axes[1].set_ylabel("Δ train loss (nats)")
    axes[1].axhline(0, color="k", lw=0.6)
    axes[1].legend(fontsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fig1_mini_loss.png", dpi=110)
    plt.close(fig)

    # 2. offsets per update
    fig, ax = plt.subplots(figsize=(10, 4.6))
    for c in pairs:
        t = c.treated
        us = list(c.offsets)
        name = t.method + {"no_warmup": " W=0", "momentum_warmup": " momentum damping"}.get(t.cfg("sparsity.variant"), "")
        ax.plot(us, [c.offsets[u] for u in us], marker="o", ms=3, lw=1.0,
                ls="-" if int(t.cfg("seed")) == 0 else "--",
                label=f"{name} − smet, LR {float(t.cfg('optimizer.lr')):g}, s{t.cfg('seed')} (floor {c.floor:.3f})")
    ax.axhline(0, color="k", lw=0.8)
    ax.axhline(MIN_OFFSET, color="k", lw=0.6, ls=":")
    ax.set_xlabel("topology update u (optimizer step)")
    ax.set_ylabel("offset(u) (nats)")
    ax.set_title(f"paired jump after each update minus smet's (dotted: {MIN_OFFSET} nats; counted also needs "
                 f">= {FLOOR_FACTOR:g} x floor)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    fig.savefig(out / "fig1_mini_offsets.png", dpi=110)
    plt.close(fig)

    # 3. final val ppl vs LR
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for m, v, mixed, name in ARMS:
        pts = defaultdict(list)
        for r in runs:
            if arm(r) == (m, v, mixed) and (p := final_ppl(r)) is not None:
                pts[float(r.cfg("optimizer.lr"))].append(p)
        if not pts:
            continue
        lrs = sorted(pts)
        line, = ax.plot(lrs, [np.mean(pts[x]) for x in lrs], marker="s" if mixed else "o", ls="--" if mixed else "-",
                        label=name)
        for x in lrs:
            if len(pts[x]) > 1:
                ax.scatter([x] * len(pts[x]), pts[x], color=line.get_color(), s=10, alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("peak LR of every parameter")
    ax.set_ylabel("final val ppl (step 1500)")
    ax.set_title("LLaMA-60M, d = 0.25, 1500 steps of debian_docs (one epoch at most)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.25, which="both")
    fig.tight_layout()
    fig.savefig(out / "fig1_mini_ppl_vs_lr.png", dpi=110)
    plt.close(fig)
    print(f"figures -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
