"""The recipe schema: one frozen dataclass per table, each setting defined once, with its default,
its help and whether a resumed run may change it (`setting`).

Every setting of aha lives here, a module per group of tables: `inputs` (model, data), `training`
(rollout, reward, algorithm, learner), `run` (cluster, eval, run) and `jobs` (generate, sft,
distill). Actor specs (`actors/`, `learner/`) are built from these tables by
`cluster/startup/specs.py` and carry no defaults of their own, so a default changed here is the
default everywhere. Loading and overrides are in `cluster/recipe/load.py`, checks of ranges and
combinations in `cluster/recipe/checks.py`, the reference of every key in
`cluster/recipe/reference.py`.

Nothing heavy is imported: the driver, tests and job submission read recipes without torch,
ray, vllm or deepspeed (tests/test_layout.py enforces it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cluster.recipe.schema.inputs import (TASK_NAMES, DataConfig, ModelConfig, PretrainConfig, SyntheticDataConfig,
                                          TaskName, TinyModelConfig)
from cluster.recipe.schema.jobs import DistillConfig, GenerateConfig, SFTConfig
from cluster.recipe.schema.run import ClusterConfig, EvalConfig, RunConfig
from cluster.recipe.schema.setting import setting
from cluster.recipe.schema.training import AlgorithmConfig, LearnerConfig, RewardConfig, RolloutConfig


@dataclass(frozen=True)
class Recipe:
    """A whole recipe: one table per role, each described by its class's docstring."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.run.output_dir or f"runs/{self.run.name}")


__all__ = ["TASK_NAMES", "AlgorithmConfig", "ClusterConfig", "DataConfig", "DistillConfig", "EvalConfig",
           "GenerateConfig", "LearnerConfig", "ModelConfig", "PretrainConfig", "Recipe", "RewardConfig",
           "RolloutConfig", "RunConfig", "SFTConfig", "SyntheticDataConfig", "TaskName", "TinyModelConfig",
           "setting"]
