"""The DPO loss and log-probability functions against a hand computation, TRL's DPOTrainer and full softmax."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from feddetox.training.dpo import chunked_token_logps, dpo_loss, sequence_logps, token_logps

torch.set_num_threads(1)


def test_dpo_loss_matches_a_hand_computation():
    pc, pr = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    rc, rr = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -2.5])
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.1)
    # pair 0: logratios +1 and -1 -> z = 0.1 * 2 = 0.2; pair 1: +1 and -0.5 -> z = 0.15
    for i, z in enumerate((0.2, 0.15)):
        assert losses[i].item() == pytest.approx(math.log(1 + math.exp(-z)), rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.1, 0.1])
    assert rejected.tolist() == pytest.approx([-0.1, -0.05])


def test_dpo_loss_at_equal_policy_and_reference_is_log_two():
    logps = torch.tensor([-7.0, -3.0, -100.0])
    losses, chosen, rejected = dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.5)
    assert losses.tolist() == pytest.approx([math.log(2)] * 3)
    assert chosen.abs().max() == 0 and rejected.abs().max() == 0


def test_dpo_loss_gradient_flows_only_through_the_policy():
    pc = torch.tensor([-3.0], requires_grad=True)
    pr = torch.tensor([-2.0], requires_grad=True)
    losses, chosen, _ = dpo_loss(pc, pr, torch.tensor([-3.0]), torch.tensor([-2.0]), beta=1.0)
    losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.5) and pr.grad.item() == pytest.approx(0.5)
    assert not chosen.requires_grad


def _trl_loss(beta, per_token_policy, completion_mask, ref_chosen, ref_rejected):
    """TRL 1.16's DPOTrainer._compute_loss, called with its default DPOConfig on given log-probabilities.

    A fake only where a real one cannot exist without a model: `model(...)` returns the per-token log-probs
    that TRL's fused LM head would have produced; the accelerator is the single-process identity.
    """
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir="unused", beta=beta, report_to=[], use_cpu=True)
    rows, width = completion_mask.shape

    def model(**_):
        return SimpleNamespace(
            log_probs=per_token_policy,
            entropy=torch.zeros(rows, width - 1),
            mean_logits=torch.zeros(rows, width - 1),
            is_top1=torch.zeros(rows, width - 1, dtype=torch.bool),
        )

    model.training = True
    identity = SimpleNamespace(
        device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t, unwrap_model=lambda m: m
    )
    trainer = SimpleNamespace(
        model=model,
        accelerator=identity,
        aux_loss_enabled=False,
        ld_alpha=args.ld_alpha,
        precompute_ref_logps=True,
        f_divergence_type=args.f_divergence_type,
        loss_types=args.loss_type,
        loss_weights=args.loss_weights or [1.0] * len(args.loss_type),
        beta=beta,
        label_smoothing=args.label_smoothing,
        use_weighting=args.use_weighting,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    assert trainer.loss_types == ["sigmoid"], "TRL's default loss is the sigmoid DPO loss"
    inputs = {
        "input_ids": torch.zeros(rows, width, dtype=torch.long),
        "attention_mask": torch.ones(rows, width, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_matches_trl_on_the_same_log_probabilities(beta):
    gen = torch.Generator().manual_seed(0)
    pairs, width = 3, 9
    completion_mask = torch.zeros(2 * pairs, width, dtype=torch.long)
    for row, start in enumerate((3, 5, 2, 4, 6, 3)):
        completion_mask[row, start:] = 1
    per_token = -torch.rand(2 * pairs, width - 1, generator=gen) * 3 * completion_mask[:, 1:]  # TRL zeroes non-answers
    ref = -torch.rand(2 * pairs, generator=gen) * 10
    trl_loss, trl_metrics = _trl_loss(beta, per_token, completion_mask, ref[:pairs], ref[pairs:])

    policy = per_token.sum(dim=1)
    losses, chosen, rejected = dpo_loss(policy[:pairs], policy[pairs:], ref[:pairs], ref[pairs:], beta)
    assert losses.mean().item() == pytest.approx(trl_loss.item(), rel=1e-6)
    assert chosen.mean().item() == pytest.approx(trl_metrics["rewards/chosen"], rel=1e-6)
    assert rejected.mean().item() == pytest.approx(trl_metrics["rewards/rejected"], rel=1e-6)
    assert (chosen - rejected).mean().item() == pytest.approx(trl_metrics["rewards/margins"], rel=1e-6)
    assert (chosen > rejected).float().mean().item() == pytest.approx(trl_metrics["rewards/accuracies"])


def test_sequence_logps_masks_prompt_and_padding():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 11, generator=gen)
    labels = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, -100, -100]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    logp = torch.log_softmax(logits, dim=-1)
    expected = [
        sum(logp[0, t, labels[0, t]].item() for t in (2, 3, 4)),
        sum(logp[1, t, labels[1, t]].item() for t in (1, 2)),
    ]
    assert sequence_logps(logits, labels, mask).tolist() == pytest.approx(expected, rel=1e-5)
    # what the prompt and the padding hold does not matter
    changed = logits.clone()
    changed[0, :2] += 5.0
    changed[1, 3:] -= 7.0
    assert torch.allclose(sequence_logps(changed, labels, mask), sequence_logps(logits, labels, mask))


@pytest.mark.parametrize("chunk", [0, 1, 3, 128])
def test_chunked_token_logps_equals_full_softmax_values_and_gradients(chunk):
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(7, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 50, (7,), generator=gen)
    upstream = torch.randn(7, generator=gen, dtype=torch.float64)

    full = token_logps(hidden @ weight.T, labels)
    (full.double() * upstream).sum().backward()
    expected_grad, hidden.grad = hidden.grad.clone(), None

    ours = chunked_token_logps(hidden, weight, labels, chunk=chunk, compute_dtype=torch.float64)
    assert torch.allclose(ours.double(), full.double(), atol=1e-5)
    (ours.double() * upstream).sum().backward()
    assert torch.allclose(hidden.grad, expected_grad, atol=1e-5)


def test_chunked_token_logps_gives_the_head_weight_its_gradient_when_asked():
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    weight = torch.randn(20, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 20, (5,), generator=gen)
    token_logps(hidden @ weight.T, labels).sum().backward()
    expected, weight.grad = weight.grad.clone(), None
    chunked_token_logps(hidden, weight, labels, chunk=2, compute_dtype=torch.float64).sum().backward()
    assert torch.allclose(weight.grad, expected, atol=1e-6)


def test_chunked_token_logps_of_no_rows_is_empty():
    out = chunked_token_logps(torch.zeros(0, 4), torch.zeros(10, 4), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)
