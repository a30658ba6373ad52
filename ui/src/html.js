// htm turns tagged template literals into preact elements: no JSX transform in the build.
// Values interpolated into a template become text nodes or properties, never parsed HTML.
import { h } from 'preact';
import htm from 'htm';

export const html = htm.bind(h);
