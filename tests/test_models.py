from __future__ import annotations

import pytest
import torch
from conftest import ROUTE_DTYPES, assert_same_numbers, precision, rel_error, tiny_model
from torch import nn

from midalign.errors import InputError
from midalign.modeling import dtypes
from midalign.modeling.dtypes import cpu_bf16_feature, resolve_dtype
from midalign.modeling.forward import (
    grouped_pooled_states,
    length_groups,
    pooled_states,
    pooling_mask,
)
from midalign.modeling.layers import decoder_layers, num_layers, parse_layers

SPECIAL = (0, 1, 2)  # pad, bos, eos of the tiny models


def _batch(seed: int = 0, lengths: tuple[int, ...] = (7, 4, 1), side: str = "right"):
    """BOS + random content tokens, padded on ``side``."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths) + 1
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        seq = torch.cat([torch.tensor([1]), torch.randint(3, 128, (n,), generator=g)])
        cols = slice(0, n + 1) if side == "right" else slice(width - n - 1, width)
        ids[row, cols], mask[row, cols] = seq, 1
    return ids, mask


def _reference(model, ids, mask, layers, pool):
    """Pooled states from the full forward's hidden_states tuple (every layer and the logits)."""
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    w = pooling_mask(ids, mask, pool, SPECIAL)
    return torch.stack([(hidden[i] * w[..., None]).sum(1) / w.sum(1, keepdim=True) for i in layers])


@ROUTE_DTYPES
@pytest.mark.parametrize("pool", ["mean", "mean-all"])
def test_early_exit_equals_full_forward_hidden_states(family, pool, dtype):
    model = tiny_model(family, n_layers=3, dtype=dtype)
    ids, mask = _batch()
    for layers in ([0], [1], [2], [3], [0, 1, 2, 3], [1, 3]):
        with torch.no_grad():
            ours = pooled_states(model, ids, mask, layers, pool, SPECIAL)
        assert ours.dtype == dtype
        for got, want in zip(ours, _reference(model, ids, mask, layers, pool), strict=True):
            assert_same_numbers(got, want, precision(family, dtype))


def test_early_exit_runs_no_later_layer_and_no_head(family):
    model = tiny_model(family, n_layers=3)
    ran = []
    for name, module in [
        ("layer3", decoder_layers(model)[2]),
        ("head", model.lm_head),
        ("norm", model.model.norm),
    ]:
        module.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    ids, mask = _batch()
    pooled_states(model, ids, mask, [1, 2], "mean", SPECIAL)
    assert ran == []
    pooled_states(model, ids, mask, [3], "mean", SPECIAL)
    assert ran == ["layer3", "norm"]  # layer L is pooled after the final norm, as HF gives it
    ran.clear()
    pooled_states(model, ids, mask, [3], "mean", SPECIAL, final_norm=False)
    assert ran == ["layer3"]  # the alignment loss's view of L: the residual stream
    assert len(decoder_layers(model)) == 3 and isinstance(model.model.norm, nn.Module)


@ROUTE_DTYPES
def test_last_layer_before_the_final_norm_is_the_norms_input(family, dtype):
    """final_norm=False at L pools what the full forward feeds the final norm (a hook on its
    input), as the paper's code pooled; other layers do not change."""
    model = tiny_model(family, n_layers=3, dtype=dtype)
    ids, mask = _batch()
    seen = []
    hook = model.model.norm.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    hook.remove()
    w = pooling_mask(ids, mask, "mean", SPECIAL)
    want = (seen[0] * w[..., None]).sum(1) / w.sum(1, keepdim=True)
    with torch.no_grad():
        pre = pooled_states(model, ids, mask, [2, 3], "mean", SPECIAL, final_norm=False)
        post = pooled_states(model, ids, mask, [2, 3], "mean", SPECIAL)
    assert_same_numbers(pre[1], want, precision(family, dtype))
    assert torch.equal(pre[0], post[0])
    assert rel_error(pre[1], post[1]) > 0.1  # the norm changes the states a lot


@ROUTE_DTYPES
def test_left_and_right_padding_give_identical_embeddings(family, dtype):
    model = tiny_model(family, n_layers=2, dtype=dtype)
    right = pooled_states(model, *_batch(side="right"), [0, 1, 2], "mean", SPECIAL)
    left = pooled_states(model, *_batch(side="left"), [0, 1, 2], "mean", SPECIAL)
    for got, want in zip(left, right, strict=True):
        assert_same_numbers(got, want, precision(family, dtype))


def test_pooling_mask_excludes_bos_only_in_mean_mode():
    ids = torch.tensor([[1, 5, 6, 0], [1, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert pooling_mask(ids, mask, "mean", SPECIAL).tolist() == [[0, 1, 1, 0], [1, 0, 0, 0]]
    assert pooling_mask(ids, mask, "mean-all", SPECIAL).tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


def test_pooled_mean_is_the_average_of_content_tokens():
    model = tiny_model("llama", n_layers=1)
    ids = torch.tensor([[1, 10, 20]])
    mask = torch.ones_like(ids)
    emb = model.model.embed_tokens.weight.detach()
    pooled = pooled_states(model, ids, mask, [0], "mean", SPECIAL)
    torch.testing.assert_close(pooled[0, 0], (emb[10] + emb[20]) / 2)
    pooled_all = pooled_states(model, ids, mask, [0], "mean-all", SPECIAL)
    torch.testing.assert_close(pooled_all[0, 0], (emb[1] + emb[10] + emb[20]) / 3)


@ROUTE_DTYPES
def test_gradient_through_early_exit_equals_full_forward(family, dtype):
    model = tiny_model(family, n_layers=3, dtype=dtype)
    ids, mask = _batch()
    pooled_states(model, ids, mask, [2], "mean", SPECIAL).pow(2).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[2]
    w = pooling_mask(ids, mask, "mean", SPECIAL)
    ((hidden * w[..., None]).sum(1) / w.sum(1, keepdim=True)).pow(2).sum().backward()
    full = {
        n: p.grad
        for n, p in model.named_parameters()
        if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert set(full) == {n for n, g in ours.items() if g.abs().sum() > 0}
    assert not any("layers.2" in n or "lm_head" in n for n in ours)
    for name, grad in full.items():
        assert_same_numbers(ours[name], grad, precision(family, dtype))


def test_length_groups_worked_by_hand():
    # lengths 10, 1, 10, 1 with 5 per group: {1, 3} and {0, 2} cost 2·1 + 5 + 2·10 + 5 = 32,
    # one group 4·10 + 5 = 45, four groups 22 + 4·5 = 42
    assert sorted(map(sorted, length_groups([10, 1, 10, 1], 5))) == [[0, 2], [1, 3]]
    assert sorted(map(sorted, length_groups([10, 1, 10, 1], 100))) == [[0, 1, 2, 3]]
    # no cost per group: every distinct length alone, in length order
    assert length_groups([3, 1, 2], 0) == [[1], [2], [0]]
    # 1, 2, 9 at 3 per group: {1, 2} {9} = 4 + 3 + 9 + 3 = 19 beats {1} {2, 9} = 4 + 18 + 6 = 28
    # and one group 27 + 3 = 30
    assert length_groups([9, 2, 1], 3) == [[2, 1], [0]]


@ROUTE_DTYPES
@pytest.mark.parametrize("side", ["right", "left"])
def test_length_sorted_sub_batches_give_the_batchs_states_and_gradients(family, side, dtype):
    model = tiny_model(family, n_layers=3, dtype=dtype)
    ids, mask = _batch(lengths=(9, 2, 8, 1, 3, 9), side=side)
    kwargs = {"pool": "mean", "special_ids": SPECIAL, "final_norm": False}
    assert len(length_groups(mask.sum(1).tolist(), 2)) > 1  # the case is really split
    results = []
    for run in (
        lambda: pooled_states(model, ids, mask, [1, 3], **kwargs),
        lambda: grouped_pooled_states(model, ids, mask, [1, 3], 2, **kwargs),
    ):
        model.zero_grad(set_to_none=True)
        states = run()
        (states * torch.linspace(-1, 1, states.numel()).view_as(states)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((states.detach(), grads))
    (whole, whole_grads), (grouped, grouped_grads) = results
    assert_same_numbers(grouped, whole, precision(family, dtype))
    assert set(grouped_grads) == set(whole_grads)
    for name, grad in whole_grads.items():
        assert_same_numbers(grouped_grads[name], grad, precision(family, dtype))


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3, 4]
    assert parse_layers("even", 5) == [0, 2, 4, 5]
    assert parse_layers("middle", 18) == [9]
    assert parse_layers("9,2,4,2", 18) == [2, 4, 9]
    assert parse_layers(16, 18) == parse_layers([16], 18) == [16]  # AlignConfig(layers=16)
    with pytest.raises(InputError, match="layer 19 is out of range"):
        parse_layers(19, 18)
    with pytest.raises(
        InputError, match="--layers: layer 19 is out of range.*0 \\(embeddings\\) to 18"
    ):
        parse_layers("2,19", 18)
    with pytest.raises(InputError, match="--layers: expected"):
        parse_layers("two", 18)


def test_unknown_architecture_is_a_clear_error():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(InputError, match="cannot find the decoder layers of Odd"):
        num_layers(Odd())


def test_layers_found_through_peft_wrapper():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("qwen2", n_layers=2)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert num_layers(peft_model) == 2
    ids, mask = _batch()
    out = pooled_states(peft_model, ids, mask, [1], "mean", SPECIAL)
    assert out.shape == (1, 3, 32)


@ROUTE_DTYPES
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_response_loss_equals_the_models_own_loss_and_gradient(family, softcap, dtype):
    from midalign.modeling.forward import response_loss

    model = tiny_model(family, n_layers=2, dtype=dtype)
    if softcap is not None:
        if family != "gemma3":
            pytest.skip("logit soft-capping is a Gemma option")
        model.config.final_logit_softcapping = softcap
    ids = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 10, 11, 12, 0, 0]])
    mask = (ids != 0).long()
    labels = torch.tensor([[-100, -100, -100, 7, 8, 9], [-100, -100, 11, 12, -100, -100]])
    if dtype == torch.float64:
        # transformers' ForCausalLMLoss rounds the logits to float32 (``logits.float()``), so
        # in float64 the reference is the same cross-entropy over the full logits, written out
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        keep = labels[:, 1:] != -100
        expected = torch.nn.functional.cross_entropy(logits[keep], labels[:, 1:][keep])
    else:
        expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    expected.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ours = response_loss(model, ids, mask, labels)
    ours.backward()
    assert ours.dtype == dtype
    assert_same_numbers(ours, expected, precision(family, dtype))
    for got, exp in zip((p.grad for p in model.parameters()), want, strict=True):
        assert_same_numbers(got, exp, precision(family, dtype))


def test_an_adapter_loads_only_on_the_base_it_names(tiny_model_dir, tmp_path, monkeypatch):
    """`--adapter` and `merge` share one rule (same_base): the adapter's base_model_name_or_path
    must name the --model, a local folder compared by its resolved path."""
    import json

    from peft import LoraConfig, get_peft_model

    from midalign.modeling.loading import load_adapter, load_model, same_base

    model, _ = load_model(str(tiny_model_dir))
    adapter = tmp_path / "adapter"
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    monkeypatch.chdir(tiny_model_dir.parent)
    model, _ = load_model(f"./{tiny_model_dir.name}", str(adapter))  # the same folder
    assert any("lora_A" in name for name, _ in model.named_parameters())

    config["base_model_name_or_path"] = "google/gemma-3-270m"
    config_file.write_text(json.dumps(config))
    with pytest.raises(InputError) as e:
        load_model(str(tiny_model_dir), str(adapter))
    assert str(e.value) == (
        f"--adapter: {adapter} was trained on google/gemma-3-270m, not on --model "
        f"{tiny_model_dir} (if they are the same model, set base_model_name_or_path in its "
        "adapter_config.json)"
    )
    # a model built in memory names no base: only the shapes can be checked
    assert load_adapter(tiny_model("gemma3", n_layers=4), str(adapter)) is not None
    assert same_base("models/x", None) and same_base("", "a/b") and not same_base("a/b", "a/c")


def test_peft_wrapping_is_quiet_about_transformers_deprecation(tiny_model_dir, tmp_path):
    """PEFT reads ``is_gradient_checkpointing``, deprecated by transformers 5: the FutureWarning
    is silenced where midalign wraps a model, and only that one."""
    import warnings

    from peft import LoraConfig, get_peft_model

    from midalign.modeling.loading import load_model, peft_quietly

    message = "`is_gradient_checkpointing` is deprecated"
    config = LoraConfig(r=2, target_modules=["q_proj"])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        get_peft_model(tiny_model("llama"), config)  # PEFT alone: the warning is there
    assert any(message in str(w.message) for w in seen)

    adapter = tmp_path / "adapter"
    model, _ = load_model(str(tiny_model_dir))
    with peft_quietly():
        get_peft_model(model, config).save_pretrained(adapter)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with peft_quietly():
            get_peft_model(tiny_model("llama"), config)
            warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)  # not silenced
        load_model(str(tiny_model_dir), str(adapter))
    assert [str(w.message) for w in seen if issubclass(w.category, FutureWarning)] == [
        "another FutureWarning"
    ]


# --------------------------------------------------------------------------- --dtype auto


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Set the machine ``--dtype auto`` sees: ``machine(cuda=..., amx=..., avx512_bf16=...)``
    answers through torch's own detection; ``machine(cpuinfo="flags : ...")`` removes torch's
    detection so that /proc/cpuinfo (here a file with those lines) decides."""
    monkeypatch.setattr(dtypes, "cpu_bf16_feature", cpu_bf16_feature)  # conftest pins it
    dtypes._reported.clear()

    def set_machine(cuda=False, cuda_bf16=True, amx=False, avx512_bf16=False, cpuinfo=None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(
            torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda_bf16
        )
        if cpuinfo is None:
            monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
            monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        else:
            monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
            path = tmp_path / "cpuinfo"
            path.write_text(f"processor : 0\nmodel name : Some CPU\n{cpuinfo}\n")
            monkeypatch.setattr(dtypes, "CPUINFO", path)

    return set_machine


NO_BF16 = "this CPU has no AMX/AVX512-BF16"


@pytest.mark.parametrize(
    ("where", "dtype", "reason"),
    [
        ({"cuda": True}, torch.bfloat16, "the CUDA device has native bf16"),
        ({"cuda": True, "cuda_bf16": False}, torch.float32, "the CUDA device has no native bf16"),
        ({"amx": True, "avx512_bf16": True}, torch.bfloat16, "this CPU has AMX"),
        ({"avx512_bf16": True}, torch.bfloat16, "this CPU has AVX512-BF16"),
        ({}, torch.float32, NO_BF16),
        ({"cpuinfo": "flags : fpu avx2 amx_bf16 amx_tile"}, torch.bfloat16, "this CPU has AMX"),
        ({"cpuinfo": "flags : avx512f avx512_bf16"}, torch.bfloat16, "this CPU has AVX512-BF16"),
        ({"cpuinfo": "flags : fpu sse avx avx2 fma"}, torch.float32, NO_BF16),
        ({"cpuinfo": ""}, torch.float32, NO_BF16),  # no flags line
    ],
    ids=[
        "cuda",
        "old-gpu",
        "amx",
        "avx512-bf16",
        "neither",
        "cpuinfo-amx",
        "cpuinfo-avx512",
        "cpuinfo-avx2",
        "cpuinfo-no-flags",
    ],
)
def test_dtype_auto_is_bf16_only_where_bf16_matmuls_are_native(
    machine, caplog, where, dtype, reason
):
    machine(**where)
    caplog.set_level("INFO", logger="midalign.modeling.dtypes")
    got, why = resolve_dtype("auto")
    assert (got, why) == (dtype, reason)
    assert resolve_dtype("auto") == (got, why)
    # logged once per process, however many steps ask
    name = str(dtype).removeprefix("torch.")
    assert [r.getMessage() for r in caplog.records] == [f"dtype auto → {name}: {why}"]


def test_an_explicit_dtype_is_taken_as_it_is(machine):
    machine(amx=True)
    assert resolve_dtype("float32") == (torch.float32, "as requested")
    assert resolve_dtype("bfloat16") == (torch.bfloat16, "as requested")
    with pytest.raises(InputError, match="--dtype must be auto or one of float32, bfloat16"):
        resolve_dtype("int8")
