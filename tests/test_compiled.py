"""``--compile``: compiled decoder layers give eager's numbers, forward and gradients; ``auto``
measures once per machine and keeps its decision."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_numbers, rel_error, tiny_model
from peft import LoraConfig, get_peft_model
from torch._dynamo.utils import counters

import midalign.modeling.compiled as compiled
from midalign.errors import InputError
from midalign.modeling.compiled import compiled_layers
from midalign.modeling.forward import pooled_states, response_loss
from midalign.modeling.layers import decoder_layers

# conftest replaces these in every test
MEASURE, DECISIONS, REMEMBER = compiled._measure, compiled._decisions, compiled._remember
BF16_EPS = 2.0**-8  # bfloat16's machine epsilon: one rounding of a result in bf16


@pytest.fixture(autouse=True)
def _fresh_dynamo(tmp_path, monkeypatch):
    """Each test compiles anew (no graph of another test's model is reused) and keeps its
    ``auto`` decisions in its own cache."""
    torch._dynamo.reset()
    monkeypatch.setenv("MIDALIGN_CACHE", str(tmp_path / "cache"))
    yield
    torch._dynamo.reset()


def _lora_model(family: str, dtype: torch.dtype) -> torch.nn.Module:
    """A tiny model with LoRA on every projection, B non-zero so the adapter counts, dropout 0
    so two runs draw nothing random."""
    model = tiny_model(family, dtype=dtype)
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"],
        init_lora_weights=False,
    )
    torch.manual_seed(1)
    return get_peft_model(model, lora).to(dtype)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (4, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[3, 5:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :6] = -100
    return ids, mask, labels


def _work(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training path: pooled states of layers 1 and 2 (the alignment forward), the response
    loss (the task forward), one backward of both: (pooled, loss, LoRA gradients)."""
    ids, mask, labels = _batch()
    model.zero_grad(set_to_none=True)
    pooled = pooled_states(model, ids, mask, [1, 2])
    loss = response_loss(model, ids, mask, labels)
    (pooled.float().square().mean() + loss.float()).backward()
    grads = [p.grad.flatten().float() for p in model.parameters() if p.requires_grad]
    return pooled.detach(), loss.detach(), torch.cat(grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compiled_equals_eager(family, dtype):
    model = _lora_model(family, dtype)
    eager = _work(model)
    graphs = counters["stats"]["unique_graphs"]
    with compiled_layers(model, "on", train=True) as decision:
        assert decision.on and decision.compile_seconds > 0
        assert all("forward" in layer.__dict__ for layer in decoder_layers(model))
        result = _work(model)
    assert counters["stats"]["unique_graphs"] > graphs  # really compiled, not an eager fallback
    assert not any("forward" in layer.__dict__ for layer in decoder_layers(model))
    if dtype == torch.float32:
        for actual, expected in zip(result, eager, strict=True):
            assert_same_numbers(actual, expected, torch.float32)
        return
    # bf16: Inductor keeps fused intermediates in float32, so the compiled numbers are not
    # eager's; both are compared with the float64 model. Compiled must be as accurate as eager
    # (measured: within 1.5× eager's own error), bounded by twice that error or one bf16
    # rounding of the result, whichever is larger; a slip (a dropped token, a wrong layer) is
    # ≥ 0.1 relative (tests/conftest.py).
    exact = _work(_lora_model(family, torch.float64))
    for name, actual, expected, reference in zip(
        ("pooled", "loss", "gradients"), result, eager, exact, strict=True
    ):
        own = rel_error(expected, reference)
        err = rel_error(actual, reference)
        assert err <= max(2 * own, BF16_EPS), (name, err, own)


def test_off_and_placed_layers_stay_eager():
    model = tiny_model("llama")
    with compiled_layers(model, "off") as decision:
        assert not decision.on
        assert not any("forward" in layer.__dict__ for layer in decoder_layers(model))
    model = tiny_model("llama", dtype=torch.bfloat16)
    decoder_layers(model)[0]._hf_hook = object()  # as accelerate's dispatch leaves a layer
    with compiled_layers(model, "auto") as decision:
        assert not decision.on and "device-map" in decision.reason
    with pytest.raises(InputError, match="--compile on"), compiled_layers(model, "on"):
        pass
    with pytest.raises(InputError, match="--compile must be one of"), compiled_layers(model, "x"):
        pass


def test_auto_leaves_float32_on_a_cpu_eager_without_measuring(monkeypatch):
    monkeypatch.setattr(compiled, "_measure", lambda *a: pytest.fail("measured"))
    with compiled_layers(tiny_model("qwen2"), "auto") as decision:
        assert not decision.on and "float32" in decision.reason


def test_the_sample_leaves_gradients_and_random_streams_alone():
    model = _lora_model("llama", torch.float32)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable[0].grad = torch.ones_like(trainable[0])
    state = torch.random.get_rng_state()
    compiled._sample(model, train=True, autocast=None)()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(trainable[0].grad, torch.ones_like(trainable[0]))
    assert all(p.grad is None for p in trainable[1:])


@pytest.mark.parametrize(("eager", "fast", "on"), [(1.0, 0.8, True), (1.0, 0.95, False)])
def test_auto_measures_once_and_keeps_its_decision(monkeypatch, eager, fast, on):
    """A gain of 1.25× (≥ MIN_GAIN) compiles, 1.05× does not; the second run on the same
    machine reads the decision instead of measuring."""
    for name, real in (("_measure", MEASURE), ("_decisions", DECISIONS), ("_remember", REMEMBER)):
        monkeypatch.setattr(compiled, name, real)
    model = tiny_model("gemma3", dtype=torch.bfloat16)
    # warm-up, 3 eager, first compiled call, 3 compiled
    timings = iter([2.0, eager, eager, eager, 9.0, fast, fast, fast])
    monkeypatch.setattr(compiled, "_seconds", lambda fn: next(timings))
    with compiled_layers(model, "auto") as decision:
        assert decision.on is on
        assert ("forward" in decoder_layers(model)[0].__dict__) is on
        assert decision.eager_seconds == eager and decision.compiled_seconds == fast
        assert decision.compile_seconds == pytest.approx(9.0 - fast)
    monkeypatch.setattr(compiled, "_measure", lambda *a: pytest.fail("measured again"))
    with compiled_layers(model, "auto") as again:
        assert again.on is on and "measured before" in again.reason


def test_compiled_evaluation_equals_eager():
    """The KV-cached forwards of evaluation: likelihood scores within float32's route bound,
    greedy answers token for token (a near-tie flipped by rounding would show as one differing
    answer; none is among these)."""
    from conftest import tiny_tokenizer

    from midalign.evaluation.loglik import label_logprobs
    from midalign.modeling.generate import generate

    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, 128, (n,), generator=generator).tolist() for n in (9, 12, 7, 15)]
    for prompt in prompts:
        prompt[:3] = [1, 5, 6]  # a shared start, as an instruction gives
    labels = [[[10, 11], [12], [13, 14, 15]] for _ in prompts]

    def work():
        scores = label_logprobs(model, prompts, labels, batch_size=2, progress=False)
        answers = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=2)
        return torch.tensor(scores), answers

    eager = work()
    graphs = counters["stats"]["unique_graphs"]
    with compiled_layers(model, "on"):
        result = work()
    assert counters["stats"]["unique_graphs"] > graphs
    assert_same_numbers(result[0], eager[0], torch.float32)
    assert result[1] == eager[1]
