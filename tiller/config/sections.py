"""The online stage's sections of the config tree: model, prompts, learner, rollout, judge, run, metrics,
security. Each key's default and range sit beside it, with a comment saying what it does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tiller.config.fields import ranged


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2021, https://arxiv.org/abs/2106.09685) with peft, for every stage: only
    the adapters train; actors are sent the merged weights. r = 0: off (full fine-tuning)."""

    r: int = ranged(0, at_least=0)
    alpha: float = ranged(16.0, above=0)  # the update is scaled by alpha / r
    dropout: float = ranged(0.0, at_least=0, below=1)
    # module names to adapt, or ["all-linear"] (peft: every linear layer but the output head)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # final/ holds the merged model (what vLLM, from_pretrained and the next stage read) and the adapter
    # in final/adapter/; false: final/ holds the adapter alone
    merge: bool = True


@dataclass(frozen=True)
class ModelConfig:
    path: str = "runs/tiny-policy"  # a transformers model directory, or a hub id: owner/name[@revision] (hub.py)
    # build a random-init tiny model there if the directory is missing (demos, tests). Off unless asked, so
    # a mistyped path is an error, not a run that quietly trains a random model
    build_tiny: bool = False
    seed: int = 0  # init seed of the tiny model
    tiny_chat: bool = False  # the tiny model gets a chat template (and a character set wide enough for one)
    lora: LoRAConfig = field(default_factory=LoRAConfig)


@dataclass(frozen=True)
class DataConfig:
    # letters: random lowercase prompts, made on the spot; jsonl: one object per line; dataset: a file or
    # folder the Hugging Face `datasets` library reads (parquet, json, jsonl, csv, a save_to_disk folder); a
    # hub dataset id (owner/name[@revision]) is fetched once and read as `dataset` (tiller/hub.py)
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
    # Where the KL penalty goes and how it is estimated (training/pg_losses.py: kl_penalty). In the reward
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
    # after `warmup_steps` (linear from 0): constant, or down to 0 at learner.steps (linear, cosine); the
    # critic's learning rate follows the same factor
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = ranged(0, at_least=0)
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
    # auto: bf16 on a GPU (DeepSpeed's bf16: fp32 master weights and optimizer states), fp32 on a CPU;
    # fastest: bf16 also on a CPU that multiplies it faster than fp32 (measured: tiller/training/precision.py)
    precision: Literal["auto", "fastest", "fp32", "bf16"] = "auto"
    # sequences per forward/backward pass (a DPO pair is two); 0: a step's whole batch
    micro_batch_size: int = ranged(0, at_least=0)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% more time
    reference_offload: bool = False  # keep the frozen reference model in host memory and run it on the CPU
    # train only the policy's top N transformer blocks and final norm (as sft.unfrozen_layers); null: all of it
    unfrozen_layers: int | None = ranged(None, at_least=0)
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
    # float32 keeps sampling on-policy on CPU; fastest: bfloat16 where this machine multiplies it faster
    # (tiller/training/precision.py), to match a learner in `precision: fastest`
    dtype: Literal["float32", "bfloat16", "fastest"] = "float32"
    kv_cache_gib: float = ranged(1.0, above=0)
    max_model_len: int = ranged(256, at_least=2)
    learner_timeout_s: float = ranged(600.0, above=0)  # give up if the learner is silent this long


@dataclass(frozen=True)
class ScorerConfig:
    """One part of a composed judge."""

    kind: Literal["rule", "reward_model", "safety"] = "rule"  # safety: the `safety` section's scorer
    rule: str = "tiller.tasks:vowel_reward"
    reward_model_path: str | None = None
    weight: float = 1.0


@dataclass(frozen=True)
class JudgeConfig:
    # safety: the `safety` section's scorer (1 safe, 0 unsafe), e.g. inside a composed judge
    kind: Literal["rule", "reward_model", "llm_pairwise", "cai", "composed", "safety"] = "rule"
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
    # CPU, placement auto or manual: what the learner does with the actors' cores, which idle while they
    # wait for credit when training is the bottleneck (tiller/learner/lending.py). reference: a thread on
    # them computes the frozen reference's log-probs of each judged prompt before it is batched (measured
    # on SmolLM2-135M, 2 cores: step 32 -> 25 s, 1.26x TRL's pairs/s, 0.98x without); threads:
    # torch's threads widen onto them for forward passes while no actor generates (measured on the 2-core
    # machine, compute-bound toy: 0.97x the pairs/s with micro-batches of 4, 0.81x without); auto: a probe
    # over the 2nd-4th steps of each start (a resumed one too) starts `reference` if the actors idled 30%
    # or more while the learner hardly waited
    lend_actor_cores: Literal["off", "reference", "threads", "auto"] = "off"
    # wait before the first restart; doubles with each (at most 60 s)
    restart_backoff_s: float = ranged(1.0, at_least=0)
    # a worker that ran this long before it died was healthy: its restart count starts again from 0, and
    # a failure within this time of its start that repeats word for word ends the run (it would repeat)
    healthy_after_s: float = ranged(120.0, above=0)


@dataclass(frozen=True)
class MetricsConfig:
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online if logged in
    wandb_project: str = "tiller"
    wandb_entity: str | None = None  # team or user; null: the login's default
    wandb_group: str | None = None  # groups runs in the W&B UI (e.g. one sweep)
    wandb_tags: list[str] = field(default_factory=list)
    wandb_name: str | None = None  # the run's display name; null: the config's `name`
    # online stages: every this many steps, write a few judged prompts with each response, its score and
    # chosen/rejected mark to completions.jsonl (and a W&B table), and print one; 0: never
    log_completions_every: int = ranged(10, at_least=0)
    completions_per_log: int = ranged(2, at_least=1)  # prompts each time
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
