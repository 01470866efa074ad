"""``report.md`` (links the PNGs) and ``report.html`` (self-contained: PNGs as base64)."""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime
from pathlib import Path
from typing import Sequence

from smet.report.table import Group, html_table, markdown_table

LEGEND = (
    "Columns: one row per group of runs with the same config except the seed. *final val ppl*: "
    "the validation perplexity at the end of training (summary.json; the last logged `val/ppl` for "
    "incomplete runs), mean ± sample std over seeds; *best val ppl*: the lowest `val/ppl` each run "
    "logged, mean over seeds; *tokens/s*: mean training throughput; *static MiB*: measured static "
    "memory (weights + grads + optimizer state + sparsity metadata + buffers) of the whole model / of "
    "the sparse layers only; *spike mean*: mean over all updates and seeds of `sparsity/spike` (mean "
    "train loss of the k steps after a topology update minus the k steps up to it; > 0 = the update "
    "hurt; the loss trend makes it negative even without any effect); *paired spike vs static*: the same "
    "windows on d(t) = loss(t) − loss_static(t), the step-by-step difference to the `static` run of the same "
    "seed, model, density, data, LR and steps (identical batches, no topology updates), so trend and batch noise "
    "cancel: mean d over (u, u+k] − mean d over (u−k, u] for each update u (k = the run's "
    "`sparsity.spike_window`), averaged over a run's updates, then mean ± std over seeds; - when no such static "
    "run is among the compared runs; *regrown / mature |Δθ|/lr*: mean update size, in units of the learning rate, of freshly "
    "regrown vs mature weights on the first optimizer step after each update; *steps*: optimizer steps "
    "done; *status*: finished (summary.json written), running (no summary yet, metrics.csv written in the "
    "last 15 min), interrupted (summary.json `status: interrupted`) or crashed (no summary, stale metrics: "
    "died or killed). Identical runs (same "
    "config and seed, only the directory / run name differ) count once. Dense runs have no sparse-only "
    "settings (shown as -).")


def _runs_rows(groups: Sequence[Group]) -> list[dict]:
    rows = []
    for g in groups:
        for r in g.runs:
            ppl = r.final_val_ppl
            rows.append({
                "group": g.label, "name": r.name, "seed": "-" if r.seed is None else str(r.seed),
                "status": r.status(),
                "steps": "-" if r.steps is None else str(r.steps),
                "ppl": "-" if ppl is None else (f"{ppl:.2f}" if math.isfinite(ppl) else str(ppl)),
                "source": r.source, "command": r.command(),
                "note": (f"{r.duplicates_dropped} repeated (step, metric) cells dropped (resumed run)"
                         if r.duplicates_dropped else ""),
                "mixed": g.mixed,
            })
        for r, kept in g.duplicates:
            rows.append({
                "group": g.label, "name": r.name, "seed": "-" if r.seed is None else str(r.seed),
                "status": f"{r.status()}, duplicate (not counted)", "steps": "-" if r.steps is None else str(r.steps),
                "ppl": "-" if r.final_val_ppl is None else f"{r.final_val_ppl:.2f}", "source": r.source,
                "command": r.command(), "note": f"same config and seed as {kept.source}: not counted as a seed",
                "mixed": g.mixed,
            })
    return rows


def _short(r) -> str:
    """A run's directory name (run names repeat across ablation points), or its W&B path's last part."""
    return Path(r.source).name or r.name


def _notes(groups: Sequence[Group], skipped: dict[str, str], warnings: Sequence[str],
           info: dict | None = None) -> list[str]:
    info = info or {}
    notes = []
    if info.get("varying"):
        notes.append("the compared runs differ in: " + ", ".join(f"`{k}`" for k in info["varying"])
                     + " (seed, paths and logging settings aside); each is a column of the table.")
    if info.get("axes"):
        notes.append("swept: " + "; ".join(f"`{a}`" + (f" (with {', '.join(f'`{k}`' for k in ks if k != a)})"
                                                          if len(ks) > 1 else "") for a, ks in info["axes"])
                     + ": one *ppl_vs_KEY.png* figure each.")
    if info.get("axes_dropped"):
        notes.append(f"no figure for the further swept keys {', '.join(info['axes_dropped'])} (at most "
                     f"{len(info['axes']) - len(info['axes_dropped'])} figures).")
    if info.get("baseline"):
        notes.append(f"baseline of the difference panels: **{info['baseline']}** (choose another with --baseline).")
    notes += [f"`{name}` not drawn: {why}." for name, why in skipped.items()]
    for g in groups:
        if g.mixed:
            notes.append(f"group **{g.label}** mixes runs whose configs differ in: {', '.join(g.mixed)} "
                         "(add them to --group-by to split it).")
        c = g.status_counts()
        for st, why in (("running", "no summary.json yet, metrics.csv written recently"),
                        ("interrupted", "summary.json says status: interrupted (signal; resumable)"),
                        ("crashed", "no summary.json and metrics.csv stale: died or killed")):
            if c.get(st):
                notes.append(f"group **{g.label}**: {c[st]} of {len(g.runs)} run(s) {st} ({why}): "
                             "figures computed from metrics.csv up to the last logged step.")
        if g.duplicates:
            notes.append(f"group **{g.label}**: {len(g.duplicates)} run(s) identical to another (same config and "
                         "seed, only the directory / run name differ) not counted as separate seeds: "
                         + ", ".join(f"`{_short(d)}` = `{_short(k)}`" for d, k in g.duplicates) + ".")
    sparse = [r for g in groups for r in g.runs if not r.is_dense and r.method != "static"]
    paired = [r for r in sparse if r.paired_with is not None]
    if paired:
        notes.append(f"paired spike: {len(paired)} of {len(sparse)} sparse run(s) paired with a static run "
                     "(same seed, model, density, data, LR, steps): "
                     + ", ".join(f"{_short(r)} ↔ {_short(r.paired_with)}" for r in paired) + ".")
    notes += list(warnings)
    return notes


def write_markdown(path: Path, *, title: str, groups: Sequence[Group], images: Sequence[tuple[str, str]],
                   skipped: dict[str, str], inputs: Sequence[str], warnings: Sequence[str] = (),
                   info: dict | None = None, sections: str = "") -> None:
    n_runs = sum(len(g.runs) for g in groups)
    out = [f"# {title}", "",
           f"{n_runs} run(s) in {len(groups)} group(s), generated {datetime.now():%Y-%m-%d %H:%M} by `smet-compare` "
           f"from: {', '.join(f'`{p}`' for p in inputs)}.", "",
           "## Summary", "", markdown_table(groups), "", LEGEND, "",
           "Machine-readable: [summary.csv](summary.csv) (per group), [runs.csv](runs.csv) (per run).", ""]
    notes = _notes(groups, skipped, warnings, info)
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if sections:  # extra Markdown sections (smet.report.coldstart)
        out += [sections, ""]
    if images:
        out += ["## Figures", ""]
        for fname, caption in images:
            out += [f"### {caption}", "", f"![{caption}]({fname})", ""]
    out += ["## Runs", "", "| group | run | seed | status | steps | final val ppl | directory |",
            "|---|---|---:|---|---:|---:|---|"]
    rows = _runs_rows(groups)
    for r in rows:
        out.append(f"| {r['group']} | {r['name']} | {r['seed']} | {r['status']} | {r['steps']} | {r['ppl']} | "
                   f"`{r['source']}` |")
    out += ["", "### Command lines", "",
            "From each run's `.hydra/overrides.yaml` (run from the repository root to reproduce one run).", ""]
    for r in rows:
        out.append(f"- **{r['name']}** (`{r['source']}`)" + (f" - {r['note']}" if r["note"] else ""))
        out += (["", "  ```bash", f"  {r['command']}", "  ```"] if r["command"] else ["  (no .hydra/overrides.yaml)"])
    out.append("")
    path.write_text("\n".join(out))


CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1300px;
       color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
table.summary { display: block; overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.status-running { color: #b06000; font-weight: bold; }
td.status-crashed { color: #b00020; font-weight: bold; }
td.status-interrupted { color: #8a2be2; font-weight: bold; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; }
code, pre { background: #f5f5f5; font-size: 12px; }
pre { padding: 6px; overflow-x: auto; white-space: pre-wrap; }
.legend { font-size: 13px; color: #444; }
"""


def _md_inline(s: str) -> str:
    """The little Markdown used in notes -> HTML (escaped)."""
    import re

    s = html.escape(s)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"`(.+?)`", r"<code>\1</code>", s)
    s = re.sub(r"\*(.+?)\*", r"<i>\1</i>", s)
    return s


def write_html(path: Path, *, title: str, groups: Sequence[Group], images: Sequence[tuple[str, str]],
               skipped: dict[str, str], inputs: Sequence[str], warnings: Sequence[str] = (),
               info: dict | None = None, sections: str = "") -> None:
    out_dir = path.parent
    n_runs = sum(len(g.runs) for g in groups)
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
             f"<p>{n_runs} run(s) in {len(groups)} group(s), generated {datetime.now():%Y-%m-%d %H:%M} by "
             f"<code>smet-compare</code> from: {', '.join(f'<code>{e(p)}</code>' for p in inputs)}.</p>",
             "<h2>Summary</h2>", html_table(groups), f'<p class="legend">{_md_inline(LEGEND)}</p>']
    notes = _notes(groups, skipped, warnings, info)
    if notes:
        parts += ["<h2>Notes</h2>", "<ul>"] + [f"<li>{_md_inline(n)}</li>" for n in notes] + ["</ul>"]
    if sections:
        parts.append(markdown_sections_html(sections))
    if images:
        parts.append("<h2>Figures</h2>")
        for fname, caption in images:
            data = base64.b64encode((out_dir / fname).read_bytes()).decode("ascii")
            parts += [f"<h3>{e(caption)}</h3>",
                      f'<img alt="{e(caption)}" title="{e(fname)}" src="data:image/png;base64,{data}">']
    parts += ["<h2>Runs</h2>", "<table><thead><tr><th>group</th><th>run</th><th>seed</th><th>status</th><th>steps</th>"
              "<th>final val ppl</th><th>directory</th><th>command</th></tr></thead><tbody>"]
    for r in _runs_rows(groups):
        cmd = f"<pre>{e(r['command'])}</pre>" if r["command"] else "-"
        note = f"<br><small>{e(r['note'])}</small>" if r["note"] else ""
        parts.append(f"<tr><td>{e(r['group'])}</td><td>{e(r['name'])}</td><td class=num>{e(r['seed'])}</td>"
                     f"<td class=\"status-{e(r['status'].split(',')[0])}\">{e(r['status'])}</td><td class=num>{e(r['steps'])}</td><td class=num>{e(r['ppl'])}</td>"
                     f"<td><code>{e(r['source'])}</code>{note}</td><td>{cmd}</td></tr>")
    parts += ["</tbody></table>", "</body></html>"]
    path.write_text("\n".join(parts))


def markdown_sections_html(md: str) -> str:
    """The small Markdown of extra sections (## headings, paragraphs, pipe tables) as HTML."""
    e = html.escape
    parts: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if not rows:
            return
        head, *body = rows
        parts.append("<table><thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in head) + "</tr></thead><tbody>")
        for r in body:
            parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>")
        parts.append("</tbody></table>")
        rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-:") for c in cells):
                rows.append(cells)
            continue
        flush()
        if line.startswith("## "):
            parts.append(f"<h2>{e(line[3:])}</h2>")
        elif line.strip():
            parts.append(f"<p>{_md_inline(line)}</p>")
    flush()
    return "\n".join(parts)
