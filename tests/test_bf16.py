"""bf16 mixed precision in training (``optim.bf16``): what ``auto`` resolves to, that the task and
alignment forwards really run under autocast while the losses stay float32, and that a short
bf16 run follows the float32 one, on tiny random models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_train import _config, _run

import midalign.modeling.dtypes
from midalign.errors import InputError
from midalign.modeling.dtypes import resolve_bf16
from midalign.training.trainer import AlignmentTrainer


def test_auto_resolves_per_the_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    for feature in ("AMX", "AVX512-BF16"):
        monkeypatch.setattr(midalign.modeling.dtypes, "cpu_bf16_feature", lambda f=feature: f)
        assert resolve_bf16("auto") == (True, f"this CPU has {feature}")
        # float64 weights are exact reference runs, bf16 weights have nothing to mix
        assert resolve_bf16("auto", torch.float64) == (False, "the weights are float64")
        assert resolve_bf16("auto", torch.bfloat16) == (False, "the weights are bfloat16")
        assert resolve_bf16("false") == (False, "as requested")
    monkeypatch.setattr(midalign.modeling.dtypes, "cpu_bf16_feature", lambda: None)
    assert resolve_bf16("auto") == (False, "this CPU has no AMX/AVX512-BF16")
    assert (
        resolve_bf16("true") == resolve_bf16(True) == resolve_bf16("True") == (True, "as requested")
    )
    assert resolve_bf16(False) == (False, "as requested")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for native in (True, False):
        monkeypatch.setattr(
            torch.cuda, "is_bf16_supported", lambda including_emulation, n=native: n
        )
        reason = (
            "the CUDA device has native bf16" if native else "the CUDA device has no native bf16"
        )
        assert resolve_bf16("auto") == (native, reason)
    with pytest.raises(InputError, match="optim.bf16 must be one of auto, true, false, not 'yes'"):
        resolve_bf16("yes")


def _dtypes_seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, set]:
    """Records, per kind of training micro-batch, the dtypes of every Linear's output during its
    forward (base projections, LoRA factors, lm_head) and the dtype of the loss it returned."""
    seen: dict[str, set] = {"task": set(), "align": set(), "task loss": set(), "align loss": set()}

    def recording(kind, original):
        def loss(self, model, inputs):
            hooks = [
                m.register_forward_hook(lambda m, i, out: seen[kind].add(out.dtype))
                for m in model.modules()
                if isinstance(m, torch.nn.Linear)
            ]
            try:
                value = original(self, model, inputs)
            finally:
                for hook in hooks:
                    hook.remove()
            seen[f"{kind} loss"].add(value.dtype)
            return value

        return loss

    monkeypatch.setattr(
        AlignmentTrainer, "task_loss", recording("task", AlignmentTrainer.task_loss)
    )
    monkeypatch.setattr(
        AlignmentTrainer, "align_loss", recording("align", AlignmentTrainer.align_loss)
    )
    return seen


@pytest.mark.parametrize("bf16", ["true", "false"])
def test_bf16_runs_the_forwards_under_autocast_and_the_losses_in_float32(
    tmp_path, monkeypatch, bf16
) -> None:
    seen = _dtypes_seen(monkeypatch)
    config = _config(tmp_path, optim__bf16=bf16, optim__max_steps=2)
    result = _run(config, tmp_path / "run")
    expected = torch.bfloat16 if bf16 == "true" else torch.float32
    assert seen == {
        "task": {expected},  # every projection and the lm_head, under autocast or not
        "align": {expected},
        "task loss": {torch.float32},
        "align loss": {torch.float32},
    }
    assert result.bf16 == (bf16 == "true") and result.bf16_reason == "as requested"
    card = (tmp_path / "run" / "README.md").read_text()
    assert ("- **Precision**: bf16 mixed precision (autocast)" in card) == (bf16 == "true")
    weights = [p for n, p in _trainable(tmp_path / "run")]
    assert all(w.dtype == torch.float32 for w in weights)  # the adapter stays float32


def _trainable(out):
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors")).items()


def test_auto_is_float32_here_and_recorded(tmp_path, monkeypatch) -> None:
    """conftest makes the detection find no native bf16: ``auto`` trains in float32, and says
    why in train_result.json's fields (as `midalign train` writes them)."""
    seen = _dtypes_seen(monkeypatch)
    result = _run(_config(tmp_path, optim__max_steps=1), tmp_path / "run")
    assert seen["task"] == seen["align"] == {torch.float32}
    assert (result.bf16, result.bf16_reason) == (False, "this CPU has no AMX/AVX512-BF16")


def _losses(out) -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in (out / "log.jsonl").open()]
    return [(r["task_loss"], r["align_loss"]) for r in rows if "task_loss" in r and "loss" in r]


def test_a_short_bf16_run_follows_the_float32_run(tmp_path) -> None:
    """Four alternate steps of a tiny Gemma 3 (4 layers, alignment at layer 2) in bf16 and in
    float32, same seed, against float32 runs with another seed.

    Step 1 (same weights, same batches): autocast rounds both operands of every matmul to bf16
    (unit roundoff u = 2⁻⁸) and sums in float32. The task forward has 4 × 7 projections and the
    lm_head, 29 matmuls, 58 roundings of relative size ≤ u; to first order the loss moves by at
    most their sum times its sensitivity to them, which is of order one for a cross-entropy
    of O(1) logits and for InfoNCE over O(1) cosines / τ: 58 u = 0.23 relative (the alignment
    forward has fewer). Measured: 1.2e-4 (task), 2.2e-3 (alignment). The bound is loose but
    holds on any CPU and fails on autocast doing more than rounding (a cast that loses the
    exponent, a wrong layer); that autocast did something at all is checked by the losses
    differing. Later steps take different gradients and drift apart; the drift must stay
    inside what a change of seed does to the curve (measured: summed |Δ| over 4 steps 0.010
    vs 0.060 for the task loss, 0.13 vs 1.35 for the alignment loss)."""
    curves = {}
    for name, changes in (
        ("fp32", {"optim__bf16": "false"}),
        ("bf16", {"optim__bf16": "true"}),
        ("fp32 seed 2", {"optim__bf16": "false", "optim__seed": 2}),
    ):
        config = _config(tmp_path / name, **changes)
        _run(config, tmp_path / name / "run")
        curves[name] = _losses(tmp_path / name / "run")
    fp32, bf16, other = curves["fp32"], curves["bf16"], curves["fp32 seed 2"]
    assert len(fp32) == len(bf16) == len(other) == 4
    u = 2.0**-8
    for ours, theirs in zip(bf16[0], fp32[0], strict=True):
        assert ours != theirs  # autocast did change the arithmetic
        assert abs(ours - theirs) <= 58 * u * abs(theirs)
    for kind in (0, 1):
        precision = sum(abs(b[kind] - f[kind]) for b, f in zip(bf16, fp32, strict=True))
        seed = sum(abs(o[kind] - f[kind]) for o, f in zip(other, fp32, strict=True))
        assert math.isfinite(precision) and precision < seed


def test_config_takes_yaml_booleans_and_refuses_other_values(tmp_path) -> None:
    from midalign.training.config import from_dict
    from midalign.training.config_checks import validate

    config = from_dict({"optim": {"bf16": True}}, "c.yaml")  # YAML's `bf16: true`
    assert resolve_bf16(config.optim.bf16) == (True, "as requested")
    config = _config(tmp_path, optim__bf16="fast")
    with pytest.raises(InputError, match=r"^--bf16 must be one of auto, true, false, not 'fast'$"):
        validate(config)
