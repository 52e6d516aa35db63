"""The BERT encoder with its pooler and task head: forward and backward written by hand.

`Bert.forward` returns every hidden state ([embedding output, layer 1, ..., layer L]) and every
layer's masked pre-softmax attention scores, the two things TinyBERT distills. `Bert.backward`
returns gradients for every parameter in one flat buffer and accepts extra upstream gradients on
any hidden state and any layer's scores: that is where the distillation losses inject.

Post-LN BERT layer, as Hugging Face's BertLayer:
    a = LN(x + dropout(Attention(x) W_o + b_o))
    y = LN(a + dropout(GELU(a W_i + b_i) W_2 + b_2))

The model is a composition of the forward/backward pairs of ops.py (or, with `use_kernels`, their
Numba twins in kernels.py, same signatures): the ops the gradient checks test are the ops that
train. Each layer's backward reads a LayerCache, the named caches of those ops.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from . import kernels, ops
from .config import BertConfig
from .params import ParamSet, assign_tensors


def parameter_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    """The flat buffer's layout, in Hugging Face BERT names (unprefixed)."""
    C, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    shapes = {
        "embeddings.word_embeddings.weight": (V, C),
        "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, C),
        "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, C),
        "embeddings.LayerNorm.weight": (C,),
        "embeddings.LayerNorm.bias": (C,),
    }
    for layer in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{layer}."
        # query, key, value weights then biases back to back: viewed as one (3C, C) matrix
        for part in ("query", "key", "value"):
            shapes[p + f"attention.self.{part}.weight"] = (C, C)
        for part in ("query", "key", "value"):
            shapes[p + f"attention.self.{part}.bias"] = (C,)
        shapes.update({
            p + "attention.output.dense.weight": (C, C),
            p + "attention.output.dense.bias": (C,),
            p + "attention.output.LayerNorm.weight": (C,),
            p + "attention.output.LayerNorm.bias": (C,),
            p + "intermediate.dense.weight": (F, C),
            p + "intermediate.dense.bias": (F,),
            p + "output.dense.weight": (C, F),
            p + "output.dense.bias": (C,),
            p + "output.LayerNorm.weight": (C,),
            p + "output.LayerNorm.bias": (C,),
        })
    shapes["pooler.dense.weight"] = (C, C)
    shapes["pooler.dense.bias"] = (C,)
    if cfg.num_labels:
        shapes["classifier.weight"] = (cfg.num_labels, C)
        shapes["classifier.bias"] = (cfg.num_labels,)
    if cfg.fit_size:
        names = ["fit_dense"] if cfg.fit_shared else [f"fit_denses.{i}" for i in range(cfg.num_hidden_layers + 1)]
        for name in names:
            shapes[name + ".weight"] = (cfg.fit_size, C)
            shapes[name + ".bias"] = (cfg.fit_size,)
    if cfg.mlm_head:
        shapes.update({
            "cls.predictions.transform.dense.weight": (C, C),
            "cls.predictions.transform.dense.bias": (C,),
            "cls.predictions.transform.LayerNorm.weight": (C,),
            "cls.predictions.transform.LayerNorm.bias": (C,),
            "cls.predictions.bias": (V,),
        })
    return shapes


class LayerCache(NamedTuple):
    """What one encoder layer's backward needs: each field the cache of the op that made it."""
    qkv: ops.LinearCache                   # x (B, T, C) -> the fused q, k, v product (B, T, 3C)
    attention: ops.AttentionCache          # the per-head core -> context (B, T, C)
    attention_output: ops.LinearCache      # context -> its projection
    attention_exit: ops.SublayerExitCache  # bias, dropout, residual x, layer norm -> a (B, T, C)
    intermediate: ops.LinearCache          # a -> the FFN's first product
    gelu: np.ndarray                       # bias + GELU -> inter (B, T, F)
    output: ops.LinearCache                # inter -> the FFN's second product
    output_exit: ops.SublayerExitCache     # bias, dropout, residual a, layer norm -> y (B, T, C)


class HeadCache(NamedTuple):
    dropout: tuple | None                  # the pooled output's dropout spec
    linear: ops.LinearCache                # the classifier


class ForwardCache(NamedTuple):
    embeddings: ops.EmbeddingCache
    embeddings_norm: ops.LayerNormCache
    embeddings_dropout: tuple | None
    layers: list                           # a LayerCache per layer
    pooler: ops.PoolerCache
    head: HeadCache | None
    shape: tuple                           # (B, T, C)


@dataclass
class BertOutput:
    hidden_states: list          # L + 1 arrays (B, T, C): embedding output, then each layer's output
    attention_scores: list       # L arrays (B, H, T, T): scaled QK^T plus the key mask, before softmax
    pooled: np.ndarray           # (B, C)
    logits: np.ndarray | None    # (B, num_labels), or None without a head
    cache: ForwardCache | None = field(default=None, repr=False)


def _heads(a, n: int, heads: int):  # (B, T, n * heads * D) -> n views (B, heads, T, D)
    B, T, width = a.shape
    parts = a.reshape(B, T, n, heads, width // (n * heads))
    return [parts[:, :, i].transpose(0, 2, 1, 3) for i in range(n)]


class Bert:
    def __init__(self, config: BertConfig, dtype=np.float32, seed: int | None = 0, use_kernels: bool = True):
        self.config = config.validate()
        self.params = ParamSet(parameter_shapes(config), dtype=dtype)
        self.grads: ParamSet | None = None
        # The Numba kernels or their NumPy twins: same signatures, same results.
        self.ops = kernels if use_kernels else ops
        if seed is not None:
            self.init_weights(seed)

    # --- parameters -----------------------------------------------------------------------

    def init_weights(self, seed: int) -> None:
        """BERT's initialisation: N(0, initializer_range) weights and embeddings, zero biases, unit LN."""
        rng = np.random.default_rng(seed)
        std = self.config.initializer_range
        for name, view in self.params.views.items():
            if name.endswith("LayerNorm.weight"):
                view[...] = 1.0
            elif name.endswith(".bias"):
                view[...] = 0.0
            else:
                view[...] = rng.normal(0.0, std, view.shape)

    def state_dict(self) -> dict[str, np.ndarray]:
        return dict(self.params.views)

    def load_state_dict(self, tensors: dict[str, np.ndarray], source: str = "state dict") -> None:
        assign_tensors(self.params, tensors, source)

    @property
    def num_parameters(self) -> int:
        return self.params.size

    def _fused_qkv(self, P: ParamSet, layer: int):
        """A layer's query, key and value weights (biases) as one (3C, C) matrix ((3C,) vector): views of
        the flat buffer, where they lie back to back. Works on the gradient buffer too."""
        p = f"encoder.layer.{layer}.attention.self."
        C = self.config.hidden_size
        w = P.span(p + "query.weight", p + "value.weight").reshape(3 * C, C)
        b = P.span(p + "query.bias", p + "value.bias")
        return w, b

    # --- forward --------------------------------------------------------------------------

    def check_inputs(self, input_ids, token_type_ids, attention_mask):
        cfg = self.config
        input_ids = np.asarray(input_ids)
        if input_ids.ndim != 2 or not np.issubdtype(input_ids.dtype, np.integer):
            raise ValueError(f"input_ids must be a (batch, tokens) integer array, got {input_ids.dtype} "
                             f"of shape {input_ids.shape}")
        B, T = input_ids.shape
        if T == 0 or B == 0:
            raise ValueError(f"input_ids is empty: shape {input_ids.shape}")
        if T > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings {cfg.max_position_embeddings}")
        if input_ids.min() < 0 or input_ids.max() >= cfg.vocab_size:
            raise ValueError(f"token ids must lie in [0, {cfg.vocab_size}), got range "
                             f"[{input_ids.min()}, {input_ids.max()}]")
        token_type_ids = np.zeros_like(input_ids) if token_type_ids is None else np.asarray(token_type_ids)
        attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
        for name, arr in (("token_type_ids", token_type_ids), ("attention_mask", attention_mask)):
            if arr.shape != (B, T):
                raise ValueError(f"{name} has shape {arr.shape}, input_ids has {(B, T)}")
        if token_type_ids.min() < 0 or token_type_ids.max() >= cfg.type_vocab_size:
            raise ValueError(f"token_type_ids must lie in [0, {cfg.type_vocab_size})")
        return input_ids, token_type_ids, attention_mask

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, rng=None,
                keep_cache: bool = False) -> BertOutput:
        """(B, T) ids -> BertOutput. `rng` (a numpy Generator) switches dropout on; None is eval mode.
        `keep_cache` keeps what backward needs; without it each layer's intermediates are freed at once."""
        cfg, K, P = self.config, self.ops, self.params
        input_ids, token_type_ids, attention_mask = self.check_inputs(input_ids, token_type_ids, attention_mask)
        mask_bias = ops.key_mask_bias(attention_mask, P.dtype)
        p_hidden = cfg.hidden_dropout_prob if rng is not None else 0.0

        x, emb_cache = ops.embeddings_sum_forward(
            input_ids, token_type_ids, P["embeddings.word_embeddings.weight"],
            P["embeddings.position_embeddings.weight"], P["embeddings.token_type_embeddings.weight"])
        x, emb_norm = K.layernorm_forward(x, P["embeddings.LayerNorm.weight"], P["embeddings.LayerNorm.bias"],
                                          cfg.layer_norm_eps)
        x, emb_drop = K.dropout_forward(x, p_hidden, rng)

        hidden_states, scores_all, layer_caches = [x], [], []
        for layer in range(cfg.num_hidden_layers):
            x, scores, cache = self._layer_forward(layer, x, mask_bias, rng)
            hidden_states.append(x)
            scores_all.append(scores)
            if keep_cache:
                layer_caches.append(cache)

        pooled, pool_cache = ops.pooler_forward(x, P["pooler.dense.weight"], P["pooler.dense.bias"])
        logits = head_cache = None
        if cfg.num_labels:
            dropped, head_drop = ops.dropout_forward(pooled, p_hidden, rng)
            logits, head_linear = ops.linear_forward(dropped, P["classifier.weight"], P["classifier.bias"])
            head_cache = HeadCache(head_drop, head_linear)
        cache = None
        if keep_cache:
            cache = ForwardCache(emb_cache, emb_norm, emb_drop, layer_caches, pool_cache, head_cache, x.shape)
        return BertOutput(hidden_states, scores_all, pooled, logits, cache)

    def _layer_forward(self, layer, x, mask_bias, rng):  # (B, T, C) -> (B, T, C)
        cfg, K, P = self.config, self.ops, self.params
        H = cfg.num_attention_heads
        p = f"encoder.layer.{layer}."
        p_hidden = cfg.hidden_dropout_prob if rng is not None else 0.0
        p_attn = cfg.attention_probs_dropout_prob if rng is not None else 0.0
        eps = cfg.layer_norm_eps

        qkv, qkv_cache = ops.linear_forward(x, *self._fused_qkv(P, layer))   # (B, T, 3C): one product
        q, k, v = _heads(qkv, 3, H)                                          # (B, H, T, D) views
        # the context written straight into (B, T, H, D) = (B, T, C) order: BLAS takes the row stride C
        context = np.empty_like(x)
        _, scores, attn_cache = K.attention_forward(q, k, v, mask_bias, p_attn, rng, out=_heads(context, 1, H)[0])

        # each sublayer's dense product leaves its bias to the fused bias, dropout, residual, layer norm
        h, out_cache = ops.linear_forward(context, P[p + "attention.output.dense.weight"])
        a, exit1 = K.bias_dropout_residual_layernorm_forward(
            h, P[p + "attention.output.dense.bias"], x, P[p + "attention.output.LayerNorm.weight"],
            P[p + "attention.output.LayerNorm.bias"], eps, p_hidden, rng)                # (B, T, C)
        u, inter_cache = ops.linear_forward(a, P[p + "intermediate.dense.weight"])
        inter, gelu_cache = K.bias_gelu_forward(u, P[p + "intermediate.dense.bias"])  # (B, T, F)
        h, ffn_out_cache = ops.linear_forward(inter, P[p + "output.dense.weight"])
        y, exit2 = K.bias_dropout_residual_layernorm_forward(
            h, P[p + "output.dense.bias"], a, P[p + "output.LayerNorm.weight"], P[p + "output.LayerNorm.bias"],
            eps, p_hidden, rng)
        cache = LayerCache(qkv_cache, attn_cache, out_cache, exit1, inter_cache, gelu_cache, ffn_out_cache, exit2)
        return y, scores, cache

    # --- backward -------------------------------------------------------------------------

    def backward(self, out: BertOutput, dlogits=None, dpooled=None, dhidden=None, dscores=None,
                 grads: ParamSet | None = None) -> ParamSet:
        """Gradients of all parameters, given upstream gradients on any of the outputs.

        dlogits (B, num_labels); dpooled (B, C); dhidden {i: (B, T, C)} on hidden_states[i];
        dscores {layer: (B, H, T, T)} on attention_scores[layer]. Writes (overwrites) and returns
        `grads`, by default `self.grads` (parallel.DataParallel gives each batch shard its own)."""
        cfg, K, P = self.config, self.ops, self.params
        cache = out.cache
        if cache is None:
            raise ValueError("backward needs the forward's cache: call forward(..., keep_cache=True)")
        if grads is None:
            if self.grads is None or self.grads.dtype != P.dtype:
                self.grads = P.zeros_like()
            grads = self.grads
        elif grads.size != P.size or grads.dtype != P.dtype:
            raise ValueError(f"gradient buffer of {grads.size} {grads.dtype} values, parameters have "
                             f"{P.size} {P.dtype}")
        G = grads
        G.data.fill(0.0)
        dhidden = dict(dhidden or {})
        dscores = dict(dscores or {})
        L = cfg.num_hidden_layers
        for i in dhidden:
            if not 0 <= i <= L:
                raise ValueError(f"dhidden index {i} out of range 0..{L}")

        if dlogits is not None:
            if not cfg.num_labels:
                raise ValueError("dlogits given but the model has no classifier head")
            ddropped, G["classifier.weight"][...], G["classifier.bias"][...] = ops.linear_backward(
                dlogits, cache.head.linear, P["classifier.weight"])
            dpooled = ops.dropout_backward(ddropped, cache.head.dropout) + (0 if dpooled is None else dpooled)
        dx = dhidden.get(L)
        if dpooled is not None:
            dfrom_pool, G["pooler.dense.weight"][...], G["pooler.dense.bias"][...] = ops.pooler_backward(
                dpooled, cache.pooler, P["pooler.dense.weight"], cache.shape)
            dx = dfrom_pool if dx is None else dx + dfrom_pool
        if dx is None:
            dx = np.zeros(cache.shape, dtype=P.dtype)

        for layer in reversed(range(L)):
            dx = self._layer_backward(G, layer, dx, cache.layers[layer], dscores.get(layer))
            if layer in dhidden:
                dx = dx + dhidden[layer]

        dx = K.dropout_backward(dx, cache.embeddings_dropout)
        dx, G["embeddings.LayerNorm.weight"][...], G["embeddings.LayerNorm.bias"][...] = K.layernorm_backward(
            dx, cache.embeddings_norm)
        K.embeddings_sum_backward(dx, cache.embeddings, G["embeddings.word_embeddings.weight"],
                                  G["embeddings.position_embeddings.weight"],
                                  G["embeddings.token_type_embeddings.weight"], pad_id=cfg.pad_token_id)
        return G

    def _layer_backward(self, G, layer, dy, cache: LayerCache, dscores_extra):  # (B, T, C) -> (B, T, C)
        cfg, K, P = self.config, self.ops, self.params
        H = cfg.num_attention_heads
        p = f"encoder.layer.{layer}."

        # FFN block: dsum2 goes to the residual, dh (dropout applied) to the dense product
        dsum2, dh, G[p + "output.dense.bias"][...], G[p + "output.LayerNorm.weight"][...], \
            G[p + "output.LayerNorm.bias"][...] = K.bias_dropout_residual_layernorm_backward(dy, cache.output_exit)
        dinter, _, _ = ops.linear_backward(dh, cache.output, P[p + "output.dense.weight"],
                                           dweight_out=G[p + "output.dense.weight"])           # (B, T, F)
        du, G[p + "intermediate.dense.bias"][...] = K.bias_gelu_backward(dinter, cache.gelu)
        da, _, _ = ops.linear_backward(du, cache.intermediate, P[p + "intermediate.dense.weight"],
                                       dweight_out=G[p + "intermediate.dense.weight"])
        da += dsum2                                                                    # residual

        # attention block
        dsum1, dh, G[p + "attention.output.dense.bias"][...], G[p + "attention.output.LayerNorm.weight"][...], \
            G[p + "attention.output.LayerNorm.bias"][...] = K.bias_dropout_residual_layernorm_backward(
                da, cache.attention_exit)
        dcontext, _, _ = ops.linear_backward(dh, cache.attention_output, P[p + "attention.output.dense.weight"],
                                             dweight_out=G[p + "attention.output.dense.weight"])
        dqkv = np.empty(dcontext.shape[:-1] + (3 * dcontext.shape[-1],), dtype=dcontext.dtype)   # (B, T, 3C)
        K.attention_backward(_heads(dcontext, 1, H)[0], cache.attention, dscores_extra, out=_heads(dqkv, 3, H))
        w_qkv, _ = self._fused_qkv(P, layer)
        gw_qkv, gb_qkv = self._fused_qkv(G, layer)
        dx, _, _ = ops.linear_backward(dqkv, cache.qkv, w_qkv, dweight_out=gw_qkv, dbias_out=gb_qkv)
        dx += dsum1                                                                    # residual
        return dx

    # --- masked-language-model head (teacher only, inference: for data augmentation) ---------

    def mlm_logits(self, hidden: np.ndarray) -> np.ndarray:
        """(N, C) hidden states -> (N, V) vocabulary logits, decoder tied to the word embeddings."""
        if not self.config.mlm_head:
            raise ValueError("this checkpoint has no masked-language-model head (cls.predictions.*)")
        P, K = self.params, self.ops
        h, _ = ops.linear_forward(hidden, P["cls.predictions.transform.dense.weight"])
        h, _ = K.bias_gelu_forward(h, P["cls.predictions.transform.dense.bias"])
        h, _ = K.layernorm_forward(h, P["cls.predictions.transform.LayerNorm.weight"],
                                   P["cls.predictions.transform.LayerNorm.bias"], self.config.layer_norm_eps)
        logits, _ = ops.linear_forward(h, P["embeddings.word_embeddings.weight"], P["cls.predictions.bias"])
        return logits
