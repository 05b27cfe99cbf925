"""Session-wide test setup: a persistent XLA compilation cache.

Many tests build the same tiny networks and steps; with the cache, an identical program
is compiled once per session instead of once per test (XLA compile time dominates the
default tier on CPU).
"""

from __future__ import annotations

import jax
import pytest


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
