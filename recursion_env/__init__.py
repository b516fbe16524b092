"""recursion-env: the latent recursion of Tiny Recursive Models as a reinforcement-learning problem.

Importing the package registers the Gymnasium ids ``TRMRecursion-Sudoku-v0``, ``TRMRecursion-Maze-v0``,
``TRMRecursion-NQueens-v0``, ``TRMRecursion-ARC-v0`` (the ``[arc]`` extra) and ``TRMHalting-Sudoku-v0``.
"""

import gymnasium as _gym

from .core import PuzzleSource, RecursionConfig, RecursionCore, StepResult
from .gym_env import RecursionGymEnv, RecursionVectorEnv
from .halting_env import RecursionHaltingEnv, RecursionOutput, RecursionPolicy, TinyRecursionPolicy
from .tasks import PuzzleBatch, Task, load_dataset, load_puzzles, make_task, save_dataset

__version__ = "0.1.0"

_RECURSION_IDS = {"TRMRecursion-Sudoku-v0": "sudoku", "TRMRecursion-Maze-v0": "maze",
                  "TRMRecursion-NQueens-v0": "nqueens", "TRMRecursion-ARC-v0": "arc"}
for _id, _task in _RECURSION_IDS.items():
    if _id not in _gym.registry:
        _gym.register(id=_id, entry_point="recursion_env.gym_env:RecursionGymEnv",
                      vector_entry_point="recursion_env.gym_env:RecursionVectorEnv",
                      kwargs={"task": _task}, disable_env_checker=True)
if "TRMHalting-Sudoku-v0" not in _gym.registry:
    _gym.register(id="TRMHalting-Sudoku-v0", entry_point="recursion_env.halting_env:RecursionHaltingEnv",
                  kwargs={"task": "sudoku", "size": 6}, disable_env_checker=True)


def __getattr__(name):
    # torchrl is heavy: load its adapter only when asked for
    if name == "RecursionTorchRLEnv":
        from .torchrl_env import RecursionTorchRLEnv

        return RecursionTorchRLEnv
    raise AttributeError(f"module 'recursion_env' has no attribute {name!r}")


__all__ = ["Task", "PuzzleBatch", "make_task", "save_dataset", "load_dataset", "load_puzzles", "RecursionConfig",
           "RecursionCore", "PuzzleSource", "StepResult", "RecursionGymEnv", "RecursionVectorEnv",
           "RecursionTorchRLEnv", "RecursionHaltingEnv", "RecursionPolicy", "RecursionOutput", "TinyRecursionPolicy",
           "__version__"]
