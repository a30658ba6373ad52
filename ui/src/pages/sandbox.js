// One sandbox: its description and actions, then tabs: metrics, terminal, files, command
// history, egress log. The tab is part of the URL (#/sandboxes/ID/terminal).
import { useState } from 'preact/hooks';
import { html } from '../html.js';
import { getJson, postJson, del, sandboxPath } from '../api.js';
import { usePoll } from '../components/poll.js';
import { ErrorBox } from '../components/error.js';
import { age, time } from '../format.js';
import { go, href } from '../router.js';
import { Metrics } from './metrics.js';
import { Terminal } from './terminal.js';
import { Files } from './files.js';
import { History } from './history.js';
import { Egress } from './egress.js';

function resources(r) {
  const parts = [];
  if (r.cpus) parts.push(`${r.cpus} CPU`);
  if (r.memory) parts.push(`memory ${r.memory}${typeof r.memory === 'number' ? ' MiB' : ''}`);
  if (r.disk) parts.push(`disk ${r.disk}${typeof r.disk === 'number' ? ' MiB' : ''}`);
  if (r.pids) parts.push(`${r.pids} pids`);
  return parts.join(', ') || "the server's defaults";
}

const TABS = [['metrics', 'Metrics'], ['terminal', 'Terminal'], ['files', 'Files'],
              ['commands', 'Commands'], ['network', 'Network']];

export function Sandbox({ id, tab }) {
  // Followed through the list, which is not activity (GET /v1/sandboxes/{id} is, and would
  // keep an idle sandbox alive while its page is open); one missing from the list (another
  // tenant's, or gone) is asked for by id, for the error that says so.
  const info = usePoll(async () => {
    const listed = (await getJson('/v1/sandboxes')).sandboxes.find((x) => x.id === id);
    return listed || getJson(sandboxPath(id));
  }, 5, [id]);
  const [actionError, setActionError] = useState(null);
  const s = info.data;
  const current = TABS.some(([name]) => name === tab) ? tab : 'metrics';
  const act = async (verb) => {
    setActionError(null);
    try {
      if (verb === 'kill') {
        if (!window.confirm(`Kill ${id}? Its processes and files are lost.`)) return;
        await del(sandboxPath(id));
      } else {
        await postJson(`${sandboxPath(id)}/${verb}`, {});
      }
    } catch (e) {
      setActionError(e);
    }
    info.reload();
  };
  const onTabKey = (event) => {
    const i = TABS.findIndex(([name]) => name === current);
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1 }[event.key];
    if (to === undefined) return;
    event.preventDefault();
    const [name] = TABS[(to + TABS.length) % TABS.length];
    go(`/sandboxes/${id}/${name}`);
    requestAnimationFrame(() => document.getElementById(`tab-${name}`)?.focus());
  };
  return html`
    <section aria-labelledby="sandbox-title">
      <p><a href="#/sandboxes">← All sandboxes</a></p>
      <header class="page-head">
        <h1 id="sandbox-title">${id}</h1>
        ${s && html`<span class=${`state state-${s.state}`}>${s.state}</span>`}
        <span class="spacer"></span>
        ${s && s.state === 'running' && html`<button type="button" onClick=${() => act('pause')}>Pause</button>`}
        ${s && s.state === 'paused' && html`<button type="button" onClick=${() => act('resume')}>Resume</button>`}
        ${s && s.state !== 'stopped' && s.state !== 'stopping' && html`<button type="button" class="danger" onClick=${() => act('kill')}>Kill</button>`}
      </header>
      <${ErrorBox} error=${info.error} onRetry=${info.reload} />
      <${ErrorBox} error=${actionError} />
      ${s && html`
        <dl class="facts">
          <dt>Image</dt><dd>${s.image}</dd>
          <dt>Runtime</dt><dd>${s.runtime}</dd>
          <dt>Age</dt><dd title=${s.created_at}>${age(s.created_at)}</dd>
          <dt>Expires</dt><dd>${time(s.expires_at)}</dd>
          <dt>Resources</dt><dd>${resources(s.resources)}</dd>
          ${s.state_reason && html`<dt>Why</dt><dd>${s.state_reason}</dd>`}
          ${Object.entries(s.metadata || {}).map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>`)}
        </dl>`}
      <div role="tablist" aria-label="Sandbox views" class="tabs" onKeyDown=${onTabKey}>
        ${TABS.map(([name, label]) => html`
          <a role="tab" id=${`tab-${name}`} href=${href(`/sandboxes/${id}/${name}`)}
             aria-selected=${name === current ? 'true' : 'false'} aria-controls="tab-panel"
             tabindex=${name === current ? '0' : '-1'}>${label}</a>`)}
      </div>
      <div role="tabpanel" id="tab-panel" aria-labelledby=${`tab-${current}`}>
        ${current === 'metrics' && html`<${Metrics} id=${id} />`}
        ${current === 'terminal' && s && html`<${Terminal} id=${id} running=${s.state === 'running'} />`}
        ${current === 'files' && s && html`<${Files} id=${id} paused=${s.state === 'paused'} />`}
        ${current === 'commands' && html`<${History} id=${id} />`}
        ${current === 'network' && s && html`<${Egress} id=${id} paused=${s.state === 'paused'} />`}
      </div>
    </section>`;
}
