"""One typed configuration tree for every Tiller process, loaded strictly from YAML.

    cfg = load_config("configs/demo.yaml", overrides=["learner.lr=1e-6", "run.actors=1"])

Unknown keys, wrong types and malformed overrides raise `ConfigError` naming the file, line
and key. The tree is made of frozen dataclasses: nothing changes it after start-up.
Imports nothing but the standard library and yaml.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class ModelConfig:
    path: str = "runs/tiny-policy"  # a transformers model directory
    build_tiny: bool = True  # build a random-init tiny model there if the directory is missing
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
    num_prompts: int = 100_000  # letters: size of the prompt stream
    prompt_min_chars: int = 4
    prompt_max_chars: int = 10
    seed: int = 0


@dataclass(frozen=True)
class DPOConfig:
    variant: Literal["sigmoid", "ipo", "simpo"] = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0  # conservative DPO (sigmoid only)
    simpo_gamma: float = 0.5  # SimPO target reward margin
    # sigmoid: a response's log-prob summed over its tokens (the DPO paper) or averaged per token (so a
    # short response is not cheaper in KL than a long one); IPO and SimPO always average, as TRL does
    logprob: Literal["sum", "mean"] = "sum"
    # Asynchronous pairs were sampled by a policy up to learner.max_policy_lag versions old. "is": weight each
    # pair's loss by its truncated importance weight min(offpolicy_cap, exp(mean over both responses' tokens of
    # log pi/mu)) (a length-normalised sequence ratio, as GSPO's): a fresh pair weighs 1, a pair the policy has
    # since moved away from weighs less. "none": every pair weighs 1. Needs rollout.temperature 1 and top_p 1.
    offpolicy_weight: Literal["none", "is"] = "none"
    offpolicy_cap: float = 1.0


@dataclass(frozen=True)
class PGConfig:
    """PPO and the critic-free variants (GRPO, RLOO) that reuse its clipped surrogate."""

    clip_eps: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.01
    target_kl: float = 0.01  # stop an update's epochs once approx-KL passes 1.5x this (0: never)
    ppo_epochs: int = 4
    minibatches: int = 1  # per epoch
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05  # weight of the KL penalty to the reference
    # Where the KL penalty goes and how it is estimated (learner/pg_losses.py: kl_penalty). In the reward
    # only k1 is right; as a loss term k2 follows grad KL(policy || reference) and k3 grad KL(reference ||
    # policy). Unset (null/auto): ppo puts k1 in the reward; grpo and rloo (no per-token reward) use a k2 loss.
    kl_estimator: Literal["auto", "k1", "k2", "k3"] = "auto"
    kl_in_reward: bool | None = None
    whiten_advantages: bool | None = None  # unset: on for ppo; off for grpo/rloo (their groups are already centred)
    group_std: bool = True  # GRPO: divide by the group's std (False: Dr. GRPO style)
    is_cap: float | None = 2.0  # truncated importance weight cap for behaviour-vs-learner mismatch
    truncation_penalty: float = 0.0  # subtracted from the score of responses cut at max_new_tokens
    critic_lr: float = 1e-5
    critic_path: str | None = None  # initialise the critic from this reward model (default: the policy)


@dataclass(frozen=True)
class LearnerConfig:
    address: str = "tcp://127.0.0.1:5555"  # where the learner binds; workers connect here
    algorithm: Literal["online_dpo", "ppo", "grpo", "rloo"] = "online_dpo"
    # async: actors generate while the learner trains (samples up to max_policy_lag versions old);
    # sync: generate -> judge -> train -> publish strictly in turn, every sample from the current policy
    mode: Literal["async", "sync"] = "async"
    steps: int = 100
    batch_size: int = 16  # per step: preference pairs (online_dpo) or prompts with k samples (ppo/grpo/rloo)
    lr: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    zero_stage: int = 0
    sync_every: int = 1  # publish new weights every N steps
    max_policy_lag: int = 2  # samples from a policy older than this many versions are dropped
    lease_prompts: int = 8  # prompts per lease
    lease_timeout_s: float = 300.0  # a lease not scored by then is re-leased
    max_inflight_prompts: int = 64  # leased + buffered prompts: bounds memory and staleness
    weight_bucket_mb: int = 256
    torch_threads: int = 0  # 0: as placement decides (or torch's default when unpinned)
    shutdown_grace_s: float = 15.0  # time given to workers to hear the shutdown
    checkpoint_every: int = 0  # steps between checkpoints (0: none); one is always written on SIGTERM
    heartbeat_s: float = 2.0  # workers beat this often; the learner acknowledges each beat
    missed_beats: int = 5  # a peer silent this many beats is dead: its leases expire at once
    max_nonfinite_steps: int = 5  # optimizer steps skipped in a row (NaN/inf loss or gradient) before the run stops
    # auto: bf16 on a GPU (DeepSpeed's bf16: fp32 master weights and optimizer states), fp32 on a CPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    micro_batch_size: int = 0  # sequences per forward/backward pass (a DPO pair is two); 0: a step's whole batch
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% more time
    reference_offload: bool = False  # keep the frozen reference model in host memory and run it on the CPU
    logprob_chunk_mb: int = 256  # float32 working memory for log-probs over the vocabulary, per chunk of positions
    dpo: DPOConfig = field(default_factory=DPOConfig)
    pg: PGConfig = field(default_factory=PGConfig)


@dataclass(frozen=True)
class RolloutConfig:
    samples_per_prompt: int = 4
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    dtype: Literal["float32", "bfloat16"] = "float32"  # float32 keeps sampling on-policy on CPU
    kv_cache_gib: float = 1.0
    max_model_len: int = 256
    learner_timeout_s: float = 600.0  # give up if the learner is silent this long


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
    batch_size: int = 32  # reward-model forward micro-batch
    min_margin: float = 0.0  # no pair when best and worst score differ by this or less
    # llm_pairwise (RLAIF): a judge model served by vLLM in the judge process
    model_path: str | None = None
    build_tiny: bool = False  # build a random-init tiny judge model at model_path if it is missing (demos, tests)
    template_path: str | None = None  # text with {prompt}, {response_a}, {response_b}; default built in
    compare: Literal["all_pairs", "tournament"] = "all_pairs"
    swap_positions: bool = True  # judge each pair in both orders; keep only preferences that survive
    max_new_tokens: int = 8  # verdict length (free verdicts)
    # free: the judge writes a verdict that is parsed; letter: its next token is restricted to the
    # letters A and B and the likelier one wins (as RLAIF reads preferences off the letters' probabilities)
    verdict: Literal["free", "letter"] = "free"
    cache_size: int = 100_000  # verdicts kept, keyed by (prompt, response A, response B)
    max_model_len: int = 1024
    kv_cache_gib: float = 1.0
    # composed: a weighted sum of scorers, and an optional gate (e.g. a safety rule)
    scorers: list[ScorerConfig] = field(default_factory=list)
    gate_rule: str | None = None  # module:function(prompt, response) -> bool; True means the gate fires
    gate_mode: Literal["zero", "penalty"] = "zero"  # when it fires: reward 0, or reward + gate_penalty
    gate_penalty: float = -1.0
    # cai (Constitutional AI): critique each sample against principles, revise it, prefer the revision
    constitution_path: str | None = None  # YAML or text, one principle per entry; default: the shipped four
    principles_per_sample: int = 1  # principles drawn per sample; each is one critique -> revision round
    critique_template_path: str | None = None  # {prompt} {response} {critique_request}
    revision_template_path: str | None = None  # ... and {critique} {revision_request}
    critique_max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy critiques and revisions; above 0, sampled (seeded by their prompt)
    keep_transcripts: bool = False  # write every critique and revision to runs/<name>/judges/<judge>.jsonl
    # engine calls of LLM judges (llm_pairwise, cai)
    request_timeout_s: float = 120.0  # a generation still running after this is aborted and retried; 0: no limit
    retries: int = 2  # tries after the first, on a timeout or an engine error
    retry_backoff_s: float = 0.5  # first back-off; doubles each retry (with jitter), at most 10 s
    max_failures_in_a_row: int = 2  # tasks given back (JudgeFailed) before a failing judge stops
    learner_timeout_s: float = 600.0


@dataclass(frozen=True)
class RunConfig:
    """What `tiller run` starts on this machine, and where."""

    actors: int = 2  # placement auto starts at most one per CPU core left after the learner's (it says so)
    judges: int = 1
    placement: Literal["auto", "manual", "off"] = "auto"
    cores: dict[str, list[int]] = field(default_factory=dict)  # manual: {"learner": [0], "actor0": [1]}
    timeout_s: float = 1800.0
    max_restarts: int = 5  # per actor or judge: a worker that dies is started again, up to this many times
    restart_backoff_s: float = 1.0  # wait before the first restart; doubles with each (at most 60 s)


@dataclass(frozen=True)
class MetricsConfig:
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online if logged in
    wandb_project: str = "tiller"
    kl_warn_nats: float = 20.0  # the progress line warns when kl/sequence (KL per response) passes it; 0: never


@dataclass(frozen=True)
class SecurityConfig:
    """CURVE encryption and authentication. Key files are made by `tiller keys`."""

    server_secret_key: str | None = None  # learner: its own secret key file (NAME.key_secret)
    authorized_keys_dir: str | None = None  # learner: public key files (*.key) of workers allowed in
    client_secret_key: str | None = None  # worker: its own secret key file
    server_public_key: str | None = None  # worker: the learner's public key file (NAME.key)
    allow_insecure_network: bool = False  # bind beyond loopback without CURVE: anyone who can reach it is in

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
    return yaml.safe_load(yaml.serialize(node))


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
        if isinstance(value, bool):  # YAML 1.1 reads a bare off/on/no/yes as a boolean: take the word back
            value = next((w for w in (("on", "yes", "true") if value else ("off", "no", "false"))
                          if w in typing.get_args(hint)), value)
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


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where + '.' if where else ''}{key}: unknown key (known: {', '.join(sorted(known))})")
    kwargs = {k: _coerce(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in raw.items()}
    return cls(**kwargs)


def _apply_override(raw: dict[str, Any], override: str) -> None:
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
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({exc})") from None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read `path` (or the defaults), apply `key.sub=value` overrides, and validate everything."""
    raw: dict[str, Any] = {}
    lines: dict[str, int] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            node = yaml.compose(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        raw = _lines(node, "", lines) if node is not None else {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    origin = {key: f"{source}:{line}" for key, line in lines.items()}
    for override in overrides:
        _apply_override(raw, override)
        origin[override.partition("=")[0].strip()] = f"override {override!r}"
    try:
        cfg = _build(Config, raw, "")
        if path is not None:
            cfg = _resolve_paths(cfg, Path(path).resolve().parent)
        return _check_combination(cfg)
    except ConfigError as exc:
        key = str(exc).split(":")[0].split("[")[0]
        raise ConfigError(f"{origin.get(key, source)}: {exc}") from None


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
    if lc.algorithm in ("grpo", "rloo") and pg.kl_in_reward:
        raise ConfigError(f"learner.pg.kl_in_reward: {lc.algorithm} has no per-token reward to fold a KL into; "
                          "use a loss term (kl_in_reward: false, kl_estimator: k2 or k3)")
    if pg.kl_in_reward and pg.kl_estimator != "k1":
        raise ConfigError(f"learner.pg.kl_estimator: {pg.kl_estimator} in the reward is not a KL penalty; only k1 "
                          "is (or put the KL in the loss: kl_in_reward: false)")
    if not pg.kl_in_reward and pg.kl_estimator == "k1" and pg.kl_coef:
        raise ConfigError("learner.pg.kl_estimator: k1 as a loss term has no gradient in expectation (score-function "
                          "identity); use k2 (grad KL(policy || reference)) or k3 (grad KL(reference || policy))")
    if ro.temperature <= 0:
        raise ConfigError(f"rollout.temperature: {lc.algorithm} needs sampled responses (temperature > 0)")
    if ro.top_p < 1:
        raise ConfigError(f"rollout.top_p: {ro.top_p}: the learner scores the full distribution at the sampling "
                          f"temperature, so importance weights for {lc.algorithm} would be wrong; use top_p: 1")
    samples = lc.batch_size * ro.samples_per_prompt
    if not 1 <= pg.minibatches <= samples:
        raise ConfigError(f"learner.pg.minibatches: {pg.minibatches} for {samples} samples per step "
                          f"(batch_size x samples_per_prompt); each minibatch needs at least one")


def _check_combination(cfg: Config) -> Config:
    """Rules that span sections."""
    cfg = resolve_pg(cfg)
    if cfg.learner.algorithm != "online_dpo":
        _check_policy_gradient(cfg)
    if cfg.judge.kind == "cai" and cfg.learner.algorithm != "online_dpo":
        raise ConfigError(f"judge.kind: cai prefers revisions the policy never sampled, so it feeds preference "
                          f"pairs to online_dpo; learner.algorithm {cfg.learner.algorithm} needs on-policy scores")
    if cfg.judge.principles_per_sample < 1:
        raise ConfigError("judge.principles_per_sample: must be at least 1")
    lc, k = cfg.learner, cfg.rollout.samples_per_prompt
    if lc.mode == "sync" and lc.max_inflight_prompts < lc.batch_size:
        raise ConfigError(f"learner.max_inflight_prompts: {lc.max_inflight_prompts} is less than one step's "
                          f"batch_size ({lc.batch_size}), which synchronous mode keeps out at once")
    if lc.micro_batch_size < 0 or lc.micro_batch_size == 1 and lc.algorithm == "online_dpo":
        raise ConfigError(f"learner.micro_batch_size: {lc.micro_batch_size}: a micro-batch holds at least one "
                          "sequence (two for online_dpo: a chosen and a rejected response); 0 means the whole batch")
    if lc.algorithm == "online_dpo" and lc.dpo.offpolicy_weight != "none":
        if cfg.rollout.temperature != 1 or cfg.rollout.top_p != 1:
            raise ConfigError(f"learner.dpo.offpolicy_weight: {lc.dpo.offpolicy_weight} compares the policy's own "
                              "log-probs with the actors' sampling log-probs, so it needs rollout.temperature 1 and "
                              f"top_p 1 (not {cfg.rollout.temperature} and {cfg.rollout.top_p})")
        if lc.dpo.offpolicy_cap < 1:
            raise ConfigError(f"learner.dpo.offpolicy_cap: {lc.dpo.offpolicy_cap}: must be at least 1 (a fresh pair "
                              "weighs 1)")
    if lc.logprob_chunk_mb < 1:
        raise ConfigError(f"learner.logprob_chunk_mb: {lc.logprob_chunk_mb}: must be at least 1")
    if lc.lease_prompts > lc.max_inflight_prompts:
        raise ConfigError(f"learner.lease_prompts: {lc.lease_prompts} is more than learner.max_inflight_prompts "
                          f"({lc.max_inflight_prompts}), so no lease could ever be given")
    in_time = (lc.max_policy_lag + 1) * lc.sync_every * lc.batch_size  # coordinator.py: staleness-aware admission
    if lc.mode == "async" and lc.lease_prompts > in_time:
        raise ConfigError(f"learner.lease_prompts: {lc.lease_prompts} is more than the {in_time} prompts that can be "
                          "trained within learner.max_policy_lag ((max_policy_lag + 1) x sync_every x batch_size)")
    if k < 2 and (lc.algorithm in ("grpo", "rloo") or (lc.algorithm == "online_dpo" and cfg.judge.kind != "cai")):
        why = "a group baseline needs" if lc.algorithm != "online_dpo" else "a preference pair needs"
        raise ConfigError(f"rollout.samples_per_prompt: {lc.algorithm} with {k} sample per prompt: {why} at least 2")
    if cfg.rollout.max_new_tokens >= cfg.rollout.max_model_len:
        raise ConfigError(f"rollout.max_new_tokens: {cfg.rollout.max_new_tokens} leaves no room for a prompt in "
                          f"rollout.max_model_len {cfg.rollout.max_model_len}")
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
