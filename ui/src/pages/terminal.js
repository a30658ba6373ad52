// A shell in the sandbox: xterm.js over the WebSocket /v1/sandboxes/{id}/terminal. The
// session cookie goes with the handshake; a browser cannot add headers to it, so the CSRF
// token rides in the query, and the server also checks the Origin (docs/console.md).
// Protocol (docs/api.md, "Terminals"): one JSON request first, then binary frames both ways
// (output; keys) and JSON text controls (resize from us; started, exit, error from it).
import { useEffect, useRef, useState } from 'preact/hooks';
import { Terminal as XTerm } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import { html } from '../html.js';
import { csrfToken, sandboxPath } from '../api.js';

export function Terminal({ id, running }) {
  const box = useRef(null);
  const [status, setStatus] = useState('connecting');
  const [attempt, setAttempt] = useState(0);
  useEffect(() => {
    if (running === false) {
      setStatus('The sandbox is not running: resume it (or create another) to open a terminal.');
      return undefined;
    }
    const term = new XTerm({ cursorBlink: true, fontSize: 14, scrollback: 5000,
                             fontFamily: 'ui-monospace, "DejaVu Sans Mono", monospace',
                             screenReaderMode: false });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(box.current);
    fit.fit();
    const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${window.location.host}${sandboxPath(id)}/terminal?csrf=${encodeURIComponent(csrfToken() || '')}`;
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    const encoder = new TextEncoder();
    let ended = false;
    ws.onopen = () => ws.send(JSON.stringify({ pty: { cols: term.cols, rows: term.rows } }));
    ws.onmessage = (event) => {
      if (typeof event.data !== 'string') {
        term.write(new Uint8Array(event.data));
        return;
      }
      const message = JSON.parse(event.data);
      if (message.type === 'started') {
        setStatus('connected');
        term.focus();
      } else if (message.type === 'exit') {
        ended = true;
        setStatus(message.signal ? `The shell ended by signal ${message.signal}.`
          : `The shell exited with code ${message.exit_code}.`);
      } else if (message.type === 'error') {
        ended = true;
        setStatus(`${message.error.message} (${message.error.code})`);
      }
    };
    ws.onclose = (event) => {
      if (!ended) {
        setStatus(event.code === 1006
          ? 'The connection was refused or lost: check that you are still logged in and the sandbox runs, then reconnect.'
          : `The connection closed (${event.code}${event.reason ? `: ${event.reason}` : ''}).`);
      }
    };
    const keys = term.onData((data) => { if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data)); });
    const sized = term.onResize(({ cols, rows }) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'resize', cols, rows }));
    });
    const resized = new ResizeObserver(() => fit.fit());
    resized.observe(box.current);
    return () => {
      resized.disconnect();
      keys.dispose();
      sized.dispose();
      ws.close(1000);
      term.dispose();
    };
  }, [id, running, attempt]);
  const live = status === 'connected';
  return html`
    <div class="terminal">
      <p class="term-status" role="status" data-state=${live ? 'connected' : status === 'connecting' ? 'connecting' : 'closed'}>
        ${live ? 'Connected: a login shell in the sandbox. Leaving this tab ends it.' : status === 'connecting' ? 'Connecting…' : status}
        ${!live && status !== 'connecting' && running !== false && html`
          <button type="button" onClick=${() => { setStatus('connecting'); setAttempt(attempt + 1); }}>Reconnect</button>`}
      </p>
      <div class="term-box" ref=${box} aria-label="Terminal"></div>
    </div>`;
}
