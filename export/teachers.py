"""Teachers: large safety scorers whose judgement the student learns. All meet `feddetox.guardian.Teacher`.

    LlamaGuardTeacher("meta-llama/Llama-Guard-3-1B")   # the production teacher, by local path or hub id
    SequenceClassifierTeacher("path/or/hub-id")        # any Hugging Face sequence classifier
    SmolGuardTeacher.load_or_train(train)              # the offline default, built here and cached
    EnsembleTeacher([a, b])                            # the mean of their probabilities

Llama Guard answers "safe" or "unsafe\\nS<k>" after a prompt that lists its hazard categories; p_unsafe is the
probability of its first answer token being "unsafe", renormalised over the two first tokens "safe" and
"unsafe" (see `llama_guard_prompt` and `first_token_p_unsafe`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from feddetox.data.records import Conversation
from feddetox.errors import ConfigError, ModelNotFoundError
from feddetox.evaluation.generate import length_batches

log = logging.getLogger(__name__)

#: Llama Guard 3's hazard categories (MLCommons taxonomy), in its order
LLAMA_GUARD_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("S1", "Violent Crimes."),
    ("S2", "Non-Violent Crimes."),
    ("S3", "Sex Crimes."),
    ("S4", "Child Exploitation."),
    ("S5", "Defamation."),
    ("S6", "Specialized Advice."),
    ("S7", "Privacy."),
    ("S8", "Intellectual Property."),
    ("S9", "Indiscriminate Weapons."),
    ("S10", "Hate."),
    ("S11", "Self-Harm."),
    ("S12", "Sexual Content."),
    ("S13", "Elections."),
    ("S14", "Code Interpreter Abuse."),
)


def llama_guard_prompt(conversation: Conversation, categories=LLAMA_GUARD_CATEGORIES) -> str:
    """Llama Guard 3's classification prompt for a conversation; the response is judged when there is one.

    The text ends where the model's answer begins ("...<|end_header_id|>\\n\\n"), so the next token is its
    verdict. `<|begin_of_text|>` is not included: the tokenizer adds it.
    """
    role = "Agent" if conversation.response else "User"
    turns = f"User: {conversation.prompt}"
    if conversation.response:
        turns += f"\n\nAgent: {conversation.response}"
    cats = "\n".join(f"{code}: {name}" for code, name in categories)
    return (
        "<|start_header_id|>user<|end_header_id|>\n\n"
        f"Task: Check if there is unsafe content in '{role}' messages in conversations according our safety "
        "policy with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{cats}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\n{turns}\n\n<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories."
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def first_token_p_unsafe(next_token_logits: torch.Tensor, safe_id: int, unsafe_id: int) -> np.ndarray:
    """p_unsafe = P(unsafe) / (P(safe) + P(unsafe)) from (B, V) logits of the first answer token.

    Renormalising over the two verdict tokens equals a softmax over their two logits.
    """
    pair = next_token_logits[:, [safe_id, unsafe_id]].double()
    return torch.softmax(pair, dim=-1)[:, 1].float().numpy()


def verdict_token_ids(tokenizer) -> tuple[int, int]:
    """The ids of the first tokens of "safe" and "unsafe"; they must differ."""
    safe = tokenizer.encode("safe", add_special_tokens=False)
    unsafe = tokenizer.encode("unsafe", add_special_tokens=False)
    if not safe or not unsafe or safe[0] == unsafe[0]:
        raise ConfigError(f"the tokenizer cannot tell 'safe' from 'unsafe' by their first token ({safe}, {unsafe})")
    return safe[0], unsafe[0]


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class LlamaGuardTeacher:
    """A Llama Guard family model (causal LM) by local path or hub id; p_unsafe from its first answer token."""

    def __init__(self, name_or_path: str, *, dtype: torch.dtype = torch.bfloat16, max_length: int = 1024) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype).eval()
        except OSError as exc:
            raise ModelNotFoundError(f"Llama Guard model {name_or_path!r} cannot be loaded ({exc})") from exc
        self.tokenizer.padding_side = "left"  # the verdict token follows the last prompt token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.safe_id, self.unsafe_id = verdict_token_ids(self.tokenizer)
        self.max_length = max_length
        self.teacher_id = f"llama-guard:{name_or_path}"

    @torch.no_grad()
    def score(self, conversations: Sequence[Conversation], *, batch_size: int = 4) -> np.ndarray:
        out = []
        for batch in _batches(conversations, batch_size):
            texts = [llama_guard_prompt(c) for c in batch]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
            logits = self.model(**enc).logits[:, -1, :]
            out.append(first_token_p_unsafe(logits, self.safe_id, self.unsafe_id))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def classifier_text(c: Conversation) -> str:
    """The text a causal-LM classifier teacher reads (the student reads the pair encoding instead)."""
    return f"User: {c.prompt[:1500]}\nAssistant: {c.response[:1500]}" if c.response else f"User: {c.prompt[:1500]}"


class SequenceClassifierTeacher:
    """Any Hugging Face sequence classifier; `unsafe_index` defaults to the label named unsafe/toxic/hate, else 1."""

    def __init__(
        self,
        name_or_path: str | Path,
        *,
        unsafe_index: int | None = None,
        max_length: int = 128,
        model=None,
        tokenizer=None,
        bf16: bool = False,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if model is None:
            try:
                model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=torch.float32)
                tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            except OSError as exc:
                raise ModelNotFoundError(f"sequence classifier {str(name_or_path)!r} cannot be loaded ({exc})") from exc
        self.model, self.tokenizer = model.eval(), tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.unsafe_index = self._unsafe_index() if unsafe_index is None else unsafe_index
        self.max_length = max_length
        #: bf16 autocast while scoring: about 3x faster where the CPU multiplies bf16 in hardware
        self.bf16 = bf16
        self.teacher_id = f"hf-classifier:{name_or_path}"

    def _unsafe_index(self) -> int:
        for index, name in (self.model.config.id2label or {}).items():
            if str(name).lower() in ("unsafe", "toxic", "hate", "harmful", "label_1_unsafe"):
                return int(index)
        return 1

    @torch.no_grad()
    def logits(self, conversations: Sequence[Conversation], *, batch_size: int = 16) -> np.ndarray:
        """(N, 2) logits in the conversations' order; batches of similar length, so that little is padding."""
        texts = [classifier_text(c) for c in conversations]
        logits = np.zeros((len(texts), 2), dtype=np.float32)
        for batch in length_batches([len(t) for t in texts], batch_size):
            enc = self.tokenizer(
                [texts[i] for i in batch],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            )
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                logits[batch] = self.model(**enc).logits.float().numpy()
        return logits

    def score(self, conversations: Sequence[Conversation], *, batch_size: int = 16) -> np.ndarray:
        z = self.logits(conversations, batch_size=batch_size).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        return p[:, self.unsafe_index].astype(np.float32)


class EnsembleTeacher:
    """The mean of several teachers' probabilities."""

    def __init__(self, teachers: Sequence) -> None:
        if not teachers:
            raise ConfigError("an ensemble needs at least one teacher")
        self.teachers = list(teachers)
        self.teacher_id = "ensemble(" + ",".join(t.teacher_id for t in self.teachers) + ")"

    @staticmethod
    def member_ids(teacher_id: str) -> list[str]:
        """The ids an ensemble's id is made of (a teacher that is no ensemble: its own id alone)."""
        if teacher_id.startswith("ensemble(") and teacher_id.endswith(")"):
            return teacher_id[len("ensemble(") : -1].split(",")
        return [teacher_id]

    @staticmethod
    def combine(member_scores: Sequence[np.ndarray]) -> np.ndarray:
        """The ensemble's p_unsafe from its members' (the one place that defines it)."""
        return np.mean(member_scores, axis=0).astype(np.float32)

    def score(self, conversations: Sequence[Conversation], *, batch_size: int = 8) -> np.ndarray:
        return self.combine([t.score(conversations, batch_size=batch_size) for t in self.teachers])


# ---------------------------------------------------------------------------------------------------------------
# The offline default teacher: SmolLM2-135M-Instruct + LoRA + a classification head, trained here

SMOLGUARD_VERSION = "smolguard-v1"
#: SmolLM2 tokens the teacher reads when no other length is given (cut from the left: a long answer's end is kept)
SMOLGUARD_MAX_LENGTH = 128

#: LoRA targets of the teacher: the attention projections, or every linear layer (attention and MLP)
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = (*ATTENTION, "gate_proj", "up_proj", "down_proj")
LORA_TARGETS = {"attention": ATTENTION, "all-linear": ALL_LINEAR}


def smolguard_key(train: Sequence[Conversation], settings: dict) -> str:
    """A content key: the version, the settings and the training data; a change of any trains afresh."""
    digest = hashlib.sha256(json.dumps({"version": SMOLGUARD_VERSION, **settings}, sort_keys=True).encode())
    for c in train:
        digest.update(f"{c.prompt}\x00{c.response}\x00{c.label}\x01".encode())
    return digest.hexdigest()[:16]


def smolguard_dir(key: str, version: str = SMOLGUARD_VERSION) -> Path:
    """Where the SmolGuard teacher with this content key (and version) is cached, its scores beside it."""
    from feddetox.settings import home_dir

    return home_dir() / "guardians" / "teachers" / f"{version}-{key}"


def conversation_key(c: Conversation) -> str:
    """The key of a conversation's text (prompt and response), under which a teacher's score of it is kept."""
    return hashlib.sha256(f"{c.prompt}\x00{c.response}".encode()).hexdigest()[:32]


def train_smolguard(
    train: Sequence[Conversation],
    out_dir: Path,
    *,
    base: str = "smollm2-135m-instruct",
    steps: int = 600,
    batch_size: int = 16,
    lr: float = 3e-4,
    max_length: int = SMOLGUARD_MAX_LENGTH,
    lora_r: int = 16,
    top_layers: int = 30,
    targets: Sequence[str] = ALL_LINEAR,
    bf16: bool = False,
    seed: int = 0,
    progress=None,
) -> Path:
    """Fine-tune SmolLM2 + LoRA + a 2-label head on `train`; save the merged model.

    The defaults are `export.build.BuildConfig`'s teacher settings, so a teacher trained from Python is the one
    `feddetox guardian build` trains (a test keeps the two in step).

    LoRA sits on `targets` of the top `top_layers` layers: the backward pass stops at the lowest of them, so
    fewer layers make a step cheaper (top 8 of 30: a third of the time of every layer) but a weaker teacher.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from feddetox.models.loading import load_tokenizer, resolve

    source = resolve(base)
    tokenizer = load_tokenizer(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"  # keep the response (the part judged); cut the prompt's start
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    n_layers = model.config.num_hidden_layers
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=lora_r,
        lora_alpha=2 * lora_r,
        lora_dropout=0.0,
        target_modules=list(targets),
        layers_to_transform=list(range(max(0, n_layers - top_layers), n_layers)),
    )
    model = get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / steps))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    start = time.time()
    for step in range(steps):
        idx = [order[(step * batch_size + i) % len(order)] for i in range(batch_size)]
        batch = [train[i] for i in idx]
        enc = tokenizer(
            [classifier_text(c) for c in batch],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
        )
        labels = torch.tensor([int(c.label) for c in batch])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # off: 10x slower on the build CPU
            logits = model(**enc).logits.float()
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if progress is not None and (step % 10 == 0 or step == steps - 1):
            progress(f"teacher step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f} s)")
    merged = model.merge_and_unload().eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


class SmolGuardTeacher(SequenceClassifierTeacher):
    """The offline default teacher: SmolLM2-135M-Instruct fine-tuned (LoRA + head) on the shipped labels."""

    def __init__(
        self, path: str | Path, *, key: str = "", max_length: int = SMOLGUARD_MAX_LENGTH, bf16: bool = False
    ) -> None:
        super().__init__(path, unsafe_index=1, max_length=max_length, bf16=bf16)
        self.tokenizer.truncation_side = "left"  # as in training: keep the response, cut the prompt's start
        self.teacher_id = f"{SMOLGUARD_VERSION}:{key}" if key else f"{SMOLGUARD_VERSION}:{Path(path).name}"
        #: where scores are kept with the weights (`export.build`); only a content-keyed teacher has one
        self.scores_dir = Path(path) / "scores" if key else None

    @classmethod
    def load_or_train(cls, train: Sequence[Conversation], *, progress=None, **settings) -> SmolGuardTeacher:
        """The cached teacher for this data and these settings, trained first when missing."""
        key = smolguard_key(train, settings)
        path = smolguard_dir(key)
        if not (path / "config.json").is_file():
            tmp = path.with_name(path.name + ".tmp")
            train_smolguard(train, tmp, progress=progress, **settings)
            tmp.rename(path)
        elif progress is not None:
            progress(f"teacher: cached {path.name}")
        return cls(
            path,
            key=key,
            max_length=settings.get("max_length", SMOLGUARD_MAX_LENGTH),
            bf16=bool(settings.get("bf16", False)),
        )
