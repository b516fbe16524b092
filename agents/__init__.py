"""Agents that act in the recursion MDP: ``model`` (the TRM network and the TRM acting in the MDP), ``trainers``
(the supervised loop, one file per method), ``eval`` (metrics, evaluation, diagnostics), ``experiments`` (the
bench, sweeps), ``zoo`` (trained networks), and the run folders they share (``checkpoint``, ``runs``)."""
