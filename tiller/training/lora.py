"""LoRA adapters (peft) on a stage's model, and the model's weights under their checkpoint names with the
adapters folded in: what actors load, what `final/` holds, what the model card announces.

    model = with_lora(model, cfg.model.lora, "CAUSAL_LM")     # only the adapters (and a classifier head) train
    params, buffers = named_weights(module)                    # checkpoint names; each with its adapter's delta
    weight = merged_value(param, delta)                        # W + B A alpha / r, out of place

peft renames what it wraps (`base_model.model.` in front, `.base_layer` inside an adapted layer, a trained
head under `modules_to_save.default`); `checkpoint_name` undoes that, so a LoRA policy publishes exactly the
names and shapes of the plain model and vLLM reloads it like any other. Merging is peft's own
per-layer `get_delta_weight` (B A alpha/r), added out of place one bucket at a time, so the trained weights
are never modified and repeated publishing cannot drift them.
"""

from __future__ import annotations

from typing import Callable

import torch

from tiller.config import LoRAConfig


def with_lora(model: torch.nn.Module, lora: LoRAConfig, task_type: str) -> torch.nn.Module:
    """`model` with adapters of rank `lora.r` on `lora.target_modules` (the model itself when r is 0).
    `task_type`: peft's "CAUSAL_LM", or "SEQ_CLS" (a reward model: its score head is trained whole)."""
    if not lora.r:
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        from tiller.config import ConfigError

        raise ConfigError("model.lora.r: LoRA needs the peft package (pip install 'tiller[lora]')") from None

    targets = "all-linear" if list(lora.target_modules) == ["all-linear"] else list(lora.target_modules)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        task_type=task_type)
    return get_peft_model(model, config)


def is_lora(module: torch.nn.Module) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


def checkpoint_name(name: str) -> str | None:
    """The plain model's name for a (possibly peft-wrapped) parameter or buffer; None for the adapters' own
    tensors and for the frozen copy of a head peft trains whole."""
    if ".lora_" in name or ".original_module." in name:
        return None
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".modules_to_save.default.",
                                                                                        ".")


Delta = Callable[[], torch.Tensor] | None  # what a weight gains from its adapter, computed when asked


Named = list[tuple[str, torch.Tensor]]


def named_weights(module: torch.nn.Module) -> tuple[list[tuple[str, torch.Tensor, Delta]], Named]:
    """(parameters, persistent buffers) under their checkpoint names, tied parameters under each name as a
    checkpoint has them; each parameter with the delta its adapter adds (None: it has no adapter), so that
    a caller reading them one bucket at a time never holds more than a bucket of merged copies."""
    adapted = {}
    for layer in module.modules():
        if hasattr(layer, "get_delta_weight") and hasattr(layer, "base_layer") and layer.active_adapters:
            adapted[id(layer.base_layer.weight)] = layer
    params = []
    for name, param in module.named_parameters(remove_duplicate=False):
        plain = checkpoint_name(name)
        if plain is not None:
            layer = adapted.get(id(param))
            params.append((plain, param, None if layer is None else _delta(layer)))
    persistent = set(module.state_dict())
    buffers = [(checkpoint_name(n), b) for n, b in module.named_buffers()
               if n in persistent and checkpoint_name(n) is not None]
    return params, buffers


def _delta(layer) -> Callable[[], torch.Tensor]:
    def delta() -> torch.Tensor:
        with torch.no_grad():
            return sum(layer.get_delta_weight(adapter) for adapter in layer.active_adapters)
    return delta


def merged_value(param: torch.Tensor, delta: Delta) -> torch.Tensor:
    """The weight with its adapter folded in, out of place (the trained weights are never touched, so
    publishing a thousand times adds no rounding drift); the parameter itself when it has no adapter."""
    if delta is None:
        return param
    with torch.no_grad():
        return param.detach() + delta().to(param.dtype)
