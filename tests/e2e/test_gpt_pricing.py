"""test_gpt_pricing.py - GPT Image priced by quality and size, end to end: imgate
against the fake OpenAI upstream (tests/fakes), through the native and OpenAI
dialects and OpenAI's own SDK.

A request that names its size and quality holds exactly that cell of the grid;
one that leaves either to the upstream ("auto") holds the largest price it could
land on, and each delivered image is charged what it cost: its size from its own
pixels, its quality as the upstream's answer reports it. The rest is released.
The quality reaches the upstream as asked ("auto" when not), on generations and
edits. A Gemini model has no quality: naming one is refused. Every data folder
passes ledger-verify once its server stopped (BillingTestCase).
"""

import itertools
import unittest

import billing_util as b
import harness as h
import test_dialect_openai as tdo
import upstream_util as u

EMAIL = "gpt-pricing@example.com"
BONUS = 5000000
GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"
# OpenAI's list prices of gpt-image-1, micro-dollars: [quality][size].
LOW_SQ, LOW_WIDE = 11000, 16000
MED_SQ, MED_WIDE = 42000, 63000
HIGH_SQ, HIGH_WIDE = 167000, 250000
LARGEST = HIGH_WIDE

_seq = itertools.count(1)


class GptPricingTest(u.WithFake, b.BillingTestCase):

    def server(self, **extra):
        cfg = b.billing_config(BONUS, retry={"max_attempts": 1}, admin_token=u.ADMIN_TOKEN,
                               **self.gpt_and_gemini())
        srv = self.start_server(accounts=[EMAIL], config=h.deep_merge(cfg, extra))
        return srv, srv.keys[EMAIL]

    def prompt(self):
        return "%s #%d" % (self._testMethodName, next(_seq))

    def sent(self, prompt):
        """What imgate sent upstream for prompt: (quality, size), from the one
        recorded request (JSON for generations, the form for edits)."""
        (rec,) = u.requests_for(self.fake, prompt)
        if rec["json"] is not None:
            return rec["json"]["quality"], rec["json"]["size"]
        fields = {p["name"]: p["text"] for p in rec["multipart"] if p["filename"] is None}
        return fields["quality"], fields["size"]

    def only_task(self, srv, key):
        tasks = srv.get("/api/banana/tasks", key=key).json()["tasks"]
        self.assertEqual(len(tasks), 1, tasks)
        return tasks[0]

    def images(self, t):
        return [(i["width"], i["height"], i.get("quality"), i["price_micros"]) for i in t["images"]]

    def assertBilled(self, srv, key, t, held, charged):
        """The task held `held` and was charged `charged`: its cost, the ledger
        (one hold, a capture of exactly that, the rest released) and the balance."""
        self.assertCost(t, held, charged)
        rows = self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - charged, 0)
        self.assertSettled(rows, t["uid"], held, charged)

    def test_explicit_high_landscape_holds_and_charges_its_cell(self):
        srv, key = self.server()
        self.fake.script([{"real_size": True}], api="openai")
        p = self.prompt()
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "gpt-image-1", "prompt": p, "size": "1536x1024", "quality": "high"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json()["quality"], r.json()["size"]), ("high", "1536x1024"))
        self.assertEqual(self.sent(p), ("high", "1536x1024"))
        t = self.only_task(srv, key)
        self.assertEqual((t["quality"], t["aspect_ratio"]), ("high", "3:2"), t)
        self.assertEqual(t["cost"]["image_price_micros"], HIGH_WIDE, t)
        self.assertEqual(self.images(t), [(1536, 1024, "high", HIGH_WIDE)])
        self.assertBilled(srv, key, t, HIGH_WIDE, HIGH_WIDE)            # 0.25 exactly

    def test_auto_holds_the_largest_and_captures_what_was_delivered(self):
        srv, key = self.server()
        # The upstream's choice: a low-quality square.
        self.fake.script([{"real_size": True, "quality": "low"}], api="openai")
        p = self.prompt()
        uid = srv.create(key, prompt=p, model="gpt-image-1")
        t = srv.wait_final(uid, key)
        self.assertEqual(t["status"], "succeeded", t)
        self.assertEqual(self.sent(p), ("auto", "auto"))
        self.assertEqual((t["quality"], t["aspect_ratio"]), ("auto", "auto"), t)
        self.assertEqual(t["cost"]["image_price_micros"], LARGEST, t)
        self.assertEqual(self.images(t), [(1024, 1024, "low", LOW_SQ)])
        # Held 0.25, charged 0.011, 0.239 released.
        self.assertBilled(srv, key, t, LARGEST, LOW_SQ)

    def test_n4_three_delivered_each_priced_on_its_own(self):
        srv, key = self.server()
        self.fake.script([{"sizes": ["1024x1024", "1536x1024", "1024x1536"],
                           "quality": "medium"}], api="openai")
        p = self.prompt()
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "gpt-image-1", "prompt": p, "n": 4})
        self.assertEqual(r.status, 200, r)
        self.assertEqual((len(r.json()["data"]), r.json()["quality"]), (3, "medium"), r)
        (rec,) = u.requests_for(self.fake, p)
        self.assertEqual((rec["json"]["n"], rec["json"]["quality"]), (4, "auto"), rec)
        t = self.only_task(srv, key)
        self.assertEqual(t["n"], 4, t)
        self.assertEqual(self.images(t), [(1024, 1024, "medium", MED_SQ),
                                          (1536, 1024, "medium", MED_WIDE),
                                          (1024, 1536, "medium", MED_WIDE)])
        # 4 x 0.25 held; the three images' own prices charged.
        self.assertBilled(srv, key, t, 4 * LARGEST, MED_SQ + 2 * MED_WIDE)

    def test_edit_quality_sent_and_surcharge_once(self):
        srv, key = self.server(prices={"gpt-image-1": {"reference_image": 1000}})
        self.fake.script([{"real_size": True, "count": 1}], api="openai")   # 1 of 2
        p = self.prompt()
        png = u.fake_image("png", "ref")
        body, ctype = tdo.multipart({"model": "gpt-image-1", "prompt": p, "n": 2,
                                     "quality": "low"},
                                    [("image[]", "a.png", png), ("image[]", "b.png", png)])
        r = srv.request("POST", EDITS, key=key, body=body, headers={"Content-Type": ctype})
        self.assertEqual((r.status, len(r.json()["data"]), r.json()["quality"]), (200, 1, "low"),
                         r)
        self.assertEqual(self.sent(p), ("low", "auto"))
        t = self.only_task(srv, key)
        self.assertEqual(self.images(t), [(1024, 1024, "low", LOW_SQ)])
        # Held: 2 x the row's largest (a wide low) + 2 references; charged: the
        # delivered square and the surcharge, once.
        self.assertBilled(srv, key, t, 2 * LOW_WIDE + 2 * 1000, LOW_SQ + 2 * 1000)

    def test_an_answer_without_quality(self):
        srv, key = self.server()
        self.fake.script([{"real_size": True, "quality": None}] * 2, api="openai")
        # Quality auto and not reported: the square's largest (high), not the hold.
        p = self.prompt()
        t = srv.wait_final(srv.create(key, prompt=p, model="gpt-image-1"), key)
        self.assertEqual(self.images(t), [(1024, 1024, None, HIGH_SQ)])
        self.assertCost(t, LARGEST, HIGH_SQ)
        # Quality named and not reported: the quality named.
        p = self.prompt()
        t2 = srv.wait_final(srv.create(key, prompt=p, model="gpt-image-1", quality="low"), key)
        self.assertEqual(self.sent(p), ("low", "auto"))
        self.assertEqual(self.images(t2), [(1024, 1024, None, LOW_SQ)])
        self.assertCost(t2, LOW_WIDE, LOW_SQ)
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - HIGH_SQ - LOW_SQ, 0)

    def test_quality_sent_upstream_as_asked(self):
        srv, key = self.server()
        cases = [
            # native: quality and aspect ratio
            ("native", {"quality": "medium", "aspect_ratio": "2:3"}, ("medium", "1024x1536")),
            ("native", {}, ("auto", "auto")),
            # OpenAI dialect: DALL-E's words as GPT Image's
            ("openai", {"quality": "hd"}, ("high", "auto")),
            ("openai", {"quality": "standard", "size": "1024x1024"}, ("auto", "1024x1024")),
            ("openai", {"quality": "low", "size": "1024x1536"}, ("low", "1024x1536")),
        ]
        for dialect, fields, want in cases:
            with self.subTest(dialect=dialect, fields=fields):
                p = self.prompt()
                if dialect == "native":
                    t = srv.wait_final(srv.create(key, prompt=p, model="gpt-image-1", **fields),
                                       key)
                    self.assertEqual(t["status"], "succeeded", t)
                else:
                    r = srv.request("POST", GENERATIONS, key=key,
                                    json_body=dict(fields, model="gpt-image-1", prompt=p))
                    self.assertEqual(r.status, 200, r)
                self.assertEqual(self.sent(p), want)

    def test_quality_refused_where_it_means_nothing(self):
        srv, key = self.server()
        r = srv.request("POST", "/api/banana/create-async", key=key, json_body={
            "model": "nano-banana", "prompt": "x", "quality": "high"})
        err = self.assertError(r, 400, "invalid_quality", "quality")
        self.assertIn("resolution", err["message"])
        r = srv.request("POST", GENERATIONS, key=key, json_body={
            "model": "nano_banana", "prompt": "x", "quality": "low"})
        tdo.OpenAIDialectTest.assertOpenAIError(self, r, 400, "invalid_quality", "quality")
        r = srv.request("POST", "/api/banana/create-async", key=key, json_body={
            "model": "gpt-image-1", "prompt": "x", "quality": "ultra"})
        self.assertError(r, 400, "invalid_quality", "quality")
        r = srv.request("POST", "/api/banana/create-async", key=key, json_body={
            "model": "gpt-image-1", "prompt": "x", "quality": 5})
        self.assertError(r, 400, "invalid_type", "quality")
        self.assertEqual(self.credits(srv, key)["held_micros"], 0)
        self.assertEqual(self.fake.requests(), [])
        # "auto" (OpenAI's default) is no promise, so a Gemini model takes it.
        t = srv.wait_final(srv.create(key, prompt="auto is fine", model="nano-banana",
                                      quality="auto"), key)
        self.assertEqual(t["status"], "succeeded", t)
        self.assertNotIn("quality", t)

    def test_openai_sdk_quality_high(self):
        srv, key = self.server()
        self.fake.script([{"real_size": True}], api="openai")
        p = self.prompt()
        got = tdo.sdk(srv, key, "quality", p)
        self.assertEqual((got["ok"], got["count"], got["quality"], got["size"], got["png"]),
                         (True, 1, "high", "1536x1024", tdo.PNG), got)
        self.assertEqual(self.sent(p), ("high", "1536x1024"))
        t = self.only_task(srv, key)
        self.assertBilled(srv, key, t, HIGH_WIDE, HIGH_WIDE)

    def test_model_lists_show_the_grid(self):
        srv, key = self.server(prices={"gpt-image-1": {"high": {"1536x1024": 240000},
                                                       "low": 10000}})
        grid = {"low": {"1024x1024": "0.010000", "1536x1024": "0.010000",
                        "1024x1536": "0.010000"},
                "medium": {"1024x1024": "0.042000", "1536x1024": "0.063000",
                           "1024x1536": "0.063000"},
                "high": {"1024x1024": "0.167000", "1536x1024": "0.240000",
                         "1024x1536": "0.250000"}}
        native = {m["id"]: m for m in srv.get("/api/banana/models").json()["models"]}
        self.assertEqual(native["gpt-image-1"]["prices_usd"], grid)
        openai = {m["id"]: m for m in srv.get("/v1/models", key=key).json()["data"]}
        self.assertEqual(openai["gpt-image-1"]["prices_usd"], grid)
        self.assertEqual(openai["gpt-image-1"]["priced_by"], "quality_and_size")
        self.assertEqual(openai["nano-banana"]["prices_usd"], {"1K": "0.009500"})
        # Holds and charges follow the configured grid: auto holds its largest
        # (high portrait, 0.25); a high landscape is charged 0.24.
        self.fake.script([{"sizes": ["1536x1024"], "quality": "high"}], api="openai")
        t = srv.wait_final(srv.create(key, prompt=self.prompt(), model="gpt-image-1"), key)
        self.assertCost(t, LARGEST, 240000)
        # A quality alone held at its row's largest: low is 0.01 everywhere.
        self.fake.script([{"real_size": True, "quality": "low"}], api="openai")
        t = srv.wait_final(srv.create(key, prompt=self.prompt(), model="gpt-image-1",
                                      quality="low"), key)
        self.assertCost(t, 10000, 10000)


if __name__ == "__main__":
    unittest.main()
