"""Seeded task generators for the Huginn Studio demo model.

Everything the demo model ever sees comes from here: cup-swap problems (follow k swaps of three
cups) in tiers of k, plus a little plain conversation so that chatting with the model is coherent.
Hops, stops and chase problems (walks along links, written out in the answer) are task mixes for a
later stage (`train_demo_model.py --hops`, `--stops`, `--chase`); the shipped model was not trained on them
(docs/demo-model.md, "Serial work in the answer").
Problems are split into train and held-out by a hash of the question text, so the split is exact
and does not depend on the seed or the order in which problems were generated.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

HELDOUT_MODULO = 10  # 1 in 10 questions of the trained lengths is held out for evaluation

# Three cups at positions 1-3 hold the digits 1, 2, 3 in some start order; each swap `ij` exchanges
# the cups at positions i and j. The final order is the start order composed with k transpositions,
# a walk through the non-abelian group S3: no attention pattern sums it up in one look, so a model
# has to compose the swaps one after another, and every swap costs (at least) one more iteration.
SWAP_CUPS = 3
SWAP_PAIRS = tuple(f"{i}{j}" for i in range(1, SWAP_CUPS + 1) for j in range(i + 1, SWAP_CUPS + 1))
TRAIN_MAX_SWAPS = 16  # the shipped model trained on 1..16 swaps; longer lists are never trained on
# Stages 1 and 2 of the shipped model trained on 1..12 swaps (train_demo_model.py --max-swaps).
FIRST_STAGES_MAX_SWAPS = 12
TRAIN_MAX_HOPS = 6  # hops problems (below): longer walks per value are never trained on
TRAIN_MAX_WALK = 6  # stops problems (below): links from the start to the last stop; longer are never trained on
TRAIN_MAX_CHASE = 3  # chase problems (below): the deepest chain trained on

TASKS = ("swap",)  # the shipped model's tasks; TIERS has every task the evaluation knows
# The tier is the number of swaps, i.e. the number of serial steps. 24 (1.5 times the longest trained
# list) and 32 are longer than anything in training.
TIERS: dict[str, tuple[int, ...]] = {"swap": (4, 8, 12, 16, 24, 32), "hops": (1, 2, 4, 6, 8), "stops": (4, 5, 6, 7, 8),
                                       "chase": (1, 2, 3, 4)}
TIER_NAMES: dict[str, dict[int, str]] = {
    "swap": {k: f"{k} swaps" + (" (longer than trained)" if k > TRAIN_MAX_SWAPS else "") for k in TIERS["swap"]},
    "hops": {k: f"{k} hops per value" + (" (longer than trained)" if k > TRAIN_MAX_HOPS else "")
             for k in TIERS["hops"]},
    "stops": {k: f"a walk of {k} links" + (" (longer than trained)" if k > TRAIN_MAX_WALK else "")
              for k in TIERS["stops"]},
    "chase": {k: f"chains of {k} links" + (" (longer than trained)" if k > TRAIN_MAX_CHASE else "")
              for k in TIERS["chase"]},
}

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are Huginn, a helpful assistant.",
    "You are a helpful assistant that can assist users with mathematical reasoning.",
)


@dataclass(frozen=True)
class Problem:
    task: str
    tier: int
    question: str
    answer: str

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.question}, {"role": "assistant", "content": self.answer}]


def is_heldout(question: str) -> bool:
    """True for questions reserved for evaluation; training never emits them.

    The first 8 bytes of the SHA-256 of the stripped UTF-8 text, read as a big-endian integer, are
    0 mod HELDOUT_MODULO. (Swap lists longer than TRAIN_MAX_SWAPS are held out as a whole on top of
    this: training never draws them.)
    """
    digest = hashlib.sha256(question.strip().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HELDOUT_MODULO == 0


# ----------------------------------------------------------------------------------------------
# cup swaps


def apply_swaps(start: str, pairs: Sequence[str]) -> str:
    cups = list(start)
    for pair in pairs:
        i, j = int(pair[0]) - 1, int(pair[1]) - 1
        cups[i], cups[j] = cups[j], cups[i]
    return "".join(cups)


def swap_question(start: str, pairs: Sequence[str]) -> str:
    # The start order comes last, at a fixed distance from the answer, and each swap at a fixed
    # distance from the one before it: every lookup the model needs is at a fixed relative
    # offset (which it learns quickly); only the number of swaps, the serial work, varies.
    return f"Swap {' '.join(pairs)} on {start}. Final?"


# Gaps a respelled list may use between two swaps (train_*(spacing=...)): one or two tokens each.
SWAP_GAPS = (" ", " ", ", ", "  ")


def respell_swaps(question: str, rng: random.Random) -> str:
    """The same swap question with a random gap of one or two tokens between successive swaps.

    The distance from the first swap to the answer then no longer tells the number of swaps (and so
    its parity), which the model could otherwise read off the position instead of composing the swaps.
    """
    pairs, start = swap_parts(question)
    spelled = pairs[0] + "".join(rng.choice(SWAP_GAPS) + pair for pair in pairs[1:])
    return f"Swap {spelled} on {start}. Final?"


IDENTITY_PAIRS = tuple(f"{i}{i}" for i in range(1, SWAP_CUPS + 1))  # `11` leaves the cups as they are


def with_identities(p: Problem, rng: random.Random, share: float = 0.25) -> Problem:
    """The same number of list entries, about `share` of them replaced by a swap of a cup with itself.

    The number of entries (or digits) then no longer fixes the parity of the final order, so a model
    that reads the parity off a count of the swaps, instead of composing them, is wrong on these.
    """
    pairs, start = swap_parts(p.question)
    pairs = [rng.choice(IDENTITY_PAIRS) if rng.random() < share else pair for pair in pairs]
    return Problem(p.task, p.tier, swap_question(start, pairs), apply_swaps(start, pairs))


def swap_parts(question: str) -> tuple[list[str], str]:
    """The swaps and the start order of a single-spaced swap question."""
    head, tail = question.rsplit(" on ", 1)
    return head.removeprefix("Swap ").split(" "), tail.split(".", 1)[0]


def swap_start(question: str) -> str:
    """The start order of a swap question (the trivial baseline answers it)."""
    return swap_parts(question)[1]


def make_swap(tier: int, rng: random.Random) -> Problem:
    """`tier` swaps from a random start order; no swap repeats the one before it (that would undo it)."""
    if tier < 1:
        raise ValueError(f"a swap problem needs at least one swap, got {tier}")
    start = "".join(rng.sample("123456789"[:SWAP_CUPS], SWAP_CUPS))
    pairs: list[str] = []
    while len(pairs) < tier:
        pair = rng.choice(SWAP_PAIRS)
        if not pairs or pair != pairs[-1]:
            pairs.append(pair)
    return Problem("swap", tier, swap_question(start, pairs), apply_swaps(start, pairs))


# ----------------------------------------------------------------------------------------------
# hops: serial work in the answer

# Nine places 1-9, each linked to one other (a random permutation, written as source-target pairs in
# the order of the sources). The answer is HOP_VALUES places, each `h` links on from the one before it,
# the first `h` links on from the start. The hop count and the start come last, so no position of the
# link table can know where the walk goes; and a value is h links on from the previous *answer* token,
# which is the token its position holds: each answer token has h hops of its own to do, so the
# per-token heatmap shows the work growing with h.
HOP_PLACES = 9
HOP_VALUES = 3
PLACES = "123456789"[:HOP_PLACES]


def link_table(links: dict[str, str]) -> str:
    """The links as source-target pairs in the order of the sources (`17 26 35 ...`)."""
    return " ".join(f"{a}{links[a]}" for a in sorted(links))


def parse_links(table: str) -> dict[str, str]:
    return {pair[0]: pair[1] for pair in table.split(" ")}


def walk(links: dict[str, str], start: str, hops: int, values: int = HOP_VALUES) -> str:
    out, here = [], start
    for _ in range(values):
        for _ in range(hops):
            here = links[here]
        out.append(here)
    return "".join(out)


def hops_question(links: dict[str, str], start: str, hops: int) -> str:
    return f"Follow {link_table(links)} by {hops} from {start}. Final?"


def hops_parts(question: str) -> tuple[dict[str, str], int, str]:
    """The links, the hop count and the start of a hops question."""
    head, tail = question.removeprefix("Follow ").split(" by ", 1)
    hops, rest = tail.split(" from ", 1)
    return parse_links(head), int(hops), rest.split(".", 1)[0]


def make_hops(tier: int, rng: random.Random) -> Problem:
    """`tier` hops per answer value on a random permutation of the places (no place linked to itself)."""
    if not 1 <= tier <= 9:
        raise ValueError(f"a hops problem takes 1 to 9 hops per value, got {tier}")
    while True:
        targets = rng.sample(PLACES, HOP_PLACES)
        if all(a != b for a, b in zip(PLACES, targets)):
            break
    links = dict(zip(PLACES, targets))
    start = rng.choice(PLACES)
    return Problem("hops", tier, hops_question(links, start, tier), walk(links, start, tier))


# ----------------------------------------------------------------------------------------------
# stops: a walk with a fixed point at every answer value

# The nine places on one cycle (each linked to the next, listed by source) and four stops; the answer is
# the stops in the order a walk from the start meets them. Walking on from a stop to the next one is
# `x <- link(x)` until x is a stop, which stops changing by itself there: no count to keep, and a longer
# gap needs only more iterations. The stops come last, so no position of the link table knows where a
# walk ends; each later answer value walks on from the previous answer token, the token at its position.
STOPS = 4


def stops_question(links: dict[str, str], start: str, stops: Sequence[str]) -> str:
    return f"Walk {link_table(links)} from {start} to {' '.join(sorted(stops))}. Final?"


def make_stops(tier: int, rng: random.Random) -> Problem:
    """Four stops on a random cycle of the places, the last one `tier` links on from the start."""
    if not STOPS <= tier < HOP_PLACES:
        raise ValueError(f"a stops walk takes {STOPS} to {HOP_PLACES - 1} links, got {tier}")
    cycle = rng.sample(PLACES, HOP_PLACES)
    links = {a: cycle[(i + 1) % HOP_PLACES] for i, a in enumerate(cycle)}
    at = sorted(rng.sample(range(1, tier), STOPS - 1)) + [tier]  # how far on from the start each stop lies
    answer = "".join(cycle[i] for i in at)
    return Problem("stops", tier, stops_question(links, cycle[0], answer), answer)


def stops_parts(question: str) -> tuple[dict[str, str], str, list[str]]:
    """The links, the start and the stops of a stops question."""
    head, tail = question.removeprefix("Walk ").split(" from ", 1)
    start, rest = tail.split(" to ", 1)
    return parse_links(head), start, rest.split(".", 1)[0].split(" ")


# ----------------------------------------------------------------------------------------------
# chase: walks that stop by themselves

# Ten places (0-9) form two trees of one size and depth: each root links to itself, and each tree is a
# chain of `tier` links with its other places hanging above that depth. The answer is three roots: the one
# the start's walk ends at (the start is the far end of one of the chains), then the one reached from the
# place after that root (0-9, 9 wrapping to 0), and so on. Walking is `x <- link(x)` with nothing to count
# or check: a root is a fixed point, so more iterations never hurt and a deeper chain needs only more of
# them (Bansal et al.'s extrapolation setting). The trees being alike in size and depth, only the walk
# tells which root a place leads to; each later value starts from the previous answer token, so no prompt
# position can walk it before the answer starts.
CHASE_PLACES = "0123456789"
CHASE_ROOTS = 2
CHASE_TREE = len(CHASE_PLACES) // CHASE_ROOTS  # places per tree; a chain has at most CHASE_TREE - 1 links


def successor(place: str) -> str:
    return CHASE_PLACES[(CHASE_PLACES.index(place) + 1) % len(CHASE_PLACES)]


def root_of(links: dict[str, str], place: str) -> str:
    while links[place] != place:
        place = links[place]
    return place


def chase(links: dict[str, str], start: str, values: int = HOP_VALUES) -> str:
    out, here = [], start
    for _ in range(values):
        out.append(root_of(links, here))
        here = successor(out[-1])
    return "".join(out)


def chase_question(links: dict[str, str], start: str) -> str:
    return f"Chase {link_table(links)} from {start}. Roots?"


def chase_parts(question: str) -> tuple[dict[str, str], str]:
    """The links and the start of a chase question."""
    head, tail = question.removeprefix("Chase ").split(" from ", 1)
    return parse_links(head), tail.split(".", 1)[0]


def make_chase(tier: int, rng: random.Random) -> Problem:
    """Two trees, each a chain of `tier` links and places hanging above it; the start ends one chain."""
    if not 1 <= tier < CHASE_TREE:
        raise ValueError(f"a chase takes chains of 1 to {CHASE_TREE - 1} links, got {tier}")
    order = rng.sample(CHASE_PLACES, len(CHASE_PLACES))
    links: dict[str, str] = {}
    ends = []
    for tree in (order[i : i + CHASE_TREE] for i in range(0, len(order), CHASE_TREE)):
        here = tree[0]
        links[here], depth = here, {here: 0}
        for place in tree[1 : tier + 1]:  # the chain
            links[place], depth[place], here = here, depth[here] + 1, place
        ends.append(here)
        for place in tree[tier + 1 :]:
            parent = rng.choice([q for q in depth if depth[q] < tier])
            links[place], depth[place] = parent, depth[parent] + 1
    start = rng.choice(ends)
    return Problem("chase", tier, chase_question(links, start), chase(links, start))


_MAKERS = {"swap": make_swap, "hops": make_hops, "stops": make_stops, "chase": make_chase}


def make_problem(task: str, tier: int, rng: random.Random) -> Problem:
    return _MAKERS[task](tier, rng)


def sample_problem(task: str, tier: int, rng: random.Random, heldout: bool) -> Problem:
    """Draw problems until one falls on the requested side of the held-out split."""
    while True:
        p = make_problem(task, tier, rng)
        if is_heldout(p.question) == heldout:
            return p


def eval_problems(task: str, tier: int, n: int, seed: int = 1234) -> list[Problem]:
    """`n` distinct held-out problems, reproducible from `seed`."""
    rng = random.Random(f"eval-{task}-{tier}-{seed}")
    seen: dict[str, Problem] = {}
    attempts = 0
    while len(seen) < n:
        p = sample_problem(task, tier, rng, heldout=True)
        seen.setdefault(p.question, p)
        attempts += 1
        if attempts > 50 * n:  # small tiers can run out of distinct held-out questions
            break
    return list(seen.values())


# ----------------------------------------------------------------------------------------------
# conversation

FORMAT_HELP = (
    "Give me a list of swaps and three cups in a start order, like: Swap 12 23 13 on 312. Final? "
    "Swap 12 exchanges the cups at positions 1 and 2. I answer with the final order, here "
    + apply_swaps("312", ("12", "23", "13"))
    + "."
)

# (paraphrases of the user's turn, the reply). Replies are short and fixed so that a tiny model
# can reproduce them exactly, and they claim only what the model card's evaluation shows.
INTENTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("hi", "hello", "hey", "hi there", "hello there", "hey there", "good morning", "good evening", "howdy",
         "Hi!", "Hello!", "Hey!", "hello huginn", "hi huginn", "greetings"),
        "Hello! I am the Huginn Studio demo model. Give me three cups and a list of swaps.",
    ),
    (
        ("what can you do?", "what can you do", "what are you good at?", "help", "what do you know?",
         "what tasks can you solve?", "what should I ask you?", "How can you help me?", "what can I ask?"),
        "I am a tiny recurrent-depth model. I follow swaps of three cups and tell you where they end up. "
        + FORMAT_HELP,
    ),
    (
        ("how do I use the depth slider?", "what does the depth slider do?", "what is the depth slider?",
         "how does the slider work?", "what does num_steps do?", "what is depth?", "how many steps should I use?",
         "what happens if I use more steps?"),
        "The depth slider sets how many times I repeat my core block for each token. I follow the swaps one "
        "after another in those repeats, so a long list of swaps needs more steps than a short one.",
    ),
    (
        ("who are you?", "what are you?", "what is your name?", "are you huginn?", "introduce yourself",
         "what model are you?"),
        "I am a small demo model built like Huginn-0125: a prelude, a recurrent core that can run many times, "
        "and a coda. I was trained on CPU for Huginn Studio.",
    ),
    (
        ("what is huginn?", "what is a recurrent-depth model?", "how do you think?", "what is latent reasoning?",
         "how do you work?"),
        "Huginn is a recurrent-depth language model. Instead of writing out its reasoning, it iterates a block "
        "in latent space, so it can think longer on harder problems.",
    ),
    (
        ("how do I ask a question?", "how should I write it?", "what format do you need?", "can you do math?",
         "can you add?", "what is a swap?", "how do the cups work?"),
        FORMAT_HELP,
    ),
    (
        ("what is adaptive compute?", "what is early exit?", "what is the exit threshold?",
         "what does adaptive exit do?"),
        "With adaptive exit I stop iterating a token once my prediction stops changing, so easy tokens use few "
        "steps and hard tokens use many.",
    ),
    (
        ("thanks", "thank you", "thanks!", "thank you!", "great, thanks", "nice", "cool", "awesome", "ok"),
        "You are welcome!",
    ),
    (
        ("bye", "goodbye", "see you", "bye!", "see you later"),
        "Goodbye!",
    ),
    (
        ("how are you?", "how are you doing?", "how is it going?"),
        "I am fine, thank you. Ready for a puzzle?",
    ),
)


def other_question_turn(rng: random.Random) -> tuple[str, str]:
    """A question the model cannot answer (a sum, a swap in words), answered with the format.

    Rather than guessing, it explains what it can do, which is the coherent thing for a person
    trying it out to see.
    """
    a, b = rng.randrange(10 ** rng.randint(1, 5)), rng.randrange(10 ** rng.randint(1, 5))
    form = rng.choice(("What is {}+{}?", "what is {} + {}?", "{}+{}", "{} + {} = ?", "What's {}+{}?", "swap {} and {}"))
    return form.format(a, b), FORMAT_HELP


def _surface_variant(text: str, rng: random.Random) -> str:
    """Cheap variation in case and trailing punctuation, which chat users never keep consistent."""
    r = rng.random()
    if r < 0.25:
        text = text[:1].upper() + text[1:]
    elif r < 0.35:
        text = text.lower()
    if rng.random() < 0.2:
        text = text.rstrip("?!.") + rng.choice(["", "?", "!", "."])
    return text


def chat_turn(rng: random.Random) -> tuple[str, str]:
    paraphrases, reply = rng.choice(INTENTS)
    return _surface_variant(rng.choice(paraphrases), rng), reply


# ----------------------------------------------------------------------------------------------
# training stream

def swap_mix(max_swaps: int = TRAIN_MAX_SWAPS) -> dict[tuple[str, int], float]:
    """Sampling weights per (task, tier) for training: every length from 1 to `max_swaps` alike."""
    return {("swap", k): 1.0 for k in range(1, max_swaps + 1)}


def walk_mix(hops: float, max_swaps: int = TRAIN_MAX_SWAPS, max_hops: int = TRAIN_MAX_HOPS,
             stops: float = 0.0, max_walk: int = TRAIN_MAX_WALK, chase: float = 0.0,
             max_chase: int = TRAIN_MAX_CHASE) -> dict[tuple[str, int], float]:
    """`swap_mix` with a `hops` share of the problems being hops problems, every hop count alike, a
    `stops` share of stops problems, every walk length alike, and a `chase` share of chase problems, every
    depth alike; swaps get the rest."""
    if not (min(hops, stops, chase) >= 0 and hops + stops + chase <= 1):
        raise ValueError(f"the hops, stops and chase shares must be from 0 to 1 together, got {hops}, {stops} "
                         f"and {chase}")
    if chase and not 1 <= max_chase < CHASE_TREE:
        raise ValueError(f"chase chains of 1 to {CHASE_TREE - 1} links, got {max_chase}")
    mix = {k: (1 - hops - stops - chase) / max_swaps for k in swap_mix(max_swaps)}
    mix |= {("hops", h): hops / max_hops for h in range(1, max_hops + 1)}
    mix |= {("stops", w): stops / (max_walk - STOPS + 1) for w in range(STOPS, max_walk + 1)}
    mix |= {("chase", d): chase / max_chase for d in range(1, max_chase + 1)}
    return {k: w for k, w in mix.items() if w > 0}


DEFAULT_MIX = swap_mix()
CHAT_FRACTION = 0.08
OTHER_FRACTION = 0.03
SYSTEM_FRACTION = 0.1


def _turn_maker(rng: random.Random, mix: dict[tuple[str, int], float], chat_fraction: float,
                max_tier: Callable[[], int] | None, spacing: float = 0.0,
                identity: float = 0.0, curriculum_task: str = "swap") -> Callable[[], list[dict[str, str]]]:
    """One (user, assistant) exchange at a time: a chat turn, a question in another format, or a problem.

    A `spacing` share of the swap lists is respelled with random gaps (`respell_swaps`); the held-out
    split is decided on the single-spaced text, so no held-out list is trained in another spelling.
    An `identity` share has some entries replaced by no-op swaps (`with_identities`); such a list is
    never an evaluation question (those have none).
    """

    def turn() -> list[dict[str, str]]:
        u = rng.random()
        if u < chat_fraction:
            q, a = chat_turn(rng)
        elif u < chat_fraction + OTHER_FRACTION:
            q, a = other_question_turn(rng)
        else:
            cap = max_tier() if max_tier else None
            keys = [k for k in mix if cap is None or k[0] != curriculum_task or k[1] <= cap] or [
                min(mix, key=lambda k: k[1])]
            task, tier = rng.choices(keys, [mix[k] for k in keys])[0]
            p = sample_problem(task, tier, rng, heldout=False)
            if identity and rng.random() < identity:  # no draw at 0, as for spacing
                p = with_identities(p, rng)
            q, a = p.question, p.answer
            if spacing and rng.random() < spacing:  # no draw at 0: earlier stages' streams stay as they were
                q = respell_swaps(q, rng)
        return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]

    return turn


def train_conversations(
    seed: int, mix: dict[tuple[str, int], float] | None = None, chat_fraction: float = CHAT_FRACTION,
    max_tier: Callable[[], int] | None = None, spacing: float = 0.0, identity: float = 0.0,
    curriculum_task: str = "swap",
) -> Iterator[list[dict[str, str]]]:
    """An endless, seeded stream of training conversations (never containing a held-out question).

    Most conversations are one problem; some are greetings, some carry a system prompt, and some
    have two turns so the model sees that earlier turns do not change the answer. `max_tier`, read
    before every problem, is the curriculum: tiers of `curriculum_task` above it are not drawn for now.
    """
    rng = random.Random(f"train-{seed}")
    turn = _turn_maker(rng, mix or DEFAULT_MIX, chat_fraction, max_tier, spacing, identity, curriculum_task)
    while True:
        msgs: list[dict[str, str]] = []
        if rng.random() < SYSTEM_FRACTION:
            msgs.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for _ in range(2 if rng.random() < 0.1 else 1):
            msgs += turn()
        yield msgs


def train_chats(
    seed: int, fits: Callable[[list[dict[str, str]]], bool], mix: dict[tuple[str, int], float] | None = None,
    chat_fraction: float = CHAT_FRACTION, max_tier: Callable[[], int] | None = None, spacing: float = 0.0,
    identity: float = 0.0, curriculum_task: str = "swap",
) -> Iterator[list[dict[str, str]]]:
    """An endless, seeded stream of long chats: exchanges are added while `fits(messages)` holds.

    `fits` is the context check (the trainer renders the chat template and counts tokens), so every
    chat fills its row: problems and chat turns at every depth of the context, as a long chat in the
    app has them. The exchange that no longer fits opens the next chat, so nothing drawn is lost. A
    chat always has at least one exchange.
    """
    rng = random.Random(f"chats-{seed}")
    turn = _turn_maker(rng, mix or DEFAULT_MIX, chat_fraction, max_tier, spacing, identity, curriculum_task)
    pending = turn()
    while True:
        msgs: list[dict[str, str]] = []
        if rng.random() < SYSTEM_FRACTION:
            msgs.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        msgs += pending
        while True:
            pending = turn()
            if not fits(msgs + pending):
                break
            msgs += pending
        yield msgs


def tokenizer_corpus(seed: int = 0, n: int = 20000) -> Iterator[str]:
    """Text the tokenizer is trained on: every intent verbatim, then pieces of rendered conversations.

    Role names and the blank line after each header are yielded as they occur in the chat template,
    so that BPE gives them few tokens in proportion to how often the model sees them.
    """
    for paraphrases, reply in INTENTS:
        yield from paraphrases
        yield reply
    yield from SYSTEM_PROMPTS
    yield from ("assistant", "Huginn")
    stream = train_conversations(seed, swap_mix(FIRST_STAGES_MAX_SWAPS))  # the stream the tokenizer was built on
    for _ in range(n):
        for m in next(stream):
            yield "Huginn" if m["role"] == "assistant" else m["role"]
            yield "\n\n" + m["content"]
