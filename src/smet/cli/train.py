"""The training run behind ``python train.py`` (Hydra composes ``cfg``; this module runs it)."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from smet.config import (PRECISIONS, check_devices_here, check_output_dir, check_resume_compatible, get,
                         global_batch_layout, resolve_ckpt_path, validate, world_size)
from smet.errors import SmetConfigError, SmetRunError

log = logging.getLogger("smet")


def _output_dir(cfg: DictConfig) -> Path:
    if cfg.get("output_dir"):
        return Path(str(cfg.output_dir))
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # not under Hydra (e.g. called from Python)
        return Path("outputs") / time.strftime("%Y-%m-%d/%H-%M-%S")


def _launch_dir() -> str | None:
    """The directory ``train.py`` was launched from (Hydra's ``runtime.cwd``; the job may have changed
    directory with ``hydra.job.chdir=true``), else None. The data module resolves a relative
    ``data.path`` against it."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.cwd if HydraConfig.initialized() else None
    except Exception:  # not under Hydra
        return None


def _quiet_third_party() -> None:
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*is an invalid version and will not be supported.*")
    warnings.filterwarnings("ignore", message=r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


SECRET_KEYS = ("api_key", "apikey", "token", "secret", "password")


def _is_secret_key(key: str) -> bool:
    k = key.lower()
    return k in SECRET_KEYS or k.endswith(tuple("_" + s for s in SECRET_KEYS))


def redact_secrets(obj: Any) -> Any:
    """Replace secrets in a config tree by '***': values of keys that look like credentials, and any
    value equal to the W&B API key of the environment (so it never lands in config.yaml or W&B)."""
    key_env = os.environ.get("WANDB_API_KEY")

    def walk(x: Any, key: str = "") -> Any:
        if isinstance(x, dict):
            return {k: walk(v, str(k)) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v, key) for v in x]
        if x is not None and (_is_secret_key(key) or (key_env and x == key_env)):
            return "***"
        return x

    return walk(obj)


def default_run_name(resolved: dict) -> str:
    """``<model>-<method>[-<variant>][-d<density>]-s<seed>`` (multirun jobs add their swept keys:
    ``smet.run_naming``)."""
    from smet.run_naming import build_run_name

    return build_run_name(resolved)


def auto_tags(resolved: dict) -> list[str]:
    """W&B tags that make runs filterable: method, variant, density, W, LR scaling, model."""
    sp, opt = resolved.get("sparsity") or {}, resolved.get("optimizer") or {}
    tags = [f"method={sp.get('method', 'dense')}", f"model={resolved['model']['name']}"]
    if sp.get("method", "dense") != "dense":
        tags += [f"density={sp.get('density')}", f"W={opt.get('regrowth_warmup_steps')}",
                 f"lr_scaling={opt.get('lr_scaling')}"]
    if sp.get("variant"):
        tags.append(f"variant={sp['variant']}")
    return tags


def wandb_mode(value: Any) -> str:
    """``logger.wandb.mode``: offline (default; ``dryrun``, W&B's old name that Lightning's offline
    WandbLogger exports as WANDB_MODE, means the same), online or disabled."""
    mode = str(value or "offline").strip().lower()
    if mode == "dryrun":
        return "offline"
    if mode not in ("offline", "online", "disabled"):
        raise SmetConfigError("logger.wandb.mode", f"unknown mode {value!r}; choose offline, online or disabled")
    return mode


def build_loggers(cfg: DictConfig, resolved: dict, run_dir: Path) -> list:
    from smet.lightning.loggers import AppendingCSVLogger

    loggers: list = [AppendingCSVLogger(save_dir=str(run_dir), name="", version="")]
    wcfg = (resolved.get("logger") or {}).get("wandb")
    if wcfg:
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        mode = wandb_mode(wcfg.get("mode"))
        loggers.append(
            WandbLogger(
                project=wcfg.get("project") or "smet",
                entity=wcfg.get("entity"),
                name=wcfg.get("name"),
                group=wcfg.get("group"),
                tags=list(dict.fromkeys(list(wcfg.get("tags") or []) + auto_tags(resolved))),
                save_dir=str(run_dir),
                offline=(mode == "offline"),
                mode=mode,
                config=resolved,
                log_model=False,
                job_type=wcfg.get("job_type") or "train",
                # no W&B run history / summary dump on the console at finish (train.log has the summary)
                settings=wandb.Settings(quiet=True, console="off"),
            )
        )
        with _redacted_argv():  # W&B records the command line in its run metadata: no secrets there
            _ = loggers[-1].experiment
    return loggers


@contextlib.contextmanager
def _redacted_argv():
    saved = list(sys.argv)
    key_env = os.environ.get("WANDB_API_KEY")

    def clean(arg: str) -> str:
        key, sep, value = arg.partition("=")
        if sep and (_is_secret_key(key.lstrip("+~").rsplit(".", 1)[-1]) or (key_env and value == key_env)):
            return f"{key}=***"
        return arg

    sys.argv[:] = [clean(a) for a in saved]
    try:
        yield
    finally:
        sys.argv[:] = saved


def defer_init(cfg) -> bool:
    """Build the model on the meta device and allocate it on the GPU in ``LMModule.configure_model``
    (``smet.build``): on CUDA trainers, DeepSpeed ZeRO-1/2 included (Lightning calls ``configure_model``
    before ``deepspeed.initialize``, which then partitions the allocated model). Keeps a LLaMA-13B sparse
    run from ever allocating dense weights or a host-RAM copy of the model, and gives every CUDA trainer
    the same initial weights and masks (a CUDA generator: ``smet.sparse.topology.init_sparse_layers``)."""
    t = cfg.trainer
    return str(t.accelerator) in ("gpu", "cuda")


def build_trainer(cfg: DictConfig, run_dir: Path, tokens_per_step: int, flops_per_token: float,
                  active_flops_per_token: float | None, loggers: list, sparse: bool = False):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    from smet.console import ProgressLog, stdout_is_tty
    from smet.lightning.callbacks import ConsoleProgress, SparsityCallback, StepProgressBar, ThroughputMonitor
    from smet.lightning.strategy import build_strategy
    from smet.lightning.checkpoint_io import AtomicCheckpointIO

    t = cfg.trainer
    accum = int(t.accumulate_grad_batches)
    every_ckpt = int(t.get("checkpoint_every_n_steps") or t.val_every_n_steps)
    callbacks: list = [
        ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="step{step:07d}", auto_insert_metric_name=False,
                        every_n_train_steps=every_ckpt, save_last=True, save_top_k=2, monitor="step", mode="max",
                        enable_version_counter=False),  # a resumed run updates its own last.ckpt (no last-v1)
        ThroughputMonitor(tokens_per_step, flops_per_token, active_flops_per_token,
                          log_every_n_steps=int(t.log_every_n_steps), peak_flops=t.get("peak_flops")),
    ]
    # rich (default): the rich bar on a TTY, else (a log file, nohup, SLURM .out) plain lines every
    # log_every_n_steps; plain: always the lines; tqdm / none: the lines go to train.log only
    bar = t.get("progress_bar", "rich")
    if bar == "rich" and not stdout_is_tty():
        bar = "plain"
    progress = ProgressLog(file_only=bar != "plain")
    if sparse:
        callbacks.append(SparsityCallback(spike_window=int(get(cfg, "sparsity.spike_window", 10)), progress=progress))
    callbacks.append(ConsoleProgress(progress, int(t.max_steps), int(t.log_every_n_steps), tokens_per_step))
    if bar == "rich":
        callbacks.append(StepProgressBar(leave=True))
    elif bar == "tqdm":
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, int(t.log_every_n_steps))))
    from smet.lightning.interrupt import GracefulInterrupt

    callbacks.append(GracefulInterrupt(run_dir / "checkpoints"))  # last: after this step's topology update
    accelerator = "gpu" if t.accelerator == "cuda" else t.accelerator
    return L.Trainer(
        accelerator=accelerator,
        devices=t.devices,
        num_nodes=int(t.num_nodes),
        strategy=build_strategy(t),
        precision=PRECISIONS[str(t.precision)],
        max_steps=int(t.max_steps),
        val_check_interval=int(t.val_every_n_steps) * accum,
        check_val_every_n_epoch=None,
        limit_val_batches=t.get("limit_val_batches"),
        num_sanity_val_steps=0,
        log_every_n_steps=int(t.log_every_n_steps),
        accumulate_grad_batches=accum,
        gradient_clip_val=t.get("gradient_clip_val"),
        deterministic=bool(t.get("deterministic", False)),
        use_distributed_sampler=False,
        enable_progress_bar=bar in ("rich", "tqdm"),
        enable_model_summary=bool(t.get("model_summary", False)),  # smet prints its own model line
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()] if "deepspeed" not in str(t.get("strategy") or "") else None,
        logger=loggers,
        callbacks=callbacks,
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """One training run, as named steps: check the config, prepare the data and the run directory,
    build the module and the trainer, fit, then summarise (summary.json, console, W&B)."""
    run_dir, ckpt_path = check_run(cfg)
    dm, resolved = prepare_data(cfg, run_dir)
    module, trainer, loggers, fpt, active_fpt = build_run(cfg, resolved, dm, run_dir)
    wall = fit(cfg, module, trainer, dm, run_dir, ckpt_path, resolved, fpt, active_fpt)
    summary = summarize(cfg, module, trainer, dm, run_dir, resolved, wall)
    return report(summary, loggers, trainer, run_dir)


def check_run(cfg: DictConfig) -> tuple[Path, str | None]:
    """Cheap checks first (bad input fails here, before any compute): the config, the output dir,
    the checkpoint to resume from. Returns (run dir, resolved ckpt path or None)."""
    validate(cfg)
    check_devices_here(cfg)
    if get(cfg, "data.global_batch_size") is not None:
        cfg.trainer.accumulate_grad_batches = global_batch_layout(cfg)
    run_dir = check_output_dir(_output_dir(cfg))
    ckpt_path = resolve_ckpt_path(str(cfg.ckpt_path), run_dir) if cfg.get("ckpt_path") else None
    if ckpt_path:
        check_resume_compatible(ckpt_path, cfg)
        from smet.checkpoints import read_step

        step = read_step(ckpt_path)
        log.info("resuming from %s%s", ckpt_path, "" if step is None else f" (step {step})")
    return run_dir, ckpt_path


def prepare_data(cfg: DictConfig, run_dir: Path):
    """Seed, tokenise (or load the cache) and write the run's config.yaml and tokenizer.json.
    Returns (datamodule, the resolved and redacted run config)."""
    _quiet_third_party()
    import lightning as L
    import torch

    from smet.data import build_datamodule

    dm = build_datamodule(cfg.data, base_dir=_launch_dir())  # validates data keys (e.g. data.path); cheap
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if t_threads := get(cfg, "trainer.cpu_threads"):
        torch.set_num_threads(int(t_threads))

    log.info("preparing data (%s)...", cfg.data.name)
    dm.prepare()
    mv = get(cfg, "model.vocab_size")
    if isinstance(mv, int) and mv < dm.vocab_size:
        raise SmetConfigError("model.vocab_size", f"{mv} is smaller than the tokenizer's {dm.vocab_size} tokens; "
                                                  "leave it null (the tokenizer's size) or raise it")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    from smet.run_naming import apply_run_identity

    apply_run_identity(resolved)  # run_name from the swept overrides (multirun); W&B name, group, tags
    resolved["data"]["vocab_size"] = dm.vocab_size
    resolved = redact_secrets(resolved)
    from smet.export.run_tokenizer import keep_run_tokenizer

    keep_run_tokenizer(run_dir, dm, resolved)  # <run>/tokenizer.json + its sha256 as config `tokenizer:`
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    return dm, resolved


def build_run(cfg: DictConfig, resolved: dict, dm, run_dir: Path):
    """The LightningModule (model, controller, optimizer via smet.build.build_training), the loggers
    and the trainer. Returns (module, trainer, loggers, FLOPs/token dense, FLOPs/token active)."""
    from smet.lightning.module import LMModule
    from smet.models.llama import flops_per_token

    module = LMModule(resolved, vocab_size=dm.vocab_size, defer_init=defer_init(cfg))
    if get(cfg, "trainer.compile"):
        module.model.compile()
    loggers = build_loggers(cfg, resolved, run_dir)
    tokens_per_step = (int(cfg.data.batch_size) * int(cfg.data.seq_len) * int(cfg.trainer.accumulate_grad_batches)
                       * world_size(cfg))
    fpt = flops_per_token(module.model.config)
    active_fpt = 6.0 * module.sparse.active_params_excluding_embedding() if module.sparse is not None else None
    trainer = build_trainer(cfg, run_dir, tokens_per_step, fpt, active_fpt, loggers, sparse=module.sparse is not None)
    return module, trainer, loggers, fpt, active_fpt


def fit(cfg: DictConfig, module, trainer, dm, run_dir: Path, ckpt_path: str | None, resolved: dict, fpt: float,
        active_fpt: float | None) -> float:
    """Train to trainer.max_steps (or resume); a non-finite stop exits 3, an interrupt 128+signal;
    a final validation when the last step had none. Returns the wall time in seconds."""
    if trainer.is_global_zero:
        log.info("%s", model_line(resolved, module, module.model.num_params(), dm.vocab_size, fpt, active_fpt,
                                  run_dir))
    t0 = time.time()
    fit_kwargs = {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, **fit_kwargs)
    if module.nonfinite_stop is not None:
        ck = run_dir / "checkpoints" / f"nonfinite-step{module.nonfinite_stop:07d}.ckpt"
        trainer.save_checkpoint(str(ck))
        print(f"smet: error: non-finite loss or gradients at step {module.nonfinite_stop}; stopped "
              f"({module.nonfinite_reason}). State before that step: {ck}", file=sys.stderr, flush=True)
        sys.exit(3)
    interrupt = next((c for c in trainer.callbacks if c.__class__.__name__ == "GracefulInterrupt"), None)
    if interrupt is not None and interrupt.signum is not None:
        _finish_interrupted(interrupt, trainer, run_dir, time.time() - t0)
    if getattr(module, "last_val_step", None) != trainer.global_step:
        trainer.validate(module, datamodule=dm, verbose=False)
    return time.time() - t0


def summarize(cfg: DictConfig, module, trainer, dm, run_dir: Path, resolved: dict, wall: float) -> dict[str, Any]:
    """The run's summary (what summary.json, the console and smet-compare read)."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if hasattr(v, "__float__")}
    tp = next((c for c in trainer.callbacks if c.__class__.__name__ == "ThroughputMonitor"), None)
    sc = next((c for c in trainer.callbacks if c.__class__.__name__ == "SparsityCallback"), None)
    summary = {
        "run_dir": str(run_dir),
        "run_name": resolved.get("run_name"),
        "steps": int(trainer.global_step),
        "val_loss": metrics.get("val/loss"),
        "val_ppl": metrics.get("val/ppl"),
        "unigram_ppl": dm.unigram_perplexity(),
        "tokens_per_s": tp.mean_tokens_per_s if tp else None,
        "tokens_per_s_per_device": (tp.mean_tokens_per_s / world_size(cfg)) if tp and tp.mean_tokens_per_s else None,
        "peak_mem_gib": tp.peak_mem_gib if tp else None,
        "devices": world_size(cfg),
        "strategy": str(get(cfg, "trainer.strategy", "auto")),
        "wall_s": round(wall, 1),
        "params": module.model.num_params(),
        "method": (resolved.get("sparsity") or {}).get("method", "dense"),
        "density": module.sparse.density() if module.sparse is not None else 1.0,
        "spike_mean": (sum(v for _, v in sc.spikes) / len(sc.spikes)) if sc and sc.spikes else None,
        "update_ratio_regrown": _mean([r for _, r, _ in sc.update_ratios]) if sc else None,
        "update_ratio_mature": _mean([m for _, _, m in sc.update_ratios]) if sc else None,
        "static_bytes": _static_bytes(module, trainer),
        "nonfinite_steps": [st for st, _ in module.nonfinite_events],
        "metrics_csv": str(run_dir / "metrics.csv"),
        "checkpoint_dir": str(run_dir / "checkpoints"),
        "wandb_dir": None,
    }
    final_ok = summary["val_ppl"] is not None and math.isfinite(summary["val_ppl"])
    summary["status"] = "ok" if final_ok else "nonfinite"
    return summary


def report(summary: dict[str, Any], loggers: list, trainer, run_dir: Path) -> dict[str, Any]:
    """W&B summary and finish, summary.json, the console summary; a non-finite result exits 3."""
    final_ok = summary["status"] == "ok"
    for lg in loggers:
        if lg.__class__.__name__ == "WandbLogger":
            try:
                summary["wandb_dir"] = str(Path(lg.experiment.dir).parent)
                # val loss/ppl are in the W&B summary already as val/loss, val/ppl (one naming)
                lg.experiment.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))
                                              and k not in ("val_loss", "val_ppl")})
            except Exception:  # pragma: no cover - wandb disabled
                pass
    if trainer.is_global_zero:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        _print_summary(summary, next_commands=not _is_multirun_job() and final_ok)
    for lg in loggers:
        if lg.__class__.__name__ == "WandbLogger":
            lg.experiment.finish(exit_code=0 if final_ok else 3)
    if not final_ok:  # never report a nan/inf result as a success
        print(f"smet: error: the final validation perplexity is {summary['val_ppl']} (non-finite); "
              f"{len(summary['nonfinite_steps'])} step(s) were skipped as non-finite. The run is marked "
              f"status nonfinite in {run_dir / 'summary.json'}", file=sys.stderr, flush=True)
        sys.exit(3)
    return summary


def resume_command(run_dir: Path) -> str:
    """``python train.py <this run's overrides> hydra.run.dir=R ckpt_path=R`` (secrets masked)."""
    import shlex

    from smet.redact import redact_text

    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # not under Hydra
        overrides = []
    keep = [o for o in overrides if o.partition("=")[0].lstrip("+~") not in ("ckpt_path", "hydra.run.dir")]
    return redact_text(shlex.join(["python", "train.py", *keep, f"hydra.run.dir={run_dir}", f"ckpt_path={run_dir}"]))


def _finish_interrupted(interrupt, trainer, run_dir: Path, wall: float) -> None:
    """A run stopped by a signal: summary.json says so, the console says how to resume, and the exit
    code is 128 + the signal number (143 SIGTERM, 130 SIGINT), never 0."""
    ck = interrupt.checkpoint
    summary = {"run_dir": str(run_dir), "status": "interrupted", "signal": interrupt.signal_name,
               "steps": int(trainer.global_step), "wall_s": round(wall, 1),
               "checkpoint": str(ck) if ck else None, "metrics_csv": str(run_dir / "metrics.csv")}
    if trainer.is_global_zero:
        from smet.atomic import atomic_write

        text = json.dumps(summary, indent=2)
        atomic_write(run_dir / "summary.json", lambda f: f.write(text.encode()))
        msg = (f"smet: interrupted by {interrupt.signal_name} at step {trainer.global_step}; checkpoint {ck}\n"
               f"  resume: {resume_command(run_dir)}")
        log.info(msg.replace("\n", " |"))
        print(msg, file=sys.stderr, flush=True)
    for lg in trainer.loggers:
        if lg.__class__.__name__ == "WandbLogger":
            try:
                lg.experiment.finish(exit_code=128 + int(interrupt.signum))
            except Exception:  # pragma: no cover
                pass
    sys.exit(128 + int(interrupt.signum))


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else None


def _static_bytes(module, trainer) -> dict | None:
    try:
        from smet.sparse.memory import measure_static
    except ImportError:  # pragma: no cover
        return None
    opt = trainer.optimizers[0] if trainer.optimizers else None
    from smet import zero

    if type(opt).__name__ == zero.ZERO_OPTIMIZER:  # DeepSpeed ZeRO: flat buffers, fp32 partitions (this rank's)
        return zero.measure_static(module.model, opt, module.sparse)
    return measure_static(module.model, opt, module.sparse)


def _is_multirun_job() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # not under Hydra
        return False


def model_line(resolved: dict, module, n_params: int, vocab: int, fpt: float, active_fpt: float | None,
               run_dir: Path) -> str:
    """``model tiny: smet d=0.25, 1.90M params (0.48M active in sparse layers of 1.57M), vocab 4096,
    seq 128, 11.4 MFLOPs/token (3.6 active); run dir ...``"""
    sp = resolved.get("sparsity") or {}
    method = sp.get("method", "dense")
    head = f"model {resolved['model']['name']}: {method}"
    if sp.get("variant"):
        head += f" ({sp['variant']})"
    ctrl = module.sparse
    if ctrl is not None:
        head += f" d={sp.get('density')}"
        params = (f"{n_params / 1e6:.2f}M params ({ctrl.active_weights() / 1e6:.2f}M active in sparse layers "
                  f"of {ctrl.dense_weights() / 1e6:.2f}M)")
    else:
        params = f"{n_params / 1e6:.2f}M params ({module.model.num_params(False) / 1e6:.2f}M without embedding)"
    flops = f"{fpt / 1e6:,.1f} MFLOPs/token" + (f" ({active_fpt / 1e6:,.1f} active)" if active_fpt else "")
    return (f"{head}, {params}, vocab {vocab}, seq {resolved['data']['seq_len']}, {flops}; "
            f"run {resolved.get('run_name')} in {run_dir}")


def _print_summary(s: dict, next_commands: bool = False) -> None:
    ppl = s["val_ppl"]
    lines = [
        "",
        (f"Training finished" if s.get("status", "ok") == "ok" else "Training ENDED WITH A NON-FINITE RESULT") + f"{' (' + s['run_name'] + ')' if s.get('run_name') else ''}: "
        f"{s['steps']} steps in {s['wall_s']} s"
        + (f", {s['tokens_per_s']:,.0f} tokens/s" if s.get("tokens_per_s") else ""),
        f"  final validation perplexity: {ppl:.2f}" if ppl is not None and math.isfinite(ppl) else
        f"  final validation perplexity: {ppl}",
        f"  unigram baseline perplexity: {s['unigram_ppl']:.2f}" if s.get("unigram_ppl") else "",
        f"  metrics (CSV):  {s['metrics_csv']}",
        f"  checkpoints:    {s['checkpoint_dir']}  (resume: ckpt_path={s['run_dir']})",
    ]
    if s.get("method") not in (None, "dense"):
        extra = f"  sparsity: {s['method']} at density {s['density']:.4f}"
        if s.get("spike_mean") is not None:
            extra += f"; mean loss spike after updates {s['spike_mean']:+.4f}"
        if s.get("update_ratio_regrown") is not None:
            extra += f"; first update |dw|/lr regrown {s['update_ratio_regrown']:.3f} vs mature {s['update_ratio_mature']:.3f}"
        lines.append(extra)
    if s.get("wandb_dir"):
        lines.append(f"  W&B run:        {s['wandb_dir']}")
    lines.append(f"  summary:        {Path(s['run_dir']) / 'summary.json'}")
    if next_commands:
        import shlex

        rd = shlex.quote(str(s["run_dir"]))
        lines += ["  next:",
                  f"    export:   smet-export {rd} --out {shlex.quote(str(Path(s['run_dir']) / 'export'))}",
                  f"    generate: smet-generate {rd} --prompt \"In the beginning\""]
    from smet.console import echo

    echo("\n".join(line for line in lines if line))  # console and train.log


def precheck_output_dirs(argv: list[str]) -> None:
    """Fail with one line (exit 2) when the run/sweep directory cannot be created: Hydra would
    otherwise stop with a traceback. Checks ``hydra.run.dir`` / ``hydra.sweep.dir`` overrides, else
    the default ``outputs/`` (or ``multirun/``) under the current directory."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    target = ([a.split("=", 1)[1] for a in argv if a.startswith(key + "=")] or [None])[-1]  # Hydra uses the last
    path = Path(target if target and "${" not in target else ("multirun" if multirun else "outputs")).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:  # a real probe (root passes os.access checks even where nothing can be created, e.g. /proc)
        os.rmdir(tempfile.mkdtemp(prefix=".smet-probe-", dir=probe))
        return
    except OSError:
        print(f"smet: error: {key}: cannot create the output directory {path} ({probe} is not a writable "
              "directory); pass a writable one, e.g. hydra.run.dir=/path/to/runs/NAME", file=sys.stderr, flush=True)
        sys.exit(2)


@contextlib.contextmanager
def _wandb_env_scope():
    """Each run (each multirun job) starts from the same WANDB_* environment: Lightning's offline
    WandbLogger exports WANDB_MODE=dryrun, which the next job would read back through
    conf/logger/wandb.yaml. Also finishes a W&B run a failed job left open (the next job would reuse it)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}
    try:
        yield
    finally:
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            with contextlib.suppress(Exception):
                wandb.finish(exit_code=1)
        for k in [k for k in os.environ if k.startswith("WANDB_") and k not in saved]:
            del os.environ[k]
        os.environ.update(saved)


def _record_failed_job(cfg: DictConfig, error: str) -> None:
    """A failed multirun job: summary.json ``status: failed`` (the sweep goes on; the end-of-sweep
    table shows it and the multirun exits non-zero)."""
    try:
        run_dir = _output_dir(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").write_text(json.dumps({"run_dir": str(run_dir), "status": "failed",
                                                          "error": error[-2000:]}, indent=2))
    except Exception:  # pragma: no cover - unwritable dir: the table shows the job as failed anyway
        pass


def main_with_errors(cfg: DictConfig) -> dict[str, Any] | None:
    """Hydra entry: bad input → one clear line on stderr and exit code 2 (no traceback). In a
    multirun a failed job is recorded (summary.json status failed) and the sweep continues."""
    multirun = _is_multirun_job()
    with _wandb_env_scope():
        try:
            return run(cfg)
        except SmetConfigError as err:
            print(f"smet: error: {err}", file=sys.stderr, flush=True)
            if not multirun:
                sys.exit(2)
            _record_failed_job(cfg, f"smet: error: {err}")
        except SmetRunError as err:  # e.g. disk full while writing a checkpoint: one line, exit 1
            print(f"smet: error: {err}", file=sys.stderr, flush=True)
            if not multirun:
                sys.exit(1)
            _record_failed_job(cfg, f"smet: error: {err}")
        except SystemExit as err:  # exit 3 (non-finite): a multirun records it and goes on; signals end the sweep
            if not multirun or err.code in (0, None) or (isinstance(err.code, int) and err.code >= 128):
                raise
            if not (_output_dir(cfg) / "summary.json").exists():
                _record_failed_job(cfg, f"exit code {err.code} (non-finite training)")
        except Exception as err:
            if not multirun:
                raise
            log.exception("job failed: %s", err)
            _record_failed_job(cfg, f"{type(err).__name__}: {err}")
    return None


if os.environ.get("SMET_DEBUG"):
    logging.basicConfig(level=logging.DEBUG)
