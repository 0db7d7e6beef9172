"""``python -m app quality``: does steering with the default settings show each held-out concept?

For every concept: build its vector as the library does (recommended layers and strength), then
generate the held-out questions unsteered and steered exactly as ``python -m app generate
--compare`` does by default (chat form, greedy, 48 new tokens), all rows of the concept in one
batched call. Each pair is judged by the concept's own scorer (app/quality/scorers.py), and each
steered reply is checked for degeneration: a loop (repeated 3-grams) or word salad (perplexity
under the unsteered model far above the baseline reply's).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.lab import Lab, SteerSpec
from app.quality import HELDOUT, MAX_NEW_TOKENS
from app.quality.scorers import Scorer, is_repetitive, load_scorers
from app.steering import concepts as concept_store
from app.steering.generation import GenerationRequest, encode_prompt
from app.storage import atomic_write_json

SALAD_RATIO = 8.0  # steered perplexity over this many times the baseline's ...
SALAD_FLOOR = 80.0  # ... and over this value: the unsteered model cannot read it as text (fluent
# but unexpected on-topic replies measured 5-50 on SmolLM2)


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

    def to_json(self) -> dict:
        return {
            **{k: v for k, v in asdict(self).items() if k != "pairs"},
            "moved": self.moved,
            "degenerate": self.degenerate,
            "n": len(self.pairs),
            "pairs": [{**asdict(p), "degenerate": p.degenerate} for p in self.pairs],
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


def judge_concept(
    lab: Lab, concept_file: Path, scorer: Scorer, questions: Sequence[str], max_new_tokens: int = MAX_NEW_TOKENS
) -> ConceptResult:
    """Baseline vs steered replies to every question, in one batched call, judged by ``scorer``."""
    from app.analysis.metrics import perplexity_from_ids

    started = time.perf_counter()
    concept = concept_store.load_concept_file(concept_file)
    steer = lab.make_steer(SteerSpec(source=str(concept_file)))  # the CLI's defaults: recommended layers, strength
    requests = []
    for question in questions:
        requests += lab.compare_requests(GenerationRequest(prompt=question, max_new_tokens=max_new_tokens), [steer])
    results = lab.generate(requests)
    tokenizer, is_chat = lab.lm.tokenizer, lab.lm.is_chat
    prompts = [encode_prompt(tokenizer, r.prompt, r.chat, is_chat) for r in requests]
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
            )
        )
    out.seconds = round(time.perf_counter() - started, 1)
    return out


def run_quality(
    lab: Lab,
    heldout: Path = HELDOUT,
    only: Sequence[str] = (),
    max_new_tokens: int = MAX_NEW_TOKENS,
    report: Callable[[ConceptResult], None] | None = None,
) -> list[ConceptResult]:
    """Judge every concept in ``heldout/concepts`` (or those named in ``only``)."""
    scorers = load_scorers(heldout / "scorers.json")
    questions = load_questions(heldout / "questions.json")
    files = {path.stem: path for path in sorted((heldout / "concepts").glob("*.json"))}
    unknown = sorted(set(only) - set(files))
    if unknown:
        raise ValueError(f"no held-out concept named {', '.join(unknown)}; there are: {', '.join(files)}")
    missing = sorted(set(files) - set(scorers))
    if missing:
        raise ValueError(f"{heldout / 'scorers.json'} has no scorer for {', '.join(missing)}")
    results = []
    for name, path in files.items():
        if only and name not in only:
            continue
        result = judge_concept(lab, path, scorers[name], questions, max_new_tokens)
        if report is not None:
            report(result)
        results.append(result)
    return results


def table(results: Sequence[ConceptResult]) -> str:
    """One line per concept: how many replies moved, how many degenerated, at which setting."""
    lines = [f"{'concept':<14} {'category':<9} {'moved':>6} {'degen':>6} {'strength':>8}  layers  scorer"]
    for r in results:
        n = len(r.pairs)
        lines.append(
            f"{r.concept:<14} {r.category:<9} {r.moved:>4}/{n} {r.degenerate:>4}/{n} {r.strength:>8.2f}  "
            f"{','.join(map(str, r.layers)):<6}  {r.scorer}"
        )
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
