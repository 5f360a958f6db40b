"""One typed configuration tree for every Tiller process, loaded strictly from YAML.

    cfg = load_config("configs/demo.yaml", overrides=["learner.lr=1e-6", "run.actors=1"])

Unknown keys, wrong types, values out of a field's range (`ranged`) and malformed overrides raise
`ConfigError` naming the key and where its value came from: the file and line, or the override.
The tree is made of frozen dataclasses: nothing changes it after start-up.
Imports nothing but the standard library and yaml.

Layout: `fields.py` (ConfigError, ranged), `sections.py` (the online stage's sections), `offline.py` (the
offline stages' sections), `evaluation.py` (eval, red-team, data generation, the safety scorer),
`tree.py` (the root), `rules.py` (rules across keys), `loader.py` (YAML, overrides,
blame, paths).
"""

from tiller.config.fields import LIMITS, ConfigError, ranged
from tiller.config.evaluation import (
    HARM_CATEGORIES, DataGenConfig, EvalConfig, GenerationConfig, RedTeamConfig, SafetyConfig, TargetsConfig,
)
from tiller.config.offline import DPOStageConfig, RMStageConfig, SFTStageConfig, SourceConfig, TrainConfig
from tiller.config.sections import (
    DataConfig, DPOConfig, JudgeConfig, LearnerConfig, LoRAConfig, MetricsConfig, ModelConfig, PGConfig,
    RolloutConfig, RunConfig, ScorerConfig, SecurityConfig,
)
from tiller.config.tree import Config
from tiller.config.rules import resolve_pg
from tiller.config.loader import PATH_FIELDS, dump_config, load_config, to_dict

__all__ = [
    "HARM_CATEGORIES", "DataGenConfig", "EvalConfig", "GenerationConfig", "RedTeamConfig", "SafetyConfig",
    "TargetsConfig",
    "LIMITS", "ConfigError", "ranged", "DPOStageConfig", "RMStageConfig", "SFTStageConfig", "SourceConfig",
    "TrainConfig", "DataConfig", "DPOConfig", "JudgeConfig", "LearnerConfig", "LoRAConfig", "MetricsConfig",
    "ModelConfig", "PGConfig", "RolloutConfig", "RunConfig", "ScorerConfig", "SecurityConfig", "Config",
    "resolve_pg", "PATH_FIELDS", "dump_config", "load_config", "to_dict",
]
