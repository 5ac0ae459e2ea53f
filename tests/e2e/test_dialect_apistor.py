"""test_dialect_apistor.py - the dialect of seeds 001/002 (apistor):
POST /api/v1/images/nanobanana/generate in its three answers (a stream of
progress objects by default, the final object alone with shutProgress, the
object at once with webHook "-1" or a callback URL) and
POST /api/v1/images/nanobanana/result. Checked field by field against the
seeds' response example; errors in the dialect's shape; the callback is a
signed webhook whose body is the same object; money as for any task.
"""

import json

import billing_util as b
import harness as h
import webhook_util as wu

EMAIL = "apistor@example.com"
BONUS = 1000000
GENERATE = "/api/v1/images/nanobanana/generate"
RESULT = "/api/v1/images/nanobanana/result"
FIELDS = {"id", "model", "progress", "status", "results", "failure_reason", "error"}


def sse_objects(body):
    out = []
    for block in body.decode().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    return out


class ApistorDialectTest(b.BillingTestCase):

    def server(self, **config):
        cfg = b.billing_config(BONUS, sim={"delay_ms": 300, "moderate_marker": "NSFW"})
        srv = self.start_server(accounts=[EMAIL], config=h.deep_merge(cfg, config))
        return srv, srv.keys[EMAIL]

    def assertObject(self, obj, status, n_results=0):
        self.assertEqual(set(obj), FIELDS, obj)
        self.assertEqual(obj["status"], status, obj)
        self.assertEqual(len(obj["results"]), n_results, obj)
        for r in obj["results"]:
            self.assertEqual(set(r), {"url", "content"})

    def test_stream_of_progress_objects(self):
        srv, key = self.server()
        r = srv.request("POST", GENERATE, key=key, json_body={
            "model": "nanobanano-2-4k", "prompt": "hero image", "aspectRatio": "auto",
            "shutProgress": False})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers.get("Content-Type"), "text/event-stream")
        objs = sse_objects(r.body)
        self.assertGreaterEqual(len(objs), 2, objs)
        for o in objs[:-1]:
            self.assertObject(o, "running")
        final = objs[-1]
        self.assertObject(final, "succeeded", 1)
        self.assertEqual((final["model"], final["progress"], final["failure_reason"]),
                         ("nano-banana-2", 100, None))
        self.assertEqual(final["results"][0]["content"], "hero image")
        self.assertEqual(srv.fetch_url(final["results"][0]["url"]).status, 200)
        self.assertEqual(len({o["id"] for o in objs}), 1)
        # The name set the resolution: 4K.
        self.assertEqual(srv.task(final["id"], key)["resolution"], "4K")

    def test_shut_progress_and_polling(self):
        srv, key = self.server()
        r = srv.request("POST", GENERATE, key=key, json_body={
            "model": "nanobanano-2", "prompt": "quiet", "shutProgress": True})
        self.assertEqual((r.status, r.headers.get("Content-Type")), (200, "application/json"), r)
        self.assertObject(r.json(), "succeeded", 1)
        r = srv.request("POST", GENERATE, key=key, json_body={
            "model": "nanobanano-2-2k", "prompt": "later", "webHook": "-1"})
        first = r.json()
        self.assertObject(first, "running")
        done = h.wait_for(lambda: (lambda o: o if o["status"] != "running" else None)(
            srv.request("POST", RESULT, key=key, json_body={"id": first["id"]}).json()),
            what="the task")
        self.assertObject(done, "succeeded", 1)
        self.assertEqual(done["progress"], 100)

    def test_moderated_is_failed_with_reason(self):
        srv, key = self.server()
        r = srv.request("POST", GENERATE, key=key, json_body={
            "model": "nanobanano-2", "prompt": "NSFW", "shutProgress": True})
        obj = r.json()
        self.assertObject(obj, "failed")
        self.assertEqual(obj["failure_reason"], "moderation")
        self.assertEqual(obj["error"]["code"], "content_moderated")
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS, 0)  # not charged

    def test_callback_is_the_same_object_signed(self):
        rx = wu.Receiver.start()
        self.addCleanup(rx.stop)
        srv, key = self.server(webhooks={"allow_http": True, "allow_private_networks": True})
        rx.set_secrets({"current": srv.get("/api/account/webhook-secret", key=key)
                        .json()["secret"]})
        r = srv.request("POST", GENERATE, key=key, json_body={
            "model": "nanobanano-2", "prompt": "called back", "webHook": rx.url("/cb")})
        self.assertObject(r.json(), "running")
        rec = rx.wait_deliveries(1, path="/cb")[0]
        self.assertTrue(rec["verified"], rec)
        body = json.loads(rec["body"]) if isinstance(rec.get("body"), str) else rec["body"]
        self.assertObject(body, "succeeded", 1)
        polled = srv.request("POST", RESULT, key=key, json_body={"id": body["id"]}).json()
        self.assertEqual(body["results"], polled["results"])

    def test_errors_in_the_dialect_shape(self):
        srv, key = self.server()
        for body, status, code, param in (
                ({"prompt": "x"}, 400, "missing_field", "model"),
                ({"model": "nanobanano-9", "prompt": "x"}, 400, "invalid_model", "model"),
                ({"model": "nanobanano-2"}, 400, "missing_field", "prompt"),
                ({"model": "nanobanano-2", "prompt": "x", "aspectRatio": "7:3"}, 400,
                 "invalid_aspect_ratio", "aspectRatio"),
                ({"model": "nanobanano-2", "prompt": "x", "urls": "one"}, 400, "invalid_type",
                 "urls"),
                ({"model": "nanobanano-2", "prompt": "x", "shutProgress": "yes"}, 400,
                 "invalid_type", "shutProgress")):
            with self.subTest(body=body):
                self.assertError(srv.request("POST", GENERATE, key=key, json_body=body),
                                 status, code, param)
        self.assertError(srv.request("POST", GENERATE, json_body={"model": "x"}), 401,
                         "unauthorized")
        self.assertError(srv.request("POST", RESULT, key=key, json_body={}), 400,
                         "missing_field", "id")
        self.assertError(srv.request("POST", RESULT, key=key, json_body={
            "id": "00000000-0000-7000-8000-000000000000"}), 404, "not_found")
        self.assertError(srv.get(GENERATE, key=key), 405, "method_not_allowed")
        self.assertEqual(self.credits(srv, key)["held_micros"], 0)
