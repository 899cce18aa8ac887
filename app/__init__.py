"""Huginn Studio's user-facing layer: the conversation store and the Gradio app.

Kept import-light: ``app.store`` must not pull in Gradio or torch.
"""
