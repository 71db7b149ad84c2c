"""The `.pte` export: int4 (default) and int8 word embeddings on a tiny BERT, how the graph is lowered, and
the ExecuTorch runtime loading and running the programs (real export, real runtime, no fakes)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from export.bundle import minilm_tokenizer_json, tiny_bert_classifier
from export.pte import PteInfo, export_pte, quantize_student
from export.student_graph import ExportableBert
from feddetox.data.records import Conversation
from feddetox.errors import ConfigError
from feddetox.guardian import encode, load_tokenizer, runtime_threads, set_runtime_threads

torch.set_num_threads(1)
LENGTH = 32


def _conversations() -> list[Conversation]:
    prompts = ["How do I bake bread?", "Write a poem about the sea.", "How can I pick a lock?", "Hello there"]
    answers = ["", "Sure, here are the steps.", "I can't help with that.", "Mix flour and water, then wait."]
    return [Conversation(p * (1 + i % 3), a) for i, p in enumerate(prompts) for a in answers]


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return ExportableBert.from_hf(tiny_bert_classifier(minilm_tokenizer_json()))


@pytest.fixture(scope="module")
def inputs() -> list[torch.Tensor]:
    tok = load_tokenizer(minilm_tokenizer_json(), max_length=LENGTH)
    return [torch.from_numpy(a) for a in encode(tok, _conversations(), pad_to=LENGTH).arrays()]


@pytest.fixture(scope="module")
def programs(tiny: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, PteInfo]]:
    """The tiny model exported with an int4 and with an int8 word embedding (int8 linears both)."""
    out = tmp_path_factory.mktemp("pte")
    return {
        emb: (out / f"{emb}.pte", export_pte(tiny, out / f"{emb}.pte", max_length=LENGTH, embedding=emb))
        for emb in ("int4", "int8")
    }


def _run(path: Path, inputs: list[torch.Tensor]) -> np.ndarray:
    import executorch.kernels.quantized  # noqa: F401  embedding_4bit / embedding_byte
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(path).load_method("forward")
    rows = [method.execute([x[i : i + 1] for x in inputs])[0] for i in range(inputs[0].shape[0])]
    return torch.cat(rows).numpy()


def test_int4_embedding_keeps_16_levels_a_group_and_a_small_error(tiny: torch.nn.Module) -> None:
    fp32 = tiny.embeddings.word_embeddings.weight.detach().clone()
    model = quantize_student(copy.deepcopy(tiny), embedding="int4", linear="fp32")
    table = model.embeddings.word_embeddings.weight
    deq = table.dequantize().detach()
    groups, deq_groups = fp32.view(fp32.shape[0], -1, 32), deq.view(fp32.shape[0], -1, 32)  # (V, C/32, 32)
    levels = max(len(torch.unique(g)) for g in deq_groups[:200].reshape(-1, 32))
    assert levels <= 16  # int4: at most 16 values in a group
    step = groups.abs().amax(-1, keepdim=True) / 7.5  # a max-abs int4 step of each group
    err = (deq_groups - groups).abs()
    # HQQ may clip an outlier by more than a step, but on average it rounds at least as well as max-abs scales
    assert float(err.mean()) <= float(step.expand_as(err).mean()) / 4
    assert 0 < float((deq - fp32).norm() / fp32.norm()) < 0.12


def test_every_linear_runs_in_xnnpack_and_the_embedding_in_its_quantized_kernel(programs) -> None:
    for emb, (_, info) in programs.items():
        assert info.delegates >= 1
        assert not any(k in op for op in info.portable_ops for k in ("linear", "addmm", "mm", "dequantize")), (
            info.summary()
        )
        kernel = "embedding_4bit" if emb == "int4" else "embedding_byte"
        assert any(kernel in op for op in info.portable_ops), info.summary()
        # 2 layers x 6 linears + pooler + classifier, and attention's 2 bmm per layer
        assert sum(n for op, n in info.delegated_ops.items() if "linear" in op or "addmm" in op or "mm" in op) >= 14


def test_int4_program_is_smaller_than_int8(programs) -> None:
    int4, int8 = programs["int4"][1].nbytes, programs["int8"][1].nbytes
    # the table is 30522 x 32: int8 ~0.98 MB + fp32 row scales, int4 half of its bytes + one scale per group
    assert int8 - int4 > 0.4e6
    assert programs["int4"][0].stat().st_size == int4


def test_runtime_runs_both_programs_as_the_eager_quantized_model(tiny: torch.nn.Module, inputs, programs) -> None:
    """The program computes what torchao's quantized eager model computes (decision parity with the fp32 model
    over 500 conversations is tests/guardian/test_pte_parity.py)."""
    for emb, (path, _) in programs.items():
        quantized = quantize_student(copy.deepcopy(tiny), embedding=emb, linear="int8")
        with torch.no_grad():
            eager = torch.softmax(quantized(*inputs), -1)[:, 1].numpy()
        assert eager.std() > 0.02
        got = torch.softmax(torch.from_numpy(_run(path, inputs)), -1)[:, 1].numpy()
        assert np.abs(got - eager).max() < 0.02, emb


def test_bad_schemes_are_refused_by_name(tiny: torch.nn.Module) -> None:
    with pytest.raises(ConfigError, match="embedding scheme 'int3'"):
        quantize_student(copy.deepcopy(tiny), embedding="int3")
    with pytest.raises(ConfigError, match="linear scheme 'bf16'"):
        quantize_student(copy.deepcopy(tiny), linear="bf16")
    with pytest.raises(ConfigError, match="not a multiple of groups of 24"):
        quantize_student(copy.deepcopy(tiny), embedding="int4", group_size=24)


def test_runtime_thread_pool_is_sized_on_request() -> None:
    before = runtime_threads()
    try:
        assert set_runtime_threads(1) == 1
        assert runtime_threads() == 1
        with pytest.raises(ConfigError, match="positive integer"):
            set_runtime_threads(0)
    finally:
        set_runtime_threads(before)
