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

from smet.config import (PRECISIONS, check_output_dir, check_resume_compatible, get, global_batch_layout,
                         resolve_ckpt_path, validate, world_size)
from smet.errors import SmetConfigError

log = logging.getLogger("smet")


def _output_dir(cfg: DictConfig) -> Path:
    if cfg.get("output_dir"):
        return Path(str(cfg.output_dir))
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # not under Hydra (e.g. called from Python)
        return Path("outputs") / time.strftime("%Y-%m-%d/%H-%M-%S")


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
    sp = resolved.get("sparsity") or {}
    method = sp.get("method", "dense")
    variant = f"-{sp['variant']}" if sp.get("variant") else ""
    dens = "" if method == "dense" else f"-d{sp.get('density')}"
    return f"{resolved['model']['name']}-{method}{variant}{dens}-s{resolved.get('seed')}"


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


def build_loggers(cfg: DictConfig, resolved: dict, run_dir: Path) -> list:
    from smet.lightning.loggers import AppendingCSVLogger

    loggers: list = [AppendingCSVLogger(save_dir=str(run_dir), name="", version="")]
    wcfg = (resolved.get("logger") or {}).get("wandb")
    if wcfg:
        from lightning.pytorch.loggers import WandbLogger

        mode = str(wcfg.get("mode") or "offline")
        if mode not in ("offline", "online", "disabled"):
            raise SmetConfigError("logger.wandb.mode", f"unknown mode {mode!r}; choose offline, online or disabled")
        loggers.append(
            WandbLogger(
                project=wcfg.get("project") or "smet",
                entity=wcfg.get("entity"),
                name=wcfg.get("name"),
                group=wcfg.get("group"),
                tags=list(wcfg.get("tags") or []) + auto_tags(resolved),
                save_dir=str(run_dir),
                offline=(mode == "offline"),
                mode=mode,
                config=resolved,
                log_model=False,
                job_type=wcfg.get("job_type") or "train",
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
    (``smet.build``): on CUDA trainers, except DeepSpeed (dense only; it partitions at setup). Keeps a
    LLaMA-13B sparse run from ever allocating dense weights or a host-RAM copy of the model."""
    t = cfg.trainer
    return str(t.accelerator) in ("gpu", "cuda") and "deepspeed" not in str(t.get("strategy") or "")


def build_trainer(cfg: DictConfig, run_dir: Path, tokens_per_step: int, flops_per_token: float,
                  active_flops_per_token: float | None, loggers: list, sparse: bool = False):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    from smet.lightning.callbacks import SparsityCallback, StepProgressBar, ThroughputMonitor
    from smet.lightning.strategy import build_strategy
    from smet.lightning.checkpoint_io import AtomicCheckpointIO

    t = cfg.trainer
    accum = int(t.accumulate_grad_batches)
    every_ckpt = int(t.get("checkpoint_every_n_steps") or t.val_every_n_steps)
    callbacks: list = [
        ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="step{step:07d}", auto_insert_metric_name=False,
                        every_n_train_steps=every_ckpt, save_last=True, save_top_k=2, monitor="step", mode="max"),
        ThroughputMonitor(tokens_per_step, flops_per_token, active_flops_per_token,
                          log_every_n_steps=int(t.log_every_n_steps), peak_flops=t.get("peak_flops")),
    ]
    if sparse:
        callbacks.append(SparsityCallback(spike_window=int(get(cfg, "sparsity.spike_window", 10))))
    bar = t.get("progress_bar", "rich")
    if bar == "rich":
        callbacks.append(StepProgressBar(leave=True))
    elif bar == "tqdm":
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, int(t.log_every_n_steps))))
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
        enable_progress_bar=bar != "none",
        enable_model_summary=bool(t.get("model_summary", True)),
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()] if "deepspeed" not in str(t.get("strategy") or "") else None,
        logger=loggers,
        callbacks=callbacks,
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Validate, build data/model/trainer, fit, print and return the summary."""
    validate(cfg)  # cheap checks first: bad input fails here, before any compute
    if get(cfg, "data.global_batch_size") is not None:
        cfg.trainer.accumulate_grad_batches = global_batch_layout(cfg)
    run_dir = check_output_dir(_output_dir(cfg))
    ckpt_path = resolve_ckpt_path(str(cfg.ckpt_path), run_dir) if cfg.get("ckpt_path") else None
    if ckpt_path:
        check_resume_compatible(ckpt_path, cfg)
        log.info("resuming from %s", ckpt_path)

    _quiet_third_party()
    import lightning as L
    import torch

    from smet.data import build_datamodule
    from smet.lightning.module import LMModule
    from smet.models.llama import flops_per_token

    dm = build_datamodule(cfg.data)  # validates data keys (e.g. data.path) without heavy work
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if t_threads := get(cfg, "trainer.cpu_threads"):
        torch.set_num_threads(int(t_threads))

    log.info("preparing data (%s)...", cfg.data.name)
    dm.prepare()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if not resolved.get("run_name"):
        resolved["run_name"] = default_run_name(resolved)
        if (resolved.get("logger") or {}).get("wandb"):
            resolved["logger"]["wandb"]["name"] = resolved["run_name"]
    resolved["data"]["vocab_size"] = dm.vocab_size
    resolved = redact_secrets(resolved)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))

    module = LMModule(resolved, vocab_size=dm.vocab_size, defer_init=defer_init(cfg))
    mcfg = module.model.config
    if get(cfg, "trainer.compile"):
        module.model.compile()

    loggers = build_loggers(cfg, resolved, run_dir)
    tokens_per_step = (int(cfg.data.batch_size) * int(cfg.data.seq_len) * int(cfg.trainer.accumulate_grad_batches)
                       * world_size(cfg))
    fpt = flops_per_token(mcfg)
    active_fpt = 6.0 * module.sparse.active_params_excluding_embedding() if module.sparse is not None else None
    trainer = build_trainer(cfg, run_dir, tokens_per_step, fpt, active_fpt, loggers, sparse=module.sparse is not None)

    n_params = module.model.num_params()
    if trainer.is_global_zero:
        log.info("model %s: %.2fM parameters (%.2fM without embedding), vocab %d, seq %d; run dir %s",
                 mcfg.hidden_size, n_params / 1e6, module.model.num_params(False) / 1e6, dm.vocab_size,
                 cfg.data.seq_len, run_dir)
    t0 = time.time()
    fit_kwargs = {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, **fit_kwargs)
    if module.nonfinite_stop is not None:
        ck = run_dir / "checkpoints" / f"nonfinite-step{module.nonfinite_stop:07d}.ckpt"
        trainer.save_checkpoint(str(ck))
        print(f"smet: error: non-finite loss or gradients at step {module.nonfinite_stop}; stopped "
              f"(trainer.on_nonfinite=stop). State before that step: {ck}", file=sys.stderr, flush=True)
        sys.exit(3)
    if getattr(module, "last_val_step", None) != trainer.global_step:
        trainer.validate(module, datamodule=dm, verbose=False)
    wall = time.time() - t0

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if hasattr(v, "__float__")}
    tp = next((c for c in trainer.callbacks if c.__class__.__name__ == "ThroughputMonitor"), None)
    sc = next((c for c in trainer.callbacks if c.__class__.__name__ == "SparsityCallback"), None)
    summary = {
        "run_dir": str(run_dir),
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
        "params": n_params,
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
    for lg in loggers:
        if lg.__class__.__name__ == "WandbLogger":
            try:
                summary["wandb_dir"] = str(Path(lg.experiment.dir).parent)
                lg.experiment.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
            except Exception:  # pragma: no cover - wandb disabled
                pass
    if trainer.is_global_zero:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        _print_summary(summary)
    for lg in loggers:
        if lg.__class__.__name__ == "WandbLogger":
            lg.experiment.finish()
    return summary


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else None


def _static_bytes(module, trainer) -> dict | None:
    try:
        from smet.sparse.memory import measure_static
    except ImportError:  # pragma: no cover
        return None
    opt = trainer.optimizers[0] if trainer.optimizers else None
    return measure_static(module.model, opt, module.sparse)


def _print_summary(s: dict) -> None:
    ppl = s["val_ppl"]
    lines = [
        "",
        f"Training finished: {s['steps']} steps in {s['wall_s']} s"
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
    print("\n".join(line for line in lines if line), flush=True)


def precheck_output_dirs(argv: list[str]) -> None:
    """Fail with one line (exit 2) when the run/sweep directory cannot be created: Hydra would
    otherwise stop with a traceback. Checks ``hydra.run.dir`` / ``hydra.sweep.dir`` overrides, else
    the default ``outputs/`` (or ``multirun/``) under the current directory."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    target = next((a.split("=", 1)[1] for a in argv if a.startswith(key + "=")), None)
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


def main_with_errors(cfg: DictConfig) -> dict[str, Any] | None:
    """Hydra entry: bad input → one clear line on stderr and exit code 2 (no traceback)."""
    try:
        return run(cfg)
    except SmetConfigError as err:
        print(f"smet: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


if os.environ.get("SMET_DEBUG"):
    logging.basicConfig(level=logging.DEBUG)
