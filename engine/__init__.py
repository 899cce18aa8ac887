"""Huginn Studio's inference engine: the recurrent-depth model, its cache, loading and generation.

Knows nothing of Gradio or SQLite.
"""
