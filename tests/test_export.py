"""smet-export: HF dense directory (loaded by transformers, no smet code), compact sparse round trip,
tokenizer copy, error paths."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from smet.cli.export import main as export_main  # noqa: E402
from smet.export import ExportError, ExportWarning, export_checkpoint, load_compact  # noqa: E402

TOL = 1e-4  # fp32: max |logits(HF) - logits(ours)|

# name -> extra overrides; every run ends on a checkpoint (val_every_n_steps = max_steps)
RUNS = {
    # non-default RoPE theta / norm eps: the HF config must carry them
    "dense": ("trainer.max_steps=4", "trainer.val_every_n_steps=4", "model.rope_theta=500000.0",
              "model.norm_eps=1e-5"),
    # topology updates at steps 2 and 4: regrown weights are in the export
    "smet": ("sparsity=smet", "sparsity.density=0.25", "sparsity.update_interval=2", "trainer.max_steps=5",
             "trainer.val_every_n_steps=5"),
    # the 2-byte row-sorted index (int16 column blocks + row offsets): exported as int32 flat ids
    "smet_rows": ("sparsity=smet", "sparsity.density=0.25", "sparsity.index=rows", "sparsity.update_interval=2",
                  "trainer.max_steps=5", "trainer.val_every_n_steps=5"),
    # blocks of 4, a sparse lm_head, persistent dense copies and a gradual schedule (n_live < capacity)
    "set_blocks_gradual": ("sparsity=set", "sparsity.block_size=4", "sparsity.materialize=persistent",
                           "sparsity/density_schedule=gradual", "sparsity.density_schedule.initial=0.5",
                           "sparsity.density=0.25", "sparsity.update_interval=2",
                           "sparsity.targets=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head]",
                           "trainer.max_steps=5", "trainer.val_every_n_steps=5"),
}


_TRAINED: dict[str, Path] = {}


def trained(run_train, name: str) -> Path:
    """The run directory of RUNS[name], trained once per session (tmp dirs outlive their test)."""
    if name not in _TRAINED or not (_TRAINED[name] / "checkpoints" / "last.ckpt").is_file():
        _TRAINED[name] = run_train(*FAST, *RUNS[name]).out_dir
    return _TRAINED[name]


def reference(ckpt: Path):
    """Our model straight from the checkpoint, the Lightning way (independent of smet.export)."""
    from smet.lightning.module import LMModule

    module = LMModule.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=False)
    return module.model.eval()


def sparse_layers(model) -> dict:
    from smet.sparse.layer import SparseLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}


def sequences(vocab: int, tok_path: Path | None) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, 64), generator=g)
    if tok_path is not None:  # plus a real sentence, tokenised by the exported tokenizer
        from tokenizers import Tokenizer

        text = "In the beginning God created the heaven and the earth. And the earth was without form, and void"
        real = Tokenizer.from_file(str(tok_path)).encode(text).ids[:64]
        real = (real * 64)[:64]
        ids = torch.cat([ids, torch.tensor([real])])
    return ids


def load_hf(out: Path):
    transformers = pytest.importorskip("transformers")
    transformers.utils.logging.disable_progress_bar()
    hf = transformers.LlamaForCausalLM.from_pretrained(str(out))
    return hf.eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_export_hf_and_compact(run_train, tmp_path, capsys, name):
    run_dir = trained(run_train, name)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "export"
    assert export_main([str(run_dir), "--out", str(out)]) == 0  # a run dir; default --format both
    captured = capsys.readouterr()
    stdout, stderr = captured.out, captured.err
    assert "tokenizer: " in stdout and "not found" not in stdout
    for f in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
              "sparse_model.safetensors", "sparse_config.json", "smet_export.json"):
        assert (out / f).is_file(), f
    ref = reference(ckpt)
    ids = sequences(ref.config.vocab_size, out / "tokenizer.json")
    with torch.no_grad():
        want = ref(ids)

    # (a) HF: transformers alone loads it; same logits; dense weights hold exactly the active weights
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is False
    assert cfg["num_key_value_heads"] == cfg["num_attention_heads"] == ref.config.num_heads
    assert cfg["rope_theta"] == ref.config.rope_theta and cfg["rms_norm_eps"] == ref.config.norm_eps
    hf = load_hf(out)
    assert type(hf).__module__.startswith("transformers.")
    with torch.no_grad():
        got = hf(input_ids=ids).logits
    delta = float((got - want).abs().max())
    print(f"[{name}] max |logits(HF) - logits(ours)| = {delta:.3e}")
    assert delta <= TOL, delta
    hf_sd = hf.state_dict()
    layers = sparse_layers(ref)
    assert bool(layers) == (name != "dense")
    for lname, layer in layers.items():
        w = hf_sd[f"{lname}.weight"]
        assert torch.equal(w, layer.to_dense()), lname  # zeros exactly at the inactive positions
        # active weights that are exactly 0: none here except a block regrown into a row whose gate row
        # (or down column) is empty under blocks of 4, which gets no gradient (set_blocks_gradual)
        active_zeros = int((layer._live_values() == 0).sum())
        if name in ("smet", "smet_rows"):
            assert active_zeros == 0
        assert int(torch.count_nonzero(w)) == layer.n_active - active_zeros, lname
        assert not bool((w != 0)[~layer.mask()].any()), lname
    for k, v in ref.state_dict().items():  # dense parameters bit-exact
        if k in hf_sd:
            assert torch.equal(hf_sd[k], v), k
    record = json.loads((out / "smet_export.json").read_text())
    zeros = sum(int((layer._live_values() == 0).sum()) for layer in layers.values())
    assert sum(c["nonzeros"] for c in record["sparse_layers"] if "nonzeros" in c) == sum(
        layer.n_active for layer in layers.values()) - zeros
    assert sum(c.get("active_zeros", 0) for c in record["sparse_layers"]) == zeros
    assert ("active weights are exactly 0" in stderr) == (zeros > 0)

    # the exported tokenizer works through transformers and matches the training tokenizer
    from transformers import AutoTokenizer
    from tokenizers import Tokenizer

    text = "And God said, Let there be light: and there was light."
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok(text)["input_ids"] == Tokenizer.from_file(str(out / "tokenizer.json")).encode(text).ids
    assert tok.eos_token_id == cfg["eos_token_id"] is not None

    # (b) compact: values, idx, n_live and logits round-trip bit-exactly
    model = load_compact(out)
    got_layers = sparse_layers(model)
    assert got_layers.keys() == layers.keys()
    for lname, layer in layers.items():
        g = got_layers[lname]
        assert torch.equal(g.values, layer.values) and g.values.dtype == layer.values.dtype, lname
        assert g.index == "flat" and g.idx.dtype == torch.int32, lname  # every export holds flat int32 ids
        assert layer.index == ("rows" if name == "smet_rows" else "flat"), lname
        assert torch.equal(g.block_ids(), layer.block_ids()), lname
        if layer.index == "flat":
            assert torch.equal(g.idx, layer.idx), lname
        assert (g.n_live, g.block_size, g.capacity, g.materialize) == (
            layer.n_live, layer.block_size, layer.capacity, layer.materialize), lname
    index_keys = (".idx", ".cols", ".row_ptr")  # compared above through block_ids (a rows index exports flat)
    ref_sd, got_sd = ref.state_dict(), model.state_dict()
    assert {k for k in ref_sd if not k.endswith(index_keys)} == {k for k in got_sd if not k.endswith(index_keys)}
    assert all(torch.equal(ref_sd[k], got_sd[k]) for k in ref_sd if not k.endswith(index_keys))
    with torch.no_grad():
        assert torch.equal(model(ids), want)
    if name == "set_blocks_gradual":  # the gradual schedule left free slots: they round-trip too
        assert any(layer.n_live < layer.capacity for layer in layers.values())
        meta = json.loads((out / "sparse_config.json").read_text())["sparse_layers"]
        assert meta["lm_head"]["block_size"] == 4 and meta["lm_head"]["n_live"] == layers["lm_head"].n_live


@pytest.mark.slow
def test_export_variants_force_dtype_tokenizer_lookup(run_train, tmp_path, monkeypatch, capsys):
    """--format/--dtype/--force, a checkpoint file outside its run, the tokenizer fallback and warning,
    and the meta-device build path used for large models."""
    ckpt = trained(run_train, "smet") / "checkpoints" / "last.ckpt"
    ref = reference(ckpt)
    ids = sequences(ref.config.vocab_size, None)
    with torch.no_grad():
        want = ref(ids)

    # --format hf --dtype bfloat16, from a .ckpt path
    out = tmp_path / "bf16"
    assert export_main([str(ckpt), "--out", str(out), "--format", "hf", "--dtype", "bfloat16"]) == 0
    assert not (out / "sparse_model.safetensors").exists()
    from safetensors.torch import load_file

    sd = load_file(str(out / "model.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    for lname, layer in sparse_layers(ref).items():
        assert torch.equal(sd[f"{lname}.weight"], layer.to_dense().to(torch.bfloat16)), lname

    # --force: rewrite as compact only; the stale dense file of the earlier export is removed
    assert export_main([str(ckpt), "--out", str(out), "--format", "compact"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert export_main([str(ckpt), "--out", str(out), "--format", "compact", "--force"]) == 0
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    assert (out / "sparse_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    with torch.no_grad():
        assert torch.equal(load_compact(out / "sparse_model.safetensors")(ids), want)

    # a lone checkpoint (no train.log next to it): the tokenizer is found from the run config
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.ckpt").write_bytes(ckpt.read_bytes())
    r = export_checkpoint(lone, tmp_path / "from_cfg", fmt="compact")
    # (the copy embedded in every checkpoint comes first; older checkpoints fall back to the BPE cache)
    assert ("embedded in model.ckpt" in r.tokenizer or "BPE cache" in r.tokenizer)
    assert (tmp_path / "from_cfg" / "tokenizer.json").is_file()

    # ... and when it cannot be found at all: a warning, the weights are exported anyway
    ck = torch.load(str(ckpt), map_location="cpu", weights_only=False)
    ck["hyper_parameters"]["cfg"]["data"]["cache_dir"] = str(tmp_path / "no_cache")
    ck.pop("smet_tokenizer", None)  # as a checkpoint from before checkpoints carried their tokenizer
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    torch.save(ck, str(nowhere / "x.ckpt"))
    with pytest.warns(ExportWarning, match="no tokenizer found"):
        r = export_checkpoint(nowhere / "x.ckpt", tmp_path / "no_tok", fmt="both")
    assert r.tokenizer == "not found" and not (tmp_path / "no_tok" / "tokenizer.json").exists()
    assert (tmp_path / "no_tok" / "model.safetensors").is_file()
    cfg = json.loads((tmp_path / "no_tok" / "config.json").read_text())
    assert cfg["eos_token_id"] is None

    # large models are rebuilt on the meta device (no init): same weights, same outputs
    import smet.export.compact as compact_mod
    import smet.export.source as source_mod

    monkeypatch.setattr(source_mod, "META_BUILD_PARAMS", 0)
    monkeypatch.setattr(compact_mod, "META_BUILD_PARAMS", 0)
    run = source_mod.load_run(ckpt)
    with torch.no_grad():
        assert torch.equal(run.model(ids), want)
    export_checkpoint(ckpt, tmp_path / "meta", fmt="both")
    with torch.no_grad():
        assert torch.equal(load_compact(tmp_path / "meta")(ids), want)
    hf = load_hf(tmp_path / "meta")
    with torch.no_grad():
        assert float((hf(input_ids=ids).logits - want).abs().max()) <= TOL


# ------------------------------------------------------------------------------------ errors


def _one_line_error(capsys, argv) -> str:
    assert export_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("smet-export: error: "), err
    return err[0]


def test_errors_bad_inputs(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert "no such checkpoint" in _one_line_error(capsys, [str(tmp_path / "missing"), "--out", out])
    (tmp_path / "empty_run").mkdir()
    assert "no checkpoint found" in _one_line_error(capsys, [str(tmp_path / "empty_run"), "--out", out])
    (tmp_path / "garbage.ckpt").write_text("not a checkpoint")
    assert "cannot read checkpoint" in _one_line_error(capsys, [str(tmp_path / "garbage.ckpt"), "--out", out])
    torch.save({"state_dict": {"x": torch.zeros(3)}, "hyper_parameters": {"lr": 1}, "pad": torch.zeros(4096)},
               str(tmp_path / "foreign.ckpt"))
    assert "not an smet checkpoint" in _one_line_error(capsys, [str(tmp_path / "foreign.ckpt"), "--out", out])
    truncated = (tmp_path / "foreign.ckpt").read_bytes()[:-200]
    (tmp_path / "torn.ckpt").write_bytes(truncated)
    assert "cannot read checkpoint" in _one_line_error(capsys, [str(tmp_path / "torn.ckpt"), "--out", out])
    # --out: non-empty without --force, or a file
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert "not empty" in _one_line_error(capsys, [str(tmp_path / "foreign.ckpt"), "--out", str(busy)])
    assert (busy / "keep.txt").read_text() == "x" and len(list(busy.iterdir())) == 1
    assert "not a directory" in _one_line_error(capsys, [str(tmp_path / "foreign.ckpt"), "--out",
                                                         str(tmp_path / "garbage.ckpt")])
    assert not (tmp_path / "out").exists()  # nothing written on failure
    with pytest.raises(ExportError, match="unknown format"):
        export_checkpoint(tmp_path / "foreign.ckpt", out, fmt="onnx")


def test_corrupt_checkpoint_bytes_detected(tmp_path, capsys):
    """A bit flip inside a tensor of a zip checkpoint is caught by the CRC check, not exported."""
    torch.save({"state_dict": {"model.w": torch.arange(100000, dtype=torch.float32)}}, str(tmp_path / "a.ckpt"))
    data = bytearray((tmp_path / "a.ckpt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "b.ckpt").write_bytes(bytes(data))
    line = _one_line_error(capsys, [str(tmp_path / "b.ckpt"), "--out", str(tmp_path / "o")])
    assert "corrupt" in line


def test_console_script_exit_code(tmp_path):
    exe = Path(sys.executable).with_name("smet-export")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "smet.cli.export"]
    r = subprocess.run([*cmd, str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"smet-export: error: {tmp_path / 'nope'}: no such checkpoint file or "
                                             "run directory"]


def test_safetensors_stream_writer_matches_library(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from smet.export.safetensors_stream import Entry, read_metadata, write_safetensors

    ts = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int32), "c": torch.randn(4).to(torch.bfloat16),
          "d": torch.zeros(0, 3), "e": torch.tensor(2.5, dtype=torch.float16)}
    write_safetensors(tmp_path / "x.safetensors",
                      [Entry(k, v.dtype, tuple(v.shape), lambda v=v: v) for k, v in ts.items()],
                      metadata={"format": "pt", "k": "v"})
    got = load_file(str(tmp_path / "x.safetensors"))
    assert got.keys() == ts.keys() and all(torch.equal(got[k], ts[k]) for k in ts)
    assert read_metadata(tmp_path / "x.safetensors") == {"format": "pt", "k": "v"}
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(ts)
    with pytest.raises(RuntimeError, match="declared"):
        write_safetensors(tmp_path / "y.safetensors", [Entry("a", torch.float32, (2,), lambda: torch.zeros(3))])
    assert not (tmp_path / "y.safetensors").exists()


# ------------------------------------------------------------------ the run keeps its tokenizer


@pytest.mark.slow
def test_export_copied_run_without_cache(run_train, tmp_path, monkeypatch, capsys):
    """<run>/tokenizer.json (sha256 in config.yaml and the checkpoint) makes a copied run exportable
    on a machine without the data cache; the copy beside the checkpoint is the second choice; a file
    that is not the run's tokenizer is refused; older runs (no `tokenizer:` entry) still resume."""
    import shutil

    import yaml

    own_cache = tmp_path / "own_cache"
    run = run_train(*FAST, *RUNS["smet"], out=tmp_path / "run", env={"SMET_CACHE_DIR": str(own_cache)}).out_dir
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    sha = cfg["tokenizer"]["sha256"]
    assert cfg["tokenizer"]["file"] == "tokenizer.json"
    assert hashlib.sha256((run / "tokenizer.json").read_bytes()).hexdigest() == sha
    assert not (run / "checkpoints" / "tokenizer.json").exists()  # checkpoints/ holds checkpoints only
    cached = list((own_cache / "tokenizers").glob("*.json"))
    assert len(cached) == 1 and cached[0].read_bytes() == (run / "tokenizer.json").read_bytes()
    ck = torch.load(str(run / "checkpoints" / "last.ckpt"), map_location="cpu", weights_only=True)
    assert ck["hyper_parameters"]["cfg"]["tokenizer"] == {"file": "tokenizer.json", "sha256": sha}

    # "another machine": the run copied elsewhere, the cache it was trained with gone, an empty one set
    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(own_cache)
    monkeypatch.setenv("SMET_CACHE_DIR", str(tmp_path / "empty_cache"))
    assert export_main([str(copy), "--out", str(tmp_path / "exp")]) == 0
    out = capsys.readouterr().out
    assert f"tokenizer: {copy / 'tokenizer.json'} (the run's copy)" in out, out
    assert (tmp_path / "exp" / "tokenizer.json").read_bytes() == (copy / "tokenizer.json").read_bytes()
    assert json.loads((tmp_path / "exp" / "config.json").read_text())["eos_token_id"] is not None

    # the lookups below, as for a checkpoint written before checkpoints carried their tokenizer
    from smet.export.run_tokenizer import CKPT_KEY

    for p in (copy / "checkpoints").glob("*.ckpt"):
        old = torch.load(str(p), map_location="cpu", weights_only=True)
        assert old.pop(CKPT_KEY)["sha256"] == sha  # every checkpoint carries it
        torch.save(old, str(p))
    # without <run>/tokenizer.json: a copy beside the checkpoint (a checkpoints/ folder copied alone)
    (copy / "checkpoints" / "tokenizer.json").write_bytes((copy / "tokenizer.json").read_bytes())
    (copy / "tokenizer.json").unlink()
    r = export_checkpoint(copy, tmp_path / "exp2", fmt="compact")
    assert "beside the checkpoint" in r.tokenizer, r.tokenizer
    # another tokenizer as <run>/tokenizer.json: refused (sha256), the copy beside the checkpoint used
    from tokenizers import Tokenizer

    other = Tokenizer.from_file(str(copy / "checkpoints" / "tokenizer.json"))
    other.add_tokens(["zzzz-not-the-run"])
    other.save(str(copy / "tokenizer.json"))
    r = export_checkpoint(copy, tmp_path / "exp3", fmt="compact")
    assert "beside the checkpoint" in r.tokenizer, r.tokenizer
    # ... and there too: no tokenizer (the cache is gone), a warning naming why; the weights exported
    other.save(str(copy / "checkpoints" / "tokenizer.json"))
    with pytest.warns(ExportWarning, match="sha256 differs"):
        r = export_checkpoint(copy, tmp_path / "exp4", fmt="compact")
    assert r.tokenizer == "not found" and (tmp_path / "exp4" / "sparse_model.safetensors").is_file()

    # a checkpoint carrying its tokenizer (checkpoint["smet_tokenizer"]), copied alone: found inside it
    from smet.export.run_tokenizer import checkpoint_entry

    entry = checkpoint_entry(run, cfg)
    assert entry is not None and entry["sha256"] == sha
    ck["smet_tokenizer"] = entry
    lone = tmp_path / "lone"
    lone.mkdir()
    torch.save(ck, str(lone / "model.ckpt"))
    r = export_checkpoint(lone / "model.ckpt", tmp_path / "exp5", fmt="compact")
    assert "embedded in model.ckpt" in r.tokenizer, r.tokenizer
    assert (tmp_path / "exp5" / "tokenizer.json").read_bytes() == (run / "tokenizer.json").read_bytes()


def test_resume_check_accepts_older_checkpoints(tmp_path):
    """config.yaml / the checkpoint gained a top-level `tokenizer:` entry: resuming a checkpoint
    without it (an older run) passes the compatibility check, and so does the reverse."""
    from omegaconf import OmegaConf

    from smet.config import check_resume_compatible

    base = {"model": {"hidden_size": 8, "intermediate_size": 16, "num_layers": 1, "num_heads": 2},
            "sparsity": {"method": "dense"}, "data": {"seq_len": 16}}
    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"cfg": base, "vocab_size": 10}}, str(old))
    new_cfg = OmegaConf.create(dict(base, tokenizer={"file": "tokenizer.json", "sha256": "ab" * 32}))
    check_resume_compatible(str(old), new_cfg)
    newer = tmp_path / "new.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"cfg": OmegaConf.to_container(new_cfg), "vocab_size": 10}},
               str(newer))
    check_resume_compatible(str(newer), OmegaConf.create(base))
