import { html } from '../html.js';
import { nextStep } from '../api.js';

/** An error as the server said it, and what to do about it. */
export function ErrorBox({ error, onRetry }) {
  if (!error) return null;
  return html`
    <div class="error" role="alert">
      <p><strong>${error.message}</strong>${error.code ? html` <code>${error.code}</code>` : ''}</p>
      <p>${nextStep(error)}</p>
      ${onRetry && html`<button type="button" onClick=${onRetry}>Retry</button>`}
    </div>`;
}
