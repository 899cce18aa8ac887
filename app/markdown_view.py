"""Answers as the model wrote them: Markdown with LaTeX and highlighted code, as safe HTML for the transcript.

markdown-it-py renders CommonMark plus tables and strikethrough with raw HTML turned off, so HTML in an answer is
shown as text; images are off too (an answer must not make the browser fetch anything). Maths (``$...$``,
``$$...$$``, ``\\(...\\)``, ``\\[...\\]``) is typeset here as MathML by latex2mathml, which browsers draw natively
(nothing to load, nothing taken from another package's build files); its output is parsed and only MathML elements
and attributes pass, anything else (``\\text{<script>}``, ``\\href``) leaves the TeX shown as text. Code blocks are
highlighted here by Pygments. Pure functions of plain values, like ``app.render``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from xml.etree import ElementTree

from latex2mathml.converter import convert as latex_to_mathml
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from mdit_py_plugins.dollarmath import dollarmath_plugin
from mdit_py_plugins.texmath import texmath_plugin
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

MAX_HIGHLIGHT_CHARS = 20_000  # longer code blocks are shown plain: highlighting time grows with the text
MAX_MARKDOWN_CHARS = 200_000  # longer texts (an imported record, say) are shown as escaped plain text
CODE_CLASS = "hl"
_FORMATTER = HtmlFormatter(nowrap=True, classprefix=f"{CODE_CLASS}-")
# token type -> (display mode, tag): $$..$$ inside a paragraph is display maths but must stay a span there.
MATH_TOKENS = {"math_inline": ("inline", "span"), "math_inline_double": ("block", "span"),
               "math_block": ("block", "div"), "math_block_eqno": ("block", "div"), "math_block_label": ("block", "div")}


def _highlight(code: str, lang: str, attrs: str) -> str:
    if not lang or len(code) > MAX_HIGHLIGHT_CHARS:
        return ""  # markdown-it escapes and wraps it itself
    try:
        lexer = get_lexer_by_name(lang.split()[0])
    except ClassNotFound:
        return ""
    return highlight(code, lexer, _FORMATTER)


MATHML_NS = "http://www.w3.org/1998/Math/MathML"
ElementTree.register_namespace("", MATHML_NS)
MATHML_TAGS = {"math", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace", "msup", "msub", "msubsup", "mfrac", "msqrt",
               "mroot", "mover", "munder", "munderover", "mtable", "mtr", "mtd", "mstyle", "mpadded", "mphantom",
               "menclose", "mfenced", "merror", "semantics", "annotation", "mmultiscripts", "mprescripts", "none"}
MATHML_ATTRS = {"display", "mathvariant", "stretchy", "fence", "separator", "lspace", "rspace", "columnalign",
                "columnspacing", "rowspacing", "columnlines", "rowlines", "frame", "minsize", "maxsize", "accent",
                "accentunder", "movablelimits", "linethickness", "width", "height", "depth", "form", "symmetric",
                "largeop", "scriptlevel", "displaystyle", "notation", "open", "close", "separators", "align",
                "rowalign", "voffset", "mathsize", "encoding"}
MAX_TEX_CHARS = 5_000  # longer formulas are shown as their TeX: conversion time grows with them


@lru_cache(maxsize=4096)
def mathml(tex: str, block: bool) -> str | None:
    """The formula as MathML with only MathML elements and attributes, or None where it cannot be drawn safely."""
    if len(tex) > MAX_TEX_CHARS:
        return None
    try:
        root = ElementTree.fromstring(latex_to_mathml(tex, display="block" if block else "inline"))
    except Exception:  # noqa: BLE001 - any TeX the converter cannot take is shown as its source
        return None
    for el in root.iter():
        namespace, _, tag = el.tag.rpartition("}")
        if namespace != "{" + MATHML_NS or tag not in MATHML_TAGS or not set(el.attrib) <= MATHML_ATTRS:
            return None
    return ElementTree.tostring(root, encoding="unicode")  # text re-escaped on the way out


def _math(kind: str, tag: str):
    def render(self: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
        tex = tokens[idx].content.strip()
        drawn = mathml(tex, kind == "block")
        body = drawn if drawn is not None else f'<code class="tex">{escapeHtml(tex)}</code>'
        return f'<{tag} class="math {kind}" data-tex="{escapeHtml(tex)}">{body}</{tag}>'
    return render


def _link_open(self: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
    # markdown-it already refuses javascript:, vbscript:, file: and data: links; these open apart from the page.
    tokens[idx].attrSet("target", "_blank")
    tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
    return self.renderToken(tokens, idx, options, env)


def _parser() -> MarkdownIt:
    md = (MarkdownIt("commonmark", {"html": False, "highlight": _highlight})
          .enable(["table", "strikethrough"]).disable("image")
          # Pandoc's rule: no space inside the dollars, no digit after the closing one, so "$5 and $6" stays text.
          .use(dollarmath_plugin, allow_space=False, allow_digits=False, double_inline=True)
          .use(texmath_plugin, delimiters="brackets"))
    for name, (kind, tag) in MATH_TOKENS.items():
        md.add_render_rule(name, _math(kind, tag))
    md.add_render_rule("link_open", _link_open)
    return md


_MD = _parser()


def template_safe(html: str) -> str:
    """gr.HTML renders through a JS template that must never see ``${`` or ``{{`` from a model: the same escape
    ``render.esc`` applies (entities decode back to the characters in text and attributes)."""
    return html.replace("$", "&#36;").replace("{", "&#123;").replace("}", "&#125;")


@lru_cache(maxsize=1024)  # the transcript is redrawn on every streamed update; old answers do not change
def to_html(text: str) -> str:
    if len(text) > MAX_MARKDOWN_CHARS:
        return template_safe(f'<p class="plain">{escapeHtml(text)}</p>')
    return template_safe(_MD.render(text))


def answer(content: str, tokens: list[dict[str, Any]] | None, heat: str, live: bool) -> str:
    """An answer's body: the heatmap while it streams; then its Markdown, with the heatmap (when there are tokens)
    one click away (the Depth button, ``depth_button``)."""
    if live and tokens:
        return f'<div class="msg-text heat live">{heat}</div>'
    source = content or "".join(str(t.get("text") or "") for t in tokens or ())
    body = f'<div class="msg-text md">{to_html(source)}</div>'
    # The text as written, for Copy: the heatmap spells it; without tokens a hidden copy holds it.
    return body + (f'<div class="msg-text heat">{heat}</div>' if tokens else
                   f'<div class="msg-text src" hidden>{template_safe(escapeHtml(source))}</div>')


def depth_button(tokens: list[dict[str, Any]] | None, live: bool) -> str:
    if not tokens or live:
        return ""
    return ('<button class="depth-toggle" data-action="depth" aria-pressed="false" '
            'title="show how many recurrent steps each token took">Depth</button>')


# ---- what the page loads ----------------------------------------------------------------------------------------

def code_css() -> str:
    """Pygments' colours for highlighted code, light and dark."""
    light = HtmlFormatter(style="default", classprefix=f"{CODE_CLASS}-").get_style_defs(".msg-text pre code")
    dark = HtmlFormatter(style="monokai", classprefix=f"{CODE_CLASS}-").get_style_defs(".dark .msg-text pre code")
    keep = [line for line in (light + "\n" + dark).splitlines() if "." + CODE_CLASS + "-" in line]
    return "\n".join(keep)
