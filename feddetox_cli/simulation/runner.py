"""Run the paper's comparison: the same clients, data and seeds under each condition, evaluated every round.

Steps, each cached in the output folder so that an interrupted run resumes where it stopped:
1. the base model (pulled if it is a registry name) and a guardian bundle (built if asked);
2. the scenario: benign pools, harmful requests, the base model's compliant answers (the poison);
3. the round-0 start adapter (centralized LoRA-DPO towards refusals on harmful requests, helpfulness elsewhere);
4. per federated condition, a fresh coordinator process and one edge process per client, `rounds` rounds;
5. the centralized baseline: the pooled client data sanitized on the server, the same number of optimizer steps;
6. evaluation of the base model, the start adapter and every round's global adapter; the table and the plots.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from feddetox import adapters, scenario
from feddetox.data.io import write_pairs
from feddetox.data.records import Conversation, PreferencePair
from feddetox.errors import ConfigError
from feddetox_cli.simulation.config import LABELS, SimulationConfig
from feddetox_cli.simulation.federation import Coordinator, Device

POLICY = {"benign": "none", "none": "none", "drop": "drop", "replace": "replace"}


def _cache_key(*parts: Any) -> str:
    """A short, stable hash of JSON-able parts: the version of a cached artifact."""
    import hashlib

    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _json_dump(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


class Simulation:
    """Holds the base model once (in the trainer) and runs every step of the comparison."""

    def __init__(self, cfg: SimulationConfig, out: Path, *, on_coordinator: Callable[[str], None] | None = None):
        self.cfg, self.out = cfg, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        claim_out_folder(self.out, cfg)
        self.on_coordinator = on_coordinator or (lambda url: _log(f"dashboard: {url}/"))
        self.results: dict[str, list[dict[str, Any]]] = {}

    # -- set-up --------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        import torch

        from feddetox.evaluation.suite import EvalConfig, eval_prompt_set, select_eval_sets
        from feddetox.guardian import load_guardian
        from feddetox.models.loading import load_causal_lm, resolve_pulling, weights_sha256
        from feddetox.training import LoraDpoTrainer

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        _log(f"base model {cfg.base_model}")
        self.base_path = resolve_pulling(cfg.base_model)
        self.base_sha = weights_sha256(self.base_path)
        self.guardian_dir = _ensure_guardian(cfg.guardian, self.out)
        self.guardian = load_guardian(self.guardian_dir)
        claim_guardian(self.out, self.guardian.bundle_id)
        _log(f"guardian {self.guardian.bundle_id} (threshold {self.guardian.threshold:.3f})")
        self.eval_cfg = EvalConfig.preset(cfg.eval_preset, **cfg.eval_overrides)
        self.eval_sets = select_eval_sets(self.eval_cfg)
        exclude = eval_prompt_set(self.eval_cfg, self.eval_sets)
        self.round_eval_cfg, self.round_eval_sets = self.eval_cfg, self.eval_sets
        if cfg.round_eval_preset is not None:
            curves = EvalConfig.preset(
                cfg.round_eval_preset, seed=self.eval_cfg.seed, precision=self.eval_cfg.precision
            )
            if curves != self.eval_cfg:  # the curves' own (smaller) sets: left out of training as well
                self.round_eval_cfg, self.round_eval_sets = curves, select_eval_sets(curves)
                exclude |= eval_prompt_set(curves, self.round_eval_sets)
        self.trainer = LoraDpoTrainer(str(self.base_path), cfg.lora)
        # evaluation has its own float32 copy of the base: the trainer's may be stored in bf16 once it has
        # trained, and every row of the table is measured on the same weights, each adapter merged into them
        self.eval_base, self.eval_tokenizer = load_causal_lm(self.base_path)
        self.benign = scenario.benign_pairs(exclude=exclude)
        self.benign_parts = scenario.benign_split(self.benign, seed=cfg.seed)
        self.harmful = scenario.harmful_requests(exclude=exclude, seed=cfg.seed)
        _log(f"data: {len(self.benign)} benign pairs, {sum(map(len, self.harmful.values()))} harmful requests")

    def compliant(self, prompts: list[str]) -> list[str]:
        """The base model's greedy answers (adapter off), cached on disk by prompt: the poison's chosen side."""
        from feddetox.evaluation.generate import generate

        if self.cfg.poison_answers == "harmful_strings":
            return scenario.harmful_string_answers(prompts, seed=self.cfg.seed)
        from feddetox.compliant import compliant_answers

        def make(missing: list[str]) -> list[str]:
            with self.trainer.model.disable_adapter():
                return generate(
                    self.trainer.model, self.trainer.tokenizer, missing,
                    max_new_tokens=self.cfg.compliant_max_new_tokens, batch_size=8, desc="compliant answers",
                )  # fmt: skip

        return compliant_answers(
            prompts, make, base_sha=self.base_sha, max_new_tokens=self.cfg.compliant_max_new_tokens, log=_log
        )

    def train_config(self, *, steps: int, batch_size: int, learning_rate: float):
        from feddetox.training import TrainConfig

        t = self.cfg.train
        return TrainConfig(
            beta=t.beta, learning_rate=learning_rate, local_steps=steps, batch_size=batch_size,
            max_prompt_tokens=t.max_prompt_tokens, max_response_tokens=t.max_response_tokens, seed=self.cfg.seed,
        )  # fmt: skip

    def start_benign_pool(self) -> list[PreferencePair]:
        """The benign pairs the start adapter's helpful and anti-refusal pairs come from (no client holds them)."""
        return self.benign_parts["start"]

    def prompt_risk(self, prompts: list[str]) -> Any:
        """The guardian's p_unsafe of each prompt alone: how harmful a benign prompt looks."""
        return self.guardian.score([Conversation(p, "") for p in prompts])

    def start_adapter(self) -> dict[str, Any]:
        """The round-0 adapter (PEFT format), kept in the output folder.

        It is also cached under FEDDETOX_HOME/start_adapters/<version>, where the version hashes everything that
        makes it (base weights, LoRA shape, training settings and the training pairs themselves), so a run with
        the same settings on the same machine reuses it instead of training it again.
        """
        from feddetox.refusals import shipped_templates
        from feddetox.settings import home_dir

        folder = self.out / "start_adapter"
        if (folder / adapters.ADAPTER_WEIGHTS).exists():
            return adapters.load_peft(folder)[0]
        s = self.cfg.start
        pairs = scenario.start_pairs(
            self.harmful["start"], self.compliant, self.start_benign_pool(), shipped_templates(),
            self.cfg.scenario, self.prompt_risk,
        )  # fmt: skip
        cfg = replace(
            self.train_config(steps=s.steps, batch_size=s.batch_size, learning_rate=s.learning_rate),
            sft_weight=s.sft_weight,
            max_prompt_tokens=s.max_prompt_tokens or self.cfg.train.max_prompt_tokens,
            max_response_tokens=s.max_response_tokens or self.cfg.train.max_response_tokens,
        )
        version = _cache_key(
            self.base_sha, asdict(self.cfg.lora), asdict(cfg), [(p.prompt, p.chosen, p.rejected) for p in pairs]
        )
        cached = home_dir() / "start_adapters" / version
        if (cached / adapters.ADAPTER_WEIGHTS).exists():
            _log(f"start adapter {version}: cached in {cached}")
        else:
            _log(f"training the start adapter {version}: {len(pairs)} pairs, {s.steps} steps")
            result = self.trainer.train(pairs, self.trainer.init_adapter(self.cfg.seed), cfg, progress=True)
            tmp = cached.with_name(cached.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            adapters.save_peft(tmp, result.adapter, self.cfg.lora, self.cfg.base_model)
            _json_dump(tmp / "metrics.json", {"version": version, **result.metrics})
            shutil.rmtree(cached, ignore_errors=True)
            tmp.replace(cached)
        shutil.copytree(cached, folder, dirs_exist_ok=True)
        shutil.copy(cached / "metrics.json", self.out / "start_adapter_metrics.json")
        return adapters.load_peft(folder)[0]

    # -- evaluation ----------------------------------------------------------------------------------------
    @property
    def separate_curves(self) -> bool:
        """Whether the per-round curves have their own evaluation preset (`round_eval_preset`)."""
        return self.round_eval_cfg is not self.eval_cfg

    def evaluate_round(self, key: str, adapter: dict[str, Any]) -> dict[str, Any]:
        """An adapter on the per-round curves' preset (eval/<key>-<preset>.json when it is not the table's)."""
        if not self.separate_curves:
            return self.evaluate(key, adapter)
        return self.evaluate(
            f"{key}-{self.round_eval_cfg.name}", adapter, cfg=self.round_eval_cfg, sets=self.round_eval_sets
        )

    def evaluate(
        self, key: str, adapter: dict[str, Any] | None, *, cfg: Any = None, sets: Any = None
    ) -> dict[str, Any]:
        """Metrics of the base model (adapter None) or of an adapter; answers kept in eval/<key>.json.

        `cfg` and `sets`: the evaluation preset and its sets; default the table's.

        The adapter is merged into a copy of the runner's float32 base. Results are also cached under
        FEDDETOX_HOME/cache/evals by what decides them (base weights, adapter bytes, evaluation settings and the
        precision they resolve to here, guardian), so that the base model and a cached start adapter are evaluated
        once per machine, not once per run.
        """
        from feddetox.evaluation.suite import run_eval, save_eval
        from feddetox.models.merge import merged_copy
        from feddetox.settings import home_dir

        path = self.out / "eval" / f"{key}.json"
        if path.exists():
            return json.loads(path.read_text())["metrics"]
        cfg, sets = cfg or self.eval_cfg, sets or self.eval_sets
        adapter_sha = None if adapter is None else adapters.sha256_bytes(adapters.to_bytes(adapter))
        precision = cfg.resolved_precision()
        version = _cache_key(self.base_sha, adapter_sha, cfg.to_json(), self.guardian.bundle_id, precision)
        cached = home_dir() / "cache" / "evals" / f"{version}.json"
        if cached.exists():
            _log(f"evaluation of {key}: cached ({version})")
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(cached, path)
            return json.loads(path.read_text())["metrics"]
        _log(f"evaluating {key}")
        model = self.eval_base if adapter is None else merged_copy(self.eval_base, adapter, self.cfg.lora)
        result = run_eval(model, self.eval_tokenizer, cfg, guardian=self.guardian, sets=sets)
        del model
        save_eval(result, path)
        save_eval(result, cached)
        return result["metrics"]

    # -- conditions ----------------------------------------------------------------------------------------
    def client_data(self) -> list[list[PreferencePair]]:
        return scenario.client_datasets(
            self.benign_parts["clients"], self.harmful["poison"], self.compliant, self.cfg.scenario
        )

    def device_threshold(self, clients: list[list[PreferencePair]]) -> dict[str, Any]:
        """The threshold the devices use, and how it was found (see `SimulationConfig.guardian_threshold`).

        "benign-pairs": the guardian scores up to 200 benign pairs that no client holds and the start adapter
        did not train on (in hash order, so the sources mix as on a client); the threshold lets `guardian_fpr` of
        them through as unsafe, at most.
        """
        from export.calibration import threshold_for_fpr
        from feddetox.sanitize import score_pairs

        setting = self.cfg.guardian_threshold
        if setting == "bundle":
            return {"threshold": self.guardian.threshold, "from": "bundle"}
        if setting != "benign-pairs":
            return {"threshold": float(setting), "from": "config"}
        used = {p.prompt for c in clients for p in c} | {p.prompt for p in self.start_benign_pool()}
        held = scenario.held_out_benign(self.benign, used, 200, seed=self.cfg.seed)
        scores = score_pairs(self.guardian, held)
        threshold = threshold_for_fpr(scores, self.cfg.guardian_fpr)
        _log(
            f"device threshold {threshold:.3f}: {self.cfg.guardian_fpr:.0%} FPR on {len(held)} held-out benign pairs "
            f"(the bundle's is {self.guardian.threshold:.3f})"
        )
        return {"threshold": threshold, "from": "benign-pairs", "pairs": len(held), "target_fpr": self.cfg.guardian_fpr}

    def guardian_on_clients(self, clients: list[list[PreferencePair]], threshold: float) -> dict[str, Any]:
        """How the devices' guardian decides on their own data: recall on the poison, false positives on the rest.

        FedDetox can only be as good as this: a poison pair the guardian misses is trained on as it is.
        """
        import numpy as np

        from feddetox.sanitize import score_pairs

        pairs = [p for c in clients for p in c]
        flagged = score_pairs(self.guardian, pairs) >= threshold
        poison = np.array([scenario.is_poison(p) for p in pairs], dtype=bool)
        n_poison, n_other = int(poison.sum()), int((~poison).sum())
        caught, false = int((flagged & poison).sum()), int((flagged & ~poison).sum())
        _log(f"guardian on the devices' data: {caught} of {n_poison} poison pairs flagged, {false} of {n_other} others")
        return {
            "pairs": len(pairs),
            "poison": n_poison,
            "poison_flagged": caught,
            "benign_flagged": false,
            "poison_recall": round(caught / n_poison, 4) if n_poison else None,
            "benign_fpr": round(false / n_other, 4) if n_other else None,
            "threshold": threshold,
        }

    def federated(self, condition: str, clients: list[list[PreferencePair]], start: dict[str, Any]) -> list[dict]:
        """One federated run: a fresh coordinator, one edge process per client; the global adapter per round."""
        cfg = self.cfg
        folder = self.out / condition
        done = folder / "adapters.json"
        if done.exists():
            return [adapters.from_bytes(bytes.fromhex(h)) for h in json.loads(done.read_text())]
        # an interrupted attempt left a coordinator, devices' state and per-round evaluations that belong to
        # adapters this attempt will not reproduce bit for bit: start the condition afresh
        shutil.rmtree(folder, ignore_errors=True)
        for stale in (self.out / "eval").glob(f"{condition}_round*.json"):
            stale.unlink()
        data_files = []
        for i, pairs in enumerate(clients):
            local = scenario.oracle_clean(pairs) if condition == "benign" else pairs
            path = folder / "data" / f"client{i}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_pairs(path, local)
            data_files.append(path)
        run_config = {
            "name": f"{cfg.name}-{condition}",
            "base_model": _model_id(cfg.base_model),
            "base_model_sha256": self.base_sha,
            "lora": {"r": cfg.lora.r, "alpha": cfg.lora.alpha, "dropout": cfg.lora.dropout,
                     "target_modules": list(cfg.lora.target_modules)},
            "rounds": cfg.rounds,
            "clients_per_round": len(clients),
            "min_clients": len(clients),
            "round_deadline_s": cfg.round_deadline_s,
            "aggregation": {"rule": cfg.aggregation},
            "training": {"beta": cfg.train.beta, "learning_rate": cfg.train.learning_rate,
                         "local_steps": cfg.train.local_steps, "batch_size": cfg.train.batch_size,
                         "max_prompt_tokens": cfg.train.max_prompt_tokens,
                         "max_response_tokens": cfg.train.max_response_tokens, "seed": cfg.seed},
            "guardian_id": self.guardian.bundle_id,
            "guardian_threshold": self.threshold,
            "sanitization_policy": POLICY[condition],
            "selection_seed": cfg.seed,
        }  # fmt: skip
        _log(f"condition {LABELS[condition]}: coordinator + {len(clients)} devices, {cfg.rounds} rounds")
        with Coordinator(folder / "coordinator") as coord:
            self.on_coordinator(coord.url)
            run_id = coord.create_run(run_config, adapters.to_bytes(start))
            devices = [
                Device.start(
                    coord,
                    name=f"{condition}-device{i}",
                    data=path,
                    guardian=self.guardian_dir,
                    state=folder / f"device{i}",
                    model=cfg.base_model,
                    max_rounds=cfg.rounds,
                    threads=cfg.edge_threads,
                )  # fmt: skip
                for i, path in enumerate(data_files)
            ]
            try:
                # evaluate each round's global adapter as soon as it is published (the devices train the next
                # round meanwhile), and record it on the coordinator so that its dashboard charts it
                note = self.round_eval_cfg.name
                coord.post_evaluation(run_id, 0, self.evaluate_round("start", start), note=note)
                blobs = []
                for r in range(1, cfg.rounds + 1):
                    coord.wait_rounds(run_id, r, timeout_s=cfg.round_deadline_s * cfg.rounds, devices=devices)
                    version = next(x["result_version"] for x in coord.rounds(run_id) if x["index"] == r)
                    blobs.append(coord.adapter_bytes(run_id, version))
                    if r in cfg.evaluated_rounds():
                        metrics = self.evaluate_round(f"{condition}_round{r}", adapters.from_bytes(blobs[-1]))
                        coord.post_evaluation(run_id, r, metrics, note=note)
                rounds = coord.rounds(run_id)
                metrics = coord.metrics(run_id)
            finally:
                for device in devices:
                    device.stop()
        _json_dump(folder / "rounds.json", {"run_id": run_id, "rounds": rounds, "metrics": metrics})
        _json_dump(done, [b.hex() for b in blobs])
        return [adapters.from_bytes(b) for b in blobs]

    def centralized(self, clients: list[list[PreferencePair]], start: dict[str, Any]) -> list[dict]:
        """The pooled client data, sanitized on the server, trained with the federated run's optimizer steps."""
        from feddetox.refusals import shipped_templates
        from feddetox.sanitize import sanitize_with

        folder = self.out / "centralized"
        paths = [folder / f"round{r}" for r in range(1, self.cfg.rounds + 1)]
        if all((p / adapters.ADAPTER_WEIGHTS).exists() for p in paths):
            return [adapters.load_peft(p)[0] for p in paths]
        pooled = [p for c in clients for p in c]
        scorer = _server_scorer(self.guardian)
        sanitized = sanitize_with(scorer, pooled, "replace", shipped_templates())
        _json_dump(folder / "sanitization.json", asdict(sanitized.counts))
        t = self.cfg.train
        cfg = self.train_config(
            steps=t.local_steps, batch_size=t.batch_size * len(clients), learning_rate=t.learning_rate
        )
        out, adapter = [], start
        for r, path in enumerate(paths, start=1):
            _log(f"centralized: round {r}/{self.cfg.rounds}")
            result = self.trainer.train(sanitized.pairs, adapter, replace_seed(cfg, self.cfg.seed + r), progress=True)
            adapter = result.adapter
            adapters.save_peft(path, adapter, self.cfg.lora, self.cfg.base_model)
            out.append(adapter)
        return out

    # -- the whole comparison ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.time()
        self.prepare()
        start = self.start_adapter()
        base_metrics = self.evaluate("base", None)
        start_metrics = self.evaluate("start", start)
        clients = self.client_data()
        calibration = self.device_threshold(clients)
        self.threshold = calibration["threshold"]
        guardian_report = self.guardian_on_clients(clients, self.threshold)
        start_curve = self.evaluate_round("start", start)
        per_round: dict[str, list[dict[str, Any]]] = {}
        final: dict[str, dict[str, Any]] = {}
        for condition in self.cfg.conditions:
            if condition == "centralized":
                round_adapters = self.centralized(clients, start)
            else:
                round_adapters = self.federated(condition, clients, start)
            per_round[condition] = [start_curve] + [
                self.evaluate_round(f"{condition}_round{r}", a)
                for r, a in enumerate(round_adapters, start=1)
                if r in self.cfg.evaluated_rounds()
            ]
            final[condition] = (
                self.evaluate(f"{condition}_round{len(round_adapters)}", round_adapters[-1])
                if self.separate_curves
                else per_round[condition][-1]
            )
        result = {
            "config": _config_json(self.cfg),
            "guardian": {
                "bundle_id": self.guardian.bundle_id,
                "threshold": self.guardian.threshold,
                "device_threshold": calibration,
            },
            "clients": [{"pairs": len(c), "poison": sum(scenario.is_poison(p) for p in c)} for c in clients],
            "guardian_on_clients": guardian_report,
            "base": base_metrics,
            "start": start_metrics,
            "per_round": per_round,
            "rounds_evaluated": [0, *self.cfg.evaluated_rounds()],
            "per_round_preset": self.round_eval_cfg.name,
            "table_preset": self.eval_cfg.name,
            "final": final,
            "seconds": round(time.time() - started, 1),
        }
        _json_dump(self.out / "results.json", result)
        return result


def replace_seed(cfg: Any, seed: int) -> Any:
    from dataclasses import replace

    return replace(cfg, seed=seed)


def _config_json(cfg: SimulationConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))


#: the output folder's record of what its results depend on
RUN_CONFIG = "run_config.json"

#: fields that change no result: which conditions this invocation runs (a run may do some now, the rest later),
#: the run's name and how long the coordinator waits for a round
NOT_IN_RESULTS = ("conditions", "name", "round_deadline_s")


def config_differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted paths where two JSON-like configs differ (a table's fields one by one)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += config_differences(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if old == new else [path or "(config)"]


def claim_out_folder(out: Path, cfg: SimulationConfig) -> None:
    """Resume only a run of the same config: finished steps in `out` are reused by their file names alone, so a
    folder left by another config (more rounds, another mix) would mix its results into this run's table.

    The first run writes `run_config.json`; a later one with other settings is refused, naming the fields."""
    mine = {k: v for k, v in _config_json(cfg).items() if k not in NOT_IN_RESULTS}
    record = out / RUN_CONFIG
    if not record.exists():
        _json_dump(record, mine)
        return
    try:
        theirs = json.loads(record.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{record}: not valid JSON ({exc}); remove the folder {out} or pass another --out") from exc
    changed = config_differences(theirs, mine)
    if changed:
        raise ConfigError(
            f"output folder {out} holds a run of another config (differs in {', '.join(changed[:8])}"
            f"{', ...' if len(changed) > 8 else ''}); its finished steps would be reused as if they were this "
            "config's: pass another --out or remove the folder"
        )


GUARDIAN_RECORD = "guardian.json"


def claim_guardian(out: Path, bundle_id: str) -> None:
    """Resume only a run with the same guardian bundle. "build:full" names a preset, not a bundle: a rebuilt
    preset (other build settings, other data) keeps the config as it was while the devices' sanitization and
    every evaluation's guardian-judged ASR change, so the config check alone would reuse the old bundle's steps.

    The bundle id is recorded in `guardian.json`; a folder from before the record is judged by its results.json."""
    record = out / GUARDIAN_RECORD
    theirs = None
    readers = ((record, lambda d: d["bundle_id"]), (out / "results.json", lambda d: d["guardian"]["bundle_id"]))
    for path, read in readers:
        if path.exists():
            try:
                theirs = read(json.loads(path.read_text()))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}: no guardian bundle id in it ({exc}); pass another --out") from exc
            break
    if theirs is not None and theirs != bundle_id:
        raise ConfigError(
            f"output folder {out} holds a run with guardian bundle {theirs}, this config's guardian is {bundle_id}; "
            "its finished steps would be reused as if they were this guardian's: pass another --out or remove the "
            "folder"
        )
    _json_dump(record, {"bundle_id": bundle_id})


def _model_id(name_or_path: str) -> str:
    """What the coordinator calls the base model: a registry name or hub id as it is, a local folder by its name.

    Devices get the weights themselves (`--model`); the run's base_model_sha256 makes sure they hold the same.
    """
    if "/" in name_or_path and Path(name_or_path).expanduser().exists():
        return re.sub(r"[^A-Za-z0-9._-]", "-", Path(name_or_path).name) or "local-model"
    return name_or_path


def _ensure_guardian(spec: str, out: Path) -> Path:
    """A bundle folder as it is, or "build:PRESET": the cached bundle of that preset, built if missing."""
    if not spec.startswith("build:"):
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ConfigError(f"field 'guardian': bundle folder {path} does not exist")
        return path
    from export.presets import GUARDIAN_PRESETS, ensure_preset_bundle

    preset = spec.split(":", 1)[1]
    if preset not in GUARDIAN_PRESETS:
        raise ConfigError(f"field 'guardian': unknown preset {preset!r}; known: {', '.join(GUARDIAN_PRESETS)}")
    return ensure_preset_bundle(preset, log=_log)


def _server_scorer(guardian: Any) -> Any:
    """What sanitizes the pooled data on the server: the guardian's teacher if it is cached, else the student."""
    try:
        from feddetox.guardian.teacher import load_default_teacher

        teacher = load_default_teacher()
    except Exception:  # no cached teacher: the server uses the same student the devices use
        return guardian
    return _TeacherScorer(teacher, guardian.threshold)


class _TeacherScorer:
    def __init__(self, teacher: Any, threshold: float) -> None:
        self.teacher, self.threshold = teacher, threshold

    def score(self, conversations: list[Conversation]) -> Any:
        return self.teacher.score(conversations)
