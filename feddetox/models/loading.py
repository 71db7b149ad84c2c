"""Load a model and its tokenizer from a registry name, a local folder or a hub id.

    from feddetox.models.loading import load_causal_lm
    model, tokenizer = load_causal_lm("smollm2-135m-instruct")   # after `feddetox models pull smollm2-135m-instruct`

`resolve` decides what a name means: a registry name is its cached folder (checked; not pulled here), an
existing path is itself, and an `org/name` hub id goes to `from_pretrained` as it is. Anything else is an
error that says which and what to run. `resolve_pulling` pulls a registry model first when it is missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from feddetox.errors import ModelNotFoundError
from feddetox.models import store
from feddetox.models.registry import REGISTRY

#: `org/name` (the hub's namespaced ids); a bare word is taken for a mistyped registry name instead
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1


def resolve(name_or_path: str | Path) -> str:
    """A registry name -> its cached folder; an existing local path -> itself; an `org/name` hub id -> itself.

    Raises `ModelNotFoundError` for an unknown name, a missing folder, or a registry model not pulled yet,
    and `ChecksumError` when a cached model's weights were changed since the pull.
    """
    text = str(name_or_path)
    if text in REGISTRY:
        return str(store.cached_path(text))
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(
                f"{path} is a file; a model is a folder with config.json and the weights",
                hint="give the folder that `save_pretrained` wrote",
            )
        return str(path)
    if isinstance(name_or_path, Path) or _looks_like_path(text):
        raise ModelNotFoundError(f"no model folder at {path}", hint="check the path, or give a registry name")
    if _HUB_ID.match(text):
        return text
    known = ", ".join(sorted(REGISTRY))
    raise ModelNotFoundError(
        f"unknown model {text!r}: not a registry name ({known}), not an existing folder, not an `org/name` hub id",
        hint="run `feddetox models list`",
    )


def resolve_pulling(name_or_path: str | Path) -> str:
    """`resolve`, after pulling a registry model that is not cached yet (for commands that set up on their own)."""
    if str(name_or_path) in REGISTRY and not store.is_cached(str(name_or_path)):
        store.pull(str(name_or_path))
    return resolve(name_or_path)


def _check_folder(source: str, *, needs_weights: bool) -> None:
    """Clear errors for a local folder that is not a saved model (hub ids are left to `from_pretrained`)."""
    folder = Path(source)
    if not folder.is_dir():
        return
    if needs_weights and not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"model folder {folder} has no config.json", hint="give the folder that `save_pretrained` wrote"
        )
    if needs_weights:
        store.weights_files(folder)  # raises a ModelNotFoundError that names the folder


def _from_pretrained(cls: Any, source: str, what: str, **kwargs: Any) -> Any:
    try:
        return cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot load the {what} from {source}: {exc}") from exc


def load_tokenizer(name_or_path: str | Path) -> Any:
    """The tokenizer of a registry model, a local folder or a hub id (`AutoTokenizer`)."""
    from transformers import AutoTokenizer

    source = resolve(name_or_path)
    _check_folder(source, needs_weights=False)
    tokenizer = _from_pretrained(AutoTokenizer, source, "tokenizer")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str | Path, *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) of a causal LM (`AutoModelForCausalLM`), in eval mode, in `dtype`."""
    from transformers import AutoModelForCausalLM

    source = resolve(name_or_path)
    _check_folder(source, needs_weights=True)
    model = _from_pretrained(AutoModelForCausalLM, source, "causal LM", dtype=dtype)
    model.eval()
    return model, load_tokenizer(source)


def load_encoder(name_or_path: str | Path, *, num_labels: int | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of an encoder, in eval mode.

    `num_labels=None` gives the bare encoder (`AutoModel`); a number gives a sequence classifier
    (`AutoModelForSequenceClassification`) whose head is newly initialised unless the folder holds one.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification

    source = resolve(name_or_path)
    _check_folder(source, needs_weights=True)
    if num_labels is None:
        model = _from_pretrained(AutoModel, source, "encoder")
    else:
        model = _from_pretrained(AutoModelForSequenceClassification, source, "classifier", num_labels=num_labels)
    model.eval()
    return model, load_tokenizer(source)


def weights_sha256(name_or_path: str | Path) -> str:
    """sha256 of the model's safetensors weights: the base-model hash a run records.

    For a registry name it is the digest recorded at pull time (after `cached_path`'s check); for a local
    folder it is computed. A hub id has no local weights to hash: `ModelNotFoundError`.
    """
    text = str(name_or_path)
    source = resolve(name_or_path)
    if text in REGISTRY:
        manifest = store.read_manifest(text)
        assert manifest is not None  # resolve() checked it
        return manifest["weights_sha256"]
    folder = Path(source)
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"cannot hash the weights of hub id {source!r}: they are not on this machine",
            hint="save the model to a folder with `save_pretrained` and pass the folder",
        )
    return store.folder_weights_sha256(folder)
