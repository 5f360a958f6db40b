"""What the model writes, readable: `runs/<name>/completions.jsonl`, a W&B table and a console example.

samples.jsonl audits ids and outcomes; this file is for people. Every `metrics.log_completions_every`
steps the first `metrics.completions_per_log` trained prompts of the step are decoded, one row each:

    {"step": 20, "policy_version": 19, "behaviour_version": 18, "prompt_id": 4411, "prompt": "...",
     "responses": [{"text": "...", "score": 0.9, "mark": "chosen", "truncated": false}, ...]}

`mark` is "chosen" or "rejected" where the response is in one of the judge's preference pairs (DPO),
else null; a judge's revision (Constitutional AI) is a response of its own, with no score. The closing
summary shows the first and the last logged steps' best answers side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tiller.learner.coordinator import ScoredPrompt
from tiller.records import keep_steps_up_to

COLUMNS = ["step", "policy_version", "prompt", "response", "score", "mark"]
TABLE_ROWS = 500  # the W&B table keeps the latest rows; the file keeps all


def marks(item: ScoredPrompt) -> dict[int, str]:
    """Candidate index -> "chosen" / "rejected" ("chosen" wins for one that is both in different pairs)."""
    out: dict[int, str] = {}
    for chosen, rejected in item.pairs:
        out.setdefault(rejected, "rejected")
        out[chosen] = "chosen"
    return out


def completion_row(item: ScoredPrompt, step: int, version: int, decode) -> dict[str, Any]:
    marked = marks(item)
    responses = [{"text": decode(r), "score": float(item.scores[i]), "mark": marked.get(i),
                  "truncated": bool(item.truncated[i])} for i, r in enumerate(item.responses)]
    k = len(item.responses)
    responses += [{"text": decode(r), "score": None, "mark": marked.get(k + j), "truncated": False, "revision_of": j}
                  for j, r in enumerate(item.revisions) if r is not None]
    return {"step": step, "policy_version": version, "behaviour_version": item.policy_version,
            "prompt_id": item.prompt_id, "prompt": decode(item.prompt), "responses": responses}


def best(row: dict[str, Any]) -> dict[str, Any]:
    scored = [r for r in row["responses"] if r["score"] is not None] or row["responses"]
    return max(scored, key=lambda r: r["score"] if r["score"] is not None else float("-inf"))


def one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def example_line(row: dict[str, Any]) -> str:
    top = best(row)
    score = f"{top['score']:.2f}" if top["score"] is not None else "revision"
    return f"  {row['prompt_id']}: {one_line(row['prompt'], 60)!r} -> {one_line(top['text'])!r} ({score})"


class CompletionLog:
    def __init__(self, path: Path, tokenizer, every: int, per_log: int, resume_step: int = 0):
        self.path, self.every, self.per_log = path, every, per_log
        self._decode = lambda ids: tokenizer.decode([int(t) for t in ids], skip_special_tokens=True)
        earlier = keep_steps_up_to(path, resume_step) if resume_step else []
        self._file = path.open("a" if resume_step else "w") if every else None
        self.first: list[dict[str, Any]] = [r for r in earlier if r["step"] == earlier[0]["step"]] if earlier else []
        self.last: list[dict[str, Any]] = []
        self.table: list[list[Any]] = []

    def due(self, step: int) -> bool:
        return bool(self.every) and (step == 1 or step % self.every == 0)

    def log(self, step: int, version: int, items: list[ScoredPrompt]) -> list[dict[str, Any]]:
        """Decode and write this step's rows (call when `due`); returns them."""
        rows = [completion_row(item, step, version, self._decode) for item in items[:self.per_log]]
        for row in rows:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.table += [[step, version, row["prompt"], r["text"], r["score"], r["mark"]] for r in row["responses"]]
        self._file.flush()
        self.table = self.table[-TABLE_ROWS:]
        self.first = self.first or rows
        self.last = rows
        return rows

    def before_after(self) -> dict[str, list[dict[str, Any]]]:
        """The first and last logged steps' prompts with their best response, for summary.json."""
        def brief(rows):
            return [{"step": r["step"], "prompt": r["prompt"], "best": best(r)["text"], "score": best(r)["score"]}
                    for r in rows]
        return {"first": brief(self.first), "last": brief(self.last)} if self.last else {}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
