"""``python run.py``: parse arguments, load the model, open the store, build the page, serve it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

import engine

from .handlers import AppConfig, ModelSlot, Studio, describe_source
from .store import Store, StoreError, default_db_path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run.py", description="Huginn Studio: chat and depth playground for Huginn.")
    p.add_argument("--model", default="auto",
                   help="'auto' (the official model on a suitable GPU with the weights cached or reachable, else "
                        "the bundled demo model), a local folder or a hub id")
    p.add_argument("--quantization", default="none", choices=engine.QUANTIZATIONS)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--db", default=None, help=f"conversation database (default: {default_db_path()})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for the local network)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes
    args = parse_args(argv)
    from .ui import build_demo, launch  # gradio is slow to import; --help should not wait for it

    try:
        model, tokenizer = engine.load(args.model, quantization=args.quantization, device=args.device)
    except engine.LoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        store = Store(args.db)
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    slot = ModelSlot(model, tokenizer, describe_source(args.model, engine.model_info(model).name))
    if store.recovered_from:
        slot.note += f" The conversation database was damaged and moved aside to {store.recovered_from}."
    print(slot.note)
    demo = build_demo(Studio(slot, store, AppConfig()))
    _, url, share_url = launch(demo, server_name=args.host, server_port=args.port, share=args.share,
                               prevent_thread_lock=True, quiet=True)
    print(f"Huginn Studio is running at {url}" + (f" (public link: {share_url})" if share_url else ""), flush=True)
    try:
        demo.block_thread()
    finally:
        store.close()
    return 0
