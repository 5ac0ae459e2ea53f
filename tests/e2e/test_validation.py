"""test_validation.py - every request error of SPEC.md, with status, code and
param, plus the routing errors; then the server must still be up and exit 0.

Limits are set small in the config so the tests are quick: bodies over 64 KiB,
reference images over 4 KiB and prompts over 50 code points are refused."""

import unittest

import harness as h

EMAIL = "val@example.com"
MAX_BODY = 65536
MAX_IMAGE = 4096
MAX_PROMPT = 50
CREATE = "/api/banana/create-async"


class ValidationTest(h.ServerTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.srv = cls.start_class_server(
            accounts=[EMAIL],
            config={"http": {"max_body_bytes": MAX_BODY},
                    "limits": {"max_image_bytes": MAX_IMAGE, "max_prompt_chars": MAX_PROMPT},
                    "sim": {"delay_ms": 10}})
        cls.key = cls.srv.keys[EMAIL]
        cls.tiny = h.b64(h.make_png(8, 8))

    def post(self, doc=None, body=None):
        return self.srv.request("POST", CREATE, json_body=doc, body=body, key=self.key)

    def rejects(self, doc, status, code, param, msg=None):
        r = self.post(doc)
        return self.assertError(r, status, code, param, msg=msg or repr(doc)[:200])

    def accepts(self, doc):
        r = self.post(doc)
        self.assertEqual(r.status, 200, "%r -> %r" % (repr(doc)[:200], r))
        self.assertEqual(r.json().get("status"), "queued")
        return r.json()["uid"]

    # -- the body

    def test_invalid_json(self):
        for body in (b"{not json", b"", b"{\"prompt\": \"x\"", b"\xff\xfe", b"{\"prompt\": x}"):
            with self.subTest(case=repr(body)[:80]):
                r = self.post(body=body)
                self.assertError(r, 400, "invalid_json", None, msg=repr(body))

    def test_not_an_object(self):
        for body in (b"[]", b"\"a prompt\"", b"42", b"null", b"[{\"prompt\": \"x\"}]"):
            with self.subTest(case=repr(body)[:80]):
                r = self.post(body=body)
                self.assertError(r, 400, "invalid_request", None, msg=repr(body))

    # -- prompt

    def test_missing_prompt(self):
        self.rejects({}, 400, "missing_field", "prompt")
        self.rejects({"model": "nano-banana"}, 400, "missing_field", "prompt")

    def test_empty_prompt(self):
        self.rejects({"prompt": ""}, 400, "invalid_prompt", "prompt")

    def test_blank_prompt(self):
        # Blank is what a person sees: Unicode spaces and invisible characters
        # alone say nothing, however many bytes they take.
        for prompt in ("   ", "\t\r\n", "\u00a0", "\u3000\u3000", "\u00a0 \u3000\u2003\u202f",
                       "\u200b", "\ufeff\u200d\u2060", "\u2028\u2029\u0085\u1680\u205f",
                       "\u200e\u202a\u2066"):
            with self.subTest(prompt=ascii(prompt)):
                err = self.rejects({"prompt": prompt}, 400, "invalid_prompt", "prompt")
                self.assertEqual(err["message"], "prompt must not be empty")
        # One visible character among them is a prompt.
        for prompt in ("\u3000a\u3000", "\u00a0\u65e5", "\u200b.\u200b", "\U0001F34C\u3000"):
            with self.subTest(prompt=ascii(prompt)):
                self.accepts({"prompt": prompt})

    def test_prompt_length_in_code_points(self):
        # 50 CJK characters are 150 bytes of UTF-8 but 50 code points: fine.
        self.accepts({"prompt": "\u65e5" * MAX_PROMPT})
        self.accepts({"prompt": "\U0001F34C" * MAX_PROMPT})
        self.accepts({"prompt": "a" * MAX_PROMPT})
        self.rejects({"prompt": "a" * (MAX_PROMPT + 1)}, 400, "prompt_too_long", "prompt")
        self.rejects({"prompt": "\u65e5" * (MAX_PROMPT + 1)}, 400, "prompt_too_long", "prompt")

    # -- types

    def test_wrong_types(self):
        cases = [("prompt", 5), ("prompt", ["a"]), ("prompt", {"text": "a"}), ("prompt", True),
                 ("model", 1), ("model", ["nano-banana"]), ("aspect_ratio", True),
                 ("aspect_ratio", 1.5), ("resolution", 2), ("resolution", 1024),
                 ("image_urls", "not-an-array"), ("image_urls", {"a": 1}), ("image_urls", 3),
                 ("webhook_url", 7), ("webhook_url", ["http://example.com/"])]
        for field, value in cases:
            with self.subTest(case=repr((field, value))[:80]):
                doc = {"prompt": "types"}
                doc[field] = value
                self.rejects(doc, 400, "invalid_type", field)

    def test_non_string_image_entry(self):
        # SPEC: image_urls is an array of strings. Whether a number inside it is
        # "invalid_type" or "invalid_image" is not pinned down; the field is.
        r = self.post({"prompt": "x", "image_urls": [1]})
        self.assertError(r, 400, None, "image_urls")

    # -- catalog

    def test_invalid_model(self):
        # (gemini-2.5-flash-image is an alias now: test_native_lists)
        for model in ("nano-banana-3", "", "NANO-BANANA", "dall-e-3", "gemini-2.5-flash-imag",
                      "nanobanano-2-8k"):
            with self.subTest(case=repr(model)[:80]):
                self.rejects({"prompt": "x", "model": model}, 400, "invalid_model", "model")

    def test_multibyte_values_are_cut_whole(self):
        # Error messages quote the value, cut to 64 (model) or 16 bytes (ratio,
        # resolution). A cut inside a character used to make the JSON reply
        # fail: a 500 with an empty body. Every lead-in length puts the cut at
        # another offset inside the 2-, 3- and 4-byte characters.
        for ch in ("\u00e9", "\u20ac", "\U0001F34C"):
            for lead in range(4):
                value = "a" * lead + ch * 40
                for field, code in (("model", "invalid_model"),
                                    ("aspect_ratio", "invalid_aspect_ratio"),
                                    ("resolution", "invalid_resolution")):
                    with self.subTest(field=field, char=ch, lead=lead):
                        err = self.rejects({"prompt": "x", field: value}, 400, code, field)
                        quoted = err["message"].split('"')[1]
                        self.assertTrue(value.startswith(quoted), err)
                        self.assertGreater(len(quoted), 0, err)

    def test_invalid_aspect_ratio(self):
        for model, ratio in (("nano-banana", "7:3"), ("nano-banana", "1:4"),
                             ("nano-banana-pro", "8:1"), ("gpt-image-1", "16:9"),
                             ("nano-banana-2", "16/9"), ("nano-banana-2", "")):
            with self.subTest(case=repr((model, ratio))[:80]):
                self.rejects({"prompt": "x", "model": model, "aspect_ratio": ratio}, 400,
                             "invalid_aspect_ratio", "aspect_ratio")
        self.accepts({"prompt": "x", "model": "nano-banana-2", "aspect_ratio": "8:1"})

    def test_invalid_resolution(self):
        for model, res in (("nano-banana", "2K"), ("nano-banana-pro", "512"),
                           ("nano-banana-2", "8K"), ("nano-banana-2", ""),
                           ("nano-banana-2", "1024"), ("nano-banana", "4k")):
            with self.subTest(case=(model, res)):
                self.rejects({"prompt": "x", "model": model, "resolution": res}, 400,
                             "invalid_resolution", "resolution")
        self.accepts({"prompt": "x", "model": "nano-banana-pro", "resolution": "4k"})

    # -- reference images

    def test_too_many_images(self):
        self.rejects({"prompt": "x", "model": "nano-banana-2", "image_urls": [self.tiny] * 11},
                     400, "too_many_images", "image_urls")
        self.accepts({"prompt": "x", "model": "nano-banana-2", "image_urls": [self.tiny] * 10})

    def test_bad_base64(self):
        for ref in ("!!!not base64!!!", "iVBORw0KGgo*", "data:image/png;base64,@@@@",
                    "data:image/png;base64,"):
            with self.subTest(case=repr(ref)[:80]):
                self.rejects({"prompt": "x", "image_urls": [ref]}, 400, "invalid_image",
                             "image_urls")

    def test_not_an_image(self):
        text = h.b64(b"hello, this is plain text and not a picture at all")
        self.rejects({"prompt": "x", "image_urls": [text]}, 400, "invalid_image", "image_urls")
        self.rejects({"prompt": "x", "image_urls": ["data:image/png;base64," + text]}, 400,
                     "invalid_image", "image_urls")
        # A good image after a bad one does not save the request.
        self.rejects({"prompt": "x", "image_urls": [self.tiny, text]}, 400, "invalid_image",
                     "image_urls")

    def test_other_reference_forms(self):
        for ref in ("", "ftp://example.com/a.png", "http://example.com/a.png",
                    "data:image/png,rawbytes"):
            with self.subTest(case=repr(ref)[:80]):
                r = self.post({"prompt": "x", "image_urls": [ref]})
                self.assertError(r, 400, None, "image_urls", msg=repr(ref))

    def test_reference_url_form(self):
        # Only the form is checked at submit; where a URL leads is checked when
        # the task downloads it (see test_reference_urls.py).
        long_url = "https://127.0.0.1/" + "a" * (2049 - len("https://127.0.0.1/"))
        for url in ("https://", "https:///a.png", "https://127.0.0.1/a b.png", long_url):
            with self.subTest(url=url[:60]):
                self.rejects({"prompt": "x", "image_urls": [url]}, 400, "invalid_image",
                             "image_urls")
        self.accepts({"prompt": "x", "image_urls": ["https://127.0.0.1:9/cat.png"]})

    def test_other_schemes_named(self):
        # A URL of another scheme is refused for what it is, not as bad base64;
        # the scheme is named in lower case, as it is written.
        cases = [("ftp://example.com/a.png", "ftp"), ("FTP://example.com/a.png", "ftp"),
                 ("file:///etc/passwd", "file"), ("File:/etc/passwd", "file"),
                 ("gopher://127.0.0.1/", "gopher"), ("javascript:alert(1)", "javascript"),
                 ("s3://bucket/a.png", "s3"), ("git+ssh://host/x", "git+ssh"),
                 ("http://example.com/a.png", "http"), ("HTTP://example.com/a.png", "http")]
        for ref, scheme in cases:
            with self.subTest(ref=ref):
                for refs, index in (([ref], 0), ([self.tiny, ref], 1)):
                    err = self.rejects({"prompt": "x", "image_urls": refs}, 400, "invalid_image",
                                       "image_urls")
                    self.assertEqual(err["message"],
                                     "image %d: %s: URLs are not supported; use https, base64 "
                                     "or a data: URI" % (index, scheme))

    def test_scheme_case_insensitive(self):
        # RFC 3986: schemes are case-insensitive. HTTPS://x is an https URL,
        # DATA: a data URI (its ;base64 marker too).
        for url in ("HTTPS://127.0.0.1:9/cat.png", "Https://127.0.0.1:9/cat.png"):
            with self.subTest(url=url):
                self.accepts({"prompt": "x", "image_urls": [url]})
        png = h.make_png(8, 8)
        for prefix in ("DATA:image/png;base64,", "Data:image/png;BASE64,"):
            with self.subTest(prefix=prefix):
                self.accepts({"prompt": "x", "image_urls": [prefix + h.b64(png)]})
        # The form is still checked: an https scheme without "//host".
        for url in ("HTTPS:127.0.0.1/cat.png", "https:/cat.png", "HTTPS://"):
            with self.subTest(url=url):
                err = self.rejects({"prompt": "x", "image_urls": [url]}, 400, "invalid_image",
                                   "image_urls")
                self.assertEqual(err["message"], "image 0: not a valid URL (at most 2048 "
                                 "printable ASCII characters)")
        # Base64 text is never taken for a scheme (it has no ':').
        err = self.rejects({"prompt": "x", "image_urls": ["ftp" + self.tiny]}, 400,
                           "invalid_image", "image_urls")
        self.assertEqual(err["message"], "image 0: not valid base64")

    def test_image_size_limit(self):
        exact = h.make_png(16, 16, pad_to=MAX_IMAGE)
        over = h.make_png(16, 16, pad_to=MAX_IMAGE + 1)
        self.accepts({"prompt": "x", "image_urls": [h.b64(exact)]})
        self.accepts({"prompt": "x", "image_urls": [h.data_uri(exact)]})
        self.rejects({"prompt": "x", "image_urls": [h.b64(over)]}, 413, "image_too_large",
                     "image_urls")
        self.rejects({"prompt": "x", "image_urls": [h.data_uri(over)]}, 413,
                     "image_too_large", "image_urls")
        noisy = h.make_png(48, 48, noise=True)
        self.assertGreater(len(noisy), MAX_IMAGE)
        self.rejects({"prompt": "x", "image_urls": [self.tiny, h.b64(noisy)]}, 413,
                     "image_too_large", "image_urls")

    # -- webhook

    def test_invalid_webhook_url(self):
        long_url = "https://localhost/" + "a" * (2049 - len("https://localhost/"))
        for url in ("ftp://example.com/hook", "not a url", "", "example.com/hook", "https://",
                    long_url):
            with self.subTest(case=repr(url)[:80]):
                self.rejects({"prompt": "x", "webhook_url": url}, 400, "invalid_webhook_url",
                             "webhook_url", msg=url[:60])
        # Accepted URLs get real delivery attempts: their host is localhost, a
        # name (not resolved at submit) that the delivery guard refuses when
        # it connects, so no test delivery ever leaves the machine.
        ok_long = "https://localhost/" + "a" * (2048 - len("https://localhost/"))
        self.assertEqual(len(ok_long), 2048)
        self.accepts({"prompt": "x", "webhook_url": ok_long})
        self.accepts({"prompt": "x", "webhook_url": "https://localhost:1/hooks/imgate"})
        # http is refused unless webhooks.allow_http.
        self.rejects({"prompt": "x", "webhook_url": "http://localhost/hook"}, 400,
                     "invalid_webhook_url", "webhook_url")

    # -- body size

    def test_body_at_the_limit_is_read(self):
        doc = b'{"prompt": "padded to the limit"}'
        body = doc + b" " * (MAX_BODY - len(doc))
        self.assertEqual(len(body), MAX_BODY)
        r = self.post(body=body)
        self.assertEqual(r.status, 200, r)

    def head(self, length=None, extra=b""):
        lines = [b"POST %s HTTP/1.1" % CREATE.encode(),
                 b"Host: %s:%d" % (self.srv.host.encode(), self.srv.port),
                 b"Authorization: Bearer " + self.key.encode(),
                 b"Content-Type: application/json"]
        if length is not None:
            lines.append(b"Content-Length: %d" % length)
        return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"

    def test_body_over_limit(self):
        doc = b'{"prompt": "one byte too many"}'
        body = doc + b" " * (MAX_BODY + 1 - len(doc))
        r = self.srv.raw_exchange(self.head(len(body)), body)
        self.assertError(r, 413, "payload_too_large")

    def test_body_over_limit_with_expect_continue(self):
        body = b'{"prompt": "' + b"a" * (1 << 20) + b'"}'
        r = self.srv.raw_exchange(self.head(len(body), b"Expect: 100-continue\r\n"), body,
                                  expect_continue=True)
        self.assertError(r, 413, "payload_too_large")

    def test_chunked_body_over_limit(self):
        # No Content-Length: the server only learns the size while reading.
        chunks = [b'{"prompt": "'] + [b"b" * 16384] * 6 + [b'"}']  # 1.5 x the limit
        r = self.srv.raw_exchange(self.head(None, b"Transfer-Encoding: chunked\r\n"),
                                  chunks=chunks)
        self.assertError(r, 413, "payload_too_large")

    def test_chunked_body_far_over_limit(self):
        # The server answers 413 as soon as the body goes over the limit and
        # reads no more of it (docs/configuration.md, Limits): no hang,
        # nothing stored, and the server keeps serving.
        chunks = [b'{"prompt": "'] + [b"b" * 16384] * 16 + [b'"}']  # 4 x the limit
        r = self.srv.raw_exchange(self.head(None, b"Transfer-Encoding: chunked\r\n"),
                                  chunks=chunks)
        self.assertError(r, 413, "payload_too_large")
        self.assertEqual(r.headers.get("Connection"), "close")
        self.assertEqual(self.srv.get("/healthz").status, 200)

    def test_chunked_body_under_limit(self):
        chunks = [b'{"prompt": ', b'"sent in', b' chunks"}']
        r = self.srv.raw_exchange(self.head(None, b"Transfer-Encoding: chunked\r\n"),
                                  chunks=chunks)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["status"], "queued")

    # -- routing

    def test_unknown_route(self):
        for path in ("/nope", "/api", "/api/banana", "/api/banana/create-async/extra",
                     "/api/v2/banana/create-async", "/files", "/healthz/x"):
            with self.subTest(case=path):
                r = self.srv.get(path, key=self.key)
                self.assertError(r, 404, "not_found", msg=path)

    def test_wrong_method(self):
        cases = [("POST", "/healthz", None, "GET"),
                 ("DELETE", CREATE, self.key, "POST"),
                 ("PUT", CREATE, self.key, "POST"),
                 ("POST", "/api/banana/00000000-0000-0000-0000-000000000000", self.key, "GET"),
                 ("DELETE", "/files/abc.png", None, "GET")]
        for method, path, key, allowed in cases:
            with self.subTest(case=repr((method, path))[:80]):
                body = None if method == "DELETE" else b"{}"
                r = self.srv.request(method, path, key=key, body=body)
                self.assertError(r, 405, "method_not_allowed", msg="%s %s" % (method, path))
                allow = [m.strip() for m in r.headers.get("Allow", "").split(",")]
                self.assertIn(allowed, allow, "%s %s: Allow=%r" % (method, path, allow))

    # -- and after all of that

    def test_zz_still_alive(self):
        # Runs last (alphabetical): the server survived every bad request.
        r = self.srv.get("/healthz")
        self.assertEqual(r.status, 200, r)
        uid = self.srv.create(self.key, prompt="still here", model="nano-banana-2",
                              resolution="512", aspect_ratio="1:1")
        t = self.srv.wait_final(uid, self.key)
        self.assertImages(self.srv, t, 512, 512)


if __name__ == "__main__":
    unittest.main()
