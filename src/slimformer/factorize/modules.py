"""The modules factorization leaves in a model, and how a saved one is rebuilt.

LowRankLinear: a Linear `W (out x in)` as two, `second (out x r) @ first (r x in)`: two plain
nn.Linear, so ONNX export, quantization (each factor is an nn.Linear that quantizers target) and
plain `state_dict` code see ordinary layers. A rank-r pair holds r (in + out) weights instead of
in * out: smaller only when r < in * out / (in + out), and cheaper to run by the same factor.

FactorizedEmbedding: a token table `V x h` as `V x r` (an nn.Embedding) times `r x h` (ALBERT's
factorized embedding parametrisation).

Saved as records under `SlimModel.meta["modules"]` (types "low_rank", "factorized_embedding");
modules shared across layers (weight sharing) are recorded with the shared type of
`models.hooks` and stored once.
"""
from __future__ import annotations

import torch
from torch import nn

META_KEY = "factorize"


class LowRankLinear(nn.Module):
    """y = second(first(x)); first: in -> rank (no bias), second: rank -> out (the bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, dtype=dtype)

    @classmethod
    def from_factors(cls, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None,
                     dtype=torch.float32) -> "LowRankLinear":
        """W ~= a (out x r) @ b (r x in). Built outside inference mode (a layer-by-layer calibration
        runs in it), so the new parameters can be trained afterwards."""
        with torch.inference_mode(False):
            return cls._build(a, b, bias, dtype)

    @classmethod
    def _build(cls, a, b, bias, dtype):
        new = cls(b.shape[1], a.shape[0], a.shape[1], bias is not None, dtype=dtype)
        with torch.no_grad():
            new.first.weight.copy_(b)
            new.second.weight.copy_(a)
            if bias is not None:
                new.second.bias.copy_(bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    @property
    def weight(self) -> torch.Tensor:
        """The product (out x in), for code that reads a linear layer's weight (not a parameter)."""
        return self.second.weight @ self.first.weight

    @property
    def bias(self):
        return self.second.bias

    def record(self) -> dict:
        return {"type": "low_rank", "in": self.in_features, "out": self.out_features, "rank": self.rank,
                "bias": self.second.bias is not None}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class FactorizedEmbedding(nn.Module):
    """Token table (V x h) as an nn.Embedding (V x r) followed by a projection r -> h."""

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rank = num_embeddings, embedding_dim, rank
        self.padding_idx = padding_idx
        self.table = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx)
        self.project = nn.Linear(rank, embedding_dim, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.table(ids))

    @property
    def weight(self) -> torch.Tensor:
        """The product (V x h), for code that reads an embedding's table (not a parameter)."""
        return self.table.weight @ self.project.weight.t()

    def record(self) -> dict:
        return {"type": "factorized_embedding", "num": self.num_embeddings, "dim": self.embedding_dim,
                "rank": self.rank, "padding_idx": self.padding_idx}


def _build_low_rank(model, name, info):
    return LowRankLinear(int(info["in"]), int(info["out"]), int(info["rank"]), bool(info["bias"]))


def _build_embedding(model, name, info):
    return FactorizedEmbedding(int(info["num"]), int(info["dim"]), int(info["rank"]), info.get("padding_idx"))
