"""Structured pruning of a BERT student's feed-forward layers: fewer int8 multiply-accumulates on the device.

    scores = ffn_importance(model, batches)           # per layer: (intermediate,) importance of each unit
    prune_ffn(model, keep=1024, scores=scores)        # in place: every layer keeps its 1024 most important units

A MiniLM-L6 forward over 128 tokens is 1.36 G multiply-accumulates in its linears, two thirds of them in the
feed-forward layers (384 -> 1536 -> 384), and on a CPU core the int8 program spends most of its time there.
Dropping a feed-forward unit removes a row of the first linear and a column of the second; the layer computes
the same function minus that unit's contribution. A unit's importance is the mean magnitude of its activation
over real inputs times the norm of its output column (what it adds to the residual stream), so units that are
rarely active or write little go first. The pruned student is then trained (distilled) as the full one is.

Measured on MiniLM-L6 (1 x 128 tokens, one thread, int8 .pte, the four programs timed in turns on a loaded CPU):
1536 units 10.95 ms p50, 1152 9.80, 1024 9.36, 768 8.61. Distilled at 1024 units from the data-version-3 teacher's
scores (1,200 steps, as the full student): decisions agree with the teacher on 0.928 of the test pool, against
0.942 for the unpruned student; XSTest safe FPR 0.033.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def unit_importance(mean_abs_activation: torch.Tensor, output_weight: torch.Tensor) -> torch.Tensor:
    """(intermediate,) importance: E|a_j| * ||W_out[:, j]||, for W_out of shape (hidden, intermediate)."""
    if mean_abs_activation.shape[0] != output_weight.shape[1]:
        raise ValueError(
            f"unit_importance: {mean_abs_activation.shape[0]} activations for an output weight with"
            f" {output_weight.shape[1]} input units"
        )
    return mean_abs_activation * output_weight.norm(dim=0)


def keep_indices(importance: torch.Tensor, keep: int) -> torch.Tensor:
    """The `keep` most important units, in their original order (so the layer's unit order is kept)."""
    if not 0 < keep <= importance.shape[0]:
        raise ValueError(f"keep must be in 1..{importance.shape[0]}, got {keep}")
    return importance.topk(keep).indices.sort().values


def _layers(model: nn.Module):
    bert = getattr(model, "bert", model)
    return bert.encoder.layer


@torch.no_grad()
def ffn_importance(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """Each layer's unit importance over `batches` (model inputs), padding positions left out."""
    layers = list(_layers(model))
    sums = [torch.zeros(layer.intermediate.dense.out_features) for layer in layers]
    count = torch.zeros(())
    mask_now: list[torch.Tensor] = []

    def hook(i: int):
        def record(_module, _inputs, output):  # output: (B, T, intermediate), after the activation
            m = mask_now[0].to(output.dtype)[..., None]
            sums[i].add_((output.abs() * m).sum(dim=(0, 1)).float())

        return record

    handles = [layer.intermediate.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            mask_now[:] = [batch["attention_mask"]]
            count += batch["attention_mask"].sum()
            model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("ffn_importance: no tokens in the batches")
    return [unit_importance(s / count, layer.output.dense.weight) for s, layer in zip(sums, layers, strict=True)]


def _select_linear(linear: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    weight = linear.weight.index_select(dim, idx)
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    out.weight.data.copy_(weight)
    if linear.bias is not None:
        out.bias.data.copy_(linear.bias if dim == 1 else linear.bias.index_select(0, idx))
    return out.to(linear.weight.dtype)


@torch.no_grad()
def prune_ffn(model: nn.Module, keep: int, scores: list[torch.Tensor]) -> nn.Module:
    """Keep each layer's `keep` most important feed-forward units (in place); the config records the width."""
    layers = list(_layers(model))
    if len(scores) != len(layers):
        raise ValueError(f"prune_ffn: {len(scores)} importance vectors for {len(layers)} layers")
    for layer, score in zip(layers, scores, strict=True):
        idx = keep_indices(score, keep)
        layer.intermediate.dense = _select_linear(layer.intermediate.dense, idx, dim=0)
        layer.output.dense = _select_linear(layer.output.dense, idx, dim=1)
    model.config.intermediate_size = keep
    return model
