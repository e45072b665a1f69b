"""The solution cache (rl_optimizer/objectives/cache.py): hits are exact, damage is re-solved."""

import glob
import os
import zipfile

import numpy as np
import pytest

from rl_optimizer import objectives
from rl_optimizer.objectives import cache


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV_VAR, str(path))
    return path


@pytest.fixture
def solves(monkeypatch):
    """Counts the L-BFGS solves the cache lets through."""
    calls = []
    real = cache.reference_minimum

    def counting(value_and_grad, starts, **kwargs):
        calls.append(1)
        return real(value_and_grad, starts, **kwargs)

    monkeypatch.setattr(cache, "reference_minimum", counting)
    return calls


FAMILY = dict(name="logistic_regression", dim=4, n_samples=20)


def _sample(seed=7, **params):
    family = objectives.get_family(**{**FAMILY, **params})
    return family.sample(seed)


def _entries(cache_dir) -> list[str]:
    return glob.glob(os.path.join(cache_dir, "solved", "*", "*.npz"))


def _assert_same(a, b):
    np.testing.assert_array_equal(a.x_star, b.x_star)
    assert a.f_star == b.f_star


def test_a_second_sample_reads_the_solution_back(cache_dir, solves):
    first = _sample()
    assert len(solves) == 1 and len(_entries(cache_dir)) == 1

    second = _sample()

    assert len(solves) == 1
    _assert_same(first, second)
    assert second.value(second.x_star) == second.f_star


def test_the_cached_solution_equals_an_uncached_solve(cache_dir, monkeypatch):
    _sample()
    cached = _sample()
    monkeypatch.setenv(cache.ENV_VAR, cache.OFF)
    _assert_same(cached, _sample())
    assert len(_entries(cache_dir)) == 1  # the off switch wrote nothing


def test_other_seeds_and_parameters_are_other_keys(cache_dir, solves):
    a, b, c = _sample(seed=1), _sample(seed=2), _sample(seed=1, l2=1e-2)
    assert len(solves) == 3 and len(_entries(cache_dir)) == 3
    assert len({cache.cache_key(o, [o.x0]) for o in (a, b, c)}) == 3


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip_a_byte", "other_key",
                                    "wrong_shape", "nan"])
def test_a_damaged_or_mismatching_entry_is_solved_again(cache_dir, solves, damage):
    good = _sample()
    (path,) = _entries(cache_dir)
    data = open(path, "rb").read()
    if damage == "truncate":
        open(path, "wb").write(data[:len(data) // 2])
    elif damage == "garbage":
        open(path, "wb").write(b"not a zip at all")
    elif damage == "flip_a_byte":
        # A byte inside the stored x_star: the zip's CRC-32 no longer matches.
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("x_star.npy")
        at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 3
        open(path, "wb").write(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    else:
        x_star = {"other_key": good.x_star, "wrong_shape": good.x_star[:-1],
                  "nan": np.full_like(good.x_star, np.nan)}[damage]
        key = "0" * 64 if damage == "other_key" else os.path.basename(path)[:-4]
        np.savez(path, key=np.array(key), x_star=x_star)

    again = _sample()

    assert len(solves) == 2
    _assert_same(good, again)
    _assert_same(good, _sample())  # and the entry was rewritten
    assert len(solves) == 2


def test_an_unwritable_cache_only_warns(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv(cache.ENV_VAR, str(blocker / "cache"))
    monkeypatch.setattr(cache, "_warned", set())
    with pytest.warns(UserWarning, match="cannot write the solution cache"):
        objective = _sample()
    assert np.isfinite(objective.f_star)


def test_writes_leave_no_temporary_files(cache_dir):
    _sample(seed=1)
    _sample(seed=2)
    leftovers = [p for p in glob.glob(os.path.join(cache_dir, "**", "*"), recursive=True)
                 if os.path.basename(p).startswith(".tmp-")]
    assert leftovers == []


def test_the_default_location(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_dir() == os.path.join(str(tmp_path), "rl_optimizer")
