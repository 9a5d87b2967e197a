"""The shared_data marker: without ../shared its tests skip with one line naming it; with
EDGE_AGENT_REQUIRE_SHARED=1 (CI) such a skip fails the run. Runs pytest on a real test file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _pytest(tmp_path: Path, require: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGE_AGENT_SHARED": str(tmp_path / "no-shared"),
           "EDGE_AGENT_REQUIRE_SHARED": require}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
                           "-m", "shared_data",
                           str(HERE / "test_tracker_mot.py")], cwd=HERE.parent, env=env,
                          capture_output=True, text=True, timeout=300)


def test_without_shared_its_tests_skip_naming_it(tmp_path):
    proc = _pytest(tmp_path, "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    skips = [x for x in proc.stdout.splitlines() if x.startswith("SKIPPED")]
    # -m shared_data: conftest marked them (they use the ../shared fixtures), and they skip.
    assert len(skips) == 1 and "[2]" in skips[0], skips
    assert all("needs ../shared" in x and "no-shared" in x for x in skips), skips


def test_ci_fails_when_a_shared_data_test_skips(tmp_path):
    proc = _pytest(tmp_path, "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "EDGE_AGENT_REQUIRE_SHARED=1 and 2 shared_data test(s) skipped" in proc.stdout
