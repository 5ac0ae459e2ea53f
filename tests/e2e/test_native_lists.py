"""test_native_lists.py - the rest of the native dialect: POST /api/banana/create
(the answer is the finished task), GET /api/banana/tasks (the account's
tasks, newest first, a page at a time) and GET /api/banana/models (the
catalog with prices, no key needed).
"""

import billing_util as b
import harness as h

EMAIL = "lists@example.com"
OTHER = "lists-other@example.com"
PRICES = {"nano-banana": {"1K": b.usd_text(b.PRICE_NB_1K)},
          "nano-banana-2": {"1K": b.usd_text(b.PRICE_NB2_1K)}}


class NativeListsTest(h.ServerTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.srv = cls.start_class_server(accounts=[EMAIL, OTHER], config={
            "sim": {"delay_ms": 200, "fail_marker": "FAILME"}})
        cls.key = cls.srv.keys[EMAIL]

    def test_create_answers_the_finished_task(self):
        r = self.srv.request("POST", "/api/banana/create", key=self.key,
                             json_body={"prompt": "sync", "model": "nano-banana-2"})
        self.assertEqual(r.status, 200, r)
        t = r.json()
        self.assertEqual(t["status"], "succeeded", t)
        self.assertEqual(len(t["result_urls"]), 1)
        self.assertIsNone(r.headers.get("Preference-Applied"))  # nothing was asked
        self.assertEqual(t, self.srv.task(t["uid"], self.key))
        r = self.srv.request("POST", "/api/banana/create", key=self.key,
                             json_body={"prompt": "FAILME now"})
        self.assertEqual((r.status, r.json()["status"]), (200, "failed"), r)
        # Prefer: wait still bounds it, and says so.
        r = self.srv.request("POST", "/api/banana/create", key=self.key,
                             headers={"Prefer": "wait=1"},
                             json_body={"prompt": "bounded", "model": "nano-banana"})
        self.assertEqual(r.headers.get("Preference-Applied"), "wait=1", r.headers)
        # Refusals in the native shape, as for create-async.
        r = self.srv.request("POST", "/api/banana/create", key=self.key, json_body={})
        self.assertError(r, 400, "missing_field", "prompt")
        self.assertError(self.srv.request("POST", "/api/banana/create", json_body={"prompt": "x"}),
                         401, "unauthorized")
        self.assertError(self.srv.get("/api/banana/create", key=self.key), 405,
                         "method_not_allowed")

    def test_tasks_newest_first_in_pages(self):
        srv = self.start_server(accounts=[EMAIL, OTHER], config={"sim": {"delay_ms": 50}})
        key, other = srv.keys[EMAIL], srv.keys[OTHER]
        mine = [srv.create(key, prompt="task %d" % i) for i in range(5)]
        theirs = srv.create(other, prompt="not yours")
        seen, after, pages = [], None, 0
        while True:
            path = "/api/banana/tasks?limit=2" + ("&after=" + after if after else "")
            r = srv.get(path, key=key)
            self.assertEqual(r.status, 200, r)
            doc = r.json()
            self.assertEqual(set(doc), {"tasks", "has_more", "next_after"})
            seen += [t["uid"] for t in doc["tasks"]]
            pages += 1
            if not doc["has_more"]:
                self.assertIsNone(doc["next_after"])
                break
            self.assertEqual(doc["next_after"], doc["tasks"][-1]["uid"])
            after = doc["next_after"]
        self.assertEqual(seen, list(reversed(mine)))
        self.assertEqual(pages, 3)
        self.assertNotIn(theirs, seen)
        # Each entry is the task as GET shows it.
        first = srv.get("/api/banana/tasks", key=key).json()["tasks"][0]
        self.assertEqual(first, srv.task(mine[-1], key))
        # The other account sees its own only.
        self.assertEqual([t["uid"] for t in srv.get("/api/banana/tasks", key=other).json()["tasks"]],
                         [theirs])
        # Refusals.
        for bad in ("0", "101", "x", "", "2.5", "-1"):
            self.assertError(srv.get("/api/banana/tasks?limit=" + bad, key=key), 400,
                             "invalid_limit", "limit", msg=bad)
        for bad in (theirs, "00000000-0000-7000-8000-000000000000", "nonsense"):
            self.assertError(srv.get("/api/banana/tasks?after=" + bad, key=key), 400,
                             "invalid_cursor", "after", msg=bad)
        self.assertError(srv.get("/api/banana/tasks"), 401, "unauthorized")

    def test_models_without_a_key(self):
        r = self.srv.get("/api/banana/models")
        self.assertEqual(r.status, 200, r)
        models = {m["id"]: m for m in r.json()["models"]}
        self.assertEqual(sorted(models), sorted(["nano-banana", "nano-banana-pro", "nano-banana-2",
                                                 "gpt-image-1"]))
        for mid, prices in PRICES.items():
            for res, usd in prices.items():
                self.assertEqual(models[mid]["prices_usd"][res], usd, models[mid])
        nb2 = models["nano-banana-2"]
        self.assertTrue(nb2["available"])
        self.assertIn("16:9", nb2["aspect_ratios"])
        self.assertIn("4K", nb2["resolutions"])
        self.assertEqual(nb2["priced_by"], "resolution")
        gpt = models["gpt-image-1"]
        self.assertEqual(gpt["priced_by"], "quality_and_size")
        self.assertEqual(gpt["qualities"], ["low", "medium", "high", "auto"])
        # OpenAI's list prices, quality by size.
        self.assertEqual(gpt["prices_usd"], {
            "low": {"1024x1024": "0.011000", "1536x1024": "0.016000", "1024x1536": "0.016000"},
            "medium": {"1024x1024": "0.042000", "1536x1024": "0.063000",
                       "1024x1536": "0.063000"},
            "high": {"1024x1024": "0.167000", "1536x1024": "0.250000",
                     "1024x1536": "0.250000"}})
        self.assertNotIn("qualities", nb2)
        # The price shown is the price held: a submit holds exactly it.
        uid = self.srv.create(self.key, prompt="priced", model="nano-banana-2")
        self.assertEqual(self.srv.task(uid, self.key)["cost"]["price_micros"],
                         b.usd_to_micros(nb2["prices_usd"]["1K"]))

    def test_model_aliases(self):
        for name, model, res in (("nanobanano-2-4k", "nano-banana-2", "4K"),
                                 ("gemini-3-pro-image-preview", "nano-banana-pro", "1K"),
                                 ("nano_banana_2", "nano-banana-2", "1K")):
            uid = self.srv.create(self.key, prompt="alias", model=name)
            t = self.srv.task(uid, self.key)
            self.assertEqual((t["model"], t["resolution"]), (model, res), name)
        # The same resolution spelled out agrees; another one contradicts the name.
        self.srv.create(self.key, prompt="alias", model="nanobanano-2-2k", resolution="2k")
        r = self.srv.request("POST", b.CREATE, key=self.key, json_body={
            "prompt": "alias", "model": "nanobanano-2-2k", "resolution": "4K"})
        self.assertError(r, 400, "invalid_resolution", "resolution")
        self.assertIn("2K", r.json()["error"]["message"])
