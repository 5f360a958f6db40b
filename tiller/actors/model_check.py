"""Does a learner's model fit this actor's engine? Checked before any of that learner's weights load.

    local = LocalModel.of(model_dir, engine.eos_ids, max_model_len)
    problem = mismatch(card, local)       # None, or one line naming both models

vLLM loads whatever names it is sent and keeps a layer's old weights when it is sent none, so a learner
training another model of compatible shapes (fewer layers, say) would leave the engine a silent hybrid
of two models. The rules: the same architecture, vocabulary and end-of-sequence ids (the actor's stop
tokens come from its own folder), a context no longer than the model's, and every tensor of the actor's
checkpoint announced with the same shape. (Names the learner publishes that the checkpoint lacks, such
as a tied `lm_head.weight`, are the engine's to accept or refuse by name: vLLM raises on one it does not
know, and the actor stops with WeightsDoNotFit.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tiller.model_files import checkpoint_shapes, config_of
from tiller.protocol.messages import ModelCard


@dataclass(frozen=True)
class LocalModel:
    path: str
    architecture: str
    vocab_size: int
    eos_ids: list[int]
    max_model_len: int
    shapes: dict[str, list[int]] | None  # None: no safetensors files to read them from

    @classmethod
    def of(cls, model_dir: str | Path, eos_ids: list[int], max_model_len: int) -> "LocalModel":
        model_dir = Path(model_dir)
        config = config_of(model_dir)
        architecture = (config.get("architectures") or ["?"])[0]
        return cls(str(model_dir), architecture, int(config.get("vocab_size") or 0), sorted(eos_ids), max_model_len,
                   checkpoint_shapes(model_dir))


def mismatch(card: ModelCard, local: LocalModel) -> str | None:
    """Why the learner's weights must not load into this engine, in one line naming both; None if they fit."""
    theirs = f"the learner's {card.architecture} (vocabulary {card.vocab_size}, {len(card.names)} tensors)"
    ours = f"this actor's {local.architecture} at {local.path} (vocabulary {local.vocab_size})"
    problem = _first_difference(card, local)
    return None if problem is None else f"{theirs} does not fit {ours}: {problem}"


def _first_difference(card: ModelCard, local: LocalModel) -> str | None:
    if card.architecture != local.architecture:
        return f"architecture {card.architecture} is not {local.architecture}"
    if card.vocab_size != local.vocab_size:
        return f"vocabulary {card.vocab_size} is not {local.vocab_size}"
    if sorted(card.eos_ids) != local.eos_ids:
        return f"end-of-sequence ids {sorted(card.eos_ids)} are not {local.eos_ids} (the actor's stop tokens)"
    if card.max_positions and local.max_model_len > card.max_positions:
        return f"rollout.max_model_len {local.max_model_len} is longer than its {card.max_positions} positions"
    if local.shapes is None:
        return None
    announced = dict(zip(card.names, card.shapes))
    missing = [name for name in local.shapes if name not in announced]
    if missing:
        return (f"{len(missing)} of this model's tensors would keep their old weights (never sent), "
                f"e.g. {missing[0]}")
    for name, shape in local.shapes.items():
        if list(announced[name]) != shape:
            return f"{name} is {list(announced[name])} there, {shape} here"
    return None
