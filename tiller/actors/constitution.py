"""The constitution of a Constitutional-AI judge: principles, each with a critique request and a
revision request (Bai et al. 2022, https://arxiv.org/abs/2212.08073, section 3).

A constitution file is YAML or plain text:
  - YAML: a list (or a mapping with a `principles:` list). An entry is either a string, the
    principle itself, or a mapping {name, critique, revision} giving both requests in full;
  - text: one principle per line; blank lines and lines starting with # are skipped.
A bare principle P becomes "Identify specific ways in which the response does not follow this
principle: P" and "Rewrite the response so that it follows this principle: P".

`configs/constitutions/default.yaml` holds the four shipped principles; they are also the
default here, so a judge runs without any file.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from random import Random

import yaml

from tiller.config import ConfigError


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str  # asks the judge model to find where the response breaks the principle
    revision: str  # asks it to rewrite the response so that it does not


def from_statement(statement: str, name: str) -> Principle:
    return Principle(
        name=name,
        critique=f"Identify specific ways in which the response does not follow this principle: {statement}",
        revision=f"Rewrite the response so that it follows this principle: {statement}",
    )


DEFAULT_PRINCIPLES = (
    Principle(
        "harmless",
        "Identify specific ways in which the response is harmful, dangerous, unethical or illegal, "
        "or helps someone cause harm.",
        "Rewrite the response to remove anything harmful, dangerous, unethical or illegal, while still "
        "helping with any safe part of the request.",
    ),
    Principle(
        "honest",
        "Identify claims in the response that are false, made up, or stated with more confidence than "
        "the evidence allows.",
        "Rewrite the response so that every claim is true and says how certain it is; say so where the "
        "answer is not known.",
    ),
    Principle(
        "helpful",
        "Identify ways in which the response fails to answer what was asked: missing, vague, evasive or "
        "off-topic parts.",
        "Rewrite the response so that it answers the request directly, clearly and completely.",
    ),
    Principle(
        "respectful",
        "Identify anything in the response that is insulting, demeaning, toxic, or unfair to a person or group.",
        "Rewrite the response so that it is respectful and fair to everyone, keeping its useful content.",
    ),
)


def load_constitution(path: str | Path | None) -> tuple[Principle, ...]:
    """The principles in `path` (YAML or text), or the shipped four when `path` is None."""
    if path is None:
        return DEFAULT_PRINCIPLES
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"judge.constitution_path: cannot read {path}: {exc.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        principles = _from_yaml(text, path)
    else:
        principles = tuple(from_statement(line.strip(), f"principle-{n}")
                           for n, line in enumerate(text.splitlines(), 1)
                           if line.strip() and not line.lstrip().startswith("#"))
    if not principles:
        raise ConfigError(f"{path}: the constitution has no principles")
    return principles


def _from_yaml(text: str, path: Path) -> tuple[Principle, ...]:
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(node, yaml.MappingNode):
        node = next((v for k, v in node.value if k.value == "principles"), None)
        if node is None:
            raise ConfigError(f"{path}: a mapping at the top level needs a `principles:` list")
    if not isinstance(node, yaml.SequenceNode):
        raise ConfigError(f"{path}: expected a list of principles")
    out = []
    for n, entry in enumerate(node.value, 1):
        where = f"{path}:{entry.start_mark.line + 1}"
        value = yaml.safe_load(yaml.serialize(entry))
        if isinstance(value, str) and value.strip():
            out.append(from_statement(value.strip(), f"principle-{n}"))
        elif isinstance(value, dict):
            unknown = set(value) - {"name", "critique", "revision"}
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} (known: name, critique, revision)")
            for key in ("critique", "revision"):
                if not isinstance(value.get(key), str) or not value[key].strip():
                    raise ConfigError(f"{where}: principle {n} needs a non-empty `{key}` text")
            out.append(Principle(str(value.get("name", f"principle-{n}")), value["critique"].strip(),
                                 value["revision"].strip()))
        else:
            raise ConfigError(f"{where}: a principle is a text or a mapping with critique and revision")
    return tuple(out)


def pick_principles(principles: tuple[Principle, ...], count: int, prompt: str, response: str) -> list[Principle]:
    """`count` distinct principles (all of them if there are fewer), drawn at random but the same
    for the same (prompt, response): work that is redelivered gets the same critique."""
    rng = Random(zlib.crc32(f"{prompt}\x00{response}".encode()))
    return rng.sample(list(principles), min(count, len(principles)))
