"""test_reference_urls.py - reference images given by URL (`image_urls`), end to end.

imgate runs against the fake Gemini upstream (tests/fakes) and a small HTTP
server of this test that serves the reference images from 127.0.0.1 (and ::1
when the machine has IPv6 loopback). Every URL used here names 127.0.0.1,
::1, localhost or a literal private address; nothing needs DNS and nothing is
meant to leave the machine.

- FetchTest: allow_private_networks and fetch.allow_http on, so the local
  server may be used. A URL's image reaches the upstream byte for byte, URLs
  and base64 keep their order, a redirect is followed; a text body, an
  oversized body, a 404, a hang, a stalled body, a redirect loop and a
  redirect to another scheme each fail the task with their error code, and
  then the fake upstream received no request for it.
- GuardTest: allow_private_networks off (the default) but fetch.allow_http
  on, so the scheme is not what refuses. Loopback in every spelling
  (127.0.0.1, localhost, [::1], [::ffff:127.0.0.1], 0.0.0.0, [::], the
  integer form) is refused, and the local server, which listens on those very
  addresses, sees no connection at all. Only after that has held are literal
  private, link-local and metadata addresses tried: they must be refused by
  the guard (the error names the address the guard refused, which only the
  guard's socket callback writes, before any socket exists).
- HttpsOnlyTest: without fetch.allow_http an http:// URL is refused at
  submit with 400 invalid_image naming image_urls; the https form of the
  same URL is accepted.

A redirect from a public address to a private one cannot be built here
honestly: with the guard on, the first hop would have to be a public address
of this machine, and a test must not depend on one (nor add one). That case
is covered by tests/unit/test_fetch.c (test_redirect_to_private_refused),
where an address hook treats the first peer as public and leaves every other
address to the real classifier.
"""

import base64
import http.server
import os
import re
import socket
import threading
import time
import unittest
import uuid

import harness as h
from upstream_util import start_fake

EMAIL = "urls@example.com"
FAKE_KEY = "fake-gemini-key-urls"
MODEL = "nano-banana-pro"
UPSTREAM_MODEL = "gemini-3-pro-image-preview"
MAX_IMAGE = 64 * 1024        # limits.max_image_bytes: downloads larger than this fail
HUGE = 1024 * 1024           # what the huge paths serve
FETCH_TIMEOUT_MS = 2000      # fetch.timeout_ms


def setUpModule():
    # A developer's real keys must not turn these tests into real upstream calls.
    for k in ("GEMINI_API_KEY", "GEMINI_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        os.environ.pop(k, None)


def token():
    return uuid.uuid4().hex[:12]


# ---------------------------------------------------------------- the reference server

class RefServer:
    """Serves reference images from loopback, counting every accepted
    connection and recording every request. Paths are registered per test
    (put, redirect) or are one of the fixed behaviours below; the query
    string is ignored for routing, so tests make URLs unique with one."""

    def __init__(self):
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = []          # (path with query, client address)
        self.routes = {}
        self.release = threading.Event()
        self.servers = []
        self.threads = []
        self.port4 = self._listen("127.0.0.1", socket.AF_INET)
        try:
            self.port6 = self._listen("::1", socket.AF_INET6)
        except OSError:
            self.port6 = None       # no IPv6 loopback: [::1] cases still run, unreachable

    def _listen(self, host, family):
        ref = self

        class Server(http.server.ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

            def verify_request(self, request, client_address):
                with ref.lock:
                    ref.connections += 1
                return True

        srv = Server((host, 0), self._handler_class())
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True)
        t.start()
        self.servers.append(srv)
        self.threads.append(t)
        return srv.server_address[1]

    def stop(self):
        self.release.set()
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
        for t in self.threads:
            t.join(h.DEADLINE)

    def url(self, path, host="127.0.0.1", port=None):
        return "http://%s:%d%s" % (host, port or self.port4, path)

    def put(self, path, body, ctype="image/png"):
        self.routes[path] = ("body", body, ctype)

    def redirect(self, path, location, status=302):
        self.routes[path] = ("redirect", location, status)

    def hits(self, target):
        with self.lock:
            return [r for r in self.requests if r[0] == target]

    def snapshot(self):
        with self.lock:
            return self.connections, list(self.requests)

    def _handler_class(self):
        ref = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"   # one request per connection, body ends at close

            def log_message(self, *args):
                pass

            def do_GET(self):
                with ref.lock:
                    ref.requests.append((self.path, self.client_address[0]))
                path = self.path.split("?", 1)[0]
                try:
                    self._answer(path)
                except (BrokenPipeError, ConnectionResetError):
                    pass    # imgate hung up (size cap, timeout): expected for some paths

            def _answer(self, path):
                route = ref.routes.get(path)
                if route and route[0] == "body":
                    self._send(200, route[2], route[1])
                elif route and route[0] == "redirect":
                    self.send_response(route[2])
                    self.send_header("Location", route[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path == "/huge.png":
                    # A PNG signature, then far more than the cap, length declared.
                    self._send(200, "image/png", h.PNG_SIG + b"\0" * (HUGE - len(h.PNG_SIG)))
                elif path == "/huge-undeclared.png":
                    # The same without Content-Length: only the body cap can stop it.
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.end_headers()
                    self.wfile.write(h.PNG_SIG)
                    chunk = b"\0" * 65536
                    for _ in range(HUGE // len(chunk)):
                        self.wfile.write(chunk)
                elif path == "/hang":
                    # Reads the request, never answers (until the test ends).
                    ref.release.wait(h.DEADLINE)
                elif path == "/stall.png":
                    # Answers, sends part of the body, then stalls.
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", "4096")
                    self.end_headers()
                    self.wfile.write(h.PNG_SIG + b"\0" * 100)
                    self.wfile.flush()
                    ref.release.wait(h.DEADLINE)
                else:
                    self._send(404, "text/plain", b"not here\n")

            def _send(self, status, ctype, body):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


# ---------------------------------------------------------------- common set-up

def imgate_config(fake, **extra):
    cfg = {
        "providers": [{"name": "fake-gemini", "kind": "gemini", "base_url": fake.gemini_base_url,
                       "api_key": FAKE_KEY, "timeout_ms": 30000}],
        "routes": {MODEL: [{"provider": "fake-gemini", "upstream_model": UPSTREAM_MODEL}]},
        "limits": {"max_image_bytes": MAX_IMAGE},
        "fetch": {"timeout_ms": FETCH_TIMEOUT_MS},
    }
    return h.deep_merge(cfg, extra)


class UrlTestBase(h.ServerTestCase):
    CONFIG = {}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.fake = start_fake(cls.addClassCleanup, "--gemini-key", FAKE_KEY)
        cls.ref = RefServer()
        cls.addClassCleanup(cls.ref.stop)
        cls.srv = cls.start_class_server(accounts=[EMAIL],
                                         config=imgate_config(cls.fake, **cls.CONFIG))
        cls.key = cls.srv.keys[EMAIL]

    def submit(self, prompt, urls):
        return self.srv.create(self.key, prompt=prompt, model=MODEL, aspect_ratio="1:1",
                               image_urls=urls)

    def upstream_calls(self, prompt):
        """The fake's recorded generateContent requests whose prompt is prompt."""
        out = []
        for rec in self.fake.requests(api="gemini"):
            parts = (((rec.get("json") or {}).get("contents") or [{}])[0]).get("parts") or []
            if any(isinstance(p, dict) and p.get("text") == prompt for p in parts):
                out.append(rec)
        return out

    def assert_failed_before_upstream(self, uid, prompt, code, message_re=None):
        """The task failed with code and no upstream call was made for it."""
        t = self.srv.wait_final(uid, self.key)
        self.assertEqual(t["status"], "failed", t)
        self.assertIsInstance(t.get("error"), dict, t)
        self.assertEqual(t["error"]["code"], code, t)
        if message_re:
            self.assertRegex(t["error"]["message"], message_re, t)
        self.assertEqual(t["images"], [], t)
        self.assertEqual(t["result_urls"], [], t)
        self.assertEqual(t["upstream_attempts"], [], t)
        self.assertTimestamps(t)
        self.assertEqual(self.upstream_calls(prompt), [],
                         "the fake upstream was called for a task whose download failed")
        h.wait_for(lambda: re.search(r"msg=input_download_failed\s.*task=%s\s.*code=%s(\s|$)"
                                     % (uid, code), self.srv.stderr_text()),
                   what="input_download_failed line for %s" % uid)
        # The line follows the store's update, so a poll can see the end first.
        h.wait_for(lambda: h.count_finished([self.srv], uid), what="task_finished of %s" % uid)
        self.assertEqual(h.count_finished([self.srv], uid), 1)
        return t


# ---------------------------------------------------------------- downloads

class FetchTest(UrlTestBase):
    CONFIG = {"allow_private_networks": True, "fetch": {"allow_http": True},
              "retry": {"backoff_base_ms": 20, "backoff_max_ms": 50}}

    def inline_images(self, prompt):
        calls = self.upstream_calls(prompt)
        self.assertEqual(len(calls), 1, "upstream calls for %r: %d" % (prompt, len(calls)))
        rec = calls[0]
        self.assertEqual(rec["endpoint"], "generateContent", rec["path"])
        self.assertEqual(rec["model"], UPSTREAM_MODEL)
        parts = rec["json"]["contents"][0]["parts"]
        out = []
        for p in parts:
            blob = p.get("inlineData") or p.get("inline_data")
            if blob is not None:
                out.append((blob.get("mimeType") or blob.get("mime_type"),
                            base64.b64decode(blob["data"], validate=True)))
        return out

    def assert_succeeded(self, uid, n_attempts=1):
        t = self.srv.wait_final(uid, self.key)
        self.assertEqual(t["status"], "succeeded", t)
        self.assertIsNone(t["error"], t)
        self.assertEqual(t["provider"], "fake-gemini", t)
        self.assertEqual(len(t["images"]), 1, t)
        self.assertEqual([a["provider"] for a in t["upstream_attempts"]],
                         ["fake-gemini"] * n_attempts, t)
        r = self.srv.fetch_url(t["images"][0]["url"])
        self.assertEqual(r.status, 200, r)
        h.png_verify(r.body)
        return t

    # -- success

    def test_url_image_reaches_upstream(self):
        png = h.make_png(24, 16, noise=True)
        tag = token()
        self.ref.put("/one.png", png, ctype="application/octet-stream")  # bytes decide, not type
        target = "/one.png?t=" + tag
        prompt = "url reference " + tag
        uid = self.submit(prompt, [self.ref.url(target)])
        self.assert_succeeded(uid)
        self.assertEqual(self.inline_images(prompt), [("image/png", png)])
        hits = self.ref.hits(target)
        self.assertEqual(len(hits), 1, "downloads of the URL: %r" % hits)
        rx = re.compile(r"msg=inputs_downloaded\s.*task=%s\s.*images=1\s.*bytes=%d(\s|$)"
                        % (uid, len(png)))
        h.wait_for(lambda: rx.search(self.srv.stderr_text()),
                   what="inputs_downloaded line for %s" % uid)

    def test_upper_case_scheme_is_downloaded(self):
        # Schemes are case-insensitive (RFC 3986): HTTP://... is accepted at
        # submit and downloaded like http://...
        png = h.make_png(12, 12, noise=True)
        tag = token()
        self.ref.put("/upper.png", png)
        target = "/upper.png?t=" + tag
        prompt = "upper-case scheme " + tag
        uid = self.submit(prompt, ["HTTP://127.0.0.1:%d%s" % (self.ref.port4, target)])
        self.assert_succeeded(uid)
        self.assertEqual(self.inline_images(prompt), [("image/png", png)])
        self.assertEqual(len(self.ref.hits(target)), 1)

    def test_urls_and_base64_keep_their_order(self):
        tag = token()
        pngs = [h.make_png(8 + i, 8, noise=True) for i in range(5)]
        self.ref.put("/a.png", pngs[0])
        self.ref.put("/c.png", pngs[2])
        self.ref.put("/e.png", pngs[4])
        refs = [self.ref.url("/a.png?t=" + tag), h.data_uri(pngs[1]),
                self.ref.url("/c.png?t=" + tag), h.b64(pngs[3]),
                self.ref.url("/e.png?t=" + tag)]
        prompt = "mixed references " + tag
        uid = self.submit(prompt, refs)
        self.assert_succeeded(uid)
        got = self.inline_images(prompt)
        self.assertEqual([m for m, _ in got], ["image/png"] * 5)
        for i, (_, data) in enumerate(got):
            self.assertEqual(data, pngs[i], "reference %d arrived out of place" % i)

    def test_retry_reuses_the_download(self):
        # The first upstream call fails (503, retryable); the retry sends the
        # same bytes, from the kept copy: the URL is downloaded once.
        tag = token()
        png = h.make_png(12, 9, noise=True)
        self.ref.put("/retried.png", png)
        self.fake.script([{"kind": "error", "status": 503}], api="gemini")
        prompt = "retried reference " + tag
        uid = self.submit(prompt, [self.ref.url("/retried.png?t=" + tag)])
        t = self.assert_succeeded(uid, n_attempts=2)
        self.assertEqual([a["http_status"] for a in t["upstream_attempts"]], [503, 200], t)
        calls = self.upstream_calls(prompt)
        self.assertEqual(len(calls), 2, "upstream calls: %d" % len(calls))
        for rec in calls:
            blobs = [p["inlineData"] for p in rec["json"]["contents"][0]["parts"]
                     if "inlineData" in p]
            self.assertEqual([(b["mimeType"], base64.b64decode(b["data"])) for b in blobs],
                             [("image/png", png)])
        self.assertEqual(len(self.ref.hits("/retried.png?t=" + tag)), 1)

    def test_redirect_followed(self):
        tag = token()
        png = h.make_png(10, 12, noise=True)
        self.ref.put("/target.png", png)
        self.ref.redirect("/moved.png", "/target.png?t=" + tag)
        self.ref.redirect("/moved-abs.png", self.ref.url("/moved.png?t=" + tag), status=301)
        prompt = "redirected reference " + tag
        uid = self.submit(prompt, [self.ref.url("/moved-abs.png?t=" + tag)])
        self.assert_succeeded(uid)
        self.assertEqual(self.inline_images(prompt), [("image/png", png)])
        for target in ("/moved-abs.png?t=", "/moved.png?t=", "/target.png?t="):
            self.assertEqual(len(self.ref.hits(target + tag)), 1, target)

    # -- failures: none may reach the upstream

    def test_text_is_invalid_image(self):
        tag = token()
        self.ref.put("/text.png", b"this is a text file, not a picture\n" * 20)
        prompt = "text reference " + tag
        uid = self.submit(prompt, [self.ref.url("/text.png?t=" + tag)])
        self.assert_failed_before_upstream(uid, prompt, "invalid_image", r"^image 0: ")
        self.assertEqual(len(self.ref.hits("/text.png?t=" + tag)), 1)

    def test_oversize_declared_length(self):
        tag = token()
        prompt = "huge reference " + tag
        uid = self.submit(prompt, [self.ref.url("/huge.png?t=" + tag)])
        self.assert_failed_before_upstream(uid, prompt, "image_too_large", str(MAX_IMAGE))

    def test_oversize_undeclared_length(self):
        tag = token()
        prompt = "huge streamed reference " + tag
        uid = self.submit(prompt, [self.ref.url("/huge-undeclared.png?t=" + tag)])
        self.assert_failed_before_upstream(uid, prompt, "image_too_large", str(MAX_IMAGE))

    def test_one_bad_url_among_good_ones(self):
        # The second of three references is oversized: the task fails as a whole.
        tag = token()
        self.ref.put("/good.png", h.make_png(8, 8))
        prompt = "one bad reference " + tag
        uid = self.submit(prompt, [self.ref.url("/good.png?t=" + tag),
                                   self.ref.url("/huge.png?t=" + tag),
                                   h.data_uri(h.make_png(9, 9))])
        self.assert_failed_before_upstream(uid, prompt, "image_too_large", r"^image 1: ")

    def test_404_is_download_failed(self):
        tag = token()
        prompt = "missing reference " + tag
        uid = self.submit(prompt, [self.ref.url("/nothing-here.png?t=" + tag)])
        self.assert_failed_before_upstream(uid, prompt, "image_download_failed", r"404")
        self.assertEqual(len(self.ref.hits("/nothing-here.png?t=" + tag)), 1)

    def assert_timed_out(self, path):
        tag = token()
        prompt = "slow reference %s %s" % (path, tag)
        t0 = time.monotonic()
        uid = self.submit(prompt, [self.ref.url(path + "?t=" + tag)])
        t = self.assert_failed_before_upstream(uid, prompt, "image_download_failed")
        # It was the timeout that ended it: the server had the request, and the
        # download lasted about fetch.timeout_ms, not the test's deadline.
        self.assertEqual(len(self.ref.hits(path + "?t=" + tag)), 1)
        took_ms = (h.parse_time(t["finished_at"]) - h.parse_time(t["started_at"])) * 1000
        self.assertGreaterEqual(took_ms, FETCH_TIMEOUT_MS - 50, t)
        self.assertLess(time.monotonic() - t0, FETCH_TIMEOUT_MS / 1000.0 + h.DEADLINE / 2, t)

    def test_hang_is_download_failed(self):
        self.assert_timed_out("/hang")

    def test_stalled_body_is_download_failed(self):
        self.assert_timed_out("/stall.png")

    def test_redirect_loop_is_download_failed(self):
        tag = token()
        self.ref.redirect("/loop", "/loop?t=" + tag)
        prompt = "looping reference " + tag
        uid = self.submit(prompt, [self.ref.url("/loop?t=" + tag)])
        self.assert_failed_before_upstream(uid, prompt, "image_download_failed", r"redirects")
        self.assertEqual(len(self.ref.hits("/loop?t=" + tag)), 4)  # the first and 3 redirects

    def test_redirect_to_other_scheme_refused(self):
        tag = token()
        self.ref.redirect("/to-file", "file:///etc/passwd")
        self.ref.redirect("/to-ftp", "ftp://127.0.0.1:%d/x.png" % self.ref.port4)
        for path in ("/to-file", "/to-ftp"):
            with self.subTest(path=path):
                prompt = "redirect %s %s" % (path, tag)
                uid = self.submit(prompt, [self.ref.url(path + "?t=" + tag)])
                self.assert_failed_before_upstream(uid, prompt, "image_url_refused")


# ---------------------------------------------------------------- the address guard

class GuardTest(UrlTestBase):
    # allow_private_networks is left at its default (off); plain http is
    # allowed so that the scheme is not the reason for a refusal.
    CONFIG = {"fetch": {"allow_http": True}}

    def refuse_all(self, cases):
        """Submits every (url, address regex) case, then checks each ended
        failed with image_url_refused, naming the refused address."""
        tag = token()
        uids = []
        for i, (url, _) in enumerate(cases):
            prompt = "guarded %d %s" % (i, tag)
            uids.append((self.submit(prompt, [url]), prompt))
        for (url, addr_re), (uid, prompt) in zip(cases, uids):
            with self.subTest(url=url):
                self.assert_failed_before_upstream(
                    uid, prompt, "image_url_refused",
                    r"^image 0: refused to connect to %s: not a public address$" % addr_re)
        # Outside the subtests, so that a case let through stops the test here.
        let_through = [url for (url, _), (uid, _) in zip(cases, uids)
                       if (self.srv.wait_final(uid, self.key).get("error") or {}).get("code")
                       != "image_url_refused"]
        self.assertEqual(let_through, [], "not refused by the address guard")

    def test_private_addresses_refused(self):
        p4 = self.ref.port4
        p6 = self.ref.port6 or p4
        # 1. Loopback, every spelling of it, aimed at the test's own server,
        #    which listens there: had the guard let one through, it would show.
        loopback = [
            ("http://127.0.0.1:%d/ref.png" % p4, r"127\.0\.0\.1"),
            ("http://localhost:%d/ref.png" % p4, r"(127\.0\.0\.1|::1)"),
            ("http://[::1]:%d/ref.png" % p6, r"::1"),
            ("http://[::ffff:127.0.0.1]:%d/ref.png" % p4, r"::ffff:127\.0\.0\.1"),
            ("http://0.0.0.0:%d/ref.png" % p4, r"0\.0\.0\.0"),
            ("http://[::]:%d/ref.png" % p6, r"::"),
            ("http://2130706433:%d/ref.png" % p4, r"127\.0\.0\.1"),
        ]
        self.ref.put("/ref.png", h.make_png(8, 8))
        before = self.ref.snapshot()
        self.refuse_all(loopback)
        self.assertEqual(self.ref.snapshot(), before,
                         "the reference server was contacted (connections, requests)")
        self.assertEqual(before, (0, []), "nothing else in this class uses the server")

        # Addresses off this machine (RFC 1918, link-local and metadata, ULA,
        # CGNAT, 6to4, Teredo, ...) are never sent through the binary: had the
        # guard let one through, imgate would connect off the machine. The
        # classifier is tested on them directly (tests/unit/test_fetch.c).

    def test_https_to_loopback_refused_too(self):
        # The guard does not depend on the scheme.
        tag = token()
        prompt = "https loopback " + tag
        before = self.ref.snapshot()
        uid = self.submit(prompt, ["https://127.0.0.1:%d/ref.png" % self.ref.port4])
        self.assert_failed_before_upstream(uid, prompt, "image_url_refused", r"127\.0\.0\.1")
        self.assertEqual(self.ref.snapshot(), before, "the reference server was contacted")


# ---------------------------------------------------------------- https only by default

class HttpsOnlyTest(UrlTestBase):
    # Private addresses allowed, plain http not: only the scheme can refuse.
    CONFIG = {"allow_private_networks": True}

    def test_http_url_rejected_at_submit(self):
        tag = token()
        self.ref.put("/plain.png", h.make_png(8, 8))
        url = self.ref.url("/plain.png?t=" + tag)
        for refs, index in (([url], 0), ([h.data_uri(h.make_png(8, 8)), url], 1)):
            with self.subTest(refs=len(refs)):
                r = self.srv.request("POST", "/api/banana/create-async", key=self.key,
                                     json_body={"prompt": "plain http " + tag, "model": MODEL,
                                                "image_urls": refs})
                err = self.assertError(r, 400, "invalid_image", "image_urls")
                self.assertIn("image %d" % index, err["message"])
                self.assertIn("https", err["message"])
        self.assertEqual(self.ref.hits("/plain.png?t=" + tag), [])
        self.assertEqual(self.upstream_calls("plain http " + tag), [])

    def test_https_form_accepted_at_submit(self):
        # The same address with https passes the submit check; it then fails
        # at download (the server speaks plain HTTP, so TLS cannot succeed).
        tag = token()
        prompt = "https form " + tag
        uid = self.submit(prompt, ["https://127.0.0.1:%d/plain.png?t=%s" % (self.ref.port4, tag)])
        self.assert_failed_before_upstream(uid, prompt, "image_download_failed")


if __name__ == "__main__":
    unittest.main()
