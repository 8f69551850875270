// Drive the Uppy test page (dist/, see page/main.js) in headless Chromium with playwright-core.
//
// Usage: node driver.mjs '<json options>'
//
// Options:
//   chromium     path of the browser (Debian's /usr/bin/chromium; nothing is downloaded)
//   pageUrl      URL of dist/index.html on a static server of another origin than the tus server
//   files        paths of the files to upload (given to <input type=file> with setInputFiles)
//   setup        options for window.harness.setup() (endpoint, chunkSize, limit, ...)
//   scenario     "upload": upload and wait for the outcome
//                "pause":  setup.pauseAtBytes makes the page pause; the driver reads the server's
//                          offset twice (HEAD from Node, pauseProbeMs apart), then resumes
//                "reload": once the server acknowledged setup.notifyAtBytes, reload the page and
//                          upload the same files again in the new page (Uppy resumes from the
//                          URL tus-js-client stored in localStorage)
//   pauseProbeMs time between the two HEADs while paused (default 300)
//   timeoutMs    give up after this long (default 60000)
//
// Prints one JSON line: {ok, error, sessions: [{outcome, snapshot}], pauseProbe, console, timingsMs}
// and exits 0 once it could print it.
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { chromium } from 'playwright-core'

const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
]

const opts = JSON.parse(process.argv[2] ?? '{}')
const result = { ok: false, error: null, sessions: [], pauseProbe: null, console: [], timingsMs: {} }

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

// Events the page sends through window.tusfastEvent, awaited by name.
const waiting = new Map()
const arrived = new Map()
function onPageEvent(name, data) {
  arrived.set(name, data)
  waiting.get(name)?.(data)
}
function pageEvent(name) {
  if (arrived.has(name)) return Promise.resolve(arrived.get(name))
  return new Promise((resolve) => waiting.set(name, resolve))
}

async function openPage(page, navigate = true) {
  if (navigate) await page.goto(opts.pageUrl)
  await page.evaluate((setup) => window.harness.setup(setup), opts.setup)
  await page.setInputFiles('#files', opts.files)
  await page.evaluate(() => window.harness.addFromInput())
  await page.evaluate(() => window.harness.start())
}

async function finishSession(page) {
  const outcome = await page.evaluate(() => window.harness.finished())
  const snapshot = await page.evaluate(() => window.harness.snapshot())
  result.sessions.push({ outcome, snapshot })
}

async function headOffset(url) {
  const response = await fetch(url, { method: 'HEAD', headers: { 'Tus-Resumable': '1.0.0' } })
  return { status: response.status, offset: Number(response.headers.get('upload-offset')) }
}

async function pauseScenario(page) {
  await openPage(page)
  const paused = await pageEvent('paused')
  const snapshot = await page.evaluate(() => window.harness.snapshot())
  const created = snapshot.responses.find((r) => r.method === 'POST' && r.location)
  if (!created) throw new Error('paused before the upload was created')
  const first = await headOffset(created.location)
  await sleep(opts.pauseProbeMs ?? 300)
  const second = await headOffset(created.location)
  const later = await page.evaluate(() => window.harness.snapshot())
  result.pauseProbe = { url: created.location, paused, first, second,
                        requestsWhilePaused: later.requests.length - snapshot.requests.length }
  await page.evaluate((id) => window.harness.resume(id), paused.fileId)
  await finishSession(page)
}

async function reloadScenario(page) {
  await openPage(page)
  await pageEvent('accepted')
  const snapshot = await page.evaluate(() => window.harness.snapshot())
  await page.reload()
  result.sessions.push({ outcome: null, snapshot })
  opts.setup = { ...opts.setup, notifyAtBytes: null }
  await openPage(page, false)
  await finishSession(page)
}

async function run(page) {
  if (opts.scenario === 'pause') return pauseScenario(page)
  if (opts.scenario === 'reload') return reloadScenario(page)
  await openPage(page)
  return finishSession(page)
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tusfast-chromium-'))

let context = null
let closed = null

// Called from main and from the timeout; both wait for the same close.
function closeBrowser() {
  if (closed === null) {
    const started = Date.now()
    closed = Promise.race([context?.close().catch(() => {}), sleep(10000)])
      .then(() => { result.timingsMs.close = Date.now() - started })
  }
  return closed
}

async function main() {
  const timer = setTimeout(async () => {
    result.error = `driver timed out after ${opts.timeoutMs ?? 60000} ms`
    await closeBrowser()
    finish()
  }, opts.timeoutMs ?? 60000)
  try {
    let mark = Date.now()
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: opts.chromium,
      headless: true,
      args: CHROMIUM_ARGS,
    })
    await context.exposeFunction('tusfastEvent', onPageEvent)
    const page = context.pages()[0] ?? await context.newPage()
    page.on('console', (msg) => { if (msg.type() === 'error') result.console.push(msg.text()) })
    page.on('pageerror', (err) => result.console.push(`pageerror: ${err.message}`))
    result.timingsMs.launch = Date.now() - mark
    mark = Date.now()
    await run(page)
    result.timingsMs.run = Date.now() - mark
    result.ok = true
  } catch (err) {
    result.error ??= String(err?.stack ?? err)
  }
  clearTimeout(timer)
  await closeBrowser()
  finish()
}

let printed = false
function finish() {
  if (printed) return
  printed = true
  try {
    fs.rmSync(userDataDir, { recursive: true, force: true })
  } catch {
    // a browser that would not close may still be writing there; the OS temp dir keeps it
  }
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0))
}

main()
