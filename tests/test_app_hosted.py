"""Hosted mode: Space packaging, ZeroGPU wrapping, per-browser owners, public caps and the queue under load.

The app runs hosted on the bundled demo model when its weights are present, else on a tiny random checkpoint. Page
events are private to the Gradio client, but anyone can post them to the queue over HTTP the way the page does, so
the forged-owner and queue tests speak that protocol (``QueueCall``) as well as using gradio_client for the named API.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from playwright.sync_api import TimeoutError as PlaywrightTimeout

import engine
from app.gpu import GPU_MAX_SECONDS, GpuWork, compare_duration, stream_duration, zero_gpu_requested
from app.handlers import ModelSlot, Studio, UserError, describe_source
from app.config import AppConfig
from app.hosted import DB_FILE, HOSTED_LIMITS, HourlyCap, OwnerKeys, hosted_config, on_space
from app.store import LOCAL_OWNER, Store, StoreFull
from tests.hostile_corpus import valid_export
from tests.test_app_browser import browser, demo_model_ready, set_number  # noqa: F401 (browser: a fixture)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
FAST = {"num_steps": 4, "max_new_tokens": 8}


# ---- Space packaging --------------------------------------------------------------------------------------------

def front_matter() -> dict[str, Any]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "a Space reads its configuration from front matter at the very top of README.md"
    return yaml.safe_load(text.split("---\n", 2)[1])


def pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_readme_front_matter_configures_a_gradio_space():
    import gradio

    meta = front_matter()
    assert meta["sdk"] == "gradio" and meta["title"] and meta["models"] == [engine.OFFICIAL_MODEL]
    assert meta["sdk_version"] == gradio.__version__, "the Space would run another Gradio than the one tested"
    deps = {canonicalize_name(r.name): r for r in map(Requirement, pyproject()["project"]["dependencies"])}
    assert Version(str(meta["sdk_version"])) in deps["gradio"].specifier
    assert (ROOT / meta["app_file"]).is_file()
    python = str(meta["python_version"])
    assert isinstance(meta["python_version"], str) and re.fullmatch(r"3\.\d+(\.\d+)?", python)
    assert Version(python) in Requirement("x" + pyproject()["project"]["requires-python"]).specifier
    assert 0 < len(meta["short_description"]) <= 60 and len(meta["emoji"]) == 1
    assert meta["colorFrom"] in {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


def test_requirements_agree_with_pyproject():
    project = pyproject()["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["space"]]
    lines = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    given = [Requirement(ln) for ln in lines if ln and not ln.startswith("#")]
    as_map = lambda reqs: {canonicalize_name(r.name): r.specifier for r in reqs}  # noqa: E731
    assert as_map(given) == as_map(wanted)
    assert len(given) == len(wanted), "a package is listed twice"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_py(args: list[str], env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """``python run.py ARGS`` with ENV until it serves: (what it printed, its address)."""
    port = free_port()
    # Only what the test sets: none of the outer environment's Space, login or database settings.
    outer = {k: v for k, v in os.environ.items() if k not in
             ("HUGINN_STUDIO_DB", "HUGINN_STUDIO_AUTH", "HUGINN_STUDIO_DATA_DIR", "SPACE_ID", "SYSTEM",
              "SPACES_ZERO_GPU")}
    env = {**outer, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": "", **env}
    proc = subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Huginn Studio is running at" in line:
                break
        out = "".join(lines)
        assert "is running at" in out, out
        yield out, f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_run_py_with_no_arguments_on_a_space_starts_hosted(tmp_path):
    space = {"SPACE_ID": "someone/huginn-studio", "SYSTEM": "spaces", "HUGINN_STUDIO_DATA_DIR": str(tmp_path / "d")}
    with run_py([], space) as (out, url):
        assert "Hosted mode (Hugging Face Space)" in out and "demo model" in out
        page = json.dumps(httpx.get(f"{url}config", timeout=30).json())
        assert "stored on this server" in page and "up to 32 recurrence steps" in page
        assert (tmp_path / "d" / DB_FILE).is_file() and (tmp_path / "d" / "owner-secret").is_file()


@pytest.mark.slow
def test_auth_from_the_environment_asks_for_a_login(tmp_path):
    with run_py(["--data-dir", str(tmp_path)], {"HUGINN_STUDIO_AUTH": "colleague:pass:word"}) as (out, url):
        assert "Hosted mode" not in out
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("config").status_code == 401
            assert http.post("login", data={"username": "colleague", "password": "nope"}).status_code == 400
            assert http.post("login", data={"username": "colleague", "password": "pass:word"}).status_code == 200
            assert http.get("config").status_code == 200
        assert (tmp_path / DB_FILE).is_file()


def test_auth_and_share_arguments():
    from app.cli import SHARE_NOTE, parse_args, parse_auth

    assert parse_auth("me:se:cret") == ("me", "se:cret") and parse_auth(None) is None
    for bad in ("nocolon", ":pw", "user:"):
        with pytest.raises(ValueError, match="user:password"):
            parse_auth(bad)
    assert parse_args(["--share", "--auth", "a:b"]).auth == "a:b"
    assert "needs internet" in SHARE_NOTE and "gradio.live" in SHARE_NOTE


def test_detection_reads_the_platform_variables(monkeypatch):
    from app.cli import parse_args

    assert on_space({"SPACE_ID": "a/b"}) and on_space({"SYSTEM": "spaces"}) and not on_space({})
    assert zero_gpu_requested({"SPACES_ZERO_GPU": "true"}) and not zero_gpu_requested({})
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("SYSTEM", raising=False)
    assert parse_args([]).host == "127.0.0.1"
    monkeypatch.setenv("SPACE_ID", "a/b")
    assert parse_args([]).host == "0.0.0.0"  # the Space's proxy must reach it


# ---- storage caps -----------------------------------------------------------------------------------------------

def test_hosted_storage_caps_reach_the_store_and_imports_are_counted_per_visitor(tiny, tmp_path):
    limits = dataclasses.replace(HOSTED_LIMITS, max_conversations=2, max_imports_per_hour=3)
    store = Store(tmp_path / DB_FILE)
    studio = Studio(ModelSlot(*tiny, note="tiny"), store, hosted_config(limits), owners=OwnerKeys(b"k" * 32))
    assert (store.limits.max_owner_conversations, store.limits.max_owner_bytes) == (2, 20_000_000)
    assert store.limits.token is not None  # the engine's record definitions stay
    path = tmp_path / "export.json"
    path.write_text(json.dumps(valid_export()), encoding="utf-8")
    visitor, _ = studio.conversations.browser_session(None)
    for _ in range(2):
        studio.conversations.import_file(visitor, str(path))
    saved = store.export_data(visitor.owner)["conversations"]
    with pytest.raises(StoreFull, match="this visitor's space holds at most 2 conversations .*delete some first"):
        studio.conversations.import_file(visitor, str(path))
    with pytest.raises(UserError, match="This visitor may import files at most 3 times an hour; try again in 60"):
        studio.conversations.import_file(visitor, str(path))
    assert store.export_data(visitor.owner)["conversations"] == saved
    other, _ = studio.conversations.browser_session(None)  # another browser has its own caps
    assert studio.conversations.import_file(other, str(path))[2] == 1

    banner = hosted_config().banner
    assert "each visitor keeps up to 200 conversations, 20 MB, 10 imports an hour" in banner
    assert "all visitors together up to 2,000 MB" in banner
    local = Studio(ModelSlot(*tiny, note="tiny"), Store(tmp_path / "local.db"), AppConfig())
    assert (local.store.limits.max_owner_conversations, local.store.limits.max_owner_bytes) == (None, None)
    local.store.close()
    store.close()


def test_a_full_server_refuses_new_messages_clearly_keeps_what_was_saved_and_still_answers(tiny, tmp_path):
    store = Store(tmp_path / DB_FILE)
    limits = dataclasses.replace(HOSTED_LIMITS, max_server_bytes=12_000)
    studio = Studio(ModelSlot(*tiny, note="tiny"), store, hosted_config(limits), owners=OwnerKeys(b"k" * 32))
    assert (store.limits.max_server_conversations, store.limits.max_server_bytes) == (100_000, 12_000)
    settings = engine.GenerationSettings(num_steps=4, max_new_tokens=8, seed=1)
    first, _ = studio.conversations.browser_session(None)
    first = list(studio.chat.send(first, "x" * 1_900, "", settings))[-1].session
    while True:  # the first visitor fills the server (far below their own 20 MB)
        try:
            list(studio.chat.send(first, "y" * 1_900, "", settings))
        except StoreFull:
            break
    saved = store.export_data(first.owner)["conversations"]
    newcomer, _ = studio.conversations.browser_session(None)
    with pytest.raises(StoreFull, match=r"^This server's storage for conversations is full \(all visitors together "
                                        r"hold 1\d\.\d kB of the 12\.0 kB it keeps; this needs .*\); that is not "
                                        r"something you did, and nothing already saved was lost\."):
        list(studio.chat.send(newcomer, "hello", "", settings))
    assert store.list_conversations(newcomer.owner) == []
    assert store.export_data(first.owner)["conversations"] == saved
    assert studio.chat.chat_api("hello", {"num_steps": 4, "max_new_tokens": 4})["text"] is not None  # not stored
    assert "all visitors together up to 0 MB" in hosted_config(limits).banner
    store.close()


def test_conversations_of_visitors_gone_a_week_are_deleted_at_start_up_and_never_locally(tiny, tmp_path):
    path = tmp_path / DB_FILE
    with Store(path) as store:
        for owner in ("web:gone", "web:recent"):
            conv = store.create_conversation(owner, f"{owner}'s")
            store.add_message(owner, conv.id, "user", "hello")
        store.file.write(lambda db: db.execute("UPDATE owner_bytes SET touched = ? WHERE owner = 'web:gone'",
                                               [time.time() - 8 * 86400]))  # fmt: skip
        before = {o: store.export_data(o)["conversations"] for o in ("web:gone", "web:recent")}
    local = Studio(ModelSlot(*tiny, note="tiny"), Store(path), AppConfig())
    assert local.retention is None  # locally nothing is ever deleted
    assert {o: local.store.export_data(o)["conversations"] for o in before} == before
    local.store.close()

    store = Store(path)
    studio = Studio(ModelSlot(*tiny, note="tiny"), store, hosted_config(), owners=OwnerKeys(b"k" * 32))
    assert studio.retention is not None and studio.retention.idle_seconds == 7 * 86400
    deadline = time.monotonic() + 30
    while studio.retention.runs == 0 and time.monotonic() < deadline:  # the first cleanup runs at start-up
        time.sleep(0.05)
    assert studio.retention.deleted == 1
    assert store.list_conversations("web:gone") == []
    assert store.export_data("web:recent")["conversations"] == before["web:recent"]
    assert "deleted once this browser has saved nothing here for 7 days" in studio.config.banner
    store.close()


def test_the_hourly_cap_is_a_sliding_window():
    now = [0.0]
    cap = HourlyCap(2, "import files", clock=lambda: now[0])
    cap.take("a"), cap.take("a"), cap.take("b")
    now[0] = 1800.0
    with pytest.raises(UserError, match="try again in 30 minutes"):
        cap.take("a")
    now[0] = 3600.0  # the first two tries are an hour old
    cap.take("a"), cap.take("a")
    HourlyCap(None, "import files").take("a")  # no cap
    with pytest.raises(UserError, match="at most 0 times an hour"):
        HourlyCap(0, "import files").take("a")


# ---- ZeroGPU ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    if demo_model_ready():
        return engine.load("auto", device="cpu")[:2]
    from tests.conftest import make_checkpoint

    return engine.load(str(make_checkpoint(tmp_path_factory.mktemp("tiny") / "model")))[:2]


def test_gpu_durations_scale_with_depth_and_tokens():
    small = stream_duration([], engine.GenerationSettings(num_steps=4, max_new_tokens=32))
    deeper = stream_duration([], engine.GenerationSettings(num_steps=32, max_new_tokens=32))
    longer = stream_duration([], engine.GenerationSettings(num_steps=32, max_new_tokens=256))
    assert 10 <= small < deeper < longer <= GPU_MAX_SECONDS
    assert stream_duration([], engine.GenerationSettings(num_steps=128, max_new_tokens=4096)) == GPU_MAX_SECONDS
    both = [engine.GenerationSettings(num_steps=4, max_new_tokens=32),
            engine.GenerationSettings(num_steps=32, max_new_tokens=256)]
    assert compare_duration([], both) >= longer


def test_without_zero_gpu_the_real_decorator_leaves_the_work_as_it_is(pair, monkeypatch):
    import spaces

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    slot = ModelSlot(*pair)
    work = GpuWork(slot)
    assert not work.zero_gpu and not hasattr(work._stream, "zerogpu")
    assert work._stream == work._stream_on_gpu and spaces.GPU(work._stream_on_gpu, duration=60) == work._stream_on_gpu
    events = list(work.stream([{"role": "user", "content": "2 + 3 ="}], engine.GenerationSettings(**FAST)))
    assert isinstance(events[-1], engine.Summary) and events[-1].tokens > 0


def test_stop_cuts_the_stream_where_the_event_cannot_reach_the_gpu_process(pair, tmp_path):
    """Under ZeroGPU a threading.Event cannot cross into the worker; Stop then ends the stream from our side and the
    answer is kept, marked stopped."""
    slot = ModelSlot(*pair)
    with Store(tmp_path / "s.db") as store:
        # Every token updates the page here, so Stop lands after the first token however short the answer.
        config = dataclasses.replace(hosted_config(), stream_interval=0.0)
        studio = Studio(slot, store, config, owners=OwnerKeys(b"x" * 32), gpu=GpuWork(slot, zero_gpu=True))
        session, _ = studio.conversations.browser_session(None)
        settings = engine.GenerationSettings(num_steps=4, max_new_tokens=64)
        turns = studio.chat.send(session, "Tell a long story.", "", settings)
        for i, (session, *_) in enumerate(turns):
            if i == 1:
                studio.chat.stop(session)
        answer = store.thread(session.owner, session.conversation_id)[-1]
        assert answer.status == "cancelled" and 0 < len(answer.tokens) < 64


class FakeDeviceApi(BaseHTTPRequestHandler):
    """Stands in for the ZeroGPU scheduler: records what the app asks for and grants nothing."""

    requests: list[str] = []

    def do_POST(self) -> None:
        FakeDeviceApi.requests.append(self.path)
        self.send_response(503)
        self.end_headers()

    do_GET = do_POST

    def log_message(self, *args: Any) -> None:
        pass


ZERO_GPU_SCRIPT = """
import engine, spaces
from app.gpu import GpuWork, stream_duration
class Slot:
    pair = (None, None)
work = GpuWork(Slot())
print("wrapped", work.zero_gpu, hasattr(work._stream, "zerogpu"), hasattr(work._compare, "zerogpu"))
settings = engine.GenerationSettings(num_steps=16, max_new_tokens=100)
try:
    list(work.stream([{"role": "user", "content": "hi"}], settings))
except BaseException as err:
    print("refused", type(err).__name__)
print("expected", stream_duration(None, settings))
"""


def test_on_zero_gpu_the_work_runs_under_spaces_gpu_with_its_duration(tmp_path):
    import torch

    if torch.version.cuda is None:
        # spaces' ZeroGPU mode patches CUDA entry points at import and fails on a CPU-only torch build.
        pytest.skip("ZeroGPU mode of the spaces package needs a CUDA build of torch")
    server = HTTPServer(("127.0.0.1", 0), FakeDeviceApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "SPACES_ZERO_GPU": "true",
               "SPACES_ZERO_DEVICE_API_URL": f"http://127.0.0.1:{server.server_port}"}
        out = subprocess.run([sys.executable, "-c", ZERO_GPU_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120).stdout
    finally:
        server.shutdown()
    assert "wrapped True True True" in out, out
    expected = int(out.split("expected")[1])
    assert any(f"durationSeconds={expected}" in r for r in FakeDeviceApi.requests if r.startswith("/schedule")), \
        FakeDeviceApi.requests


# ---- the hosted app ---------------------------------------------------------------------------------------------

class RecordingGpu(GpuWork):
    """GpuWork that records how many generations ran at once and when each started and ended."""

    def __init__(self, slot: ModelSlot) -> None:
        super().__init__(slot, zero_gpu=False)
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.runs: list[tuple[float, float]] = []  # (start, end) of each generation, time.monotonic()

    def stream(self, messages, settings, cancel=None, owner=""):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        start = time.monotonic()
        try:
            yield from super().stream(messages, settings, cancel, owner)
        finally:
            with self.lock:
                self.running -= 1
                self.runs.append((start, time.monotonic()))


@pytest.fixture(scope="module")
def hosted(pair, tmp_path_factory):
    from app.ui import build_demo, launch

    data_dir = tmp_path_factory.mktemp("hosted-data")
    store = Store(data_dir / DB_FILE)
    slot = ModelSlot(*pair, note=describe_source("auto", engine.model_info(pair[0]).name))
    owners = OwnerKeys.from_data_dir(data_dir)
    studio = Studio(slot, store, hosted_config(), owners=owners, gpu=RecordingGpu(slot))
    demo = build_demo(studio)
    _, url, _ = launch(demo, prevent_thread_lock=True, quiet=True, server_port=None)
    events = {d["api_name"]: d["id"] for d in httpx.get(f"{url}config").json()["dependencies"]}
    yield SimpleNamespace(url=url, studio=studio, store=store, owners=owners, events=events)
    demo.close()
    store.close()


class QueueCall:
    """One page event posted to Gradio's queue over HTTP, as the page does, with timings."""

    def __init__(self, url: str, session_hash: str) -> None:
        self.url, self.session_hash = url, session_hash

    def __call__(self, fn_index: int, data: list[Any]) -> dict[str, Any]:
        with httpx.Client(base_url=self.url, timeout=120) as http:
            joined = time.monotonic()
            http.post("gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "event_data": None,
                                                     "session_hash": self.session_hash, "trigger_id": None}
                      ).raise_for_status()
            started = None
            with http.stream("GET", "gradio_api/queue/data", params={"session_hash": self.session_hash}) as resp:
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    msg = json.loads(line[5:])
                    if msg.get("msg") == "process_starts":
                        started = time.monotonic()
                    if msg.get("msg") == "process_completed":
                        return {**msg["output"], "success": msg.get("success"), "wait": (started or joined) - joined,
                                "done": time.monotonic() - joined, "joined": joined}
        raise AssertionError("the queue closed without completing the event")


def form(num_steps: int = 4, max_new_tokens: int = 8) -> list[Any]:
    """The depth panel's values in the order the page sends them (app.inputs.FORM_FIELDS)."""
    from app.inputs import FORM_FIELDS

    values = {"num_steps": num_steps, "adaptive": False, "criterion": "kl", "exit_threshold": "", "min_steps": 0,
              "prompt_exits": False, "warm_start": False, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
              "repetition_penalty": 1.0, "seed": 0, "max_new_tokens": max_new_tokens, "trace": False,
              "sampler": "sequential", "inner_steps": 4, "freeze_threshold": 0.03, "max_window": 128,
              "embed_ema": 0.1, "state_noise": 0.0}
    return [values[name] for name in FORM_FIELDS]


def open_tab(hosted, token: Any, name: str) -> tuple[QueueCall, dict[str, Any]]:
    call = QueueCall(hosted.url, name)
    return call, call(hosted.events["init"], [None, token, None])


def titles(init_output: dict[str, Any]) -> list[str]:
    return [label for label, _ in init_output["data"][2]["choices"]]


def test_a_forged_owner_sees_nothing_through_the_api(hosted):
    from gradio_client import Client

    token = hosted.owners.new_token()
    victim = hosted.owners.owner_for(token)
    cid = hosted.store.create_conversation(victim, "the victim's secret plans").id
    _, mine = open_tab(hosted, token, "victim-tab")
    assert titles(mine) == ["the victim's secret plans"]  # the real token opens them

    # The owner key itself, the local owner, a near miss of the token, a dict: each is a new, empty visitor.
    for i, forged in enumerate([victim, LOCAL_OWNER, token[:-1] + ("A" if token[-1] != "A" else "B"),
                                {"owner": victim}, "x" * 10_000]):
        _, out = open_tab(hosted, forged, f"forger-{i}")
        assert out["success"] and titles(out) == [], forged
        if not hosted.owners.valid_token(forged):  # the near miss is a token, just someone else's (nobody's)
            assert out["data"][4] != forged and hosted.owners.valid_token(out["data"][4])

    # A session value sent with an event is ignored: the server keeps the tab's session itself.
    send = hosted.events["on_send"]
    call = QueueCall(hosted.url, "forger-session")
    out = call(send, [{"owner": victim, "conversation_id": cid, "tab": "t", "edit_id": None}, "mine now", "", *form()])
    assert not out["success"] and "no session yet" in out["error"]
    assert hosted.store.messages(victim, cid) == []

    # The named API has no owner at all, and the client cannot reach the page's events.
    client = Client(hosted.url, verbose=False)
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {"/chat", "/compare"}
    with pytest.raises((TypeError, ValueError)):
        client.predict("hi", FAST, owner=victim, api_name="/chat")
    with pytest.raises(ValueError):
        client.predict(None, token, None, fn_index=hosted.events["init"])


def test_caps_are_enforced_with_a_clear_message(hosted):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(hosted.url, verbose=False)
    cases = [
        (("hi", {"num_steps": 64}), "/chat", "num_steps: must be from 1 to 32 here, got 64"),
        (("hi", {"max_new_tokens": 1000}), "/chat", "max_new_tokens: must be at most 256"),
        (("x" * 2001, FAST), "/chat", "the limit here is 2,000"),
        (("hi", FAST, "", [{"role": "user", "content": "y" * 5000}]), "/chat", "the limit here is 2,000"),
        (("hi", [FAST] * 6), "/compare", "at most 5 settings"),
        (("hi", [{"num_steps": 64}]), "/compare", "from 1 to 32 here"),
    ]
    for args, api, message in cases:
        with pytest.raises(AppError, match=re.escape(message)):
            client.predict(*args, api_name=api)

    # Wrong types and values that used to give "upstream exception" or `error: null`: each names the field.
    wrong = [
        (("hi", [{"num_steps": 4}]), "/chat", "settings: must be an object"),
        (("hi", "num_steps=4"), "/chat", "settings: must be an object"),
        (("hi", FAST, None), "/chat", "system_prompt: must be a string"),
        (("hi", [1, 2]), "/compare", "settings[0]: must be an object"),
        (("hi", {**FAST, "temperature": 1e-300}), "/chat", "temperature: must be 0 (greedy)"),
        (("hi", {**FAST, "stop_strings": ["x" * 100_000] * 3}), "/chat", "stop_strings[0]: the stop string is 100,000"),
        (("hi", {**FAST, "stop_strings": ["x"] * 5}), "/chat", "stop_strings: at most 4 here"),
        (("hi", {**FAST, "stop_strings": ["x" * 65]}), "/chat", "stop_strings[0]: the stop string is 65"),
        (("hi", FAST, "", [{"role": "user", "content": ""}] * 1000), "/chat", "history: 1,000 messages"),
    ]
    for args, api, message in wrong:
        with pytest.raises(AppError, match=re.escape(message)):
            client.predict(*args, api_name=api)

    # A lone surrogate cannot be sent by gradio_client (httpx refuses to encode it); JSON's \\ud800 escape can.
    body = json.dumps({"data": ["\ud800 hi", FAST, "", None]}).encode()
    event = httpx.post(f"{hosted.url}gradio_api/call/chat", content=body,
                       headers={"content-type": "application/json"}, timeout=30).json()["event_id"]
    reply = httpx.get(f"{hosted.url}gradio_api/call/chat/{event}", timeout=60).text
    assert "event: error" in reply and "prompt: is not valid Unicode" in reply, reply

    # A 3 MB system prompt, through the API and as a page event: refused with a clear message, nothing stored.
    big = "s" * 3_000_000
    with pytest.raises(AppError, match=re.escape("system_prompt: the system prompt is 3,000,000 characters")):
        client.predict("hi", FAST, big, api_name="/chat")
    call, opened = open_tab(hosted, None, "big-system-tab")
    out = call(hosted.events["on_send"], [None, "hi", big, *form()])
    assert not out["success"] and "system prompt is 3,000,000 characters; the limit here is 2,000" in out["error"]
    owner = hosted.owners.owner_for(opened["data"][4])
    assert hosted.store.list_conversations(owner) == []

    # The page's own events check the same caps on the server, whatever the sliders allow.
    call, _ = open_tab(hosted, None, "caps-tab")
    out = call(hosted.events["on_send"], [None, "hi", "", *form(num_steps=100)])
    assert not out["success"] and re.search(r"(at most|maximum value) 32\b", out["error"]), out["error"]
    out = call(hosted.events["on_send"], [None, "z" * 2001, "", *form()])
    assert not out["success"] and "the limit here is 2,000" in out["error"]


def test_a_number_past_a_float_or_a_huge_key_is_refused_by_name(hosted):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(hosted.url, verbose=False)
    # 10**400 reaches the server as a Python int, where math.isfinite raises OverflowError ("upstream exception").
    cases = [
        (("hi", {**FAST, "temperature": 10**400}), "/chat", "temperature: must be a number from 0.0 to 10.0"),
        (("hi", [{**FAST, "criterion": "kl", "exit_threshold": 10**400}]), "/compare",
         "exit_threshold: must be a number from 0.0 to 1000000.0"),
    ]
    for args, api, message in cases:
        with pytest.raises(AppError, match=re.escape(message)):
            client.predict(*args, api_name=api)
    # An unknown key is named, cut: a 100,000-character key is not sent back whole.
    with pytest.raises(AppError, match="unknown setting") as err:
        client.predict("hi", {**FAST, "k" * 100_000: 1}, api_name="/chat")
    assert "'kkkk" in str(err.value) and len(str(err.value)) < 1_000


def test_a_tab_whose_conversation_another_tab_deleted_closes_it_and_sends_anew(hosted):
    token = hosted.owners.new_token()
    first, _ = open_tab(hosted, token, "deleting-tab")
    assert first(hosted.events["on_send"], [None, "Doomed question", "", *form()])["success"]
    second, opened = open_tab(hosted, token, "stale-tab")  # the same visitor's second tab, on that conversation
    assert titles(opened) == ["Doomed question"]
    out = second(hosted.events["on_edit"], [None])
    assert out["success"] and out["data"][3] == "Doomed question", out
    out = second(hosted.events["on_rename"], [None, "Doomed, renamed"])
    assert out["success"] and [label for label, _ in out["data"][2]["choices"]] == ["Doomed, renamed"], out
    assert first(hosted.events["on_delete"], [None, True])["success"]

    # Regenerate in the stale tab: a plain note, and the tab shows no conversation instead of failing each click.
    out = second(hosted.events["on_regenerate"], [None, "", *form()])
    assert out["success"], out
    assert "Ask something" in out["data"][1] and out["data"][2]["choices"] == []
    out = second(hosted.events["on_rename"], [None, "Too late"])  # the tab has no conversation open now
    assert not out["success"] and out["error"] == "Open a conversation first.", out
    # Send starts a new conversation, and the list shows it.
    out = second(hosted.events["on_send"], [None, "A fresh start", "", *form()])
    assert out["success"], out
    assert [label for label, _ in out["data"][2]["choices"]] == ["A fresh start"]


def test_model_loading_is_refused(hosted):
    before = hosted.studio.slot.pair
    with pytest.raises(UserError, match="turned off"):
        hosted.studio.load_model(str(ROOT / "assets" / "demo-model"), "none")
    call, _ = open_tab(hosted, None, "load-tab")
    for source in (str(ROOT / "assets" / "demo-model"), "/etc", engine.OFFICIAL_MODEL):
        out = call(hosted.events["on_load_model"], [source, "none"])
        assert not out["success"] and "turned off" in out["error"]
    assert hosted.studio.slot.pair is before


def test_ten_queued_requests_from_several_clients_all_complete(hosted):
    clients = [hosted.owners.new_token() for _ in range(3)]
    tabs = []
    for i in range(10):  # 4 + 3 + 3 tabs: some browsers send from more than one tab at once
        token = clients[i % 3]
        call, out = open_tab(hosted, token, f"queue-tab-{i}")
        assert out["data"][4] is None or out["data"][4] == token
        tabs.append((token, call, f"question {i} from browser {i % 3}"))
    recording = hosted.studio.gpu.work  # the RecordingGpu behind the page's gate
    recording.peak = 0
    recording.runs = []

    def ask(tab):
        token, call, prompt = tab
        return call(hosted.events["on_send"], [None, prompt, "", *form()])

    start = time.monotonic()
    with ThreadPoolExecutor(len(tabs)) as pool:
        results = list(pool.map(ask, tabs))
    wall = time.monotonic() - start

    assert all(r["success"] for r in results), [r.get("error") for r in results]
    for token in clients:
        owner = hosted.owners.owner_for(token)
        asked = {p for t, _, p in tabs if t == token}
        seen = {}
        for conv in hosted.store.list_conversations(owner):
            thread = hosted.store.thread(owner, conv.id)
            seen.update({m.content: thread[i + 1] for i, m in enumerate(thread[:-1]) if m.role == "user"})
        assert set(seen) == asked, "a request was lost or landed with another browser"
        assert all(a.role == "assistant" and a.status == "complete" and a.tokens for a in seen.values())
    worst = max(r["wait"] for r in results)
    print(f"\nqueue: {len(results)} requests from {len(clients)} browsers in {len(tabs)} tabs, concurrency limit "
          f"{hosted.studio.config.concurrency_limit}, peak running {recording.peak}, worst wait "
          f"{worst:.2f} s, longest request {max(r['done'] for r in results):.2f} s, all done in {wall:.2f} s")
    assert recording.peak == hosted.studio.config.concurrency_limit == 1
    # They really queued: the generations ran one after another, so the last to start waited for all the others
    # (less the time between the first and the last request joining the queue).
    runs = sorted(recording.runs)
    assert len(runs) == len(tabs) and all(b[0] >= a[1] for a, b in zip(runs, runs[1:]))
    spread = max(r["joined"] for r in results) - min(r["joined"] for r in results)
    others = sum(end - start for start, end in runs[:-1])
    assert worst >= others - spread > 0, (worst, others, spread)


# ---- two browsers -----------------------------------------------------------------------------------------------

def ask_in_page(page, text: str) -> None:
    done = page.locator("#transcript .msg.assistant.complete").count()
    page.fill("#prompt textarea", text)
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelectorAll('#transcript .msg.assistant.complete').length > {done}",
                           timeout=60_000)


def open_page(context, url: str):
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#prompt textarea")
    page.locator("button:has-text('Advanced')").first.click()
    set_number(page, "max-new-tokens", 8)
    set_number(page, "num-steps", 4)
    return page


def sidebar(page) -> str:
    return page.inner_text("#conv-list")


@pytest.mark.browser
def test_two_browsers_see_only_their_own_conversations(hosted, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    one, two = browser.new_context(), browser.new_context()
    try:
        a = open_page(one, hosted.url)
        banner = a.inner_text("#hosted-banner")
        assert "stored on this server" in banner and "Delete all my conversations" in banner
        assert "saved nothing here for 7 days" in banner
        assert "up to 32 recurrence steps" in banner and "256 new tokens" in banner and "20 requests" in banner
        assert a.get_by_role("button", name="Load model").count() == 0 or \
            not a.get_by_role("button", name="Load model").is_visible()
        ask_in_page(a, "alpha: what is 2 + 3?")

        b = open_page(two, hosted.url)
        assert "alpha" not in sidebar(b) and b.locator("#transcript .msg").count() == 0
        ask_in_page(b, "beta: what is 4 + 4?")

        # Over the cap: a clear message, nothing sent.
        b.fill("#prompt textarea", "w" * 2001)
        refused = b.get_by_text("the limit here is 2,000").first
        for _ in range(3):  # the answer's event may still be closing (on a loaded machine): Enter is then refused
            b.keyboard.press("Enter")
            try:
                refused.wait_for(timeout=15_000)
                break
            except PlaywrightTimeout:
                pass
        refused.wait_for(timeout=1_000)
        b.screenshot(path=str(ARTIFACTS / "hosted-cap.png"), full_page=True)

        # Each browser keeps its own conversations across reloads, and only those.
        for page, mine, theirs in ((a, "alpha", "beta"), (b, "beta", "alpha")):
            page.reload()
            page.wait_for_selector("#transcript .msg.assistant.complete", timeout=30_000)
            assert mine in sidebar(page) and theirs not in sidebar(page)
            assert mine in page.inner_text("#transcript") and theirs not in page.inner_text("#transcript")
        a.screenshot(path=str(ARTIFACTS / "hosted.png"), full_page=True)
    finally:
        one.close()
        two.close()
