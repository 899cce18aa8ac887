() => {
  // Esc stops the running answer or comparison, wherever the focus is.
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Escape') return;
    const stop = document.querySelector('#stop-btn');
    if (stop) stop.click();
  });

  // While an answer is being written, Enter (or Send) in the message box would be dropped by the page's event
  // queue: refuse it in plain sight instead, and keep what was typed for when the answer is done.
  const answering = () => document.querySelector('#transcript .msg.assistant.partial') !== null;
  const note = () => {
    let node = document.getElementById('prompt-note');
    const box = document.getElementById('prompt');
    if (!node && box) {
      node = document.createElement('div');
      node.id = 'prompt-note';
      node.setAttribute('role', 'status');
      box.insertAdjacentElement('afterend', node);
    }
    return node;
  };
  const refuse = (event) => {
    event.preventDefault();
    event.stopImmediatePropagation();
    const node = note();
    if (!node) return;
    node.textContent = 'Huginn is still answering. Your message stays in the box: press Enter again when the ' +
      'answer is done, or Esc to stop it first.';
    const watch = new MutationObserver(() => {
      if (!answering()) { node.textContent = ''; watch.disconnect(); }
    });
    watch.observe(document.getElementById('transcript') || document.body, { childList: true, subtree: true });
  };
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' || event.shiftKey || event.isComposing) return;
    if (!(event.target instanceof Element) || !event.target.closest('#prompt')) return;
    if (answering()) refuse(event);
  }, { capture: true });
  document.addEventListener('click', (event) => {
    if (event.target instanceof Element && event.target.closest('#send-btn') && answering()) refuse(event);
  }, { capture: true });
}
