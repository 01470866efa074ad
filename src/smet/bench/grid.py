"""smet-bench's grid: composed sweep points -> benchmark runs, their dense references and labels.

The points come from :func:`smet.compose.compose_points` (``conf/bench.yaml``, swept exactly as
``train.py -m``). A benchmark run is what the harness builds and steps: the model section (vocabulary
and maximum length filled in), the sparsity and optimizer sections, ``trainer.precision``,
``trainer.compile``, ``data.batch_size`` / ``data.seq_len`` and ``seed``. Dense points that differ
only in keys a dense run never reads (``sparsity.density``, ``sparsity.materialize``, the SMET
optimizer options, ...) are ONE run. Each sparse run is compared with the dense run of the same model
/ data shape / precision / compile setting (the one with the same dense optimizer and seed when
several are).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from smet.errors import SmetConfigError

# swept keys the Markdown table always has a column for; every other swept key gets its own column
COLUMN_KEYS = ("sparsity", "sparsity.method", "sparsity.variant", "sparsity.density", "sparsity.materialize",
               "trainer.precision", "model.gradient_checkpointing", "trainer.compile")
# optimizer options only the SMET optimizer reads (a dense run's AdamW ignores them)
SPARSE_OPTIMIZER_KEYS = ("regrowth_warmup_steps", "lr_scaling", "lr_scaling_scope", "reset_local_step",
                         "reset_moments", "warmup_shape", "local_step_storage", "moments")
DENSE_SPARSITY = {"method": "dense", "density": 1.0}


@dataclass
class BenchRun:
    """One run of the benchmark (one composed point; the dense points of one shape are one run)."""

    overrides: list[str]  # the point's overrides, as on the command line
    model: dict[str, Any]  # composed model section, vocab_size / max_seq_len filled in
    sparsity: dict[str, Any]  # composed sparsity section ({"method": "dense", "density": 1.0} for dense)
    optimizer: dict[str, Any]  # composed optimizer section (dense: without the SMET optimizer options)
    precision: str
    compile: bool
    batch: int
    seq_len: int
    vocab: int
    seed: int
    update_interval: int  # sparsity.update_interval (timing of update steps, default amortisation)
    label: str = ""
    swept: dict[str, str] = field(default_factory=dict)  # swept keys beyond the table's fixed columns
    ref: int | None = None  # index of the dense reference run (sparse runs)

    @property
    def method(self) -> str:
        return str(self.sparsity.get("method", "dense"))

    @property
    def is_dense(self) -> bool:
        return self.method == "dense"

    @property
    def variant(self) -> str | None:
        v = self.sparsity.get("variant")
        return None if self.is_dense or v in (None, "") else str(v)

    @property
    def name(self) -> str:
        """The method or ablation: ``smet``, ``smet_no_reset`` (method + variant, as conf/sparsity names it)."""
        return f"{self.method}_{self.variant}" if self.variant else self.method

    @property
    def density(self) -> float:
        return 1.0 if self.is_dense else float(self.sparsity["density"])

    @property
    def materialize(self) -> str | None:
        return None if self.is_dense else str(self.sparsity.get("materialize", "transient"))

    @property
    def block_size(self) -> int | None:
        return None if self.is_dense else int(self.sparsity.get("block_size", 1))

    @property
    def ac(self) -> bool:
        """Any activation checkpointing (``model.activation_checkpointing`` / ``gradient_checkpointing``)."""
        from smet.config import checkpointing_of

        return checkpointing_of(self.model)[0] != "none"

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    def run_config(self, total_steps: int) -> dict[str, Any]:
        """The run config :func:`smet.build.build_training` builds from (``total_steps`` optimizer steps)."""
        return {"model": dict(self.model), "sparsity": dict(self.sparsity), "optimizer": dict(self.optimizer),
                "trainer": {"max_steps": int(total_steps), "precision": self.precision},
                "data": {"seq_len": self.seq_len}, "seed": self.seed}

    def shape_key(self) -> str:
        """Model / data shape / precision / compile: what a sparse run shares with its dense reference."""
        return json.dumps([self.model, self.batch, self.seq_len, self.vocab, self.precision, self.compile],
                          sort_keys=True, default=str)

    def dense_key(self) -> str:
        """What else a dense run depends on: the AdamW options and the seed."""
        opt = {k: v for k, v in self.optimizer.items() if k not in SPARSE_OPTIMIZER_KEYS}
        return json.dumps([opt, self.seed], sort_keys=True, default=str)

    def identity(self) -> str:
        if self.is_dense:
            return json.dumps([self.shape_key(), self.dense_key()])
        return json.dumps([self.shape_key(), self.sparsity, self.optimizer, self.seed], sort_keys=True, default=str)


def split_override(text: str) -> tuple[str, str]:
    """``'++sparsity.density=0.5'`` -> ``('sparsity.density', '0.5')``."""
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def bench_overrides(overrides: Sequence[str]) -> tuple[list[str], set[str]]:
    """The overrides as composed: a plain ``sparsity.<key>=...`` becomes ``++sparsity.<key>=...``, so that
    ``sparsity=dense,smet sparsity.materialize=transient,persistent`` composes (conf/sparsity/dense.yaml
    has no materialize key; a dense run ignores it). Unknown keys are still refused (smet.preflight).
    Returns the list and the keys so rewritten."""
    out, added = [], set()
    for o in overrides:
        key = o.partition("=")[0]
        if "=" in o and key.startswith("sparsity.") and key.replace(".", "").replace("_", "").isalnum():
            out.append("++" + o)
            added.add(key)
        else:
            out.append(o)
    return out, added


def _run(point, added: set[str]) -> BenchRun:
    try:
        cfg = point.plain()
    except Exception as e:  # an interpolation that does not resolve
        raise SmetConfigError("overrides", f"{' '.join(point.overrides)}: {e}") from None
    model, data = dict(cfg["model"]), dict(cfg["data"])
    vocab = model.get("vocab_size") or (data.get("tokenizer") or {}).get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise SmetConfigError("data.tokenizer.vocab_size", "smet-bench needs the vocabulary size of its synthetic "
                                                           f"tokens (or model.vocab_size), got {vocab!r}")
    seq = int(data["seq_len"])
    if model.get("max_seq_len") not in (None, "auto") and int(model["max_seq_len"]) < seq:
        raise SmetConfigError("data.seq_len", f"{seq} exceeds model.max_seq_len={model['max_seq_len']}")
    model["vocab_size"] = int(vocab)
    model["max_seq_len"] = int(model.get("max_seq_len") if model.get("max_seq_len") not in (None, "auto") else seq)
    sp = dict(cfg.get("sparsity") or DENSE_SPARSITY)
    dense = sp.get("method", "dense") == "dense"
    opt = dict(cfg["optimizer"])
    if dense:
        opt = {k: v for k, v in opt.items() if k not in SPARSE_OPTIMIZER_KEYS}
    shown = [o[2:] if o.startswith("++") and o[2:].partition("=")[0] in added else o for o in point.overrides]
    if dense:  # a dense run reads none of them (and stands for every dense point of its shape)
        shown = [o for o in shown if not split_override(o)[0].startswith("sparsity.")]
    return BenchRun(overrides=shown, model=model, sparsity=dict(DENSE_SPARSITY) if dense else sp, optimizer=opt,
                    precision=str(cfg["trainer"]["precision"]), compile=bool(cfg["trainer"].get("compile", False)),
                    batch=int(data["batch_size"]), seq_len=seq, vocab=int(vocab), seed=int(cfg.get("seed", 0)),
                    update_interval=int(sp.get("update_interval") or 1))


def swept_keys(runs: Sequence[BenchRun]) -> list[str]:
    """Keys whose override value differs between runs (first-seen order), beyond the fixed columns."""
    given = [(r.is_dense, dict(split_override(o) for o in r.overrides)) for r in runs]
    keys = list(dict.fromkeys(k for _, g in given for k in g))
    # a dense run reads no sparsity.* key: those vary when they differ between sparse runs
    return [k for k in keys if k not in COLUMN_KEYS
            and len({g.get(k) for dense, g in given if not (dense and k.startswith("sparsity."))}) > 1]


def label(run: BenchRun, varying: set[str]) -> str:
    """``dense`` / ``smet_no_reset d=0.5 transient``, then the precision / checkpointing / compile when
    they vary, then every other swept key (``lr=0.002``, ``model=130m``)."""
    from smet.run_naming import ALIASES

    base = "dense" if run.is_dense else f"{run.name} d={run.density:g} {run.materialize}"
    if "precision" in varying:
        base += f" {run.precision}"
    if "ac" in varying:
        base += f" ac={'on' if run.ac else 'off'}"
    if "compile" in varying:
        base += f" compile={'on' if run.compile else 'off'}"
    for k, v in run.swept.items():
        if v != "-":
            base += f" {ALIASES.get(k, k)}={v}"
    return base


def from_points(points: Sequence, *, dense_last: bool = False, added: set[str] = frozenset()) -> list[BenchRun]:
    """The benchmark runs of composed points: dense de-duplicated, grouped by shape (each group's dense
    run first, last with ``dense_last``), labelled, each sparse run pointing at its dense reference."""
    runs, seen = [], set()
    for p in points:
        run = _run(p, added)
        if run.identity() not in seen:
            seen.add(run.identity())
            runs.append(run)
    groups: dict[str, list[BenchRun]] = {}
    for r in runs:
        groups.setdefault(r.shape_key(), []).append(r)
    ordered: list[BenchRun] = []
    for g in groups.values():
        dense, sparse = [r for r in g if r.is_dense], [r for r in g if not r.is_dense]
        ordered += sparse + dense if dense_last else dense + sparse
    for r in ordered:
        if not r.is_dense:
            same = [i for i, d in enumerate(ordered) if d.is_dense and d.shape_key() == r.shape_key()]
            exact = [i for i in same if ordered[i].dense_key() == r.dense_key()]
            r.ref = (exact or same or [None])[0]
    keys = swept_keys(ordered)
    for r in ordered:
        given = dict(split_override(o) for o in r.overrides)
        r.swept = {k: "-" if (r.is_dense and k.startswith("sparsity")) else given.get(k, "-") for k in keys}
    varying = {k for k, f in (("precision", lambda r: r.precision), ("ac", lambda r: r.ac),
                              ("compile", lambda r: r.compile)) if len({f(r) for r in ordered}) > 1}
    labels = [label(r, varying) for r in ordered]
    for i, r in enumerate(ordered):
        r.label = labels[i] if labels.count(labels[i]) == 1 else f"{labels[i]} #{i + 1}"
    return ordered


def plan(overrides: Sequence[str], *, dense_last: bool = False, conf=None) -> list[BenchRun]:
    """The runs of ``smet-bench <overrides>``: composes ``conf/bench.yaml`` (a bad key or value raises
    :class:`smet.errors.SmetConfigError` naming it, before any compute)."""
    from smet.compose import compose_points

    rewritten, added = bench_overrides(overrides)
    points = compose_points(rewritten, config_name="bench", conf=conf)
    return from_points(points, dense_last=dense_last, added=added)
