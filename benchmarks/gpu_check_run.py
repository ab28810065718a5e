"""How `gpu_check.py` runs one section: `call` (a subprocess in its own process group under
a time cap, its output appended to the check's log) and `parse_only` (--dry-run: a
command's arguments checked in this process, nothing run).

Both return {"status": ok | failed | timeout, "rc", "seconds", "command", "error"}; the
error is the end of the section's output (or the exception), None when ok.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAIL_LINES = 25


def _tail(log, offset: int) -> str:
    log.flush()
    with open(log.name, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    return "\n".join(text.strip().splitlines()[-TAIL_LINES:])


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the section's process group (its own: start_new_session), SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def call(argv: list[str], cap: float, env: dict, log, name: str) -> dict:
    """Run argv in the repo root with at most `cap` seconds; stdout and stderr go to `log`."""
    log.write(f"\n=== {name}: {shlex.join(argv)}  (cap {cap:.0f} s)\n")
    log.flush()
    offset = os.fstat(log.fileno()).st_size
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        return {"status": "failed", "rc": None, "seconds": 0.0, "command": argv, "error": f"{e}"}
    try:
        rc, status = proc.wait(timeout=cap), None
    except subprocess.TimeoutExpired:
        _stop(proc)
        rc, status = None, "timeout"
    seconds = round(time.monotonic() - t0, 1)
    status = status or ("ok" if rc == 0 else "failed")
    error = None
    if status != "ok":
        error = (f"stopped after its cap of {cap:.0f} s\n" if status == "timeout" else "") + _tail(log, offset)
    log.write(f"=== {name}: {status} (rc {rc}) in {seconds} s\n")
    return {"status": status, "rc": rc, "seconds": seconds, "command": argv, "error": error}


def _check_args(argv: list[str]) -> str:
    """Parse a command's arguments as its entry point would; returns a one-line note."""
    if argv[1].endswith("train_step.py"):
        import train_step  # benchmarks/ is on sys.path (gpu_check.py puts it there)
        args = train_step.parse_args(argv[2:])
        args.device = "cpu"  # resolve_settings refuses cuda without a GPU; the config is still checked
        settings = train_step.resolve_settings(args)
        return "train_step settings: " + "; ".join(
            f"{s['preset']} {s['hw'][0]}x{s['hw'][1]} batch {s['batch']} overrides {s['overrides']}"
            for s in settings)
    if argv[1:3] == ["-m", "boxdepth.cli"]:
        from boxdepth.cli_args import parse_cli
        args = parse_cli(argv[3:])
        return f"boxdepth {args.command}: " + ", ".join(f"{k}={v}" for k, v in sorted(vars(args).items()))
    raise ValueError(f"no argument check for {argv[1]} (gpu_check_run._check_args)")


def parse_only(argv: list[str], repo: Path, log, name: str) -> dict:
    """--dry-run: check argv's arguments here (imports its entry point, runs nothing)."""
    log.write(f"\n=== {name} (dry run, arguments only): {shlex.join(argv)}\n")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    t0, error = time.monotonic(), None
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            log.write(_check_args(argv) + "\n")
    except SystemExit as e:  # argparse: the message went to the log
        error = f"arguments rejected (exit {e.code}); see gpu_check.log"
    except Exception as e:  # noqa: BLE001  (any failure to import or parse is the finding)
        error = f"{type(e).__name__}: {e}"
    seconds = round(time.monotonic() - t0, 1)
    status = "ok" if error is None else "failed"
    log.write(f"=== {name}: {status} in {seconds} s\n")
    return {"status": status, "rc": None, "seconds": seconds, "command": argv, "error": error}
