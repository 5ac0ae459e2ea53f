"""test_dialect_openai.py - the OpenAI Images dialect (/v1/...), through raw
HTTP and through OpenAI's own Node SDK, unmodified (tests/sdk/openai_client.mjs:
only the base URL and the key differ from a call to OpenAI).

Synchronous generations (b64_json for GPT Image, url for the others or on
request), seed 003's async workflow (async: true, then GET
/v1/images/tasks/{id}), the streamed form, every refusal in OpenAI's error
shape (those the HTTP layer raises before a handler too), a moderated prompt
surfacing in the SDK as BadRequestError with code moderation_blocked, a 429
the SDK retries by itself, and the money: a generation holds and charges like
any task, and ledger-verify stays clean (BillingTestCase).
"""

import base64
import json
import os
import shutil
import subprocess
import unittest

import billing_util as b
import harness as h
import upstream_util as u

EMAIL = "openai-dialect@example.com"
BONUS = 1000000
SDK_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk"))
SDK_CLIENT = os.path.join(SDK_DIR, "openai_client.mjs")
PNG = "89504e470d0a1a0a"
GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"


def multipart(fields, files, boundary="imgate-test-boundary"):
    """A multipart/form-data body: fields {name: text}, files [(name, filename, bytes)]."""
    out = b""
    for name, value in fields.items():
        out += (b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
                % (boundary.encode(), name.encode(), str(value).encode()))
    for name, filename, data in files:
        out += (b"--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                b"Content-Type: application/octet-stream\r\n\r\n" % (
                    boundary.encode(), name.encode(), filename.encode()) + data + b"\r\n")
    out += b"--%s--\r\n" % boundary.encode()
    return out, "multipart/form-data; boundary=" + boundary


def sdk(srv, key, action, prompt, files=()):
    node = shutil.which("node")
    if not node or not os.path.exists(os.path.join(SDK_DIR, "node_modules", "openai")):
        raise AssertionError("node or tests/sdk/node_modules is missing: run scripts/deps.sh --test")
    r = subprocess.run([node, SDK_CLIENT, "http://%s:%d/v1" % (srv.host, srv.port), key, action,
                        prompt] + list(files), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=h.DEADLINE * 3)
    if r.returncode != 0 or not r.stdout.strip():
        raise AssertionError("openai_client.mjs %s: %d %r" % (action, r.returncode, r.stderr))
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


class OpenAIDialectTest(b.BillingTestCase):

    def server(self, **config):
        cfg = b.billing_config(BONUS, sim={"delay_ms": 100, "moderate_marker": "NSFW",
                                           "fail_marker": "FAILME"})
        srv = self.start_server(accounts=[EMAIL], config=h.deep_merge(cfg, config))
        return srv, srv.keys[EMAIL]

    def assertOpenAIError(self, r, status, code, param=None, type_=None):
        self.assertEqual(r.status, status, r)
        self.assertIn("application/json", r.headers.get("Content-Type", ""))
        self.assertTrue(r.headers.get("x-request-id"), r.headers)
        err = r.json()["error"]
        self.assertEqual(set(err), {"message", "type", "param", "code"}, err)
        self.assertEqual(err["code"], code, err)
        self.assertEqual(err["param"], param, err)
        if type_:
            self.assertEqual(err["type"], type_, err)
        self.assertTrue(err["message"])
        return err

    def test_generation_raw_http(self):
        srv, key = self.server()
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "gpt-image-1", "prompt": "a lighthouse", "size": "1536x1024", "n": 2})
        self.assertEqual(r.status, 200, r)
        doc = r.json()
        self.assertEqual(set(doc), {"created", "data", "background", "output_format", "quality",
                                    "size"})
        self.assertEqual((len(doc["data"]), doc["size"], doc["output_format"]),
                         (2, "1536x1024", "png"))
        for item in doc["data"]:
            self.assertEqual(list(item), ["b64_json"])
            self.assertEqual(base64.b64decode(item["b64_json"])[:8].hex(), PNG)
        tasks = srv.get("/api/banana/tasks", key=key).json()["tasks"]
        self.assertEqual(len(tasks), 1)
        price = tasks[0]["cost"]["price_micros"]
        self.assertEqual(tasks[0]["cost"]["charged_micros"], price)  # both images delivered
        self.assertEqual(tasks[0]["n"], 2)
        # A seed 003 request: its model name, a ratio as size, a resolution; urls by default.
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "nano_banana_2", "prompt": "a banana", "size": "16:9", "resolution": "2K"})
        doc = r.json()
        self.assertEqual((r.status, doc["size"]), (200, "2752x1536"), r)
        url = doc["data"][0]["url"]
        self.assertEqual(srv.fetch_url(url).status, 200)
        charged = sum(t["cost"]["charged_micros"]
                      for t in srv.get("/api/banana/tasks", key=key).json()["tasks"])
        self.assertEqual(charged, price + 30000)  # nano-banana-2 at 2K
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - charged, 0)

    def test_async_workflow(self):
        srv, key = self.server()
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "nano-banana", "prompt": "later", "async": True})
        self.assertEqual(r.status, 202, r)
        t = r.json()
        self.assertEqual((t["object"], t["status"], t["data"]), ("image.task", "queued", []))
        done = h.wait_for(lambda: (lambda d: d if d["status"] == "succeeded" else None)(
            srv.get("/v1/images/tasks/" + t["id"], key=key).json()), what="the task")
        self.assertEqual(len(done["data"]), 1)
        self.assertTrue(done["data"][0]["url"].endswith(".png"))
        self.assertNotIn("quality", done)  # nothing asked, nothing said
        # What a GPT Image task asked for is shown while it is polled.
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "gpt-image-1", "prompt": "asked", "async": True, "quality": "high",
            "background": "opaque", "output_format": "webp"})
        self.assertEqual(r.status, 202, r)
        got = srv.get("/v1/images/tasks/" + r.json()["id"], key=key).json()
        self.assertEqual((got["quality"], got["background"], got["output_format"]),
                         ("high", "opaque", "webp"), got)
        # Prefer: respond-async does the same.
        r = srv.request("POST", GENERATIONS, key=key, headers={"Prefer": "respond-async"},
                        json_body={"model": "nano-banana", "prompt": "later too"})
        self.assertEqual((r.status, r.json()["object"]), (202, "image.task"), r)
        self.assertOpenAIError(srv.get("/v1/images/tasks/00000000-0000-7000-8000-000000000000",
                                       key=key), 404, "not_found", type_="not_found_error")

    def test_refusals_in_openai_shape(self):
        srv, key = self.server()
        cases = [
            ({}, 400, "missing_field", "model"),
            ({"model": "gpt-image-1"}, 400, "missing_field", "prompt"),
            ({"model": "dall-e-9", "prompt": "x"}, 400, "invalid_model", "model"),
            ({"model": "gpt-image-1", "prompt": "x", "size": "999x1"}, 400, "invalid_size", "size"),
            ({"model": "gpt-image-1", "prompt": "x", "size": "16:9"}, 400, "invalid_aspect_ratio",
             "size"),
            ({"model": "gpt-image-1", "prompt": "x", "n": 11}, 400, "invalid_quantity", "n"),
            ({"model": "gpt-image-1", "prompt": "x", "quality": "ultra"}, 400, "invalid_value",
             "quality"),
            ({"model": "gpt-image-1", "prompt": "x", "response_format": "gif"}, 400,
             "invalid_value", "response_format"),
            ({"model": "gpt-image-1", "prompt": "x", "output_format": "gif"}, 400,
             "invalid_value", "output_format"),
            ({"model": "gpt-image-1", "prompt": "x", "output_format": "jpeg",
              "output_compression": 101}, 400, "invalid_output_compression", "output_compression"),
            ({"model": "gpt-image-1", "prompt": "x", "output_format": "webp",
              "output_compression": "50"}, 400, "invalid_type", "output_compression"),
            ({"model": "gpt-image-1", "prompt": "x", "output_compression": 50}, 400,
             "invalid_output_compression", "output_compression"),
            ({"model": "gpt-image-1", "prompt": 7}, 400, "invalid_type", "prompt"),
        ]
        for body, status, code, param in cases:
            with self.subTest(body=body):
                self.assertOpenAIError(srv.request("POST", GENERATIONS, key=key, json_body=body),
                                       status, code, param, "invalid_request_error")
        self.assertOpenAIError(srv.request("POST", GENERATIONS, key=key, body="{nope",
                                           headers={"Content-Type": "application/json"}),
                               400, "invalid_json")
        r = srv.request("POST", GENERATIONS, json_body={"model": "gpt-image-1", "prompt": "x"})
        self.assertOpenAIError(r, 401, "unauthorized", type_="authentication_error")
        self.assertOpenAIError(srv.get("/v1/no/such/thing", key=key), 404, "not_found",
                               type_="not_found_error")
        self.assertOpenAIError(srv.get(GENERATIONS, key=key), 405, "method_not_allowed")
        head = (b"POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (GENERATIONS.encode(), key.encode(), 40 * 1024 * 1024))
        self.assertOpenAIError(srv.raw_exchange(head, body=b"{"), 413, "payload_too_large")
        # The native paths keep the native shape.
        r = srv.get("/api/banana/nope/x/y", key=key)
        self.assertEqual(set(r.json()["error"]), {"code", "message", "param"})
        # Nothing was held by any of it.
        self.assertEqual(self.credits(srv, key)["held_micros"], 0)

    def test_moderated_and_failed(self):
        srv, key = self.server()
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "gpt-image-1", "prompt": "NSFW please"})
        err = self.assertOpenAIError(r, 400, "moderation_blocked",
                                     type_="image_generation_user_error")
        self.assertIn("safety", err["message"])
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "gpt-image-1", "prompt": "FAILME"})
        self.assertOpenAIError(r, 500, "upstream_error", type_="server_error")
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS, 0)  # neither is paid

    def test_edits_multipart(self):
        srv, key = self.server()
        png, webp = u.fake_image("png", "ref one"), u.webp(8, 8)
        body, ctype = multipart({"model": "gpt-image-1", "prompt": "make it blue", "n": 2},
                                [("image[]", "a.bin", png), ("image[]", "b.png", webp)])
        r = srv.request("POST", EDITS, key=key, body=body, headers={"Content-Type": ctype})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.json()["data"]), 2)
        t = srv.get("/api/banana/tasks?limit=1", key=key).json()["tasks"][0]
        self.assertEqual(t["n"], 2)
        # The uploads were kept as the task's reference images, told apart by
        # their bytes (the webp was sent as b.png, typed octet-stream).
        # Size and quality auto: held at the grid's largest (0.25 each); the
        # simulated upstream drew squares (the first reference is square) and
        # reports no quality, so each is charged the square's largest, high.
        self.assertEqual((t["cost"]["price_micros"], t["cost"]["charged_micros"]),
                         (2 * 250000, 2 * 167000), t)
        self.assertEqual([i["price_micros"] for i in t["images"]], [167000, 167000], t)
        # Streamed, chunked, one image named plain "image".
        body, ctype = multipart({"model": "gpt-image-1", "prompt": "again", "stream": "true"},
                                [("image", "x.png", png)])
        chunks = [body[i:i + 1000] for i in range(0, len(body), 1000)]
        head = (b"POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
                b"Content-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
                % (EDITS.encode(), key.encode(), ctype.encode()))
        r = srv.raw_exchange(head, chunks=chunks)
        self.assertEqual(r.status, 200, r)
        self.assertIn(b"event: image_edit.completed", r.body)
        # Refusals.
        for fields, files, code, param in (
                ({"model": "gpt-image-1", "prompt": "x"}, [], "missing_field", "image"),
                ({"model": "gpt-image-1", "prompt": "x"}, [("image", "a.txt", b"not an image")],
                 "invalid_image", "reference_images"),
                ({"model": "gpt-image-1", "prompt": "x"},
                 [("image", "a.png", png), ("mask", "m.png", png)], "invalid_mask", "mask"),
                ({"model": "gpt-image-1", "prompt": "x", "n": "two"}, [("image", "a.png", png)],
                 "invalid_type", "n")):
            body, ctype = multipart(fields, files)
            r = srv.request("POST", EDITS, key=key, body=body, headers={"Content-Type": ctype})
            self.assertOpenAIError(r, 400, code, param)
        r = srv.request("POST", EDITS, key=key, body=b"--nope", headers={
            "Content-Type": "multipart/form-data; boundary=other"})
        self.assertOpenAIError(r, 400, "invalid_request")
        r = srv.request("POST", EDITS, key=key, json_body={"prompt": "x"})
        self.assertOpenAIError(r, 400, "invalid_request")
        self.assertEqual(self.credits(srv, key)["held_micros"], 0)

    def test_models(self):
        srv, key = self.server()
        doc = srv.get("/v1/models", key=key).json()
        self.assertEqual(doc["object"], "list")
        self.assertIn("gpt-image-1", [m["id"] for m in doc["data"]])
        self.assertTrue(all(m["object"] == "model" for m in doc["data"]))

    def test_openai_sdk_unmodified(self):
        srv, key = self.server()
        got = sdk(srv, key, "b64", "a lighthouse")
        self.assertEqual((got["ok"], got["count"], got["png"], got["size"]),
                         (True, 1, PNG, "1536x1024"), got)
        got = sdk(srv, key, "url", "a banana")
        self.assertTrue(got["ok"], got)
        self.assertEqual(srv.fetch_url(got["url"]).status, 200)
        got = sdk(srv, key, "stream", "streamed")
        self.assertEqual((got["ok"], got["types"], got["png"]),
                         (True, ["image_generation.completed"], PNG), got)
        got = sdk(srv, key, "error", "NSFW please")
        self.assertEqual((got["ok"], got["name"], got["status"], got["code"]),
                         (False, "BadRequestError", 400, "moderation_blocked"), got)
        self.assertTrue(got["request_id"], got)
        path = os.path.join(srv.work_dir, "ref.png")
        with open(path, "wb") as f:
            f.write(u.fake_image("png", "sdk edit"))
        got = sdk(srv, key, "edit", "make it blue", [path, path])
        self.assertEqual((got["ok"], got["count"], got["png"]), (True, 1, PNG), got)
        got = sdk(srv, "igk_wrong", "error", "x")
        self.assertEqual((got["name"], got["status"]), ("AuthenticationError", 401), got)

    def test_sdk_retries_a_429(self):
        # One task at a time for the account: while one runs, a generation is
        # refused with 429 and Retry-After; the SDK waits and tries again, and
        # its call succeeds.
        srv, key = self.server(sim={"delay_ms": 1200})
        r = h.run_cli("admin", "limits", EMAIL, "--concurrency", "1", "--data", srv.data_dir)
        self.assertEqual(r.code, 0, r.stderr)
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "nano-banana", "prompt": "first", "async": True})
        self.assertEqual(r.status, 202, r)
        got = sdk(srv, key, "b64", "second")
        self.assertTrue(got["ok"], got)
        log = srv.stderr_text()
        statuses = [line.split("status=")[1].split()[0] for line in log.splitlines()
                    if "path=/v1/images/generations" in line and "method=POST" in line]
        self.assertEqual(statuses[0], "202")
        self.assertIn("429", statuses[1:], statuses)
        self.assertEqual(statuses[-1], "200", statuses)


if __name__ == "__main__":
    unittest.main()
