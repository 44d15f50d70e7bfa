"""Training: crop dataset over a cache, the trainer (AMP, checkpoints, resume, fine-tune, DDP), config."""

from .config import TrainConfig
from .trainer import Trainer, train

__all__ = ["TrainConfig", "Trainer", "train"]
