"""`ODConvTemperatureHook`: the classification recipe's attention-temperature annealing for detectors whose ODConv
backbone trains from scratch; `KWTauHook`: KernelWarehouse's tau schedule, for the same case.

A backbone fine-tuned from ImageNet weights runs at temperature 1, where its ImageNet training ended, and needs
no hook. One trained from random initialisation starts, like the classification recipe, with a flat kernel
attention (temperature `init`) that sharpens linearly to 1 over the first `epochs` epochs, per iteration
(`odconv.temperature_schedule`, the released schedule).
"""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from odconv import set_temperature, temperature_schedule


@HOOKS.register_module()
class ODConvTemperatureHook(Hook):
    priority = "NORMAL"

    def __init__(self, init: float = 30.0, epochs: float = 10.0) -> None:
        if init < 1.0:
            raise ValueError(f"ODConvTemperatureHook: init must be >= 1 (1 = no temperature), got {init}")
        if epochs < 0:
            raise ValueError(f"ODConvTemperatureHook: epochs must be >= 0 (0 = no annealing), got {epochs}")
        self.init = float(init)
        self.epochs = float(epochs)

    def before_train(self, runner) -> None:
        # A schedule that outlasts training would leave checkpoints that were trained at a temperature above the
        # 1 at which `detection.test` evaluates them.
        if self.epochs > runner.max_epochs:
            raise ValueError(f"ODConvTemperatureHook: epochs ({self.epochs:g}) must not exceed "
                             f"train_cfg.max_epochs ({runner.max_epochs})")

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        t = temperature_schedule(runner.iter + 1, len(runner.train_dataloader), self.init, self.epochs)
        set_temperature(runner.model, t)
        runner.message_hub.update_scalar("train/temperature", t)


@HOOKS.register_module()
class KWTauHook(Hook):
    """KernelWarehouse's tau schedule for a KW backbone trained from scratch: the weight of the fixed initial cell
    assignment falls linearly from 1 to 0 over the first `epochs` epochs, updated every iteration (the released
    classification schedule, `temp_epoch`), and stays 0, where `detection.test` evaluates. A backbone fine-tuned
    from ImageNet weights runs at tau 0 throughout and needs no hook."""

    priority = "NORMAL"

    def __init__(self, epochs: float = 1.0) -> None:
        if epochs <= 0:
            raise ValueError(f"KWTauHook: epochs must be > 0 (without annealing, leave the hook out), got {epochs}")
        self.epochs = float(epochs)

    def before_train(self, runner) -> None:
        if self.epochs > runner.max_epochs:  # tau would not reach 0, the value the checkpoints are evaluated at
            raise ValueError(f"KWTauHook: epochs ({self.epochs:g}) must not exceed train_cfg.max_epochs "
                             f"({runner.max_epochs})")

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        tau = temperature_schedule(runner.iter + 1, len(runner.train_dataloader), 1.0, self.epochs, t_end=0.0)
        set_temperature(runner.model, tau)
        runner.message_hub.update_scalar("train/tau", tau)
