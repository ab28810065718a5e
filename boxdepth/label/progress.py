"""Resumable labelling: a journal of the images already labelled, beside the output.

    LabelJournal(out_path, fingerprint, *, resume)
        .done        {image_id: [per-annotation label dicts]} read back from the journal
        .add(image_id, labels)   append one image's labels (flushed)
        .finish()    delete the journal (call after the output is written)

The journal is `<out>.partial.jsonl`: a header line {"fingerprint": ...} and one line per
labelled image {"image_id", "labels": [{"index", "segmentation", "area", "mask_score",
"mask_source"}]}. Appending is not atomic, so a line cut short by a crash is ignored
(and everything after it: the line order is the work order). The fingerprint (input
json bytes, weights, options) must match, else the journal is from another job and is
ignored (resume) or replaced (no resume). A finished run deletes it; the output itself
is always written in one atomic step.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from boxdepth.fileio import atomic_write_text

log = logging.getLogger("boxdepth")


def job_fingerprint(json_path, weights, options: dict) -> str:
    h = hashlib.sha256(Path(json_path).read_bytes())
    if weights is not None and Path(weights).is_file():
        st = Path(weights).stat()  # size + mtime: hashing a large checkpoint costs seconds
        h.update(f"{Path(weights).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _read(path: Path, fingerprint: str) -> dict[int, list[dict]]:
    done: dict[int, list[dict]] = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    try:
        if json.loads(lines[0]).get("fingerprint") != fingerprint:
            log.warning("label: %s belongs to another job (input, weights or options differ); "
                        "starting over", path)
            return {}
    except (json.JSONDecodeError, IndexError, AttributeError):
        return {}
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut short by a crash: the rest was never written
        done[int(rec["image_id"])] = rec["labels"]
    return done


class LabelJournal:
    def __init__(self, out_path, fingerprint: str, *, resume: bool):
        self.path = Path(str(out_path) + ".partial.jsonl")
        self.done = _read(self.path, fingerprint) if resume and self.path.is_file() else {}
        # rewritten from what was kept, so a cut-short tail never sits before new lines
        lines = [json.dumps({"fingerprint": fingerprint})]
        lines += [json.dumps({"image_id": i, "labels": labels}) for i, labels in self.done.items()]
        atomic_write_text(self.path, "\n".join(lines) + "\n")
        self._f = open(self.path, "a", encoding="utf-8")

    def add(self, image_id: int, labels: list[dict]) -> None:
        self._f.write(json.dumps({"image_id": int(image_id), "labels": labels}) + "\n")
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def finish(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
