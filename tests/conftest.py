"""Tiny random models of every supported family, and the real-data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

_COMMON = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

TINY_FAMILIES = {
    "llama": (LlamaForCausalLM, LlamaConfig),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config),
    "gemma3": (Gemma3ForCausalLM, Gemma3TextConfig),
    "mistral": (MistralForCausalLM, MistralConfig),
}


def tiny_model(
    family: str, n_layers: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """A randomly initialised causal LM with ``n_layers`` decoder layers (eval mode). The weights
    are drawn in float32 and then cast, so a float64 model is the float32 one, exactly."""
    model_cls, config_cls = TINY_FAMILIES[family]
    extra = {"head_dim": 8} if family == "gemma3" else {}
    torch.manual_seed(seed)
    return model_cls(config_cls(num_hidden_layers=n_layers, **_COMMON, **extra)).eval().to(dtype)


def tiny_model_or_sliding(family: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """``tiny_model(family)`` with 2 layers; "gemma3-sliding" is a 3-layer Gemma 3 with a
    4-token sliding window on layers 1 and 3, shorter than most test prompts, so that the
    sliding layers' cache is cut at the window."""
    if family != "gemma3-sliding":
        return tiny_model(family, n_layers=2, dtype=dtype)
    model_cls, config_cls = TINY_FAMILIES["gemma3"]
    layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
    config = config_cls(
        num_hidden_layers=3, head_dim=8, sliding_window=4, layer_types=layer_types, **_COMMON
    )
    torch.manual_seed(0)
    return model_cls(config).eval().to(dtype)


# Two routes to the same numbers (early exit vs full forward, response_loss vs the model's loss,
# 1 vs 2 processes, merged vs stacked adapters) agree up to rounding, and rounding depends on the
# order in which a CPU's kernels sum: it differs between AMD and Intel (AMX) machines, thread
# counts and process counts. So they are compared per tensor by the norm-relative error
# ‖a − b‖ / ‖b‖, never element-wise (an element near zero makes any rtol a lottery):
# - float64 checks the mathematics: these tiny models' float64 rounding is ~1e-15 relative, so
#   1e-10 holds on any IEEE CPU, whatever the order, and still fails on any real mistake
#   (a wrong mask, a missing term or scale are >= 1e-3 relative).
# - float32 keeps the production dtype covered. Largest norm-relative difference between two
#   float32 routes measured in these tests (AMD EPYC, 1 and 2 threads; ROUTE_ERRORS=FILE logs
#   them): 6.1e-7 (gradient through the early exit, Gemma 3), 2.4e-7 (response_loss), 1.8e-7
#   (gathered negatives), 9e-8 (merged adapter logits). Another CPU sums in another order but
#   makes rounding errors of the same size (float32's 6e-8 unit roundoff times the same sums),
#   so the bound is 25x the largest: 1.5e-5, far below an algorithmic slip (measured on the
#   tiny models: one token dropped from a mean 0.10, mean vs mean-all 0.36, a wrong layer 0.63).
ROUTE_REL = {torch.float64: 1e-10, torch.float32: 1.5e-5}
ROUTE_DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)


def precision(family: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype whose rounding a tiny ``family`` model in ``dtype`` really has: Gemma 3's
    RMSNorm computes in float32 whatever the model dtype (``x.float()`` in transformers'
    Gemma3RMSNorm), so a float64 Gemma 3 is only float32-exact (measured: 5e-8 relative)."""
    return torch.float32 if family == "gemma3" else dtype


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ in float64 (0 when both are 0)."""
    a, b = actual.detach().double(), expected.detach().double()
    norm = b.norm().item()
    return (a - b).norm().item() / norm if norm else a.norm().item()


def assert_same_numbers(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """``actual`` equals ``expected`` up to the rounding of ``dtype`` (see ROUTE_REL)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = rel_error(actual, expected)
    if os.environ.get("ROUTE_ERRORS"):  # measuring the noise floor: keep every error seen
        with open(os.environ["ROUTE_ERRORS"], "a") as f:
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
            f.write(f"{test}\t{dtype}\t{err:.3e}\n")
    assert err <= ROUTE_REL[dtype], f"relative error {err:.3g} > {ROUTE_REL[dtype]:g} ({dtype})"


@pytest.fixture(autouse=True)
def _no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--dtype auto`` (the default of probe, eval and a recipe's steps) resolves to float32 in
    every test, so that no figure a test asserts depends on whether the CPU has AMX or
    AVX512-BF16; the tests of the resolution itself patch the detection their own way."""
    import midalign.modeling.dtypes

    monkeypatch.setattr(midalign.modeling.dtypes, "cpu_bf16_feature", lambda: None)


@pytest.fixture(autouse=True)
def _no_compile_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--compile auto`` (the default) would measure compiled against eager layers where the
    work is bf16 (tests/test_bf16.py trains under bf16 autocast): it decides "eager" at once in
    every test, so no test compiles unasked, and neither reads nor writes the decisions kept in
    the user's cache; tests/test_compiled.py tests the measurement and the cache."""
    import midalign.modeling.compiled

    monkeypatch.setattr(
        midalign.modeling.compiled,
        "_measure",
        lambda model, sample, mode: midalign.modeling.compiled.Compiled(
            mode, False, "not measured"
        ),
    )
    monkeypatch.setattr(midalign.modeling.compiled, "_decisions", dict)
    monkeypatch.setattr(midalign.modeling.compiled, "_remember", lambda key, decision: None)


@pytest.fixture(params=["llama", "qwen2", "gemma3"])
def family(request: pytest.FixtureRequest) -> str:
    return request.param


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; the test is skipped when it is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def tiny_tokenizer():
    """A word-level fast tokenizer over the tiny models' 128 ids: <pad>=0, <bos>=1, <eos>=2,
    <unk>=3, then lowercase letters, digits and frequent words; BOS is added like Llama's."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    words = (
        list("abcdefghijklmnopqrstuvwxyz0123456789.,!?")
        + (
            "the a is of and to in human rights all everyone free equal dignity born der die das "
            "und ist le la les et est el los y es un une ein eine person people right law"
        ).split()
    )
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + words))}
    assert len(vocab) <= 128
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """A saved tiny Gemma 3 model + tokenizer folder, loadable by ``--model DIR``."""
    path = tmp_path / "tiny-gemma3"
    tiny_model("gemma3", n_layers=4).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def spy_loaded_dtypes(monkeypatch, module) -> list:
    """Replace ``module.load_model`` (the module whose import of it the command calls) by one
    that records the dtype each loaded model has; returns the list it fills."""
    import midalign.modeling.loading

    loaded = []

    def spy(*args, **kwargs):
        model, tokenizer = midalign.modeling.loading.load_model(*args, **kwargs)
        loaded.append(next(model.parameters()).dtype)
        return model, tokenizer

    monkeypatch.setattr(module, "load_model", spy)
    return loaded
