"""Seeded task generators for the Huginn Studio demo model.

Everything the demo model ever sees comes from here: arithmetic and variable-tracking problems in
difficulty tiers, plus a little plain conversation so that chatting with the model is coherent.
Problems are split into train and held-out by a hash of the question text, so the split is exact
and does not depend on the seed or the order in which problems were generated.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

# Operands are zero-padded to a fixed width so that digit i of both operands and of the answer
# always sit at the same relative distance: a tiny model then learns alignment for free and can
# spend its capacity (and its recurrent depth) on the carries.
ADD_WIDTH = 8
HELDOUT_MODULO = 20  # 1 in 20 questions is held out for evaluation

TASKS = ("add", "vars")
TIERS: dict[str, tuple[int, ...]] = {"add": (1, 2, 3, 4), "vars": (1, 2, 3, 4)}
TIER_NAMES: dict[str, dict[int, str]] = {
    "add": {
        1: "up to 3 significant digits",
        2: "5 significant digits",
        3: "8 digits, random",
        4: "8 digits, carry chain of 4-7 places",
    },
    "vars": {1: "1 hop", 2: "2 hops", 3: "3 hops", 4: "4 hops"},
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
    """True for questions reserved for evaluation; training never emits them."""
    digest = hashlib.sha256(question.strip().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HELDOUT_MODULO == 0


# ----------------------------------------------------------------------------------------------
# addition


def _pad(n: int, width: int) -> str:
    return str(n).zfill(width)


def add_question(a: int, b: int) -> str:
    return f"What is {_pad(a, ADD_WIDTH)}+{_pad(b, ADD_WIDTH)}?"


def add_answer(a: int, b: int) -> str:
    return _pad(a + b, ADD_WIDTH + 1)


def carry_chain_length(a: int, b: int) -> int:
    """Longest run of places whose digit sum is 9 and that receive a carry.

    Such a run is what makes addition serial: the top digit of the run cannot be written
    until the carry has been followed all the way up from below it.
    """
    longest, run, carry = 0, 0, 0
    while a or b:
        s = a % 10 + b % 10
        if s == 9 and carry:
            run += 1
            longest = max(longest, run)
        else:
            run = 0
        carry = 1 if s + carry >= 10 else 0
        a, b = a // 10, b // 10
    return longest


def _chained_operands(rng: random.Random, chain: int) -> tuple[int, int]:
    """Two ADD_WIDTH-digit numbers with a propagating run of `chain` places fed by a carry."""
    start = rng.randrange(0, ADD_WIDTH - chain)  # place of the generating digit pair
    da, db = [], []
    for place in range(ADD_WIDTH):
        if place == start:
            x = rng.randrange(1, 10)
            y = rng.randrange(10 - x, 10)  # x + y >= 10 generates a carry
        elif start < place <= start + chain:
            x = rng.randrange(0, 10)
            y = 9 - x  # sum 9 propagates the carry
        else:
            x, y = rng.randrange(10), rng.randrange(10)
        da.append(x)
        db.append(y)
    a = sum(d * 10**p for p, d in enumerate(da))
    b = sum(d * 10**p for p, d in enumerate(db))
    return a, b


def make_add(tier: int, rng: random.Random) -> Problem:
    if tier == 1:
        a, b = rng.randrange(1000), rng.randrange(1000)
    elif tier == 2:
        a, b = rng.randrange(10**5), rng.randrange(10**5)
    elif tier == 3:
        a, b = rng.randrange(10**ADD_WIDTH), rng.randrange(10**ADD_WIDTH)
    elif tier == 4:
        a, b = _chained_operands(rng, rng.randint(4, 7))
    else:
        raise ValueError(f"no add tier {tier}")
    return Problem("add", tier, add_question(a, b), add_answer(a, b))


# ----------------------------------------------------------------------------------------------
# variable tracking

_VAR_NAMES = "abcdefghijkmnpqrstuvwxyz"


def make_vars(tier: int, rng: random.Random, chains: int = 2) -> Problem:
    """Interleaved assignment chains; the question asks for the end of one chain.

    `tier` is the number of hops from the queried variable back to its literal value.
    """
    if tier not in TIERS["vars"]:
        raise ValueError(f"no vars tier {tier}")
    names = rng.sample(_VAR_NAMES, chains * (tier + 1))
    values = rng.sample(range(10), chains)
    per_chain = []
    for c in range(chains):
        vs = names[c * (tier + 1) : (c + 1) * (tier + 1)]
        stmts = [f"{vs[0]}={values[c]}"] + [f"{vs[i]}={vs[i - 1]}" for i in range(1, len(vs))]
        per_chain.append(stmts)
    # Interleave chains randomly while keeping each chain in order.
    order = [c for c in range(chains) for _ in range(tier + 1)]
    rng.shuffle(order)
    cursors = [0] * chains
    stmts = []
    for c in order:
        stmts.append(per_chain[c][cursors[c]])
        cursors[c] += 1
    target = rng.randrange(chains)
    query = names[target * (tier + 1) + tier]
    question = "; ".join(stmts) + f". What is {query}?"
    return Problem("vars", tier, question, str(values[target]))


_MAKERS = {"add": make_add, "vars": make_vars}


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
    "Ask me to add two numbers written with exactly 8 digits each, zero-padded, like "
    "What is 00004821+00003390? I answer with 9 digits. I can also track variables: "
    "a=3; k=a; b=7; q=k. What is q?"
)

# (paraphrases of the user's turn, the reply). Replies are short and fixed so that a tiny model
# can reproduce them exactly.
INTENTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("hi", "hello", "hey", "hi there", "hello there", "hey there", "good morning", "good evening", "howdy",
         "Hi!", "Hello!", "Hey!", "hello huginn", "hi huginn", "greetings"),
        "Hello! I am the Huginn Studio demo model. Ask me an addition or a variable puzzle.",
    ),
    (
        ("what can you do?", "what can you do", "what are you good at?", "help", "what do you know?",
         "what tasks can you solve?", "what should I ask you?", "How can you help me?", "what can I ask?"),
        "I am a tiny recurrent-depth model. I can add two 8-digit numbers and follow chains of variables. "
        + FORMAT_HELP,
    ),
    (
        ("how do I use the depth slider?", "what does the depth slider do?", "what is the depth slider?",
         "how does the slider work?", "what does num_steps do?", "what is depth?", "how many steps should I use?",
         "what happens if I use more steps?"),
        "The depth slider sets how many times I repeat my core block for each token. More steps means more "
        "thinking: hard sums with long carry chains need about 16 to 32 steps, easy ones need only a few.",
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
        ("how do I ask a math question?", "how should I write numbers?", "what format do you need?",
         "can you do math?", "can you add?", "how do I ask you to add?"),
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


def unpadded_sum_turn(rng: random.Random) -> tuple[str, str]:
    """A sum written the natural way, answered with how to write it.

    The model only adds zero-padded 10-digit numbers; rather than guessing at "12+35" it explains
    the format, which is the coherent thing for a person trying it out to see.
    """
    a, b = rng.randrange(10 ** rng.randint(1, 5)), rng.randrange(10 ** rng.randint(1, 5))
    form = rng.choice(("What is {}+{}?", "what is {} + {}?", "{}+{}", "{} + {} = ?", "What's {}+{}?"))
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

# Sampling weights per (task, tier) for training; the hard tiers get most of the budget because
# they are where depth has to be learned.
DEFAULT_MIX: dict[tuple[str, int], float] = {
    ("add", 1): 0.15,
    ("add", 2): 0.20,
    ("add", 3): 0.30,
    ("add", 4): 0.35,
}
CHAT_FRACTION = 0.10
UNPADDED_FRACTION = 0.03


def train_conversations(
    seed: int, mix: dict[tuple[str, int], float] | None = None, chat_fraction: float = CHAT_FRACTION
) -> Iterator[list[dict[str, str]]]:
    """An endless, seeded stream of training conversations (never containing a held-out question).

    Most conversations are one problem; some are greetings, some carry a system prompt, and some
    have two turns so the model sees that earlier turns do not change the answer.
    """
    rng = random.Random(f"train-{seed}")
    mix = mix or DEFAULT_MIX
    keys = list(mix)
    weights = [mix[k] for k in keys]

    def one_turn() -> tuple[str, str]:
        u = rng.random()
        if u < chat_fraction:
            return chat_turn(rng)
        if u < chat_fraction + UNPADDED_FRACTION:
            return unpadded_sum_turn(rng)
        task, tier = rng.choices(keys, weights)[0]
        p = sample_problem(task, tier, rng, heldout=False)
        return p.question, p.answer

    while True:
        msgs: list[dict[str, str]] = []
        if rng.random() < 0.1:
            msgs.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for _ in range(2 if rng.random() < 0.1 else 1):
            q, a = one_turn()
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
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
    stream = train_conversations(seed, mix={(t, tier): 1.0 for t in TASKS for tier in TIERS[t]})
    for _ in range(n):
        for m in next(stream):
            yield "Huginn" if m["role"] == "assistant" else m["role"]
            yield "\n\n" + m["content"]
