"""The concept-vector library: every concept's vector at every layer, cached per model.

Files live in ``cache/vectors/<model fingerprint>/<name>-<content hash>-<settings>.safetensors``:
an edited concept or another model gets a new key and is recomputed, never silently reused. A
file that cannot be read or belongs to another model is rebuilt with a warning. Builds can run
in a background thread while the app answers; a concept someone asks for is built at once in
their call, while the background build waits between its forward passes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
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
        self._building: dict[str, threading.Event] = {}
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
    ) -> SteeringVector:
        """The vector of a concept (name, file path or Concept): from memory, disk, or built now."""
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
                event = self._building.get(key)
                if event is None:
                    event = self._building[key] = threading.Event()
                    break
            event.wait()  # another thread is building it: take its result
        try:
            # A user's build runs now, in the user's call: the background build pauses at its next
            # forward pass until this one is done (a claim of the model lock; none for the build itself).
            with self.engine.lock.foreground():
                vector = self._load_or_build(concept, settings, progress)
            with self._lock:
                self._vectors[key] = vector
                if settings == default_settings(concept) and self._is_saved(concept):
                    self._vectors[concept.name] = vector  # only the saved concept owns its name
            return vector
        finally:
            with self._lock:
                self._building.pop(key, None)
            event.set()

    def _is_saved(self, concept: Concept) -> bool:
        saved = self.concepts().get(concept.name)
        return saved is not None and saved.content_hash == concept.content_hash

    def cached(self, name: str) -> SteeringVector | None:
        with self._lock:
            return self._vectors.get(name)

    # --- building -----------------------------------------------------------------------
    def _load_or_build(self, concept: Concept, settings: Settings, progress: Progress | None) -> SteeringVector:
        path = self.path_for(concept, settings)
        if path.exists():
            try:
                return SteeringVector.load(
                    path, expect_fingerprint=self.fingerprint, expect_hidden_size=self.engine.hidden_size
                )
            except VectorFileError as error:
                log.warning("rebuilding %s: %s", path.name, error)
        vector = self.build(concept, settings, progress)
        try:
            vector.save(path)
        except OSError as error:  # a full disk or read-only cache must not stop the lesson
            log.warning("could not cache %s (%s); it will be rebuilt next time", path.name, error)
        return vector

    def build(
        self, concept: Concept, settings: Settings | None = None, progress: Progress | None = None
    ) -> SteeringVector:
        """Extract a concept and find its recommended strength (no cache involved)."""
        settings = settings or default_settings(concept)
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
        vector = result.vector
        from app.analysis.metrics import effect  # lazily: loads the sentence-embedding model on first use

        sweep = sweep_strengths(self.engine, self.tokenizer, vector, concept.positive, concept.negative, effect)
        vector.metadata.update(
            recommended_layers=sweep.chosen_layers,
            recommended_strength=sweep.chosen_strength,
            strength_sweep=sweep.to_dict(),
            build_seconds=round(time.perf_counter() - started, 3),
        )
        log.info("built %s: layers %s, strength %.1f", concept.name, sweep.chosen_layers, sweep.chosen_strength)
        return vector

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
