"""The app's named endpoints, scripted with gradio_client against the served app (no browser).

Uses the session's app server from tests/browser/conftest.py (started once, shared with the
browser tests).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.browser.conftest import app_server, app_url  # noqa: F401  (session fixtures, one server)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # the first test waits for the server to start

POSITIVE = "I love sunny days.\nWhat a wonderful surprise!\nThis is the best news ever."
NEGATIVE = "I hate rainy days.\nWhat a terrible shock.\nThis is the worst news ever."


@pytest.fixture(scope="module")
def client(app_url):  # noqa: F811
    from gradio_client import Client

    return Client(app_url, verbose=False)


def _local_file(output) -> Path:
    """A file output as a local path (a component update wraps the file data in ``value``)."""
    if isinstance(output, dict) and output.get("__type__") == "update":
        output = output["value"]
    if isinstance(output, dict):
        path = Path(output["path"])
        if not path.is_file():  # not on this machine's disk: fetch it from the app
            import urllib.request

            path = Path(urllib.request.urlretrieve(output["url"])[0])
        return path
    return Path(output)


def test_named_endpoints_are_listed(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/generate", "/extract_concept", "/save_concept", "/refresh_concepts", "/try_in_playground"):
        assert name in endpoints


def test_generate_returns_baseline_and_steered_with_the_analysis(client):
    baseline, steered, status, headline, diff, plot = client.predict(
        "The meeting went", False, "happy", 9.0, "", 0.0, "", 0.0, "15", "all", 6, 0.0, 0, api_name="/generate"
    )
    assert baseline.strip() and steered.strip() and baseline != steered
    assert status.startswith("Done in") and "happy" in status
    assert "The texts part at" in headline
    labels = {segment["class_or_confidence"] for segment in diff}
    assert labels & {"baseline only", "steered only"}
    figure = json.loads(plot["plot"])
    assert len(figure["data"]) == 2 + 2 * 6  # two summary lines, a bar pair per step


def test_generate_rejects_an_out_of_range_layer(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="out of range"):
        client.predict("Hi", False, "happy", 4.0, "", 0.0, "", 0.0, "99", "all", 4, 0.0, 0, api_name="/generate")


def test_extract_gives_stats_and_loadable_downloads(client, app_server):  # noqa: F811
    from app.steering import control_vectors
    from app.steering.vectors import SteeringVector

    name = f"api_{uuid.uuid4().hex[:6]}"
    summary, separability, norms, sweep, st_file, gguf_file = client.predict(
        name, "made by the API test", POSITIVE, NEGATIVE, "mean_diff", api_name="/extract_concept"
    )
    assert "recommended layer" in summary and "recommended strength" in summary
    assert json.loads(separability["plot"])["data"] and json.loads(norms["plot"])["data"]
    assert json.loads(sweep["plot"])["data"]  # the recommendation sweep: effect and fluency against strength
    vector = SteeringVector.load(_local_file(st_file))
    assert vector.name == name and vector.hidden_size == 576 and len(vector.layers) == 30
    imported = control_vectors.load(_local_file(gguf_file), name=name, model_id="x", model_fingerprint="x")
    assert sorted(imported.layers) == vector.recommended_layers  # what the lab steers with, nothing more
    assert imported.metadata["made_for"]["strength"] == vector.recommended_strength


def test_save_writes_the_custom_concept_and_refresh_lists_it(client, app_server):  # noqa: F811
    from gradio_client.exceptions import AppError

    name = f"api_{uuid.uuid4().hex[:6]}"
    message = client.predict(name, "saved by the API test", POSITIVE, NEGATIVE, False, api_name="/save_concept")
    assert f"custom/{name}.json" in message
    saved = json.loads((app_server.concepts_dir / "custom" / f"{name}.json").read_text())
    assert saved["positive"] == POSITIVE.splitlines()
    first_row = client.predict(api_name="/refresh_concepts")[0]
    assert name in json.dumps(first_row)
    with pytest.raises(AppError, match="exists"):
        client.predict(name, "", POSITIVE, NEGATIVE, False, api_name="/save_concept")
    with pytest.raises(AppError, match="bad concept name"):
        client.predict("../../evil", "", POSITIVE, NEGATIVE, False, api_name="/save_concept")
    assert not list(app_server.root.rglob("evil*"))
