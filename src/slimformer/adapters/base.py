"""What an architecture adapter answers. Only adapters know module names of model families."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn


@dataclass
class AttentionBlock:
    """One attention block of one layer.

    q/k/v/o are Linear-like modules (nn.Linear, or transformers' Conv1D for GPT-2, whose weight
    is stored transposed: (in, out)). For fused projections (GPT-2 `c_attn`) `qkv` is set and
    q/k/v are None; `fused_qkv_split` gives the output sizes of q, k, v inside it.
    """

    module: nn.Module
    q: nn.Module | None
    k: nn.Module | None
    v: nn.Module | None
    o: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int
    kind: str = "self"  # "self" | "cross"
    qkv: nn.Module | None = None
    fused_qkv_split: tuple[int, int, int] | None = None


@dataclass
class FFNBlock:
    """The feed-forward block of one layer: down(act(up(x)) [* gate(x)])."""

    module: nn.Module | None
    up: nn.Module
    down: nn.Module
    gate: nn.Module | None
    intermediate_size: int


@dataclass
class LayerInfo:
    index: int
    stack: str  # "encoder" | "decoder"
    module: nn.Module
    attention: AttentionBlock
    ffn: FFNBlock
    cross_attention: AttentionBlock | None = None
    # LayerNorm-like modules feeding attention / FFN inputs (pre-LN) or after them (post-LN)
    norms: dict = field(default_factory=dict)


class Adapter:
    """Base adapter. Subclasses set `name`, `model_types` and implement the queries."""

    name: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    # "post" (BERT: LayerNorm after the residual) or "pre" (Llama/GPT-2: norm before the block)
    norm_position: ClassVar[str] = "pre"

    def base(self, model: nn.Module) -> nn.Module:
        """The bare transformer inside a task head wrapper (BertModel inside BertForX, ...)."""
        raise NotImplementedError

    def layers(self, model: nn.Module) -> list[LayerInfo]:
        raise NotImplementedError

    def layer_containers(self, model: nn.Module) -> dict[str, nn.ModuleList]:
        """{"encoder": ModuleList, "decoder": ModuleList} holding the layers (for layer removal)."""
        raise NotImplementedError

    def embeddings(self, model: nn.Module) -> nn.Embedding:
        """The token embedding table."""
        raise NotImplementedError

    def lm_head(self, model: nn.Module) -> nn.Module | None:
        return None

    def fix_config(self, model: nn.Module) -> None:
        """After surgery: write the real sizes (heads, kv heads, FFN size, layer count) to config."""
        raise NotImplementedError
