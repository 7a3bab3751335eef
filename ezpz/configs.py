"""Configuration classes, under the names the model-creation guide uses."""

from ezpz_core.config import TrainConfig

__all__ = ["TrainConfig"]
