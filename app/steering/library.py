"""The concept-vector library: every concept's vector at every layer, cached per model.

Files live in ``cache/vectors/<model fingerprint>/<name>-<content hash>-<settings>.safetensors``:
an edited concept or another model gets a new key and is recomputed, never silently reused. A
file that cannot be read or belongs to another model is rebuilt with a warning. Builds can run
in a background thread while the app answers; a concept someone asks for is built at once in
their call, while the background build waits between its forward passes. A build is extraction
(the directions) and then the strength sweep (the recommendation): a caller that sets the
strength itself steers as soon as extraction is done, and the background build sweeps next.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from app.progress import Progress
from app.steering import concepts as concept_store
from app.steering.choices import Method
from app.steering.concepts import Concept
from app.steering.engine import SteeringEngine
from app.steering.extraction import extract
from app.steering.recommend import sweep_strengths
from app.steering.vectors import SteeringVector, VectorFileError
from app.storage import cache_dir

log = logging.getLogger(__name__)

EXTRACTION_VERSION = 2  # bump when extraction or recommendation changes what a file holds


@dataclass
class _Build:
    """One concept being built: ``extracted`` is set once it can steer, ``done`` when it is finished."""

    extracted: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Settings:
    """How a concept is turned into a vector; part of the cache key."""

    method: Method = "mean_diff"
    top_k_layers: int = 1

    @property
    def key(self) -> str:
        text = f"v{EXTRACTION_VERSION}-{self.method}-k{self.top_k_layers}"
        return hashlib.sha256(text.encode()).hexdigest()[:8]


def default_settings(concept: Concept) -> Settings:
    """Teaching concepts: difference of means at one layer. Preference dimensions: a probe and
    its three best layers, as Bo et al. do."""
    if concept.category == "preference":
        return Settings(method="probe", top_k_layers=3)
    return Settings()


class VectorLibrary:
    """Vectors of every concept for one loaded model."""

    def __init__(
        self,
        engine: SteeringEngine,
        tokenizer: PreTrainedTokenizerBase,
        *,
        model_id: str,
        fingerprint: str,
        concepts_root: Path | None = None,
        root: Path | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.concepts_root = concepts_root
        self.folder = Path(root or cache_dir() / "vectors") / fingerprint
        self._vectors: dict[str, SteeringVector] = {}
        self._lock = threading.RLock()
        self._building: dict[str, _Build] = {}
        self._extracted: dict[str, SteeringVector] = {}  # extracted, strength sweep still to run
        self._priority: list[str] = []
        self._worker: threading.Thread | None = None
        self.status = "idle"
        self.progress = (0, 0)  # (done, total)

    # --- lookups ----------------------------------------------------------------------
    def concepts(self) -> dict[str, Concept]:
        return concept_store.load_all(self.concepts_root)

    def path_for(self, concept: Concept, settings: Settings) -> Path:
        return self.folder / f"{concept.name}-{concept.content_hash}-{settings.key}.safetensors"

    def get(
        self,
        name_or_concept: str | Concept,
        settings: Settings | None = None,
        progress: Progress | None = None,
        *,
        recommended: bool = True,
    ) -> SteeringVector:
        """The vector of a concept (name, file path or Concept): from memory, disk, or built now.

        ``recommended=False``: the caller sets the strength itself, so a vector whose strength
        sweep has not run yet will do (``metadata["recommendation"] == "pending"``; its layers are
        extraction's best). While the background build runs, a saved concept is then only
        extracted in this call and its sweep is left to the build, next in line; without a
        background build the sweep runs here, as for ``recommended=True``.
        """
        concept = (
            name_or_concept
            if isinstance(name_or_concept, Concept)
            else concept_store.find_concept(name_or_concept, self.concepts_root)
        )
        settings = settings or default_settings(concept)
        key = f"{concept.name}:{concept.content_hash}:{settings.key}"
        while True:
            with self._lock:
                if key in self._vectors:
                    return self._vectors[key]
                if not recommended and key in self._extracted:
                    return self._extracted[key]
                build = self._building.get(key)
                if build is None:
                    build = self._building[key] = _Build()
                    break
            (build.extracted if not recommended else build.done).wait()  # another thread builds it
        hand_off = (  # the background build sweeps saved concepts with their default settings
            not recommended
            and settings == default_settings(concept)
            and self._is_saved(concept)
            and self.background_build_running()
        )
        try:
            # A user's build runs now, in the user's call: the background build pauses at its next
            # forward pass until this one is done (a claim of the model lock; none for the build itself).
            with self.engine.lock.foreground():
                vector = self._load_or_build(concept, settings, progress, key, build, sweep=not hand_off)
            with self._lock:
                if vector.metadata.get("recommendation") == "pending":
                    self.prioritize(concept.name)  # the background build sweeps it next
                    self.start_background_build()  # (again, if it ended since we looked)
                    return vector
                self._vectors[key] = vector
                self._extracted.pop(key, None)
                if settings == default_settings(concept) and self._is_saved(concept):
                    self._vectors[concept.name] = vector  # only the saved concept owns its name
            return vector
        finally:
            with self._lock:
                self._building.pop(key, None)
            build.extracted.set()
            build.done.set()

    def background_build_running(self) -> bool:
        with self._lock:
            return self._worker is not None and self._worker.is_alive()

    def _is_saved(self, concept: Concept) -> bool:
        saved = self.concepts().get(concept.name)
        return saved is not None and saved.content_hash == concept.content_hash

    def cached(self, name: str) -> SteeringVector | None:
        with self._lock:
            return self._vectors.get(name)

    # --- building -----------------------------------------------------------------------
    def _load_or_build(
        self, concept: Concept, settings: Settings, progress: Progress | None, key: str, build: _Build, sweep: bool
    ) -> SteeringVector:
        path = self.path_for(concept, settings)
        if path.exists():
            try:
                return SteeringVector.load(
                    path, expect_fingerprint=self.fingerprint, expect_hidden_size=self.engine.hidden_size
                )
            except VectorFileError as error:
                log.warning("rebuilding %s: %s", path.name, error)
        with self._lock:
            extracted = self._extracted.get(key)
        if extracted is None:
            extracted = self.extract(concept, settings, progress)
            with self._lock:
                self._extracted[key] = extracted
            build.extracted.set()  # callers who set the strength themselves can steer with it now
        if not sweep:
            return extracted
        vector = self.recommend(concept, extracted)
        try:
            vector.save(path)
        except OSError as error:  # a full disk or read-only cache must not stop the lesson
            log.warning("could not cache %s (%s); it will be rebuilt next time", path.name, error)
        return vector

    def build(
        self, concept: Concept, settings: Settings | None = None, progress: Progress | None = None
    ) -> SteeringVector:
        """Extract a concept and find its recommended strength (no cache involved)."""
        return self.recommend(concept, self.extract(concept, settings or default_settings(concept), progress))

    def extract(self, concept: Concept, settings: Settings, progress: Progress | None = None) -> SteeringVector:
        """The concept's directions at every layer; its strength is not recommended yet."""
        started = time.perf_counter()
        result = extract(
            self.engine,
            self.tokenizer,
            concept.positive,
            concept.negative,
            name=concept.name,
            model_id=self.model_id,
            model_fingerprint=self.fingerprint,
            method=settings.method,
            top_k_layers=settings.top_k_layers,
            progress=progress,
            metadata={
                "concept_hash": concept.content_hash,
                "category": concept.category,
                "labels": concept.labels,
                "model_type": getattr(self.engine.model.config, "model_type", ""),
            },
        )
        result.vector.metadata.update(recommendation="pending", extract_seconds=round(time.perf_counter() - started, 3))
        return result.vector

    def recommend(self, concept: Concept, extracted: SteeringVector) -> SteeringVector:
        """A copy of ``extracted`` with the recommended layers and strength of its sweep."""
        from app.analysis.metrics import effect  # lazily: loads the sentence-embedding model on first use

        started = time.perf_counter()
        sweep = sweep_strengths(self.engine, self.tokenizer, extracted, concept.positive, concept.negative, effect)
        metadata = {key: value for key, value in extracted.metadata.items() if key != "recommendation"}
        spent = metadata.pop("extract_seconds", 0.0) + time.perf_counter() - started
        metadata.update(
            recommended_layers=sweep.chosen_layers,
            recommended_strength=sweep.chosen_strength,
            strength_sweep=sweep.to_dict(),
            build_seconds=round(spent, 3),
        )
        log.info("built %s: layers %s, strength %.1f", concept.name, sweep.chosen_layers, sweep.chosen_strength)
        return replace(extracted, metadata=metadata)

    def load_cached(self) -> int:
        """Load every concept whose file is already on disk; returns how many were loaded."""
        loaded = 0
        for concept in self.concepts().values():
            settings = default_settings(concept)
            path = self.path_for(concept, settings)
            if concept.name in self._vectors or not path.exists():
                continue
            try:
                vector = SteeringVector.load(
                    path, expect_fingerprint=self.fingerprint, expect_hidden_size=self.engine.hidden_size
                )
            except VectorFileError as error:
                log.warning("will rebuild %s: %s", path.name, error)
                continue
            with self._lock:
                self._vectors[concept.name] = vector
                self._vectors[f"{concept.name}:{concept.content_hash}:{settings.key}"] = vector
            loaded += 1
        return loaded

    def missing(self) -> list[str]:
        with self._lock:
            return [name for name in self.concepts() if name not in self._vectors]

    def prioritize(self, name: str) -> None:
        """Build ``name`` next in the background build."""
        with self._lock:
            if name in self._priority:
                self._priority.remove(name)
            self._priority.insert(0, name)

    def build_all(self, progress: Progress | None = None) -> None:
        """Build every missing concept, asked-for ones first (blocking)."""
        with self._lock:
            queue = self.missing()
            self._priority = [n for n in self._priority if n in queue] + [n for n in queue if n not in self._priority]
            total = len(self._priority)
            self.status = "building" if total else "ready"
        done = 0
        while True:
            with self._lock:
                if not self._priority:
                    self.status = "ready"
                    break
                name = self._priority.pop(0)
                self.progress = (done, total)
            if progress is not None:
                progress(done / max(total, 1), f"building {name} ({done + 1}/{total})")
            try:
                self.get(name)
            except Exception as error:  # one bad concept must not stop the others
                log.error("could not build concept %s: %s", name, error)
            done += 1
        self.progress = (done, total)
        if progress is not None:
            progress(1.0, f"library ready: {len(self.ready_names())} concepts")

    def ready_names(self) -> list[str]:
        with self._lock:
            return sorted(k for k in self._vectors if ":" not in k)

    def _build_in_background(self) -> None:
        with self.engine.lock.background():  # every forward pass of the build yields to a user's
            self.build_all()

    def start_background_build(self) -> threading.Thread:
        """Build missing concepts in a daemon thread; the app keeps answering meanwhile.

        The thread is background work for the engine's lock: before each of its forward passes it
        waits while a user's work is pending (a generation, a concept asked for), so a user waits
        at most one forward pass of the build, never for a whole concept."""
        with self._lock:
            if self._worker is not None and self._worker.is_alive():
                return self._worker
            self._worker = threading.Thread(target=self._build_in_background, name="library-build", daemon=True)
            self._worker.start()
            return self._worker
