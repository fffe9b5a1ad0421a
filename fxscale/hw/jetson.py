"""Ship the on-device benchmark: copy `trtparse.py`, `tegrastats.py` and `runner.py` into one folder for a board.

All three live in this package (stdlib only, Python 3.6), so an installed wheel can write the bundle:
`fxscale jetson-bundle DIR` or `bundle(DIR)`.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from fxscale.errors import TargetError

_HERE = Path(__file__).resolve().parent
PARSERS = (_HERE / "trtparse.py", _HERE / "tegrastats.py")
RUNNER = _HERE / "runner.py"
FILES = (*PARSERS, RUNNER)  # in the order bundle() writes them


def bundle(dest: str | Path) -> list[Path]:
    """Write trtparse.py, tegrastats.py and runner.py into `dest` (created); copy it to the board, run runner.py.

    TargetError when `dest` cannot be a folder (an existing file, no permission) or a file is missing from the
    installed package.
    """
    missing = [str(src) for src in FILES if not src.is_file()]
    if missing:
        raise TargetError(f"broken fxscale install: {', '.join(missing)} not found (reinstall fxscale)")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise TargetError(f"cannot write the Jetson bundle to {dest}: it exists and is not a folder")
    written = []
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for src in FILES:
            target = dest / src.name
            shutil.copyfile(src, target)
            target.chmod(0o755 if src is RUNNER else 0o644)
            written.append(target)
    except OSError as e:
        raise TargetError(f"cannot write the Jetson bundle to {dest}: {e.strerror or e}") from e
    return written
