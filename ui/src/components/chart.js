// One time series chart (uPlot: small, fast, draws on a canvas; its styles are in a file).
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import { html } from '../html.js';

const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea'];

/**
 * series: [{label, values}], times: Unix seconds. `format` writes a value on the axis.
 * The canvas is described for screen readers by `summary`.
 */
export function Chart({ title, times, series, format, summary }) {
  const box = useRef(null);
  const plot = useRef(null);
  const shape = series.map((s) => s.label).join('|');
  useEffect(() => {
    const width = () => Math.max(200, (box.current && box.current.clientWidth) || 400);
    const options = {
      width: width(), height: 180,
      series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: COLORS[i % COLORS.length],
                                              width: 1.5, value: (u, v) => (v === null ? '—' : format(v)) }))],
      axes: [{}, { values: (u, ticks) => ticks.map(format), size: 70 }],
      scales: { y: { range: (u, lo, hi) => [0, Math.max(hi, 1e-9) * 1.1] } },
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
    };
    plot.current = new uPlot(options, [times, ...series.map((s) => s.values)], box.current);
    const resized = new ResizeObserver(() => plot.current && plot.current.setSize({ width: width(), height: 180 }));
    resized.observe(box.current);
    return () => { resized.disconnect(); plot.current.destroy(); plot.current = null; };
  }, [shape]);
  useEffect(() => {
    if (plot.current) plot.current.setData([times, ...series.map((s) => s.values)]);
  });
  return html`
    <figure class="chart">
      <figcaption>${title}</figcaption>
      <div ref=${box} role="img" aria-label=${`${title}: ${summary}`}></div>
    </figure>`;
}
