"""Trainers, one file per method, each declaring its config (whose fields are its ``train`` options) beside its
loss: ``trm`` (deep supervision), ``dis`` (policy improvement, Deep Improvement Supervision) and ``ppo``. The
supervised two share one loop (``common.train``).

Adding a method: a file that registers ``METHOD = register(Method(name, ConfigClass, train_function[,
objective]))`` (``registry``), and its import below.
"""

from __future__ import annotations

from . import deep_supervision, policy_improvement, ppo  # noqa: F401  (importing a method's file registers it)
from .deep_supervision import DeepSupervisionConfig
from .loop import ARC_PRESET, PAPER_PRESET, TrainConfig, train
from .policy_improvement import DISConfig
from .ppo import PPOConfig, train_ppo
from .registry import METHODS, Method, config_class, config_from_dict, get_method, method

__all__ = ["METHODS", "Method", "TrainConfig", "DeepSupervisionConfig", "DISConfig", "PPOConfig", "PAPER_PRESET",
           "ARC_PRESET", "train", "train_ppo", "method", "config_class", "config_from_dict", "get_method"]
