"""Self-describing, atomic, safe checkpoints: tensors in safetensors, everything else in JSON.

A checkpoint is a directory ``<run_dir>/checkpoints/step_<step:09d>/`` holding

- ``model.safetensors``      the network's state_dict
- ``ema.safetensors``        the EMA weights (optional)
- ``optimizer.safetensors``  the optimizer's tensors (optional; its structure is in meta.json)
- ``state.safetensors``      other tensors such as RNG states (optional)
- ``meta.json``              format name and version, step, run config, optimizer structure,
                             JSON ``extra`` and the SHA-256 of every tensor file; written last.

Nothing is ever unpickled. A checkpoint is written into a hidden sibling directory
(``.tmp-step_...-<pid>``), fsynced, and renamed into place, so a crash at any moment leaves the
previous complete checkpoints loadable; leftovers are ignored when listing and removed on the next save.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle  # only for its exception type: nothing here unpickles anything
import re
import reprlib
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from .config import cut
from .outputs import check_output_dir, file_mode, fsync_dir, replace_dir
from .untrusted_pickle import check_pickle

log = logging.getLogger(__name__)

FORMAT_NAME = "ddpm-checkpoint"
FORMAT_VERSION = 1  # bump when a reader of the previous version would misread a new checkpoint

META = "meta.json"
FILES = {  # Checkpoint field -> tensor file in the checkpoint directory
    "model": "model.safetensors",
    "ema": "ema.safetensors",
    "optimizer": "optimizer.safetensors",
    "tensors": "state.safetensors",
}
_STEP_DIR = re.compile(r"^step_(\d+)$")
_LEFTOVER = re.compile(r"^\.(?:tmp|old)-(.+)-(\d+)$")  # a temp or replaced dir, tagged with its writer's pid
_TAGS = ("__tensor__", "__tuple__", "__dict__", "__float__")  # JSON objects that stand for other values
_CHUNK = 1 << 20

# Bounds on what an untrusted file may make us read before anything in it is checked (issue 13). A real
# meta.json is a few KB (the run config and the optimizer's structure) and nests about 8 deep; a safetensors
# header spends ~100 bytes per tensor, so 16 MiB is ~150k tensors (the paper's 256² U-Net has ~600).
MAX_JSON_BYTES = 16 << 20
MAX_JSON_DEPTH = 64
MAX_SAFETENSORS_HEADER_BYTES = 16 << 20
# A torch state dict pickles to ~140 bytes per tensor (its data.pkl, or the pickles heading a legacy file).
MAX_PICKLE_BYTES = 64 << 20


class CheckpointError(ValueError):
    """A checkpoint or weight file is missing parts, corrupt, of an unknown format, or unsafe."""


@dataclass
class Checkpoint:
    """Everything needed to resume a run (or, with only ``model``, to sample from it)."""

    step: int
    config: dict[str, Any]                       # RunConfig.to_dict()
    model: dict[str, torch.Tensor]               # network state_dict
    ema: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] | None = None      # a torch.optim state_dict, restored to the exact structure
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)   # e.g. RNG states
    extra: dict[str, Any] = field(default_factory=dict)              # JSON-able (data position, ...)


# --- public API --------------------------------------------------------------------------------

def save_checkpoint(run_dir: str | Path, ckpt: Checkpoint, keep: int | None = None) -> Path:
    """Atomically write ``ckpt`` to ``<run_dir>/checkpoints/step_<step:09d>`` and prune to ``keep``.

    An existing checkpoint of the same step is replaced. With ``keep``, all but the newest ``keep``
    complete checkpoints are deleted afterwards; the one just written is always kept, even when
    checkpoints of later steps exist (e.g. after resuming from an earlier one).
    """
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise CheckpointError(f"keep must be a positive int or None, got {keep!r}")
    step = _check_step(ckpt.step)
    ckpt_dir = Path(run_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(ckpt_dir)
    final = _write_checkpoint_dir(ckpt_dir / f"step_{step:09d}", ckpt)
    if keep is not None:
        _prune(ckpt_dir, keep, final)
    return final


def save_model(path: str | Path, config: dict[str, Any], model_state: dict[str, torch.Tensor],
               overwrite: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write a model-only checkpoint directory at ``path`` (step 0, no optimizer, ``extra`` metadata).

    An existing non-empty ``path`` (a training run, say) is refused unless ``overwrite``, which replaces it.
    """
    path = check_output_dir(path, "convert", overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent, only_name=path.name)
    return _write_checkpoint_dir(path, Checkpoint(step=0, config=config, model=model_state, extra=extra or {}))


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> Checkpoint:
    """Load and validate a checkpoint directory, or the latest complete checkpoint of a run directory."""
    return _read_checkpoint_dir(_checkpoint_dir(Path(path)), map_location)


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about itself, read without loading (or hashing) a single tensor."""

    path: Path                                   # the checkpoint directory (a run directory resolved to its latest)
    step: int
    config: dict[str, Any]
    tensors: dict[str, dict[str, tuple[str, tuple[int, ...]]]]  # field ("model", "ema", ...) -> name -> (dtype, shape)


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """meta.json and the safetensors headers of a checkpoint (or a run's latest): names, dtypes and shapes.

    Reads at most MAX_JSON_BYTES of meta.json and MAX_SAFETENSORS_HEADER_BYTES of each header, so that a
    caller can compare what a config asks for with what the files hold before allocating anything.
    """
    path = _checkpoint_dir(Path(path))
    meta = _read_meta(path)
    tensors = {}
    for key, name in FILES.items():
        info = meta["files"].get(name)
        if info is None:
            continue
        file = path / name
        if not isinstance(info, dict) or not file.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {name}")
        header = read_safetensors_header(file)
        _listed_names(info, header, file)
        tensors[key] = header
    if "model" not in tensors:
        raise CheckpointError(f"checkpoint {path} lists no {FILES['model']} in {META}")
    return CheckpointInfo(path, meta["step"], meta["config"], tensors)


def read_safetensors_header(file: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of every tensor in a safetensors file, from its header alone (no tensor is read).

    The header's length (its first 8 bytes) is checked against MAX_SAFETENSORS_HEADER_BYTES and the file's size
    before it is read; safetensors then checks that every tensor's bytes lie inside the file.
    """
    file = Path(file)
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CheckpointError(f"{file} cannot be read: {e}") from None
    if len(head) < 8:
        raise CheckpointError(f"{file} is not a readable safetensors file: {size} bytes, shorter than its header")
    n = int.from_bytes(head, "little")
    if n > min(MAX_SAFETENSORS_HEADER_BYTES, size - 8):
        raise CheckpointError(f"{file} is not a readable safetensors file: its header claims {n} bytes (the file "
                              f"has {size}; a header may hold at most {MAX_SAFETENSORS_HEADER_BYTES})")
    try:
        with safetensors.safe_open(str(file), framework="pt") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{file} is not a readable safetensors file: {_first_line(e)}") from None


def read_json(path: str | Path, error: type[ValueError] = CheckpointError) -> Any:
    """A JSON file from an untrusted source: at most MAX_JSON_BYTES, nested at most MAX_JSON_DEPTH deep.

    Anything else is an ``error`` naming the file — never a RecursionError or MemoryError (``"[" * 10**5``
    overflows the parser's stack; code that walks the result recursively needs the depth bound too).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = read_at_most(f, MAX_JSON_BYTES + 1)
    except OSError as e:
        raise error(f"{path} cannot be read: {e}") from None
    if len(data) > MAX_JSON_BYTES:
        raise error(f"{path} is larger than {MAX_JSON_BYTES} bytes, more than a JSON file here may hold")
    deep = f"{path} nests JSON deeper than {MAX_JSON_DEPTH} levels"
    try:
        obj = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise error(deep) from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, too many digits, not UTF-8
        raise error(f"{path} is not valid JSON (truncated or corrupt?): {_first_line(e)}") from None
    todo = [(obj, 1)]  # iterative: a recursive walk is what the bound protects
    while todo:
        value, depth = todo.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise error(deep)
            todo.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return obj


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run (those with a meta.json), ordered by step."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    found = []
    for entry in ckpt_dir.iterdir():
        m = _STEP_DIR.match(entry.name)
        # only the final rename makes a step_ directory, so meta.json there means it is complete
        if m and entry.is_dir() and (entry / META).is_file():
            found.append((int(m.group(1)), entry))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint of the highest step in a run, or None."""
    cps = list_checkpoints(run_dir)
    return cps[-1] if cps else None


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``safetensors.torch.save_file``, whose I/O failures (a full disk) come back as the OSError they are, and
    whose file (created 0600) gets the user's umask like every other file the project writes."""
    try:
        safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})
    except safetensors.SafetensorError as e:
        m = re.search(r"os error (\d+)", str(e))
        if m is None:
            raise
        code = int(m.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None
    os.chmod(path, file_mode())


def set_aside_checkpoint(path: str | Path) -> Path:
    """Rename a (damaged) checkpoint to ``damaged-step_...`` beside it: kept for inspection, never listed again."""
    path = Path(path)
    target = path.parent / f"damaged-{path.name}"
    n = 1
    while target.exists():
        n += 1
        target = path.parent / f"damaged-{path.name}.{n}"
    os.rename(path, target)
    return target


def safe_torch_load(path: str | Path, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """Load a foreign ``.bin``/``.pt`` (or ``.safetensors``) weight file without running pickled code.

    Checked before torch.load sees it: a torch zip file may unpack to no more than ``max_bytes`` (default: the
    file's own size) and must hold only stored records (``torch.save`` never compresses, so a compressed record
    is a crafted file, perhaps a zip bomb); its pickle, read at most MAX_PICKLE_BYTES, must pass the opcode
    pre-scan of ``ddpm.untrusted_pickle`` (no memo DAG that hashes or prints exponentially, no deep nesting).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path, "cpu")
    _check_torch_file(path, path.stat().st_size if max_bytes is None else max_bytes)
    try:
        # weights_only=True: the unpickler only builds tensors and plain containers, never calls code
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds objects other than tensors and was not loaded "
            f"(torch.load(weights_only=True) refused it: {_first_line(e)})"
        ) from None
    except Exception as e:  # a truncated zip, a foreign format, ...
        raise CheckpointError(f"{path} could not be read as a torch weight file: {_first_line(e)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}; expected a dict of tensors")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointError(
            f"{path} holds {len(bad)} non-tensor entries {_brief(bad[:5])}; expected a flat dict of name -> tensor"
        )
    return dict(obj)


# --- writing -----------------------------------------------------------------------------------

def _write_checkpoint_dir(final: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` into a temp sibling of ``final``, fsync it, and rename it to ``final``."""
    step = _check_step(ckpt.step)
    # prepare and validate everything before touching the disk, so bad input leaves no trace
    config = ckpt.config.to_dict() if hasattr(ckpt.config, "to_dict") else ckpt.config  # a RunConfig too
    for what, value in (("config", config), ("extra", ckpt.extra)):
        if not isinstance(value, dict):
            raise CheckpointError(f"checkpoint {what} must be a dict, got {type(value).__name__}")
        _jsonable(value, what)
    groups: dict[str, dict[str, torch.Tensor]] = {"model": _prepare(ckpt.model, "model")}
    if ckpt.ema is not None:
        groups["ema"] = _prepare(ckpt.ema, "ema")
    opt_structure = None
    if ckpt.optimizer is not None:
        opt_tensors: dict[str, torch.Tensor] = {}
        opt_structure = _encode(ckpt.optimizer, ("optimizer",), opt_tensors)
        if opt_tensors:
            groups["optimizer"] = _prepare(opt_tensors, "optimizer")
    if ckpt.tensors:
        groups["tensors"] = _prepare(ckpt.tensors, "tensors")

    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():  # our own leftover from an earlier failed attempt
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        files = {}
        for key, tensors in groups.items():
            name = FILES[key]
            save_safetensors(tensors, tmp / name)
            files[name] = {
                "sha256": _sha256_and_fsync(tmp / name),
                "bytes": (tmp / name).stat().st_size,
                "names": list(tensors),  # safetensors sorts its entries; this restores the dict's order
            }
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "step": step,
            "config": config,
            "optimizer": opt_structure,
            "extra": ckpt.extra,
            "files": files,
            "written_by": {"torch": torch.__version__, "safetensors": safetensors.__version__},
        }
        _write_json(tmp / META, meta)  # last: a directory with meta.json has all its files
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)
    return final


def _prune(ckpt_dir: Path, keep: int, just_saved: Path) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, never the one just saved."""
    others = [p for p in list_checkpoints(ckpt_dir.parent) if p != just_saved]
    for path in others[: max(len(others) - (keep - 1), 0)]:
        _remove_checkpoint(path)


def _remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint so that no half-deleted directory can ever be listed as complete."""
    trash = path.parent / f".old-{path.name}-{os.getpid()}"
    if trash.exists():
        shutil.rmtree(trash)
    os.rename(path, trash)  # atomic: from here on it is a leftover, not a checkpoint
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(directory: Path, only_name: str | None = None) -> list[Path]:
    """Remove the ``.tmp-NAME-PID`` / ``.old-NAME-PID`` directories left in ``directory`` by writers killed
    mid-save (this process or dead ones; only NAME's with ``only_name``), logging each; the removed ones.

    A directory whose pid is a running process (another user's too) may be a save in progress and is left alone.
    """
    removed = []
    for entry in directory.iterdir():
        m = _LEFTOVER.match(entry.name)
        if not m or (only_name is not None and m.group(1) != only_name):
            continue
        pid = int(m.group(2))
        if pid == os.getpid() or not _pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed %s, left by an interrupted save (%s)", entry,
                     "of this process" if pid == os.getpid() else f"process {pid} is no longer running")
            removed.append(entry)
    return removed


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except (OverflowError, OSError):
        return False
    return True


def _check_step(step: Any) -> int:
    """``step`` as a non-negative int, or a CheckpointError."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint step must be a non-negative int, got {step!r}")
    return step


def _prepare(tensors: Any, what: str) -> dict[str, torch.Tensor]:
    """Detached, dense, contiguous tensors with no two sharing storage (safetensors refuses both)."""
    if not isinstance(tensors, dict):
        raise CheckpointError(f"{what} must be a dict of name -> tensor, got {type(tensors).__name__}")
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[str, int]] = set()
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{what} has a non-string key {name!r}; tensor names must be strings")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{what}[{name!r}] is a {type(t).__name__}, not a tensor")
        if t.layout != torch.strided:
            raise CheckpointError(f"{what}[{name!r}] is a {t.layout} tensor; only dense tensors can be saved")
        t = t.detach().resolve_conj().resolve_neg()
        if not t.is_contiguous():
            t = t.contiguous()  # a copy with its own storage
        key = (str(t.device), t.untyped_storage().data_ptr())
        if t.numel() and key in seen:
            t = t.clone(memory_format=torch.contiguous_format)  # shares storage with an earlier entry
            key = (str(t.device), t.untyped_storage().data_ptr())
        seen.add(key)
        out[name] = t
    return out


def _encode(obj: Any, path: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON value standing for ``obj``; tensors are moved to ``tensors`` and referenced by name.

    Tuples, non-string dict keys (the optimizer's int param ids) and non-finite floats get tagged
    objects so that decoding gives back exactly the same structure and types.
    """
    where = "/".join(path)
    if isinstance(obj, torch.Tensor):
        name, n = where, 1
        while name in tensors:
            n += 1
            name = f"{where}#{n}"
        tensors[name] = obj
        return {"__tensor__": name}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if hasattr(obj, "item") and hasattr(obj, "dtype") and getattr(obj, "ndim", None) == 0:
        return _encode(obj.item(), path, tensors)  # a numpy scalar, e.g. a learning rate from numpy
    if isinstance(obj, list):
        return [_encode(v, (*path, str(i)), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, (*path, str(i)), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        plain = all(isinstance(k, str) for k in obj) and not (len(obj) == 1 and next(iter(obj)) in _TAGS)
        if plain:
            return {k: _encode(v, (*path, k), tensors) for k, v in obj.items()}
        return {"__dict__": [[_encode(k, (*path, "key"), tensors), _encode(v, (*path, str(k)), tensors)]
                             for k, v in obj.items()]}
    raise CheckpointError(
        f"{where} is a {type(obj).__name__}; checkpoints store only tensors, numbers, strings, "
        "None, lists, tuples and dicts"
    )


def _jsonable(value: Any, what: str) -> None:
    """Check that ``value`` is plain JSON (no NaN/Inf, which standard JSON cannot hold)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {what} must be plain JSON (finite numbers, str keys): {e}") \
            from None


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON and fsync it."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, allow_nan=False))
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _sha256_and_fsync(path: Path) -> str:
    """SHA-256 of a file just written, after forcing it to disk."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in _chunks(f):
            h.update(chunk)
        os.fsync(f.fileno())
    return h.hexdigest()


# --- reading -----------------------------------------------------------------------------------

def _read_checkpoint_dir(path: Path, map_location: str) -> Checkpoint:
    """Validate meta.json and the tensor files' hashes, then load them."""
    meta = _read_meta(path)
    files = meta["files"]
    for name, info in files.items():
        _verify_file(path, name, info)
    groups = {}
    for key, name in FILES.items():
        if name in files:
            groups[key] = _in_order(_load_safetensors(path / name, map_location), files[name], path / name)
    if "model" not in groups:
        raise CheckpointError(f"checkpoint {path} lists no {FILES['model']} in {META}")
    optimizer = None
    if meta["optimizer"] is not None:
        try:
            optimizer = _decode(meta["optimizer"], groups.get("optimizer", {}), path)
        except (TypeError, ValueError, KeyError) as e:  # a crafted tag: {"__tuple__": 3}, {"__float__": "x"}, ...
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{path / META} has a malformed optimizer structure ({_first_line(e)})") \
                from None
    return Checkpoint(
        step=meta["step"],
        config=meta["config"],
        model=groups["model"],
        ema=groups.get("ema"),
        optimizer=optimizer,
        tensors=groups.get("tensors", {}),
        extra=meta["extra"],
    )


def _checkpoint_dir(path: Path) -> Path:
    """The checkpoint directory ``path`` names: itself, its meta.json's folder, or a run's latest checkpoint."""
    if path.is_file() and path.name == META:
        path = path.parent
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint or run directory at {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; expected a checkpoint directory or a run directory")
    if not (path / META).exists():
        if _STEP_DIR.match(path.name):
            raise CheckpointError(f"checkpoint {path} is incomplete: {META} is missing")
        latest = latest_checkpoint(path)
        if latest is None and path.name == "checkpoints":  # given the run's checkpoints/ folder itself
            latest = latest_checkpoint(path.parent)
        if latest is None:
            raise FileNotFoundError(
                f"no complete checkpoint in {path} (looked for {path / 'checkpoints'}/step_*/{META})"
            )
        path = latest
    return path


def _read_meta(path: Path) -> dict[str, Any]:
    """Parse and check meta.json: format, version, step and the file table."""
    meta_path = path / META
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: {META} is missing")
    meta = read_json(meta_path)  # bounded in size and depth: _decode and from_dict recurse over it
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{meta_path} is not a {FORMAT_NAME!r} checkpoint (format: {found!r})")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{meta_path} has an unknown format version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path} has format version {version}, newer than this ddpm reads ({FORMAT_VERSION}); "
            "upgrade ddpm to load it"
        )
    missing = [k for k in ("step", "config", "optimizer", "extra", "files") if k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path} lacks the entries {missing}")
    step = meta["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{meta_path} has an invalid step {step!r}")
    m = _STEP_DIR.match(path.name)
    if m and int(m.group(1)) != step:
        raise CheckpointError(f"{meta_path} says step {step} but the directory is named {path.name}")
    if not all(isinstance(meta[k], dict) for k in ("files", "extra", "config")):
        raise CheckpointError(f"{meta_path}: 'config', 'files' and 'extra' must be JSON objects")
    unknown = set(meta["files"]) - set(FILES.values())
    if unknown:  # also keeps a crafted meta.json from pointing outside the directory
        raise CheckpointError(f"{meta_path} lists unknown files {sorted(unknown)}")
    return meta


def _verify_file(path: Path, name: str, info: Any) -> None:
    """Check that a listed tensor file is present with the recorded size and SHA-256."""
    file = path / name
    if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
        raise CheckpointError(f"{path / META} has no sha256 for {name}")
    if not file.is_file():
        raise CheckpointError(f"checkpoint {path} is missing {name}")
    size = file.stat().st_size
    if "bytes" in info and size != info["bytes"]:
        raise CheckpointError(f"{file} has {size} bytes, expected {info['bytes']}: truncated or corrupt")
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in _chunks(f):
            h.update(chunk)
    if h.hexdigest() != info["sha256"]:
        raise CheckpointError(f"{file} is corrupt: its SHA-256 differs from the one recorded in {META}")


def _load_safetensors(file: Path, map_location: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a malformed file is a CheckpointError naming it."""
    try:
        return safetensors.torch.load_file(str(file), device=map_location)
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{file} is not a readable safetensors file: {_first_line(e)}") from None


def _check_torch_file(path: Path, limit: int) -> None:
    """Refuse a torch weight file that would unpack past ``limit`` bytes, or whose pickle is a bomb, unloaded."""
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"  # torch.load's own test (zipfile.is_zipfile looks anywhere)
            if not is_zip:  # a legacy file: 5 pickles (magic, protocol, system, the object, storage keys), then data
                f.seek(0)
                check_pickle(read_at_most(f, MAX_PICKLE_BYTES), str(path), CheckpointError, count=5)
                return
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            _check_zip_records(path, infos, limit)
            for info in infos:
                if info.filename.rsplit("/", 1)[-1] == "data.pkl":  # torch reads <first folder>/data.pkl
                    check_pickle(_read_record(path, z, info), f"{path}:{info.filename}", CheckpointError)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path} could not be read as a torch weight file: {_first_line(e)}") from None


def _check_zip_records(path: Path, infos: list[zipfile.ZipInfo], limit: int) -> None:
    """The zip directory's records: at most ``limit`` bytes unpacked, all stored, none claiming past the file."""
    total = sum(i.file_size for i in infos)
    if total > limit:
        raise CheckpointError(f"{path}: its {len(infos)} zip records unpack to {total} bytes, more than the "
                              f"{limit} bytes allowed for it (a zip bomb, or weights far larger than expected)")
    size = path.stat().st_size
    for i in infos:
        if i.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{path}: zip record {i.filename[:100]!r} is compressed (method "
                                  f"{i.compress_type}); torch.save stores every record as is, so this file was "
                                  "crafted (a zip bomb?)")
        if i.file_size != i.compress_size or i.header_offset + i.compress_size > size:
            raise CheckpointError(f"{path}: zip record {i.filename[:100]!r} claims {i.file_size} bytes, which "
                                  f"the file's {size} bytes do not hold (truncated or crafted)")


def _read_record(path: Path, z: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A zip record of at most MAX_PICKLE_BYTES (its size was checked against the file's by the caller)."""
    if info.file_size > MAX_PICKLE_BYTES:
        raise CheckpointError(f"{path}: its pickle {info.filename[:100]!r} has {info.file_size} bytes, more than "
                              f"a state dict's can ({MAX_PICKLE_BYTES})")
    with z.open(info) as f:
        return read_at_most(f, MAX_PICKLE_BYTES)


def _listed_names(info: dict[str, Any], found: Any, file: Path) -> list[str]:
    """meta.json's list of a tensor file's names: strings, exactly the names the file holds."""
    names = info.get("names", list(found))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{file.parent / META}: 'names' of {file.name} must be a list of strings, got "
                              f"{_brief(names)}")
    if sorted(names) != sorted(found):
        raise CheckpointError(f"{file} holds {len(found)} tensors {_brief(sorted(found))}, but {META} lists "
                              f"{len(names)} names {_brief(names)}")
    return names


def _in_order(tensors: dict[str, torch.Tensor], info: dict[str, Any], file: Path) -> dict[str, torch.Tensor]:
    """The loaded tensors in the order they were saved, after checking that none is missing or extra."""
    return {name: tensors[name] for name in _listed_names(info, tensors, file)}


def _decode(obj: Any, tensors: dict[str, torch.Tensor], path: Path) -> Any:
    """Invert ``_encode``: rebuild tuples, non-string keys, non-finite floats and tensors."""
    if isinstance(obj, list):
        return [_decode(v, tensors, path) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (tag, value), = obj.items()
        if tag == "__tensor__":
            if value not in tensors:
                raise CheckpointError(f"{path / FILES['optimizer']} lacks the optimizer tensor {value!r}")
            return tensors[value]
        if tag == "__tuple__":
            return tuple(_decode(v, tensors, path) for v in value)
        if tag == "__dict__":
            return {_decode(k, tensors, path): _decode(v, tensors, path) for k, v in value}
        if tag == "__float__":
            return float(value)
    return {k: _decode(v, tensors, path) for k, v in obj.items()}


def read_at_most(f: Any, limit: int) -> bytes:
    """Up to ``limit`` bytes of a binary file, read in pieces (``f.read(limit)`` would allocate ``limit`` at once)."""
    parts, total = [], 0
    while total < limit and (part := f.read(min(_CHUNK, limit - total))):
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def _chunks(f: Any) -> Iterator[bytes]:
    """A binary file's contents in 1 MiB pieces."""
    while chunk := f.read(_CHUNK):
        yield chunk


_BRIEF = reprlib.Repr()  # keyword arguments need Python 3.12
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother = 2, 60, 60
_BRIEF.maxtuple = _BRIEF.maxlist = _BRIEF.maxdict = _BRIEF.maxset = _BRIEF.maxfrozenset = 4


def _brief(value: Any) -> str:
    """A short repr of an untrusted value for a message: few items, two levels, 200 characters at most."""
    return cut(_BRIEF.repr(value), 200)


def _first_line(e: BaseException) -> str:
    """The telling line of an exception's message (torch's can run to pages)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in lines:  # torch's weights-only refusal names the forbidden global or opcode on such a line
        if any(word in ln for word in ("GLOBAL", "Unsupported", "blocked", "not an allowed")):
            return ln[:300]
    return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__
