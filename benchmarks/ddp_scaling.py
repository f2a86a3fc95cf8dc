"""`midalign train` in 2 processes (DDP over gloo) vs 1 process, same global batch (issue #6).

Both runs train the same `alternate` schedule for the same optimizer steps on the same data:
1 process with batch 2b and 2B alignment pairs, 2 threads; 2 processes (`accelerate launch
--config_file configs/accelerate/ddp.yaml`) with batch b and B pairs each, 1 thread each, and
gathered negatives. The machine's cores are the same in both; the ratio shows what data
parallelism costs or gains on them (on GPUs each process has its own device and the ratio is
the one that matters: here it is a check that nothing serialises).

Reported: task + alignment tokens (non-padding) per second of the Trainer's train_runtime (model
loading excluded), for a tiny random Llama (4 layers, d 64) and the default model (Gemma 3 270M).

    python benchmarks/ddp_scaling.py            # ≈ 6 min on 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from _common import REPO, cpu_name, load_1min, machine, print_machine, wait_for_quiet

TATOEBA = REPO.parent / "shared" / "data" / "tatoeba"
SIB200 = REPO.parent / "shared" / "data" / "sib200"
ACCELERATE = Path(sys.executable).parent / "accelerate"


def tiny_model_dir(root: Path) -> str:
    """A 4-layer random Llama with the default model's tokenizer (real text, tiny compute)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from midalign.modeling.loading import load_model

    _, tokenizer = load_model("default")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = root / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def task_file(root: Path, n: int) -> str:
    """n SIB-200 English topic questions as a task jsonl (prompt, response)."""
    from midalign.data.instructions import write_instructions
    from midalign.evaluation.tasks import get_task

    task = get_task("topic")
    path = root / "topic.jsonl"
    write_instructions(path, task, task.read(f"sib200:{SIB200}", ["eng_Latn"], "train", n))
    return str(path)


def run(model: str, tasks: str, out: Path, processes: int, steps: int, batch: int, pairs: int):
    config = {
        "model": {"name": model},
        "lora": {"dropout": 0.0},
        "data": {
            "task_data": tasks,
            "align_data": f"tatoeba:{TATOEBA}",
            "align_langs": ["deu", "swh"],
            "align_dev_pairs": 0,
        },
        "align": {
            "schedule": "alternate",
            "layers": "middle",
            "batch_pairs": pairs // processes,
            "gather_negatives": processes > 1,
        },
        "optim": {
            "batch_size": batch // processes,
            "gradient_accumulation_steps": 2,
            "max_steps": steps,
            "eval_steps": 10_000,
            "save_steps": 10_000,
            "logging_steps": 1,
            "warmup_ratio": 0.0,
        },
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    train = ["-m", "midalign", "train", "--config", str(path), "--out", str(out), "--no-progress"]
    threads = 2 // processes
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    if processes == 1:
        cmd = [sys.executable, *train]
    else:
        cmd = [ACCELERATE, "launch", "--config_file", str(REPO / "configs/accelerate/ddp.yaml")]
        cmd += [
            "--num_processes",
            str(processes),
            "--main_process_port",
            str(29300 + random.randint(0, 500)),
            *train,
        ]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    runtime = next(r["train_runtime"] for r in rows if "train_runtime" in r)
    return runtime, rows


def tokens_per_step(model: str, tasks: str, steps: int, batch: int, pairs: int) -> float:
    """Non-padding tokens the global batch of each step holds: the task examples in the
    Trainer's order are not needed, only their mean length (every example is used once in
    turn), plus the alignment micro-batches' rows, recomputed from the stream."""
    from midalign.data.instructions import load_task_dataset
    from midalign.data.pairs import AlignStream, load_pairs, split_dev
    from midalign.modeling.loading import load_model

    _, tok = load_model(model)
    data = load_task_dataset(tasks, tok, 2048)
    mean_task = sum(len(data[i]["input_ids"]) for i in range(len(data))) / len(data)
    all_pairs, _ = split_dev(load_pairs(f"tatoeba:{TATOEBA}", ["deu", "swh"]), 0, 42)
    stream = AlignStream(all_pairs, pairs, 42)
    align = [
        sum(len(tok(x)["input_ids"]) + len(tok(y)["input_ids"]) for x, y in stream.batch(k)[1])
        for k in range(steps)
    ]
    return batch * mean_task + sum(align) / steps  # 1 task + 1 align micro-batch per step


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per default-model run")
    p.add_argument("--tiny-steps", type=int, default=60, help="optimizer steps per tiny run")
    p.add_argument("--batch", type=int, default=8, help="global task examples per micro-batch")
    p.add_argument("--pairs", type=int, default=16, help="global alignment pairs per micro-batch")
    p.add_argument("--json", type=Path, default=REPO / "docs/bench/ddp_scaling.json")
    args = p.parse_args(argv)
    load = wait_for_quiet()
    info = machine()
    print_machine(info)
    root = Path(tempfile.mkdtemp(prefix="ddp-bench-"))
    results = []
    try:
        tasks = task_file(root, 200)
        models = (
            ("tiny llama", tiny_model_dir(root), args.tiny_steps),
            ("default (Gemma 3 270M)", "default", args.steps),
        )
        for name, model, steps in models:
            per_step = tokens_per_step(model, tasks, steps, args.batch, args.pairs)
            row = {"model": name, "steps": steps}
            for procs in (1, 2):
                out = root / f"{name[:4]}-{procs}"
                runtime, _ = run(model, tasks, out, procs, steps, args.batch, args.pairs)
                row[f"tokens_per_s_{procs}p"] = per_step * steps / runtime
                row[f"seconds_{procs}p"] = runtime
            row["scaling"] = row["tokens_per_s_2p"] / row["tokens_per_s_1p"]
            results.append(row)
            print(
                f"{name}: 1 process {row['tokens_per_s_1p']:.0f} tok/s, 2 processes "
                f"{row['tokens_per_s_2p']:.0f} tok/s: {row['scaling']:.2f}×",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "machine": info,
        "load_1min_before": load,
        "load_1min_after": load_1min(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
