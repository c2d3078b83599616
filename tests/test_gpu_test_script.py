"""``make gpu-test``'s script, run with ``--small`` on the CPU: the README's PSHuman commands
(random pipeline, renders, skel, DrPose15K, 2 steps of ``--config pshuman``) end to end, and the
report it writes."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_test_script_small_runs_the_reward_part_and_reports(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_test.py"), "--small",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    report = (tmp_path / "report.md").read_text()
    assert done.returncode == 0, report
    assert "| reward | passed |" in report
    assert '"step_time_s": [' in report and '"posescore_after"' in report
    log = (tmp_path / "work" / "runs" / "drpose_pshuman" / "log.jsonl").read_text()
    assert len([line for line in log.splitlines() if "step_time_s" in line]) == 2
