"""The offline stages' sections: `train` (what every stage shares: epochs, batches, the optimizer and its
schedule, evaluation, checkpoints) and one section per stage (`sft`, `rm`, `dpo`) with its data and its own
settings. `tiller sft`, `tiller rm` and `tiller dpo` read these; the online stage ignores them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tiller.config.fields import ranged
from tiller.config.sections import DPOConfig


@dataclass(frozen=True)
class SourceConfig:
    """A JSONL data file and how often each of its rows is used per epoch (2.0: twice; 0.5: a seeded half)."""

    path: str = ""
    weight: float = ranged(1.0, above=0)
    # SFT only: + coef * the per-token KL from the starting model to the trained one on this file's trained
    # tokens (the whole next-token distribution, not just the token written): holds a file of the model's own
    # answers where the model was
    anchor_kl: float = ranged(0.0, at_least=0)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = ranged(1, at_least=1)
    max_steps: int = ranged(0, at_least=0)  # optimizer steps; 0: as many as `epochs` take
    batch_size: int = ranged(8, at_least=1)  # examples (SFT) or preference pairs (RM, DPO) per optimizer step
    micro_batch_size: int = ranged(0, at_least=0)  # per forward/backward pass; 0: the whole batch at once
    lr: float = ranged(1e-5, above=0)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"  # after warmup: flat, or down to 0 by the end
    warmup_steps: int = ranged(0, at_least=0)  # linear warmup from 0
    weight_decay: float = ranged(0.0, at_least=0)
    max_grad_norm: float = ranged(1.0, at_least=0)  # 0: no clipping
    # auto: bf16 on a GPU, fp32 on a CPU; fastest: bf16 also on a CPU that computes it faster (measured)
    precision: Literal["auto", "fastest", "fp32", "bf16"] = "auto"
    zero_stage: int = ranged(0, at_least=0, at_most=3)
    gradient_checkpointing: bool = False
    max_length: int = ranged(1024, at_least=8)  # tokens per example (prompt and response); longer rows are refused
    eval_fraction: float = ranged(0.1, at_least=0, below=1)  # held out of the training rows, seeded
    eval_every: int = ranged(0, at_least=0)  # optimizer steps between evaluations; 0: after each epoch
    checkpoint_every: int = ranged(0, at_least=0)  # optimizer steps; 0: none (final/ is always written)


@dataclass(frozen=True)
class SFTStageConfig:
    data: list[SourceConfig] = field(default_factory=list)
    # concatenate examples (each ended by EOS) into rows of train.max_length, so no step pays for padding;
    # attention then crosses example boundaries, as in TRL's classic packing
    packing: bool = False
    # train only the top N blocks and the final norm; the embeddings (and a head tied to them) and the lower
    # blocks keep their weights, and the backward pass stops at the lowest trained block; null: all
    unfrozen_layers: int | None = ranged(None, at_least=0)
    # the first N tokens of every trained response count `decision_weight` times in the loss: where a
    # response decides to refuse or to answer ("I can't" against "To"), one token among dozens
    decision_tokens: int = ranged(0, at_least=0)
    decision_weight: float = ranged(1.0, at_least=1)


@dataclass(frozen=True)
class RMStageConfig:
    data: list[SourceConfig] = field(default_factory=list)  # {prompt, chosen, rejected} rows
    unfrozen_layers: int | None = ranged(None, at_least=0)  # train only the top N blocks and the head; null: all
    margin: float = ranged(0.0, at_least=0)  # Bradley-Terry with a margin: -log sigmoid(r_chosen - r_rejected - m)
    center_coef: float = ranged(0.0, at_least=0)  # + coef * (r_chosen + r_rejected)^2 keeps rewards near 0


@dataclass(frozen=True)
class DPOStageConfig:
    data: list[SourceConfig] = field(default_factory=list)  # {prompt, chosen, rejected} rows
    loss: DPOConfig = field(default_factory=DPOConfig)  # the online learner's loss settings, one implementation
    nll_coef: float = ranged(0.0, at_least=0)  # + coef * the chosen response's per-token NLL (RPO)
    # reference log-probs computed once before training, then the reference model is let go
    precompute_reference: bool = True
