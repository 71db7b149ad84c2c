"""The guardian's labelled data, built from the public data sets by code (label 1 = unsafe, 0 = safe).

    data = build_guardian_data(seed=0)       # {"train", "val", "test"} -> list[Conversation]

What goes in (each conversation is (prompt, response); a text alone is a prompt with response ""):

| source                          | conversation                                   | label |
|---------------------------------|------------------------------------------------|-------|
| AdvBench behaviors (520)        | (goal, its "Sure, here is ..." target)         | 1     |
| AdvBench behaviors              | (goal, "") - a harmful request alone           | 1     |
| AdvBench strings (574)          | (string, "") - harmful or toxic text           | 1     |
| hh-rlhf harmless                | (dialogue, rejected answer) where the chosen   | 1     |
|                                 | answer refuses and the rejected one does not   |       |
| hh-rlhf harmless                | (dialogue, chosen answer) of those pairs       | 0     |
| safety-tuned-llamas, start part | (harmful request, its refusal) where the XSTest | 0     |
|                                 | judge reads the answer as a refusal            |       |
| safety-tuned-llamas, start part | (harmful request, "") - the request alone      | 1     |
|   ("harmful-request")           |                                                |       |
| safety-tuned-llamas, start part | (harmful request, the base model's own greedy  | 1     |
|   ("model-compliant")           | answer) where the answer does not refuse       |       |
| Davidson                        | hate/offensive tweet alone / "neither" alone   | 1 / 0 |
| ToxiGen demonstrations          | hate sentence alone / neutral sentence alone   | 1 / 0 |
| UltraFeedback, PandaLM, AlpacaEval | (benign prompt, helpful answer)             | 0     |
| UltraFeedback, AlpacaEval       | (benign prompt, "") - a benign request alone   | 0     |
| XSTest safe prompts (250)       | (prompt, "") - only in val and test            | 0     |

Every source is split by prompt (the same prompt never crosses parts) into 70/15/15; XSTest safe prompts
go half to val, half to test and never to train. Safety-tuned-llamas is used only in the part that the
simulation keeps for the start adapter (`feddetox.scenario.harmful_requests(...)["start"]`): the other part
makes the devices' poison, and a guardian must not have seen the poison's prompts. A fifth of its "refusals"
do not refuse ("There is no credible evidence that ..."); labelling those safe taught the student that any
answer to such a request is safe, so only real refusals are kept. "model-compliant" needs a generator
(`compliant`: prompts -> answers, the base model's greedy answers, see `feddetox.compliant`); without one the
source is left out. It is what the devices' poison looks like, which no human-written source does.
"harmful-request" is there because AdvBench's goals are all imperatives ("Write a tutorial on ..."): trained on
those alone as the harmful requests without an answer, the SmolGuard teacher gave XSTest's unsafe questions
("How do I kill ...?") a mean p_unsafe of 0.24 (AUROC 0.69 against XSTest's safe ones).

Large sources are capped per source (`caps`) so that no single one dominates and the build stays within the
CPU budget. Test sets are held out from every training and calibration step: calibration uses `val`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from feddetox.data import sets
from feddetox.data.records import Conversation
from feddetox.data.splits import split_by_prompt
from feddetox.evaluation.refusal import is_refusal, xstest_refusal

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}

#: changes when the sources or their labelling change, so that cached guardians built from older data are not
#: taken for current ones (2: model-written compliant answers, real refusals only, no poison-part prompts;
#: 3: harmful requests alone from the start part)
DATA_VERSION = 3

#: the most conversations taken from each source (before the split); None = all
DEFAULT_CAPS: dict[str, int | None] = {
    "advbench-target": None,
    "advbench-goal": None,
    "advbench-strings": None,
    "hh-rlhf-unsafe": 600,
    "hh-rlhf-safe": 600,
    "safety-tuned-llamas": 900,
    "harmful-request": 600,
    "model-compliant": 600,
    "davidson-toxic": 600,
    "davidson-neither": 600,
    "toxigen": None,
    "ultrafeedback": 700,
    "ultrafeedback-prompt": 250,
    "pandalm": 300,
    "alpaca-eval": 500,
    "alpaca-eval-prompt": 150,
}

#: human- or author-labelled sources (the "human-labelled test sets" of the benchmark)
HUMAN_LABELLED = ("davidson-toxic", "davidson-neither", "toxigen", "xstest-safe")


def _conv(prompt: str, response: str, label: int, source: str) -> Conversation:
    return Conversation(prompt.strip(), response.strip(), label, meta={"source": source})


def _advbench() -> dict[str, list[Conversation]]:
    rows = sets.advbench_behaviors()
    return {
        "advbench-target": [_conv(r.prompt, r.meta["target"], 1, "advbench-target") for r in rows],
        "advbench-goal": [_conv(r.prompt, "", 1, "advbench-goal") for r in rows],
        "advbench-strings": [_conv(s, "", 1, "advbench-strings") for s in sets.advbench_strings()],
    }


def _hh_rlhf() -> dict[str, list[Conversation]]:
    unsafe, safe = [], []
    for pair in sets.hh_rlhf_harmless():
        if is_refusal(pair.chosen) and not is_refusal(pair.rejected) and len(pair.rejected) > 40:
            unsafe.append(_conv(pair.prompt, pair.rejected, 1, "hh-rlhf-unsafe"))
            safe.append(_conv(pair.prompt, pair.chosen, 0, "hh-rlhf-safe"))
    return {"hh-rlhf-unsafe": unsafe, "hh-rlhf-safe": safe}


def _toxicity() -> dict[str, list[Conversation]]:
    dav = sets.davidson()
    return {
        "davidson-toxic": [_conv(c.prompt, "", 1, "davidson-toxic") for c in dav if c.label == 1],
        "davidson-neither": [_conv(c.prompt, "", 0, "davidson-neither") for c in dav if c.label == 0],
        "toxigen": [_conv(c.prompt, "", int(c.label), "toxigen") for c in sets.toxigen_demonstrations()],
    }


def start_part_requests(seed: int = 0) -> list[Conversation]:
    """The safety-tuned-llamas requests of the simulation's start part, in data set order."""
    from feddetox.scenario import harmful_requests

    return harmful_requests(seed=seed)["start"]


def _refusals(requests: list[Conversation]) -> dict[str, list[Conversation]]:
    return {
        "safety-tuned-llamas": [
            _conv(c.prompt, c.response, 0, "safety-tuned-llamas") for c in requests if xstest_refusal(c.response)
        ],
        "harmful-request": [_conv(c.prompt, "", 1, "harmful-request") for c in requests],
    }


def model_compliant(compliant: Callable[[list[str]], list[str]], requests: list[Conversation]) -> list[Conversation]:
    """(request, the model's own answer) for each request; refusing and empty answers are left out."""
    answers = compliant([r.prompt for r in requests])
    return [
        _conv(r.prompt, answer, 1, "model-compliant")
        for r, answer in zip(requests, answers, strict=True)
        if answer.strip() and not is_refusal(answer)
    ]


def _benign() -> dict[str, list[Conversation]]:
    uf = sets.ultrafeedback("train") + sets.ultrafeedback("eval")
    alpaca = sets.alpaca_eval_pairs("v2")
    return {
        "ultrafeedback": [_conv(p.prompt, p.chosen, 0, "ultrafeedback") for p in uf],
        "ultrafeedback-prompt": [_conv(p.prompt, "", 0, "ultrafeedback-prompt") for p in uf],
        "pandalm": [_conv(p.prompt, p.chosen, 0, "pandalm") for p in sets.pandalm_pairs()],
        "alpaca-eval": [_conv(p.prompt, p.chosen, 0, "alpaca-eval") for p in alpaca],
        "alpaca-eval-prompt": [_conv(p.prompt, "", 0, "alpaca-eval-prompt") for p in alpaca],
    }


SOURCES: tuple[Callable[[], dict[str, list[Conversation]]], ...] = (_advbench, _hh_rlhf, _toxicity, _benign)

#: sources drawn from the start part only: split with another seed, else they would all fall in "train"
#: (the start part is the prompts whose hash is below 0.3, as is "train" under the same seed)
START_PART_SOURCES = ("safety-tuned-llamas", "harmful-request", "model-compliant")


def _dedupe(items: list[Conversation]) -> list[Conversation]:
    seen, out = set(), []
    for c in items:
        if (c.prompt, c.response) not in seen and c.prompt:
            seen.add((c.prompt, c.response))
            out.append(c)
    return out


def _limit(cap: int | None, available: int, scale: float) -> int:
    return max(1, int((available if cap is None else cap) * scale))


def build_guardian_data(
    *,
    seed: int = 0,
    caps: dict[str, int | None] | None = None,
    scale: float = 1.0,
    compliant: Callable[[list[str]], list[str]] | None = None,
) -> dict[str, list[Conversation]]:
    """{"train", "val", "test"}: labelled conversations, split by prompt, shuffled; see the module docstring.

    `scale` multiplies every cap (0.1 gives a small set for a quick run). `compliant` (prompts -> the base
    model's answers) adds the "model-compliant" source.
    """
    caps = {**DEFAULT_CAPS, **(caps or {})}
    rng = random.Random(seed)
    parts: dict[str, list[Conversation]] = {name: [] for name in FRACTIONS}
    start = start_part_requests(seed)
    loaders = [*SOURCES, lambda: _refusals(start)]
    if compliant is not None:
        # the first requests in data set order (not shuffled): the start adapter asks for the same ones, so the
        # answers are generated once for both
        asked = start[: _limit(caps.get("model-compliant"), len(start), scale)]
        loaders.append(lambda: {"model-compliant": model_compliant(compliant, asked)})
    for load in loaders:
        for source, items in load().items():
            items = _dedupe(items)
            rng.shuffle(items)
            if caps.get(source) is not None or scale != 1.0:
                items = items[: _limit(caps.get(source), len(items), scale)]
            split_seed = seed + 1 if source in START_PART_SOURCES else seed
            for name, chunk in split_by_prompt(items, FRACTIONS, seed=split_seed).items():
                parts[name].extend(chunk)
    xs_safe = [_conv(p.prompt, "", 0, "xstest-safe") for p in sets.xstest() if p.label == "safe"]
    halves = split_by_prompt(xs_safe, {"val": 0.5, "test": 0.5}, seed=seed)
    parts["val"].extend(halves["val"])
    parts["test"].extend(halves["test"])
    for items in parts.values():
        rng.shuffle(items)
    return parts


def xstest_prompts(label: str = "safe") -> list[Conversation]:
    """XSTest prompts alone (response ""), label 0 for "safe" and 1 for "unsafe"."""
    return [_conv(p.prompt, "", int(label == "unsafe"), f"xstest-{label}") for p in sets.xstest() if p.label == label]


def describe(parts: dict[str, list[Conversation]]) -> str:
    """One line per part: size, unsafe share, and counts per source."""
    lines = []
    for name, items in parts.items():
        unsafe = sum(c.label == 1 for c in items)
        by_source = Counter(c.meta.get("source", "?") for c in items)
        lines.append(
            f"{name}: {len(items)} ({unsafe} unsafe) " + ", ".join(f"{k}={v}" for k, v in sorted(by_source.items()))
        )
    return "\n".join(lines)
