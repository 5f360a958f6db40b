"""The offline stages on tiny models built on the spot: SFT learns its responses, a reward model separates an
easy preference set, offline DPO widens the margin with the online learner's own loss, frozen layers stay
frozen, and each stage's final/ feeds the next (SFT -> RM base, SFT -> DPO policy, RM -> reward_model judge)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tiller.config import ConfigError, load_config

pytestmark = pytest.mark.slow


def rows(path, items) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return str(path)


def prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8))) + " " for _ in range(n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("offline-data")
    sft = rows(d / "sft.jsonl", [{"prompt": p, "completion": "no thanks."} for p in prompts(24, 0)])
    # easily separable: the chosen answer always says "good", the rejected one "bad"
    prefs = rows(d / "prefs.jsonl", [{"prompt": p, "chosen": "good good.", "rejected": "bad bad."}
                                     for p in prompts(48, 1)])
    return {"sft": sft, "prefs": prefs}


def config(tmp_path, model_dir, stage: str, data_path: str, *extra: str, name: str | None = None):
    return load_config(None, [f"name={name or stage}", f"output_dir={tmp_path}", f"model.path={model_dir}",
                              "metrics.wandb=disabled", f"{stage}.data=[{{path: {data_path}}}]", "train.lr=1e-3",
                              "train.batch_size=8", "train.schedule=constant", "train.eval_fraction=0.25", *extra])


def test_sft_learns_its_responses_and_writes_a_loadable_final(tiny_policy_dir, tmp_path, data):
    from transformers import AutoModelForCausalLM

    from tiller.offline import sft

    summary = sft.run(config(tmp_path, tiny_policy_dir, "sft", data["sft"], "train.epochs=6"))
    assert summary["eval"]["eval/loss"] < 0.5 * summary["first_eval"]["eval/loss"]
    assert summary["eval"]["eval/token_accuracy"] > 0.9  # "no thanks.<eos>" after any prompt
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "sft" / "final"))
    assert model.config.num_hidden_layers == 2 and (tmp_path / "sft" / "final" / "tokenizer.json").exists()
    history = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["step"] == 0 and "eval/loss" in history[0]  # held-out loss before any training
    assert len(history) == 19 and all("train/lr" in m and "train/loss" in m for m in history[1:])
    assert (tmp_path / "sft" / "plots" / "loss.png").stat().st_size > 0


def test_sft_with_its_lower_layers_frozen_moves_only_the_top_block(tiny_policy_dir, tmp_path, data):
    from transformers import AutoModelForCausalLM

    from tiller.offline import sft

    summary = sft.run(config(tmp_path, tiny_policy_dir, "sft", data["sft"], "train.epochs=3",
                             "sft.unfrozen_layers=1"))
    assert summary["eval"]["eval/loss"] < summary["first_eval"]["eval/loss"]
    old = dict(AutoModelForCausalLM.from_pretrained(str(tiny_policy_dir)).named_parameters())
    new = dict(AutoModelForCausalLM.from_pretrained(str(tmp_path / "sft" / "final")).named_parameters())
    frozen = [n for n in old if ".layers.0." in n or "embed_tokens" in n or n.startswith("lm_head")]
    trained = [n for n in old if ".layers.1." in n and n.endswith("weight") and "norm" not in n]
    assert frozen and all(torch.equal(old[n], new[n]) for n in frozen)  # embeddings, head, block 0: exact
    assert trained and all(not torch.equal(old[n], new[n]) for n in trained)
    with pytest.raises(ValueError, match="sft.unfrozen_layers: 3, but the model has 2 blocks"):
        sft.run(config(tmp_path, tiny_policy_dir, "sft", data["sft"], "sft.unfrozen_layers=3", name="too-many"))


def test_a_reward_model_separates_an_easy_preference_set_with_its_lower_layers_frozen(
        tiny_policy_dir, tmp_path, data):
    from transformers import AutoModelForSequenceClassification

    from tiller.offline import rm

    before = AutoModelForSequenceClassification.from_pretrained(str(tiny_policy_dir), num_labels=1)
    summary = rm.run(config(tmp_path, tiny_policy_dir, "rm", data["prefs"], "train.epochs=4",
                            "rm.unfrozen_layers=1"))
    assert summary["eval"]["eval/accuracy"] > 0.9 and summary["eval"]["eval/margin"] > 0
    after = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm" / "final"))
    old, new = dict(before.named_parameters()), dict(after.named_parameters())
    frozen = [n for n in old if ".layers.0." in n or "embed_tokens" in n]
    trained = [n for n in old if ".layers.1." in n or n.startswith("score")]
    assert frozen and all(torch.equal(old[n], new[n]) for n in frozen)  # below the top block: untouched
    assert all(not torch.equal(old[n], new[n]) for n in trained if not n.startswith("score"))


def test_offline_dpo_widens_the_margin_with_the_online_loss(tiny_policy_dir, tmp_path, data):
    from tiller.offline import dpo

    summary = dpo.run(config(tmp_path, tiny_policy_dir, "dpo", data["prefs"], "train.epochs=3",
                             "dpo.loss.beta=0.5"))
    first, last = summary["first_eval"], summary["eval"]
    assert last["eval/rewards/margin"] > first["eval/rewards/margin"] + 0.5
    assert last["eval/rewards/accuracy"] > 0.9


def test_the_offline_dpo_loss_is_the_online_learners_function(tiny_policy_dir, tmp_path, data):
    from tiller.config import DPOConfig
    from tiller.models import load_tokenizer
    from tiller.offline import dpo
    from tiller.offline.data import Source, read_preferences
    from tiller.offline.loop import stage_engine
    from tiller.training import losses
    from tiller.training.engine import load_frozen

    cfg = config(tmp_path, tiny_policy_dir, "dpo", data["prefs"], "dpo.loss.beta=0.3", name="dpo-check")
    tokenizer = load_tokenizer(tiny_policy_dir)
    examples = read_preferences([Source(data["prefs"])], tokenizer)[:4]
    engine = stage_engine(cfg, tiny_policy_dir)
    reference = load_frozen(tiny_policy_dir, engine.dtype, engine.device)
    pairs = dpo.with_reference(examples, reference, tokenizer.pad_token_id, engine.device)
    total, metrics = dpo.recipe(cfg, engine, tokenizer.pad_token_id, None).loss(pairs)
    # by hand: the summed log-probs of each response under both models, through the paper's equation
    with torch.no_grad():
        batch = dpo._batch(pairs, tokenizer.pad_token_id, engine.device)
        from tiller.training.pairs import model_logprobs, pair_logprobs

        policy = pair_logprobs(model_logprobs(engine), batch)
        ref = pair_logprobs(model_logprobs(reference), batch)
    expected, _ = losses.dpo_sigmoid_loss(policy[:4], policy[4:], ref[:4], ref[4:], beta=0.3)
    assert total.item() / 4 == pytest.approx(expected.item(), abs=1e-5)
    assert DPOConfig().variant == "sigmoid"


def test_each_final_feeds_the_next_stage(tiny_policy_dir, tmp_path, data):
    """SFT -> RM base and DPO policy, RM -> the reward_model judge, with no conversion in between."""
    from tiller.actors.judges import build_judge
    from tiller.offline import dpo, rm, sft

    sft.run(config(tmp_path, tiny_policy_dir, "sft", data["sft"], "train.max_steps=2"))
    sft_final = tmp_path / "sft" / "final"
    rm.run(config(tmp_path, sft_final, "rm", data["prefs"], "train.max_steps=2"))
    dpo.run(config(tmp_path, sft_final, "dpo", data["prefs"], "train.max_steps=2"))
    cfg = load_config(None, [f"model.path={sft_final}", "judge.kind=reward_model",
                             f"judge.reward_model_path={tmp_path / 'rm' / 'final'}"])
    judge = build_judge(cfg.judge, sft_final)
    assert type(judge).__name__ == "RewardModelJudge"
    from tiller.config import Config, LearnerConfig, ModelConfig, PGConfig
    from tiller.learner.trainer import PolicyTrainer

    ppo = Config(model=ModelConfig(path=str(sft_final)),
                 learner=LearnerConfig(algorithm="ppo", pg=PGConfig(critic_path=str(tmp_path / "rm" / "final"))))
    trainer = PolicyTrainer(ppo, sft_final, with_critic=True)  # the reward model's head starts PPO's critic
    from transformers import AutoModelForSequenceClassification

    score = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm" / "final")).score.weight
    assert torch.equal(trainer.value.module.score.weight.detach(), score.detach())


def test_a_malformed_row_stops_the_stage_before_training(tiny_policy_dir, tmp_path):
    from tiller.offline import sft

    bad = rows(tmp_path / "bad.jsonl", [{"prompt": "a ", "completion": "b"}, {"prompt": "a ", "completion": 7}])
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: 'completion' must be a non-empty string, got int"):
        sft.run(config(tmp_path, tiny_policy_dir, "sft", bad))
    assert not (tmp_path / "sft" / "metrics.jsonl").exists()


def test_a_stage_resumed_from_its_checkpoint_trains_the_same_steps(tiny_policy_dir, tmp_path, data, monkeypatch):
    from tiller.offline import loop, sft

    def losses(name: str) -> dict[int, float]:
        rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return {m["step"]: m["train/loss"] for m in map(json.loads, rows) if "train/loss" in m}

    args = ("train.max_steps=4", "train.checkpoint_every=2", "train.eval_fraction=0")
    sft.run(config(tmp_path, tiny_policy_dir, "sft", data["sft"], *args, name="whole"))
    real_step, calls = loop._step, []

    def crash_at_step_3(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies after the checkpoint of step 2
        return real_step(*a, **k)

    monkeypatch.setattr(loop, "_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        sft.run(config(tmp_path, tiny_policy_dir, "sft", data["sft"], *args, name="resumed"))
    monkeypatch.setattr(loop, "_step", real_step)
    sft.run(config(tmp_path, tiny_policy_dir, "sft", data["sft"], *args, name="resumed"), resume=True)
    whole, resumed = losses("whole"), losses("resumed")
    assert sorted(resumed) == [1, 2, 3, 4]  # the metrics cut back to the checkpoint, then continued
    for step in (3, 4):  # the same batches, optimizer state and RNG as the run that never stopped
        assert resumed[step] == pytest.approx(whole[step], rel=1e-5)


def test_packing_fills_rows_and_keeps_every_trained_token(tiny_policy_dir, tmp_path, data):
    from tiller.models import load_tokenizer
    from tiller.offline import sft
    from tiller.offline.data import Source, read_sft

    examples = read_sft([Source(data["sft"])], load_tokenizer(tiny_policy_dir))
    packed = sft.pack(examples, max_length=64)
    assert len(packed) < len(examples) and all(len(r.input_ids) <= 64 for r in packed)
    assert sum(sum(r.trained) for r in packed) == sum(sum(e.trained) for e in examples)
    assert [t for r in packed for t in r.input_ids] == [t for e in examples for t in e.input_ids]  # in order, none cut
    summary = sft.run(config(tmp_path, tiny_policy_dir, "sft", data["sft"], "train.max_steps=2", "sft.packing=true",
                             "train.max_length=64", name="packed"))
    assert summary["steps"] == 2


def test_decision_weights_count_the_first_tokens_of_each_response_more():
    from tiller.offline.sft import decision_weights

    targets = torch.tensor([[0, 1, 1, 1, 0, 1, 1], [1, 1, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert decision_weights(targets, 2, 3.0).tolist() == [[0, 3, 3, 1, 0, 3, 3], [3, 3, 0, 0, 0, 0, 3]]
    assert decision_weights(targets, 0, 3.0).tolist() == targets.float().tolist()
    assert decision_weights(targets, 5, 1.0).tolist() == targets.float().tolist()


def test_token_kl_is_the_forward_kl_and_pulls_every_token_toward_the_reference():
    from tiller.training.losses import token_kl

    reference = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    policy = torch.tensor([[0.0, 0.0], [0.0, 1.0]], requires_grad=True)
    kl = token_kl(policy, reference)
    p, q = torch.softmax(reference[1], -1), torch.softmax(policy[1].detach(), -1)
    assert kl[0].item() == pytest.approx(0.0, abs=1e-7)  # the same distribution
    assert kl[1].item() == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-6)
    kl.sum().backward()
    assert torch.allclose(policy.grad[1], q - p, atol=1e-6)  # d KL / d logits: p_policy - p_reference


def test_sft_anchor_kl_holds_the_anchored_rows_where_the_starting_model_was(tiny_policy_dir, tmp_path, data):
    from tiller.models import load_tokenizer
    from tiller.offline import sft
    from tiller.offline.data import Source, read_sft

    anchored = rows(tmp_path / "anchor.jsonl", [{"prompt": p, "completion": "yes please."} for p in prompts(24, 2)])
    examples = read_sft([Source(data["sft"]), Source(anchored, anchor_kl=0.5)], load_tokenizer(tiny_policy_dir))
    assert [e.anchor_kl for e in examples] == [0.0] * 24 + [0.5] * 24

    def trained(coef: float, name: str) -> dict:
        both = f"sft.data=[{{path: {data['sft']}}}, {{path: {anchored}, anchor_kl: {coef}}}]"
        return sft.run(config(tmp_path, tiny_policy_dir, "sft", data["sft"], "train.epochs=4", both, name=name))

    loose, held = trained(1e-6, "loose"), trained(20.0, "held")
    # before training the policy is the reference: nothing to hold yet
    assert loose["first_eval"]["eval/anchor_kl"] == pytest.approx(0.0, abs=1e-5)
    assert loose["eval"]["eval/anchor_kl"] > 0.05
    assert held["eval"]["eval/anchor_kl"] < 0.5 * loose["eval"]["eval/anchor_kl"]
    history = [json.loads(line) for line in (tmp_path / "held" / "metrics.jsonl").read_text().splitlines()]
    assert all("train/anchor_kl" in m for m in history[1:])


def test_anchor_kl_is_refused_where_it_has_no_meaning(tiny_policy_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"dpo.data\[0\].anchor_kl: only SFT files"):
        load_config(None, ["dpo.data=[{path: p.jsonl, anchor_kl: 1.0}]"])
    with pytest.raises(ConfigError, match="sft.packing: not with an anchor_kl"):
        load_config(None, ["sft.packing=true", "sft.data=[{path: a.jsonl, anchor_kl: 1.0}]"])


def test_sft_decision_weighting_changes_what_the_loss_averages_over_not_the_reported_loss(tiny_policy_dir,
                                                                                         tmp_path, data):
    from tiller.models import load_tokenizer
    from tiller.offline import sft
    from tiller.offline.data import Source, read_sft

    examples = read_sft([Source(data["sft"])], load_tokenizer(tiny_policy_dir))
    assert all(sum(e.trained) > 2 for e in examples)
    plain = sft.run(config(tmp_path, tiny_policy_dir, "sft", data["sft"], "train.max_steps=1", name="plain"))
    weighted = sft.run(config(tmp_path, tiny_policy_dir, "sft", data["sft"], "train.max_steps=1",
                              "sft.decision_tokens=2", "sft.decision_weight=4", name="weighted"))
    # the same model before training, evaluated unweighted by both
    assert weighted["first_eval"]["eval/loss"] == pytest.approx(plain["first_eval"]["eval/loss"], rel=1e-6)

    def step_units(name):
        history = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return history[1]["train/units"]

    # each of the 8 examples in the step: its trained tokens, plus 3 more for each of its first 2
    assert step_units("weighted") == pytest.approx(step_units("plain") + 8 * 2 * 3)
