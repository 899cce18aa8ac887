"""``python run.py``: the memory plan printed at start, and Ctrl-C (SIGINT) stopping it within 2 s (a real process)."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from .conftest import ROOT

STOP_WITHIN_S = 2.0
START_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_prints_the_plan_and_stops_on_ctrl_c(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    cmd = [sys.executable, str(ROOT / "run.py"), "--model", "auto", "--device", "cpu", "--port", str(_free_port()),
           "--db", str(tmp_path / "conversations.db")]
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
    output = "".join(lines)
    assert stopped_after < STOP_WITHIN_S, (stopped_after, output[-3000:])
    assert proc.returncode == 0, output[-3000:]
    assert "Memory plan: fp32, " in output and "free" in output  # the demo model is small: fp32 on the CPU
    assert "Traceback" not in output
