"""UMAP's numba code is kept in the cache between runs, so only the first map on a machine compiles."""

from __future__ import annotations

from app.analysis import umap_cache


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
