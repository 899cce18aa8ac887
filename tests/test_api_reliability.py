"""The OpenAI-compatible API on a hosted server, tried as an attacker and an operator would (issue 22): no prompt read
back through another client's prompt cache, no generation slot held by a client that has gone, the hosted queue cap
held, and the edge cases of a request body refused by name.

One real server in this process (``build_demo`` + ``launch`` + ``add_routes``, as ``run.py --hosted`` does) on the
demo model; clients are real sockets, httpx and gradio_client.
"""

from __future__ import annotations

import json
import socket
import threading
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
VICTIM_KEY = "victim-" + "v" * 30
ATTACKER_KEY = "attacker-" + "a" * 30
LONG = {"max_tokens": 256, "num_steps": 32}  # the longest answer the hosted caps allow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.openai_api import add_routes
    from app.ui import build_demo, launch

    data_dir = tmp_path_factory.mktemp("api-hosted")
    store = Store(data_dir / DB_FILE)
    slot = ModelSlot(*engine.load("auto", device="cpu"))
    studio = Studio(slot, store, hosted_config(), owners=OwnerKeys.from_data_dir(data_dir))
    demo = build_demo(studio)
    _, url, _ = launch(demo, prevent_thread_lock=True, quiet=True, server_port=None)
    gate = add_routes(demo.app, studio)
    yield SimpleNamespace(url=url, studio=studio, gate=gate)
    demo.close()
    store.close()


def post(url: str, body: dict[str, Any], key: str | None = None, **headers: str) -> httpx.Response:
    auth = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}v1/chat/completions", json=body, headers={**auth, **headers}, timeout=120)


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
