"""`tiller rm`: a reward model trained on preference pairs with the Bradley-Terry loss.

    tiller rm configs/offline/rm.yaml                 # rm.data: [{path, weight}] of {prompt, chosen, rejected}
    tiller rm configs/offline/rm.yaml rm.unfrozen_layers=2 rm.margin=0.5

The model is `AutoModelForSequenceClassification` with one score on `model.path` (a base or SFT model: its
`score` head starts fresh). A response's reward is the head's score of the hidden state at its last
non-padding token, read by position from the attention mask, not by looking for pad ids, so a response
ending in an end-of-sequence token that doubles as the pad token is still scored at its end.
`rm.unfrozen_layers: N` trains only the top N transformer blocks, the final norm and the head (the usual
recipe for small preference sets); the rest keep their weights exactly. Held-out pairs report
`eval/accuracy` (chosen scored above rejected) and `eval/margin`. `final/` loads with
`AutoModelForSequenceClassification.from_pretrained`: it is what `judge.reward_model_path` and PPO's
`learner.pg.critic_path` take.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiller.config import Config
from tiller.offline.data import PreferenceExample, Source, read_preferences
from tiller.training.freezing import freeze_below
from tiller.offline.loop import Recipe, fit, max_length, split_held_out, stage_engine
from tiller.training.engine import ModelEngine
from tiller.training.losses import bradley_terry_loss


def pad_pairs(pairs: list[PreferenceExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [2B, T]: every pair's prompt + chosen, then every pair's prompt + rejected."""
    rows = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        attention[i, :len(row)] = 1
    return ids, attention


def rewards(model: torch.nn.Module, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """[N] scores at each row's last attended position (right padding)."""
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=ids, attention_mask=attention).last_hidden_state
    last = attention.sum(-1) - 1
    return model.score(hidden[torch.arange(len(ids), device=ids.device), last]).squeeze(-1).float()


def recipe(cfg: Config, engine: ModelEngine, pad_id: int) -> Recipe:
    rc = cfg.rm

    def scored(pairs: list[PreferenceExample]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, attention = (t.to(engine.device) for t in pad_pairs(pairs, pad_id))
        r = rewards(engine.module, ids, attention)
        return r[:len(pairs)], r[len(pairs):]

    def loss(pairs: list[PreferenceExample]):
        chosen, rejected = scored(pairs)
        mean, metrics = bradley_terry_loss(chosen, rejected, rc.margin, rc.center_coef)
        n = len(pairs)
        return mean * n, {key: value * n for key, value in metrics.items()}  # sums over the pairs

    def evaluate(pairs: list[PreferenceExample]) -> dict[str, float]:
        chosen, rejected = zip(*(scored(pairs[i:i + 16]) for i in range(0, len(pairs), 16)))
        chosen, rejected = torch.cat(chosen), torch.cat(rejected)
        value, metrics = bradley_terry_loss(chosen, rejected, rc.margin, rc.center_coef)
        return {**metrics, "loss": value.item()}

    return Recipe("rm", units=lambda pair: 1, loss=loss, evaluate=evaluate)


def run(cfg: Config, resume: bool = False) -> dict:
    from transformers import AutoModelForSequenceClassification

    from tiller.models import load_tokenizer, prepare_model

    model_dir = Path(prepare_model(cfg))
    tokenizer = load_tokenizer(model_dir)
    sources = [Source(s.path, s.weight) for s in cfg.rm.data]
    pairs = read_preferences(sources, tokenizer, max_length(cfg, model_dir))
    train, held_out = split_held_out(pairs, cfg.train.eval_fraction, cfg.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    freeze = freeze_below(cfg.rm.unfrozen_layers, "rm.unfrozen_layers", heads=("score",))
    engine = stage_engine(cfg, model_dir, AutoModelForSequenceClassification, freeze=freeze,
                          task_type="SEQ_CLS", num_labels=1, pad_token_id=pad_id)
    return fit(cfg, recipe(cfg, engine, pad_id), engine, train, held_out, model_dir, resume)
