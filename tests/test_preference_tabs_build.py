"""The SELECT, CALIBRATE and LEARN tabs lay out and wire up without a model (fake lab)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from app.steering.concepts import Concept
from app.ui.calibrate import build_calibrate_tab
from app.ui.learn import build_learn_tab
from app.ui.select import build_select_tab


def fake_holder(concepts: dict[str, Concept]):
    library = SimpleNamespace(concepts=lambda: concepts, cached=lambda name: None)
    return SimpleNamespace(lab=SimpleNamespace(library=library, lm=SimpleNamespace(model_id="fake")))


def preference(name: str, negative: str, positive: str) -> Concept:
    return Concept(
        name=name,
        description="",
        positive=("p",),
        negative=("n",),
        category="preference",
        labels={"positive": positive, "negative": negative},
    )


def test_the_tabs_build_with_one_slider_per_dimension_and_named_endpoints():
    holder = fake_holder({"cost": preference("cost", "budget", "luxury"), "age": preference("age", "kids", "adults")})
    with gr.Blocks() as demo:
        for build in (build_select_tab, build_calibrate_tab, build_learn_tab):
            with gr.Tab(build.__name__):
                build(holder)
    sliders = [
        b for b in demo.blocks.values() if isinstance(b, gr.Slider) and (b.elem_id or "").startswith("sel-slider")
    ]
    assert [s.label for s in sliders] == ["budget ◀ cost ▶ luxury", "kids ◀ age ▶ adults"]
    names = {d.api_name for d in demo.fns.values() if d.api_name}
    for endpoint in (
        "select_chat",
        "calibrate_start",
        "calibrate_pair",
        "calibrate_choose",
        "calibrate_chat",
        "learn_chat",
    ):
        assert endpoint in names


def test_without_preference_concepts_the_tabs_say_so():
    holder = fake_holder({"happy": Concept(name="happy", description="", positive=("a",), negative=("b",))})
    with gr.Blocks() as demo:
        assert build_select_tab(holder) is None
        assert build_learn_tab(holder) is None
    notes = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown)]
    assert any("No preference dimensions" in (n or "") for n in notes)


def test_the_playgrounds_first_strength_is_read_again_on_each_page_load():
    # A page built before the library swept the opening concept shows the fallback; a page opened
    # after that shows the recommendation (gradio calls a callable value on every load).
    from app.steering.vectors import DEFAULT_STRENGTH
    from app.ui.playground import DEFAULT_CONCEPT, build_playground_tab

    built: dict[str, SimpleNamespace] = {}
    holder = fake_holder(
        {DEFAULT_CONCEPT: Concept(name=DEFAULT_CONCEPT, description="", positive=("a",), negative=("b",))}
    )
    holder.lab.library.cached = built.get
    holder.lab.lm.n_layers = 4
    with gr.Blocks() as demo:
        build_playground_tab(holder)
    (slider,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "pg-strength-1"]
    assert slider.value == DEFAULT_STRENGTH
    load = slider.load_event_to_attach[0]
    built[DEFAULT_CONCEPT] = SimpleNamespace(recommended_strength=7.5)
    assert load() == 7.5


def test_an_untouched_playground_form_moves_to_the_opening_recommendation_once_swept():
    # A timer asks every few seconds; once the background build has swept the opening concept, the
    # first row's strength and the note under the rows show its recommendation, and the timer stops.
    from app.steering.vectors import DEFAULT_STRENGTH
    from app.ui.playground import DEFAULT_CONCEPT, build_playground_tab

    built: dict[str, SimpleNamespace] = {}
    holder = fake_holder(
        {DEFAULT_CONCEPT: Concept(name=DEFAULT_CONCEPT, description="", positive=("a",), negative=("b",))}
    )
    holder.lab.library.cached = built.get
    holder.lab.library.status = "building"
    holder.lab.lm.n_layers = 4
    with gr.Blocks() as demo:
        parts = build_playground_tab(holder)
    (timer,) = [b for b in demo.blocks.values() if isinstance(b, gr.Timer)]
    (tick,) = [d for d in demo.fns.values() if any(target[0] == timer._id for target in d.targets)]
    assert tick.inputs == [parts.concepts[0], parts.strengths[0]]
    assert tick.outputs == [parts.strengths[0], parts.note, timer]

    assert tick.fn(DEFAULT_CONCEPT, DEFAULT_STRENGTH) == (gr.skip(), gr.skip(), gr.skip())  # not built yet
    built[DEFAULT_CONCEPT] = SimpleNamespace(name=DEFAULT_CONCEPT, recommended_strength=7.5, recommended_layers=[2])
    strength, note, stop = tick.fn(DEFAULT_CONCEPT, DEFAULT_STRENGTH)
    assert strength == 7.5 and note == f"**{DEFAULT_CONCEPT}**: recommended layer 2, strength 7.5."
    assert isinstance(stop, gr.Timer) and stop.active is False
    # a form the user changed is left alone, and the timer stops
    strength, note, stop = tick.fn(DEFAULT_CONCEPT, 6.0)
    assert strength == gr.skip() and note == gr.skip() and stop.active is False
