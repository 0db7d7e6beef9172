"""``python -m app quality``: does steering with the default settings show each held-out concept?

For every concept: build its vector as the library does (recommended layers and strength), then
generate the held-out questions (or another list) unsteered and steered exactly as ``python -m app
generate --compare`` does by default (chat form, greedy, 48 new tokens), batched (as many rows a
call as the batcher takes: 16, the 8 pairs of the held-out set). Each pair is judged by the
concept's own scorer (app/quality/scorers.py), and each steered reply is checked for degeneration:
a loop (repeated 3-grams) or word salad (perplexity under the unsteered model far above the
baseline reply's). Each concept's moved rate comes with its 95 % (Wilson) interval.

With ``prompted``, each question is also asked unsteered with a system prompt made from the
concept's description (:data:`REFERENCE_SYSTEM_PROMPT`), and judged the same way: what simply
telling the model reaches on the same scorer, a reference for what the model can show at all.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from app.lab import Lab, SteerSpec
from app.progress import Progress
from app.quality import HELDOUT, MAX_NEW_TOKENS
from app.quality.scorers import Scorer, is_repetitive, load_scorers
from app.steering import concepts as concept_store
from app.steering.chat import chat_prompt
from app.steering.generation import GenerationRequest, GenerationResult, encode_prompt
from app.storage import atomic_write_json

SALAD_RATIO = 8.0  # steered perplexity over this many times the baseline's ...
SALAD_FLOOR = 80.0  # ... and over this value: the unsteered model cannot read it as text (fluent
# but unexpected on-topic replies measured 5-50 on SmolLM2)
REFERENCE_SYSTEM_PROMPT = "You are {description} Always answer in character."  # chosen on tests/tuning
Z_95 = 1.959964  # the standard normal quantile of a two-sided 95 % interval


def rate_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval (95 % by default) of a rate seen as ``k`` in ``n``: where the rate
    over questions like these may lie. Unlike k/n ± a normal half-width, it stays inside [0, 1] and
    is not a single point at 0/n or n/n."""
    if not 0 <= k <= n or n == 0:
        raise ValueError(f"a rate needs 0 <= k <= n and n > 0, got {k}/{n}")
    rate = k / n
    shrink = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / shrink
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / shrink
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class PromptedReply:
    """The unsteered reply to a question asked with the concept's description as the system prompt."""

    text: str
    score: float
    moved: bool
    perplexity: float  # under the unsteered model, after the plain question (as the steered reply's)
    repetitive: bool
    word_salad: bool

    @property
    def degenerate(self) -> bool:
        return self.repetitive or self.word_salad


@dataclass
class PairResult:
    question: str
    baseline: str
    steered: str
    baseline_score: float
    steered_score: float
    moved: bool
    baseline_perplexity: float
    steered_perplexity: float
    repetitive: bool
    word_salad: bool
    prompted: PromptedReply | None = None

    @property
    def degenerate(self) -> bool:
        return self.repetitive or self.word_salad


@dataclass
class ConceptResult:
    concept: str
    category: str
    scorer: str
    strength: float
    layers: list[int]
    seconds: float
    pairs: list[PairResult] = field(default_factory=list)

    @property
    def moved(self) -> int:
        return sum(p.moved for p in self.pairs)

    @property
    def degenerate(self) -> int:
        return sum(p.degenerate for p in self.pairs)

    @property
    def prompted_moved(self) -> int | None:
        """Replies the description's system prompt moved; None when it was not asked."""
        replies = self._prompted_replies()
        return sum(r.moved for r in replies) if replies else None

    @property
    def prompted_degenerate(self) -> int | None:
        replies = self._prompted_replies()
        return sum(r.degenerate for r in replies) if replies else None

    def _prompted_replies(self) -> list[PromptedReply]:
        return [p.prompted for p in self.pairs if p.prompted is not None]

    def to_json(self) -> dict:
        def pair_json(pair: PairResult) -> dict:
            out = {**asdict(pair), "degenerate": pair.degenerate}
            if pair.prompted is None:
                del out["prompted"]
            else:
                out["prompted"]["degenerate"] = pair.prompted.degenerate
            return out

        counts: dict[str, int | list[float] | None] = {
            "moved": self.moved,
            "moved_interval": [round(x, 3) for x in rate_interval(self.moved, len(self.pairs))],
            "degenerate": self.degenerate,
            "n": len(self.pairs),
        }
        if self.prompted_moved is not None:
            counts |= {"prompted_moved": self.prompted_moved, "prompted_degenerate": self.prompted_degenerate}
        return {
            **{k: v for k, v in asdict(self).items() if k != "pairs"},
            **counts,
            "pairs": [pair_json(p) for p in self.pairs],
        }


def is_word_salad(baseline_perplexity: float, steered_perplexity: float) -> bool:
    if math.isnan(steered_perplexity):
        return False  # nothing generated: not salad (an empty reply does not move either)
    return steered_perplexity > SALAD_FLOOR and steered_perplexity > SALAD_RATIO * baseline_perplexity


def load_questions(path: Path) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read questions {path}: {error}") from error
    if not isinstance(data, list) or not data or not all(isinstance(q, str) and q.strip() for q in data):
        raise ValueError(f"{path}: expected a non-empty list of questions")
    return data


def reference_prompt(tokenizer: PreTrainedTokenizerBase, description: str, question: str) -> str:
    """``question`` in the model's chat template, after a system prompt made from ``description``."""
    system = REFERENCE_SYSTEM_PROMPT.format(description=description.strip())
    return chat_prompt(tokenizer, [{"role": "system", "content": system}, {"role": "user", "content": question}])


def judge_concept(
    lab: Lab,
    concept_file: Path,
    scorer: Scorer,
    questions: Sequence[str],
    max_new_tokens: int = MAX_NEW_TOKENS,
    prompted: bool = False,
    progress: Progress | None = None,
) -> ConceptResult:
    """Baseline vs steered replies to every question, batched, judged by ``scorer``.

    ``prompted`` adds, per question, the unsteered reply under the description's system prompt
    (not for a concept without a description). Every row's reply is independent of the others in
    its batch, so the baseline and steered replies are the same with or without it.
    """
    from app.analysis.metrics import perplexity_from_ids

    started = time.perf_counter()
    concept = concept_store.load_concept_file(concept_file)

    def say(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, f"{concept.name}: {message}")

    say(0.0, "its vector (from the cache, or extraction and the strength sweep)")
    steer = lab.make_steer(SteerSpec(source=str(concept_file)))  # the CLI's defaults: recommended layers, strength
    tokenizer, is_chat = lab.lm.tokenizer, lab.lm.is_chat
    with_prompt = prompted and bool(concept.description)
    requests = []
    for question in questions:
        requests += lab.compare_requests(GenerationRequest(prompt=question, max_new_tokens=max_new_tokens), [steer])
    if with_prompt:  # after all the pairs: row 2n + i is question i's told reply
        requests += [
            GenerationRequest(
                prompt=reference_prompt(tokenizer, concept.description, q), chat=False, max_new_tokens=max_new_tokens
            )
            for q in questions
        ]
    results = _generate_all(lab, requests, say)
    say(0.95, "perplexities")
    # Every reply is read after the plain question, the told one included: one yardstick.
    plain_prompts = [encode_prompt(tokenizer, q, True, is_chat) for q in questions]
    prompts = [p for p in plain_prompts for _ in ("baseline", "steered")] + (plain_prompts if with_prompt else [])
    with lab.engine.lock:  # no one else's hooks while the unsteered model reads
        perplexities = perplexity_from_ids(
            lab.engine.model, [p + r.token_ids for p, r in zip(prompts, results)], [len(p) for p in prompts]
        )
    out = ConceptResult(
        concept=concept.name,
        category=concept.category,
        scorer=scorer.describe(),
        strength=steer.strength,
        layers=list(steer.resolved_layers()),
        seconds=0.0,
    )
    for i, question in enumerate(questions):
        base, steered = results[2 * i].text, results[2 * i + 1].text
        ppl_base, ppl_steered = perplexities[2 * i], perplexities[2 * i + 1]
        told = None
        if with_prompt:
            row = 2 * len(questions) + i
            text, ppl = results[row].text, perplexities[row]
            told = PromptedReply(
                text=text,
                score=scorer.score(text),
                moved=scorer.moved(base, text),
                perplexity=round(ppl, 3),
                repetitive=is_repetitive(text),
                word_salad=is_word_salad(ppl_base, ppl),
            )
        out.pairs.append(
            PairResult(
                question=question,
                baseline=base,
                steered=steered,
                baseline_score=scorer.score(base),
                steered_score=scorer.score(steered),
                moved=scorer.moved(base, steered),
                baseline_perplexity=round(ppl_base, 3),
                steered_perplexity=round(ppl_steered, 3),
                repetitive=is_repetitive(steered),
                word_salad=is_word_salad(ppl_base, ppl_steered),
                prompted=told,
            )
        )
    out.seconds = round(time.perf_counter() - started, 1)
    return out


def _generate_all(
    lab: Lab, requests: Sequence[GenerationRequest], say: Progress | None = None
) -> list[GenerationResult]:
    """Every row, in as few calls as the batcher's row limit allows (a row's reply does not
    depend on the others in its batch); ``say`` hears of each call before it starts."""
    step, results = lab.batcher.max_rows, []
    for start in range(0, len(requests), step):
        end = min(start + step, len(requests))
        if say is not None:
            say(0.1 + 0.85 * start / len(requests), f"replies {start + 1}-{end} of {len(requests)}")
        results += lab.generate(requests[start:end])
    return results


def run_quality(
    lab: Lab,
    heldout: Path = HELDOUT,
    only: Sequence[str] = (),
    max_new_tokens: int = MAX_NEW_TOKENS,
    report: Callable[[ConceptResult], None] | None = None,
    prompted: bool = False,
    questions: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> list[ConceptResult]:
    """Judge every concept in ``heldout/concepts`` (or those named in ``only``) on the set's questions,
    or on ``questions`` when given; ``progress`` hears of each step (a concept takes minutes on a CPU)."""
    if prompted and not lab.lm.is_chat:
        raise ValueError(f"{lab.lm.model_id} has no chat template, so it has no system prompt to compare with")
    scorers = load_scorers(heldout / "scorers.json")
    questions = questions or load_questions(heldout / "questions.json")
    files = {path.stem: path for path in sorted((heldout / "concepts").glob("*.json"))}
    unknown = sorted(set(only) - set(files))
    if unknown:
        raise ValueError(f"no held-out concept named {', '.join(unknown)}; there are: {', '.join(files)}")
    missing = sorted(set(files) - set(scorers))
    if missing:
        raise ValueError(f"{heldout / 'scorers.json'} has no scorer for {', '.join(missing)}")
    chosen = [name for name in files if not only or name in only]
    results = []
    for index, name in enumerate(chosen):

        def step(fraction: float, message: str, index: int = index) -> None:  # within one concept -> overall
            if progress is not None:
                progress((index + fraction) / len(chosen), message)

        result = judge_concept(lab, files[name], scorers[name], questions, max_new_tokens, prompted, step)
        if report is not None:
            report(result)
        results.append(result)
    return results


def _count(k: int | None, n: int) -> str:
    """``k/n`` right-aligned in a 6-wide column (``-`` when not counted), for any n below 100."""
    return f"{'-' if k is None else f'{k}/{n}':>6}"


def table(results: Sequence[ConceptResult]) -> str:
    """One line per concept: how many replies moved, how many degenerated, at which setting; with
    the description's system prompt, how many of its replies moved and degenerated ("told"); the
    steered replies' moved rate with its 95 % interval."""
    told = any(r.prompted_moved is not None for r in results)
    head = f"{'concept':<14} {'category':<9} {'moved':>6} {'degen':>6} {'strength':>8}  layers  "
    lines = [head + (f"{'told':>6} {'degen':>6}  " if told else "") + f"{'moved rate, 95 %':<17} scorer"]
    for r in results:
        n = len(r.pairs)
        line = (
            f"{r.concept:<14} {r.category:<9} {_count(r.moved, n)} {_count(r.degenerate, n)} {r.strength:>8.2f}  "
            f"{','.join(map(str, r.layers)):<6}  "
        )
        if told:
            line += f"{_count(r.prompted_moved, n)} {_count(r.prompted_degenerate, n)}  "
        lo, hi = rate_interval(r.moved, n)
        lines.append(line + f"{f'{r.moved / n:.2f} ({lo:.2f}-{hi:.2f})':<17} " + r.scorer)
    return "\n".join(lines)


def save(results: Sequence[ConceptResult], folder: Path, model_id: str) -> None:
    """Every reply and score, one JSON file per concept plus a summary."""
    for r in results:
        save_concept(r, folder)
    summary = [{k: v for k, v in r.to_json().items() if k != "pairs"} for r in results]
    atomic_write_json(folder / "summary.json", {"model": model_id, "concepts": summary})


def save_concept(result: ConceptResult, folder: Path) -> None:
    """One concept's replies and scores (written as soon as it is judged: runs take minutes)."""
    atomic_write_json(folder / f"{result.concept}.json", result.to_json())
