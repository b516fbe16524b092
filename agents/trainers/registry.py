"""The registry of training methods: each method's file registers its :class:`Method` (``register``) when the
package imports it, and the loop and the command line look methods up here by name. It imports nothing of
theirs, so the loop (``common``) can look its method up without importing the package that imports it."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


class Method(NamedTuple):
    """A training method as the registry (:data:`METHODS`) knows it: its name (``--method``), its
    config class (whose fields are its ``train`` options), the function that trains it, and for the supervised
    loop (``common.train``) the objective (the loss of one supervision step and when an example halts)."""

    name: str
    config: type
    train: Callable[..., dict]
    objective: type | None = None


#: ``--method`` name -> the method, in the order the package registers them
METHODS: dict[str, Method] = {}


def register(m: Method) -> Method:
    METHODS[m.name] = m
    return m


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
