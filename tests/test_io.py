"""Atomic outputs are as readable as any other file the user writes (umask), not private."""

from __future__ import annotations

import os
import stat

import pytest

from midalign.io import atomic_output_dir, follow_umask, write_text_atomic


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
        "out/a.safetensors": "0o644",
        "out/sub": "0o755",
        "out/sub/b.safetensors": "0o644",
    }
    follow_umask(tmp_path / "raw.safetensors")
    assert stat.S_IMODE((tmp_path / "raw.safetensors").stat().st_mode) == 0o644
