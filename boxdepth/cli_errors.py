"""How the command line meets an expected failure: one line on stderr, never a traceback.

Expected failures are ValueErrors (bad files, configs, values: ConfigError, BadImageError,
CocoFormatError, InputOverwriteError, ... all derive from it) and OSErrors (a missing
file, no permission, a full disk). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
from pathlib import Path

EXPECTED_ERRORS = (ValueError, OSError)

# what each verb's --out names: a folder it fills, or a file it writes
OUT_IS_FOLDER = {"synth": True, "train": True, "predict": True, "depth": True, "viz": True,
                 "convert": True, "demo": True, "qa": True,
                 "label": False, "export": False, "eval": False}


def error_line(e: BaseException) -> str:
    """`e` as one line naming what failed."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        where = f" while writing {e.filename}" if e.filename else ""
        return f"no space left on device{where}; free some space and run again"
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    text = str(e)
    if "Original Traceback" in text:
        # re-raised from a DataLoader worker with the worker's traceback in the message: keep
        # the worker's own error line ("module.Class: message"), without the class
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split()) or type(e).__name__


def check_out_kind(command: str, out: Path | None) -> None:
    """--out must be a folder for the verbs that fill one and a file for the others; an
    existing path of the other kind is refused before any work."""
    if out is None or command not in OUT_IS_FOLDER or not Path(out).exists():
        return
    if OUT_IS_FOLDER[command] and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; {command} writes a folder there")
    if not OUT_IS_FOLDER[command] and Path(out).is_dir():
        raise ValueError(f"--out {out} is a folder; {command} writes a file: give a file name")
