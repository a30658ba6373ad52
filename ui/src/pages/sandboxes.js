// The tenant's sandboxes: state, image, runtime, age, CPU and memory sparklines; create,
// pause, resume, kill. Paged in the page (the list route answers them all), so that a
// page of rows is drawn and only that page's sparklines are fetched.
import { useEffect, useRef, useState } from 'preact/hooks';
import { html } from '../html.js';
import { getJson, postJson, del, query, sandboxPath } from '../api.js';
import { usePoll } from '../components/poll.js';
import { ErrorBox } from '../components/error.js';
import { Sparkline } from '../components/sparkline.js';
import { age, bytes, percent } from '../format.js';
import { go, href } from '../router.js';

export const PAGE_SIZE = 50;
const STATES = ['', 'starting', 'running', 'paused', 'stopping', 'stopped'];

export function Sandboxes({ session }) {
  const [state, setState] = useState('');
  const [filter, setFilter] = useState('');
  const [page, setPage] = useState(0);
  const [actionError, setActionError] = useState(null);
  const list = usePoll(() => getJson(`/v1/sandboxes${query({ state })}`), 5, [state]);
  const all = (list.data && list.data.sandboxes) || [];
  const needle = filter.trim().toLowerCase();
  const shown = needle ? all.filter((s) => `${s.id} ${s.image} ${s.runtime} ${Object.values(s.metadata || {}).join(' ')}`
    .toLowerCase().includes(needle)) : all;
  const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
  const at = Math.min(page, pages - 1);
  const rows = shown.slice(at * PAGE_SIZE, at * PAGE_SIZE + PAGE_SIZE);
  const ids = rows.map((s) => s.id).join(',');
  const spark = usePoll(() => (ids ? getJson(`/v1/metrics/sandboxes${query({ ids, points: 30 })}`)
                                   : Promise.resolve({ sandboxes: {} })), 5, [ids]);
  const samples = (spark.data && spark.data.sandboxes) || {};

  const act = async (verb, sandbox) => {
    setActionError(null);
    try {
      if (verb === 'kill') {
        if (!window.confirm(`Kill ${sandbox.id}? Its processes and files are lost.`)) return;
        await del(sandboxPath(sandbox.id));
      } else {
        await postJson(`${sandboxPath(sandbox.id)}/${verb}`, {});
      }
    } catch (e) {
      setActionError(e);
    }
    list.reload();
  };

  return html`
    <section aria-labelledby="sandboxes-title">
      <header class="page-head">
        <h1 id="sandboxes-title">Sandboxes</h1>
        <span class="muted">${list.data ? `${all.length} in all` : 'Loading…'}</span>
      </header>
      <${CreateForm} onCreated=${(s) => go(`/sandboxes/${s.id}`)} />
      <div class="toolbar">
        <label>State
          <select value=${state} onChange=${(e) => { setState(e.currentTarget.value); setPage(0); }}>
            ${STATES.map((s) => html`<option value=${s}>${s || 'all'}</option>`)}
          </select>
        </label>
        <label>Filter
          <input type="search" value=${filter} placeholder="id, image, runtime, metadata"
                 onInput=${(e) => { setFilter(e.currentTarget.value); setPage(0); }} />
        </label>
        <${Pager} page=${at} pages=${pages} onPage=${setPage} />
      </div>
      <${ErrorBox} error=${actionError} />
      <${ErrorBox} error=${list.error} onRetry=${list.reload} />
      <${Table} rows=${rows} samples=${samples} act=${act} />
      ${list.data && shown.length === 0 && html`<p class="empty">No sandboxes${state ? ` in state ${state}` : ''}${needle ? ' match' : ''}. Create one above, or with <code>corral sandbox create</code>.</p>`}
    </section>`;
}

function Pager({ page, pages, onPage }) {
  if (pages <= 1) return null;
  return html`
    <nav class="pager" aria-label="Pages of sandboxes">
      <button type="button" disabled=${page === 0} onClick=${() => onPage(page - 1)}
              aria-label="Previous page">‹</button>
      <span aria-live="polite">Page ${page + 1} of ${pages}</span>
      <button type="button" disabled=${page >= pages - 1} onClick=${() => onPage(page + 1)}
              aria-label="Next page">›</button>
    </nav>`;
}

function Table({ rows, samples, act }) {
  const body = useRef(null);
  // Arrow keys move between rows, Home/End to the ends, Enter opens the focused one.
  const onKey = (event) => {
    const row = event.target.closest && event.target.closest('tr[data-id]');
    if (!row || event.target !== row) return;
    const all = [...body.current.querySelectorAll('tr[data-id]')];
    const i = all.indexOf(row);
    const to = { ArrowDown: i + 1, ArrowUp: i - 1, Home: 0, End: all.length - 1 }[event.key];
    if (to !== undefined) {
      event.preventDefault();
      if (all[to]) all[to].focus();
    } else if (event.key === 'Enter') {
      event.preventDefault();
      go(`/sandboxes/${row.dataset.id}`);
    }
  };
  const now = Date.now();
  return html`
    <table class="list" aria-label="Sandboxes" aria-describedby="list-help">
      <caption id="list-help" class="sr-hint">Up and down arrows move between sandboxes; Enter opens one.</caption>
      <thead><tr>
        <th scope="col">Sandbox</th><th scope="col">State</th><th scope="col">Image</th>
        <th scope="col">Runtime</th><th scope="col">Age</th><th scope="col">CPU</th>
        <th scope="col">Memory</th><th scope="col"><span class="sr-only">Actions</span></th>
      </tr></thead>
      <tbody ref=${body} onKeyDown=${onKey}>
        ${rows.map((s) => {
          const points = samples[s.id] || [];
          return html`
            <tr key=${s.id} data-id=${s.id} tabindex="0" aria-label=${`${s.id}, ${s.state}, ${s.image}`}>
              <td><a href=${href(`/sandboxes/${s.id}`)} tabindex="-1">${s.id}</a></td>
              <td><span class=${`state state-${s.state}`}>${s.state}</span></td>
              <td>${s.image}</td>
              <td>${s.runtime}</td>
              <td title=${s.created_at}>${age(s.created_at, now)}</td>
              <td><${Sparkline} label="CPU" values=${points.map((p) => p.cpu_percent)} max=${100} unit=${percent} /></td>
              <td><${Sparkline} label="Memory" values=${points.map((p) => p.memory_used)} unit=${bytes} /></td>
              <td class="actions">
                ${s.state === 'running' && html`<button type="button" onClick=${() => act('pause', s)} aria-label=${`Pause ${s.id}`}>Pause</button>`}
                ${s.state === 'paused' && html`<button type="button" onClick=${() => act('resume', s)} aria-label=${`Resume ${s.id}`}>Resume</button>`}
                ${s.state !== 'stopped' && s.state !== 'stopping' && html`<button type="button" class="danger" onClick=${() => act('kill', s)} aria-label=${`Kill ${s.id}`}>Kill</button>`}
              </td>
            </tr>`;
        })}
      </tbody>
    </table>`;
}

function CreateForm({ onCreated }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const [images, setImages] = useState([]);
  useEffect(() => {
    getJson('/v1/images').then((r) => setImages(r.images.map((i) => i.name).filter(Boolean)))
      .catch(() => {});
  }, []);
  const submit = async (event) => {
    event.preventDefault();
    const form = event.currentTarget.elements;
    const body = { image: form.image.value.trim() || 'python' };
    if (form.runtime.value) body.runtime = form.runtime.value;
    setBusy(true);
    setError(null);
    try {
      onCreated(await postJson('/v1/sandboxes', body));
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return html`
    <form class="create" onSubmit=${submit} aria-label="Create a sandbox">
      <label>Image
        <input name="image" list="image-names" value="python" required maxlength="200" />
        <datalist id="image-names">${images.map((n) => html`<option value=${n} />`)}</datalist>
      </label>
      <label>Runtime
        <select name="runtime">
          <option value="">server's default</option>
          <option value="gvisor">gvisor</option>
          <option value="namespaces">namespaces</option>
        </select>
      </label>
      <button type="submit" disabled=${busy}>${busy ? 'Creating…' : 'Create sandbox'}</button>
      <${ErrorBox} error=${error} />
    </form>`;
}
