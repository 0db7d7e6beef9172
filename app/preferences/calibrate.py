"""CALIBRATE (Bo et al. 2025): pairwise choices that close in on the preferred strength.

CALIBRATE shows two replies, steered at d_A < d_B, and asks which is better. The losing end
moves toward the winner, keeping the preferred value inside [d_A, d_B]:

    slightly better   the loser moves to the midpoint          (the interval halves)
    much better       the loser moves 3/4 of the way over      (the interval shrinks to 1/4)
    about the same    stop: the preference is between the two

It stops on "about the same", when the ends are within ``stop_width`` (20) of each other, or
after ``max_rounds`` (4); the result is the midpoint. With a consistent chooser the final width
is at most 200 / 2⁴ = 12.5, so the result is within 6.25 UI units of the preference.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from app.preferences.select import UI_MAX, UI_MIN

Choice = Literal[
    "A much better",
    "A slightly better",
    "about the same",
    "B slightly better",
    "B much better",
]
CHOICES: tuple[Choice, ...] = (
    "A much better",
    "A slightly better",
    "about the same",
    "B slightly better",
    "B much better",
)
# How far the losing end moves toward the winner, as a fraction of the gap.
_PULL = {"slightly": 0.5, "much": 0.75}


@dataclass
class CalibrationState:
    """One calibration in progress (plain data: safe to keep in ``gr.State``)."""

    d_a: float = UI_MIN
    d_b: float = UI_MAX
    round: int = 0
    # one (d_a, d_b, choice) per round
    history: list[tuple[float, float, str]] = field(default_factory=list)
    done: bool = False
    max_rounds: int = 4
    stop_width: float = 20.0

    @property
    def result(self) -> float:
        return (self.d_a + self.d_b) / 2


def calibrate_step(state: CalibrationState, choice: str) -> CalibrationState:
    """Apply one graded choice and return the new state (the input is not changed)."""
    if state.done:
        raise ValueError("this calibration is finished: start a new one")
    if choice not in CHOICES:
        raise ValueError(f"unknown choice {choice!r}: use one of {', '.join(CHOICES)}")
    d_a, d_b = state.d_a, state.d_b
    if choice != "about the same":
        winner, grade = choice.split(" ")[:2]
        pull = _PULL[grade]
        if winner == "B":
            d_a = d_a + pull * (d_b - d_a)
        else:
            d_b = d_b - pull * (d_b - d_a)
    rounds = state.round + 1
    done = choice == "about the same" or abs(d_b - d_a) <= state.stop_width or rounds >= state.max_rounds
    history = [*state.history, (state.d_a, state.d_b, choice)]
    return replace(state, d_a=d_a, d_b=d_b, round=rounds, history=history, done=done)
