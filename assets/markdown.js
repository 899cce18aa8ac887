// Answers as Markdown (rendered on the server, maths as MathML): switch an answer between its text and its per-token
// depth heatmap (the Depth button). Runs once per transcript component (gr.HTML js_on_load, after transcript.js);
// the transcript is redrawn on every update, so the switch is reapplied.
const depthShown = new Set();  // ids of the answers showing their heatmap, kept across redraws

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
