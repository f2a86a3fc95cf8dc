"""FSDP2 on CPU: a model sharded by torch's ``fully_shard`` over gloo, 2 processes, takes the
optimizer steps one process takes with the global batch.

accelerate prepares FSDP only on GPUs (on CPU its ``fsdp_version: 2`` config silently becomes
DDP), so the test shards the model itself and drives the ``alternate`` step of
:class:`~midalign.training.alignment.AlignmentMixin` (alignment forward that stops at layer 2 of 4,
with gathered negatives, then the task forward through
:func:`~midalign.modeling.forward.response_loss`), with a Trainer's part reduced to what that step
reads. One launch starts two processes and takes about a minute on 2 cores."""

from __future__ import annotations

import os
import random
import socket
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import assert_same_numbers, tiny_model, tiny_tokenizer
from peft import LoraConfig, get_peft_model
from test_train import WORDS, X_WORDS
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from midalign.data.pairs import AlignStream
from midalign.modeling.forward import pooled_states
from midalign.modeling.layers import decoder_stack, unwrap
from midalign.probe.embeddings import special_token_ids
from midalign.training.align_setup import AlignSetup, dev_batches
from midalign.training.alignment import AlignmentMixin
from midalign.training.trainer import AlignmentTrainer

F64 = torch.float64
STEPS, TASK_ROWS, PAIRS = 2, 4, 4  # per optimizer step, over all ranks
# How the model is cut into FSDP units. "layers": one unit per decoder layer and the root,
# which then holds the embeddings, the final norm and lm_head (torch's documented layout).
# "accelerate": as accelerate 1.15's fsdp2_prepare_model cuts it for a GPU run: the
# embeddings a unit of their own, the final norm and lm_head one unit kept gathered after
# the forward, then the root.
LAYOUTS = ("layers", "accelerate")


def _shard(model: torch.nn.Module, layout: str) -> None:
    stack = decoder_stack(model)
    for layer in stack.layers:
        fully_shard(layer)
    if layout == "accelerate":
        fully_shard(stack.embed_tokens)
        fully_shard([stack.norm, unwrap(model).lm_head], reshard_after_forward=False)
    fully_shard(model)


def _pairs(n: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    rng = random.Random(seed)
    return {
        lang: [
            (" ".join(rng.choices(words, k=rng.randint(2, 5))), " ".join(rng.choices(WORDS, k=3)))
            for _ in range(n)
        ]
        for lang, words in X_WORDS.items()
    }


def _task_batch(step: int, rank: int, world: int) -> dict[str, torch.Tensor]:
    """This rank's rows of step ``step``'s task batch: 6 tokens, the last 2 labelled, so every
    row has as many response tokens and the ranks' mean losses average to the global one."""
    ids = torch.randint(4, 128, (TASK_ROWS, 6), generator=torch.Generator().manual_seed(step))
    labels = torch.full_like(ids, -100)
    labels[:, -2:] = ids[:, -2:]
    rows = slice(rank * TASK_ROWS // world, (rank + 1) * TASK_ROWS // world)
    ids, labels = ids[rows], labels[rows]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


class _Step(AlignmentMixin):
    """What the step reads of a Trainer: its accelerator, the model, one task batch per
    optimizer step, inputs already in place, and ``midalign train``'s task loss."""

    current_gradient_accumulation_steps = 1
    task_loss = AlignmentTrainer.task_loss

    def __init__(self, model: torch.nn.Module, setup: AlignSetup) -> None:
        from accelerate import Accelerator

        self.accelerator = Accelerator()
        self.model = model
        self.init_alignment("alternate", setup, tiny_tokenizer(), has_task_dev=False)

    def _prepare_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return batch


def _train(rank: int, world: int, layout: str | None) -> dict[str, Any]:
    """Two ``alternate`` optimizer steps (Adam) on ``world`` ranks, the model sharded by
    ``layout`` (None: one process, not sharded); then the dev alignment metrics."""
    model = get_peft_model(
        tiny_model("llama", n_layers=4, dtype=F64),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
    ).train()
    tokenizer = tiny_tokenizer()
    setup = AlignSetup(
        stream=AlignStream(_pairs(12, 0), PAIRS // world, seed=0, rank=rank, world=world),
        layers=[2],
        temperature=0.05,
        gather=True,  # one process: nothing to gather
        normalize="standardize",  # with the statistics of the (gathered) batch
        max_length=32,
        special_ids=special_token_ids(tokenizer),
        dev_batches=dev_batches(_pairs(6, 1), tokenizer, 3, 32),
    )
    result: dict[str, Any] = {}
    if layout is not None:
        _shard(model, layout)
        if layout == "layers":  # the early exit outside the root's forward: shards
            batch = setup.dev_batches[0]
            try:
                pooled_states(model, batch["input_ids"], batch["attention_mask"], [2])
            except RuntimeError as e:
                result["outside"] = str(e)
    step = _Step(model, setup)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for k in range(STEPS):
        losses.append(step.training_step(model, _task_batch(k, rank, world)))
        optimizer.step()
        optimizer.zero_grad()
    result["losses"] = torch.stack(losses)
    result["dev"] = torch.tensor(step.dev_alignment(), dtype=F64)
    result["sharded"] = [
        isinstance(p, DTensor) and p.to_local().numel() < p.numel() for p in params
    ]
    result["weights"] = {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach()
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    return result


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save({layout: _train(rank, world, layout) for layout in LAYOUTS}, out % rank)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    """One process with the global batch, and the two ranks' results for every layout."""
    out = str(tmp_path_factory.mktemp("fsdp") / "rank%d.pt")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    return _train(0, 1, None), [torch.load(out % r, weights_only=True) for r in (0, 1)]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_steps_equal_one_process(runs, layout):
    """alternate, gathered negatives, standardised with the gathered batch statistics, in
    float64: 2 ranks × (2 task rows, 2 pairs) on a sharded LoRA Llama = 1 process × (4 rows,
    4 pairs). The mean of the ranks' step losses, the LoRA weights after 2 Adam steps (gathered
    from their shards) and the dev alignment loss and accuracy equal one process's to 1e-10."""
    one, ranks = runs
    two = [r[layout] for r in ranks]
    assert all(all(r["sharded"]) for r in two)  # every LoRA weight is split over the ranks
    assert_same_numbers((two[0]["losses"] + two[1]["losses"]) / 2, one["losses"], F64)
    assert one["weights"].keys() == two[0]["weights"].keys()
    for name, w in one["weights"].items():
        assert w.dtype == F64
        for r in two:
            assert_same_numbers(r["weights"][name], w, F64)
    for r in two:  # every rank holds every dev batch
        assert_same_numbers(r["dev"], one["dev"], F64)
    # the comparison means something: the steps moved LoRA B off its zero start
    assert any(w.abs().sum() > 0 for name, w in one["weights"].items() if "lora_B" in name)


def test_early_exit_outside_the_root_forward_reads_shards(runs):
    """Why every forward runs as the root module's (AlignmentMixin.wrapped_forward): called
    on the inner decoder stack, the early exit finds the root unit's embeddings still sharded."""
    _, ranks = runs
    for r in ranks:
        assert "mixed torch.Tensor and DTensor" in r["layers"]["outside"]
