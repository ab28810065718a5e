"""What `boxdepth predict` wrote into its output folder, so that the next run there starts clean.

Stale outputs must not survive beside a new results.json: a run with fewer images, fewer
detections or another score threshold would leave the old overlays and mask PNGs next to
results that do not contain them. So predict keeps a manifest of every file it writes,

    <out>/predict_manifest.jsonl   {"boxdepth_predict": 1}, then one line per image
                                   {"files": [paths relative to <out>, posix]} written
                                   *before* that image's files, and a last line for
                                   results.json and images.json

and a new run into the same folder first deletes the files its manifest lists (and the
temp files of interrupted atomic writes, `.<name>.tmp-*`) in predict's own places:
results.json, images.json, overlays/, masks/, depth/. Any other file there (written by
something else, or by a boxdepth older than the manifest) makes it refuse, naming it:
nothing is deleted that predict cannot account for. Files elsewhere in the folder are
never touched.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

MANIFEST = "predict_manifest.jsonl"
OWN_FILES = ("results.json", "images.json")
OWN_DIRS = ("overlays", "masks", "depth")


def _is_temp(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]  # fileio.atomic_path's temp names: .<target>.tmp-XXXX<suffix>
    return name.startswith(".") and ".tmp-" in name


def found_outputs(out_dir: Path) -> list[str]:
    """Files in predict's own places under `out_dir`, as relative posix paths."""
    found = [name for name in OWN_FILES if (out_dir / name).is_file()]
    for sub in OWN_DIRS:
        if (out_dir / sub).is_dir():
            found += sorted(p.relative_to(out_dir).as_posix() for p in (out_dir / sub).rglob("*")
                            if not p.is_dir())
    return found


def read_manifest(out_dir: Path) -> set[str]:
    """The files an earlier run recorded; a line cut short by a kill is skipped (its
    image's files come after it, so none of them was written)."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return set()
    recorded: set[str] = set()
    for line in path.read_text().splitlines():
        try:
            recorded.update(json.loads(line).get("files", []))
        except (json.JSONDecodeError, AttributeError):
            continue
    return recorded


def _remove_empty_dirs(out_dir: Path) -> None:
    for sub in OWN_DIRS:
        root = out_dir / sub
        if not root.is_dir():
            continue
        for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(d.iterdir()):
                d.rmdir()
        if not any(root.iterdir()):
            root.rmdir()


def clear_previous_outputs(out_dir: str | Path) -> int:
    """Delete what an earlier predict run recorded in `out_dir`; refuse (ValueError) when
    predict's places hold a file it did not record. Returns how many files went."""
    out_dir = Path(out_dir)
    found = found_outputs(out_dir)
    recorded = read_manifest(out_dir)
    stray = [f for f in found if f not in recorded and not _is_temp(f)]
    if stray:
        more = f" and {len(stray) - 3} more" if len(stray) > 3 else ""
        raise ValueError(f"{out_dir} holds files that predict did not record in {MANIFEST} "
                         f"({', '.join(stray[:3])}{more}): they would end up beside the new "
                         "results; give an empty or new --out, or remove them")
    for rel in found:
        (out_dir / rel).unlink()
    _remove_empty_dirs(out_dir)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    return len(found)


class ManifestWriter:
    """Appends the files of each image to the manifest before they are written."""

    def __init__(self, out_dir: str | Path):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(out_dir / MANIFEST, "a", encoding="utf-8")
        self._line({"boxdepth_predict": 1})

    def _line(self, obj: dict) -> None:
        self._file.write(json.dumps(obj) + "\n")
        self._file.flush()  # on disk before the files it names: a kill cannot hide them

    def record(self, files: Iterable[str]) -> None:
        self._line({"files": list(files)})

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
