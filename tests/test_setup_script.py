"""scripts/setup.sh, the README's set-up command: its checks before it installs anything."""

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_setup_refuses_a_disk_too_full_before_installing(tmp_path):
    """pip halfway through torch with "No space left on device" left a broken .venv; the set-up
    now says how much it needs and what to free before it creates anything."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    env = dict(os.environ, SAMTUNE_SETUP_NEED_GB="100000000", PYTHON="false")
    run = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert "needs about 100000000 GB" in run.stderr
    assert "Free some space" in run.stderr and "bash scripts/setup.sh again" in run.stderr
    assert not (tmp_path / ".venv").exists()
    assert "installing" not in run.stdout
