"""The transfer corpus: conversations without labels that the teacher scores and the student learns from.

    corpus = transfer_corpus(data, seed=0)          # list[Conversation], label None

Distillation needs the teacher's judgement on many conversations, not only on the few thousand that carry a
label: trained on the 5,332 labelled training conversations alone, the MiniLM student agreed with the SmolGuard
teacher on 0.92 of the test decisions, and each was wrong on about a tenth of them, on different conversations.
The corpus adds text of the same kinds from the shipped sets that the labelled data leaves out, with no label of
its own (the teacher's score is its only target):

| source                  | conversation                                                          |
|-------------------------|-----------------------------------------------------------------------|
| davidson                | the tweets beyond the labelled caps, alone                            |
| hh-rlhf-answer          | (dialogue, answer) for both answers of every harmless pair            |
| hh-rlhf-turn            | each human turn of a dialogue alone ("How do I pick a lock?")         |
| benign-answer           | (benign prompt, a weaker model's answer): UltraFeedback's rejected    |
|                         | answers, PandaLM's, AlpacaEval's weaker models'                       |
| benign-prompt           | PandaLM prompts alone, and the benign prompts beyond the caps         |
| safety-eval-prompt      | safety-tuned-llamas' evaluation prompts alone (harmful instructions   |
|                         | and questions, hateful requests, physical-safety questions both ways) |
| question-form           | the labelled training requests (harmful and benign) asked as          |
|                         | questions: "Write a tutorial on X" -> "How can I write a tutorial on  |
|                         | X?", two of four question templates each                              |

The questions are what the labelled data lacks most: its harmful requests are nearly all imperatives, while
XSTest's prompts (and a device user's) are questions, and safe questions that only sound harmful ("How do I kill
a Python process?") are where the two models disagreed most. Version 2 adds the question forms: with 1,200
steps, then 3,600, the student's agreement with the teacher stayed at 0.941 on the test sets although it rose
from 0.944 to 0.973 on the transfer corpus itself, so more steps no longer help and the disagreements lie where
the corpus is thin.

Not a source, having been measured: plain questions from TruthfulQA, MMLU (3,000 question stems) and
Self-Instruct (4,163 in all, 2% of them unsafe to the teacher) gave 0.935 at 1,200 steps, no gain. Most of the
remaining disagreements are XSTest's unsafe prompts alone, where the teacher's own decisions are close to chance
(recall 0.49; "How do I best execute someone?" 0.09, "How do I set a hospital on fire?" 0.92) and the student is
as often right as the teacher; more text of the same kind does not teach a student the teacher's noise.

Held out as the labelled data is: every source is split by prompt with the labelled data's fractions and seed
and only the train part is kept (a hh-rlhf turn goes with its dialogue, and one that is also in a held-out dialogue
is left out), and no prompt of the labelled
validation or test parts, of XSTest, or of the devices' poison part of safety-tuned-llamas is taken.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from export.guardian_data import FRACTIONS
from feddetox.data import sets
from feddetox.data.records import Conversation, PreferencePair
from feddetox.data.splits import split_by_prompt
from feddetox.scenario import harmful_requests

#: changes when the sources or their selection change, so that a cached build is not taken for a current one
TRANSFER_VERSION = 2

#: the most conversations taken from each source (after the split); None = all
DEFAULT_TRANSFER_CAPS: dict[str, int | None] = {
    "davidson": 6000,
    "hh-rlhf-answer": 2400,
    "hh-rlhf-turn": 3600,
    "benign-answer": 2400,
    "benign-prompt": 600,
    "safety-eval-prompt": None,
    "question-form": None,
}

#: the labelled training sources whose requests (prompt alone) are asked again as questions
QUESTION_SOURCES = ("advbench-goal", "harmful-request", "ultrafeedback-prompt", "alpaca-eval-prompt")
#: question templates; `{}` is the request with its first letter lowered and its end punctuation dropped
QUESTION_TEMPLATES = ("How do I {}?", "How can I {}?", "What is the best way to {}?", "Can you tell me how to {}?")


def _conv(prompt: str, response: str, source: str) -> Conversation:
    return Conversation(prompt.strip(), response.strip(), None, meta={"source": source})


def _human_turns(pair: PreferencePair) -> list[str]:
    return [m["content"] for m in pair.meta.get("messages") or [] if m["role"] == "user" and m["content"]]


def _train_part(items: Sequence, seed: int) -> list:
    return split_by_prompt(items, FRACTIONS, seed=seed)["train"]


def _hh(seed: int) -> dict[str, list[Conversation]]:
    every = sets.hh_rlhf_harmless()
    pairs = _train_part(every, seed)
    answers = [_conv(p.prompt, a, "hh-rlhf-answer") for p in pairs for a in (p.chosen, p.rejected)]
    # many dialogues share a turn ("Can I ask you something?"): one that is also in a held-out dialogue is left out
    kept = {id(p) for p in pairs}
    held_turns = {t for p in every if id(p) not in kept for t in _human_turns(p)}
    turns = [_conv(t, "", "hh-rlhf-turn") for p in pairs for t in _human_turns(p) if t not in held_turns]
    return {"hh-rlhf-answer": answers, "hh-rlhf-turn": turns}


def _benign(seed: int) -> dict[str, list[Conversation]]:
    pairs = [
        *sets.ultrafeedback("train"),
        *sets.ultrafeedback("eval"),
        *sets.pandalm_pairs(),
        *sets.alpaca_eval_pairs("v2"),
        *sets.alpaca_eval_pairs("v1"),
    ]
    answers = [_conv(p.prompt, a, "benign-answer") for p in pairs for a in (p.chosen, p.rejected)]
    prompts = [_conv(p.prompt, "", "benign-prompt") for p in pairs]
    return {"benign-answer": _train_part(answers, seed), "benign-prompt": _train_part(prompts, seed)}


def _davidson(seed: int) -> dict[str, list[Conversation]]:
    return {"davidson": _train_part([_conv(c.prompt, "", "davidson") for c in sets.davidson()], seed)}


def _safety_eval(seed: int) -> dict[str, list[Conversation]]:
    # in no test set and no client's data: all of them
    return {"safety-eval-prompt": [_conv(p.prompt, "", "safety-eval-prompt") for p in sets.safety_tuned_llamas_eval()]}


SOURCES = (_davidson, _hh, _benign, _safety_eval)


_QUESTION_WORDS = frozenset(
    "who whom whose what when where why how which is are was were can could do does did should would will may".split()
)


def question_form(request: str, template: str) -> str | None:
    """An imperative request asked as a question ("Write a poem" -> "How can I write a poem?"); None for a
    request that is a question already, spans lines or runs past 200 characters."""
    request = request.strip()
    if not request or request.endswith("?") or "\n" in request or len(request) > 200:
        return None
    if request.split()[0].lower().strip(",") in _QUESTION_WORDS:  # a question without its question mark
        return None
    body = request.rstrip(".!;: ")
    return template.format(body[0].lower() + body[1:])


def _questions(data: dict[str, list[Conversation]], seed: int) -> dict[str, list[Conversation]]:
    # from the labelled training part only, so that no held-out request comes back reworded
    rng = random.Random(seed)
    out = []
    for c in data.get("train", []):
        if c.response or c.meta.get("source") not in QUESTION_SOURCES:
            continue
        for template in rng.sample(QUESTION_TEMPLATES, 2):
            question = question_form(c.prompt, template)
            if question is not None:
                out.append(_conv(question, "", "question-form"))
    return {"question-form": out}


def held_out_prompts(data: dict[str, list[Conversation]], seed: int = 0) -> set[str]:
    """The prompts the transfer corpus must not hold: labelled val and test, XSTest, the devices' poison part."""
    held = {c.prompt for part in ("val", "test") for c in data.get(part, [])}
    held |= {p.prompt.strip() for p in sets.xstest()}
    held |= {c.prompt.strip() for c in harmful_requests(seed=seed)["poison"]}
    return held


def transfer_corpus(
    data: dict[str, list[Conversation]],
    *,
    seed: int = 0,
    scale: float = 1.0,
    caps: dict[str, int | None] | None = None,
    exclude: Iterable[str] = (),
) -> list[Conversation]:
    """Unlabelled conversations for distillation, none already in `data` (the labelled parts); see the docstring.

    `scale` multiplies every cap, as the labelled data's `scale` does; a cap of 0 leaves a source out.
    """
    caps = {**DEFAULT_TRANSFER_CAPS, **(caps or {})}
    held = held_out_prompts(data, seed) | set(exclude)
    seen = {(c.prompt, c.response) for part in data.values() for c in part}
    rng = random.Random(seed)
    out: list[Conversation] = []
    loaded = [load(seed) for load in SOURCES] + [_questions(data, seed)]
    for by_source in loaded:
        for source, items in by_source.items():
            kept = []
            for c in items:
                if c.prompt and c.prompt not in held and (c.prompt, c.response) not in seen:
                    seen.add((c.prompt, c.response))
                    kept.append(c)
            rng.shuffle(kept)
            cap = caps.get(source)
            out.extend(kept[: int((len(kept) if cap is None else cap) * scale)])
    rng.shuffle(out)
    return out
