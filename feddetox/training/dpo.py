"""The DPO objective and the log-probabilities it is made of: pure functions over tensors.

Sigmoid DPO (Rafailov et al., 2023), per pair:

    loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))

where `pi_c` is the policy's summed log-probability of the chosen answer given the prompt, `ref_*` the
reference model's. Only answer tokens count: prompt and padding positions are masked out of the sums.

`sft_weight > 0` adds the chosen answer's mean negative log-likelihood per token (DPO + NLL, "RPO" in
Pang et al. 2024, "Iterative Reasoning Preference Optimization"): plain DPO may push the rejected answer
down without making the chosen one likely, which on a small model leaves greedy answers unchanged.

`chunked_token_logps` is the memory-lean way to get those per-token log-probabilities: it takes the final
hidden states of the answer positions only and applies the LM head to `chunk` of them at a time, keeping no
(positions x vocabulary) logits for the backward pass (they are recomputed there, chunk by chunk).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO: (per-pair losses, chosen rewards, rejected rewards), each of shape (B,).

    The rewards are `beta * (policy - reference)` log-ratios, detached (they are metrics, not objectives).
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))  # (B,)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def nll_term(policy_chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """Per pair: -log p(chosen) / (its number of tokens), shape (B,); a pair with no token counts 0."""
    return -policy_chosen_logps / chosen_tokens.clamp(min=1).to(policy_chosen_logps.dtype)


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels[..., t] | logits[..., t, :]) in float32; `labels` must be valid ids everywhere (B, T)."""
    logps = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return logps.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over positions of log p(label) where `mask` is 1 (answer tokens): shape (B,), float32.

    `logits[:, t]` is the distribution that predicts `labels[:, t]` (shift a causal LM's outputs by one
    before calling). Masked positions may hold any id (padding, -100): they are replaced before the gather.
    """
    mask = mask.bool()
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels))
    return (token_logps(logits, safe_labels) * mask).sum(dim=-1)


class _ChunkedHeadLogps(torch.autograd.Function):
    """log softmax(hidden @ weight.T)[label] per row, the LM head applied `chunk` rows at a time.

    Saves only the hidden rows and each row's log-sum-exp; the backward recomputes each chunk's logits:
    d logp / d logits = onehot(label) - softmax(logits).
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk, compute_dtype):  # type: ignore[override]
        w = weight.to(compute_dtype)  # (V, H); no copy when the head is already in compute_dtype
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = (hidden[rows].to(compute_dtype) @ w.T).float()  # (n, V)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            out[rows] = logits.gather(-1, labels[rows].unsqueeze(-1)).squeeze(-1) - lse[rows]
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk, ctx.compute_dtype = chunk, compute_dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        hidden, weight, labels, lse = ctx.saved_tensors
        chunk, cdt = ctx.chunk, ctx.compute_dtype
        w = weight.to(cdt)
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            h = hidden[rows].to(cdt)  # (n, H)
            g = grad_out[rows].unsqueeze(-1)  # (n, 1)
            # one (n, V) buffer, rewritten in place: logits -> softmax -> -softmax * g -> + onehot(label) * g
            grad_logits = (h @ w.T).float().sub_(lse[rows].unsqueeze(-1)).exp_().mul_(-g)
            grad_logits.scatter_add_(-1, labels[rows].unsqueeze(-1), g)
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits.to(cdt) @ w).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += grad_logits.T @ h.float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def chunked_token_logps(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk: int = 128,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """log p(labels[i] | hidden[i]) for an LM head `head_weight` (V, H), without full (N, V) logits kept.

    hidden: (N, H) final hidden states of the positions that predict answer tokens; labels: (N,) their
    targets. `chunk=0` applies the head to all N rows at once. Returns (N,) float32, differentiable with
    respect to `hidden` (and `head_weight` if it requires grad).
    """
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    chunk = chunk if chunk > 0 else hidden.shape[0]
    return _ChunkedHeadLogps.apply(hidden, head_weight, labels, chunk, compute_dtype or hidden.dtype)
