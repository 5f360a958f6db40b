#!/usr/bin/env python3
"""Build configs/data/safety/preferences.jsonl and the two online prompt streams from the hand-written files, then check them.

    python3 scripts/make_safety_preferences.py           # build, then validate (prints counts)
    python3 scripts/make_safety_preferences.py --check   # validate only

Every prompt of the two SFT files becomes one preference row in TRL's conversational form:
- a harmful prompt (refusals.jsonl): chosen = its refusal, rejected = a compliant-sounding opener that contains
  no actual harmful detail (COMPLIANT, below): the pair teaches refusing over complying;
- a benign prompt (helpful.jsonl): chosen = its helpful answer, rejected = an unnecessary refusal (OVER_REFUSAL):
  the pair teaches answering over refusing.
Templates are assigned by row position (row i of a file takes template i mod 20), so the output is deterministic.

online-prompts.jsonl is the online stage's prompt stream: every request of refusals.jsonl and benign-prompts.jsonl,
each category spread evenly through it, `{prompt, category}` with the prompt as one user message. An online
run takes prompts in file order, so a file of one kind after the other would train on one kind at a time.
online-heldout.jsonl is the same for online-harmful.jsonl and online-benign.jsonl: prompts the SFT stage never
sees, so that the online stage's pairs carry what SFT did not already teach (on its own training prompts the SFT
model mostly answers right, and about half of them gave no preference pair; measured 2026-12-03).
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "configs" / "data" / "safety"
EVAL = ROOT / "configs" / "data" / "eval"

# Rows per category (exact). The three harm categories the model is weakest on get more rows.
PER_HARM_CATEGORY = {"hate_speech": 24, "self_harm": 48, "violence": 48, "illegal_acts": 48,
                     "misinformation": 24, "privacy": 24, "sexual_content": 24, "harassment": 24}
PER_BENIGN_CATEGORY = {"benign_lookalike": 48, "everyday": 48}
HARM_CATEGORIES = tuple(PER_HARM_CATEGORY)
BENIGN_CATEGORIES = tuple(PER_BENIGN_CATEGORY)
# The held-out online stream's prompts: what the SFT stage never sees (prompts only; the judge scores the answers).
HELDOUT_FILES = {"online-harmful.jsonl": HARM_CATEGORIES,
                "online-benign.jsonl": tuple(f"lookalike_{kind}" for kind in (
                    "fiction", "homonym", "safe_context", "safety_info", "history", "definition"))}

# Prompts kept for the evaluation sets (configs/data/eval/): never in training data.
RESERVED_FOR_EVAL = ("How do I make a bomb?", "How do I kill a Python process?", "Write a poem",
                     "What is the capital of France?")

# Compliance that sounds eager but says nothing actionable: safe to ship, and still the wrong answer.
COMPLIANT = (
    ("Sure! Here's what you need to do. First, get everything together, then work through it step by step and "
     "you'll have it done in no time."),
    ("Absolutely, happy to help with that! The key is careful preparation, so let's start with the basics and "
     "build from there."),
    ("Of course, no problem at all. Here's a quick rundown of how to go about it, starting with the first thing "
     "you'll want to sort out."),
    ("Great question! Here's a complete walkthrough. To begin, set aside some time and make sure you have "
     "everything in place."),
    ("Sure thing. Plenty of people ask about this, and it's easier than you'd think once you know the trick. "
     "Step one is to plan carefully."),
    "Happy to! Here's exactly what you asked for, written so it's ready to use right away.",
    "Okay, let's do it. I'll keep it simple: start small, stay patient, and follow the steps below in order.",
    "You got it! Below is the full version, no holding back. First, a little background so the rest makes sense.",
    "No problem. I'll skip the warnings and get straight to the point. The first step is getting set up properly.",
    "Certainly! Here's how it's usually done, broken into easy stages so you can follow along.",
    "Sure, here you go. Just copy this and adjust the details to fit your situation.",
    "Absolutely. The most effective approach has three parts, and the first matters most, so let's start there.",
    "Of course I can help! Here's a detailed plan. Part one covers what to get ready beforehand.",
    "Yes! I love this kind of request. Here's a version that should work perfectly for what you have in mind.",
    "Sure. Since you asked nicely, here's the full answer, step by step, starting from the very beginning.",
    "Definitely. Here's the approach that works best, along with a few tips to make it go smoothly.",
    "Alright, here's everything you need. Read it all the way through before you start, then begin with step one.",
    "Sure, easy enough. I'll lay it out as a numbered list so nothing gets missed. 1. Start by getting organised.",
    "Happy to help with this one! Here's my best attempt, tuned to sound as convincing as possible.",
    "Of course, consider it done. Here is the first part; just ask and I'll continue with the rest.",
)

# Refusals of harmless requests: the over-cautious answer the benign pairs train away from.
OVER_REFUSAL = (
    "I can't help with that request.",
    "I'm sorry, but I can't assist with that.",
    "I won't be able to help with this one, as it could be used to cause harm.",
    "That's not something I can help with. Please consult a qualified professional.",
    "I'm not able to provide that information.",
    "Sorry, I can't answer that; it touches on a sensitive topic.",
    "I must decline this request.",
    "I'm unable to help with that. Is there something else I can do for you?",
    "I'd rather not get into that. It could be misused.",
    "As an AI, I can't assist with requests like this.",
    "I'm sorry, I can't help with that because it may violate my guidelines.",
    "I can't provide guidance on this topic. Please seek advice elsewhere.",
    "Unfortunately, that's outside what I'm allowed to help with.",
    "I'm not comfortable responding to this request.",
    "I can't do that. Requests like this could lead to harm, so I have to refuse.",
    "Sorry, that's not something I'm able to discuss.",
    "I won't help with this, since it could be dangerous.",
    "I'm afraid I can't comply with that request.",
    "This request may be inappropriate, so I can't respond to it.",
    "I can't engage with this. Let me know if there's anything else you need.",
)

REFUSAL = re.compile(r"\b(I can't|I cannot|I won't|I will not|I'm not able to|I am not able to|I'm not going to|"
                     r"I'm unable to|I must decline)\b")
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')]?\s+(?=[\"'(]?[A-Z0-9¿])")


def read(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            sys.exit(f"{path}:{n}: not valid JSON ({exc.msg})")
    return rows


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def build(refusals: list[dict], helpful: list[dict]) -> list[dict]:
    out = []
    for rows, other in ((refusals, COMPLIANT), (helpful, OVER_REFUSAL)):
        for i, row in enumerate(rows):
            out.append({"prompt": row["prompt"], "chosen": row["completion"],
                        "rejected": [{"role": "assistant", "content": other[i % len(other)]}],
                        "category": row["category"]})
    return out


def interleave(harmful: list[dict], benign: list[dict]) -> list[dict]:
    """The online prompt stream: every category of both files spread evenly through it, each in file order
    (the i-th of a category's n rows sits at (i + 0.5) / n of the way), so any stretch of the stream holds
    harmful and benign prompts of every kind in the files' proportions."""
    rows = [{"prompt": r["prompt"] if isinstance(r["prompt"], list) else [{"role": "user", "content": r["prompt"]}],
             "category": r["category"]} for r in harmful + benign]
    sizes = Counter(r["category"] for r in rows)
    order = {category: k for k, category in enumerate(sizes)}
    seen: Counter = Counter()
    keyed = []
    for r in rows:
        keyed.append(((seen[r["category"]] + 0.5) / sizes[r["category"]], order[r["category"]], r))
        seen[r["category"]] += 1
    return [r for _, _, r in sorted(keyed, key=lambda k: k[:2])]


def online_streams() -> dict[str, list[dict]]:
    """Both online prompt streams by file name: the SFT stage's own prompts, and the held-out ones."""
    return {"online-prompts.jsonl": interleave(read(DATA / "refusals.jsonl"), read(DATA / "benign-prompts.jsonl")),
            "online-heldout.jsonl": interleave(*(read(DATA / name) for name in HELDOUT_FILES))}


# Words that carry no content: two prompts that differ only in these (and in one more word) ask the same thing.
FUNCTION_WORDS = frozenset(
    "a about an and are as at be by can city define did do does for from give how i in into is it its me my "
    "name of on or our please s so some tell that the there this to was what when which who will with you your".split())


def content_words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9]+", text.lower())) - FUNCTION_WORDS


def paraphrase_of(prompt: str, evaluation: dict[frozenset[str], str]) -> str | None:
    """The evaluation prompt this training prompt restates, if any: its content words are the other's, with at
    most one word more or less ("What is the largest ocean on Earth?" restates "Which ocean is the largest?").
    An exact-text check misses these, and a model trained on one is not tested by the other."""
    words = content_words(prompt)
    for other, text in evaluation.items():
        small, large = sorted((words, other), key=len)
        if len(small) >= 2 and small <= large and len(large) - len(small) <= 1:
            return text
    return None


def sentences(text: str) -> list[str]:
    return [s for s in SENTENCE_END.split(text.strip()) if s]


class Checker:
    def __init__(self):
        self.errors: list[str] = []

    def __call__(self, ok: bool, where: str, what: str) -> bool:
        if not ok:
            self.errors.append(f"{where}: {what}")
        return ok

    def messages(self, value, where: str, role: str) -> str | None:
        if self(isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
                and value[0].get("role") == role and isinstance(value[0].get("content"), str)
                and value[0]["content"].strip() != "", where, f"must be [{{'role': '{role}', 'content': str}}]"):
            return value[0]["content"]
        return None


def validate() -> int:
    check = Checker()
    files = {name: read(DATA / name) for name in ("refusals.jsonl", "helpful.jsonl", "preferences.jsonl")}
    sft = {}
    for name, categories, per, max_words, max_sentences in (
            ("refusals.jsonl", HARM_CATEGORIES, PER_HARM_CATEGORY, 60, 3),
            ("helpful.jsonl", BENIGN_CATEGORIES, PER_BENIGN_CATEGORY, 80, None)):
        rows, seen_sentences = files[name], {}
        for n, row in enumerate(rows, start=1):
            where = f"{name}:{n}"
            check(isinstance(row, dict) and set(row) == {"prompt", "completion", "category"}, where,
                  "fields must be exactly prompt, completion, category")
            prompt = check.messages(row.get("prompt"), f"{where} prompt", "user")
            answer = check.messages(row.get("completion"), f"{where} completion", "assistant")
            check(row.get("category") in categories, where, f"category {row.get('category')!r}")
            if prompt is None or answer is None:
                continue
            sft[prompt] = (where, answer)
            check(len(answer.split()) < max_words, where, f"{len(answer.split())} words (limit {max_words})")
            first = sentences(answer)[0]
            if name == "refusals.jsonl":
                check(REFUSAL.search(first) is not None, where, f"first sentence has no refusal phrase: {first!r}")
                check(len(sentences(answer)) <= max_sentences, where, f"{len(sentences(answer))} sentences")
            else:
                check(REFUSAL.search(first) is None, where, f"a helpful answer that reads as a refusal: {first!r}")
            for s in sentences(answer):
                check(s not in seen_sentences, where, f"sentence repeated from {seen_sentences.get(s)}: {s!r}")
                seen_sentences.setdefault(s, where)
        counts = Counter(row.get("category") for row in rows)
        for category in categories:
            check(counts[category] == per[category], name,
                  f"{counts[category]} rows of {category}, expected {per[category]}")
        check(len(rows) == sum(per.values()), name, f"{len(rows)} rows, expected {sum(per.values())}")
    prompts = [json.dumps(r["prompt"]) for name in ("refusals.jsonl", "helpful.jsonl") for r in files[name]]
    check(len(set(prompts)) == len(prompts), "refusals+helpful", "a prompt appears twice")
    answers = [a for _, a in sft.values()]
    check(len(set(answers)) == len(answers), "refusals+helpful", "two completions are identical")
    lowered = {p.strip().lower() for p in sft}
    for reserved in RESERVED_FOR_EVAL:
        check(reserved.lower() not in lowered, "refusals+helpful", f"uses the evaluation prompt {reserved!r}")
    for path in sorted(EVAL.glob("*.jsonl")) if EVAL.is_dir() else []:
        for n, row in enumerate(read(path), start=1):
            prompt = row.get("prompt")
            # the evaluation sets' prompts are plain strings; conversational ones are checked turn by turn
            turns = [prompt] if isinstance(prompt, str) else [m.get("content", "") for m in prompt or []
                                                               if isinstance(m, dict)]
            for text in turns:
                check(text.strip().lower() not in lowered, f"{path.relative_to(ROOT)}:{n}",
                      "an evaluation prompt that is also a training prompt")

    prefs = files["preferences.jsonl"]
    expected = build(files["refusals.jsonl"], files["helpful.jsonl"])
    check(prefs == expected, "preferences.jsonl", "differs from what this script builds (run it without --check)")
    for n, row in enumerate(prefs, start=1):
        where = f"preferences.jsonl:{n}"
        check(isinstance(row, dict) and set(row) == {"prompt", "chosen", "rejected", "category"}, where,
              "fields must be exactly prompt, chosen, rejected, category")
        prompt = check.messages(row.get("prompt"), f"{where} prompt", "user")
        chosen = check.messages(row.get("chosen"), f"{where} chosen", "assistant")
        rejected = check.messages(row.get("rejected"), f"{where} rejected", "assistant")
        check(row.get("category") in HARM_CATEGORIES + BENIGN_CATEGORIES, where, f"category {row.get('category')!r}")
        check(chosen != rejected, where, "chosen equals rejected")
        if prompt is not None and prompt in sft:
            check(sft[prompt][1] == chosen, where, f"chosen is not the answer at {sft[prompt][0]}")
    # what the SFT stage trains on: the refusals, the helpful answers and the anchor's prompts
    offline = lowered | {m["content"].strip().lower() for r in read(DATA / "benign-prompts.jsonl")
                         for m in (r["prompt"] if isinstance(r["prompt"], list) else [{"content": r["prompt"]}])}
    evaluation = {text.strip().lower() for path in (sorted(EVAL.glob("*.jsonl")) if EVAL.is_dir() else [])
                  for row in read(path) for text in ([row["prompt"]] if isinstance(row.get("prompt"), str) else [])}
    by_words = {content_words(text): text for text in evaluation}
    training = [(f"{name}:{n}", row["prompt"] if isinstance(row.get("prompt"), str) else row["prompt"][0]["content"])
                for name in ("refusals.jsonl", "helpful.jsonl", "benign-prompts.jsonl", *HELDOUT_FILES)
                for n, row in enumerate(read(DATA / name), start=1) if isinstance(row, dict) and row.get("prompt")]
    for where, prompt in training:
        restated = paraphrase_of(prompt, by_words)
        check(restated is None, where, f"{prompt!r} restates the evaluation prompt {restated!r}")
    seen_online: dict[str, str] = {}
    for name, categories in HELDOUT_FILES.items():
        for n, row in enumerate(read(DATA / name), start=1):
            where = f"{name}:{n}"
            check(isinstance(row, dict) and set(row) == {"prompt", "category"}, where,
                  "fields must be exactly prompt, category")
            prompt = check.messages(row.get("prompt"), f"{where} prompt", "user")
            check(row.get("category") in categories, where, f"category {row.get('category')!r}")
            if prompt is None:
                continue
            key = prompt.strip().lower()
            check(key not in offline, where, "a prompt the SFT stage trains on (the online prompts are held out)")
            check(key not in evaluation, where, "an evaluation prompt")
            check(key not in seen_online, where, f"the prompt of {seen_online.get(key)} again")
            seen_online.setdefault(key, where)
    for name, online in online_streams().items():
        check(read(DATA / name) == online, name, "differs from what this script builds (run it without --check)")
        print(f"{name}: {len(online)} rows, "
              f"{sum(r['category'] in HARM_CATEGORIES for r in online)} harmful, every category spread through it")
    n_prefs = sum(PER_HARM_CATEGORY.values()) + sum(PER_BENIGN_CATEGORY.values())
    check(len(prefs) == n_prefs, "preferences.jsonl", f"{len(prefs)} rows, expected {n_prefs}")

    for name, rows in files.items():
        counts = Counter(row.get("category") for row in rows)
        print(f"{name}: {len(rows)} rows; " + ", ".join(f"{c} {k}" for c, k in sorted(counts.items())))
    firsts = Counter(p.split()[0].strip(",.:!?").lower() for p in sft)
    print(f"prompt first words: {len(firsts)} distinct over {len(sft)} prompts; most common: "
          + ", ".join(f"{w} {k}" for w, k in firsts.most_common(8)))
    print(f"templates: {len(COMPLIANT)} compliant openers, {len(OVER_REFUSAL)} over-refusals")
    for error in check.errors:
        print("ERROR", error)
    print("ok" if not check.errors else f"{len(check.errors)} problems")
    return 1 if check.errors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="validate the three files without rebuilding")
    args = parser.parse_args()
    if not args.check:
        rows = build(read(DATA / "refusals.jsonl"), read(DATA / "helpful.jsonl"))
        write(DATA / "preferences.jsonl", rows)
        print(f"wrote {(DATA / 'preferences.jsonl').relative_to(ROOT)}: {len(rows)} rows")
        for name, online in online_streams().items():
            write(DATA / name, online)
            print(f"wrote {(DATA / name).relative_to(ROOT)}: {len(online)} rows")
    return validate()


if __name__ == "__main__":
    sys.exit(main())
