// Live charts of one sandbox's samples (GET /v1/sandboxes/{id}/metrics), fetched again at
// the sampling interval the server states.
import { html } from '../html.js';
import { getJson, sandboxPath } from '../api.js';
import { usePoll } from '../components/poll.js';
import { ErrorBox } from '../components/error.js';
import { Chart } from '../components/chart.js';
import { bytes, percent, time } from '../format.js';

const count = (v) => String(Math.round(v));

export function Metrics({ id }) {
  // Fetched again at the server's sampling interval (at least 1 s apart, 5 s until known).
  const m = usePoll(() => getJson(`${sandboxPath(id)}/metrics`),
                    (last) => Math.max(1, (last && last.interval) || 5), [id]);
  const samples = (m.data && m.data.samples) || [];
  const times = samples.map((s) => Date.parse(s.time) / 1000);
  const col = (key) => samples.map((s) => (s[key] === undefined ? null : s[key]));
  const last = samples[samples.length - 1];
  const hasNet = samples.some((s) => s.net_rx_bytes !== null && s.net_rx_bytes !== undefined);
  return html`
    <div class="metrics" data-samples=${samples.length} data-last=${last ? last.time : ''}>
      <${ErrorBox} error=${m.error} onRetry=${m.reload} />
      <p class="muted" aria-live="polite">
        ${m.data ? (last ? `${samples.length} sample${samples.length === 1 ? '' : 's'}, every ${m.data.interval} s; the latest at ${time(last.time)}.`
                         : 'No samples yet: the first comes within one interval of the start.')
                 : 'Loading…'}
      </p>
      ${samples.length > 0 && html`
        <div class="charts">
          <${Chart} title="CPU" times=${times} format=${percent}
                    series=${[{ label: 'CPU %', values: col('cpu_percent') }]}
                    summary=${percent(last.cpu_percent)} />
          <${Chart} title="Memory" times=${times} format=${bytes}
                    series=${[{ label: 'used', values: col('memory_used') }, { label: 'limit', values: col('memory_limit') }]}
                    summary=${`${bytes(last.memory_used)} of ${bytes(last.memory_limit)}`} />
          <${Chart} title="Disk" times=${times} format=${bytes}
                    series=${[{ label: 'used', values: col('disk_used') }, { label: 'limit', values: col('disk_limit') }]}
                    summary=${`${bytes(last.disk_used)} of ${bytes(last.disk_limit)}`} />
          <${Chart} title="Processes" times=${times} format=${count}
                    series=${[{ label: 'pids', values: col('pids') }]} summary=${count(last.pids || 0)} />
          ${hasNet && html`<${Chart} title="Network" times=${times} format=${bytes}
                    series=${[{ label: 'received', values: col('net_rx_bytes') }, { label: 'sent', values: col('net_tx_bytes') }]}
                    summary=${`${bytes(last.net_rx_bytes)} received, ${bytes(last.net_tx_bytes)} sent`} />`}
        </div>`}
    </div>`;
}
