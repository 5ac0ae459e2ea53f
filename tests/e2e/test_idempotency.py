"""test_idempotency.py - Idempotency-Key on POST /api/banana/create-async.

A replay answers what the first submit answered and creates no second task
and no second hold; the same key with another body is refused (422); keys are
per account; parallel duplicates make exactly one task; malformed keys get
400; a refused submit does not consume its key; after idempotency.ttl_s the
key can be used again. Money is checked through GET /api/banana/credits and
`imgate admin ledger EMAIL --csv`, tasks by reading the database."""

import csv
import io
import os
import sqlite3
import threading
import unittest

import harness as h

CREATE = "/api/banana/create-async"
ACCOUNTS = ["replay@example.com", "mismatch@example.com", "one@example.com",
            "two@example.com", "race@example.com", "form@example.com",
            "refused@example.com"]
BODY = {"prompt": "a lighthouse at dusk", "model": "nano-banana-2", "resolution": "2K"}
PRICE = 30000  # nano-banana-2 at 2K, the default catalog
RACERS = 50


class IdempotencyTest(h.ServerTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.srv = cls.start_class_server(accounts=ACCOUNTS, config={"sim": {"delay_ms": 20}})

    # -- helpers

    def submit(self, email, key, body=None, headers=None):
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["Idempotency-Key"] = key
        return self.srv.request("POST", CREATE, json_body=BODY if body is None else body,
                                key=self.srv.keys[email], headers=hdrs)

    def assertFirst(self, r):
        self.assertEqual(r.status, 200, r)
        self.assertIsNone(r.headers.get("Idempotent-Replayed"), r.headers)
        doc = r.json()
        self.assertEqual(doc["status"], "queued", doc)
        self.assertRegex(doc["uid"], h.UUID_RE)
        return doc["uid"]

    def assertReplay(self, r, uid):
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers.get("Idempotent-Replayed"), "true", r.headers)
        self.assertEqual(r.json(), {"uid": uid, "status": "queued"})

    def credits(self, email):
        r = self.srv.get("/api/banana/credits", key=self.srv.keys[email])
        self.assertEqual(r.status, 200, r)
        return r.json()

    def ledger(self, email):
        r = h.run_cli("admin", "ledger", email, "--csv", "--data", self.srv.data_dir)
        self.assertEqual(r.code, 0, r)
        return list(csv.DictReader(io.StringIO(r.stdout)))

    def holds(self, email):
        return [row for row in self.ledger(email) if row["kind"] == "hold"]

    def tasks_of(self, email):
        """Task ids of the account, read from the database (read-only)."""
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(self.srv.data_dir, "imgate.db"),
                             uri=True, timeout=h.DEADLINE)
        try:
            return [row[0] for row in db.execute(
                "SELECT t.id FROM tasks t JOIN accounts a ON a.id = t.account_id"
                " WHERE a.email = ? ORDER BY t.id", (email,))]
        finally:
            db.close()

    def input_files(self):
        """Relative paths (TASK_ID/N.ext) of every stored reference image."""
        root = os.path.join(self.srv.data_dir, "blobs", "inputs")
        out = []
        for d, _dirs, files in os.walk(root):
            out += [os.path.relpath(os.path.join(d, f), root) for f in files]
        return out

    def orphan_inputs(self):
        """Stored reference images of no stored task."""
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(self.srv.data_dir, "imgate.db"),
                             uri=True, timeout=h.DEADLINE)
        try:
            ids = {row[0] for row in db.execute("SELECT id FROM tasks")}
        finally:
            db.close()
        return [p for p in self.input_files() if p.split(os.sep)[0] not in ids]

    # -- tests

    def test_replay_returns_the_first_answer(self):
        email = "replay@example.com"
        before = self.credits(email)["balance_micros"]
        uid = self.assertFirst(self.submit(email, "order-1"))
        self.assertReplay(self.submit(email, "order-1"), uid)
        # One task, one hold: the price left the balance once (held or, once
        # the task succeeded, captured).
        self.assertEqual(self.credits(email)["balance_micros"], before - PRICE)
        t = self.srv.wait_final(uid, self.srv.keys[email])
        self.assertEqual(t["status"], "succeeded", t)
        # A replay after the task finished still answers as the first time.
        self.assertReplay(self.submit(email, "order-1"), uid)
        c = self.credits(email)
        self.assertEqual((c["balance_micros"], c["held_micros"]), (before - PRICE, 0), c)
        holds = self.holds(email)
        self.assertEqual([(row["task"], row["held_usd"]) for row in holds], [(uid, "0.030000")])
        self.assertEqual([row["kind"] for row in self.ledger(email) if row["task"]],
                         ["hold", "capture"])
        self.assertEqual(self.tasks_of(email), [uid])

    def test_different_body_same_key_is_refused(self):
        email = "mismatch@example.com"
        uid = self.assertFirst(self.submit(email, "k-1"))
        for other in (dict(BODY, prompt="another prompt"), dict(BODY, resolution="4K"),
                      dict(BODY, image_urls=["https://example.com/ref.png"]),
                      {k: v for k, v in BODY.items() if k != "resolution"}):
            with self.subTest(body=other):
                err = self.assertError(self.submit(email, "k-1", body=other), 422,
                                       "idempotency_key_reused", "Idempotency-Key")
                self.assertIn("different request", err["message"])
        # The key still belongs to the first request, which replays.
        self.assertReplay(self.submit(email, "k-1"), uid)
        # Member order and layout are not part of the request.
        reordered = '{"resolution": "2K",  "model":"nano-banana-2","prompt":"a lighthouse at dusk"}'
        r = self.srv.request("POST", CREATE, body=reordered, key=self.srv.keys[email],
                             headers={"Idempotency-Key": "k-1",
                                      "Content-Type": "application/json"})
        self.assertReplay(r, uid)
        self.assertEqual(len(self.holds(email)), 1)
        self.assertEqual(self.tasks_of(email), [uid])

    def test_other_account_same_key_is_independent(self):
        a = self.assertFirst(self.submit("one@example.com", "shared-key"))
        b = self.assertFirst(self.submit("two@example.com", "shared-key"))
        self.assertNotEqual(a, b)
        self.assertReplay(self.submit("one@example.com", "shared-key"), a)
        self.assertReplay(self.submit("two@example.com", "shared-key"), b)
        # Another account's body does not count against this account's key.
        err = self.submit("two@example.com", "shared-key", body=dict(BODY, prompt="other"))
        self.assertError(err, 422, "idempotency_key_reused")
        self.assertEqual([r["task"] for r in self.holds("one@example.com")], [a])
        self.assertEqual([r["task"] for r in self.holds("two@example.com")], [b])

    def test_parallel_duplicates_make_one_task(self):
        email = "race@example.com"
        body = dict(BODY, image_urls=[h.data_uri(h.make_png(16, 16))])
        before = self.credits(email)["balance_micros"]
        start = threading.Barrier(RACERS)
        answers = [None] * RACERS

        def racer(i):
            start.wait()
            answers[i] = self.submit(email, "race-key", body=body)

        threads = [threading.Thread(target=racer, args=(i,)) for i in range(RACERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(h.DEADLINE)
        self.assertTrue(all(not t.is_alive() for t in threads), "a racer hung")
        for r in answers:
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["status"], "queued", r)
        uids = {r.json()["uid"] for r in answers}
        self.assertEqual(len(uids), 1, uids)
        uid = uids.pop()
        firsts = [r for r in answers if r.headers.get("Idempotent-Replayed") is None]
        self.assertEqual(len(firsts), 1, [r.headers.get("Idempotent-Replayed") for r in answers])
        self.assertEqual(self.tasks_of(email), [uid])
        holds = self.holds(email)
        self.assertEqual([row["task"] for row in holds], [uid])
        # A reference image costs its surcharge once, whatever the duplicates.
        self.assertEqual(self.credits(email)["balance_micros"],
                         before - int(round(float(holds[0]["held_usd"]) * 1e6)))
        # The duplicates' decoded images were removed: at most the task's remain...
        self.assertEqual(self.orphan_inputs(), [])
        self.assertLessEqual(set(self.input_files()), {os.path.join(uid, "0.png")})
        self.assertEqual(self.srv.wait_final(uid, self.srv.keys[email])["status"], "succeeded")
        # ...and once the task is final, its own are deleted too (no run needs them;
        # the completer does it right after the final commit a poll may see first).
        h.wait_for(lambda: self.input_files() == [], what="the final task's inputs deleted")

    def test_key_form(self):
        email = "form@example.com"
        bad = {"too long": "k" * 256, "empty": "", "tab": "a\tb", "non-ASCII": "caf\u00e9"}
        for what, key in bad.items():
            with self.subTest(what=what):
                err = self.assertError(self.submit(email, key), 400, "invalid_idempotency_key",
                                       "Idempotency-Key")
                self.assertIn("255", err["message"])
        self.assertEqual(self.holds(email), [])
        self.assertEqual(self.tasks_of(email), [])
        longest = "k" * 255
        uid = self.assertFirst(self.submit(email, longest))
        self.assertReplay(self.submit(email, longest), uid)
        # Without the header every submit is a task of its own.
        a = self.assertFirst(self.submit(email, None))
        b = self.assertFirst(self.submit(email, None))
        self.assertNotEqual(a, b)
        self.assertEqual(len(self.holds(email)), 3)

    def test_refused_submit_does_not_consume_the_key(self):
        email = "refused@example.com"
        # Validation failure: nothing stored, the key stays free.
        r = self.submit(email, "retry-me", body={"model": "nano-banana-2"})
        self.assertError(r, 400, "missing_field", "prompt")
        # No credit (402): nothing stored or held, the key stays free.
        balance = self.credits(email)["balance_micros"]
        usd = "%d.%06d" % divmod(balance, 1000000)
        r = h.run_cli("admin", "refund", email, usd, "--data", self.srv.data_dir)
        self.assertEqual(r.code, 0, r)
        self.assertError(self.submit(email, "retry-me"), 402, "insufficient_credit")
        # (with a stored reference image too: it is removed again)
        with_image = dict(BODY, image_urls=[h.data_uri(h.make_png(8, 8))])
        self.assertError(self.submit(email, "retry-me", body=with_image), 402,
                         "insufficient_credit")
        self.assertEqual(self.orphan_inputs(), [])
        r = h.run_cli("admin", "topup", email, "1", "--data", self.srv.data_dir)
        self.assertEqual(r.code, 0, r)
        uid = self.assertFirst(self.submit(email, "retry-me"))
        self.assertReplay(self.submit(email, "retry-me"), uid)
        self.assertEqual([row["task"] for row in self.holds(email)], [uid])


class IdempotencyExpiryTest(h.ServerTestCase):
    """idempotency.ttl_s = 1: the key is refused for another body while it is
    remembered, then accepted as new."""

    def test_key_reusable_after_ttl(self):
        email = "expiry@example.com"
        srv = self.start_server(accounts=[email], config={"idempotency": {"ttl_s": 1}})
        key = srv.keys[email]
        r = srv.request("POST", CREATE, json_body=BODY, key=key,
                        headers={"Idempotency-Key": "short-lived"})
        self.assertEqual(r.status, 200, r)
        first = r.json()["uid"]
        other = dict(BODY, prompt="a different request")
        seen = []

        def reused():
            # Refused (422, nothing stored) while the key is remembered.
            r = srv.request("POST", CREATE, json_body=other, key=key,
                            headers={"Idempotency-Key": "short-lived"})
            seen.append(r.status)
            if r.status == 422:
                return None
            return r

        r = h.wait_for(reused, what="the key to expire")
        self.assertEqual(r.status, 200, r)
        self.assertIsNone(r.headers.get("Idempotent-Replayed"), r.headers)
        second = r.json()["uid"]
        self.assertNotEqual(second, first)
        self.assertEqual(set(seen[:-1]), {422} if len(seen) > 1 else set(), seen)
        for uid in (first, second):
            self.assertEqual(srv.wait_final(uid, key)["status"], "succeeded")


if __name__ == "__main__":
    unittest.main()
