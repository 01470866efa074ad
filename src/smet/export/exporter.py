"""``export_checkpoint``: checkpoint (or run directory) -> HF dense and/or compact sparse directory.

Everything is written into a staging directory next to ``out`` and moved into place at the end, so
a failed export leaves no half-written ``out``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from smet.export.compact import COMPACT_CONFIG, COMPACT_WEIGHTS, write_compact
from smet.export.hf import HF_WEIGHTS, generation_config, hf_config, tokenizer_config, write_hf_weights
from smet.export.source import ExportError, find_tokenizer, load_run

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FORMATS = ("hf", "compact", "both")
RECORD = "smet_export.json"
# files an export may write: replaced (or removed when this export does not write them) under --force
OUR_FILES = ("config.json", HF_WEIGHTS, "model.safetensors.index.json", "generation_config.json", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json", COMPACT_WEIGHTS, COMPACT_CONFIG, RECORD)


class ExportWarning(UserWarning):
    pass


@dataclass
class ExportResult:
    out_dir: Path
    ckpt_path: Path
    files: dict[str, int] = field(default_factory=dict)          # name -> bytes
    sparse_checks: list[dict] = field(default_factory=list)
    tokenizer: str = ""
    warnings: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    seconds: float = 0.0


def check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"--out {out}: exists and is not empty (use --force to write into it)")


def export_checkpoint(src: str | os.PathLike, out: str | os.PathLike, fmt: str = "both", dtype: str = "float32",
                      force: bool = False) -> ExportResult:
    """Export a checkpoint file or run directory ``src`` into ``out``.

    ``fmt``: ``hf`` (dense ``model.safetensors`` + ``config.json`` for ``transformers``), ``compact``
    (``sparse_model.safetensors`` + ``sparse_config.json`` for :func:`smet.export.load_compact`) or
    ``both`` (all of it in one directory). The run's tokenizer is copied as ``tokenizer.json`` when
    it can be found (a warning otherwise). Raises :class:`ExportError` on bad input.
    """
    t0 = time.perf_counter()
    if fmt not in FORMATS:
        raise ExportError(f"--format: unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ExportError(f"--dtype: unknown dtype {dtype!r}; choose {', '.join(DTYPES)}")
    tdtype = DTYPES[dtype]
    out = Path(os.path.expanduser(str(out)))
    check_out_dir(out, force)
    run = load_run(src)
    res = ExportResult(out_dir=out, ckpt_path=run.ckpt_path, warnings=list(run.warnings))

    tok = find_tokenizer(run)
    if tok.path is None:
        res.warnings.append(f"{tok.how}; exported the weights without tokenizer.json")
        res.tokenizer = "not found"
    else:
        res.tokenizer = f"{tok.path} ({tok.how})"

    stage = out.parent / f".{out.name}.export-tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir()
    except OSError as e:
        raise ExportError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    try:
        if fmt in ("hf", "both"):
            size, checks = write_hf_weights(run, stage, tdtype)
            res.files[HF_WEIGHTS] = size
            res.sparse_checks = checks
            _write_json(stage / "config.json", hf_config(run, tdtype, tok.eot_id), res)
            if tok.eot_id is not None:
                _write_json(stage / "generation_config.json", generation_config(tok.eot_id), res)
        if fmt in ("compact", "both"):
            res.files[COMPACT_WEIGHTS] = write_compact(run, stage, tdtype)
            res.files[COMPACT_CONFIG] = (stage / COMPACT_CONFIG).stat().st_size
        if tok.path is not None:
            shutil.copyfile(tok.path, stage / "tokenizer.json")
            res.files["tokenizer.json"] = (stage / "tokenizer.json").stat().st_size
            _write_json(stage / "tokenizer_config.json", tokenizer_config(tok.eot_token, run.model.config.max_seq_len),
                        res)
        active_zeros = sum(c["active_zeros"] for c in res.sparse_checks)
        if active_zeros:
            res.warnings.append(f"{active_zeros} active weights are exactly 0 in {dtype} (e.g. regrown at the last "
                                "topology update, or underflow in a narrower dtype): the dense weights have that many "
                                "fewer non-zeros than active weights")
        res.seconds = time.perf_counter() - t0
        res.record = {
            "source_checkpoint": str(run.ckpt_path),
            "run_dir": str(run.run_dir),
            "global_step": run.global_step,
            "method": run.method,
            "density": _density(run),
            "format": fmt,
            "dtype": dtype,
            "tokenizer": res.tokenizer,
            "files": dict(res.files),
            "sparse_layers": res.sparse_checks or [s.to_json() | {"name": s.name} for s in run.sparse],
            "warnings": res.warnings,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _write_json(stage / RECORD, res.record, res)
        _commit(stage, out)
    except OSError as e:  # disk full, permissions ...: one line, nothing half-written in --out
        raise ExportError(f"--out {out}: writing the export failed ({e.strerror or e})") from None
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    for w in res.warnings:
        warnings.warn(w, ExportWarning, stacklevel=2)
    return res


def _density(run) -> float:
    if not run.sparse:
        return 1.0
    act = sum(s.n_active for s in run.sparse)
    dense = sum(s.shape[0] * s.shape[1] for s in run.sparse)
    return act / dense


def _write_json(path: Path, obj, res: ExportResult) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
    res.files[path.name] = path.stat().st_size


def _commit(stage: Path, out: Path) -> None:
    """Move the staged files into ``out`` (a fresh/empty directory is replaced by the stage as a whole)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        if out.exists():
            out.rmdir()
        os.replace(stage, out)
        return
    for name in OUR_FILES:  # --force: no stale file of an earlier export survives next to the new ones
        if (out / name).is_file() and not (stage / name).exists():
            (out / name).unlink()
    for f in stage.iterdir():
        os.replace(f, out / f.name)


@torch.no_grad()
def verify_export(out: str | os.PathLike, src_model, n_seq: int = 2, seq_len: int = 32, seed: int = 0) -> dict:
    """max |logits(export) - logits(source model)| on ``n_seq`` random sequences, per exported format.

    The HF directory is loaded with ``transformers.LlamaForCausalLM`` when transformers is installed
    (else its weights go into our dense model); the compact file with :func:`load_compact`.
    Both run in float32 (the compact model in its stored dtype).
    """
    from smet.export.compact import load_compact

    out = Path(out)
    cfg = src_model.config
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (n_seq, min(seq_len, cfg.max_seq_len)), generator=g)
    ref = src_model(ids).float()
    res: dict = {}
    if (out / HF_WEIGHTS).is_file():
        try:
            import transformers

            transformers.utils.logging.disable_progress_bar()
            hf = transformers.LlamaForCausalLM.from_pretrained(str(out)).float().eval()
            got = hf(input_ids=ids).logits.float()
            res["hf_loader"] = f"transformers {transformers.__version__}"
        except ImportError:
            from safetensors.torch import load_file

            from smet.export.source import rebuild_rotary
            from smet.models.llama import LlamaForCausalLM

            with torch.device("meta"):
                dense = LlamaForCausalLM(cfg)
            dense.load_state_dict({k: v.float() for k, v in load_file(str(out / HF_WEIGHTS)).items()},
                                  strict=True, assign=True)
            rebuild_rotary(dense)
            got = dense.eval()(ids).float()
            res["hf_loader"] = "smet dense model (transformers not installed)"
        res["hf_max_abs_diff"] = float((got - ref).abs().max())
    if (out / COMPACT_WEIGHTS).is_file():
        got = load_compact(out)(ids).float()
        res["compact_max_abs_diff"] = float((got - ref).abs().max())
    return res
