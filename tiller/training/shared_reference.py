"""The starting model's next-token logits, for a loss that holds the policy near it (`sft` data files with
`anchor_kl`), at the positions the loss asks for.

`FullReference` runs a frozen copy of the starting model on the rows. `SharedTrunkReference` runs less: with
`unfrozen_layers: K`, the policy's embeddings and its lower blocks never change (training/freezing.py), so
the hidden state entering the policy's lowest trained block is the one the starting model has there too. A
hook on the policy's top blocks keeps what each receives during the policy's own forward; the reference
then runs only its own copies of the top K blocks on that hidden state, and its final norm and output head
only at the positions asked for, not over the whole vocabulary at every position.

`anchor_reference` picks the shared trunk where it is exact and checks that it is: on a probe batch, in
the policy's training mode, against the full model. A model whose forward the hooks do not reproduce (a
lower block with dropout, a head that rescales its logits) gets the full reference, and the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from tiller.training.engine import load_frozen
from tiller.training.freezing import final_norm, transformer_blocks
from tiller.training.losses import token_kl

# Largest per-token KL (nats) from the full reference to the shared-trunk one on the probe batch that still
# counts as the same model. Measured: 0 on SmolLM2 in fp32 (bench/anchor_reference.py); 1e-8 in fp32 and 0 in
# bf16 on the tiny test model. 1e-3 leaves room for kernels that round a sub-batch another way, and is 1% of
# the anchor KL it serves (~1e-1 per token).
AGREEMENT_NATS = 1e-3


class FullReference:
    """A frozen copy of the starting model, run on the asked rows."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def logits_at(self, ids: torch.Tensor, attention: torch.Tensor, rows: torch.Tensor, i: torch.Tensor,
                  j: torch.Tensor) -> torch.Tensor:
        """Next-token logits [len(i), V] at (rows[i], j) of the batch (ids, attention) [N, T]."""
        with torch.no_grad():
            return self.model(input_ids=ids[rows], attention_mask=attention[rows]).logits[i, j]


class SharedTrunkReference:
    """The starting model's top `unfrozen` blocks, final norm and head, run on the hidden state the policy's
    frozen trunk computed in its last forward. `logits_at` must follow the policy's forward on that batch."""

    def __init__(self, policy: torch.nn.Module, reference: torch.nn.Module, unfrozen: int, setting: str):
        policy_blocks = transformer_blocks(policy, setting)
        reference_blocks = transformer_blocks(reference, setting)
        if not 0 < unfrozen < len(policy_blocks):
            raise ValueError(f"{setting}: {unfrozen} of {len(policy_blocks)} blocks leaves no shared trunk")
        self.norm = final_norm(reference)
        self.head = reference.get_output_embeddings()
        if self.norm is None or self.head is None:
            raise ValueError(f"{type(reference).__name__} has no `norm` before its output head")
        self.shared = len(policy_blocks) - unfrozen
        # the trunk is shared only while it cannot train: a probe before the first step would not see it move.
        # An untied output head may train (the reference has its own); a tied one is the input embeddings.
        top = (*policy_blocks[self.shared:], final_norm(policy), policy.get_output_embeddings())
        may_train = {id(p) for module in top if module is not None for p in module.parameters()}
        may_train -= {id(p) for p in policy.get_input_embeddings().parameters()}
        trained = [name for name, p in policy.named_parameters() if p.requires_grad and id(p) not in may_train]
        if trained:
            raise ValueError(f"the policy trains {trained[0]}, below its top {unfrozen} blocks")
        self.blocks = reference_blocks[self.shared:]
        self.caught: list[tuple[torch.Tensor | None, dict]] = [(None, {})] * unfrozen
        self.hooks = [block.register_forward_pre_hook(self._catcher(k), with_kwargs=True)
                      for k, block in enumerate(policy_blocks[self.shared:])]

    def _catcher(self, k: int):
        def catch(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            rest = {name: value for name, value in kwargs.items() if name != "hidden_states"}
            self.caught[k] = (hidden.detach() if k == 0 else None, rest)
        return catch

    def logits_at(self, ids: torch.Tensor, attention: torch.Tensor, rows: torch.Tensor, i: torch.Tensor,
                  j: torch.Tensor) -> torch.Tensor:
        """Next-token logits [len(i), V] at (rows[i], j) of the batch the policy's last forward ran on."""
        hidden = self.caught[0][0]
        if hidden is None or tuple(hidden.shape[:2]) != tuple(ids.shape):
            raise RuntimeError("shared-trunk reference: the policy's forward on this batch has not run")
        batch = hidden.shape[0]
        with torch.no_grad():
            h = hidden[rows]
            for block, (_, kwargs) in zip(self.blocks, self.caught):
                out = block(h, **_for_rows(kwargs, rows, batch))
                h = out[0] if isinstance(out, tuple) else out
            return self.head(self.norm(h[i, j]))

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.caught = [(None, {})] * len(self.caught)


def _for_rows(kwargs: dict, rows: torch.Tensor, batch: int) -> dict:
    """A block's keyword inputs for a sub-batch: every per-row tensor ([batch, ...], 2-D or more: the mask,
    position ids, rotary tables) indexed by `rows`; no cache, since the policy's belongs to its own blocks."""
    def pick(value):
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == batch:
            return value[rows]
        if isinstance(value, tuple):
            return tuple(pick(v) for v in value)
        return value
    picked = {name: pick(value) for name, value in kwargs.items()}
    if "past_key_values" in picked:
        picked["past_key_values"] = None
    if "use_cache" in picked:
        picked["use_cache"] = False
    return picked


def disagreement(policy_forward: Callable[[torch.Tensor, torch.Tensor], object], policy: torch.nn.Module,
                 full: FullReference, shared: SharedTrunkReference, ids: torch.Tensor, attention: torch.Tensor,
                 targets: torch.Tensor) -> float:
    """The largest per-token KL from `full` to `shared` at the targets of every other probe row that has any
    (a sub-batch, as training asks), after the policy's forward on the whole probe in training mode."""
    was_training = policy.training
    policy.train()
    try:
        with torch.no_grad():
            policy_forward(ids, attention)
            rows = targets.any(dim=1).nonzero(as_tuple=True)[0][::2]
            if len(rows) == 0:
                raise ValueError("the probe batch has no trained tokens")
            i, j = targets[rows].nonzero(as_tuple=True)
            return float(token_kl(shared.logits_at(ids, attention, rows, i, j),
                                  full.logits_at(ids, attention, rows, i, j)).max())
    finally:
        policy.train(was_training)


def anchor_reference(policy: torch.nn.Module, policy_forward: Callable, model_dir: str | Path, dtype: torch.dtype,
                     device: torch.device | str, unfrozen: int | None, setting: str,
                     probe: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
    """(the reference to use, a line saying which and why). The starting model is loaded from `model_dir`;
    `probe`: (ids, attention, targets) of a few training rows on `device`, to check the shared trunk on."""
    model = load_frozen(model_dir, dtype, device)
    full = FullReference(model)
    if unfrozen is None:
        return full, "the full starting model (every block trains)"
    try:
        shared = SharedTrunkReference(policy, model, unfrozen, setting)
    except ValueError as e:
        return full, f"the full starting model ({e})"
    try:
        gap = disagreement(policy_forward, policy, full, shared, *probe)
    except ValueError as e:
        shared.close()
        return full, f"the full starting model (not checked: {e})"
    if gap > AGREEMENT_NATS:
        shared.close()
        return full, (f"the full starting model (the shared trunk differs from it by {gap:.2g} nats on a probe "
                      f"batch, over the {AGREEMENT_NATS:g} allowed)")
    return shared, (f"the top {unfrozen} blocks of the starting model on the policy's {shared.shared} frozen "
                    f"ones (largest KL to the full model on a probe batch: {gap:.1e} nats per token)")
