"""Where the page's stylesheet and scripts are: package data of ``app.assets`` in an installed wheel (pyproject.toml
maps the top-level assets/ folder there), the assets/ folder beside app/ in a source checkout."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

_PACKAGED = Path(str(importlib.resources.files("app"))) / "assets"
ASSETS = _PACKAGED if (_PACKAGED / "style.css").is_file() else Path(__file__).resolve().parents[1] / "assets"
