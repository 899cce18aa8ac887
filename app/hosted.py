"""Running the app for other people: Space detection, the data dir, per-browser owner keys, hosted caps and banner.

Gradio-free, so handler tests and the CLI's ``--help`` stay fast. The ZeroGPU side is in ``app.gpu``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import platformdirs

from .config import AppConfig, Limits, UserError
from .store import new_owner_key

DATA_DIR_ENV = "HUGINN_STUDIO_DATA_DIR"
SECRET_ENV = "HUGINN_STUDIO_SECRET"
AUTH_ENV = "HUGINN_STUDIO_AUTH"
SECRET_FILE = "owner-secret"
DB_FILE = "huginn-studio.db"
SPACE_DATA_DIR = Path("/tmp/huginn-studio")  # a Space's disk is local and ephemeral; SQLite wants local disk

# Public caps: small enough that one visitor cannot hold the single model for minutes, big enough to see depth matter.
HOSTED_LIMITS = Limits(max_num_steps=32, max_new_tokens=256, max_prompt_chars=2000, max_system_chars=2000,
                       max_history_messages=32, max_prompt_tokens=4096, max_stop_strings=4, max_stop_string_chars=64,
                       max_compare_settings=5, max_title_chars=200, max_query_chars=200,
                       # every new browser is a new owner: these bound what each fills of the Space's disk
                       max_conversations=200, max_stored_bytes=20_000_000, max_imports_per_hour=10,
                       # and fresh browsers cost nothing, so these bound the file: 100 visitors at their byte cap, or
                       # 500 at their conversation cap. Counted bytes leave out the search index and SQLite's free
                       # pages, so the file is about 2-3x this: a few GB of a Space's 50 GB disk, beside the weights.
                       max_server_conversations=100_000, max_server_bytes=2_000_000_000,
                       # A Space's disk is wiped at every restart (a rebuild, a sleep), so a longer promise would not
                       # be kept; a week lets a visitor come back over several days and frees what one-off visits left.
                       retention_days=7)
HOSTED_QUEUE_SIZE = 20

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{24,64}$")
SHARED_API_OWNER = "api"  # locally every API client is the one user, so they share the prompt cache
# Hosted without a login, a key this long, of this many different characters (a random one, not a placeholder
# such as "sk-xxxx…" that strangers share), names a client's own prompt cache.
MIN_API_KEY_CHARS = 24
MIN_API_KEY_DISTINCT = 12


# ---- where are we -----------------------------------------------------------------------------------------------

def on_space(environ: dict[str, str] | None = None) -> bool:
    """True inside a Hugging Face Space (the platform sets SPACE_ID, and SYSTEM=spaces)."""
    env = os.environ if environ is None else environ
    return bool(env.get("SPACE_ID")) or env.get("SYSTEM") == "spaces"


def default_data_dir(hosted_on_space: bool) -> Path:
    """``$HUGINN_STUDIO_DATA_DIR``, else /tmp/huginn-studio on a Space, else the user data folder."""
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    if hosted_on_space:
        return SPACE_DATA_DIR
    return Path(platformdirs.user_data_dir("huginn-studio", appauthor=False))


# ---- owner keys -------------------------------------------------------------------------------------------------

class OwnerKeys:
    """Per-browser owner keys. The browser keeps a random token; the store's owner key is an HMAC of that token under
    a server secret. So the only way to act as a visitor is to hold their token: no value a client sends (an owner
    key read from the database included) names anyone else's rows."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the owner-key secret must be at least 16 bytes")
        self._secret = secret

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> OwnerKeys:
        """The secret from ``$HUGINN_STUDIO_SECRET``, else a file in the data dir (created once, owner-only), so
        browsers keep their conversations across restarts."""
        env = os.environ.get(SECRET_ENV, "")
        if env:
            return cls(env.encode())
        path = Path(data_dir) / SECRET_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(path.read_bytes().strip())
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        return cls(path.read_bytes().strip())

    @staticmethod
    def new_token() -> str:
        return new_owner_key()

    @staticmethod
    def valid_token(token: Any) -> bool:
        return isinstance(token, str) and bool(_TOKEN_RE.match(token))

    def owner_for(self, token: str) -> str:
        """The store owner key for a browser token."""
        if not self.valid_token(token):
            raise ValueError("not a browser token")
        # The colon is outside the token alphabet, so an owner key is never mistaken for a token.
        return "web:" + hmac.new(self._secret, token.encode(), hashlib.sha256).hexdigest()[:40]

    def browser_state_secret(self) -> str:
        """A fixed key for Gradio's BrowserState encryption. Gradio sends it to the page, so it is derived, never
        the secret itself; it only has to outlive restarts."""
        return hmac.new(self._secret, b"browser-state", hashlib.sha256).hexdigest()


# ---- imports per hour -------------------------------------------------------------------------------------------

class HourlyCap:
    """At most ``per_hour`` tries per owner in any hour (a sliding window, in memory; None: no cap). Every try counts,
    refused files too: checking a file is the work being bounded."""

    def __init__(self, per_hour: int | None, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_hour, self.what, self.clock = per_hour, what, clock
        self._tries: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, owner: str) -> None:
        """Count one try of ``owner``'s, or refuse it (``UserError``) when the last hour already had ``per_hour``."""
        if self.per_hour is None:
            return
        now = self.clock()
        with self._lock:
            if len(self._tries) > 10_000:  # forget owners idle for an hour, so fresh tokens cannot grow the dict
                self._tries = {k: v for k, v in self._tries.items() if v and now - v[-1] < 3600}
            tries = self._tries.setdefault(owner, deque())
            while tries and now - tries[0] >= 3600:
                tries.popleft()
            if len(tries) >= self.per_hour:
                wait = max(1, round((3600 - (now - tries[0])) / 60)) if tries else 60
                raise UserError(f"This visitor may {self.what} at most {self.per_hour} times an hour; "
                                f"try again in {wait} minute{'s' if wait > 1 else ''}.")
            tries.append(now)


# ---- API clients' prompt caches -------------------------------------------------------------------------------

def api_cache_owner(key: str | None, *, isolated: bool, login: bool = False) -> str:
    """The prompt-cache owner of one API request (``/v1`` or ``/chat``).

    A cache entry is reused only by its owner, and reuse shows in ``reused_tokens`` and the time to first token: a
    client sharing an owner with another could read the other's prompt back token by token. So where clients are
    not one person (``isolated``: hosted, or behind a login) each credential is its own owner: the login's key, or
    hosted without a login a random API key the client picks (``MIN_API_KEY_CHARS`` long, ``MIN_API_KEY_DISTINCT``
    different characters; it names a cache and grants nothing). A request with no such key gets an owner of its
    own, reusing nothing. Locally every client is the one user and shares ``SHARED_API_OWNER``."""
    if not isolated:
        return SHARED_API_OWNER
    if key and (login or (len(key) >= MIN_API_KEY_CHARS and len(set(key)) >= MIN_API_KEY_DISTINCT)):
        # Kept in memory only, never stored or sent; hashed so the process holds no password in its cache keys.
        return "api-key:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return "api-once:" + secrets.token_hex(16)


# ---- hosted configuration ---------------------------------------------------------------------------------------

def limits_text(limits: Limits, queue_size: int | None) -> str:
    queue = f", {queue_size} requests waiting in line" if queue_size else ""
    return (f"Limits here: up to {limits.max_num_steps} recurrence steps, {limits.max_new_tokens} new tokens, "
            f"{limits.max_prompt_chars:,} characters per message and {limits.max_system_chars:,} per system prompt, "
            f"the last {limits.max_history_messages} messages as history, {limits.max_compare_settings} settings per "
            f"comparison{queue}{storage_text(limits)}.")


def storage_text(limits: Limits) -> str:
    caps = [f"{limits.max_conversations:,} conversations" if limits.max_conversations is not None else "",
            f"{limits.max_stored_bytes / 1e6:,.0f} MB" if limits.max_stored_bytes is not None else "",
            f"{limits.max_imports_per_hour} imports an hour" if limits.max_imports_per_hour is not None else ""]
    text = "; each visitor keeps up to " + ", ".join(c for c in caps if c) if any(caps) else ""
    if limits.max_server_bytes is not None:
        text += f"; all visitors together up to {limits.max_server_bytes / 1e6:,.0f} MB"
    return text


def retention_text(limits: Limits) -> str:
    days = limits.retention_days
    if days is None:
        return "They may also vanish when the server restarts. "
    return (f"They are deleted once this browser has saved nothing here for {days:g} day{'s' if days != 1 else ''}, "
            "and may vanish sooner when the server restarts. ")


def hosted_banner(limits: Limits, queue_size: int | None) -> str:
    return ("Conversations you have here are stored on this server, under a key kept in this browser; other "
            "visitors cannot see them. Delete one with \"Delete conversation\" (or all with \"Delete all my "
            "conversations\") in the sidebar's menu. " + retention_text(limits) + limits_text(limits, queue_size))


def hosted_config(limits: Limits = HOSTED_LIMITS, queue_size: int = HOSTED_QUEUE_SIZE) -> AppConfig:
    """Public caps, one generation at a time, a bounded queue, no model loading, the storage banner."""
    return AppConfig(limits=limits, allow_model_loading=False, concurrency_limit=1, queue_size=queue_size,
                     banner=hosted_banner(limits, queue_size), per_browser_owner=True)
