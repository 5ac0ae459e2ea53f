"""test_limits.py - request-size limits at their defaults: the JSON structure
of a body is bounded before parsing, and the 32 MiB body limit bounds the
total of the inline reference images (documented in docs/configuration.md)."""

import json
import unittest

import harness as h

EMAIL = "limits@example.com"
CREATE = "/api/banana/create-async"
MAX_BODY = 32 * 1024 * 1024       # http.max_body_bytes default
MAX_IMAGE = 7 * 1024 * 1024       # limits.max_image_bytes default
MAX_VALUES = 100000
MAX_DEPTH = 64


def vm_hwm_kib(pid):
    """Peak resident set size of a process (VmHWM), in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM for %d" % pid)


class LimitsTest(h.ServerTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # No limits in the config: the defaults are what is tested.
        cls.srv = cls.start_class_server(accounts=[EMAIL], config={"sim": {"delay_ms": 10}})
        cls.key = cls.srv.keys[EMAIL]

    def post(self, body):
        return self.srv.request("POST", CREATE, body=body, key=self.key,
                                headers={"Content-Type": "application/json"})

    def post_early(self, body):
        """POSTs body tolerating an answer (and close) before it is all sent."""
        head = (b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
                    CREATE.encode(), self.srv.host.encode(), self.srv.port, self.key.encode(),
                    len(body)))
        return self.srv.raw_exchange(head, body)

    # -- JSON structure

    def test_huge_array_is_refused_before_parsing(self):
        # 30 MiB of "1," is 15 million values: jansson used to build ~650 MB
        # of nodes for it (1.4 GB for "[],"), before any check could run. A
        # server of its own, so that its peak memory is this test's alone.
        srv = self.start_server(accounts=[EMAIL])
        key = srv.keys[EMAIL]
        for unit in (b"1,", b"[],"):
            with self.subTest(unit=unit):
                head = b'{"prompt":"x","image_urls":['
                body = head + unit * ((30 * 1024 * 1024 - len(head)) // len(unit)) + b"1]}"
                r = srv.request("POST", CREATE, body=body, key=key,
                                headers={"Content-Type": "application/json"})
                err = self.assertError(r, 400, "invalid_request", None)
                self.assertIn("100000", err["message"])
        # The server never held much more than the body itself (30 MiB; the
        # limit leaves room for an ASan build's own overhead).
        self.assertLess(vm_hwm_kib(srv.proc.pid), 200 * 1024)

    def values_body(self, n_values):
        # 1 (document) + 1 ("{") + 1 (",") + 1 ("[") + (k - 1) commas = k + 3
        k = n_values - 3
        return b'{"prompt":"x","extra":[' + b",".join([b"0"] * k) + b"]}"

    def test_value_count_at_the_limit(self):
        r = self.post(self.values_body(MAX_VALUES))
        self.assertEqual(r.status, 200, r)  # unknown fields are ignored
        r = self.post(self.values_body(MAX_VALUES + 1))
        self.assertError(r, 400, "invalid_request", None)

    def depth_body(self, depth):
        # the object is level 1; each "[" one more
        m = depth - 1
        return b'{"prompt":"x","extra":' + b"[" * m + b"]" * m + b"}"

    def test_depth_at_the_limit(self):
        r = self.post(self.depth_body(MAX_DEPTH))
        self.assertEqual(r.status, 200, r)
        r = self.post(self.depth_body(MAX_DEPTH + 1))
        err = self.assertError(r, 400, "invalid_request", None)
        self.assertIn("64", err["message"])

    # -- the body limit and reference images

    def images_body(self, n_images, pad_to=None):
        img = h.b64(h.make_png(16, 16, pad_to=MAX_IMAGE))
        doc = json.dumps({"prompt": "x", "model": "nano-banana-2",
                          "image_urls": [img] * n_images}).encode()
        if pad_to is not None:
            self.assertLessEqual(len(doc), pad_to)
            doc += b" " * (pad_to - len(doc))
        return doc

    def test_body_limit_bounds_the_images(self):
        # Three images at the 7 MiB maximum fit in 32 MiB (28 MiB of base64);
        # a body of exactly the limit is read.
        r = self.post(self.images_body(3, pad_to=MAX_BODY))
        self.assertEqual(r.status, 200, r)
        uid = r.json()["uid"]
        t = self.srv.wait_final(uid, self.key)
        self.assertEqual(t["status"], "succeeded", t)
        # One byte more is refused.
        r = self.post_early(self.images_body(3, pad_to=MAX_BODY + 1))
        self.assertError(r, 413, "payload_too_large", None)
        # Four images at the maximum (37 MiB of base64) do not fit: the
        # documented total, not ten times the per-image limit.
        r = self.post_early(self.images_body(4))
        self.assertError(r, 413, "payload_too_large", None)


if __name__ == "__main__":
    unittest.main()
