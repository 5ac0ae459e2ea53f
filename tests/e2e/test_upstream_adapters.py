"""test_upstream_adapters.py - the Gemini and OpenAI adapters end to end: imgate
against tests/fakes/fake_upstream.py, one answer class at a time.

For every class the task's outcome (succeeded / moderated / failed and its error
code), the number of upstream calls the fake saw, and the attempt log
(`upstream_attempts`) are checked; for successes the stored image must be byte for
byte the one the fake sent, with its MIME type. The exact upstream requests (path,
model id, key header, body) are compared with what the wire formats in
shared/reference/upstreams.md call for.

One imgate and one fake per class. The fake is reset before every test; each test
uses its own prompt, so requests are told apart by prompt.
"""

import hashlib
import itertools
import os
import unittest

import harness as h
import upstream_util as u

EMAIL = "adapters@example.com"
TIMEOUT_MS = 2000  # per attempt: the hang test waits this long
MAX_ATTEMPTS = 3

GEMINI_ROUTES = {
    "nano-banana": [u.route("g")],
    "nano-banana-pro": [u.route("g")],
    # A GA id instead of the catalog's preview id: the route's id must be the one sent.
    "nano-banana-2": [u.route("g", "gemini-3.1-flash-image")],
}
OPENAI_ROUTES = {"gpt-image-1": [u.route("o", "gpt-image-1.5")]}

_seq = itertools.count(1)


class AdapterCase(h.ServerTestCase):
    """A fake (strict about keys and fields) and an imgate whose providers point at it."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.fake = u.start_fake(cls.addClassCleanup, "--gemini-key", u.GEMINI_KEY,
                                "--openai-key", u.OPENAI_KEY)
        config = {
            "providers": [
                u.gemini_provider("g", cls.fake.gemini_base_url, timeout_ms=TIMEOUT_MS),
                u.openai_provider("o", cls.fake.openai_base_url, timeout_ms=TIMEOUT_MS),
            ],
            "routes": dict(GEMINI_ROUTES, **OPENAI_ROUTES),
            "retry": {"max_attempts": MAX_ATTEMPTS, "backoff_base_ms": 10,
                      "backoff_max_ms": 40},
            # The breaker is not under test here: it must not rest the only route.
            "breaker": {"failures": 1000},
            "admin_token": u.ADMIN_TOKEN,
        }
        cls.srv = cls.start_class_server(accounts=[EMAIL], config=config)
        cls.key = cls.srv.keys[EMAIL]

    def setUp(self):
        self.fake.reset()

    # -- helpers

    def prompt(self, label=""):
        return "%s %s #%d" % (self._testMethodName, label, next(_seq))

    def run_task(self, prompt, **fields):
        uid = self.srv.create(self.key, prompt=prompt, **fields)
        t = self.srv.wait_final(uid, self.key)
        self.assertTimestamps(t)
        return t

    def requests(self, prompt, n=None):
        reqs = u.requests_for(self.fake, prompt)
        if n is not None:
            self.assertEqual(len(reqs), n, "upstream requests for %r: %r" % (prompt, reqs))
        return reqs

    def assertAttempts(self, t, expected):
        """expected: one (provider, upstream_model, http_status, error_class, error_code)
        per attempt, in order. Also checks times: each attempt inside the task's run,
        attempts one after another, duration_ms = ended - started."""
        log = t.get("upstream_attempts")
        self.assertIsInstance(log, list, t)
        got = [(a["provider"], a["upstream_model"], a["http_status"], a["error_class"],
                a["error_code"]) for a in log]
        self.assertEqual(got, [tuple(e) for e in expected], t)
        started, finished = h.parse_time(t["started_at"]), h.parse_time(t["finished_at"])
        prev_end = started
        for a in log:
            self.assertEqual(a["run"], t["attempts"], a)
            self.assertRegex(a["started_at"], h.TIME_RE)
            self.assertRegex(a["ended_at"], h.TIME_RE)
            s, e = u.attempt_times(a)
            self.assertLessEqual(prev_end, s, "attempts overlap or precede the start: %r" % t)
            self.assertLessEqual(s, e, a)
            self.assertEqual(a["duration_ms"], round((e - s) * 1000), a)
            prev_end = e
        self.assertLessEqual(prev_end, finished, t)

    def assertImage(self, t, fmt, body, width=8, height=8, provider=None):
        """t succeeded with one image: exactly body, typed as fmt, of that size."""
        self.assertEqual(t["status"], "succeeded", t)
        self.assertIsNone(t["error"], t)
        if provider is not None:
            self.assertEqual(t["provider"], provider, t)
        self.assertEqual(len(t["images"]), 1, t)
        im = t["images"][0]
        self.assertEqual(im["content_type"], u.MIME[fmt], im)
        self.assertTrue(im["url"].endswith("." + u.EXT[fmt]), im)
        self.assertEqual((im["width"], im["height"]), (width, height), im)
        self.assertEqual(im["bytes"], len(body), im)
        self.assertEqual(t["result_urls"], [im["url"]], t)
        r = self.srv.fetch_url(im["url"])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers.get("Content-Type"), u.MIME[fmt], r.headers)
        self.assertEqual(r.body, body, "the stored image is not the one the upstream sent")

    def assertFailed(self, t, state, code):
        self.assertEqual(t["status"], state, t)
        self.assertEqual(t["images"], [], t)
        self.assertEqual(t["result_urls"], [], t)
        self.assertIsInstance(t["error"], dict, t)
        self.assertEqual(t["error"]["code"], code, t)
        self.assertTrue(t["error"]["message"], t)


# ====================================================================== Gemini

G25 = "gemini-2.5-flash-image"
G3PRO = "gemini-3-pro-image-preview"
G31 = "gemini-3.1-flash-image"


def ok(model=G25):
    return ("g", model, 200, "none", None)


class GeminiAdapterTest(AdapterCase):

    def gemini(self, steps, then="default"):
        """Replaces every script (a subtest must not inherit a repeat_last one)."""
        self.fake.reset()
        self.fake.script(steps, api="gemini", then=then)

    def assertGeminiRequest(self, rec, upstream_model, parts, image_config):
        """One recorded request is exactly the generateContent call for these parts
        and imageConfig (None: no imageConfig at all)."""
        self.assertEqual(rec["method"], "POST", rec)
        self.assertEqual(rec["path"], "/v1beta/models/%s:generateContent" % upstream_model, rec)
        self.assertEqual(rec["query"], {}, rec)
        self.assertEqual((rec["api"], rec["model"], rec["endpoint"]),
                         ("gemini", upstream_model, "generateContent"), rec)
        hdr = rec["headers"]
        self.assertEqual(hdr.get("x-goog-api-key"), u.GEMINI_KEY, hdr)
        self.assertNotIn("authorization", hdr)
        self.assertEqual(hdr.get("content-type"), "application/json", hdr)
        self.assertNotIn("expect", hdr)  # no 100-continue round trip before large bodies
        self.assertIsNone(rec["json_error"], rec)
        gen = {"responseModalities": ["IMAGE"]}
        if image_config is not None:
            gen["imageConfig"] = image_config
        self.assertEqual(rec["json"], {"contents": [{"role": "user", "parts": parts}],
                                       "generationConfig": gen})

    # -- the request

    def test_request_with_inline_reference_images(self):
        png = h.make_png(3, 2)
        jpg = u.jpeg(16, 8)
        webp = u.webp(5, 7)
        p = 'a "quoted" café\nsecond line \\ tab\t end'
        t = self.run_task(p, model="nano-banana", aspect_ratio="16:9",
                          image_urls=[h.data_uri(png), h.data_uri(jpg, "image/jpeg"),
                                      h.b64(webp)])
        self.assertImage(t, "png", u.fake_image("png", p), provider="g")
        (rec,) = self.requests(p, 1)
        self.assertGeminiRequest(rec, G25, [
            {"text": p},
            {"inlineData": {"mimeType": "image/png", "data": h.b64(png)}},
            {"inlineData": {"mimeType": "image/jpeg", "data": h.b64(jpg)}},
            {"inlineData": {"mimeType": "image/webp", "data": h.b64(webp)}},
        ], {"aspectRatio": "16:9"})  # 2.5 Flash Image takes no imageSize
        self.assertAttempts(t, [ok()])

    def test_request_image_config_per_model(self):
        cases = [
            # (model, aspect_ratio, resolution, upstream id, imageConfig sent)
            ("nano-banana", "1:1", None, G25, {"aspectRatio": "1:1"}),
            ("nano-banana", None, None, G25, None),
            ("nano-banana", "auto", "1K", G25, None),
            ("nano-banana-pro", "4:3", "2K", G3PRO, {"aspectRatio": "4:3", "imageSize": "2K"}),
            ("nano-banana-pro", "21:9", "4k", G3PRO, {"aspectRatio": "21:9", "imageSize": "4K"}),
            ("nano-banana-pro", "auto", None, G3PRO, {"imageSize": "1K"}),
            ("nano-banana-2", "1:4", "512", G31, {"aspectRatio": "1:4", "imageSize": "512"}),
            ("nano-banana-2", "8:1", "2K", G31, {"aspectRatio": "8:1", "imageSize": "2K"}),
        ]
        for model, ratio, res, upstream, image_config in cases:
            with self.subTest(model=model, aspect_ratio=ratio, resolution=res):
                p = self.prompt(model)
                fields = {"model": model}
                if ratio:
                    fields["aspect_ratio"] = ratio
                if res:
                    fields["resolution"] = res
                t = self.run_task(p, **fields)
                self.assertImage(t, "png", u.fake_image("png", p))
                (rec,) = self.requests(p, 1)
                self.assertGeminiRequest(rec, upstream, [{"text": p}], image_config)
                self.assertAttempts(t, [ok(upstream)])

    # -- successful answers

    def test_success_inline_data_both_spellings(self):
        for spelling, fmt in (("camelCase", "png"), ("snake_case", "jpeg"), ("all", "webp")):
            with self.subTest(spelling=spelling, format=fmt):
                p = self.prompt(spelling)
                step = {"kind": "image", "format": fmt, "width": 12, "height": 10}
                if spelling == "snake_case":
                    step["snake_case"] = True  # inline_data / mime_type
                elif spelling == "all":
                    step["snake_case"] = "all"  # every key, finish_reason too
                self.gemini([step])
                t = self.run_task(p, model="nano-banana")
                self.assertImage(t, fmt, u.fake_image(fmt, p, 12, 10), 12, 10)
                self.requests(p, 1)
                self.assertAttempts(t, [ok()])

    def test_thought_images_skipped_final_image_taken(self):
        for thoughts, fmt in ((2, "webp"), (1, "jpeg")):
            with self.subTest(thoughts=thoughts, format=fmt):
                p = self.prompt(fmt)
                self.gemini([{"kind": "thought_then_image", "thoughts": thoughts, "format": fmt}])
                t = self.run_task(p, model="nano-banana-pro", resolution="2K")
                final = u.fake_image(fmt, p)
                drafts = [u.fake_image(fmt, "%s|thought|%d" % (p, i)) for i in range(thoughts)]
                self.assertNotIn(final, drafts)  # else the check below proves nothing
                self.assertImage(t, fmt, final)
                self.requests(p, 1)
                self.assertAttempts(t, [ok(G3PRO)])
        with self.subTest("drafts only"):
            # Only thought drafts: no result (retried), never a draft taken as the image.
            p = self.prompt("drafts")
            self.gemini([{"kind": "thought_then_image", "final_image": False},
                         {"kind": "thought_then_image"}])
            t = self.run_task(p, model="nano-banana-pro")
            self.assertImage(t, "png", u.fake_image("png", p))
            self.requests(p, 2)
            self.assertAttempts(t, [("g", G3PRO, 200, "no_image", "no_image"), ok(G3PRO)])

    # -- refusals: moderated, never retried

    def test_prompt_block_is_moderated(self):
        for reason in ("SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "IMAGE_SAFETY"):
            with self.subTest(blockReason=reason):
                p = self.prompt(reason)
                self.gemini([{"kind": "block_prompt", "reason": reason,
                              "message": "blocked for testing"}])
                t = self.run_task(p)
                self.assertFailed(t, "moderated", "content_moderated")
                self.requests(p, 1)
                self.assertAttempts(t, [("g", G25, 200, "moderated", "content_moderated")])

    def test_safety_finish_reasons_are_moderated(self):
        reasons = ("IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "SAFETY",
                   "PROHIBITED_CONTENT", "RECITATION", "BLOCKLIST", "SPII")
        for reason, content in zip(reasons, itertools.cycle(("absent", "empty", "text"))):
            with self.subTest(finishReason=reason, content=content):
                p = self.prompt(reason)
                self.gemini([{"kind": "finish_reason", "reason": reason, "content": content}])
                t = self.run_task(p)
                self.assertFailed(t, "moderated", "content_moderated")
                self.requests(p, 1)
                self.assertAttempts(t, [("g", G25, 200, "moderated", "content_moderated")])

    # -- no image: a failed attempt that is retried

    def test_no_image_is_retried(self):
        steps = [{"kind": "finish_reason", "reason": "NO_IMAGE"},
                 {"kind": "finish_reason", "reason": "OTHER", "content": "text"},
                 {"kind": "finish_reason", "reason": "MAX_TOKENS", "content": "empty"},
                 {"kind": "text_only"}]
        for step in steps:
            with self.subTest(**step):
                p = self.prompt(step.get("reason", step["kind"]))
                self.gemini([step, {"kind": "image"}])
                t = self.run_task(p)
                self.assertImage(t, "png", u.fake_image("png", p))
                self.requests(p, 2)
                self.assertAttempts(t, [("g", G25, 200, "no_image", "no_image"), ok()])

    def test_no_image_persisting_fails_after_max_attempts(self):
        p = self.prompt()
        self.gemini([{"kind": "finish_reason", "reason": "NO_IMAGE"}], then="repeat_last")
        t = self.run_task(p)
        self.assertFailed(t, "failed", "no_image")
        self.requests(p, MAX_ATTEMPTS)
        self.assertAttempts(t, [("g", G25, 200, "no_image", "no_image")] * MAX_ATTEMPTS)

    # -- HTTP errors

    def test_http_400_fails_at_once(self):
        p = self.prompt()
        self.gemini([{"kind": "error", "status": 400,
                      "message": "Request contains an invalid argument."}, {"kind": "image"}])
        t = self.run_task(p)
        self.assertFailed(t, "failed", "upstream_bad_request")
        self.assertIn("invalid argument", t["error"]["message"])
        self.requests(p, 1)
        self.assertAttempts(t, [("g", G25, 400, "bad_request", "upstream_bad_request")])

    def test_auth_errors_fail(self):
        bad_key = {"kind": "error", "status": 400, "message": "API key not valid. Please pass "
                   "a valid API key.", "details": [{
                       "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                       "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}
        for label, step, status in (("401", {"kind": "error", "status": 401}, 401),
                                    ("403", {"kind": "error", "status": 403}, 403),
                                    ("API_KEY_INVALID", bad_key, 400)):
            with self.subTest(label):
                p = self.prompt(label)
                self.gemini([step], then="repeat_last")
                t = self.run_task(p)
                self.assertFailed(t, "failed", "upstream_auth")
                # One route only: the same key would be refused again, so no retry.
                self.requests(p, 1)
                self.assertAttempts(t, [("g", G25, status, "auth", "upstream_auth")])

    def test_429_retry_info_delay_honoured(self):
        p = self.prompt()
        self.gemini([{"kind": "error", "status": 429, "retry_delay": "1.2s"}, {"kind": "image"}])
        t = self.run_task(p)
        self.assertImage(t, "png", u.fake_image("png", p))
        first, second = self.requests(p, 2)
        self.assertEqual((first["status"], second["status"]), (429, 200))
        waited = second["received_at"] - first["received_at"]
        self.assertGreaterEqual(waited, 1.2, "retried %.3f s after a 1.2 s RetryInfo" % waited)
        self.assertLess(waited, 1.2 + h.DEADLINE / 4, "the retry came far too late")
        self.assertAttempts(t, [("g", G25, 429, "rate_limited", "upstream_rate_limited"), ok()])
        a1_end = u.attempt_times(t["upstream_attempts"][0])[1]
        a2_start = u.attempt_times(t["upstream_attempts"][1])[0]
        self.assertGreaterEqual(a2_start - a1_end, 1.2 - 0.01, t)

    def test_5xx_is_retried(self):
        for status in (500, 503, 504):
            with self.subTest(status=status):
                p = self.prompt(str(status))
                self.gemini([{"kind": "error", "status": status}, {"kind": "image"}])
                t = self.run_task(p)
                self.assertImage(t, "png", u.fake_image("png", p))
                self.requests(p, 2)
                self.assertAttempts(t, [("g", G25, status, "server", "upstream_unavailable"),
                                        ok()])

    def test_5xx_persisting_fails_after_max_attempts(self):
        p = self.prompt()
        self.gemini([{"kind": "error", "status": s} for s in (500, 503, 504)] +
                    [{"kind": "image"}])
        t = self.run_task(p)
        self.assertFailed(t, "failed", "upstream_unavailable")
        self.requests(p, MAX_ATTEMPTS)
        self.assertAttempts(t, [("g", G25, s, "server", "upstream_unavailable")
                                for s in (500, 503, 504)])

    def test_answer_in_small_odd_pieces(self):
        # The answer reaches imgate a few bytes at a time (cut inside keys, inside
        # "data":", inside base64 groups): it is read as it arrives, and the stored
        # image is still byte for byte the one sent, drafts still skipped.
        for chunk, fmt in ((7, "png"), (13, "webp"), (1000, "jpeg")):
            with self.subTest(chunk_bytes=chunk):
                p = self.prompt("pieces%d" % chunk)
                self.gemini([{"kind": "thought_then_image", "format": fmt, "width": 40,
                              "height": 30, "chunk_bytes": chunk}])
                t = self.run_task(p, model="nano-banana-pro")
                self.assertImage(t, fmt, u.fake_image(fmt, p, 40, 30), 40, 30)
                self.requests(p, 1)
                self.assertAttempts(t, [ok(G3PRO)])

    def test_large_image_goes_to_the_store_as_it_arrives(self):
        # An image past the answer reader's head (64 KiB) is written to the
        # store while it arrives and committed where it was written: the
        # stored bytes are still the ones sent. The first answer is cut off in
        # the middle of its large images (retried); the second brings two
        # large thought drafts before the image: neither the cut answer nor
        # the drafts leave anything behind.
        p = self.prompt("large")
        pad = 3 << 20
        self.gemini([{"kind": "truncated", "width": 40, "height": 30, "pad_bytes": pad},
                     {"kind": "thought_then_image", "format": "png", "width": 40, "height": 30,
                      "pad_bytes": pad, "chunk_bytes": 65000}])
        t = self.run_task(p, model="nano-banana-pro")
        self.assertImage(t, "png", u.fake_image("png", p, 40, 30, pad), 40, 30)
        self.requests(p, 2)
        blobs = os.path.join(self.srv.data_dir, "blobs")
        stored = sorted(os.listdir(os.path.join(blobs, "results", t["uid"])))
        self.assertEqual(len(stored), 1, stored)
        self.assertRegex(stored[0], r"^1-a2-\d+\.png$")  # named by the attempt that brought it
        temps = [f for _, _, files in os.walk(blobs) for f in files if f.startswith(".~")]
        self.assertEqual(temps, [])

    def test_large_jpeg_with_long_metadata(self):
        # A JPEG whose frame header (its pixel size) lies past the reader's
        # first 64 KiB, behind 200 KB of metadata segments: the head grows
        # until the header is read, then the rest goes to the store.
        p = self.prompt("jpeg-meta")
        pad = 200000
        self.gemini([{"kind": "image", "format": "jpeg", "width": 40, "height": 30,
                      "pad_bytes": pad, "chunk_bytes": 16000}])
        t = self.run_task(p, model="nano-banana-pro")
        self.assertImage(t, "jpeg", u.fake_image("jpeg", p, 40, 30, pad), 40, 30)
        blobs = os.path.join(self.srv.data_dir, "blobs")
        stored = os.listdir(os.path.join(blobs, "results", t["uid"]))
        self.assertRegex(stored[0], r"^1-a1-\d+\.jpg$")  # staged, not put from memory

    def test_large_image_converted(self):
        # A staged image that must change format is committed, read back,
        # converted and removed: only the converted image is left.
        p = self.prompt("large-webp")
        self.gemini([{"kind": "image", "width": 40, "height": 30, "pad_bytes": 1 << 20}])
        t = self.run_task(p, model="nano-banana-pro", output_format="webp")
        self.assertEqual(t["status"], "succeeded", t)
        im = t["images"][0]
        self.assertEqual((im["content_type"], im["width"], im["height"]),
                         ("image/webp", 40, 30), im)
        r = self.srv.fetch_url(im["url"])
        self.assertEqual(r.body[8:12], b"WEBP")
        blobs = os.path.join(self.srv.data_dir, "blobs")
        stored = os.listdir(os.path.join(blobs, "results", t["uid"]))
        self.assertEqual(len(stored), 1, stored)
        self.assertTrue(stored[0].endswith(".webp"), stored)

    # -- broken answers and connections: retryable

    def test_malformed_and_truncated_json_are_retried(self):
        for kind, classes, code in (("malformed", ("bad_response",), "upstream_bad_response"),
                                    # curl reports a body shorter than its Content-Length
                                    # as a transfer error; either class means "retry".
                                    ("truncated", ("network", "bad_response"), None)):
            with self.subTest(kind=kind):
                p = self.prompt(kind)
                self.gemini([{"kind": kind}, {"kind": "image"}])
                t = self.run_task(p)
                self.assertImage(t, "png", u.fake_image("png", p))
                self.requests(p, 2)
                first = t["upstream_attempts"][0]
                self.assertIn(first["error_class"], classes, t)
                self.assertAttempts(t, [("g", G25, 200, first["error_class"],
                                         code or first["error_code"]), ok()])
                self.assertTrue(first["error_code"].startswith("upstream_"), t)

    def test_connection_reset_or_close_is_retried(self):
        for kind in ("reset", "close"):
            with self.subTest(kind=kind, then="repeat_last"):
                # curl itself may resend once when a reused connection dies before any
                # answer; imgate's own attempts are what the log and the count show.
                p = self.prompt(kind)
                self.gemini([{"kind": kind}], then="repeat_last")
                t = self.run_task(p)
                self.assertFailed(t, "failed", "upstream_unavailable")
                self.assertAttempts(t, [("g", G25, None, "network", "upstream_unavailable")] *
                                    MAX_ATTEMPTS)
                reqs = self.requests(p)
                self.assertTrue(MAX_ATTEMPTS <= len(reqs) <= 2 * MAX_ATTEMPTS, reqs)
                self.assertTrue(all(r["status"] is None for r in reqs), reqs)
            with self.subTest(kind=kind, then="image"):
                p = self.prompt(kind)
                self.gemini([{"kind": kind}, {"kind": kind}, {"kind": "image"}])
                t = self.run_task(p)
                self.assertImage(t, "png", u.fake_image("png", p))
                log = t["upstream_attempts"]
                self.assertEqual(log[-1]["error_class"], "none", t)
                self.assertTrue(all(a["error_class"] == "network" for a in log[:-1]), t)
                self.assertEqual(len(self.requests(p)), 3)

    def test_hang_times_out(self):
        p = self.prompt()
        self.gemini([{"kind": "hang"}, {"kind": "image"}])
        t = self.run_task(p)
        self.assertImage(t, "png", u.fake_image("png", p))
        first, second = self.requests(p, 2)
        self.assertIsNone(first["status"], first)  # never answered
        self.assertEqual(second["status"], 200)
        self.assertAttempts(t, [("g", G25, None, "timeout", "upstream_timeout"), ok()])
        waited = t["upstream_attempts"][0]["duration_ms"]
        # The provider's timeout_ms ends the attempt, not the task's 300 s deadline.
        self.assertGreaterEqual(waited, TIMEOUT_MS - 10, t)
        self.assertLess(waited, TIMEOUT_MS + 3000, t)
        self.assertEqual(self.fake.stats()["by_status"].get("hang"), 1)


# ====================================================================== OpenAI

GPT = "gpt-image-1.5"  # the route's upstream id (the catalog model is gpt-image-1)


def gpt_ok():
    return ("o", GPT, 200, "none", None)


class OpenAIAdapterTest(AdapterCase):

    def openai(self, steps, then="default"):
        """Replaces every script (a subtest must not inherit a repeat_last one)."""
        self.fake.reset()
        self.fake.script(steps, api="openai", then=then)

    def assertOpenAIHeaders(self, rec):
        hdr = rec["headers"]
        self.assertEqual(hdr.get("authorization"), "Bearer " + u.OPENAI_KEY, hdr)
        self.assertNotIn("x-goog-api-key", hdr)
        self.assertNotIn("expect", hdr)
        self.assertEqual(rec["method"], "POST", rec)
        self.assertEqual(rec["query"], {}, rec)

    def test_generations_request_size_from_aspect_ratio(self):
        for ratio, size in (("1:1", "1024x1024"), ("3:2", "1536x1024"), ("2:3", "1024x1536"),
                            ("auto", "auto"), (None, "auto")):
            with self.subTest(aspect_ratio=ratio):
                p = self.prompt(str(ratio))
                fields = {"model": "gpt-image-1", "resolution": "1K"}
                if ratio:
                    fields["aspect_ratio"] = ratio
                t = self.run_task(p, **fields)
                self.assertImage(t, "png", u.fake_image("png", p), provider="o")
                (rec,) = self.requests(p, 1)
                self.assertEqual(rec["path"], "/v1/images/generations", rec)
                self.assertEqual(rec["endpoint"], "generations", rec)
                self.assertOpenAIHeaders(rec)
                self.assertEqual(rec["headers"].get("content-type"), "application/json")
                self.assertIsNone(rec["multipart"], rec)
                # gpt-image-1 has one resolution (1K), so quality is left to the model;
                # no background was asked: "auto", said explicitly.
                self.assertEqual(rec["json"], {"model": GPT, "prompt": p, "n": 1, "size": size,
                                               "quality": "auto", "output_format": "png",
                                               "background": "auto"})
                self.assertAttempts(t, [gpt_ok()])

    def test_edits_multipart_with_reference_images(self):
        png, jpg, webp = h.make_png(4, 6), u.jpeg(8, 16), u.webp(9, 3)
        p = "turn these into one poster, ünïcödé"
        t = self.run_task(p, model="gpt-image-1", aspect_ratio="2:3",
                          image_urls=[h.data_uri(png), h.data_uri(jpg, "image/jpeg"),
                                      h.data_uri(webp, "image/webp")])
        self.assertImage(t, "png", u.fake_image("png", p), provider="o")
        (rec,) = self.requests(p, 1)
        self.assertEqual(rec["path"], "/v1/images/edits", rec)
        self.assertEqual(rec["endpoint"], "edits", rec)
        self.assertOpenAIHeaders(rec)
        self.assertRegex(rec["headers"].get("content-type", ""),
                         r"^multipart/form-data; boundary=\S+$")
        self.assertIsNone(rec["json"], rec)
        parts = rec["multipart"]
        texts = [(pt["name"], pt["text"]) for pt in parts if pt["filename"] is None]
        self.assertEqual(sorted(texts), sorted([
            ("prompt", p), ("model", GPT), ("n", "1"), ("size", "1024x1536"),
            ("quality", "auto"), ("output_format", "png"), ("background", "auto")]), parts)
        files = [pt for pt in parts if pt["filename"] is not None]
        self.assertEqual(len(files), 3, parts)
        for pt, (data, fmt) in zip(files, ((png, "png"), (jpg, "jpeg"), (webp, "webp"))):
            self.assertEqual(pt["name"], "image[]", pt)
            self.assertEqual(pt["content_type"], u.MIME[fmt], pt)
            self.assertTrue(pt["filename"].endswith("." + u.EXT[fmt]), pt)
            self.assertEqual(pt["size"], len(data), pt)
            self.assertEqual(pt["sha256"], hashlib.sha256(data).hexdigest(), pt)
            self.assertEqual(pt["magic"], fmt, pt)
        self.assertEqual(len({pt["filename"] for pt in files}), 3, files)
        self.assertAttempts(t, [gpt_ok()])

    def test_image_formats_of_the_answer(self):
        for fmt in ("jpeg", "webp"):
            with self.subTest(format=fmt):
                p = self.prompt(fmt)
                self.openai([{"kind": "image", "format": fmt, "width": 6, "height": 4}])
                t = self.run_task(p, model="gpt-image-1")
                self.assertImage(t, fmt, u.fake_image(fmt, p, 6, 4), 6, 4)
                self.requests(p, 1)

    def test_answer_in_small_odd_pieces(self):
        for chunk in (5, 333):
            with self.subTest(chunk_bytes=chunk):
                p = self.prompt("pieces%d" % chunk)
                self.openai([{"kind": "image", "format": "png", "width": 33, "height": 17,
                              "chunk_bytes": chunk}])
                t = self.run_task(p, model="gpt-image-1")
                self.assertImage(t, "png", u.fake_image("png", p, 33, 17), 33, 17, provider="o")
                self.requests(p, 1)

    def test_large_images_go_to_the_store_as_they_arrive(self):
        # Two large images in one answer: each written as it arrives under
        # its own name, both stored byte for byte, nothing else left.
        p = self.prompt("large")
        pad = 2 << 20
        self.openai([{"kind": "image", "format": "png", "sizes": ["33x17", "17x33"],
                      "pad_bytes": pad, "chunk_bytes": 40000}])
        t = self.run_task(p, model="gpt-image-1", n=2)
        self.assertEqual(t["status"], "succeeded", t)
        self.assertEqual(len(t["images"]), 2, t)
        sent = [u.fake_image("png", p, 33, 17, pad), u.fake_image("png", p + "|1", 17, 33, pad)]
        for im, body in zip(t["images"], sent):
            self.assertEqual(self.srv.fetch_url(im["url"]).body, body)
        blobs = os.path.join(self.srv.data_dir, "blobs")
        stored = sorted(os.listdir(os.path.join(blobs, "results", t["uid"])))
        self.assertEqual(len(stored), 2, stored)
        self.assertTrue(all(f.startswith("1-a1-") for f in stored), stored)

    def test_moderation_blocked_is_moderated(self):
        p = self.prompt()
        self.openai([{"kind": "block_prompt"}, {"kind": "image"}])
        t = self.run_task(p, model="gpt-image-1")
        self.assertFailed(t, "moderated", "content_moderated")
        self.requests(p, 1)
        self.assertAttempts(t, [("o", GPT, 400, "moderated", "content_moderated")])

    def test_429_retry_after_honoured(self):
        for header, value, wait in (("retry-after", "1", 1.0), ("retry-after-ms", "1300", 1.3)):
            with self.subTest(header=header):
                p = self.prompt(header)
                self.openai([{"kind": "error", "status": 429, "type": "requests",
                              "code": "rate_limit_exceeded", "message": "Rate limit reached.",
                              "headers": {header: value}}, {"kind": "image"}])
                t = self.run_task(p, model="gpt-image-1")
                self.assertImage(t, "png", u.fake_image("png", p))
                first, second = self.requests(p, 2)
                self.assertEqual((first["status"], second["status"]), (429, 200))
                waited = second["received_at"] - first["received_at"]
                self.assertGreaterEqual(waited, wait, "retried after %.3f s" % waited)
                self.assertLess(waited, wait + h.DEADLINE / 4)
                self.assertAttempts(t, [("o", GPT, 429, "rate_limited",
                                         "upstream_rate_limited"), gpt_ok()])

    def test_5xx_is_retried(self):
        for status in (500, 502, 503):
            with self.subTest(status=status):
                p = self.prompt(str(status))
                self.openai([{"kind": "error", "status": status}, {"kind": "image"}])
                t = self.run_task(p, model="gpt-image-1")
                self.assertImage(t, "png", u.fake_image("png", p))
                self.requests(p, 2)
                self.assertAttempts(t, [("o", GPT, status, "server", "upstream_unavailable"),
                                        gpt_ok()])

    def test_malformed_json_is_retried(self):
        p = self.prompt()
        self.openai([{"kind": "malformed"}, {"kind": "image"}])
        t = self.run_task(p, model="gpt-image-1")
        self.assertImage(t, "png", u.fake_image("png", p))
        self.requests(p, 2)
        self.assertAttempts(t, [("o", GPT, 200, "bad_response", "upstream_bad_response"),
                                gpt_ok()])

    def test_400_fails_at_once(self):
        p = self.prompt()
        self.openai([{"kind": "error", "status": 400, "type": "invalid_request_error",
                      "param": "size", "code": "invalid_value", "message": "Invalid size."},
                     {"kind": "image"}])
        t = self.run_task(p, model="gpt-image-1")
        self.assertFailed(t, "failed", "upstream_bad_request")
        self.requests(p, 1)
        self.assertAttempts(t, [("o", GPT, 400, "bad_request", "upstream_bad_request")])

    def test_401_fails(self):
        p = self.prompt()
        self.openai([{"kind": "error", "status": 401, "code": "invalid_api_key",
                      "message": "Incorrect API key provided."}], then="repeat_last")
        t = self.run_task(p, model="gpt-image-1")
        self.assertFailed(t, "failed", "upstream_auth")
        self.requests(p, 1)  # one route: the same key would be refused again
        self.assertAttempts(t, [("o", GPT, 401, "auth", "upstream_auth")])


if __name__ == "__main__":
    unittest.main()
