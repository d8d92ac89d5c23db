"""Reward functions: ``fn(completion: str, **example_fields) -> float``, each usable on its own.

Imports only the standard library (and torch/numpy where needed): a test asserts it.
"""

from alignkit.rewards.accuracy import accuracy_reward, answers_match, extract_answer, parse_number
from alignkit.rewards.combine import combine
from alignkit.rewards.format import format_reward

__all__ = ["accuracy_reward", "answers_match", "combine", "extract_answer", "format_reward", "parse_number"]
