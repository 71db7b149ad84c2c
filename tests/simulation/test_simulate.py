"""The simulation end to end with tiny models: a real coordinator and real edge processes per condition.

2 clients, 1 round, every condition (benign-only, no defense, drop, FedDetox, centralized), the tiny evaluation
preset. Checks that every condition produced its rows, and the table and plot files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feddetox_cli.simulation.config import CONDITIONS, from_dict
from feddetox_cli.simulation.report import COLUMNS, markdown_table

pytestmark = pytest.mark.slow


def test_every_condition_produces_its_rows(tiny_llama_path: Path, tiny_guardian_bundle: Path, tmp_path: Path) -> None:
    from feddetox_cli import simulate

    config = tmp_path / "sim.toml"
    config.write_text(
        f"""
name = "ci"
base_model = "{tiny_llama_path}"
guardian = "{tiny_guardian_bundle}"
rounds = 1
conditions = {json.dumps(list(CONDITIONS))}
compliant_max_new_tokens = 8
# a random tiny model answers nothing: the poison takes AdvBench's harmful strings as its chosen side
poison_answers = "harmful_strings"
round_deadline_s = 600
# the per-round curves on the tiny preset, the table's rows on a slightly larger one
round_eval_preset = "tiny"
[lora]
r = 4
alpha = 8.0
target_modules = ["q_proj", "v_proj"]
[scenario]
clients = 2
pairs_per_client = 6
toxic_ratio = 0.34
start_harmful = 4
start_benign = 4
start_anti_refusal = 2
[train]
local_steps = 1
batch_size = 2
max_prompt_tokens = 32
max_response_tokens = 16
[start]
steps = 1
batch_size = 2
[eval]
preset = "tiny"
advbench_goals = 5
"""
    )
    out = tmp_path / "out"
    # what an interrupted earlier attempt leaves: a device's state and an evaluation of a round it never finished
    (out / "none" / "device0").mkdir(parents=True)
    (out / "none" / "device0" / "state.json").write_text("{}")
    (out / "eval").mkdir()
    (out / "eval" / "none_round1.json").write_text(json.dumps({"metrics": {"asr_refusal": 7.0}}))
    assert simulate.main(["--config", str(config), "--out", str(out)]) == 0

    result = json.loads((out / "results.json").read_text())
    assert set(result["per_round"]) == set(CONDITIONS)
    for condition, rows in result["per_round"].items():
        assert len(rows) == 2, condition  # the start adapter and round 1
        assert 0.0 <= rows[-1]["asr_refusal"] <= 1.0
    assert [c["poison"] for c in result["clients"]] == [2, 2]
    seen = result["guardian_on_clients"]
    assert (seen["pairs"], seen["poison"]) == (12, 4) and 0 <= seen["poison_flagged"] <= 4
    assert result["rounds_evaluated"] == [0, 1]
    # curves on the round preset, the table on its own: each condition's last round evaluated on both
    assert (result["per_round_preset"], result["table_preset"]) == ("tiny", "tiny")
    assert set(result["final"]) == set(CONDITIONS)
    for condition, rows in result["per_round"].items():
        assert rows[-1]["advbench_n"] == 4 and result["final"][condition]["advbench_n"] == 5, condition
        assert 0.0 <= result["final"][condition]["asr_refusal"] <= 1.0, condition
        assert (out / "eval" / f"{condition}_round1-tiny.json").exists(), condition
    assert result["start"]["advbench_n"] == 5 and rows[0]["advbench_n"] == 4
    # the devices' threshold was calibrated on benign pairs no client holds, and sent with the run
    calibration = result["guardian"]["device_threshold"]
    assert calibration["from"] == "benign-pairs" and calibration["pairs"] > 0
    assert seen["threshold"] == calibration["threshold"]
    table = (out / "table.md").read_text()
    assert all(header in table for _, header in COLUMNS)
    assert "FedDetox (replace)" in table and "centralized" in table
    assert (out / "rounds.png").stat().st_size > 1000
    # the coordinator's state stays for inspection, one per federated condition
    for condition in ("benign", "none", "drop", "replace"):
        rounds = json.loads((out / condition / "rounds.json").read_text())["rounds"]
        assert [r["status"] for r in rounds] == ["closed"]
        assert (out / condition / "coordinator").is_dir()


def test_config_errors_name_the_field() -> None:
    from feddetox.errors import ConfigError

    with pytest.raises(ConfigError, match="conditions"):
        from_dict({"conditions": ["sometimes"]})
    with pytest.raises(ConfigError, match=r"\[train\].*unknown field"):
        from_dict({"train": {"steps_per_round": 3}})
    with pytest.raises(ConfigError, match="eval_rounds"):
        from_dict({"eval_rounds": "some"})
    with pytest.raises(ConfigError, match="guardian_threshold"):
        from_dict({"guardian_threshold": 1.5})
    with pytest.raises(ConfigError, match="round_eval_preset"):
        from_dict({"round_eval_preset": "huge"})
    with pytest.raises(ConfigError, match="guardian_fpr"):
        from_dict({"guardian_fpr": 0})


@pytest.mark.parametrize("name", ["demo", "paper"])
def test_shipped_configs_load_and_pick_the_round_0_mix_by_the_data_sets_own_answers(name: str) -> None:
    from feddetox_cli.simulation.config import load_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / f"{name}.toml")
    assert cfg.name == name and "replace" in cfg.conditions and "none" in cfg.conditions
    assert cfg.scenario.start_harmful_from == "refused" and cfg.scenario.start_anti_refusal_from == "answered"
    assert 0 < cfg.scenario.start_anti_refusal < cfg.scenario.start_harmful


def test_eval_rounds_last_evaluates_the_final_round_only() -> None:
    assert from_dict({"rounds": 3}).evaluated_rounds() == [1, 2, 3]
    assert from_dict({"rounds": 3, "eval_rounds": "last"}).evaluated_rounds() == [3]


def test_table_marks_missing_metrics() -> None:
    result = {"base": {"asr_refusal": 0.99}, "start": {}, "final": {"replace": {"asr_refusal": 0.1}}}
    table = markdown_table(result)
    assert "0.990" in table and "–" in table and "FedDetox (replace)" in table


def test_table_rows_keep_the_papers_order_whatever_order_the_conditions_ran_in() -> None:
    final = {"replace": {}, "none": {}, "centralized": {}, "benign": {}}
    table = markdown_table({"base": {}, "start": {}, "final": final})
    labels = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert labels == [
        "base model",
        "start (round 0)",
        "benign-only (oracle)",
        "no defense",
        "FedDetox (replace)",
        "centralized (server-sanitized)",
    ]


def test_start_adapter_is_cached_by_what_makes_it(
    tiny_llama_path: Path, tiny_guardian_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second run with the same settings reuses the cached round-0 adapter and its evaluation; other settings
    train a new one."""
    import numpy as np

    from feddetox_cli.simulation.runner import Simulation

    monkeypatch.setenv("FEDDETOX_HOME", str(tmp_path / "home"))
    raw = {
        "base_model": str(tiny_llama_path),
        "guardian": str(tiny_guardian_bundle),
        "poison_answers": "harmful_strings",
        "lora": {"r": 2, "alpha": 4.0, "target_modules": ["q_proj"]},
        "scenario": {"start_harmful": 2, "start_benign": 2, "start_anti_refusal": 1},
        "train": {"max_prompt_tokens": 16, "max_response_tokens": 8},
        "start": {"steps": 1, "batch_size": 2},
        "eval": {"preset": "tiny"},
    }
    first = Simulation(from_dict(raw), tmp_path / "a")
    first.prepare()
    trained = first.start_adapter()
    assert len(list((tmp_path / "home" / "start_adapters").iterdir())) == 1

    second = Simulation(from_dict(raw), tmp_path / "b")
    second.prepare()

    def no_training(*args, **kwargs):  # also stands in for run_eval below
        raise AssertionError("the cached start adapter should have been reused")

    monkeypatch.setattr(second.trainer, "train", no_training)
    reused = second.start_adapter()
    assert set(reused) == set(trained)
    assert all(np.array_equal(reused[k], trained[k]) for k in trained)
    assert (tmp_path / "b" / "start_adapter_metrics.json").exists()

    # an evaluation of the same weights under the same settings is cached too
    metrics = first.evaluate("start", trained)
    import feddetox.evaluation.suite as suite

    monkeypatch.setattr(suite, "run_eval", no_training)
    assert second.evaluate("start", reused) == metrics
    assert (tmp_path / "b" / "eval" / "start.json").exists()
    monkeypatch.undo()
    monkeypatch.setenv("FEDDETOX_HOME", str(tmp_path / "home"))

    other = Simulation(from_dict({**raw, "start": {"steps": 2, "batch_size": 2}}), tmp_path / "c")
    other.prepare()
    other.start_adapter()
    assert len(list((tmp_path / "home" / "start_adapters").iterdir())) == 2


def test_an_output_folder_resumes_only_a_run_of_the_same_config(tmp_path: Path) -> None:
    from feddetox.errors import ConfigError
    from feddetox_cli.simulation.runner import RUN_CONFIG, Simulation, config_differences

    raw = {"rounds": 2, "conditions": ["none", "replace"], "scenario": {"start_anti_refusal": 8}}
    Simulation(from_dict(raw), tmp_path)
    assert (tmp_path / RUN_CONFIG).exists()
    # the same config again, or another subset of its conditions (a run done in parts), resumes
    Simulation(from_dict(raw), tmp_path)
    Simulation(from_dict({**raw, "conditions": ["drop"], "name": "later"}), tmp_path)
    with pytest.raises(ConfigError, match=r"another config \(differs in rounds, scenario.start_anti_refusal\)"):
        Simulation(from_dict({**raw, "rounds": 3, "scenario": {"start_anti_refusal": 9}}), tmp_path)
    (tmp_path / RUN_CONFIG).write_text("{not json")
    with pytest.raises(ConfigError, match=f"{RUN_CONFIG}: not valid JSON"):
        Simulation(from_dict(raw), tmp_path)
    assert config_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3, "d": 4}}) == ["b.c", "b.d"]


def test_an_output_folder_resumes_only_a_run_with_the_same_guardian_bundle(tmp_path: Path) -> None:
    """The config names a preset ("build:full"); a rebuilt preset is another bundle under the same name."""
    from feddetox.errors import ConfigError
    from feddetox_cli.simulation.runner import GUARDIAN_RECORD, claim_guardian

    (tmp_path / "a").mkdir()
    claim_guardian(tmp_path / "a", "aaaa")
    claim_guardian(tmp_path / "a", "aaaa")  # the same bundle resumes
    with pytest.raises(ConfigError, match="guardian bundle aaaa, this config's guardian is bbbb"):
        claim_guardian(tmp_path / "a", "bbbb")
    old = tmp_path / "old"  # a folder from before the record: its results name the bundle
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"guardian": {"bundle_id": "cccc"}}))
    with pytest.raises(ConfigError, match="guardian bundle cccc"):
        claim_guardian(old, "dddd")
    assert not (old / GUARDIAN_RECORD).exists()
    claim_guardian(old, "cccc")
    assert json.loads((old / GUARDIAN_RECORD).read_text()) == {"bundle_id": "cccc"}
    (old / GUARDIAN_RECORD).write_text("{}")
    with pytest.raises(ConfigError, match="no guardian bundle id"):
        claim_guardian(old, "cccc")
