"""SteeringVector arithmetic and file formats: exact round trips, clear refusals."""

from __future__ import annotations

import pickle

import pytest
import torch

from app.steering import control_vectors
from app.steering.vectors import SteeringVector, VectorFileError


def make(name="happy", fingerprint="fp1", seed=0, layers=(0, 1, 2), hidden=8) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector(
        name=name,
        model_id="tiny",
        model_fingerprint=fingerprint,
        hidden_size=hidden,
        layers={layer: torch.randn(hidden, generator=generator) for layer in layers},
        norms={layer: 10.0 + layer for layer in layers},
        metadata={"recommended_layers": [1], "recommended_strength": 3.5, "stats": {"accuracy": [0.5, 1.0, 0.9]}},
    )


def test_arithmetic_identities():
    a, b = make("a", seed=1), make("b", seed=2)
    for layer in a.layers:
        assert torch.equal((a + b).layers[layer], a.layers[layer] + b.layers[layer])
        assert torch.equal((a - b).layers[layer], a.layers[layer] - b.layers[layer])
        assert torch.equal((a * 2).layers[layer], a.layers[layer] * 2)
        assert torch.equal((2 * a).layers[layer], (a * 2).layers[layer])
        assert torch.equal((-a).layers[layer], -a.layers[layer])
        assert torch.allclose((a * 2 - a).layers[layer], a.layers[layer])
    assert (a * 2 - b).name == "(2*a - b)"
    assert a.layers[0] is not (a + b).layers[0]  # new objects, operands untouched


def test_arithmetic_unions_layers_and_refuses_other_models():
    a, b = make("a", layers=(0, 1)), make("b", seed=3, layers=(1, 2))
    total = a + b
    assert sorted(total.layers) == [0, 1, 2]
    assert torch.equal(total.layers[2], b.layers[2])
    with pytest.raises(ValueError, match="different models"):
        a + make("c", fingerprint="other")


def test_save_load_round_trip_is_exact(tmp_path):
    vector = make()
    path = vector.save(tmp_path / "happy.safetensors")
    loaded = SteeringVector.load(path, expect_fingerprint="fp1", expect_hidden_size=8)
    assert loaded.name == "happy" and loaded.method == vector.method and loaded.norms == vector.norms
    assert loaded.metadata == vector.metadata
    assert all(torch.equal(loaded.layers[k], vector.layers[k]) for k in vector.layers)
    assert not list(tmp_path.glob(".*.tmp"))


def test_load_refuses_another_model(tmp_path):
    path = make().save(tmp_path / "v.safetensors")
    with pytest.raises(VectorFileError, match=r"\(hidden size 8\); the loaded model has hidden size 16"):
        SteeringVector.load(path, expect_hidden_size=16)
    with pytest.raises(VectorFileError, match="another model"):
        SteeringVector.load(path, expect_fingerprint="fp2")


def test_load_never_unpickles(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(VectorFileError, match="not a readable safetensors file"):
        SteeringVector.load(path)
    torch_file = tmp_path / "vector.pt"
    torch.save({"layer.0": torch.zeros(8)}, torch_file)
    with pytest.raises(VectorFileError):
        SteeringVector.load(torch_file)


def test_foreign_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, path)
    with pytest.raises(VectorFileError, match="not a Steering Lab vector"):
        SteeringVector.load(path)


def test_gguf_holds_exactly_the_chosen_layers_with_the_strength_baked_in(tmp_path):
    vector = make(layers=(0, 1, 2, 3))
    path = control_vectors.save(vector, tmp_path / "happy.gguf", 2.0, [3, 1])
    back = control_vectors.load(path, name="happy", model_id="tiny", model_fingerprint="fp1", expect_fingerprint="fp1")
    assert sorted(back.layers) == [1, 3]  # not layer 2, not layer 0
    for layer in (1, 3):
        assert torch.equal(back.delta(layer, 1.0, "raw"), vector.delta(layer, 2.0))  # exact: F32 both ways
    assert back.recommended_layers == [1, 3] and back.recommended_strength == 1.0
    made_for = back.metadata["made_for"]
    assert made_for == {
        "concept": "happy",
        "model_id": "tiny",
        "model_fingerprint": "fp1",
        "layers": [1, 3],
        "strength": 2.0,
        "unit": "normalized",
    }


def test_gguf_reader_matches_llama_cpp_layout(tmp_path):
    import gguf

    path = control_vectors.save(make(), tmp_path / "v.gguf", 1.0, [2])
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.layer_count"].contents() == 1
    assert [(t.name, t.tensor_type.name, tuple(t.shape)) for t in reader.tensors] == [("direction.2", "F32", (8,))]


def test_gguf_refuses_layer_zero_and_missing_layers(tmp_path):
    with pytest.raises(ValueError, match="cannot steer layer 0: llama.cpp adds direction.N"):
        control_vectors.save(make(), tmp_path / "v.gguf", 1.0, [0, 1])
    with pytest.raises(ValueError, match="has no layer 7"):
        control_vectors.save(make(), tmp_path / "v.gguf", 1.0, [7])
    assert not (tmp_path / "v.gguf").exists()


def test_gguf_for_another_model_is_refused(tmp_path):
    path = control_vectors.save(make(fingerprint="fp1"), tmp_path / "v.gguf", 1.0, [1])
    with pytest.raises(VectorFileError, match="made for another model"):
        control_vectors.load(path, name="v", model_id="m", model_fingerprint="fp2", expect_fingerprint="fp2")
    with pytest.raises(VectorFileError, match="has hidden size 8; the model has 16"):
        control_vectors.load(path, name="v", model_id="m", model_fingerprint="fp1", expect_hidden_size=16)


def test_third_party_control_vector_steers_every_layer_it_holds(tmp_path):
    """repeng writes direction.1..N-1 and two keys; importing keeps all of them, as llama.cpp would."""
    import gguf
    import numpy as np

    path = tmp_path / "repeng.gguf"
    writer = gguf.GGUFWriter(path, "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 3)
    for layer in (1, 2, 3):
        writer.add_tensor(f"direction.{layer}", np.full(8, layer, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    back = control_vectors.load(path, name="r", model_id="m", model_fingerprint="f", expect_fingerprint="f")
    assert back.recommended_layers == [1, 2, 3] and back.metadata["made_for"] == {}
    assert torch.equal(back.delta(3, 1.0, "raw"), torch.full((8,), 3.0))


def test_not_a_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"not gguf at all")
    with pytest.raises(VectorFileError, match="not a readable GGUF"):
        control_vectors.load(path, name="x", model_id="m", model_fingerprint="f")
