"""The reference Transformer: an encoder-decoder for translation, small enough to read in one sitting.

    config = SlimTransformerConfig(vocab_size=8000, d_model=256, encoder_layers=3, decoder_layers=3)
    model = SlimTransformerForSeq2SeqLM(config)
    out = model(input_ids, attention_mask, decoder_input_ids=..., labels=...)   # loss, logits
    ids = model.generate(input_ids, attention_mask, num_beams=5)                 # beam search, cached

Vaswani et al. 2017, with the choices of modern small-model practice as options: token embeddings
scaled by sqrt(d_model) and shared by the encoder, the decoder and the output projection;
sinusoidal (or learned) positions; multi-head attention on `scaled_dot_product_attention` with
padding and causal masks; pre-norm (default; trains stably without a long warm-up) or post-norm
(the paper's); ReLU or GELU feed-forward; label-smoothed cross-entropy.

Shapes: B batch, S source length, T target length, D d_model, H heads, Dh = D / H head size,
V vocabulary. Module names follow BART's (`self_attn.q_proj`, `fc1`, `final_layer_norm`, ...) so
the BART-family adapter's knowledge of where attention and FFN live applies (adapters/seq2seq.py).
It is a `transformers` model: registered with AutoConfig / AutoModelForSeq2SeqLM on `import
slimformer`, so `save_pretrained` / `from_pretrained` and `slimformer.save` / `load` work.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import Seq2SeqLMOutput

MODEL_TYPE = "slim-transformer"


class SlimTransformerConfig(PretrainedConfig):
    """Sizes and choices of the reference Transformer. Key names are BART's (d_model,
    encoder_layers, encoder_attention_heads, encoder_ffn_dim, ...) so tools that read BART
    configs read this one."""

    model_type = MODEL_TYPE
    attribute_map = {"num_attention_heads": "encoder_attention_heads", "hidden_size": "d_model",
                     "num_hidden_layers": "encoder_layers"}

    def __init__(self, vocab_size: int = 8000, d_model: int = 256, encoder_layers: int = 3, decoder_layers: int = 3,
                 encoder_attention_heads: int = 4, decoder_attention_heads: int = 4, encoder_ffn_dim: int = 1024,
                 decoder_ffn_dim: int = 1024, dropout: float = 0.1, attention_dropout: float = 0.0,
                 activation_function: str = "relu", max_position_embeddings: int = 256,
                 positions: str = "sinusoidal", norm: str = "pre", label_smoothing: float = 0.1,
                 pad_token_id: int = 0, bos_token_id: int = 1, eos_token_id: int = 2,
                 decoder_start_token_id: int = 1, tie_word_embeddings: bool = True, **kwargs):
        if positions not in ("sinusoidal", "learned"):
            raise ValueError(f"positions={positions!r}; accepted: sinusoidal, learned")
        if norm not in ("pre", "post"):
            raise ValueError(f"norm={norm!r}; accepted: pre, post")
        if activation_function not in ("relu", "gelu"):
            raise ValueError(f"activation_function={activation_function!r}; accepted: relu, gelu")
        self.vocab_size, self.d_model = vocab_size, d_model
        self.encoder_layers, self.decoder_layers = encoder_layers, decoder_layers
        self.encoder_attention_heads, self.decoder_attention_heads = encoder_attention_heads, decoder_attention_heads
        self.encoder_ffn_dim, self.decoder_ffn_dim = encoder_ffn_dim, decoder_ffn_dim
        self.dropout, self.attention_dropout = dropout, attention_dropout
        self.activation_function = activation_function
        self.max_position_embeddings, self.positions, self.norm = max_position_embeddings, positions, norm
        self.label_smoothing = label_smoothing
        kwargs.pop("is_encoder_decoder", None)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         decoder_start_token_id=decoder_start_token_id, is_encoder_decoder=True,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)


def sinusoidal_positions(positions, d: int) -> torch.Tensor:
    """(n, d) for n positions (an int: 0..n-1, or a tensor of them): sin on even dims, cos on odd
    dims, wavelengths 2*pi .. 10000*2*pi (the paper's). Computed when used, not stored: cheap,
    and nothing to re-initialize when transformers builds the model on the meta device."""
    if isinstance(positions, int):
        positions = torch.arange(positions)
    pos = positions.to(torch.float32)[:, None]                                  # (n, 1)
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32, device=pos.device) * (-math.log(10000.0) / d))
    pe = torch.zeros(pos.shape[0], d, device=pos.device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


class Attention(nn.Module):
    """Multi-head attention. Self-attention (kv = x) or cross-attention (kv = the encoder output).
    mask: boolean (B, 1, Tq, Tk) or broadcastable, True = may attend. cache: a dict holding this
    layer's keys and values from earlier decoding steps ("k", "v": (B, H, Tk, Dh)), extended in
    place; for cross-attention it holds the projected encoder output after the first step.
    With `config._attn_implementation` set to another registered implementation (slimformer's
    `set_attention_`), the product is computed by that function instead of SDPA."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, is_causal: bool = False, config=None):
        super().__init__()
        self.is_causal, self.config = is_causal, config
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by the head count {num_heads}")
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.q_proj = nn.Linear(d_model, num_heads * self.head_dim)
        self.k_proj = nn.Linear(d_model, num_heads * self.head_dim)
        self.v_proj = nn.Linear(d_model, num_heads * self.head_dim)
        self.out_proj = nn.Linear(num_heads * self.head_dim, d_model)
        self.dropout = dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, -1, self.head_dim).transpose(1, 2)                 # (B, H, T, Dh)

    def forward(self, x, kv=None, mask=None, cache: dict | None = None, cross: bool = False):
        q = self._heads(self.q_proj(x))                                        # (B, H, Tq, Dh)
        if cross and cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]                                      # the encoder's, computed once
        else:
            src = x if kv is None else kv
            k, v = self._heads(self.k_proj(src)), self._heads(self.v_proj(src))  # (B, H, Tk, Dh)
            if cache is not None:
                if not cross and "k" in cache:                                 # append this step's keys
                    k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                cache["k"], cache["v"] = k, v
        p = self.dropout if self.training else 0.0
        impl = getattr(self.config, "_attn_implementation", None)
        B, T = x.shape[0], x.shape[1]
        if impl not in (None, "eager", "sdpa"):
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            y, _ = ALL_ATTENTION_FUNCTIONS[impl](self, q, k, v, mask, dropout=p)     # (B, Tq, H, Dh)
            return self.out_proj(y.reshape(B, T, -1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, Tq, Dh)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))             # (B, Tq, D)


class _Layer(nn.Module):
    def _sub(self, x, norm, fn):
        """One residual sub-block, pre-norm (x + fn(norm(x))) or post-norm (norm(x + fn(x)))."""
        if self.pre:
            return x + self.drop(fn(norm(x)))
        return norm(x + self.drop(fn(x)))


class EncoderLayer(_Layer):
    def __init__(self, c: SlimTransformerConfig):
        super().__init__()
        self.pre = c.norm == "pre"
        self.self_attn = Attention(c.d_model, c.encoder_attention_heads, c.attention_dropout, config=c)
        self.self_attn_layer_norm = nn.LayerNorm(c.d_model)
        self.fc1 = nn.Linear(c.d_model, c.encoder_ffn_dim)
        self.fc2 = nn.Linear(c.encoder_ffn_dim, c.d_model)
        self.final_layer_norm = nn.LayerNorm(c.d_model)
        self.act = nn.ReLU() if c.activation_function == "relu" else nn.GELU()
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, mask):                                                 # x: (B, S, D)
        x = self._sub(x, self.self_attn_layer_norm, lambda h: self.self_attn(h, mask=mask))
        return self._sub(x, self.final_layer_norm, lambda h: self.fc2(self.drop(self.act(self.fc1(h)))))


class DecoderLayer(_Layer):
    def __init__(self, c: SlimTransformerConfig):
        super().__init__()
        self.pre = c.norm == "pre"
        self.self_attn = Attention(c.d_model, c.decoder_attention_heads, c.attention_dropout, is_causal=True, config=c)
        self.self_attn_layer_norm = nn.LayerNorm(c.d_model)
        self.encoder_attn = Attention(c.d_model, c.decoder_attention_heads, c.attention_dropout, config=c)
        self.encoder_attn.is_cross_attention = True
        self.encoder_attn_layer_norm = nn.LayerNorm(c.d_model)
        self.fc1 = nn.Linear(c.d_model, c.decoder_ffn_dim)
        self.fc2 = nn.Linear(c.decoder_ffn_dim, c.d_model)
        self.final_layer_norm = nn.LayerNorm(c.d_model)
        self.act = nn.ReLU() if c.activation_function == "relu" else nn.GELU()
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, memory, self_mask, cross_mask, cache: dict | None = None):  # x: (B, T, D)
        c_self = cache.setdefault("self", {}) if cache is not None else None
        c_cross = cache.setdefault("cross", {}) if cache is not None else None
        x = self._sub(x, self.self_attn_layer_norm, lambda h: self.self_attn(h, mask=self_mask, cache=c_self))
        x = self._sub(x, self.encoder_attn_layer_norm,
                      lambda h: self.encoder_attn(h, kv=memory, mask=cross_mask, cache=c_cross, cross=True))
        return self._sub(x, self.final_layer_norm, lambda h: self.fc2(self.drop(self.act(self.fc1(h)))))


class Stack(nn.Module):
    """Embeddings (shared table, scaled by sqrt(D)) + positions + layers (+ a final norm when pre-norm)."""

    def __init__(self, c: SlimTransformerConfig, embed_tokens: nn.Embedding, layer_cls, n: int):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.scale = math.sqrt(c.d_model)
        self.d_model = c.d_model
        if c.positions == "learned":
            self.embed_positions = nn.Embedding(c.max_position_embeddings, c.d_model)
        self.layers = nn.ModuleList([layer_cls(c) for _ in range(n)])
        self.layer_norm = nn.LayerNorm(c.d_model) if c.norm == "pre" else None
        self.drop = nn.Dropout(c.dropout)

    def embed(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:        # ids: (B, T)
        T = ids.shape[1]
        pos = torch.arange(start, start + T, device=ids.device)
        p = self.embed_positions(pos) if hasattr(self, "embed_positions") else sinusoidal_positions(pos, self.d_model)
        x = self.embed_tokens(ids) * self.scale + p.to(self.embed_tokens.weight.dtype)
        return self.drop(x)                                                     # (B, T, D)


class Encoder(Stack):
    def __init__(self, c, embed_tokens):
        super().__init__(c, embed_tokens, EncoderLayer, c.encoder_layers)

    def forward(self, input_ids, attention_mask=None):
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()  # (B, 1, 1, S)
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return self.layer_norm(x) if self.layer_norm is not None else x       # (B, S, D)


class Decoder(Stack):
    def __init__(self, c, embed_tokens):
        super().__init__(c, embed_tokens, DecoderLayer, c.decoder_layers)

    def forward(self, decoder_input_ids, memory, memory_mask=None, cache: list | None = None, start: int = 0):
        T = decoder_input_ids.shape[1]
        # causal: position i attends to positions <= i (offset by the cached length when decoding)
        causal = torch.ones(T, start + T, dtype=torch.bool, device=memory.device).tril(start)[None, None]  # (1, 1, T, start+T)
        cross = None if memory_mask is None else memory_mask[:, None, None, :].bool()       # (B, 1, 1, S)
        x = self.embed(decoder_input_ids, start)
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, causal, cross, None if cache is None else cache[i])
        return self.layer_norm(x) if self.layer_norm is not None else x       # (B, T, D)


class SlimTransformerPreTrained(PreTrainedModel):
    config_class = SlimTransformerConfig
    base_model_prefix = "model"
    _no_split_modules = ["EncoderLayer", "DecoderLayer"]
    _supports_attention_backend = True  # Attention calls the registered function named by the config

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.d_model ** -0.5)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class SlimTransformerModel(SlimTransformerPreTrained):
    _tied_weights_keys = {"decoder.embed_tokens.weight": "shared.weight",
                          "encoder.embed_tokens.weight": "shared.weight"}

    def __init__(self, config: SlimTransformerConfig):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.encoder = Encoder(config, self.shared)
        self.decoder = Decoder(config, self.shared)
        self.post_init()

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, value):
        self.shared = self.encoder.embed_tokens = self.decoder.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None,
                return_dict=True, **unused):
        """The decoder's last hidden states (B, T, D) and the encoder's (B, S, D)."""
        from transformers.modeling_outputs import Seq2SeqModelOutput

        memory = encoder_outputs[0] if isinstance(encoder_outputs, (tuple, list)) else encoder_outputs
        if memory is None:
            memory = self.encoder(input_ids, attention_mask)
        if decoder_input_ids is None:
            decoder_input_ids = torch.full_like(input_ids[:, :1], self.config.decoder_start_token_id)
        h = self.decoder(decoder_input_ids, memory, attention_mask)
        return Seq2SeqModelOutput(last_hidden_state=h, encoder_last_hidden_state=memory)


class SlimTransformerForSeq2SeqLM(SlimTransformerPreTrained):
    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}

    def __init__(self, config: SlimTransformerConfig):
        super().__init__(config)
        self.model = SlimTransformerModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.shared.weight

    def get_input_embeddings(self):
        return self.model.shared

    def get_output_embeddings(self):
        return self.lm_head

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for teacher forcing: [start] + labels[:-1] (label padding -100 -> pad)."""
        start = torch.full_like(labels[:, :1], self.config.decoder_start_token_id)
        x = torch.cat([start, labels[:, :-1]], 1)
        return x.masked_fill(x == -100, self.config.pad_token_id)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, labels=None,
                encoder_outputs=None, return_dict=True, **unused):
        memory = encoder_outputs[0] if isinstance(encoder_outputs, (tuple, list)) else encoder_outputs
        if memory is None:
            memory = self.model.encoder(input_ids, attention_mask)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("give decoder_input_ids or labels")
            decoder_input_ids = self.shift_right(labels)
        h = self.model.decoder(decoder_input_ids, memory, attention_mask)       # (B, T, D)
        logits = self.lm_head(h)                                                # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                   ignore_index=-100, label_smoothing=self.config.label_smoothing)
        return Seq2SeqLMOutput(loss=loss, logits=logits, encoder_last_hidden_state=memory)

    # ------------------------------------------------------------------ decoding

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens: int | None = None, num_beams: int = 1,
                 length_penalty: float = 1.0, max_length_ratio: float = 1.5, min_extra: int = 10, **unused):
        """Greedy (num_beams=1) or beam search with cached keys and values. Output length is capped
        at max_new_tokens, or at max_length_ratio x the source length + min_extra. Returns (B, L)
        token ids starting with the decoder start token, padded with pad after EOS."""
        from .decoding import beam_search

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        limit = int(attention_mask.sum(1).max().item() * max_length_ratio) + min_extra
        limit = min(max_new_tokens or limit, self.config.max_position_embeddings - 1)
        return beam_search(self, input_ids, attention_mask, limit, num_beams, length_penalty)

    def decode_step(self, ids: torch.Tensor, memory, memory_mask, cache: list, start: int) -> torch.Tensor:
        """Log-probabilities of the next token after `ids` (B, t) new tokens at positions
        start.. (earlier ones are in `cache`, one dict per decoder layer)."""
        h = self.model.decoder(ids, memory, memory_mask, cache=cache, start=start)  # (B, t, D)
        return F.log_softmax(self.lm_head(h[:, -1]).float(), -1)                # (B, V)


def register_auto_classes() -> None:
    """Make AutoConfig / AutoModel / AutoModelForSeq2SeqLM know the reference Transformer."""
    import transformers as tf

    try:
        tf.AutoConfig.register(MODEL_TYPE, SlimTransformerConfig)
    except ValueError:  # already registered
        return
    tf.AutoModel.register(SlimTransformerConfig, SlimTransformerModel)
    tf.AutoModelForSeq2SeqLM.register(SlimTransformerConfig, SlimTransformerForSeq2SeqLM)
