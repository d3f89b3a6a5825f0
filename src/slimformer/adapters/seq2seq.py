"""Encoder-decoder models: T5 / mT5 (pre-LN) and BART / Marian (post-LN).

T5  encoder.block[i] / decoder.block[i], each a ModuleList `layer`:
      layer[0]  .SelfAttention.{q,k,v,o}  .layer_norm       q: (d_model -> heads*d_kv)
      layer[1]  .EncDecAttention.{q,k,v,o}  .layer_norm     (decoder only)
      layer[-1] .DenseReluDense.{wi | wi_0 (act), wi_1; wo}  .layer_norm
    head_dim is d_kv, which need not be d_model / heads. Block 0 of each stack owns the
    relative position bias that every later block reuses.
BART / Marian  encoder.layers[i] / decoder.layers[i]:
      self_attn.{q_proj,k_proj,v_proj,out_proj}  self_attn_layer_norm
      encoder_attn.{...}  encoder_attn_layer_norm      (decoder only)
      fc1, fc2  final_layer_norm
"""
from __future__ import annotations

from torch import nn

from .base import (Adapter, AttentionBlock, FFNBlock, LayerInfo, is_uniform, out_features,
                   reindex_layers, unwrap, write_layer_sizes)


def _attention(module, q, k, v, o, head_dim, kind="self") -> AttentionBlock:
    return AttentionBlock(module=module, q=q, k=k, v=v, o=o, num_heads=out_features(q) // head_dim,
                          num_kv_heads=out_features(k) // head_dim, head_dim=head_dim, kind=kind)


class _Seq2SeqAdapter(Adapter):
    """Shared parts: stacks found as `encoder` / `decoder` on the base model."""

    def base(self, model: nn.Module) -> nn.Module:
        return unwrap(model).base_model  # BartModel in BartForX; T5ForConditionalGeneration itself

    def layers(self, model: nn.Module) -> list[LayerInfo]:
        return [self._layer(i, stack, layer, layers[0])
                for stack, layers in self.layer_containers(model).items()
                for i, layer in enumerate(layers)]

    def lm_head(self, model: nn.Module) -> nn.Module | None:
        return getattr(unwrap(model), "lm_head", None)

    def embeddings(self, model: nn.Module) -> nn.Embedding:
        """The module embedding the encoder's input_ids, (vocab, d_model). In transformers 5.x
        `shared`, `encoder.embed_tokens` and `decoder.embed_tokens` are three modules tying one
        weight Parameter; this is the one the encoder calls (the decoder's for a decoder-only
        BartForCausalLM)."""
        base = self.base(model)
        stack = base.encoder if hasattr(base, "encoder") else base.decoder
        return stack.embed_tokens

    def _sizes_by_stack(self, model) -> dict[str, list[dict]]:
        for layers in self.layer_containers(model).values():
            reindex_layers(layers)
        out = {"encoder": [], "decoder": []}
        for s in self.layer_sizes(model):
            out[s["stack"]].append(s)
        return out


class T5Adapter(_Seq2SeqAdapter):
    name = "t5"
    model_types = ("t5", "mt5")
    norm_position = "pre"

    def layer_containers(self, model: nn.Module) -> dict[str, nn.ModuleList]:
        base = self.base(model)
        return {s: getattr(base, s).block for s in ("encoder", "decoder") if hasattr(base, s)}

    def _layer(self, i: int, stack: str, block: nn.Module, first: nn.Module) -> LayerInfo:
        sa = block.layer[0].SelfAttention
        attn = _attention(sa, sa.q, sa.k, sa.v, sa.o, sa.key_value_proj_dim)
        attn.rel_bias = getattr(first.layer[0].SelfAttention, "relative_attention_bias", None)
        norms = {"attn": block.layer[0].layer_norm, "ffn": block.layer[-1].layer_norm}
        cross = None
        if stack == "decoder":
            ca = block.layer[1].EncDecAttention
            cross = _attention(ca, ca.q, ca.k, ca.v, ca.o, ca.key_value_proj_dim, kind="cross")
            norms["cross"] = block.layer[1].layer_norm
        d = block.layer[-1].DenseReluDense
        if hasattr(d, "wi_0"):  # T5 v1.1 / mT5: wo(act(wi_0 x) * wi_1 x)
            ffn = FFNBlock(module=d, up=d.wi_1, down=d.wo, gate=d.wi_0,
                           intermediate_size=out_features(d.wi_1))
        else:  # original T5: wo(act(wi x))
            ffn = FFNBlock(module=d, up=d.wi, down=d.wo, gate=None,
                           intermediate_size=out_features(d.wi))
        return LayerInfo(i, stack, block, attn, ffn, cross_attention=cross, norms=norms)


    def fix_config(self, model: nn.Module) -> None:
        """Write the real sizes back to the config (and the stacks' own copies of it).

        Sets num_layers (encoder), num_decoder_layers, num_heads, d_kv and d_ff. T5 has one
        num_heads / d_ff for every attention and FFN; when they differ (non-uniform pruning)
        the global values are the maximum and `config.slimformer_layer_sizes` holds one dict
        per layer, encoder layers first ({"stack", "heads", "kv_heads", "head_dim",
        "intermediate", decoder layers also "cross_heads"}); otherwise it is removed. Also
        updates `n_heads` / `inner_dim` on every attention module.
        """
        model = unwrap(model)
        by_stack = self._sizes_by_stack(model)
        sizes = by_stack["encoder"] + by_stack["decoder"]
        for li in self.layers(model):
            for a in (li.attention, li.cross_attention):
                if a is not None:
                    a.module.n_heads = a.num_heads
                    a.module.inner_dim = a.num_heads * a.head_dim
        heads = [s[k] for s in sizes for k in ("heads", "cross_heads") if k in s]
        base = self.base(model)
        stacks = {s: getattr(base, s).config for s in ("encoder", "decoder") if hasattr(base, s)}
        for cfg in [model.config, *stacks.values()]:
            if sizes:
                cfg.num_heads = max(heads)
                cfg.d_kv = max(s["head_dim"] for s in sizes)
                cfg.d_ff = max(s["intermediate"] for s in sizes)
        model.config.num_layers = len(by_stack["encoder"])
        if "decoder" in stacks:
            model.config.num_decoder_layers = len(by_stack["decoder"])
        for name, cfg in stacks.items():
            cfg.num_layers = len(by_stack[name])
        uniform = is_uniform(sizes) and len(set(heads)) <= 1
        write_layer_sizes(model.config, sizes, needed=not uniform)


class BartAdapter(_Seq2SeqAdapter):
    name = "bart"
    derived_head_keys = ("encoder_attention_heads", "decoder_attention_heads")
    hidden_key = "d_model"
    model_types = ("bart", "marian")
    norm_position = "post"

    def layer_containers(self, model: nn.Module) -> dict[str, nn.ModuleList]:
        base = self.base(model)  # BartForCausalLM: a wrapper holding only `decoder`
        return {s: getattr(base, s).layers for s in ("encoder", "decoder") if hasattr(base, s)}

    def _layer(self, i: int, stack: str, layer: nn.Module, first: nn.Module) -> LayerInfo:
        sa = layer.self_attn
        attn = _attention(sa, sa.q_proj, sa.k_proj, sa.v_proj, sa.out_proj, sa.head_dim)
        norms = {"attn": layer.self_attn_layer_norm, "ffn": layer.final_layer_norm}
        cross = None
        if stack == "decoder" and getattr(layer, "encoder_attn", None) is not None:
            ca = layer.encoder_attn
            cross = _attention(ca, ca.q_proj, ca.k_proj, ca.v_proj, ca.out_proj, ca.head_dim, "cross")
            norms["cross"] = layer.encoder_attn_layer_norm
        ffn = FFNBlock(module=None, up=layer.fc1, down=layer.fc2, gate=None,
                       intermediate_size=out_features(layer.fc1))
        return LayerInfo(i, stack, layer, attn, ffn, cross_attention=cross, norms=norms)


    def fix_config(self, model: nn.Module) -> None:
        """Write the real sizes back to the config.

        Sets {encoder,decoder}_layers, {encoder,decoder}_attention_heads and
        {encoder,decoder}_ffn_dim (a decoder's self- and cross-attention share one head count).
        When layers of a stack differ (non-uniform pruning), or heads * head_dim != d_model
        (BART derives head_dim = d_model / heads), the global values are the maximum and
        `config.slimformer_layer_sizes` holds one dict per layer, encoder layers first
        ({"stack", "heads", "kv_heads", "head_dim", "intermediate", decoder layers also
        "cross_heads"}); otherwise it is removed. Also updates `num_heads` on attention modules.
        """
        model = unwrap(model)
        cfg = model.config
        by_stack = self._sizes_by_stack(model)
        for li in self.layers(model):
            for a in (li.attention, li.cross_attention):
                if a is not None:
                    a.module.num_heads = a.num_heads
        uniform = True
        for stack in self.layer_containers(model):
            sizes = by_stack[stack]
            heads = [s[k] for s in sizes for k in ("heads", "cross_heads") if k in s]
            setattr(cfg, f"{stack}_layers", len(sizes))
            if sizes:
                setattr(cfg, f"{stack}_attention_heads", max(heads))
                setattr(cfg, f"{stack}_ffn_dim", max(s["intermediate"] for s in sizes))
            uniform &= is_uniform(sizes) and len(set(heads)) <= 1
            uniform &= all(s["heads"] * s["head_dim"] == cfg.d_model for s in sizes)
        write_layer_sizes(cfg, by_stack["encoder"] + by_stack["decoder"], needed=not uniform)


class SlimTransformerAdapter(BartAdapter):
    """slimformer's own reference Transformer (models/transformer.py): BART's module and config
    names; pre- or post-norm as its config says."""

    name = "slim-transformer"
    model_types = ("slim-transformer",)
    norm_position = "pre"  # the default; norm_position_for reads the model's config

    def norm_position_for(self, model: nn.Module) -> str:
        return getattr(unwrap(model).config, "norm", "pre")
