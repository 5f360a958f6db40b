"""The config tree as commented YAML, for `tiller config`: every key's value with the comment written
beside or just above its field in the section's source, its range (`ranged`), and each section's docstring.

The schema's dataclasses are the one place a key is documented, so the comments are read from their
source at run time (`inspect` + `tokenize` + `ast`) rather than copied here, where they would drift.
The output parses back (`yaml.safe_load`) to exactly `to_dict` of what was rendered.

    print(render(Config()))          # or render(cfg.learner.pg) for one section
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import typing
from typing import Any, Literal

import yaml

from tiller.config.fields import LIMITS

_SIGNS = {"at_least": ">=", "above": ">", "at_most": "<=", "below": "<"}
assert set(_SIGNS) == set(LIMITS)  # a new kind of limit must get a sign here


@dataclasses.dataclass(frozen=True)
class Notes:
    """What the source says about a class: its docstring, and per field the comment lines just above it
    and the comment at the end of its line."""

    doc: str | None
    above: dict[str, list[str]]
    beside: dict[str, str]


@functools.lru_cache(maxsize=None)
def notes(cls: type) -> Notes:
    """The comments of `cls`'s fields, read from its source (empty when the source cannot be found)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return Notes(None, {}, {})
    comments: dict[int, str] = {}  # line -> comment text
    code_lines: set[int] = set()  # lines holding anything but a comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    tree = next(node for node in ast.parse(source).body if isinstance(node, ast.ClassDef))
    above: dict[str, list[str]] = {}
    beside: dict[str, str] = {}
    for stmt in tree.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        name = stmt.target.id
        trailing = [comments[n] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments]
        if trailing:
            beside[name] = " ".join(trailing)
        line = stmt.lineno - 1  # walk up the comment-only lines right above the field
        while line in comments and line not in code_lines:
            line -= 1
        if line + 1 < stmt.lineno:
            above[name] = [comments[n] for n in range(line + 1, stmt.lineno)]
    return Notes(ast.get_docstring(tree), above, beside)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # the annotations are strings (`from __future__ import annotations`)


def allowed(cls: type, f: dataclasses.Field) -> str:
    """What a field accepts beyond its type: a `ranged` field's range ("> 0, <= 1") or a Literal's
    choices ("one of: sum, mean"); "" when neither."""
    limits = f.metadata.get("limits", {})
    if limits:
        return ", ".join(f"{_SIGNS[name]} {bound:g}" for name, bound in limits.items())
    hint = _hints(cls)[f.name]
    return "one of: " + ", ".join(map(str, typing.get_args(hint))) if typing.get_origin(hint) is Literal else ""


def _value(value: Any) -> list[str]:
    """`value` as YAML: one line when it fits on one (scalars, flat lists), else block lines."""
    text = yaml.safe_dump(value, default_flow_style=None, sort_keys=False, width=1_000_000)
    lines = text.splitlines()
    return lines[:-1] if lines[-1:] == ["..."] else lines  # a bare scalar ends with the document marker


def _plain(value: Any) -> Any:
    """`value` as `to_dict` has it: sections (in a list, too) become mappings."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return [_plain(v) for v in value] if isinstance(value, list) else value


def _item_class(cls: type, name: str) -> type | None:
    """The dataclass a `list[...]` field holds (judge.scorers, sft.data), or None."""
    hint = _hints(cls).get(name)
    args = typing.get_args(hint) if typing.get_origin(hint) is list else ()
    return args[0] if args and dataclasses.is_dataclass(args[0]) else None


def _item_example(item: type) -> list[str]:
    """Comment lines showing one item of a list of sections with its defaults (the list's own default is
    usually empty, so its keys would appear nowhere else)."""
    try:
        lines = _lines(item(), 0)
    except TypeError:  # an item without defaults for every key
        return []
    head = [f"each item: {line}" for line in (notes(item).doc or "").splitlines()[:1]]
    return head + [("- " if i == 0 else "  ") + line for i, line in enumerate(lines)]


def _lines(node: Any, depth: int) -> list[str]:
    """`node`'s keys at `depth`: the comments above each, then the key with its value and side comment."""
    pad = "  " * depth
    info = notes(type(node))
    out: list[str] = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        above = list(info.above.get(f.name, []))
        if dataclasses.is_dataclass(value):
            above += (notes(type(value)).doc or "").splitlines()
        item = _item_class(type(node), f.name)
        if item is not None:
            above += _item_example(item)
        rule = allowed(type(node), f)
        side = " ".join(filter(None, [info.beside.get(f.name), rule and f"({rule})"]))
        side = f"  # {side}" if side else ""
        out += [f"{pad}# {line}".rstrip() for line in above]
        if dataclasses.is_dataclass(value) and dataclasses.fields(value):
            out.append(f"{pad}{f.name}:{side}")
            out += _lines(value, depth + 1)
            continue
        text = _value(_plain(value))
        # a block collection (`- item`, `key: value`) cannot share the key's line, even when it is one line
        if len(text) == 1 and (not isinstance(value, (list, dict)) or text[0][:1] in "[{"):
            out.append(f"{pad}{f.name}: {text[0]}{side}")
        else:
            out.append(f"{pad}{f.name}:{side}")
            out += [f"{pad}  {line}" for line in text]
    return out


def render(node: Any) -> str:
    """`node` (the whole Config or one section) as commented YAML, its docstring first."""
    head = [f"# {line}".rstrip() for line in (notes(type(node)).doc or "").splitlines()]
    return "\n".join(head + _lines(node, 0)) + "\n"


def sections(node: Any, prefix: str = "") -> dict[str, Any]:
    """Every section below `node` by its dotted name ("learner", "learner.pg", ...)."""
    found: dict[str, Any] = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            found[prefix + f.name] = value
            found |= sections(value, f"{prefix}{f.name}.")
    return found
