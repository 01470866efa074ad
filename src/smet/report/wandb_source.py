"""Runs from a W&B project through ``wandb.Api()``.

:func:`preflight` refuses quickly (seconds, before wandb is even imported) when W&B cannot be
reached: ``WANDB_MODE`` offline/disabled, no API key configured, or no connection to the W&B host.
The conversion itself is :func:`smet.report.runs.run_from_wandb` (plain dicts in, :class:`Run` out).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any, Sequence
from urllib.parse import urlparse

from smet.report.runs import ReportError, Run, cfg_get, run_from_wandb

OPT = "--wandb"
CONNECT_TIMEOUT_S = 4.0


def _base_url() -> str:
    """WANDB_BASE_URL, else the installed wandb's default server."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    try:
        from wandb.sdk.lib.urls import DEFAULT_BASE_URL

        return str(DEFAULT_BASE_URL)
    except Exception:  # older/newer wandb layouts
        return "https://api.wandb.ai"


def _host() -> tuple[str, int]:
    url = urlparse(_base_url())
    return url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    if not os.path.isfile(path):
        return False
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def _reachable(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens within ``timeout`` s (DNS included), else why not."""
    result: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(None)
        except OSError as err:
            result.append(str(err) or err.__class__.__name__)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    if not result:
        return f"no answer within {timeout:g} s"
    return result[0]


def preflight(project: str) -> None:
    """Raise :class:`ReportError` (fast) when reading ``project`` from W&B cannot work."""
    if project.count("/") != 1 or not all(project.split("/")):
        raise ReportError(OPT, f"expected ENTITY/PROJECT, got {project!r}")
    mode = (os.environ.get("WANDB_MODE") or "").strip().lower()
    if mode in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true"):
        raise ReportError(OPT, f"W&B is offline here (WANDB_MODE={mode or 'unset'}"
                               f"{', WANDB_DISABLED set' if not mode else ''}); reading runs needs the W&B "
                               "server: set WANDB_MODE=online on a machine with network access, or compare the "
                               "local run directories instead (smet-compare outputs/ multirun/ ...)")
    host, port = _host()
    if not _has_api_key(host):
        raise ReportError(OPT, f"no W&B API key for {host} (set WANDB_API_KEY or run `wandb login` once); "
                               "or compare the local run directories instead")
    why = _reachable(host, port, CONNECT_TIMEOUT_S)
    if why is not None:
        raise ReportError(OPT, f"cannot reach the W&B server {host}:{port} ({why}); offline? compare the local "
                               "run directories instead (smet-compare outputs/ multirun/ ...)")


def parse_filters(items: Sequence[str]) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """--wandb-filter values: a JSON object is a server-side W&B (MongoDB-style) filter, e.g.
    '{"tags": {"$in": ["method=smet"]}}'; KEY=VALUE pairs are matched client-side against
    ``tag``, ``state``, ``name``, ``group`` or a dotted config key (e.g. sparsity.method=smet)."""
    server: dict[str, Any] = {}
    client: list[tuple[str, str]] = []
    for it in items:
        s = it.strip()
        if s.startswith("{"):
            try:
                obj = json.loads(s)
            except json.JSONDecodeError as err:
                raise ReportError("--wandb-filter", f"invalid JSON {s!r} ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ReportError("--wandb-filter", f"JSON filter must be an object, got {s!r}")
            server.update(obj)
        elif "=" in s:
            k, v = s.split("=", 1)
            if not k:
                raise ReportError("--wandb-filter", f"expected KEY=VALUE or a JSON object, got {s!r}")
            client.append((k.strip(), v.strip()))
        else:
            raise ReportError("--wandb-filter", f"expected KEY=VALUE or a JSON object, got {s!r}")
    return (server or None), client


def _matches(run: Any, config: dict, client: Sequence[tuple[str, str]]) -> bool:
    from smet.report.table import fmt_value

    for k, v in client:
        if k in ("tag", "tags"):
            if v not in (run.tags or []):
                return False
        elif k in ("state", "name", "group", "id"):
            if str(getattr(run, k, None)) != v:
                return False
        else:
            got = cfg_get(config, k)
            if got is None or (fmt_value(got) != v and str(got) != v):
                return False
    return True


def fetch_runs(project: str, group: str | None = None, filters: Sequence[str] = (), timeout: int = 30) -> list[Run]:
    server, client = parse_filters(filters)
    preflight(project)
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        raise ReportError(OPT, "the wandb package is not installed") from None
    flt: dict[str, Any] = dict(server or {})
    if group:
        flt["group"] = group
    try:
        api = wandb.Api(timeout=timeout)
        found = api.runs(project, filters=flt or None)
        runs: list[Run] = []
        for wr in found:
            raw_cfg = dict(wr.config)
            conv = run_from_wandb(raw_cfg, [], {})
            if client and not _matches(wr, conv.config, client):
                continue
            history = list(wr.scan_history(page_size=2000))
            summary = getattr(wr, "summary_metrics", None)  # plain dict (wandb >= 0.17)
            if not isinstance(summary, dict):
                summary = dict(getattr(wr.summary, "_json_dict", None) or {})
            runs.append(run_from_wandb(raw_cfg, history, summary, name=wr.name, state=wr.state,
                                       source=getattr(wr, "url", None) or f"{project}/{wr.id}"))
    except ReportError:
        raise
    except Exception as err:  # wandb.errors.CommError, requests errors, bad project
        msg = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        raise ReportError(OPT, f"reading {project} from W&B failed: {msg}") from None
    if not runs:
        extra = f" in group {group!r}" if group else ""
        raise ReportError(OPT, f"no runs found in {project}{extra} matching the filters")
    return runs
