"""test_transparency.py - transparent backgrounds and edit masks for GPT Image,
end to end: imgate against the fake OpenAI (and Gemini) upstream of tests/fakes,
through the OpenAI dialect (raw HTTP and OpenAI's own SDK, unmodified) and the
native API.

background (auto | opaque | transparent) reaches GPT Image on generations and
edits as asked ("auto" when not), and the answer's "background" says what was
made; a transparent PNG stays transparent when imgate converts it to WebP. A
mask is an edit's "mask" file part (native: base64 or a data: URI), checked at
submit (a PNG with an alpha channel, of the first image's size, with an image
to apply to, for GPT Image only), kept with the task (a re-run after a restart
sends it again) and arrives upstream byte for byte as the form's "mask" part.
Gemini never gets either. Refusals come in OpenAI's error shape, hold nothing
and call no upstream. Neither changes what a task holds or is charged (the mask
is no reference image), and every data folder passes ledger-verify
(BillingTestCase).
"""

import base64
import hashlib
import itertools
import json
import shutil
import tempfile
import unittest

import billing_util as b
import harness as h
import test_dialect_openai as tdo
import upstream_util as u

EMAIL = "transparency@example.com"
BONUS = 10000000
GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"
REFERENCE_MICROS = 1000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_seq = itertools.count(1)


def rgb_png(w, h, rgb=(200, 120, 40)):
    """An opaque RGB PNG (colour type 2)."""
    return u.fake_upstream.png_bytes(w, h, rgb)


def rgba_png(w, h, rgb=(0, 0, 0)):
    """An RGBA PNG (colour type 6) with a transparent left half: a mask."""
    return u.fake_upstream.png_rgba_bytes(w, h, rgb)


def colour_type(png):
    assert png[:8] == PNG_MAGIC, png[:16]
    return png[25]


def webp_has_alpha(data):
    """Whether a WebP holds alpha: VP8X's alpha flag with an ALPH chunk, or
    VP8L's alpha_is_used bit."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP", data[:16]
    if data[12:16] == b"VP8X":
        return bool(data[20] & 0x10) and b"ALPH" in data[30:]
    if data[12:16] == b"VP8L":
        return bool(data[24] & 0x10)
    return False


def sha(data):
    return hashlib.sha256(data).hexdigest()


class TransparencyTest(u.WithFake, b.BillingTestCase):

    def config(self, **extra):
        cfg = b.billing_config(
            BONUS, prices={"gpt-image-1": {"reference_image": REFERENCE_MICROS}},
            retry={"max_attempts": 1}, **self.gpt_and_gemini())
        return h.deep_merge(cfg, extra)

    def server(self, **extra):
        srv = self.start_server(accounts=[EMAIL], config=self.config(**extra))
        return srv, srv.keys[EMAIL]

    def prompt(self):
        return "%s #%d" % (self._testMethodName, next(_seq))

    def only_request(self, prompt):
        (rec,) = u.requests_for(self.fake, prompt)
        return rec

    def form(self, rec):
        """A recorded edit's text fields {name: text} and file parts {name: [part]}."""
        fields, files = {}, {}
        for p in rec["multipart"]:
            if p["filename"] is None:
                fields[p["name"]] = p["text"]
            else:
                files.setdefault(p["name"], []).append(p)
        return fields, files

    def last_task(self, srv, key):
        return srv.get("/api/banana/tasks?limit=1", key=key).json()["tasks"][0]

    def edit(self, srv, key, fields, files, headers=None):
        body, ctype = tdo.multipart(fields, files)
        hdrs = {"Content-Type": ctype}
        hdrs.update(headers or {})
        return srv.request("POST", EDITS, key=key, body=body, headers=hdrs)

    def assertOpenAIError(self, r, status, code, param):
        self.assertEqual(r.status, status, r)
        self.assertTrue(r.headers.get("x-request-id"), r.headers)
        err = r.json()["error"]
        self.assertEqual(set(err), {"message", "type", "param", "code"}, err)
        self.assertEqual((err["code"], err["param"], err["type"]),
                         (code, param, "invalid_request_error"), err)
        self.assertTrue(err["message"])
        return err

    def assertSameMoney(self, srv, key, plain, other):
        """Two tasks of the same request but for the background or the mask:
        the same hold (per image and in all) and the same charge; and the
        account's ledger adds up to what both cost, nothing held."""
        self.assertEqual(plain["cost"], other["cost"], (plain, other))
        spent = plain["cost"]["charged_micros"] + other["cost"]["charged_micros"]
        rows = self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - spent, 0)
        for t in (plain, other):
            self.assertSettled(rows, t["uid"], t["cost"]["price_micros"],
                               t["cost"]["charged_micros"])

    # -- generations

    def test_generation_transparent_png(self):
        srv, key = self.server()
        p = self.prompt()
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "gpt-image-1", "prompt": p, "background": "transparent",
            "output_format": "png"})
        self.assertEqual(r.status, 200, r)
        doc = r.json()
        self.assertEqual((doc["background"], doc["output_format"]), ("transparent", "png"), doc)
        png = base64.b64decode(doc["data"][0]["b64_json"])
        self.assertEqual(colour_type(png), 6)          # RGBA, as the upstream made it
        sent = self.only_request(p)["json"]
        self.assertEqual((sent["background"], sent["output_format"]), ("transparent", "png"))
        t = self.last_task(srv, key)
        self.assertEqual((t["background"], t["mask"]), ("transparent", None), t)
        self.assertEqual(t["images"][0]["background"], "transparent", t)
        # The same request without a background: asked "auto", made opaque,
        # held and charged exactly the same.
        q = self.prompt()
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "gpt-image-1", "prompt": q, "output_format": "png"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["background"], "opaque")
        self.assertEqual(colour_type(base64.b64decode(r.json()["data"][0]["b64_json"])), 2)
        self.assertEqual(self.only_request(q)["json"]["background"], "auto")
        plain = self.last_task(srv, key)
        self.assertEqual(plain["background"], "auto", plain)
        self.assertSameMoney(srv, key, plain, t)

    def test_answer_says_what_was_made(self):
        srv, key = self.server()
        cases = [
            ({}, {"background": "transparent"}, "auto", "transparent"),  # the upstream's pick
            ({"background": "opaque"}, {}, "opaque", "opaque"),
            ({"background": "transparent"}, {"background": None}, "transparent", "transparent"),
            ({}, {"background": None}, "auto", "opaque"),               # nobody said: opaque
        ]
        for fields, step, sent, answered in cases:
            with self.subTest(fields=fields, step=step):
                self.fake.script([step], api="openai")
                p = self.prompt()
                body = {"model": "gpt-image-1", "prompt": p, "response_format": "url"}
                body.update(fields)
                r = srv.request("POST", GENERATIONS, key=key, json_body=body)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json()["background"], answered, r)
                self.assertEqual(self.only_request(p)["json"]["background"], sent)
        # Streamed, the completed event says it too.
        self.fake.script([{"background": "transparent"}], api="openai")
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "gpt-image-1", "prompt": self.prompt(), "stream": True})
        self.assertEqual(r.status, 200, r)
        events = [json.loads(line[len(b"data: "):]) for line in r.body.split(b"\n")
                  if line.startswith(b"data: ")]
        self.assertEqual([e["background"] for e in events], ["transparent"], events)

    def test_transparent_png_converted_to_webp_keeps_alpha(self):
        srv, key = self.server()
        # GPT Image is asked for WebP, but this upstream answers PNG (RGBA): imgate
        # converts it, and the WebP keeps the transparent half.
        self.fake.script([{"format": "png"}], api="openai")
        p = self.prompt()
        uid = srv.create(key, prompt=p, model="gpt-image-1", background="transparent",
                         output_format="webp")
        t = srv.wait_final(uid, key)
        self.assertEqual(t["status"], "succeeded", t)
        self.assertEqual((t["background"], t["output_format"]), ("transparent", "webp"), t)
        sent = self.only_request(p)["json"]
        self.assertEqual((sent["background"], sent["output_format"]), ("transparent", "webp"))
        img = srv.fetch_url(t["images"][0]["url"])
        self.assertEqual((img.status, img.headers.get("Content-Type")), (200, "image/webp"))
        self.assertTrue(webp_has_alpha(img.body), img.body[:40])
        # The OpenAI dialect, asked the same: the b64 WebP has alpha too.
        self.fake.script([{"format": "png"}], api="openai")
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "gpt-image-1", "prompt": self.prompt(), "background": "transparent",
            "output_format": "webp"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json()["background"], r.json()["output_format"]),
                         ("transparent", "webp"))
        self.assertTrue(webp_has_alpha(base64.b64decode(r.json()["data"][0]["b64_json"])))

    # -- edits with a mask

    def test_edit_with_mask_raw_multipart(self):
        srv, key = self.server()
        image, mask = rgb_png(16, 16), rgba_png(16, 16)
        p = self.prompt()
        r = self.edit(srv, key, {"model": "gpt-image-1", "prompt": p, "background": "transparent"},
                      [("image", "photo.png", image), ("mask", "m.bin", mask)])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["background"], "transparent", r)
        fields, files = self.form(self.only_request(p))
        self.assertEqual(fields["background"], "transparent")
        (sent_mask,) = files["mask"]
        self.assertEqual((sent_mask["sha256"], sent_mask["size"], sent_mask["magic"]),
                         (sha(mask), len(mask), "png"))
        self.assertEqual((sent_mask["filename"], sent_mask["content_type"]),
                         ("mask.png", "image/png"))
        (sent_image,) = files["image[]"]
        self.assertEqual(sent_image["sha256"], sha(image))   # the image stays an image
        t = self.last_task(srv, key)
        self.assertEqual(t["mask"], {"content_type": "image/png", "bytes": len(mask)}, t)
        self.assertEqual(t["background"], "transparent")
        # The same edit without the mask (or background) holds and is charged
        # the same: one reference image, not two.
        q = self.prompt()
        r = self.edit(srv, key, {"model": "gpt-image-1", "prompt": q},
                      [("image", "photo.png", image)])
        self.assertEqual(r.status, 200, r)
        _, files = self.form(self.only_request(q))
        self.assertNotIn("mask", files)
        plain = self.last_task(srv, key)
        self.assertEqual(plain["mask"], None)
        self.assertSameMoney(srv, key, plain, t)

    def test_edit_with_mask_through_the_sdk(self):
        srv, key = self.server()
        image, mask = rgb_png(24, 24, (10, 20, 30)), rgba_png(24, 24)
        d = tempfile.mkdtemp(prefix="imgate-e2e-mask-")
        self.addCleanup(shutil.rmtree, d, True)
        files = []
        for name, data in (("photo.png", image), ("mask.png", mask)):
            path = "%s/%s" % (d, name)
            with open(path, "wb") as f:
                f.write(data)
            files.append(path)
        p = self.prompt()
        out = tdo.sdk(srv, key, "mask", p, files)
        self.assertTrue(out["ok"], out)
        self.assertEqual((out["count"], out["background"], out["output_format"], out["png"]),
                         (1, "transparent", "png", tdo.PNG), out)
        self.assertEqual(out["colour_type"], 6, out)
        fields, parts = self.form(self.only_request(p))
        self.assertEqual(fields["background"], "transparent")
        self.assertEqual([m["sha256"] for m in parts["mask"]], [sha(mask)])
        self.assertEqual([i["sha256"] for i in parts["image[]"]], [sha(image)])

    def test_native_mask_and_background(self):
        srv, key = self.server()
        image, mask = rgb_png(12, 12), rgba_png(12, 12)
        b64 = base64.b64encode(mask).decode()
        for form in (b64, "data:image/png;base64," + b64):
            p = self.prompt()
            uid = srv.create(key, prompt=p, model="gpt-image-1", background="opaque",
                             image_urls=["data:image/png;base64," + base64.b64encode(
                                 image).decode()], mask=form)
            t = srv.wait_final(uid, key)
            self.assertEqual(t["status"], "succeeded", t)
            self.assertEqual((t["background"], t["mask"]),
                             ("opaque", {"content_type": "image/png", "bytes": len(mask)}), t)
            fields, files = self.form(self.only_request(p))
            self.assertEqual(fields["background"], "opaque")
            self.assertEqual([m["sha256"] for m in files["mask"]], [sha(mask)])
        # Refusals in the native shape.
        img = "data:image/png;base64," + base64.b64encode(image).decode()
        for fields, code in (
                ({"mask": b64}, "invalid_mask"),                                  # no image
                ({"mask": "https://example.com/m.png", "image_urls": [img]}, "invalid_mask"),
                ({"mask": base64.b64encode(rgb_png(12, 12)).decode(), "image_urls": [img]},
                 "invalid_mask"),                                                 # no alpha
                ({"mask": 5, "image_urls": [img]}, "invalid_type"),
                ({"background": "clear"}, "invalid_background"),
                ({"background": "transparent", "output_format": "jpeg"}, "invalid_background")):
            with self.subTest(fields=fields):
                body = {"prompt": "x", "model": "gpt-image-1"}
                body.update(fields)
                r = srv.request("POST", b.CREATE, key=key, json_body=body)
                param = "background" if "background" in fields else "mask"
                self.assertError(r, 400, code, param)

    def test_mask_kept_for_a_rerun_after_restart(self):
        d = self.new_data_dir()
        cfg = self.config(engine={"drain_timeout_ms": 100})
        self.fake.script([{"kind": "hang"}], api="openai", endpoint="edits")
        s1 = self.start_server(data_dir=d, accounts=[EMAIL], config=cfg)
        key = s1.keys[EMAIL]
        image, mask = rgb_png(16, 16), rgba_png(16, 16, (9, 9, 9))
        p = self.prompt()
        r = self.edit(s1, key, {"model": "gpt-image-1", "prompt": p},
                      [("image", "a.png", image), ("mask", "m.png", mask)],
                      headers={"Prefer": "respond-async"})
        self.assertEqual(r.status, 202, r)
        uid = r.json()["id"]
        h.wait_for(lambda: u.requests_for(self.fake, p), h.DEADLINE, "the first upstream call")
        s1.stop()   # the call is cut; the task stays running in the store
        s2 = self.start_server(data_dir=d, config=cfg)
        t = s2.wait_final(uid, key)
        self.assertEqual((t["status"], t["attempts"]), ("succeeded", 2), t)
        recs = u.requests_for(self.fake, p)
        self.assertEqual(len(recs), 2, recs)
        for rec in recs:
            _, files = self.form(rec)
            self.assertEqual([m["sha256"] for m in files["mask"]], [sha(mask)])
            self.assertEqual([i["sha256"] for i in files["image[]"]], [sha(image)])

    # -- refusals

    def test_refusals_in_openai_shape(self):
        srv, key = self.server()
        image, mask = rgb_png(16, 16), rgba_png(16, 16)
        gen = [
            ({"model": "gpt-image-1", "background": "transparent", "output_format": "jpeg"},
             "invalid_background", "background"),
            ({"model": "nano-banana", "background": "transparent"}, "invalid_background",
             "background"),
            ({"model": "gpt-image-1", "background": "see-through"}, "invalid_value",
             "background"),
        ]
        for fields, code, param in gen:
            with self.subTest(fields=fields):
                body = {"prompt": self.prompt()}
                body.update(fields)
                r = srv.request("POST", GENERATIONS, key=key, json_body=body)
                self.assertOpenAIError(r, 400, code, param)
        jpeg = u.jpeg(16, 16)
        edits = [
            ({}, [("image", "a.png", image), ("mask", "m.jpg", jpeg)], "invalid_mask", "mask"),
            ({}, [("image", "a.png", image), ("mask", "m.png", rgb_png(16, 16))],
             "invalid_mask", "mask"),                                          # no alpha
            ({}, [("image", "a.png", image), ("mask", "m.png", rgba_png(8, 8))],
             "invalid_mask", "mask"),                                          # another size
            ({}, [("image", "a.png", image), ("mask", "m.png", mask), ("mask", "n.png", mask)],
             "invalid_mask", "mask"),                                          # two
            ({}, [("mask", "m.png", mask)], "missing_field", "image"),         # nothing to edit
            ({"model": "nano-banana"}, [("image", "a.png", image), ("mask", "m.png", mask)],
             "invalid_mask", "mask"),
            ({"background": "transparent", "output_format": "jpeg"},
             [("image", "a.png", image), ("mask", "m.png", mask)], "invalid_background",
             "background"),
        ]
        for fields, files, code, param in edits:
            with self.subTest(fields=fields, files=[f[:2] for f in files]):
                form = {"model": "gpt-image-1", "prompt": self.prompt()}
                form.update(fields)
                self.assertOpenAIError(self.edit(srv, key, form, files), 400, code, param)
        # None of the refusals held money or called an upstream.
        self.assertEqual(self.fake.requests(), [])
        self.assertEqual(self.credits(srv, key)["held_micros"], 0)

    def test_mask_over_the_image_limit(self):
        srv, key = self.server(limits={"max_image_bytes": 4096})
        image = rgb_png(16, 16)
        big = rgba_png(16, 16) + b"\x00" * 5000     # a PNG by its bytes, too large
        r = self.edit(srv, key, {"model": "gpt-image-1", "prompt": self.prompt()},
                      [("image", "a.png", image), ("mask", "m.png", big)])
        self.assertOpenAIError(r, 413, "image_too_large", "mask")
        self.assertEqual(self.fake.requests(), [])
        self.assertEqual(self.credits(srv, key)["held_micros"], 0)

    def test_gemini_never_gets_either(self):
        srv, key = self.server()
        p = self.prompt()
        uid = srv.create(key, prompt=p, model="nano-banana", background="opaque")
        t = srv.wait_final(uid, key)
        self.assertEqual((t["status"], t["background"]), ("succeeded", "opaque"), t)
        rec = self.only_request(p)
        self.assertEqual(rec["api"], "gemini")
        text = json.dumps(rec["json"])
        self.assertNotIn("background", text)
        self.assertNotIn("opaque", text)
        self.assertIsNone(rec["multipart"])


if __name__ == "__main__":
    unittest.main()
