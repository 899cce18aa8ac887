"""Huginn Studio's inference engine: the recurrent-depth model, its cache, loading and generation.

Importing ``engine`` registers the model type ``huginn_raven`` with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained`` loads Huginn checkpoints with these classes and no remote code.
Knows nothing of Gradio or SQLite.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .cache import CacheStrategy, RecurrentCache
from .compat import attach_generate
from .config import MODEL_TYPE, HuginnConfig
from .exits import CRITERIA, DEFAULT_THRESHOLDS
from .generate import MAX_HISTORY_MESSAGES, CompareResult, PromptError, Summary, TokenEvent, compare, stream
from .load import (DEMO_MODEL, OFFICIAL_MODEL, QUANTIZATIONS, Loaded, LoadError, LoadReport, ModelInfo, Weights, load,
                   model_info)
from .model import HuginnForCausalLM, HuginnOutput
from .prompt_cache import PromptCache
from .quantized_cache import CACHE_ENV as QUANTIZED_CACHE_ENV
from .records import STATS, TOKEN, Record, RecordError
from .settings import MAX_NUM_STEPS, MAX_WINDOW, SAMPLERS, GenerationSettings, SettingsError
from .trace import MAX_TRACE_TOP_K, TRACE_VERSION, AnswerTrace, StepTrace, TokenTrace

attach_generate(HuginnForCausalLM)  # model.py does not import the generation stack; its generate comes from here
AutoConfig.register(MODEL_TYPE, HuginnConfig, exist_ok=True)
AutoModelForCausalLM.register(HuginnConfig, HuginnForCausalLM, exist_ok=True)

__all__ = [
    "CRITERIA", "DEFAULT_THRESHOLDS", "DEMO_MODEL", "MAX_HISTORY_MESSAGES", "MAX_NUM_STEPS", "MAX_TRACE_TOP_K",
    "MAX_WINDOW", "OFFICIAL_MODEL", "QUANTIZATIONS", "QUANTIZED_CACHE_ENV", "TRACE_VERSION", "AnswerTrace",
    "CacheStrategy",
    "CompareResult", "GenerationSettings", "HuginnConfig", "HuginnForCausalLM", "HuginnOutput", "LoadError",
    "LoadReport", "Loaded", "Weights",
    "ModelInfo", "PromptCache", "PromptError", "Record", "RecordError", "RecurrentCache", "SAMPLERS", "STATS", "SettingsError",
    "StepTrace", "Summary", "TOKEN", "TokenEvent", "TokenTrace",
    "compare", "load", "model_info", "stream",
]
