"""Training only the top of a model: `sft.unfrozen_layers`, `rm.unfrozen_layers`, `learner.unfrozen_layers`.

The top N transformer blocks and the final norm train (and a head the stage names, such as a reward
model's fresh `score`); everything below keeps its weights exactly. Nothing below the lowest trained block
needs a gradient, so the backward pass stops there: besides moving less of the model, a step costs less.
"""

from __future__ import annotations

import torch


def transformer_blocks(model: torch.nn.Module, setting: str) -> torch.nn.ModuleList:
    """The model's stack of transformer blocks: its ModuleList of `num_hidden_layers` modules."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"{setting}: no list of {n} transformer blocks found in {type(model).__name__}")


def final_norm(model: torch.nn.Module) -> torch.nn.Module | None:
    """The norm after the last block (`norm` on the model's backbone); None where the model names it otherwise."""
    return getattr(getattr(model, model.base_model_prefix), "norm", None)


def freeze_below(unfrozen: int | None, setting: str, heads: tuple[str, ...] = ()):
    """A `freeze(model)` that trains only the top `unfrozen` blocks, the final norm and the named heads
    (attributes of the model); None trains everything. `setting` names the config field in errors."""
    def freeze(model: torch.nn.Module) -> None:
        if unfrozen is None:
            return
        blocks = transformer_blocks(model, setting)
        if unfrozen > len(blocks):
            raise ValueError(f"{setting}: {unfrozen}, but the model has {len(blocks)} blocks")
        model.requires_grad_(False)
        trained = [*blocks[len(blocks) - unfrozen:], final_norm(model),
                   *(getattr(model, name) for name in heads)]
        for module in trained:
            if module is not None:
                module.requires_grad_(True)
    return freeze
