"""The built-in models, under the names the model-creation guide uses."""

from ezpz_models.gpt.model import GPT
from ezpz_models.mnist.model import MnistCNN

__all__ = ["GPT", "MnistCNN"]
