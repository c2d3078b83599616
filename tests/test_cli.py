"""The command lines' shared parts: one-line errors (drpose._cli.command), OpenMP's wait policy
applied by every entry point, progress bars that write plain lines into logs."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from drpose import _cli
from drpose._progress import progress


@pytest.mark.parametrize(("busy_jiffies", "expected"), [(10, False), (90, False), (110, True)])
def test_busy_machine_counts_other_processes_cores(monkeypatch, busy_jiffies, expected):
    """2 listed CPUs, 200 jiffies in the window: busy when others use >= 1 of the 2 cores."""
    samples = iter([(1000, 900, 2), (1200, 1100 - busy_jiffies, 2)])
    monkeypatch.setattr(_cli, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(_cli.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert _cli.busy_machine(window_s=0) is expected


def test_command_turns_user_errors_into_one_line(capsys):
    @_cli.command
    def main(argv):
        raise _cli.UsageError(f"--size {argv[0]}: must be positive")

    assert main(["-3"]) == 2
    assert capsys.readouterr().err == "error: --size -3: must be positive\n"
    with pytest.raises(_cli.UsageError):
        main(["-3", "--debug"])


ENTRY_POINTS = [("drpose.train", ["--help"]), ("drpose.infer", ["--help"]),
                ("drpose.eval", ["--help"]), ("drpose.data", ["build", "--help"])]


@pytest.mark.parametrize(("module", "args"), ENTRY_POINTS)
def test_entry_point_applies_the_openmp_wait_policy_before_torch(module, args, monkeypatch):
    """On a busy machine every command line waits passively, decided before torch loads."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    code = f"""
import os, runpy, sys
from drpose import _cli
seen = []
_cli.busy_machine = lambda window_s=0.3: seen.append("torch" in sys.modules) or True
sys.argv = [{module!r}, *{args!r}]
try:
    runpy.run_module({module!r}, run_name="__main__")
except SystemExit:
    pass
print("POLICY", os.environ.get("OMP_WAIT_POLICY"), seen)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert "POLICY PASSIVE [False]" in out


def test_progress_writes_plain_lines_when_not_a_terminal():
    log = io.StringIO()
    bar = progress(total=100, desc="carve", file=log)
    for _ in range(100):
        bar.update()
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 11 and lines[-1].startswith("carve: 100%")  # 0, 10, ..., 100
    quiet = io.StringIO()
    for _ in progress(range(5), enabled=False, file=quiet):
        pass
    assert quiet.getvalue() == ""


def _bad_inputs(folder):
    """name -> (command main, argv, text the one line must contain), files made in ``folder``."""
    import numpy as np
    from PIL import Image

    from drpose.body.standin import main as standin_main
    from drpose.data.__main__ import main as data_main
    from drpose.eval.__main__ import main as eval_main
    from drpose.infer import main as infer_main

    (folder / "not.bvh").write_text("hello\n")
    (folder / "cut.bvh").write_text("HIERARCHY\nROOT Hips\n{\n OFFSET 0 0 0\n CHANNELS 6 Xpos")
    np.savez(folder / "amass.npz", poses=np.zeros((5, 156)), trans=np.zeros((4, 3)),
             betas=np.zeros(16), mocap_framerate=30.0)
    (folder / "text.npz").write_text("not numpy\n")
    (folder / "text.png").write_text("not an image\n")
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(folder / "ok.png")
    (folder / "cut.png").write_bytes((folder / "ok.png").read_bytes()[:60])
    (folder / "bad.glb").write_text("not glTF\n")
    (folder / "a_file").write_text("x")
    build = ["build", "--out", str(folder / "ds"), "--neighbours", "0", "--anchors", "1",
             "--resolution", "32", "--no-progress", "--motion"]
    infer = ["--out", str(folder / "infer_out"), "--no-progress"]
    return {
        "missing bvh": (data_main, [*build, str(folder / "gone.bvh")], "gone.bvh"),
        "not bvh": (data_main, [*build, str(folder / "not.bvh")], "not.bvh"),
        "cut bvh": (data_main, [*build, str(folder / "cut.bvh")], "cut.bvh"),
        "amass lengths": (data_main, [*build, str(folder / "amass.npz")], "amass.npz"),
        "text npz": (data_main, [*build, str(folder / "text.npz")], "text.npz"),
        "shard": (data_main, [*build, "default", "--shard", "3/2"], "3/2"),
        "anchors": (data_main, [*build[:-1], "--anchors", "0", "--motion", "default"], "0"),
        "resolution": (data_main, [*build[:-1], "--resolution", "7", "--motion", "default"],
                       "7"),
        "sheet": (data_main, ["sheet", str(folder / "no_dataset")], "no_dataset"),
        "infer missing": (infer_main, [str(folder / "gone.png"), *infer], "gone.png"),
        "infer not image": (infer_main, [str(folder / "text.png"), *infer], "text.png"),
        "infer corrupt": (infer_main, [str(folder / "cut.png"), *infer], "cut.png"),
        "eval assets": (eval_main, ["build", "--out", str(folder / "bench"), "--assets",
                                    str(folder / "bad.glb")], "bad.glb"),
        "standin": (standin_main, ["--out", str(folder / "a_file")], "a_file"),
    }


BAD_INPUTS = ["missing bvh", "not bvh", "cut bvh", "amass lengths", "text npz", "shard",
              "anchors", "resolution", "sheet", "infer missing", "infer not image",
              "infer corrupt", "eval assets", "standin"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_naming_it(case, tmp_path, capsys):
    main, argv, named = _bad_inputs(tmp_path)[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and named in err[-1], err
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "infer_out").exists()  # inputs are checked before --out is made
    with pytest.raises(Exception, match=named):  # --debug shows the traceback
        main([*argv, "--debug"])


@pytest.mark.parametrize("niceness,preset,expected", [(10, None, "1"), (0, None, None),
                                                      (10, "2", "2")])
def test_niced_processes_run_one_openmp_thread(monkeypatch, niceness, preset, expected):
    monkeypatch.setattr(_cli.os, "nice", lambda increment: niceness)
    if preset is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", preset)
    _cli.apply_niced_thread_limit()
    assert _cli.os.environ.get("OMP_NUM_THREADS") == expected
