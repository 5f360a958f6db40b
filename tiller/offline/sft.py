"""`tiller sft`: supervised fine-tuning on response tokens only, with refusal data mixed in by weight.

    tiller sft configs/safety/sft.yaml                         # sft.data: [{path, weight}, ...]
    tiller sft configs/safety/sft.yaml train.epochs=3 --dry-run

The loss is the mean negative log-likelihood of the trained tokens (offline/data.py decides which: the
completion, every assistant turn, or the output of an instruction row, end-of-turn included) over all of a
batch's trained tokens, as TRL's SFTTrainer with completion-only loss averages. Held-out rows report
`eval/loss` (per token) and `eval/token_accuracy` (greedy next-token match on trained tokens). With
`sft.packing`, examples are concatenated into rows of `train.max_length` (attention crosses their
boundaries, as in TRL's classic packing), so no step pays for padding. `sft.unfrozen_layers: N` trains
only the top N blocks and the final norm (training/freezing.py): the embeddings, tied output head and lower
blocks keep their weights exactly, and the backward pass stops at the lowest trained block.
`sft.decision_tokens: N` with `sft.decision_weight: W` counts the first N tokens of every trained response W
times (in the loss and in the tokens it is averaged over): a response's first tokens are where it decides to
refuse or to answer, one token among dozens otherwise. `eval/loss` stays the plain per-token mean.
A data file with `anchor_kl: c` adds c times the per-token KL from the starting model (frozen) to the trained
one on its rows' trained tokens: on the model's own answers, the whole next-token distribution is held where
it was, not only the token it wrote (`eval/anchor_kl`: that KL per token on the held-out anchored rows).
With `sft.unfrozen_layers`, the starting model runs only its top blocks, on the hidden state the policy's
frozen lower blocks computed (training/shared_reference.py), where a probe batch shows that to be exact.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiller.config import Config
from tiller.offline.data import SFTExample, Source, read_sft
from tiller.training.freezing import freeze_below
from tiller.offline.loop import Recipe, fit, max_length, split_held_out, stage_engine
from tiller.training.engine import ModelEngine
from tiller.training.logprobs import taken_logprobs
from tiller.training.losses import token_kl
from tiller.training.micro_batches import trimmed
from tiller.training.shared_reference import FullReference, SharedTrunkReference, anchor_reference

Reference = FullReference | SharedTrunkReference


def pad(examples: list[SFTExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids [N, T], attention_mask [N, T], target mask [N, T-1]); the target mask is about
    the next token (position j predicts token j + 1), the convention of `taken_logprobs`."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    targets = torch.zeros((len(examples), width), dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        attention[i, :n] = 1
        targets[i, :n] = torch.tensor(e.trained)
    return ids, attention, targets[:, 1:]


def pack(examples: list[SFTExample], max_length: int) -> list[SFTExample]:
    """Examples concatenated in order into rows of at most `max_length` tokens (an example never split)."""
    rows: list[SFTExample] = []
    ids: list[int] = []
    trained: list[bool] = []
    for e in examples:
        if ids and len(ids) + len(e.input_ids) > max_length:
            rows.append(SFTExample(f"packed row {len(rows) + 1}", ids, trained))
            ids, trained = [], []
        ids, trained = ids + e.input_ids, trained + e.trained
    if ids:
        rows.append(SFTExample(f"packed row {len(rows) + 1}", ids, trained))
    return rows


def decision_weights(targets: torch.Tensor, first: int, weight: float) -> torch.Tensor:
    """Per-token loss weights [N, T] from a target mask [N, T]: 1 on every target, `weight` on the first
    `first` targets of each run of consecutive targets (a response; each assistant turn is its own run), 0 off
    the targets. Pure."""
    if first == 0 or weight == 1:
        return targets.float()
    before = torch.nn.functional.pad(targets[:, :-1], (1, 0), value=False)
    position = torch.arange(targets.shape[1], device=targets.device).expand_as(targets)
    run_start = torch.cummax(torch.where(targets & ~before, position, -1), dim=1).values
    opening = targets & (position - run_start < first)
    return targets.float() + (weight - 1) * opening.float()


def nll(engine: ModelEngine, examples: list[SFTExample], pad_id: int, chunk_bytes: int = 256 << 20,
        decision: tuple[int, float] = (0, 1.0), reference: Reference | None = None):
    """(weighted summed NLL of the trained tokens, their weighted count, how many the greedy next token got
    right, weighted alike, then `anchor_kl`'s three: the anchor term, the plain KL, its token count);
    `decision`: (first tokens of each response, their weight), (0, 1.0): unweighted. The loss to train is
    the NLL plus the anchor term."""
    ids, attention, targets = (t.to(engine.device) for t in pad(examples, pad_id))
    ids, attention, targets = trimmed(ids, attention, targets)
    logits = engine(input_ids=ids, attention_mask=attention).logits
    logp, _ = taken_logprobs(logits, ids, targets, chunk_bytes=chunk_bytes)
    weights = decision_weights(targets, *decision)
    with torch.no_grad():
        right = ((logits[:, :-1].argmax(-1) == ids[:, 1:]).float() * weights).sum()
    kl = anchor_kl(logits, ids, attention, targets, examples, reference)
    return -(logp * weights).sum(), weights.sum(), right, *kl


def anchor_kl(logits: torch.Tensor, ids: torch.Tensor, attention: torch.Tensor, targets: torch.Tensor,
              examples: list[SFTExample], reference: Reference | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(sum over anchored examples of anchor_kl x their summed per-token KL to `reference`, the plain summed
    KL, how many tokens it covers); zeros without a reference or an anchored example. The reference runs
    only on the anchored rows, without gradients, and gives logits only at their trained positions."""
    coef = torch.tensor([e.anchor_kl for e in examples], device=logits.device)
    rows = coef.nonzero(as_tuple=True)[0]
    if reference is None or len(rows) == 0:
        zero = logits.new_zeros((), dtype=torch.float32)
        return zero, zero.detach(), 0
    i, j = targets[rows].nonzero(as_tuple=True)
    per_token = token_kl(logits[rows[i], j], reference.logits_at(ids, attention, rows, i, j))
    return (coef[rows][i] * per_token).sum(), per_token.detach().sum(), len(i)


def units(example: SFTExample, decision: tuple[int, float]) -> float:
    """What one example adds to the tokens its batch's loss is averaged over (its weighted target count)."""
    return float(decision_weights(torch.tensor([example.trained[1:]]), *decision).sum())


def recipe(engine: ModelEngine, pad_id: int, decision: tuple[int, float] = (0, 1.0),
           reference: Reference | None = None) -> Recipe:
    def loss(rows: list[SFTExample]):
        total, _, right, anchored, kl, kl_tokens = nll(engine, rows, pad_id, decision=decision, reference=reference)
        metrics = {"token_accuracy": float(right)}  # summed like the loss: the loop divides by the tokens
        if reference is not None:
            metrics["anchor_kl"] = float(kl)  # per unit of the batch, as the loss; eval/anchor_kl is per token
        return total + anchored, metrics

    def evaluate(rows: list[SFTExample]) -> dict[str, float]:
        sums = [0.0] * 6
        for start in range(0, len(rows), 16):
            for i, value in enumerate(nll(engine, rows[start:start + 16], pad_id, reference=reference)):
                sums[i] += float(value)
        anchor = {"anchor_kl": sums[4] / sums[5]} if sums[5] else {}  # on held-out rows of the anchored files
        return {"loss": sums[0] / sums[1], "token_accuracy": sums[2] / sums[1], **anchor}

    return Recipe("sft", units=lambda e: units(e, decision), loss=loss, evaluate=evaluate)


def run(cfg: Config, resume: bool = False) -> dict:
    from tiller.models import load_tokenizer, prepare_model

    if not cfg.sft.data:
        raise ValueError("sft.data: no data files (a list of {path, weight})")
    model_dir = Path(prepare_model(cfg))
    tokenizer = load_tokenizer(model_dir)
    sources = [Source(s.path, s.weight, s.anchor_kl) for s in cfg.sft.data]
    examples = read_sft(sources, tokenizer, max_length(cfg, model_dir))
    train, held_out = split_held_out(examples, cfg.train.eval_fraction, cfg.seed)
    if cfg.sft.packing:
        train = pack(train, cfg.train.max_length)
    engine = stage_engine(cfg, model_dir, freeze=freeze_below(cfg.sft.unfrozen_layers, "sft.unfrozen_layers"))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    decision = (cfg.sft.decision_tokens, cfg.sft.decision_weight)
    reference = None
    if any(s.anchor_kl for s in sources):  # the starting model, frozen: one more forward on anchored rows
        probe = tuple(t.to(engine.device) for t in pad(train[:4], pad_id))
        reference, which = anchor_reference(
            engine.module, lambda ids, attention: engine(input_ids=ids, attention_mask=attention), model_dir,
            engine.dtype, engine.device, cfg.sft.unfrozen_layers, "sft.unfrozen_layers", probe)
        print(f"anchor_kl reference: {which}", flush=True)
    return fit(cfg, recipe(engine, pad_id, decision, reference), engine, train, held_out, model_dir, resume)
