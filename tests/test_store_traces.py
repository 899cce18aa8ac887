"""Depth-lens traces in the store: round trip (save, reopen, export, import), the size cap, import checks."""

from __future__ import annotations

import copy
import json
import random
import sqlite3
from pathlib import Path

import pytest

from app.store import MAX_TRACE_BYTES, ImportInvalid, InvalidData, NotFound, Store

HOSTILE = '<img src=x onerror="window.__pwned=1">{{x}}${y}'


def synthetic_trace(tokens: int = 3, steps: int = 4, top_k: int = 3, seed: int = 0) -> dict:
    """A well-formed trace in the engine's compact form (the store is what is under test here)."""
    rng = random.Random(seed)
    toks = []
    for i in range(tokens):
        top = [rng.sample(range(50), top_k) for _ in range(steps)]
        probs = [sorted((round(rng.random() / top_k, 4) for _ in range(top_k)), reverse=True) for _ in range(steps)]
        toks.append({"index": i, "token_id": top[-1][0], "exit_step": steps, "top": top, "probs": probs,
                     "kl": [round(rng.random(), 4) for _ in range(steps)],
                     "entropy": [round(rng.random() * 3, 4) for _ in range(steps)],
                     "latent_change": [round(rng.random(), 4) for _ in range(steps)],
                     "xy": [[round(rng.uniform(-5, 5), 3), round(rng.uniform(-5, 5), 3)] for _ in range(steps)]})
    texts = {str(i): (HOSTILE if i == 7 else f"t{i}") for i in range(50)}
    return {"version": 1, "top_k": top_k, "cut": False, "texts": texts, "tokens": toks}


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "studio.db")
    yield s
    s.close()


def _answer(store: Store, owner: str = "local") -> tuple[int, int]:
    cid = store.create_conversation(owner).id
    store.add_message(owner, cid, "user", "hi")
    return cid, store.add_message(owner, cid, "assistant", "hello").id


def test_trace_round_trips_through_the_file_export_and_import(store: Store, tmp_path: Path):
    cid, mid = _answer(store)
    trace = synthetic_trace()
    assert store.save_trace("local", mid, trace) == trace
    assert store.trace("local", mid) == trace
    store.close()
    reopened = Store(tmp_path / "studio.db")
    assert reopened.traces("local", cid) == {mid: trace}
    doc = reopened.export_data("local", [cid])
    exported = [m for m in doc["conversations"][0]["messages"] if m["role"] == "assistant"][0]
    assert exported["trace"] == trace
    assert "trace" not in doc["conversations"][0]["messages"][0]  # the question has none
    new = reopened.import_json("other", reopened.export_json("local", [cid]))[0]
    (new_mid,) = reopened.traces("other", new.id)
    assert reopened.trace("other", new_mid) == trace
    assert reopened.traces("local", new.id) == {}  # another owner's conversation
    assert reopened.export_data("other", [new.id])["conversations"][0]["messages"][1]["trace"] == trace
    reopened.close()


def test_trace_is_stored_compressed_in_its_own_table_and_goes_with_its_message(store: Store, tmp_path: Path):
    cid, mid = _answer(store)
    trace = synthetic_trace(tokens=40, steps=16)
    store.save_trace("local", mid, trace)
    with sqlite3.connect(tmp_path / "studio.db") as db:
        (size,) = db.execute("SELECT length(data) FROM traces WHERE message_id = ?", [mid]).fetchone()
        (tokens_col,) = db.execute("SELECT tokens FROM messages WHERE id = ?", [mid]).fetchone()
    assert size < len(json.dumps(trace)) / 2
    assert tokens_col is None
    store.delete_conversation("local", cid)
    with sqlite3.connect(tmp_path / "studio.db") as db:
        assert db.execute("SELECT count(*) FROM traces").fetchone()[0] == 0


def test_another_owners_message_cannot_get_a_trace(store: Store):
    _, mid = _answer(store, "alice")
    with pytest.raises(NotFound):
        store.save_trace("bob", mid, synthetic_trace())
    assert store.trace("bob", mid) is None


def test_a_trace_over_the_cap_keeps_the_tokens_that_fit_and_says_it_was_cut(store: Store):
    _, mid = _answer(store)
    big = synthetic_trace(tokens=400, steps=64, top_k=8)
    assert len(json.dumps(big, separators=(",", ":"))) > MAX_TRACE_BYTES
    kept = store.save_trace("local", mid, big)
    assert kept["cut"] is True
    assert 0 < len(kept["tokens"]) < 400
    assert kept["tokens"] == big["tokens"][:len(kept["tokens"])]
    assert len(json.dumps(kept, ensure_ascii=False, separators=(",", ":")).encode()) <= MAX_TRACE_BYTES
    # One more token would not have fitted, and texts of tokens no longer present are dropped.
    more = {**kept, "tokens": big["tokens"][:len(kept["tokens"]) + 1]}
    assert len(json.dumps(more, ensure_ascii=False, separators=(",", ":")).encode()) > MAX_TRACE_BYTES - 4096
    assert store.trace("local", mid) == kept
    small = synthetic_trace()
    assert store.save_trace("local", mid, small)["cut"] is False


@pytest.mark.parametrize("path, value, named", [
    (("version",), 2, "trace.version"),
    (("top_k",), 0, "trace.top_k"),
    (("top_k",), True, "trace.top_k"),
    (("cut",), "no", "trace.cut"),
    (("texts", "x"), "a", "trace.texts"),
    (("tokens", 0, "exit_step"), 5, "trace.tokens[0].top"),
    (("tokens", 1, "probs", 2, 0), 1.5, "trace.tokens[1].probs[2][0]"),
    (("tokens", 1, "probs", 2, 0), float("nan"), "trace.tokens[1].probs[2][0]"),
    (("tokens", 2, "top", 0, 1), -3, "trace.tokens[2].top[0][1]"),
    (("tokens", 0, "kl", 3), "big", "trace.tokens[0].kl[3]"),
    # past a float's range: math.isfinite raises OverflowError on these
    pytest.param(("tokens", 0, "kl", 3), 10**400, "trace.tokens[0].kl[3]", id="kl-401-digits"),
    pytest.param(("tokens", 0, "xy", 1, 0), -10**400, "trace.tokens[0].xy[1][0]", id="xy-401-digits"),
    (("tokens", 0, "xy", 1), [1.0], "trace.tokens[0].xy[1]"),
    (("tokens", 0, "script"), "<b>", "trace.tokens[0]"),
    (("tokens", 0, "index"), 1e99, "trace.tokens[0].index"),
])
def test_malformed_traces_are_refused_naming_the_field(store: Store, path, value, named):
    trace = synthetic_trace()
    node = trace
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    _, mid = _answer(store)
    with pytest.raises(InvalidData, match=named.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        store.save_trace("local", mid, trace)
    assert store.trace("local", mid) is None


def test_import_checks_traces_and_writes_nothing_when_one_is_bad(store: Store):
    cid, mid = _answer(store)
    store.save_trace("local", mid, synthetic_trace())
    doc = store.export_data("local", [cid])
    bad = copy.deepcopy(doc)
    bad["conversations"][0]["messages"][1]["trace"]["tokens"][0]["entropy"] = [1.0]
    with pytest.raises(ImportInvalid, match=r"messages\[1\]\.trace\.tokens\[0\]\.entropy"):
        store.import_json("other", bad)
    columns = copy.deepcopy(doc)
    columns["conversations"][0]["messages"][1]["extra"] = {"columns": [{"trace": {"version": 1}}]}
    with pytest.raises(ImportInvalid, match=r"extra\.columns\[0\]\.trace"):
        store.import_json("other", columns)
    huge = copy.deepcopy(doc)
    huge["conversations"][0]["messages"][1]["trace"]["tokens"][0]["kl"][0] = 10**400
    with pytest.raises(ImportInvalid, match=r"messages\[1\]\.trace\.tokens\[0\]\.kl\[0\] must be a finite"):
        store.import_json("other", json.dumps(huge))  # a file's 401-digit number, as json reads it: an int
    assert store.list_conversations("other") == []
    # An oversized trace in a file is kept as far as the cap allows, marked cut.
    big = copy.deepcopy(doc)
    big["conversations"][0]["messages"][1]["trace"] = synthetic_trace(tokens=400, steps=64, top_k=8)
    (new,) = store.import_json("other", big)
    assert next(iter(store.traces("other", new.id).values()))["cut"] is True


def test_a_database_of_schema_1_gains_the_traces_table(tmp_path: Path):
    path = tmp_path / "old.db"
    Store(path).close()
    with sqlite3.connect(path) as db:  # make it look like a file written before traces existed
        db.execute("DROP TABLE traces")
        db.execute("PRAGMA user_version = 1")
    s = Store(path)
    cid, mid = _answer(s)
    s.save_trace("local", mid, synthetic_trace())
    assert s.traces("local", cid)[mid]["tokens"]
    s.close()


def with_prompt(trace: dict, positions: int, steps: int = 4, seed: int = 1) -> dict:
    prompt = synthetic_trace(tokens=positions, steps=steps, top_k=trace["top_k"], seed=seed)["tokens"]
    return {**trace, "prompt": prompt}


def test_a_trace_keeps_its_prompt_positions_and_checks_them(store: Store):
    _, mid = _answer(store)
    trace = with_prompt(synthetic_trace(), 5)
    assert store.save_trace("local", mid, trace) == trace
    assert store.trace("local", mid)["prompt"] == trace["prompt"]
    bad = copy.deepcopy(trace)
    bad["prompt"][3]["probs"][1][0] = 7.0
    with pytest.raises(InvalidData, match=r"trace\.prompt\[3\]\.probs\[1\]\[0\]"):
        store.save_trace("local", mid, bad)
    with pytest.raises(InvalidData, match=r"trace\.prompt must be a list"):
        store.save_trace("local", mid, {**trace, "prompt": {"0": 1}})
    assert store.trace("local", mid) == trace  # what was saved stays


def test_over_the_cap_the_prompt_positions_go_first_the_latest_kept(store: Store):
    _, mid = _answer(store)
    answer = synthetic_trace(tokens=40, steps=32, top_k=8)
    big = with_prompt(answer, 300, steps=32)
    assert len(json.dumps(big, separators=(",", ":"))) > MAX_TRACE_BYTES
    kept = store.save_trace("local", mid, big)
    assert kept["tokens"] == answer["tokens"] and kept["cut"] is False  # the answer's own trace is whole
    assert 0 < len(kept["prompt"]) < 300 and kept["prompt"] == big["prompt"][-len(kept["prompt"]):]
    assert len(json.dumps(kept, ensure_ascii=False, separators=(",", ":")).encode()) <= MAX_TRACE_BYTES
    # an answer too large on its own loses the prompt entirely, then its tail
    huge = with_prompt(synthetic_trace(tokens=400, steps=64, top_k=8), 10)
    cut = store.save_trace("local", mid, huge)
    assert "prompt" not in cut and cut["cut"] is True
