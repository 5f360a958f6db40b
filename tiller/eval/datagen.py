"""Training data from prompts: `tiller rlaif-data` (a policy's sampled answers ranked pairwise by an LLM
judge, written as preference rows) and `tiller cai-data` (a policy's answer critiqued and revised under a
constitution, written as rows that are both SFT data and preferences).

Both run in one process: the policy answers every prompt first (vLLM, `generate.Generator`), is closed, and
only then is the judge's engine built, so the two models never hold memory at once.

What is written is what `tiller dpo`, `tiller rm` and `tiller sft` read without conversion
(tiller/offline/data.py): for a policy with a chat template, TRL's conversational form (`prompt` the
conversation that was answered, `chosen`/`rejected`/`completion` one assistant message each); for a policy
without one, the plain form (strings, the answer as the exact continuation of the prompt). The readers take
only the fields they need, so the extra ones (`judge`, `votes`, `initial`, `critique`, ...) ride along.

The pure parts (reading prompts, which pairs to judge, which become rows) take no model and are tested alone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tiller.config import Config, ConfigError
from tiller.jsonl import read_jsonl

Message = dict[str, str]


# ----------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompt:
    where: str  # file:line
    messages: list[Message]  # the conversation answered (a string prompt: one user turn)
    source: Any  # the row's `prompt` as read

    @property
    def text(self) -> str:
        """The last user message: what a plain (template-less) model is asked."""
        return self.messages[-1]["content"]

    @property
    def judged(self) -> str:
        """What a judge reads as the prompt: the user's text, or for a conversation with more in it than one
        user turn, the whole conversation as `role: content` lines (as the online judges read it)."""
        from tiller.actors.judges import render_conversation

        return self.text if len(self.messages) == 1 else render_conversation(self.messages)


def read_prompts(path: str | None, max_prompts: int = 0, key: str = "datagen.prompts") -> list[Prompt]:
    """The first `max_prompts` (0: all) rows of a JSONL file with a `prompt` each: a non-empty string, or a
    list of {role, content} messages that ends with a user turn. A bad row is a ConfigError naming it."""
    if not path:
        raise ConfigError(f"{key}: required (a JSONL file with a `prompt` per row)")
    rows = read_jsonl(path)
    if not rows:
        raise ConfigError(f"{path}: no rows")
    out = []
    for where, row in rows[:max_prompts or None]:
        value = row.get("prompt")
        if isinstance(value, str):
            if not value.strip():
                raise ConfigError(f"{where}: 'prompt' is empty")
            messages = [{"role": "user", "content": value}]
        elif isinstance(value, list) and value:
            for n, m in enumerate(value):
                if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                    raise ConfigError(f"{where}: prompt[{n}] must be {{\"role\": str, \"content\": str}}, got {m!r}")
            if value[-1]["role"] != "user":
                raise ConfigError(f"{where}: the prompt's last message is {value[-1]['role']!r}: nothing to answer "
                                  "(it must end with a user turn)")
            messages = [{"role": m["role"], "content": m["content"]} for m in value]
        else:
            raise ConfigError(f"{where}: 'prompt' must be a string or a non-empty list of {{role, content}} "
                              f"messages, got {type(value).__name__ if 'prompt' in row else 'nothing'}")
        out.append(Prompt(where, messages, value))
    return out


def with_system(messages: list[Message], system: str | None) -> list[Message]:
    """`generation.system_prompt` before a conversation that has no system turn of its own."""
    if system and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}] + messages
    return messages


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer, prompt: Prompt, system: str | None = None) -> np.ndarray:
    """The policy's input: the conversation through its chat template with the assistant turn opened
    (the template writes its own special tokens), or for a model without a template the user's text."""
    if not has_template(tokenizer):
        return np.asarray(tokenizer(prompt.text)["input_ids"], np.int32)
    text = tokenizer.apply_chat_template(with_system(prompt.messages, system), add_generation_prompt=True,
                                         tokenize=False)
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)


# ----------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Sampled:
    """k answers per kept prompt, prompt-major (prompt n's are k*n .. k*n+k-1)."""

    prompts: list[Prompt]  # those answered (too long ones are left out, counted)
    texts: list[str]
    truncated: list[bool]
    too_long: int
    seconds: float


def sample_answers(generator, prompts: list[Prompt], k: int, max_new_tokens: int, temperature: float, seed: int,
                   chunk: int, progress: Callable[[int], None] | None = None) -> Sampled:
    """k answers per prompt from the generator's engine, `chunk` prompts per engine call (the progress
    bar's step), reproducible by `seed` whatever the chunk (prompt i draws with seed + i*k, as one call
    would). Generator.sample asks for one user text; here the whole conversation is answered."""
    start = time.monotonic()
    tok = generator.tokenizer
    encoded = [(p, prompt_ids(tok, p, generator.system_prompt)) for p in prompts]
    kept = [(p, ids) for p, ids in encoded if len(ids) + max_new_tokens <= generator.max_model_len]
    if len(kept) < len(encoded):
        print(f"{len(encoded) - len(kept)} prompt(s) leave no room for {max_new_tokens} new tokens within "
              f"generation.max_model_len {generator.max_model_len}: skipped", file=sys.stderr, flush=True)
    texts, truncated = [], []
    plain = not has_template(tok)
    for lo in range(0, len(kept), chunk):
        part = [ids for _, ids in kept[lo:lo + chunk]]
        gen = generator.engine.generate(part, k, max_new_tokens, temperature=temperature, seed=seed + lo * k)
        bounds = np.concatenate([[0], np.cumsum(gen.lengths)])
        for n in range(len(gen.lengths)):
            text = tok.decode([int(t) for t in gen.tokens[bounds[n]:bounds[n + 1]]], skip_special_tokens=True)
            texts.append(text if plain else text.strip())  # plain: the exact continuation of the prompt
            truncated.append(bool(gen.truncated[n]))
        if progress is not None:
            progress(len(part))
    return Sampled([p for p, _ in kept], texts, truncated, len(encoded) - len(kept), time.monotonic() - start)


# ----------------------------------------------------------------------------- rows


def assistant_turn(text: str) -> list[Message]:
    return [{"role": "assistant", "content": text}]


def row_prompt(prompt: Prompt, conversational: bool, system: str | None = None):
    """The `prompt` field: the conversation answered (with the system prompt it was answered under), or the
    user's text for a plain model."""
    return with_system(prompt.messages, system) if conversational else prompt.text


def pairs_to_judge(texts: list[str], k: int) -> tuple[list[list[tuple[int, int]]], Counter]:
    """Per prompt, the pairs (i, j), i < j, of its k answers worth a verdict: each distinct non-empty answer
    once (its first copy), every pair of those once. Counts: `identical` (pairs of equal answers, skipped)
    and `empty` (empty answers, never compared)."""
    counts: Counter = Counter()
    plan = []
    for n in range(len(texts) // k):
        answers = texts[n * k:(n + 1) * k]
        firsts: dict[str, int] = {}
        for i, a in enumerate(answers):
            if not a.strip():
                counts["empty"] += 1
            elif a.strip() in firsts:
                counts["identical"] += sum(b.strip() == a.strip() for b in answers[:i])
            else:
                firsts[a.strip()] = i
        keep = sorted(firsts.values())
        plan.append([(i, j) for x, i in enumerate(keep) for j in keep[x + 1:]])
    return plan, counts


def preference_rows(prompts: list[Prompt], texts: list[str], k: int, plan: list[list[tuple[int, int]]],
                    verdicts: list[str | None], judge: str, conversational: bool = True, orders: int = 2,
                    system: str | None = None) -> tuple[list[dict], Counter]:
    """One row per decided pair: `verdicts` are the judge's, in `plan` order ("A": the first answer of the
    pair won, "B": the second, "tie" (inconsistent across orders included) and None (unreadable) give no
    row). `votes`: how many orders agreed (2 with the swap), and each answer's wins among its prompt's
    decided pairs. Rows of a prompt in plan order; a pair of texts is written once."""
    flat = [(n, i, j) for n, pairs in enumerate(plan) for i, j in pairs]
    if len(verdicts) != len(flat):
        raise ValueError(f"{len(verdicts)} verdicts for {len(flat)} pairs")
    counts: Counter = Counter(v if v is not None else "unreadable" for v in verdicts)
    wins: Counter = Counter()
    for (n, i, j), v in zip(flat, verdicts):
        if v in ("A", "B"):
            wins[(n, i if v == "A" else j)] += 1
    rows, seen = [], set()
    for (n, i, j), v in zip(flat, verdicts):
        if v not in ("A", "B"):
            continue
        win, lose = (i, j) if v == "A" else (j, i)
        chosen, rejected = texts[n * k + win], texts[n * k + lose]
        key = (n, chosen.strip(), rejected.strip())
        if chosen.strip() == rejected.strip() or key in seen:
            counts["duplicate"] += 1
            continue
        seen.add(key)
        rows.append({
            "prompt": row_prompt(prompts[n], conversational, system),
            "chosen": assistant_turn(chosen) if conversational else chosen,
            "rejected": assistant_turn(rejected) if conversational else rejected,
            "judge": judge,
            "votes": {"orders": orders, "chosen_wins": wins[(n, win)], "rejected_wins": wins[(n, lose)]},
        })
    return rows, counts


def cai_row(prompt: Prompt, initial: str, revision, conversational: bool = True,
            system: str | None = None) -> tuple[dict | None, str]:
    """The row of one revised answer, or None and why not: `failed` (no revision came back), `cut` (the
    revision ran into the token limit), `empty`, `unchanged` (the revision is the answer). The row is SFT
    data ({prompt, completion}: the revision) and a preference (chosen: the revision, rejected: the answer)."""
    if revision is None:
        return None, "failed"
    if revision.cut:
        return None, "cut"
    text = revision.text.strip()
    if not text:
        return None, "empty"
    if text == initial.strip():
        return None, "unchanged"
    if not conversational:  # the revision continues the prompt as the answer did
        text = initial[:len(initial) - len(initial.lstrip())] + text
    answer = assistant_turn(text) if conversational else text
    return {
        "prompt": row_prompt(prompt, conversational, system),
        "initial": initial,
        "critique": "\n\n".join(revision.critiques),
        "revision": text,
        "principle": ", ".join(revision.principles),
        "completion": answer,
        "chosen": answer,
        "rejected": assistant_turn(initial) if conversational else initial,
    }, "written"


# ----------------------------------------------------------------------------- files


def output_path(cfg: Config, command: str) -> Path:
    return Path(cfg.datagen.output) if cfg.datagen.output else cfg.run_dir / f"{command}.jsonl"


def write_rows(path: Path, rows: list[dict]) -> None:
    """JSONL written beside `path` and renamed onto it: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_summary(cfg: Config, command: str, summary: dict) -> Path:
    path = cfg.run_dir / f"{command}.summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def bar(total: int, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


# ----------------------------------------------------------------------------- the commands


def _policy(cfg: Config):
    from tiller.eval.generate import make_generator
    from tiller.models import prepare_model

    g = cfg.datagen.generation
    return make_generator(prepare_model(cfg), g, cfg.seed, g.system_prompt)


def answer_prompts(cfg: Config, prompts: list[Prompt], k: int) -> tuple[Sampled, Any]:
    """Every prompt's answers, then the policy engine closed; returns them and the policy's tokenizer."""
    d, g = cfg.datagen, cfg.datagen.generation
    generator = _policy(cfg)
    try:
        with bar(len(prompts), "generating", "prompt") as b:
            sampled = sample_answers(generator, prompts, k, g.max_new_tokens, d.temperature, cfg.seed, g.chunk,
                                     b.update)
    finally:
        generator.close()
    return sampled, generator.tokenizer


def check_kind(cfg: Config, kind: str, command: str) -> None:
    if cfg.judge.kind != kind:
        raise ConfigError(f"judge.kind: tiller {command} uses the {kind} judge, not {cfg.judge.kind} "
                          f"(set judge.kind: {kind} and judge.model_path)")


def check(cfg: Config, command: str) -> None:
    """What --dry-run checks: the judge kind and the prompts file."""
    check_kind(cfg, "llm_pairwise" if command == "rlaif-data" else "cai", command)
    read_prompts(cfg.datagen.prompts, cfg.datagen.max_prompts)


def rlaif_data(cfg: Config) -> dict:
    from tiller.actors.llm_judge import LLMPairwiseJudge

    check(cfg, "rlaif-data")
    start = time.monotonic()
    d = cfg.datagen
    k = d.samples_per_prompt
    prompts = read_prompts(d.prompts, d.max_prompts)
    sampled, tokenizer = answer_prompts(cfg, prompts, k)
    plan, skipped = pairs_to_judge(sampled.texts, k)
    flat = [(sampled.prompts[n].judged, sampled.texts[n * k + i], sampled.texts[n * k + j])
            for n, pairs in enumerate(plan) for i, j in pairs]
    judge = LLMPairwiseJudge(cfg.judge, tokenizer)
    verdicts: list = []
    try:
        step = max(1, d.generation.chunk * k * (k - 1) // 2)
        with bar(len(flat), "judging", "pair") as b:
            for lo in range(0, len(flat), step):
                verdicts += judge.compare(flat[lo:lo + step])
                b.update(len(flat[lo:lo + step]))
        stats = judge.stats()
    finally:
        judge.close()
    conversational = has_template(tokenizer)
    rows, counts = preference_rows(sampled.prompts, sampled.texts, k, plan, verdicts, cfg.judge.model_path,
                                   conversational, 2 if cfg.judge.swap_positions else 1,
                                   d.generation.system_prompt)
    out = output_path(cfg, "rlaif-data")
    write_rows(out, rows)
    summary = {
        "output": str(out),
        "prompts": len(prompts), "prompts_too_long": sampled.too_long, "answers": len(sampled.texts),
        "answers_truncated": int(sum(sampled.truncated)), "answers_empty": skipped["empty"],
        "identical_pairs_skipped": skipped["identical"],
        "comparisons": len(flat), "judge_calls": int(stats["comparisons"]),
        "decided": counts["A"] + counts["B"],
        "ties": int(stats["ties"] - stats["inconsistent"]), "inconsistent": int(stats["inconsistent"]),
        "unreadable": counts["unreadable"], "duplicates": counts["duplicate"],
        "pairs_written": len(rows), "form": "conversational" if conversational else "plain",
        "seconds": round(time.monotonic() - start, 2), "generation_seconds": round(sampled.seconds, 2),
        "judge": judge_description(cfg),
    }
    summary["summary"] = str(write_summary(cfg, "rlaif-data", summary))
    return summary


def cai_data(cfg: Config) -> dict:
    from tiller.actors.cai_judge import ConstitutionalJudge

    check(cfg, "cai-data")
    start = time.monotonic()
    d = cfg.datagen
    prompts = read_prompts(d.prompts, d.max_prompts)
    sampled, tokenizer = answer_prompts(cfg, prompts, 1)  # temperature 0: greedy
    todo = [n for n, t in enumerate(sampled.texts) if t.strip()]
    judge = ConstitutionalJudge(cfg.judge, tokenizer)
    revisions: dict[int, Any] = {}
    try:
        step = d.generation.chunk
        with bar(len(todo), "revising", "answer") as b:
            for lo in range(0, len(todo), step):
                part = todo[lo:lo + step]
                got = judge.revise([(sampled.prompts[n].judged, sampled.texts[n]) for n in part],
                                   d.generation.max_new_tokens)
                revisions.update(zip(part, got))
                b.update(len(part))
    finally:
        judge.close()
    conversational = has_template(tokenizer)
    rows, counts = [], Counter()
    for n in todo:
        row, why = cai_row(sampled.prompts[n], sampled.texts[n], revisions[n], conversational,
                           d.generation.system_prompt)
        counts[why] += 1
        if row is not None:
            rows.append(row)
    out = output_path(cfg, "cai-data")
    write_rows(out, rows)
    summary = {
        "output": str(out),
        "prompts": len(prompts), "prompts_too_long": sampled.too_long, "answers": len(sampled.texts),
        "answers_truncated": int(sum(sampled.truncated)), "answers_empty": len(sampled.texts) - len(todo),
        "revised": len(todo) - counts["failed"], "failed": counts["failed"], "cut": counts["cut"],
        "empty": counts["empty"], "unchanged": counts["unchanged"], "rows_written": len(rows),
        "form": "conversational" if conversational else "plain",
        "seconds": round(time.monotonic() - start, 2), "generation_seconds": round(sampled.seconds, 2),
        "judge": judge_description(cfg),
    }
    summary["summary"] = str(write_summary(cfg, "cai-data", summary))
    return summary


def judge_description(cfg: Config) -> dict:
    j = cfg.judge
    common = {"kind": j.kind, "model_path": j.model_path, "build_tiny": j.build_tiny}
    if j.kind == "cai":
        return {**common, "constitution": j.constitution_path or "built-in default",
                "principles_per_sample": j.principles_per_sample, "critique_max_tokens": j.critique_max_tokens,
                "temperature": j.temperature}
    return {**common, "verdict": j.verdict, "swap_positions": j.swap_positions,
            "template": j.template_path or "built-in default"}
