// Drive tus-js-client (its Node build) against a tus server for the interop tests.
//
// Usage: node client.mjs '<json options>'
//
// Options (all but `file` optional):
//   endpoint                 collection URL used to create uploads
//   file                     path of the file to upload
//   chunkSize                number, or null / "Infinity" for a single request (default)
//   uploadLengthDeferred     stream the file (fs.createReadStream piped through a PassThrough,
//                            so tus-js-client cannot learn the size) and send Upload-Defer-Length
//   uploadDataDuringCreation creation-with-upload
//   uploadSize               explicit Upload-Length (e.g. to lie about the size)
//   metadata                 object of string values
//   abortAfterBytes          abort once onProgress reported at least N bytes, print, exit
//   terminateOnAbort         with abortAfterBytes: abort(true), i.e. also DELETE the upload
//   uploadUrl                resume this upload URL (tus-js-client's `uploadUrl` option)
//   urlStorage               path of a JSON file used as tus-js-client's FileUrlStorage; with
//                            it, the upload URL is stored under the file's fingerprint
//   resumePrevious           call findPreviousUploads() (needs urlStorage) and resume from the
//                            newest upload found there
//   retryDelays              array of ms, or null to disable retries (default [0, 200, 500, 1000])
//   requestDelayMs           sleep this long before each PATCH (slows the upload down)
//   parallelUploads          split the file into N partial uploads (Upload-Concat: partial)
//                            sent in parallel, then create the final upload (concatenation)
//   parallelUploadBoundaries with parallelUploads: array of {start, end} byte ranges, one a part
//   metadataForPartialUploads with parallelUploads: metadata object sent on each partial upload
//   timeoutMs                give up (and report an error) after this long (default 60000)
//
// Prints exactly one JSON line on stdout:
//   {ok, aborted, url, bytesSent, bytesAccepted, bytesTotal, error, status, previousUploads,
//    requests: [{method, url, headers, status, responseHeaders}]}
// and exits 0 when that line could be printed (ok=false on failure), 2 on bad usage.

import * as fs from 'node:fs'
import { PassThrough } from 'node:stream'
import { FileUrlStorage, Upload } from 'tus-js-client'

const REQUEST_HEADERS = [
  'Upload-Offset',
  'Upload-Length',
  'Upload-Defer-Length',
  'Upload-Metadata',
  'Content-Type',
  'Upload-Concat',
]
const RESPONSE_HEADERS = ['upload-offset', 'upload-length', 'location', 'tus-resumable', 'upload-concat']

let printed = false
function finish(result, code = 0) {
  if (printed) return
  printed = true
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(code))
}

function usage(message) {
  finish({ ok: false, error: `usage: ${message}` }, 2)
}

let opts
try {
  opts = JSON.parse(process.argv[2] ?? '')
} catch (err) {
  usage(`first argument must be a JSON object (${err})`)
}

if (opts && typeof opts.file === 'string') {
  main(opts)
} else if (!printed) {
  usage('the `file` option is required')
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

function pick(getter, names) {
  const out = {}
  for (const name of names) {
    const value = getter(name)
    if (value !== undefined && value !== null) out[name] = String(value)
  }
  return out
}

async function main(o) {
  const state = {
    ok: false,
    aborted: false,
    url: null,
    bytesSent: 0,
    bytesAccepted: 0,
    bytesTotal: null,
    error: null,
    status: null,
    previousUploads: null,
    requests: [],
  }
  let upload = null
  const report = (extra = {}, code = 0) => {
    if (upload) state.url = upload.url ?? state.url
    finish({ ...state, ...extra }, code)
  }

  const timer = setTimeout(() => {
    report({ ok: false, error: `client timeout after ${o.timeoutMs ?? 60000} ms` })
  }, o.timeoutMs ?? 60000)

  let chunkSize = o.chunkSize
  if (chunkSize == null || chunkSize === 'Infinity') chunkSize = Number.POSITIVE_INFINITY

  let input
  if (o.uploadLengthDeferred) {
    // A PassThrough has no `path`, so tus-js-client treats it as a plain stream of unknown size.
    input = fs.createReadStream(o.file).pipe(new PassThrough({ highWaterMark: 64 * 1024 }))
  } else {
    input = fs.createReadStream(o.file)
  }

  const options = {
    endpoint: o.endpoint ?? null,
    chunkSize,
    metadata: o.metadata ?? {},
    uploadLengthDeferred: Boolean(o.uploadLengthDeferred),
    uploadDataDuringCreation: Boolean(o.uploadDataDuringCreation),
    retryDelays: o.retryDelays === undefined ? [0, 200, 500, 1000] : o.retryDelays,
    storeFingerprintForResuming: Boolean(o.urlStorage),
    removeFingerprintOnSuccess: false,
    onBeforeRequest: async (req) => {
      const entry = {
        method: req.getMethod(),
        url: req.getURL(),
        headers: pick((n) => req.getHeader(n), REQUEST_HEADERS),
        status: null,
        responseHeaders: null,
      }
      state.requests.push(entry)
      req._interopEntry = entry
      if (o.requestDelayMs && req.getMethod() === 'PATCH') await sleep(o.requestDelayMs)
    },
    onAfterResponse: (req, res) => {
      const entry = req._interopEntry
      if (!entry) return
      entry.status = res.getStatus()
      entry.responseHeaders = pick((n) => res.getHeader(n), RESPONSE_HEADERS)
    },
    onProgress: (bytesSent, bytesTotal) => {
      state.bytesSent = Math.max(state.bytesSent, bytesSent)
      state.bytesTotal = bytesTotal
      if (o.abortAfterBytes != null && !state.aborted && bytesSent >= o.abortAfterBytes) {
        state.aborted = true
        upload.abort(Boolean(o.terminateOnAbort)).then(
          () => {
            clearTimeout(timer)
            report({ ok: false })
          },
          (err) => report({ ok: false, error: String(err) }),
        )
      }
    },
    onChunkComplete: (_chunkSize, bytesAccepted, bytesTotal) => {
      state.bytesAccepted = bytesAccepted
      state.bytesTotal = bytesTotal
    },
    onSuccess: () => {
      clearTimeout(timer)
      state.ok = true
      // For uploads finished by the creation request, or resumed when already complete,
      // onChunkComplete is not called; the source size is the accepted amount then.
      if (state.bytesTotal != null) state.bytesAccepted = Math.max(state.bytesAccepted, state.bytesTotal)
      report()
    },
    onError: (err) => {
      clearTimeout(timer)
      const status = err?.originalResponse ? err.originalResponse.getStatus() : null
      report({ ok: false, error: String(err?.message ?? err), status })
    },
  }
  if (o.uploadSize != null) options.uploadSize = o.uploadSize
  if (o.parallelUploads != null) options.parallelUploads = o.parallelUploads
  if (o.parallelUploadBoundaries != null) options.parallelUploadBoundaries = o.parallelUploadBoundaries
  if (o.metadataForPartialUploads != null) options.metadataForPartialUploads = o.metadataForPartialUploads
  if (o.uploadUrl) options.uploadUrl = o.uploadUrl
  if (o.urlStorage) {
    options.urlStorage = new FileUrlStorage(o.urlStorage)
  }

  upload = new Upload(input, options)

  try {
    if (o.resumePrevious) {
      if (!o.urlStorage) {
        usage('`resumePrevious` needs `urlStorage`')
        return
      }
      const previous = await upload.findPreviousUploads()
      state.previousUploads = previous.length
      if (previous.length > 0) {
        // Newest first: creationTime is a Date string.
        previous.sort((a, b) => Date.parse(b.creationTime) - Date.parse(a.creationTime))
        upload.resumeFromPreviousUpload(previous[0])
      }
    }
    upload.start()
  } catch (err) {
    clearTimeout(timer)
    report({ ok: false, error: `exception: ${err?.stack ?? err}` })
  }
}
