// Pools (operators only), images, and the audit log.
import { useState } from 'preact/hooks';
import { html } from '../html.js';
import { getJson, query } from '../api.js';
import { usePoll } from '../components/poll.js';
import { ErrorBox } from '../components/error.js';
import { bytes, time } from '../format.js';

export function Pools() {
  const p = usePoll(() => getJson('/v1/pools'), 5, []);
  const pools = (p.data && p.data.pools) || [];
  return html`
    <section aria-labelledby="pools-title">
      <header class="page-head"><h1 id="pools-title">Warm pools</h1></header>
      <${ErrorBox} error=${p.error} onRetry=${p.reload} />
      ${p.data && pools.length === 0 && html`<p class="empty">No warm pools. Start the server with <code>corral serve --pool python:gvisor=4</code> (or <code>CORRAL_POOLS</code>) to keep sandboxes ready.</p>`}
      ${pools.length > 0 && html`
        <table class="list" aria-label="Warm pools">
          <thead><tr><th scope="col">Image</th><th scope="col">Runtime</th><th scope="col">Size</th>
            <th scope="col">Ready</th><th scope="col">Hits</th><th scope="col">Misses</th></tr></thead>
          <tbody>${pools.map((x) => html`
            <tr><td>${x.image}</td><td>${x.runtime}</td><td>${x.size}</td><td>${x.ready}</td>
              <td>${x.hits}</td><td>${x.misses}</td></tr>`)}</tbody>
        </table>`}
    </section>`;
}

export function Images() {
  const i = usePoll(() => getJson('/v1/images'), 0, []);
  const images = (i.data && i.data.images) || [];
  return html`
    <section aria-labelledby="images-title">
      <header class="page-head"><h1 id="images-title">Images</h1>
        ${i.data && html`<span class="muted">your images take ${bytes(i.data.used_bytes)}</span>`}</header>
      <${ErrorBox} error=${i.error} onRetry=${i.reload} />
      ${i.data && images.length === 0 && html`<p class="empty">No images. Build one with <code>corral image build python</code>.</p>`}
      ${images.length > 0 && html`
        <table class="list" aria-label="Images">
          <thead><tr><th scope="col">Name</th><th scope="col">Id</th><th scope="col">Owner</th>
            <th scope="col">Base</th><th scope="col">Size</th><th scope="col">Layers</th><th scope="col">Created</th></tr></thead>
          <tbody>${images.map((x) => html`
            <tr><td>${x.name || '—'}</td><td><code>${x.id.slice(0, 19)}</code></td>
              <td>${x.public ? 'operator' : 'yours'}</td><td>${x.base || '—'}</td>
              <td>${bytes(x.size_bytes)}</td><td>${x.layers}</td><td>${time(x.created_at)}</td></tr>`)}</tbody>
        </table>`}
    </section>`;
}

export function Audit({ session }) {
  const [before, setBefore] = useState([]); // the cursors of the pages seen, for "newer"
  const cursor = before.length ? before[before.length - 1] : undefined;
  const a = usePoll(() => getJson(`/v1/audit${query({ before: cursor, limit: 100,
                                                     all_tenants: session.operator ? 'true' : undefined })}`), 0, [cursor]);
  const events = (a.data && a.data.events) || [];
  return html`
    <section aria-labelledby="audit-title">
      <header class="page-head"><h1 id="audit-title">Audit log</h1>
        <span class="muted">${session.operator ? 'every tenant' : `tenant ${session.tenant}`}, newest first</span></header>
      <${ErrorBox} error=${a.error} onRetry=${a.reload} />
      <nav class="pager" aria-label="Pages of the audit log">
        <button type="button" disabled=${!before.length} onClick=${() => setBefore(before.slice(0, -1))}>Newer</button>
        <button type="button" disabled=${!(a.data && a.data.next_before)} onClick=${() => setBefore([...before, a.data.next_before])}>Older</button>
      </nav>
      ${events.length > 0 && html`
        <table class="list" aria-label="Audit records">
          <thead><tr><th scope="col">When</th><th scope="col">Tenant</th><th scope="col">Key</th>
            <th scope="col">Action</th><th scope="col">Sandbox</th><th scope="col">Outcome</th>
            <th scope="col">Status</th><th scope="col">Client</th></tr></thead>
          <tbody>${events.map((e) => html`
            <tr key=${e.seq}><td>${time(e.at)}</td><td>${e.tenant}</td><td><code>${e.key_id || '—'}</code></td>
              <td>${e.action}</td><td>${e.sandbox_id || '—'}</td><td>${e.outcome}</td>
              <td>${e.status}</td><td>${e.client || '—'}</td></tr>`)}</tbody>
        </table>`}
      ${a.data && events.length === 0 && html`<p class="empty">No records.</p>`}
    </section>`;
}
