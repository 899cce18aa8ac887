"""``python run.py``: parse arguments, load the model, open the store, build the page, serve it."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

import engine

from . import hosted
from .gpu import import_spaces, zero_gpu_requested
from .handlers import AppConfig, ModelSlot, Studio, describe_source
from .remote import RemoteEngine, add_arguments
from .store import Store, StoreError, default_db_path

STOP_GRACE_S = 1.0  # Ctrl-C stops the app within 2 s
SHARE_NOTE = ("--share: opening a temporary public gradio.live link. It needs internet access from this machine (to "
              "reach gradio.live) and lasts while the app runs, at most a week; anyone with the link can use the app"
              ", so consider --auth and --hosted.")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run.py", description="Huginn Studio: chat and depth playground for Huginn.")
    p.add_argument("--model", default="auto",
                   help="'auto' (the official model on a GPU with room for it, from the cache or downloaded, else "
                        "the bundled demo model), a local folder or a hub id")
    p.add_argument("--quantization", default="auto", choices=engine.QUANTIZATIONS,
                   help="weight format; 'auto' (default) plans memory and picks the first of bf16 / nf4 that fits "
                        "(on the CPU fp32 or bf16); 'none' is unquantized in the default dtype")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory the model may use (e.g. 6GB); default: what is free on the GPU, or host RAM")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--compile", action="store_true",
                   help="compile decoding with torch.compile: static KV caches and each recurrence as one CUDA graph "
                        "on a GPU (the first answer waits for the compiler); falls back to eager if it fails")
    p.add_argument("--quantized-cache", default=None, metavar="DIR",
                   help="folder that keeps int8 / nf4 weights after their first quantization, so later starts skip "
                        f"it (default: ${engine.QUANTIZED_CACHE_ENV}, else your user cache folder)")
    p.add_argument("--no-quantized-cache", action="store_true",
                   help="quantize int8 / nf4 weights on every load and keep nothing on disk")
    p.add_argument("--db", default=None,
                   help=f"conversation database (default: {default_db_path()}, or {hosted.DB_FILE} in --data-dir)")
    p.add_argument("--data-dir", default=None,
                   help=f"folder on local disk for the database and the owner-key secret (default: "
                        f"${hosted.DATA_DIR_ENV}, else {hosted.SPACE_DATA_DIR} on a Space, else your user data "
                        f"folder)")
    # A Space's proxy reaches the app from outside its container, so there it listens on all interfaces.
    default_host = os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if hosted.on_space() else "127.0.0.1")
    p.add_argument("--host", default=default_host,
                   help="address to listen on (0.0.0.0 for the local network; the default on a Space)")
    p.add_argument("--port", type=port, default=os.environ.get("GRADIO_SERVER_PORT", "7860"),
                   help="port to listen on, 1 to 65535 (default: $GRADIO_SERVER_PORT, else 7860)")
    p.add_argument("--hosted", action="store_true",
                   help="run for many visitors (automatic on a Hugging Face Space): each browser has its own "
                        "conversations, public caps on depth, tokens, prompt length and queue, no model loading")
    p.add_argument("--auth", default=os.environ.get(hosted.AUTH_ENV) or None, metavar="USER:PASSWORD",
                   help=f"require this login (or set ${hosted.AUTH_ENV}); for a small private instance")
    p.add_argument("--share", action="store_true",
                   help="also open a temporary public gradio.live link (needs internet access)")
    add_arguments(p)  # --engine-url, --engine-key
    return p.parse_args(argv)


def port(value: str) -> int:
    """A TCP port; checked here so a bad one is refused before the model loads."""
    number = int(value) if value.strip().isdigit() else 0
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{value[:20]!r} is not a port (a whole number from 1 to 65535)")
    return number


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """'user:password' -> (user, password); the password may contain colons."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError(f"--auth / ${hosted.AUTH_ENV} must look like user:password")
    return user, password


def quantized_cache_setting(args: argparse.Namespace) -> bool | str:
    """engine.load's ``quantized_cache`` from the flags; models loaded later from the model panel follow it too
    (through the environment variable engine.load reads by default)."""
    if args.no_quantized_cache:
        os.environ[engine.QUANTIZED_CACHE_ENV] = "off"
        return False
    if args.quantized_cache:
        os.environ[engine.QUANTIZED_CACHE_ENV] = str(Path(args.quantized_cache).expanduser())
        return args.quantized_cache
    return True


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes
    args = parse_args(argv)
    space = hosted.on_space()
    is_hosted = args.hosted or space
    try:
        auth = parse_auth(args.auth)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if zero_gpu_requested():
        import_spaces()  # ZeroGPU patches torch's CUDA entry points; that has to happen before the model loads
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else hosted.default_data_dir(space)
    db = args.db or (data_dir / hosted.DB_FILE if (is_hosted or args.data_dir) else None)
    try:  # before the model loads: a bad secret should not wait for it
        owners = hosted.OwnerKeys.from_data_dir(data_dir) if is_hosted else None
    except (ValueError, OSError) as err:
        where = f"${hosted.SECRET_ENV}" if os.environ.get(hosted.SECRET_ENV) else data_dir / hosted.SECRET_FILE
        print(f"error: {where}: {err}", file=sys.stderr)
        return 2
    from .openai_api import add_routes
    from .ui import build_demo, launch  # gradio is slow to import; --help should not wait for it

    remote = None
    try:
        if args.engine_url:  # the model runs on another server (app.remote)
            remote = RemoteEngine(args.engine_url, args.engine_key, args.model)
        else:
            cache = quantized_cache_setting(args)
            model, tokenizer, report = engine.load(args.model, quantization=args.quantization, device=args.device,
                                                   max_memory=args.max_memory, compile=args.compile,
                                                   quantized_cache=cache)
    except engine.LoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Stopped while loading the model.", file=sys.stderr)
        return 130
    try:
        store = Store(db)
    except (StoreError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    slot = remote or ModelSlot(model, tokenizer, describe_source(args.model, report.source), compile=args.compile,
                               report=report)
    if store.recovered_from:
        slot.note += f" The conversation database was damaged and moved aside to {store.recovered_from}."
    print(slot.note)
    plan = None if remote else slot.info().plan
    if plan:
        print(f"Memory plan: {plan}")
    if args.compile and not remote:
        print(f"Compiled decoding (torch.compile, mode {model.compile_report.mode}): the first answer waits for the "
              "compiler.")
    weights_cache = None if remote else report.weights.cache_note
    if weights_cache:
        print(f"{weights_cache[:1].upper()}{weights_cache[1:]} (--no-quantized-cache turns this off)")
    config = hosted.hosted_config() if is_hosted else AppConfig()
    config = remote.app_config(config) if remote else config
    if is_hosted:
        print(f"Hosted mode{' (Hugging Face Space)' if space else ''}: conversations in {store.path}, one owner "
              f"per browser. {hosted.limits_text(config.limits, config.queue_size)}")
    share = args.share and not space  # a Space is already public; Gradio only warns there
    if share:
        print(SHARE_NOTE, flush=True)
    studio = Studio(slot, store, config, owners=owners, gpu=remote)
    demo = build_demo(studio)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before listening: a Ctrl-C right after start-up is caught too
        signal.signal(sig, lambda *_: stop.set())
    try:
        _, url, share_url = launch(demo, server_name=args.host, server_port=args.port, share=share, auth=auth,
                                   auth_message="Huginn Studio: log in" if auth else None,
                                   max_file_size="10mb" if is_hosted else None, prevent_thread_lock=True, quiet=True)
    except (OSError, ValueError) as err:  # the port in use, a host name that does not resolve
        reason = str(err).split(". ")[0]  # Gradio's advice after it names launch()'s parameters
        print(f"error: cannot listen on --host {args.host} --port {args.port}: {reason}", file=sys.stderr)
        store.close()
        return 2
    add_routes(demo.app, studio, auth)  # the OpenAI-compatible API, on the page's server and port
    print(f"Huginn Studio is running at {url}" + (f" (public link: {share_url})" if share_url else ""), flush=True)
    wait_for_stop(stop)
    print("Stopping Huginn Studio.", flush=True)
    store.close()
    closing = threading.Thread(target=demo.close, daemon=True)
    closing.start()
    closing.join(STOP_GRACE_S)
    sys.stdout.flush()
    sys.stderr.flush()
    # Gradio's server and queue threads can take seconds to wind down after Ctrl-C; the conversations are already
    # committed and closed, so nothing is lost by not waiting for them.
    os._exit(0)


def wait_for_stop(stop: threading.Event) -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM sets ``stop``; waking up now and then lets the handler run."""
    while not stop.wait(0.5):
        pass
