"""The starting model's logits for `anchor_kl`, from its top blocks on the policy's frozen trunk
(training/shared_reference.py): the same numbers as the full model, before and after the policy trains, and
the full model wherever that cannot be shown."""

import pytest
import torch

from test_offline_stages import config, prompts, rows


@pytest.fixture(scope="module")
def three_block_dir(tmp_path_factory):
    from tiller.models import TinyShape, ensure_tiny_policy

    return ensure_tiny_policy(tmp_path_factory.mktemp("models") / "three", seed=3, shape=TinyShape(num_layers=3))


def loaded(model_dir, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, **overrides)


def batch(vocab: int):
    """Three right-padded rows of different lengths, their attention mask and a next-token target mask."""
    torch.manual_seed(1)
    ids = torch.randint(3, vocab, (3, 12))
    attention = torch.ones_like(ids)
    attention[1, 8:] = 0
    attention[2, 5:] = 0
    targets = attention[:, 1:].bool().clone()
    targets[:, :2] = False  # the "prompt"
    return ids, attention, targets


def frozen_below(model, unfrozen: int):
    from tiller.training.freezing import freeze_below

    freeze_below(unfrozen, "sft.unfrozen_layers")(model)
    return model


def test_the_shared_trunk_gives_the_starting_models_logits_while_the_policy_moves(three_block_dir):
    from tiller.training.shared_reference import FullReference, SharedTrunkReference

    policy = frozen_below(loaded(three_block_dir), 1).train()
    full = FullReference(loaded(three_block_dir).eval())
    shared = SharedTrunkReference(policy, loaded(three_block_dir).eval(), 1, "sft.unfrozen_layers")
    assert shared.shared == 2
    ids, attention, targets = batch(policy.config.vocab_size)
    rows_ = torch.tensor([0, 2])  # a sub-batch, as the anchored rows of a mixed batch
    i, j = targets[rows_].nonzero(as_tuple=True)
    with pytest.raises(RuntimeError, match="has not run"):
        shared.logits_at(ids, attention, rows_, i, j)

    policy(input_ids=ids, attention_mask=attention)
    start = full.logits_at(ids, attention, rows_, i, j)
    assert torch.allclose(shared.logits_at(ids, attention, rows_, i, j), start, atol=1e-5)

    with torch.no_grad():  # "training": the top block moves, the trunk does not
        for p in policy.model.layers[2].parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved = policy(input_ids=ids, attention_mask=attention).logits[rows_][i, j]
    assert (moved - start).abs().max() > 1e-2  # the policy left the start ...
    assert torch.allclose(shared.logits_at(ids, attention, rows_, i, j), start, atol=1e-5)  # ... the reference did not
    shared.close()
    assert all(not block._forward_pre_hooks for block in policy.model.layers)


def test_anchor_reference_shares_the_trunk_only_where_a_probe_shows_it_exact(three_block_dir, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tiller.training.shared_reference import FullReference, SharedTrunkReference, anchor_reference

    def pick(policy, model_dir, unfrozen, probe=None):
        probe = probe or batch(policy.config.vocab_size)
        forward = lambda ids, attention: policy(input_ids=ids, attention_mask=attention)  # noqa: E731
        return anchor_reference(policy, forward, model_dir, torch.float32, "cpu", unfrozen, "sft.unfrozen_layers",
                                probe)

    reference, which = pick(frozen_below(loaded(three_block_dir), 1), three_block_dir, 1)
    assert isinstance(reference, SharedTrunkReference) and "on the policy's 2 frozen" in which
    reference, which = pick(loaded(three_block_dir), three_block_dir, None)
    assert isinstance(reference, FullReference) and "every block trains" in which
    # a trunk that trains would pass a probe taken before the first step, and drift after it: refused up front
    reference, which = pick(loaded(three_block_dir), three_block_dir, 1)
    assert isinstance(reference, FullReference) and "the policy trains model.embed_tokens.weight, below" in which
    policy = frozen_below(loaded(three_block_dir), 1)
    ids, attention, targets = batch(policy.config.vocab_size)  # a probe with nothing to compare: not shared
    reference, which = pick(policy, three_block_dir, 1, (ids, attention, torch.zeros_like(targets)))
    assert isinstance(reference, FullReference) and "not checked: the probe batch has no trained tokens" in which
    # dropout in the frozen trunk: in training mode the trunk's output is not the starting model's
    noisy = frozen_below(loaded(three_block_dir, attention_dropout=0.5), 1)
    reference, which = pick(noisy, three_block_dir, 1)
    assert isinstance(reference, FullReference) and "differs from it by" in which
    assert not noisy.model.layers[2]._forward_pre_hooks  # the rejected one left no hook behind
    # no final `norm` where the hooks expect one (GPT-2 calls it ln_f): the full model, said why
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=3, n_head=2)).save_pretrained(gpt2)
    reference, which = pick(frozen_below(GPT2LMHeadModel.from_pretrained(gpt2), 1), gpt2, 1)
    assert isinstance(reference, FullReference) and "no `norm`" in which


def test_sft_with_the_shared_trunk_trains_as_with_the_full_reference(three_block_dir, tmp_path, monkeypatch, capsys):
    from tiller.offline import sft
    from tiller.training import shared_reference

    learned = rows(tmp_path / "sft.jsonl", [{"prompt": p, "completion": "no thanks."} for p in prompts(24, 0)])
    anchored = rows(tmp_path / "anchor.jsonl", [{"prompt": p, "completion": "yes please."} for p in prompts(24, 2)])
    both = f"sft.data=[{{path: {learned}}}, {{path: {anchored}, anchor_kl: 5.0}}]"

    def trained(name: str) -> dict:
        return sft.run(config(tmp_path, three_block_dir, "sft", learned, "train.epochs=2", both,
                              "sft.unfrozen_layers=1", name=name))

    shared = trained("shared")
    assert "anchor_kl reference: the top 1 blocks of the starting model on the policy's 2" in capsys.readouterr().out
    monkeypatch.setattr(shared_reference, "AGREEMENT_NATS", -1.0)  # every probe "disagrees": the full model
    full = trained("full")
    assert "anchor_kl reference: the full starting model (the shared trunk differs" in capsys.readouterr().out
    assert full["eval"]["eval/anchor_kl"] > 1e-4  # the anchor had something to hold
    for key in ("eval/loss", "eval/anchor_kl"):
        assert shared["eval"][key] == pytest.approx(full["eval"][key], rel=1e-3, abs=1e-6)
