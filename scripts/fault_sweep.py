#!/usr/bin/env python
"""Fault sweep: bad inputs and faults, as users hit them, over train.py and every console script.

For every case it checks the documented contract: the exit code (2 for bad input, 3 for a
non-finite run), no traceback, one ``<prog>: error: ...`` line naming the key or path, and that
nothing previously written changed (a finished run directory and a results file, hashed before
and after every case). Run it from the checkout:

    .venv/bin/python scripts/fault_sweep.py            # prints one line per case and a total
    .venv/bin/python scripts/fault_sweep.py -k memory  # only cases whose name contains 'memory'

Exit code 0 when every case behaves as documented, 1 otherwise. ``tests/test_fault_sweep.py`` runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
BIN = Path(PY).parent
FAST = ["data.seq_len=32", "data.batch_size=4", "data.tokenizer.vocab_size=300", "data.max_val_sequences=4",
        "trainer.progress_bar=none", "trainer.log_every_n_steps=1"]


@dataclass
class Case:
    name: str
    argv: list[str]
    rc: int = 2
    key: str | None = None          # must appear in the error line
    prog: str = "smet"              # the error line starts with "<prog>: error:"
    env: dict = field(default_factory=dict)
    timeout: int = 180


def tool(name: str) -> list[str]:
    exe = BIN / name
    return [str(exe)] if exe.exists() else [PY, "-m", f"smet.cli.{name.split('-', 1)[1]}"]


def train(*args: str) -> list[str]:
    return [PY, str(REPO / "train.py"), *args]


def digest_tree(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_cases(w: Path) -> list[Case]:
    run, ckpt = w / "precious_run", w / "precious_run" / "checkpoints" / "last.ckpt"
    results = w / "results.json"
    junk = w / "junk.ckpt"
    a_file = w / "a_file"
    rd = [f"hydra.run.dir={w / 'new_run'}"]
    c: list[Case] = []
    # --- train.py: command-line shape (Hydra level) ---
    for args, key in [
        (["sparsity.densty=0.5"], "sparsity.densty"), (["+sparsity.densty=0.1"], "sparsity.densty"),
        (["+optimizer.lrr=1"], "optimizer.lrr"), (["logger=tensorboard"], "logger"), (["model=huge"], "model"),
        (["sparsity=smett"], "sparsity"), (["+experiment=nope"], "experiment"), (["sparsity.density=[0.5"], "override"),
        (["=5"], "override"), (["trainer.max_steps=1", "trainer.max_steps=,"], None),
        (["-m", "sparsity=smet", "sparsity.density=0.5,1.5"], "sparsity.density"),
        (["-m", "logger=csv,tensorboard"], "logger"), (["-m", "+experiment=ablation_warmup", "trainer.max_steps=-1"],
                                                        "trainer.max_steps"),
        (["-m", "+optimizer.lr_sclaing=none,inverse"], "optimizer.lr_sclaing"),
    ]:
        c.append(Case(f"train: {' '.join(args)}", train(*args, *rd, f"hydra.sweep.dir={w / 'new_sweep'}"), key=key))
    # --- train.py: values ---
    for args, key in [
        (["sparsity.density=1.5"], "sparsity.density"), (["sparsity=smet", "sparsity.density=0"], "sparsity.density"),
        (["sparsity=smet", "sparsity.density=abc"], "sparsity.density"), (["sparsity.density=0.5"], "sparsity.density"),
        (["sparsity=smet", "sparsity.density=0.00001"], "sparsity.density"),
        (["trainer.max_steps=0"], "trainer.max_steps"), (["trainer.max_steps=abc"], "trainer.max_steps"),
        (["trainer.devices=0"], "trainer.devices"), (["trainer.precision=fp8"], "trainer.precision"),
        (["trainer.strategy=nonsense"], "trainer.strategy"), (["trainer.cpu_threads=-1"], "trainer.cpu_threads"),
        (["trainer.cpu_threads=abc"], "trainer.cpu_threads"), (["trainer.limit_val_batches=-1"], "trainer.limit_val_batches"),
        (["trainer.deterministic=maybe"], "trainer.deterministic"), (["trainer.compile=yes"], "trainer.compile"),
        (["trainer.progress_bar=fancy"], "trainer.progress_bar"), (["trainer.on_nonfinite=ignore"], "trainer.on_nonfinite"),
        (["trainer.max_consecutive_nonfinite=0"], "trainer.max_consecutive_nonfinite"),
        (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val"), (["trainer.accumulate_grad_batches=0"],
                                                                           "trainer.accumulate_grad_batches"),
        (["model.hidden_size=100", "model.num_heads=3"], "model.num_heads"), (["model.init_std=-1"], "model.init_std"),
        (["model.norm_eps=-1"], "model.norm_eps"), (["model.rope_theta=0"], "model.rope_theta"),
        (["model.num_layers=0"], "model.num_layers"), (["model.vocab_size=0"], "model.vocab_size"),
        (["optimizer.lr=-1"], "optimizer.lr"), (["optimizer.lr=0"], "optimizer.lr"), (["optimizer.betas=[0.9]"], "optimizer.betas"),
        (["optimizer.betas=[0.9,1.5]"], "optimizer.betas"), (["optimizer.eps=0"], "optimizer.eps"),
        (["optimizer.schedule=step"], "optimizer.schedule"), (["optimizer.min_lr_ratio=2"], "optimizer.min_lr_ratio"),
        (["optimizer.warmup_fraction=1.5"], "optimizer.warmup_fraction"),
        (["sparsity=smet", "optimizer.regrowth_warmup_steps=-5"], "optimizer.regrowth_warmup_steps"),
        (["sparsity=smet", "optimizer.lr_scaling=double"], "optimizer.lr_scaling"),
        (["sparsity=smet", "optimizer.reset_local_step=maybe"], "optimizer.reset_local_step"),
        (["sparsity=smet", "sparsity.targets=[nope]"], "sparsity.targets"),
        (["sparsity=smet", "sparsity.block_size=3"], "sparsity.block_size"),
        (["sparsity=smet", "sparsity.update_interval=0"], "sparsity.update_interval"),
        (["sparsity=smet", "sparsity.update_start=50", "sparsity.update_stop=10"], "sparsity.update_start"),
        (["sparsity=smet", "sparsity.spike_window=0"], "sparsity.spike_window"),
        (["sparsity=smet", "sparsity.erk_power_scale=-1"], "sparsity.erk_power_scale"),
        (["sparsity=smet", "sparsity.drop_fraction=1.5"], "sparsity.drop_fraction"),
        (["sparsity=smet", "sparsity.growth=magic"], "sparsity.growth"),
        (["sparsity=smet", "sparsity.materialize=sometimes"], "sparsity.materialize"),
        (["sparsity=smet", "trainer=deepspeed", "sparsity.index=rows"], "sparsity.index"),
        (["data.seq_len=0"], "data.seq_len"), (["data.batch_size=-4"], "data.batch_size"),
        (["data.global_batch_size=30", "data.batch_size=8"], "data.global_batch_size"),
        (["data=local_files", f"data.path={w / 'missing_dir'}"], "data.path"),
        (["data=local_files", f"data.path={w / 'bad_utf8'}", *FAST], "data.path"),
        (["data=c4"], "data"), (["seed=-1"], "seed"),
        (["data.tokenizer.kind=pretrained", f"data.tokenizer.name={w / 'junk.ckpt'}"], "data.tokenizer.name"),
        (["data.tokenizer.kind=pretrained", f"data.tokenizer.name={w / 'nope.json'}"], "data.tokenizer.name"),
        (["data.tokenizer.kind=magic"], "data.tokenizer.kind"), (["data.val_fraction=2"], "data.val_fraction"),
        ([f"data.cache_dir={a_file}"], "data.cache_dir"), (["data.cache_dir=/proc/smet-no/cache"], "data.cache_dir"),
        (["hydra.run.dir=/proc/smet-no/run"], "hydra.run.dir"),
        ([f"hydra.run.dir={run}"], "hydra.run.dir"),                             # a fresh start into a finished run
        ([f"hydra.run.dir={w / 'x'}", f"hydra.run.dir={run}"], "hydra.run.dir"),  # the last one counts
        (["-m", "seed=1,2", f"hydra.sweep.dir={w / 'precious_sweep'}"], "hydra.sweep.dir"),
        (["model.vocab_size=100", *FAST], "model.vocab_size"),
        *([(["trainer=gpu"], "trainer.accelerator"), (["trainer=deepspeed", "sparsity=smet"], "trainer.accelerator")]
          if not _has_cuda() else []),                                           # a GPU trainer where there is none
    ]:
        extra = [] if any(a.startswith("hydra.") for a in args) else rd
        c.append(Case(f"train: {' '.join(args)[:70]}", train(*args, *extra), key=key))
    # --- train.py: checkpoints ---
    for name, path in [("missing", w / "nope.ckpt"), ("junk bytes", junk), ("a saved tensor", w / "tensor.ckpt"),
                       ("a plain dict", w / "dict.ckpt"), ("a refused pickle", w / "pickle.ckpt"),
                       ("no run config", w / "nohp.ckpt"), ("empty dir", w / "empty_dir")]:
        c.append(Case(f"train: ckpt_path = {name}", train(f"ckpt_path={path}", *FAST, *rd), key="ckpt_path"))
    c.append(Case("train: ckpt of another density", train(f"ckpt_path={ckpt}", "sparsity=smet", "sparsity.density=0.25",
                                                          *FAST, *rd), key="sparsity.method"))
    c.append(Case("train: ckpt of another vocabulary", train(f"ckpt_path={ckpt}", "data.tokenizer.vocab_size=400",
                                                             "data.seq_len=32", *rd), key="data.tokenizer.vocab_size"))
    # --- train.py: non-finite runs end with exit 3, never as a success ---
    blow = ["optimizer.lr=1e6", "optimizer.warmup_fraction=0", "trainer.max_steps=8", "trainer.val_every_n_steps=8",
            "data.seq_len=64", "data.batch_size=8", "data.tokenizer.vocab_size=512", "data.max_val_sequences=16",
            "trainer.progress_bar=none"]
    c.append(Case("train: lr=1e6 escalates (K=3)", train(*blow, "trainer.max_consecutive_nonfinite=3",
                                                         f"hydra.run.dir={w / 'nf1'}"), rc=3, key="consecutive"))
    c.append(Case("train: lr=1e6 on_nonfinite=stop", train(*blow, "trainer.on_nonfinite=stop",
                                                           f"hydra.run.dir={w / 'nf2'}"), rc=3, key="non-finite"))
    c.append(Case("train: lr=1e6 check off -> nan result", train(*blow, "trainer.on_nonfinite=off",
                                                                 f"hydra.run.dir={w / 'nf3'}"), rc=3, key="non-finite"))
    # --- smet-memory ---
    m = tool("smet-memory")
    for args, key in [(["--model", "nope"], "--model"), (["--model", "../train"], "--model"), (["model=nope"], "model"),
                      (["--model", "13b", "--gpu-mem", "-5"], "--gpu-mem"), (["--model", "13b", "--gpu", "a100"], "--gpu"),
                      (["--model", "13b", "--density", "1.5"], "density"), (["--model", "13b", "--heads", "7"], "num_heads"),
                      (["--model", "13b", "--reserve", "2"], "--reserve"), (["--model", "13b", "--batch", "0"], "--batch"),
                      (["--model", "13b", "--precision", "fp8"], "--precision")]:
        dens = [] if "--density" in args else ["--density", "0.5"]
        c.append(Case(f"smet-memory {' '.join(args)}", m + args + dens, prog="smet-memory", key=key))
    # --- smet-bench ---
    b = tool("smet-bench")
    for args, key in [(["--density", "0"], "--density"), (["--steps", "0"], "--steps"), (["--model", "nope"], "--model"),
                      (["--out", str(results)], "--out"), (["--out", str(w)], "--out"),
                      (["--out", "/proc/smet-no/x.json"], "--out"), (["--from-json", str(w / "nope.json")], "nope.json"),
                      (["--amortize-interval", "0"], "--amortize-interval"), (["--block-size", "3"], "block")]:
        c.append(Case(f"smet-bench {' '.join(args)}", b + ["--device", "cpu", "--model", "tiny", *args] if "--model" not in args
                      else b + ["--device", "cpu", *args], prog="smet-bench", key=key))
    # --- smet-compare ---
    cmp = tool("smet-compare")
    (w / "no_runs").mkdir(exist_ok=True)
    for args, key in [([str(w / "nowhere"), "--out", str(w / "rep1")], "nowhere"),
                      ([str(w / "no_runs"), "--out", str(w / "rep2")], "no_runs"),
                      ([str(run), "--out", str(run)], "--out"),
                      ([str(run), "--out", str(w / "rep3"), "--baseline", "nope"], "--baseline")]:
        c.append(Case(f"smet-compare {' '.join(Path(a).name for a in args)}", cmp + args, prog="smet-compare", key=key))
    # --- smet-submit ---
    s = tool("smet-submit")
    sw = ["--sweep-dir", str(w / "sub_sweep")]
    for args, key in [(["+experiment=nope", *sw], "experiment"), (["sparsity.densty=0.5", *sw], "densty"),
                      (["+sparsity.densty=0.1", *sw], "sparsity.densty"),
                      (["+experiment=ablation_warmup", "--sbatch=--accont=x", *sw], "--sbatch"),
                      (["+experiment=ablation_warmup", "--time", "99:99", *sw], "--time"),
                      (["+experiment=ablation_warmup", "--throttle", "0", *sw], "--throttle"),
                      (["+experiment=ablation_warmup", "--template", "nope", *sw], "--template"),
                      (["+experiment=ablation_warmup", "--setup", "if then", *sw], "--setup"),
                      (["-m", "sparsity.density=0.5,1.5", *sw], "sparsity.density"),
                      (["+experiment=ablation_warmup", "--sweep-dir", str(w / "precious_sweep")], "manifest")]:
        c.append(Case(f"smet-submit {' '.join(args[:3])}", s + args, prog="smet-submit", key=key))
    c.append(Case("smet-submit --submit without sbatch", s + ["+experiment=ablation_warmup", "--submit", *sw],
                  prog="smet-submit", key="sbatch", env={"PATH": str(BIN)}))
    # --- smet-export / smet-eval / smet-generate ---
    for prog in ("smet-export", "smet-eval", "smet-generate"):
        t = tool(prog)
        extra = ["--out", str(w / f"{prog}_out")] if prog == "smet-export" else []
        extra += ["--prompt", "x"] if prog == "smet-generate" else []
        for name, path in [("missing", w / "nope"), ("junk", junk), ("empty dir", w / "empty_dir"),
                           ("tensor", w / "tensor.ckpt")]:
            c.append(Case(f"{prog} {name}", t + [str(path), *extra], prog=prog))
    c.append(Case("smet-export into non-empty --out", tool("smet-export") + [str(run), "--out", str(run)],
                  prog="smet-export", key="--out"))
    c.append(Case("smet-generate --max-new-tokens -3", tool("smet-generate") + [str(run), "--prompt", "x",
                                                                              "--max-new-tokens", "-3"],
                  prog="smet-generate", key="--max-new-tokens"))
    c.append(Case("smet-generate --temperature -1", tool("smet-generate") + [str(run), "--prompt", "x",
                                                                           "--temperature", "-1"],
                  prog="smet-generate", key="--temperature"))
    c.append(Case("smet-eval --batches 0", tool("smet-eval") + [str(run), "--batches", "0"], prog="smet-eval",
                  key="--batches"))
    c.append(Case("smet-eval --device tpu", tool("smet-eval") + [str(run), "--device", "tpu"], prog="smet-eval",
                  key="--device"))
    return c


def prepare(w: Path, cache: Path) -> None:
    import torch

    env = dict(os.environ, SMET_CACHE_DIR=str(cache))
    r = subprocess.run(train(*FAST, "trainer.max_steps=2", "trainer.val_every_n_steps=2",
                             f"hydra.run.dir={w / 'precious_run'}"), cwd=w, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"fault sweep: could not train the reference run:\n{r.stderr[-3000:]}")
    sweep_job = w / "precious_sweep" / "0"
    shutil.copytree(w / "precious_run", sweep_job)
    (w / "precious_sweep" / "manifest.txt").write_text("seed=1\n")
    (w / "results.json").write_text(json.dumps({"tokens_per_s": 12345}))
    (w / "junk.ckpt").write_bytes(b"not a checkpoint")
    (w / "a_file").write_text("x")
    (w / "empty_dir").mkdir()
    (w / "bad_utf8").mkdir()
    (w / "bad_utf8" / "a.txt").write_text("fine text " * 50)
    (w / "bad_utf8" / "b.txt").write_bytes(b"\xff\xfe broken \xc3")
    torch.save(torch.zeros(3), w / "tensor.ckpt")
    torch.save({"weights": torch.zeros(3)}, w / "dict.ckpt")
    torch.save({"state_dict": {}, "x": Unpicklable()}, w / "pickle.ckpt")
    ck = torch.load(w / "precious_run" / "checkpoints" / "last.ckpt", weights_only=True)
    ck.pop("hyper_parameters")
    torch.save(ck, w / "nohp.ckpt")


class Unpicklable:  # weights_only loading refuses arbitrary classes
    pass


def check(case: Case, r: subprocess.CompletedProcess) -> str | None:
    err = r.stderr
    if "Traceback" in err or "Traceback" in r.stdout:
        return "traceback"
    if r.returncode != case.rc:
        return f"exit {r.returncode}, expected {case.rc}"
    lines = [ln for ln in err.splitlines() if f"{case.prog}: error:" in ln or ln.startswith(("smet: error:",))]
    if case.rc == 2:
        if len(lines) != 1:
            return f"{len(lines)} error lines"
        if case.key and case.key not in lines[0]:
            return f"error line does not name {case.key!r}: {lines[0][:160]}"
    elif case.key and case.key not in err:
        return f"stderr does not mention {case.key!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default="", help="only cases whose name contains this text")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    w = Path(tempfile.mkdtemp(prefix="smet-fault-sweep-"))
    cache = w / "cache"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    t0 = time.time()
    prepare(w, cache)
    cases = [c for c in build_cases(w) if args.k in c.name]
    protected = [w / "precious_run", w / "precious_sweep", w / "results.json"]
    before = digest_tree(*[p for p in protected if p.is_dir()])
    before.update({str(w / "results.json"): hashlib.sha256((w / "results.json").read_bytes()).hexdigest()})
    failures = 0
    for i, case in enumerate(cases, 1):
        env = dict(os.environ, SMET_CACHE_DIR=str(cache), **case.env)
        cwd = w / "cwd"
        cwd.mkdir(exist_ok=True)
        try:
            r = subprocess.run(case.argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=case.timeout)
            problem = check(case, r)
        except subprocess.TimeoutExpired:
            problem, r = f"timed out after {case.timeout} s", None
        after = digest_tree(*[p for p in protected if p.is_dir()])
        after.update({str(w / "results.json"): hashlib.sha256((w / "results.json").read_bytes()).hexdigest()})
        if after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))
            problem = (problem + "; " if problem else "") + f"changed earlier output: {changed[0][0]}"
            before = after
        failures += problem is not None
        status = "ok  " if problem is None else "FAIL"
        detail = "" if problem is None else f"  <- {problem}"
        print(f"[{i:3d}/{len(cases)}] {status} {case.name}{detail}", flush=True)
        if problem and r is not None:
            print("      stderr: " + " | ".join(r.stderr.strip().splitlines()[-3:])[:400], flush=True)
    print(f"fault sweep: {len(cases)} cases, {len(cases) - failures} as documented, {failures} not; "
          f"{time.time() - t0:.0f} s; work dir {w}" + ("" if args.keep else " (removed)"))
    if not args.keep:
        shutil.rmtree(w, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
