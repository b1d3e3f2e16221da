"""The GPU check's measurements (started by `run.sh`; see there): the training step of ViT-L/14
as training runs it, most important first.

    python benchmarks/gpu/bench.py --out DIR [--budget-s 150]
    python benchmarks/gpu/bench.py --dry-run --out DIR   # CPU, tiny shapes, every code path

The step is the loop's: `PretrainObjective`, `prepare_networks` (FSDP2 `fully_shard` per block
and head with the bf16 mixed-precision policy, on a 1-rank NCCL group wrapped as a multi-process
job would be; per-block compilation), `train_step`, and the GPU augmentation (`Views.finish`:
crops and colour on the device) timed as a phase of its own and counted in the step. MFU is the
model FLOPs of `benchmarks/train_throughput.py`, less what the pruned last block skips, per
second over the card's dense bf16 peak
(989 TFLOP/s) and over a bf16 8192³ matmul measured in the same run.

Configurations, in order, each started only while the budget lasts: compiled with no activation
checkpointing (with the profiler table), compiled with selective checkpointing, eager, compiled
with full checkpointing. DIR gets results.json (everything) and kernels.txt (the profiler table).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ (train_throughput)

SPEC_BF16_FLOPS = 989e12  # H100/H200 SXM dense bf16
SDPA_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_efficient_attention": "mem_efficient",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "cpu_flash",
    "aten::_scaled_dot_product_attention_math": "math",
}
CONFIGS = (  # (name, compile, activation checkpointing), most important first
    ("compiled", True, "none"),
    ("compiled_selective_ac", True, "selective"),
    ("eager", False, "none"),
    ("compiled_full_ac", True, "full"),
)


def shapes(dry_run: bool) -> SimpleNamespace:
    if dry_run:
        return SimpleNamespace(arch="vit_pico", patch=7, global_size=28, local_size=14, n_local=8, batch=4,
                               prototypes=256, steps=2, warmup=2)  # fmt: skip
    return SimpleNamespace(arch="vit_large", patch=14, global_size=224, local_size=98, n_local=8, batch=64,
                           prototypes=65536, steps=6, warmup=2)  # fmt: skip


def init_group(device: torch.device) -> None:
    """A one-rank group with an in-process store: no port to bind (a MASTER_PORT left in the
    environment by something else, or taken, cannot make the check fail)."""
    import torch.distributed as dist

    store = dist.HashStore()
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("cpu:gloo,cuda:nccl", rank=0, world_size=1, device_id=device, store=store)
    else:
        dist.init_process_group("gloo", rank=0, world_size=1, store=store)


def build(sh: SimpleNamespace, device: torch.device, compiled: bool, ac: str, dry_run: bool):
    """(config, objective, wrapped student, optimiser, schedules) as the training loop builds them."""
    from dinoflow.config import load_config
    from dinoflow.distributed.env import DistEnv
    from dinoflow.models.wrappers import unwrap
    from dinoflow.train.optim import build_optimizer, param_groups
    from dinoflow.train.pretrain_objective import PretrainObjective
    from dinoflow.train.schedules import Schedules
    from dinoflow.train.step import prepare_networks

    cfg = load_config(
        None,
        [
            f"pretrain.model={{arch: {sh.arch}, patch_size: {sh.patch}, img_size: {sh.global_size}}}",
            f"pretrain.head={{out_dim: {sh.prototypes}, ibot_out_dim: {sh.prototypes}, separate_ibot_head: true}}",
            f"pretrain.crops={{global_size: {sh.global_size}, local_size: {sh.local_size}, n_local: {sh.n_local}}}",
            f"pretrain.train={{strategy: fsdp, compile: {str(compiled).lower()}, activation_checkpointing: {ac}, "
            f"batch_size_per_rank: {sh.batch}}}",
        ],
    ).pretrain
    obj = PretrainObjective(cfg, device)
    # a world of one, wrapped as a multi-process job is (FSDP2 and its bf16 policy)
    env = DistEnv(rank=0, world_size=2, local_rank=0, device=device, local_world_size=2)
    net = prepare_networks(obj, cfg.train, env, compile_backend="aot_eager" if dry_run else None)
    groups = param_groups(unwrap(net).param_modules(), cfg.optim, {"backbone": unwrap(net).backbone.n_blocks})
    opt = build_optimizer(groups, cfg.optim)
    sched = Schedules(cfg.optim, cfg.loss, epoch_length=100, epochs=1, total_batch=sh.batch)
    return cfg, obj, net, opt, sched


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_steps(parts, prepared: list, device: torch.device, first: int, n: int, clock=None) -> None:
    """`n` loop steps: the device half of the views (augmentation), then `train_step`."""
    from dinoflow.train.step import train_step

    cfg, obj, net, opt, sched = parts
    for i in range(first, first + n):
        if clock is not None:
            clock.start_step()
        views = obj.views.finish(prepared[i % len(prepared)], i, device)
        if clock is not None:
            clock.record("augmentation")
        train_step(obj, net, opt, views, sched.at(i), clip_grad=cfg.optim.clip_grad, device=device)


def gpu_telemetry(device: torch.device):
    """nvidia-smi sampled every 200 ms while the timed steps run (None on a CPU)."""
    if device.type != "cuda":
        return None
    fields = "clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu"
    try:
        return subprocess.Popen(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-lms", "200"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    except OSError:
        return None


def read_telemetry(proc) -> dict | None:
    if proc is None:
        return None
    proc.terminate()
    text, _ = proc.communicate(timeout=10)
    rows = []
    for line in text.splitlines():
        try:
            rows.append([float(x) for x in line.split(",")])
        except ValueError:
            continue
    if not rows:
        return {"error": "nvidia-smi gave no readings"}
    cols = list(zip(*rows))
    med = [statistics.median(c) for c in cols]
    return {"sm_mhz_median": med[0], "sm_mhz_min": min(cols[0]), "sm_mhz_max_spec": med[1], "mem_mhz": med[2],
            "power_w_median": med[3], "power_w_max": max(cols[3]), "power_limit_w": med[4], "temp_c_max": max(cols[5]),
            "samples": len(rows)}  # fmt: skip


def profile_steps(parts, prepared, device: torch.device, first: int, out_dir: Path | None) -> dict:
    """A 2-step profiler table of the 25 costliest kernels (kernels.txt) and the SDPA kernel that ran."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        run_steps(parts, prepared, device, first, 2)
        _sync(device)
    avg = prof.key_averages()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = avg.table(sort_by=sort, row_limit=25, max_name_column_width=90)
    if out_dir is not None:
        (out_dir / "kernels.txt").write_text(table)
    names = {e.key for e in avg}
    sdpa = sorted({kind for op, kind in SDPA_OPS.items() if op in names})
    attn_kernels = sorted(
        {
            e.key[:90]
            for e in avg
            if any(s in e.key.lower() for s in ("flash", "fmha", "sdpa", "attention"))
            and not e.key.startswith("aten::")
        }  # fmt: skip
    )
    top = sorted(avg, key=lambda e: getattr(e, sort), reverse=True)[:5]
    return {"sdpa": sdpa or ["none seen"], "attention_kernels": attn_kernels[:6],
            "top5": [[e.key[:60], round(getattr(e, sort) / 2000, 2)] for e in top]}  # fmt: skip


def measure(name: str, compiled: bool, ac: str, sh, device, peak: float, out_dir, dry_run: bool) -> dict:
    """Build, warm up (compiles), time `steps` steps by phase, then (first configuration) profile."""
    import train_throughput as tt

    from dinoflow.models.wrappers import unwrap
    from dinoflow.train.phases import PhaseClock, installed

    torch._dynamo.reset()
    t_build = time.perf_counter()
    parts = build(sh, device, compiled, ac, dry_run)
    cfg, obj, net, _, _ = parts
    obj.views.bind(0, crops_on_host=False)
    images = torch.randint(0, 256, (sh.batch, 3, sh.global_size, sh.global_size), dtype=torch.uint8, device=device)
    prepared = [obj.views.prepare(images, i) for i in range(2)]  # masks: the loader workers' half
    build_s = time.perf_counter() - t_build
    # warm-up: step 0 compiles; step 1 recompiles the last block with a symbolic kept-token count
    t0 = time.perf_counter()
    run_steps(parts, prepared, device, 0, sh.warmup)
    _sync(device)
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock, telemetry = PhaseClock(device), gpu_telemetry(device)
    with installed(clock):
        run_steps(parts, prepared, device, sh.warmup, sh.steps, clock)
        steps = clock.durations()
    phases = {k: round(statistics.median(s[k] for s in steps), 2) for k in steps[0]}
    step_ms = statistics.median(sum(s.values()) for s in steps)
    flops = tt.step_flops(unwrap(net).backbone, cfg.head, sh) - pruned_flops(
        unwrap(net).backbone, sh, int(prepared[0]["mask_indices"].shape[0])
    )
    res = {
        "config": name, "compile": compiled, "activation_checkpointing": ac, "batch": sh.batch,
        "images_per_s": round(sh.batch / step_ms * 1000, 1), "step_ms": round(step_ms, 2),
        "step_ms_without_augmentation": round(step_ms - phases["augmentation"], 2), "phases_ms": phases,
        "tflop_per_step": round(flops / 1e12, 3), "mfu_spec": float(f"{flops / (step_ms / 1e3) / SPEC_BF16_FLOPS:.4g}"),
        "mfu_measured": float(f"{flops / (step_ms / 1e3) / peak:.4g}"),
        "compile_s": round(max(0.0, warmup_s - sh.warmup * step_ms / 1e3), 1) if compiled else 0.0, "build_s": round(build_s, 1),
        "telemetry": read_telemetry(telemetry),
    }  # fmt: skip
    if device.type == "cuda":
        gib = 2**30
        res["memory_gib"] = {"peak_allocated": round(torch.cuda.max_memory_allocated(device) / gib, 2),
                             "peak_reserved": round(torch.cuda.max_memory_reserved(device) / gib, 2),
                             "after_forward": round(clock.memory_at("student_forward") / gib, 2)}  # fmt: skip
    res["memory_model_gib"] = predicted_gib(parts, sh, ac, prepared, device)
    if name == CONFIGS[0][0]:
        res["profile"] = profile_steps(parts, prepared, device, sh.warmup + sh.steps, out_dir)
    return res


def pruned_flops(bb, sh, masked: int) -> float:
    """Matmul FLOPs the last block skips (`prune_last_block`): the projection and MLP of every
    token but the CLS tokens and the masked global patches, in the student's forward and backward
    and the teacher's forward; the MFU counts only the work the step does."""
    from dinoflow.train.memory_model import block_dims

    dim, hidden, _, _ = block_dims(bb)
    per_token = 2 * dim * dim + 2 * 2 * dim * hidden
    g_tok, l_tok = (sh.global_size // sh.patch) ** 2 + 1, (sh.local_size // sh.patch) ** 2 + 1
    student_skipped = 2 * sh.batch * g_tok + sh.n_local * sh.batch * l_tok - (2 + sh.n_local) * sh.batch - masked
    teacher_skipped = 2 * sh.batch * g_tok - 2 * sh.batch - masked
    if bb.block_list()[-1].drop_path_rate > 0:  # stochastic depth there: the student runs every token
        student_skipped = 0
    return per_token * (3 * student_skipped + teacher_skipped)


def predicted_gib(parts, sh, ac: str, prepared: list, device: torch.device) -> dict:
    """The memory model's prediction (train/memory_model.py) for this configuration, to hold
    against the measured peak: bf16 activations under the CUDA policy, fp32 on a CPU."""
    from dinoflow.models.wrappers import unwrap
    from dinoflow.train.memory_model import step_bytes, step_tokens

    cfg, obj, net, _, _ = parts
    tokens = step_tokens(cfg.crops, sh.patch, sh.batch, 1 + cfg.model.num_register_tokens)
    rows = sh.batch * (2 + sh.n_local) + int(prepared[0]["mask_indices"].shape[0])
    elem = 2 if device.type == "cuda" else 4
    parts_b = step_bytes(unwrap(net), obj.teacher, tokens, ac, elem, rows, sh.prototypes)
    return {k: float(f"{v / 2**30:.4g}") for k, v in parts_b.items()}


def free(device: torch.device) -> None:
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def head_record(device: torch.device, peak: float, dtype) -> dict:
    return {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "matmul_peak_tflops": round(peak / 1e12, 2), "peak_dtype": str(dtype).replace("torch.", ""),
            "spec_peak_tflops": SPEC_BF16_FLOPS / 1e12}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, aot_eager compilation, gloo")
    p.add_argument("--budget-s", type=float, default=150.0, help="start no configuration after this many seconds")
    p.add_argument("--out", default=None, help="directory for results.json and kernels.txt")
    args = p.parse_args(argv)
    import torch.distributed as dist
    import train_throughput as tt

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: use --dry-run on a CPU", file=sys.stderr)
        return 2
    start = time.perf_counter()
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    sh = shapes(args.dry_run)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = tt.matmul_peak(device, n=512 if args.dry_run else 8192, iters=3 if args.dry_run else 20, dtype=dtype)
    record = {**head_record(device, peak, dtype), "shapes": vars(sh), "configs": []}
    print(json.dumps({k: v for k, v in record.items() if k != "configs"}), flush=True)
    init_group(device)
    failed = 0
    try:
        for name, compiled, ac in CONFIGS:
            if time.perf_counter() - start > args.budget_s:
                res = {"config": name, "skipped": f"time budget of {args.budget_s:.0f} s spent"}
            else:
                try:
                    res = measure(name, compiled, ac, sh, device, peak, out_dir, args.dry_run)
                except Exception as exc:  # noqa: BLE001 - one failing configuration must not hide the others
                    failed += 1
                    res = {"config": name, "error": f"{type(exc).__name__}: {exc}"[:600]}
                    traceback.print_exc()
                free(device)
            record["configs"].append(res)
            print(json.dumps(res), flush=True)
            if out_dir is not None:  # rewritten after each: a run cut short still leaves what it measured
                (out_dir / "results.json").write_text(json.dumps(record, indent=1))
    finally:
        dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
