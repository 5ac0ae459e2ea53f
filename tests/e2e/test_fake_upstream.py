"""test_fake_upstream.py - self-test of tests/fakes/fake_upstream.py (needs no imgate).

Drives the fake over http.client, raw sockets and asyncio streams: every STEP kind on
both APIs, request validation, the recording (including a chunked multipart edits
request), the HTTP layer (keep-alive, pipelining, 100-continue, chunked bodies) and
500 concurrent delayed requests.
"""

import asyncio
import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import struct
import sys
import tempfile
import time
import unittest
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fakes"))
from fakeclient import FakeUpstream  # noqa: E402

DEADLINE = 20.0
GEMINI_MODEL = "gemini-3-pro-image-preview"
PNG_1X1 = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AA"
                           "AAMBAQDJ/pLvAAAAAElFTkSuQmCC")
# A 1x1 RGBA PNG (colour type 6), transparent: what a mask must be (an alpha channel).
PNG_1X1_RGBA = (b"\x89PNG\r\n\x1a\n"
                + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
                + struct.pack(">I", zlib.crc32(b"IHDR" + struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0,
                                                                      0)) & 0xFFFFFFFF)
                + struct.pack(">I", len(zlib.compress(b"\x00" * 5))) + b"IDAT"
                + zlib.compress(b"\x00" * 5)
                + struct.pack(">I", zlib.crc32(b"IDAT" + zlib.compress(b"\x00" * 5)) & 0xFFFFFFFF)
                + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def wait_for(pred, what):
    end = time.monotonic() + DEADLINE
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.01)


def png_info(data):
    """(width, height, set of RGB pixels) of an 8-bit RGB PNG; checks every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc, = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, "bad CRC in " + repr(kind)
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    w, h, depth, ctype = ihdr[:4]
    assert (depth, ctype) == (8, 2)
    raw = zlib.decompress(idat)
    assert len(raw) == h * (1 + 3 * w)
    stride = 1 + 3 * w
    pixels = {raw[r * stride + 1 + 3 * x:r * stride + 4 + 3 * x]
              for r in range(h) for x in range(w)}
    return w, h, pixels


def gemini_body(prompt="a red bicycle", snake=False, image=None, size=None, ratio=None):
    parts = [{"text": prompt}]
    if image is not None:
        key, mkey = ("inline_data", "mime_type") if snake else ("inlineData", "mimeType")
        parts.append({key: {mkey: "image/png", "data": base64.b64encode(image).decode()}})
    cfg = {"responseModalities": ["IMAGE"]}
    img = {}
    if ratio:
        img["aspectRatio"] = ratio
    if size:
        img["imageSize"] = size
    if img:
        cfg["imageConfig"] = img
    return {"contents": [{"role": "user", "parts": parts}], "generationConfig": cfg}


class Resp:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def request(fake, method, path, body=None, headers=None, chunked=False):
    conn = http.client.HTTPConnection(fake.host, fake.port, timeout=DEADLINE)
    try:
        hdrs = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, str, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if chunked:
            hdrs["Transfer-Encoding"] = "chunked"
            conn.request(method, path, body=iter(body), headers=hdrs, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return Resp(r.status, r.headers, r.read())
    finally:
        conn.close()


def gemini(fake, body=None, model=GEMINI_MODEL, key="test-key", method=":generateContent",
           query=""):
    headers = {"x-goog-api-key": key} if key is not None else {}
    return request(fake, "POST", "/v1beta/models/%s%s%s" % (model, method, query),
                   gemini_body() if body is None else body, headers)


def openai(fake, body=None, key="sk-test", path="/v1/images/generations"):
    headers = {"Authorization": "Bearer " + key} if key is not None else {}
    if body is None:
        body = {"model": "gpt-image-1", "prompt": "a lighthouse"}
    return request(fake, "POST", path, body, headers)


def multipart(fields, boundary="----fakeboundary7MA4YWxk"):
    """Body pieces (a list of bytes, to send chunked) and the content type."""
    pieces = []
    for name, value, filename, ctype in fields:
        head = '--%s\r\nContent-Disposition: form-data; name="%s"' % (boundary, name)
        if filename is not None:
            head += '; filename="%s"' % filename
        head += "\r\n"
        if ctype:
            head += "Content-Type: %s\r\n" % ctype
        pieces.append(head.encode() + b"\r\n")
        pieces.append(value if isinstance(value, bytes) else value.encode())
        pieces.append(b"\r\n")
    pieces.append(("--%s--\r\n" % boundary).encode())
    return pieces, "multipart/form-data; boundary=" + boundary


def final_image(resp_json):
    """The last non-thought inline image of a Gemini answer, either spelling."""
    parts = resp_json["candidates"][0]["content"]["parts"]
    imgs = [p for p in parts if ("inlineData" in p or "inline_data" in p) and not p.get("thought")]
    blob = imgs[-1].get("inlineData") or imgs[-1]["inline_data"]
    return base64.b64decode(blob.get("data"))


def raw_exchange(fake, data, timeout=DEADLINE):
    """Sends raw bytes and reads until the server closes; returns what arrived."""
    with socket.create_connection((fake.host, fake.port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def raw_post(path, body, headers=(), close=True):
    lines = ["POST %s HTTP/1.1" % path, "Host: fake", "Content-Type: application/json",
             "Content-Length: %d" % len(body)] + list(headers)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def split_head(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


class FakeTestCase(unittest.TestCase):
    fake_args = ()

    @classmethod
    def setUpClass(cls):
        cls.fake = FakeUpstream(*cls.fake_args).start()

    @classmethod
    def tearDownClass(cls):
        cls.fake.stop()

    def setUp(self):
        self.fake.reset()

    def run(self, result=None):
        out = super().run(result)
        if result is not None and (result.failures or result.errors) and self.fake.stderr:
            sys.stderr.write("--- fake upstream stderr ---\n%s\n" % self.fake.stderr)
        return out


# ---------------------------------------------------------------- process


class ProcessTests(unittest.TestCase):
    def test_listening_line_fd_limit_and_sigterm(self):
        fake = FakeUpstream().start()
        try:
            self.assertRegex(fake.first_line, r"^fake upstream listening on http://127\.0\.0\.1:"
                             r"[1-9][0-9]*$")
            with open("/proc/%d/limits" % fake.proc.pid) as f:
                line = next(x for x in f if x.startswith("Max open files"))
            soft, hard = line.split()[3:5]
            self.assertEqual(soft, hard)
            self.assertEqual(request(fake, "GET", "/_fake/stats").status, 200)
        finally:
            self.assertEqual(fake.stop(), 0)

    def test_script_file_and_verbose(self):
        folder = tempfile.mkdtemp(prefix="fake-upstream-")
        try:
            path = os.path.join(folder, "script.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump([{"match": {"api": "gemini"}, "responses": [{"kind": "text_only"}]}], f)
            with FakeUpstream("--script", path, "--verbose") as fake:
                out = gemini(fake).json()
                self.assertNotIn("inlineData", json.dumps(out))
                wait_for(lambda: re.search(r"POST /v1beta/models/\S+ -> 200", fake.stderr),
                         "the verbose request line")
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"responses": [{"kind": "nope"}]}, f)
            with self.assertRaises(AssertionError):
                FakeUpstream("--script", path, deadline=5).start()
        finally:
            shutil.rmtree(folder)

    def test_sigterm_with_open_and_hanging_connections(self):
        fake = FakeUpstream().start()
        fake.script([{"kind": "hang"}], then="repeat_last")
        socks = []
        try:
            for _ in range(3):
                s = socket.create_connection((fake.host, fake.port), timeout=DEADLINE)
                s.sendall(raw_post("/v1beta/models/m:generateContent",
                                   json.dumps(gemini_body()).encode(),
                                   ["x-goog-api-key: k"]))
                socks.append(s)
            wait_for(lambda: fake.stats()["in_flight"] == 3, "three hanging requests")
            self.assertEqual(fake.stop(), 0)
            for s in socks:
                self.assertEqual(s.recv(10), b"")
        finally:
            for s in socks:
                s.close()


# ---------------------------------------------------------------- Gemini


class GeminiTests(FakeTestCase):
    def test_default_image_both_request_spellings(self):
        for snake in (False, True):
            body = gemini_body("a red bicycle", snake=snake, image=PNG_1X1)
            r = gemini(self.fake, body)
            self.assertEqual(r.status, 200, r.body)
            self.assertTrue(r.headers["Content-Type"].startswith("application/json"))
            out = r.json()
            cand = out["candidates"][0]
            self.assertEqual(cand["finishReason"], "STOP")
            parts = cand["content"]["parts"]
            self.assertEqual(len(parts), 2)
            self.assertIsInstance(parts[0]["text"], str)
            self.assertEqual(parts[1]["inlineData"]["mimeType"], "image/png")
            self.assertTrue(parts[1]["thoughtSignature"])
            w, h, pixels = png_info(final_image(out))
            self.assertEqual((w, h, len(pixels)), (8, 8, 1))
            usage = out["usageMetadata"]
            self.assertEqual(usage["totalTokenCount"],
                             usage["promptTokenCount"] + usage["candidatesTokenCount"])
            self.assertEqual(out["modelVersion"], GEMINI_MODEL)
            self.assertTrue(out["responseId"])
        recs = self.fake.requests(api="gemini")
        self.assertEqual(len(recs), 2)
        self.assertEqual(recs[0]["model"], GEMINI_MODEL)
        self.assertEqual(recs[0]["endpoint"], "generateContent")
        self.assertEqual(recs[0]["headers"]["x-goog-api-key"], "test-key")
        self.assertIn("inline_data", recs[1]["json"]["contents"][0]["parts"][1])
        self.assertEqual(recs[1]["json"], gemini_body("a red bicycle", snake=True, image=PNG_1X1))
        self.assertEqual(recs[0]["status"], 200)

    def test_colour_follows_prompt(self):
        a1 = final_image(gemini(self.fake, gemini_body("cat")).json())
        a2 = final_image(gemini(self.fake, gemini_body("cat")).json())
        b = final_image(gemini(self.fake, gemini_body("dog")).json())
        self.assertEqual(a1, a2)
        self.assertNotEqual(png_info(a1)[2], png_info(b)[2])

    def test_key_missing_and_query_key(self):
        r = gemini(self.fake, key=None)
        self.assertEqual(r.status, 400)
        err = r.json()["error"]
        self.assertEqual(err["status"], "INVALID_ARGUMENT")
        self.assertIn("API key not valid", err["message"])
        self.assertEqual(gemini(self.fake, key=None, query="?key=abc").status, 200)

    def test_request_validation(self):
        cases = {
            "bad json": b'{"contents": [',
            "lower-case imageSize": gemini_body(size="1k"),
            "unknown field": dict(gemini_body(), generation_config_typo={}),
            "unknown imageConfig field": {"contents": [{"parts": [{"text": "x"}]}],
                                          "generationConfig": {"imageConfig": {"size": "1K"}}},
            "lower-case modality": {"contents": [{"parts": [{"text": "x"}]}],
                                    "generationConfig": {"responseModalities": ["image"]}},
            "bad ratio": gemini_body(ratio="7:3"),
            "no contents": {"generationConfig": {}},
            "empty parts": {"contents": [{"parts": []}]},
            "bad base64": {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png",
                                                                   "data": "%%%"}}]}]},
        }
        self.fake.script([{"kind": "text_only"}])  # validation must not consume it
        for name, body in cases.items():
            with self.subTest(name):
                r = gemini(self.fake, body)
                self.assertEqual(r.status, 400, r.body)
                self.assertEqual(r.json()["error"]["status"], "INVALID_ARGUMENT")
        for size in ("512", "1K", "2K", "4K"):
            self.assertEqual(gemini(self.fake, gemini_body(size=size, ratio="16:9")).status, 200)
        recs = self.fake.requests()
        self.assertEqual(recs[0]["json"], None)
        self.assertTrue(recs[0]["json_error"])
        self.assertEqual(recs[-4]["step"], {"kind": "text_only"})

    def test_size_steps(self):
        self.fake.script([{"width": 33, "height": 17},
                          {"real_size": True}, {"real_size": True}])
        self.assertEqual(png_info(final_image(gemini(self.fake).json()))[:2], (33, 17))
        out = gemini(self.fake, gemini_body(ratio="16:9", size="2K")).json()
        self.assertEqual(png_info(final_image(out))[:2], (2752, 1536))
        out = gemini(self.fake, gemini_body(ratio="16:9"), model="gemini-2.5-flash-image").json()
        self.assertEqual(png_info(final_image(out))[:2], (1344, 768))

    def test_format_step(self):
        self.fake.script([{"format": "jpeg"}, {"format": "webp"}])
        for magic, mime in ((b"\xff\xd8\xff", "image/jpeg"), (b"RIFF", "image/webp")):
            out = gemini(self.fake).json()
            self.assertEqual(out["candidates"][0]["content"]["parts"][-1]["inlineData"]["mimeType"],
                             mime)
            self.assertTrue(final_image(out).startswith(magic))

    def test_thought_then_image(self):
        for n in (1, 2):
            self.fake.script([{"kind": "thought_then_image", "thoughts": n}])
            out = gemini(self.fake).json()
            parts = out["candidates"][0]["content"]["parts"]
            thought_imgs = [p for p in parts if p.get("thought") and "inlineData" in p]
            self.assertEqual(len(thought_imgs), n)
            self.assertFalse(parts[-1].get("thought"))
            self.assertIn("thoughtSignature", parts[-1])
            final = final_image(out)
            for p in thought_imgs:
                draft = base64.b64decode(p["inlineData"]["data"])
                self.assertNotEqual(png_info(draft)[2], png_info(final)[2])
            self.assertEqual(out["candidates"][0]["finishReason"], "STOP")

    def test_thought_drafts_without_final_image(self):
        self.fake.script([{"kind": "thought_then_image", "thoughts": 2, "final_image": False}])
        out = gemini(self.fake).json()
        parts = out["candidates"][0]["content"]["parts"]
        images = [p for p in parts if "inlineData" in p]
        self.assertEqual(len(images), 2)
        self.assertTrue(all(p.get("thought") for p in images))
        self.assertEqual(parts[-1], {"text": "Here is the image you asked for."})

    def test_text_only(self):
        self.fake.script([{"kind": "text_only", "text": "I won't draw that."}])
        out = gemini(self.fake).json()
        cand = out["candidates"][0]
        self.assertEqual(cand["finishReason"], "STOP")
        self.assertEqual(cand["content"]["parts"], [{"text": "I won't draw that."}])

    def test_block_prompt(self):
        self.fake.script([{"kind": "block_prompt"},
                          {"kind": "block_prompt", "reason": "PROHIBITED_CONTENT",
                           "message": "nope"}])
        r = gemini(self.fake)
        self.assertEqual(r.status, 200)
        self.assertNotIn("candidates", r.json())
        self.assertEqual(r.json()["promptFeedback"], {"blockReason": "SAFETY"})
        self.assertEqual(gemini(self.fake).json()["promptFeedback"],
                         {"blockReason": "PROHIBITED_CONTENT", "blockReasonMessage": "nope"})

    def test_finish_reason(self):
        self.fake.script([{"kind": "finish_reason"},
                          {"kind": "finish_reason", "reason": "NO_IMAGE", "content": "empty"},
                          {"kind": "finish_reason", "reason": "OTHER", "content": "text",
                           "message": "why"}])
        cand = gemini(self.fake).json()["candidates"][0]
        self.assertEqual(cand["finishReason"], "IMAGE_SAFETY")
        self.assertNotIn("content", cand)
        cand = gemini(self.fake).json()["candidates"][0]
        self.assertEqual((cand["finishReason"], cand["content"]["parts"]), ("NO_IMAGE", []))
        cand = gemini(self.fake).json()["candidates"][0]
        self.assertEqual(cand["finishReason"], "OTHER")
        self.assertEqual(cand["finishMessage"], "why")
        self.assertIn("text", cand["content"]["parts"][0])

    def test_error(self):
        self.fake.script([{"kind": "error", "status": 429, "retry_delay": "19s",
                           "message": "slow down"},
                          {"kind": "error", "status": "UNAVAILABLE"},
                          {"kind": "error"},
                          {"kind": "error", "status": 400, "google_status": "FAILED_PRECONDITION",
                           "retry_delay": 7}])
        r = gemini(self.fake)
        self.assertEqual(r.status, 429)
        err = r.json()["error"]
        self.assertEqual((err["code"], err["status"], err["message"]),
                         (429, "RESOURCE_EXHAUSTED", "slow down"))
        retry = [d for d in err["details"] if d["@type"].endswith("google.rpc.RetryInfo")]
        self.assertEqual(retry[0]["retryDelay"], "19s")
        r = gemini(self.fake)
        self.assertEqual((r.status, r.json()["error"]["status"]), (503, "UNAVAILABLE"))
        r = gemini(self.fake)
        self.assertEqual((r.status, r.json()["error"]["status"]), (500, "INTERNAL"))
        err = gemini(self.fake).json()["error"]
        self.assertEqual((err["code"], err["status"]), (400, "FAILED_PRECONDITION"))
        self.assertEqual(err["details"][-1]["retryDelay"], "7s")

    def test_malformed(self):
        self.fake.script([{"kind": "malformed"}])
        r = gemini(self.fake)
        self.assertEqual(r.status, 200)
        self.assertRaises(ValueError, json.loads, r.body)

    def test_truncated(self):
        self.fake.script([{"kind": "truncated"}])
        raw = raw_exchange(self.fake, raw_post("/v1beta/models/m:generateContent",
                                               json.dumps(gemini_body()).encode(),
                                               ["x-goog-api-key: k"], close=False))
        status, headers, body = split_head(raw)
        self.assertEqual(status, 200)
        self.assertLess(len(body), int(headers["content-length"]))
        self.assertGreater(len(body), 0)

    def test_reset_close_hang(self):
        check_connection_kinds(self, "/v1beta/models/m:generateContent",
                               json.dumps(gemini_body()).encode(), ["x-goog-api-key: k"])

    def test_delay_headers_status(self):
        self.fake.script([{"delay_ms": 300, "headers": {"retry-after": "2", "x-extra": "1"},
                           "status": 503, "kind": "error"}])
        t0 = time.monotonic()
        r = gemini(self.fake)
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)
        self.assertEqual(r.status, 503)
        self.assertEqual(r.headers["retry-after"], "2")
        self.assertEqual(r.headers["x-extra"], "1")
        self.assertTrue(r.headers["x-request-id"])

    def test_snake_case_answers(self):
        self.fake.script([{"snake_case": True}, {"snake_case": "all"}])
        out = gemini(self.fake).json()
        part = out["candidates"][0]["content"]["parts"][-1]
        self.assertEqual(part["inline_data"]["mime_type"], "image/png")
        self.assertIn("finishReason", out["candidates"][0])
        self.assertEqual(png_info(final_image(out))[:2], (8, 8))
        out = gemini(self.fake).json()
        self.assertIn("finish_reason", out["candidates"][0])
        self.assertIn("usage_metadata", out)
        self.assertIn("thought_signature", out["candidates"][0]["content"]["parts"][-1])

    def test_script_matching(self):
        self.fake.script([{"kind": "text_only"}], api="openai")
        self.fake.script([{"kind": "block_prompt"}], api="gemini", model="gemini-2.5-*")
        self.fake.script([{"kind": "finish_reason"}, {"kind": "error", "status": 503}],
                         api="*", then="repeat_last")
        self.fake.script([{"kind": "text_only"}], api="gemini")  # never reached: repeat_last above
        r = gemini(self.fake, model="gemini-2.5-flash-image")
        self.assertIn("promptFeedback", r.json())
        r = gemini(self.fake, model="gemini-2.5-flash-image")  # the 2.5 script is used up
        self.assertEqual(r.json()["candidates"][0]["finishReason"], "IMAGE_SAFETY")
        for _ in range(3):
            self.assertEqual(gemini(self.fake).status, 503)
        scripts = self.fake.scripts()
        self.assertEqual([s["used"] for s in scripts], [0, 1, 4, 0])
        self.assertEqual([s["exhausted"] for s in scripts], [False, True, False, False])

    def test_then_default_falls_back(self):
        self.fake.script([{"kind": "text_only"}], endpoint="generateContent")
        self.fake.script([{"kind": "block_prompt"}], endpoint="streamGenerateContent")
        self.assertNotIn("inlineData", json.dumps(gemini(self.fake).json()))
        self.assertEqual(len(png_info(final_image(gemini(self.fake).json()))[2]), 1)
        self.assertIn("promptFeedback", gemini(self.fake, method=":streamGenerateContent").body
                      .decode())

    def test_bad_scripts_rejected(self):
        bad = [{"responses": [{"kind": "explode"}]},
               {"responses": []},
               {"responses": [{"sttaus": 500}]},
               {"match": {"api": "bing"}, "responses": [{}]},
               {"responses": [{}], "then": "loop"},
               {"responses": [{"kind": "image", "status": "UNAVAILABLE"}]},
               {"responses": [{"delay_ms": True}]}]
        for spec in bad:
            with self.subTest(spec=spec):
                status, out = self.fake.call("POST", "/_fake/script", spec)
                self.assertEqual(status, 400, out)
        self.assertEqual(self.fake.scripts(), [])

    def test_stream_sse_and_array(self):
        self.fake.script([{"kind": "thought_then_image", "thoughts": 1}, {}])
        r = gemini(self.fake, method=":streamGenerateContent", query="?alt=sse")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers["Content-Type"].startswith("text/event-stream"))
        events = [json.loads(line[6:]) for line in r.body.decode().split("\n\n") if line]
        self.assertEqual(len(events), 4)  # thought text, thought image, text, final image
        self.assertEqual(events[-1]["candidates"][0]["finishReason"], "STOP")
        self.assertIn("usageMetadata", events[-1])
        self.assertTrue(events[1]["candidates"][0]["content"]["parts"][0]["thought"])
        r = gemini(self.fake, method=":streamGenerateContent")
        arr = r.json()
        self.assertIsInstance(arr, list)
        self.assertEqual(arr[-1]["candidates"][0]["finishReason"], "STOP")

    def test_stream_error_in_stream_and_cut(self):
        self.fake.script([{"kind": "error", "status": 429, "in_stream": True},
                          {"kind": "error", "status": 429}, {"kind": "truncated"},
                          {"kind": "malformed"}])
        r = gemini(self.fake, method=":streamGenerateContent", query="?alt=sse")
        self.assertEqual(r.status, 200)
        events = [json.loads(line[6:]) for line in r.body.decode().split("\n\n") if line]
        self.assertEqual(events[-1]["error"]["code"], 429)
        r = gemini(self.fake, method=":streamGenerateContent", query="?alt=sse")
        self.assertEqual(r.status, 429)
        with self.assertRaises(http.client.IncompleteRead):
            gemini(self.fake, method=":streamGenerateContent", query="?alt=sse")
        r = gemini(self.fake, method=":streamGenerateContent", query="?alt=sse")
        self.assertTrue(r.body.startswith(b"data: "))
        self.assertRaises(ValueError, json.loads, r.body[6:])

    def test_models(self):
        r = request(self.fake, "GET", "/v1beta/models", headers={"x-goog-api-key": "k"})
        names = [m["name"] for m in r.json()["models"]]
        self.assertIn("models/gemini-2.5-flash-image", names)
        r = request(self.fake, "GET", "/v1beta/models/gemini-2.5-flash-image",
                    headers={"x-goog-api-key": "k"})
        self.assertEqual(r.json()["name"], "models/gemini-2.5-flash-image")
        self.assertEqual(request(self.fake, "GET", "/v1beta/models").status, 400)


def check_connection_kinds(tc, path, body, headers):
    """reset, close and hang on one API (tc.fake is reset first)."""
    tc.fake.script([{"kind": "reset"}, {"kind": "close"}, {"kind": "hang"}])
    with tc.assertRaises(ConnectionResetError):
        raw_exchange(tc.fake, raw_post(path, body, headers, close=False))
    tc.assertEqual(raw_exchange(tc.fake, raw_post(path, body, headers, close=False)), b"")
    with socket.create_connection((tc.fake.host, tc.fake.port), timeout=DEADLINE) as s:
        s.sendall(raw_post(path, body, headers, close=False))
        wait_for(lambda: tc.fake.stats()["in_flight"] == 1, "the hanging request")
        s.settimeout(0.3)
        with tc.assertRaises(socket.timeout):
            s.recv(100)
    wait_for(lambda: tc.fake.stats()["in_flight"] == 0, "the hang to end with the client")
    stats = tc.fake.stats()
    tc.assertEqual(stats["by_status"], {"reset": 1, "close": 1, "hang": 1})
    tc.assertEqual([r["status"] for r in tc.fake.requests()], [None, None, None])


class KeyedTests(FakeTestCase):
    fake_args = ("--gemini-key", "g-secret", "--openai-key", "sk-secret", "--max-body", "100000")

    def test_gemini_key(self):
        r = gemini(self.fake, key="wrong")
        self.assertEqual(r.status, 400)
        self.assertIn("API key not valid", r.json()["error"]["message"])
        self.assertEqual(gemini(self.fake, key="g-secret").status, 200)

    def test_openai_key(self):
        r = openai(self.fake, key="sk-wrong-key")
        self.assertEqual(r.status, 401)
        self.assertEqual(r.json()["error"]["code"], "invalid_api_key")
        self.assertTrue(r.headers["x-request-id"])
        self.assertEqual(openai(self.fake, key="sk-secret").status, 200)

    def test_body_limit(self):
        r = gemini(self.fake, gemini_body(image=b"\x89PNG" + b"x" * 100000), key="g-secret")
        self.assertEqual(r.status, 413)


# ---------------------------------------------------------------- OpenAI


class OpenAITests(FakeTestCase):
    def test_generations(self):
        r = openai(self.fake, {"model": "gpt-image-1", "prompt": "three boats", "n": 3,
                               "size": "1536x1024", "quality": "low"})
        self.assertEqual(r.status, 200, r.body)
        out = r.json()
        self.assertEqual(out["size"], "1536x1024")
        self.assertEqual(out["quality"], "low")
        self.assertEqual(out["output_format"], "png")
        self.assertEqual(out["background"], "opaque")
        self.assertIsInstance(out["created"], int)
        self.assertEqual(len(out["data"]), 3)
        imgs = [base64.b64decode(d["b64_json"]) for d in out["data"]]
        self.assertEqual(len({frozenset(png_info(i)[2]) for i in imgs}), 3)
        self.assertEqual(out["usage"]["total_tokens"],
                         out["usage"]["input_tokens"] + out["usage"]["output_tokens"])
        rec = self.fake.requests(api="openai")[0]
        self.assertEqual(rec["request_id"], r.headers["x-request-id"])
        self.assertEqual((rec["model"], rec["endpoint"]), ("gpt-image-1", "generations"))
        self.assertEqual(rec["json"]["n"], 3)
        self.assertEqual(rec["headers"]["authorization"], "Bearer sk-test")

    def test_output_formats(self):
        for fmt, magic in (("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF"), ("png", b"\x89PNG")):
            out = openai(self.fake, {"prompt": "x", "output_format": fmt}).json()
            self.assertEqual(out["output_format"], fmt)
            self.assertTrue(base64.b64decode(out["data"][0]["b64_json"]).startswith(magic))

    def test_auth_and_validation(self):
        r = openai(self.fake, key=None)
        self.assertEqual(r.status, 401)
        self.assertIn("didn't provide an API key", r.json()["error"]["message"])
        self.assertTrue(r.headers["x-request-id"])
        cases = {"bad json": (b"{", None), "unknown parameter": ({"prompt": "x", "colour": 1},
                                                                  "colour"),
                 "no prompt": ({"model": "gpt-image-1"}, "prompt"),
                 "n too small": ({"prompt": "x", "n": 0}, "n"),
                 "n not int": ({"prompt": "x", "n": "2"}, "n"),
                 "bad quality": ({"prompt": "x", "quality": "ultra"}, "quality"),
                 "bad size": ({"prompt": "x", "size": "big"}, "size")}
        for name, (body, param) in cases.items():
            with self.subTest(name):
                r = openai(self.fake, body)
                self.assertEqual(r.status, 400, r.body)
                err = r.json()["error"]
                self.assertEqual(err["type"], "invalid_request_error")
                self.assertEqual(err["param"], param)

    def test_edits_chunked_octet_stream(self):
        img1 = PNG_1X1
        img2 = b"\xff\xd8\xff\xe0" + os.urandom(300)
        pieces, ctype = multipart([("model", "gpt-image-1", None, None),
                                   ("prompt", "put them together", None, None),
                                   ("image[]", img1, "one.png", "application/octet-stream"),
                                   ("image[]", img2, "two.jpg", "application/octet-stream"),
                                   ("n", "2", None, None), ("size", "1024x1024", None, None),
                                   ("quality", "high", None, None)])
        r = request(self.fake, "POST", "/v1/images/edits", pieces,
                    {"Authorization": "Bearer sk-test", "Content-Type": ctype}, chunked=True)
        self.assertEqual(r.status, 200, r.body)
        out = r.json()
        self.assertEqual((len(out["data"]), out["quality"]), (2, "high"))
        self.assertTrue(r.headers["x-request-id"])
        rec = self.fake.requests(api="openai")[0]
        self.assertEqual((rec["endpoint"], rec["model"]), ("edits", "gpt-image-1"))
        self.assertEqual(rec["headers"]["transfer-encoding"], "chunked")
        self.assertEqual(rec["body_size"], len(b"".join(pieces)))
        parts = {(p["name"], p["filename"]): p for p in rec["multipart"]}
        one, two = parts[("image[]", "one.png")], parts[("image[]", "two.jpg")]
        self.assertEqual(one["content_type"], "application/octet-stream")
        self.assertEqual((one["size"], one["sha256"], one["magic"]),
                         (len(img1), hashlib.sha256(img1).hexdigest(), "png"))
        self.assertEqual((two["size"], two["sha256"], two["magic"]),
                         (len(img2), hashlib.sha256(img2).hexdigest(), "jpeg"))
        self.assertIsNone(one["text"])
        self.assertEqual(parts[("prompt", None)]["text"], "put them together")
        self.assertEqual([p["name"] for p in rec["multipart"]],
                         ["model", "prompt", "image[]", "image[]", "n", "size", "quality"])

    def test_edits_single_image_mask_and_errors(self):
        pieces, ctype = multipart([("image", PNG_1X1, "a.png", "image/png"),
                                   ("mask", PNG_1X1_RGBA, "m.png", "image/png"),
                                   ("prompt", "edit", None, None)])
        hdrs = {"Authorization": "Bearer sk-test", "Content-Type": ctype}
        r = request(self.fake, "POST", "/v1/images/edits", b"".join(pieces), hdrs)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(len(r.json()["data"]), 1)
        bad = {"not an image": [("image", b"GIF89a....", "a.gif", "image/gif"),
                                ("prompt", "edit", None, None)],
               "no image": [("prompt", "edit", None, None)],
               "no prompt": [("image", PNG_1X1, "a.png", None)],
               "unknown field": [("image", PNG_1X1, "a.png", None), ("prompt", "x", None, None),
                                 ("colour", "red", None, None)],
               "bad n": [("image", PNG_1X1, "a.png", None), ("prompt", "x", None, None),
                         ("n", "eleven", None, None)],
               "mask without alpha": [("image", PNG_1X1, "a.png", None),
                                      ("mask", PNG_1X1, "m.png", None),
                                      ("prompt", "x", None, None)],
               "mask not a png": [("image", PNG_1X1, "a.png", None),
                                  ("mask", b"GIF89a....", "m.gif", None),
                                  ("prompt", "x", None, None)]}
        for name, fields in bad.items():
            with self.subTest(name):
                pieces, ctype = multipart(fields)
                hdrs["Content-Type"] = ctype
                r = request(self.fake, "POST", "/v1/images/edits", b"".join(pieces), hdrs)
                self.assertEqual(r.status, 400, r.body)
                self.assertEqual(r.json()["error"]["type"], "invalid_request_error")
        r = openai(self.fake, path="/v1/images/edits")  # JSON, not multipart
        self.assertEqual(r.status, 400)

    def test_background(self):
        """The background asked is reported and drawn: transparent makes an RGBA PNG
        (a transparent left half) and a WebP with alpha; a step may report another,
        or none."""
        r = openai(self.fake, {"model": "gpt-image-1", "prompt": "glass", "background":
                               "transparent", "size": "1024x1024"})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["background"], "transparent")
        png = base64.b64decode(r.json()["data"][0]["b64_json"])
        self.assertEqual(png[25], 6)
        r = openai(self.fake, {"model": "gpt-image-1", "prompt": "glass", "background":
                               "transparent", "output_format": "webp"})
        webp = base64.b64decode(r.json()["data"][0]["b64_json"])
        self.assertEqual((webp[12:16], webp[24] & 0x10), (b"VP8L", 0x10))   # alpha_is_used
        self.fake.script([{"background": "transparent"}, {"background": None}], api="openai")
        r = openai(self.fake)   # asked nothing (auto): the step's pick
        self.assertEqual(r.json()["background"], "transparent")
        self.assertEqual(base64.b64decode(r.json()["data"][0]["b64_json"])[25], 6)
        r = openai(self.fake)
        self.assertNotIn("background", r.json())
        self.assertEqual(base64.b64decode(r.json()["data"][0]["b64_json"])[25], 2)
        r = openai(self.fake, {"model": "gpt-image-1", "prompt": "x", "background": "clear"})
        self.assertEqual(r.status, 400)

    def test_kinds(self):
        self.fake.script([{"kind": "thought_then_image"}, {"kind": "text_only"},
                          {"kind": "block_prompt"}, {"kind": "finish_reason"},
                          {"kind": "error", "status": 400, "message": "blocked",
                           "type": "image_generation_user_error", "code": "moderation_blocked"},
                          {"kind": "error", "status": 429, "headers": {"retry-after": "2"}},
                          {"kind": "malformed"}, {"width": 5, "height": 6, "delay_ms": 200}],
                         api="openai")
        r = openai(self.fake)
        self.assertEqual(len(r.json()["data"]), 1)
        r = openai(self.fake)
        self.assertEqual((r.status, r.json()["data"]), (200, []))
        for _ in range(2):
            r = openai(self.fake)
            self.assertEqual(r.status, 400)
            self.assertEqual(r.json()["error"]["code"], "moderation_blocked")
            self.assertEqual(r.json()["error"]["type"], "image_generation_user_error")
        r = openai(self.fake)
        self.assertEqual(r.json()["error"], {"message": "blocked", "param": None,
                                             "type": "image_generation_user_error",
                                             "code": "moderation_blocked"})
        r = openai(self.fake)
        self.assertEqual((r.status, r.headers["retry-after"]), (429, "2"))
        self.assertEqual(r.json()["error"]["type"], "requests")
        r = openai(self.fake)
        self.assertEqual(r.status, 200)
        self.assertRaises(ValueError, json.loads, r.body)
        t0 = time.monotonic()
        r = openai(self.fake)
        self.assertGreaterEqual(time.monotonic() - t0, 0.2)
        self.fake.script([{"real_size": True}])
        out = openai(self.fake, {"prompt": "x", "size": "1024x1536"}).json()
        self.assertEqual(png_info(base64.b64decode(out["data"][0]["b64_json"]))[:2], (1024, 1536))
        self.assertEqual(png_info(base64.b64decode(r.json()["data"][0]["b64_json"]))[:2], (5, 6))

    def test_truncated(self):
        self.fake.script([{"kind": "truncated"}])
        raw = raw_exchange(self.fake, raw_post("/v1/images/generations",
                                               b'{"prompt": "x"}', ["Authorization: Bearer k"]))
        status, headers, body = split_head(raw)
        self.assertEqual(status, 200)
        self.assertLess(len(body), int(headers["content-length"]))
        self.assertTrue(headers["x-request-id"])

    def test_reset_close_hang(self):
        check_connection_kinds(self, "/v1/images/generations", b'{"prompt": "x"}',
                               ["Authorization: Bearer k"])

    def test_stream(self):
        r = openai(self.fake, {"prompt": "x", "stream": True, "partial_images": 2})
        self.assertEqual(r.status, 200)
        events = [e for e in r.body.decode().split("\n\n") if e]
        types = [e.split("\n")[0] for e in events]
        self.assertEqual(types, ["event: image_generation.partial_image"] * 2
                         + ["event: image_generation.completed"])
        done = json.loads(events[-1].split("\n")[1][6:])
        self.assertIn("usage", done)
        png_info(base64.b64decode(done["b64_json"]))

    def test_models(self):
        r = request(self.fake, "GET", "/v1/models", headers={"Authorization": "Bearer k"})
        self.assertIn("gpt-image-1", [m["id"] for m in r.json()["data"]])
        self.assertEqual(request(self.fake, "GET", "/v1/models").status, 401)


# ---------------------------------------------------------------- HTTP layer, control API


class ProtocolTests(FakeTestCase):
    def test_keep_alive_and_pipelining(self):
        body = json.dumps(gemini_body()).encode()
        one = raw_post("/v1beta/models/m:generateContent", body, ["x-goog-api-key: k"],
                       close=False)
        last = raw_post("/v1beta/models/m:generateContent", body, ["x-goog-api-key: k"])
        raw = raw_exchange(self.fake, one + one + last)  # all three in one write
        self.assertEqual(raw.count(b"HTTP/1.1 200 OK\r\n"), 3)
        conn = http.client.HTTPConnection(self.fake.host, self.fake.port, timeout=DEADLINE)
        try:
            socks = set()
            for _ in range(3):
                conn.request("POST", "/v1beta/models/m:generateContent", body,
                             {"x-goog-api-key": "k"})
                resp = conn.getresponse()
                self.assertEqual(resp.getheader("Connection"), "keep-alive")
                self.assertEqual(resp.read()[:1], b"{")
                socks.add(conn.sock.getsockname())
            self.assertEqual(len(socks), 1)  # one connection served all three
        finally:
            conn.close()

    def test_expect_continue_and_chunked_body(self):
        body = json.dumps(gemini_body("chunky")).encode()
        with socket.create_connection((self.fake.host, self.fake.port), timeout=DEADLINE) as s:
            s.sendall(b"POST /v1beta/models/m:generateContent HTTP/1.1\r\nHost: x\r\n"
                      b"x-goog-api-key: k\r\nExpect: 100-continue\r\n"
                      b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
            self.assertEqual(s.recv(100), b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(body)
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        self.assertEqual(split_head(out)[0], 200)
        chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                           for i in range(0, len(body), 7)) + b"0\r\nTrailer: x\r\n\r\n"
        raw = raw_exchange(self.fake, b"POST /v1beta/models/m:generateContent HTTP/1.1\r\n"
                           b"Host: x\r\nx-goog-api-key: k\r\nTransfer-Encoding: chunked\r\n"
                           b"Connection: close\r\n\r\n" + chunked)
        self.assertEqual(split_head(raw)[0], 200)
        recs = self.fake.requests()
        self.assertEqual([r["json"] for r in recs], [gemini_body("chunky")] * 2)

    def test_close_flushes_a_large_answer(self):
        """Connection: close must not drop what the kernel has not taken yet."""
        self.fake.script([{"real_size": True, "format": "jpeg"}])
        body = json.dumps({"prompt": "big", "n": 10, "size": "4096x4096"}).encode()
        with socket.create_connection((self.fake.host, self.fake.port), timeout=DEADLINE) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(raw_post("/v1/images/generations", body, ["Authorization: Bearer k"]))
            wait_for(lambda: self.fake.stats()["by_status"].get("200"), "the answer to be sent")
            out = b""
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                out += chunk
        status, headers, got = split_head(out)
        self.assertEqual(status, 200)
        self.assertGreater(len(got), 1 << 20)
        self.assertEqual(len(got), int(headers["content-length"]))
        self.assertEqual(len(json.loads(got)["data"]), 10)

    def test_bad_http(self):
        for raw in (b"NONSENSE\r\n\r\n", b"GET / HTTP/2.0\r\n\r\n",
                    b"POST /v1/images/generations HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n"
                    b"0\r\n\r\n"):
            with self.subTest(raw=raw):
                self.assertEqual(split_head(raw_exchange(self.fake, raw))[0], 400)
        raw = raw_exchange(self.fake, b"GET /nope HTTP/1.0\r\n\r\n")  # 1.0: closes after
        self.assertEqual(split_head(raw)[0], 404)

    def test_recording_reset_and_stats(self):
        self.fake.script([{"kind": "error", "status": 503}])
        gemini(self.fake)
        openai(self.fake)
        request(self.fake, "GET", "/v1/unknown")
        stats = self.fake.stats()
        self.assertEqual(stats["total"], 3)
        self.assertEqual(stats["by_status"], {"503": 1, "200": 1, "404": 1})
        self.assertEqual(stats["in_flight"], 0)
        recs = self.fake.requests()
        self.assertEqual([r["seq"] for r in recs], sorted(r["seq"] for r in recs))
        self.assertEqual([r["api"] for r in recs], ["gemini", "openai", None])
        self.assertEqual(len(self.fake.requests(api="openai")), 1)
        for r in recs:
            self.assertTrue(all(k == k.lower() for k in r["headers"]))
            self.assertLessEqual(abs(r["received_at"] - time.time()), 60)
        self.fake.clear_requests()
        self.assertEqual(self.fake.requests(), [])
        self.fake.script([{"kind": "text_only"}])
        self.fake.reset()
        self.assertEqual(self.fake.scripts(), [])
        self.assertIn("inlineData", json.dumps(gemini(self.fake).json()))
        self.assertEqual(self.fake.stats()["by_status"], {"200": 1})


class ConcurrencyTests(FakeTestCase):
    def test_500_concurrent_delayed_requests(self):
        n, delay = 500, 0.5
        self.fake.script([{"delay_ms": int(delay * 1000)}], api="gemini", then="repeat_last")
        body = json.dumps(gemini_body()).encode()
        req = raw_post("/v1beta/models/m:generateContent", body, ["x-goog-api-key: k"])

        async def one():
            reader, writer = await asyncio.open_connection(self.fake.host, self.fake.port)
            try:
                writer.write(req)
                return await reader.read()
            finally:
                writer.close()

        async def all_of_them():
            return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), DEADLINE)

        t0 = time.monotonic()
        answers = asyncio.run(all_of_them())
        elapsed = time.monotonic() - t0
        self.assertEqual(sum(1 for a in answers if a.startswith(b"HTTP/1.1 200 ")), n)
        self.assertLess(elapsed, 10.0)  # serially this would take 250 s
        stats = self.fake.stats()
        self.assertEqual(stats["total"], n)
        self.assertGreaterEqual(stats["max_in_flight"], 50)


if __name__ == "__main__":
    unittest.main()
