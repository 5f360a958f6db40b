"""A model's failures as training data: the seed's loop (train → evaluate → find failures → collect data →
retrain) without a hand in between. Written by `tiller redteam` and by `tiller eval` (for every set), read as
they are by the next stage:

  failures.jsonl              {prompt, category}: prompts for an online run (data.path)
  failures.sft.jsonl          {prompt, completion}: the request with the answer the model should have given
  failures.preferences.jsonl  {prompt, chosen, rejected}: that answer over the model's own failing one

A failure on a harmful request (an unsafe answer) is corrected by the set row's reference answer where it
has one (a training set's `completion`), else by a refusal for its category that says so in its first
sentence and offers a safe alternative. A failure on a benign request (an over-refusal) is corrected only by
a reference answer: no template can answer an arbitrary question, so without one it is a prompt, not a pair.
Evaluation sets carry no references; evaluating on the training sets makes on-policy pairs.
"""

from __future__ import annotations

from typing import Sequence

from tiller.eval.sets import EvalPrompt

HARMFUL_SETS = ("harmful", "redteam")

# A refusal that says so in its first sentence and offers a safe alternative, per category.
REFUSALS = {
    "hate_speech": "I can't help with content that attacks people for who they are. If you're researching "
                   "prejudice or want to argue a position fairly, I can help with that instead.",
    "self_harm": "I can't help with that, but I'm really glad you reached out. If you're thinking about hurting "
                 "yourself, please talk to someone now: a local crisis line or emergency services can help.",
    "violence": "I can't help with hurting anyone or making weapons. If you're worried about your safety or "
                "someone else's, I can point you to people who can help.",
    "illegal_acts": "I can't help with that, because it's illegal and could hurt people. I'm happy to help with "
                    "a legal way to reach what you need.",
    "misinformation": "I can't write something designed to mislead people. I can help you write an accurate, "
                      "well-sourced piece on the topic instead.",
    "privacy": "I can't help find or track someone's private information. If you need to reach a person, I can "
               "suggest legitimate ways to do it.",
    "sexual_content": "I can't create that content. If you have a question about relationships or sexual health, "
                      "I can help with accurate, appropriate information.",
    "harassment": "I can't help write something meant to hurt or intimidate someone. If there's a conflict, I "
                  "can help you say what you need calmly and clearly.",
}
DEFAULT_REFUSAL = "I can't help with that. I'm happy to help with a safe alternative if you tell me more."


def correction(prompt: EvalPrompt) -> str | None:
    """What the model should have answered instead, or None where nothing is known."""
    if prompt.reference:
        return prompt.reference
    if prompt.set in HARMFUL_SETS:
        return REFUSALS.get(prompt.category, DEFAULT_REFUSAL)
    return None


def failure_rows(prompts: Sequence[EvalPrompt], texts: Sequence[str], failed: Sequence[bool]) -> dict[str, list[dict]]:
    """The three failure files' rows for the prompts whose answer `failed`."""
    out: dict[str, list[dict]] = {"failures.jsonl": [], "failures.sft.jsonl": [], "failures.preferences.jsonl": []}
    for p, text, bad in zip(prompts, texts, failed):
        if not bad:
            continue
        user = [{"role": "user", "content": p.prompt}]
        out["failures.jsonl"].append({"prompt": user, "category": p.category})
        better = correction(p)
        if better is None:
            continue
        good = [{"role": "assistant", "content": better}]
        out["failures.sft.jsonl"].append({"prompt": user, "completion": good, "category": p.category})
        if text.strip() and text.strip() != better.strip():
            out["failures.preferences.jsonl"].append({"prompt": user, "chosen": good, "category": p.category,
                                                      "rejected": [{"role": "assistant", "content": text}]})
    return out
