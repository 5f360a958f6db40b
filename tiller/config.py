"""One typed configuration tree for every Tiller process, loaded strictly from YAML.

    cfg = load_config("configs/demo.yaml", overrides=["learner.lr=1e-6", "run.actors=1"])

Unknown keys, wrong types, values out of a field's range (`ranged`) and malformed overrides raise
`ConfigError` naming the key and where its value came from: the file and line, or the override.
The tree is made of frozen dataclasses: nothing changes it after start-up.
Imports nothing but the standard library and yaml.
"""

from __future__ import annotations

import dataclasses
import operator
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says where and why.

    `keys`: the other settings a rule that spans several refused the first one for, so the loader can
    name where each came from (the message starts with the first key)."""

    def __init__(self, message: str, keys: tuple[str, ...] = ()):
        super().__init__(message)
        self.keys = keys


# A field's range, checked by the loader on every value a file or override gives (defaults are in range).
LIMITS = {"at_least": (operator.ge, "at least"), "above": (operator.gt, "more than"),
          "at_most": (operator.le, "at most"), "below": (operator.lt, "less than")}


def ranged(default: Any, **limits: float) -> Any:
    """A dataclass field with its default and its range: `ranged(16, at_least=1)`,
    `ranged(1.0, above=0, at_most=1)`. None (where the type allows it) is always in range."""
    unknown = set(limits) - set(LIMITS)
    if unknown:
        raise TypeError(f"ranged: unknown limit(s) {sorted(unknown)}")
    return field(default=default, metadata={"limits": limits})


@dataclass(frozen=True)
class ModelConfig:
    path: str = "runs/tiny-policy"  # a transformers model directory
    # build a random-init tiny model there if the directory is missing (demos, tests). Off unless asked, so
    # a mistyped path is an error, not a run that quietly trains a random model
    build_tiny: bool = False
    seed: int = 0  # init seed of the tiny model
    tiny_chat: bool = False  # the tiny model gets a chat template (and a character set wide enough for one)


@dataclass(frozen=True)
class DataConfig:
    # letters: random lowercase prompts, made on the spot; jsonl: one object per line; dataset: a file or
    # folder the Hugging Face `datasets` library reads (parquet, json, jsonl, csv, a save_to_disk folder)
    source: Literal["letters", "jsonl", "dataset"] = "letters"
    path: str | None = None
    prompt_field: str = "prompt"  # a string, or a conversation: a list of {role, content} messages (TRL's format)
    split: str = "train"  # dataset: the split to read when the folder holds several
    # conversations go through the policy tokenizer's chat template (add_generation_prompt=True);
    # false (base models): their contents joined by blank lines, as plain text
    chat_template: bool = True
    num_prompts: int = ranged(100_000, at_least=1)  # letters: size of the prompt stream
    prompt_min_chars: int = ranged(4, at_least=1)
    prompt_max_chars: int = ranged(10, at_least=1)
    seed: int = 0


@dataclass(frozen=True)
class DPOConfig:
    variant: Literal["sigmoid", "ipo", "simpo"] = "sigmoid"
    beta: float = ranged(0.1, above=0)
    label_smoothing: float = ranged(0.0, at_least=0, below=0.5)  # conservative DPO (sigmoid only); 0.5: no signal
    simpo_gamma: float = ranged(0.5, at_least=0)  # SimPO target reward margin
    # sigmoid: a response's log-prob summed over its tokens (the DPO paper) or averaged per token (so a
    # short response is not cheaper in KL than a long one); IPO and SimPO always average, as TRL does
    logprob: Literal["sum", "mean"] = "sum"
    # Asynchronous pairs were sampled by a policy up to learner.max_policy_lag versions old. "is": weight each
    # pair's loss by its truncated importance weight min(offpolicy_cap, exp(mean over both responses' tokens of
    # log pi/mu)) (a length-normalised sequence ratio, as GSPO's): a fresh pair weighs 1, a pair the policy has
    # since moved away from weighs less. "none": every pair weighs 1. Needs rollout.temperature 1 and top_p 1.
    offpolicy_weight: Literal["none", "is"] = "none"
    offpolicy_cap: float = ranged(1.0, at_least=1)  # a fresh pair weighs 1


@dataclass(frozen=True)
class PGConfig:
    """PPO and the critic-free variants (GRPO, RLOO) that reuse its clipped surrogate."""

    clip_eps: float = ranged(0.2, above=0)
    cliprange_value: float = ranged(0.2, above=0)
    vf_coef: float = ranged(0.1, at_least=0)
    ent_coef: float = ranged(0.01, at_least=0)
    target_kl: float = ranged(0.01, at_least=0)  # stop an update's epochs once approx-KL passes 1.5x this (0: never)
    ppo_epochs: int = ranged(4, at_least=1)
    minibatches: int = ranged(1, at_least=1)  # per epoch
    gamma: float = ranged(1.0, at_least=0, at_most=1)
    lam: float = ranged(0.95, at_least=0, at_most=1)
    kl_coef: float = ranged(0.05, at_least=0)  # weight of the KL penalty to the reference
    # Where the KL penalty goes and how it is estimated (learner/pg_losses.py: kl_penalty). In the reward
    # only k1 is right; as a loss term k2 follows grad KL(policy || reference) and k3 grad KL(reference ||
    # policy). Unset (null/auto): ppo puts k1 in the reward; grpo and rloo (no per-token reward) use a k2 loss.
    kl_estimator: Literal["auto", "k1", "k2", "k3"] = "auto"
    kl_in_reward: bool | None = None
    whiten_advantages: bool | None = None  # unset: on for ppo; off for grpo/rloo (their groups are already centred)
    group_std: bool = True  # GRPO: divide by the group's std (False: Dr. GRPO style)
    is_cap: float | None = ranged(2.0, at_least=1)  # truncated importance weight cap for behaviour-vs-learner mismatch
    truncation_penalty: float = ranged(0.0, at_least=0)  # subtracted from the score of responses cut at max_new_tokens
    critic_lr: float = ranged(1e-5, above=0)
    critic_path: str | None = None  # initialise the critic from this reward model (default: the policy)


@dataclass(frozen=True)
class LearnerConfig:
    address: str = "tcp://127.0.0.1:5555"  # where the learner binds; workers connect here
    algorithm: Literal["online_dpo", "ppo", "grpo", "rloo"] = "online_dpo"
    # async: actors generate while the learner trains (samples up to max_policy_lag versions old);
    # sync: generate -> judge -> train -> publish strictly in turn, every sample from the current policy
    mode: Literal["async", "sync"] = "async"
    steps: int = ranged(100, at_least=1)
    # per step: preference pairs (online_dpo) or prompts with k samples (ppo/grpo/rloo)
    batch_size: int = ranged(16, at_least=1)
    lr: float = ranged(1e-5, above=0)
    weight_decay: float = ranged(0.0, at_least=0)
    max_grad_norm: float = ranged(1.0, at_least=0)  # 0: no clipping (DeepSpeed's gradient_clipping)
    zero_stage: int = ranged(0, at_least=0, at_most=3)
    sync_every: int = ranged(1, at_least=1)  # publish new weights every N steps
    max_policy_lag: int = ranged(2, at_least=0)  # samples from a policy older than this many versions are dropped
    lease_prompts: int = ranged(8, at_least=1)  # prompts per lease
    lease_timeout_s: float = ranged(300.0, above=0)  # a lease not scored by then is re-leased
    max_inflight_prompts: int = ranged(64, at_least=1)  # leased + buffered prompts: bounds memory and staleness
    # a frame holds one bucket (a tensor larger than a bucket travels in pieces), so a bucket stays under the
    # codec's 2 GiB frame limit
    weight_bucket_mb: int = ranged(256, at_least=1, at_most=2047)
    # superseded policy versions still served to actors part-way through fetching them (each a copy of the
    # weights in host memory); past this the oldest fetches are cut short and start on the newest
    max_superseded_versions: int = ranged(2, at_least=0)
    # a worker whose one piece of work (a generation, a weight load, a judgement) runs longer than this is
    # stuck: its work goes to others and it exits (code 75) to be restarted. null: never. Set it above the
    # slowest honest batch (real models on a CPU can take minutes)
    stuck_after_s: float | None = ranged(900.0, above=0)
    torch_threads: int = ranged(0, at_least=0)  # 0: as placement decides (or torch's default when unpinned)
    shutdown_grace_s: float = ranged(15.0, at_least=0)  # time given to workers to hear the shutdown
    # steps between checkpoints (0: none); one is always written on SIGTERM
    checkpoint_every: int = ranged(0, at_least=0)
    heartbeat_s: float = ranged(2.0, above=0)  # workers beat this often; the learner acknowledges each beat
    missed_beats: int = ranged(5, at_least=1)  # a peer silent this many beats is dead: its leases expire at once
    # optimizer steps skipped in a row (NaN/inf loss or gradient) before the run stops
    max_nonfinite_steps: int = ranged(5, at_least=1)
    # auto: bf16 on a GPU (DeepSpeed's bf16: fp32 master weights and optimizer states), fp32 on a CPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # sequences per forward/backward pass (a DPO pair is two); 0: a step's whole batch
    micro_batch_size: int = ranged(0, at_least=0)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% more time
    reference_offload: bool = False  # keep the frozen reference model in host memory and run it on the CPU
    # float32 working memory for log-probs over the vocabulary, per chunk of positions
    logprob_chunk_mb: int = ranged(256, at_least=1)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    pg: PGConfig = field(default_factory=PGConfig)


@dataclass(frozen=True)
class RolloutConfig:
    samples_per_prompt: int = ranged(4, at_least=1)
    max_new_tokens: int = ranged(16, at_least=1)
    temperature: float = ranged(1.0, at_least=0)  # 0: greedy
    top_p: float = ranged(1.0, above=0, at_most=1)
    dtype: Literal["float32", "bfloat16"] = "float32"  # float32 keeps sampling on-policy on CPU
    kv_cache_gib: float = ranged(1.0, above=0)
    max_model_len: int = ranged(256, at_least=2)
    learner_timeout_s: float = ranged(600.0, above=0)  # give up if the learner is silent this long


@dataclass(frozen=True)
class ScorerConfig:
    """One part of a composed judge."""

    kind: Literal["rule", "reward_model"] = "rule"
    rule: str = "tiller.tasks:vowel_reward"
    reward_model_path: str | None = None
    weight: float = 1.0


@dataclass(frozen=True)
class JudgeConfig:
    kind: Literal["rule", "reward_model", "llm_pairwise", "cai", "composed"] = "rule"
    rule: str = "tiller.tasks:vowel_reward"  # module:function(prompt, response) -> float
    reward_model_path: str | None = None
    batch_size: int = ranged(32, at_least=1)  # reward-model forward micro-batch
    min_margin: float = ranged(0.0, at_least=0)  # no pair when best and worst score differ by this or less
    # llm_pairwise (RLAIF): a judge model served by vLLM in the judge process
    model_path: str | None = None
    build_tiny: bool = False  # build a random-init tiny judge model at model_path if it is missing (demos, tests)
    template_path: str | None = None  # text with {prompt}, {response_a}, {response_b}; default built in
    compare: Literal["all_pairs", "tournament"] = "all_pairs"
    swap_positions: bool = True  # judge each pair in both orders; keep only preferences that survive
    max_new_tokens: int = ranged(8, at_least=1)  # verdict length (free verdicts)
    # free: the judge writes a verdict that is parsed; letter: its next token is restricted to the
    # letters A and B and the likelier one wins (as RLAIF reads preferences off the letters' probabilities)
    verdict: Literal["free", "letter"] = "free"
    cache_size: int = ranged(100_000, at_least=0)  # verdicts kept, keyed by (prompt, response A, response B)
    max_model_len: int = ranged(1024, at_least=2)
    kv_cache_gib: float = ranged(1.0, above=0)
    # composed: a weighted sum of scorers, and an optional gate (e.g. a safety rule)
    scorers: list[ScorerConfig] = field(default_factory=list)
    gate_rule: str | None = None  # module:function(prompt, response) -> bool; True means the gate fires
    gate_mode: Literal["zero", "penalty"] = "zero"  # when it fires: reward 0, or reward + gate_penalty
    gate_penalty: float = -1.0
    # cai (Constitutional AI): critique each sample against principles, revise it, prefer the revision
    constitution_path: str | None = None  # YAML or text, one principle per entry; default: the shipped four
    # principles drawn per sample; each is one critique -> revision round
    principles_per_sample: int = ranged(1, at_least=1)
    critique_template_path: str | None = None  # {prompt} {response} {critique_request}
    revision_template_path: str | None = None  # ... and {critique} {revision_request}
    critique_max_tokens: int = ranged(64, at_least=1)
    # 0: greedy critiques and revisions; above 0, sampled (seeded by their prompt)
    temperature: float = ranged(0.0, at_least=0)
    keep_transcripts: bool = False  # write every critique and revision to runs/<name>/judges/<judge>.jsonl
    # engine calls of LLM judges (llm_pairwise, cai)
    # a generation still running after this is aborted and retried; 0: no limit
    request_timeout_s: float = ranged(120.0, at_least=0)
    retries: int = ranged(2, at_least=0)  # tries after the first, on a timeout or an engine error
    retry_backoff_s: float = ranged(0.5, at_least=0)  # first back-off; doubles each retry (with jitter), at most 10 s
    max_failures_in_a_row: int = ranged(2, at_least=0)  # tasks given back (JudgeFailed) before a failing judge stops
    learner_timeout_s: float = ranged(600.0, above=0)


@dataclass(frozen=True)
class RunConfig:
    """What `tiller run` starts on this machine, and where."""

    # placement auto starts at most one per CPU core left after the learner's (it says so)
    actors: int = ranged(2, at_least=0)
    judges: int = ranged(1, at_least=0)  # 0: judges started by hand (`tiller judge`) do the scoring
    placement: Literal["auto", "manual", "off"] = "auto"
    cores: dict[str, list[int]] = field(default_factory=dict)  # manual: {"learner": [0], "actor0": [1]}
    # Wall-clock limit of the whole run, in seconds; null or 0: none (the run ends when the learner has
    # trained learner.steps). At the limit every process gets SIGTERM (the learner checkpoints for
    # `tiller learner --resume`; each is killed if still there 10 s later) and `tiller run` exits 1.
    timeout_s: float | None = ranged(None, at_least=0)
    # per actor or judge: a worker that dies is started again, up to this many times
    max_restarts: int = ranged(5, at_least=0)
    # wait before the first restart; doubles with each (at most 60 s)
    restart_backoff_s: float = ranged(1.0, at_least=0)


@dataclass(frozen=True)
class MetricsConfig:
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online if logged in
    wandb_project: str = "tiller"
    # the progress line warns when kl/sequence (KL per response) passes it; 0: never
    kl_warn_nats: float = ranged(20.0, at_least=0)


@dataclass(frozen=True)
class SecurityConfig:
    """CURVE encryption and authentication. Key files are made by `tiller keys`."""

    server_secret_key: str | None = None  # learner: its own secret key file (NAME.key_secret)
    authorized_keys_dir: str | None = None  # learner: public key files (*.key) of workers allowed in
    client_secret_key: str | None = None  # worker: its own secret key file
    server_public_key: str | None = None  # worker: the learner's public key file (NAME.key)
    allow_insecure_network: bool = False  # bind beyond loopback without CURVE: anyone who can reach it is in
    # learner: status requests, model cards and weights only for sockets that asked for work (registered
    # actors and judges), not for any local process that can connect; `tiller status` is refused then
    require_registration: bool = False

    @property
    def server_enabled(self) -> bool:
        return self.server_secret_key is not None

    @property
    def client_enabled(self) -> bool:
        return self.client_secret_key is not None


@dataclass(frozen=True)
class Config:
    name: str = "demo"
    seed: int = 0
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    run: RunConfig = field(default_factory=RunConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ----------------------------------------------------------------------------- loading


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
        return _check_combination(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{_blame(exc, lines, typed, str(path or 'defaults'))}: {exc}") from None


def _blame(exc: ConfigError, lines: dict[str, str], typed: dict[str, str], source: str) -> str:
    """Where a refused setting came from: every override among its key and the other keys a rule that
    spans several names (the value just typed is the likelier mistake), then its file line; a default
    is blamed on the file."""
    key = str(exc).split(":")[0].split("[")[0]
    places = list(dict.fromkeys(typed[k] for k in (key, *exc.keys) if k in typed))  # in order, once each
    if key not in typed and key in lines:
        places.append(lines[key])
    return " and ".join(places) or source


# Fields that name files or directories. Relative ones resolve against the config file's folder
# when they exist there, so `tiller run /elsewhere/configs/cai.yaml` works from any directory.
PATH_FIELDS = {
    "model": ("path",), "data": ("path",), "learner.pg": ("critic_path",),
    "judge": ("reward_model_path", "model_path", "template_path", "constitution_path", "critique_template_path",
              "revision_template_path"),
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
        if dotted == "judge":
            changes["scorers"] = [dataclasses.replace(s, reward_model_path=_near(s.reward_model_path, base))
                                  for s in node.scorers]
        return dataclasses.replace(node, **changes)

    return section(cfg, "")


def resolve_pg(cfg: Config) -> Config:
    """Fill the policy-gradient settings left unset with the algorithm's own defaults (the loader does
    this; code handed a Config built by hand calls it too)."""
    pg, ppo = cfg.learner.pg, cfg.learner.algorithm == "ppo"
    in_reward = ppo if pg.kl_in_reward is None else pg.kl_in_reward
    resolved = dataclasses.replace(
        pg, kl_in_reward=in_reward,
        kl_estimator=pg.kl_estimator if pg.kl_estimator != "auto" else "k1" if in_reward else "k2",
        whiten_advantages=ppo if pg.whiten_advantages is None else pg.whiten_advantages)
    return dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, pg=resolved))


def _check_policy_gradient(cfg: Config) -> None:
    """KL forms without the gradient they promise, and sampling the learner cannot reproduce."""
    lc, pg, ro = cfg.learner, cfg.learner.pg, cfg.rollout
    algorithm = ("learner.algorithm",)
    if lc.algorithm in ("grpo", "rloo") and pg.kl_in_reward:
        raise ConfigError(f"learner.pg.kl_in_reward: {lc.algorithm} has no per-token reward to fold a KL into; "
                          "use a loss term (kl_in_reward: false, kl_estimator: k2 or k3)", algorithm)
    if pg.kl_in_reward and pg.kl_estimator != "k1":
        raise ConfigError(f"learner.pg.kl_estimator: {pg.kl_estimator} in the reward is not a KL penalty; only k1 "
                          "is (or put the KL in the loss: kl_in_reward: false)", ("learner.pg.kl_in_reward",))
    if not pg.kl_in_reward and pg.kl_estimator == "k1" and pg.kl_coef:
        raise ConfigError("learner.pg.kl_estimator: k1 as a loss term has no gradient in expectation (score-function "
                          "identity); use k2 (grad KL(policy || reference)) or k3 (grad KL(reference || policy))",
                          ("learner.pg.kl_in_reward", "learner.pg.kl_coef"))
    if ro.temperature <= 0:
        raise ConfigError(f"rollout.temperature: {lc.algorithm} needs sampled responses (temperature > 0)", algorithm)
    if ro.top_p < 1:
        raise ConfigError(f"rollout.top_p: {ro.top_p}: the learner scores the full distribution at the sampling "
                          f"temperature, so importance weights for {lc.algorithm} would be wrong; use top_p: 1",
                          algorithm)
    samples = lc.batch_size * ro.samples_per_prompt
    if pg.minibatches > samples:
        raise ConfigError(f"learner.pg.minibatches: {pg.minibatches} for {samples} samples per step "
                          f"(learner.batch_size x rollout.samples_per_prompt); each minibatch needs at least one",
                          ("learner.batch_size", "rollout.samples_per_prompt"))


def _check_learner(cfg: Config) -> None:
    """The learner's settings against each other and the rollout's."""
    lc, k = cfg.learner, cfg.rollout.samples_per_prompt
    if lc.mode == "sync" and lc.max_inflight_prompts < lc.batch_size:
        raise ConfigError(f"learner.max_inflight_prompts: {lc.max_inflight_prompts} is less than one step's "
                          f"learner.batch_size ({lc.batch_size}), which synchronous mode keeps out at once",
                          ("learner.batch_size", "learner.mode"))
    if lc.micro_batch_size == 1 and lc.algorithm == "online_dpo":
        raise ConfigError("learner.micro_batch_size: 1: a micro-batch of online_dpo holds at least two sequences "
                          "(a chosen and a rejected response); 0 means the whole batch", ("learner.algorithm",))
    if lc.algorithm == "online_dpo" and lc.dpo.offpolicy_weight != "none":
        if cfg.rollout.temperature != 1 or cfg.rollout.top_p != 1:
            raise ConfigError(f"learner.dpo.offpolicy_weight: {lc.dpo.offpolicy_weight} compares the policy's own "
                              "log-probs with the actors' sampling log-probs, so it needs rollout.temperature 1 and "
                              f"top_p 1 (not {cfg.rollout.temperature} and {cfg.rollout.top_p})",
                              ("rollout.temperature", "rollout.top_p"))
    if lc.lease_prompts > lc.max_inflight_prompts:
        raise ConfigError(f"learner.lease_prompts: {lc.lease_prompts} is more than learner.max_inflight_prompts "
                          f"({lc.max_inflight_prompts}), so no lease could ever be given",
                          ("learner.max_inflight_prompts",))
    in_time = (lc.max_policy_lag + 1) * lc.sync_every * lc.batch_size  # coordinator.py: staleness-aware admission
    if lc.mode == "async" and lc.lease_prompts > in_time:
        raise ConfigError(f"learner.lease_prompts: {lc.lease_prompts} is more than the {in_time} prompts that can be "
                          "trained within learner.max_policy_lag ((max_policy_lag + 1) x learner.sync_every x "
                          "learner.batch_size)", ("learner.max_policy_lag", "learner.sync_every", "learner.batch_size"))
    if k < 2 and (lc.algorithm in ("grpo", "rloo") or (lc.algorithm == "online_dpo" and cfg.judge.kind != "cai")):
        why = "a group baseline needs" if lc.algorithm != "online_dpo" else "a preference pair needs"
        raise ConfigError(f"rollout.samples_per_prompt: {lc.algorithm} with {k} sample per prompt: {why} at least 2",
                          ("learner.algorithm", "judge.kind"))


def _check_judge(cfg: Config) -> None:
    """What a judge kind cannot start without. (Whether its files exist and its rules import is the
    preflight's to check, on the machine that runs it: tiller/cli/preflight.py.)"""
    j = cfg.judge
    if j.kind == "cai" and cfg.learner.algorithm != "online_dpo":
        raise ConfigError(f"judge.kind: cai prefers revisions the policy never sampled, so it feeds preference "
                          f"pairs to online_dpo; learner.algorithm {cfg.learner.algorithm} needs on-policy scores",
                          ("learner.algorithm",))
    if j.kind == "reward_model" and not j.reward_model_path:
        raise ConfigError("judge.reward_model_path: required when judge.kind is reward_model", ("judge.kind",))
    if j.kind in ("llm_pairwise", "cai") and not j.model_path:
        raise ConfigError(f"judge.model_path: required when judge.kind is {j.kind} (the judge model's directory)",
                          ("judge.kind",))
    if j.kind == "composed" and not j.scorers:
        raise ConfigError("judge.scorers: a composed judge needs at least one scorer", ("judge.kind",))
    for i, scorer in enumerate(j.scorers if j.kind == "composed" else ()):
        if scorer.kind == "reward_model" and not scorer.reward_model_path:
            raise ConfigError(f"judge.scorers[{i}].reward_model_path: required when its kind is reward_model")


def _check_combination(cfg: Config) -> Config:
    """Rules that span sections; each error names its first key, and passes the others it depends on."""
    cfg = resolve_pg(cfg)
    if cfg.learner.algorithm != "online_dpo":
        _check_policy_gradient(cfg)
    _check_learner(cfg)
    _check_judge(cfg)
    if cfg.rollout.max_new_tokens >= cfg.rollout.max_model_len:
        raise ConfigError(f"rollout.max_new_tokens: {cfg.rollout.max_new_tokens} leaves no room for a prompt in "
                          f"rollout.max_model_len {cfg.rollout.max_model_len}", ("rollout.max_model_len",))
    if cfg.data.prompt_min_chars > cfg.data.prompt_max_chars:
        raise ConfigError(f"data.prompt_min_chars: {cfg.data.prompt_min_chars} is more than data.prompt_max_chars "
                          f"({cfg.data.prompt_max_chars})", ("data.prompt_max_chars",))
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
