"""The one interface every safety scorer meets: teachers, the eager student, the device runtime.

Implementations (Llama Guard family, any Hugging Face sequence classifier, the offline default teacher, an
ensemble) live in `export/teachers.py`, because they need transformers; the device only needs this protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from feddetox.data.records import Conversation


@runtime_checkable
class Teacher(Protocol):
    """Scores conversations: `score(...)` returns p_unsafe in [0, 1], shape (N,), float32."""

    #: a stable identifier written into bundle manifests, e.g. "llama-guard:meta-llama/Llama-Guard-3-1B"
    teacher_id: str

    def score(self, conversations: Sequence[Conversation], *, batch_size: int = 8) -> np.ndarray: ...
