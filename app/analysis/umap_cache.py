"""UMAP without the wait: its numba code compiled once per machine, not at every start's first map.

umap-learn compiles its numba functions on first use (40-160 s on 2 busy CPU cores) and marks
almost none of them ``cache=True``, so every start of the app made the first user of the concept
map wait. :func:`import_umap` points numba's cache at ``cache/numba`` and turns caching on for
every compiled function of umap and pynndescent before their first use; :func:`warm` draws one
small map so the compiling happens before anyone asks. ``serve`` runs :func:`warm` in a child
process at the lowest CPU priority (:func:`start_warming`): it writes the cache without holding
the GIL of the process that generates or taking CPU from a user. Run it by hand with
``python -m app.analysis.umap_cache``.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from app.storage import REPO_ROOT, cache_dir

log = logging.getLogger(__name__)

# Modules whose numba functions a map can reach (umap's exact-neighbour path for small data, its
# layout, and pynndescent, which umap imports and uses for bigger data).
MODULES = (
    "umap.umap_",
    "umap.layouts",
    "umap.utils",
    "umap.distances",
    "umap.sparse",
    "umap.spectral",
    "pynndescent.distances",
    "pynndescent.sparse",
    "pynndescent.utils",
    "pynndescent.rp_trees",
    "pynndescent.pynndescent_",
)
WARM_POINTS = 30  # enough for UMAP proper (maps.MIN_UMAP_POINTS), small enough to run in no time once compiled

_prepared = threading.Lock()
_done = False


def numba_cache_dir() -> Path:
    """Where numba keeps compiled code: ``$NUMBA_CACHE_DIR`` if set, else ``cache/numba``."""
    return Path(os.environ.get("NUMBA_CACHE_DIR") or cache_dir() / "numba")


def import_umap() -> ModuleType:
    """``umap``, with numba's compiled code of every function it uses kept between runs."""
    global _done
    with _prepared:
        if not _done:
            from numba.core import config
            from numba.core.caching import NullCache
            from numba.core.dispatcher import Dispatcher

            config.CACHE_DIR = str(numba_cache_dir())  # type: ignore[attr-defined]  # read when a function is cached
            import umap  # noqa: F401  (imports the modules below)

            cached = 0
            for name in MODULES:
                try:
                    module = importlib.import_module(name)
                except ImportError:
                    continue
                for value in vars(module).values():
                    if isinstance(value, Dispatcher) and isinstance(getattr(value, "_cache", None), NullCache):
                        value.enable_caching()
                        cached += 1
            log.debug("numba caching turned on for %d umap functions in %s", cached, numba_cache_dir())
            _done = True
    import umap

    return umap


def umap_2d(points: np.ndarray, random_state: int = 0) -> np.ndarray:
    """UMAP of ``points`` ``[n, d]`` (n >= 2) to ``[n, 2]``, with the settings every map uses."""
    n = len(points)
    reducer = import_umap().UMAP(
        n_components=2, n_neighbors=min(15, n - 1), init="pca", random_state=random_state, n_jobs=1
    )
    return np.asarray(reducer.fit_transform(points), dtype=np.float64)


def warm() -> float:
    """Draw one small map the way the app does (compiling, or loading compiled code); returns seconds."""
    started = time.perf_counter()
    umap_2d(np.random.default_rng(0).normal(size=(WARM_POINTS, 64)))  # float64 [n, d], like a real map
    return time.perf_counter() - started


def start_warming() -> subprocess.Popen:
    """Warm UMAP in a child process that runs at the lowest CPU priority (``nice 19`` on POSIX)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache_dir())}
    return subprocess.Popen(
        [sys.executable, "-m", "app.analysis.umap_cache", "--low-priority"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _exit_with_parent() -> None:
    """End this process when the app that started it ends (it would otherwise compile on alone)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    if "--low-priority" in sys.argv:
        _exit_with_parent()
        if hasattr(os, "nice"):
            os.nice(19)  # the app's users and its library build come first
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("UMAP ready in %.1f s (numba cache: %s)", warm(), numba_cache_dir())
