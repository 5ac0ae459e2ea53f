// gemini_client.mjs - Google's own Gemini SDK (@google/genai, unmodified)
// pointed at imgate, for tests/e2e/test_dialect_gemini.py.
//
//   node gemini_client.mjs '{"base": "http://127.0.0.1:PORT", "key": "igk_...",
//                            "op": "generate" | "stream" | "list",
//                            "model": "...", "prompt": "...",
//                            "config": {...}, "reference_png_b64": "..."}'
//
// Prints one JSON line on stdout: what the SDK handed back, as the test needs
// it ({"ok": true, ...}), or the error it raised ({"ok": false, "name",
// "status", "message"}). Exit code 0 either way; anything else is a bug here.
import { GoogleGenAI } from "@google/genai";

const args = JSON.parse(process.argv[2]);
const ai = new GoogleGenAI({ apiKey: args.key, httpOptions: { baseUrl: args.base } });

// What a response says, images as their base64 text.
function summary(resp) {
  const candidates = (resp.candidates || []).map((c) => ({
    index: c.index,
    finishReason: c.finishReason,
    role: c.content && c.content.role,
    images: ((c.content && c.content.parts) || [])
      .filter((p) => p.inlineData)
      .map((p) => ({ mimeType: p.inlineData.mimeType, data: p.inlineData.data })),
  }));
  return {
    candidates,
    promptFeedback: resp.promptFeedback || null,
    modelVersion: resp.modelVersion || null,
    responseId: resp.responseId || null,
    // The SDK's own accessor of the first image (resp.data).
    sdkData: resp.data || null,
  };
}

function request() {
  const contents = [{ role: "user", parts: [{ text: args.prompt }] }];
  if (args.reference_png_b64)
    contents[0].parts.push({ inlineData: { mimeType: "image/png", data: args.reference_png_b64 } });
  return { model: args.model, contents, config: args.config || { responseModalities: ["IMAGE"] } };
}

async function run() {
  if (args.op === "generate") {
    return summary(await ai.models.generateContent(request()));
  }
  if (args.op === "stream") {
    const chunks = [];
    for await (const chunk of await ai.models.generateContentStream(request())) {
      chunks.push(summary(chunk));
    }
    return { chunks };
  }
  if (args.op === "list") {
    const names = [];
    for await (const m of await ai.models.list()) names.push(m.name);
    const one = await ai.models.get({ model: args.model });
    return { names, get: { name: one.name, displayName: one.displayName } };
  }
  throw new Error("unknown op " + args.op);
}

try {
  const out = await run();
  process.stdout.write(JSON.stringify({ ok: true, ...out }) + "\n");
} catch (e) {
  process.stdout.write(
    JSON.stringify({ ok: false, name: e.name, status: e.status ?? null, message: String(e.message) }) + "\n",
  );
}
