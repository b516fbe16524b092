"""recursion-env: the latent recursion of Tiny Recursive Models as a reinforcement-learning problem."""

from .tasks import PuzzleBatch, Task, load_dataset, load_puzzles, make_task, save_dataset

__version__ = "0.1.0"

__all__ = ["Task", "PuzzleBatch", "make_task", "save_dataset", "load_dataset", "load_puzzles", "__version__"]
