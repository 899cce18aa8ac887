"""What a running app may do: the caps on one request (``Limits``) and the server's settings (``AppConfig``).

Gradio-free, so ``app.hosted`` and the handlers can both import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine import MAX_HISTORY_MESSAGES

from .store import LOCAL_OWNER


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for, checked on the server for every event and API call; a hosted build
    tightens them. Every cap bounds work that grows with it, so the worst request the caps allow is bounded too."""

    max_num_steps: int = 128
    max_new_tokens: int = 4096
    max_prompt_chars: int = 100_000  # one message, and an API call's system prompt + history + prompt together
    max_system_chars: int = 100_000
    max_history_messages: int = MAX_HISTORY_MESSAGES  # messages sent with a question (older ones are left out)
    max_prompt_tokens: int | None = None  # the prompt as the model sees it; None: the model's context decides
    max_stop_strings: int = 16
    max_stop_string_chars: int = 200
    max_compare_settings: int = 7
    max_title_chars: int = 500
    max_query_chars: int = 1000
    # What one owner keeps (the store's RecordLimits.max_owner_*) and how many files it may import an hour; what all
    # owners keep together (RecordLimits.max_server_*); how many days an owner's conversations outlive their last
    # change (app.retention). None: no cap and nothing deleted, as when running locally for oneself.
    max_conversations: int | None = None
    max_stored_bytes: int | None = None
    max_imports_per_hour: int | None = None
    max_server_conversations: int | None = None
    max_server_bytes: int | None = None
    retention_days: float | None = None


@dataclass(frozen=True)
class AppConfig:
    limits: Limits = field(default_factory=Limits)
    allow_model_loading: bool = True
    default_owner: str = LOCAL_OWNER
    concurrency_limit: int = 1  # generations at once per loaded model; the rest wait in Gradio's queue
    queue_size: int | None = None
    stream_interval: float = 0.15  # seconds between page updates while streaming (the engine never waits on it)
    banner: str = ""
    per_browser_owner: bool = False  # hosted: each browser gets its own owner key (Studio needs ``owners``)


class UserError(Exception):
    """Bad input from the page or an API call; the message is shown as it is (escaped)."""


def quoted(value: object, limit: int = 64) -> str:
    """A value from outside (a client's field name, an upstream server's string) as a message quotes it: cut to
    ``limit`` characters, then its repr, so control characters and quotes are escaped and nothing long is echoed."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


class EngineError(Exception):
    """The engine behind the page (a remote server) failed or sent what this app cannot take; the message names
    the server and is shown as it is."""


class Interrupted(EngineError):
    """An answer's stream was cut before its end (the remote engine closed it, or ran past its time): what came
    is kept and marked interrupted, never stored as a finished answer."""
