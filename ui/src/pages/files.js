// A file browser: list a directory, go into folders, download, upload, and preview text
// and images. Names are text nodes (htm never parses them as HTML); previews are blob
// URLs made here, so nothing the sandbox wrote is ever loaded from the server's origin as
// a document.
import { useEffect, useState } from 'preact/hooks';
import { html } from '../html.js';
import { getJson, getBlob, getPrefix, putBody, query, sandboxPath } from '../api.js';
import { ErrorBox } from '../components/error.js';
import { bytes } from '../format.js';

const PREVIEW_TEXT = 1024 * 1024; // a text preview reads and shows at most 1 MiB
const PREVIEW_IMAGE = 16 * 1024 * 1024; // a larger image is not previewed (download it)
const IMAGES = { png: 'image/png', jpg: 'image/jpeg', jpeg: 'image/jpeg', gif: 'image/gif',
                 webp: 'image/webp', svg: 'image/svg+xml', bmp: 'image/bmp' };

function parent(path) {
  const trimmed = path.replace(/\/+$/, '');
  const cut = trimmed.lastIndexOf('/');
  return cut <= 0 ? '/' : trimmed.slice(0, cut);
}

function join(dir, name) { return `${dir.replace(/\/+$/, '')}/${name}`; }

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

export function Files({ id, paused }) {
  const [wake, setWake] = useState(false);
  if (paused && !wake) {
    return html`
      <p class="empty">The sandbox is paused: reading its files resumes it.
        <button type="button" onClick=${() => setWake(true)}>Resume and show its files</button></p>`;
  }
  return html`<${Browser} id=${id} />`;
}

function Browser({ id }) {
  const [path, setPath] = useState('/work');
  const [typed, setTyped] = useState('/work');
  const [entries, setEntries] = useState(null);
  const [error, setError] = useState(null);
  const [preview, setPreview] = useState(null);
  const [note, setNote] = useState('');
  const base = `${sandboxPath(id)}/files`;

  const load = async (dir) => {
    setError(null);
    try {
      const listed = await getJson(`${base}/list${query({ path: dir })}`);
      listed.entries.sort((a, b) => (b.type === 'dir') - (a.type === 'dir') || a.name.localeCompare(b.name));
      setEntries(listed.entries);
    } catch (e) {
      setEntries(null);
      setError(e);
    }
  };
  useEffect(() => { setTyped(path); load(path); }, [id, path]);
  useEffect(() => () => { if (preview && preview.url) URL.revokeObjectURL(preview.url); }, [preview]);

  const open = async (entry) => {
    setError(null);
    const ext = entry.name.includes('.') ? entry.name.split('.').pop().toLowerCase() : '';
    try {
      if (IMAGES[ext]) {
        if (entry.size > PREVIEW_IMAGE) {
          setError({ code: 'invalid_argument', message: `${entry.name} is over 16 MiB: download it to see it.` });
          return;
        }
        const { blob } = await getPrefix(`${base}${query({ path: entry.path })}`, PREVIEW_IMAGE);
        setPreview({ name: entry.name, url: URL.createObjectURL(new Blob([blob], { type: IMAGES[ext] })) });
      } else {
        const { blob, more } = await getPrefix(`${base}${query({ path: entry.path })}`, PREVIEW_TEXT);
        setPreview({ name: entry.name, text: await blob.text(), cut: more });
      }
    } catch (e) {
      setError(e);
    }
  };
  const download = async (entry) => {
    setError(null);
    try {
      saveBlob(await getBlob(`${base}${query({ path: entry.path })}`), entry.name);
    } catch (e) {
      setError(e);
    }
  };
  const upload = async (event) => {
    event.preventDefault();
    const input = event.currentTarget.elements.file;
    const chosen = [...input.files];
    if (!chosen.length) {
      setError({ code: 'invalid_argument', message: 'Choose a file to upload first.' });
      return;
    }
    setError(null);
    try {
      for (const file of chosen) {
        await putBody(`${base}${query({ path: join(path, file.name) })}`, file);
      }
      setNote(`Uploaded ${chosen.map((f) => f.name).join(', ')} to ${path}.`);
      input.value = '';
      load(path);
    } catch (e) {
      setError(e);
    }
  };
  return html`
    <div class="files">
      <form class="toolbar" aria-label="Go to a folder" onSubmit=${(e) => { e.preventDefault(); setPath(typed.trim() || '/'); }}>
        <label>Folder <input name="path" value=${typed} onInput=${(e) => setTyped(e.currentTarget.value)} maxlength="4096" /></label>
        <button type="submit">Open</button>
        <button type="button" onClick=${() => setPath(parent(path))} disabled=${path === '/'} aria-label="Up one folder">Up</button>
        <button type="button" onClick=${() => load(path)}>Refresh</button>
      </form>
      <form class="toolbar" aria-label="Upload files" onSubmit=${upload}>
        <label>Upload to this folder <input type="file" name="file" multiple /></label>
        <button type="submit">Upload</button>
        <span role="status" class="muted">${note}</span>
      </form>
      <${ErrorBox} error=${error} />
      ${entries && html`
        <table class="list" aria-label=${`Files in ${path}`}>
          <thead><tr><th scope="col">Name</th><th scope="col">Type</th><th scope="col">Size</th>
            <th scope="col">Modified</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
          <tbody>
            ${entries.map((e) => html`
              <tr key=${e.path} data-name=${e.name}>
                <td>${e.type === 'dir'
                  ? html`<button type="button" class="link" onClick=${() => setPath(e.path)} aria-label=${`Open folder ${e.name}`}>${e.name}/</button>`
                  : html`<span class="file-name">${e.name}</span>`}
                  ${e.type === 'symlink' && e.target && html` <span class="muted">→ ${e.target}</span>`}</td>
                <td>${e.type}</td>
                <td>${e.type === 'file' ? bytes(e.size) : ''}</td>
                <td>${new Date(e.mtime * 1000).toLocaleString()}</td>
                <td class="actions">${e.type === 'file' && html`
                  <button type="button" onClick=${() => open(e)} aria-label=${`Preview ${e.name}`}>Preview</button>
                  <button type="button" onClick=${() => download(e)} aria-label=${`Download ${e.name}`}>Download</button>`}</td>
              </tr>`)}
          </tbody>
        </table>
        ${entries.length === 0 && html`<p class="empty">This folder is empty.</p>`}`}
      ${preview && html`
        <section class="preview" aria-label=${`Preview of ${preview.name}`}>
          <header class="page-head"><h2>${preview.name}</h2><span class="spacer"></span>
            <button type="button" onClick=${() => setPreview(null)}>Close preview</button></header>
          ${preview.url ? html`<img src=${preview.url} alt=${preview.name} />`
                        : html`<pre class="file-text">${preview.text}</pre>`}
          ${preview.cut && html`<p class="muted">Only the first 1 MiB is shown: download the file for the rest.</p>`}
        </section>`}
    </div>`;
}
