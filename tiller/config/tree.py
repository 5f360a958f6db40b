"""The root of the config tree: one frozen dataclass holding every section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tiller.config.evaluation import DataGenConfig, EvalConfig, RedTeamConfig, SafetyConfig
from tiller.config.offline import DPOStageConfig, RMStageConfig, SFTStageConfig, TrainConfig
from tiller.config.sections import (
    DataConfig, JudgeConfig, LearnerConfig, MetricsConfig, ModelConfig, RolloutConfig, RunConfig, SecurityConfig,
)


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
    # the offline stages (tiller sft / rm / dpo)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    rm: RMStageConfig = field(default_factory=RMStageConfig)
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)
    # evaluation and data generation (tiller eval / redteam / rlaif-data / cai-data), and the safety scorer
    # they share with the online `judge.kind: safety`
    eval: EvalConfig = field(default_factory=EvalConfig)
    redteam: RedTeamConfig = field(default_factory=RedTeamConfig)
    datagen: DataGenConfig = field(default_factory=DataGenConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name
