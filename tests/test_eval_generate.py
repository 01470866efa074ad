"""smet-eval and smet-generate on tiny trained runs (dense and sparse): eval reproduces the run's
final val perplexity, generation is deterministic / seeded, bad input fails in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST

from smet.cli.eval import main as eval_main  # noqa: E402
from smet.cli.generate import main as generate_main  # noqa: E402

PPL_RTOL = 1e-5  # smet-eval vs summary.json val_ppl: same weights, windows and batches, fp32 on CPU

RUNS = {
    "dense": ("trainer.max_steps=20", "trainer.val_every_n_steps=10"),
    "smet": ("sparsity=smet", "sparsity.density=0.25", "sparsity.update_interval=5", "trainer.max_steps=20",
             "trainer.val_every_n_steps=10"),
}
_TRAINED: dict[str, Path] = {}


def trained(run_train, tmp_path_factory, name: str) -> Path:
    """RUNS[name] trained once per session, each with its own data cache (deleted by the copy test)."""
    if name not in _TRAINED or not (_TRAINED[name] / "checkpoints" / "last.ckpt").is_file():
        base = tmp_path_factory.mktemp(f"evalgen_{name}")
        _TRAINED[name] = run_train(*FAST, *RUNS[name], out=base / "run",
                                   env={"SMET_CACHE_DIR": str(base / "cache")}).out_dir
    return _TRAINED[name]


def _json(capsys, fn, argv) -> dict:
    assert fn(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_eval_matches_run_and_generate_is_reproducible(run_train, tmp_path_factory, monkeypatch, capsys, name):
    run = trained(run_train, tmp_path_factory, name)
    summary = json.loads((run / "summary.json").read_text())
    monkeypatch.delenv("SMET_CACHE_DIR", raising=False)  # the run's data.cache_dir (its own, still there)

    # eval: the run's final validation, from the checkpoint (cached token streams reused)
    r = _json(capsys, eval_main, [str(run), "--device", "cpu", "--json"])
    assert r["global_step"] == summary["steps"] == 20
    assert r["tokens"] == 16 * 64 and r["sequences"] == 16 and r["batches"] == 2  # max_val_sequences x seq_len
    assert "identical BPE cache file" in r["tokenizer"], r["tokenizer"]
    print(f"[{name}] smet-eval ppl {r['ppl']:.6f} vs summary val_ppl {summary['val_ppl']:.6f}")
    assert r["ppl"] == pytest.approx(summary["val_ppl"], rel=PPL_RTOL)
    assert r["loss"] == pytest.approx(summary["val_loss"], rel=PPL_RTOL)
    one = _json(capsys, eval_main, [str(run / "checkpoints" / "last.ckpt"), "--batches", "1", "--json"])
    assert one["batches"] == 1 and one["tokens"] == 8 * 64 and one["ppl"] > 1.0
    tr = _json(capsys, eval_main, [str(run), "--split", "train", "--json"])
    assert tr["split"] == "train" and tr["tokens"] == 16 * 64 and tr["ppl"] > 1.0

    # generate: greedy twice -> same text and exactly N new tokens; a seed reproduces a sample
    argv = [str(run), "--prompt", "And God said", "--max-new-tokens", "12", "--device", "cpu", "--json"]
    g1 = _json(capsys, generate_main, [*argv, "--temperature", "0"])
    g2 = _json(capsys, generate_main, [*argv, "--temperature", "0"])
    assert g1["new_tokens"] == len(g1["new_ids"]) == 12 and g1["text"].startswith("And God said")
    assert g1["new_ids"] == g2["new_ids"] and g1["text"] == g2["text"]
    s1 = _json(capsys, generate_main, [*argv, "--seed", "7"])
    s2 = _json(capsys, generate_main, [*argv, "--seed", "7"])
    s3 = _json(capsys, generate_main, [*argv, "--seed", "8", "--top-k", "0", "--temperature", "1.5"])
    assert s1["new_ids"] == s2["new_ids"] and s1["seed"] == 7 and len(s1["new_ids"]) == 12
    assert s3["new_ids"] != s1["new_ids"]  # (12 tokens from a 512-token vocabulary at temperature 1.5)
    # plain output: the text on stdout, a one-line note on stderr
    assert generate_main([str(run), "-p", "In the beginning", "-n", "5", "-t", "0"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("In the beginning") and "5 new tokens" in cap.err and "greedy" in cap.err
    assert generate_main([str(run), "-n", "0", "-t", "0"]) == 0  # empty prompt, no new token: fine
    # a context longer than the model's (seq_len 64): cropped
    long = _json(capsys, generate_main, [str(run), "-p", "And God said " * 20, "-n", "3", "-t", "0", "--json"])
    assert long["prompt_tokens"] > 64 and long["new_tokens"] == 3


@pytest.mark.slow
def test_eval_on_another_machine(run_train, tmp_path_factory, tmp_path, monkeypatch, capsys):
    """A sparse run copied elsewhere, its data cache gone, an empty cache set: smet-eval re-prepares
    the validation data from the corpus with the run's tokenizer.json (no BPE retrained) and gets the
    run's perplexity; smet-generate works from the copy too."""
    run = trained(run_train, tmp_path_factory, "smet")
    summary = json.loads((run / "summary.json").read_text())
    copy = tmp_path / "elsewhere"
    shutil.copytree(run, copy)
    shutil.rmtree(run.parent / "cache")
    empty = tmp_path / "empty_cache"
    monkeypatch.setenv("SMET_CACHE_DIR", str(empty))
    r = _json(capsys, eval_main, [str(copy), "--json"])
    assert r["tokenizer"] == f"the run's {copy / 'tokenizer.json'}" and r["cache_dir"] == str(empty)
    assert r["ppl"] == pytest.approx(summary["val_ppl"], rel=PPL_RTOL)
    assert not (empty / "tokenizers").exists()  # nothing (re)trained: only token streams were written
    assert list((empty / "tokens").iterdir())
    g = _json(capsys, generate_main, [str(copy), "-p", "And God said", "-n", "4", "-t", "0", "--json"])
    assert g["new_tokens"] == 4
    _TRAINED.pop("smet")  # its cache is gone


def _one_line(capsys, fn, argv, prog) -> str:
    with pytest.raises(SystemExit) as e:
        rc = fn(argv)
        raise SystemExit(rc)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: "), err
    return err[0]


def test_bad_inputs_one_line(tmp_path, capsys):
    import torch

    missing = str(tmp_path / "missing")
    (tmp_path / "garbage.ckpt").write_text("not a checkpoint")
    (tmp_path / "empty_run").mkdir()
    torch.save({"state_dict": {"x": torch.zeros(3)}, "hyper_parameters": {"lr": 1}}, str(tmp_path / "foreign.ckpt"))
    for fn, prog in ((generate_main, "smet-generate"), (eval_main, "smet-eval")):
        assert "no such checkpoint" in _one_line(capsys, fn, [missing], prog)
        assert "cannot read checkpoint" in _one_line(capsys, fn, [str(tmp_path / "garbage.ckpt")], prog)
        assert "no checkpoint found" in _one_line(capsys, fn, [str(tmp_path / "empty_run")], prog)
        assert "not an smet checkpoint" in _one_line(capsys, fn, [str(tmp_path / "foreign.ckpt")], prog)
        assert "--device: unknown device" in _one_line(capsys, fn, [missing, "--device", "tpu"], prog)
        assert "required" in _one_line(capsys, fn, [], prog)
    line = _one_line(capsys, generate_main, [missing, "--max-new-tokens", "-3"], "smet-generate")
    assert line == "smet-generate: error: --max-new-tokens: must be >= 0, got -3"
    assert "--temperature: must be a finite number" in _one_line(capsys, generate_main, [missing, "-t", "-1"],
                                                                 "smet-generate")
    assert "--top-k: must be >= 0" in _one_line(capsys, generate_main, [missing, "--top-k", "-1"], "smet-generate")
    assert "--batches: must be >= 1" in _one_line(capsys, eval_main, [missing, "--batches", "0"], "smet-eval")
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _one_line(capsys, eval_main, [str(tmp_path / "foreign.ckpt"), "--device",
                                                                        "cuda"], "smet-eval")


@pytest.mark.parametrize("prog", ["smet-eval", "smet-generate"])
def test_console_scripts(tmp_path, prog):
    exe = Path(sys.executable).with_name(prog)
    mod = {"smet-eval": "smet.cli.eval", "smet-generate": "smet.cli.generate"}[prog]
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", mod]
    h = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60)
    assert h.returncode == 0 and h.stdout.startswith(f"usage: {prog}") and "--device" in h.stdout
    r = subprocess.run([*cmd, str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"{prog}: error: {tmp_path / 'nope'}: no such checkpoint file or "
                                             "run directory"]
