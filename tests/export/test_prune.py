"""Feed-forward pruning of the student: the importance arithmetic, and that pruning removes exactly those units."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from export.prune import ffn_importance, keep_indices, prune_ffn, unit_importance
from feddetox.models.loading import load_encoder


def test_unit_importance_is_mean_activation_times_output_column_norm() -> None:
    activation = torch.tensor([1.0, 0.5, 2.0])
    w_out = torch.tensor([[3.0, 0.0, 1.0], [4.0, 1.0, 0.0]])  # (hidden 2, intermediate 3); column norms 5, 1, 1
    assert torch.allclose(unit_importance(activation, w_out), torch.tensor([5.0, 0.5, 2.0]))
    with pytest.raises(ValueError, match="2 activations"):
        unit_importance(activation[:2], w_out)


def test_keep_indices_takes_the_largest_in_their_original_order() -> None:
    assert keep_indices(torch.tensor([0.1, 3.0, 0.2, 2.0, 5.0]), 3).tolist() == [1, 3, 4]
    with pytest.raises(ValueError, match="keep must be in 1..5"):
        keep_indices(torch.ones(5), 6)


def _batches(tokens: int = 12) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (4, tokens), generator=g)
    mask = torch.ones(4, tokens, dtype=torch.long)
    mask[2:, tokens // 2 :] = 0  # padding does not count
    return [{"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}]


def test_pruning_units_that_write_nothing_leaves_the_output_unchanged(tiny_bert_path: Path, tmp_path: Path) -> None:
    model = load_encoder(tiny_bert_path, num_labels=2)[0]
    inner = model.config.intermediate_size
    dead = torch.arange(0, inner, 4)  # a quarter of every layer's units write a zero column
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.output.dense.weight[:, dead] = 0.0
    batch = _batches()[0]
    before = model(**batch).logits
    scores = ffn_importance(model, _batches())
    assert all(s.shape == (inner,) and bool((s[dead] == 0).all()) and bool((s > 0).sum() > 0) for s in scores)
    prune_ffn(model, inner - len(dead), scores)
    for layer in model.bert.encoder.layer:
        assert layer.intermediate.dense.weight.shape == (inner - len(dead), model.config.hidden_size)
        assert layer.output.dense.weight.shape == (model.config.hidden_size, inner - len(dead))
    assert torch.allclose(model(**batch).logits, before, atol=1e-5)
    # what is saved loads back with the narrower layers
    model.save_pretrained(tmp_path / "pruned")
    again = load_encoder(tmp_path / "pruned", num_labels=2)[0]
    assert again.config.intermediate_size == inner - len(dead)
    assert torch.allclose(again(**batch).logits, before, atol=1e-5)


def test_pruning_live_units_changes_the_output(tiny_bert_path: Path) -> None:
    model = load_encoder(tiny_bert_path, num_labels=2)[0]
    batch = _batches()[0]
    before = model(**batch).logits
    prune_ffn(model, model.config.intermediate_size // 2, ffn_importance(model, _batches()))
    assert not torch.allclose(model(**batch).logits, before, atol=1e-5)
    with pytest.raises(ValueError, match="importance vectors"):
        prune_ffn(model, 4, [torch.ones(model.config.intermediate_size // 2)])


def test_the_build_prunes_a_fresh_student_and_names_it(tiny_bert_path: Path, tmp_path: Path) -> None:
    from export.build import _prune_batches, _student, _student_id
    from export.bundle import minilm_tokenizer_json
    from feddetox.data.records import Conversation
    from feddetox.errors import ConfigError
    from feddetox.guardian import load_tokenizer

    sample = [Conversation(f"How do I bake bread number {i}?", "Mix flour and water.", 0) for i in range(40)]
    batches = _prune_batches(sample, 0, load_tokenizer(minilm_tokenizer_json()))
    inner = load_encoder(tiny_bert_path, num_labels=2)[0].config.intermediate_size
    pruned = _student(tmp_path / "none", str(tiny_bert_path), 0, ffn=inner // 2, batches=batches)
    assert pruned.config.intermediate_size == inner // 2
    assert all(layer.output.dense.in_features == inner // 2 for layer in pruned.bert.encoder.layer)
    assert _student(tmp_path / "none", str(tiny_bert_path), 0).config.intermediate_size == inner
    with pytest.raises(ConfigError, match="student_ffn"):
        _student(tmp_path / "none", str(tiny_bert_path), 0, ffn=inner + 1, batches=batches)
    assert _student_id("/models/all-MiniLM-L6-v2", 1024) == "minilm-l6:all-MiniLM-L6-v2:ffn1024"
    assert _student_id("/models/all-MiniLM-L6-v2", 0) == "minilm-l6:all-MiniLM-L6-v2"
