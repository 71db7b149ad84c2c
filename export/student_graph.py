"""A BERT sequence classifier's forward written for export: same weights, fewer and simpler graph nodes.

transformers' BERT graph splits into ~30 XNNPACK pieces under ExecuTorch (its mask code and the 4-D SDPA path
run on portable kernels between them). This forward computes the additive mask once and runs attention as
3-D `bmm`, so that the lowered program has about half the pieces and runs about 3x faster, while its output
equals transformers' to float rounding (see tests/export/test_student_graph.py).

What is left between the XNNPACK pieces is the 13 LayerNorms (portable kernels). Measured on MiniLM at 1 x 128
tokens, one thread: dropping them altogether (wrong numbers, a bound) saves under 5% of the program's time;
writing them in delegable ops (the mean as an fp32 linear against 1/C) makes one piece but runs ~8% slower; one
fused q|k|v linear is no faster either, because the split of its output runs outside XNNPACK. The int8 linears
are where the time goes.

    model = ExportableBert.from_hf(BertForSequenceClassification...)  # copies nothing, shares the modules
    logits = model(input_ids, attention_mask, token_type_ids)        # (B, num_labels)
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ExportableBert(nn.Module):
    """BERT encoder + pooler + classifier head, for any `BertForSequenceClassification` (absolute positions)."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        config = hf_model.config
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError("ExportableBert supports absolute position embeddings only")
        bert = hf_model.bert
        self.embeddings = bert.embeddings
        self.layers = bert.encoder.layer
        self.pooler = bert.pooler
        self.classifier = hf_model.classifier
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.act = _activation(config.hidden_act)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings)[None, :], persistent=False)

    @classmethod
    def from_hf(cls, hf_model: nn.Module) -> ExportableBert:
        return cls(hf_model).eval()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        b, t = input_ids.shape
        emb = self.embeddings
        x = emb.word_embeddings(input_ids) + emb.token_type_embeddings(token_type_ids)
        x = x + emb.position_embeddings(self.position_ids[:, :t])
        x = emb.LayerNorm(x)  # (B, T, C)
        # additive mask, computed once: 0 where attended, a large negative number on padding
        neg = (1.0 - attention_mask.to(x.dtype)) * -10000.0  # (B, T)
        neg = neg[:, None, None, :]  # (B, 1, 1, T)
        for layer in self.layers:
            x = self._layer(layer, x, neg, b, t)
        if self.pooler is not None:
            pooled = self.pooler.activation(self.pooler.dense(x[:, 0]))  # (B, C)
        else:
            pooled = x[:, 0]
        return self.classifier(pooled)  # (B, num_labels)

    def _layer(self, layer: nn.Module, x: torch.Tensor, neg: torch.Tensor, b: int, t: int) -> torch.Tensor:
        att = layer.attention
        h, d = self.num_heads, self.head_dim

        def heads(y: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B*H, T, D)
            return y.view(b, t, h, d).transpose(1, 2).reshape(b * h, t, d)

        q = heads(att.self.query(x)) * (1.0 / math.sqrt(d))
        k = heads(att.self.key(x))
        v = heads(att.self.value(x))
        scores = torch.bmm(q, k.transpose(1, 2)).view(b, h, t, t) + neg  # (B, H, T, T)
        probs = torch.softmax(scores, dim=-1).view(b * h, t, t)
        ctx = torch.bmm(probs, v).view(b, h, t, d).transpose(1, 2).reshape(b, t, h * d)  # (B, T, C)
        x = att.output.LayerNorm(att.output.dense(ctx) + x)
        inner = self.act(layer.intermediate.dense(x))
        return layer.output.LayerNorm(layer.output.dense(inner) + x)


def _activation(name: str):
    if name == "gelu":
        return nn.GELU()
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unsupported hidden_act {name!r} for ExportableBert")
