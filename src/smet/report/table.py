"""Grouping runs (same config except seed) and the summary table (CSV, Markdown, HTML)."""

from __future__ import annotations

import csv
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from smet.report.runs import SPARSE_OPT_KEYS, ReportError, Run, flatten

METHOD_ORDER = {"dense": 0, "static": 1, "set": 2, "rigl": 3, "smet": 4}
DEFAULT_GROUP_BY = ("method", "variant", "density", "W", "lr_scaling", "model")


def _dense_none(fn: Callable[[Run], Any]) -> Callable[[Run], Any]:
    """Sparse-only settings mean nothing for dense runs: they group (and print) as '-'."""
    return lambda r: None if r.is_dense else fn(r)


# alias -> (column title, getter)
KEYS: dict[str, tuple[str, Callable[[Run], Any]]] = {
    "method": ("method", lambda r: r.method),
    "variant": ("variant", _dense_none(lambda r: r.cfg("sparsity.variant"))),
    "density": ("density", lambda r: 1.0 if r.is_dense else _float(r.cfg("sparsity.density"))),
    "W": ("W", _dense_none(lambda r: r.cfg("optimizer.regrowth_warmup_steps"))),
    "lr_scaling": ("lr scaling", _dense_none(lambda r: r.cfg("optimizer.lr_scaling"))),
    "model": ("model", lambda r: r.cfg("model.name")),
    "seed": ("seed", lambda r: r.cfg("seed")),
    "data": ("data", lambda r: r.cfg("data.name")),
    "experiment": ("experiment", lambda r: r.cfg("experiment_name")),
    "update_interval": ("ΔT", _dense_none(lambda r: r.cfg("sparsity.update_interval"))),
    "reset_local_step": ("reset local step", _dense_none(lambda r: r.cfg("optimizer.reset_local_step"))),
    "reset_moments": ("reset moments", _dense_none(lambda r: r.cfg("optimizer.reset_moments"))),
    "max_steps": ("max steps", lambda r: r.cfg("trainer.max_steps")),
    "lr": ("lr", lambda r: r.cfg("optimizer.lr")),
}
ALIASES = {"W": "W", "w": "W", "regrowth_warmup_steps": "W", "lr-scaling": "lr_scaling", "lr_scale": "lr_scaling",
           "model.name": "model", "sparsity.method": "method", "sparsity.variant": "variant",
           "sparsity.density": "density", "optimizer.regrowth_warmup_steps": "W",
           "optimizer.lr_scaling": "lr_scaling", "data.name": "data", "experiment_name": "experiment",
           "sparsity.update_interval": "update_interval", "optimizer.reset_local_step": "reset_local_step",
           "optimizer.reset_moments": "reset_moments", "trainer.max_steps": "max_steps", "optimizer.lr": "lr"}

# config keys that never make two runs different experiments (paths, logging, bookkeeping)
IGNORED_CONFIG = {"seed", "run_name", "ckpt_path", "output_dir", "project", "group", "tags", "experiment_name",
                  "data.seed", "data.cache_dir", "data.num_workers", "data.vocab_size", "data.path",
                  "trainer.progress_bar", "trainer.model_summary", "trainer.log_every_n_steps",
                  "trainer.checkpoint_every_n_steps", "trainer.cpu_threads", "trainer.deterministic",
                  "trainer.peak_flops"}
IGNORED_PREFIXES = ("logger.", "hydra.", "tags.", "tokenizer.")


def _float(x: Any) -> Any:
    try:
        return float(x)
    except (TypeError, ValueError):
        return x


def resolve_key(key: str) -> str:
    """A --group-by key: an alias from KEYS or a dotted config path (kept as is)."""
    k = key.strip()
    k = ALIASES.get(k, k)
    return k


def key_title(key: str) -> str:
    return KEYS[key][0] if key in KEYS else key


def key_value(run: Run, key: str) -> Any:
    if key in KEYS:
        return KEYS[key][1](run)
    v = run.cfg(key)
    return tuple(v) if isinstance(v, list) else v


def fmt_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return ",".join(f"{k}={fmt_value(x)}" for k, x in v.items())
    if isinstance(v, (tuple, list)):
        return "[" + ",".join(fmt_value(x) for x in v) + "]"
    return str(v)


def _hashable(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    return v


def _sort_token(v: Any) -> tuple:
    if v is None:
        return (0, 0, "")
    if isinstance(v, bool):
        return (1, int(v), "")
    if isinstance(v, (int, float)):
        return (1, float(v), "")
    return (2, 0, str(v))


# ----------------------------------------------------------------------------- groups
@dataclass
class Group:
    keys: tuple[str, ...]
    values: tuple[Any, ...]
    runs: list[Run] = field(default_factory=list)
    label: str = ""
    mixed: list[str] = field(default_factory=list)   # config keys that differ inside the group (besides seed)
    # runs dropped as exact repeats of a kept run of this group (same config incl. seed): (dropped, kept)
    duplicates: list[tuple[Run, Run]] = field(default_factory=list)

    def value(self, key: str) -> Any:
        if key in self.keys:
            return self.values[self.keys.index(key)]
        vals = {_hashable(key_value(r, key)) for r in self.runs}
        return key_value(self.runs[0], key) if len(vals) == 1 else None

    @property
    def method(self) -> str:
        return str(self.value("method") or self.runs[0].method)

    @property
    def is_dense(self) -> bool:
        return all(r.is_dense for r in self.runs)

    @property
    def n_incomplete(self) -> int:
        return sum(not r.complete for r in self.runs)

    def status_counts(self) -> dict[str, int]:
        """{'finished': n, 'running': n, 'crashed': n} (only the non-zero ones, in that order)."""
        from smet.report.runs import STATUSES

        sts = [r.status() for r in self.runs]
        return {s: sts.count(s) for s in STATUSES if sts.count(s)}

    def status_cell(self) -> str:
        c = self.status_counts()
        if len(c) == 1:
            return next(iter(c))
        return ", ".join(f"{n} {s}" for s, n in c.items())

    # per-seed statistics
    def final_ppl(self) -> tuple[float | None, float | None]:
        return mean_std([r.final_val_ppl for r in self.runs])

    def best_ppl(self) -> float | None:
        return mean_std([r.best_val_ppl for r in self.runs])[0]

    def tokens_per_s(self) -> float | None:
        return mean_std([r.tokens_per_s for r in self.runs])[0]

    def static_mib(self, part: str) -> float | None:
        return mean_std([r.static_mib(part) for r in self.runs])[0]

    def spikes(self) -> list[float]:
        return [v for r in self.runs for v in r.spikes]

    def ratios(self) -> tuple[list[float], list[float]]:
        reg = [v for r in self.runs for v in r.update_ratios[0]]
        mat = [v for r in self.runs for v in r.update_ratios[1]]
        return reg, mat

    def steps(self) -> list[int]:
        return sorted({s for r in self.runs if (s := r.steps) is not None})

    def paired_spike(self) -> tuple[float | None, float | None, int]:
        """Paired spike vs the static run of the same seed (smet.report.paired): mean ± std over
        the group's paired runs (seeds) of each run's mean over its updates; and how many runs."""
        from smet.report.paired import run_mean

        per_run = [v for r in self.runs if (v := run_mean(r)) is not None]
        m, s = mean_std(per_run)
        return m, s, len(per_run)


def mean_std(xs: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof 1; None for one value) of the given values; None entries are
    skipped, a non-finite value (diverged run) makes the result non-finite."""
    vals = [float(x) for x in xs if x is not None]
    if not vals:
        return None, None
    mean = float(np.mean(vals))
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    return mean, std


def _candidate_keys(runs: Sequence[Run]) -> list[str]:
    keys: set[str] = set()
    for r in runs:
        for k in flatten(r.config):
            if k in IGNORED_CONFIG or k.startswith(IGNORED_PREFIXES):
                continue
            keys.add(k)
    return sorted(keys)


def _relevant_value(run: Run, key: str) -> Any:
    """Config value of ``key`` for the 'same config except seed' test (None = not applicable)."""
    if run.is_dense and (key.startswith("sparsity.") or key.split(".")[-1] in SPARSE_OPT_KEYS
                         and key.startswith("optimizer.")):
        return None
    v = run.cfg(key)
    return _hashable(v)


def _split(runs: Sequence[Run], keys: Sequence[str]) -> dict[tuple, list[Run]]:
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        out.setdefault(tuple(_hashable(key_value(r, k)) for k in keys), []).append(r)
    return out


def _differing(runs: Sequence[Run], candidates: Sequence[str]) -> list[str]:
    return [k for k in candidates if len({_relevant_value(r, k) for r in runs}) > 1]


def _sparse_only(key: str) -> bool:
    return key.startswith("sparsity.") or (key.startswith("optimizer.") and key.split(".")[-1] in SPARSE_OPT_KEYS)


def _differing_between(runs: Sequence[Run], candidates: Sequence[str]) -> list[str]:
    """Keys whose values differ between runs; a dense run's (absent) sparse-only settings do not
    count as different from a sparse run's, and the density only between sparse runs."""
    out = []
    for k in candidates:
        pool = [r for r in runs if not (r.is_dense and _sparse_only(k))]
        if len({_relevant_value(r, k) for r in pool}) > 1:
            out.append(k)
    return out


# config keys that do not make two runs different runs at all: where the run writes, what it is called,
# how it reports progress; two runs equal on everything else (the seed included) are one run twice
IDENTITY_IGNORED = {"run_name", "output_dir", "ckpt_path", "project", "group", "tags", "data.cache_dir",
                    "data.num_workers", "trainer.progress_bar", "trainer.model_summary", "trainer.cpu_threads"}
IDENTITY_IGNORED_PREFIXES = ("logger.", "hydra.", "tags.", "tokenizer.")


def identity(run: Run) -> tuple:
    """What two runs must share to be the same run (see IDENTITY_IGNORED)."""
    return tuple(sorted((k, _hashable(v)) for k, v in flatten(run.config).items()
                        if k not in IDENTITY_IGNORED and not k.startswith(IDENTITY_IGNORED_PREFIXES)))


def _completeness(run: Run) -> tuple:
    return ({"finished": 2, "running": 1}.get(run.status(), 0), run.steps or 0)


def dedupe_runs(runs: Sequence[Run]) -> tuple[list[Run], list[tuple[Run, Run]]]:
    """Keep one run of each set of identical runs (same config, seed included, apart from output
    directory / run name): the finished one with the most steps, else the first given. Returns the
    kept runs (input order) and (dropped, kept) pairs, so the same seed twice is not two seeds."""
    by_id: dict[tuple, list[Run]] = {}
    for r in runs:
        by_id.setdefault(identity(r), []).append(r)
    keep: dict[int, Run] = {}
    pairs: list[tuple[Run, Run]] = []
    for members in by_id.values():
        best = max(members, key=lambda r: (_completeness(r), -members.index(r)))
        keep[id(best)] = best
        pairs += [(r, best) for r in members if r is not best]
    return [r for r in runs if id(r) in keep], pairs


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Dotted config keys whose values differ between the runs (seed, paths, logging excluded)."""
    return _differing_between(runs, _candidate_keys(runs))


def group_runs(runs: Sequence[Run], group_by: Sequence[str] | None = None) -> list[Group]:
    """Group runs. ``group_by=None`` (auto): the default keys, plus any further config key that
    still differs between runs of one group (so a group is 'the same config except seed');
    explicit keys: exactly those (groups that mix configs list the differing keys in ``mixed``)."""
    if not runs:
        return []
    from smet.report.paired import attach_pairs

    runs, dup_of = dedupe_runs(runs)
    attach_pairs(runs)  # each sparse run's static partner (same seed/model/density/data): paired spike
    candidates = _candidate_keys(runs)
    if group_by is None:
        keys = list(DEFAULT_GROUP_BY)
        # the default keys already cover these config paths
        default_paths = {"sparsity.method", "sparsity.variant", "sparsity.density", "optimizer.regrowth_warmup_steps",
                         "optimizer.lr_scaling", "model.name"}
        alias_rank = {k: i for i, k in enumerate(KEYS)}
        extra_candidates = sorted((k for k in candidates if k not in default_paths),
                                  key=lambda k: (alias_rank.get(resolve_key(k), len(alias_rank)),
                                                 not k.endswith((".kind", ".name", ".method")), k))
        while True:
            added = False
            for members in _split(runs, keys).values():
                diff = [k for k in _differing(members, extra_candidates) if resolve_key(k) not in keys]
                if diff:
                    keys.append(resolve_key(diff[0]))
                    added = True
                    break
            if not added:
                break
    else:
        keys = [resolve_key(k) for k in group_by]
        for k in keys:
            if k not in KEYS and all(r.cfg(k) is None for r in runs):
                known = ", ".join(KEYS)
                raise ReportError("--group-by", f"unknown key {k!r}: not an alias ({known}) and no run config has it")
    parts = list(_split(runs, keys).values())
    # every further key that differs between the compared runs but is constant inside each group
    # (so the groups stay as they are) becomes a column too: e.g. a batch-16 run beside batch-4 runs
    covered = set(keys) | {p for k in keys for p, a in ALIASES.items() if a == k and "." in p}
    inside = {k for members in parts for k in _differing(members, candidates)}
    for k in _differing_between(runs, candidates):
        if k not in inside and k not in covered and resolve_key(k) not in keys:
            keys.append(resolve_key(k))
            covered.add(k)
    groups = []
    for members in parts:
        g = Group(keys=tuple(keys), values=tuple(key_value(members[0], k) for k in keys), runs=members)
        g.mixed = [k for k in _differing(members, candidates)
                   if resolve_key(k) not in keys and k not in keys]
        g.duplicates = [(d, kept) for d, kept in dup_of if kept in members]
        groups.append(g)
    groups.sort(key=lambda g: tuple(
        (METHOD_ORDER.get(str(v), 99), str(v)) if k == "method" else
        ((0, -float(v)) if isinstance(v, (int, float)) and k == "density" else (_sort_token(v),))
        for k, v in zip(g.keys, g.values)))
    _label(groups)
    return groups


def _method_implied(key: str) -> bool:
    """A key the sparsity method config sets (sparsity.*, the sparse optimizer options)."""
    if key in ("variant", "W", "lr_scaling", "update_interval", "reset_local_step", "reset_moments"):
        return True
    return key.startswith("sparsity.") or (key.startswith("optimizer.") and key.split(".")[-1] in SPARSE_OPT_KEYS)


def _label(groups: list[Group]) -> None:
    """Short legend labels: method[/variant] plus the other group keys that vary across groups."""
    # a key goes into a group's label when it tells apart groups of the same method/variant
    by_mv: dict[tuple, list[Group]] = {}
    for g in groups:
        by_mv.setdefault((g.method, _hashable(g.value("variant"))), []).append(g)
    short = {"density": "d", "lr_scaling": "lr×", "update_interval": "ΔT", "reset_local_step": "reset_step",
             "reset_moments": "reset_m", "max_steps": "steps"}
    keys_all = groups[0].keys if groups else ()
    # keys a method brings along (its sparsity/optimizer settings) are told by the method name; any
    # other key that differs between groups (batch size, LR, steps, model, ...) is in every label
    across = [i for i, k in enumerate(keys_all) if k not in ("method", "variant") and not _method_implied(k)
              and len({_hashable(g.values[i]) for g in groups
                       if g.values[i] is not None and not (g.is_dense and k == "density")}) > 1]
    for members in by_mv.values():
        keys = members[0].keys
        varying = [i for i, k in enumerate(keys) if k not in ("method", "variant")
                   and (i in across or len({_hashable(g.values[i]) for g in members}) > 1)]
        for g in members:
            parts = [g.method + (f"/{g.value('variant')}" if g.value("variant") else "")]
            for i in varying:
                k, v = g.keys[i], g.values[i]
                if v is None or (g.is_dense and k == "density"):
                    continue
                parts.append(f"{short.get(k, k.split('.')[-1])}={fmt_value(v)}")
            g.label = " ".join(parts)
    seen: dict[str, int] = {}
    for g in groups:  # keep labels unique
        if g.label in seen:
            seen[g.label] += 1
            g.label = f"{g.label} #{seen[g.label]}"
        else:
            seen[g.label] = 1


# ----------------------------------------------------------------------------- table
def _f(v: float | None, fmt: str) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return format(v, fmt)


def _pm(mean: float | None, std: float | None, fmt: str) -> str:
    if mean is None:
        return "-"
    return _f(mean, fmt) + (f" ± {_f(std, fmt)}" if std is not None else "")


def _ratio_fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


NUM_COLUMNS = ["n seeds", "status", "final val ppl", "best val ppl", "tokens/s", "static MiB (all)", "static MiB (sparse)",
               "spike mean", "paired spike vs static", "regrown / mature |Δθ|/lr", "steps"]


def table_columns(groups: Sequence[Group]) -> list[str]:
    keys = list(groups[0].keys) if groups else list(DEFAULT_GROUP_BY)
    fixed = ["method", "variant", "density", "W", "lr_scaling", "model"]
    extras = [k for k in keys if k not in fixed]
    return [key_title(k) for k in fixed] + [key_title(k) for k in extras] + list(NUM_COLUMNS)


def paired_cell(g: Group) -> str:
    """'+0.0070 ± 0.0012' (mean ± std over seeds), '(1 of 2 runs)' when not every run has a static
    partner, '-' when none has."""
    m, s, n = g.paired_spike()
    if m is None:
        return "-"
    cell = _f(m, "+.4f") + (f" ± {_f(s, '.4f')}" if s is not None else "")
    return cell + (f" ({n} of {len(g.runs)} runs)" if n < len(g.runs) else "")


def table_rows(groups: Sequence[Group]) -> list[list[str]]:
    """Display rows (strings) of the Markdown / HTML table, one per group."""
    rows = []
    for g in groups:
        fixed = ["method", "variant", "density", "W", "lr_scaling", "model"]
        extras = [k for k in g.keys if k not in fixed]
        cells = [fmt_value(g.value(k)) if k != "density" or not g.is_dense else "1" for k in fixed]
        cells += [fmt_value(g.value(k)) for k in extras]
        n_distinct = len({_hashable(r.seed) for r in g.runs})
        notes = ([f"{n_distinct} distinct"] if n_distinct < len(g.runs) else []) + (
            [f"+{len(g.duplicates)} duplicate{'s' if len(g.duplicates) > 1 else ''} not counted"]
            if g.duplicates else [])
        n = f"{len(g.runs)}" + (f" ({', '.join(notes)})" if notes else "")
        m, s = g.final_ppl()
        spikes = g.spikes()
        reg, mat = g.ratios()
        steps = g.steps()
        cells += [
            n,
            g.status_cell(),
            _pm(m, s, ".2f"),
            _f(g.best_ppl(), ".2f"),
            _f(g.tokens_per_s(), ",.0f"),
            _f(g.static_mib("all"), ".2f"),
            _f(g.static_mib("sparse"), ".2f"),
            _f(float(np.mean(spikes)), "+.4f") if spikes else "-",
            paired_cell(g),
            f"{_ratio_fmt(float(np.mean(reg)))} / {_ratio_fmt(float(np.mean(mat)))}" if reg and mat else "-",
            ("-" if not steps else str(steps[0]) if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"),
        ]
        rows.append(cells)
    return rows


def markdown_table(groups: Sequence[Group]) -> str:
    cols = table_columns(groups)
    rows = table_rows(groups)
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    n_fixed = len(cols) - len(NUM_COLUMNS)
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |",
             "|" + "|".join("---" if i < n_fixed else "---:" for i in range(len(cols))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(groups: Sequence[Group]) -> str:
    cols = table_columns(groups)
    rows = table_rows(groups)
    n_fixed = len(cols) - len(NUM_COLUMNS)
    out = ['<table class="summary">', "<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols)
           + "</tr></thead>", "<tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(f'<td{" class=num" if i >= n_fixed else ""}>{html.escape(c)}</td>'
                                    for i, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


CSV_FIELDS = ["group", "method", "variant", "density", "W", "lr_scaling", "model"]


def write_summary_csv(groups: Sequence[Group], path: Path) -> None:
    """Machine-readable summary: one row per group, plain numbers (no ± strings)."""
    extras = [k for k in (groups[0].keys if groups else ()) if k not in CSV_FIELDS]
    fields = CSV_FIELDS + extras + [
        "n_seeds", "n_incomplete", "n_running", "n_crashed", "n_duplicates", "seeds", "final_val_ppl_mean", "final_val_ppl_std", "best_val_ppl",
        "tokens_per_s", "static_mib_all", "static_mib_sparse", "spike_mean", "spike_std", "n_spikes",
        "paired_spike_mean", "paired_spike_std", "n_paired_runs", "update_ratio_regrown", "update_ratio_mature", "steps", "runs"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for g in groups:
            m, s = g.final_ppl()
            sp_m, sp_s = mean_std(g.spikes())
            pm, ps, pn = g.paired_spike()
            reg, mat = g.ratios()
            steps = g.steps()
            row = [g.label] + [_csv(g.value(k)) for k in CSV_FIELDS[1:] + extras] + [
                len(g.runs), g.n_incomplete, g.status_counts().get("running", 0), g.status_counts().get("crashed", 0),
                len(g.duplicates), " ".join(_csv(r.seed) for r in g.runs), _csv(m), _csv(s),
                _csv(g.best_ppl()), _csv(g.tokens_per_s()), _csv(g.static_mib("all")), _csv(g.static_mib("sparse")),
                _csv(sp_m), _csv(sp_s), len(g.spikes()), _csv(pm), _csv(ps), pn, _csv(mean_std(reg)[0]), _csv(mean_std(mat)[0]),
                _csv(max(steps) if steps else None), " ".join(r.source for r in g.runs)]
            if g.is_dense:
                row[CSV_FIELDS.index("density")] = "1.0"
            w.writerow(row)


def _csv(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return fmt_value(v)


def write_runs_csv(groups: Sequence[Group], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "run_name", "seed", "status", "steps", "final_val_ppl", "best_val_ppl", "tokens_per_s",
                    "spike_mean", "source", "command", "paired_spike_mean", "n_paired_updates", "paired_static",
                    "duplicate_of"])
        from smet.report.paired import run_mean

        for g in groups:
            for r in g.runs:
                w.writerow([g.label, r.name, _csv(r.seed), r.status(),
                            _csv(r.steps), _csv(r.final_val_ppl), _csv(r.best_val_ppl), _csv(r.tokens_per_s),
                            _csv(mean_std(r.spikes)[0]), r.source, r.command() or "", _csv(run_mean(r)),
                            len(r.paired_spikes) if r.paired_spikes is not None else "",
                            r.paired_with.source if r.paired_with is not None else "", ""])
            for r, kept in g.duplicates:
                w.writerow([g.label, r.name, _csv(r.seed), r.status(), _csv(r.steps), _csv(r.final_val_ppl),
                            _csv(r.best_val_ppl), _csv(r.tokens_per_s), _csv(mean_std(r.spikes)[0]), r.source,
                            r.command() or "", "", "", "", kept.source])
