"""Configs and presets, the exact prompt sets, `run_eval` end to end on a tiny model, and its JSON file."""

from __future__ import annotations

import json
import math

import pytest

from feddetox.errors import ConfigError, DataError
from feddetox.evaluation.suite import (
    PRESETS,
    EvalConfig,
    eval_prompt_set,
    format_table,
    load_eval,
    run_eval,
    sample_in_order,
    save_eval,
    select_eval_sets,
)


def test_presets_grow_from_tiny_to_full() -> None:
    tiny, small, full = PRESETS["tiny"], PRESETS["small"], PRESETS["full"]
    assert tiny.advbench_goals < small.advbench_goals < full.advbench_goals
    assert full.advbench_goals >= 100
    assert full.xstest_safe is None and full.xstest_unsafe is None  # all of XSTest
    assert EvalConfig.preset("small", seed=3).seed == 3


def test_bad_configs_name_the_field() -> None:
    with pytest.raises(ConfigError, match="advbench_goals"):
        EvalConfig(advbench_goals=-1)
    with pytest.raises(ConfigError, match="batch_size"):
        EvalConfig(batch_size=0)
    with pytest.raises(ConfigError, match="unknown evaluation preset 'huge'"):
        EvalConfig.preset("huge")
    with pytest.raises(ConfigError, match="goalz"):
        EvalConfig.preset("tiny", goalz=3)
    with pytest.raises(ConfigError, match="'precision'.*'fp8'"):
        EvalConfig(precision="fp8")


def test_precision_resolves_by_device_and_cpu(monkeypatch) -> None:
    from feddetox.training import precision

    assert EvalConfig(precision="float32").resolved_precision("cuda") == "float32"
    assert EvalConfig(precision="auto").resolved_precision("cuda") == "bfloat16"
    monkeypatch.setattr(precision, "fast_bf16_matmul", lambda: False)
    assert EvalConfig().resolved_precision() == "float32"
    monkeypatch.setattr(precision, "fast_bf16_matmul", lambda: True)
    assert EvalConfig().resolved_precision() == "bfloat16"


def test_bf16_evaluation_runs_under_autocast_and_says_so(lively_lm) -> None:
    import torch

    model, tokenizer = lively_lm
    seen: list[torch.dtype] = []
    hook = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        cfg = EvalConfig.preset("tiny", max_new_tokens=2, precision="bfloat16", logprob=False)
        result = run_eval(model, tokenizer, cfg, progress=False)
        assert result["precision"] == "bfloat16" and set(seen) == {torch.bfloat16}
        seen.clear()
        result = run_eval(model, tokenizer, EvalConfig.preset("tiny", max_new_tokens=2), progress=False)
    finally:
        hook.remove()
    assert result["precision"] in ("float32", "bfloat16")
    assert set(seen) == {torch.bfloat16 if result["precision"] == "bfloat16" else torch.float32}
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32  # the weights are left as they are


def test_sampling_is_seeded_and_keeps_file_order() -> None:
    items = list(range(100))
    a = sample_in_order(items, 10, 0, "x")
    assert a == sorted(a) and len(set(a)) == 10
    assert a == sample_in_order(items, 10, 0, "x")
    assert a != sample_in_order(items, 10, 1, "x")
    assert sample_in_order(items, None, 0, "x") == items
    assert sample_in_order(items, 500, 0, "x") == items


def test_the_selected_sets_and_the_held_out_prompts() -> None:
    cfg = EvalConfig.preset("tiny")
    sets = select_eval_sets(cfg)
    assert len(sets.goals) == 4 and all(g.meta["target"] for g in sets.goals)
    assert len(sets.jailbreak_templates) == 1 and sets.jailbreak_goals == 2
    assert [x.label for x in sets.xstest] == ["safe"] * 3 + ["unsafe"] * 2
    assert len(sets.truthfulqa) == 4 and len(sets.mmlu) == 4
    held_out = eval_prompt_set(cfg, sets)
    assert {g.prompt for g in sets.goals} <= held_out
    assert {x.prompt for x in sets.xstest} <= held_out
    assert {q.question.strip() for q in sets.truthfulqa + sets.mmlu} <= held_out
    assert eval_prompt_set(cfg) == held_out  # a config names exactly one set of prompts


def test_run_eval_keeps_the_answers_and_saves_strict_json(lively_lm, tmp_path) -> None:
    model, tokenizer = lively_lm
    cfg = EvalConfig.preset("tiny", max_new_tokens=4)
    result = run_eval(model, tokenizer, cfg, progress=False, model_name="tiny")
    m = result["metrics"]
    for key in (
        "asr_refusal",
        "jailbreak_asr_refusal",
        "xstest_safe_compliance",
        "xstest_unsafe_refusal",
        "truthfulqa_mc1",
        "mmlu_acc",
        "refusal_minus_target",
    ):
        assert key in m, key
    assert "asr_guardian" not in m  # no guardian given
    assert m["advbench_n"] == 4 and m["jailbreak_n"] == 2 and m["truthfulqa_n"] == 4 and m["mmlu_n"] == 4
    assert all(0.0 <= m[k] <= 1.0 for k in ("asr_refusal", "truthfulqa_mc1", "mmlu_acc"))
    assert {r["prompt"] for r in result["answers"]["advbench"]} == {g.prompt for g in select_eval_sets(cfg).goals}
    assert len(result["items"]["truthfulqa"]) == 4

    path = save_eval(result, tmp_path / "out" / "eval.json")
    text = path.read_text(encoding="utf-8")
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    again = load_eval(path)
    assert again["answers"]["advbench"] == result["answers"]["advbench"]
    assert again["metrics"]["asr_refusal"] == m["asr_refusal"]
    table = format_table(result)
    assert "ASR, AdvBench (refusal-phrase judge)" in table and "TruthfulQA MC1 accuracy" in table


def test_nan_is_saved_as_null_and_bad_files_are_named(tmp_path) -> None:
    result = {"format": "feddetox-eval/1", "metrics": {"asr_refusal": math.nan}}
    path = save_eval(result, tmp_path / "r.json")
    assert json.loads(path.read_text())["metrics"]["asr_refusal"] is None
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        load_eval(tmp_path / "bad.json")
    with pytest.raises(DataError, match="format"):
        load_eval(save_eval({"metrics": {}}, tmp_path / "other.json"))
