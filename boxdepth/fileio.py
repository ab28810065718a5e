"""Safe file writing: every output goes to a temp file in the same folder and is renamed
over the target, so an interrupted run never leaves a half-written file and never
destroys the previous good one; and no verb writes over one of its own inputs
(`refuse_overwriting_inputs`)."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success rename it to `path`, else delete it.

    `suffix` defaults to the target's suffix so that writers that pick a format from the
    extension (Pillow, torch) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs should be ordinary files
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_save(path: str | os.PathLike, save_fn: Callable[[Path], None]) -> None:
    """Call `save_fn(tmp_path)` (e.g. ``lambda p: img.save(p)``) then rename atomically."""
    with atomic_path(path) as tmp:
        save_fn(tmp)


class InputOverwriteError(ValueError):
    """An output path that is one of the command's inputs."""


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file or folder (through links too when both exist)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def refuse_overwriting_inputs(outputs: dict[str, Any], inputs: dict[str, Any] | Iterable) -> None:
    """Raise InputOverwriteError when an output path (file or folder) is one of the inputs.

    `outputs` and `inputs` map what the user typed (`--out`, `--json`, ...) to a path or
    None (not given); `inputs` may also be (name, path) pairs, for a name given several
    times. Every verb that writes calls this before it reads anything, so a wrong `--out`
    costs nothing and never replaces the data it was meant to read."""
    pairs = list(inputs.items()) if isinstance(inputs, dict) else list(inputs)
    for out_name, out in outputs.items():
        for in_name, inp in pairs:
            if out is not None and inp is not None and same_path(out, inp):
                raise InputOverwriteError(
                    f"{out_name} {out} is the input {in_name} {inp}: it would overwrite an "
                    f"input; give another {out_name.split(' ')[0]}")
