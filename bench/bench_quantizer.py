"""bitsandbytes' quantizers alone, over the shapes of a model's quantized layers: the part of an int8 / nf4 load that
is quantizing, apart from reading the checkpoint and building the model.

    python bench/bench_quantizer.py                       # Huginn-0125's shapes (../shared/huginn-0125/config.json)
    python bench/bench_quantizer.py --config DIR --reps 3 --threads 2 --profile

Each distinct weight shape of the layers ``engine.load`` quantizes (every linear layer but ``lm_head``) is filled
with random normals and quantized the way the load does it: ``quantize_4bit`` (nf4, block size 32) on the fp32
weight, and ``int8_vectorwise_quant`` on its fp16 copy (as ``Int8Params`` does); the median time per shape times the
number of layers of that shape gives the model's total. ``--profile`` lists the torch ops that take the nf4 time.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def quantized_shapes(config) -> Counter:
    """(out_features, in_features) -> number of layers, for the layers engine.load quantizes."""
    import torch
    from torch import nn

    from engine import HuginnForCausalLM

    with torch.device("meta"):
        model = HuginnForCausalLM(config)
    return Counter(tuple(m.weight.shape) for name, m in model.named_modules()
                   if isinstance(m, nn.Linear) and name != "lm_head")


def _time_once(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def quantizer_seconds(config, formats=("nf4", "int8"), reps: int = 1) -> dict[str, dict[tuple[int, int], float]]:
    """Median seconds per layer, by format and shape, of bitsandbytes' quantizer on this machine."""
    import bitsandbytes.functional as F
    import torch

    from engine.plan import NF4_BLOCKSIZE

    ops = {"nf4": lambda w: F.quantize_4bit(w, blocksize=NF4_BLOCKSIZE, quant_type="nf4"),
           "int8": lambda w: F.int8_vectorwise_quant(w.to(torch.float16))}
    results: dict[str, dict[tuple[int, int], float]] = {fmt: {} for fmt in formats}
    generator = torch.Generator().manual_seed(0)
    for shape in sorted(quantized_shapes(config)):
        weight = torch.randn(shape, generator=generator) * 0.0087
        for fmt in formats:
            results[fmt][shape] = statistics.median(_time_once(lambda: ops[fmt](weight)) for _ in range(reps))
        del weight
    return results


def model_seconds(config, per_shape: dict[tuple[int, int], float]) -> float:
    counts = quantized_shapes(config)
    return sum(seconds * counts[shape] for shape, seconds in per_shape.items())


def _profile_nf4(shape: tuple[int, int]) -> None:
    import bitsandbytes.functional as F
    import torch
    from torch.profiler import ProfilerActivity, profile

    from engine.plan import NF4_BLOCKSIZE

    weight = torch.randn(shape) * 0.0087
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        F.quantize_4bit(weight, blocksize=NF4_BLOCKSIZE, quant_type="nf4")
    print(f"\nnf4 quantize_4bit on one {shape[0]}x{shape[1]} matrix, by torch op (self CPU time):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT.parent / "shared" / "huginn-0125"),
                        help="folder with the model's config.json (default: the official Huginn-0125 config)")
    parser.add_argument("--reps", type=int, default=1, help="timings per shape; the median is used")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--profile", action="store_true", help="also list the torch ops inside quantize_4bit")
    args = parser.parse_args()
    import os

    import torch

    from engine import HuginnConfig

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    config = HuginnConfig.from_pretrained(args.config)
    counts = quantized_shapes(config)
    results = quantizer_seconds(config, reps=args.reps)
    print(f"bitsandbytes quantizers, {torch.get_num_threads()} threads, median of {args.reps}")
    print(f"{'shape':>14} {'layers':>6} {'Mweights':>9} {'nf4 s/layer':>11} {'int8 s/layer':>12} {'nf4/int8':>8}")
    for shape in sorted(counts):
        nf4, int8 = results["nf4"][shape], results["int8"][shape]
        print(f"{shape[0]:>6}x{shape[1]:<7} {counts[shape]:>6} {math.prod(shape) / 1e6:>9.1f} {nf4:>11.2f} "
              f"{int8:>12.2f} {nf4 / int8:>8.2f}")
    total = {fmt: model_seconds(config, results[fmt]) for fmt in results}
    weights = sum(math.prod(s) * n for s, n in counts.items())
    print(f"model ({weights / 1e9:.2f}B quantized weights): nf4 {total['nf4']:.1f} s, int8 {total['int8']:.1f} s, "
          f"nf4/int8 {total['nf4'] / total['int8']:.2f}")
    if args.profile:
        _profile_nf4(max(counts, key=math.prod))


if __name__ == "__main__":
    main()
