"""The hostile-input corpus (tests/hostile_corpus.py) through ``Store.import_json``, with the checks the
app passes in: each file gets its clear error (or, for hostile text that is valid data, is stored
exactly), nothing saved changes, and a normal chat still works afterwards."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from app.store import ImportInvalid, Store
from app.views import STORE_LIMITS
from tests.hostile_corpus import CLEAN_TITLES, Case, cases, valid_export

OWNER = "visitor"
LIMITS = STORE_LIMITS  # what the app checks imports against
CASES = list(cases())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    s = Store(tmp_path_factory.mktemp("hostile") / "studio.db")
    conv = s.create_conversation(OWNER, "saved before")
    s.add_message(OWNER, conv.id, "user", "keep me")
    s.import_json("someone else", valid_export(), LIMITS)
    yield s
    s.close()


def snapshot(path: Path) -> dict[str, list[tuple]]:
    """Every row of the store's tables, read through a separate connection."""
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in ("conversations", "messages")}
    finally:
        conn.close()


def normal_chat_works(store: Store) -> None:
    conv = store.create_conversation(OWNER)
    word = f"afterword{conv.id}x"
    store.add_message(OWNER, conv.id, "user", f"What is 2+2? {word}")
    with store.begin_answer(OWNER, conv.id, settings={"num_steps": 4}) as writer:
        writer.add_token("Four", 4, 1e-4)
    thread = store.thread(OWNER, conv.id)
    assert [(m.role, m.content, m.status) for m in thread] == [
        ("user", f"What is 2+2? {word}", "complete"), ("assistant", "Four", "complete")
    ]
    assert [h.conversation_id for h in store.search(OWNER, word)] == [conv.id]
    assert store.integrity_check() == "ok"


def test_the_corpus_is_broad_and_its_base_file_is_valid(store: Store):
    assert len(CASES) > 150 and len({c.name for c in CASES}) == len(CASES)
    assert sum(c.error is None for c in CASES) >= 2
    assert all(len(c.data) < 10 * 1024 * 1024 for c in CASES)  # the hosted upload cap
    [conv] = store.import_json(OWNER, json.dumps(valid_export()), LIMITS)
    store.delete_conversation(OWNER, conv.id)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_import(store: Store, case: Case):
    before = snapshot(store.path)
    if case.error is None:
        [conv] = store.import_json(OWNER, case.data, LIMITS)
        source = json.loads(case.data)["conversations"][0]
        assert store.get_conversation(OWNER, conv.id).title == CLEAN_TITLES.get(source["title"], source["title"])
        assert [m.content for m in store.messages(OWNER, conv.id)] == [m["content"] for m in source["messages"]]
        after = snapshot(store.path)
        for table, rows in before.items():
            assert after[table][: len(rows)] == rows  # added to, nothing changed
    else:
        with pytest.raises(ImportInvalid) as err:
            store.import_json(OWNER, case.data, LIMITS)
        message = str(err.value)
        assert re.search(case.error, message), message
        assert "<" not in message and ">" not in message and len(message) < 600, message
        assert snapshot(store.path) == before
    normal_chat_works(store)
