"""The depth panel's settings kept per browser (its localStorage), and a few named presets.

Values come back from the browser, so each is checked against its widget before it is shown (a number within the
slider's range, one of a dropdown's choices, a short string); anything else keeps the widget's default. Sending
still goes through ``app.inputs``, which checks everything again.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..inputs import threshold_choices
from .common import PRIVATE, Page

STORAGE_KEY = "huginn-studio-settings"
# Not a secret: the settings are no one's private data, and the key must survive restarts of the server.
LOCAL_SECRET = "huginn-studio-settings-v1"
MAX_KEPT_CHARS = 20_000


def preset_names(default_steps: int, max_steps: int) -> dict[str, dict[str, Any]]:
    """Each preset's label and the depth fields it sets; "Defaults" puts every widget back as it started."""
    deep = min(2 * default_steps, max_steps)
    return {
        "Quick: 4 steps": {"num_steps": min(4, max_steps), "adaptive": False},
        f"Model default: {default_steps} steps": {"num_steps": min(default_steps, max_steps), "adaptive": False},
        f"Thorough: {deep} steps": {"num_steps": deep, "adaptive": False},
        f"Adaptive: exit early, at most {deep} steps": {"num_steps": deep, "adaptive": True, "criterion": "kl",
                                                         "exit_threshold": threshold_choices("kl")[1], "min_steps": 0},
        "Defaults (every setting)": {},
    }


class KeptSettings:
    """Built inside the depth panel (the preset menu sits at its top); ``wire`` once the form exists."""

    def __init__(self, page: Page, default_steps: int) -> None:
        self.page = page
        limits = page.studio.limits
        self.presets = preset_names(min(default_steps, limits.max_num_steps), limits.max_num_steps)
        self.menu = gr.Dropdown(list(self.presets), value=None, label="Preset", elem_id="preset",
                                info="Kept in this browser with the rest of the panel")
        owners = page.studio.owners
        self.kept = gr.BrowserState(None, storage_key=STORAGE_KEY,
                                    secret=owners.browser_state_secret() if owners else LOCAL_SECRET)

    @property
    def names(self) -> list[str]:
        """The depth form's settings fields (``Page.form``), then the system prompt."""
        return [*self.page.form, "system"]

    @property
    def widgets(self) -> list[Any]:
        return [*self.page.form.values(), self.page.system]

    def wire(self) -> None:
        widgets = self.widgets
        defaults = [w.value for w in widgets]
        self.menu.input(lambda name: self.apply(name, defaults), [self.menu], widgets, **PRIVATE)
        names = self.names
        # Saved in the browser alone (no server round trip) whenever a widget changes, by a preset or by hand.
        save = f"(...values) => Object.fromEntries({names!r}.map((name, i) => [name, values[i]]))"
        for widget in widgets:
            widget.change(None, widgets, [self.kept], js=save, queue=False, show_progress="hidden", **PRIVATE)

    def apply(self, name: Any, defaults: list[Any]) -> list[Any]:
        preset = self.presets.get(name) if isinstance(name, str) else None
        if preset is None:
            return [gr.skip()] * len(defaults)
        if not preset:
            return list(defaults)
        return [preset.get(n, gr.skip()) for n in self.names]

    def restored(self, kept: Any) -> list[Any]:
        """The widgets' values from what the browser kept: each checked, or left as it is."""
        kept = kept if isinstance(kept, dict) else {}
        return [checked(w, kept.get(n)) if n in kept else gr.skip() for n, w in zip(self.names, self.widgets)]


def checked(widget: Any, value: Any) -> Any:
    """``value`` when the widget can show it, else ``gr.skip()``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if isinstance(widget, gr.Checkbox):
        return value if isinstance(value, bool) else gr.skip()
    if isinstance(widget, gr.Slider):
        return min(max(value, widget.minimum), widget.maximum) if number else gr.skip()
    if isinstance(widget, gr.Number):
        return value if number and abs(value) < 2**63 else gr.skip()
    if not isinstance(value, str) or len(value) > MAX_KEPT_CHARS:
        return gr.skip()
    if isinstance(widget, (gr.Dropdown, gr.Radio)) and not getattr(widget, "allow_custom_value", False):
        return value if value in [c[1] if isinstance(c, tuple) else c for c in widget.choices] else gr.skip()
    return value

