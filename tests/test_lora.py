"""LoRA on every stage: only the adapters (and a reward model's head) train, final/ holds the merged model
that from_pretrained and vLLM read plus the adapter beside it, and the online learner publishes and announces
the plain model's names with the adapters merged in."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tiller.config import ConfigError, load_config
from tiller.training.lora import checkpoint_name

pytestmark = pytest.mark.slow


def test_peft_names_map_back_to_checkpoint_names():
    assert checkpoint_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight") == \
        "model.layers.0.self_attn.q_proj.weight"
    assert checkpoint_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight") is None
    assert checkpoint_name("base_model.model.score.modules_to_save.default.weight") == "score.weight"
    assert checkpoint_name("base_model.model.score.original_module.weight") is None
    assert checkpoint_name("model.norm.weight") == "model.norm.weight"  # a plain model's names pass through


def test_lora_refuses_zero3_and_frozen_layers_together():
    with pytest.raises(ConfigError, match="model.lora.r: LoRA with train.zero_stage 3"):
        load_config(None, ["model.lora.r=4", "train.zero_stage=3"])
    with pytest.raises(ConfigError, match="rm.unfrozen_layers: with model.lora.r > 0"):
        load_config(None, ["model.lora.r=4", "rm.unfrozen_layers=1"])
    with pytest.raises(ConfigError, match="sft.unfrozen_layers: with model.lora.r > 0"):
        load_config(None, ["model.lora.r=4", "sft.unfrozen_layers=2"])
    with pytest.raises(ConfigError, match="learner.unfrozen_layers: with model.lora.r > 0"):
        load_config(None, ["model.lora.r=4", "learner.unfrozen_layers=2"])


def test_sft_with_lora_trains_adapters_and_writes_the_merged_model(tiny_policy_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tiller.offline import sft

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{c}{c} ", "completion": "yes."}) + "\n" for c in "abcdefgh"))
    sft.run(load_config(None, ["name=lora-sft", f"output_dir={tmp_path}", f"model.path={tiny_policy_dir}",
                               "metrics.wandb=disabled", f"sft.data=[{{path: {data}}}]", "train.lr=1e-2",
                               "train.max_steps=3", "train.eval_fraction=0", "model.lora.r=4"]))
    final = tmp_path / "lora-sft" / "final"
    assert (final / "adapter" / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_policy_dir))
    merged = AutoModelForCausalLM.from_pretrained(str(final))  # a plain model: no peft needed to read it
    before, after = dict(base.named_parameters()), dict(merged.named_parameters())
    assert set(before) == set(after)
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
    from peft import PeftModel  # the adapter on the base model gives the merged model's outputs

    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_policy_dir)), str(final / "adapter"))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(adapted(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)


def test_a_lora_policy_publishes_and_announces_the_plain_models_names(tiny_policy_dir):
    from tiller.config import Config, LearnerConfig, LoRAConfig, ModelConfig
    from tiller.learner.model_card import model_card
    from tiller.learner.trainer import PolicyTrainer

    cfg = Config(model=ModelConfig(path=str(tiny_policy_dir), lora=LoRAConfig(r=4)), learner=LearnerConfig())
    trainer = PolicyTrainer(cfg, tiny_policy_dir)
    trainable = [n for n, p in trainer.module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # only the adapters train
    with torch.no_grad():  # move the adapters off zero, so merging them changes the weights
        for name, p in trainer.module.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    published = {n: t for bucket in trainer.weight_buckets(1 << 20) for n, t in bucket}
    plain = dict(trainer.reference.named_parameters(remove_duplicate=False))
    assert set(plain) <= set(published) and all(published[n].shape == plain[n].shape for n in plain)
    assert not torch.equal(published["model.layers.0.self_attn.q_proj.weight"],
                           plain["model.layers.0.self_attn.q_proj.weight"])  # merged in
    assert torch.equal(published["model.layers.0.mlp.up_proj.weight"], plain["model.layers.0.mlp.up_proj.weight"])
    card = model_card(trainer, tiny_policy_dir, "float32", 1)
    ref_card = model_card(SimpleNamespace(reference=trainer.reference, module=trainer.reference), tiny_policy_dir,
                          "float32", 1)
    assert (card.names, card.shapes) == (ref_card.names, ref_card.shapes)
    # merged only while publishing: the trained module still holds its unmerged base weights
    assert torch.equal(dict(trainer.module.named_parameters())[
        "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"], plain["model.layers.0.self_attn.q_proj.weight"])
