"""Train the Huginn Studio demo model from scratch on CPU.

The model is the Huginn architecture (engine.model.HuginnForCausalLM) at a tiny size, trained with
the paper's recipe: every step draws its recurrence depth from the Poisson-lognormal sampler of the
config, backpropagates only through the last k core steps (truncated BPTT), and starts the latent
state from random noise. Loss is on the assistant's tokens only.

    python scripts/train_demo_model.py --steps 5000 --seed 0 --out assets/demo-model

Checkpoints (config.json, model.safetensors, tokenizer, generation_config.json) are written to
--out every --save-every steps, so a usable model exists long before the run ends. Progress, with
held-out accuracy at several depths, goes to stdout and --log.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # appended, so an installed or PYTHONPATH engine wins

import build_demo_tokenizer  # noqa: E402
import demo_tasks  # noqa: E402

IGNORE = -100
LOG_DEPTHS = (1, 2, 4, 8, 16, 32)
# The in-run evaluation's tiers, fixed: its initial states come from the training RNG, so the tiers
# are part of what reproduces a run (the first stages ran with these).
LOG_TIERS = (4, 8, 12, 16, 24)
# logged only by runs that train on them
LOG_OTHER_TIERS = {"hops": (1, 2, 4, 6, 8), "stops": (4, 6, 8), "chase": (1, 2, 3, 4)}


# ----------------------------------------------------------------------------------------------
# data


def load_tokenizer(out: Path, init_from: Path | None = None):
    """The demo tokenizer from `out`; if it is missing there, `init_from`'s (the weights' own) or a new build."""
    from transformers import AutoTokenizer

    if not (out / "tokenizer.json").exists():
        if init_from is not None:
            for name in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copyfile(init_from / name, out / name)
        else:
            build_demo_tokenizer.write_tokenizer(build_demo_tokenizer.train_tokenizer(), out)
    return AutoTokenizer.from_pretrained(str(out))


def encode_conversation(tok, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids through the chat template, and labels already shifted (the model does not shift).

    Only tokens the assistant writes (its content and <|end_turn|>) carry a label: the questions
    are random digits and would only add noise.
    """
    enc = tok.apply_chat_template(
        list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    labels = [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    return ids, labels


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Right padding is harmless under causal attention; the pads only carry ignored labels.
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
    return ids, labels


def batches(tok, seed: int, rows: int, row_len: int, max_tier: Callable[[], int] | None = None,
            mix: dict[tuple[str, int], float] | None = None,
            multi_turn: bool = False, spacing: float = 0.0, identity: float = 0.0,
            curriculum_task: str = "swap") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`rows` rows of at most `row_len` tokens per batch.

    By default whole short conversations are packed greedily into a row, as in the paper's pretraining
    (a document starts at every <|begin_text|>). With `multi_turn`, each row is one long chat that
    fills the row (`demo_tasks.train_chats`): its later questions sit deep in the context behind
    earlier puzzles and chat turns, as in a long chat in the app.
    """
    if multi_turn:
        def fits(messages: list[dict[str, str]]) -> bool:
            return len(tok.apply_chat_template(messages, tokenize=True, return_dict=False)) <= row_len

        chats = demo_tasks.train_chats(seed, fits, mix=mix, max_tier=max_tier, spacing=spacing,
                                       identity=identity, curriculum_task=curriculum_task)
        while True:
            yield collate([tuple(x[:row_len] for x in encode_conversation(tok, next(chats))) for _ in range(rows)],
                          tok.pad_token_id)
    stream = (encode_conversation(tok, m) for m in demo_tasks.train_conversations(
        seed, mix, max_tier=max_tier, spacing=spacing, identity=identity, curriculum_task=curriculum_task))
    pending = next(stream)
    while True:
        packed = []
        for _ in range(rows):
            ids: list[int] = []
            labels: list[int] = []
            while len(ids) + len(pending[0]) <= row_len or not ids:
                ids += pending[0][:row_len]
                labels += pending[1][:row_len]
                pending = next(stream)
            packed.append((ids, labels))
        yield collate(packed, tok.pad_token_id)


# ----------------------------------------------------------------------------------------------
# evaluation during training


@torch.no_grad()
def teacher_forced_accuracy(
    model, tok, problems: Sequence[demo_tasks.Problem], num_steps: int, batch_size: int = 128
) -> float:
    """Exact-match accuracy of greedy answers, computed in one forward pass per batch.

    If the argmax is right at every answer position given the right prefix, greedy decoding writes
    exactly the right answer (and <|end_turn|>), so this equals generation accuracy at this depth.
    """
    correct = 0
    for i in range(0, len(problems), batch_size):
        ids, labels = collate([encode_conversation(tok, p.messages()) for p in problems[i : i + batch_size]],
                              tok.pad_token_id)
        pred = model(ids, num_steps=num_steps).logits.argmax(-1)
        ok = (pred == labels) | (labels == IGNORE)
        correct += int(ok.all(-1).sum())
    return correct / max(len(problems), 1)


def depth_table(model, tok, per_tier: int, depths: Sequence[int] = LOG_DEPTHS,
                tasks: Sequence[str] = demo_tasks.TASKS) -> dict[str, dict[int, float]]:
    was_training = model.training
    model.eval()
    table = {}
    for task in tasks:
        for tier in LOG_OTHER_TIERS.get(task, LOG_TIERS):
            probs = demo_tasks.eval_problems(task, tier, per_tier)
            table[f"{task}/{tier}"] = {r: teacher_forced_accuracy(model, tok, probs, r) for r in depths}
    model.train(was_training)
    return table


# ----------------------------------------------------------------------------------------------
# model


def build_model(tok, args: argparse.Namespace):
    import engine  # noqa: F401  (registers huginn_raven with transformers)
    from engine.config import HuginnConfig
    from engine.model import HuginnForCausalLM

    vocab = len(tok)
    config = HuginnConfig(
        n_embd=args.n_embd,
        n_heads=args.n_heads,
        n_layers=args.prelude + args.core + args.coda,
        n_layers_in_prelude=args.prelude,
        n_layers_in_recurrent_block=args.core,
        n_layers_in_coda=args.coda,
        intermediate_size=args.intermediate,
        vocab_size=vocab,
        padding_multiple=vocab,
        block_size=args.block_size,
        mean_recurrence=args.mean_recurrence,
        mean_backprop_depth=args.backprop_depth,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return HuginnForCausalLM(config)


def save(model, tok, out: Path, meta: dict) -> None:
    from transformers import GenerationConfig

    model.save_pretrained(str(out))
    end_turn = tok.convert_tokens_to_ids(build_demo_tokenizer.END_TURN)
    # Like the official generation config, plus <|end_turn|> as a stop token (as in the authors'
    # vLLM config) because a chat answer ends there.
    GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.eos_token_id, end_turn],
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        use_cache=True,
    ).save_pretrained(str(out))
    (out / "training_state.json").write_text(json.dumps(meta, indent=2) + "\n")


def curriculum_cap(step: int, total: int, start: int, end: int, ramp: float) -> int:
    """Longest problem drawn at `step`: `start` swaps at first, rising linearly to `end` over `ramp` of the run.

    Short lists first, because a step that composes one swap with the state so far can only be learned
    where the state so far is already right.
    """
    if ramp <= 0:
        return end
    return min(end, start + int((end - start + 1) * step / (ramp * total)))


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "assets" / "demo-model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=None, help="stop early after this wall-clock time")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="stop after this many steps (the schedule still follows --steps); reproduces a stopped run")
    ap.add_argument("--batch-size", type=int, default=16, help="rows per step")
    ap.add_argument("--row-len", type=int, default=128, help="tokens per packed row")
    ap.add_argument("--multi-turn", action="store_true",
                    help="each row is one long chat of puzzles and chat turns filling --row-len (else packed "
                         "short conversations)")
    ap.add_argument("--max-swaps", type=int, default=demo_tasks.TRAIN_MAX_SWAPS,
                    help="longest swap list trained on (the first stages of the shipped model: "
                         f"{demo_tasks.FIRST_STAGES_MAX_SWAPS})")
    ap.add_argument("--spacing", type=float, default=0.0,
                    help="share of swap lists respelled with random gaps of one or two tokens between the swaps")
    ap.add_argument("--identity", type=float, default=0.0,
                    help="share of swap lists with about a quarter of their entries replaced by no-op swaps (11, 22, 33)")
    ap.add_argument("--hops", type=float, default=0.0,
                    help="share of the problems that are hops problems (a walk written in the answer, "
                         "demo_tasks.make_hops)")
    ap.add_argument("--max-hops", type=int, default=demo_tasks.TRAIN_MAX_HOPS,
                    help="most hops per answer value trained on")
    ap.add_argument("--stops", type=float, default=0.0,
                    help="share of the problems that are stops problems (a walk to each of four stops in turn, "
                         "demo_tasks.make_stops)")
    ap.add_argument("--max-walk", type=int, default=demo_tasks.TRAIN_MAX_WALK,
                    help="longest stops walk trained on (links from the start to the last stop)")
    ap.add_argument("--chase", type=float, default=0.0,
                    help="share of the problems that are chase problems (walks to self-linked roots, "
                         "demo_tasks.make_chase)")
    ap.add_argument("--max-chase", type=int, default=demo_tasks.TRAIN_MAX_CHASE,
                    help="deepest chase chain trained on")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=256)
    ap.add_argument("--prelude", type=int, default=1)
    ap.add_argument("--core", type=int, default=1)
    ap.add_argument("--coda", type=int, default=1)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--mean-recurrence", type=int, default=16)
    ap.add_argument("--backprop-depth", type=int, default=4)
    ap.add_argument("--fixed-depth", type=int, default=None,
                    help="train at exactly this many core steps, all with gradients (the r=1 baseline: 1)")
    ap.add_argument("--curriculum-start", type=int, default=2, help="longest swap list at step 0")
    ap.add_argument("--curriculum-ramp", type=float, default=0.5,
                    help="fraction of --steps over which the longest list grows to the longest trained tier")
    ap.add_argument("--gate", type=float, default=None,
                    help="instead of the linear ramp, lengthen the lists by one swap whenever the longest ones are "
                         "solved this often (checked every 50 steps at --mean-recurrence on 64 training problems)")
    ap.add_argument("--curriculum-task", choices=demo_tasks.TIERS, default="swap",
                    help="the task whose tiers the curriculum (--curriculum-start, --gate) lengthens; the other "
                         "tasks draw all their tiers throughout")
    ap.add_argument("--init-from", type=Path, default=None, help="start from this checkpoint's weights")
    ap.add_argument("--threads", type=int, default=1, help="torch threads; 1 leaves the other core free")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-per-tier", type=int, default=32)
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--log", type=Path, default=None, help="also append JSON lines here")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(args.out, args.init_from)
    if args.init_from:
        from engine.model import HuginnForCausalLM

        model = HuginnForCausalLM.from_pretrained(str(args.init_from))
        model.config.mean_recurrence, model.config.mean_backprop_depth = args.mean_recurrence, args.backprop_depth
    else:
        model = build_model(tok, args)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    mix = (demo_tasks.walk_mix(args.hops, args.max_swaps, args.max_hops, args.stops, args.max_walk, args.chase,
                               args.max_chase)
           if args.hops or args.stops or args.chase else demo_tasks.swap_mix(args.max_swaps))
    log_tasks = ("swap",) + tuple(t for t in ("hops", "stops", "chase") if getattr(args, t))
    longest = {"hops": args.max_hops, "stops": args.max_walk, "chase": args.max_chase}.get(
        args.curriculum_task, args.max_swaps)
    progress = {"step": 0, "cap": args.curriculum_start}

    def max_tier() -> int:
        if args.gate:
            return progress["cap"]
        return curriculum_cap(progress["step"], args.steps, args.curriculum_start, longest, args.curriculum_ramp)

    data = batches(tok, args.seed, args.batch_size, args.row_len, max_tier, mix, args.multi_turn, args.spacing,
                   args.identity, args.curriculum_task)
    num_steps = None if args.fixed_depth is None else (0, args.fixed_depth)
    logf = args.log.open("a") if args.log else None

    def log(rec: dict) -> None:
        line = json.dumps(rec)
        print(line, flush=True)
        if logf:
            logf.write(line + "\n")
            logf.flush()

    log({"event": "start", "params": n_params, **{k: str(v) for k, v in vars(args).items()}})
    t0 = time.time()
    step, loss_sum, loss_n = 0, 0.0, 0
    while step < args.steps:
        if args.minutes is not None and time.time() - t0 > 60 * args.minutes:
            break
        if args.stop_after is not None and step >= args.stop_after:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        progress["step"] = step
        ids, labels = next(data)
        # num_steps=None in training mode: the model draws (n no-grad, k grad) steps from its
        # Poisson-lognormal sampler and starts from a random state, as in the paper.
        loss = model(ids, labels=labels, num_steps=num_steps).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
        if step % args.log_every == 0:
            log({"step": step, "loss": round(loss_sum / loss_n, 4), "lr": opt.param_groups[0]["lr"],
                 "min": round((time.time() - t0) / 60, 2)})
            loss_sum, loss_n = 0.0, 0
        # The evaluation draws initial states from the global RNG that training uses too, so
        # --eval-every and --eval-per-tier are part of what reproduces a run.
        if step % args.eval_every == 0 or step == args.steps:
            depths = LOG_DEPTHS if args.fixed_depth is None else (args.fixed_depth,)
            log({"step": step, "depth_acc": depth_table(model, tok, args.eval_per_tier, depths, log_tasks),
                 "min": round((time.time() - t0) / 60, 2)})
        if args.gate and step % 50 == 0 and progress["cap"] < longest:
            rng = random.Random(f"gate-{args.seed}-{step}")
            probe = [demo_tasks.sample_problem(args.curriculum_task, progress["cap"], rng, heldout=False)
                     for _ in range(64)]
            model.eval()
            acc = teacher_forced_accuracy(model, tok, probe, args.mean_recurrence)
            model.train()
            if acc >= args.gate:
                progress["cap"] += 1
            log({"step": step, "gate_acc": round(acc, 3), "cap": progress["cap"]})
        if step % args.save_every == 0:
            save(model, tok, args.out, {"step": step, "seed": args.seed, "minutes": (time.time() - t0) / 60})
    save(model, tok, args.out, {"step": step, "seed": args.seed, "minutes": (time.time() - t0) / 60,
                                "args": {k: str(v) for k, v in vars(args).items()}})
    log({"event": "done", "step": step, "min": round((time.time() - t0) / 60, 2)})


if __name__ == "__main__":
    main()
