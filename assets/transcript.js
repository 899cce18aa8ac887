// Runs once when the transcript component loads (gr.HTML js_on_load). One delegated listener survives re-renders.

// The clipboard API exists only in secure contexts (https, localhost): on a plain-http LAN address copy through a
// hidden text area instead.
function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  const area = document.createElement('textarea');
  area.value = text;
  area.setAttribute('readonly', '');
  area.style.position = 'fixed';
  area.style.opacity = '0';
  document.body.appendChild(area);
  area.select();
  const ok = document.execCommand('copy');
  area.remove();
  return ok ? Promise.resolve() : Promise.reject(new Error('the browser refused to copy'));
}

function copied(button, text) {
  const label = button.dataset.label || (button.dataset.label = button.textContent);  // a second click mid-"Copied"
  const done = (shown) => () => { button.textContent = shown; setTimeout(() => { button.textContent = label; }, 1200); };
  copyText(text).then(done('Copied'), done('Copy failed'));
}

element.addEventListener('click', (event) => {
  const button = event.target.closest('[data-action]');
  if (!button || !element.contains(button)) return;
  const action = button.dataset.action;
  if (action === 'copy') {  // an answer as it was written (its Markdown source: markdown_view.answer), else the text
    const msg = button.closest('.msg');
    const source = msg.querySelector('.msg-text.heat, .msg-text.src');
    const text = msg.querySelector('.msg-text');
    if (source || text) copied(button, source ? source.textContent : text.innerText);
    return;
  }
  if (action === 'copy-code') {
    const code = button.closest('pre');
    if (code) copied(button, (code.querySelector('code') || code).innerText);
    return;
  }
  if (action === 'regenerate') {  // the page's own Regenerate button, so the depth panel's settings apply
    const regenerate = document.querySelector('#regen-btn');
    if (regenerate) regenerate.click();
    return;
  }
  trigger('click', { action: action, message: Number(button.dataset.message) });
});

// Keep the newest message in view: on opening a conversation, on a new question, and while an answer streams,
// unless the reader has scrolled up to read something older.
let scroller = null;
let follow = true;
let seen = { first: null, questions: 0 };
function findScroller() {
  for (let node = element.querySelector('.transcript'); node && node !== document.body; node = node.parentElement) {
    const overflow = getComputedStyle(node).overflowY;
    if (overflow === 'auto' || overflow === 'scroll') return node;
  }
  return null;
}
function followNewest() {
  const box = findScroller();
  if (box !== scroller) {
    scroller = box;
    if (box) box.addEventListener('scroll', () => {
      follow = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
    }, { passive: true });
  }
  const messages = element.querySelectorAll('.msg');
  const now = { first: messages.length ? messages[0].dataset.id || '' : null,
                questions: element.querySelectorAll('.msg.user').length };
  if (now.first !== seen.first || now.questions > seen.questions) follow = true;  // opened, or a new question
  seen = now;
  if (box && follow) box.scrollTop = box.scrollHeight;
}

// Regenerate and Edit need a question to work on: greyed out until the open conversation has one.
function buttons() {
  const none = !element.querySelector('.msg.user');
  for (const id of ['regen-btn', 'edit-btn']) {
    const button = document.getElementById(id);
    if (button && button.disabled !== none) {
      button.disabled = none;
      button.title = none ? 'Ask a question first' : '';
    }
  }
}

new MutationObserver(() => { followNewest(); buttons(); }).observe(element, { childList: true, subtree: true });
followNewest();
buttons();
