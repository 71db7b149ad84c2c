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

__all__ = [
    "Conversation",
    "ConversationsResult",
    "EvalPrompt",
    "MultipleChoice",
    "PairsResult",
    "PreferencePair",
    "read_conversations",
    "read_pairs",
    "sets",
    "write_conversations",
    "write_pairs",
]
