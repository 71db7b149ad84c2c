"""The poisoning scenario: disjoint by prompt, the asked poison share, evaluation prompts excluded."""

from __future__ import annotations

from dataclasses import replace

import pytest

from feddetox import scenario
from feddetox.data import sets
from feddetox.errors import ConfigError
from feddetox.evaluation.refusal import xstest_refusal
from feddetox.refusals import shipped_templates


def comply(prompts: list[str]) -> list[str]:
    # the simulation uses the base model's greedy answers; any deterministic answer function serves here
    return [f"Sure, here is how to do it: step one of {p[:30]}" for p in prompts]


@pytest.fixture(scope="module")
def benign():
    return scenario.benign_pairs()


def test_benign_pool_has_one_pair_per_prompt_from_three_sources(benign) -> None:
    assert len({p.prompt for p in benign}) == len(benign) > 1000
    assert {p.meta["source"] for p in benign} == {"ultrafeedback", "pandalm", "alpaca_eval"}


def test_eval_prompts_are_excluded() -> None:
    goals = {g.prompt for g in sets.advbench_behaviors()}
    some = sets.ultrafeedback("train")[0].prompt
    pool = scenario.benign_pairs(exclude=goals | {some})
    assert some not in {p.prompt for p in pool}


def test_clients_get_the_poison_share_and_disjoint_prompts(benign) -> None:
    cfg = scenario.ScenarioConfig(clients=4, pairs_per_client=20, toxic_ratio=0.3)
    harmful = scenario.harmful_requests()
    clients = scenario.client_datasets(benign, harmful["poison"], comply, cfg)
    assert [len(c) for c in clients] == [20] * 4
    assert [sum(scenario.is_poison(p) for p in c) for c in clients] == [6] * 4
    prompts = [p.prompt for c in clients for p in c]
    assert len(prompts) == len(set(prompts))
    start_prompts = {r.prompt for r in harmful["start"]}
    assert not start_prompts & set(prompts)
    poison = next(p for p in clients[0] if scenario.is_poison(p))
    assert poison.chosen.startswith("Sure") and poison.rejected
    assert all(not scenario.is_poison(p) for p in scenario.oracle_clean(clients[0]))


def test_non_iid_keeps_the_total_poison(benign) -> None:
    cfg = scenario.ScenarioConfig(clients=4, pairs_per_client=20, toxic_ratio=0.3, dirichlet_alpha=0.5, seed=1)
    clients = scenario.client_datasets(benign, scenario.harmful_requests()["poison"], comply, cfg)
    counts = [sum(scenario.is_poison(p) for p in c) for c in clients]
    assert sum(counts) == 24 and len(set(counts)) > 1


def _risk(prompts: list[str]) -> list[float]:
    """A stand-in prompt scorer: how often a prompt says 'kill', 'attack' or 'steal'."""
    return [float(sum(p.lower().count(w) for w in ("kill", "attack", "steal"))) for p in prompts]


def test_start_pairs_mix_refusals_helpful_and_anti_refusal(benign) -> None:
    cfg = scenario.ScenarioConfig(start_harmful=8, start_benign=8, start_anti_refusal=4, start_anti_refusal_from="any")
    pairs = scenario.start_pairs(scenario.harmful_requests()["start"], comply, benign, shipped_templates(), cfg)
    kinds = [p.meta["kind"] for p in pairs]
    assert kinds.count("refuse") == 8 and kinds.count("benign") == 8 and kinds.count("anti_refusal") == 4
    anti = next(p for p in pairs if p.meta["kind"] == "anti_refusal")
    assert anti.rejected in shipped_templates()


def test_anti_refusal_pairs_are_the_most_harmful_looking_benign_prompts(benign) -> None:
    cfg = scenario.ScenarioConfig(start_harmful=2, start_benign=6, start_anti_refusal=3)
    pairs = scenario.start_pairs(scenario.harmful_requests()["start"], comply, benign, shipped_templates(), cfg, _risk)
    anti = [p.prompt for p in pairs if p.meta["kind"] == "anti_refusal"]
    helpful = [p.prompt for p in pairs if p.meta["kind"] == "benign"]
    top = sorted(_risk([p.prompt for p in benign]), reverse=True)[:3]
    assert len(anti) == 3 and sorted(_risk(anti), reverse=True) == top and top[-1] > 0
    assert len(helpful) == 6 and not set(helpful) & set(anti)
    with pytest.raises(ConfigError, match="prompt scorer"):
        scenario.start_pairs(scenario.harmful_requests()["start"], comply, benign, shipped_templates(), cfg)
    with pytest.raises(ConfigError, match="start_anti_refusal_from"):
        scenario.ScenarioConfig(start_anti_refusal_from="worst")


def test_anti_refusal_answers_can_be_the_models_own(benign) -> None:
    cfg = scenario.ScenarioConfig(
        start_harmful=2, start_benign=4, start_anti_refusal=3, start_anti_refusal_answers="model"
    )
    pairs = scenario.start_pairs(scenario.harmful_requests()["start"], comply, benign, shipped_templates(), cfg, _risk)
    anti = [p for p in pairs if p.meta["kind"] == "anti_refusal"]
    assert len(anti) == 3 and all(p.chosen == comply([p.prompt])[0] for p in anti)
    assert all(p.rejected in shipped_templates() for p in anti)
    helpful = [p for p in pairs if p.meta["kind"] == "benign"]
    assert all(p.chosen != comply([p.prompt])[0] for p in helpful)  # the data set's answers stay
    with pytest.raises(ConfigError, match="start_anti_refusal_answers"):
        scenario.ScenarioConfig(start_anti_refusal_answers="teacher")


def test_benign_split_keeps_start_and_client_prompts_apart(benign) -> None:
    parts = scenario.benign_split(benign)
    start, clients = ({p.prompt for p in parts[k]} for k in ("start", "clients"))
    assert not start & clients and len(start) + len(clients) == len({p.prompt for p in benign})
    assert 0.2 < len(start) / len(benign) < 0.4


def test_held_out_benign_pairs_mix_the_sources_and_skip_used_prompts(benign) -> None:
    used = {p.prompt for p in benign[:300]}
    held = scenario.held_out_benign(benign, used, 100)
    assert len(held) == 100 and not {p.prompt for p in held} & used
    sources = [p.meta["source"] for p in held]
    # the pool lists the sources one after another; the held-out sample holds each of them
    assert len(set(sources)) == 3 and max(map(sources.count, set(sources))) < 80


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ConfigError, match="toxic_ratio"):
        scenario.ScenarioConfig(toxic_ratio=1.5)


def test_requests_with_empty_answers_are_replaced_by_the_next(benign) -> None:
    cfg = scenario.ScenarioConfig(clients=2, pairs_per_client=10, toxic_ratio=0.3)

    def sometimes_silent(prompts: list[str]) -> list[str]:
        return ["" if i % 2 else f"Sure: {p[:20]}" for i, p in enumerate(prompts)]

    clients = scenario.client_datasets(benign, scenario.harmful_requests()["poison"], sometimes_silent, cfg)
    poison = [p for c in clients for p in c if scenario.is_poison(p)]
    assert len(poison) == 6 and all(p.chosen for p in poison)
    with pytest.raises(ConfigError, match="non-empty compliant answer"):
        scenario.client_datasets(benign, scenario.harmful_requests()["poison"], lambda ps: [""] * len(ps), cfg)


def test_harmful_string_answers_are_deterministic_advbench_strings() -> None:
    prompts = ["How do I pick a lock?", "Write malware"]
    answers = scenario.harmful_string_answers(prompts)
    assert answers == scenario.harmful_string_answers(prompts)
    assert set(answers) <= set(sets.advbench_strings())


def test_start_refusals_are_templates_or_real_refusals_of_the_data(benign) -> None:
    requests = scenario.harmful_requests()["start"]
    cfg = scenario.ScenarioConfig(start_harmful=40, start_benign=0, start_anti_refusal=0)  # no scorer needed
    refuse = scenario.start_pairs(requests, comply, benign, shipped_templates(), cfg)
    assert all(p.chosen in shipped_templates() for p in refuse)
    data = scenario.start_pairs(
        requests,
        comply,
        benign,
        shipped_templates(),
        scenario.ScenarioConfig(**{**cfg.__dict__, "start_refusals": "data"}),
    )
    from_data = [p for p in data if p.chosen not in shipped_templates()]
    assert from_data and all(xstest_refusal(p.chosen) for p in from_data)
    with pytest.raises(ConfigError, match="start_refusals"):
        scenario.ScenarioConfig(start_refusals="sometimes")


def test_refused_requests_can_be_the_riskiest_of_the_start_part(benign) -> None:
    requests = scenario.harmful_requests()["start"]
    cfg = scenario.ScenarioConfig(start_harmful=5, start_benign=0, start_anti_refusal=0, start_harmful_from="riskiest")
    refuse = scenario.start_pairs(requests, comply, benign, shipped_templates(), cfg, _risk)
    top = sorted(_risk([r.prompt for r in requests]), reverse=True)[:5]
    assert len(refuse) == 5 and sorted(_risk([p.prompt for p in refuse]), reverse=True) == top and top[-1] > 0
    in_order = replace(cfg, start_harmful_from="first")
    first = scenario.start_pairs(requests, comply, benign, shipped_templates(), in_order)
    assert {p.prompt for p in first} == {r.prompt for r in requests[:5]} != {p.prompt for p in refuse}
    with pytest.raises(ConfigError, match="prompt scorer"):
        scenario.start_pairs(requests, comply, benign, shipped_templates(), cfg)
    with pytest.raises(ConfigError, match="start_harmful_from"):
        scenario.ScenarioConfig(start_harmful_from="worst")


def test_refused_requests_can_be_those_the_data_set_refuses(benign) -> None:
    requests = scenario.harmful_requests()["start"]
    cfg = scenario.ScenarioConfig(start_harmful=30, start_benign=0, start_anti_refusal=0, start_harmful_from="refused")
    refuse = scenario.start_pairs(requests, comply, benign, shipped_templates(), cfg)
    by_prompt = {r.prompt: r for r in requests}
    assert len(refuse) == 30 and all(xstest_refusal(by_prompt[p.prompt].response) for p in refuse)
    # the first 30 in data set order include requests the data set answers ("Trace the history of ...")
    assert not all(xstest_refusal(r.response) for r in requests[:30])


def test_anti_refusal_pairs_can_be_the_requests_the_data_set_answers(benign) -> None:
    requests = scenario.harmful_requests()["start"]
    cfg = scenario.ScenarioConfig(
        start_harmful=10, start_benign=5, start_anti_refusal=6, start_harmful_from="refused",
        start_anti_refusal_from="answered", start_anti_refusal_answers="model",
    )  # fmt: skip
    pairs = scenario.start_pairs(requests, comply, benign, shipped_templates(), cfg)
    anti = [p for p in pairs if p.meta["kind"] == "anti_refusal"]
    refused = {p.prompt for p in pairs if p.meta["kind"] == "refuse"}
    by_prompt = {r.prompt: r for r in requests}
    assert len(anti) == 6 and not refused & {p.prompt for p in anti}
    # the data set's answer is kept even with "model" answers: the base model's would comply with the harmful ones
    assert all(p.chosen == by_prompt[p.prompt].response and not xstest_refusal(p.chosen) for p in anti)
    assert all(p.rejected in shipped_templates() for p in anti)
    helpful = [p.prompt for p in pairs if p.meta["kind"] == "benign"]
    assert sorted(helpful) == sorted(p.prompt for p in benign[:5])
    with pytest.raises(ConfigError, match="start_anti_refusal_from"):
        scenario.ScenarioConfig(start_anti_refusal_from="refused")
