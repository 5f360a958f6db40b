"""Rules across keys and sections, checked after every value is in its own range. Each error names its first
key and passes the others it depends on, so the loader can say where each came from."""

from __future__ import annotations

import dataclasses

from tiller.config.fields import ConfigError
from tiller.config.tree import Config


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


def _check_lora(cfg: Config) -> None:
    if not cfg.model.lora.r:
        return
    for zero in ("learner.zero_stage", "train.zero_stage"):
        section, key = zero.split(".")
        if getattr(getattr(cfg, section), key) == 3:
            raise ConfigError(f"model.lora.r: LoRA with {zero} 3 is not supported (the adapters are small: ZeRO 0-2 "
                              "hold them whole)", (zero,))
    frozen = {"rm.unfrozen_layers": cfg.rm.unfrozen_layers, "sft.unfrozen_layers": cfg.sft.unfrozen_layers,
              "learner.unfrozen_layers": cfg.learner.unfrozen_layers}
    for key, value in frozen.items():
        if value is not None:
            raise ConfigError(f"{key}: with model.lora.r > 0 only the adapters (and a head) train; choose one of "
                              "the two", ("model.lora.r",))


def _check_anchor_kl(cfg: Config) -> None:
    """`anchor_kl` is an SFT loss term: the preference stages' files have nothing to hold it, and a packed
    row mixes files (its tokens would need one coefficient each)."""
    for stage in ("rm", "dpo"):
        for i, source in enumerate(getattr(cfg, stage).data):
            if source.anchor_kl:
                raise ConfigError(f"{stage}.data[{i}].anchor_kl: only SFT files take an anchor KL ({source.path})")
    if cfg.sft.packing and any(s.anchor_kl for s in cfg.sft.data):
        raise ConfigError("sft.packing: not with an anchor_kl on an sft.data file (a packed row mixes files)",
                          ("sft.data",))


def _check_manual_cores(cfg: Config) -> None:
    """`run.placement: manual` needs a core list for every process `tiller run` starts (learner, actor0..,
    judge0..) and no entry that names none of them (a typo would leave a process unpinned)."""
    run = cfg.run
    if run.placement != "manual":
        return
    names = ["learner", *(f"actor{i}" for i in range(run.actors)), *(f"judge{i}" for i in range(run.judges))]
    missing = [n for n in names if not run.cores.get(n)]
    if missing:
        raise ConfigError(f"run.cores: no cores given for {', '.join(missing)} (placement: manual needs one list "
                          f"per process: {', '.join(names)})", ("run.placement", "run.actors", "run.judges"))
    unknown = sorted(set(run.cores) - set(names))
    if unknown:
        raise ConfigError(f"run.cores: {', '.join(unknown)}: no such process (run.actors {run.actors}, run.judges "
                          f"{run.judges} start {', '.join(names)})", ("run.actors", "run.judges"))
    bad = sorted({c for cores in run.cores.values() for c in cores if c < 0})
    if bad:
        raise ConfigError(f"run.cores: core ids are at least 0, not {bad}")


def check_combination(cfg: Config) -> Config:
    """Rules that span sections; each error names its first key, and passes the others it depends on."""
    cfg = resolve_pg(cfg)
    _check_lora(cfg)
    _check_anchor_kl(cfg)
    if cfg.learner.algorithm != "online_dpo":
        _check_policy_gradient(cfg)
    _check_learner(cfg)
    _check_judge(cfg)
    _check_manual_cores(cfg)
    if cfg.rollout.max_new_tokens >= cfg.rollout.max_model_len:
        raise ConfigError(f"rollout.max_new_tokens: {cfg.rollout.max_new_tokens} leaves no room for a prompt in "
                          f"rollout.max_model_len {cfg.rollout.max_model_len}", ("rollout.max_model_len",))
    if cfg.data.prompt_min_chars > cfg.data.prompt_max_chars:
        raise ConfigError(f"data.prompt_min_chars: {cfg.data.prompt_min_chars} is more than data.prompt_max_chars "
                          f"({cfg.data.prompt_max_chars})", ("data.prompt_max_chars",))
    return cfg
