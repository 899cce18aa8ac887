"""Full-size rehearsal: Huginn-0125's exact checkpoint layout with random weights, loaded as a new user would.

    python bench/bench_fullsize.py --dir /path/outside/the/repo            # build once (15.6 GB), then nf4, int8, bf16
    python bench/bench_fullsize.py --dir DIR --formats nf4 --no-cached     # first nf4 load only
    python bench/bench_fullsize.py --dir DIR --formats bf16 --no-listen    # one format, without run.py's start-up
    python bench/bench_fullsize.py --dir DIR --device cuda --tokens 4     # the same on a GPU

The checkpoint has the official 4 fp32 shards with the names, shapes and shard assignment of
``../shared/huginn-0125/model.safetensors.index.json`` (``lm_head`` stored beside ``wte`` with the same values, as
the official files do), the official config and tokenizer; it is written tensor by tensor, so building it needs
little memory. Each format is measured in its own process, one after the other: load wall time, peak RSS split
into anonymous and file-backed memory (sampled every 20 ms), RSS after loading, the model's footprint, the time to
the first token and seconds per token at r=4, and then ``run.py``'s time from start to listening (and to exit after
Ctrl-C).

int8 and nf4 are loaded twice: first with an empty quantized-weights cache (``--cache-dir``, by default
``DIR/quantized-cache``, emptied at the start), which quantizes and writes the cache, then again from the cache
(row "nf4 cached"); ``run.py``'s start-up is timed once per format, after the last load (so from the cache). The
first load's child also times bitsandbytes' quantizer alone over the model's layer shapes (``bench_quantizer.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL = ROOT.parent / "shared" / "huginn-0125"
sys.path.insert(0, str(ROOT))

FORMATS = ("nf4", "int8", "bf16")
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "model.safetensors.index.json")
CHUNK_ELEMENTS = 1 << 25  # 128 MB of fp32 per write
GB = 1e9


# ---- building the checkpoint --------------------------------------------------------------------------------------

def _shapes(official: Path) -> dict[str, tuple[int, ...]]:
    import torch

    from engine import HuginnConfig, HuginnForCausalLM

    config = HuginnConfig.from_pretrained(official)
    with torch.device("meta"):
        model = HuginnForCausalLM(config)
    return {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}


def _fill(name: str, shape: tuple[int, ...], config, out) -> None:
    """Write one fp32 tensor in chunks: init-scale normals for matrices, ones for norms, the real rotary table."""
    import torch

    from engine.model import rope_table

    if name == "freqs_cis":
        table = rope_table(config.head_dim, config.block_size, config.rope_base)
        out.write(table.reshape(shape).contiguous().numpy().tobytes())
        return
    if len(shape) == 1:
        fill = torch.zeros if name.endswith("qk_bias") else torch.ones
        out.write(fill(shape).numpy().tobytes())
        return
    seed_name = "transformer.wte.weight" if name == "lm_head.weight" else name  # tied: the same values
    generator = torch.Generator().manual_seed(zlib.crc32(seed_name.encode()))
    std = config.init_values["embedding" if "wte" in seed_name else "std"]
    numel = 1
    for size in shape:
        numel *= size
    for start in range(0, numel, CHUNK_ELEMENTS):
        chunk = torch.randn(min(CHUNK_ELEMENTS, numel - start), generator=generator) * std
        out.write(chunk.numpy().tobytes())


def _write_shard(path: Path, names: list[str], shapes: dict[str, tuple[int, ...]], config) -> int:
    """A safetensors file written tensor by tensor (the format: u64 header size, JSON header, raw data);
    safetensors' own writers take every tensor of the file in memory at once."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in names:
        nbytes = 4
        for size in shapes[name]:
            nbytes *= size
        header[name] = {"dtype": "F32", "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        for name in names:
            _fill(name, shapes[name], config, out)
    tmp.rename(path)
    return offset


def build_checkpoint(folder: Path, official: Path = OFFICIAL) -> None:
    """Create (or complete) the random full-size checkpoint in ``folder``; existing shards are reused."""
    from engine import HuginnConfig

    folder.mkdir(parents=True, exist_ok=True)
    index = json.loads((official / "model.safetensors.index.json").read_text())
    shapes = _shapes(official)
    if set(shapes) != set(index["weight_map"]):
        raise SystemExit(f"the model's tensor names differ from the official index: "
                         f"{sorted(set(shapes) ^ set(index['weight_map']))}")
    for name in SIDE_FILES:
        shutil.copyfile(official / name, folder / name)
    config = HuginnConfig.from_pretrained(official)
    shards: dict[str, list[str]] = {}
    for name, shard in index["weight_map"].items():
        shards.setdefault(shard, []).append(name)
    total = 0
    for shard, names in sorted(shards.items()):
        path = folder / shard
        if path.exists():
            total += path.stat().st_size
            continue
        started = time.perf_counter()
        _write_shard(path, sorted(names), shapes, config)
        total += path.stat().st_size
        print(f"wrote {path} ({path.stat().st_size / GB:.2f} GB) in {time.perf_counter() - started:.0f} s",
              flush=True)
    print(f"checkpoint in {folder}: {total:,} bytes of shards (tensor data {index['metadata']['total_size']:,})")


# ---- measuring one format -----------------------------------------------------------------------------------------

def _rss() -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of this process."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) * 1024
    return fields.get("RssAnon", 0), fields.get("RssFile", 0) + fields.get("RssShmem", 0)


class PeakRss:
    """Samples RssAnon and RssFile every 20 ms in a thread and keeps the maxima."""

    def __init__(self) -> None:
        self.anon, self.file = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            anon, file = _rss()
            self.anon, self.file = max(self.anon, anon), max(self.file, file)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(folder: Path, fmt: str, device: str, tokens: int, cache_dir: Path | None, quantizer: bool) -> dict:
    import torch

    import engine

    torch.set_num_threads(os.cpu_count() or 1)
    base_anon, base_file = _rss()
    started = time.perf_counter()
    with PeakRss() as peak:
        model, tok, report = engine.load(str(folder), quantization=fmt, device=device,
                                         quantized_cache=cache_dir if cache_dir is not None else False)
    load_s = time.perf_counter() - started
    gpu_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    anon, file = _rss()
    info = engine.model_info(model, report)
    settings = engine.GenerationSettings(num_steps=4, max_new_tokens=tokens, temperature=0.0, seed=0)
    events = [e for e in engine.stream(model, tok, [{"role": "user", "content": "Hello"}], settings)]
    summary = events[-1]
    times = [e.seconds for e in events[:-1] if getattr(e, "token_id", -1) >= 0]
    per_token = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else float("nan")
    del model
    quantizer_s = _quantizer_seconds(folder, fmt) if quantizer else float("nan")
    return {"format": fmt, "device": device, "load_s": load_s, "quantizer_s": quantizer_s,
            "weights_cache": info.weights_cache, "peak_anon": peak.anon - base_anon,
            "peak_file": peak.file - base_file, "anon_after": anon - base_anon, "file_after": file - base_file,
            "footprint": info.memory_bytes, "parameters": info.parameters, "first_token_s": summary.first_token_s,
            "s_per_token": per_token, "tokens": len(times), "plan": info.plan,
            "gpu_peak_load": gpu_peak, "gpu_peak_chat": torch.cuda.max_memory_allocated() if gpu_peak else 0}


def _quantizer_seconds(folder: Path, fmt: str) -> float:
    """bitsandbytes' quantizer alone over the model's quantized layer shapes, on this machine and in this process
    (bench_quantizer.py): the part of a first load that is quantizing."""
    from bench_quantizer import model_seconds, quantizer_seconds

    from engine import HuginnConfig

    config = HuginnConfig.from_pretrained(folder)
    return model_seconds(config, quantizer_seconds(config, formats=(fmt,))[fmt])


def time_to_listen(folder: Path, fmt: str, device: str, port: int, cache_dir: Path) -> tuple[float, float]:
    """Seconds from starting ``run.py`` to "is running at", and from Ctrl-C (SIGINT) to its exit."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "run.py"), "--model", str(folder), "--quantization", fmt, "--device", device,
           "--port", str(port), "--db", str(folder / "bench.db"), "--quantized-cache", str(cache_dir)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    listen = float("nan")
    for line in proc.stdout:
        if "is running at" in line:
            listen = time.perf_counter() - started
            break
    stopping = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return listen, time.perf_counter() - stopping


def _child(args: argparse.Namespace) -> None:
    result = measure(Path(args.dir), args.child, args.device, args.tokens, Path(args.cache_dir), args.quantizer)
    print("RESULT " + json.dumps(result), flush=True)


def _runs(formats: list[str], cached: bool) -> list[tuple[str, str]]:
    """(format, label) in order: int8 and nf4 first with an empty cache (quantizing), then from the cache."""
    runs = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise SystemExit(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
        quantized = fmt in ("nf4", "int8")
        runs.append((fmt, f"{fmt} first" if quantized else fmt))
        if quantized and cached:
            runs.append((fmt, f"{fmt} cached"))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, help="folder for the random checkpoint (created or reused)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated, from nf4, int8, bf16")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--tokens", type=int, default=4, help="new tokens at r=4 for the latency figures")
    parser.add_argument("--no-listen", action="store_true", help="skip run.py's time to listen (another load)")
    parser.add_argument("--no-cached", action="store_true", help="skip the second, cached int8 / nf4 loads")
    parser.add_argument("--no-quantizer", action="store_true", help="skip timing bitsandbytes' quantizer alone")
    parser.add_argument("--cache-dir", default=None,
                        help="quantized-weights cache for the bench, emptied at the start "
                             "(default DIR/quantized-cache)")
    parser.add_argument("--port", type=int, default=7911)
    parser.add_argument("--official", default=str(OFFICIAL),
                        help="folder with the official config, tokenizer and weight index (default ../shared/huginn-0125)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quantizer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    folder = Path(args.dir).expanduser().resolve()
    build_checkpoint(folder, Path(args.official))
    cache_dir = Path(args.cache_dir).expanduser().resolve() if args.cache_dir else folder / "quantized-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    runs = _runs([f.strip() for f in args.formats.split(",") if f.strip()], not args.no_cached)
    rows = []
    for i, (fmt, label) in enumerate(runs):
        # One load per process, one after the other: peak memory is then this load's alone.
        quantizer = label.endswith("first") and args.device != "cuda" and not args.no_quantizer
        out = subprocess.run([sys.executable, __file__, "--dir", str(folder), "--child", fmt, "--device", args.device,
                              "--tokens", str(args.tokens), "--cache-dir", str(cache_dir)]
                             + (["--quantizer"] if quantizer else []), capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            print(f"{label}: failed (exit {out.returncode})\n{out.stderr[-3000:]}", flush=True)
            continue
        row = json.loads(lines[-1][len("RESULT "):])
        row["label"] = label
        last_of_format = i + 1 == len(runs) or runs[i + 1][0] != fmt
        row["listen_s"], row["exit_s"] = (time_to_listen(folder, fmt, args.device, args.port, cache_dir)
                                          if last_of_format and not args.no_listen else (float("nan"),) * 2)
        print(f"{label}: {json.dumps(row)}", flush=True)
        rows.append(row)
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    for r in rows:
        if r.get("quantizer_s") == r.get("quantizer_s"):  # not NaN
            print(f"{r['label']}: bitsandbytes' quantizer alone over the model's layers takes {r['quantizer_s']:.0f} s "
                  f"(this process, after loading) of the {r['load_s']:.0f} s load")
    print(f"\n{'load':<12} {'device':<6} {'load s':>7} {'peak anon GB':>12} {'peak file GB':>12} "
          f"{'RSS after GB':>12} {'footprint GB':>12} {'1st token s':>11} {'s/token r=4':>11} {'listen s':>8} "
          f"{'exit s':>6}")
    for r in rows:
        print(f"{r['label']:<12} {r['device']:<6} {r['load_s']:>7.1f} {r['peak_anon'] / GB:>12.2f} "
              f"{r['peak_file'] / GB:>12.2f} {(r['anon_after'] + r['file_after']) / GB:>12.2f} "
              f"{r['footprint'] / GB:>12.2f} {r['first_token_s']:>11.2f} {r['s_per_token']:>11.2f} "
              f"{r['listen_s']:>8.1f} {r['exit_s']:>6.2f}")
    by = {r["label"]: r for r in rows}
    if "int8 first" in by:
        base = by["int8 first"]["load_s"]
        print("summary: load time / the first int8 load: " + ", ".join(
            f"{label} {r['load_s'] / base:.2f}" for label, r in by.items() if label.startswith("nf4")))
    print("peak anonymous while loading / footprint: " + ", ".join(
        f"{label} {r['peak_anon'] / r['footprint']:.2f}" for label, r in by.items()))
    print("RSS after loading - footprint (GB): " + ", ".join(
        f"{label} {(r['anon_after'] + r['file_after'] - r['footprint']) / GB:+.2f}" for label, r in by.items()))


if __name__ == "__main__":
    main()
