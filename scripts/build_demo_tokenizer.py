"""Train the demo model's tokenizer and write it into assets/demo-model/.

A byte-level BPE like Huginn-0125's, but a few hundred tokens big and trained on the demo tasks'
own text. Digits are always single tokens (arithmetic is done digit by digit), and Huginn's special
tokens sit at the end of the vocabulary as in the official tokenizer. The chat template renders the
same strings as the official one, so the app treats both models alike.

    python scripts/build_demo_tokenizer.py [--out assets/demo-model] [--vocab-size 512]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_tasks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "assets" / "demo-model"

BOS, EOS = "<|begin_text|>", "<|end_text|>"
BEGIN_HEADER, END_HEADER, END_TURN, PAD = "<|begin_header|>", "<|end_header|>", "<|end_turn|>", "<|pad|>"
# Same order as ids 65504.. in the official vocabulary.
SPECIAL_TOKENS = (BOS, EOS, BEGIN_HEADER, END_HEADER, END_TURN, PAD)

# Digits one by one, newlines, words with an optional leading space or symbol, single punctuation.
SPLIT_PATTERN = r"\n+|\p{N}|[^\r\n\p{L}\p{N}]?\p{L}+|[\p{P}\p{S}]|\s+"

ASSISTANT_HEADER = BEGIN_HEADER + "Huginn" + END_HEADER + "\n\n"
# Written for this project; renders exactly what the official Huginn-0125 template renders:
# BOS before the first message, every role verbatim except assistant -> Huginn, trimmed content,
# <|end_turn|> after each message, then either the assistant header or <|end_text|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first %}{{ bos_token }}{% endif %}"
    "{% if message['role'] in ('assistant', 'Huginn') %}"
    "{{ '" + ASSISTANT_HEADER + "' }}"
    "{% generation %}{{ message['content'] | trim }}{{ '" + END_TURN + "' }}{% endgeneration %}"
    "{% else %}"
    "{{ '" + BEGIN_HEADER + "' ~ message['role'] ~ '" + END_HEADER + "\n\n' }}"
    "{{ message['content'] | trim }}{{ '" + END_TURN + "' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT_HEADER + "' }}{% else %}{{ '" + EOS + "' }}{% endif %}"
)


def train_tokenizer(vocab_size: int = 512, seed: int = 0) -> Tokenizer:
    """A byte-level BPE with `vocab_size` ids in total, the special tokens being the last ones."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(demo_tasks.tokenizer_corpus(seed), trainer=trainer)
    # Added after training so that they get the highest ids, as in the official vocabulary.
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    bos_id = tok.token_to_id(BOS)
    # Like the official post-processor: prepend BOS only, never append EOS.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, bos_id)]
    )
    return tok


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}


def write_tokenizer(tok: Tokenizer, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        # transformers 5 ignores clean-up for BPE tokenizers and warns when it is set.
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(str(out))
    # transformers 5 keeps the special tokens in tokenizer_config.json; no separate special_tokens_map.json.
    (out / "special_tokens_map.json").unlink(missing_ok=True)
    # The chat template lives inside tokenizer_config.json like the official model's, not in a
    # separate chat_template.jinja.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # the official name; transformers 5 maps it
    cfg.pop("backend", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    (out / "chat_template.jinja").unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--vocab-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tok = train_tokenizer(args.vocab_size, args.seed)
    write_tokenizer(tok, args.out)
    print(f"wrote {args.out}: {tok.get_vocab_size()} tokens, specials {special_token_ids(tok)}")


if __name__ == "__main__":
    main()
