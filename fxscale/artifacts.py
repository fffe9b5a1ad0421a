"""Output files that are whole or absent, and models that carry the input they expect.

- ``staged_output(out)``: write artefacts into a temporary folder; they land in ``out`` together only when the
  block succeeds (a new ``out`` is renamed into place as a whole; in an existing one each file replaces its
  predecessor, rolled back on error). An error or Ctrl-C leaves ``out`` as it was. Files get the user's umask.
- The input contract: shape, channels, dtype, normalisation and label count of the input a model expects. It is
  recorded in plan.json (``meta["input"]``), in model.pt (a check node at the graph's input: a wrong input raises
  a one-line error naming the expected shape), in model.pt2 and in the ONNX metadata (``fxscale.input``).
- ``load(path)``: a model from model.pt2 (torch.export: no pickled code is run) that checks its input.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

from fxscale.errors import ExportError, FxscaleError

MODEL_FORMAT = "fxscale-model"
MODEL_VERSION = 1
_EXTRA = "fxscale.json"


# ---- files with the user's umask -------------------------------------------------------------------------
def umask() -> int:
    """The process umask (read from /proc/self/status; os.umask is set and restored only as a fallback)."""
    try:
        m = re.search(r"^Umask:\s*([0-7]+)", Path("/proc/self/status").read_text(), re.MULTILINE)
        if m:
            return int(m.group(1), 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def apply_umask(path: os.PathLike | str) -> None:
    """Give a file (0666) or folder (0777) the mode a plain open()/mkdir() would have (mkstemp/mkdtemp: 0600)."""
    p = Path(path)
    os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask())


def write_text_atomic(path: os.PathLike | str, text: str) -> Path:
    """Write a text file through a temporary name beside it (umask permissions); nothing partial is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ---- staged output folders -------------------------------------------------------------------------------
def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders it created (outermost first)."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
    return list(reversed(missing))


def _commit(tmp: Path, out: Path) -> None:
    """Move every file of `tmp` into `out`; if one move fails, the moved ones are put back as they were."""
    backup = tmp / f".previous-{uuid.uuid4().hex[:8]}"
    backup.mkdir()
    moved: list[str] = []
    try:
        for f in sorted(p for p in tmp.iterdir() if p != backup):
            if (out / f.name).exists():
                os.replace(out / f.name, backup / f.name)
            os.replace(f, out / f.name)
            moved.append(f.name)
    except BaseException:
        for name in moved:
            os.replace(out / name, tmp / name)
        for f in backup.iterdir():
            os.replace(f, out / f.name)
        raise


@contextmanager
def staged_output(out: os.PathLike | str) -> Iterator[Path]:
    """A temporary folder whose files become `out`'s files together when the block succeeds (see module doc)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FxscaleError(f"output folder {out} is a file, not a folder")
    created: list[Path] = []
    fresh = not out.exists()
    if fresh:
        created = _make_parents(out.absolute().parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.absolute().parent))
    else:
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        yield tmp
        apply_umask(tmp)
        for f in tmp.iterdir():
            if f.is_file():
                apply_umask(f)
        if fresh:
            os.rename(tmp, out)
        else:
            _commit(tmp, out)
            shutil.rmtree(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                break
        if isinstance(e, FxscaleError) and str(tmp) in str(e):  # name the file the user asked for
            raise type(e)(str(e).replace(str(tmp), str(out))) from e
        raise


# ---- the input contract ----------------------------------------------------------------------------------
def input_contract(x: torch.Tensor, *, dynamic_batch: bool = True, mean: Optional[Sequence[float]] = None,
                   std: Optional[Sequence[float]] = None, num_classes: Optional[int] = None) -> dict[str, Any]:
    """What a model expects: NCHW shape, channels, dtype, normalisation (when the data has one), label count."""
    if x.ndim < 3:
        raise FxscaleError(f"an input contract needs an (N, C, ...) example input, got shape {tuple(x.shape)}")
    norm = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]} if mean is not None and \
        std is not None else None
    return {"shape": [int(d) for d in x.shape[1:]], "channels": int(x.shape[1]),
            "size": [int(d) for d in x.shape[2:]], "dtype": str(x.dtype).replace("torch.", ""),
            "batch": "any" if dynamic_batch else int(x.shape[0]), "layout": "NCHW", "normalization": norm,
            "num_classes": num_classes}


def classes_of(model: nn.Module, x: torch.Tensor) -> Optional[int]:
    """The label count of a classifier (the last dim of a 2-d output), or None."""
    with torch.no_grad():
        out = model(x)
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.ndim == 2 else None


def _expected(shape: Sequence[int], dtype: str, batch: Any) -> str:
    return f"{'N' if batch == 'any' else batch} x {' x '.join(map(str, shape))} {dtype}"


def check_input(x: Any, shape: tuple, dtype: str = "float32", batch: Any = "any") -> Any:
    """`x` itself when it is an (N, *shape) tensor of `dtype`; else FxscaleError naming what the model takes."""
    if not isinstance(x, torch.Tensor):
        raise FxscaleError(f"the model takes a tensor of {_expected(shape, dtype, batch)}, got {type(x).__name__}")
    got = tuple(x.shape)
    problems = []
    if len(got) != len(shape) + 1:
        problems.append(f"{len(got)} dims instead of {len(shape) + 1}")
    else:
        if got[1] != shape[0]:
            problems.append(f"{got[1]} channels instead of {shape[0]}")
        if tuple(got[2:]) != tuple(shape[1:]):
            problems.append(f"size {'x'.join(map(str, got[2:]))} instead of {'x'.join(map(str, shape[1:]))}")
        if batch != "any" and got[0] != batch:
            problems.append(f"batch {got[0]} instead of {batch}")
    if str(x.dtype).replace("torch.", "") != dtype:
        problems.append(f"dtype {str(x.dtype).replace('torch.', '')} instead of {dtype}")
    if problems:
        raise FxscaleError(f"input of shape {got} does not match the model: it takes {_expected(shape, dtype, batch)}"
                           f" ({'; '.join(problems)})")
    return x


fx.wrap("check_input")  # symbolic tracing (and unpickling a GraphModule, which retraces) records it as one call


def with_input_check(gm: fx.GraphModule, contract: Mapping[str, Any]) -> fx.GraphModule:
    """Insert check_input after the first placeholder of `gm` (in place): a pickled model.pt checks its input."""
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    with gm.graph.inserting_after(placeholder):
        node = gm.graph.call_function(check_input, (placeholder, tuple(contract["shape"]), contract["dtype"],
                                                    contract["batch"]))
    node.meta["is_wrapped"] = True  # the generated code re-registers the wrap: model.pt unpickles without fxscale's help
    placeholder.replace_all_uses_with(node, delete_user_cb=lambda n: n is not node)
    gm.recompile()
    return gm


def contract_props(contract: Mapping[str, Any]) -> dict[str, str]:
    """ONNX metadata_props holding the contract."""
    return {"fxscale.input": json.dumps(dict(contract))}


# ---- model.pt2 (torch.export) and load() -----------------------------------------------------------------
def save_program(model: nn.Module, path: os.PathLike | str, x: torch.Tensor, contract: Mapping[str, Any],
                 info: Optional[Mapping[str, Any]] = None) -> Path:
    """torch.export `model` (a dynamic batch dim when the contract says so) and save it with the contract."""
    path = Path(path)
    args = (torch.cat([x, x]) if contract["batch"] == "any" else x,)
    dyn = ({0: torch.export.Dim("batch", min=1, max=2**20)},) if contract["batch"] == "any" else None
    try:
        with torch.no_grad():
            program = torch.export.export(model, args, dynamic_shapes=dyn)
        meta = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "input": dict(contract), **dict(info or {})}
        torch.export.save(program, path, extra_files={_EXTRA: json.dumps(meta, default=str)})
    except Exception as e:  # noqa: BLE001 - any torch.export failure: one line naming the file
        path.unlink(missing_ok=True)
        raise ExportError(f"torch.export of {type(model).__name__} to {path.name} failed: {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:300]}") from e
    return path


class LoadedModel(nn.Module):
    """A model loaded by fxscale.load: checks each input against its contract, then runs the exported program."""

    def __init__(self, program: Any, meta: Mapping[str, Any], path: Path) -> None:
        super().__init__()
        self.program = program.module()
        self.meta, self.path = dict(meta), path
        self.contract: dict[str, Any] = dict(meta.get("input") or {})
        self.training = False

    def train(self, mode: bool = True) -> "LoadedModel":
        """Exported programs are inference-only: only eval mode is accepted."""
        if mode:
            raise FxscaleError(f"{self.path} holds an exported inference program; train() is not supported")
        return self

    def forward(self, x: torch.Tensor) -> Any:
        """The program's output for `x` (FxscaleError when `x` does not match the contract)."""
        c = self.contract
        if c:
            check_input(x, tuple(c["shape"]), c["dtype"], c["batch"])
        return self.program(x)


def load(path: os.PathLike | str) -> LoadedModel:
    """The model of an fxscale output folder or model.pt2 file, without unpickling code (torch.export.load)."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.pt2"
    if p.suffix == ".pt":
        raise FxscaleError(f"{p} is a pickled model (torch.load(weights_only=False) runs code from the file); "
                           f"fxscale.load reads {p.with_suffix('.pt2').name} beside it")
    if not p.is_file():
        raise FxscaleError(f"no model file {p}")
    extra = {_EXTRA: ""}
    try:
        program = torch.export.load(p, extra_files=extra)
    except Exception as e:  # noqa: BLE001 - a torn or foreign file: one line naming it
        raise FxscaleError(f"{p} is not a model written by fxscale ({type(e).__name__}: {e})") from e
    try:
        meta = json.loads(extra[_EXTRA] or "{}")
    except json.JSONDecodeError as e:
        raise FxscaleError(f"{p}: its {_EXTRA} record is not valid JSON ({e})") from e
    if meta.get("format") != MODEL_FORMAT:
        raise FxscaleError(f"{p} was not written by fxscale (no {MODEL_FORMAT} record)")
    return LoadedModel(program, meta, p)


def write_model_files(model: fx.GraphModule, folder: Path, x: torch.Tensor, contract: Mapping[str, Any],
                      info: Optional[Mapping[str, Any]] = None, log: Any = None) -> Optional[str]:
    """model.pt2 (when torch.export can take the model) and model.pt (pickled, with its input check) in folder.

    Returns why model.pt2 was not written, or None. `model` gets the input check node (call this last).
    """
    problem = None
    try:
        save_program(model, folder / "model.pt2", x, contract, info)
    except ExportError as e:
        problem = str(e)
        if log is not None:
            log(f"warning: model.pt2 not written ({problem}); fxscale.load needs it, model.pt and model.onnx are")
    torch.save(with_input_check(model, contract), folder / "model.pt")
    return problem


__all__ = ["LoadedModel", "apply_umask", "check_input", "classes_of", "contract_props", "input_contract", "load",
           "save_program", "staged_output", "umask", "with_input_check", "write_model_files", "write_text_atomic"]
