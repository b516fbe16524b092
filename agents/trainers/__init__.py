"""Trainers, one file per method, each declaring its config (whose fields are its ``train`` options) beside its
loss: ``trm`` (deep supervision), ``dis`` (policy improvement, Deep Improvement Supervision) and ``ppo``. The
supervised two share one loop (``common.train``).

Adding a method: a file that defines ``METHOD = Method(name, ConfigClass, train_function[, objective])``, and its
line in ``METHODS`` below.
"""

from __future__ import annotations

from . import deep_supervision, policy_improvement, ppo
from .common import ARC_PRESET, PAPER_PRESET, Method, TrainConfig, train
from .deep_supervision import DeepSupervisionConfig
from .policy_improvement import DISConfig
from .ppo import PPOConfig, train_ppo

#: ``--method`` name -> the method
METHODS: dict[str, Method] = {m.name: m for m in (
    deep_supervision.METHOD,
    policy_improvement.METHOD,
    ppo.METHOD,
)}


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def config_class(name: str) -> type:
    return method(name).config


def get_method(name: str):
    """The objective of a method trained by the supervised loop (the loss of one supervision step, halting)."""
    objective = method(name).objective
    if objective is None:
        raise ValueError(f"--method {name} is not trained by the supervised loop")
    return objective


def config_from_dict(d: dict, strict: bool = True):
    """The config of ``d["method"]`` (default trm) from a flat or nested dict (``TrainConfig.from_dict``);
    ``strict=False`` reads a checkpoint's ``train_config``, old flat ones included."""
    return config_class(d.get("method") or "trm").from_dict(d, strict)


__all__ = ["METHODS", "Method", "TrainConfig", "DeepSupervisionConfig", "DISConfig", "PPOConfig", "PAPER_PRESET",
           "ARC_PRESET", "train", "train_ppo", "method", "config_class", "config_from_dict", "get_method"]
