"""Atomic outputs are as readable as any other file the user writes (umask), not private; and
``--overwrite`` replaces only a folder midalign wrote, never the current folder or a file."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from midalign import __version__, files
from midalign.errors import InputError
from midalign.files import (
    MARKER,
    atomic_output_dir,
    check_output_dir,
    check_run_dir,
    follow_umask,
    mark_output_dir,
    write_text_atomic,
)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_file_and_dir_follow_the_umask(tmp_path, umask_022) -> None:
    write_text_atomic(tmp_path / "a.txt", "x\n")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "b.txt").write_text("y\n")
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert (tmp_path / "out" / "b.txt").read_text() == "y\n"


def test_failed_output_dir_leaves_nothing(tmp_path) -> None:
    with pytest.raises(RuntimeError), atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_outputs_carry_the_marker_and_overwrite_replaces_only_marked_folders(tmp_path) -> None:
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("1\n")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "a.txt"]
    assert (out / MARKER).read_text() == (
        f"written by midalign {__version__}; `--overwrite` may delete this folder\n"
    )
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2\n")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.txt"]

    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("\\chapter{}\n")
    message = (
        f"--out: {mine} exists and holds files midalign did not write (no .midalign in it); give "
        "a new folder (--overwrite replaces only midalign's own outputs)"
    )
    for overwrite in (False, True):
        with pytest.raises(InputError) as e:
            check_output_dir(mine, overwrite)
        assert str(e.value) == message
    assert (mine / "thesis.tex").read_text() == "\\chapter{}\n"

    empty = tmp_path / "empty"  # nothing to lose: replaced like one of ours
    empty.mkdir()
    with pytest.raises(InputError, match=r"already exists \(pass --overwrite to replace it\)$"):
        check_output_dir(empty, False)
    with atomic_output_dir(empty, overwrite=True) as tmp:
        (tmp / "c.txt").write_text("3\n")
    assert (empty / "c.txt").read_text() == "3\n"


def test_a_file_as_out_is_one_message_with_or_without_overwrite(tmp_path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    for overwrite in (False, True):
        with pytest.raises(InputError) as e:
            check_output_dir(notes, overwrite)
        assert str(e.value) == f"--out: {notes} is a file; give a folder that does not exist yet"
    assert notes.read_text() == "mine\n"


def test_an_out_under_a_file_names_the_file(tmp_path) -> None:
    """Not "permission denied", which is what the writability check of a file's path said."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    for out in (notes / "out", notes / "a" / "b"):
        with pytest.raises(InputError) as e:
            check_output_dir(out, False)
        assert str(e.value) == f"--out: cannot create {out}: {notes} is a file, not a folder"
    assert notes.read_text() == "mine\n"


def test_an_output_folder_that_appears_meanwhile_is_kept(tmp_path) -> None:
    """Two runs into one --out both pass the check made before their work; the one finishing
    second refused nothing before, and replaced the other's output."""
    out = tmp_path / "out"
    with pytest.raises(InputError) as e, atomic_output_dir(out) as tmp:
        (tmp / "mine.txt").write_text("this run\n")
        with atomic_output_dir(out) as other:
            (other / "theirs.txt").write_text("the other run\n")
    assert str(e.value) == (
        f"--out: {out} appeared while this command ran (another run into the same --out?); it "
        "is left as it is, this run's output is not written (pass --overwrite)"
    )
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    shutil.rmtree(out)  # asked to overwrite: the run finishing second replaces the other's
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "mine.txt").write_text("this run\n")
        with atomic_output_dir(out) as other:
            (other / "theirs.txt").write_text("the other run\n")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_file_that_appears_meanwhile_is_kept_unless_replacing(
    tmp_path, monkeypatch, hard_links
) -> None:
    if not hard_links:  # FAT, some network mounts: the check, then the rename

        def no_link(src, dst):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    out = tmp_path / "out.jsonl"
    with pytest.raises(FileExistsError), files.atomic_file(out, replace=False) as tmp:
        tmp.write_text("this run\n")
        out.write_text("the other run\n")
    assert out.read_text() == "the other run\n"
    write_text_atomic(tmp_path / "new.jsonl", "new\n", replace=False)
    assert (tmp_path / "new.jsonl").read_text() == "new\n"
    write_text_atomic(out, "this run\n")
    assert out.read_text() == "this run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.jsonl", "out.jsonl"]


def test_a_run_folder_may_exist_but_must_be_a_folder_and_writable_to_run(tmp_path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    for write in (False, True):  # a dry run is refused too: the real one could not start
        with pytest.raises(InputError, match=f"^--out: {notes} is a file; give a folder"):
            check_run_dir(notes, write)
        with pytest.raises(InputError) as e:
            check_run_dir(notes / "run", write)
        assert str(e.value) == f"--out: cannot create {notes}/run: {notes} is a file, not a folder"
    proc = Path("/proc/midalign-test/run")  # nothing can be made there, not even by root
    check_run_dir(proc, write=False)  # a dry run only looks
    with pytest.raises(InputError) as e:
        check_run_dir(proc, write=True)
    assert str(e.value) == f"--out: cannot create {proc} (No such file or directory)"
    run = tmp_path / "a" / "run"
    check_run_dir(run, write=False)
    assert not run.exists()
    check_run_dir(run, write=True)
    assert run.is_dir()
    check_run_dir(run, write=True)  # an earlier run's folder, to continue


@pytest.mark.parametrize("out", [".", "..", "/"])
def test_the_current_folder_and_its_parents_are_refused_up_front(tmp_path, monkeypatch, out):
    here = tmp_path / "a" / "b"
    here.mkdir(parents=True)
    mark_output_dir(here)  # even a marked folder: a folder in use cannot be renamed away
    monkeypatch.chdir(here)
    for overwrite in (False, True):
        with pytest.raises(InputError) as e:
            check_output_dir(Path(out), overwrite)
        assert str(e.value) == (
            f"--out: {out} is the current folder or holds it, which cannot be replaced; give a "
            "new folder"
        )


def test_probe_out_dot_overwrite_fails_before_any_work(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    from midalign.cli import main

    for lang, text in (("en", "the law\nall is equal\n"), ("de", "das recht\nalles ist gleich\n")):
        (tmp_path / f"t.{lang}").write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("midalign.probe.run.load_model", _never)
    argv = ["probe", "--model", str(tiny_model_dir), "--data", "parallel:t.en,t.de"]
    code = main([*argv, "--langs", "en,de", "--k", "1", "--out", ".", "--overwrite"])
    assert code == 2
    assert capsys.readouterr().err == (
        "midalign probe: error: --out: . is the current folder or holds it, which cannot be "
        "replaced; give a new folder\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.de", "t.en", "tiny-gemma3"]


def _never(*args, **kwargs):
    raise AssertionError("the model was loaded")


def test_safetensors_outputs_follow_the_umask(tmp_path, umask_022) -> None:
    """safetensors writes 0600 files; an output folder's files and folders end 0644 / 0755."""
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.ones(2)}, tmp_path / "raw.safetensors")
    assert stat.S_IMODE((tmp_path / "raw.safetensors").stat().st_mode) == 0o600
    with atomic_output_dir(tmp_path / "out") as tmp:
        save_file({"x": torch.ones(2)}, tmp / "a.safetensors")
        (tmp / "sub").mkdir(mode=0o700)
        save_file({"x": torch.ones(2)}, tmp / "sub" / "b.safetensors")
    modes = {
        str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in sorted((tmp_path / "out").rglob("*"))
    }
    assert modes == {
        f"out/{MARKER}": "0o644",
        "out/a.safetensors": "0o644",
        "out/sub": "0o755",
        "out/sub/b.safetensors": "0o644",
    }
    follow_umask(tmp_path / "raw.safetensors")
    assert stat.S_IMODE((tmp_path / "raw.safetensors").stat().st_mode) == 0o644


def test_a_plot_that_fails_half_way_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from midalign.report import plots

    target = tmp_path / "scores.png"
    fig = plt.figure()
    plots._save(fig, target)
    good = target.read_bytes()
    assert good.startswith(b"\x89PNG")  # the format comes from the suffix, not the temp name

    def half(self, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(plt.Figure, "savefig", half)
    with pytest.raises(OSError, match="disk full"):
        plots._save(plt.figure(), target)
    assert target.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["scores.png"]
