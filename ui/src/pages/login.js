import { useState } from 'preact/hooks';
import { html } from '../html.js';
import { login } from '../api.js';
import { ErrorBox } from '../components/error.js';

/** The API key goes in a password field, is sent once to POST /ui/api/login, and is dropped. */
export function Login({ onSignedIn, reason }) {
  const [error, setError] = useState(reason || null);
  const [busy, setBusy] = useState(false);
  const submit = async (event) => {
    event.preventDefault();
    const field = event.currentTarget.elements.key;
    const key = field.value.trim();
    if (!key) {
      setError({ code: 'invalid_argument', message: 'Enter an API key.' });
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const session = await login(key);
      field.value = '';
      onSignedIn(session);
    } catch (e) {
      setError(e.code === 'unauthenticated'
        ? { code: e.code, message: 'That key was refused: it is wrong, revoked or expired.' } : e);
    } finally {
      setBusy(false);
    }
  };
  return html`
    <main class="login" id="main">
      <h1>Corral</h1>
      <form onSubmit=${submit} aria-label="Log in" autocomplete="off">
        <label for="key">API key</label>
        <input id="key" name="key" type="password" autocomplete="off" spellcheck="false"
               placeholder="crl_..." required autofocus />
        <p class="muted">A key from <code>corral keys create --tenant NAME</code>. It is sent
          once to log in; the page keeps only a session cookie the browser guards.</p>
        <button type="submit" disabled=${busy}>${busy ? 'Logging in…' : 'Log in'}</button>
      </form>
      <${ErrorBox} error=${error} />
    </main>`;
}
