"""Trainers: one supervised loop (``common.train``) with a method each: ``trm`` (deep supervision) and ``dis``
(policy improvement, Deep Improvement Supervision)."""

from .common import PAPER_PRESET, TrainConfig, train


def get_method(name: str):
    from .deep_supervision import DeepSupervision
    from .policy_improvement import PolicyImprovement

    methods = {"trm": DeepSupervision, "dis": PolicyImprovement}
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; known: {sorted(methods)}")
    return methods[name]


__all__ = ["TrainConfig", "PAPER_PRESET", "train", "get_method"]
