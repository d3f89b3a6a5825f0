"""SlimModel: a model together with its tokenizer and what it is for."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

KINDS = ("embedding", "classification", "causal-lm", "seq2seq-lm")


@dataclass
class Pooling:
    """Sentence-transformers pooling: how token states become one sentence embedding."""

    mode: str = "mean"  # "mean" | "cls" | "max" | "mean_sqrt_len" | "last"
    normalize: bool = False
    max_seq_length: int | None = None

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # hidden: (B, T, H), mask: (B, T)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if self.mode == "cls":
            out = hidden[:, 0]
        elif self.mode == "max":
            out = hidden.masked_fill(m == 0, -1e9).max(dim=1).values
        elif self.mode == "last":
            idx = mask.sum(1).long() - 1
            out = hidden[torch.arange(hidden.shape[0]), idx]
        else:
            s = (hidden * m).sum(1)
            n = m.sum(1).clamp(min=1e-9)
            out = s / (n.sqrt() if self.mode == "mean_sqrt_len" else n)
        if self.normalize:
            out = torch.nn.functional.normalize(out, p=2, dim=-1)
        return out


@dataclass
class SlimModel:
    """What `slimformer.load` returns.

    model: the torch module (a transformers PreTrainedModel); tokenizer: its tokenizer;
    kind: one of KINDS; pooling: for kind "embedding"; source: where it came from;
    meta: slimformer metadata carried with the weights (resolved recipe, results, quantization);
    stream: for `load(folder, stream=True)`, where the weights still are (models/streaming.py).
    """

    model: nn.Module
    tokenizer: Any
    kind: str
    pooling: Pooling | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)
    stream: Any = field(default=None, repr=False)  # a WeightStream: weights still in their shards (streaming.py)

    @property
    def config(self):
        return self.model.config

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def num_params(self) -> int:
        """Parameters plus quantized weight buffers counted as elements of the float weight."""
        n = sum(p.numel() for p in self.model.parameters())
        for mod in self.model.modules():
            extra = getattr(mod, "slimformer_weight_numel", None)
            if extra is not None:
                n += int(extra)
        return n

    def tokenize(self, texts, max_length: int | None = None, pairs=None) -> dict[str, torch.Tensor]:
        return tokenize(self.tokenizer, self.pooling, texts, max_length, pairs)

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 32, max_length: int | None = None) -> torch.Tensor:
        """Sentence embeddings (B, H) with this model's pooling (mean if none)."""
        pool = self.pooling or Pooling()
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenize(texts[i : i + batch_size], max_length)
            enc.pop("token_type_ids", None) if "token_type_ids" not in _forward_args(self.model) else None
            hidden = self.model(**enc).last_hidden_state if _is_bare(self.model) else _last_hidden(self.model, enc)
            out.append(pool(hidden.float(), enc["attention_mask"]))
        return torch.cat(out)


class ArtifactText:
    """tokenize() and embed() for a model another runtime runs (an ONNX folder, a .pte): it has
    `tokenizer`, `pooling`, `kind`, and `model(**enc)` returning `last_hidden_state`."""

    def tokenize(self, texts, max_length: int | None = None, pairs=None) -> dict[str, torch.Tensor]:
        return tokenize(self.tokenizer, self.pooling, texts, max_length, pairs)

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 32, max_length: int | None = None) -> torch.Tensor:
        """Sentence embeddings (B, H) with the exported pooling (mean if none)."""
        if self.kind != "embedding":
            raise ValueError(f"embed() needs an embedding model; this one is {self.kind}")
        pool = self.pooling or Pooling()
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenize(texts[i : i + batch_size], max_length)
            out.append(pool(self.model(**enc).last_hidden_state.float(), enc["attention_mask"]))
        return torch.cat(out)


def tokenize(tokenizer, pooling: Pooling | None, texts, max_length: int | None = None, pairs=None) -> dict:
    """Padded, truncated tensors; max_length defaults to the pooling's max_seq_length, else 512."""
    max_length = max_length or (pooling.max_seq_length if pooling else None) or 512
    kw = dict(padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    enc = tokenizer(texts, pairs, **kw) if pairs is not None else tokenizer(texts, **kw)
    return dict(enc)


def _forward_args(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _is_bare(model: nn.Module) -> bool:
    return not hasattr(model, "base_model") or model.base_model is model


def _last_hidden(model: nn.Module, enc: dict) -> torch.Tensor:
    out = model(**enc, output_hidden_states=True)
    return out.hidden_states[-1]
