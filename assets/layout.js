() => {
  // On a phone the conversations sidebar would cover the whole chat: start it closed there, and close it again
  // once a conversation is chosen or started.
  const narrow = () => window.matchMedia('(max-width: 767px)').matches;
  const close = () => {
    const toggle = document.querySelector('.sidebar.open > .toggle-button');
    if (toggle) toggle.click();
  };
  let tries = 0;
  const start = () => {
    if (document.querySelector('.sidebar')) { if (narrow()) close(); return; }
    if (tries++ < 100) setTimeout(start, 50);
  };
  start();
  document.addEventListener('click', (event) => {
    if (!narrow() || !(event.target instanceof Element)) return;
    if (event.target.closest('#new-conv') || event.target.closest('#conv-list label')) setTimeout(close, 300);
  });
}
