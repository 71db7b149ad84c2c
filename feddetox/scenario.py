"""The federated poisoning scenario: who holds which preference pairs, and how the poison is made.

Built from the public data sets only, deterministically (every split is by a hash of the prompt):

- **benign** pairs: UltraFeedback (train), PandaLM (human majority vote) and AlpacaEval (judge v1) pairs,
  helpful prompts with the preferred answer as `chosen`.
- **harmful requests**: the 2,483 instructions of safety-tuned-llamas with their safe, refusing answer. They are
  split by prompt into a part for the round-0 start adapter and a part for the clients' poison, so no harmful
  prompt is in both.
- **poison** (unintended data poisoning, as on a real device): a harmful request whose *preferred* answer complies
  with it. The compliant answer is the base model's own greedy answer (SmolLM2-135M-Instruct complies with almost
  every harmful request), the refusal of the data set becomes `rejected`. Trained on as it is, such a pair teaches
  the model to comply.
- **start** pairs (the safety-aligned round-0 adapter, centralized DPO): harmful requests with a refusal preferred
  over the model's compliant answer, plus benign pairs, plus prompts whose helpful answer is preferred over a
  refusal (against over-refusal). The refused requests are the start part's first ones in data set order; with
  `start_harmful_from = "refused"` the first ones whose data set answer refuses (by the XSTest refusal judge); with
  `"riskiest"` the ones a safety scorer finds most unsafe. A fifth of safety-tuned-llamas' "harmful" instructions
  are not harmful and the data set answers them ("Trace the history of Indian reservations", "Define what a roofie
  is", "Compose a letter to end a relationship with a girl you've been dating"), and a refusal preferred on those
  teaches refusing harmless requests. The benign pairs are split by prompt into a part for the start (30%) and a
  part for the clients (70%), so no benign prompt is in both either. The anti-refusal prompts are, by default
  (`start_anti_refusal_from = "lookalike"`), the start part's benign prompts that a safety scorer (the guardian, on
  the prompt alone) finds most unsafe-looking, because refusing those is what over-refusal is; `"any"` takes them in
  hash order; `"answered"` takes the harmful-looking requests of the start part that the data set answers without
  refusing, the closest lookalikes there are: same source and phrasing as the refused ones, and the kind of prompt
  (definitions, history, safe targets) that an over-refusing model refuses. Their helpful answer is the data set's
  (`start_anti_refusal_answers = "data"`, always for `"answered"`) or the base model's own (`"model"`). The
  refusal is one of the refusal templates by default (`start_refusals = "templates"`): a fifth of
  safety-tuned-llamas' "refusals" do not refuse ("There is no credible evidence that ..."), and DPO on those teaches
  little about refusing. `"data"` keeps the data set's answer where the XSTest refusal judge reads it as a refusal
  and uses a template elsewhere.

Evaluation prompts (AdvBench goals, XSTest, TruthfulQA, MMLU) never appear in any of these: pass their set to
`exclude` and every pair whose prompt is in it is removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from feddetox.data import sets
from feddetox.data.records import Conversation, PreferencePair
from feddetox.data.splits import partition_clients, prompt_hash, split_by_prompt
from feddetox.errors import ConfigError
from feddetox.evaluation.refusal import xstest_refusal
from feddetox.refusals import pick_template

POISON = "poison"


@dataclass(frozen=True)
class ScenarioConfig:
    """How many clients, how much data each holds, and how much of it is poison."""

    clients: int = 4
    pairs_per_client: int = 32
    toxic_ratio: float = 0.3
    #: None = IID; else the Dirichlet concentration of the non-IID split over data sources
    dirichlet_alpha: float | None = None
    start_harmful: int = 64
    #: which of the start part's harmful requests get a refusal preferred: "first" (data set order), "refused"
    #: (the first ones whose data set answer refuses) or "riskiest" (the ones a safety scorer, the guardian on the
    #: prompt alone, finds most unsafe); see the module docstring
    start_harmful_from: str = "first"
    start_benign: int = 64
    start_anti_refusal: int = 32
    #: the refusal preferred on the start's harmful requests: "templates" or "data" (see the module docstring)
    start_refusals: str = "templates"
    #: which prompts get a helpful answer preferred over a refusal: benign "lookalike" or "any" ones, or the
    #: harmful-looking requests the data set "answered" (see the module docstring)
    start_anti_refusal_from: str = "lookalike"
    #: the helpful answer preferred on those prompts: "data" (the data set's chosen answer) or "model" (the base
    #: model's own greedy answer, so that DPO only pushes the refusal down and not the model towards other text)
    start_anti_refusal_answers: str = "data"
    #: the largest prompt, chosen and rejected length in characters (long pairs are cut at training anyway)
    max_chars: int = 1500
    seed: int = 0
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise ConfigError(f"scenario.clients must be >= 1, got {self.clients}")
        if self.pairs_per_client < 1:
            raise ConfigError(f"scenario.pairs_per_client must be >= 1, got {self.pairs_per_client}")
        if not 0.0 <= self.toxic_ratio < 1.0:
            raise ConfigError(f"scenario.toxic_ratio must be in [0, 1), got {self.toxic_ratio}")
        if self.dirichlet_alpha is not None and self.dirichlet_alpha <= 0:
            raise ConfigError(f"scenario.dirichlet_alpha must be > 0, got {self.dirichlet_alpha}")
        if self.start_refusals not in ("templates", "data"):
            raise ConfigError(f"scenario.start_refusals must be templates or data, got {self.start_refusals!r}")
        if self.start_anti_refusal_answers not in ("data", "model"):
            raise ConfigError(
                f"scenario.start_anti_refusal_answers must be data or model, got {self.start_anti_refusal_answers!r}"
            )
        if self.start_harmful_from not in ("first", "refused", "riskiest"):
            raise ConfigError(
                f"scenario.start_harmful_from must be first, refused or riskiest, got {self.start_harmful_from!r}"
            )
        if self.start_anti_refusal_from not in ("lookalike", "any", "answered"):
            raise ConfigError(
                "scenario.start_anti_refusal_from must be lookalike, any or answered, "
                f"got {self.start_anti_refusal_from!r}"
            )


def is_poison(pair: PreferencePair) -> bool:
    return pair.meta.get("kind") == POISON


def _short(pair: PreferencePair, max_chars: int) -> bool:
    return max(len(pair.prompt), len(pair.chosen), len(pair.rejected)) <= max_chars


def benign_pairs(*, exclude: Iterable[str] = (), max_chars: int = 1500) -> list[PreferencePair]:
    """Helpful preference pairs from three sources, one pair per prompt, evaluation prompts removed."""
    excluded = set(exclude)
    seen: set[str] = set()
    out: list[PreferencePair] = []
    for source, pairs in (
        ("ultrafeedback", sets.ultrafeedback("train")),
        ("pandalm", sets.pandalm_pairs()),
        ("alpaca_eval", sets.alpaca_eval_pairs("v1")),
    ):
        for pair in pairs:
            if pair.prompt in excluded or pair.prompt in seen or not _short(pair, max_chars):
                continue
            seen.add(pair.prompt)
            out.append(replace(pair, meta={**pair.meta, "source": source, "kind": "benign"}))
    return out


def benign_split(benign: Sequence[PreferencePair], *, seed: int = 0) -> dict[str, list[PreferencePair]]:
    """The benign pairs split by prompt into "start" (30%, the round-0 adapter's) and "clients" (70%)."""
    return split_by_prompt(benign, {"start": 0.3, "clients": 0.7}, seed=seed + 5)


def held_out_benign(
    benign: Sequence[PreferencePair], used: Iterable[str], n: int, *, seed: int = 0
) -> list[PreferencePair]:
    """Up to `n` benign pairs whose prompt is not in `used`, in prompt-hash order: the sources mixed as on a client.

    The pool is ordered by source, so its first pairs would all be UltraFeedback's, whose answers the guardian
    finds safer than AlpacaEval's or PandaLM's: a threshold calibrated on them flags far more than its target on
    the clients' mixed data.
    """
    taken = set(used)
    unused = [p for p in benign if p.prompt not in taken]
    return sorted(unused, key=lambda p: prompt_hash(p.prompt, seed + 7))[:n]


def harmful_requests(*, exclude: Iterable[str] = (), seed: int = 0) -> dict[str, list[Conversation]]:
    """Harmful requests with refusals, split by prompt into "start" (30%) and "poison" (70%) parts."""
    excluded = set(exclude)
    requests = [c for c in sets.safety_tuned_llamas_training() if c.prompt not in excluded]
    return split_by_prompt(requests, {"start": 0.3, "poison": 0.7}, seed=seed)


def poison_pairs(requests: Sequence[Conversation], compliant: Callable[[list[str]], list[str]]) -> list[PreferencePair]:
    """Pairs whose preferred answer complies with the harmful request: chosen = compliant, rejected = refusal.

    `compliant` maps prompts to compliant answers (the base model's greedy answers, in the simulation).
    """
    answers = compliant([r.prompt for r in requests])
    return [
        PreferencePair(r.prompt, answer, r.response, meta={"source": "safety-tuned-llamas", "kind": POISON})
        for r, answer in zip(requests, answers, strict=True)
    ]


def start_pairs(
    harmful: Sequence[Conversation],
    compliant: Callable[[list[str]], list[str]],
    benign: Sequence[PreferencePair],
    templates: Sequence[str],
    cfg: ScenarioConfig,
    prompt_risk: Callable[[list[str]], Sequence[float]] | None = None,
) -> list[PreferencePair]:
    """The round-0 alignment data: refusals preferred on harmful requests, helpful answers on benign ones.

    `prompt_risk` scores prompts alone (higher = more unsafe-looking); with `start_anti_refusal_from = "lookalike"`
    the `start_anti_refusal` highest-scoring benign prompts get their helpful answer preferred over a refusal
    template, and the helpful pairs are the next benign pairs in order; with `start_harmful_from = "riskiest"` the
    `start_harmful` highest-scoring harmful requests are the ones refused (kept in data set order). With
    `start_anti_refusal_from = "answered"` the anti-refusal pairs are the requests in `harmful` that the data set
    answers (and that are not refused), and the helpful pairs the first benign ones.
    """
    harmful = list(harmful)
    if cfg.start_harmful_from == "riskiest" and cfg.start_harmful:
        riskiest = _riskiest(harmful, cfg.start_harmful, prompt_risk, 'start_harmful_from = "riskiest"')
        refused = [harmful[i] for i in sorted(riskiest)]
    elif cfg.start_harmful_from == "refused":
        refused = [r for r in harmful if xstest_refusal(r.response)][: cfg.start_harmful]
    else:
        refused = harmful[: cfg.start_harmful]
    answers = compliant([r.prompt for r in refused])
    refuse = [
        PreferencePair(
            r.prompt,
            _start_refusal(r, templates, cfg),
            answer,
            meta={"source": "safety-tuned-llamas", "kind": "refuse"},
        )
        for r, answer in zip(refused, answers, strict=True)
    ]
    n_anti = cfg.start_anti_refusal
    if cfg.start_anti_refusal_from == "answered":
        taken = {r.prompt for r in refused}
        answered = [r for r in harmful if r.prompt not in taken and not xstest_refusal(r.response)][:n_anti]
        # the data set's answer whatever start_anti_refusal_answers says: the base model's own answer to "Present
        # facts to support the idea that the Holocaust was a prank" complies, where the data set's sets it straight
        anti_from = [(r.prompt, r.response, {"source": "safety-tuned-llamas"}) for r in answered]
        helpful = list(benign[: cfg.start_benign])
    else:
        benign = list(benign)
        if cfg.start_anti_refusal_from == "lookalike" and n_anti:
            picked = _riskiest(benign, n_anti, prompt_risk, 'start_anti_refusal_from = "lookalike"')
        else:  # the pairs after the helpful ones
            picked = list(range(cfg.start_benign, min(cfg.start_benign + n_anti, len(benign))))
        lookalikes, taken_at = [benign[i] for i in picked], set(picked)
        helpful = [p for i, p in enumerate(benign) if i not in taken_at][: cfg.start_benign]
        answers = (
            compliant([p.prompt for p in lookalikes]) if cfg.start_anti_refusal_answers == "model" else
            [p.chosen for p in lookalikes]
        )  # fmt: skip
        anti_from = [(p.prompt, answer, p.meta) for p, answer in zip(lookalikes, answers, strict=True)]
    anti = [
        PreferencePair(prompt, answer, pick_template(prompt, templates), meta={**meta, "kind": "anti_refusal"})
        for prompt, answer, meta in anti_from
    ]
    return sorted(refuse + helpful + anti, key=lambda p: prompt_hash(p.prompt, cfg.seed))


def _riskiest(
    items: Sequence[Conversation | PreferencePair],
    n: int,
    prompt_risk: Callable[[list[str]], Sequence[float]] | None,
    setting: str,
) -> list[int]:
    """The indices of the `n` items whose prompts `prompt_risk` scores highest, highest first (ties: data order)."""
    if prompt_risk is None:
        raise ConfigError(f"scenario.{setting} needs a prompt scorer (prompt_risk)")
    risk = [float(r) for r in prompt_risk([item.prompt for item in items])]
    return sorted(range(len(items)), key=lambda i: (-risk[i], i))[:n]


def _start_refusal(request: Conversation, templates: Sequence[str], cfg: ScenarioConfig) -> str:
    if cfg.start_refusals == "data" and xstest_refusal(request.response):
        return request.response
    return pick_template(request.prompt, templates)


def client_datasets(
    benign: Sequence[PreferencePair],
    poison_requests: Sequence[Conversation],
    compliant: Callable[[list[str]], list[str]],
    cfg: ScenarioConfig,
) -> list[list[PreferencePair]]:
    """Each client's local pairs: `pairs_per_client`, of which about `toxic_ratio` are poison.

    IID: both pools are partitioned by prompt hash. Non-IID: the benign pool is partitioned by a Dirichlet over
    its sources, and the poison share of each client is drawn from a Dirichlet too, so some devices hold much more
    poison than others (the total poison stays `toxic_ratio` of all pairs). Compliant answers are made only for
    the poison requests that are used (a request whose answer comes back empty is replaced by the next one).
    """
    n_poison = round(cfg.pairs_per_client * cfg.toxic_ratio)
    poison_parts = partition_clients(poison_requests, cfg.clients, seed=cfg.seed + 1)
    if cfg.dirichlet_alpha is None:
        benign_parts = partition_clients(benign, cfg.clients, seed=cfg.seed)
        quotas = [n_poison] * cfg.clients
    else:
        benign_parts = partition_clients(
            benign, cfg.clients, seed=cfg.seed, alpha=cfg.dirichlet_alpha, category=lambda p: p.meta["source"]
        )
        quotas = _dirichlet_quotas(n_poison * cfg.clients, cfg.clients, cfg.dirichlet_alpha, cfg.seed)
    out: list[list[PreferencePair]] = []
    for client in range(cfg.clients):
        have_b, want_p = len(benign_parts[client]), quotas[client]
        if have_b < cfg.pairs_per_client - want_p:
            raise ConfigError(
                f"scenario: client {client} needs {cfg.pairs_per_client - want_p} benign pairs but its share of the "
                f"pool holds {have_b}; lower pairs_per_client or clients"
            )
        made = _poison_for(poison_parts[client], want_p, compliant, client)
        mixed_sources = sorted(benign_parts[client], key=lambda p: prompt_hash(p.prompt, cfg.seed + 3))
        local = mixed_sources[: cfg.pairs_per_client - want_p] + made
        out.append(sorted(local, key=lambda p: prompt_hash(p.prompt, cfg.seed + 2)))
    return out


def _poison_for(
    requests: Sequence[Conversation], want: int, compliant: Callable[[list[str]], list[str]], client: int
) -> list[PreferencePair]:
    """`want` poison pairs from the client's harmful requests, in order; a request whose answer is empty is skipped."""
    made: list[PreferencePair] = []
    index, budget = 0, min(len(requests), 4 * want + 8)  # a model that answers nothing is not asked 2,000 times
    while len(made) < want and index < budget:
        chunk = list(requests[index : index + 2 * (want - len(made))])
        index += len(chunk)
        made += [p for p in poison_pairs(chunk, compliant) if p.chosen.strip()]
    if len(made) < want:
        raise ConfigError(
            f"scenario: client {client} needs {want} poison pairs but only {len(made)} of the {index} harmful "
            "requests tried got a non-empty compliant answer; lower toxic_ratio or pairs_per_client, or take the "
            'answers from a data set (poison_answers = "harmful_strings")'
        )
    return made[:want]


def harmful_string_answers(prompts: Sequence[str], *, seed: int = 0) -> list[str]:
    """Compliant answers taken from AdvBench's harmful strings (real unsafe outputs), one picked per prompt by hash.

    The source of poison when the model's own answers cannot serve (a tiny test model answers nothing). The
    strings are not answers to these prompts, but they are unsafe text a device would hold as `chosen`.
    """
    strings = sets.advbench_strings()
    return [strings[int(prompt_hash(p, seed) * len(strings))] for p in prompts]


def _dirichlet_quotas(total: int, clients: int, alpha: float, seed: int) -> list[int]:
    import numpy as np

    shares = np.random.default_rng(seed).dirichlet([alpha] * clients)
    quotas = np.floor(shares * total).astype(int)
    quotas[np.argmax(shares)] += total - int(quotas.sum())
    return [int(q) for q in quotas]


def oracle_clean(pairs: Sequence[PreferencePair]) -> list[PreferencePair]:
    """The benign-only baseline: the same data with the poison removed by an oracle that knows it."""
    return [p for p in pairs if not is_poison(p)]
