"""Loads and looks up the catalog in ``data/``: architectures, GPUs, instances, training stacks.

Everything is validated by pydantic when first loaded and cached for the process. Lookups are
case-insensitive, accept aliases, and fail with a "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from stat import S_ISREG
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from planner.errors import PlannerError
from planner.schema.calibration import CALIBRATION_SCHEMA_VERSION, REQUIRED, Calibration
from planner.schema.catalog import Architecture, Gpu, Instance
from planner.schema.stack import StackProfile

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def data_dir() -> Path:
    """``$PLANNER_DATA_DIR`` (read at every call), else the wheel's bundled copy, else the
    checkout's ``data/``. Every cached record below is cached per data folder, so a call made
    with another ``PLANNER_DATA_DIR`` reads that folder."""
    env = os.environ.get("PLANNER_DATA_DIR")
    if env:
        return Path(env)
    return _bundled_data_dir()


@cache
def _bundled_data_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "_data", here.parent / "data"):
        if candidate.is_dir():
            return candidate
    raise PlannerError("cannot find the catalog folder data/ (set PLANNER_DATA_DIR)")


def read_text(path: Path, what: str = "", missing: str = "no such file") -> str:
    """A file's UTF-8 text; a missing, unreadable or undecodable file is one ``PlannerError``
    that names it (``what`` is the option it came from, if any)."""
    where = f"{what} {path}" if what else str(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlannerError(f"{where}: {missing}") from None
    except IsADirectoryError:
        raise PlannerError(f"{where}: is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlannerError(f"{where}: cannot be read ({exc.__class__.__name__})") from None


def read_data_json(path: Path) -> Any:
    """A data file's JSON; a missing, unreadable or malformed file is one ``PlannerError`` that
    names it (and the line and column of a syntax error)."""
    text = read_text(path, missing="missing data file (reinstall, or set PLANNER_DATA_DIR)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlannerError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def validation_message(path: Path | str, exc: ValidationError, index: int | None = None) -> str:
    """``file[: record i]: field.path: what is wrong`` for a data file that fails its schema."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    record = f" record {index}" if index is not None else ""
    return f"{path}{record}: field {where}: {err['msg']}"


def _records(path: Path, model: type[T]) -> tuple[T, ...]:
    raw = read_data_json(path)
    if not isinstance(raw, list):
        raise PlannerError(f"{path}: expected a list of records, got {type(raw).__name__}")
    out = []
    for i, r in enumerate(raw):
        try:
            out.append(model.model_validate(r))
        except ValidationError as exc:
            raise PlannerError(validation_message(path, exc, i)) from None
    return tuple(out)


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


T = TypeVar("T", bound=BaseModel)


def _did_you_mean(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _lookup(kind: str, name: str, index: dict[str, T]) -> T:
    key = _norm(name)
    if key in index:
        return index[key]
    raise PlannerError(f"unknown {kind} {name!r}{_did_you_mean(key, list(index))} (see `plan list {kind}s`)")


def _index(records: list[T], names: Callable[[T], list[str]]) -> dict[str, T]:
    out: dict[str, T] = {}
    for rec in records:
        for n in names(rec):
            key = _norm(n)
            if key in out and out[key] is not rec:
                raise ValueError(f"catalog name {n!r} is used twice")
            out[key] = rec
    return out


# --- architectures -----------------------------------------------------------------------------


def architecture_from_config(fields: dict, *, name: str, source: str | None = None) -> Architecture:
    """Validate a ``config.json`` dict as a supported architecture (raises PlannerError)."""
    meta = fields.get("_catalog") or {}
    if not isinstance(meta, dict):
        raise PlannerError(f"{name}: field _catalog must be an object")
    model_type = fields.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise PlannerError(f"{name}: model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    try:
        return Architecture(
            **{k: v for k, v in fields.items() if k not in ("name", "hf_id", "aliases", "source", "_catalog")},
            name=meta.get("name", name),
            hf_id=meta.get("hf_id"),
            aliases=meta.get("aliases", []),
            source=meta.get("source", source),
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise PlannerError(f"{name}: invalid config.json field {where}: {err['msg']}") from None


def _architecture_file(p: Path) -> Architecture:
    fields = read_data_json(p)
    if not isinstance(fields, dict):
        raise PlannerError(f"{p}: expected a config.json object, got {type(fields).__name__}")
    try:
        return architecture_from_config(fields, name=p.stem, source=str(p))
    except PlannerError as exc:
        raise PlannerError(f"{p}: {str(exc).removeprefix(p.stem + ': ')}") from None


def architectures() -> tuple[Architecture, ...]:
    return _architectures_in(data_dir())


@cache
def _architectures_in(folder: Path) -> tuple[Architecture, ...]:
    folder = folder / "architectures"
    return tuple(_architecture_file(p) for p in sorted(folder.glob("*.json")))


def tiny_architectures() -> tuple[Architecture, ...]:
    return _tiny_architectures_in(data_dir())


@cache
def _tiny_architectures_in(folder: Path) -> tuple[Architecture, ...]:
    """Small Llama shapes for harness runs on a CPU (``data/architectures/tiny/``): found by name
    like any model, but not in the catalog's listings or ``all``."""
    folder = folder / "architectures" / "tiny"
    return tuple(_architecture_file(p) for p in sorted(folder.glob("*.json")))


def _arch_index() -> dict[str, Architecture]:
    return _arch_index_in(data_dir())


@cache
def _arch_index_in(folder: Path) -> dict[str, Architecture]:
    every = [*_architectures_in(folder), *_tiny_architectures_in(folder)]
    return _index(every, lambda a: [a.name, *([a.hf_id] if a.hf_id else []), *a.aliases])


def load_config_file(path: Path) -> Architecture:
    """Read a user's ``config.json`` (or a folder holding one)."""
    if path.is_dir():
        path = path / "config.json"
    if path.exists() and not path.is_file():
        raise PlannerError(f"{path} is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PlannerError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise PlannerError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlannerError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise PlannerError(f"{path}: JSON nested too deeply") from None
    if not isinstance(fields, dict):
        raise PlannerError(f"{path}: a config.json must hold a JSON object")
    return architecture_from_config(fields, name=fields.get("_name_or_path") or str(path), source=str(path))


def find_model(name: str) -> Architecture:
    """An alias (``7b``), a catalog name, an HF id, or a path to a ``config.json`` (or its folder).

    A name that starts like a path (``/``, ``./``, ``../``, ``~``), ends in ``.json`` or exists
    on disk is read as one; anything else is looked up in the catalog.
    """
    if not name.strip():
        raise PlannerError("missing --model (e.g. --model 70b); see `plan --help`")
    key = _norm(name)
    if key in _arch_index():
        return _arch_index()[key]
    looks_like_path = name.startswith(("/", "./", "../", "~")) or name.endswith(".json")
    if looks_like_path or Path(name).exists():
        return load_config_file(Path(name).expanduser())
    return _lookup("model", name, _arch_index())


# --- hardware ----------------------------------------------------------------------------------


def gpus() -> tuple[Gpu, ...]:
    return _gpus_in(data_dir())


@cache
def _gpus_in(folder: Path) -> tuple[Gpu, ...]:
    return _records(folder / "gpus.json", Gpu)


def instances() -> tuple[Instance, ...]:
    return _instances_in(data_dir())


@cache
def _instances_in(folder: Path) -> tuple[Instance, ...]:
    recs = _records(folder / "instances.json", Instance)
    known = {g.id for g in _gpus_in(folder)}
    for r in recs:
        if r.gpu not in known:
            raise ValueError(f"instance {r.id} names unknown GPU {r.gpu!r}")
    return recs


def _gpu_index() -> dict[str, Gpu]:
    return _gpu_index_in(data_dir())


@cache
def _gpu_index_in(folder: Path) -> dict[str, Gpu]:
    return _index(list(_gpus_in(folder)), lambda g: [g.id, *g.aliases])


def _instance_index() -> dict[str, Instance]:
    return _instance_index_in(data_dir())


@cache
def _instance_index_in(folder: Path) -> dict[str, Instance]:
    return _index(list(_instances_in(folder)), lambda i: [i.id, *i.aliases])


def find_gpu(name: str) -> Gpu:
    return _lookup("gpu", name, _gpu_index())


def find_instance(name: str) -> Instance:
    return _lookup("instance", name, _instance_index())


# --- calibrations ------------------------------------------------------------------------------


def _names_a_file(name: str) -> bool:
    """A calibration given as a path (ends in ``.json`` or holds a ``/``), not by name."""
    return name.endswith(".json") or "/" in name


def calibration_path(name: str) -> Path:
    """A calibration by name (``data/calibration/<name>.json``) or by path (ends in ``.json``)."""
    return Path(name) if _names_a_file(name) else data_dir() / "calibration" / f"{name}.json"


def load_calibration(name: str = "default") -> Calibration:
    """A calibration by name or path; ``auto`` (no GPU known) is ``default``. Cached by the
    file's absolute path, size and modification time, so a changed file or data folder
    (``PLANNER_DATA_DIR``) is read again (one ``stat`` per call, no read)."""
    if name == "auto":
        name = "default"
    if _names_a_file(name):
        where = os.path.abspath(name)
    else:
        where = _named_calibration_path(name, os.environ.get("PLANNER_DATA_DIR") or "")
    try:
        st = os.stat(where)
    except OSError:
        st = None
    if st is None or not S_ISREG(st.st_mode):
        known = ", ".join(sorted(p.stem for p in (data_dir() / "calibration").glob("*.json")))
        raise PlannerError(f"no calibration {name!r} ({calibration_path(name)}); known: {known}, or a path to a .json file")
    return _load_calibration(name, where, st.st_size, st.st_mtime_ns)


@cache
def _named_calibration_path(name: str, env_data_dir: str) -> str:
    return os.path.join(env_data_dir or _bundled_data_dir(), "calibration", f"{name}.json")


@cache
def _load_calibration(name: str, where: str, size: int, mtime_ns: int) -> Calibration:
    path = calibration_path(name)
    raw = read_data_json(path)
    if not isinstance(raw, dict):
        raise PlannerError(f"{path}: expected a calibration object, got {type(raw).__name__}")
    version = raw.get("schema_version", 1)
    if version != CALIBRATION_SCHEMA_VERSION:
        raise PlannerError(
            f"{path}: calibration schema_version {version!r}; this planner reads {CALIBRATION_SCHEMA_VERSION} "
            "(refit it with `harness calibrate`, or use a planner of that version)"
        )
    try:
        cal = Calibration.model_validate(raw)
    except ValidationError as exc:
        raise PlannerError(validation_message(path, exc)) from None
    missing = [k for k in REQUIRED if k not in cal.coefficients]
    if missing and name != "default":
        # a calibration written before a coefficient existed: that coefficient's cited default
        base = load_calibration("default")
        cal = cal.model_copy(update={"coefficients": {**cal.coefficients, **{k: base.coefficients[k] for k in missing}}})
        missing = [k for k in REQUIRED if k not in cal.coefficients]
    if missing:
        raise PlannerError(f"calibration {name!r} lacks {', '.join(missing)}")
    return cal


def calibration_for(name: str, gpu: str) -> Calibration:
    """``--calibration``'s value resolved for one GPU: ``auto`` takes the calibration fitted on
    that GPU (``data/calibration/<gpu>.json``) when there is one, else ``default``."""
    if name == "auto":
        fitted = data_dir() / "calibration" / f"{gpu}.json"
        return load_calibration(gpu if fitted.exists() else "default")
    return load_calibration(name)


# --- training stacks ---------------------------------------------------------------------------


def stack_names() -> tuple[str, ...]:
    """The stack profiles in ``data/stacks/`` by name (file stems), sorted."""
    return _stack_names_in(data_dir())


@cache
def _stack_names_in(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in (folder / "stacks").glob("*.json")))


def find_stack(name: str) -> StackProfile:
    """One stack profile by name (``data/stacks/<name>.json``, read and validated on first use)."""
    key = _norm(name)
    names = stack_names()
    if key not in names:
        hint = _did_you_mean(key, list(names))
        raise PlannerError(f"--stack: unknown stack {name!r}{hint} (choose from {', '.join(names)}, or auto; see `plan list stacks`)")
    return _stack_in(data_dir(), key)


@cache
def _stack_in(folder: Path, name: str) -> StackProfile:
    path = folder / "stacks" / f"{name}.json"
    try:
        profile = StackProfile.model_validate(read_data_json(path))
    except ValidationError as exc:
        raise PlannerError(validation_message(path, exc)) from None
    if profile.name != name:
        raise PlannerError(f"{path}: names itself {profile.name!r}; the file must be {profile.name}.json")
    return profile


def stacks() -> tuple[StackProfile, ...]:
    return tuple(find_stack(n) for n in stack_names())
