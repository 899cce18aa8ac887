"""``python run.py``: the memory plan printed at start, and Ctrl-C (SIGINT) stopping it within 2 s (a real process)."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from engine import DEMO_MODEL

from .conftest import ROOT

STOP_WITHIN_S = 2.0
START_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_and_stop(tmp_path, *args: str) -> tuple[str, float, int]:
    """Start run.py, wait until it listens, send Ctrl-C: (its output, seconds it took to stop, exit code)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    cmd = [sys.executable, str(ROOT / "run.py"), "--device", "cpu", "--port", str(_free_port()),
           "--db", str(tmp_path / "conversations.db"), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    lines: list[str] = []
    listening = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "is running at" in line:
                listening.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert listening.wait(START_TIMEOUT_S), "".join(lines)[-3000:]
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        stopped_after = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    return "".join(lines), stopped_after, proc.returncode


def test_run_prints_the_plan_and_stops_on_ctrl_c(tmp_path):
    output, stopped_after, returncode = _run_and_stop(tmp_path, "--model", "auto")
    assert stopped_after < STOP_WITHIN_S, (stopped_after, output[-3000:])
    assert returncode == 0, output[-3000:]
    assert "Memory plan: fp32, " in output and "free" in output  # the demo model is small: fp32 on the CPU
    assert "Traceback" not in output


def test_run_says_where_quantized_weights_are_cached(tmp_path):
    cache = tmp_path / "quantized"
    output, _, returncode = _run_and_stop(tmp_path, "--model", str(DEMO_MODEL), "--quantization", "nf4",
                                          "--quantized-cache", str(cache))
    assert returncode == 0, output[-3000:]
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and entries[0].name.startswith("demo-model-nf4-")
    assert f"Quantized weights saved to {entries[0]}" in output and "--no-quantized-cache" in output
