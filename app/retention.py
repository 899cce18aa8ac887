"""Hosted retention: a background thread that deletes the conversations of visitors who changed nothing for
``Limits.retention_days``, at start-up and then every ``CHECK_SECONDS`` (``Store.delete_stale`` does it in short
transactions, so visitors' writes get their turns while it runs). Locally there is none: nothing is ever deleted."""

from __future__ import annotations

import logging
import threading
import time

from .store import Store, StoreError

log = logging.getLogger(__name__)

CHECK_SECONDS = 3600.0  # a conversation outlives its retention by at most this


class Retention:
    def __init__(self, store: Store, days: float, check_seconds: float = CHECK_SECONDS) -> None:
        if not days > 0:
            raise ValueError(f"retention_days must be positive, got {days!r}")
        self.store, self.idle_seconds, self.check_seconds = store, days * 86400.0, check_seconds
        self.runs = 0  # cleanups finished (tests wait for the first)
        self.deleted = 0
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)

    def start(self) -> Retention:
        self._thread.start()
        return self

    def run_once(self) -> int:
        deleted = self.store.delete_stale(self.idle_seconds)
        self.deleted += deleted
        self.runs += 1
        if deleted:
            log.info("retention: deleted %d conversations of visitors idle for %g days", deleted,
                     self.idle_seconds / 86400)
        return deleted

    def _loop(self) -> None:
        while not self.store.closed:
            try:
                self.run_once()
            except StoreError as err:  # a busy or failing file: try again at the next check
                if self.store.closed:
                    return
                log.warning("retention: the cleanup failed (%s); trying again in %g s", err, self.check_seconds)
            time.sleep(self.check_seconds)
