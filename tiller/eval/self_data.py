"""`tiller self-data`: a model's own answers to prompts, written as SFT rows ({prompt, completion}).

Fine-tuning on a model's own answers is an anchor: where the new behaviour should not differ from the old
(benign requests that merely look risky, everyday tasks), the model is taught what it already says, so the
fine-tune changes it only where other rows (refusals) pull it away, and the anchor's loss rises only as the
model drifts from itself there. Hand-written answers instead teach a new style on every prompt and move the
whole distribution. At `datagen.temperature: 1` the rows are draws from the model; greedy (0) gives its
most likely answers, the better text for a small model whose samples wander (the SmolLM2 pipeline's choice).

An answer becomes a row if it is not empty and not a refusal by the refusal detector (the anchor is for
prompts the model should answer). One that ran into the token limit is cut back to its last whole sentence
(trained with an end of turn there, it teaches a shorter answer, not stopping mid-sentence); if that leaves
less than half of it, it is dropped. Each prompt's `category`, when its row has one, rides along.
"""

from __future__ import annotations

import re
import time
from collections import Counter

from tiller.actors.refusal import refused
from tiller.config import Config
from tiller.eval.datagen import (
    Prompt,
    answer_prompts,
    assistant_turn,
    has_template,
    output_path,
    read_prompts,
    row_prompt,
    write_rows,
    write_summary,
)
from tiller.jsonl import read_jsonl


# a sentence ends at . ! or ? (not a list number's "2.") before a space or the end, or at a blank line
_SENTENCE_END = re.compile(r"(?<![0-9])[.!?][\"')\]]*(?=\s|$)|\n\n")


def last_whole_sentences(text: str, keep_at_least: float = 0.5) -> str | None:
    """`text` up to the end of its last whole sentence, or None if that keeps under `keep_at_least` of it."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if not ends:
        return None
    head = text[:ends[-1]].rstrip()
    return head if len(head) >= keep_at_least * len(text.rstrip()) else None


def answer_row(prompt: Prompt, text: str, truncated: bool, conversational: bool, system: str | None,
               category: str | None) -> tuple[dict | None, str]:
    """The SFT row of one answer, or None and why not: `empty`, `refusal` (the refusal detector says so),
    `cut` (it ran into the token limit and has no whole sentence in its first half). A cut answer that
    is kept gives the reason `trimmed`, a whole one `written`."""
    if not text.strip():
        return None, "empty"
    if refused(text):
        return None, "refusal"
    why = "written"
    if truncated:
        text = last_whole_sentences(text)
        if text is None:
            return None, "cut"
        why = "trimmed"
    row = {"prompt": row_prompt(prompt, conversational, system),
           "completion": assistant_turn(text) if conversational else text}
    if category is not None:
        row["category"] = category
    return row, why


def categories(path: str, max_prompts: int) -> dict[str, str]:
    """file:line -> the row's `category` (a string), for the rows that have one."""
    return {where: row["category"] for where, row in read_jsonl(path)[:max_prompts or None]
            if isinstance(row.get("category"), str)}


def self_data(cfg: Config) -> dict:
    start = time.monotonic()
    d = cfg.datagen
    prompts = read_prompts(d.prompts, d.max_prompts)
    category_of = categories(d.prompts, d.max_prompts)
    sampled, tokenizer = answer_prompts(cfg, prompts, 1)
    conversational = has_template(tokenizer)
    rows, counts = [], Counter()
    for prompt, text, cut in zip(sampled.prompts, sampled.texts, sampled.truncated):
        row, why = answer_row(prompt, text, cut, conversational, d.generation.system_prompt,
                              category_of.get(prompt.where))
        counts[why] += 1
        if row is not None:
            rows.append(row)
    out = output_path(cfg, "self-data")
    write_rows(out, rows)
    summary = {
        "output": str(out), "model": cfg.model.path,
        "prompts": len(prompts), "prompts_too_long": sampled.too_long, "answers": len(sampled.texts),
        "rows_written": len(rows), "answers_trimmed": counts["trimmed"], "answers_cut": counts["cut"],
        "answers_empty": counts["empty"], "answers_refusing": counts["refusal"], "temperature": d.temperature,
        "form": "conversational" if conversational else "plain",
        "by_category": dict(sorted(Counter(r.get("category", "none") for r in rows).items())),
        "seconds": round(time.monotonic() - start, 2), "generation_seconds": round(sampled.seconds, 2),
    }
    summary["summary"] = str(write_summary(cfg, "self-data", summary))
    return summary
