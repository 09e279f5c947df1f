"""Training: state, pure jitted steps, and the fit loop with checkpoints and logging."""
from adiff.training.state import TrainState, create_train_state
from adiff.training.step import make_eval_step, make_train_step
from adiff.training.trainer import (CheckpointError, FitResult, TrainConfig, fit, make_dataset, make_optimizer,
                                    make_schedule, tree_sha256)

__all__ = ["TrainState", "create_train_state", "make_train_step", "make_eval_step", "TrainConfig",
           "FitResult", "CheckpointError", "fit", "make_optimizer", "make_schedule", "make_dataset", "tree_sha256"]
