"""A disk cache of reference solutions, so start-up does not re-solve the same instances.

    x_star = reference_minimizer(objective, starts)    # L-BFGS once, then read from disk

Sampling an instance of a learning family is cheap; solving it for `f_star` (L-BFGS to
‖∇f‖ ≤ 1e-10 from several starts) takes up to a second, and training and the benchmarks solve
the same few hundred training instances on every run. The cache keeps each minimizer `x_star`
on disk; the caller re-evaluates `f_star = f(x_star)`, so a cached value is never trusted for
more than the point it stores.

The key is a SHA-256 of everything the solution depends on: the instance itself (family, loss,
every parameter array, x0, the starts: what the family parameters and seed produced), the
source of the modules that define the loss and the solver, and the versions of rl_optimizer,
NumPy, SciPy and TensorFlow. A changed family, seed, formula or library is a new key, never a
stale hit. Entries are written to a temporary file and renamed (atomic); an entry that cannot
be read, fails its zip checksum, stores another key or a point of the wrong shape is solved
again and rewritten.

Where: `$RL_OPTIMIZER_CACHE`, else `$XDG_CACHE_HOME/rl_optimizer`, else
`~/.cache/rl_optimizer`. `RL_OPTIMIZER_CACHE=off` turns the cache off. A cache directory that
cannot be written to only costs time (one warning), never a failure.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence

import numpy as np

from rl_optimizer.objectives.base import Objective, reference_minimum

ENV_VAR = "RL_OPTIMIZER_CACHE"
OFF = "off"
_SUBDIR = "solved"
_FORMAT = "1"  # bump when the entry layout changes


def cache_dir() -> str | None:
    """The cache directory, or None when the cache is off."""
    configured = os.environ.get(ENV_VAR)
    if configured is not None:
        return None if configured.strip().lower() in (OFF, "") else configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rl_optimizer")


@functools.cache
def _environment_digest() -> bytes:
    """Versions of everything a solution depends on, and the solver's and losses' code."""
    import scipy
    import tensorflow as tf

    try:
        version = importlib.metadata.version("rl_optimizer")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    digest = hashlib.sha256(f"{_FORMAT}|{version}|{np.__version__}|{scipy.__version__}|"
                            f"{tf.__version__}".encode())
    digest.update(_module_source(reference_minimum.__module__))
    return digest.digest()


@functools.cache
def _module_source(module: str) -> bytes:
    try:
        return inspect.getsource(sys.modules[module]).encode()
    except (KeyError, OSError, TypeError):
        return module.encode()  # no source (frozen, interactive): the versions still key it


def cache_key(objective: Objective, starts: Sequence[np.ndarray]) -> str:
    """The hex SHA-256 that names `objective`'s solution from `starts`."""
    loss = objective.loss_fn
    digest = hashlib.sha256(_environment_digest())
    digest.update(f"{objective.family}|{loss.__module__}.{loss.__qualname__}".encode())
    digest.update(_module_source(loss.__module__))
    arrays = [(name, objective.params[name]) for name in sorted(objective.params)]
    arrays += [("x0", objective.x0)] + [(f"start{i}", s) for i, s in enumerate(starts)]
    for name, value in arrays:
        value = np.ascontiguousarray(value)
        digest.update(f"|{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _entry_path(directory: str, key: str) -> str:
    return os.path.join(directory, _SUBDIR, key[:2], key + ".npz")


def _read(path: str, key: str, dim: int) -> np.ndarray | None:
    """The stored minimizer, or None when the entry is missing, damaged or not this key's."""
    try:
        with np.load(path, allow_pickle=False) as entry:
            stored_key, x_star = str(entry["key"]), np.array(entry["x_star"])
    except Exception:  # missing, truncated, not a zip, a CRC error: solve (again)
        return None
    if stored_key != key or x_star.dtype != np.float64 or x_star.shape != (dim,) \
            or not np.all(np.isfinite(x_star)):
        return None
    return x_star


_warned: set[str] = set()


def _write(path: str, key: str, x_star: np.ndarray) -> None:
    """Writes the entry atomically: a temporary file in the same directory, then a rename."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, key=np.array(key), x_star=np.asarray(x_star, np.float64))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        directory = os.path.dirname(os.path.dirname(os.path.dirname(path)))
        if directory not in _warned:
            _warned.add(directory)
            warnings.warn(f"rl_optimizer: cannot write the solution cache in {directory!r} "
                          f"({e}); instances are solved on every run. Set {ENV_VAR} to a "
                          f"writable directory, or to '{OFF}'.", stacklevel=3)


def reference_minimizer(objective: Objective, starts: Sequence[np.ndarray]) -> np.ndarray:
    """`reference_minimum(objective.value_and_grad, starts)`'s minimizer, cached on disk."""
    directory = cache_dir()
    if directory is None:
        return reference_minimum(objective.value_and_grad, starts)[1]
    key = cache_key(objective, starts)
    path = _entry_path(directory, key)
    x_star = _read(path, key, objective.dim)
    if x_star is None:
        x_star = np.asarray(reference_minimum(objective.value_and_grad, starts)[1], np.float64)
        _write(path, key, x_star)
    return x_star
