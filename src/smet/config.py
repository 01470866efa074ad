"""Validation of a composed run config, before any compute.

Every check raises :class:`smet.errors.SmetConfigError` naming the offending key. Checks live in one
table-like place (this module) rather than as asserts scattered through the code.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

from smet.errors import SmetConfigError
from smet.models.options import CHECKPOINT_MODES, LOSS_IMPLS, POINTWISE_IMPLS, checkpointing_of  # noqa: F401  (re-exported)

PRECISIONS = {"32": "32-true", "32-true": "32-true", "bf16-mixed": "bf16-mixed", "bf16-true": "bf16-true",
              "16-mixed": "16-mixed", "bf16": "bf16-mixed"}


def get(cfg: Mapping, dotted: str, default: Any = None) -> Any:
    cur: Any = cfg
    for part in dotted.split("."):
        if cur is None or not hasattr(cur, "get"):
            return default
        cur = cur.get(part, None)
    return default if cur is None else cur


def _int(cfg, key, lo=None, hi=None, required=True):
    v = get(cfg, key)
    if v is None:
        if required:
            raise SmetConfigError(key, "is required")
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise SmetConfigError(key, f"must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise SmetConfigError(key, f"must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise SmetConfigError(key, f"must be <= {hi}, got {v}")
    return v


def _float(cfg, key, lo=None, hi=None, lo_open=False, hi_open=False, required=True):
    v = get(cfg, key)
    if v is None:
        if required:
            raise SmetConfigError(key, "is required")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SmetConfigError(key, f"must be a number, got {v!r}")
    v = float(v)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise SmetConfigError(key, f"must be {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise SmetConfigError(key, f"must be {'<' if hi_open else '<='} {hi}, got {v}")
    return v


def _choice(cfg, key, options, required=True):
    v = get(cfg, key)
    if v is None and not required:
        return None
    if v not in options:
        raise SmetConfigError(key, f"unknown value {v!r}; choose one of {', '.join(map(str, options))}")
    return v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bool(cfg, key) -> None:
    v = get(cfg, key)
    if v is not None and not isinstance(v, bool):
        raise SmetConfigError(key, f"must be true or false, got {v!r}")


def check_trainer(cfg: Mapping) -> None:
    _int(cfg, "trainer.max_steps", lo=1)
    _int(cfg, "trainer.val_every_n_steps", lo=1)
    _int(cfg, "trainer.log_every_n_steps", lo=1)
    _int(cfg, "trainer.accumulate_grad_batches", lo=1)
    _int(cfg, "trainer.num_nodes", lo=1)
    devices = get(cfg, "trainer.devices")
    if not (devices == "auto" or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1)):
        raise SmetConfigError("trainer.devices", f"must be a positive integer or 'auto', got {devices!r}")
    prec = str(get(cfg, "trainer.precision"))
    if prec not in PRECISIONS:
        raise SmetConfigError("trainer.precision", f"unknown precision {prec!r}; choose 32, bf16-mixed or bf16-true")
    _choice(cfg, "trainer.accelerator", ("cpu", "gpu", "cuda", "auto"))
    _choice(cfg, "trainer.progress_bar", ("rich", "plain", "tqdm", "none"))
    _choice(cfg, "trainer.on_nonfinite", ("skip", "stop", "off"), required=False)
    _float(cfg, "trainer.gradient_clip_val", lo=0.0, lo_open=True, required=False)
    _int(cfg, "trainer.checkpoint_every_n_steps", lo=1, required=False)
    _int(cfg, "trainer.cpu_threads", lo=1, required=False)
    _int(cfg, "trainer.max_consecutive_nonfinite", lo=1, required=False)
    lvb = get(cfg, "trainer.limit_val_batches")
    if lvb is not None and not ((_is_int(lvb) and lvb >= 1) or (isinstance(lvb, float) and 0.0 < lvb <= 1.0)):
        raise SmetConfigError("trainer.limit_val_batches",
                              f"must be null, an integer >= 1 (batches) or a fraction in (0, 1], got {lvb!r}")
    for key in ("deterministic", "compile", "model_summary"):
        _bool(cfg, f"trainer.{key}")


def check_optimizer(cfg: Mapping) -> None:
    _float(cfg, "optimizer.lr", lo=0.0, lo_open=True)
    _float(cfg, "optimizer.eps", lo=0.0, lo_open=True)
    _float(cfg, "optimizer.weight_decay", lo=0.0)
    _float(cfg, "optimizer.warmup_fraction", lo=0.0, hi=1.0, hi_open=True, required=False)
    _int(cfg, "optimizer.warmup_steps", lo=0, required=False)
    _float(cfg, "optimizer.min_lr_ratio", lo=0.0, hi=1.0)
    _choice(cfg, "optimizer.schedule", ("cosine", "linear", "constant"))
    betas = get(cfg, "optimizer.betas")
    if betas is None or len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
        raise SmetConfigError("optimizer.betas", f"must be two numbers in [0, 1), got {betas!r}")


def check_fused_backward(cfg: Mapping) -> None:
    """``optimizer.fused_backward`` updates each parameter inside backward and frees its gradient:
    refuse what needs the whole step's gradients (one line, before any compute)."""
    key = "optimizer.fused_backward"
    if get(cfg, key) is None:
        return
    _bool(cfg, key)
    if not get(cfg, key):
        return
    accum = int(get(cfg, "trainer.accumulate_grad_batches", 1) or 1)
    gbs = get(cfg, "data.global_batch_size")
    if gbs is not None and _is_int(gbs) and _is_int(get(cfg, "data.batch_size")):
        accum = max(accum, int(gbs) // max(1, int(get(cfg, "data.batch_size")) * world_size(cfg)))
    why = None
    if accum > 1:
        why = f"gradient accumulation ({accum} micro-batches per step) needs the summed gradient before any update"
    elif get(cfg, "trainer.gradient_clip_val") is not None:
        why = "trainer.gradient_clip_val clips by the global norm of all gradients, which no parameter's update can wait for"
    elif world_size(cfg) > 1 or str(get(cfg, "trainer.strategy", "auto")) not in ("auto", "single_device"):
        why = "multi-device strategies reduce gradients after backward; run on one device"
    elif str(get(cfg, "trainer.on_nonfinite", "skip")) == "skip":
        why = ("a non-finite gradient cannot be skipped once parameters were updated inside backward: "
               "set trainer.on_nonfinite=stop (or off)")
    if why:
        raise SmetConfigError(key, f"true is not possible here: {why}")


def check_model(cfg: Mapping) -> None:
    for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads"):
        _int(cfg, f"model.{key}", lo=1)
    if get(cfg, "model.hidden_size") % get(cfg, "model.num_heads"):
        raise SmetConfigError("model.num_heads", "must divide model.hidden_size")
    _int(cfg, "model.vocab_size", lo=1, required=False)
    for key in ("init_std", "norm_eps", "rope_theta"):
        _float(cfg, f"model.{key}", lo=0.0, lo_open=True, required=False)
    _bool(cfg, "model.gradient_checkpointing")
    checkpointing_of(get(cfg, "model", {}))
    _choice(cfg, "model.loss_impl", LOSS_IMPLS, required=False)
    _choice(cfg, "model.pointwise", POINTWISE_IMPLS, required=False)
    _int(cfg, "model.loss_chunk_tokens", lo=1, required=False)


def check_data(cfg: Mapping) -> None:
    _int(cfg, "data.seq_len", lo=1)
    _int(cfg, "data.batch_size", lo=1)
    _choice(cfg, "data.source", ("embedded", "local_files", "hub"))
    if get(cfg, "data.corpora") is not None:
        from smet.data.config import parse_corpora

        parse_corpora(get(cfg, "data.corpora"), get(cfg, "data.source"))


def check_run(cfg: Mapping) -> None:
    _int(cfg, "seed", lo=0)
    ckpt = get(cfg, "ckpt_path")
    if ckpt is not None and str(ckpt) != "auto" and not Path(os.path.expanduser(str(ckpt))).exists():
        raise SmetConfigError("ckpt_path", f"no such checkpoint file or run directory: {ckpt}")
    gbs = get(cfg, "data.global_batch_size")
    if gbs is not None:
        global_batch_layout(cfg)


def world_size(cfg: Mapping) -> int:
    devices = get(cfg, "trainer.devices", 1)
    return (devices if isinstance(devices, int) else 1) * int(get(cfg, "trainer.num_nodes", 1))


def global_batch_layout(cfg: Mapping) -> int:
    """Gradient-accumulation steps that make ``data.global_batch_size`` sequences per optimizer step
    from ``data.batch_size`` per device on ``trainer.devices`` x ``trainer.num_nodes`` devices."""
    gbs = _int(cfg, "data.global_batch_size", lo=1)
    per_step = int(get(cfg, "data.batch_size")) * world_size(cfg)
    if gbs % per_step:
        raise SmetConfigError("data.global_batch_size", f"{gbs} is not divisible by data.batch_size x devices x "
                                                        f"nodes = {per_step}")
    accum = gbs // per_step
    explicit = get(cfg, "trainer.accumulate_grad_batches", 1)
    if explicit not in (1, accum):
        raise SmetConfigError("trainer.accumulate_grad_batches",
                              f"{explicit} contradicts data.global_batch_size={gbs} (needs {accum}); set only one")
    return accum


def check_sparsity(cfg: Mapping) -> None:
    from smet.sparse.config import check_sparsity_config  # noqa: WPS433 (sparse core owns its schema)

    check_sparsity_config(get(cfg, "sparsity", {}) or {}, get(cfg, "optimizer", {}) or {}, get(cfg, "model", {}) or {})


# ----------------------------------------------------------------------------- trainer.strategy / trainer.ddp
# (smet.lightning.strategy builds the Lightning strategy from these; no Lightning import here)
DDP_DEFAULTS: dict[str, Any] = {
    "process_group_backend": None,
    "find_unused_parameters": False,
    "broadcast_buffers": False,
    "gradient_as_bucket_view": True,
    "static_graph": False,
    "bucket_cap_mb": None,  # null = PyTorch's default (25)
    "timeout_s": None,  # null = Lightning's default (30 min)
}
BACKENDS = ("gloo", "nccl", "mpi", "ucc")
_BOOL_KEYS = ("find_unused_parameters", "broadcast_buffers", "gradient_as_bucket_view", "static_graph")


def _check_backend(t: Mapping, key: str, backend: Any) -> None:
    if backend is not None and backend not in BACKENDS:
        raise SmetConfigError(key, f"unknown backend {backend!r}; choose null (nccl on GPU, gloo on CPU) or "
                                   f"{', '.join(BACKENDS)}")
    if backend == "nccl" and str(get(t, "accelerator", "auto")) == "cpu":
        raise SmetConfigError(key, "nccl needs GPUs; use gloo (or null) with accelerator=cpu")


def fsdp_options(t: Mapping) -> dict[str, Any]:
    """``trainer.fsdp`` (one option, ``process_group_backend``), checked; raises SmetConfigError naming the key."""
    given = get(t, "fsdp", {}) or {}
    if not hasattr(given, "items"):
        raise SmetConfigError("trainer.fsdp", f"must be a mapping of FSDP options, got {given!r}")
    for key in given:
        if key != "process_group_backend":
            raise SmetConfigError(f"trainer.fsdp.{key}", "unknown FSDP option; choose from process_group_backend")
    backend = given.get("process_group_backend")
    _check_backend(t, "trainer.fsdp.process_group_backend", backend)
    return {"process_group_backend": backend}


def ddp_options(t: Mapping) -> dict[str, Any]:
    """``trainer.ddp`` merged over :data:`DDP_DEFAULTS`, checked; raises SmetConfigError naming the key."""
    given = get(t, "ddp", {}) or {}
    if not hasattr(given, "items"):
        raise SmetConfigError("trainer.ddp", f"must be a mapping of DDP options, got {given!r}")
    opts = dict(DDP_DEFAULTS)
    for key, val in given.items():
        if key not in DDP_DEFAULTS:
            raise SmetConfigError(f"trainer.ddp.{key}", f"unknown DDP option; choose from {', '.join(DDP_DEFAULTS)}")
        opts[key] = DDP_DEFAULTS[key] if val is None else val
    for key in _BOOL_KEYS:
        if not isinstance(opts[key], bool):
            raise SmetConfigError(f"trainer.ddp.{key}", f"must be true or false, got {opts[key]!r}")
    _check_backend(t, "trainer.ddp.process_group_backend", opts["process_group_backend"])
    for key in ("bucket_cap_mb", "timeout_s"):
        v = opts[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise SmetConfigError(f"trainer.ddp.{key}", f"must be null or a positive number, got {v!r}")
    return opts


def check_strategy_config(t: Mapping) -> None:
    """Cheap validation of ``trainer.strategy`` / ``trainer.ddp`` (no Lightning import)."""
    name = get(t, "strategy", "auto")
    if not isinstance(name, str):
        raise SmetConfigError("trainer.strategy", f"must be a strategy name (auto, ddp, ...), got {name!r}")
    if name == "ddp":
        ddp_options(t)
    if name == "fsdp":
        fsdp_options(t)
    if name not in STRATEGIES and not name.startswith("deepspeed"):
        raise SmetConfigError("trainer.strategy", f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name.startswith("deepspeed") and name not in DEEPSPEED_STRATEGIES:
        raise SmetConfigError("trainer.strategy", f"unsupported DeepSpeed strategy {name!r}; choose "
                                                  f"{' or '.join(DEEPSPEED_STRATEGIES)}")


DEEPSPEED_STRATEGIES = ("deepspeed_stage_1", "deepspeed_stage_2")
STRATEGIES = ("auto", "single_device", "ddp", "fsdp", *DEEPSPEED_STRATEGIES)


def _sharding_engine(strategy: str) -> str | None:
    """``fsdp`` / ``deepspeed`` when ``trainer.strategy`` shards the compact values or their optimizer state."""
    if strategy == "fsdp":
        return "fsdp"
    if strategy.startswith("deepspeed"):
        return "deepspeed"
    return None


def check_sharded_sparsity(cfg: Mapping) -> None:
    """``trainer.strategy=fsdp`` (FSDP2 through Lightning's ModelParallelStrategy) shards the compact values and
    the SMET state; ``deepspeed_stage_1`` / ``_2`` (ZeRO) partitions the SMET state (and gradients) into flat
    per-layer slices (``smet.zero``). What moves slots between ranks, keeps a dense copy per rank or steps the
    optimizer inside backward is not supported with either (docs/sharding.md). One line naming the key, before
    any compute."""
    strategy = str(get(cfg, "trainer.strategy", "auto"))
    engine = _sharding_engine(strategy)
    if engine is None:
        return
    on = f"trainer.strategy={strategy}"
    if get(cfg, "optimizer.fused_backward"):
        why = ("the sharded gradients exist only after FSDP's reduce-scatter" if engine == "fsdp"
               else "DeepSpeed reduces the gradients and steps the optimizer itself")
        raise SmetConfigError("optimizer.fused_backward", f"true is not possible with {on}: {why}")
    if str(get(cfg, "sparsity.method", "dense")) == "dense":
        return
    if str(get(cfg, "sparsity.materialize", "transient")) != "transient":
        raise SmetConfigError("sparsity.materialize", "persistent keeps a dense copy of every layer on every rank, "
                                                      f"which sharding cannot split: use transient with {on}")
    if str(get(cfg, "sparsity.index", "flat")) != "flat":
        raise SmetConfigError("sparsity.index", "rows re-sorts slots at every update, moving them between ranks' "
                                                f"shards (not supported yet with {on}): use flat")
    kind = (get(cfg, "sparsity.density_schedule") or {}).get("kind", "constant")
    if kind != "constant":
        raise SmetConfigError("sparsity.density_schedule", f"{kind} changes the number of live slots, moving them "
                                                           f"between ranks' shards (not supported yet with {on}): "
                                                           "use constant")
    if str(get(cfg, "optimizer.moments", "native")) != "native":
        raise SmetConfigError("optimizer.moments", "8bit keeps per-block scales that do not follow the ranks' "
                                                   f"shards (not supported yet with {on}): use native")


DEEPSPEED_ON_CPU = False  # tests/ds_cpu_train.py lifts Lightning's CUDA-only guards and sets this


def check_devices_here(cfg: Mapping) -> None:
    """What this machine must have for the trainer asked for: run by train.py only (``validate`` is also run by
    smet-submit on login nodes without GPUs). One line naming the key, before any compute."""
    import torch

    acc = str(get(cfg, "trainer.accelerator", "auto"))
    strategy = str(get(cfg, "trainer.strategy", "auto"))
    cuda = torch.cuda.is_available()
    if strategy.startswith("deepspeed") and not DEEPSPEED_ON_CPU and (acc == "cpu" or not cuda):
        raise SmetConfigError("trainer.accelerator", f"{acc}: Lightning runs DeepSpeed (trainer.strategy={strategy}) "
                                                     "on CUDA GPUs only, and " + ("none is visible here" if not cuda
                                                                                  else "this asks for the CPU") +
                              ": use a GPU machine, or trainer=ddp_cpu / fsdp_cpu here")
    if acc in ("gpu", "cuda"):
        if not cuda:
            raise SmetConfigError("trainer.accelerator", f"{acc}: no CUDA GPU is visible on this machine "
                                                         "(torch.cuda.is_available() is False): use trainer=cpu, "
                                                         "ddp_cpu or fsdp_cpu here")
        devices = get(cfg, "trainer.devices", 1)
        if isinstance(devices, int) and devices > torch.cuda.device_count():
            raise SmetConfigError("trainer.devices", f"{devices}: this machine has {torch.cuda.device_count()} CUDA "
                                                     "GPU(s)")


def check_strategy(cfg: Mapping) -> None:
    check_strategy_config(get(cfg, "trainer", {}) or {})
    check_sharded_sparsity(cfg)


CHECKS: list[Callable[[Mapping], None]] = [check_run, check_model, check_data, check_trainer, check_strategy,
                                          check_optimizer, check_fused_backward, check_sparsity]


def validate(cfg: Mapping) -> None:
    """Run every check; the first failure raises SmetConfigError naming its key."""
    for check in CHECKS:
        check(cfg)


def resolve_ckpt_path(ckpt: str, run_dir: str | os.PathLike | None = None) -> str | None:
    """The checkpoint to resume from, checked for integrity before any compute.

    ``ckpt_path`` may be a ``.ckpt`` file (used as is; a torn or corrupt file is refused), a run
    directory (its newest intact checkpoint: ``checkpoints/last.ckpt``, a step checkpoint or a
    Lightning ``hpc_ckpt_*.ckpt``; corrupt ones are skipped with a warning), or ``auto``: this run's
    own directory when it holds a checkpoint (a SLURM requeue re-runs the same command into the same
    directory), else ``None`` (a fresh start).
    """
    from smet.checkpoints import checkpoint_problem, content_problem, newest_intact

    def pick(directory: Path, required: bool) -> str | None:
        found, skipped = newest_intact(directory)
        if found is not None and (problem := content_problem(found)) is not None:
            raise SmetConfigError("ckpt_path", f"{found} is not a usable checkpoint ({problem})")
        for path, problem in skipped:
            warnings.warn(f"ckpt_path: skipping {path} ({problem}); falling back to an older checkpoint")
        if found is not None:
            return str(found)
        if required or skipped:
            what = "holds no intact checkpoint" if skipped else "holds no checkpoint (checkpoints/*.ckpt)"
            raise SmetConfigError("ckpt_path", f"directory {directory} {what}")
        return None

    if ckpt == "auto":
        return pick(Path(run_dir), required=False) if run_dir is not None and Path(run_dir).is_dir() else None
    p = Path(os.path.expanduser(ckpt))
    if p.is_dir() and (p / "latest").is_file():  # a DeepSpeed checkpoint is itself a directory
        return str(p)
    from smet.checkpoints import is_distributed

    if is_distributed(p):  # trainer=fsdp: a distributed checkpoint is a directory too
        problem = checkpoint_problem(p) or content_problem(p)
        if problem is not None:
            raise SmetConfigError("ckpt_path", f"{p} is not a usable checkpoint ({problem}); pass its run directory "
                                               "to fall back to the newest intact one")
        return str(p)
    if p.is_dir():
        return pick(p, required=True)
    if not p.is_file():
        raise SmetConfigError("ckpt_path", f"no such checkpoint file: {p}")
    problem = checkpoint_problem(p) or content_problem(p)
    if problem is not None:
        raise SmetConfigError("ckpt_path", f"{p} is not a usable checkpoint ({problem}); pass its run directory "
                                           "to fall back to the newest intact one")
    return str(p)


# what must match between a checkpoint and the run resuming from it
RESUME_KEYS = ("model.hidden_size", "model.intermediate_size", "model.num_layers", "model.num_heads",
               "sparsity.method", "sparsity.density", "sparsity.block_size", "sparsity.allocation",
               "sparsity.targets", "data.seq_len", "model.vocab_size", "data.tokenizer.kind",
               "data.tokenizer.vocab_size", "data.tokenizer.name")


def check_resume_compatible(ckpt_path: str, cfg: Mapping) -> None:
    """Refuse a checkpoint written by a different model or sparsity layout, naming the key."""
    from smet.checkpoints import is_distributed, read_hparams

    if Path(ckpt_path).is_dir() and not is_distributed(ckpt_path):  # DeepSpeed: Lightning checks it while loading
        return
    saved = (read_hparams(ckpt_path).get("cfg") or {})
    if not saved:
        raise SmetConfigError("ckpt_path", f"{ckpt_path} has no smet run config (hyper_parameters.cfg), so it cannot "
                                           "be checked against this run; resume only checkpoints written by train.py")
    for key in RESUME_KEYS:
        if key.startswith("data.tokenizer.") and get(saved, "data.tokenizer") is None:
            continue  # a checkpoint of a config without a tokenizer section (older runs)
        old, new = get(saved, key), get(cfg, key)
        if key.startswith("sparsity.") and get(saved, "sparsity.method", "dense") == "dense" \
                and get(cfg, "sparsity.method", "dense") == "dense" and key != "sparsity.method":
            continue
        if key == "sparsity.targets" and old is not None and new is not None:
            old, new = list(old), list(new)
        if old != new:
            raise SmetConfigError(key, f"the checkpoint {ckpt_path} was trained with {key}={old!r}, this run has "
                                       f"{new!r}; resume with the same value or start a new run")


def check_output_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".smet-write-test.{os.getpid()}"  # per process: DDP ranks probe the same dir
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise SmetConfigError("hydra.run.dir", f"output directory {p} is not writable ({e.strerror})") from None
    from smet.checkpoints import clean_stale_temp_files

    for stale in clean_stale_temp_files(p):
        warnings.warn(f"removed {stale}: the temporary file of a checkpoint write that was killed")
    return p
