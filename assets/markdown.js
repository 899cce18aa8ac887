// Answers as Markdown (rendered on the server): typeset their maths with the KaTeX that Gradio ships, and switch an
// answer between its text and its per-token depth heatmap (the Depth button). Runs once per transcript component
// (gr.HTML js_on_load, after transcript.js); the transcript is redrawn on every update, so both are reapplied.
const depthShown = new Set();  // ids of the answers showing their heatmap, kept across redraws
let katexLoad = null;

function loadKatex() {
  if (!HUGINN_KATEX) return Promise.resolve(null);
  if (!katexLoad) {
    const link = document.createElement('link');
    link.rel = 'stylesheet';
    link.href = new URL(HUGINN_KATEX.css, document.baseURI).href;
    document.head.appendChild(link);
    katexLoad = import(new URL(HUGINN_KATEX.js, document.baseURI).href).then((m) => m.default, () => null);
  }
  return katexLoad;
}

function typeset() {
  const pending = [...element.querySelectorAll('.math[data-tex]:not([data-typeset])')];
  if (!pending.length) return;
  loadKatex().then((katex) => {
    if (!katex) return;
    for (const el of pending) {
      el.setAttribute('data-typeset', '');
      // KaTeX builds its own elements from the TeX (no HTML passes through); errors show as red source text.
      katex.render(el.dataset.tex, el, { displayMode: el.classList.contains('block'), throwOnError: false });
    }
  });
}

function showDepth(msg, on) {
  msg.classList.toggle('show-depth', on);
  const button = msg.querySelector('.depth-toggle');
  if (button) {
    button.setAttribute('aria-pressed', String(on));
    button.textContent = on ? 'Text' : 'Depth';
  }
}

function codeButtons() {  // a Copy button on every code block (transcript.js copies it)
  for (const pre of element.querySelectorAll('.msg-text.md pre:not([data-copy])')) {
    pre.setAttribute('data-copy', '');
    const button = document.createElement('button');
    button.className = 'code-copy';
    button.dataset.action = 'copy-code';
    button.title = 'copy the code';
    button.textContent = 'Copy';
    pre.prepend(button);
  }
}

function restore() {
  for (const msg of element.querySelectorAll('.msg[data-id]')) {
    if (depthShown.has(msg.dataset.id) && !msg.classList.contains('show-depth')) showDepth(msg, true);
  }
  codeButtons();
  typeset();
}

element.addEventListener('click', (event) => {
  const button = event.target.closest('[data-action="depth"]');
  if (!button || !element.contains(button)) return;
  event.stopPropagation();  // a page-side switch: the server has nothing to do with it
  const msg = button.closest('.msg');
  const on = !msg.classList.contains('show-depth');
  showDepth(msg, on);
  if (msg.dataset.id) on ? depthShown.add(msg.dataset.id) : depthShown.delete(msg.dataset.id);
}, { capture: true });

new MutationObserver(restore).observe(element, { childList: true, subtree: true });
restore();
