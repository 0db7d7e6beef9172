"""UMAP's numba code is kept in the cache between runs, so only the first map on a machine compiles."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from app.analysis import umap_cache
from app.storage import REPO_ROOT


def test_every_compiled_umap_function_is_cached_in_cache_numba():
    from numba.core import config
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    umap = umap_cache.import_umap()
    assert config.CACHE_DIR == str(umap_cache.numba_cache_dir())
    for module in (umap.umap_, umap.layouts, umap.utils):
        dispatchers = [v for v in vars(module).values() if isinstance(v, Dispatcher)]
        assert dispatchers, module.__name__
        uncached = [d.py_func.__name__ for d in dispatchers if isinstance(d._cache, NullCache)]
        assert uncached == [], module.__name__
    assert umap_cache.import_umap() is umap  # prepared once


def test_the_warm_up_runs_as_its_own_low_priority_process(monkeypatch):
    started = []
    monkeypatch.setattr(umap_cache.subprocess, "Popen", lambda command, **kw: started.append((command, kw)))
    umap_cache.start_warming()
    ((command, options),) = started
    assert command[1:] == ["-m", "app.analysis.umap_cache", "--low-priority"]
    assert options["env"]["NUMBA_CACHE_DIR"] == str(umap_cache.numba_cache_dir())


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to see whether the child lives")
def test_the_warm_up_ends_with_the_app_that_started_it(tmp_path):
    """A parent that starts the warm-up and exits at once leaves no compiling process behind."""
    parent = "import sys; from app.analysis import umap_cache; print(umap_cache.start_warming().pid, flush=True)"
    env = {**os.environ, "STEERING_LAB_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", parent], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    child = int(done.stdout.split()[-1])
    deadline = time.monotonic() + 120
    while _alive(child):
        assert time.monotonic() < deadline, "the warm-up outlived the process that started it"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False
