"""Faults: a training killed with SIGKILL (at a random step, or while a checkpoint is being
written), a disk that fills up during a save, and a recipe killed mid-run. Nothing finished is
lost, and the resumed result equals the uninterrupted one."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_runner import recipe_file  # noqa: F401  (fixture: a tiny recipe)
from test_train import _adapter, _config, _run

from midalign.cli import main
from midalign.training.checkpoints import COMPLETE_FILE, last_checkpoint
from midalign.training.run import train

TESTS = Path(__file__).parent


def _child(tmp_path: Path, out: Path, body: str, max_steps: int = 6) -> int:
    """Run ``train`` on the tiny config in a fresh Python process with ``body`` (code that
    sabotages it) executed first; return the exit code (−9 for SIGKILL)."""
    config = _config(tmp_path, optim__max_steps=max_steps)
    (tmp_path / "config.yaml").write_text(config.to_yaml())
    script = (
        textwrap.dedent(
            f"""
        import os, signal, sys
        sys.path.insert(0, {str(TESTS)!r})
        import midalign.modeling.dtypes  # as conftest: no native bf16, so `auto` trains in float32
        midalign.modeling.dtypes.cpu_bf16_feature = lambda: None
        from pathlib import Path
        import yaml
        from midalign.training.config import from_dict
        from midalign.training.run import train
        from transformers import TrainerCallback
        path = Path({str(tmp_path / "config.yaml")!r})
        config = from_dict(yaml.safe_load(path.read_text()), str(path))
        out = Path({str(out)!r})
        out.mkdir(parents=True, exist_ok=True)
        callbacks = []
        """
        )
        + textwrap.dedent(body)
        + "\ntrain(config, out, progress=False, callbacks=callbacks)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    return done.returncode


def _same_adapter(a: Path, b: Path) -> None:
    wa, wb = _adapter(a), _adapter(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[n], wb[n]) for n in wa)


@pytest.fixture
def straight(tmp_path: Path) -> Path:
    """The uninterrupted 6-step run every faulty run must end up equal to."""
    out = tmp_path / "straight"
    _run(_config(tmp_path, optim__max_steps=6), out)
    return out


def test_sigkill_at_a_random_step_then_resume(tmp_path: Path, straight: Path) -> None:
    step = random.Random(os.environ.get("PYTEST_XDIST_WORKER", "0")).randint(3, 5)
    out = tmp_path / "killed"
    code = _child(
        tmp_path,
        out,
        f"""
        class Kill(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == {step}:
                    os.kill(os.getpid(), signal.SIGKILL)
        callbacks.append(Kill())
    """,
    )
    assert code == -signal.SIGKILL
    assert not (out / "adapter_model.safetensors").exists()
    # checkpoints every 2 steps; step k's own save comes after its on_step_end, so it is lost
    checkpoint = last_checkpoint(out)
    assert checkpoint is not None and int(checkpoint.name.split("-")[1]) == (step - 1) // 2 * 2
    result = train(_config(tmp_path, optim__max_steps=6), out, checkpoint, progress=False)
    assert result.global_step == 6 and not result.interrupted
    _same_adapter(out, straight)


def test_sigkill_while_a_checkpoint_is_written(tmp_path: Path, straight: Path) -> None:
    """Killed after checkpoint-4's files but before its completion marker: checkpoint-2 is
    the last usable one, it loads, and resuming from it ends where the straight run did."""
    out = tmp_path / "killed"
    code = _child(
        tmp_path,
        out,
        """
        import midalign.training.trainer as t
        from midalign.training.checkpoints import COMPLETE_FILE
        write = t.write_text_atomic
        def dying_write(path, text):
            if Path(path).name == COMPLETE_FILE and Path(path).parent.name == "checkpoint-4":
                os.kill(os.getpid(), signal.SIGKILL)
            write(path, text)
        t.write_text_atomic = dying_write
    """,
    )
    assert code == -signal.SIGKILL
    assert (out / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors").exists()
    assert not (out / "checkpoints" / "checkpoint-4" / COMPLETE_FILE).exists()
    checkpoint = last_checkpoint(out)
    assert checkpoint.name == "checkpoint-2"
    assert load_file(str(checkpoint / "adapter_model.safetensors"))  # loads
    result = train(_config(tmp_path, optim__max_steps=6), out, checkpoint, progress=False)
    assert result.global_step == 6
    _same_adapter(out, straight)


def test_disk_full_during_a_save_keeps_the_last_good_checkpoint(
    tmp_path: Path, straight: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safetensors write of checkpoint-4 fails with ENOSPC: training stops with that
    error, checkpoint-2 stays complete and usable, and the run resumes from it."""
    import peft.peft_model

    real = peft.peft_model.safe_save_file

    def full_disk(tensors, filename, *args, **kwargs):  # noqa: ANN001 - safetensors' signature
        if "checkpoint-4" in str(filename):
            Path(filename).write_bytes(b"\0" * 16)  # a torn file, as a full disk leaves it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", full_disk)
    out = tmp_path / "full"
    with pytest.raises(OSError, match="No space left"):
        _run(_config(tmp_path, optim__max_steps=6), out)
    # the save works again; not monkeypatch.undo(), which would also undo conftest's patch
    # of the bf16 detection and let `auto` resume in bf16 on a CPU that has it
    monkeypatch.setattr(peft.peft_model, "safe_save_file", real)
    assert not (out / "checkpoints" / "checkpoint-4" / COMPLETE_FILE).exists()
    assert not (out / "adapter_model.safetensors").exists()
    checkpoint = last_checkpoint(out)
    assert checkpoint.name == "checkpoint-2"
    result = train(_config(tmp_path, optim__max_steps=6), out, checkpoint, progress=False)
    assert result.global_step == 6
    _same_adapter(out, straight)


def test_killed_recipe_resumes_and_reuses_finished_steps(
    tmp_path: Path,
    recipe_file: Path,  # noqa: F811 - the fixture
) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "midalign", "run", str(recipe_file), "--out", str(out),
           "--no-progress"]  # fmt: skip
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    deadline = time.monotonic() + 600
    finished: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        finished = sorted((out / "steps").glob("*/done.json")) if (out / "steps").is_dir() else []
        if any(p.parent.name.startswith("train-") for p in finished):
            break
        time.sleep(0.2)
    assert proc.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.parent.name: p.stat().st_mtime_ns for p in finished}
    assert before and not (out / "report" / "results.json").exists()

    assert main(["run", str(recipe_file), "--out", str(out), "--no-progress"]) == 0
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "steps").glob("*/done.json")}
    assert {name: after[name] for name in before} == before  # reused, not redone
    assert len(after) > len(before)
    results = json.loads((out / "report" / "results.json").read_text())
    assert set(results["table"]) >= {"base", "sft"}
    assert yaml.safe_load(recipe_file.read_text())["name"]
