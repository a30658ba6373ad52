// The console's single page: it asks the server whether the browser has a session, then
// routes by URL hash. Styles come from files (the server's CSP allows no inline styles).
import './csp-styles.js';
import '@xterm/xterm/css/xterm.css';
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { html } from './html.js';
import { logout, resume, setSignedOutHandler } from './api.js';
import { ErrorBox } from './components/error.js';
import { Login } from './pages/login.js';
import { Sandboxes } from './pages/sandboxes.js';
import { Sandbox } from './pages/sandbox.js';
import { Audit, Images, Pools } from './pages/operators.js';
import { go, useRoute } from './router.js';

function App() {
  const route = useRoute();
  const [session, setSession] = useState(undefined); // undefined: not known yet
  const [reason, setReason] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    setSignedOutHandler((why) => { setReason(why); setSession(null); });
    resume().then(setSession).catch((e) => { setError(e); setSession(null); });
  }, []);
  const [page, id, tab] = route;
  // A new page moves the focus to its content (for keyboards and screen readers), not a tab.
  useEffect(() => {
    const main = document.getElementById('main');
    if (main && session) main.focus({ preventScroll: true });
  }, [page, id, Boolean(session)]);
  if (session === undefined) return html`<p class="loading" role="status">Loading…</p>`;
  if (session === null) {
    return html`
      <${ErrorBox} error=${error} />
      <${Login} reason=${reason} onSignedIn=${(s) => {
        setReason(null); setError(null); setSession(s);
        if (!route.length || route[0] === 'login') go('/sandboxes');
      }} />`;
  }
  const signOut = async () => {
    try { await logout(); } catch { /* the session is dropped here either way */ }
    setSession(null);
    go('/login');
  };
  let body;
  if (page === 'sandboxes' && id) body = html`<${Sandbox} id=${id} tab=${tab} />`;
  else if (page === 'pools') body = html`<${Pools} />`;
  else if (page === 'images') body = html`<${Images} />`;
  else if (page === 'audit') body = html`<${Audit} session=${session} />`;
  else body = html`<${Sandboxes} session=${session} />`;
  const here = page || 'sandboxes';
  const link = (name, label) => html`
    <a href=${`#/${name}`} aria-current=${here === name ? 'page' : undefined}>${label}</a>`;
  return html`
    <a class="skip" href="#main" onClick=${(e) => { e.preventDefault(); document.getElementById('main').focus(); }}>Skip to content</a>
    <header class="top">
      <strong class="brand">Corral</strong>
      <nav aria-label="Console">
        ${link('sandboxes', 'Sandboxes')}
        ${link('images', 'Images')}
        ${link('audit', 'Audit')}
        ${session.operator && link('pools', 'Pools')}
      </nav>
      <span class="spacer"></span>
      <span class="who" aria-label="Logged in as">${session.tenant}${session.operator ? ' (operator)' : ''}</span>
      <button type="button" onClick=${signOut}>Log out</button>
    </header>
    <main id="main" tabindex="-1">${body}</main>`;
}

render(html`<${App} />`, document.getElementById('app'));
