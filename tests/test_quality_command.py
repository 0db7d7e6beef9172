"""``python -m app quality`` on the real embedded SmolLM2: the table, --json and --out.

Skipped when the model is not set up, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import json
import shutil

import pytest

from app.storage import REPO_ROOT
from tests.conftest import SMALL_MODEL, require_model, sandbox_cache

MODEL_ID = SMALL_MODEL
HELDOUT = REPO_ROOT / "tests" / "heldout"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a library build and generation on a busy CPU


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A cache with the real models linked in, and a held-out folder with one concept and two questions."""
    require_model(MODEL_ID)
    sandbox_cache(tmp_path)
    monkeypatch.setenv("STEERING_LAB_CACHE", str(tmp_path / "cache"))
    heldout = tmp_path / "heldout"
    (heldout / "concepts").mkdir(parents=True)
    shutil.copy(HELDOUT / "concepts" / "ocean.json", heldout / "concepts")
    scorers = json.loads((HELDOUT / "scorers.json").read_text(encoding="utf-8"))
    (heldout / "scorers.json").write_text(json.dumps({"ocean": scorers["ocean"]}))
    questions = json.loads((HELDOUT / "questions.json").read_text(encoding="utf-8"))[:2]
    (heldout / "questions.json").write_text(json.dumps(questions))
    return tmp_path


def test_quality_json_table_and_out(sandbox, capsys):
    from app.cli import main

    args = ["quality", "--model", MODEL_ID, "--device", "cpu", "--heldout", str(sandbox / "heldout")]
    args += ["--max-new-tokens", "6"]
    assert main([*args, "--json", "--out", str(sandbox / "out")]) == 0
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if line.startswith("[")] == [
        "[  0.0%] ocean: its vector (from the cache, or extraction and the strength sweep)",
        "[ 10.0%] ocean: replies 1-4 of 4",
        "[ 95.0%] ocean: perplexities",
    ]
    report = json.loads(captured.out)
    assert report["model"] == MODEL_ID
    [ocean] = report["concepts"]
    assert ocean["concept"] == "ocean" and ocean["n"] == 2 and len(ocean["pairs"]) == 2
    assert ocean["strength"] > 0 and ocean["layers"]
    for pair in ocean["pairs"]:
        assert pair["baseline"] and pair["steered"] and pair["baseline"] != pair["steered"]
        assert pair["moved"] == (pair["steered_score"] > pair["baseline_score"])  # word list, margin 0
        assert pair["steered_perplexity"] > 0
    assert ocean["moved"] == sum(p["moved"] for p in ocean["pairs"])
    saved = json.loads((sandbox / "out" / "ocean.json").read_text(encoding="utf-8"))
    assert saved["pairs"] == ocean["pairs"]
    assert json.loads((sandbox / "out" / "summary.json").read_text(encoding="utf-8"))["concepts"][0]["n"] == 2

    assert main(args) == 0  # the vector is cached now: the table only
    out = capsys.readouterr().out
    assert f"model: {MODEL_ID}" in out and "ocean" in out and "/2" in out

    asked = sandbox / "asked.json"
    asked.write_text(json.dumps(["Describe the view from your window."]))
    assert main([*args, "--questions", str(asked), "--json"]) == 0
    [ocean] = json.loads(capsys.readouterr().out)["concepts"]
    assert ocean["n"] == 1 and [p["question"] for p in ocean["pairs"]] == ["Describe the view from your window."]


def test_quality_refuses_a_bad_questions_file_before_loading(tmp_path, capsys):
    from app.cli import main

    bad = tmp_path / "questions.json"
    bad.write_text(json.dumps({"not": "a list"}))
    assert main(["quality", "--model", "no-such-model", "--questions", str(bad)]) == 1
    assert capsys.readouterr().err.strip().endswith(f"{bad}: expected a non-empty list of questions")


def test_quality_names_an_unknown_concept(sandbox, capsys):
    from app.cli import main

    args = ["quality", "--model", MODEL_ID, "--heldout", str(sandbox / "heldout"), "--only", "volcano"]
    assert main(args) == 1
    assert "no held-out concept named volcano" in capsys.readouterr().err


@pytest.fixture
def tokenizer():
    from transformers import AutoTokenizer

    from app.models.embedded import models_dir

    require_model(MODEL_ID)
    return AutoTokenizer.from_pretrained(models_dir() / MODEL_ID)


def test_prompted_adds_the_told_reply_and_changes_no_other(sandbox, tokenizer, capsys):
    """--prompted: a third row per question, asked under the description's system prompt and judged
    like the steered one; the baseline and steered replies are those of a run without it."""
    from app.cli import main
    from app.quality.run import reference_prompt

    args = ["quality", "--model", MODEL_ID, "--device", "cpu", "--heldout", str(sandbox / "heldout")]
    args += ["--max-new-tokens", "8", "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)["concepts"][0]
    assert "prompted_moved" not in plain and all("prompted" not in p for p in plain["pairs"])

    assert main([*args, "--prompted"]) == 0
    told = json.loads(capsys.readouterr().out)["concepts"][0]
    for before, after in zip(plain["pairs"], told["pairs"], strict=True):
        assert (after["baseline"], after["steered"]) == (before["baseline"], before["steered"])
        reply = after["prompted"]
        assert reply["text"] and reply["perplexity"] > 0
        assert reply["moved"] == (reply["score"] > after["baseline_score"])  # word list, margin 0
        assert reply["degenerate"] == (reply["repetitive"] or reply["word_salad"])
    assert told["prompted_moved"] == sum(p["prompted"]["moved"] for p in told["pairs"])
    assert told["prompted_degenerate"] == sum(p["prompted"]["degenerate"] for p in told["pairs"])

    # The told reply is the model's own reply to the templated prompt, as `generate --no-chat` gives it.
    ocean = json.loads((sandbox / "heldout" / "concepts" / "ocean.json").read_text(encoding="utf-8"))
    first = told["pairs"][0]
    prompt = reference_prompt(tokenizer, ocean["description"], first["question"])
    generate = ["generate", prompt, "--model", MODEL_ID, "--device", "cpu", "--no-chat", "--max-new-tokens", "8"]
    assert main([*generate, "--json"]) == 0
    assert first["prompted"]["text"] == json.loads(capsys.readouterr().out)["steered"]  # no --steer: plain

    assert main([a for a in args if a != "--json"] + ["--prompted"]) == 0
    header, row = capsys.readouterr().out.splitlines()[1:3]
    assert "told" in header and row.count("/2") == 4


def test_reference_prompt_puts_the_description_in_the_system_turn(tokenizer):
    from app.quality.run import reference_prompt

    text = reference_prompt(tokenizer, "  The ocean: waves and tides. ", "Describe your morning routine.")
    system = text.index("You are The ocean: waves and tides. Always answer in character.")
    assert system < text.index("Describe your morning routine.")
    assert text.count("<|im_start|>system") == 1 and text.rstrip().endswith("<|im_start|>assistant")


def test_prompted_needs_a_chat_model(tmp_path):
    from types import SimpleNamespace

    from app.quality.run import run_quality

    base_model = SimpleNamespace(lm=SimpleNamespace(is_chat=False, model_id="gemma-3-270m"))
    with pytest.raises(ValueError, match="gemma-3-270m has no chat template"):
        run_quality(base_model, tmp_path, prompted=True)  # before anything is read or built


def test_rows_beyond_the_batch_limit_go_in_further_calls():
    from types import SimpleNamespace

    from app.quality.run import _generate_all

    calls = []

    def generate(rows):
        calls.append(list(rows))
        return [f"reply to {row}" for row in rows]

    lab = SimpleNamespace(batcher=SimpleNamespace(max_rows=16), generate=generate)
    rows = [f"row {i}" for i in range(24)]  # 8 questions x (baseline, steered, told)
    assert _generate_all(lab, rows) == [f"reply to {row}" for row in rows]
    assert [len(c) for c in calls] == [16, 8]


def test_table_marks_a_concept_that_was_not_told():
    """A concept without a description gets no told rows: '-' in the told columns, not 0/n."""
    from app.quality.run import ConceptResult, PairResult, PromptedReply, table

    def pair(told: PromptedReply | None) -> PairResult:
        return PairResult("Q?", "base", "steered", 0.0, 1.0, True, 2.0, 3.0, False, False, told)

    told = PromptedReply("told", 1.0, True, 4.0, True, False)
    results = [
        ConceptResult("ocean", "topic", "words", 8.0, [15], 1.0, [pair(told), pair(told)]),
        ConceptResult("mine", "topic", "words", 4.0, [10], 1.0, [pair(None), pair(None)]),
    ]
    header, ocean, mine = table(results).splitlines()
    assert "told" in header
    assert ocean.split()[2:4] == ["2/2", "0/2"] and ocean.split()[6:8] == ["2/2", "2/2"]
    assert mine.split()[6:8] == ["-", "-"]
    assert results[1].prompted_moved is None and "prompted_moved" not in results[1].to_json()
    assert "told" not in table(results[1:]).splitlines()[0]


def test_table_columns_stay_under_their_headers_for_any_number_of_questions():
    from app.quality.run import ConceptResult, PairResult, PromptedReply, table

    told = PromptedReply("told", 1.0, True, 4.0, False, False)
    pair = PairResult("Q?", "base", "steered", 0.0, 1.0, True, 2.0, 3.0, False, False, told)
    for n in (8, 24, 99):
        header, row = table([ConceptResult("ocean", "topic", "words", 8.0, [15], 1.0, [pair] * n)]).splitlines()
        for name, value in (("moved", f"{n}/{n}"), ("told", f"{n}/{n}")):
            assert row.index(value, header.index(name) - 2) + len(value) == header.index(name) + len(name)


@pytest.mark.parametrize(("k", "n"), [(0, 8), (3, 8), (6, 8), (8, 8), (0, 24), (15, 24), (24, 24), (1, 1)])
def test_rate_interval_is_the_wilson_interval(k, n):
    from scipy.stats import binomtest

    from app.quality.run import rate_interval

    expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert rate_interval(k, n) == pytest.approx((expected.low, expected.high), abs=1e-6)


@pytest.mark.parametrize(("k", "n"), [(1, 0), (-1, 8), (9, 8)])
def test_rate_interval_refuses_a_count_that_is_not_a_rate(k, n):
    from app.quality.run import rate_interval

    with pytest.raises(ValueError, match="a rate needs 0 <= k <= n"):
        rate_interval(k, n)


def test_table_and_json_give_the_moved_rate_with_its_interval():
    from app.quality.run import ConceptResult, PairResult, table

    def pair(moved: bool) -> PairResult:
        return PairResult("Q?", "base", "steered", 0.0, 1.0, moved, 2.0, 3.0, False, False)

    result = ConceptResult("ocean", "topic", "words", 8.0, [15], 1.0, [pair(True)] * 15 + [pair(False)] * 9)
    header, row = table([result]).splitlines()
    assert "moved rate, 95 %" in header and "0.62 (0.43-0.79)" in row
    assert result.to_json()["moved_interval"] == [0.427, 0.788]


def test_progress_spreads_each_concept_over_its_share_of_the_run(monkeypatch):
    from types import SimpleNamespace

    import app.quality.run as quality_run

    def judge(lab, path, scorer, questions, max_new_tokens, prompted, progress):
        progress(0.5, f"{path.stem} halfway")
        return SimpleNamespace(concept=path.stem)

    monkeypatch.setattr(quality_run, "judge_concept", judge)
    heard: list[tuple[float, str]] = []
    results = quality_run.run_quality(
        SimpleNamespace(), HELDOUT, only=["cowboy", "anxious"], progress=lambda f, m: heard.append((f, m))
    )
    assert [r.concept for r in results] == ["anxious", "cowboy"]  # the folder's order
    assert heard == [(0.25, "anxious halfway"), (0.75, "cowboy halfway")]
