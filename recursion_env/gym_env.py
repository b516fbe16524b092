"""Gymnasium adapters over :class:`~recursion_env.core.RecursionCore`: one env, and a batched vector env."""

from __future__ import annotations

import sys
import warnings

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .core import INFO_KEYS, RecursionCore, build_core, single_thread_in_workers
from .render import RENDER_MODES, checked_render_mode, render_env
from .tasks import Task


def single_spaces(core: RecursionCore) -> tuple[spaces.Dict, spaces.Dict]:
    """Observation and action space of one env, from the core's definitions."""
    L, V, cfg = core.seq_len, core.task.vocab_size, core.config
    tokens = spaces.MultiDiscrete(np.full(L, V, dtype=np.int64))
    latent = spaces.Box(-np.inf, np.inf, shape=core.latent_shape, dtype=np.float32)
    observation = spaces.Dict({
        "puzzle": tokens,
        "answer": tokens,
        "latent": latent,
        # counters of shape (1,), not (): Stable-Baselines3's checker (and its NumPy-2 code) cannot take 0-d Boxes
        "step": spaces.Box(0, cfg.max_steps, shape=(1,), dtype=np.int64),
        "nfe": spaces.Box(0, cfg.max_steps * cfg.nfe_per_step, shape=(1,), dtype=np.int64),
        # the puzzle's identifier, where the data has them (ARC's augmented variants)
        **({} if core.num_puzzle_ids is None else
           {"puzzle_id": spaces.Box(0, core.num_puzzle_ids - 1, shape=(1,), dtype=np.int64)}),
    })
    action = ActionDict({"latent": latent, "answer": tokens, "halt": spaces.Discrete(2)})
    return observation, action


def _host(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's values as an array: a view of a CPU tensor (cheaper than ``numpy(force=True)``, and the core's
    state never requires grad), a fresh copy of an accelerator's."""
    return tensor.numpy() if tensor.is_cpu else tensor.numpy(force=True)


def _numpy(tensors: dict[str, torch.Tensor], copy: bool = True) -> dict[str, np.ndarray]:
    """Fresh arrays (Gymnasium's rule: users keep what an env returns), or with ``copy=False`` read-only views
    of the core's state: still safe to keep, since the core never writes into a state tensor (every transition
    and reset makes new ones) and a read-only view cannot be written through."""
    out = {}
    for k, v in tensors.items():
        a = _host(v)
        if not copy:
            a.flags.writeable = False
        elif v.is_cpu:
            a = a.copy()
        out[k] = a
    return out


def _shared(value):
    """A tensor over the caller's array without a copy (``copy=False``); the env only ever reads it."""
    global _readonly_warning_spent
    if not isinstance(value, np.ndarray):
        return value
    if value.flags.writeable or _readonly_warning_spent:
        return torch.from_numpy(value)
    # torch warns once per process that it cannot mark a tensor read-only (the core never writes into it):
    # spend that one warning here, silenced, instead of entering catch_warnings on every step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(value)
    _readonly_warning_spent = True
    return tensor


_readonly_warning_spent = False


class RecursionGymEnv(gym.Env):
    """Latent recursion of a TRM as a Gymnasium env: one puzzle per episode.

    Registered as ``TRMRecursion-Sudoku-v0``, ``TRMRecursion-Maze-v0``, ``TRMRecursion-NQueens-v0``,
    ``TRMRecursion-ARC-v0``.

    Spaces (L = ``task.seq_len``, V = ``task.vocab_size``, D = ``latent_dim``, P = ``latent_len``, default L)::

        observation  Dict(puzzle: MultiDiscrete([V]*L)    the givens, 0 = blank
                          answer: MultiDiscrete([V]*L)    the current decoded answer (givens kept)
                          latent: Box(float32, (2, P, D)) y (answer embedding) and z (reasoning latent)
                          step:   Box(int64, (1,))        transitions taken
                          nfe:    Box(int64, (1,))        forward passes charged
                          puzzle_id: Box(int64, (1,))     only where the data has identifiers (ARC's variants))
        action       Dict(latent: Box(float32, (2, P, D)), answer: MultiDiscrete([V]*L), halt: Discrete(2))

    Each step is one latent refinement charged ``nfe_per_step`` forward passes; the reward is the score gain
    minus ``nfe_cost`` per forward pass, plus/minus ``solve_bonus`` when the answer becomes solved/broken (see
    :mod:`recursion_env.core`). ``info`` carries ``nfe``, ``cell_accuracy``, ``solved``, ``score``.

    Keyword args: ``task`` (name), task options (``size``, ``board``, ``min_givens``, ...), the
    :class:`~recursion_env.core.RecursionConfig` fields (``latent_dim``, ``latent_len``, ``nfe_cost``,
    ``reward_mode``, ``max_steps``, ``nfe_per_step``, ``solve_bonus``, ``terminate_on_solve``), ``dataset`` (a
    saved ``.npz``, a Sudoku-Extreme ``.csv`` or a text file of puzzles), ``device``, ``render_mode``
    (``"ansi"`` or ``"rgb_array"``). ``reset(options={"puzzle": ..., "label": ..., "latent": ...})`` starts
    from a given puzzle and/or initial latent.

    Sample rollout::

        >>> import gymnasium as gym, recursion_env
        >>> env = gym.make("TRMRecursion-Sudoku-v0", size=4, latent_dim=8)
        >>> obs, info = env.reset(seed=0)
        >>> obs["latent"].shape, info["solved"]
        ((2, 16, 8), False)
        >>> action = {"latent": obs["latent"], "answer": obs["answer"], "halt": 1}
        >>> obs, reward, terminated, truncated, info = env.step(action)
        >>> terminated, info["nfe"]
        (True, 1)
    """

    metadata = {"render_modes": RENDER_MODES, "render_fps": 4}

    def __init__(self, task: Task | str = "sudoku", render_mode: str | None = None, dataset=None,
                 device: str | torch.device = "cpu", **kwargs):
        self.render_mode = checked_render_mode(render_mode)
        single_thread_in_workers()
        self.core = build_core(task, 1, dataset=dataset, device=device, **kwargs)
        self.task = self.core.task
        self.observation_space, self.action_space = single_spaces(self.core)
        teach_torchrl_action_dicts()

    def _obs(self) -> dict[str, np.ndarray]:
        # fresh arrays (Gymnasium's rule); the counters [1] as their Box((1,)) holds them
        return {k: v[0] if v.ndim > 1 else v for k, v in _numpy(self.core.observation()).items()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.core.rng = self.np_random  # one generator: Gymnasium's seeding decides the puzzle
        options = dict(options or {})
        unknown = set(options) - {"puzzle", "label", "latent"}
        if unknown:
            raise ValueError(f"reset options: unknown key(s) {sorted(unknown)}; expected puzzle, label, latent")
        puzzle = options.get("puzzle")
        if isinstance(puzzle, str):
            puzzle = self.task.parse(puzzle)
        label = options.get("label")  # without one the core derives it, or refuses label rewards
        latent = options.get("latent")
        self.core.reset(
            puzzles=None if puzzle is None else np.asarray(puzzle)[None],
            labels=None if label is None else np.asarray(label)[None],
            latent=None if latent is None else np.asarray(latent)[None],
        )
        return self._obs(), self.core.env_info()

    def step(self, action):
        res = self.core.step(action)
        return (self._obs(), res.reward.tolist()[0], res.terminated.tolist()[0], res.truncated.tolist()[0],
                self.core.env_info())

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'rgb_array'")
            return None
        return render_env(self.core, self.render_mode, _header(self.core, 0))


def _header(core: RecursionCore, i: int) -> str:
    return f"step {int(core.step_count[i])}  nfe {int(core.nfe[i])}  cell accuracy {float(core.cell_accuracy[i]):.3f}"


class ActionDict(spaces.Dict):
    """The action space of one env: a Dict that batches (``gymnasium.vector.utils.batch_space``, as
    ``AsyncVectorEnv`` and TorchRL's ``GymEnv(id, num_envs=N)`` do) into a :class:`BatchedDict`."""


class BatchedDict(spaces.Dict):
    """A batched :class:`ActionDict` that remembers its one env's space (``single``) and ``num_envs``: TorchRL's
    ``GymEnv`` gives a plain batched Dict no batch size, so :func:`teach_torchrl_action_dicts` converts this one
    from ``single``, batched."""

    def __init__(self, single: spaces.Dict, num_envs: int):
        super().__init__({k: batch_space(v, num_envs) for k, v in single.spaces.items()})
        self.single, self.num_envs = single, num_envs


@batch_space.register(ActionDict)
def _batch_action_dict(space: ActionDict, n: int = 1) -> BatchedDict:
    return BatchedDict(space, n)


def teach_torchrl_action_dicts() -> None:
    """Register :class:`ActionDict` and :class:`BatchedDict` with TorchRL's space conversion where TorchRL is
    loaded (its ``GymEnv`` imports it before it makes an env; nothing here imports it): one env's as TorchRL
    converts a Dict, a batched one to a spec of the vector env's batch size, with categorical encoding (``answer``
    as token indices, ``halt`` as 0/1), the shapes TorchRL's own checker then expects of its batched rollout."""
    gym_lib = sys.modules.get("torchrl.envs.libs.gym")
    registry = getattr(gym_lib, "_conversion_registry", None)
    if registry is None or BatchedDict in registry:
        return
    registry[ActionDict] = registry[spaces.Dict]

    @gym_lib.register_gym_spec_conversion(BatchedDict)
    def _convert_batched(spec, dtype=None, device=None, categorical_action_encoding=False,
                         remap_state_to_observation=True, batch_size=None):
        return gym_lib._gym_to_torchrl_spec_transform(
            spec.single, dtype=dtype, device=device, categorical_action_encoding=True,
            remap_state_to_observation=remap_state_to_observation, batch_size=(spec.num_envs,))


class RecursionVectorEnv(VectorEnv):
    """``gymnasium.make_vec("TRMRecursion-...-v0", num_envs=B)``: B envs stepped as one batch by the core
    (no Python loop over envs). Autoreset is Gymnasium's default next-step mode: the step after an episode
    ends resets that env (its action is ignored, its reward is 0). Same keyword args as
    :class:`RecursionGymEnv`, plus ``copy`` as in Gymnasium's ``SyncVectorEnv``: ``copy=True`` (default) returns
    fresh arrays and copies the actions; ``copy=False`` returns read-only views of the core's state (they never
    change afterwards: the core never writes into a state tensor), which saves a copy of the latent per step
    (10.6 MB at B=256, 9x9 Sudoku, D=64). The latent handed in is copied either way (the core keeps it as its
    state and never keeps a caller's array), and no returned array aliases an action. ``np.array(obs[k])`` gives a
    writable copy of a view."""

    metadata = {"render_modes": RENDER_MODES, "render_fps": 4, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, task: Task | str = "sudoku", dataset=None,
                 device: str | torch.device = "cpu", copy: bool = True, render_mode: str | None = None, **kwargs):
        self.render_mode = checked_render_mode(render_mode)
        self.copy = copy
        self.core = build_core(task, num_envs, dataset=dataset, device=device, **kwargs)
        self.task, self.num_envs = self.core.task, num_envs
        self.single_observation_space, self.single_action_space = single_spaces(self.core)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        teach_torchrl_action_dicts()
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._all_set = np.ones(num_envs, dtype=bool)  # the "_key" masks: every env reports every info key
        self._all_set.flags.writeable = False

    def _infos(self) -> dict[str, np.ndarray]:
        info = _numpy(self.core.info(), self.copy)
        out: dict[str, np.ndarray] = {}
        for k in INFO_KEYS:
            out[k] = info[k]
            out[f"_{k}"] = self._all_set if not self.copy else np.ones(self.num_envs, dtype=bool)
        return out

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
        self.core.rng = self.np_random
        self.core.reset()
        self._autoreset[:] = False
        return self._obs(), self._infos()

    def _obs(self) -> dict[str, np.ndarray]:
        obs = _numpy(self.core.observation(), self.copy)
        for k in ("step", "nfe", "puzzle_id"):  # views: [B] -> [B, 1]
            if k in obs:
                obs[k] = obs[k].reshape(-1, 1)
        return obs

    def step(self, actions):
        n_reset = np.count_nonzero(self._autoreset)  # (cheaper than any() and all())
        any_reset = n_reset > 0
        reset_mask = torch.as_tensor(self._autoreset, device=self.core.device) if any_reset else None
        if any_reset:
            self.core.reset(reset_mask)
        if n_reset == self.num_envs:  # every env restarted: no transition this step
            reward = np.zeros(self.num_envs, dtype=np.float64)
            terminated, truncated = np.zeros(self.num_envs, dtype=bool), np.zeros(self.num_envs, dtype=bool)
        else:
            if not self.copy:  # read the answer and halt arrays in place; the latent, which the core keeps as its
                # state, is copied by the core (it never keeps a caller's array)
                actions = {k: (v if k == "latent" else _shared(v)) for k, v in actions.items()}
            res = self.core.step(actions, mask=~reset_mask if any_reset else None)
            reward = _host(res.reward).astype(np.float64)
            terminated, truncated = _host(res.terminated), _host(res.truncated)
        self._autoreset = terminated | truncated
        return self._obs(), reward, terminated, truncated, self._infos()

    def render(self) -> tuple | None:
        """Every env's frame, as Gymnasium's ``SyncVectorEnv`` gives them: a tuple of texts or of images."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'rgb_array'")
            return None
        return tuple(render_env(self.core, self.render_mode, _header(self.core, i), index=i)
                     for i in range(self.num_envs))
