"""smet-bench's output: the Markdown table, the ratio lines and ``--from-json`` (re-rendering saved
records, also those of earlier versions such as docs/data/h200_fused/*.json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _name(r: dict) -> str:
    """The method or ablation of a record (``smet_no_reset``; older records: the method)."""
    return r.get("name") or r["method"]


def swept_columns(records: list[dict]) -> list[str]:
    """The swept keys beyond the fixed columns, in first-seen order."""
    return list(dict.fromkeys(k for r in records for k in (r.get("swept") or {})))


def markdown(records: list[dict], args=None) -> str:
    extra = swept_columns(records)
    head = ("| method | density | materialize | precision | act. ckpt | compile | "
            + "".join(f"{k} | " for k in extra)
            + "tokens/s | step ms | update step ms | amortised tok/s | MFU dense % | MFU active % | "
              "sparse-layer static MiB | B / active weight | static total MiB | predicted static MiB | "
              "static vs model % | peak alloc MiB | peak reserved MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    notes = []
    for r in records:
        swept = r.get("swept") or {}
        axes = (f"| {_name(r)} | {r['density']:g} | {r['materialize'] or '-'} | {r['precision']} | "
                f"{'on' if r['activation_checkpointing'] else 'off'} | {'on' if r['compile'] else 'off'} |"
                + "".join(f" {swept.get(k, '-')} |" for k in extra))
        pred = _mib(r["predicted_static_bytes"]["total"])
        if r["oom"]:
            req = r.get("oom_bytes_requested")
            lines.append(axes + f" OOM | - | - | - | - | - | - | - | - | {pred} | - | {_mib(r['peak_bytes'])} | "
                                f"{_mib(r['peak_reserved_bytes'])} |")
            notes.append(f"OOM {r['label']} ({r['oom_phase']}"
                         + (f", tried to allocate {req / 2**30:.2f} GiB" if req else "") + f"): {r['oom_error']}")
            continue
        if r["skipped"]:
            lines.append(axes + f" skipped | - | - | - | - | - | - | - | - | {pred} | - | - | - |")
            continue
        err = r["static_rel_error"]
        flag = "" if r["static_within_tolerance"] else " (> 5 %!)"
        lines.append(axes + " {tps:,.0f} | {st:.1f} | {ut} | {am:,.0f} | {mfd} | {mfa} | {ss} | {bpw:.2f} | {tot} | {pred} | "
                            "{err}{flag} | {pk} | {pr} |".format(
            tps=r["tokens_per_s"] or float("nan"), st=r["step_time_s"] * 1e3,
            ut="-" if r["update_step_time_s"] is None else f"{r['update_step_time_s'] * 1e3:.1f}",
            am=r["tokens_per_s_amortised"] or float("nan"), mfd=_pct(r["mfu_dense"]), mfa=_pct(r["mfu_active"]),
            ss=_mib(r["sparse_static_bytes"]["total"]), bpw=r["bytes_per_active_weight"],
            tot=_mib(r["static_bytes"]["total"]), pred=pred, err="-" if err is None else f"{100 * err:+.2f}", flag=flag,
            pk=_mib(r["peak_bytes"]), pr=_mib(r["peak_reserved_bytes"])))
    return "\n".join(lines + ([""] + notes if notes else []))


def _dense_reference(r: dict, records: list[dict]) -> dict | None:
    if "dense_reference" in r:  # this version: the run's own reference, by label
        return next((d for d in records if d["label"] == r["dense_reference"] and d["method"] == "dense"), None)
    key = (r["precision"], r["activation_checkpointing"], r["compile"])  # earlier records: the group's dense
    return next((d for d in records if d["method"] == "dense"
                 and (d["precision"], d["activation_checkpointing"], d["compile"]) == key), None)


def ratios(records: list[dict]) -> list[str]:
    """Per sparse run: speed, static-memory and peak ratios against its dense reference."""
    out = []
    for r in records:
        d = None if r["method"] == "dense" else _dense_reference(r, records)
        if d is None or r["oom"] or r["skipped"]:
            continue
        name = _name(r)
        extra = r["label"][len(f"{name} d={r['density']:g} "):]  # "transient[ bf16-true ac=on ...]"
        tag = f"d={r['density']:g} ({extra})"
        if d["oom"]:
            out.append(f"{name}/dense at {tag}: dense OOM ({d['oom_phase']}); {name} trained "
                       f"{r['optimizer_steps']} steps, {r['topology_updates']} topology updates, loss {r['final_loss']:.3f}")
            continue
        if d["skipped"] or not d["tokens_per_s"] or not r["tokens_per_s"]:
            continue
        paired = r.get("paired_speed_ratio_vs_dense")
        line = (f"{name}/dense tokens/s at {tag}: "
                f"{r['tokens_per_s'] / d['tokens_per_s']:.3f}x "
                f"(amortised {r['tokens_per_s_amortised'] / d['tokens_per_s_amortised']:.3f}x"
                + (f", median paired per-step {paired:.3f}x" if paired else "") + ")"
                + f"; static {r['static_bytes']['total'] / d['static_bytes']['total']:.3f}x")
        if r["peak_bytes"] and d["peak_bytes"]:
            line += f"; peak {r['peak_bytes'] / d['peak_bytes']:.3f}x"
        out.append(line)
    return out


def document(header: str, records: list[dict]) -> str:
    """The --md file: header, table, ratio lines."""
    return header + "\n\n" + markdown(records) + "\n\n" + "\n".join(f"* {x}" for x in ratios(records)) + "\n"


def live_header(records: list[dict], args, *, device_name: str, threads: int, load: tuple[float, float],
                wall: float) -> str:
    """The header of a run's table: where, what, and how each column is defined."""
    models = ", ".join(dict.fromkeys(str(r["config"].get("model_preset")) for r in records))
    every = args.amortize_interval or update_intervals(records)
    peak = next((r["peak_flops"] for r in records if r["peak_flops"]), None)
    return (f"smet-bench: model {models} on {args.device} ({device_name}; {threads} threads; 1-min load average "
            f"{load[0]:.2f} -> {load[1]:.2f}; {wall:.0f} s), {shape_summary(records)}. "
            f"Data: SYNTHETIC random tokens. tokens/s from the median steady step; update step = a step with a "
            f"topology update (every {update_intervals(records)}), timed apart with the step after it (which "
            f"measures regrown vs mature update sizes); amortised = tokens / (median step + (median update-step "
            f"extra + median after-update-step extra) / {every}). MFU = 6 x N x amortised tokens/s / "
            + (f"{peak / 1e12:g} TFLOP/s" if peak else "(no peak: MFU not computed)")
            + " (dense bf16 peak), N without the input embedding: 'dense' counts every weight, 'active' only "
            "the active weights of the sparse layers. Static = weights + grads + optimizer + metadata (+ compute "
            "copy, buffers) from the live tensors after an optimizer step; predicted = smet.sparse.memory."
            "predict_static (smet-memory); peak = torch.cuda.max_memory_allocated / _reserved.")


def _values(records: list[dict], key: str) -> str:
    return ", ".join(dict.fromkeys(str(r["config"][key]) for r in records))


def shape_summary(records: list[dict]) -> str:
    """``precision 32, batch 8 x seq 256, vocab 4096`` (several values joined)."""
    return (f"precision {', '.join(dict.fromkeys(r['precision'] for r in records))}, batch "
            f"{_values(records, 'batch')} x seq {_values(records, 'seq_len')}, vocab {_values(records, 'vocab')}")


def update_intervals(records: list[dict]) -> str:
    sparse = [r for r in records if r["method"] != "dense"] or records
    return _values(sparse, "update_interval")


def upgrade(r: dict) -> dict:
    """A record of an earlier version with the keys it lacks (the first ones had no precision /
    checkpointing / compile axes, no prediction, no MFU): what the table and ratio lines read."""
    r = dict(r)
    cfg = r.get("config") or {}
    r.setdefault("precision", str(cfg.get("precision", "32")))
    r.setdefault("activation_checkpointing", bool(cfg.get("activation_checkpointing", False)))
    r.setdefault("compile", bool(cfg.get("compile", False)))
    r.setdefault("label", "dense" if r["method"] == "dense" else f"{r['method']} d={r['density']:g} {r['materialize']}")
    for k in ("oom", "skipped"):
        r.setdefault(k, False)
    for k in ("mfu_dense", "mfu_active", "static_rel_error", "peak_bytes", "peak_reserved_bytes"):
        r.setdefault(k, None)
    r.setdefault("predicted_static_bytes", {"total": None})
    r.setdefault("static_within_tolerance", True)
    return r


def from_json(path: Path, md: Path | None, amortize_interval: int | None) -> int:
    """``--from-json``: re-print (and with ``md`` re-write) the tables of saved records."""
    from smet.bench.records import reamortize

    try:
        records = json.loads(path.read_text())
        if not isinstance(records, list) or not all(isinstance(r, dict) and "method" in r for r in records):
            raise ValueError("not a list of smet-bench records")
    except (OSError, ValueError) as err:
        print(f"smet-bench: error: --from-json {path}: {err}", file=sys.stderr)
        return 2
    records = [upgrade(r) for r in records]
    if amortize_interval is not None:
        records = reamortize(records, amortize_interval)
    cfg = records[0].get("config", {})
    every = records[0].get("amortize_interval") or cfg.get("update_interval")
    header = (f"smet-bench records from {path}: model {cfg.get('model_preset')} on {cfg.get('device_name')} "
              f"(torch {cfg.get('torch')}), batch {cfg.get('batch')} x seq {cfg.get('seq_len')}; update steps timed "
              f"every {cfg.get('update_interval')} steps, amortised over an update every {every} steps.")
    if md is not None:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(document(header, records))
    print(header + "\n\n" + markdown(records) + "\n")
    for line in ratios(records):
        print(line)
    return 0
