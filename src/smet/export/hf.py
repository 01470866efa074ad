"""Dense export in the Hugging Face LLaMA layout (``LlamaForCausalLM.from_pretrained(dir)``).

Our module names already follow the HF layout and RoPE uses the same rotate-half convention, so the
mapping is one to one with no permutation: ``model.embed_tokens.weight``,
``model.layers.N.self_attn.{q,k,v,o}_proj.weight``, ``model.layers.N.mlp.{gate,up,down}_proj.weight``,
``model.layers.N.{input,post_attention}_layernorm.weight``, ``model.norm.weight``, ``lm_head.weight``.
Compact sparse layers are densified one at a time (zeros at inactive positions) while the file is
streamed out; each dense weight is checked to hold exactly the active weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from smet.export.safetensors_stream import Entry, write_safetensors
from smet.export.source import ExportError, LoadedRun

HF_WEIGHTS = "model.safetensors"

_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def hf_names(num_layers: int) -> list[str]:
    """Module paths (without ``.weight``) of every HF LLaMA weight, in file order."""
    names = ["model.embed_tokens"]
    for i in range(num_layers):
        p = f"model.layers.{i}"
        names += [f"{p}.input_layernorm", *(f"{p}.{lin}" for lin in _LINEARS), f"{p}.post_attention_layernorm"]
    return names + ["model.norm", "lm_head"]


def hf_config(run: LoadedRun, dtype: torch.dtype, eot_id: int | None) -> dict:
    """``config.json`` of ``transformers.LlamaConfig`` (multi-head attention, untied head, no biases)."""
    c = run.model.config
    theta = float(c.rope_theta)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": float(c.norm_eps),
        "rope_theta": theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": float(c.init_std),
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "pad_token_id": None,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def _weight_of(model: nn.Module, name: str):
    """(dense-producing function, shape, SparseLinear or None) for one module path."""
    from smet.sparse.layer import SparseLinear

    mod = model.get_submodule(name)
    if isinstance(mod, SparseLinear):
        return (lambda m=mod: m), (mod.out_features, mod.in_features), mod
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise ExportError(f"module {name} has no weight to export")
    return (lambda t=w: t), tuple(w.shape), None


def check_covered(model: nn.Module, names: list[str]) -> None:
    """Every parameter/persistent buffer of our model is exported (nothing silently dropped)."""
    from smet.sparse.layer import SparseLinear

    covered = set()
    for n in names:
        mod = model.get_submodule(n)
        if isinstance(mod, SparseLinear):
            covered |= {f"{n}.values", f"{n}.idx"}
        else:
            covered.add(f"{n}.weight")
    extra = sorted(set(model.state_dict()) - covered)
    if extra:
        raise ExportError(f"the model has tensors with no Hugging Face LLaMA counterpart: {', '.join(extra[:5])}")


def write_hf_weights(run: LoadedRun, out_dir: Path, dtype: torch.dtype) -> tuple[int, list[dict]]:
    """Stream ``model.safetensors``; returns (bytes, per-sparse-layer checks)."""
    model = run.model
    names = hf_names(model.config.num_layers)
    check_covered(model, names)
    checks: list[dict] = []
    entries: list[Entry] = []
    for n in names:
        get, shape, sparse = _weight_of(model, n)
        if sparse is None:
            entries.append(Entry(f"{n}.weight", dtype, shape, lambda g=get: g().to(dtype)))
        else:
            entries.append(Entry(f"{n}.weight", dtype, shape, lambda g=get, n=n: _densify(g(), n, dtype, checks)))
    size = write_safetensors(out_dir / HF_WEIGHTS, entries, metadata={"format": "pt"})
    return size, checks


@torch.no_grad()
def _densify(layer, name: str, dtype: torch.dtype, checks: list[dict]) -> torch.Tensor:
    """Dense weight of a compact layer (zeros at inactive positions), verified: its non-zeros are
    exactly the non-zero active weights and nothing outside the active set."""
    w = layer.to_dense(dtype)
    live = layer._live_values().to(dtype)
    nnz = int(torch.count_nonzero(w))
    nnz_live = int(torch.count_nonzero(live))
    outside = int(torch.count_nonzero(w.masked_fill(layer.mask(), 0)))
    if nnz != nnz_live or outside:
        raise ExportError(f"densifying {name}: {nnz} non-zeros for {nnz_live} non-zero active weights "
                          f"({outside} outside the active set)")
    checks.append({"name": name, "shape": [layer.out_features, layer.in_features], "n_active": layer.n_active,
                   "nonzeros": nnz, "active_zeros": layer.n_active - nnz_live})
    return w


def tokenizer_config(eot_token: str | None, max_len: int) -> dict:
    """A plain fast tokenizer around tokenizer.json: no BOS prepended (training never used one)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "bos_token": eot_token,
        "eos_token": eot_token,
        "unk_token": None,
        "pad_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }


def generation_config(eot_id: int | None) -> dict:
    return {"bos_token_id": eot_id, "eos_token_id": eot_id}
