// The test page: Uppy (@uppy/core + @uppy/tus) uploading files chosen in <input id="files">.
//
// The driver (driver.mjs) controls it through window.harness:
//   setup(options)   create Uppy with the Tus plugin; options:
//                      endpoint, chunkSize, limit, parallelUploads, retryDelays (null: none),
//                      requestDelayMs (sleep before each PATCH, client side, so that the driver
//                      can act mid-upload); once a PATCH reply acknowledges an offset of at
//                      least pauseAtBytes, uppy.pauseResume() that file (between two PATCHes, so
//                      the server's offset is settled while paused); once one acknowledges
//                      notifyAtBytes, tell the driver
//   addFromInput()   add the input's files to Uppy; returns their Uppy ids
//   start()          uppy.upload(); `finished()` returns its outcome
//   resume(fileId)   uppy.pauseResume(fileId) on a paused file
//   snapshot()       what was seen so far (requests, responses, events, localStorage keys)
// and hears from it through window.tusfastEvent(name, data), a function the driver exposes.
import Uppy from '@uppy/core'
import Tus from '@uppy/tus'

const state = {
  requests: [],     // {method, url, uploadOffset, uploadConcat, file} as sent
  responses: [],    // {method, url, status, uploadOffset, location} as received
  errors: [],       // upload-error events
  logs: [],         // Uppy's debug log lines mentioning tus resumption
  paused: null,     // {fileId, offset} once pauseAtBytes was acknowledged
  maxActive: 0,     // most files uploading at the same time
  active: new Set(),
}
let uppy = null
const fileOfUrl = new Map()   // request URL -> Uppy file id (onAfterResponse gets no file)
let outcome = null

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

function notify(name, data) {
  if (typeof window.tusfastEvent === 'function') window.tusfastEvent(name, data)
}

function markActive(fileId) {
  state.active.add(fileId)
  state.maxActive = Math.max(state.maxActive, state.active.size)
}

function setup(options) {
  let notified = false
  const logger = {
    debug: (...args) => {
      const text = args.map(String).join(' ')
      if (text.includes('[Tus]')) state.logs.push(text)
    },
    warn: () => {},
    error: () => {},
  }
  uppy = new Uppy({ autoProceed: false, logger })
  uppy.use(Tus, {
    endpoint: options.endpoint,
    chunkSize: options.chunkSize ?? Infinity,
    limit: options.limit ?? 1,
    parallelUploads: options.parallelUploads ?? 1,
    retryDelays: options.retryDelays === undefined ? [0, 200, 500] : options.retryDelays,
    async onBeforeRequest(req, file) {
      if (file) {
        markActive(file.id)
        fileOfUrl.set(req.getURL(), file.id)
      }
      state.requests.push({
        method: req.getMethod(),
        url: req.getURL(),
        uploadOffset: req.getHeader('Upload-Offset') ?? null,
        uploadConcat: req.getHeader('Upload-Concat') ?? null,
        file: file?.name ?? null,
      })
      if (req.getMethod() === 'PATCH' && options.requestDelayMs) await sleep(options.requestDelayMs)
    },
    onAfterResponse(req, res) {
      const offset = res.getHeader('Upload-Offset')
      state.responses.push({
        method: req.getMethod(),
        url: req.getURL(),
        status: res.getStatus(),
        uploadOffset: offset ?? null,
        location: res.getHeader('Location') ?? null,
      })
      if (req.getMethod() !== 'PATCH' || res.getStatus() !== 204) return
      if (!notified && options.notifyAtBytes != null && Number(offset) >= options.notifyAtBytes) {
        notified = true
        notify('accepted', { url: req.getURL(), offset: Number(offset) })
      }
      if (!state.paused && options.pauseAtBytes != null && Number(offset) >= options.pauseAtBytes) {
        // tus-js-client checks for an abort before it sends the next PATCH
        const fileId = fileOfUrl.get(req.getURL())
        state.paused = { fileId, offset: Number(offset) }
        uppy.pauseResume(fileId)
        notify('paused', state.paused)
      }
    },
  })
  uppy.on('upload-success', (file) => state.active.delete(file.id))
  uppy.on('upload-error', (file, error, response) => {
    state.active.delete(file.id)
    state.errors.push({ file: file?.name ?? null, message: String(error?.message ?? error),
                        status: response?.status ?? null })
  })
}

function addFromInput() {
  const input = document.getElementById('files')
  return Array.from(input.files).map((file) => uppy.addFile({
    name: file.name,
    type: file.type || 'application/octet-stream',
    data: file,
    source: 'Local',
  }))
}

function start() {
  outcome = uppy.upload().then((result) => ({
    successful: (result?.successful ?? []).map((f) => ({ id: f.id, name: f.name, size: f.size,
                                                          uploadURL: f.response?.uploadURL ?? null })),
    failed: (result?.failed ?? []).map((f) => ({ id: f.id, name: f.name, error: String(f.error) })),
  }), (error) => ({ successful: [], failed: [{ id: null, name: null, error: String(error) }] }))
}

function snapshot() {
  return {
    requests: state.requests,
    responses: state.responses,
    errors: state.errors,
    logs: state.logs,
    paused: state.paused,
    maxActive: state.maxActive,
    storedKeys: Object.keys(window.localStorage).filter((key) => key.startsWith('tus::')),
  }
}

window.harness = {
  setup,
  addFromInput,
  start,
  finished: () => outcome,
  resume: (fileId) => uppy.pauseResume(fileId),
  snapshot,
}
