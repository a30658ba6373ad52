import { html } from '../html.js';

/** A small line of the last values (an SVG polyline), with its latest value for screen readers. */
export function Sparkline({ values, max, label, unit }) {
  const points = values.filter((v) => v !== null && v !== undefined);
  if (points.length === 0) return html`<span class="muted" aria-label=${`${label}: no samples yet`}>—</span>`;
  const top = Math.max(max || 0, ...points, 1e-9);
  const w = 80;
  const h = 20;
  const step = points.length > 1 ? w / (points.length - 1) : 0;
  const line = points.map((v, i) => `${(i * step).toFixed(1)},${(h - (v / top) * (h - 2) - 1).toFixed(1)}`).join(' ');
  const last = points[points.length - 1];
  const text = unit(last);
  return html`
    <span class="spark" role="img" aria-label=${`${label}: ${text}`} title=${`${label}: ${text}`}>
      <svg width=${w} height=${h} viewBox=${`0 0 ${w} ${h}`} aria-hidden="true">
        <polyline points=${points.length > 1 ? line : `0,${h / 2} ${w},${h / 2}`} />
      </svg>
      <span class="spark-value">${text}</span>
    </span>`;
}
