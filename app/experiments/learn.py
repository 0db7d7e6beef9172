"""E4: learning a hidden preference with LEARN and a simulated user (Bo et al. 2025; docs/results.md).

Each simulated user cares about one dimension and secretly wants one pole (hidden value ±100).
Every round all users get a reply to the same question, steered at their current learned value
(``ui_to_strength`` over the dimension's functional range), beside one unsteered reply with the
same seed. The user's satisfaction is how far their reply moved toward their pole:

    aligned = sign(hidden) · (Effect(reply) − Effect(unsteered)) / gain

where ``gain`` is E1's typical Effect change at the full functional range. A user gives thumbs up
when ``aligned ≥ SATISFIED_AT``; otherwise thumbs down and one of the dimension's feedback phrases
for their pole ("Can you find cheaper options?"). LEARN (``app.preferences.learn.learn_step``) moves
the value by ``step · dissatisfaction · direction``. Two kinds of user tell it the direction:

    text     LEARN reads it from the phrase by embedding similarity to the *other* phrases
             (the one said is held out, so the text is new to it), as the paper does;
    oracle   the user names the pole outright (a "more luxury" button): the update rule alone.

Learned values start at 0 (neutral).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from app.experiments.common import (
    Context,
    jsonable,
    load_queries,
    range_of,
    reply_effects,
    request,
    run_batches,
    steer_one,
    write_csv,
    write_figure,
)
from app.experiments.stats import mean_ci
from app.preferences.learn import LearnState, learn_step, load_feedback_phrases, text_directions
from app.preferences.select import ui_to_strength
from app.steering.engine import NO_STEERING
from app.storage import atomic_write_json

READERS = ("text", "oracle")
SATISFIED_AT = 0.5  # of E1's gain at the full range
DEFAULT_GAIN = 0.05  # Effect units, when E1 did not run in the same session
MIN_GAIN = 0.01


@dataclass(frozen=True)
class User:
    name: str
    dim: str
    hidden: float  # ±100
    index: int
    reader: Literal["text", "oracle"] = "text"

    @property
    def pole(self) -> str:
        return "positive" if self.hidden > 0 else "negative"


def measured_gains(out: Path) -> dict[str, float]:
    """E1's gains from an earlier run into the same folder (``e1_ranges.json``), if any."""
    try:
        details = json.loads((out / "e1_ranges.json").read_text(encoding="utf-8"))["details"]
        return {dim: float(d["gain_at_range"]) for dim, d in details.items() if d.get("gain_at_range") is not None}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def user_gain(measured: float | None) -> float:
    """The Effect change a user calls "all the way": E1's gain at the range, else the default."""
    if measured is None or not math.isfinite(measured):
        return DEFAULT_GAIN
    return max(MIN_GAIN, measured)


def e4_users(dims: Sequence[str], per_pole: int, readers: Sequence[str] = READERS) -> list[User]:
    users = []
    for reader in readers:
        for dim in dims:
            for hidden in (-100.0, 100.0):
                for k in range(per_pole):
                    name = f"{dim}{'+' if hidden > 0 else '-'}{k}-{reader}"
                    users.append(User(name, dim, hidden, len(users), reader))
    return users


def e4_rows(ctx: Context) -> int:
    s = ctx.sizes
    return s.e4_rounds * (len(e4_users(s.e4_dims, s.e4_users_per_pole, s.e4_readers)) + 1)


def held_out(phrases: Mapping[str, Mapping[str, Sequence[str]]], dim: str, pole: str, said: str) -> dict:
    """The phrase table without the phrase the user said (so LEARN reads text it has not seen)."""
    table = {d: {p: list(texts) for p, texts in poles.items()} for d, poles in phrases.items()}
    rest = [t for t in table[dim][pole] if t != said]
    table[dim][pole] = rest or table[dim][pole]
    return table


def user_feedback(
    user: User, moved: float, gain: float, round_index: int, phrases: Mapping
) -> tuple[str, str, float, dict[str, float] | None]:
    """(thumbs, text, aligned, directions) of one simulated user for one reply."""
    aligned = math.copysign(1.0, user.hidden) * moved / gain if math.isfinite(moved) else 0.0
    if aligned >= SATISFIED_AT:
        return "up", "", aligned, None
    options = phrases[user.dim][user.pole]
    text = options[(round_index + user.index) % len(options)]
    if user.reader == "oracle":
        return "down", text, aligned, {user.dim: math.copysign(1.0, user.hidden)}
    return "down", text, aligned, text_directions(text, held_out(phrases, user.dim, user.pole, text))


def run_e4(ctx: Context) -> dict:
    from app.experiments.figures import e4_figure

    s, lab = ctx.sizes, ctx.lab
    users = e4_users(s.e4_dims, s.e4_users_per_pole, s.e4_readers)
    phrases = load_feedback_phrases()
    missing = [u.dim for u in users if u.dim not in phrases]
    if missing:
        raise ValueError(f"no LEARN feedback phrases for {missing[0]!r} in concepts/questions/feedback_phrases.json")
    gains = {d: user_gain(ctx.gains.get(d, measured_gains(ctx.out).get(d))) for d in s.e4_dims}
    ranges = {d: range_of(ctx, d) for d in s.e4_dims}
    states = {u.name: LearnState(values={u.dim: 0.0}) for u in users}
    queries = load_queries()
    rows = []
    for t in range(s.e4_rounds):
        query, seed = queries[(3 + 7 * t) % len(queries)], s.seed + 100 + t
        strengths = [ui_to_strength(states[u.name].values[u.dim], ranges[u.dim]) for u in users]
        requests = [request(query, NO_STEERING, seed, s.e4_max_new_tokens)]
        requests += [
            request(query, steer_one(lab, u.dim, x), seed, s.e4_max_new_tokens) for u, x in zip(users, strengths)
        ]
        results = run_batches(ctx, requests, f"E4 round {t + 1}/{s.e4_rounds}")
        texts = [r.text for r in results]
        effects = {d: reply_effects(texts, d) for d in s.e4_dims}
        for i, (user, strength) in enumerate(zip(users, strengths), start=1):
            before = states[user.name].values[user.dim]
            moved = effects[user.dim][i] - effects[user.dim][0]
            thumbs, said, aligned, directions = user_feedback(user, moved, gains[user.dim], t, phrases)
            position = max(-1.0, min(1.0, moved / gains[user.dim])) if math.isfinite(moved) else 0.0
            states[user.name] = learn_step(states[user.name], thumbs, directions, None, {user.dim: position})
            rows.append(
                {
                    "user": user.name,
                    "reader": user.reader,
                    "dim": user.dim,
                    "hidden": user.hidden,
                    "round": t + 1,
                    "query": query,
                    "value": before,
                    "strength": strength,
                    "effect": effects[user.dim][i],
                    "effect_unsteered": effects[user.dim][0],
                    "aligned": aligned,
                    "thumbs": thumbs,
                    "feedback": said,
                    "direction": (directions or {}).get(user.dim, 0.0),
                    "value_next": states[user.name].values[user.dim],
                    "text": texts[i],
                }
            )
    summary = {reader: e4_summary([r for r in rows if r["reader"] == reader], s.e4_rounds) for reader in s.e4_readers}
    write_csv(ctx.out / "e4_rounds.csv", rows)
    atomic_write_json(
        ctx.out / "e4_summary.json",
        jsonable({"gains": gains, "ranges": ranges, "satisfied_at": SATISFIED_AT, "by_reader": summary}),
    )
    write_figure(e4_figure(rows), ctx.out / "e4_learning.html")
    return {"gains": gains, "by_reader": summary}


def e4_summary(rows: Sequence[Mapping], rounds: int) -> dict:
    """Per round: the learned value toward the hidden pole (sign(hidden)·value/100), mean and CI over
    users, and the share of thumbs up; at the end: the final values and how many reached the right side."""
    per_round = []
    for t in range(1, rounds + 1):
        mine = [r for r in rows if r["round"] == t]
        toward = mean_ci(math.copysign(1.0, r["hidden"]) * r["value_next"] / 100 for r in mine)
        per_round.append(
            {
                "round": t,
                "toward_mean": toward.value,
                "toward_lo": toward.lo,
                "toward_hi": toward.hi,
                "n": toward.n,
                "thumbs_up": float(np.mean([r["thumbs"] == "up" for r in mine])) if mine else math.nan,
            }
        )
    final = {r["user"]: r for r in rows if r["round"] == rounds}
    correct = [math.copysign(1.0, r["hidden"]) * r["value_next"] > 0 for r in final.values()]
    text_right = [
        math.copysign(1.0, r["hidden"]) * r["direction"] > 0 for r in rows if r["thumbs"] == "down" and r["feedback"]
    ]
    return {
        "per_round": per_round,
        "final_values": {u: r["value_next"] for u, r in final.items()},
        "final_right_side": float(np.mean(correct)) if correct else math.nan,
        "feedback_direction_right": float(np.mean(text_right)) if text_right else math.nan,
        "n_users": len(final),
    }
