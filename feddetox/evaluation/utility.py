"""Utility measures: multiple-choice accuracy by log-likelihood (TruthfulQA MC1, MMLU) and GSM8K by greedy
generation with final-number extraction.

Multiple choice, zero-shot, no chat template: the context is `"Question: {question}\\nAnswer:"`, each choice
is the continuation `" {choice}"`, scored by the sum of its tokens' log-probs (`loglik`). The prediction is
the best-scoring choice (`acc`) or the best after dividing each score by the choice's length in UTF-8 bytes
(`acc_norm`, lm-evaluation-harness's length normalisation, fairer to long choices).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from feddetox.data.records import EvalPrompt, MultipleChoice
from feddetox.evaluation.generate import generate
from feddetox.evaluation.loglik import shared_context_logprobs

MC_CONTEXT = "Question: {question}\nAnswer:"


def mc_pairs(item: MultipleChoice) -> list[tuple[str, str]]:
    """(context, continuation) of each choice of `item`."""
    context = MC_CONTEXT.format(question=item.question.strip())
    return [(context, " " + str(choice).strip()) for choice in item.choices]


def mc_predictions(scores: Sequence[Sequence[float]], lengths: Sequence[Sequence[int]] | None = None) -> list[int]:
    """Index of the best choice per item: argmax of the score, or of score / length when `lengths` is given."""
    preds = []
    for i, row in enumerate(scores):
        values = np.asarray(row, dtype=np.float64)
        if lengths is not None:
            values = values / np.maximum(np.asarray(lengths[i], dtype=np.float64), 1.0)
        preds.append(int(np.argmax(values)))
    return preds


def accuracy(predictions: Sequence[int], answers: Sequence[int]) -> float:
    """Share of predictions equal to the answers; NaN for none."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answers")
    return float(np.mean([p == a for p, a in zip(predictions, answers, strict=True)])) if answers else float("nan")


def choice_logprobs(
    model, tokenizer, items: Sequence[MultipleChoice], *, batch_size: int = 16, progress: bool = True, desc: str = "mc"
) -> list[list[tuple[float, int]]]:
    """Per item, per choice: (sum of the choice's token log-probs given the question, its token count).

    The question is computed once for all its choices (`shared_context_logprobs`)."""
    groups = []
    for item in items:
        pairs = mc_pairs(item)
        groups.append((pairs[0][0], [x for _, x in pairs]))
    return shared_context_logprobs(model, tokenizer, groups, batch_size=batch_size, progress=progress, desc=desc)


def mc_accuracy(
    model, tokenizer, items: Sequence[MultipleChoice], *, batch_size: int = 16, progress: bool = True, desc: str = "mc"
) -> dict[str, Any]:
    """Accuracy on `items`: {"acc", "acc_norm", "n", "items": [{question, answer, pred, pred_norm, scores}]}."""
    for i, item in enumerate(items):
        if not 0 <= item.answer < len(item.choices):
            raise ValueError(f"{desc} item {i} ({item.question[:60]!r}): answer {item.answer} is not a choice index")
    scored = choice_logprobs(model, tokenizer, items, batch_size=batch_size, progress=progress, desc=desc)
    scores = [[s for s, _ in row] for row in scored]
    byte_lengths = [[len(c.encode("utf-8")) for _, c in mc_pairs(item)] for item in items]
    preds = mc_predictions(scores)
    preds_norm = mc_predictions(scores, byte_lengths)
    answers = [item.answer for item in items]
    return {
        "acc": accuracy(preds, answers),
        "acc_norm": accuracy(preds_norm, answers),
        "n": len(items),
        "items": [
            {
                "question": item.question,
                "subject": item.subject,
                "answer": item.answer,
                "pred": p,
                "pred_norm": pn,
                "scores": [round(s, 4) for s in row],
            }
            for item, p, pn, row in zip(items, preds, preds_norm, scores, strict=True)
        ],
    }


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def _clean_number(text: str) -> str:
    text = text.replace(",", "").replace("$", "").rstrip(".")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def extract_number(text: str) -> str | None:
    """The final answer of a GSM8K-style solution: the number after `####` if any, else the last number."""
    if "####" in text:
        found = _NUMBER.findall(text.split("####")[-1])
        if found:
            return _clean_number(found[0])
    found = _NUMBER.findall(text)
    return _clean_number(found[-1]) if found else None


def gsm8k_fields(item: Any) -> tuple[str, str]:
    """(question, gold final number) of a GSM8K item: an `EvalPrompt` (gold in meta["answer"]), a dict with
    "question" and "answer" (or "final", as `feddetox.data.sets.gsm8k` gives), or a (question, answer) pair."""
    if isinstance(item, EvalPrompt):
        question, answer = item.prompt, item.meta.get("answer", item.meta.get("target", ""))
    elif isinstance(item, dict):
        question, answer = item["question"], item.get("final", item["answer"])
    else:
        question, answer = item
    gold = extract_number(str(answer))
    if gold is None:
        raise ValueError(f"GSM8K item {question[:60]!r}: no final number in its answer")
    return question, gold


GSM8K_PROMPT = "{question}\nSolve it step by step, then give the final answer as a number after '####'."


def gsm8k_accuracy(
    model,
    tokenizer,
    items: Sequence[Any],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Greedy answers to GSM8K questions (chat template); correct when the final number equals the gold one."""
    fields = [gsm8k_fields(item) for item in items]
    prompts = [GSM8K_PROMPT.format(question=q) for q, _ in fields]
    outs = generate(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress, desc="gsm8k"
    )
    rows = []
    for (question, gold), answer in zip(fields, outs, strict=True):
        pred = extract_number(answer)
        rows.append({"question": question, "gold": gold, "answer": answer, "pred": pred, "correct": pred == gold})
    acc = float(np.mean([r["correct"] for r in rows])) if rows else float("nan")
    return {"acc": acc, "n": len(rows), "items": rows}
