"""Secrets never reach a file: credential-like config values and the W&B API key are redacted in
smet's own outputs (config.yaml, hparams, W&B) and in every file Hydra writes for a run or sweep
(``<run>/.hydra/{config,hydra,overrides}.yaml``, ``<sweep>/multirun.yaml``).

Hydra writes its files before the job function runs, so :class:`RedactHydraFiles` (a Hydra
callback, registered in ``conf/train.yaml``) rewrites them in ``on_job_start``, the first moment
after they exist, and the sweep's ``multirun.yaml`` again at the end of the multirun.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

SECRET_KEYS = ("api_key", "apikey", "token", "secret", "password")
MASK = "***"
# `key=value` inside strings (override lists, hydra.job.override_dirname), key possibly dotted / prefixed
_OVERRIDE = re.compile(r"(?P<key>[+~]*[\w.]*?(?:" + "|".join(SECRET_KEYS) + r"))=(?P<value>[^,\s]*)", re.I)


def is_secret_key(key: str) -> bool:
    k = key.lower().rsplit(".", 1)[-1].lstrip("+~")
    return k in SECRET_KEYS or k.endswith(tuple("_" + s for s in SECRET_KEYS))


def redact_text(text: str) -> str:
    """A string with ``<secret-key>=value`` pairs and the environment's W&B API key masked."""
    def sub(m: re.Match) -> str:
        return f"{m.group('key')}={MASK}" if is_secret_key(m.group("key")) else m.group(0)

    text = _OVERRIDE.sub(sub, text)
    env_key = os.environ.get("WANDB_API_KEY")
    if env_key and len(env_key) >= 8:
        text = text.replace(env_key, MASK)
    return text


def redact_tree(obj: Any, key: str = "") -> Any:
    """Values under credential-like keys -> '***'; strings scrubbed with :func:`redact_text`."""
    if isinstance(obj, dict):
        return {k: redact_tree(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_tree(v, key) for v in obj]
    if obj is not None and is_secret_key(key):
        return MASK
    if isinstance(obj, str):
        return redact_text(obj)
    if os.environ.get("WANDB_API_KEY") and obj == os.environ.get("WANDB_API_KEY"):
        return MASK
    return obj


def redact_yaml_file(path: Path) -> None:
    """Rewrite a YAML file Hydra wrote with its secrets masked (interpolations kept unresolved)."""
    from omegaconf import OmegaConf

    from smet.atomic import atomic_write

    if not path.is_file():
        return
    original = path.read_text()
    cfg = OmegaConf.load(path)
    data = OmegaConf.to_container(cfg, resolve=False)
    clean = redact_tree(data)
    if clean != data:
        text = OmegaConf.to_yaml(OmegaConf.create(clean))
        atomic_write(path, lambda f: f.write(text.encode()))
    elif redact_text(original) != original:  # pragma: no cover - a secret in a comment or key
        atomic_write(path, lambda f: f.write(redact_text(original).encode()))


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra missing: nothing to redact
    Callback = object  # type: ignore[misc,assignment]


class RedactLogFilter(logging.Filter):
    """A handler filter that masks secrets in every record (Hydra's launcher logs each job's overrides)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # pragma: no cover - a malformed record: leave it to logging
            return True
        clean = redact_text(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


# loggers that print job overrides; a logger-level filter survives Hydra re-configuring the handlers per job
_OVERRIDE_LOGGERS = ("hydra._internal.core_plugins.basic_launcher", "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
                     "hydra._internal.utils", "hydra.core.utils", "smet")


def install_log_redaction() -> None:
    """Add :class:`RedactLogFilter` to the loggers that print overrides and to every handler of the
    root and Hydra loggers (idempotent)."""
    def add(target) -> None:
        if not any(isinstance(f, RedactLogFilter) for f in target.filters):
            target.addFilter(RedactLogFilter())

    for name in _OVERRIDE_LOGGERS:
        add(logging.getLogger(name))
    for name in (None, "hydra"):
        for handler in logging.getLogger(name).handlers:
            add(handler)


class RedactHydraFiles(Callback):
    """Hydra callback: mask secrets in the files Hydra writes for each job and for the sweep, and in
    the console/log lines Hydra prints (each job's overrides)."""

    def on_run_start(self, config, **kwargs) -> None:
        install_log_redaction()

    def on_multirun_start(self, config, **kwargs) -> None:
        install_log_redaction()

    def on_job_start(self, config, **kwargs) -> None:
        try:
            out = Path(config.hydra.runtime.output_dir)
            sub = config.hydra.output_subdir
        except Exception:  # pragma: no cover
            return
        install_log_redaction()  # the job's own handlers (train.log) exist now
        if sub is not None:
            for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
                redact_yaml_file(out / str(sub) / name)
        self._redact_sweep(config)

    def on_multirun_end(self, config, **kwargs) -> None:
        self._redact_sweep(config)

    @staticmethod
    def _redact_sweep(config) -> None:
        try:
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            if HydraConfig.get().mode != RunMode.MULTIRUN:
                return
            sweep_dir = Path(str(config.hydra.sweep.dir))
        except Exception:
            return
        redact_yaml_file(sweep_dir / "multirun.yaml")
