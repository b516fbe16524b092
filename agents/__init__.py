"""Agents that act in the recursion MDP: the TRM network, its trainers, evaluation and diagnostics."""
