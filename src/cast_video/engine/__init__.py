"""Training, evaluation and prediction in plain PyTorch (DDP, autocast, torch.compile)."""

from .config import ModelSpec, OptimConfig, TrainConfig, WeightsSpec
from .loop import NonFiniteLoss, build_model, evaluate, train
from .state import TrainState

__all__ = ["ModelSpec", "NonFiniteLoss", "OptimConfig", "TrainConfig", "TrainState", "WeightsSpec", "build_model",
           "evaluate", "train"]
