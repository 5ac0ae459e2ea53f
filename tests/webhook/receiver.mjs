// receiver.mjs - a webhook receiver for tests, verifying every delivery with
// the reference Standard Webhooks verifier (the npm package standardwebhooks).
//
//   node receiver.mjs [--port N] [--host 127.0.0.1]
//
// Listens on 127.0.0.1 (port 0: one the system picks) and prints one JSON line
// {"port": N} on stdout once it accepts connections. Every path but /_control/
// is a webhook endpoint; a POST there is verified against each configured
// secret in turn, recorded, and answered as scripted for its path (default:
// 200 when verified, 401 when not).
//
// Control API (JSON in, JSON out), for tests/e2e/webhook_util.py:
//   PUT  /_control/secrets      {"name": "whsec_...", ...}: the secrets to try, by name
//   PUT  /_control/script       {"path": "/hook", "steps": [STEP, ...]}: answers for path,
//                               in order; the last step repeats once the others are used.
//        STEP: {"status": 500, "times": 2}  answer 500, twice (times default 1)
//              {"status": 302, "location": "/elsewhere"}
//              {"status": 200, "delay_ms": 300}  answer after a delay
//              {"hang": true}  never answer (the connection is held until the sender gives up)
//   GET  /_control/deliveries   [RECORD, ...] oldest first
//   POST /_control/reset        forget the records and scripts (secrets stay)
//
// RECORD: {seq, path, id, timestamp, signature, event, verified, secret (the name that
// verified it, or null), error (the verifier's, or null), duplicate (this webhook-id was
// seen before), status (what was answered; null for a hang), received_ms, user_agent,
// content_type, body}
//
// SIGTERM or SIGINT: closes everything and exits 0.
import http from "node:http";
import { Webhook } from "standardwebhooks";

function parseArgs(argv) {
  const out = { port: 0, host: "127.0.0.1" };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--port") out.port = Number(argv[++i]);
    else if (argv[i] === "--host") out.host = argv[++i];
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!["127.0.0.1", "::1", "localhost"].includes(out.host))
    throw new Error("the test receiver listens on loopback only");
  return out;
}

const args = parseArgs(process.argv.slice(2));
let secrets = {};          // name -> "whsec_..."
let scripts = new Map();   // path -> {steps, index, used}
let records = [];
const seenIds = new Set();
const held = new Set();    // responses of hung requests, ended at shutdown

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function sendJson(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

// The next scripted step for path, or null (unscripted).
function nextStep(path) {
  const s = scripts.get(path);
  if (!s || s.steps.length === 0) return null;
  const step = s.steps[s.index];
  s.used++;
  if (s.used >= (step.times ?? 1) && s.index < s.steps.length - 1) {
    s.index++;
    s.used = 0;
  }
  return step;
}

// Tries every configured secret with the reference verifier.
function verify(body, headers) {
  let error = "no secret configured";
  for (const [name, secret] of Object.entries(secrets)) {
    try {
      new Webhook(secret).verify(body.toString("utf8"), headers, { jsonParse: false });
      return { verified: true, secret: name, error: null };
    } catch (e) {
      error = e.message;
    }
  }
  return { verified: false, secret: null, error };
}

function eventOf(body) {
  try {
    const v = JSON.parse(body.toString("utf8"));
    return typeof v?.type === "string" ? v.type : null;
  } catch {
    return null;
  }
}

async function onDelivery(req, res, path) {
  const body = await readBody(req);
  const id = req.headers["webhook-id"] ?? null;
  const v = verify(body, {
    "webhook-id": req.headers["webhook-id"],
    "webhook-timestamp": req.headers["webhook-timestamp"],
    "webhook-signature": req.headers["webhook-signature"],
  });
  const record = {
    seq: records.length + 1,
    path,
    method: req.method,
    id,
    timestamp: req.headers["webhook-timestamp"] ?? null,
    signature: req.headers["webhook-signature"] ?? null,
    event: eventOf(body),
    verified: v.verified,
    secret: v.secret,
    error: v.error,
    duplicate: id !== null && seenIds.has(id),
    status: null,
    received_ms: Date.now(),
    user_agent: req.headers["user-agent"] ?? null,
    content_type: req.headers["content-type"] ?? null,
    body: body.toString("utf8"),
  };
  if (id !== null && v.verified) seenIds.add(id);
  records.push(record);

  if (!v.verified) {
    record.status = 401;
    sendJson(res, 401, { error: v.error });
    return;
  }
  const step = nextStep(path) ?? { status: 200 };
  if (step.hang) {
    held.add(res);
    res.on("close", () => held.delete(res));
    return;
  }
  const answer = () => {
    record.status = step.status;
    const headers = { "content-type": "application/json" };
    if (step.location) headers.location = step.location;
    res.writeHead(step.status, headers);
    res.end(JSON.stringify({ received: id }));
  };
  if (step.delay_ms) setTimeout(answer, step.delay_ms);
  else answer();
}

async function onControl(req, res, path) {
  const body = await readBody(req);
  const input = body.length ? JSON.parse(body.toString("utf8")) : null;
  if (req.method === "PUT" && path === "/_control/secrets") {
    secrets = { ...input };
    return sendJson(res, 200, { names: Object.keys(secrets) });
  }
  if (req.method === "PUT" && path === "/_control/script") {
    if (typeof input?.path !== "string" || !Array.isArray(input.steps))
      return sendJson(res, 400, { error: "want {path, steps: [...]}" });
    scripts.set(input.path, { steps: input.steps, index: 0, used: 0 });
    return sendJson(res, 200, { path: input.path });
  }
  if (req.method === "GET" && path === "/_control/deliveries") return sendJson(res, 200, records);
  if (req.method === "POST" && path === "/_control/reset") {
    records = [];
    scripts = new Map();
    seenIds.clear();
    return sendJson(res, 200, {});
  }
  return sendJson(res, 404, { error: `no control ${req.method} ${path}` });
}

const server = http.createServer((req, res) => {
  const path = new URL(req.url, "http://receiver").pathname;
  const handler = path.startsWith("/_control/") ? onControl : onDelivery;
  handler(req, res, path).catch((e) => {
    process.stderr.write(`receiver: ${e.stack}\n`);
    if (!res.headersSent) sendJson(res, 500, { error: String(e.message) });
  });
});
// A hung request must stay hung: no server-side timeout ends it first.
server.requestTimeout = 0;
server.headersTimeout = 0;
server.keepAliveTimeout = 1000;

function shutdown() {
  for (const res of held) res.destroy();
  server.closeAllConnections();
  server.close(() => process.exit(0));
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);

server.listen(args.port, args.host, () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + "\n");
});
