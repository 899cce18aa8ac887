"""The shape of the engine: one step function owns the cache position and RoPE; the model does not import the
generation stack; generate is attached from outside."""

import ast
import re
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import engine
from engine.step import Cancelled, RowPlan, run_block

from .conftest import tiny_config

ENGINE = Path(engine.__file__).parent


def _relative_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}


def test_the_model_module_does_not_import_the_generation_stack():
    assert _relative_imports(ENGINE / "model.py") <= {"cache", "config", "step"}
    assert _relative_imports(ENGINE / "step.py") <= {"exits", "sampling"}


def test_only_the_step_function_moves_the_cache_position_or_reads_private_rope():
    for path in ENGINE.glob("*.py"):
        text = path.read_text()
        if path.name not in ("step.py", "cache.py"):
            assert not re.search(r"\.seq_len\s*=[^=]", text), path.name
        if path.name != "model.py":
            assert "._rope" not in text, path.name


def test_generate_is_attached_to_the_class_and_auto_loads_get_it(golden_dir):
    assert engine.HuginnForCausalLM.generate.__qualname__ == "ReferenceGenerateMixin.generate"
    model = AutoModelForCausalLM.from_pretrained(golden_dir)
    assert type(model).generate is engine.HuginnForCausalLM.generate


def test_a_block_advances_the_cache_once_and_a_cancelled_block_not_at_all():
    torch.manual_seed(0)
    model = engine.HuginnForCausalLM(tiny_config()).eval()
    cache = model.new_cache(1)
    ids = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        out = run_block(model, ids, [RowPlan(num_steps=3, seed=1)], cache)
        assert cache.seq_len == 5 and out.steps == [3] and out.core_iterations == 3
        assert out.logits.shape == (1, 1, model.config.vocab_size)
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(Cancelled):
            run_block(model, ids[:, :1], [RowPlan(num_steps=3, seed=1)], cache, cancel=cancel)
        assert cache.seq_len == 5
