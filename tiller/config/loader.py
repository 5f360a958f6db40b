"""Loading the tree strictly from YAML: unknown keys, wrong types and out-of-range values are errors naming
the key and where its value came from (file and line, or the override typed); relative paths resolve
against the config file's folder."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from tiller.config.fields import LIMITS, ConfigError
from tiller.config.rules import check_combination
from tiller.config.tree import Config


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only true and false. YAML 1.1 also reads a bare
    yes/no/on/off as one, so `metrics.wandb: off` arrived as False and its error quoted a False nobody
    typed; now it stays the word `off`, and bool fields take yes/no/on/off themselves (`_coerce`)."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
                                   for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_YAML11_BOOLS = {"yes": True, "on": True, "no": False, "off": False}


def _lines(node: yaml.Node, path: str, out: dict[str, int]) -> Any:
    """Plain Python value of a composed YAML node, recording each key's line in `out`."""
    if isinstance(node, yaml.MappingNode):
        result = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            sub = f"{path}.{key}" if path else key
            out[sub] = key_node.start_mark.line + 1
            result[key] = _lines(value_node, sub, out)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_lines(v, path, out) for v in node.value]
    return _Loader("").construct_object(node)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, typing.get_args(hint)[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, value_hint = typing.get_args(hint)
        return {str(k): _coerce(v, value_hint, f"{where}.{k}") for k, v in value.items()}
    if hint is bool and isinstance(value, str) and value.lower() in _YAML11_BOOLS:
        return _YAML11_BOOLS[value.lower()]
    if hint is float and type(value) is int:
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # PyYAML reads `1e-6` (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _check_range(value: Any, f: dataclasses.Field, where: str) -> None:
    for name, bound in f.metadata.get("limits", {}).items():
        test, words = LIMITS[name]
        if value is not None and not test(value, bound):
            raise ConfigError(f"{where}: {value:g}: must be {words} {bound:g}")  # :g: -1, not the -1.0 it became


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for key, value in raw.items():
        kwargs[key] = _coerce(value, hints[key], prefix + key)
        _check_range(kwargs[key], fields[key], prefix + key)
    return cls(**kwargs)


def _apply_override(raw: dict[str, Any], override: str) -> dict[str, Any]:
    """Set `key.sub=value` in `raw`; returns {dotted key: value} for every key the override set (a
    mapping value sets each key inside it too)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r}: expected key.sub=value")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    try:
        node[parts[-1]] = value = yaml.load(text, Loader=_Loader) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({exc})") from None
    return _leaves(key.strip(), value)


def _leaves(key: str, value: Any) -> dict[str, Any]:
    """`key` and, when `value` is a mapping, every dotted key inside it."""
    if not isinstance(value, dict):
        return {key: value}
    return {key: value} | {k: v for sub, inner in value.items() for k, v in _leaves(f"{key}.{sub}", inner).items()}


def _read(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A config file's mapping, and the `file:line` each of its keys came from."""
    try:
        node = yaml.compose(Path(path).read_text(), Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    lines: dict[str, int] = {}
    raw = _lines(node, "", lines) if node is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return raw, {key: f"{path}:{line}" for key, line in lines.items()}


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                labels: Mapping[str, str] | None = None) -> Config:
    """Read `path` (or the defaults), apply `key.sub=value` overrides, and validate everything.
    `labels`: what to call an override in errors when the user typed it otherwise (a command's
    option: {"run.actors=-1": "--actors -1"})."""
    raw, lines = _read(path) if path is not None else ({}, {})
    typed: dict[str, str] = {}  # key -> the override that set it
    for override in overrides:
        for key in _apply_override(raw, override):
            typed[key] = (labels or {}).get(override, f"override {override!r}")
    try:
        cfg = _build(Config, raw, "")
        if path is not None:
            cfg = _resolve_paths(cfg, Path(path).resolve().parent)
        return check_combination(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{_blame(exc, lines, typed, str(path or 'defaults'))}: {exc}") from None


def _blame(exc: ConfigError, lines: dict[str, str], typed: dict[str, str], source: str) -> str:
    """Where a refused setting came from: every override among its key and the other keys a rule that
    spans several names (the value just typed is the likelier mistake), then its file line; a default
    is blamed on the file."""
    key = str(exc).split(":")[0].split("[")[0]
    # in order, once each; a key refused whole (an unknown section) is blamed on the overrides inside it
    places = list(dict.fromkeys(typed[k] for k in (key, *exc.keys) if k in typed))
    places = places or list(dict.fromkeys(v for k, v in typed.items() if k.startswith(f"{key}.")))
    if key not in typed and key in lines:
        places.append(lines[key])
    return " and ".join(places) or source


# Fields that name files or directories. Relative ones resolve against the config file's folder
# when they exist there, so `tiller run /elsewhere/configs/cai.yaml` works from any directory.
PATH_FIELDS = {
    "model": ("path",), "data": ("path",), "learner.pg": ("critic_path",),
    "judge": ("reward_model_path", "model_path", "template_path", "constitution_path", "critique_template_path",
              "revision_template_path"),
    "eval": ("harmful", "benign", "helpful", "honest", "baseline_path", "baseline_answers", "reward_model_path"),
    "redteam": ("prompts", "attacker_path"), "datagen": ("prompts",), "safety": ("model_path", "template_path"),
    "security": ("server_secret_key", "authorized_keys_dir", "client_secret_key", "server_public_key"),
}


def _near(value: str | None, base: Path) -> str | None:
    if value is None or Path(value).is_absolute() or not (base / value).exists():
        return value
    return str((base / value).resolve())


def _resolve_paths(cfg: Config, base: Path) -> Config:
    def section(node: Any, dotted: str) -> Any:
        changes = {name: _near(getattr(node, name), base) for name in PATH_FIELDS.get(dotted, ())}
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            sub = f"{dotted}.{f.name}" if dotted else f.name
            if dataclasses.is_dataclass(value):
                changes[f.name] = section(value, sub)
        if dotted in ("sft", "rm", "dpo"):  # each stage's list of data files
            changes["data"] = [dataclasses.replace(source, path=_near(source.path, base)) for source in node.data]
        if dotted == "safety":  # the labelled request files
            changes["harmful_prompts"] = [_near(path, base) for path in node.harmful_prompts]
            changes["benign_prompts"] = [_near(path, base) for path in node.benign_prompts]
        if dotted == "judge":
            changes["scorers"] = [dataclasses.replace(s, reward_model_path=_near(s.reward_model_path, base))
                                  for s in node.scorers]
        return dataclasses.replace(node, **changes)

    return section(cfg, "")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
