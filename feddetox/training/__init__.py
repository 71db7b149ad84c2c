"""Local preference training: sigmoid DPO on a LoRA adapter of a frozen causal LM.

- `dpo`: the loss and log-probability functions (pure).
- `config`: `TrainConfig`, the step's settings and memory/speed knobs.
- `batches`: chat formatting, truncation, padding and the seeded order of pairs.
- `precision`: bf16 storage of the frozen base and the arithmetic its matmuls use.
- `lora_dpo`: `LoraDpoTrainer`, which loads the base once and trains from a given adapter.
"""

from feddetox.training.config import TrainConfig
from feddetox.training.dpo import chunked_token_logps, dpo_loss, sequence_logps, token_logps
from feddetox.training.lora_dpo import LoraDpoTrainer, TrainResult

__all__ = [
    "LoraDpoTrainer",
    "TrainConfig",
    "TrainResult",
    "chunked_token_logps",
    "dpo_loss",
    "sequence_logps",
    "token_logps",
]
