// Every call the console makes to the server. The session is an HttpOnly cookie the page
// cannot read; the CSRF token that must go with it lives only in this module's memory (never
// in localStorage, sessionStorage or a URL other than the terminal's WebSocket, where a
// browser cannot set headers). A reload asks the server for it again (GET /ui/api/session).

let csrf = null;
let onSignedOut = () => {};

/** An error answered by the server ({"error": {"code", "message"}}) or by the network. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** What the person can do about an error, by its code. */
export function nextStep(error) {
  switch (error && error.code) {
    case 'unauthenticated': return 'Your session has ended: log in again with your API key.';
    case 'permission_denied':
      return 'This needs an operator key (corral keys create --operator); log in with one.';
    case 'not_found': return 'It may have been killed or never existed: go back to the list.';
    case 'sandbox_not_running': return 'It has stopped: create a new sandbox from the list.';
    case 'invalid_argument': return 'Correct the value the message names and try again.';
    case 'resource_exhausted':
      return 'Kill sandboxes you no longer need, or ask your operator for a larger quota.';
    case 'rate_limited': case 'unavailable':
      return 'The server is busy: wait a few seconds and try again.';
    case 'runtime_unavailable': return 'Pick another runtime, or ask your operator (corral doctor).';
    case 'network': return 'Check that corral serve is running and that this page can reach it, then retry.';
    case 'internal': return 'Tell your operator the reference in the message (it is in the server log).';
    default: return 'Try again; if it keeps failing, tell your operator.';
  }
}

export function setSignedOutHandler(handler) { onSignedOut = handler; }
export function csrfToken() { return csrf; }

async function send(method, path, { body, json, signal } = {}) {
  const headers = {};
  if (csrf) headers['X-Corral-CSRF'] = csrf;
  let payload = body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, signal,
                                   credentials: 'same-origin', cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', `Could not reach the server (${e.message}).`);
  }
  if (response.ok) return response;
  let code = 'internal';
  let message = `The server answered ${response.status}.`;
  try {
    const error = (await response.json()).error;
    if (error && typeof error.code === 'string') code = error.code;
    if (error && typeof error.message === 'string') message = error.message;
  } catch { /* not the error body: keep the status */ }
  const failure = new ApiError(response.status, code, message);
  if (response.status === 401 && csrf !== null) {
    csrf = null;
    onSignedOut(failure);
  }
  throw failure;
}

export async function getJson(path, options) {
  return (await send('GET', path, options)).json();
}

export async function postJson(path, json) {
  const response = await send('POST', path, { json });
  return response.status === 204 ? null : response.json();
}

export async function del(path) { await send('DELETE', path); }

export async function getBlob(path) { return (await send('GET', path)).blob(); }

/**
 * The first `limit` bytes of a body (a preview), and whether there was more: the rest is
 * never downloaded (the stream is cancelled).
 */
export async function getPrefix(path, limit) {
  const response = await send('GET', path);
  const reader = response.body.getReader();
  const chunks = [];
  let size = 0;
  let more = false;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.length;
    if (size > limit) {
      more = true;
      await reader.cancel();
      break;
    }
  }
  return { blob: new Blob(chunks).slice(0, limit), more };
}

export async function putBody(path, body) { return (await send('PUT', path, { body })).json(); }

/** Log in: the key goes in this request's body and nowhere else. */
export async function login(key) {
  const session = await postJson('/ui/api/login', { key });
  csrf = session.csrf;
  return session;
}

/** The session the cookie holds, if any (after a reload). */
export async function resume() {
  try {
    const session = await getJson('/ui/api/session');
    csrf = session.csrf;
    return session;
  } catch (e) {
    if (e.status === 401) return null;
    throw e;
  }
}

export async function logout() {
  try {
    await postJson('/ui/api/logout', {});
  } finally {
    csrf = null;
  }
}

/** Query string from an object, skipping empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

export const sandboxPath = (id) => `/v1/sandboxes/${encodeURIComponent(id)}`;
