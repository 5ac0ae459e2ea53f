// openai_client.mjs - drives imgate with OpenAI's own Node SDK, unmodified:
// only the base URL and the key change. One call per run, its outcome as one
// JSON line on stdout (the Python tests read it).
//
//   node openai_client.mjs BASE_URL KEY ACTION PROMPT [IMAGE_FILE...]
//   ACTION: b64 | url | stream | error | edit | jpeg | quality (gpt-image-1, high, 1536x1024)
//           | mask (an edit of IMAGE_FILE under the mask MASK_FILE, the files given in
//             that order, with a transparent background)
import fs from "node:fs";
import OpenAI, { toFile } from "openai";

const [baseURL, apiKey, action, prompt, ...files] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, timeout: 60000 });

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

try {
  if (action === "b64" || action === "url") {
    const res = await client.images.generate({
      model: action === "b64" ? "gpt-image-1" : "nano-banana-2",
      prompt,
      size: action === "b64" ? "1536x1024" : "16:9",
      n: 1,
      ...(action === "url" ? { response_format: "url" } : {}),
    });
    const item = res.data[0];
    const png = item.b64_json
      ? Buffer.from(item.b64_json, "base64").subarray(0, 8).toString("hex")
      : null;
    out({ ok: true, count: res.data.length, png, url: item.url ?? null, size: res.size,
          output_format: res.output_format, created: res.created });
  } else if (action === "jpeg") {
    // Another output format, as OpenAI's docs show it: output_format with
    // output_compression; the bytes' first three say what came back.
    const res = await client.images.generate({
      model: "gpt-image-1", prompt, size: "1024x1024", output_format: "jpeg",
      output_compression: 60 });
    const bytes = Buffer.from(res.data[0].b64_json, "base64");
    out({ ok: true, count: res.data.length, magic: bytes.subarray(0, 3).toString("hex"),
          bytes: bytes.length, output_format: res.output_format });
  } else if (action === "quality") {
    const res = await client.images.generate({
      model: "gpt-image-1", prompt, quality: "high", size: "1536x1024" });
    out({ ok: true, count: res.data.length, quality: res.quality, size: res.size,
          png: Buffer.from(res.data[0].b64_json, "base64").subarray(0, 8).toString("hex") });
  } else if (action === "stream") {
    const stream = await client.images.generate({ model: "gpt-image-1", prompt, stream: true });
    const types = [];
    let png = null;
    for await (const ev of stream) {
      types.push(ev.type);
      if (ev.b64_json) png = Buffer.from(ev.b64_json, "base64").subarray(0, 8).toString("hex");
    }
    out({ ok: true, types, png });
  } else if (action === "edit") {
    // As the SDK's docs show it: files uploaded with toFile, several as image[].
    const image = await Promise.all(
      files.map((f, i) => toFile(fs.createReadStream(f), `ref${i}.png`, { type: "image/png" })));
    const res = await client.images.edit({
      model: "gpt-image-1", prompt, image: image.length === 1 ? image[0] : image });
    const item = res.data[0];
    out({ ok: true, count: res.data.length,
          png: Buffer.from(item.b64_json, "base64").subarray(0, 8).toString("hex") });
  } else if (action === "mask") {
    // As OpenAI's docs show an inpainting edit: the image and its mask uploaded
    // with toFile, the mask a PNG whose transparent pixels mark what to change.
    const [imageFile, maskFile] = files;
    const res = await client.images.edit({
      model: "gpt-image-1", prompt, background: "transparent",
      image: await toFile(fs.createReadStream(imageFile), "photo.png", { type: "image/png" }),
      mask: await toFile(fs.createReadStream(maskFile), "mask.png", { type: "image/png" }) });
    const bytes = Buffer.from(res.data[0].b64_json, "base64");
    out({ ok: true, count: res.data.length, background: res.background,
          output_format: res.output_format, png: bytes.subarray(0, 8).toString("hex"),
          colour_type: bytes.length > 25 ? bytes[25] : null });
  } else if (action === "error") {
    await client.images.generate({ model: "gpt-image-1", prompt });
    out({ ok: true });
  } else {
    out({ ok: false, bad_action: action });
  }
} catch (e) {
  out({ ok: false, name: e.constructor?.name, status: e.status ?? null, code: e.code ?? null,
        type: e.type ?? null, param: e.param ?? null, request_id: e.requestID ?? e.request_id ?? null,
        message: String(e.message) });
}
