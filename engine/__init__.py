"""Huginn Studio's inference engine: the recurrent-depth model, its cache, loading and generation.

Importing ``engine`` registers the model type ``huginn_raven`` with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained`` loads Huginn checkpoints with these classes and no remote code.
Knows nothing of Gradio or SQLite.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .config import MODEL_TYPE, HuginnConfig
from .model import HuginnForCausalLM, HuginnOutput

AutoConfig.register(MODEL_TYPE, HuginnConfig, exist_ok=True)
AutoModelForCausalLM.register(HuginnConfig, HuginnForCausalLM, exist_ok=True)

__all__ = ["HuginnConfig", "HuginnForCausalLM", "HuginnOutput"]
