"""Loaded model versions and the manager that polls a model base directory for them.

    <model_dir>/<name>/<version>/saved_model.pb     (what `rl-optimizer export` writes)

`ModelManager.poll()` serves, per model name, the highest `num_versions` versions that load;
a version that fails to load (or to answer a warm-up call) is reported by `status()` with its
error and skipped, so the versions already serving keep serving. Readers never lock: each poll
builds a new name → versions mapping and swaps the reference, and a request holds on to the
`Servable` it started with, so a version unloaded mid-request finishes that request.

A failed version is retried once any file under it changes (size or mtime: a copy completed in
place). What clients see of a failure names no server path: `GetModelStatus` shows the error
with paths cut to the model's own `<name>/<version>/...`; the log has them in full.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from collections.abc import Mapping
from typing import NamedTuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2

_log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A request error with the gRPC status code TF Serving gives it."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class VersionStatus(NamedTuple):
    """One version's state as `GetModelStatus` reports it."""

    state: int
    """A `ModelVersionStatus.State` (AVAILABLE, END, ...)."""
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


@dataclasses.dataclass(frozen=True)
class Servable:
    """One loaded model version: its callable signatures and their `SignatureDef`s."""

    name: str
    version: int
    path: str
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]
    functions: Mapping[str, object]
    loaded: object
    """The loaded SavedModel; the functions need it alive (it owns their variables)."""

    def signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        if name not in self.functions:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{name}" not found. This version has: '
                               f"{', '.join(sorted(self.functions))}.")
        return self.signature_defs[name]

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calls a signature; TensorFlow's errors become `ServingError`s with the same code."""
        try:
            outputs = self.functions[signature_name](
                **{k: tf.convert_to_tensor(v) for k, v in inputs.items()})
        except tf.errors.OpError as e:
            raise ServingError(_CODES.get(e.error_code, grpc.StatusCode.UNKNOWN), e.message) from e
        return {k: v.numpy() for k, v in outputs.items()}


def _read_meta_graph(path: str) -> meta_graph_pb2.MetaGraphDef:
    saved_model = saved_model_pb2.SavedModel()
    pb = os.path.join(path, "saved_model.pb")
    if os.path.isfile(pb):
        with open(pb, "rb") as f:
            saved_model.ParseFromString(f.read())
    else:
        with open(os.path.join(path, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ValueError(f"{path}: no MetaGraph tagged 'serve'")


def _warm_up(name: str, function, signature: meta_graph_pb2.SignatureDef) -> None:
    """One call with a single row of zeros, so a broken version fails here, not on a request."""
    inputs = {}
    for alias, info in signature.inputs.items():
        shape = [1 if d.size < 0 else d.size for d in info.tensor_shape.dim]
        inputs[alias] = tf.zeros(shape, tf.as_dtype(info.dtype))
    try:
        function(**inputs)
    except Exception as e:
        raise ValueError(f"signature {name!r} fails on zeros: {e}") from e


def load_servable(name: str, version: int, path: str) -> Servable:
    """Loads `path` (a SavedModel) and calls each signature once."""
    loaded = tf.saved_model.load(path)
    meta_graph = _read_meta_graph(path)
    functions = dict(loaded.signatures)
    defs = {k: meta_graph.signature_def[k] for k in functions}
    for key, function in functions.items():
        _warm_up(key, function, defs[key])
    return Servable(name, version, path, dict(meta_graph.signature_def), functions, loaded)


def _describe(error: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, tf.errors.OpError):
        code = _CODES.get(error.error_code, grpc.StatusCode.UNKNOWN)
        return code, error.message.strip()[:2000]
    return grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}".strip()[:2000]


class ModelManager:
    """Serves the model versions under `model_dir`; `poll()` picks up new and removed ones.

    Args:
      model_dir: a model base directory, `<model_dir>/<name>/<version>/`.
      num_versions: how many of the highest loadable versions of each model stay loaded
        (TF Serving's `latest { num_versions }` policy); requests without a version get the
        highest.
    """

    def __init__(self, model_dir: str, num_versions: int = 1):
        if num_versions < 1:
            raise ValueError(f"num_versions must be >= 1, got {num_versions}")
        self.model_dir = model_dir
        self.num_versions = num_versions
        self._serving: dict[str, dict[int, Servable]] = {}
        self._status: dict[str, dict[int, VersionStatus]] = {}
        self._failed: dict[tuple[str, int], tuple] = {}
        self._warned_layout = False
        self._poll_lock = threading.Lock()
        self._status_lock = threading.Lock()

    def model_names(self) -> list[str]:
        return sorted(self._serving)

    def servable(self, name: str, version: int | None = None) -> Servable:
        """The servable for a request; NOT_FOUND in TF Serving's words when there is none."""
        versions = self._serving.get(name, {})
        if version is None and versions:
            return versions[max(versions)]
        if version in versions:
            return versions[version]
        # TF Serving's words; what else is served is none of the client's business.
        request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
        raise ServingError(grpc.StatusCode.NOT_FOUND,
                           f"Servable not found for request: {request}")

    def status(self, name: str) -> dict[int, VersionStatus]:
        """Every version of `name` seen so far, loaded or not, with its state."""
        with self._status_lock:
            return dict(self._status.get(name, {}))

    def poll(self) -> None:
        """Loads new versions, unloads superseded or deleted ones; never raises for a version."""
        if not os.path.isdir(self.model_dir):
            raise ValueError(f"model directory {self.model_dir!r} does not exist")
        with self._poll_lock:
            names = [d for d in sorted(os.listdir(self.model_dir)) if not d.startswith(".")
                     and os.path.isdir(os.path.join(self.model_dir, d))]
            misplaced = any(name.isdigit() for name in names)
            if misplaced and not self._warned_layout:  # once, not every poll
                _log.warning("%s has integer subdirectories: pass the directory above a model "
                             "(the model base directory), not a model directory", self.model_dir)
            self._warned_layout = misplaced
            serving = {}
            for name in set(names) | set(self._serving):
                versions = self._poll_model(name, self._serving.get(name, {}))
                if versions:
                    serving[name] = versions
            self._serving = serving

    def _versions_on_disk(self, name: str) -> dict[int, str]:
        path = os.path.join(self.model_dir, name)
        entries = os.listdir(path) if os.path.isdir(path) else []
        return {int(d): os.path.join(path, d) for d in entries
                if d.isdigit() and os.path.isdir(os.path.join(path, d))}

    def _set_status(self, name: str, version: int, status: VersionStatus) -> None:
        with self._status_lock:
            self._status.setdefault(name, {})[version] = status

    def _poll_model(self, name: str, current: dict[int, Servable]) -> dict[int, Servable]:
        on_disk = self._versions_on_disk(name)
        keep: dict[int, Servable] = {}
        for version in sorted(on_disk, reverse=True):
            if len(keep) == self.num_versions:
                break
            if version in current:
                keep[version] = current[version]
            elif (servable := self._try_load(name, version, on_disk[version])) is not None:
                keep[version] = servable
        for version in sorted(current.keys() - keep.keys()):
            self._set_status(name, version, VersionStatus(State.END))
            _log.info("unloaded %s version %d", name, version)
        return keep

    def _try_load(self, name: str, version: int, path: str) -> Servable | None:
        # A failed version is retried only once its files change (a copy still in progress).
        stamp = _fingerprint(path)
        if stamp is None or self._failed.get((name, version)) == stamp:
            return None
        self._set_status(name, version, VersionStatus(State.LOADING))
        try:
            servable = load_servable(name, version, path)
        except Exception as e:  # any broken version must leave the server serving
            code, message = _describe(e)
            self._failed[(name, version)] = stamp
            self._set_status(name, version, VersionStatus(
                State.END, code, _without_paths(message, path, f"{name}/{version}")))
            _log.error("could not load %s version %d from %s: %s", name, version, path,
                       " ".join(message.split()))
            return None
        self._failed.pop((name, version), None)
        self._set_status(name, version, VersionStatus(State.AVAILABLE))
        _log.info("serving %s version %d from %s", name, version, path)
        return servable


def _fingerprint(path: str) -> tuple | None:
    """(relative path, size, mtime) of every file and directory under `path`; None if it went
    away while being read."""
    entries = []
    try:
        for root, dirs, files in os.walk(path, onerror=_raise):
            dirs.sort()
            for entry in (root, *(os.path.join(root, f) for f in sorted(files))):
                stat = os.stat(entry)
                entries.append((os.path.relpath(entry, path), stat.st_size, stat.st_mtime_ns))
    except OSError:
        return None
    return tuple(entries)


def _raise(error: OSError) -> None:
    raise error


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s/'\"]+/)+([^\s/'\"]*)")


def _without_paths(message: str, path: str, shown_as: str) -> str:
    """`message` with `path` shown as `shown_as` and any other absolute path as its last part."""
    for form in sorted({path, os.path.abspath(path), os.path.realpath(path)}, key=len,
                       reverse=True):
        message = message.replace(form.rstrip("/"), shown_as)
    return _ABSOLUTE_PATH.sub(r".../\1", message)
