"""A LLaMA-style decoder-only language model (RMSNorm, RoPE, SwiGLU, causal SDPA, untied head).

Module names follow the Hugging Face LLaMA layout (``model.layers.0.self_attn.q_proj`` ...) so that
parameter filters, exports and comparisons read naturally. Plain PyTorch: no Lightning imports.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from smet.models import pointwise as pw
from smet.models.options import LOSS_IMPLS, POINTWISE_IMPLS, checkpointing_of
from smet.models.loss import linear_cross_entropy

GEMM_ALIGNMENT = 64


@dataclass
class LlamaConfig:
    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 352
    num_layers: int = 4
    num_heads: int = 4
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    gradient_checkpointing: bool = False  # older alias: true = activation_checkpointing "block"
    # "none" | "block" (whole decoder block) | "mlp" (post-attention norm + MLP) | "attention" (input
    # norm + attention) | None (= gradient_checkpointing); applied to blocks 0, k, 2k, ... (k =
    # checkpoint_every); torch.utils.checkpoint, non-reentrant, training only
    activation_checkpointing: str | None = None
    checkpoint_every: int = 1
    # LM head + loss: "exact" = full logits, fp32 F.cross_entropy; "chunked" = smet.models.loss
    # (loss_chunk_tokens rows of logits at a time, gradients computed in the forward)
    loss_impl: str = "exact"
    loss_chunk_tokens: int = 4096
    # RMSNorm / RoPE / SwiGLU: "reference" = the PyTorch ops below (fp32 norm and RoPE); "fused" =
    # smet.models.pointwise (one Triton kernel per op and direction on CUDA, same math in fp32, fewer
    # saved tensors); torch.compile tracing always takes the reference ops
    pointwise: str = "reference"

    @classmethod
    def from_dict(cls, d) -> "LlamaConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(d).items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def checkpointing(self) -> tuple[str, int]:
        """The effective activation checkpointing ``(mode, every)`` (:func:`smet.models.options.checkpointing_of`)."""
        return checkpointing_of(self.to_dict())

    def validate(self) -> None:
        from smet.errors import SmetConfigError

        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "max_seq_len",
                    "loss_chunk_tokens"):
            v = getattr(self, key)
            if not isinstance(v, int) or v <= 0:
                raise SmetConfigError(f"model.{key}", f"must be a positive integer, got {v!r}")
        if self.hidden_size % self.num_heads:
            raise SmetConfigError(
                "model.num_heads", f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.head_dim % 2:
            raise SmetConfigError("model.num_heads", f"head_dim {self.head_dim} must be even for RoPE")
        checkpointing_of(self.to_dict())
        if self.loss_impl not in LOSS_IMPLS:
            raise SmetConfigError("model.loss_impl", f"unknown value {self.loss_impl!r}; choose one of "
                                                     f"{', '.join(LOSS_IMPLS)}")
        if self.pointwise not in POINTWISE_IMPLS:
            raise SmetConfigError("model.pointwise", f"unknown value {self.pointwise!r}; choose one of "
                                                     f"{', '.join(POINTWISE_IMPLS)}")

    def misaligned_dims(self) -> list[str]:
        """Linear-layer dimensions that are not a multiple of 64 (slow GEMMs on tensor cores)."""
        out = []
        for key in ("hidden_size", "intermediate_size"):
            v = getattr(self, key)
            if v % GEMM_ALIGNMENT:
                out.append(f"{key}={v}")
        return out

    def warn_alignment(self) -> None:
        bad = self.misaligned_dims()
        if bad:
            warnings.warn(
                f"model: linear dimension(s) {', '.join(bad)} not a multiple of {GEMM_ALIGNMENT}. Such GEMMs can "
                "run far slower on tensor cores (the paper's 1B intermediate 5461 is ~2.4x slower than 5504 on "
                "an H200); multiples of 16 usually cost little. Use an aligned preset (e.g. model=1b_aligned) "
                "unless you must match the paper's shapes.",
                stacklevel=2,
            )

    def num_params(self, include_embedding: bool = True) -> int:
        h, i, L, V = self.hidden_size, self.intermediate_size, self.num_layers, self.vocab_size
        per_layer = 4 * h * h + 3 * h * i + 2 * h
        n = L * per_layer + h + V * h  # blocks + final norm + lm_head
        if include_embedding:
            n += V * h
        return n


def _fused(module: nn.Module) -> bool:
    """Whether ``module`` takes the fused pointwise ops now (``model.pointwise: fused``, not while
    torch.compile traces: Inductor fuses the reference ops itself)."""
    return module.fused_pointwise and not torch.compiler.is_compiling()


class RMSNorm(nn.Module):
    fused_pointwise = False  # model.pointwise == "fused" (set by LlamaModel)

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused(self):
            return pw.rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (rotate-half convention), cos/sin cached for max_seq_len."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self._build(max_seq_len)

    def _build(self, seq_len: int, device=None) -> None:
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim))
        t = torch.arange(seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if seq_len > self.cos.shape[0] or self.cos.device != torch.device(device) or self.cos.is_meta:
            self._build(max(seq_len, self.cos.shape[0]), device)
        return self.cos[:seq_len], self.sin[:seq_len]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); cos/sin: (T, D) in fp32
    return (x.float() * cos + _rotate_half(x.float()) * sin).to(x.dtype)


class Attention(nn.Module):
    fused_pointwise = False

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        h = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        shape = (B, T, self.num_heads, self.head_dim)
        if _fused(self):  # RoPE in the projections' (B, T, H, D) layout, one kernel each
            q = pw.rope(self.q_proj(x).view(shape), cos, sin).transpose(1, 2)
            k = pw.rope(self.k_proj(x).view(shape), cos, sin).transpose(1, 2)
        else:
            q = apply_rope(self.q_proj(x).view(shape).transpose(1, 2), cos, sin)
            k = apply_rope(self.k_proj(x).view(shape).transpose(1, 2), cos, sin)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    fused_pointwise = False

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused(self):
            return self.down_proj(pw.swiglu(self.gate_proj(x), self.up_proj(x)))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def attention_block(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The attention sub-block (input norm + attention), without the residual."""
        return self.self_attn(self.input_layernorm(x), cos, sin)

    def mlp_block(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP sub-block (post-attention norm + MLP), without the residual."""
        return self.mlp(self.post_attention_layernorm(x))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                checkpointing: str = "none") -> torch.Tensor:
        """``checkpointing``: ``"attention"`` / ``"mlp"`` recompute that sub-block in backward (its input
        is kept instead of its saved tensors); whole-block checkpointing is the caller's
        (:class:`LlamaModel`)."""
        if checkpointing == "attention":
            x = x + checkpoint(self.attention_block, x, cos, sin, use_reentrant=False)
        else:
            x = x + self.attention_block(x, cos, sin)
        if checkpointing == "mlp":
            return x + checkpoint(self.mlp_block, x, use_reentrant=False)
        return x + self.mlp_block(x)


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        # activation checkpointing (model.activation_checkpointing / checkpoint_every; training only)
        self.activation_checkpointing, self.checkpoint_every = cfg.checkpointing
        if cfg.pointwise == "fused":
            for m in self.modules():
                if isinstance(m, (RMSNorm, Attention, MLP)):
                    m.fused_pointwise = True

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(input_ids.shape[1], input_ids.device)
        mode = self.activation_checkpointing if (self.training and torch.is_grad_enabled()) else "none"
        for j, layer in enumerate(self.layers):
            m = mode if j % self.checkpoint_every == 0 else "none"
            if m == "block":
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, m)
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Dense-style init: N(0, init_std) for every linear and the embedding, ones for norms."""
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                if m.weight.is_meta:
                    continue
                nn.init.normal_(m.weight, mean=0.0, std=std)
            elif isinstance(m, RMSNorm) and not m.weight.is_meta:
                m.weight.fill_(1.0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model(input_ids))

    def compile(self, *args, **kwargs) -> None:
        """``torch.compile`` the decoder stack (``self.model``): what :meth:`loss` runs on both paths (the
        chunked loss calls ``self.model`` directly, so compiling this module's ``__call__`` would miss
        it). The head and the loss stay eager (the chunked loss is its own autograd Function)."""
        self.model.compile(*args, **kwargs)

    # ``loss`` stores the largest output logit of its batch here (a detached 0-d tensor on the
    # logits' device, no host sync) when ``track_max_logit`` is set: LMModule logs it as
    # ``train/max_logit`` (logit growth around topology updates, issue 14)
    track_max_logit: bool = False
    last_max_logit: torch.Tensor | None = None

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # chunked needs the head as a plain bias-free nn.Linear (a sparse head takes the exact path)
        if self.config.loss_impl == "chunked" and type(self.lm_head) is nn.Linear and self.lm_head.bias is None:
            hidden = self.model(input_ids)
            out = linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), self.lm_head.weight,
                                       targets.reshape(-1), chunk_rows=self.config.loss_chunk_tokens,
                                       return_max_logit=self.track_max_logit)
            if self.track_max_logit:
                out, self.last_max_logit = out
            return out
        logits = self(input_ids)
        if self.track_max_logit:
            self.last_max_logit = logits.detach().amax().float()
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))

    def num_params(self, include_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if not include_embedding:
            n -= self.model.embed_tokens.weight.numel()
        return n


def flops_per_token(cfg: LlamaConfig) -> float:
    """Training FLOPs per token under the 6*N convention, N = parameters excluding the input
    embedding (a lookup, no matmul); attention score FLOPs are not counted."""
    return 6.0 * cfg.num_params(include_embedding=False)


def build_model(cfg_model, vocab_size: int | None = None, max_seq_len: int | None = None) -> LlamaForCausalLM:
    d = dict(cfg_model)
    if vocab_size is not None and d.get("vocab_size") in (None, "auto"):
        d["vocab_size"] = vocab_size
    if max_seq_len is not None and d.get("max_seq_len") in (None, "auto"):
        d["max_seq_len"] = max_seq_len
    cfg = LlamaConfig.from_dict(d)
    cfg.warn_alignment()
    return LlamaForCausalLM(cfg)



_META_CACHE: dict[tuple, LlamaForCausalLM] = {}


def meta_model(cfg_model, vocab_size: int | None = None, max_seq_len: int | None = None) -> LlamaForCausalLM:
    """The model on ``torch.device("meta")``: shapes only, no storage (cached per config; treat the
    returned module as read-only). ``vocab_size`` / ``max_seq_len`` fill a config's ``auto`` / null."""
    d = dict(cfg_model)
    if vocab_size is not None and d.get("vocab_size") in (None, "auto"):
        d["vocab_size"] = int(vocab_size)
    if max_seq_len is not None and d.get("max_seq_len") in (None, "auto"):
        d["max_seq_len"] = int(max_seq_len)
    cfg = LlamaConfig.from_dict(d)
    key = tuple(sorted(cfg.to_dict().items()))
    model = _META_CACHE.get(key)
    if model is None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.device("meta"):
                model = LlamaForCausalLM(cfg)
        if len(_META_CACHE) > 16:
            _META_CACHE.clear()
        _META_CACHE[key] = model
    return model


def model_shapes(cfg_model, vocab_size: int | None = None, max_seq_len: int | None = None):
    """The memory model's description of this model (``smet.sparse.memory.ModelShapes``), read from
    a meta-device build: nothing is allocated."""
    from smet.sparse.memory import ModelShapes

    return ModelShapes.of(meta_model(cfg_model, vocab_size, max_seq_len))
