"""Training: the run config, the trainer loop with its guards, schedules, metrics and the local launcher.

Entry points (docs/training.md)::

    from alphaexa.train import load_run_config, Trainer
    cfg = load_run_config("configs/tiny-moe.toml", ["train.steps=50"])
    Trainer(cfg, "runs/x", resume=False).run()      # on every rank (torchrun / mpiexec / --nproc)

Importing this package does not import torch; ``Trainer`` is loaded on first use.
"""
from .config import RunConfig, load_run_config, read_plan_layout
from .metrics import METRICS_FILE, STEP_KEYS, read_metrics
from .optim import learning_rate

__all__ = ["METRICS_FILE", "STEP_KEYS", "RunConfig", "Trainer", "learning_rate", "load_run_config",
           "read_metrics", "read_plan_layout"]


def __getattr__(name: str):
    if name == "Trainer":
        from .trainer import Trainer

        return Trainer
    raise AttributeError(name)
