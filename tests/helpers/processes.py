"""Running a Python snippet in a fresh interpreter with N fake CPU devices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, *args: str, devices: int = 1, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Runs ``python -c code args...`` from the repo root on the CPU, split into ``devices``
    fake devices (XLA reads the flag at start-up, so it needs its own process); asserts it
    exits 0 (showing the end of its stderr) and returns it."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flag = f"--xla_force_host_platform_device_count={devices}"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc
