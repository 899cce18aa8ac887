"""Which old turns a long chat leaves out, chosen so that the prompt cache stays useful.

Leaving out as few turns as fit (what ``engine.build_prompt`` does on its own) changes the prompt's first turn at
every new turn once the chat is longer than the context: the prefix the cache holds no longer matches and every
turn runs its whole prompt again. ``block_start`` instead leaves out a block of old exchanges at once, enough that
the chat drops to ``REFILL`` of the budget; the turns kept then start at the same message for the next several
turns, and each of those turns reuses the cached prefix.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

REFILL = 0.5  # after a drop the kept turns fill at most this share of the budget: room for several more turns
ANSWER_RESERVE = 16  # positions engine.stream keeps free for the answer (at most 16) when it fits a prompt


def block_start(lengths: Sequence[int], is_user: Sequence[bool], budget: int, refill: float = REFILL) -> int:
    """Index of the first message to keep, replaying the chat from its start.

    ``lengths`` are the messages' token counts, oldest first; ``budget`` the tokens they may take together. Whenever
    a prompt (the messages up to a user message) overflows the budget, old messages are dropped until they take at
    most ``refill`` of it, and further until the first kept one is a user message, so whole exchanges go. The last
    message always stays. The
    replay makes the answer depend on the history alone, so the start only moves when the chat overflows again.
    """
    if len(lengths) != len(is_user):
        raise ValueError(f"{len(lengths)} lengths for {len(is_user)} roles")
    if not 0 < refill <= 1:
        raise ValueError(f"refill must be in (0, 1], got {refill}")
    start, total = 0, 0
    for end, n in enumerate(lengths, 1):
        total += n
        if total <= budget or not is_user[end - 1]:  # a prompt ends with a question; an answer is no prompt
            continue
        while start < end - 1 and (total > refill * budget or not is_user[start]):
            total -= lengths[start]
            start += 1
    return start


def keep_recent(system: list[dict[str, Any]], turns: list[dict[str, Any]], budget: int,
                count: Callable[[list[dict[str, Any]]], int]) -> tuple[list[dict[str, Any]], int]:
    """The turns to send once a chat outgrows ``budget`` prompt tokens (``block_start``), and how many were left out.

    ``count`` renders messages with the chat template (and its generation prompt) and counts their tokens. Each
    message is rendered once on its own: its length is what it adds to an empty message's rendering, plus what an
    empty message adds to a chat (the template's header and end of turn).
    """
    if not turns or count(system + turns) <= budget:
        return turns, 0
    empty = {"role": "user", "content": ""}
    alone = count([empty])
    header = count([empty, empty]) - alone
    lengths = [count([m]) - alone + header for m in turns]
    fixed = count(system + [empty]) - header  # BOS, the system prompt, the generation prompt
    start = block_start(lengths, [m["role"] == "user" for m in turns], budget - fixed)
    return turns[start:], start


def characters(messages: list[dict[str, Any]]) -> int:
    """The messages' length in characters: ``keep_recent``'s count where no tokenizer is at hand (a remote engine,
    whose server caps the characters of a request's messages together)."""
    return sum(len(m["content"]) for m in messages)
