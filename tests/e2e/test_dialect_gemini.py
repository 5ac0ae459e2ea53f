"""test_dialect_gemini.py - the Gemini dialect (docs/api-gemini.md): Google's
Gemini API under /v1beta/, answered by imgate's tasks.

Raw HTTP, field by field against the shapes of
shared/reference/upstreams.md: generateContent (image inline, base64 of the
stored result), streamGenerateContent (SSE `data:` events; a JSON array
without alt=sse), a blocked prompt (promptFeedback, no candidates), failures
and every refusal in Gemini's error shape, the models list, the webhook
payload of a task made here. Then Google's own SDK (@google/genai, unmodified,
tests/sdk/gemini_client.mjs) against the same server. Each generation is a
task charged like a native one: the ledger says so, and ledger-verify passes.
"""

import base64
import http.client
import json
import os
import shutil
import subprocess

import billing_util as b
import harness as h
import webhook_util as wu

EMAIL = "gemini@example.com"
BONUS = 10000000
G25 = "gemini-2.5-flash-image"           # nano-banana
G31 = "gemini-3.1-flash-image-preview"   # nano-banana-2
BLOCK = "BLOCKME"
FAIL = "FAILME"
ERROR_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND",
                  405: "UNIMPLEMENTED", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
                  500: "INTERNAL"}

SDK_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk"))
SDK_CLIENT = os.path.join(SDK_DIR, "gemini_client.mjs")


def gen_path(model, stream=False, query=""):
    return "/v1beta/models/%s:%s%s" % (model, "streamGenerateContent" if stream
                                       else "generateContent", query)


def gen_body(prompt, ratio=None, size=None, count=None, refs=(), modalities=("IMAGE",)):
    parts = [{"text": prompt}] + [
        {"inlineData": {"mimeType": "image/png", "data": h.b64(r)}} for r in refs]
    cfg = {"responseModalities": list(modalities)}
    image = {}
    if ratio:
        image["aspectRatio"] = ratio
    if size:
        image["imageSize"] = size
    if image:
        cfg["imageConfig"] = image
    if count:
        cfg["candidateCount"] = count
    return {"contents": [{"role": "user", "parts": parts}], "generationConfig": cfg}


def gkey(key):
    return {"x-goog-api-key": key}


def sse_events(body):
    """The `data:` payloads of an SSE body, and the number of blank lines
    that carried nothing (keep-alives)."""
    events, blanks = [], 0
    for block in body.decode("utf-8").split("\n\n"):
        lines = [ln for ln in block.split("\n")]
        data = [ln[len("data: "):] for ln in lines if ln.startswith("data: ")]
        others = [ln for ln in lines if ln and not ln.startswith("data: ")]
        if others:
            raise AssertionError("SSE block with more than data lines: %r" % block)
        if data:
            events.append(json.loads("\n".join(data)))
        blanks += sum(1 for ln in lines if not ln)
    return events, blanks


class GeminiTestCase(b.BillingTestCase):

    def server(self, **extra):
        cfg = b.billing_config(BONUS, sim={"delay_ms": 50, "moderate_marker": BLOCK,
                                           "fail_marker": FAIL})
        return self.start_server(accounts=[EMAIL], config=h.deep_merge(cfg, extra))

    def assertGeminiError(self, r, status, msg_part=None, field=None, reason=None):
        """r is Gemini's error document: {"error": {code, message, status, details}}."""
        self.assertEqual(r.status, status, r)
        self.assertIn("application/json", r.headers.get("Content-Type", ""), r)
        doc = r.json()
        self.assertEqual(set(doc), {"error"}, doc)
        e = doc["error"]
        self.assertEqual(set(e), {"code", "message", "status", "details"}, doc)
        self.assertEqual((e["code"], e["status"]), (status, ERROR_STATUSES[status]), doc)
        self.assertTrue(isinstance(e["message"], str) and e["message"], doc)
        if msg_part:
            self.assertIn(msg_part, e["message"], doc)
        types = [d["@type"] for d in e["details"]]
        self.assertEqual(types[0], "type.googleapis.com/google.rpc.ErrorInfo", doc)
        self.assertEqual(e["details"][0]["domain"], "imgate", doc)
        if reason:
            self.assertEqual(e["details"][0]["reason"], reason, doc)
        if field:
            bad = [d for d in e["details"]
                   if d["@type"] == "type.googleapis.com/google.rpc.BadRequest"]
            self.assertEqual([v["field"] for v in bad[0]["fieldViolations"]], [field], doc)
        return e

    def assertImageCandidate(self, cand, index, size):
        """One candidate: the model's content, one inline PNG of this size."""
        self.assertEqual(set(cand), {"content", "finishReason", "index"}, cand)
        self.assertEqual((cand["finishReason"], cand["index"]), ("STOP", index))
        self.assertEqual(cand["content"]["role"], "model")
        parts = cand["content"]["parts"]
        self.assertEqual(len(parts), 1, parts)
        self.assertEqual(set(parts[0]), {"inlineData"})
        self.assertEqual(set(parts[0]["inlineData"]), {"mimeType", "data"})
        self.assertEqual(parts[0]["inlineData"]["mimeType"], "image/png")
        png = base64.b64decode(parts[0]["inlineData"]["data"], validate=True)
        h.png_verify(png)
        self.assertEqual(h.png_size(png), size)
        return png

    def settled(self, srv, key, uid, price, charged):
        """The task (native view) is final with this cost, and the ledger
        shows its hold settled."""
        t = srv.wait_final(uid, key)
        self.assertCost(t, price, charged)
        self.assertSettled(b.ledger_rows(srv.data_dir, EMAIL), uid, price, charged)
        return t


class GenerateContentTest(GeminiTestCase):

    def test_image_inline_field_by_field(self):
        srv = self.server()
        key = srv.keys[EMAIL]
        ref = h.make_png(40, 20)
        r = srv.request("POST", gen_path(G25), headers=gkey(key),
                        json_body=gen_body("a lighthouse", ratio="16:9", refs=[ref],
                                           modalities=("TEXT", "IMAGE")))
        self.assertEqual(r.status, 200, r)
        self.assertIn("application/json", r.headers.get("Content-Type"))
        doc = r.json()
        self.assertEqual(set(doc), {"candidates", "modelVersion", "responseId"}, doc)
        self.assertEqual(doc["modelVersion"], G25)
        self.assertRegex(doc["responseId"], h.UUID_RE)
        self.assertEqual(len(doc["candidates"]), 1)
        png = self.assertImageCandidate(doc["candidates"][0], 0, (1344, 768))
        # The task behind it: the native API shows it, the same image, and
        # what it cost (the reference image included).
        t = srv.task(doc["responseId"], key)
        self.assertEqual((t["status"], t["model"], t["aspect_ratio"], t["resolution"]),
                         ("succeeded", "nano-banana", "16:9", "1K"), t)
        self.assertEqual(srv.fetch_url(t["images"][0]["url"]).body, png)
        price = t["cost"]["price_micros"]
        self.assertGreaterEqual(price, b.PRICE_NB_1K)
        self.settled(srv, key, doc["responseId"], price, price)
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - price, 0)

    def test_size_count_and_other_key_spellings(self):
        srv = self.server()
        key = srv.keys[EMAIL]
        # ?key= and snake_case, as Google's REST examples write them.
        body = {"contents": [{"parts": [{"text": "two small squares"}]}],
                "generation_config": {"image_config": {"aspect_ratio": "1:1",
                                                       "image_size": "512"},
                                      "candidate_count": 2}}
        r = srv.request("POST", gen_path(G31, query="?key=" + key), json_body=body)
        self.assertEqual(r.status, 200, r)
        doc = r.json()
        self.assertEqual([c["index"] for c in doc["candidates"]], [0, 1])
        a = self.assertImageCandidate(doc["candidates"][0], 0, (512, 512))
        self.assertImageCandidate(doc["candidates"][1], 1, (512, 512))
        self.assertEqual(doc["modelVersion"], G31)
        t = srv.wait_final(doc["responseId"], key)
        self.assertEqual((t["model"], t["resolution"], t["n"], len(t["images"])),
                         ("nano-banana-2", "512", 2, 2))
        self.assertEqual(srv.fetch_url(t["images"][0]["url"]).body, a)
        unit = t["cost"]["price_micros"] // 2
        self.assertSettled(b.ledger_rows(srv.data_dir, EMAIL), t["uid"], 2 * unit, 2 * unit)
        # Authorization: Bearer works too; the catalog's own name as the model.
        r = srv.request("POST", gen_path("nano-banana"), key=key, json_body=gen_body("bearer"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["modelVersion"], "nano-banana")
        self.assertImageCandidate(r.json()["candidates"][0], 0, (1024, 1024))

    def test_blocked_prompt_is_prompt_feedback(self):
        srv = self.server()
        key = srv.keys[EMAIL]
        r = srv.request("POST", gen_path(G25), headers=gkey(key),
                        json_body=gen_body("please " + BLOCK))
        self.assertEqual(r.status, 200, r)  # Gemini: a blocked prompt is not an HTTP error
        doc = r.json()
        self.assertEqual(set(doc), {"promptFeedback", "modelVersion", "responseId"}, doc)
        self.assertEqual(set(doc["promptFeedback"]), {"blockReason", "blockReasonMessage"})
        self.assertEqual(doc["promptFeedback"]["blockReason"], "SAFETY")
        self.assertIn("moderation", doc["promptFeedback"]["blockReasonMessage"])
        t = self.settled(srv, key, doc["responseId"], b.PRICE_NB_1K, 0)
        self.assertEqual(t["status"], "moderated")
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS, 0)

    def test_failed_task_is_a_gemini_error(self):
        srv = self.server()
        key = srv.keys[EMAIL]
        r = srv.request("POST", gen_path(G25), headers=gkey(key), json_body=gen_body(FAIL))
        e = self.assertGeminiError(r, 500, "failure marker", reason="UPSTREAM_ERROR")
        self.assertNotIn("BadRequest", json.dumps(e))
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS, 0)
        self.assertEqual(b.kinds(b.ledger_rows(srv.data_dir, EMAIL))["capture"], 0)


class StreamTest(GeminiTestCase):

    def test_sse_final_chunk_and_json_array(self):
        srv = self.server()
        key = srv.keys[EMAIL]
        r = srv.request("POST", gen_path(G25, stream=True, query="?alt=sse"), headers=gkey(key),
                        json_body=gen_body("streamed"))
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.headers.get("Content-Type").startswith("text/event-stream"), r.headers)
        events, _ = sse_events(r.body)
        self.assertEqual(len(events), 1, events)
        ev = events[0]
        self.assertEqual(set(ev), {"candidates", "modelVersion", "responseId"})
        self.assertImageCandidate(ev["candidates"][0], 0, (1024, 1024))
        self.settled(srv, key, ev["responseId"], b.PRICE_NB_1K, b.PRICE_NB_1K)
        # Without alt=sse Gemini streams a JSON array of the same responses.
        r = srv.request("POST", gen_path(G25, stream=True), headers=gkey(key),
                        json_body=gen_body("array"))
        self.assertEqual(r.status, 200, r)
        arr = r.json()
        self.assertEqual(len(arr), 1, arr)
        self.assertImageCandidate(arr[0]["candidates"][0], 0, (1024, 1024))
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - 2 * b.PRICE_NB_1K, 0)

    def test_long_task_keeps_stream_alive_and_errors_inside_it(self):
        # Keep-alives every 100 ms, images after 1.5 s: the stream's head
        # goes out early, blank lines follow, then the one data event.
        srv = self.server(http={"stream_keepalive_ms": 100}, sim={"delay_ms": 1500})
        key = srv.keys[EMAIL]
        r = srv.request("POST", gen_path(G25, stream=True, query="?alt=sse"), headers=gkey(key),
                        json_body=gen_body("slow"))
        self.assertEqual(r.status, 200, r)
        events, blanks = sse_events(r.body)
        self.assertGreater(blanks, 2, r.body[:200])
        self.assertTrue(r.body.startswith(b"\n"), r.body[:50])
        self.assertEqual(len(events), 1)
        self.assertImageCandidate(events[0]["candidates"][0], 0, (1024, 1024))
        # A failure after the head went out can only be told in the stream:
        # the last event is Gemini's error document.
        r = srv.request("POST", gen_path(G25, stream=True, query="?alt=sse"), headers=gkey(key),
                        json_body=gen_body(FAIL))
        self.assertEqual(r.status, 200, r)
        events, _ = sse_events(r.body)
        self.assertEqual(len(events), 1, events)
        self.assertEqual(set(events[0]), {"error"})
        self.assertEqual((events[0]["error"]["code"], events[0]["error"]["status"]),
                         (500, "INTERNAL"), events)
        # Before the head went out, it is a plain HTTP error.
        srv2 = self.server(sim={"delay_ms": 50})
        key2 = srv2.keys[EMAIL]
        r = srv2.request("POST", gen_path(G25, stream=True, query="?alt=sse"),
                         headers=gkey(key2), json_body=gen_body(FAIL))
        self.assertGeminiError(r, 500, "failure marker")
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - b.PRICE_NB_1K, 0)


class RefusalTest(GeminiTestCase):

    def test_errors_in_gemini_shape(self):
        srv = self.server(http={"max_body_bytes": 65536})
        key = srv.keys[EMAIL]
        good = gen_body("x")
        # The key: none, a wrong one, in each place a Gemini client puts it.
        r = srv.request("POST", gen_path(G25), json_body=good)
        self.assertGeminiError(r, 401, "x-goog-api-key", reason="UNAUTHORIZED")
        wrong = "igk_" + "A" * 40
        for hdrs, path in ((gkey(wrong), gen_path(G25)), ({}, gen_path(G25, query="?key=" + wrong)),
                           ({"Authorization": "Bearer " + wrong}, gen_path(G25))):
            r = srv.request("POST", path, headers=hdrs, json_body=good)
            self.assertGeminiError(r, 401, "invalid API key")
        # Unknown model, broken JSON, a field of the wrong kind, text-only
        # output, a ratio the model lacks, no prompt.
        r = srv.request("POST", gen_path("gemini-9-ultra"), headers=gkey(key), json_body=good)
        self.assertGeminiError(r, 404, "models/gemini-9-ultra is not found",
                               reason="MODEL_NOT_FOUND")
        r = srv.request("POST", gen_path(G25), headers=gkey(key), body=b'{"contents": [')
        self.assertGeminiError(r, 400, "not valid JSON", reason="INVALID_JSON")
        r = srv.request("POST", gen_path(G25), headers=gkey(key),
                        json_body={"contents": [{"parts": [{"text": 7}]}]})
        self.assertGeminiError(r, 400, "text must be a string")
        r = srv.request("POST", gen_path(G25), headers=gkey(key),
                        json_body=gen_body("x", modalities=("TEXT",)))
        self.assertGeminiError(r, 400, "IMAGE")
        r = srv.request("POST", gen_path(G25), headers=gkey(key),
                        json_body=gen_body("x", ratio="7:3"))
        self.assertGeminiError(r, 400, field="generationConfig.imageConfig.aspectRatio",
                               reason="INVALID_ASPECT_RATIO")
        r = srv.request("POST", gen_path(G25), headers=gkey(key),
                        json_body={"contents": [{"role": "user", "parts": []}]})
        self.assertGeminiError(r, 400, field="contents")
        # Refusals of the HTTP layer, before any handler: the path's owner
        # (the Gemini dialect under /v1beta/) shapes them.
        r = srv.request("GET", "/v1beta/nothing/here", headers=gkey(key))
        self.assertGeminiError(r, 404, reason="NOT_FOUND")
        r = srv.request("GET", gen_path(G25), headers=gkey(key))
        self.assertGeminiError(r, 405, reason="METHOD_NOT_ALLOWED")
        r = srv.request("POST", gen_path(G25), headers=gkey(key),
                        json_body=gen_body("x", refs=[h.make_png(64, 64, noise=True,
                                                                 pad_to=70000)]))
        self.assertGeminiError(r, 413, reason="PAYLOAD_TOO_LARGE")
        # Native paths keep the native shape.
        r = srv.request("GET", "/api/banana/nothing/here", key=key)
        self.assertEqual((r.status, set(r.json()["error"])), (404, {"code", "message", "param"}))
        # Nothing was held or charged by any of it.
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS, 0)

    def test_rate_limit_in_gemini_shape(self):
        srv = self.server(billing={"default_qps_per_key": 1})
        key = srv.keys[EMAIL]

        def limited():
            r = srv.request("POST", gen_path(G25), headers=gkey(key), body=b"{")
            return r if r.status == 429 else None
        r = h.wait_for(limited, what="a 429 from the per-key limit")
        e = self.assertGeminiError(r, 429, reason="RATE_LIMITED")
        retry = [d for d in e["details"] if d["@type"] == "type.googleapis.com/google.rpc.RetryInfo"]
        self.assertRegex(retry[0]["retryDelay"], r"^[1-9][0-9]*s$")
        self.assertTrue(r.headers.get("Retry-After"))


class ModelsTest(GeminiTestCase):

    def test_models_list_and_get(self):
        srv = self.server()
        r = srv.get("/v1beta/models")
        self.assertEqual(r.status, 200, r)
        models = r.json()["models"]
        names = [m["name"] for m in models]
        self.assertEqual(names, ["models/" + G25, "models/gemini-3-pro-image-preview",
                                 "models/" + G31, "models/gpt-image-1"])
        for m in models:
            self.assertEqual(set(m), {"name", "baseModelId", "version", "displayName",
                                      "description", "supportedGenerationMethods"}, m)
            self.assertEqual(m["supportedGenerationMethods"],
                             ["generateContent", "streamGenerateContent"])
        r = srv.get("/v1beta/models/nano-banana-2")
        self.assertEqual((r.status, r.json()["name"], r.json()["displayName"]),
                         (200, "models/" + G31, "Nano Banana 2"))
        self.assertGeminiError(srv.get("/v1beta/models/dall-e-9"), 404)


class WebhookTest(GeminiTestCase):

    def test_payload_is_gemini_shaped(self):
        rec = wu.Receiver.start()
        self.addCleanup(rec.stop)
        srv = self.server(webhooks={"allow_http": True, "allow_private_networks": True})
        key = srv.keys[EMAIL]
        hook = {"X-Imgate-Webhook-Url": rec.url("/g")}
        r = srv.request("POST", gen_path(G25), headers=dict(gkey(key), **hook),
                        json_body=gen_body("hooked"))
        self.assertEqual(r.status, 200, r)
        inline = base64.b64decode(r.json()["candidates"][0]["content"]["parts"][0]
                                  ["inlineData"]["data"])
        uid = r.json()["responseId"]
        r = srv.request("POST", gen_path(G25), headers=dict(gkey(key), **hook),
                        json_body=gen_body(BLOCK))
        blocked = r.json()["responseId"]
        got = {}
        for d in rec.wait_deliveries(2, "/g"):
            body = json.loads(d["body"])
            got[body["responseId"]] = body
        ok = got[uid]
        self.assertEqual(set(ok), {"type", "timestamp", "responseId", "modelVersion", "status",
                                   "response"}, ok)
        self.assertEqual((ok["type"], ok["status"], ok["modelVersion"]),
                         ("task.succeeded", "succeeded", "nano-banana"))
        self.assertRegex(ok["timestamp"], h.TIME_RE)
        cand = ok["response"]["candidates"][0]
        self.assertEqual((cand["finishReason"], cand["index"]), ("STOP", 0))
        fd = cand["content"]["parts"][0]["fileData"]
        self.assertEqual(fd["mimeType"], "image/png")
        self.assertEqual(srv.fetch_url(fd["fileUri"]).body, inline)
        mod = got[blocked]
        self.assertEqual((mod["type"], mod["status"]), ("task.moderated", "moderated"))
        self.assertEqual(mod["response"]["promptFeedback"]["blockReason"], "SAFETY")
        self.assertNotIn("candidates", mod["response"])


class SdkTest(GeminiTestCase):
    """@google/genai, unmodified, pointed at imgate."""

    def sdk(self, srv, key, op, model=G25, prompt="a fox", **extra):
        node = shutil.which("node")
        if not node or not os.path.isdir(os.path.join(SDK_DIR, "node_modules", "@google",
                                                      "genai")):
            raise AssertionError("node or tests/sdk/node_modules is missing: run "
                                 "scripts/deps.sh --test (make test does)")
        args = dict(base="http://%s:%d" % (srv.host, srv.port), key=key, op=op, model=model,
                    prompt=prompt, **extra)
        p = subprocess.run([node, SDK_CLIENT, json.dumps(args)], cwd=SDK_DIR,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=h.DEADLINE)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        return json.loads(p.stdout.decode().strip().splitlines()[-1])

    def test_sdk_generate_stream_blocked_errors(self):
        srv = self.server()
        key = srv.keys[EMAIL]
        out = self.sdk(srv, key, "generate", reference_png_b64=h.b64(h.make_png(30, 30)),
                       config={"responseModalities": ["IMAGE"],
                               "imageConfig": {"aspectRatio": "3:4"}})
        self.assertTrue(out["ok"], out)
        self.assertEqual(len(out["candidates"]), 1, out)
        img = out["candidates"][0]["images"][0]
        self.assertEqual((img["mimeType"], out["candidates"][0]["finishReason"]),
                         ("image/png", "STOP"))
        png = base64.b64decode(img["data"])
        h.png_verify(png)
        self.assertEqual(h.png_size(png), (864, 1184))
        self.assertEqual(out["sdkData"], img["data"])  # the SDK's own accessor finds it
        first = out["responseId"]
        t = srv.wait_final(first, key)
        self.assertEqual((t["status"], t["aspect_ratio"]), ("succeeded", "3:4"))
        charged = t["cost"]["charged_micros"]

        out = self.sdk(srv, key, "stream", prompt="streamed fox")
        self.assertTrue(out["ok"], out)
        last = out["chunks"][-1]
        self.assertEqual(last["candidates"][0]["finishReason"], "STOP", out)
        h.png_verify(base64.b64decode(last["candidates"][0]["images"][0]["data"]))
        charged += b.PRICE_NB_1K

        out = self.sdk(srv, key, "generate", prompt=BLOCK)
        self.assertTrue(out["ok"], out)  # the SDK reports a blocked prompt as a normal result
        self.assertEqual(out["candidates"], [])
        self.assertEqual(out["promptFeedback"]["blockReason"], "SAFETY", out)
        self.assertIsNone(out["sdkData"])

        out = self.sdk(srv, key, "generate", prompt=FAIL)
        self.assertEqual((out["ok"], out["name"], out["status"]), (False, "ApiError", 500), out)
        self.assertIn('"status":"INTERNAL"', out["message"])
        out = self.sdk(srv, "igk_" + "B" * 40, "generate")
        self.assertEqual((out["ok"], out["name"], out["status"]), (False, "ApiError", 401), out)
        self.assertIn("UNAUTHENTICATED", out["message"])
        out = self.sdk(srv, key, "generate", model="gemini-0-nothing")
        self.assertEqual((out["ok"], out["status"]), (False, 404), out)

        out = self.sdk(srv, key, "list", model=G31)
        self.assertTrue(out["ok"], out)
        self.assertIn("models/" + G31, out["names"])
        self.assertEqual(out["get"]["name"], "models/" + G31)
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - charged, 0)
