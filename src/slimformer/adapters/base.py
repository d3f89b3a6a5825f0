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
    # Relative-position bias table (buckets, heads) feeding this attention's scores, if any.
    # T5 (owned by block 0 of the stack) and MPNet (owned by the encoder) share one table across
    # all layers, so heads can only be removed there the same way in every layer of the stack.
    rel_bias: nn.Module | None = None


@dataclass
class FFNBlock:
    """The feed-forward block of one layer.

    Plain FFN: down(act(up(x))). Gated FFN (Llama, T5 v1.1): down(act(gate(x)) * up(x)); `gate`
    is the branch that goes through the activation. up/gate: (hidden -> intermediate),
    down: (intermediate -> hidden). `module` is None where the FFN is not one module (BERT).
    """

    module: nn.Module | None
    up: nn.Module
    down: nn.Module
    gate: nn.Module | None
    intermediate_size: int


@dataclass
class LayerInfo:
    """One Transformer layer. `index` is the position inside its stack's ModuleList.

    `norms` holds the LayerNorm / RMSNorm modules of the layer, by key:
      "attn"  pre-LN: the norm whose output is the self-attention input (Llama `input_layernorm`).
              post-LN: the norm applied to (attention output + residual) (BERT
              `attention.output.LayerNorm`); its output feeds the FFN and the residual.
      "ffn"   pre-LN: the norm whose output is the FFN input (Llama `post_attention_layernorm`).
              post-LN: the norm applied to (FFN output + residual).
      "cross" the same for cross-attention (encoder-decoder decoder layers).
      "attn_out", "ffn_out"  extra norms on block outputs before the residual (Gemma 3).
    Folding a per-channel scale into a norm (SmoothQuant) is only output-preserving for pre-LN
    ("attn"/"ffn"/"cross" keys with `Adapter.norm_position == "pre"`): in post-LN the norm output
    is also the residual stream.
    """

    index: int
    stack: str  # "encoder" | "decoder"
    module: nn.Module
    attention: AttentionBlock
    ffn: FFNBlock
    cross_attention: AttentionBlock | None = None
    norms: dict = field(default_factory=dict)  # see above: "attn", "ffn", "cross", ...


class Adapter:
    """Base adapter. Subclasses set `name`, `model_types` and implement the queries."""

    name: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    # "post" (BERT: LayerNorm after the residual) or "pre" (Llama/GPT-2: norm before the block)
    norm_position: ClassVar[str] = "pre"
    # RMSNorm multiplies by (norm_weight_offset + weight): 0 for most, 1 for Gemma.
    norm_weight_offset: ClassVar[float] = 0.0
    # the config states a key/value head count apart from the query heads (Llama
    # num_key_value_heads): grouped-query attention is native; elsewhere the smaller key/value
    # projections are recorded as modules and the attention repeats them (slimformer functions)
    kv_heads_in_config: ClassVar[bool] = False

    def norm_position_for(self, model: nn.Module) -> str:
        """"pre" or "post" for this model (the family's, unless its config says otherwise)."""
        return self.norm_position

    def base(self, model: nn.Module) -> nn.Module:
        """The bare transformer inside a task head wrapper (BertModel inside BertForX, ...)."""
        raise NotImplementedError

    def layers(self, model: nn.Module) -> list[LayerInfo]:
        """Every layer, encoder layers first, then decoder layers; sizes read from the modules."""
        raise NotImplementedError

    def layer_containers(self, model: nn.Module) -> dict[str, nn.ModuleList]:
        """{"encoder": ModuleList, "decoder": ModuleList} holding the layers (for layer removal)."""
        raise NotImplementedError

    def embeddings(self, model: nn.Module) -> nn.Embedding:
        """The token embedding table."""
        raise NotImplementedError

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        """The norm after the last layer (pre-LN stacks), or None where there is none / it is
        not known."""
        return None

    def lm_head(self, model: nn.Module) -> nn.Module | None:
        """The vocabulary projection of an LM task model; None for bare / classification models."""
        get = getattr(unwrap(model), "get_output_embeddings", None)
        return get() if get is not None else None

    def body_linears(self, model: nn.Module) -> list[nn.Module]:
        """The linear layers inside the Transformer layers (q/k/v/o, FFN): what sparsity methods
        prune by default."""
        out = []
        for li in self.layers(model):
            for a in (li.attention, li.cross_attention):
                if a is not None:
                    out += [m for m in (a.q, a.k, a.v, a.qkv, a.o) if m is not None]
            out += [m for m in (li.ffn.gate, li.ffn.up, li.ffn.down) if m is not None]
        return [m for m in out if is_linear(m)]

    def layer_sizes(self, model: nn.Module) -> list[dict]:
        """Real per-layer sizes read from the modules, in `layers()` order:
        {"stack", "heads", "kv_heads", "head_dim", "intermediate"[, "cross_heads"]}."""
        sizes = []
        for li in self.layers(model):
            a = li.attention
            s = {"stack": li.stack, "heads": a.num_heads, "kv_heads": a.num_kv_heads,
                 "head_dim": a.head_dim, "intermediate": li.ffn.intermediate_size}
            if li.cross_attention is not None:
                s["cross_heads"] = li.cross_attention.num_heads
            sizes.append(s)
        return sizes

    def fix_config(self, model: nn.Module) -> None:
        """After surgery: write the real sizes (heads, kv heads, FFN size, layer count) to config."""
        raise NotImplementedError

    # config keys of the head count that transformers derives head_dim from (hidden / heads);
    # empty where the config states head_dim explicitly (Llama head_dim, T5 d_kv)
    derived_head_keys: ClassVar[tuple[str, ...]] = ()
    hidden_key: ClassVar[str] = "hidden_size"

    def build_config(self, config):
        """A copy of `config` that transformers can build a model from before per-layer sizes
        (`slimformer_layer_sizes`) are applied: a head count whose derived head_dim is the real
        one. The built model is then sliced to the recorded sizes (models/surgery.py)."""
        import copy

        cfg = copy.deepcopy(config)
        sizes = getattr(cfg, "slimformer_layer_sizes", None)
        if sizes and self.derived_head_keys:
            hidden = getattr(cfg, self.hidden_key)
            head_dim = sizes[0]["head_dim"]
            for k in self.derived_head_keys:
                if hasattr(cfg, k):
                    setattr(cfg, k, hidden // head_dim)
        return cfg

    # ONNX Runtime's transformer-optimizer profile for this family (None: no fusion profile)
    ort_model_type: ClassVar[str | None] = None

    def swappable_attention(self, model: nn.Module) -> bool:
        """Whether the model's attention calls transformers' attention-function registry
        (`config._attn_implementation`), so another implementation can be swapped in by name."""
        return bool(getattr(unwrap(model), "_supports_attention_backend", False))

    def rope(self, model: nn.Module):
        """(inv_freq (head_dim / 2,), attention_scaling) of rotary position embeddings in the
        rotate-half convention, or None for models without them (learned / absolute positions)."""
        return None

    def max_positions(self, model: nn.Module) -> int | None:
        """The longest input the model's position embeddings cover (None: no limit)."""
        return getattr(unwrap(model).config, "max_position_embeddings", None)

    def heads_and_hidden(self, model: nn.Module) -> tuple[int, int]:
        """(attention heads, hidden size) of the first layer, read from the modules."""
        layers = self.layers(model)
        if not layers:
            return 0, 0
        a = layers[0].attention
        return a.num_heads, self.embeddings(model).embedding_dim

    def decoder_inputs(self, model: nn.Module, input_ids):
        """Decoder input ids for an encoder-decoder model fed `input_ids` as both source and
        target (calibration, fidelity, timing): the target shifted right behind the decoder start
        token. Only encoder-decoder adapters are asked."""
        import torch

        start = getattr(unwrap(model).config, "decoder_start_token_id", None) or 0
        return torch.cat([torch.full_like(input_ids[:, :1], start), input_ids[:, :-1]], dim=1)


# ---------------------------------------------------------------------------------------------
# helpers shared by the adapters


def unwrap(model):
    """The Hugging Face model inside a wrapper (SlimModel, ...) that holds it as `.model`.

    A wrapper is anything that is not itself an nn.Module, or an nn.Module without a config;
    `LlamaForCausalLM.model` (an inner module of an HF model) is not unwrapped.
    """
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and (
            not isinstance(model, nn.Module) or getattr(model, "config", None) is None):
        return inner
    return model


def in_features(m: nn.Module) -> int:
    """Input size of a Linear-like module (nn.Linear, transformers Conv1D, quantized linears)."""
    if hasattr(m, "in_features"):
        return m.in_features
    if hasattr(m, "nx"):  # Conv1D: weight (in, out)
        return m.weight.shape[0]
    return m.weight.shape[1]


def out_features(m: nn.Module) -> int:
    """Output size of a Linear-like module (nn.Linear, transformers Conv1D, quantized linears)."""
    if hasattr(m, "out_features"):
        return m.out_features
    if hasattr(m, "nf"):  # Conv1D: weight (in, out)
        return m.weight.shape[1]
    return m.weight.shape[0]


def reindex_layers(layers: nn.ModuleList) -> None:
    """After layer removal: renumber every `layer_idx` inside the stack so KV caches line up."""
    for i, layer in enumerate(layers):
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = i


def is_uniform(sizes: list[dict], keys=("heads", "kv_heads", "head_dim", "intermediate")) -> bool:
    """True when every layer in `sizes` has the same value for each key."""
    return all(len({s[k] for s in sizes if k in s}) <= 1 for k in keys)


def write_layer_sizes(config, sizes: list[dict], needed: bool) -> None:
    """Set `config.slimformer_layer_sizes` to the per-layer sizes, or drop it when not needed."""
    if needed:
        config.slimformer_layer_sizes = [dict(s) for s in sizes]
    elif hasattr(config, "slimformer_layer_sizes"):
        del config.slimformer_layer_sizes


# ---------------------------------------------------------------------------------------------
# Linear-like modules: nn.Linear, and transformers' Conv1D (GPT-2), whose weight is (in, out)


def is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")


def is_linear(m: nn.Module) -> bool:
    """nn.Linear (and subclasses) or GPT-2's Conv1D."""
    return isinstance(m, nn.Linear) or is_conv1d(m)


def linear_classes() -> tuple[type, ...]:
    """The classes `is_linear` accepts, for `select_modules(default=...)`."""
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def linear_weight(m: nn.Module):
    """(out, in) view of the weight of nn.Linear or Conv1D (stored (in, out)), detached."""
    if isinstance(m, nn.Linear):
        return m.weight.detach()
    if is_conv1d(m):
        return m.weight.detach().t()
    raise TypeError(f"not a linear layer: {type(m).__name__}")


def linear_like(m: nn.Module, weight, bias=None) -> nn.Module:
    """A new module of m's kind (nn.Linear or Conv1D) holding `weight` (out, in) and `bias`."""
    import torch

    out_f, in_f = weight.shape
    if is_conv1d(m):
        new = type(m)(out_f, in_f)
        with torch.no_grad():
            new.weight.copy_(weight.t())
            if bias is not None:
                new.bias.copy_(bias)
            else:
                new.bias.zero_()
        return new.to(m.weight.dtype)
    new = nn.Linear(in_f, out_f, bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def norm_eps(norm: nn.Module) -> float | None:
    """The epsilon of a LayerNorm / RMSNorm module (attribute names differ by family)."""
    for k in ("variance_epsilon", "eps", "epsilon"):
        v = getattr(norm, k, None)
        if isinstance(v, float):
            return v
    return None


class GenericAdapter(Adapter):
    """A plain torch module (no Hugging Face config): no layers, heads or embedding are known, so
    only the methods that need none of that apply (int8 / weight-only quantization of its Linear
    layers, sparsity); the rest refuse it through their own checks."""

    name = "generic"

    def layers(self, model: nn.Module) -> list[LayerInfo]:
        return []

    def layer_containers(self, model: nn.Module) -> dict[str, nn.ModuleList]:
        return {}

    def embeddings(self, model: nn.Module) -> nn.Embedding | None:
        return None

    def lm_head(self, model: nn.Module) -> nn.Module | None:
        return None

    def body_linears(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in unwrap(model).modules() if is_linear(m)]
