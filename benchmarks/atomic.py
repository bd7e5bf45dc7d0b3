"""Files written whole or not at all: a temporary file beside the target, then a rename (os.replace), so a reader
(or a run stopped half-way) never sees half a file. Torch-free."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_text(path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=1))
