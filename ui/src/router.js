// Routing by URL hash (/ui#/sandboxes/sbx-...): the server serves one page for /ui.
import { useEffect, useState } from 'preact/hooks';

function current() {
  const path = decodeURIComponent(window.location.hash.replace(/^#/, '')) || '/';
  return path.split('/').filter(Boolean);
}

export function useRoute() {
  const [route, setRoute] = useState(current);
  useEffect(() => {
    const changed = () => setRoute(current());
    window.addEventListener('hashchange', changed);
    return () => window.removeEventListener('hashchange', changed);
  }, []);
  return route;
}

export function go(path) { window.location.hash = `#${path}`; }

export const href = (path) => `#${path.split('/').map(encodeURIComponent).join('/')}`;
