() => {
  // Esc stops the running answer or comparison, wherever the focus is.
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Escape') return;
    const stop = document.querySelector('#stop-btn');
    if (stop) stop.click();
  });
}
