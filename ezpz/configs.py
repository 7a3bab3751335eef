"""Configuration classes, under the names the model-creation guide uses."""

from ezpz_core.config import TrainConfig
from ezpz_models.gpt.config import ModelConfig

__all__ = ["ModelConfig", "TrainConfig"]
