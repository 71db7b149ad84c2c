"""The local LoRA-DPO step: a PEFT LoRA on a frozen causal LM, trained with sigmoid DPO.

    from feddetox.training import LoraDpoTrainer, TrainConfig
    trainer = LoraDpoTrainer("smollm2-135m-instruct", LoraSpec(r=16, target_modules=(...)))
    start = trainer.init_adapter(seed=0)                        # or the round's global adapter
    result = trainer.train(pairs, start, TrainConfig(local_steps=4))
    save_peft(folder, result.adapter, spec, "smollm2-135m-instruct")

One copy of the base weights: the reference log-probabilities come from the same model with the adapter
disabled, computed first and without a graph. Each step runs the chosen and the rejected answers in one
forward, each prompt once ahead of both answers (`batches.pack`), applies the LM head only to the states that
predict answer tokens (in chunks), and can store the frozen base in bf16 and recompute activations in the
backward pass (the `TrainConfig` knobs; "auto" picks by what the CPU multiplies fast).
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from feddetox.adapters import LoraSpec
from feddetox.data.records import PreferencePair
from feddetox.errors import ConfigError, DataError
from feddetox.training.batches import Batch, EncodedPair, collate, encode_pair, pack, pair_order
from feddetox.training.config import TrainConfig
from feddetox.training.dpo import chunked_token_logps, dpo_loss, nll_term
from feddetox.training.memory import fix_malloc_threshold, trim
from feddetox.training.precision import (
    cast_frozen,
    frozen_fp32_bytes,
    resolve_bf16_base,
    resolve_compute_dtype,
    restore_frozen,
    upcast_frozen,
)

#: reference log-probabilities kept at most for this many pairs (about 100 bytes each)
REFERENCE_CACHE_PAIRS = 100_000

#: progress(step, total_steps, metrics_so_far) after every optimizer step; True prints a line per step
Progress = Callable[[int, int, dict[str, float]], None] | bool | None


@dataclass
class TrainResult:
    """The trained adapter (PEFT key names, float32), metrics of the call, and the distinct pairs used."""

    adapter: dict[str, np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)
    num_examples: int = 0


class LoraDpoTrainer:
    """Holds one base model wrapped with a LoRA adapter; each `train` call starts from a given adapter.

    Raises `ModelNotFoundError` (unknown model) and `ConfigError` (no module matches `lora.target_modules`).
    After the first `train` that stores the frozen base in bf16 (`bf16_base`), it stays stored in bf16.
    """

    ADAPTER = "default"

    def __init__(self, base_model: str, lora: LoraSpec, *, dtype: torch.dtype = torch.float32) -> None:
        from peft import LoraConfig, get_peft_model

        from feddetox.models.loading import load_causal_lm

        self.base_model, self.lora = str(base_model), lora
        model, self.tokenizer = load_causal_lm(base_model, dtype=dtype)
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        try:
            self.model = get_peft_model(model, config)
        except ValueError as exc:
            raise ConfigError(f"LoRA target_modules {list(lora.target_modules)} on {base_model}: {exc}") from exc
        self.model.eval()
        self._lm = self.model.get_base_model()
        self._decoder = self._lm.get_decoder()
        self._head = self._lm.get_output_embeddings()
        self._keys = self._adapter_shapes()
        self._compute: torch.dtype | None = None
        self._precision: tuple[torch.dtype, torch.dtype] | None = None  # (compute, storage) now in place
        self._checkpointing: bool | None = None
        #: the reference's (chosen, rejected) log-probabilities by pair: the frozen base never changes, so a pair
        #: seen again (a later epoch, a later round) skips the reference forward; cleared when precision changes
        self._reference: dict[bytes, tuple[float, float]] = {}
        self._pad_id = self.tokenizer.pad_token_id
        if self._pad_id is None:
            self._pad_id = self.tokenizer.eos_token_id or 0

    # -- the adapter -----------------------------------------------------------------------------------------
    def _adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        from peft import get_peft_model_state_dict

        return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(self.model).items()}

    def adapter_state(self) -> dict[str, np.ndarray]:
        """The current LoRA weights, float32 numpy, keyed as in `adapter_model.safetensors`."""
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.model)
        return {k: v.detach().to(torch.float32).numpy().copy() for k, v in state.items()}

    def init_adapter(self, seed: int) -> dict[str, np.ndarray]:
        """A fresh adapter as PEFT initialises one (A Kaiming-uniform, B zero), the same for the same seed."""
        from peft.tuners.lora import LoraLayer

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in self.model.modules():
                if isinstance(module, LoraLayer):
                    module.reset_lora_parameters(self.ADAPTER, True)
        return self.adapter_state()

    def load_adapter(self, tensors: Mapping[str, np.ndarray], *, where: str = "start adapter") -> None:
        """Set the LoRA weights; a missing or unknown key or a wrong shape is a DataError naming the key."""
        from peft import set_peft_model_state_dict

        missing = sorted(set(self._keys) - set(tensors))
        unknown = sorted(set(tensors) - set(self._keys))
        if missing or unknown:
            raise DataError(
                f"adapter keys do not match LoRA r={self.lora.r} on {list(self.lora.target_modules)}: "
                f"{len(missing)} missing (first: {missing[:1]}), {len(unknown)} unknown (first: {unknown[:1]})",
                path=where,
                field=(missing or unknown)[0],
            )
        state = {}
        for key, shape in self._keys.items():
            value = np.asarray(tensors[key])
            if tuple(value.shape) != shape:
                raise DataError(f"shape {tuple(value.shape)}, expected {shape}", path=where, field=key)
            if not np.all(np.isfinite(value)):
                raise DataError("holds NaN or infinite values", path=where, field=key)
            state[key] = torch.from_numpy(np.array(value, dtype=np.float32))
        set_peft_model_state_dict(self.model, state, adapter_name=self.ADAPTER)

    # -- precision and memory knobs ---------------------------------------------------------------------------
    def _prepare(self, cfg: TrainConfig) -> torch.dtype:
        """Apply the knobs: storage of the frozen base, compute dtype, gradient checkpointing, malloc."""
        if cfg.malloc_mmap_threshold_kib:
            fix_malloc_threshold(cfg.malloc_mmap_threshold_kib)
        storage = self._decoder.get_input_embeddings().weight.dtype
        bf16 = resolve_bf16_base(cfg.bf16_base, frozen_fp32_bytes(self.model))
        if bf16 and storage != torch.bfloat16:
            cast_frozen(self.model, torch.bfloat16)
            storage = torch.bfloat16
        elif cfg.bf16_base is False and storage == torch.bfloat16:
            raise ConfigError(
                "TrainConfig field 'bf16_base' = False, but this trainer's base is already stored in bf16",
                hint="build a new LoraDpoTrainer with dtype=torch.float32 for a float32 base",
            )  # "auto" keeps a base already in bf16: widening it back would not restore its lost bits
        compute = resolve_compute_dtype(cfg.compute_dtype)
        if (compute, storage) != self._precision:
            self._reference.clear()
            restore_frozen(self.model)
            if compute != storage:
                upcast_frozen(self.model, compute)
            self._precision, self._compute = (compute, storage), compute
        if cfg.gradient_checkpointing != self._checkpointing:
            _checkpointing(self._lm, cfg.gradient_checkpointing)
            self._checkpointing = cfg.gradient_checkpointing
        return compute

    # -- log-probabilities -------------------------------------------------------------------------------------
    def _batch_logps(self, batch: Batch, cfg: TrainConfig) -> torch.Tensor:
        """Summed answer log-probabilities of each sequence of the batch: (2B,), float32."""
        mask = batch.attention_mask
        if mask.dim() == 4 and self._lm.config._attn_implementation != "sdpa":
            # eager attention adds the mask to the scores: 0 where allowed, the dtype's minimum elsewhere
            mask = torch.zeros(mask.shape, dtype=self._compute).masked_fill(~mask, torch.finfo(self._compute).min)
        out = self._decoder(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids, use_cache=False
        )
        rows, cols = batch.predictor
        token_logps = chunked_token_logps(
            out.last_hidden_state[rows, cols],  # (N, H): only the states that predict an answer token
            self._head.weight,
            batch.labels,
            chunk=cfg.lm_head_chunk,
            compute_dtype=self._compute,
        )
        return torch.zeros(2 * batch.num_pairs, dtype=torch.float32).index_add(0, batch.sequence, token_logps)

    def _reference_logps(self, batch: Batch, encoded: Sequence[EncodedPair], cfg: TrainConfig) -> torch.Tensor:
        """The base's (2B,) log-probabilities, adapter disabled and no graph; from the cache when all are known."""
        keys = [_pair_key(e) for e in encoded]
        if all(k in self._reference for k in keys):
            known = [self._reference[k] for k in keys]
            return torch.tensor([c for c, _ in known] + [r for _, r in known], dtype=torch.float32)
        self.model.eval()
        with torch.no_grad(), self.model.disable_adapter():
            seq = self._batch_logps(batch, cfg)
        if len(self._reference) >= REFERENCE_CACHE_PAIRS:
            self._reference.clear()
        b = batch.num_pairs
        for i, key in enumerate(keys):
            self._reference[key] = (float(seq[i]), float(seq[b + i]))
        return seq

    def logps(
        self, pairs: Sequence[PreferencePair], cfg: TrainConfig | None = None, *, adapter: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(chosen, rejected) summed answer log-probabilities under the current adapter (or the base)."""
        cfg = cfg or TrainConfig()
        self._prepare(cfg)
        chosen, rejected = [], []
        self.model.eval()
        for start in range(0, len(pairs), cfg.batch_size):
            batch = self._encode_batch(pairs[start : start + cfg.batch_size], cfg, {})
            with torch.no_grad():
                if adapter:
                    seq = self._batch_logps(batch, cfg)
                else:
                    with self.model.disable_adapter():
                        seq = self._batch_logps(batch, cfg)
            chosen.append(seq[: batch.num_pairs].numpy())
            rejected.append(seq[batch.num_pairs :].numpy())
        return np.concatenate(chosen), np.concatenate(rejected)

    def evaluate(self, pairs: Sequence[PreferencePair], cfg: TrainConfig | None = None) -> dict[str, float]:
        """DPO loss, reward accuracy and margin of the current adapter against the base, on `pairs`."""
        cfg = cfg or TrainConfig()
        pc, pr = self.logps(pairs, cfg, adapter=True)
        rc, rr = self.logps(pairs, cfg, adapter=False)
        losses, cw, rw = dpo_loss(*(torch.from_numpy(a) for a in (pc, pr, rc, rr)), cfg.beta)
        return {
            "loss": float(losses.mean()),
            "reward_accuracy": float((cw > rw).float().mean()),
            "reward_margin": float((cw - rw).mean()),
        }

    def _encode(
        self, pairs: Sequence[PreferencePair], cfg: TrainConfig, cache: dict[int, EncodedPair]
    ) -> list[EncodedPair]:
        encoded = []
        for pair in pairs:
            key = id(pair)
            if key not in cache:
                cache[key] = encode_pair(self.tokenizer, pair, cfg.max_prompt_tokens, cfg.max_response_tokens)
            encoded.append(cache[key])
        return encoded

    def _encode_batch(self, pairs: Sequence[PreferencePair], cfg: TrainConfig, cache: dict[int, EncodedPair]) -> Batch:
        return self._layout(self._encode(pairs, cfg, cache), cfg)

    def _layout(self, encoded: Sequence[EncodedPair], cfg: TrainConfig) -> Batch:
        return (pack if cfg.packing else collate)(encoded, self._pad_id)

    # -- training ----------------------------------------------------------------------------------------------
    def train(
        self,
        pairs: Sequence[PreferencePair],
        start_adapter: Mapping[str, np.ndarray] | None,
        cfg: TrainConfig,
        *,
        progress: Progress = None,
    ) -> TrainResult:
        """Run `cfg.num_steps(len(pairs))` AdamW steps of DPO from `start_adapter` (None: `init_adapter(seed)`).

        Batches are drawn from seeded permutations of `pairs`, cycling. Metrics: loss (mean over the call),
        first_loss, last_loss, reward_accuracy, reward_margin, chosen_reward, rejected_reward, examples_used,
        steps, tokens (real: prompt and answer of the chosen and of the rejected sequences), positions (what
        the model computed for them: each prompt once when packed, padding included), reference_reused (micro
        batches whose reference log-probabilities were all known from an earlier call or step), seconds,
        tokens_per_s.
        """
        if not pairs:
            raise DataError("no preference pairs to train on", field="pairs")
        self._prepare(cfg)
        self.load_adapter(start_adapter if start_adapter is not None else self.init_adapter(cfg.seed))
        torch.manual_seed(cfg.seed)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        steps = cfg.num_steps(len(pairs))
        order = pair_order(len(pairs), steps * cfg.pairs_per_step, cfg.seed)
        cache: dict[int, EncodedPair] = {}
        sums = {"loss": 0.0, "reward_accuracy": 0.0, "reward_margin": 0.0, "chosen_reward": 0.0, "rejected_reward": 0.0}
        step_losses: list[float] = []
        tokens, positions, micro_batches, reused, began = 0, 0, 0, 0, time.perf_counter()
        report = _progress_printer(steps) if progress is True else progress or None

        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(cfg.grad_accumulation):
                first = (step * cfg.grad_accumulation + micro) * cfg.batch_size
                encoded = self._encode([pairs[i] for i in order[first : first + cfg.batch_size]], cfg, cache)
                batch = self._layout(encoded, cfg)
                reused += all(_pair_key(e) in self._reference for e in encoded)
                ref = self._reference_logps(batch, encoded, cfg)  # (2B,), no graph
                self.model.train()
                policy = self._batch_logps(batch, cfg)  # (2B,)
                b = batch.num_pairs
                losses, chosen_r, rejected_r = dpo_loss(policy[:b], policy[b:], ref[:b], ref[b:], cfg.beta)
                if cfg.sft_weight:
                    chosen_tokens = torch.bincount(batch.sequence, minlength=2 * b)[:b]
                    losses = losses + cfg.sft_weight * nll_term(policy[:b], chosen_tokens)
                (losses.mean() / cfg.grad_accumulation).backward()
                step_loss += float(losses.detach().mean()) / cfg.grad_accumulation
                sums["reward_accuracy"] += float((chosen_r > rejected_r).float().mean())
                sums["reward_margin"] += float((chosen_r - rejected_r).mean())
                sums["chosen_reward"] += float(chosen_r.mean())
                sums["rejected_reward"] += float(rejected_r.mean())
                tokens += batch.real_tokens
                positions += batch.positions
                micro_batches += 1
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            step_losses.append(step_loss)
            sums["loss"] += step_loss
            if report is not None:
                rate = tokens / (time.perf_counter() - began)
                so_far = {
                    "loss": step_loss,
                    "tokens": float(tokens),
                    "positions": float(positions),
                    "tokens_per_s": rate,
                }
                report(step + 1, steps, so_far)

        self.model.eval()
        seconds = time.perf_counter() - began
        metrics = {k: v / (steps if k == "loss" else micro_batches) for k, v in sums.items()}
        used = steps * cfg.pairs_per_step
        metrics.update(
            first_loss=step_losses[0],
            last_loss=step_losses[-1],
            examples_used=float(used),
            steps=float(steps),
            tokens=float(tokens),
            positions=float(positions),
            reference_reused=float(reused),
            seconds=seconds,
            tokens_per_s=tokens / seconds if seconds > 0 else math.inf,
        )
        optimizer.zero_grad(set_to_none=True)
        del optimizer
        trim()
        return TrainResult(self.adapter_state(), metrics, num_examples=min(used, len(pairs)))


def _pair_key(pair: EncodedPair) -> bytes:
    """A short digest of a pair's token ids: the reference cache's key."""
    digest = hashlib.blake2b(digest_size=16)
    for ids in (pair.prompt, pair.chosen, pair.rejected):
        digest.update(len(ids).to_bytes(4, "little"))
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
    return digest.digest()


def _checkpointing(model: Any, on: bool) -> None:
    """Turn activation (gradient) checkpointing of a transformers model on or off, under either API name."""
    if on and hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()


def _progress_printer(total: int) -> Callable[[int, int, dict[str, float]], None]:
    def report(step: int, steps: int, metrics: dict[str, float]) -> None:
        print(
            f"train step {step}/{steps}: loss {metrics['loss']:.4f}, {metrics['tokens_per_s']:.0f} tokens/s",
            file=sys.stderr,
            flush=True,
        )

    return report
