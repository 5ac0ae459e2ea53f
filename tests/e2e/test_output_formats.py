"""test_output_formats.py - output_format and output_compression end to end.

The simulated provider draws PNGs, so a task that wants JPEG or WebP from it is
converted by imgate (libvips, on the engine's transcode pool); the fake upstream
(tests/fakes) answers in the format a test asks, which shows that imgate leaves
an image that already is in the wanted format alone (byte for byte what the
upstream sent), that GPT Image is asked for the format itself, and that an
image which cannot be converted is neither delivered nor paid for. Through the
native API, the OpenAI dialect (raw HTTP and OpenAI's own SDK), and across a
restart (the wanted format is stored with the task). Every image is judged by
its bytes, never by a name or a Content-Type alone.
"""

import base64

import billing_util as b
import harness as h
import test_dialect_openai as openai_dialect
import upstream_util as u
from billing_util import PRICE_NB_1K

EMAIL = "formats@example.com"
BONUS = 1000000
GENERATIONS = "/v1/images/generations"
MAGIC = {"png": lambda d: d[:8] == b"\x89PNG\r\n\x1a\n",
         "jpeg": lambda d: d[:3] == b"\xff\xd8\xff",
         "webp": lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP"}


def format_of(data):
    for name, test in MAGIC.items():
        if test(data):
            return name
    return None


class OutputFormatsTest(b.BillingTestCase):

    def server(self, **config):
        srv = self.start_server(accounts=[EMAIL], config=b.billing_config(
            BONUS, **h.deep_merge({"sim": {"delay_ms": 50}}, config)))
        return srv, srv.keys[EMAIL]

    def fake_server(self, fake, **config):
        """imgate with nano-banana on the fake's Gemini API and gpt-image-1 on its
        OpenAI API."""
        return self.server(
            providers=[u.gemini_provider("g", fake.gemini_base_url),
                       u.openai_provider("o", fake.openai_base_url)],
            routes={"nano-banana": [u.route("g")], "gpt-image-1": [u.route("o")]},
            retry={"max_attempts": 1}, **config)

    def image(self, srv, t, i=0):
        """The bytes of image i of a final task, downloaded, with its Content-Type
        checked against the bytes and the task's own account of them."""
        img = t["images"][i]
        r = srv.fetch_url(img["url"])
        self.assertEqual(r.status, 200, r)
        fmt = format_of(r.body)
        self.assertIsNotNone(fmt, r.body[:16])
        self.assertEqual(r.headers.get("Content-Type"), u.MIME[fmt])
        self.assertEqual(img["content_type"], u.MIME[fmt], t)
        self.assertTrue(img["url"].endswith("." + u.EXT[fmt]), img["url"])
        self.assertEqual(img["bytes"], len(r.body), t)
        return r.body

    def converted_lines(self, srv, uid):
        return [line for line in srv.stderr_snapshot()
                if "msg=image_converted" in line and "task=%s" % uid in line]

    # -- native, through the simulated provider (PNG in)

    def test_native_jpeg_and_webp_from_png(self):
        srv, key = self.server()
        cases = [({"output_format": "jpeg", "output_compression": 40}, "jpeg", 40),
                 ({"output_format": "webp"}, "webp", 100),
                 ({"output_format": "png"}, "png", None),
                 ({}, "png", None)]
        for fields, fmt, compression in cases:
            with self.subTest(fields=fields):
                uid = srv.create(key, prompt="a kite over the dunes", model="nano-banana",
                                 **fields)
                t = srv.wait_final(uid, key)
                self.assertEqual(t["status"], "succeeded", t)
                self.assertEqual(t["output_format"], fields.get("output_format"), t)
                self.assertEqual(t["output_compression"], compression, t)
                data = self.image(srv, t)
                self.assertEqual(format_of(data), fmt)
                self.assertEqual((t["images"][0]["width"], t["images"][0]["height"]),
                                 (1024, 1024), t)
                # Converted only when the bytes were not what was asked for.
                self.assertEqual(len(self.converted_lines(srv, uid)), int(fmt != "png"),
                                 srv.stderr_tail(40))
                self.assertCost(t, PRICE_NB_1K, PRICE_NB_1K)
        # The lower quality makes the smaller file.
        small = srv.wait_final(srv.create(key, prompt="a kite over the dunes", model="nano-banana",
                                          output_format="jpeg", output_compression=5), key)
        best = srv.wait_final(srv.create(key, prompt="a kite over the dunes", model="nano-banana",
                                         output_format="jpeg"), key)
        self.assertLess(small["images"][0]["bytes"], best["images"][0]["bytes"])

    def test_native_refusals(self):
        srv, key = self.server()
        cases = [
            ({"output_format": "gif"}, "invalid_output_format", "output_format"),
            ({"output_format": "JPEG"}, "invalid_output_format", "output_format"),
            ({"output_format": 3}, "invalid_type", "output_format"),
            ({"output_format": "jpeg", "output_compression": 101}, "invalid_output_compression",
             "output_compression"),
            ({"output_format": "webp", "output_compression": -1}, "invalid_output_compression",
             "output_compression"),
            ({"output_format": "webp", "output_compression": 9.5}, "invalid_type",
             "output_compression"),
            ({"output_format": "png", "output_compression": 50}, "invalid_output_compression",
             "output_compression"),
            ({"output_compression": 50}, "invalid_output_compression", "output_compression"),
        ]
        for fields, code, param in cases:
            with self.subTest(fields=fields):
                r = srv.request("POST", "/api/banana/create-async", key=key,
                                json_body=dict(prompt="x", **fields))
                self.assertEqual(r.status, 400, r)
                err = r.json()["error"]
                self.assertEqual((err["code"], err["param"]), (code, param), err)
        self.assertEqual(self.credits(srv, key)["held_micros"], 0)

    # -- OpenAI dialect

    def test_openai_webp_b64_and_jpeg_url(self):
        srv, key = self.server()
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "gpt-image-1", "prompt": "a glass lighthouse", "size": "1024x1024",
            "output_format": "webp", "output_compression": 70, "response_format": "b64_json"})
        self.assertEqual(r.status, 200, r)
        doc = r.json()
        self.assertEqual((doc["output_format"], doc["size"], len(doc["data"])),
                         ("webp", "1024x1024", 1), doc)
        self.assertEqual(format_of(base64.b64decode(doc["data"][0]["b64_json"])), "webp")
        # The stored task says the same, and the image link is a .webp.
        t = srv.get("/api/banana/tasks", key=key).json()["tasks"][0]
        self.assertEqual((t["output_format"], t["output_compression"]), ("webp", 70), t)
        self.assertEqual(format_of(self.image(srv, t)), "webp")
        # URLs and the streamed form tell the truth as well.
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "nano-banana", "prompt": "a banana", "output_format": "jpeg"})
        doc = r.json()
        self.assertEqual((r.status, doc["output_format"]), (200, "jpeg"), r)
        self.assertTrue(doc["data"][0]["url"].endswith(".jpg"), doc)
        got = srv.fetch_url(doc["data"][0]["url"])
        self.assertEqual((format_of(got.body), got.headers.get("Content-Type")),
                         ("jpeg", "image/jpeg"))

    def test_openai_sdk_asks_for_jpeg(self):
        srv, key = self.server()
        res = openai_dialect.sdk(srv, key, "jpeg", "a lighthouse in fog")
        self.assertEqual(res, {"ok": True, "count": 1, "magic": "ffd8ff", "bytes": res["bytes"],
                               "output_format": "jpeg"})
        t = srv.get("/api/banana/tasks", key=key).json()["tasks"][0]
        self.assertEqual((t["output_format"], t["output_compression"]), ("jpeg", 60), t)
        self.assertEqual(t["images"][0]["bytes"], res["bytes"])

    # -- what the upstream already made is left alone

    def test_image_already_in_format_is_not_converted(self):
        fake = u.start_fake(self.addCleanup)
        srv, key = self.fake_server(fake)
        # Gemini answers WebP: a task that wants WebP gets exactly those bytes.
        fake.script([{"format": "webp"}], api="gemini")
        prompt = "already webp"
        t = srv.wait_final(srv.create(key, prompt=prompt, model="nano-banana",
                                      output_format="webp", output_compression=10), key)
        self.assertEqual(t["status"], "succeeded", t)
        self.assertEqual(self.image(srv, t), u.fake_image("webp", prompt))
        self.assertEqual(self.converted_lines(srv, t["uid"]), [])
        # Gemini answers JPEG for a task that wants PNG: converted.
        fake.script([{"format": "jpeg"}], api="gemini")
        t = srv.wait_final(srv.create(key, prompt="jpeg to png", model="nano-banana",
                                      output_format="png"), key)
        self.assertEqual(format_of(self.image(srv, t)), "png")
        self.assertEqual(len(self.converted_lines(srv, t["uid"])), 1)
        # GPT Image is asked for the format and its quality, and its JPEG is kept as it came.
        prompt = "gpt jpeg"
        t = srv.wait_final(srv.create(key, prompt=prompt, model="gpt-image-1",
                                      output_format="jpeg", output_compression=40), key)
        self.assertEqual(t["status"], "succeeded", t)
        sent = u.requests_for(fake, prompt)
        self.assertEqual(len(sent), 1)
        self.assertEqual((sent[0]["json"]["output_format"], sent[0]["json"]["output_compression"]),
                         ("jpeg", 40), sent[0]["json"])
        self.assertEqual(self.image(srv, t), u.fake_image("jpeg", prompt))
        self.assertEqual(self.converted_lines(srv, t["uid"]), [])
        # Without an output format GPT Image is asked for PNG, with no compression.
        prompt = "gpt default"
        t = srv.wait_final(srv.create(key, prompt=prompt, model="gpt-image-1"), key)
        sent = u.requests_for(fake, prompt)[0]["json"]
        self.assertEqual(sent["output_format"], "png")
        self.assertNotIn("output_compression", sent)
        self.assertEqual(self.image(srv, t), u.fake_image("png", prompt))

    # -- a failed conversion is not delivered, nor billed

    def test_failed_conversion_not_billed(self):
        fake = u.start_fake(self.addCleanup)
        srv, key = self.fake_server(fake)
        # Its header reads (a PNG of 8x8), its pixel data is junk.
        fake.script([{"damaged": True}], api="gemini")
        uid = srv.create(key, prompt="damaged upstream image", model="nano-banana",
                         output_format="webp")
        t = srv.wait_final(uid, key)
        self.assertEqual((t["status"], t["images"]), ("failed", []), t)
        self.assertEqual(t["error"]["code"], "transcode_failed", t)
        self.assertIn("could not be converted to webp", t["error"]["message"])
        self.assertEqual([(a["provider"], a["http_status"], a["error_class"])
                          for a in t["upstream_attempts"]], [("g", 200, "none")], t)
        self.assertCost(t, PRICE_NB_1K, 0)
        rows = self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS, 0)
        self.assertSettled(rows, uid, PRICE_NB_1K, 0)
        self.assertEqual(b.kinds(rows), {"grant": 1, "hold": 1, "release": 1}, rows)

    def test_pixel_limit_fails_conversion_only(self):
        srv, key = self.server(transcode={"max_pixels": 1000000})  # under 1024 x 1024
        uid = srv.create(key, prompt="too many pixels", model="nano-banana",
                         output_format="jpeg")
        t = srv.wait_final(uid, key)
        self.assertEqual(t["status"], "failed", t)
        self.assertEqual(t["error"]["code"], "transcode_failed", t)
        self.assertIn("more than 1000000 pixels", t["error"]["message"])
        self.assertCost(t, PRICE_NB_1K, 0)
        # The same image in the format it was made in needs no conversion: delivered.
        t = srv.wait_final(srv.create(key, prompt="too many pixels", model="nano-banana",
                                      output_format="png"), key)
        self.assertEqual(t["status"], "succeeded", t)
        self.assertCost(t, PRICE_NB_1K, PRICE_NB_1K)
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - PRICE_NB_1K, 0)

    # -- the wanted format is part of the task

    def test_rerun_after_restart_converts_the_same_way(self):
        d = self.new_data_dir()
        slow = {"sim": {"delay_ms": 600000}, "engine": {"drain_timeout_ms": 100}}
        s1 = self.start_server(data_dir=d, accounts=[EMAIL],
                               config=b.billing_config(BONUS, **slow))
        key = s1.keys[EMAIL]
        uid = s1.create(key, prompt="survives a restart", model="nano-banana",
                        output_format="webp", output_compression=30)
        s1.poll_until(uid, key, lambda t: t["status"] == "running")
        s1.stop()  # the run is left unfinished, running in the store
        s2 = self.start_server(data_dir=d, config=b.billing_config(BONUS))
        t = s2.wait_final(uid, key)
        self.assertEqual((t["status"], t["attempts"]), ("succeeded", 2), t)
        self.assertEqual((t["output_format"], t["output_compression"]), ("webp", 30), t)
        self.assertEqual(format_of(self.image(s2, t)), "webp")
        self.assertCost(t, PRICE_NB_1K, PRICE_NB_1K)


if __name__ == "__main__":
    import unittest
    unittest.main()
