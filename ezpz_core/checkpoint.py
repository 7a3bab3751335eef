"""Checkpoint files: atomic directories, safe loading, and finding the newest good one.

A checkpoint is a directory ``step-00000042/`` holding ``state.pt`` and, written
last, the marker ``complete.json`` (sizes of the files it vouches for). It is
built under a hidden temporary name, flushed and fsynced, then renamed into
place, so a crash at any instant leaves either the whole checkpoint or nothing.
The ``latest`` and ``best`` pointers are small files replaced atomically after a
save succeeds. Loading uses ``torch.load(weights_only=True)``, which refuses to
run code hidden in a pickle.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

from ezpz_core.errors import EzpzError

log = logging.getLogger("ezpz")

STATE = "state.pt"
MARKER = "complete.json"
LATEST = "latest"
BEST = "best"
FORMAT = 1


class CheckpointError(EzpzError):
    """A checkpoint that cannot be written, read or applied."""


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write(root: Path, name: str, state: dict[str, Any]) -> Path:
    """Save ``state`` as checkpoint ``root/name`` atomically; returns its directory."""
    import torch

    final = root / name
    tmp = root / f".{name}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        with open(tmp / STATE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        marker = {"format": FORMAT, "step": state.get("progress", {}).get("step"),
                  "files": {STATE: (tmp / STATE).stat().st_size}}
        _write_file(tmp / MARKER, json.dumps(marker).encode())
        _fsync_dir(tmp)
        if final.exists():  # the same step saved twice (e.g. a signal right after a save)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as either
        shutil.rmtree(tmp, ignore_errors=True)
        cause = error.__context__ if isinstance(error, RuntimeError) else error
        reason = getattr(cause, "strerror", None) or str(error).splitlines()[0]
        raise CheckpointError(
            f"could not save checkpoint {final}: {reason}; the previous checkpoints are intact"
        ) from None
    return final


def snapshot(value: Any) -> Any:
    """A copy of a state that training can no longer change: tensors copied to host memory.

    ``state_dict()`` tensors share storage with the live parameters and
    optimizer buffers, which the next step updates in place; a checkpoint
    written in the background must hold the values of the step it names.
    """
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone() if value.device.type == "cpu" else value.detach().cpu()
    if isinstance(value, dict):
        return {key: snapshot(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(item) for item in value)
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    return copy.deepcopy(value)


def point(root: Path, pointer: str, name: str) -> None:
    """Move ``root/pointer`` to checkpoint ``name`` atomically.

    Not fsynced: a pointer lost or torn by a crash is harmless, because
    ``resolve`` checks what it points to and falls back to the newest complete
    checkpoint, whose own rename was made durable before any pruning.
    """
    tmp = root / f".{pointer}.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / pointer)


def read_pointer(root: Path, pointer: str) -> Path | None:
    try:
        name = (root / pointer).read_text().strip()
    except OSError:
        return None
    return root / name if name else None


def is_complete(path: Path) -> bool:
    """A checkpoint counts only with its marker, and only if the files match it."""
    try:
        marker = json.loads((path / MARKER).read_text())
        return all((path / f).stat().st_size == size for f, size in marker["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def complete(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith("step-") and p.is_dir()]
    return sorted((p for p in found if is_complete(p)), key=lambda p: p.name)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint (directory or ``state.pt``) without executing anything in it."""
    import pickle

    import torch

    file = path / STATE if path.is_dir() else path
    if path.is_dir() and not is_complete(path):
        raise CheckpointError(f"checkpoint {path} is incomplete (no valid {MARKER})")
    try:
        with warnings.catch_warnings():  # torch's notes on foreign pickles; we report our own
            warnings.simplefilter("ignore")
            state = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {file}") from None
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            found = str(error).split("Unsupported global: GLOBAL ", 1)[-1].split(" ", 1)[0]
            what = found if "Unsupported global" in str(error) else "arbitrary objects"
            raise CheckpointError(
                f"refusing to load {file}: it holds {what}, not only tensors and plain data, "
                "and unpickling it could run code"
            ) from None
        raise CheckpointError(f"checkpoint {file} is corrupt ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {file} is corrupt or truncated ({first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {file} is not an ezpz checkpoint")
    return state


def resolve(spec: str | Path, out_dir: Path | None) -> Path | None:
    """The checkpoint ``--resume`` means: a path, or ``latest`` in ``out_dir``.

    For ``latest``, a missing or damaged newest checkpoint falls back to the
    newest complete one, and says so. None when the run has no checkpoint yet.
    """
    if str(spec) != LATEST:
        path = Path(spec)
        if not path.exists():
            raise CheckpointError(f"checkpoint not found: {path}")
        return path
    if out_dir is None:
        raise CheckpointError("resume='latest' needs an out_dir to look in")
    root = out_dir / "checkpoints"
    pointed = read_pointer(root, LATEST)
    if pointed is not None and is_complete(pointed):
        return pointed
    candidates = complete(root)
    if not candidates:
        return None
    if pointed is not None:
        log.warning("checkpoint %s is damaged; resuming from %s instead", pointed,
                    candidates[-1])
    return candidates[-1]


def rng_state() -> dict[str, Any]:
    """Every RNG a step can draw from, as tensors and plain data (``weights_only``-safe)."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss,
                  cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        state["xpu"] = [torch.xpu.get_rng_state(i) for i in range(torch.xpu.device_count())]
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "xpu" in state and hasattr(torch, "xpu") and torch.xpu.is_available():
        for i, xpu_state in enumerate(state["xpu"]):
            torch.xpu.set_rng_state(xpu_state, i)
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


def check_fits(module_state: dict[str, Any], saved: dict[str, Any], source: Path) -> None:
    """Refuse a checkpoint of another model before any state is touched."""
    missing = [k for k in module_state if k not in saved]
    unexpected = [k for k in saved if k not in module_state]
    shapes = [
        f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}"
        for k, v in module_state.items()
        if k in saved and hasattr(v, "shape") and tuple(saved[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"unexpected keys {', '.join(unexpected[:3])}")
    if shapes:
        problems.append(f"shape mismatch {'; '.join(shapes[:3])} (checkpoint vs model)")
    if problems:
        raise CheckpointError(
            f"checkpoint {source} does not fit this model: {'; '.join(problems)}"
        )
