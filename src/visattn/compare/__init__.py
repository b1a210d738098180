"""Fair comparisons of attentions: the same model, data, recipe and budget for every member,
several seeds each, and a leaderboard that says which differences exceed the seed noise."""

from .leaderboard import leaderboard, versus_reference, write_leaderboard
from .members import Member
from .run import PRESETS, REPRESENTATIVE, CompareError, compare, parse_attentions, write_comparison

__all__ = [
    "PRESETS",
    "REPRESENTATIVE",
    "CompareError",
    "Member",
    "compare",
    "leaderboard",
    "parse_attentions",
    "versus_reference",
    "write_comparison",
    "write_leaderboard",
]
