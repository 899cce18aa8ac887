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


def _run_to_exit(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """run.py with ``args`` when it should stop by itself (a start-up mistake)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", **env)
    cmd = [sys.executable, str(ROOT / "run.py"), "--device", "cpu", "--db", str(tmp_path / "conversations.db"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=START_TIMEOUT_S)


def test_start_up_mistakes_get_one_line_naming_the_flag_and_exit_2(tmp_path):
    # Refused before the model loads: a port out of range, a secret too short.
    for args, env, message in [
        (["--port", "99999"], {}, "argument --port: '99999' is not a port (a whole number from 1 to 65535)"),
        (["--port", "-1"], {}, "argument --port: '-1' is not a port"),
        (["--hosted", "--data-dir", str(tmp_path / "data")], {"HUGINN_STUDIO_SECRET": "short"},
         "error: $HUGINN_STUDIO_SECRET: the owner-key secret must be at least 16 bytes"),
    ]:
        done = _run_to_exit(tmp_path, *args, **env)
        assert done.returncode == 2 and message in done.stderr, done.stderr[-3000:]
        assert "Traceback" not in done.stderr and "Loading weights" not in done.stderr, done.stderr[-3000:]

    # A port another program holds: found only when the page starts to listen, after the model loaded.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        done = _run_to_exit(tmp_path, "--model", str(DEMO_MODEL), "--port", str(taken))
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"error: cannot listen on --host 127.0.0.1 --port {taken}: Cannot find empty port" in done.stderr
    assert "Traceback" not in done.stderr and "launch()" not in done.stderr, done.stderr[-3000:]
