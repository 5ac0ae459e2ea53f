"""test_flow.py - the happy path through the native API: create, poll, download.

Sizes come from ../../shared/reference/upstreams.md as restated in SPEC.md:
nano-banana uses the 2.5 Flash column, pro and 2 the 3.x columns (2K = 2x,
512 = half), gpt-image-1 its three fixed sizes.
"""

import re
import threading
import unittest

import harness as h

FAIL_MARKER = "PLEASE-FAIL-NOW"
MODERATE_MARKER = "PLEASE-MODERATE-NOW"
ORDER = {"queued": 0, "running": 1, "succeeded": 2, "failed": 2, "moderated": 2}


class FlowTest(h.ServerTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # 700 ms of simulated work: long enough to see `running` when polling.
        cls.srv = cls.start_class_server(
            accounts=["flow@example.com"],
            config={"sim": {"delay_ms": 700, "fail_marker": FAIL_MARKER,
                            "moderate_marker": MODERATE_MARKER}})
        cls.key = cls.srv.keys["flow@example.com"]

    def generate(self, width, height, **fields):
        fields.setdefault("prompt", "a lighthouse at dusk")
        uid = self.srv.create(self.key, **fields)
        t = self.srv.wait_final(uid, self.key)
        self.assertImages(self.srv, t, width, height)
        self.assertEqual(t["uid"], uid)
        self.assertEqual(t.get("attempts"), 1, t)
        self.assertTimestamps(t)
        return t

    # -- sizes per (model, ratio, resolution)

    def test_nano_banana_1x1(self):
        t = self.generate(1024, 1024, model="nano-banana", aspect_ratio="1:1")
        self.assertEqual((t["model"], t["aspect_ratio"], t["resolution"]),
                         ("nano-banana", "1:1", "1K"))

    def test_nano_banana_16x9_uses_25_flash_table(self):
        self.generate(1344, 768, model="nano-banana", aspect_ratio="16:9")

    def test_nano_banana_2_16x9_2k(self):
        t = self.generate(2752, 1536, model="nano-banana-2", aspect_ratio="16:9",
                          resolution="2K")
        self.assertEqual((t["model"], t["aspect_ratio"], t["resolution"]),
                         ("nano-banana-2", "16:9", "2K"))

    def test_nano_banana_pro_9x16_1k(self):
        self.generate(768, 1376, model="nano-banana-pro", aspect_ratio="9:16", resolution="1K")

    def test_gpt_image_1_3x2(self):
        self.generate(1536, 1024, model="gpt-image-1", aspect_ratio="3:2")

    def test_nano_banana_2_512_1x1(self):
        t = self.generate(512, 512, model="nano-banana-2", aspect_ratio="1:1", resolution="512")
        self.assertEqual(t["resolution"], "512")

    def test_nano_banana_2_extra_ratio_1x4(self):
        self.generate(512, 2048, model="nano-banana-2", aspect_ratio="1:4")

    def test_resolution_is_case_insensitive(self):
        t = self.generate(2048, 2048, model="nano-banana-pro", aspect_ratio="1:1",
                          resolution="2k")
        self.assertEqual(t["resolution"], "2K")

    def test_defaults(self):
        # Only a prompt: nano-banana, 1K, auto without reference -> 1:1.
        t = self.generate(1024, 1024)
        self.assertEqual(t["model"], "nano-banana")
        self.assertEqual(t["resolution"], "1K")

    # -- auto ratio follows the reference image

    def test_auto_follows_base64_reference(self):
        ref = h.make_png(1600, 900)
        self.generate(1344, 768, model="nano-banana", aspect_ratio="auto",
                      image_urls=[h.b64(ref)])

    def test_auto_follows_data_uri_reference(self):
        ref = h.make_png(1600, 900)
        self.generate(1376, 768, model="nano-banana-2", image_urls=[h.data_uri(ref)])

    def test_auto_portrait_reference_on_gpt_image(self):
        # 9:16 is not a GPT Image size; the closest it has is 2:3.
        ref = h.make_png(900, 1600)
        self.generate(1024, 1536, model="gpt-image-1", aspect_ratio="auto",
                      image_urls=[h.data_uri(ref)])

    def test_explicit_ratio_wins_over_reference(self):
        ref = h.make_png(1600, 900)
        self.generate(1024, 1024, model="nano-banana", aspect_ratio="1:1",
                      image_urls=[h.b64(ref)])

    # -- lifecycle

    def test_status_walk_and_timestamps(self):
        uid = self.srv.create(self.key, prompt="a walk through the states",
                              model="nano-banana-pro", aspect_ratio="4:3")
        docs = []

        def step():
            t = self.srv.task(uid, self.key)
            docs.append(t)
            return t if t["status"] in h.FINAL_STATES else None

        final = h.wait_for(step, what="task %s to finish" % uid)
        statuses = []
        for t in docs:
            self.assertIn(t["status"], ORDER, t)
            self.assertEqual(t["uid"], uid)
            self.assertEqual(t["model"], "nano-banana-pro")
            self.assertEqual(t["aspect_ratio"], "4:3")
            self.assertTimestamps(t)
            if t["status"] == "queued":
                self.assertIsNone(t["provider"], t)
                self.assertEqual(t["attempts"], 0, t)
                self.assertEqual(t["images"], [], t)
                self.assertEqual(t["result_urls"], [], t)
                self.assertIsNone(t["error"], t)
            if t["status"] == "running":
                self.assertEqual(t["attempts"], 1, t)
                self.assertEqual(t["provider"], "sim", t)
                self.assertEqual(t["images"], [], t)
                self.assertIsNone(t["finished_at"], t)
            if not statuses or statuses[-1] != t["status"]:
                statuses.append(t["status"])
        self.assertEqual([ORDER[s] for s in statuses], sorted(ORDER[s] for s in statuses),
                         "status went backwards: %r" % statuses)
        self.assertEqual(statuses[-1], "succeeded", statuses)
        self.assertIn("running", statuses,
                      "never saw running during 700 ms of sim work: %r" % statuses)
        self.assertImages(self.srv, final, 1200, 896)
        self.srv.wait_stderr(r"msg=task_finished\s.*task=%s\s.*state=succeeded" % uid)

    def test_failure_marker(self):
        uid = self.srv.create(self.key, prompt="this one should " + FAIL_MARKER + " please")
        t = self.srv.wait_final(uid, self.key)
        self.assertEqual(t["status"], "failed", t)
        self.assertIsInstance(t["error"], dict, t)
        self.assertEqual(t["error"].get("code"), "upstream_error", t)
        self.assertIsInstance(t["error"].get("message"), str, t)
        self.assertEqual(t["images"], [], t)
        self.assertEqual(t["result_urls"], [], t)
        self.assertTimestamps(t)
        self.srv.wait_stderr(r"msg=task_finished\s.*task=%s\s.*state=failed" % uid)

    def test_moderation_marker(self):
        uid = self.srv.create(self.key, prompt=MODERATE_MARKER + " in the prompt",
                              model="nano-banana-2")
        t = self.srv.wait_final(uid, self.key)
        self.assertEqual(t["status"], "moderated", t)
        self.assertEqual(t["error"].get("code"), "content_moderated", t)
        self.assertEqual(t["images"], [], t)
        self.assertEqual(t["result_urls"], [], t)
        self.assertTimestamps(t)
        self.srv.wait_stderr(r"msg=task_finished\s.*task=%s\s.*state=moderated" % uid)

    def test_same_prompt_same_picture(self):
        a = self.generate(1024, 1024, prompt="a determinism check", aspect_ratio="1:1")
        b = self.generate(1024, 1024, prompt="a determinism check", aspect_ratio="1:1")
        self.assertNotEqual(a["uid"], b["uid"])
        self.assertNotEqual(a["images"][0]["url"], b["images"][0]["url"])
        self.assertEqual(self.srv.fetch_url(a["images"][0]["url"]).body,
                         self.srv.fetch_url(b["images"][0]["url"]).body)

    def test_concurrent_creates(self):
        uids, errors = [], []
        lock = threading.Lock()

        def submit(i):
            try:
                uid = self.srv.create(self.key, prompt="parallel %d" % i, model="nano-banana-2",
                                      aspect_ratio="1:1", resolution="512")
                with lock:
                    uids.append(uid)
            except Exception as e:  # collected and reported below
                with lock:
                    errors.append(repr(e))

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(h.DEADLINE)
        self.assertEqual(errors, [])
        self.assertEqual(len(set(uids)), 12)
        for uid in uids:
            t = self.srv.wait_final(uid, self.key)
            self.assertImages(self.srv, t, 512, 512)

    # -- plumbing

    def test_healthz(self):
        r = self.srv.get("/healthz")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), {"status": "ok"})
        self.assertIn("application/json", r.headers.get("Content-Type", ""))
        self.assertTrue(r.headers.get("X-Request-Id"))

    def test_request_ids(self):
        ids = set()
        responses = [self.srv.get("/healthz"),
                     self.srv.get("/api/banana/00000000-0000-0000-0000-000000000000",
                                  key=self.key),
                     self.srv.request("POST", "/api/banana/create-async",
                                      json_body={"prompt": "ids"}, key=self.key),
                     self.srv.get("/no/such/route")]
        for r in responses:
            rid = r.headers.get("X-Request-Id")
            self.assertTrue(rid, r)
            ids.add(rid)
        self.assertEqual(len(ids), len(responses), "request ids repeat: %r" % ids)
        # The access log names the same id.
        rid = responses[0].headers["X-Request-Id"]
        line = self.srv.wait_stderr(r"msg=http\s.*req=%s(\s|$)" % re.escape(rid)).string
        self.assertIn("path=/healthz", line)
        self.assertIn("status=200", line)
        self.assertIn("method=GET", line)

    def test_create_answer_shape(self):
        r = self.srv.request("POST", "/api/banana/create-async",
                             json_body={"prompt": "shape"}, key=self.key)
        self.assertEqual(r.status, 200, r)
        self.assertIn("application/json", r.headers.get("Content-Type", ""))
        doc = r.json()
        self.assertEqual(set(doc), {"uid", "status"}, doc)
        self.assertEqual(doc["status"], "queued")
        self.assertRegex(doc["uid"], h.UUID_RE)
        t = self.srv.task(doc["uid"], self.key)
        for field in ("uid", "status", "model", "aspect_ratio", "resolution", "provider",
                      "attempts", "created_at", "started_at", "finished_at", "images",
                      "result_urls", "error"):
            self.assertIn(field, t)
        self.srv.wait_final(doc["uid"], self.key)


if __name__ == "__main__":
    unittest.main()
