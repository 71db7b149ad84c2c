"""Evaluation: attack success rate, XSTest over-refusal and utility, on greedy answers and log-likelihoods.

    from feddetox.evaluation import EvalConfig, run_eval, save_eval
    result = run_eval(model, tokenizer, EvalConfig.preset("small"))

Modules: `refusal` (the refusal-phrase judges), `generate` (batched greedy answers), `loglik` (continuation
log-probabilities), `safety` (ASR, XSTest, refusal-versus-target log-prob), `utility` (multiple choice,
GSM8K), `suite` (configs, presets, `run_eval`), `cli` (`feddetox eval`).
"""

from __future__ import annotations

from feddetox.evaluation.generate import format_prompt, generate
from feddetox.evaluation.loglik import continuation_logprobs
from feddetox.evaluation.refusal import REFUSAL_PHRASES, is_refusal, xstest_refusal
from feddetox.evaluation.safety import (
    Guardian,
    asr,
    asr_details,
    attack_successes,
    evaluate_safety,
    refusal_vs_target_logprob,
    xstest_metrics,
)
from feddetox.evaluation.suite import (
    PRESETS,
    EvalConfig,
    EvalSets,
    eval_prompt_set,
    format_table,
    load_eval,
    run_eval,
    save_eval,
    select_eval_sets,
)
from feddetox.evaluation.utility import extract_number, gsm8k_accuracy, mc_accuracy

__all__ = [
    "PRESETS",
    "REFUSAL_PHRASES",
    "EvalConfig",
    "EvalSets",
    "Guardian",
    "asr",
    "asr_details",
    "attack_successes",
    "continuation_logprobs",
    "eval_prompt_set",
    "evaluate_safety",
    "extract_number",
    "format_prompt",
    "format_table",
    "generate",
    "gsm8k_accuracy",
    "is_refusal",
    "load_eval",
    "mc_accuracy",
    "refusal_vs_target_logprob",
    "run_eval",
    "save_eval",
    "select_eval_sets",
    "xstest_metrics",
    "xstest_refusal",
]
