"""Ship the on-device benchmark: copy `trtparse.py`, `tegrastats.py` and `runner.py` into one folder for a board."""
from __future__ import annotations

import shutil
from pathlib import Path

from fxscale.errors import TargetError

PARSERS = (Path(__file__).resolve().with_name("trtparse.py"), Path(__file__).resolve().with_name("tegrastats.py"))
RUNNER = Path(__file__).resolve().parents[2] / "benchmarks" / "jetson" / "runner.py"


def bundle(dest: str | Path) -> list[Path]:
    """Write trtparse.py, tegrastats.py and runner.py into `dest` (created); copy it to the board, run runner.py."""
    if not RUNNER.is_file():
        raise TargetError(f"{RUNNER} not found: bundle() needs a source checkout of fxscale (benchmarks/jetson)")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for src in (*PARSERS, RUNNER):
        target = dest / src.name
        shutil.copyfile(src, target)
        target.chmod(0o755 if src is RUNNER else 0o644)
        written.append(target)
    return written
