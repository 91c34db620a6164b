"""The shared Trainer, its config, EMA, checkpoints and data parallelism."""

from genkit.train.trainer import BatchStream, TrainConfig, Trainer, TrainResult

__all__ = ["BatchStream", "TrainConfig", "TrainResult", "Trainer"]
