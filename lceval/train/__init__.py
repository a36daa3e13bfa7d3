"""``lceval train``: train a reference model short, to test it long."""

from lceval.config import TrainRecipe
from lceval.train.trainer import train

__all__ = ["TrainRecipe", "train"]
