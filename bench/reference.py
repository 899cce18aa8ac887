"""Run the authors' code (a local checkout of seal-rg/recurrent-pretraining) beside ours, on the same weights.

The repository never contains their code: ``--reference-dir`` points at a checkout, and this module imports
``recpre/raven_config_minimal.py`` and ``recpre/raven_modeling_minimal.py`` from it as a private package (their
``recpre/__init__.py`` pulls in training code we do not need). Their file targets transformers 4.x; the four
adaptations it needs under transformers 5 (documented in the project's Huginn spec, section 9) are applied to the
imported classes here, never to their file.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.utils import ModelOutput

_PACKAGE = "huginn_reference"


@contextlib.contextmanager
def _no_auto_registration():
    """Their module registers model_type huginn_raven with the Auto classes at import; ours must keep it."""
    saved = [(cls, cls.register) for cls in (AutoConfig, AutoModel, AutoModelForCausalLM)]
    for cls, _ in saved:
        cls.register = lambda *args, **kwargs: None
    try:
        yield
    finally:
        for cls, register in saved:
            cls.register = register


def import_reference(reference_dir: str | Path) -> types.ModuleType:
    folder = Path(reference_dir) / "recpre"
    if not (folder / "raven_modeling_minimal.py").is_file():
        raise SystemExit(f"--reference-dir {reference_dir}: no recpre/raven_modeling_minimal.py there; pass a "
                         "checkout of github.com/seal-rg/recurrent-pretraining")
    if f"{_PACKAGE}.raven_modeling_minimal" in sys.modules:
        return sys.modules[f"{_PACKAGE}.raven_modeling_minimal"]
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [str(folder)]
    sys.modules[_PACKAGE] = package
    with _no_auto_registration():
        module = importlib.import_module(f"{_PACKAGE}.raven_modeling_minimal")
    _adapt_to_transformers_5(module)
    return module


def _adapt_to_transformers_5(module: types.ModuleType) -> None:
    model_cls = module.RavenForCausalLM
    # 1. transformers 5 wants the tied-weights map as a dict.
    model_cls._tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    # 2. transformers 5's ModelOutput renames a `past_key_values` field to `cache`.
    @dataclass
    class CausalLMOutputRecurrentLatents(ModelOutput):
        loss: Optional[torch.Tensor] = None
        log_ppl: Optional[torch.Tensor] = None
        logits: Optional[torch.Tensor] = None
        cache: Optional[object] = None
        latent_states: Optional[torch.Tensor] = None
        hidden_states: Optional[torch.Tensor] = None
        attention_maps: Optional[dict] = None
        stats: Optional[dict] = None

    module.CausalLMOutputRecurrentLatents = CausalLMOutputRecurrentLatents

    # 3. removed from GenerationMixin in transformers 5.
    def _get_initial_cache_position(self, seq_length, device, model_kwargs):
        model_kwargs["cache_position"] = torch.arange(seq_length, device=device)
        return model_kwargs

    # 4. the 4.x behaviour their loops rely on: keep the cache and advance cache_position.
    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        cache = getattr(outputs, "cache", None)
        if cache is not None:
            model_kwargs["past_key_values"] = cache
        position = model_kwargs.get("cache_position")
        if position is not None:
            model_kwargs["cache_position"] = position[-1:] + 1
        return model_kwargs

    model_cls._get_initial_cache_position = _get_initial_cache_position
    model_cls._update_model_kwargs_for_generation = _update_model_kwargs_for_generation


def reference_model(module: types.ModuleType, ours) -> torch.nn.Module:
    """Their model with our model's config and weights."""
    config_module = sys.modules[f"{_PACKAGE}.raven_config_minimal"]
    fields = {k: v for k, v in ours.config.to_dict().items()
              if k not in ("architectures", "model_type", "transformers_version", "auto_map", "dtype", "torch_dtype")}
    config = config_module.RavenConfig(**{k: v for k, v in fields.items() if not k.startswith("_")})
    with torch.device("meta"):
        theirs = module.RavenForCausalLM(config)
    theirs.load_state_dict(ours.state_dict(), assign=True, strict=False)
    theirs.lm_head.weight = theirs.transformer.wte.weight
    theirs.freqs_cis = ours.freqs_cis.clone()
    return theirs.to(ours.transformer.wte.weight.dtype).eval()


def golden_pair(doc: str) -> tuple[types.ModuleType, torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """For the scripts that make goldens from the authors' code (``--reference-dir``): their module, our model of
    the reference goldens' tiny checkpoint, theirs with the same weights, and the goldens' prompt."""
    import argparse
    import json

    from transformers import AutoModelForCausalLM

    import engine  # noqa: F401  (registers the huginn_raven model type with transformers)

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--reference-dir", required=True, help="a checkout of seal-rg/recurrent-pretraining")
    args = parser.parse_args()
    module = import_reference(args.reference_dir)
    golden_dir = Path(__file__).resolve().parent.parent.parent / "shared" / "reference-goldens" / "tiny-1-2-1"
    model = AutoModelForCausalLM.from_pretrained(golden_dir).eval()
    prompt = torch.tensor([json.loads((golden_dir / "golden.json").read_text())["prompt"]])
    return module, model, reference_model(module, model), prompt
