"""The names of the training metrics a device reports with its update (`UpdateHeader.metrics`).

    from feddetox.protocol.metrics import DPO_LOSS, update_metrics
    header_metrics = update_metrics(trained.metrics)     # {"dpo_loss": 0.64, "reward_accuracy": 0.75, ...}

One set of names for everyone who reads them: the edge client sends them, the coordinator averages each
over a round's updates (weighted by `num_examples`), and the dashboard and the simulation look them up.
The local step (`feddetox.training.LoraDpoTrainer`) calls its mean DPO loss `loss`; on the wire it is
`dpo_loss`, so that a round's metrics say which loss they are. Every other name is the trainer's own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

#: mean sigmoid DPO loss over the local steps
DPO_LOSS = "dpo_loss"
#: DPO loss of the first and of the last local step
DPO_LOSS_FIRST = "dpo_loss_first"
DPO_LOSS_LAST = "dpo_loss_last"
#: share of pairs whose implicit reward of `chosen` beats that of `rejected`
REWARD_ACCURACY = "reward_accuracy"
#: mean of (chosen reward - rejected reward), the rewards being beta x (policy - reference) log-probabilities
REWARD_MARGIN = "reward_margin"
CHOSEN_REWARD = "chosen_reward"
REJECTED_REWARD = "rejected_reward"
#: pairs drawn by the local steps (with repeats when there are fewer local pairs)
EXAMPLES_USED = "examples_used"
STEPS = "steps"
#: real tokens trained on (prompt and answer of both sequences of each pair), and positions computed
TOKENS = "tokens"
POSITIONS = "positions"
#: micro-batches whose reference log-probabilities were known from an earlier step
REFERENCE_REUSED = "reference_reused"
#: wall-clock seconds of the local step, and its real tokens per second
SECONDS = "seconds"
TOKENS_PER_S = "tokens_per_s"
#: sent alone (with the counts, `ReportMetrics`) when sanitization left nothing to train on
NUM_EXAMPLES = "num_examples"

#: every name a device reports, with what it is (the documentation's table is made from this)
UPDATE_METRICS: dict[str, str] = {
    DPO_LOSS: "mean sigmoid DPO loss over the local steps",
    DPO_LOSS_FIRST: "DPO loss of the first local step",
    DPO_LOSS_LAST: "DPO loss of the last local step",
    REWARD_ACCURACY: "share of pairs whose chosen answer gets the higher implicit reward",
    REWARD_MARGIN: "mean implicit reward of chosen minus that of rejected",
    CHOSEN_REWARD: "mean implicit reward of the chosen answers",
    REJECTED_REWARD: "mean implicit reward of the rejected answers",
    EXAMPLES_USED: "pairs drawn by the local steps",
    STEPS: "local optimizer steps",
    TOKENS: "real tokens trained on",
    POSITIONS: "positions computed (padding included)",
    REFERENCE_REUSED: "micro-batches whose reference log-probabilities were cached",
    SECONDS: "seconds of the local step",
    TOKENS_PER_S: "real tokens per second of the local step",
    NUM_EXAMPLES: "pairs left after sanitization (sent alone when none is left)",
}

#: the trainer's names that differ from the names on the wire
TRAINER_NAMES: dict[str, str] = {"loss": DPO_LOSS, "first_loss": DPO_LOSS_FIRST, "last_loss": DPO_LOSS_LAST}


def update_metrics(trainer_metrics: Mapping[str, float]) -> dict[str, float]:
    """The local step's metrics under the names of `UPDATE_METRICS` (other names pass unchanged).

    A value that is not finite (e.g. tokens per second of a step too short to time) is left out: the
    coordinator refuses an update whose header carries one.
    """
    renamed = ((TRAINER_NAMES.get(name, name), float(value)) for name, value in trainer_metrics.items())
    return {name: value for name, value in renamed if math.isfinite(value)}
