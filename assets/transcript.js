// Runs once when the transcript component loads (gr.HTML js_on_load). One delegated listener survives re-renders.
element.addEventListener('click', (event) => {
  const button = event.target.closest('[data-action]');
  if (!button || !element.contains(button)) return;
  const action = button.dataset.action;
  if (action === 'copy') {
    const text = button.closest('.msg').querySelector('.msg-text');
    const done = () => { button.textContent = 'Copied'; setTimeout(() => { button.textContent = 'Copy'; }, 1200); };
    if (navigator.clipboard && text) navigator.clipboard.writeText(text.innerText).then(done, () => {});
    return;
  }
  if (action === 'regenerate') {  // the page's own Regenerate button, so the depth panel's settings apply
    const regenerate = document.querySelector('#regen-btn');
    if (regenerate) regenerate.click();
    return;
  }
  trigger('click', { action: action, message: Number(button.dataset.message) });
});
