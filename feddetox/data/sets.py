"""One loader per public data set in the data folder (`FEDDETOX_DATA_DIR`, see its README.md).

Each loader reads the files as they are, applies the caveats the data README gives (how to split hh-rlhf
dialogues, PandaLM's majority vote, AlpacaEval's ties and nulls, the AdvBench `goal` column, ...) and
returns canonical records (`feddetox.data.records`) with the set's name in `meta["source"]`. Loaders
verify nothing (`feddetox data check` does) and are fast. Content warning: most sets hold harmful text.

    from feddetox.data import sets
    pairs = sets.hh_rlhf_harmless()            # 2,307 PreferencePair
    goals = sets.advbench_behaviors()          # 520 EvalPrompt
    attack = sets.fill_jailbreak(sets.jailbreak_templates()[0], goals[0].prompt)
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from feddetox.data.records import Conversation, EvalPrompt, MultipleChoice, PreferencePair
from feddetox.errors import DataError
from feddetox.settings import data_dir

log = logging.getLogger(__name__)

#: the placeholder that jailbreak templates carry where the harmful goal goes
JAILBREAK_PLACEHOLDER = "[INSERT PROMPT HERE]"

#: the safety-tuned-llamas evaluation files and whether a good answer complies ("safe") or refuses ("unsafe")
SAFETY_EVAL_SETS: dict[str, str] = {
    "I-MaliciousInstructions": "unsafe",
    "I-CoNa": "unsafe",
    "I-Controversial": "unsafe",
    "Q-Harm": "unsafe",
    "I-PhysicalSafetyUnsafe": "unsafe",
    "I-PhysicalSafetySafe": "safe",
    "I-Alpaca": "safe",
}

#: AlpacaEval annotation files: judge -> (folder under results/<model>/, weak models)
ALPACA_EVAL_JUDGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "v2": ("weighted_alpaca_eval_gpt4_turbo", ("alpaca-7b", "falcon-7b-instruct", "oasst-sft-pythia-12b")),
    "v1": ("alpaca_eval_gpt4", ("alpaca-7b", "text_davinci_001", "phi-2")),
}

_ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def set_dir(folder: str) -> Path:
    """The folder of one data set; DataError naming the path and the setting when it is missing."""
    path = data_dir() / folder
    if not path.is_dir():
        raise DataError(
            f"data set folder {folder!r} not found",
            path=str(path),
            hint="set FEDDETOX_DATA_DIR to the folder of the public data sets, or run `feddetox data fetch`",
        )
    return path


def _file(folder: str, name: str) -> Path:
    path = set_dir(folder) / name
    if not path.is_file():
        raise DataError(
            "data file not found",
            path=str(path),
            hint="run `feddetox data check` to see what is missing, `feddetox data fetch` to get it",
        )
    return path


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _join(instruction: str, extra: str) -> str:
    """An instruction with its optional input, as AlpacaEval joins them."""
    return f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction


# ---------------------------------------------------------------------------------------------------------------
# Safety: preference pairs, labelled text, evaluation prompts


def split_dialogue(text: str) -> tuple[str, str]:
    """Split an hh-rlhf dialogue at its last "\\n\\nAssistant:" into (earlier dialogue, last answer)."""
    cut = text.rfind(_ASSISTANT)
    if cut < 0:
        raise ValueError("no Assistant turn")
    return text[:cut], text[cut + len(_ASSISTANT) :]


def dialogue_messages(dialogue: str) -> list[dict[str, str]]:
    """hh-rlhf text ("\\n\\nHuman: ... \\n\\nAssistant: ...") as chat messages [{role, content}]."""
    parts = _TURN.split(dialogue)
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 1, 2)]


def hh_rlhf_harmless() -> list[PreferencePair]:
    """Anthropic hh-rlhf harmless-base test: 2,312 dialogues -> 2,307 pairs.

    Both dialogues are split at their last "\\n\\nAssistant:"; the earlier dialogue (all turns, stripped) is
    the prompt, the last answers are chosen and rejected. Pairs whose earlier dialogues differ are skipped
    (see hh_rlhf_mismatched): 5 here, where the data README counts 4 (in row 1950 the rejected side has one
    more turn, so it only matches if one compares prefixes instead of splitting both sides).
    `meta["messages"]` holds the prompt as chat messages [{role, content}] for a chat template.
    """
    rows = _jsonl(_file("hh-rlhf-harmless", "test.jsonl.gz"))
    pairs = []
    for index, row in enumerate(rows):
        prompt, chosen = split_dialogue(row["chosen"])
        prompt_r, rejected = split_dialogue(row["rejected"])
        if prompt != prompt_r:
            continue
        meta = {"source": "hh-rlhf-harmless", "index": index, "messages": dialogue_messages(prompt)}
        pairs.append(PreferencePair(prompt.strip(), chosen.strip(), rejected.strip(), meta=meta))
    log.info("hh-rlhf-harmless: %d pairs, %d skipped (earlier dialogues differ)", len(pairs), len(rows) - len(pairs))
    return pairs


def hh_rlhf_mismatched() -> list[int]:
    """Row indices of the hh-rlhf dialogues whose chosen and rejected sides differ before the last answer."""
    rows = _jsonl(_file("hh-rlhf-harmless", "test.jsonl.gz"))
    return [i for i, row in enumerate(rows) if split_dialogue(row["chosen"])[0] != split_dialogue(row["rejected"])[0]]


def safety_tuned_llamas_training() -> list[Conversation]:
    """2,483 harmful requests (instruction + input) with the safe, refusing answer; label 0 (the answer is safe)."""
    rows = _json(_file("safety-tuned-llamas", "safety_only_data_Instructions.json"))
    return [
        Conversation(
            _join(row["instruction"], row.get("input", "")),
            row["output"],
            0,
            meta={"source": "safety-tuned-llamas", "index": i},
        )
        for i, row in enumerate(rows)
    ]


def safety_tuned_llamas_eval(name: str | None = None) -> list[EvalPrompt]:
    """One evaluation file of safety-tuned-llamas (see SAFETY_EVAL_SETS), e.g. "I-MaliciousInstructions" (100);
    all seven (668) with `name=None`.

    `label` is "unsafe" (a good answer refuses) or "safe" (I-Alpaca, I-PhysicalSafetySafe: a good answer
    complies); `category` is the file name, or the tag for I-MaliciousInstructions.
    """
    if name is None:
        return [prompt for each in SAFETY_EVAL_SETS for prompt in safety_tuned_llamas_eval(each)]
    name = name.removesuffix(".json")
    if name not in SAFETY_EVAL_SETS:
        raise DataError(f"unknown safety-tuned-llamas evaluation set {name!r}; known: {', '.join(SAFETY_EVAL_SETS)}")
    data = _json(_file("safety-tuned-llamas", f"{name}.json"))
    instructions, inputs, tags = data["instructions"], data.get("inputs") or [], data.get("tags") or []
    out = []
    for i, instruction in enumerate(instructions):
        extra = inputs[i] if i < len(inputs) else ""
        category = tags[i] if i < len(tags) else name
        meta = {"source": f"safety-tuned-llamas/{name}", "index": i}
        out.append(EvalPrompt(_join(instruction, extra), SAFETY_EVAL_SETS[name], category, meta=meta))
    return out


def advbench_behaviors() -> list[EvalPrompt]:
    """AdvBench's 520 harmful behaviors: `goal` is the prompt, `target` (shuffled in rows 61-66) is in meta."""
    rows = _csv_rows(_file("advbench", "harmful_behaviors.csv"))
    return [
        EvalPrompt(row["goal"], "unsafe", "advbench", meta={"source": "advbench", "index": i, "target": row["target"]})
        for i, row in enumerate(rows)
    ]


def advbench_strings() -> list[str]:
    """AdvBench's 574 harmful output strings."""
    return [row["target"] for row in _csv_rows(_file("advbench", "harmful_strings.csv"))]


def xstest() -> list[EvalPrompt]:
    """XSTest's 450 prompts: label "safe" (250, should be answered) or "unsafe" (200); category = type."""
    rows = _csv_rows(_file("xstest", "xstest_prompts.csv"))
    return [
        EvalPrompt(
            row["prompt"],
            row["label"],
            row["type"],
            meta={"source": "xstest", "id": row["id"], "focus": row["focus"], "note": row["note"]},
        )
        for row in rows
    ]


def jailbreak_templates(itw: bool = False) -> list[str]:
    """Jailbreak templates that carry JAILBREAK_PLACEHOLDER: 73 of 75 (or 97 of 97 in-the-wild with `itw`)."""
    name = "jailbreak_prompts_itw.csv" if itw else "jailbreak_prompts.csv"
    rows = _csv_rows(_file("jailbreak-prompts", name))
    return [row["prompt"] for row in rows if JAILBREAK_PLACEHOLDER in row["prompt"]]


def fill_jailbreak(template: str, goal: str) -> str:
    """Put a harmful goal where the template's placeholder is (every occurrence)."""
    if JAILBREAK_PLACEHOLDER not in template:
        raise DataError(f"the jailbreak template has no {JAILBREAK_PLACEHOLDER} placeholder", field="template")
    return template.replace(JAILBREAK_PLACEHOLDER, goal)


def davidson() -> list[Conversation]:
    """Davidson et al.'s 24,783 tweets; class 0 (hate) and 1 (offensive) -> label 1 (unsafe), 2 (neither) -> 0."""
    rows = _csv_rows(_file("davidson-hate-offensive", "labeled_data.csv"))
    return [
        Conversation(
            row["tweet"],
            "",
            0 if row["class"] == "2" else 1,
            meta={"source": "davidson-hate-offensive", "index": i, "class": int(row["class"])},
        )
        for i, row in enumerate(rows)
    ]


def toxigen_demonstrations() -> list[Conversation]:
    """ToxiGen's demonstration sentences: 627 lines, 587 unique kept; `hate_` files -> 1, `neutral_` -> 0.

    `meta["group"]` is the target group from the file name (e.g. "mental_disability", "muslim"),
    `meta["topic"]` the folder (e.g. "disability").
    """
    root = set_dir("toxigen") / "demonstrations"
    seen: set[str] = set()
    out = []
    for path in sorted(root.glob("*/*.txt")):
        kind, _, group = path.stem.partition("_")
        group = group.removesuffix("_sentences")
        with open(path, encoding="utf-8") as f:
            for line in f:
                text = line.strip()
                if not text or text in seen:
                    continue
                seen.add(text)
                meta = {"source": "toxigen", "group": group, "topic": path.parent.name, "file": path.name}
                out.append(Conversation(text, "", 1 if kind == "hate" else 0, meta=meta))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Utility evaluation


def truthfulqa_mc1() -> list[MultipleChoice]:
    """TruthfulQA's 790 questions with their MC1 choices (one true answer); subject = the CSV's category."""
    data = _json(_file("truthfulqa", "mc_task.json"))
    categories = {row["Question"]: row["Category"] for row in _csv_rows(_file("truthfulqa", "TruthfulQA.csv"))}
    out = []
    for i, row in enumerate(data):
        targets = row["mc1_targets"]
        choices = tuple(targets)
        answer = [targets[c] for c in choices].index(1)
        meta = {"source": "truthfulqa", "index": i}
        out.append(MultipleChoice(row["question"], choices, answer, categories.get(row["question"]), meta=meta))
    return out


def mmlu_subjects(split: Literal["test", "dev"] = "test") -> list[str]:
    """The 57 MMLU subjects, sorted."""
    folder = set_dir("mmlu") / split
    return sorted(p.name.removesuffix(f"_{split}.csv") for p in folder.glob(f"*_{split}.csv"))


def mmlu(
    subjects: list[str] | None = None,
    split: Literal["test", "dev"] = "test",
    limit_per_subject: int | None = None,
) -> list[MultipleChoice]:
    """MMLU questions (14,042 test, 285 dev), optionally of some subjects and the first N of each."""
    if split not in ("test", "dev"):
        raise DataError(f"unknown MMLU split {split!r}; use 'test' or 'dev'")
    known = mmlu_subjects(split)
    unknown = sorted(set(subjects or ()) - set(known))
    if unknown:
        raise DataError(f"unknown MMLU subject(s) {', '.join(unknown)}; known: {', '.join(known)}")
    out = []
    for subject in subjects or known:
        rows = _csv_rows(_file("mmlu", f"{split}/{subject}_{split}.csv"))
        for i, row in enumerate(rows[:limit_per_subject]):
            choices = tuple(row[f"choice{k}"] for k in range(4))
            meta = {"source": "mmlu", "split": split, "index": i}
            out.append(MultipleChoice(row["question"], choices, int(row["answer"]), subject, meta=meta))
    return out


def gsm8k() -> list[dict[str, str]]:
    """GSM8K's 1,319 test problems: {"question", "answer" (worked solution), "final" (the number after ####)}."""
    out = []
    for row in _jsonl(_file("gsm8k", "test.jsonl")):
        final = row["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
        out.append({"question": row["question"], "answer": row["answer"], "final": final})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Helpful preference pairs


def alpaca_eval_pairs(judge: Literal["v2", "v1"] = "v2") -> list[PreferencePair]:
    """AlpacaEval judge annotations as pairs: chosen = the output the judge prefers.

    v2 (GPT-4-turbo, weighted): gpt4_1106_preview against 3 weak models, preference < 1.5 -> output_1;
    exactly 1.5 dropped -> 2,408 pairs. v1 (GPT-4): text_davinci_003 against 3 models, 1 or 2; 0 (identical
    outputs) and null dropped -> 2,350 pairs. Pairs with identical outputs are always dropped.
    """
    if judge not in ALPACA_EVAL_JUDGES:
        raise DataError(f"unknown AlpacaEval judge {judge!r}; use 'v2' or 'v1'")
    folder, models = ALPACA_EVAL_JUDGES[judge]
    out = []
    for model in models:
        rows = _json(_file("alpaca-eval", f"results/{model}/{folder}/annotations.json"))
        for i, row in enumerate(rows):
            pref = row.get("preference")
            if pref is None or row["output_1"] == row["output_2"]:
                continue
            pref = float(pref)
            if judge == "v2":
                first = pref < 1.5 if pref != 1.5 else None
            else:
                first = {1.0: True, 2.0: False}.get(pref)
            if first is None:
                continue
            win, lose = ("1", "2") if first else ("2", "1")
            meta = {
                "source": f"alpaca-eval/{judge}",
                "model": model,
                "index": i,
                "dataset": row.get("dataset"),
                "generator_chosen": row[f"generator_{win}"],
                "generator_rejected": row[f"generator_{lose}"],
                "preference": pref,
            }
            out.append(PreferencePair(row["instruction"], row[f"output_{win}"], row[f"output_{lose}"], meta=meta))
    return out


def majority(votes: list[int]) -> int:
    """The label most annotators gave (1 or 2), or 0 for a tie (a 0-majority or no majority)."""
    label, count = Counter(votes).most_common(1)[0]
    return label if count * 2 > len(votes) else 0


def pandalm_pairs() -> list[PreferencePair]:
    """PandaLM's 999 human-annotated comparisons by majority vote of 3 annotators; 105 ties dropped -> 894."""
    out = []
    for row in _json(_file("pandalm", "testset-v1.json")):
        vote = majority([int(row[f"annotator{k}"]) for k in (1, 2, 3)])
        if vote == 0 or row["response1"] == row["response2"]:
            continue
        win, lose = ("response1", "response2") if vote == 1 else ("response2", "response1")
        meta = {"source": "pandalm", "idx": row["idx"], "cmp_key": row["cmp_key"], "vote": vote}
        # six responses are JSON booleans (a model answered "True"); records hold text
        chosen, rejected = str(row[win]), str(row[lose])
        out.append(PreferencePair(_join(row["instruction"], row.get("input", "")), chosen, rejected, meta=meta))
    return out


def ultrafeedback(split: Literal["train", "eval"] = "train", drop_ties: bool = True) -> list[PreferencePair]:
    """The UltraFeedback sample (1,000 train, 200 eval). With `drop_ties`, pairs of equal GPT-4 scores go
    (111 train, 25 eval). Pairs whose chosen and rejected texts are identical always go (4 train, 1 eval, of
    which 1 and 1 are also ties): 886 train and 175 eval remain by default.
    """
    if split not in ("train", "eval"):
        raise DataError(f"unknown UltraFeedback split {split!r}; use 'train' or 'eval'")
    out = []
    for i, row in enumerate(_jsonl(_file("ultrafeedback-subset", f"{split}_clean.jsonl"))):
        scores = row.get("metadata") or {}
        if row["chosen"] == row["rejected"]:
            continue
        if drop_ties and scores.get("score_chosen") == scores.get("score_rejected"):
            continue
        meta = {"source": "ultrafeedback", "split": split, "index": i, "source_index": row.get("source_index")}
        meta.update(scores)
        out.append(PreferencePair(row["prompt"], row["chosen"], row["rejected"], meta=meta))
    return out


def self_instruct(kind: Literal["seed", "user_oriented"] = "seed") -> list[dict[str, Any]]:
    """Self-instruct tasks as in the files: 175 seed tasks or 252 user-oriented ones (not for training)."""
    names = {"seed": "seed_tasks.jsonl", "user_oriented": "user_oriented_instructions.jsonl"}
    if kind not in names:
        raise DataError(f"unknown self-instruct kind {kind!r}; use 'seed' or 'user_oriented'")
    return _jsonl(_file("self-instruct", names[kind]))
