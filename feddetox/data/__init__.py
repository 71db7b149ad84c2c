"""The data layer: canonical records, readers for users' files, loaders of the public sets, splits.

from feddetox.data import read_pairs, split_by_prompt, sets
"""

from feddetox.data import sets
from feddetox.data.io import (
    ConversationsResult,
    PairsResult,
    read_conversations,
    read_pairs,
    write_conversations,
    write_pairs,
)
from feddetox.data.records import Conversation, EvalPrompt, MultipleChoice, PreferencePair
from feddetox.data.splits import partition_clients, split_by_prompt

__all__ = [
    "Conversation",
    "ConversationsResult",
    "EvalPrompt",
    "MultipleChoice",
    "PairsResult",
    "PreferencePair",
    "partition_clients",
    "read_conversations",
    "read_pairs",
    "sets",
    "split_by_prompt",
    "write_conversations",
    "write_pairs",
]
