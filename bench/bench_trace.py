"""What the depth lens costs: one answer on the demo model at r=32, three ways, medians side by side in one run.

* ``before``: the engine at a git ref without the lens (default ``main``), exported to a temporary folder;
* ``off``: this engine, ``trace=False`` (the default): must cost nothing measurable;
* ``on``: this engine, ``trace=True`` (coda + head + signals at every step; target at most 1.5x ``off``).

Each variant runs in its own worker process (the two engines cannot share one), the workers take turns round after
round so that machine load falls on all three alike, and every answer must have the same tokens. CPU, one thread.

    python bench/bench_trace.py [--before main] [--tokens 16] [--rounds 3] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "assets" / "demo-model"
PROMPT = "Tell me a short story about a raven."

WORKER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
import engine
assert engine.__file__.startswith(sys.argv[1]), engine.__file__
model, tokenizer, _ = engine.load(sys.argv[2], device="cpu")
extra = {"trace": True} if sys.argv[5] == "on" else {}
settings = engine.GenerationSettings(num_steps=32, max_new_tokens=int(sys.argv[3]), seed=1, **extra)
messages = [{"role": "user", "content": sys.argv[6]}]
def answer():
    start = time.perf_counter()
    events = list(engine.stream(model, tokenizer, messages, settings))
    return time.perf_counter() - start, [e.token_id for e in events[:-1] if e.token_id >= 0]
answer()  # warm-up
runs = [answer() for _ in range(int(sys.argv[4]))]
print(json.dumps({"seconds": [s for s, _ in runs], "tokens": runs[0][1]}))
"""


def worker(root: Path, variant: str, tokens: int, reps: int) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKER, str(root), str(MODEL), str(tokens), str(reps), variant,
                          PROMPT], check=True, capture_output=True, text=True, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main", help="git ref of the engine without the lens")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.before, "engine"], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        roots = {"before": Path(tmp), "off": ROOT, "on": ROOT}
        times: dict[str, list[float]] = {v: [] for v in roots}
        answers: dict[str, list[int]] = {}
        for _ in range(args.rounds):
            for variant, root in roots.items():
                result = worker(root, variant, args.tokens, args.reps)
                times[variant] += result["seconds"]
                answers[variant] = result["tokens"]
    if len({tuple(a) for a in answers.values()}) != 1:
        raise SystemExit(f"the three variants gave different answers: {answers}")
    medians = {v: statistics.median(t) for v, t in times.items()}
    print(f"demo model, r=32, {len(answers['off'])} tokens, {args.rounds * args.reps} runs each (medians, s):")
    print(f"  before ({args.before}) {medians['before']:.3f}   trace off {medians['off']:.3f}   "
          f"trace on {medians['on']:.3f}")
    off, on = medians["off"] / medians["before"], medians["on"] / medians["off"]
    print(f"  off / before = {off:.3f}   on / off = {on:.3f}")


if __name__ == "__main__":
    main()
