// Bundle the test page (page/main.js with @uppy/core and @uppy/tus) into dist/ with esbuild.
// Run by the pytest fixture before the browser tests; dist/ is build output, never committed.
import * as fs from 'node:fs'
import * as path from 'node:path'
import { fileURLToPath } from 'node:url'
import * as esbuild from 'esbuild'

const here = path.dirname(fileURLToPath(import.meta.url))
const dist = path.join(here, 'dist')

fs.rmSync(dist, { recursive: true, force: true })
fs.mkdirSync(dist)
await esbuild.build({
  entryPoints: [path.join(here, 'page', 'main.js')],
  outfile: path.join(dist, 'main.js'),
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: 'es2022',
  logLevel: 'warning',
})
fs.copyFileSync(path.join(here, 'page', 'index.html'), path.join(dist, 'index.html'))
