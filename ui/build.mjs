// Builds the console into src/corral/server/ui/dist/: index.html and assets/ named by
// content hash (so a browser may cache them for ever). The output is committed, so that
// `corral serve` needs neither npm nor a CDN; tests/ui/test_build.py rebuilds it from a
// clean `npm ci` and checks it is byte for byte what is committed.
//
// Usage: node build.mjs [--out DIR]   (default: ../src/corral/server/ui/dist)
import * as esbuild from 'esbuild';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const flag = process.argv.indexOf('--out');
const dist = flag > 0 ? resolve(process.argv[flag + 1]) : resolve(here, '../src/corral/server/ui/dist');
const assets = join(dist, 'assets');

await rm(dist, { recursive: true, force: true });
await mkdir(assets, { recursive: true });
const result = await esbuild.build({
  absWorkingDir: here,
  entryPoints: ['src/main.js'],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2020'],
  outdir: assets,
  entryNames: '[name]-[hash]',
  assetNames: '[name]-[hash]',
  legalComments: 'eof',
  charset: 'utf8',
  metafile: true,
  write: true,
  logLevel: 'warning',
});

const outputs = Object.entries(result.metafile.outputs);
const [script, meta] = outputs.find(([, o]) => o.entryPoint === 'src/main.js');
const style = meta.cssBundle;
const page = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Corral console</title>
<link rel="stylesheet" href="/ui/assets/${basename(style)}">
<script type="module" src="/ui/assets/${basename(script)}"></script>
</head>
<body>
<div id="app"></div>
<noscript>The Corral console needs JavaScript. The same things can be done with the <code>corral</code> CLI.</noscript>
</body>
</html>
`;
await writeFile(join(dist, 'index.html'), page);
console.log(`built ${outputs.length} assets and index.html into ${dist}`);
