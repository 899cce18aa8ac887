"""The OpenAI-compatible API on a hosted server, tried as an attacker and an operator would (issue 22): no prompt read
back through another client's prompt cache, no generation slot held by a client that has gone, the hosted queue cap
held, and the edge cases of a request body refused by name.

One real server in this process (``build_demo`` + ``launch`` + ``add_routes``, as ``run.py --hosted`` does) on the
demo model; clients are real sockets, httpx and gradio_client.
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

import engine
from app.handlers import ModelSlot, Studio
from app.hosted import DB_FILE, OwnerKeys, hosted_config
from app.store import Store

pytestmark = pytest.mark.slow

SECRET = "483920"
KNOWN = "The vault code is "  # what the attacker guesses the victim's system prompt starts with
VICTIM_KEY = "victim-0123456789abcdefghij"
ATTACKER_KEY = "attacker-0123456789abcdefghij"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.openai_api import add_routes
    from app.ui import build_demo, launch

    data_dir = tmp_path_factory.mktemp("api-hosted")
    store = Store(data_dir / DB_FILE)
    slot = ModelSlot(*engine.load("auto", device="cpu")[:2])
    studio = Studio(slot, store, hosted_config(), owners=OwnerKeys.from_data_dir(data_dir))
    demo = build_demo(studio)
    _, url, _ = launch(demo, prevent_thread_lock=True, quiet=True, server_port=None)
    gate = add_routes(demo.app, studio)
    yield SimpleNamespace(url=url, studio=studio, gate=gate)
    demo.close()
    store.close()


def post(url: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    auth = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}v1/chat/completions", json=body, headers=auth, timeout=120)


def ask(system: str, user: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": 1, "num_steps": 4, "seed": 0, **extra}


# ---- the prompt cache: one owner per client ---------------------------------------------------------------------

def oracle_attack(reused) -> tuple[str | None, int]:
    """Read the victim's code back one digit at a time: the right digit is the one whose probe reuses more of the
    cache. Returns (what was read, or None when no digit stood out; queries made)."""
    known, queries = "", 0
    for _ in range(len(SECRET)):
        counts = {}
        for digit in "0123456789":
            counts[digit] = reused(KNOWN + known + digit)
            queries += 1
        best = max(counts, key=counts.get)
        if sorted(counts.values())[-2] == counts[best]:  # no digit stands out: the cache tells nothing
            return None, queries
        known += best
    return known, queries


def test_another_client_cannot_read_a_system_prompt_through_the_v1_prompt_cache(server):
    victim = ask(f"{KNOWN}{SECRET}. Never tell anyone.")
    assert post(server.url, victim, VICTIM_KEY).status_code == 200
    # The owner itself still gets its cache: the same prompt again reuses it.
    again = post(server.url, victim, VICTIM_KEY).json()
    assert again["huginn"]["summary"]["reused_tokens"] > 0

    for key in (ATTACKER_KEY, None, "short-key"):  # its own key, no key, a key too short to name a cache
        def reused(system: str) -> int:
            post(server.url, victim, VICTIM_KEY)  # the victim keeps talking, so its entry stays in the pool
            answer = post(server.url, ask(system), key)
            assert answer.status_code == 200, answer.text
            return answer.json()["huginn"]["summary"]["reused_tokens"]

        found, queries = oracle_attack(reused)
        print(f"\n/v1 oracle with key {key!r}: read {found!r} in {queries} queries")
        assert found is None and queries == 10, (found, queries)
        if key is None or key == "short-key":  # no cache of its own at all
            assert reused(KNOWN) == 0


def test_only_a_random_key_names_a_cache_of_its_own():
    from app.hosted import api_cache_owner

    random_key = "k-3f9a1c77e2b04d5a8e6b1f0c"
    assert api_cache_owner(random_key, isolated=True) == api_cache_owner(random_key, isolated=True)
    for shared in (None, "", "EMPTY", "sk-no-key-required", "sk-" + "x" * 40, "unused" * 5):  # placeholders
        assert api_cache_owner(shared, isolated=True) != api_cache_owner(shared, isolated=True), shared
    assert api_cache_owner("a:b", isolated=True, login=True) == api_cache_owner("a:b", isolated=True, login=True)
    assert api_cache_owner(random_key, isolated=False) == api_cache_owner(None, isolated=False)  # locally: one user


def test_another_client_cannot_read_a_system_prompt_through_the_chat_endpoints_cache(server):
    from gradio_client import Client

    victim, attacker = Client(server.url, verbose=False), Client(server.url, verbose=False)
    settings = {"max_new_tokens": 1, "num_steps": 4, "seed": 0}
    secret = f"{KNOWN}{SECRET}. Never tell anyone."

    def reused(system: str) -> int:
        victim.predict("hi", settings, secret, api_name="/chat")
        return attacker.predict("hi", settings, system, api_name="/chat")["stats"]["reused_tokens"]

    found, queries = oracle_attack(reused)
    print(f"\n/chat oracle: read {found!r} in {queries} queries")
    assert found is None and queries == 10, (found, queries)


# ---- the generation slot: released however a request ends ------------------------------------------------------

# An answer of ~200 tokens at the deepest hosted depth (seconds to tens of seconds on a CPU): what a dropped client
# would keep the slot for.
STORY = {"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 256, "num_steps": 32,
         "temperature": 10.0, "seed": 7}
SMALL = {"messages": [{"role": "user", "content": "What is 2 + 3?"}], "max_tokens": 2, "num_steps": 4}


def raw_post(url: str, body: dict[str, Any]) -> socket.socket:
    """A chat-completions request on a plain socket, which the test can drop at any point."""
    parts = urlsplit(url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((parts.hostname, parts.port), timeout=120)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (parts.netloc.encode(), len(data), data))
    return sock


def read_until(sock: socket.socket, marker: bytes, count: int = 1) -> None:
    seen = b""
    while seen.count(marker) < count:
        part = sock.recv(65536)
        assert part, f"the server closed the connection: {seen[-500:]!r}"
        seen += part


def drop(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset, at once
    sock.close()


def next_request_wait(server) -> float:
    """Seconds until a small request is answered, starting now."""
    start = time.monotonic()
    answer = post(server.url, SMALL)
    assert answer.status_code == 200, answer.text
    return time.monotonic() - start


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def hold_the_slot(server) -> socket.socket:
    """A streaming answer that has started: the slot is taken."""
    sock = raw_post(server.url, {**STORY, "stream": True})
    read_until(sock, b"data: ", 2)
    return sock


def dropped_before_the_first_chunk(server) -> None:
    sock = raw_post(server.url, {**STORY, "stream": True})
    wait_for(lambda: server.gate.waiting + server.gate.running == 1)  # taken in, no token yet
    drop(sock)


def dropped_while_queued(server) -> None:
    blocker = hold_the_slot(server)
    queued = raw_post(server.url, {**STORY, "stream": True})
    wait_for(lambda: server.gate.waiting == 1)
    drop(queued)
    drop(blocker)


def dropped_mid_stream(server) -> None:
    drop(hold_the_slot(server))


def dropped_waiting_for_a_whole_answer(server) -> None:
    sock = raw_post(server.url, STORY)
    wait_for(lambda: server.gate.running == 1)
    drop(sock)


@pytest.mark.parametrize("how", [dropped_before_the_first_chunk, dropped_while_queued, dropped_mid_stream,
                                 dropped_waiting_for_a_whole_answer], ids=lambda f: f.__name__)
def test_a_dropped_request_frees_the_slot_for_the_next_one_at_once(server, how):
    next_request_wait(server)  # warm
    how(server)
    wait = next_request_wait(server)
    print(f"\n{how.__name__}: the next request waited {wait:.2f} s")
    assert wait < 4.0, f"the next request waited {wait:.1f} s for a client that had gone"
    wait_for(lambda: server.gate.running == 0 and server.gate.waiting == 0, timeout=5)


# ---- the hosted caps hold for /v1 as for the page ----------------------------------------------------------------

def test_the_queue_cap_holds_for_simultaneous_api_requests(server):
    cap = server.studio.config.queue_size
    assert cap == 20
    blocker = hold_the_slot(server)
    with ThreadPoolExecutor(30) as pool:
        futures = [pool.submit(post, server.url, SMALL) for _ in range(30)]
        wait_for(lambda: sum(f.done() for f in futures) == 30 - cap and server.gate.waiting == cap)
        drop(blocker)
        answers = [f.result() for f in futures]
    refused = [a for a in answers if a.status_code == 429]
    assert len(refused) == 30 - cap and sum(a.status_code == 200 for a in answers) == cap
    error = refused[0].json()["error"]
    assert error["type"] == "rate_limit_error" and f"{cap} requests are waiting" in error["message"]

    # Twenty clients at once, each within the caps: all answered; the worst wait is the line ahead of it.
    with ThreadPoolExecutor(cap) as pool:
        waits = list(pool.map(lambda _: next_request_wait(server), range(cap)))
    print(f"\n{cap} simultaneous small /v1 requests: worst wait {max(waits):.2f} s, median "
          f"{sorted(waits)[cap // 2]:.2f} s")


# ---- request bodies --------------------------------------------------------------------------------------------

def raw(server, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}v1/chat/completions", content=body,
                      headers={"content-type": "application/json", **headers}, timeout=60)


def test_hostile_bodies_get_a_400_naming_the_field(server):
    question = '"messages": [{"role": "user", "content": "hi"}]'
    cases = [
        ('{%s, "max_tokens": %s}' % (question, "9" * 5000), "max_tokens", "5,000 digits"),
        ('{%s, "seed": -%s}' % (question, "1" * 100), "seed", "100 digits"),
        ('{"messages": [{"role": "user", "content": %s}]}' % ("7" * 5000), "messages[0].content", "5,000 digits"),
        ('{"messages": %s%s}' % ("[" * 30_000, "]" * 30_000), "messages", "nests too deeply"),
        ('{%s, "num_steps": %s1%s}' % (question, '{"a": ' * 10_000, "}" * 10_000), "num_steps", "nests too deeply"),
        ('{%s, "temperature": NaN}' % question, None, "NaN is not a JSON number"),
        ('{%s, "%s": 1}' % (question, "z" * 10_000), "z" * 64 + "…", "unknown field 'zzz"),
    ]
    for body, param, message in cases:
        answer = raw(server, body.encode())
        assert answer.status_code == 400, (body[:80], answer.text[:300])
        error = answer.json()["error"]
        assert error["param"] == param and message in error["message"], (body[:80], error)
        assert len(answer.content) < 2_000, "a long client value was echoed back"


def test_only_json_from_this_servers_own_pages(server):
    body = json.dumps(SMALL).encode()
    # What another web site can make a visitor's browser send without asking first: a form or plain text.
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        answer = raw(server, body, **{"content-type": kind})
        assert answer.status_code == 415 and "application/json" in answer.json()["error"]["message"], kind
    cross = raw(server, body, origin="https://evil.example")
    assert cross.status_code == 403 and "https://evil.example" in cross.json()["error"]["message"]
    assert httpx.get(f"{server.url}v1/models", headers={"origin": "null"}).status_code == 403
    host = urlsplit(server.url).netloc
    assert raw(server, body, origin=f"http://{host}").status_code == 200  # the server's own page
    assert raw(server, body).status_code == 200  # scripts send no Origin
    # The page's own routes take no plain-text body either (Gradio's request models), so no other site starts them.
    chat = json.dumps({"data": ["hi", {"max_new_tokens": 2, "num_steps": 2}, "", None]}).encode()
    for path in ("gradio_api/call/chat", "gradio_api/queue/join"):
        reply = httpx.post(f"{server.url}{path}", content=chat, timeout=30,
                           headers={"content-type": "text/plain", "origin": "https://evil.example"})
        assert reply.status_code == 422, (path, reply.status_code)


def test_deep_nesting_sent_to_the_page_and_the_chat_endpoint_is_refused_and_the_server_serves_on(server):
    deep = "[" * 50_000 + "]" * 50_000
    events = {d["api_name"]: d["id"] for d in httpx.get(f"{server.url}config").json()["dependencies"]}
    join = ('{"data": [null, "hi", %s], "fn_index": %d, "session_hash": "deep", "event_data": null, '
            '"trigger_id": null}' % (deep, events["on_send"]))
    page = httpx.post(f"{server.url}gradio_api/queue/join", content=join.encode(),
                      headers={"content-type": "application/json"}, timeout=60)
    chat = httpx.post(f"{server.url}gradio_api/call/chat", content=('{"data": ["hi", %s]}' % deep).encode(),
                      headers={"content-type": "application/json"}, timeout=60)
    for reply in (page, chat):
        assert 400 <= reply.status_code < 500 and "Traceback" not in reply.text, reply.text[:300]
    assert next_request_wait(server) < 30
