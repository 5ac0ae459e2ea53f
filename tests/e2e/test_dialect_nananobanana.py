"""test_dialect_nananobanana.py - seed 004's API (nananobanana.com, /api/v1/...),
spoken by imgate: a client written for it changes only the base URL and the key.

Each request mode (sync, stream with its progress events, async then GET
?id=) answers field by field in the seed's shapes; quantity is clamped, not
refused; money is shown in credits ($0.01 by default: costs rounded up,
balances down), and held and charged like any task (ledger-verify stays
clean: BillingTestCase); the model list needs no key; every documented
refusal (400, 401, 402, 403, 404, 405, 413, 429 with its headers, 503 when the
queue is full in async mode) comes in the seed's error shape.
"""

import http.client
import json
import re

import billing_util as b
import harness as h

EMAIL = "nnb-dialect@example.com"
BONUS = 1000000  # $1.00 = 100 credits
GENERATE = "/api/v1/generate"
PNG = "89504e470d0a1a0a"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SYNC_KEYS = {"success", "generationId", "imageUrls", "creditsUsed", "remainingCredits"}
ASYNC_KEYS = {"success", "async", "generationId", "message", "creditsUsed", "remainingCredits"}
RECORD_KEYS = {"id", "prompt", "outputImageUrls", "modelUsed", "processingStatus", "creditsUsed",
               "createdAt", "errorMessage"}
MODEL_KEYS = {"name", "displayName", "creditsCost", "supportsImageInput", "supportsAspectRatio",
              "requiresPro"}


def stream_events(srv, key, body):
    """POSTs a stream-mode generation; returns (status, content type, the
    JSON of every `data:` event in order, other non-empty lines)."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=h.DEADLINE)
    try:
        conn.request("POST", GENERATE, body=json.dumps(dict(body, mode="stream")),
                     headers={"Authorization": "Bearer " + key,
                              "Content-Type": "application/json"})
        resp = conn.getresponse()
        events, other = [], []
        for raw in resp.read().decode("utf-8").split("\n"):
            if raw.startswith("data: "):
                events.append(json.loads(raw[6:]))
            elif raw and not raw.startswith(":"):
                other.append(raw)
        return resp.status, resp.getheader("Content-Type", ""), events, other
    finally:
        conn.close()


class NanaNanoBananaTest(b.BillingTestCase):

    def server(self, bonus=BONUS, **config):
        cfg = b.billing_config(bonus, sim={"delay_ms": 100, "moderate_marker": "NSFW",
                                           "fail_marker": "FAILME"})
        srv = self.start_server(accounts=[EMAIL], config=h.deep_merge(cfg, config))
        return srv, srv.keys[EMAIL]

    def assertSeedError(self, r, status, type_, param=None):
        """The seed's error shape: {"error": text, "type": code}, "param" when a
        field is at fault."""
        self.assertEqual(r.status, status, r)
        self.assertIn("application/json", r.headers.get("Content-Type", ""))
        doc = r.json()
        self.assertEqual(set(doc), {"error", "type"} | ({"param"} if param else set()), doc)
        self.assertIsInstance(doc["error"], str)
        self.assertTrue(doc["error"], doc)
        self.assertEqual(doc["type"], type_, doc)
        if param:
            self.assertEqual(doc["param"], param, doc)
        return doc

    def generate(self, srv, key, **body):
        r = srv.request("POST", GENERATE, key=key, json_body=body)
        self.assertEqual(r.status, 200, r)
        return r.json()

    def record(self, srv, key, gid):
        r = srv.get(GENERATE + "?id=" + gid, key=key)
        self.assertEqual(r.status, 200, r)
        doc = r.json()
        self.assertEqual(set(doc), {"data"}, doc)
        self.assertEqual(set(doc["data"]), RECORD_KEYS, doc)
        return doc["data"]

    def assertPng(self, srv, url, size=None):
        r = srv.fetch_url(url)
        self.assertEqual(r.status, 200, url)
        self.assertEqual(r.body[:8].hex(), PNG)
        if size:
            self.assertEqual(h.png_size(r.body), size)

    # --- sync -------------------------------------------------------------

    def test_sync_mode(self):
        srv, key = self.server()
        # The seed's Quick Start request, word for word.
        doc = self.generate(srv, key, prompt="A cute orange cat sitting on a windowsill",
                            selectedModel="nano-banana")
        self.assertEqual(set(doc), SYNC_KEYS, doc)
        self.assertIs(doc["success"], True)
        self.assertTrue(h.UUID_RE.match(doc["generationId"]), doc)
        self.assertEqual(len(doc["imageUrls"]), 1)
        self.assertPng(srv, doc["imageUrls"][0])
        # nano-banana costs $0.0095: 1 credit shown; $1.00 - $0.0095 leaves 99 whole credits
        # (the seed's own example numbers).
        self.assertEqual((doc["creditsUsed"], doc["remainingCredits"]), (1, 99), doc)
        first = doc["generationId"]
        # mode "sync" said explicitly, the default model, a ratio, aspectRatio "default".
        doc = self.generate(srv, key, prompt="wide", mode="sync", aspectRatio="16:9")
        self.assertPng(srv, doc["imageUrls"][0], (1344, 768))
        self.assertEqual(srv.task(doc["generationId"], key)["model"], "nano-banana")
        doc = self.generate(srv, key, prompt="as it likes", aspectRatio="default")
        self.assertEqual(srv.task(doc["generationId"], key)["aspect_ratio"], "auto")
        self.assertEqual(doc["remainingCredits"], (BONUS - 3 * b.PRICE_NB_1K) // 10000)
        # A catalog alias reaches its model.
        doc = self.generate(srv, key, prompt="two", selectedModel="gemini-3.1-flash-image-preview")
        t = srv.task(doc["generationId"], key)
        self.assertEqual(t["model"], "nano-banana-2")
        self.assertEqual(doc["creditsUsed"], 3)  # $0.025 -> 2.5 credits, shown as 3
        rows = self.assertMoney(srv, key, srv.data_dir, EMAIL,
                                BONUS - 3 * b.PRICE_NB_1K - b.PRICE_NB2_1K, 0)
        self.assertSettled(rows, first, b.PRICE_NB_1K, b.PRICE_NB_1K)

    def test_sync_refused_and_failed(self):
        srv, key = self.server()
        # The seed's "warning" answer for a prompt the safety check refused: 200, not paid.
        doc = self.generate(srv, key, prompt="NSFW please")
        self.assertEqual(set(doc), {"success", "warning", "generationId", "message", "creditsUsed",
                                    "remainingCredits"}, doc)
        self.assertEqual((doc["success"], doc["warning"], doc["message"], doc["creditsUsed"],
                          doc["remainingCredits"]),
                         (False, True, "Content safety check failed", 0, 100), doc)
        r = srv.request("POST", GENERATE, key=key, json_body={"prompt": "FAILME"})
        self.assertSeedError(r, 500, "upstream_error")
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS, 0)

    # --- quantity ------------------------------------------------------------

    def test_quantity_is_clamped(self):
        srv, key = self.server()
        for asked, made in ((9, 4), (4, 4), (0, 1), (-3, 1), (2.7, 2), (1e300, 4), (None, 1)):
            with self.subTest(quantity=asked):
                doc = self.generate(srv, key, prompt="many", quantity=asked)
                self.assertEqual(len(doc["imageUrls"]), made, doc)
                self.assertEqual(len(set(doc["imageUrls"])), made)
                self.assertEqual(srv.task(doc["generationId"], key)["n"], made)
                self.assertEqual(doc["creditsUsed"], -(-made * b.PRICE_NB_1K // 10000))
        self.assertSeedError(srv.request("POST", GENERATE, key=key, json_body={
            "prompt": "x", "quantity": "2"}), 400, "invalid_type", "quantity")
        self.assertSeedError(srv.request("POST", GENERATE, key=key, json_body={
            "prompt": "x", "quantity": True}), 400, "invalid_type", "quantity")

    def test_quantity_maximum_is_configurable(self):
        srv, key = self.server(limits={"clamped_quantity_max": 2})
        doc = self.generate(srv, key, prompt="many", quantity=9, mode="sync")
        self.assertEqual(len(doc["imageUrls"]), 2)
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - 2 * b.PRICE_NB_1K, 0)

    # --- async ---------------------------------------------------------------

    def test_async_mode_and_record(self):
        srv, key = self.server(sim={"delay_ms": 600})
        doc = self.generate(srv, key, prompt="Chinese ink painting style landscape",
                            selectedModel="nano-banana", mode="async")
        self.assertEqual(set(doc), ASYNC_KEYS, doc)
        gid = doc["generationId"]
        self.assertEqual((doc["success"], doc["async"]), (True, True))
        self.assertEqual(doc["message"], "Generation started. Use GET /api/v1/generate?id=%s to "
                                         "poll for results." % gid)
        # Held at submit: 1 credit used, 99 left, as the seed shows it.
        self.assertEqual((doc["creditsUsed"], doc["remainingCredits"]), (1, 99), doc)
        rec = self.record(srv, key, gid)
        self.assertEqual((rec["id"], rec["prompt"], rec["modelUsed"], rec["processingStatus"],
                          rec["outputImageUrls"], rec["errorMessage"], rec["creditsUsed"]),
                         (gid, "Chinese ink painting style landscape", "nano-banana",
                          "processing", [], None, 1), rec)
        self.assertRegex(rec["createdAt"], ISO_MS)
        done = h.wait_for(lambda: (lambda d: d if d["processingStatus"] != "processing" else None)(
            self.record(srv, key, gid)), what="the generation")
        self.assertEqual((done["processingStatus"], done["creditsUsed"], done["errorMessage"],
                          done["createdAt"]), ("completed", 1, None, rec["createdAt"]), done)
        self.assertEqual(len(done["outputImageUrls"]), 1)
        self.assertPng(srv, done["outputImageUrls"][0])
        # Failed and refused generations: "failed", with errorMessage, nothing charged.
        for prompt, message in (("FAILME", None), ("NSFW", "Content safety check failed")):
            gid = self.generate(srv, key, prompt=prompt, mode="async")["generationId"]
            rec = h.wait_for(lambda: (lambda d: d if d["processingStatus"] != "processing"
                                      else None)(self.record(srv, key, gid)), what=prompt)
            self.assertEqual((rec["processingStatus"], rec["outputImageUrls"],
                              rec["creditsUsed"]), ("failed", [], 0), rec)
            self.assertTrue(rec["errorMessage"], rec)
            if message:
                self.assertEqual(rec["errorMessage"], message)
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - b.PRICE_NB_1K, 0)
        # The record of someone else's or no generation, and a missing id.
        self.assertSeedError(srv.get(GENERATE + "?id=00000000-0000-7000-8000-000000000000",
                                     key=key), 404, "not_found")
        self.assertSeedError(srv.get(GENERATE + "?id=nope", key=key), 404, "not_found")
        self.assertSeedError(srv.get(GENERATE, key=key), 400, "missing_field", "id")

    # --- stream --------------------------------------------------------------

    def test_stream_mode(self):
        # Long enough for a progress estimate between the first and the last event:
        # one generation first teaches the server how long the model takes.
        srv, key = self.server(sim={"delay_ms": 2500})
        self.generate(srv, key, prompt="learn the pace")
        status, ctype, events, other = stream_events(srv, key, {
            "prompt": "Cyberpunk style futuristic city at night", "selectedModel": "nano-banana"})
        self.assertEqual(status, 200)
        self.assertTrue(ctype.startswith("text/event-stream"), ctype)
        self.assertEqual(other, [])  # data lines only, as the seed sends them
        self.assertEqual(events[0], {"type": "status", "message": "Starting generation...",
                                     "progress": 0})
        middle, last = events[1:-1], events[-1]
        self.assertTrue(middle, events)
        for ev in middle:
            self.assertEqual((set(ev), ev["type"], ev["message"]),
                             ({"type", "message", "progress"}, "status", "Processing..."), ev)
        progress = [ev["progress"] for ev in events[:-1]]
        self.assertEqual(progress, sorted(progress), events)
        self.assertTrue(all(0 <= p < 100 for p in progress), progress)
        self.assertTrue(any(0 < p < 100 for p in progress), "no progress estimate: %r" % events)
        self.assertEqual({k: last[k] for k in ("type", "message", "progress")},
                         {"type": "complete", "message": "Generation complete", "progress": 100})
        data = last["data"]
        self.assertEqual(set(data), SYNC_KEYS, last)
        self.assertEqual((data["success"], len(data["imageUrls"]), data["creditsUsed"],
                          data["remainingCredits"]), (True, 1, 1, 98), last)
        self.assertPng(srv, data["imageUrls"][0])
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - 2 * b.PRICE_NB_1K, 0)

    def test_stream_errors(self):
        srv, key = self.server()
        for prompt in ("FAILME", "NSFW"):
            status, _, events, _ = stream_events(srv, key, {"prompt": prompt})
            self.assertEqual(status, 200)
            self.assertEqual(events[0]["type"], "status")
            last = events[-1]
            self.assertEqual((last["type"], last["data"]["success"], last["data"]["creditsUsed"]),
                             ("error", False, 0), last)
            self.assertTrue(last["message"] and last["data"]["error"], last)
            self.assertEqual(last["data"].get("warning"), True if prompt == "NSFW" else None)
        # A refusal before the task exists is a plain error, not a stream.
        r = srv.request("POST", GENERATE, key=key, json_body={"mode": "stream"})
        self.assertSeedError(r, 400, "missing_field", "prompt")
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS, 0)

    # --- models and credits ----------------------------------------------------

    def test_models_without_key(self):
        srv, _ = self.server()
        r = srv.get("/api/v1/models")
        self.assertEqual(r.status, 200, r)
        doc = r.json()
        self.assertEqual(set(doc), {"data"})
        models = {m["name"]: m for m in doc["data"]}
        for m in doc["data"]:
            self.assertEqual(set(m), MODEL_KEYS, m)
        self.assertEqual(models["nano-banana"], {
            "name": "nano-banana", "displayName": "Nano Banana", "creditsCost": 1,
            "supportsImageInput": True, "supportsAspectRatio": True, "requiresPro": False})
        self.assertEqual(models["nano-banana-pro"]["creditsCost"], 7)  # $0.067 rounded up
        self.assertEqual(models["nano-banana-2"]["creditsCost"], 3)   # $0.025 rounded up

    def test_credits(self):
        srv, key = self.server()
        r = srv.get("/api/v1/credits", key=key)
        self.assertEqual((r.status, r.json()), (200, {"data": {"credits": 100}}), r)
        self.generate(srv, key, prompt="one")
        self.assertEqual(srv.get("/api/v1/credits", key=key).json(), {"data": {"credits": 99}})
        self.assertSeedError(srv.get("/api/v1/credits"), 401, "unauthorized")
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - b.PRICE_NB_1K, 0)

    def test_credit_unit_is_configurable(self):
        # One credit = $0.003: the $1.00 bonus is 333 credits (never 334: rounded down),
        # nano-banana costs 4 (3.17 rounded up).
        srv, key = self.server(billing={"credit_micros": 3000})
        self.assertEqual(srv.get("/api/v1/credits", key=key).json(), {"data": {"credits": 333}})
        models = {m["name"]: m for m in srv.get("/api/v1/models").json()["data"]}
        self.assertEqual(models["nano-banana"]["creditsCost"], 4)
        doc = self.generate(srv, key, prompt="one")
        self.assertEqual((doc["creditsUsed"], doc["remainingCredits"]),
                         (4, (BONUS - b.PRICE_NB_1K) // 3000))

    # --- refusals ------------------------------------------------------------

    def test_refusals_in_seed_shape(self):
        srv, key = self.server()
        cases = [
            ({}, "missing_field", "prompt"),
            ({"prompt": 7}, "invalid_type", "prompt"),
            ({"prompt": "x", "mode": "batch"}, "invalid_mode", "mode"),
            ({"prompt": "x", "selectedModel": "nano-banana-9000"}, "invalid_model",
             "selectedModel"),
            ({"prompt": "x", "aspectRatio": "7:3"}, "invalid_aspect_ratio", "aspectRatio"),
            ({"prompt": "x", "referenceImageUrls": "https://example.com/a.png"}, "invalid_type",
             "referenceImageUrls"),
            ({"prompt": "x", "referenceImageUrls": ["ftp://example.com/a.png"]}, "invalid_image",
             "referenceImageUrls"),
        ]
        for body, type_, param in cases:
            with self.subTest(body=body):
                self.assertSeedError(srv.request("POST", GENERATE, key=key, json_body=body), 400,
                                     type_, param)
        self.assertSeedError(srv.request("POST", GENERATE, key=key, body="{nope",
                                         headers={"Content-Type": "application/json"}),
                             400, "invalid_json")
        # 401: no key, a wrong key.
        r = srv.request("POST", GENERATE, json_body={"prompt": "x"})
        self.assertSeedError(r, 401, "unauthorized")
        self.assertEqual(r.headers.get("WWW-Authenticate"), "Bearer")
        self.assertSeedError(srv.request("POST", GENERATE, key="nb_your_api_key_here",
                                         json_body={"prompt": "x"}), 401, "unauthorized")
        # Raised by the HTTP layer before any handler: still the seed's shape under /api/v1/.
        self.assertSeedError(srv.get("/api/v1/no/such/thing", key=key), 404, "not_found")
        self.assertSeedError(srv.request("DELETE", GENERATE, key=key), 405, "method_not_allowed")
        self.assertSeedError(srv.request("POST", "/api/v1/credits", key=key), 405,
                             "method_not_allowed")
        head = (b"POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (GENERATE.encode(), key.encode(), 40 * 1024 * 1024))
        self.assertSeedError(srv.raw_exchange(head, body=b"{"), 413, "payload_too_large")
        # The native paths keep the native shape.
        r = srv.get("/api/banana/nope/x/y", key=key)
        self.assertEqual(set(r.json()["error"]), {"code", "message", "param"})
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS, 0)

    def test_no_credit_402(self):
        srv, key = self.server(bonus=5000)  # half a nano-banana
        self.assertEqual(srv.get("/api/v1/credits", key=key).json(), {"data": {"credits": 0}})
        for mode in ("sync", "stream", "async"):
            r = srv.request("POST", GENERATE, key=key, json_body={"prompt": "x", "mode": mode})
            self.assertSeedError(r, 402, "insufficient_credit")
        self.assertMoney(srv, key, srv.data_dir, EMAIL, 5000, 0)

    def test_disabled_account_403(self):
        srv, key = self.server()
        r = h.run_cli("admin", "disable", EMAIL, "--data", srv.data_dir)
        self.assertEqual(r.code, 0, r.stderr)
        self.assertSeedError(srv.request("POST", GENERATE, key=key, json_body={"prompt": "x"}),
                             403, "account_disabled")
        self.assertSeedError(srv.get("/api/v1/credits", key=key), 403, "account_disabled")
        # The model list needs no key, so no account to refuse.
        self.assertEqual(srv.get("/api/v1/models", key=key).status, 200)

    def test_concurrency_limit_429(self):
        srv, key = self.server(sim={"delay_ms": 3000})
        r = h.run_cli("admin", "limits", EMAIL, "--concurrency", "1", "--data", srv.data_dir)
        self.assertEqual(r.code, 0, r.stderr)
        first = self.generate(srv, key, prompt="first", mode="async")["generationId"]
        r = srv.request("POST", GENERATE, key=key, json_body={"prompt": "second"})
        self.assertEqual(r.status, 429, r)
        # The seed's example body, exactly, and its three headers.
        self.assertEqual(r.json(), {"error": "Too many concurrent API requests for this account",
                                    "type": "concurrency_limit", "limit": 1, "active": 1})
        self.assertEqual((r.headers.get("Retry-After"), r.headers.get("X-RateLimit-Limit"),
                          r.headers.get("X-RateLimit-Active")), ("1", "1", "1"), r.headers)
        srv.wait_final(first, key)
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - b.PRICE_NB_1K, 0)

    def test_queue_full_503_in_async_mode(self):
        # One task runs at a time and one may wait: a third async generation is
        # refused with 503 (the seed's "server busy"), holding nothing.
        srv, key = self.server(sim={"delay_ms": 4000},
                               engine={"max_in_flight": 1, "max_queued": 1})
        running = self.generate(srv, key, prompt="runs", mode="async")["generationId"]
        srv.poll_until(running, key, lambda t: t["status"] == "running")
        waiting = self.generate(srv, key, prompt="waits", mode="async")["generationId"]
        r = srv.request("POST", GENERATE, key=key, json_body={"prompt": "refused", "mode": "async"})
        self.assertSeedError(r, 503, "server_busy")
        self.assertEqual(r.headers.get("Retry-After"), "1")
        self.assertEqual(self.credits(srv, key)["held_micros"], 2 * b.PRICE_NB_1K)
        for gid in (running, waiting):
            srv.wait_final(gid, key)
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - 2 * b.PRICE_NB_1K, 0)


if __name__ == "__main__":
    import unittest
    unittest.main()
