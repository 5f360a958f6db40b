"""`tiller dpo`: offline DPO on preference pairs, through the online learner's own loss functions.

    tiller dpo configs/offline/dpo.yaml                       # dpo.data: [{path, weight}] of {prompt, chosen, rejected}
    tiller dpo configs/offline/dpo.yaml dpo.loss.variant=ipo dpo.loss.beta=0.5 dpo.nll_coef=0.2

The loss is `training.pairs.preference_loss`, the function online DPO steps with: sigmoid (with label
smoothing), IPO or SimPO, on summed or per-token-mean log-probs (`dpo.loss`), one implementation for both
stages. `dpo.nll_coef` adds the chosen response's per-token negative log-likelihood (RPO, Pang et al. 2024,
https://arxiv.org/abs/2404.19733). With `dpo.precompute_reference` (the default) the reference model's
log-probs of every pair are computed once before training and the reference is let go, so the epochs hold
one model, not two; SimPO needs no reference at all. Logs `rewards/chosen`, `rewards/rejected`,
`rewards/margin`, `rewards/accuracy` (DPO's implicit rewards) for training and held-out pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tiller.config import Config
from tiller.offline.data import PreferenceExample, Source, read_preferences
from tiller.offline.loop import Recipe, fit, max_length, split_held_out, stage_engine
from tiller.training.engine import ModelEngine, load_frozen
from tiller.training.pairs import build_pair_batch, model_logprobs, pair_logprobs, preference_loss


@dataclass(frozen=True)
class Pair:
    """A preference example and its reference log-probs (summed over each response), once computed."""

    example: PreferenceExample
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0


def _batch(pairs: list[Pair], pad_id: int, device: torch.device):
    batch = build_pair_batch([(p.example.prompt_ids, p.example.chosen_ids, p.example.rejected_ids) for p in pairs],
                             pad_id)
    return batch.to(device)


def with_reference(pairs: list[PreferenceExample], reference: torch.nn.Module, pad_id: int,
                   device: torch.device, chunk: int = 16) -> list[Pair]:
    """Every pair with its reference log-probs, computed without gradients, `chunk` pairs at a time."""
    out = []
    with torch.no_grad():
        for start in range(0, len(pairs), chunk):
            part = [Pair(e) for e in pairs[start:start + chunk]]
            logps = pair_logprobs(model_logprobs(reference), _batch(part, pad_id, device))
            b = len(part)
            out += [Pair(p.example, float(logps[i]), float(logps[b + i])) for i, p in enumerate(part)]
    return out


def recipe(cfg: Config, engine: ModelEngine, pad_id: int, reference: torch.nn.Module | None) -> Recipe:
    dc = cfg.dpo

    def losses(pairs: list[Pair]):
        """(mean loss over the pairs, mean metrics) of the configured variant, plus the NLL term."""
        batch = _batch(pairs, pad_id, engine.device)
        policy = pair_logprobs(model_logprobs(engine), batch)
        if reference is not None:  # not precomputed: the reference runs beside the policy
            with torch.no_grad():
                ref = pair_logprobs(model_logprobs(reference), batch)
        else:
            ref = torch.tensor([p.ref_chosen for p in pairs] + [p.ref_rejected for p in pairs], device=engine.device)
        loss, metrics = preference_loss(policy, ref, batch.response_lengths, dc.loss)
        b = len(pairs)
        if dc.nll_coef:
            nll = -(policy[:b] / batch.response_lengths[:b]).mean()
            loss = loss + dc.nll_coef * nll
            metrics["nll/chosen"] = nll.item()
        metrics["logps/chosen"] = policy[:b].detach().mean().item()
        metrics["logps/rejected"] = policy[b:].detach().mean().item()
        return loss, metrics

    def loss(pairs: list[Pair]):
        mean, metrics = losses(pairs)
        return mean * len(pairs), {key: value * len(pairs) for key, value in metrics.items()}

    def evaluate(pairs: list[Pair]) -> dict[str, float]:
        sums: dict[str, float] = {}
        for start in range(0, len(pairs), 16):
            part = pairs[start:start + 16]
            mean, metrics = losses(part)
            for key, value in {**metrics, "loss": mean.item()}.items():
                sums[key] = sums.get(key, 0.0) + value * len(part)
        return {key: value / len(pairs) for key, value in sums.items()}

    return Recipe("dpo", units=lambda pair: 1, loss=loss, evaluate=evaluate)


def run(cfg: Config, resume: bool = False) -> dict:
    from tiller.models import load_tokenizer, prepare_model

    model_dir = Path(prepare_model(cfg))
    tokenizer = load_tokenizer(model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sources = [Source(s.path, s.weight) for s in cfg.dpo.data]
    examples = read_preferences(sources, tokenizer, max_length(cfg, model_dir))
    engine = stage_engine(cfg, model_dir)
    needs_reference = cfg.dpo.loss.variant != "simpo"  # SimPO is reference-free
    reference = load_frozen(model_dir, engine.dtype, engine.device) if needs_reference else None
    if reference is not None and cfg.dpo.precompute_reference:
        pairs = with_reference(examples, reference, pad_id, engine.device)
        del reference  # the epochs hold one model
        reference = None
        print(f"dpo: reference log-probs of {len(pairs)} pairs computed; the reference model is released", flush=True)
    else:
        pairs = [Pair(e) for e in examples]
    train, held_out = split_held_out(pairs, cfg.train.eval_fraction, cfg.seed)
    return fit(cfg, recipe(cfg, engine, pad_id, reference), engine, train, held_out, model_dir, resume)
