"""LLaMA-style decoder: shapes, causality, parameter counts, alignment warning, presets."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml

from smet.models.llama import LlamaConfig, LlamaForCausalLM, build_model, flops_per_token

REPO = Path(__file__).resolve().parents[1]


def small(**kw) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, max_seq_len=24)
    cfg.update(kw)
    return LlamaForCausalLM(LlamaConfig(**cfg))


def test_shapes_and_loss():
    m = small()
    x = torch.randint(0, 97, (3, 24))
    logits = m(x)
    assert logits.shape == (3, 24, 97)
    loss = m.loss(x[:, :-1], x[:, 1:])
    assert loss.ndim == 0 and abs(float(loss) - torch.log(torch.tensor(97.0)).item()) < 0.5  # ~uniform at init


def test_causality_future_tokens_never_affect_the_past():
    m = small().eval()
    x = torch.randint(0, 97, (2, 20))
    base = m(x)
    for t in (0, 7, 19):
        x2 = x.clone()
        x2[:, t] = (x2[:, t] + 1) % 97
        out = m(x2)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t], base[:, t])  # the changed position itself does change


def test_rope_makes_attention_position_dependent():
    m = small().eval()
    x = torch.tensor([[5, 6, 5, 6, 5, 6, 5, 6]])
    out = m(x)
    assert not torch.allclose(out[0, 2], out[0, 4])  # same context pattern, different positions


def test_untied_head_and_param_count_matches_formula():
    m = small()
    assert m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr()
    assert m.num_params() == m.config.num_params()
    assert m.num_params(include_embedding=False) == m.config.num_params(include_embedding=False)
    # by hand for small(): h=32, i=64, L=2, V=97. Per layer q,k,v,o 4*32*32 + gate,up,down 3*32*64 + 2 norms
    # 2*32 = 10,304; 2 layers + final norm 32 + lm_head 97*32 = 23,744 (+ embedding 3,104 = 26,848)
    assert m.num_params() == 26_848 and m.num_params(include_embedding=False) == 23_744
    # 6*N FLOPs/token, N without the embedding lookup: 2 (multiply-add) x 3 (forward + 2 backward) per weight
    assert flops_per_token(m.config) == 6 * 23_744
    # and the matmul FLOPs actually executed: a forward of T tokens does 2 FLOPs per Linear weight per token
    # (the 6*N convention also counts the 2L+1 norm weights and leaves out the attention scores)
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randint(0, 97, (1, 8))
    with FlopCounterMode(display=False) as fc:
        m(x)
    counts = fc.get_flop_counts()["Global"]
    linear = counts.get(torch.ops.aten.mm, 0) + counts.get(torch.ops.aten.addmm, 0)
    assert linear == 2 * 8 * (23_744 - (2 * 2 + 1) * 32)


def test_gradient_checkpointing_same_gradients():
    a, b = small(), small(gradient_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 97, (2, 24))
    for m in (a, b):
        m.loss(x[:, :-1], x[:, 1:]).backward()
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("mode,every", [("block", 1), ("block", 2), ("mlp", 1), ("mlp", 2), ("attention", 1),
                                        ("attention", 3)])
def test_activation_checkpointing_modes_same_gradients(mode, every):
    """Every mode / every-k gives the gradients of no checkpointing (fp32), and the loss."""
    a, b = small(num_layers=4), small(num_layers=4, activation_checkpointing=mode, checkpoint_every=every)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 97, (2, 24))
    losses = [m.loss(x[:, :-1], x[:, 1:]) for m in (a, b)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("mode,every,attn_runs,mlp_runs", [
    ("none", 1, [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]),
    ("block", 1, [2, 2, 2, 2, 2], [2, 2, 2, 2, 2]),
    ("block", 2, [2, 1, 2, 1, 2], [2, 1, 2, 1, 2]),  # blocks 0, 2, 4
    ("mlp", 1, [1, 1, 1, 1, 1], [2, 2, 2, 2, 2]),
    ("mlp", 3, [1, 1, 1, 1, 1], [2, 1, 1, 2, 1]),  # blocks 0, 3
    ("attention", 2, [2, 1, 2, 1, 2], [1, 1, 1, 1, 1]),
])
def test_activation_checkpointing_recomputes_the_checkpointed_part(mode, every, attn_runs, mlp_runs):
    """A checkpointed sub-block runs twice per step (forward + recompute in backward), the others once;
    evaluation and no-grad forwards never checkpoint."""
    m = small(num_layers=5, activation_checkpointing=mode, checkpoint_every=every)
    counts = {"attn": [0] * 5, "mlp": [0] * 5}

    def counted(module, key, j):  # (module forward hooks do not fire in a checkpoint's recompute)
        forward = module.forward

        def run(*args):
            counts[key][j] += 1
            return forward(*args)
        module.forward = run

    for j, layer in enumerate(m.model.layers):
        counted(layer.self_attn, "attn", j)
        counted(layer.mlp, "mlp", j)
    x = torch.randint(0, 97, (2, 24))
    loss = m.loss(x[:, :-1], x[:, 1:])
    assert counts == {"attn": [1] * 5, "mlp": [1] * 5}  # forward: once each
    loss.backward()
    assert counts == {"attn": attn_runs, "mlp": mlp_runs}
    for c in counts.values():
        c[:] = [0] * 5
    m.eval()
    m.loss(x[:, :-1], x[:, 1:]).backward()
    m.train()
    with torch.no_grad():
        m.loss(x[:, :-1], x[:, 1:])
    assert counts == {"attn": [2] * 5, "mlp": [2] * 5}


def test_gradient_checkpointing_is_the_block_alias_and_contradictions_are_refused():
    from smet.errors import SmetConfigError

    assert LlamaConfig(gradient_checkpointing=True).checkpointing == ("block", 1)
    assert LlamaConfig(gradient_checkpointing=True, activation_checkpointing="block",
                       checkpoint_every=2).checkpointing == ("block", 2)
    assert LlamaConfig().checkpointing == ("none", 1)
    assert LlamaConfig(activation_checkpointing="mlp", checkpoint_every=3).checkpointing == ("mlp", 3)
    key_ac = "model.activation_checkpointing"
    for kw, key in ((dict(gradient_checkpointing=True, activation_checkpointing="mlp"), key_ac),
                    (dict(gradient_checkpointing=True, activation_checkpointing="none"), key_ac),
                    (dict(activation_checkpointing="full"), "model.activation_checkpointing"),
                    (dict(activation_checkpointing="mlp", checkpoint_every=0), "model.checkpoint_every"),
                    (dict(checkpoint_every=True), "model.checkpoint_every")):
        with pytest.raises(SmetConfigError) as err:
            LlamaForCausalLM(LlamaConfig(**kw))
        assert err.value.key == key and str(err.value).startswith(key) and "\n" not in str(err.value), kw


def test_alignment_warning_for_paper_1b_not_for_aligned():
    for name, expect in (("1b", True), ("1b_aligned", False), ("130m", False)):
        cfg = yaml.safe_load((REPO / "conf" / "model" / f"{name}.yaml").read_text())
        cfg.update(vocab_size=32000, max_seq_len=256)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            LlamaConfig.from_dict(cfg).warn_alignment()
        hits = [r for r in rec if "multiple of 64" in str(r.message)]
        assert bool(hits) == expect, name
        if expect:
            assert "5461" in str(hits[0].message)


@pytest.mark.parametrize("name,millions", [("60m", 58.1), ("130m", 134.1), ("350m", 368.0), ("1b", 1339.1),
                                           ("7b", 6738.4), ("13b", 13015.9)])
def test_paper_presets_sizes(name, millions):
    cfg = yaml.safe_load((REPO / "conf" / "model" / f"{name}.yaml").read_text())
    cfg.update(vocab_size=32000, max_seq_len=256)
    n = LlamaConfig.from_dict(cfg).num_params()
    assert abs(n / 1e6 - millions) < 0.1


def test_build_model_on_meta_device_allocates_nothing():
    cfg = yaml.safe_load((REPO / "conf" / "model" / "13b.yaml").read_text())
    with torch.device("meta"):
        m = build_model(cfg, vocab_size=32000, max_seq_len=256)
    assert all(p.is_meta for p in m.parameters())
