"""Property-based fuzzing of the loaders that read what users hand in: concept JSON and vector files.

Each loader gets at least 1,000 generated inputs (random bytes, random JSON, near-valid files with
one field wrong, valid files with bytes flipped, cut or added) and must either return a valid
object or raise its documented error (``ConceptError``, ``VectorFileError``), never anything else.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save, save_file

from app.steering import control_vectors
from app.steering.concepts import (
    MAX_EXAMPLE_CHARS,
    MAX_EXAMPLES,
    MIN_EXAMPLES,
    NAME_PATTERN,
    Concept,
    ConceptError,
    parse_concept_bytes,
)
from app.steering.vectors import SteeringVector, VectorFileError

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    database=None,  # nothing written to .hypothesis/ in the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- shared pieces ----------------------------------------------------------------------------

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12,
)


@st.composite
def mutated(draw, original: bytes) -> bytes:
    """``original`` with a few bytes flipped, cut, or added."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "truncate", "append"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut" and data:
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "truncate":
            del data[at:]
        else:
            data += draw(st.binary(max_size=64))
    return bytes(data)


def _reason(error: Exception) -> str:
    """The kind of refusal, for ``--hypothesis-show-statistics`` (numbers and quotes dropped)."""
    words = str(error).replace(":", " ").split()[1:6]
    return " ".join(w for w in words if not any(c.isdigit() or c in "'\"" for c in w))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# --- concept JSON -------------------------------------------------------------------------------

good_names = st.from_regex(NAME_PATTERN, fullmatch=True)
names = st.one_of(good_names, good_names, good_names, st.text(max_size=60), json_leaves)  # mostly valid: go deeper
sentences = st.one_of(st.text(min_size=1, max_size=60), st.text(max_size=3), st.integers(), st.none())
good_lists = st.lists(st.text(min_size=2, max_size=40), min_size=2, max_size=8, unique=True)
example_lists = st.one_of(good_lists, good_lists, good_lists, st.lists(sentences, max_size=8), json_values)
optional_fields = {
    "description": st.one_of(st.text(max_size=80), json_leaves),
    "category": st.one_of(st.sampled_from(["emotion", "style", "preference"]), json_values),
    "labels": st.one_of(
        st.dictionaries(st.sampled_from(["positive", "negative", "other"]), st.text(max_size=20)), json_values
    ),
    "prompts": st.one_of(st.lists(st.text(max_size=30), max_size=4), json_values),
    "extra": json_values,
}
concept_dicts = st.fixed_dictionaries(
    {"name": names, "positive": example_lists, "negative": example_lists}, optional=optional_fields
)
good_negatives = good_lists.map(lambda sentences: [f"not {s}" for s in sentences])  # rarely equal to a positive
nearly_valid_dicts = st.fixed_dictionaries(
    {"name": good_names, "positive": good_lists, "negative": good_negatives}, optional=optional_fields
)
VALID_CONCEPT = json.dumps(
    {
        "name": "ok",
        "description": "d",
        "category": "style",
        "positive": ["a b", "c d", "e f"],
        "negative": ["g h", "i j", "k l"],
        "labels": {"positive": "up", "negative": "down"},
        "prompts": ["Hi"],
    }
).encode()

concept_inputs = st.one_of(
    st.binary(max_size=400),
    json_values.map(lambda v: json.dumps(v).encode()),
    concept_dicts.map(lambda d: json.dumps(d).encode()),
    nearly_valid_dicts.map(lambda d: json.dumps(d).encode()),
    nearly_valid_dicts.map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    concept_dicts.map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    mutated(VALID_CONCEPT),
    st.sampled_from([b"\xef\xbb\xbf" + VALID_CONCEPT, b"[" * 5000, b'{"a":' * 3000, b"9" * 5000, b"", b"null"]),
)


def check_concept(concept: Concept) -> None:
    """What every loaded concept guarantees to the rest of the app."""
    assert isinstance(concept, Concept)
    assert NAME_PATTERN.fullmatch(concept.name)
    for side in (concept.positive, concept.negative):
        assert MIN_EXAMPLES <= len(side) <= MAX_EXAMPLES
        assert all(isinstance(s, str) and s == s.strip() and 0 < len(s) <= MAX_EXAMPLE_CHARS for s in side)
    assert not set(concept.positive) & set(concept.negative)
    assert set(concept.labels) <= {"positive", "negative"}
    text = json.dumps(concept.to_json(), ensure_ascii=False)
    text.encode("utf-8")  # it can be saved
    assert parse_concept_bytes(text.encode("utf-8"), source=concept.source) == concept  # and read back the same


@FUZZ
@given(raw=concept_inputs)
def test_concept_loader_returns_a_valid_concept_or_raises_concept_error(raw: bytes):
    try:
        concept = parse_concept_bytes(raw, source="fuzz")
    except ConceptError as error:
        assert str(error)  # a message, never an empty error
        event(f"refused: {_reason(error)}")
        return
    check_concept(concept)
    event("loaded")


# --- safetensors vectors ----------------------------------------------------------------------------

HIDDEN = 8
DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int8,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
]
tensor_names = st.one_of(
    st.integers(0, 40).map(lambda i: f"layer.{i}"),
    st.sampled_from(["layer.-1", "layer.x", "layer.", "layer.00001", "layer.١", "weight", "direction.3"]),
    st.text(min_size=1, max_size=12),
)


@st.composite
def tensors(draw) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.one_of(st.just((HIDDEN,)), st.lists(st.integers(0, 10), min_size=0, max_size=3).map(tuple)))
    values = draw(st.sampled_from(["zeros", "ones", "nan", "inf", "random"]))
    tensor = torch.zeros(shape, dtype=torch.float64)
    if values == "ones":
        tensor += 1
    elif values == "nan":
        tensor += float("nan")
    elif values == "inf":
        tensor += float("inf")
    elif values == "random":
        tensor = torch.randn(shape, dtype=torch.float64) * 1e3
    if dtype == torch.bool or not dtype.is_floating_point:
        tensor = torch.nan_to_num(tensor).clamp(-100, 100)
    return tensor.to(dtype).contiguous()


def _header(**changes) -> dict:
    header = {
        "format": "steering-lab-vector/1",
        "name": "v",
        "model_id": "m",
        "model_fingerprint": "f",
        "hidden_size": HIDDEN,
        "method": "mean_diff",
        "norms": {"1": 2.0, "2": 3.0},
        "metadata": {"recommended_layers": [1], "recommended_strength": 4.0},
    }
    header.update(changes)
    return header


header_fields = st.sampled_from(["name", "model_id", "model_fingerprint", "hidden_size", "method", "norms", "metadata"])
header_texts = st.one_of(
    st.builds(lambda: json.dumps(_header())),
    st.tuples(header_fields, json_values).map(lambda kv: json.dumps(_header(**{kv[0]: kv[1]}), allow_nan=True)),
    st.dictionaries(st.text(max_size=4), json_values, max_size=3).map(lambda d: json.dumps(_header(norms=d))),
    st.tuples(st.sampled_from(["recommended_layers", "recommended_strength"]), json_values).map(
        lambda kv: json.dumps(_header(metadata={kv[0]: kv[1]}), allow_nan=True)
    ),
    json_values.map(lambda v: json.dumps(v, allow_nan=True)),
    st.text(max_size=50),
)


def _valid_vector_bytes() -> bytes:
    layers = {f"layer.{i}": torch.randn(HIDDEN) for i in (1, 2)}
    return save(layers, metadata={"steering_lab": json.dumps(_header())})


@st.composite
def safetensors_files(draw) -> bytes:
    kind = draw(st.sampled_from(["structured"] * 3 + ["nearly valid"] * 3 + ["mutated"] * 2 + ["random", "header"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "nearly valid":  # a good vector with one thing changed: a field, an extra tensor, odd values
        layer_tensors = {
            f"layer.{i}": torch.randn(HIDDEN) for i in draw(st.sets(st.integers(0, 40), min_size=1, max_size=3))
        }
        if draw(st.booleans()):
            layer_tensors[draw(tensor_names)] = draw(tensors())
        header = draw(st.one_of(st.builds(lambda: json.dumps(_header())), header_texts))
        return save(layer_tensors, metadata={"steering_lab": header})
    if kind == "mutated":
        return draw(mutated(_valid_vector_bytes()))
    if kind == "header":  # a hand-made header: any length prefix, any JSON
        text = json.dumps(draw(json_values)).encode()
        size = draw(st.sampled_from([len(text), 0, 2**63, len(text) + 100, 7]))
        return struct.pack("<Q", size) + text + draw(st.binary(max_size=32))
    layer_tensors = draw(st.dictionaries(tensor_names, tensors(), max_size=4))
    metadata = {"steering_lab": draw(header_texts)} if draw(st.integers(0, 5)) else None
    return save(layer_tensors, metadata=metadata)


def check_vector(vector: SteeringVector) -> None:
    assert isinstance(vector, SteeringVector) and vector.layers and vector.hidden_size > 0
    for layer, direction in vector.layers.items():
        assert isinstance(layer, int) and layer >= 0
        assert direction.dtype == torch.float32 and direction.shape == (vector.hidden_size,)
        assert bool(torch.isfinite(direction).all())
    assert all(math.isfinite(n) and n >= 0 for n in vector.norms.values())
    assert all(layer in vector.layers for layer in vector.recommended_layers)
    assert math.isfinite(vector.recommended_strength)


@FUZZ
@given(raw=safetensors_files())
def test_vector_loader_returns_a_valid_vector_or_raises_vector_file_error(raw: bytes, scratch: Path):
    path = scratch / "fuzz.safetensors"
    path.write_bytes(raw)
    try:
        vector = SteeringVector.load(path)
    except VectorFileError as error:
        assert str(error).startswith("fuzz.safetensors")  # names the file
        event(f"refused: {_reason(error)}")
        return
    check_vector(vector)
    event("loaded")
    if vector.norms.keys() >= vector.layers.keys():
        for layer in vector.layers:  # the engine can use it
            assert bool(torch.isfinite(vector.delta(layer, 1.0)).all())


# --- llama.cpp control vectors (GGUF) -----------------------------------------------------------------

GGUF_DTYPES = [np.float32, np.float16, np.float64, np.int8, np.int16, np.int32]


def _gguf_bytes(path: Path, arrays: dict[str, np.ndarray], kv: dict[str, object]) -> bytes:
    import gguf

    writer = gguf.GGUFWriter(path, "controlvector")
    for key, value in kv.items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float64(key, value)
        elif isinstance(value, list):
            writer.add_array(key, value)
        else:
            writer.add_uint32(key, value)
    for name, array in arrays.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


gguf_names = st.one_of(
    st.integers(0, 40).map(lambda i: f"direction.{i}"),
    st.sampled_from(["direction.x", "direction.", "direction.-1", "layer.1", "direction.99999"]),
    st.text(alphabet="abcdefghij.0123456789", min_size=1, max_size=12),
)


@st.composite
def gguf_arrays(draw) -> np.ndarray:
    dtype = draw(st.sampled_from(GGUF_DTYPES))
    shape = draw(st.one_of(st.just((HIDDEN,)), st.lists(st.integers(1, 9), min_size=1, max_size=2).map(tuple)))
    fill = draw(st.sampled_from([0.0, 1.0, float("nan"), float("inf"), "random"]))
    array = np.random.default_rng(0).normal(size=shape) if fill == "random" else np.full(shape, fill)
    if not np.issubdtype(dtype, np.floating):
        array = np.nan_to_num(array, posinf=1, neginf=-1)
    return array.astype(dtype)


@pytest.fixture(scope="module")
def valid_gguf(scratch) -> bytes:
    return _gguf_bytes(
        scratch / "valid.gguf",
        {f"direction.{i}": np.ones(HIDDEN, np.float32) for i in (1, 2)},
        {
            "controlvector.model_hint": "llama",
            "controlvector.layer_count": 2,
            "steering_lab.model_fingerprint": "f",
            "steering_lab.layers": [1, 2],
            "steering_lab.strength": 4.0,
        },
    )


@st.composite
def gguf_files(draw, scratch: Path, valid: bytes) -> bytes:
    kind = draw(st.sampled_from(["structured", "structured", "mutated", "mutated", "random"]))
    if kind == "random":
        prefix = draw(st.sampled_from([b"", b"GGUF", b"GGUF\x03\x00\x00\x00"]))
        return prefix + draw(st.binary(max_size=300))
    if kind == "mutated":
        return draw(mutated(valid))
    arrays = draw(st.dictionaries(gguf_names, gguf_arrays(), max_size=4))
    kv = draw(
        st.dictionaries(
            st.sampled_from(
                ["controlvector.model_hint", "controlvector.layer_count", "x.y"]
                + [f"steering_lab.{k}" for k in ("model_fingerprint", "model_id", "layers", "strength", "unit")]
            ),
            st.one_of(
                st.text(max_size=10),
                st.sampled_from(["f", "another"]),
                st.integers(0, 2**32 - 1),
                st.floats(allow_nan=True, allow_infinity=True),
                st.lists(st.integers(0, 2**31 - 1), max_size=3),
            ),
            max_size=4,
        )
    )
    return _gguf_bytes(scratch / "structured.gguf", arrays, kv)


@FUZZ
@given(data=st.data())
def test_gguf_loader_returns_a_valid_vector_or_raises_vector_file_error(data, scratch: Path, valid_gguf: bytes):
    raw = data.draw(gguf_files(scratch, valid_gguf))
    path = scratch / "fuzz.gguf"
    path.write_bytes(raw)
    try:
        vector = control_vectors.load(path, name="fuzz", model_id="m", model_fingerprint="f", expect_fingerprint="f")
    except VectorFileError as error:
        assert str(error).startswith("fuzz.gguf")
        event(f"refused: {_reason(error)}")
        return
    check_vector(vector)
    event("loaded")
    assert vector.method == "gguf"
    assert vector.recommended_layers == sorted(vector.layers) and vector.recommended_strength == 1.0
    assert vector.metadata["made_for"].get("model_fingerprint", "f") == "f"  # another model's file is refused


def test_the_fuzzers_reach_the_good_paths(scratch, valid_gguf):
    """The generators can make valid inputs, so the properties above are not vacuous."""
    concept = parse_concept_bytes(VALID_CONCEPT)
    check_concept(concept)
    path = scratch / "valid.safetensors"
    path.write_bytes(_valid_vector_bytes())
    check_vector(SteeringVector.load(path))
    (scratch / "good.gguf").write_bytes(valid_gguf)
    check_vector(control_vectors.load(scratch / "good.gguf", name="g", model_id="m", model_fingerprint="f"))
    save_file({"layer.1": torch.ones(HIDDEN)}, scratch / "headerless.safetensors")
    with pytest.raises(VectorFileError, match="not a Steering Lab vector"):
        SteeringVector.load(scratch / "headerless.safetensors")
