"""test_files.py - GET /files/{token}.png: the image URL of a finished task.

No auth (the token is the secret), a strong ETag, immutable caching up to the
expiry, 304 on If-None-Match, 404 JSON for anything unknown, and for the right
token under another extension or none."""

import os
import re
import unittest

import harness as h

EMAIL = "files@example.com"
CACHE_RE = re.compile(r"^private, max-age=(\d+), immutable$")
ETAG_RE = re.compile(r'^"[0-9a-f]+"$')


class FilesTest(h.ServerTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.srv = cls.start_class_server(accounts=[EMAIL])
        cls.key = cls.srv.keys[EMAIL]
        uid = cls.srv.create(cls.key, prompt="a file to serve", model="nano-banana-2",
                             aspect_ratio="16:9", resolution="512")
        cls.task = cls.srv.wait_final(uid, cls.key)
        cls.image = cls.task["images"][0]
        cls.url = cls.image["url"]

    def test_url_points_at_this_server(self):
        self.assertEqual(self.task["status"], "succeeded", self.task)
        self.assertTrue(self.url.startswith(self.srv.base_url + "/files/"),
                        "%s not under %s" % (self.url, self.srv.base_url))
        self.assertTrue(self.url.endswith(".png"), self.url)
        token = self.url.rsplit("/", 1)[1][:-4]
        # 128 random bits take at least 22 characters in any URL-safe alphabet.
        self.assertGreaterEqual(len(token), 22, token)

    def test_headers(self):
        r = self.srv.fetch_url(self.url)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers.get("Content-Type"), "image/png")
        self.assertEqual(int(r.headers.get("Content-Length")), self.image["bytes"])
        self.assertTrue(r.headers.get("X-Request-Id"))
        self.assertRegex(r.headers.get("ETag", ""), ETAG_RE)
        m = CACHE_RE.match(r.headers.get("Cache-Control", ""))
        self.assertIsNotNone(m, r.headers.get("Cache-Control"))
        max_age = int(m.group(1))
        default_retention = 168 * 3600
        self.assertGreater(max_age, default_retention - 3600, max_age)
        self.assertLessEqual(max_age, default_retention)
        self.assertEqual(h.png_verify(r.body), (688, 384))

    def test_stable_etag_and_bytes(self):
        a = self.srv.fetch_url(self.url)
        b = self.srv.fetch_url(self.url)
        self.assertEqual(a.body, b.body)
        self.assertEqual(a.headers["ETag"], b.headers["ETag"])

    def test_if_none_match(self):
        etag = self.srv.fetch_url(self.url).headers["ETag"]
        r = self.srv.fetch_url(self.url, headers={"If-None-Match": etag})
        self.assertEqual(r.status, 304, r)
        self.assertEqual(r.body, b"")
        self.assertEqual(r.headers.get("ETag"), etag)
        self.assertTrue(r.headers.get("X-Request-Id"))
        # A list that contains the tag matches too (RFC 9110 13.1.2).
        r = self.srv.fetch_url(self.url, headers={"If-None-Match": '"0000", ' + etag})
        self.assertEqual(r.status, 304, r)
        # Another tag does not.
        r = self.srv.fetch_url(self.url, headers={"If-None-Match": '"0123456789abcdef"'})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.body), self.image["bytes"])

    def test_no_auth_needed(self):
        # fetch_url sends no Authorization at all.
        r = self.srv.fetch_url(self.url)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.body), self.image["bytes"])

    def test_unknown_token(self):
        token = self.url.rsplit("/", 1)[1][:-4]
        flipped = ("0" if token[0] != "0" else "1") + token[1:]
        for path in ("/files/" + flipped + ".png",
                     "/files/" + os.urandom(16).hex() + ".png",
                     "/files/.png", "/files/x.png", "/files/..%2F..%2Fimgate.db",
                     "/files/%2e%2e%2fimgate.db"):
            r = self.srv.get(path)
            self.assertError(r, 404, "not_found", msg=path)

    def test_only_the_real_extension(self):
        # The URL handed out is the token plus the stored image's extension;
        # any other name for the same token would misstate the type (or is
        # not a URL imgate gives out) and is answered like an unknown one.
        token = self.url.rsplit("/", 1)[1][:-4]
        for name in (token + ".jpg", token + ".jpeg", token + ".webp", token + ".PNG",
                     token + ".Png", token, token + ".", token + ".png.png", token + ".png.jpg",
                     token + ".pn", token + ".pngx", token + "..png"):
            with self.subTest(name=name):
                r = self.srv.get("/files/" + name)
                self.assertError(r, 404, "not_found", msg=name)
                self.assertNotIn("ETag", r.headers)
        r = self.srv.get("/files/" + token + ".png")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers.get("Content-Type"), "image/png")
        self.assertEqual(len(r.body), self.image["bytes"])

    def test_task_json_matches_the_file(self):
        r = self.srv.fetch_url(self.url)
        self.assertEqual(len(r.body), self.image["bytes"])
        self.assertEqual(self.image["content_type"], "image/png")
        self.assertEqual((self.image["width"], self.image["height"]), (688, 384))
        self.assertEqual(self.task["result_urls"], [self.url])


class PublicUrlTest(h.ServerTestCase):
    """public_url replaces the Host-derived base; retention sets max-age."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.srv = cls.start_class_server(
            accounts=[EMAIL],
            config={"public_url": "https://img.example.test/gw", "retention_hours": 1})
        cls.key = cls.srv.keys[EMAIL]

    def test_public_url_and_retention(self):
        uid = self.srv.create(self.key, prompt="behind a proxy", model="gpt-image-1",
                              aspect_ratio="2:3")
        t = self.srv.wait_final(uid, self.key)
        self.assertEqual(t["status"], "succeeded", t)
        url = t["images"][0]["url"]
        self.assertRegex(url, r"^https://img\.example\.test/gw/files/[^/]+\.png$")
        # The proxy would strip /gw; the server itself serves /files/...
        path = url[len("https://img.example.test/gw"):]
        r = self.srv.get(path)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(h.png_verify(r.body), (1024, 1536))
        m = CACHE_RE.match(r.headers.get("Cache-Control", ""))
        self.assertIsNotNone(m, r.headers.get("Cache-Control"))
        self.assertGreater(int(m.group(1)), 3000)
        self.assertLessEqual(int(m.group(1)), 3600)


if __name__ == "__main__":
    unittest.main()
