"""Faults: a process killed mid-write, a corrupt cache, a full disk, a layer that raises mid-generation.

Kill -9: a fork server (one process that imports torch and loads a tiny model once) forks a
worker that saves the same file over and over, each save a new version, reporting each one
it finished; the test kills the worker at a random moment and checks the file is exactly the
last version reported or the one being written: old or new, never corrupt. Writes go through a
slow fsync (a slow disk) so that many kills land between the temp file and the rename.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from app import storage
from app.preferences.profiles import Profile, list_profiles, load_profile, save_profile
from app.steering.concepts import Concept, ConceptError, load_all, load_concept_file, save_custom
from app.steering.engine import Steer, Steering
from app.steering.generation import GenerationRequest
from app.steering.library import Settings, VectorLibrary
from app.steering.vectors import SteeringVector
from app.storage import REPO_ROOT, StorageError
from tests.reliability_support import make_sandbox, save_tiny_model

KILLS = {"concept": 12, "profile": 12, "library": 8}
KILL_WINDOW_S = {"concept": (0.0, 0.5), "profile": (0.0, 0.4), "library": (0.05, 2.0)}

FORK_SERVER = textwrap.dedent(
    r"""
    import dataclasses, os, random, sys, time
    sys.path.insert(0, sys.argv[1])
    import torch
    torch.set_num_threads(1)
    from app.steering.concepts import Concept, save_custom
    from app.lab import Lab
    from app.models.loading import load_model
    from app.preferences.profiles import Profile, save_profile
    from app.steering.library import default_settings

    model_dir, root = sys.argv[2], sys.argv[3]
    lab = Lab(load_model(model_dir, device="cpu"), concepts_root=f"{root}/concepts", cache_root=f"{root}/vectors")
    real_fsync = os.fsync

    def slow_fsync(fd):  # a slow disk: widen the window between writing the temp file and renaming it
        time.sleep(random.uniform(0, 0.03))
        real_fsync(fd)

    def report(version):
        os.write(1, f"wrote {version}\n".encode())

    def concept_worker(version):
        body = [f"Sentence {i} of a long classroom concept, padded {'.' * 200}" for i in range(400)]
        while True:
            concept = Concept(name="classroom", description=f"version {version}", positive=tuple(f"{s} +" for s in body),
                              negative=tuple(f"{s} -" for s in body))
            save_custom(concept, f"{root}/concepts", overwrite=True)
            report(version)
            version += 1

    def profile_worker(version):
        while True:
            profile = Profile(name="alice", model_id=f"version {version}")
            profile.set("cost", version % 100, "select")
            save_profile(profile, f"{root}/profiles")
            report(version)
            version += 1

    # Built once here, so a worker spends its time saving, not extracting and sweeping: the kills
    # must land in writes whatever a build costs on this machine.
    built = lab.library.build(lab.library.concepts()["happy"])

    def library_worker(version):
        library = lab.library

        def stamped_build(*args, **kwargs):
            vector = dataclasses.replace(built, metadata={**built.metadata, "version": stamped_build.version})
            return vector

        stamped_build.version = version
        library.extract = lambda *args, **kwargs: built  # the library's own path, without the work
        library.recommend = stamped_build
        concept = library.concepts()["happy"]
        path = library.path_for(concept, default_settings(concept))
        if path.exists():  # rebuild what is there, as the library does for a stale file
            vector = stamped_build(concept)
            vector.save(path)
        else:
            library.get("happy")  # the library's own path: extract, recommend, then save
        while True:
            report(stamped_build.version)
            stamped_build.version += 1
            stamped_build(concept).save(path)

    WORKERS = {"concept": concept_worker, "profile": profile_worker, "library": library_worker}
    print("ready", flush=True)
    for line in sys.stdin:
        kind, version = line.split()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os.fsync = slow_fsync
            random.seed(os.getpid())
            try:
                WORKERS[kind](int(version))
            except BaseException as error:
                os.write(1, f"error {error!r}\n".encode())
            os._exit(1)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"reaped {status}", flush=True)
    """
)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    root = make_sandbox(tmp_path_factory.mktemp("faults"))
    save_tiny_model(root / "tiny-model")
    return root


@pytest.fixture(scope="module")
def fork_server(sandbox):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", FORK_SERVER, str(REPO_ROOT), str(sandbox / "tiny-model"), str(sandbox)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert process.stdout.readline().strip() == "ready"
    yield process
    process.kill()
    process.wait(timeout=30)


def kill_mid_write(server: subprocess.Popen, kind: str, first_version: int, rng: random.Random) -> list[int]:
    """Start a worker saving versions from ``first_version``, SIGKILL it at a random moment;
    return the versions it reported as saved."""
    server.stdin.write(f"{kind} {first_version}\n")
    server.stdin.flush()
    line = server.stdout.readline().split()
    assert line[0] == "pid", line
    pid = int(line[1])
    threading.Event().wait(rng.uniform(*KILL_WINDOW_S[kind]))
    os.kill(pid, signal.SIGKILL)
    saved = []
    while True:
        line = server.stdout.readline()
        assert line, "the fork server died"
        word, _, rest = line.strip().partition(" ")
        if word == "wrote":
            saved.append(int(rest))
        elif word == "reaped":
            assert os.WIFSIGNALED(int(rest)) and os.WTERMSIG(int(rest)) == signal.SIGKILL
            return saved
        else:
            pytest.fail(f"worker failed: {line}")


def _temps(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp")) if folder.exists() else []


def _run_kills(server, kind: str, read_version, folder: Path, seed: int) -> dict:
    """Kill ``KILLS[kind]`` workers; after each, the file holds the last saved version or the next."""
    rng = random.Random(seed)
    last: int | None = None
    stats = {"kills": 0, "mid_write": 0, "versions_seen": set()}
    for round_ in range(KILLS[kind]):
        first = round_ * 100_000
        saved = kill_mid_write(server, kind, first, rng)
        temps_before = len(_temps(folder))
        next_version = saved[-1] + 1 if saved else first
        if saved:
            last = saved[-1]
        found = read_version()  # raises if the file is corrupt
        assert found in {last, next_version}, (
            f"round {round_}: file has version {found}, expected {last} or {next_version}"
        )
        stats["kills"] += 1
        stats["versions_seen"].add(found)
        stats["mid_write"] = temps_before  # temp files left behind = kills between write and rename
        last = found
    return stats


def test_kill_during_concept_save_leaves_old_or_new(fork_server, sandbox):
    path = sandbox / "concepts" / "custom" / "classroom.json"

    def read_version() -> int | None:
        if not path.exists():
            return None
        concept = load_concept_file(path)
        assert len(concept.positive) == 400
        return int(concept.description.removeprefix("version "))

    stats = _run_kills(fork_server, "concept", read_version, path.parent, seed=1)
    assert stats["kills"] == KILLS["concept"] and len(stats["versions_seen"]) > 1
    assert "classroom" in load_all(sandbox / "concepts")  # leftover temp files are ignored
    print(f"concept save: {stats['kills']} kills, {stats['mid_write']} landed mid-write, no corrupt file")


def test_kill_during_profile_save_leaves_old_or_new(fork_server, sandbox):
    folder = sandbox / "profiles"

    def read_version() -> int | None:
        if not (folder / "alice.json").exists():
            return None
        profile = load_profile("alice", folder)
        version = int(profile.model_id.removeprefix("version "))
        assert profile.dimensions["cost"]["value"] == version % 100
        return version

    stats = _run_kills(fork_server, "profile", read_version, folder, seed=2)
    assert stats["kills"] == KILLS["profile"] and len(stats["versions_seen"]) > 1
    assert list_profiles(folder) == ["alice"]
    print(f"profile save: {stats['kills']} kills, {stats['mid_write']} landed mid-write, no corrupt file")


def test_kill_during_library_build_leaves_old_or_new(fork_server, sandbox, monkeypatch):
    from app.models.loading import load_model

    lm = load_model(str(sandbox / "tiny-model"), device="cpu")
    from app.lab import Lab

    lab = Lab(lm, concepts_root=sandbox / "concepts", cache_root=sandbox / "vectors")
    concept = lab.library.concepts()["happy"]
    path = lab.library.path_for(concept, Settings())

    def read_version() -> int | None:
        if not path.exists():
            return None
        vector = SteeringVector.load(path, expect_fingerprint=lm.fingerprint, expect_hidden_size=lm.hidden_size)
        return int(vector.metadata["version"])

    stats = _run_kills(fork_server, "library", read_version, path.parent, seed=3)
    assert stats["kills"] == KILLS["library"] and path.exists()
    # a new start loads the file as it is, without rebuilding
    fresh = Lab(lm, concepts_root=sandbox / "concepts", cache_root=sandbox / "vectors").library
    monkeypatch.setattr(fresh, "extract", lambda *a, **k: pytest.fail("a good cache file was rebuilt"))
    assert fresh.load_cached() == 1 and fresh.get("happy").metadata["version"] == read_version()
    print(f"library build: {stats['kills']} kills, {stats['mid_write']} landed mid-write, no corrupt file")


def test_stale_temp_files_of_killed_writers_are_swept(tmp_path):
    target = tmp_path / "notes.json"
    stale, fresh = tmp_path / ".notes.json.abc.tmp", tmp_path / ".notes.json.def.tmp"
    stale.write_text("half a fi")
    fresh.write_text("being written")
    old = stale.stat().st_mtime - storage.STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    storage.atomic_write_json(target, {"ok": True})
    assert not stale.exists() and fresh.exists()  # a temp file that may be in use is left alone
    assert json.loads(target.read_text()) == {"ok": True}


# --- corrupt cache files ---------------------------------------------------------------------


@pytest.fixture
def tiny_lab(sandbox, tmp_path):
    from app.lab import Lab
    from app.models.loading import load_model

    return Lab(
        load_model(str(sandbox / "tiny-model"), device="cpu"),
        concepts_root=sandbox / "concepts",
        cache_root=tmp_path / "vectors",
    )


CORRUPTIONS = ["truncated", "header byte flipped", "zeros", "empty", "NaN in the data", "a pickle"]


def _corruptions(good: bytes) -> dict[str, bytes]:
    header_end = 8 + int.from_bytes(good[:8], "little")
    flipped = bytearray(good)
    flipped[header_end // 2] ^= 0xFF
    nan = bytearray(good)
    nan[header_end : header_end + 4] = bytes.fromhex("0000c07f")  # a float32 NaN in the first tensor
    return {
        "truncated": good[: len(good) // 2],
        "header byte flipped": bytes(flipped),
        "zeros": bytes(len(good)),
        "empty": b"",
        "NaN in the data": bytes(nan),
        "a pickle": b"\x80\x04\x95" + good[3:64],
    }


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_corrupt_cache_file_is_detected_and_rebuilt(kind, tiny_lab, caplog):
    library = tiny_lab.library
    good = library.get("happy")
    path = library.path_for(library.concepts()["happy"], Settings())
    path.write_bytes(_corruptions(path.read_bytes())[kind])
    from app.lab import Lab

    fresh = Lab(tiny_lab.lm, concepts_root=library.concepts_root, cache_root=library.folder.parent).library
    with caplog.at_level(logging.WARNING):
        assert fresh.load_cached() == 0  # detected: not loaded
        rebuilt = fresh.get("happy")
    assert "rebuild" in caplog.text
    assert all(torch.equal(rebuilt.layers[k], good.layers[k]) for k in good.layers)
    assert SteeringVector.load(path).layers.keys() == good.layers.keys()  # the file is good again


# --- failed writes -----------------------------------------------------------------------------


def _disk_full(monkeypatch):
    def replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)


def _concept(version: int) -> Concept:
    return Concept(name="mine", description=f"version {version}", positive=("a b", "c d"), negative=("e f", "g h"))


def test_a_full_disk_keeps_the_previous_concept(tmp_path, monkeypatch):
    root = tmp_path / "concepts"
    path = save_custom(_concept(1), root)
    before = path.read_bytes()
    _disk_full(monkeypatch)
    with pytest.raises(
        StorageError, match="could not write mine.json: No space left on device; the previous file is kept"
    ):
        save_custom(_concept(2), root, overwrite=True)
    assert path.read_bytes() == before and not _temps(path.parent)


def test_a_full_disk_keeps_the_previous_profile(tmp_path, monkeypatch):
    profile = Profile(name="bob")
    profile.set("cost", 10, "select")
    path = save_profile(profile, tmp_path)
    before = path.read_bytes()
    profile.set("cost", 90, "learn")
    _disk_full(monkeypatch)
    with pytest.raises(OSError, match="No space left on device"):
        save_profile(profile, tmp_path)
    assert path.read_bytes() == before and load_profile("bob", tmp_path).dimensions["cost"]["value"] == 10
    assert not _temps(tmp_path)


def test_a_full_disk_keeps_the_previous_vector_and_the_library_still_answers(tiny_lab, monkeypatch, caplog):
    library = tiny_lab.library
    vector = library.get("happy")
    path = library.path_for(library.concepts()["happy"], Settings())
    before = path.read_bytes()
    _disk_full(monkeypatch)
    with pytest.raises(StorageError, match="No space left on device; the previous file is kept"):
        (vector * 2).save(path)
    assert path.read_bytes() == before
    path.unlink()
    fresh = VectorLibrary(
        tiny_lab.engine,
        tiny_lab.lm.tokenizer,
        model_id="tiny",
        fingerprint=tiny_lab.lm.fingerprint,
        concepts_root=library.concepts_root,
        root=library.folder.parent,
    )
    with caplog.at_level(logging.WARNING):
        rebuilt = fresh.get("happy")  # built, not cached, and the lesson goes on
    assert "could not cache" in caplog.text and not path.exists()
    assert torch.equal(rebuilt.layers[1], vector.layers[1])


def test_a_file_where_the_folder_should_be_is_reported(tmp_path):
    (tmp_path / "concepts").mkdir()
    (tmp_path / "concepts" / "custom").write_text("I am a file")
    with pytest.raises(StorageError, match="custom is a file, not a folder; the previous file is kept"):
        save_custom(_concept(1), tmp_path / "concepts")


def test_two_students_saving_one_new_name_do_not_overwrite_each_other(tmp_path):
    root = tmp_path / "concepts"
    results: list[object] = []
    barrier = threading.Barrier(8)

    def save(i: int) -> None:
        barrier.wait()
        try:
            results.append(save_custom(_concept(i), root))
        except ConceptError as error:
            results.append(error)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    saved = [r for r in results if isinstance(r, Path)]
    refused = [r for r in results if isinstance(r, ConceptError)]
    assert len(saved) == 1 and len(refused) == 7
    assert all("exists; choose another name" in str(r) for r in refused)


def test_cli_export_on_a_full_disk_reports_and_keeps_the_previous_file(sandbox, tmp_path, monkeypatch, capsys):
    from app.cli import main

    monkeypatch.setenv("STEERING_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STEERING_LAB_CONCEPTS", str(sandbox / "concepts"))
    out = tmp_path / "happy.safetensors"
    argv = ["export", "happy", "--model", str(sandbox / "tiny-model"), "--format", "safetensors", "--out", str(out)]
    assert main(argv) == 0
    before = out.read_bytes()
    real_replace = os.replace

    def replace(src, dst):  # the cache write works; the export hits a full disk
        if Path(dst) == out:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "error: could not write happy.safetensors: No space left on device; the previous file is kept" in err
    assert out.read_bytes() == before


# --- an exception in the middle of generation -----------------------------------------------------


class InjectedFault(RuntimeError):
    pass


def _fail_on_call(module: torch.nn.Module, call: int):
    """Make ``module`` raise on its ``call``-th forward (1-based): a fault mid-generation."""
    real_forward = module.forward
    count = {"n": 0}

    def forward(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            raise InjectedFault(f"injected fault on forward call {call}")
        return real_forward(*args, **kwargs)

    module.forward = forward
    return lambda: delattr(module, "forward")


def test_an_exception_mid_generation_leaves_no_hook_and_the_next_request_is_unsteered(tiny_lab):
    lab, engine = tiny_lab, tiny_lab.engine
    ids = lab.lm.tokenizer("The meeting went", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        never_steered = lab.lm.model(input_ids=ids).logits
    vector = lab.library.get("happy")
    steered = GenerationRequest(
        "The meeting went", Steering((Steer(vector, 8.0, (0, 1, 2)),), "generated"), max_new_tokens=8
    )
    plain = GenerationRequest("The meeting went", max_new_tokens=8)
    solo_steered, solo_plain = lab.generate([steered])[0].token_ids, lab.generate([plain])[0].token_ids

    for call in (1, 3, 6):  # in the prompt pass, and at decoding steps 2 and 5
        restore = _fail_on_call(engine.layers[2], call)
        try:
            with pytest.raises(InjectedFault, match=f"forward call {call}"):
                lab.generate([steered, plain])
            assert engine.hook_count() == 0 and engine.active_hooks() == []
        finally:
            restore()
        with torch.inference_mode():
            after = lab.lm.model(input_ids=ids).logits
        assert torch.equal(after, never_steered)  # bit-identical: nothing of the steering is left
        assert lab.generate([plain])[0].token_ids == solo_plain
        assert lab.generate([steered])[0].token_ids == solo_steered


def test_a_fault_fails_every_caller_in_the_batch_and_the_next_batch_runs(tiny_lab):
    lab = tiny_lab
    vector = lab.library.get("happy")
    requests = [
        GenerationRequest(f"Student {i}", Steering((Steer(vector, float(i)),)), max_new_tokens=6) for i in range(6)
    ]
    solo = [lab.generate([r])[0].token_ids for r in requests]
    restore = _fail_on_call(lab.engine.layers[1], 4)
    outcomes: dict[int, object] = {}
    barrier = threading.Barrier(len(requests))

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = lab.generate([requests[i]])[0].token_ids
        except InjectedFault as error:
            outcomes[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        restore()
    failed = [i for i, outcome in outcomes.items() if isinstance(outcome, InjectedFault)]
    assert len(outcomes) == len(requests) and failed, "the fault reached no caller"
    assert all(outcomes[i] == solo[i] for i in outcomes if i not in failed)  # callers in other batches: exact
    assert lab.engine.hook_count() == 0
    assert [lab.generate([r])[0].token_ids for r in requests] == solo  # the batcher serves on, exactly


def test_a_stop_mid_generation_leaves_no_hook(tiny_lab):
    lab = tiny_lab
    request = GenerationRequest("Hello", Steering((Steer(lab.library.get("happy"), 4.0),)), max_new_tokens=50)
    stream = lab.stream([request])
    next(stream)
    next(stream)
    stream.close()  # the Stop button
    for _ in range(100):  # the batch ends at its next step
        if lab.engine.hook_count() == 0:
            break
        threading.Event().wait(0.05)
    assert lab.engine.hook_count() == 0
