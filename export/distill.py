"""Distillation: the student learns the teacher's soft labels (temperature-scaled KL), optionally mixed with
cross-entropy on the gold labels; `alpha=0` with gold labels is the hard-label ablation.

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, gold)

with `t` the teacher's two-class logits [log(1 - p), log p] from its p_unsafe, `s` the student's logits; a
conversation without a label (the transfer corpus, `export.transfer`) has the KL term alone, with weight 1.
The T^2 factor keeps the soft term's gradient scale independent of T (Hinton et al., 2015).

    student = train_student(model, tokenizer, train, teacher_p, steps=300)     # in place, returns model
    p = student_scores(model, tokenizer, conversations)                       # eager p_unsafe
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from feddetox.data.records import Conversation
from feddetox.evaluation.generate import length_batches
from feddetox.guardian.runtime import softmax_unsafe
from feddetox.guardian.text import encode


def teacher_logits(p_unsafe: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Two-class logits [log(1 - p), log p] whose softmax gives back p; p is clipped to [eps, 1 - eps]."""
    p = p_unsafe.clamp(eps, 1 - eps)
    return torch.stack([torch.log1p(-p), torch.log(p)], dim=-1)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_p: torch.Tensor,
    gold: torch.Tensor | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 1.0,
) -> torch.Tensor:
    """Temperature-scaled KL to the teacher's soft labels, mixed with CE on gold labels; mean over the batch.

    student_logits (B, 2), teacher_p (B,) in [0, 1], gold (B,) in {0, 1} (needed when alpha < 1). A row whose
    gold label is -1 has none (a transfer-corpus conversation): the teacher is its only target, with weight 1,
    while a labelled row weighs `alpha` on the teacher and `1 - alpha` on its label.
    """
    if alpha < 1 and gold is None:
        raise ValueError("kd_loss: gold labels are needed when alpha < 1")
    labelled = torch.ones_like(teacher_p, dtype=torch.bool) if gold is None else gold >= 0
    w_kd = torch.where(labelled, torch.full_like(teacher_p, alpha), torch.ones_like(teacher_p))
    loss = student_logits.new_zeros(())
    if bool((w_kd > 0).any()):
        t = teacher_logits(teacher_p.to(student_logits.dtype)) / temperature
        log_q = F.log_softmax(student_logits / temperature, dim=-1)
        log_p = F.log_softmax(t, dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
        loss = loss + temperature**2 * (w_kd.to(kl.dtype) * kl).mean()
    if alpha < 1 and gold is not None and bool(labelled.any()):
        ce = F.cross_entropy(student_logits, gold.clamp(min=0).long(), reduction="none")
        loss = loss + (1 - alpha) * (ce * labelled.to(ce.dtype)).mean()
    return loss


def model_inputs(enc) -> dict[str, torch.Tensor]:
    """An encoded batch as the keyword tensors a transformers BERT takes."""
    ids, mask, types = (torch.from_numpy(a) for a in enc.arrays())
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _forward(model, enc) -> torch.Tensor:
    return model(**model_inputs(enc)).logits


#: batches are grouped by length within windows of this many batches (see `length_grouped_batches`)
LENGTH_WINDOW = 64


def token_lengths(tokenizer: Tokenizer, conversations: Sequence[Conversation], chunk: int = 512) -> np.ndarray:
    """The number of tokens each conversation encodes to (after truncation)."""
    out = [
        encode(tokenizer, conversations[s : s + chunk]).attention_mask.sum(axis=1)
        for s in range(0, len(conversations), chunk)
    ]
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def length_grouped_batches(
    lengths: Sequence[int] | np.ndarray, batch_size: int, steps: int, *, seed: int = 0, window: int = LENGTH_WINDOW
) -> list[list[int]]:
    """`steps` batches of `batch_size` indices: each epoch a fresh seeded permutation, cut into windows of
    `window` batches, each window sorted by length and cut into batches, the epoch's batches then shuffled.

    A batch pads to its longest member, so mixing a 20-token tweet with a 128-token answer costs the tweet 108
    padding tokens. On the guardian's training + transfer corpus (mean 51 tokens) random batches of 32 pad to 128
    on average, grouped ones to 52: the same steps cost well under half the time. Every conversation is seen once
    per epoch, as with plain shuffling; only which conversations share a batch changes.
    """
    n = len(lengths)
    if n == 0 or batch_size < 1:
        raise ValueError(f"length_grouped_batches: need conversations and batch_size >= 1, got {n} and {batch_size}")
    lengths = np.asarray(lengths)
    rng = np.random.default_rng(seed)
    batches: list[list[int]] = []
    while len(batches) < steps:
        order = rng.permutation(n)
        if n >= batch_size:  # an epoch of whole batches; the few left over start the next epoch's draw instead
            order = order[: n - n % batch_size]
        else:  # fewer conversations than a batch: repeat them to fill it
            order = np.resize(order, batch_size)
        epoch = []
        size = batch_size * window
        for s in range(0, len(order), size):
            chunk = order[s : s + size]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            epoch += [chunk[k : k + batch_size].tolist() for k in range(0, len(chunk), batch_size)]
        batches += [epoch[i] for i in rng.permutation(len(epoch))]
    return batches[:steps]


def train_student(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    train: Sequence[Conversation],
    teacher_p: np.ndarray | None,
    *,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 5e-5,
    temperature: float = 2.0,
    alpha: float = 0.8,
    seed: int = 0,
    bf16: bool = False,
    progress: Callable[[str], None] | None = None,
) -> torch.nn.Module:
    """Fine-tune the student in place on `train`; `teacher_p=None` trains on gold labels only (hard labels).

    Conversations with no label (`label is None`, the transfer corpus) learn from the teacher alone.

    `bf16` autocast pays only where the CPU multiplies bf16 in hardware: a MiniLM step (32 x 128, one thread)
    measured 4-6 s in fp32 and 1.8-2.0 s under autocast on an AVX512-BF16 core, while on an AVX2-only core
    (bf16 emulated) a 16 x 96 step went from 3-4 s in fp32 to 26-43 s. `BuildConfig.bf16="auto"` decides.
    Batches are drawn by `length_grouped_batches`, so that a batch pads to its own longest conversation.
    """
    torch.manual_seed(seed)
    if teacher_p is None:
        if any(c.label is None for c in train):
            raise ValueError("train_student: conversations without a label need the teacher's scores (teacher_p)")
        alpha = 0.0
    gold_all = torch.tensor([-1 if c.label is None else int(c.label) for c in train])
    soft_all = torch.zeros(len(train)) if teacher_p is None else torch.as_tensor(np.asarray(teacher_p, np.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / steps))
    lengths = token_lengths(tokenizer, train)
    batches = length_grouped_batches(lengths, batch_size, steps, seed=seed)
    model.train()
    start = time.time()
    for step, idx in enumerate(batches):
        enc = encode(tokenizer, [train[i] for i in idx])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = _forward(model, enc).float()
        loss = kd_loss(logits, soft_all[idx], gold_all[idx], temperature=temperature, alpha=alpha)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if progress is not None and (step % 20 == 0 or step == steps - 1):
            progress(f"student step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f} s)")
    return model.eval()


@torch.no_grad()
def student_logits(
    model: torch.nn.Module, tokenizer: Tokenizer, conversations: Sequence[Conversation], *, batch_size: int = 64
) -> np.ndarray:
    """The eager student's (N, 2) logits in fp32 in the conversations' order, through the same encoding as the
    device; batches hold conversations of similar length, so that little of them is padding."""
    model.eval()
    out = np.zeros((len(conversations), 2), np.float32)
    for batch in length_batches(token_lengths(tokenizer, conversations).tolist(), batch_size):
        out[batch] = _forward(model, encode(tokenizer, [conversations[i] for i in batch])).float().numpy()
    return out


def student_scores(model, tokenizer: Tokenizer, conversations: Sequence[Conversation], **kw) -> np.ndarray:
    """The eager student's p_unsafe."""
    return softmax_unsafe(student_logits(model, tokenizer, conversations, **kw))
