"""`rlhf-lab bench`: our GPT against transformers' LlamaForCausalLM on the same weights, in one process.

    rlhf-lab bench                       # ~1M and ~10M parameters, writes bench.json
    rlhf-lab bench --quick               # a tiny model, seconds (what the tests run)
    rlhf-lab bench --device cuda --sizes 124M --batch 16 --seq_len 1024 --dtypes bf16   # GPT-2 small on a GPU

Everything is measured in the same run, on the same machine at the same moment, and reported as
ratios, because absolute CPU timings move with every other process on the machine:

- training: one step = forward + backward + AdamW step on a (batch x seq_len) batch of tokens, in
  fp32 and under bf16 autocast; the two models' repetitions are interleaved (ours, llama, llama,
  ours, ...) so a change of load hits both; tokens/s is the median over repetitions;
- MFU: that step's model FLOPs (base_model/flops.py) per second over the square-matmul peak
  measured in this run, in the same dtype (measured before each training row, the best kept);
- generation: greedy, `new_tokens` per row at each batch size from left-padded prompts: the lab's
  sampler (base_model/sampler.py) against transformers' `generate` on the Llama copy; the tokens
  must be identical (the command fails after writing the JSON if they are not);
- memory: the peak of tensor memory PyTorch allocates during one step or one generation, above what
  was live before it (from torch.profiler's memory events). Weights and optimizer state that already
  exist are not counted; activations, gradients, KV caches and temporaries are.

The models are random-initialised with their blocks scaled up and the final norm sharpened, so that
greedy text is not one repeated token and argmax decisions are not near-ties between the two
implementations' rounding.

On a GPU (`--device cuda`) the same figures are taken with the device synchronised before each clock
read; memory is the CUDA allocator's peak above what was allocated before. `--compile` wraps both
models in `torch.compile` for the training rows and adds the lab's compiled decode step
(`cache_implementation: static`, base_model/static_decode.py; CUDA graphs on a GPU) to the generation
rows, its tokens checked against `generate`'s and its compile time reported apart from its speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from recipes.core.errors import UserError

from .export import to_llama
from .flops import flops_per_token, measure_matmul_peak
from .hf import GPTConfig, GPTForCausalLM
from .sampler import sample
from .static_decode import compile_seconds, sample_static

SIZES = {  # the name is the rough parameter count; the exact one is in the JSON
    "tiny": dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "1M": dict(vocab_size=1024, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
    "10M": dict(vocab_size=1024, hidden_size=384, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2),
    # GPT-2 small's shape (12 x 768, 12 heads, vocab padded to 50304); a GPU size, not a CPU one
    "124M": dict(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
}
QUICK = dict(sizes="tiny", batch=4, seq_len=32, reps=2, gen_batches="1,4", new_tokens=16, peak_size=256)
PEAK_SIZE = 1024  # square matmul for the peak: large enough to be compute-bound, quick enough to repeat
GPU_PEAK_SIZE = 8192  # a GPU needs a far larger product to fill its matrix units


def build_pair(size: str, seed: int = 0, device: str = "cpu", **overrides):
    """(ours, llama): our GPTForCausalLM and its LlamaForCausalLM export, same weights, in train mode; `overrides`
    are GPTConfig keys (a tokenizer's vocab_size and eos_token_id)."""
    import torch

    torch.manual_seed(seed)
    keys = {**SIZES[size], "max_position_embeddings": 1024, "pad_token_id": 0, "eos_token_id": None, **overrides}
    config = GPTConfig(**keys)
    ours = GPTForCausalLM(config)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if any(key in name for key in ("o_proj", "up_proj", "down_proj")):
                p.mul_(10)  # a fresh init barely moves the residual stream; the tied head would repeat the input
        ours.model.norm.weight.mul_(10)
    return ours.to(device), to_llama(ours).to(device)


def _sync(device: str):
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def peak_bytes(fn, device: str = "cpu") -> int:
    """Peak of tensor bytes PyTorch allocates while fn() runs, above what was live before (profiler
    events on the CPU, the caching allocator's statistics on a GPU)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def _median_rates(steps: dict, tokens: int, reps: int, sync=lambda: None) -> dict:
    """Interleave the timed callables (order reversed every repetition); median tokens/s of each."""
    times = {name: [] for name in steps}
    names = list(steps)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            sync()
            start = time.perf_counter()
            steps[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: tokens / statistics.median(t) for name, t in times.items()}


def bench_training(size: str, dtype: str, batch: int, seq_len: int, reps: int, device: str = "cpu",
                   compile: bool = False) -> dict:
    import contextlib

    import torch

    ours, llama = build_pair(size, device=device)
    cfg = ours.config
    x = torch.randint(1, cfg.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(1)).to(device)
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext

    def trainer(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        forward = torch.compile(model) if compile else model

        def step():
            with autocast():
                loss = forward(input_ids=x, labels=x, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()

        return step

    with torch.no_grad(), autocast():  # same weights, so the same loss before any step
        loss_diff = abs(ours(input_ids=x, labels=x).loss.item() - llama(input_ids=x, labels=x).loss.item())
    steps = {"ours": trainer(ours), "llama": trainer(llama)}
    for step in steps.values():  # warm up: allocator, kernels, optimizer state (and compilation)
        step(), step()
    rates = _median_rates(steps, batch * seq_len, reps, _sync(device))
    n_params = sum(p.numel() for p in ours.parameters())
    flops = flops_per_token(n_params, cfg.num_hidden_layers, cfg.hidden_size, seq_len)
    return {
        "size": size, "params": n_params, "dtype": dtype, "batch": batch, "seq_len": seq_len,
        "ours_tokens_per_s": rates["ours"], "llama_tokens_per_s": rates["llama"],
        "ratio": rates["ours"] / rates["llama"],
        "ours_flops_per_s": rates["ours"] * flops, "llama_flops_per_s": rates["llama"] * flops,
        "ours_peak_bytes": peak_bytes(steps["ours"], device), "llama_peak_bytes": peak_bytes(steps["llama"], device),
        "initial_loss_diff": loss_diff, "compiled": compile,
    }


def bench_generation(size: str, batch: int, new_tokens: int, reps: int, device: str = "cpu",
                     static: bool = False) -> dict:
    """Greedy generation, the lab's sampler against `generate`; with `static`, the compiled decode step
    (`cache_implementation="static"`) too, its first call (which compiles the shape) kept out of the timing."""
    import torch

    ours, llama = build_pair(size, device=device)
    ours.eval(), llama.eval()
    g = torch.Generator().manual_seed(2)
    lengths = [16 - (row * 7) % 9 for row in range(batch)]  # 8..16 tokens, left-padded to 16
    ids = torch.zeros(batch, 16, dtype=torch.long)
    mask = torch.zeros(batch, 16, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, 16 - n:] = torch.randint(1, ours.config.vocab_size, (n,), generator=g)
        mask[row, 16 - n:] = 1
    ids, mask = ids.to(device), mask.to(device)
    greedy = dict(max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
    outputs = {}

    def run(name, fn):
        def call():
            outputs[name] = fn()
        return call

    with torch.no_grad():
        steps = {"ours": run("ours", lambda: sample(ours, ids, mask, **greedy)),
                 "generate": run("generate", lambda: llama.generate(input_ids=ids, attention_mask=mask,
                                                                    do_sample=False, **greedy))}
        if static:
            steps["static"] = run("static", lambda: sample_static(ours, ids, mask, **greedy))
        compiled_before = compile_seconds()
        for step in steps.values():
            step()
        rates = _median_rates(steps, batch * new_tokens, reps, _sync(device))
        result = {
            "size": size, "batch": batch, "new_tokens": new_tokens,
            "ours_tokens_per_s": rates["ours"], "generate_tokens_per_s": rates["generate"],
            "ratio": rates["ours"] / rates["generate"],
            "tokens_match": outputs["ours"].tolist() == outputs["generate"].tolist(),
            "ours_peak_bytes": peak_bytes(steps["ours"], device),
            "generate_peak_bytes": peak_bytes(steps["generate"], device),
        }
        if static:
            result.update({
                "static_tokens_per_s": rates["static"], "static_ratio": rates["static"] / rates["generate"],
                "static_tokens_match": outputs["static"].tolist() == outputs["generate"].tolist(),
                "static_compile_seconds": sum(v for k, v in compile_seconds().items() if k not in compiled_before),
            })
    return result


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _rate(flops: float) -> str:
    return f"{flops / 1e12:.1f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.0f} GFLOP/s"


def print_table(report: dict) -> None:
    peak = report["matmul_peak_flops"]
    machine = report["machine"]
    where = machine.get("gpu") or f"threads {machine['threads']}"
    print(f"{where}, load average {machine['load_average_start']} -> {machine['load_average_end']}; "
          + ", ".join(f"matmul peak {dtype} {_rate(flops)}" for dtype, flops in peak.items()))
    print("\ntraining step (fwd+bwd+AdamW)   ours tok/s  llama tok/s  ratio  MFU ours  MFU llama  peak MiB ours/llama")
    for r in report["train"]:
        label = r["dtype"] + ("+c" if r.get("compiled") else "")
        print(f"  {r['size']:>4} {label:<7} ({r['params'] / 1e6:6.2f}M)  {r['ours_tokens_per_s']:10.0f}  "
              f"{r['llama_tokens_per_s']:11.0f}  {r['ratio']:5.2f}  {r['ours_mfu']:8.1%}  {r['llama_mfu']:9.1%}  "
              f"{_mib(r['ours_peak_bytes'])}/{_mib(r['llama_peak_bytes'])}")
    print("\ngeneration (greedy)             ours tok/s  generate tok/s  ratio  same tokens  peak MiB ours/generate")
    for r in report["generate"]:
        print(f"  {r['size']:>4} batch {r['batch']:<3} x {r['new_tokens']:<4}   {r['ours_tokens_per_s']:10.0f}  "
              f"{r['generate_tokens_per_s']:14.0f}  {r['ratio']:5.2f}  {str(r['tokens_match']):>11}  "
              f"{_mib(r['ours_peak_bytes'])}/{_mib(r['generate_peak_bytes'])}")
    static = [r for r in report["generate"] if "static_ratio" in r]
    if static:
        print("\ncompiled decode (cache_implementation: static)   tok/s  ratio to generate  same tokens  compile s")
        for r in static:
            print(f"  {r['size']:>4} batch {r['batch']:<3} x {r['new_tokens']:<4}   {r['static_tokens_per_s']:20.0f}  "
                  f"{r['static_ratio']:17.2f}  {str(r['static_tokens_match']):>11}  {r['static_compile_seconds']:9.1f}")


def run_bench(sizes, batch, seq_len, reps, gen_batches, new_tokens, peak_size, threads, dtypes=("fp32", "bf16"),
              device="cpu", compile=False):
    import torch
    import transformers

    if threads:
        torch.set_num_threads(threads)
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "load_average_start": [round(v, 2) for v in os.getloadavg()],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "train": [], "generate": [],
    }
    # The peak is measured again before every training row and the best figure kept: a single short
    # measurement taken while another process holds a core would understate it and overstate MFU.
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {dtype: 0.0 for dtype in dtypes}

    def measure_peak(dtype):
        peaks[dtype] = max(peaks[dtype], measure_matmul_peak(torch_dtype[dtype], size=peak_size, seconds=1.0,
                                                             device=device))

    for size in sizes:
        for dtype in dtypes:
            measure_peak(dtype)
            report["train"].append(bench_training(size, dtype, batch, seq_len, reps, device, compile))
        for b in gen_batches:
            report["generate"].append(bench_generation(size, b, new_tokens, reps, device, static=compile))
    for dtype in dtypes:
        if peaks[dtype] == 0.0:
            measure_peak(dtype)
    report["matmul_peak_flops"] = peaks
    for row in report["train"]:
        row["ours_mfu"] = row["ours_flops_per_s"] / peaks[row["dtype"]]
        row["llama_mfu"] = row["llama_flops_per_s"] / peaks[row["dtype"]]
    report["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return report


# Argument checks raise UserError (not argparse's error), so bad input is one line and exit code 2.
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UserError(f"--gen_batches: expected comma-separated positive integers, got {text!r}")
    return values


def _size_list(text: str) -> list[str]:
    sizes = text.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise UserError(f"--sizes: unknown size {unknown[0]!r}; expected some of {', '.join(SIZES)}")
    return sizes


def _dtype_list(text: str) -> list[str]:
    dtypes = text.split(",")
    unknown = [d for d in dtypes if d not in ("fp32", "bf16")]
    if unknown or not dtypes:
        raise UserError(f"--dtypes: unknown dtype {unknown[0]!r}; expected fp32, bf16 or both")
    return dtypes


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-lab bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="bench.json", help="where to write the figures (default ./bench.json)")
    parser.add_argument("--quick", action="store_true", help="a tiny model and short runs: seconds, for tests")
    parser.add_argument("--sizes", type=_size_list, help=f"comma-separated, of {', '.join(SIZES)} (default 1M,10M)")
    parser.add_argument("--batch", type=int, help="training batch size (default 16)")
    parser.add_argument("--seq_len", type=int, help="training sequence length (default 256)")
    parser.add_argument("--reps", type=int, help="timed repetitions per model (default 5)")
    parser.add_argument("--gen_batches", type=_int_list, help="generation batch sizes (default 1,8,64)")
    parser.add_argument("--new_tokens", type=int, help="tokens generated per row (default 128)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--dtypes", type=_dtype_list, default=["fp32", "bf16"],
                        help="training dtypes, comma-separated, of fp32, bf16 (default both)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models for the training rows, "
                        "and add the compiled decode step (cache_implementation: static) to the generation rows")
    args = parser.parse_args(argv)
    defaults = dict(sizes="1M,10M", batch=16, seq_len=256, reps=5, gen_batches="1,8,64", new_tokens=128,
                    peak_size=PEAK_SIZE if args.device == "cpu" else GPU_PEAK_SIZE)
    if args.quick:
        defaults.update(QUICK)
    pick = {k: getattr(args, k, None) if getattr(args, k, None) is not None else v for k, v in defaults.items()}
    sizes = pick["sizes"] if isinstance(pick["sizes"], list) else _size_list(pick["sizes"])
    gen_batches = pick["gen_batches"] if isinstance(pick["gen_batches"], list) else _int_list(pick["gen_batches"])
    for key in ("batch", "seq_len", "reps", "new_tokens"):
        if pick[key] < 1:
            raise UserError(f"--{key} must be at least 1, got {pick[key]}")
    if args.threads < 0:
        raise UserError(f"--threads must be positive (or 0 for torch's default), got {args.threads}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: torch sees no CUDA device here; run on a machine with a GPU or use --device cpu")
    output = Path(args.output)
    if output.is_dir() or not output.parent.is_dir():
        raise UserError(f"--output {output}: expected a file path in an existing directory")

    report = run_bench(sizes, pick["batch"], pick["seq_len"], pick["reps"], gen_batches, pick["new_tokens"],
                       pick["peak_size"], args.threads, args.dtypes, args.device, args.compile)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwrote {output}")
    mismatched = [r for r in report["generate"] if not r["tokens_match"] or not r.get("static_tokens_match", True)]
    if mismatched:
        raise UserError(f"{len(mismatched)} generation case(s) gave different tokens from generate "
                        f"(size {mismatched[0]['size']}, batch {mismatched[0]['batch']}); see {output}")
    return 0
