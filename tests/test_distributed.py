"""Several processes: `accelerate launch` of `midalign train` on CPU (gloo), and the InfoNCE
negatives gathered across ranks. Each launch starts two Python processes; these tests take
about a minute each on 2 cores."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from conftest import ROUTE_DTYPES, assert_same_numbers, rel_error
from safetensors.torch import load_file
from test_train import WORDS, _model_dir, _tatoeba_dir

from midalign.training.callbacks import read_log
from midalign.training.losses import info_nce

DDP_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "ddp.yaml"
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent))
# "The same result up to float error": sums over ranks are added in another order than in one
# process, so results are compared per tensor, norm-relative, with conftest.ROUTE_REL's bounds.
# Weights trained in float32 get a bound of their own: Adam's update lr·m/(√v + ε) turns a
# rounding difference in a gradient element near ε = 1e-8 into a difference of up to lr in that
# weight (on an Intel AMX machine one element of 512 differed by 2.3e-6 after 3 steps). Measured
# here: 3.2e-6 norm-relative (AMD EPYC). 1e-3 stays far below an algorithmic error (one step
# more or less at lr 1e-2 moves these weights by > 10 % relative), and the float64 test checks
# the weights to 1e-10.
ADAM_FLOAT32_REL = 1e-3


# --------------------------------------------------------------------------- gathered negatives


def _gather_worker(
    rank: int,
    world: int,
    port: int,
    x: torch.Tensor,
    y: torch.Tensor,
    out: str,
    options: dict,
):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = x.shape[-2] // world
        xs = x[..., rank * b : (rank + 1) * b, :].clone().requires_grad_(True)
        ys = y[..., rank * b : (rank + 1) * b, :].clone().requires_grad_(True)
        loss = info_nce(xs, ys, temperature=0.05, gather=True, **options)
        loss.backward()  # the gathered slices send their gradients back to this rank
        losses = [torch.zeros((), dtype=loss.dtype) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        mean = torch.stack(losses).mean()
        torch.save({"loss": mean, "gx": xs.grad, "gy": ys.grad}, out % rank)
    finally:
        dist.destroy_process_group()


@ROUTE_DTYPES
@pytest.mark.parametrize(
    ("layers", "normalize", "symmetric"),
    [(1, "none", True), (2, "center", True), (2, "standardize", False)],
)
def test_gathered_negatives_equal_one_process_with_the_global_batch(
    tmp_path, layers, normalize, symmetric, dtype
):
    """Two ranks with 3 pairs each and gather: loss (mean over ranks) and the DDP-averaged
    gradient of every pooled state equal one process's over all 6 pairs (x 2 layers). With
    center/standardize the batch statistics are those of all 12 rows, and their gradient flows
    back to the rank that holds each row (without ``symmetric``, x is gathered for them alone)."""
    torch.manual_seed(0)
    x, y = torch.randn(layers, 6, 5, dtype=dtype), torch.randn(layers, 6, 5, dtype=dtype)
    x, y = x + 3, y + 3  # a shared offset, which centring removes
    options = {"symmetric": symmetric, "normalize": normalize}
    out = str(tmp_path / "rank%d.pt")
    port = 29500 + random.Random(str(tmp_path)).randint(0, 400)
    mp.spawn(_gather_worker, args=(2, port, x, y, out, options), nprocs=2, join=True)

    xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    loss = info_nce(xg, yg, temperature=0.05, **options)
    loss.backward()
    parts = [torch.load(out % r, weights_only=True) for r in (0, 1)]
    for r, part in enumerate(parts):
        assert part["loss"].dtype == dtype
        assert_same_numbers(part["loss"], loss.detach(), dtype)
        # Rank r holds d(L_0 + L_1)/d(its states), where the one-process loss is their mean,
        # (L_0 + L_1)/2; DDP divides the ranks' summed weight gradients by W = 2, so W times
        # the one-process gradient of slice r is what each rank must hold.
        rows = slice(3 * r, 3 * r + 3)
        assert_same_numbers(part["gx"], 2 * xg.grad[:, rows], dtype)
        assert_same_numbers(part["gy"], 2 * yg.grad[:, rows], dtype)
    # without gathering, each rank sees only its own 3 negatives (and, normalising, its own
    # statistics): a different loss
    local = info_nce(x[:, :3], y[:, :3], temperature=0.05, **options)
    assert abs(local.item() - loss.item()) > 1e-3


# --------------------------------------------------------------------------- accelerate launch


def _equal_length_tasks(path: Path, n: int, seed: int) -> Path:
    """n examples of 5 prompt words and a one-word response: every micro-batch holds the same
    number of response tokens, so the mean of the ranks' losses is the one-process loss."""
    rng = random.Random(seed)
    rows = [
        {"prompt": " ".join(rng.choices(WORDS, k=5)), "response": rng.choice(WORDS)}
        for _ in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train_config(
    tmp_path: Path, schedule: str, n_tasks: int = 16, family: str = "gemma3", dtype: str = "float32"
) -> dict:
    return {
        "model": {"name": str(_model_dir(tmp_path, family)), "dtype": dtype},
        "lora": {"dropout": 0.0},  # dropout draws differ between ranks
        "data": {
            "task_data": str(_equal_length_tasks(tmp_path / f"tasks{n_tasks}.jsonl", n_tasks, 1)),
            "align_data": f"tatoeba:{_tatoeba_dir(tmp_path / 'tatoeba')}",
            "align_langs": ["deu", "fra"],
            "align_dev_pairs": 0,
        },
        "align": {"schedule": schedule, "layers": "2", "temperature": 0.05},
        "optim": {
            "gradient_accumulation_steps": 2 if schedule == "align" else 4,
            "max_steps": 3,
            "eval_steps": 100,
            "save_steps": 100,
            "logging_steps": 1,
            "learning_rate": 1e-2,
            "warmup_ratio": 0.0,
            # float32 where the CPU has native bf16 too: the launched processes do not see
            # conftest's patch of the detection, and `auto` would train them in bf16 there
            "bf16": "false",
        },
    }


def _launch(config: dict, out: Path, processes: int, **per_process: int | bool) -> None:
    """`midalign train` with ``per_process`` settings (batch sizes, gather) under
    ``accelerate launch`` with ``processes`` CPU processes (gloo), or as one plain process."""
    c = json.loads(json.dumps(config))
    c["optim"]["batch_size"] = per_process["batch_size"]
    c["align"]["batch_pairs"] = per_process["batch_pairs"]
    c["align"]["gather_negatives"] = per_process.get("gather", False)
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(c))
    train = ["-m", "midalign", "train", "--config", str(path), "--out", str(out), "--no-progress"]
    if processes == 1:
        cmd = [sys.executable, *train]
    else:
        # the shipped DDP config: accelerate's torch.distributed launcher, which without GPUs
        # runs CPU processes over gloo (accelerate's `--cpu` would ask for MPI instead)
        cmd = [ACCELERATE, "launch", "--config_file", str(DDP_CONFIG)]
        cmd += ["--num_processes", str(processes)]
        cmd += ["--main_process_port", str(29100 + random.Random(str(out)).randint(0, 300))]
        cmd += train
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONFAULTHANDLER"] = "1"  # a crash in a worker prints its Python stack
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    crash = done.stderr.find("Fatal Python error")  # faulthandler's stack of a crashed worker
    assert done.returncode == 0, done.stderr[crash:][:6000] if crash >= 0 else done.stderr[-3000:]


def _losses(out: Path) -> list[tuple[int, float, float]]:
    rows = [r for r in read_log(out / "log.jsonl") if "loss" in r and "task_loss" in r]
    return [(r["step"], r["task_loss"], r["align_loss"]) for r in rows]


@pytest.mark.skipif(ACCELERATE is None, reason="accelerate's launcher is not installed")
def test_two_processes_take_the_one_process_steps(tmp_path):
    """alternate, gathered negatives, standardised with the batch statistics (gathered too):
    2 processes × (batch 2, 4 pairs) = 1 process × (batch 4, 8 pairs): per-step task and
    alignment losses and the final adapter agree. In float64, so the comparison is of the
    algorithm, not of the CPU's float32 summation order (the align schedule's test below keeps
    float32 covered). On Llama: Gemma 3's norms round to float32 whatever the model dtype
    (conftest.precision)."""
    config = _train_config(tmp_path, "alternate", family="llama", dtype="float64")
    config["align"]["normalize"] = "standardize"
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(config, one, 1, batch_size=4, batch_pairs=8)
    _launch(config, two, 2, batch_size=2, batch_pairs=4, gather=True)
    a, b = _losses(one), _losses(two)
    assert [s for s, _, _ in a] == [s for s, _, _ in b] == [1, 2, 3]
    f64 = torch.float64
    for column in (1, 2):  # task and alignment losses, logged as float64 numbers
        assert_same_numbers(
            torch.tensor([r[column] for r in b]), torch.tensor([r[column] for r in a]), f64
        )
    wa = load_file(str(one / "adapter_model.safetensors"))
    wb = load_file(str(two / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].dtype == f64
        assert_same_numbers(wb[name], wa[name], f64)
    # the comparison means something: the losses moved (LoRA B starts at zero, so a step
    # that changed nothing would leave the loss level), and without gathered negatives (and
    # statistics) two processes compute a different alignment loss
    assert a[0][1] != a[-1][1] and a[0][2] != a[-1][2]
    _launch(config, tmp_path / "local", 2, batch_size=2, batch_pairs=4, gather=False)
    local = torch.tensor(_losses(tmp_path / "local"))[:, 2]
    assert (local - torch.tensor(a)[:, 2]).abs().max() > 1e-3


@pytest.mark.skipif(ACCELERATE is None, reason="accelerate's launcher is not installed")
def test_align_schedule_under_two_processes(tmp_path):
    """The align schedule's forward stops at layer 2 of 4, so DDP must find the unused LoRA
    weights; the run equals one process with the global batch. In float32, the production
    dtype: losses equal up to float32 rounding (conftest.ROUTE_REL), weights up to
    ADAM_FLOAT32_REL."""
    config = _train_config(tmp_path, "align")
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(config, one, 1, batch_size=1, batch_pairs=8)
    _launch(config, two, 2, batch_size=1, batch_pairs=4, gather=True)
    la = [r["align_loss"] for r in read_log(one / "log.jsonl") if "align_loss" in r]
    lb = [r["align_loss"] for r in read_log(two / "log.jsonl") if "align_loss" in r]
    f32 = torch.float32
    assert len(la) == 3
    assert_same_numbers(torch.tensor(lb), torch.tensor(la), f32)
    wa = load_file(str(one / "adapter_model.safetensors"))
    wb = load_file(str(two / "adapter_model.safetensors"))
    for name in wa:
        assert wa[name].dtype == f32
        assert rel_error(wb[name], wa[name]) <= ADAM_FLOAT32_REL, name


@pytest.mark.skipif(ACCELERATE is None, reason="accelerate's launcher is not installed")
def test_alternate_steps_under_two_processes(tmp_path):
    """alternate-steps (A T A: an alignment step's forward stops at layer 2 of 4, so DDP must
    find the unused LoRA weights; the loader deals whole steps to both ranks), centred with the
    base model's statistics (every rank computes them, rank 0's are broadcast): 2 processes ×
    (batch 2, 4 pairs, gathered) = 1 process × (batch 4, 8 pairs), in float64."""
    config = _train_config(tmp_path, "alternate-steps", family="llama", dtype="float64")
    config["align"].update(normalize="center", stats="base")
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(config, one, 1, batch_size=4, batch_pairs=8)
    _launch(config, two, 2, batch_size=2, batch_pairs=4, gather=True)
    f64 = torch.float64
    for name in ("align_loss", "task_loss"):
        la = [(r["step"], r[name]) for r in read_log(one / "log.jsonl") if name in r]
        lb = [(r["step"], r[name]) for r in read_log(two / "log.jsonl") if name in r]
        steps = {"align_loss": [1, 3], "task_loss": [2]}[name]
        assert [s for s, _ in la] == [s for s, _ in lb] == steps
        assert_same_numbers(torch.tensor([v for _, v in lb]), torch.tensor([v for _, v in la]), f64)
    sa = load_file(str(one / "align_stats.safetensors"))
    sb = load_file(str(two / "align_stats.safetensors"))
    assert sa.keys() == sb.keys() == {"layer.2.mean", "layer.2.std"}
    for k in sa:
        assert_same_numbers(sb[k], sa[k], f64)
    wa = load_file(str(one / "adapter_model.safetensors"))
    wb = load_file(str(two / "adapter_model.safetensors"))
    for name in wa:
        assert_same_numbers(wb[name], wa[name], f64)


@pytest.mark.skipif(ACCELERATE is None, reason="accelerate's launcher is not installed")
def test_uneven_task_data_does_not_deadlock(tmp_path):
    """9 task examples in batches of 2 over 2 ranks: 5 batches, so one rank has a batch fewer.
    The run ends (accelerate evens the batches out), with one adapter, at the step count the
    even-batched loader implies."""
    config = _train_config(tmp_path, "alternate", n_tasks=9)
    config["optim"]["max_steps"] = -1
    config["optim"]["epochs"] = 1
    config["optim"]["gradient_accumulation_steps"] = 1
    out = tmp_path / "uneven"
    _launch(config, out, 2, batch_size=2, batch_pairs=4)
    result = json.loads((out / "train_result.json").read_text())
    assert result["global_step"] == 3  # ceil(9 / 2 / 2) = 3 batches per rank, 1 per step
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2"])
def test_shipped_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED"}[name]
    config = load_config_from_file(str(DDP_CONFIG.with_name(f"{name}.yaml")))
    assert config.distributed_type.value == expected
    assert config.mixed_precision == "no"  # bf16 weights come from --model.dtype
