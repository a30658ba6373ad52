// The sandbox's egress log: its resolver's and proxy's verdicts (GET .../network/events).
import { html } from '../html.js';
import { getJson, sandboxPath } from '../api.js';
import { usePoll } from '../components/poll.js';
import { ErrorBox } from '../components/error.js';
import { time } from '../format.js';

// Loaded when shown and on Refresh, not polled: asking for it is a call on the sandbox
// (it would keep it from idling, and resume a paused one).
export function Egress({ id, paused }) {
  const n = usePoll(() => (paused ? Promise.resolve(null) : getJson(`${sandboxPath(id)}/network/events`)), 0, [id, paused]);
  const events = (n.data && n.data.events) || [];
  if (paused) return html`<p class="empty">The sandbox is paused: resume it to see its egress log.</p>`;
  return html`
    <div class="egress">
      <div class="toolbar"><button type="button" onClick=${n.reload}>Refresh</button></div>
      <${ErrorBox} error=${n.error} onRetry=${n.reload} />
      ${n.data && events.length === 0 && html`<p class="empty">Nothing yet: no name looked up, no connection tried, no packet refused. A sandbox created with network "none" reaches nothing at all.</p>`}
      ${events.length > 0 && html`
        <table class="list" aria-label="Egress log, oldest first">
          <thead><tr><th scope="col">When</th><th scope="col">Kind</th><th scope="col">Name</th>
            <th scope="col">Address</th><th scope="col">Verdict</th></tr></thead>
          <tbody>${events.map((e) => html`
            <tr><td>${time(e.at)}</td><td>${e.kind}</td><td>${e.name}${e.port ? `:${e.port}` : ''}</td>
              <td>${e.address || '—'}</td>
              <td class=${e.allowed ? 'ok' : 'bad'}>${e.allowed ? 'allowed' : `refused: ${e.reason}`}</td></tr>`)}
          </tbody>
        </table>`}
    </div>`;
}
