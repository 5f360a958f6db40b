"""The Constitutional-AI judge: critique each sample against a principle, revise it, and prefer the
revision (Bai et al. 2022, https://arxiv.org/abs/2212.08073).

For every sample: draw `principles_per_sample` principles from the constitution (the same ones
for the same prompt and response), then per principle ask the judge model, served by vLLM in
this process, for a critique and then a revision that answers it. The revision, re-encoded with
the policy's tokenizer, becomes candidate k+j of the task, and the pair (revision, original)
is returned when the revision differs from the sample. All samples of a task go to vLLM as one
batch per stage. A sample's score is how much of it survived revision (difflib similarity of
original and revision, 1 = unchanged); the learner logs it, online DPO trains on the pairs.

With `keep_transcripts`, every critique and revision is appended to a JSON-lines file under the
run directory, for inspection.
"""

from __future__ import annotations

import difflib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tiller.actors.cache import BoundedCache
from tiller.actors.constitution import Principle, load_constitution, pick_principles
from tiller.actors.guarded import GuardedEngine
from tiller.actors.judges import Conversations, Judgement, decode_tokens, prompt_texts
from tiller.actors.llm_judge import judge_engine, llm_judge_stats, load_template, prepare_judge_model, retry_policy
from tiller.config import JudgeConfig
from tiller.models import load_tokenizer

DEFAULT_CRITIQUE_TEMPLATE = """Prompt: {prompt}

Response: {response}

Critique request: {critique_request}
Critique:"""

DEFAULT_REVISION_TEMPLATE = """Prompt: {prompt}

Response: {response}

Critique request: {critique_request}
Critique: {critique}

Revision request: {revision_request}
Revision:"""

UNREVISED_SCORE = 0.5  # a sample whose revision failed (timed out, too long): no pair, neutral score


@dataclass(frozen=True)
class Revision:
    text: str  # the last revision, as the judge model wrote it
    cut: bool  # it ran into the token limit: not a finished answer
    principles: tuple[str, ...]
    critiques: tuple[str, ...]


@dataclass
class CAIStats:
    samples: int = 0
    revisions: int = 0  # samples revised (every principle's critique and revision came back)
    revisions_differ: int = 0  # ... whose revision differs from the original: a pair
    revisions_empty: int = 0  # ... whose revision had nothing left in the policy's vocabulary
    unrevised: int = 0  # samples with no revision: a request timed out or did not fit the judge's context
    unknown_tokens_dropped: int = 0  # revision characters/tokens the policy tokenizer does not know


class ConstitutionalJudge:
    def __init__(self, cfg: JudgeConfig, policy_tokenizer, engine=None, transcript_path: Path | None = None):
        prepare_judge_model(cfg)
        self.cfg = cfg
        self.principles: tuple[Principle, ...] = load_constitution(cfg.constitution_path)
        self.critique_template = load_template(cfg.critique_template_path, DEFAULT_CRITIQUE_TEMPLATE,
                                               ("prompt", "response", "critique_request"),
                                               "judge.critique_template_path")
        self.revision_template = load_template(cfg.revision_template_path, DEFAULT_REVISION_TEMPLATE,
                                               ("prompt", "response", "critique_request", "critique",
                                                "revision_request"), "judge.revision_template_path")
        self.tokenizer = load_tokenizer(cfg.model_path)
        self.policy_tokenizer = policy_tokenizer
        self.engine = GuardedEngine(engine or judge_engine(cfg), retry_policy(cfg), max_model_len=cfg.max_model_len)
        self._cache: BoundedCache[tuple[str, str, int], Revision] = BoundedCache(cfg.cache_size)
        self._stats = CAIStats()
        self._transcript = None
        if cfg.keep_transcripts and transcript_path is not None:
            transcript_path.parent.mkdir(parents=True, exist_ok=True)
            self._transcript = transcript_path.open("a")

    def close(self) -> None:
        self.engine.close()
        if self._transcript is not None:
            self._transcript.close()

    def stats(self) -> dict[str, float]:
        return llm_judge_stats(self._stats, self.engine, self._cache)

    def judge(self, prompts: list[np.ndarray], responses: list[np.ndarray], k: int,
              max_new_tokens: int, conversations: Conversations = None) -> Judgement:
        prompts_read = prompt_texts(prompts, self.policy_tokenizer, conversations)
        originals = [decode_tokens(self.policy_tokenizer, r) for r in responses]
        keys = [(prompts_read[i // k], originals[i], max_new_tokens) for i in range(len(responses))]
        revised: list[Revision | None] = [self._cache.get(key) for key in keys]
        todo = [i for i, r in enumerate(revised) if r is None]
        for i, revision in zip(todo, self._revise([keys[i][:2] for i in todo], max_new_tokens)):
            revised[i] = revision
            if revision is not None:
                self._cache.put(keys[i], revision)
        self._stats.samples += len(responses)
        return self._judgement(revised, keys, k, max_new_tokens, fresh=set(todo))

    def revise(self, pairs: list[tuple[str, str]], max_new_tokens: int) -> list[Revision | None]:
        """Critique and revise each (prompt text, response text) under the constitution, outside the score
        path (data generation): one engine batch per stage, None where a request failed."""
        revised = self._revise(pairs, max_new_tokens)
        self._stats.samples += len(pairs)
        self._stats.revisions += sum(r is not None for r in revised)
        self._stats.unrevised += sum(r is None for r in revised)
        return revised

    def _judgement(self, revised: list[Revision | None], keys: list[tuple[str, str, int]], k: int,
                   max_new_tokens: int, fresh: set[int]) -> Judgement:
        """keys: (prompt, original sample, max_new_tokens) per sample; fresh: samples revised just now."""
        originals = [original for _, original, _ in keys]
        scores = np.full(len(originals), UNREVISED_SCORE, np.float32)
        tokens: list[np.ndarray | None] = [None] * len(originals)
        pairs = []
        for i, revision in enumerate(revised):
            if revision is None:
                self._stats.unrevised += 1
                continue
            ids = self._policy_tokens(revision.text, max_new_tokens, finished=not revision.cut)
            text = self.policy_tokenizer.decode(ids.tolist(), skip_special_tokens=True).strip()
            differs = bool(text) and text != originals[i].strip()
            self._stats.revisions += 1
            self._stats.revisions_empty += not text
            self._stats.revisions_differ += differs
            scores[i] = difflib.SequenceMatcher(None, originals[i], text).ratio()
            if differs:
                tokens[i] = ids
                pairs.append((i // k, k + i % k, i % k))  # (prompt, chosen = revision of j, rejected = j)
            if i in fresh and self._transcript is not None:
                self._transcript.write(json.dumps({
                    "prompt": keys[i][0], "response": originals[i], "principles": revision.principles,
                    "critiques": revision.critiques, "revision": revision.text, "differs": differs}) + "\n")
        if self._transcript is not None:
            self._transcript.flush()
        columns = np.asarray(pairs, np.int32).reshape(-1, 3)
        return Judgement(scores, columns[:, 0].copy(), columns[:, 1].copy(), columns[:, 2].copy(), tokens)

    def _revise(self, items: list[tuple[str, str]], max_new_tokens: int) -> list[Revision | None]:
        """Critique, then revise, once per drawn principle; each stage is one engine batch."""
        drawn = [pick_principles(self.principles, self.cfg.principles_per_sample, p, r) for p, r in items]
        current = [response for _, response in items]
        cut = [False] * len(items)
        critiques: list[list[str]] = [[] for _ in items]
        failed: set[int] = set()  # a request of theirs timed out or did not fit: no revision
        for stage in range(max((len(d) for d in drawn), default=0)):
            active = [i for i in range(len(items)) if i not in failed and stage < len(drawn[i])]
            asks = [self.critique_template.format(prompt=items[i][0], response=current[i],
                                                  critique_request=drawn[i][stage].critique) for i in active]
            for i, critique in zip(active, self._generate(asks, self.cfg.critique_max_tokens)):
                if critique is None:
                    failed.add(i)
                else:
                    critiques[i].append(critique[0])
            active = [i for i in active if i not in failed]
            asks = [self.revision_template.format(prompt=items[i][0], response=current[i],
                                                  critique_request=drawn[i][stage].critique, critique=critiques[i][-1],
                                                  revision_request=drawn[i][stage].revision) for i in active]
            for i, revision in zip(active, self._generate(asks, max_new_tokens)):
                if revision is None:
                    failed.add(i)
                else:
                    current[i], cut[i] = revision  # the next principle critiques the revised text
        return [None if i in failed else Revision(current[i], cut[i], tuple(p.name for p in drawn[i]),
                                                  tuple(critiques[i])) for i in range(len(items))]

    def _generate(self, texts: list[str], max_new_tokens: int) -> list[tuple[str, bool] | None]:
        """(text, whether it hit the token limit) per prompt; None where the request failed."""
        ids = [np.asarray(self.tokenizer(t, add_special_tokens=False)["input_ids"], np.int32) for t in texts]
        # Sampled critiques and revisions are seeded by their own text: redelivered work reads the same.
        seeds = [zlib.crc32(t.encode()) for t in texts] if self.cfg.temperature > 0 else None
        outputs = self.engine.complete(ids, max_new_tokens, self.cfg.temperature, seeds)
        return [None if out is None else (self.tokenizer.decode(out, skip_special_tokens=True).strip(),
                                          len(out) >= max_new_tokens) for out in outputs]

    def _policy_tokens(self, text: str, max_new_tokens: int, finished: bool) -> np.ndarray:
        """The revision in the policy's tokens: unknown pieces dropped (counted), ended with EOS when the
        judge finished it and it fits."""
        ids = self.policy_tokenizer(text, add_special_tokens=False)["input_ids"]
        unk = self.policy_tokenizer.unk_token_id
        kept = [t for t in ids if unk is None or t != unk]
        self._stats.unknown_tokens_dropped += len(ids) - len(kept)
        eos = self.policy_tokenizer.eos_token_id
        if finished and eos is not None and kept and len(kept) < max_new_tokens:
            kept.append(eos)  # a finished answer, like a sample that stopped on its own
        return np.asarray(kept[:max_new_tokens], np.int32)
