// The last commands run through the API on this sandbox (GET .../commands/history), newest
// first, with how each ended and the start of its output.
import { html } from '../html.js';
import { getJson, sandboxPath } from '../api.js';
import { usePoll } from '../components/poll.js';
import { ErrorBox } from '../components/error.js';
import { command, time } from '../format.js';

function outcome(c) {
  if (c.ended_at === null || c.ended_at === undefined) return 'running';
  if (c.signal) return `signal ${c.signal}${c.reason ? ` (${c.reason})` : ''}`;
  return `exit ${c.exit_code}${c.reason ? ` (${c.reason})` : ''}`;
}

function duration(c) {
  if (!c.ended_at) return '';
  return `${((Date.parse(c.ended_at) - Date.parse(c.started_at)) / 1000).toFixed(2)} s`;
}

export function History({ id }) {
  const h = usePoll(() => getJson(`${sandboxPath(id)}/commands/history`), 5, [id]);
  const commands = (h.data && h.data.commands) || [];
  return html`
    <div class="history">
      <${ErrorBox} error=${h.error} onRetry=${h.reload} />
      ${h.data && commands.length === 0 && html`<p class="empty">No commands yet. Commands run through the API (the SDK, <code>corral sandbox exec</code>) appear here; the terminal's keys do not.</p>`}
      <ol class="commands" aria-label="Command history, newest first">
        ${commands.map((c) => html`
          <li key=${c.id}>
            <details>
              <summary>
                <code class="cmd">${command(c.cmd)}</code>
                <span class=${c.exit_code === 0 ? 'ok' : c.ended_at ? 'bad' : 'muted'}>${outcome(c)}</span>
                <span class="muted">${time(c.started_at)} ${duration(c)}</span>
              </summary>
              ${c.stdout && html`<h3>stdout</h3><pre>${c.stdout}</pre>`}
              ${c.stderr && html`<h3>stderr</h3><pre class="stderr">${c.stderr}</pre>`}
              ${!c.stdout && !c.stderr && html`<p class="muted">No output.</p>`}
              ${c.truncated && html`<p class="muted">Output cut to its first 16 KiB per stream.</p>`}
            </details>
          </li>`)}
      </ol>
    </div>`;
}
