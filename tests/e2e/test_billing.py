"""test_billing.py - prepaid credit against the real binary, on the simulated provider:
500 parallel submits against credit for exactly 100, 402 and top-up/refund, failed and
moderated tasks cost nothing, prices and the reference surcharge in the task JSON, key
limit / revocation / disabled accounts, and both 429 limits with their headers.

Every test's data folders pass `imgate admin ledger-verify` once its servers have stopped
(billing_util.BillingTestCase); balances are checked through GET /api/banana/credits and
the sums of `imgate admin ledger EMAIL --csv`. The upstream side (retries across
providers, kill -9 mid-task, an upstream 400) is in test_billing_upstream.py.
"""

import os
import re
import sqlite3
import sys
import threading
import time
import unittest

import harness as h
import billing_util as b
from billing_util import PRICE_NB_1K, CREATE, CREDITS

EMAIL = "billing@example.com"
FAIL = "FAIL-THIS-TASK"
MODERATE = "MODERATE-THIS-TASK"
SLOW_SIM_MS = 3600000   # tasks that never finish while the test looks at them
# Tasks left in flight at the end: shutdown does not wait for them (they stay
# queued/running in the database, holding their price, as ledger-verify expects).
NO_DRAIN = {"engine": {"drain_timeout_ms": 0}}


class CreditTest(b.BillingTestCase):

    # -- 500 parallel submits, credit for 100 ----------------------------------------

    def test_500_parallel_submits_against_credit_for_exactly_100(self):
        n_ok, n_clients, per_client = 100, 25, 20
        bonus = n_ok * PRICE_NB_1K
        srv = self.start_server(accounts=[EMAIL], config=b.billing_config(
            bonus, sim={"delay_ms": 20}, http={"threads": 4}))
        key = srv.keys[EMAIL]
        self.assertMoney(srv, key, srv.data_dir, EMAIL, bonus, 0)

        def submit(c, i, j):
            return c.request("POST", CREATE, {"prompt": "race %02d-%02d" % (i, j),
                                              "model": "nano-banana"})

        answers, wall, connects = b.parallel_requests(srv, [key] * n_clients, per_client, submit)
        self.assertEqual(len(answers), n_clients * per_client)
        self.assertEqual(connects, [1] * n_clients, "keep-alive was not kept")
        ok = [r for _, _, r in answers if r.status == 200]
        refused = [r for _, _, r in answers if r.status != 200]
        for r in refused:
            self.assertError(r, 402, "insufficient_credit", None)
        uids = [r.json()["uid"] for r in ok]
        self.assertEqual((len(ok), len(refused)), (n_ok, 400))
        self.assertEqual(len(set(uids)), n_ok)

        # Every accepted task finishes and is charged exactly its price.
        h.wait_for(lambda: self.credits(srv, key)["held_micros"] == 0,
                   what="every hold settled")
        for uid in uids:
            t = srv.task(uid, key)
            self.assertEqual(t["status"], "succeeded", t)
            self.assertCost(t, PRICE_NB_1K, PRICE_NB_1K)
        rows = self.assertMoney(srv, key, srv.data_dir, EMAIL, 0, 0)
        self.assertEqual(b.kinds(rows), {"grant": 1, "hold": n_ok, "capture": n_ok}, rows)
        self.assertEqual(rows[0][2:4], ("grant", bonus))
        for uid in uids:
            self.assertSettled(rows, uid, PRICE_NB_1K, PRICE_NB_1K)
        final = self.credits(srv, key)
        sys.stderr.write(
            "\n[billing figures] 500 parallel submits (%d keep-alive clients x %d, http.threads 4,"
            " sim 20 ms), balance for %d x $%s: wall %.3f s (%.0f submits/s); accepted %d,"
            " refused 402 %d; final balance %s USD, held %s USD; ledger: %d holds,"
            " %d captures, %d releases\n" % (
                n_clients, per_client, n_ok, b.usd_text(PRICE_NB_1K), wall,
                len(answers) / wall, len(ok), len(refused), final["balance_usd"],
                final["held_usd"], b.kinds(rows)["hold"], b.kinds(rows)["capture"],
                b.kinds(rows)["release"]))
        sys.stderr.flush()

    # -- 402, top-up, refund ---------------------------------------------------------

    def test_no_credit_402_then_topup_then_refund(self):
        srv = self.start_server(accounts=[EMAIL], config=b.billing_config(0))
        key, data = srv.keys[EMAIL], srv.data_dir
        self.assertMoney(srv, key, data, EMAIL, 0, 0)
        self.assertEqual(b.ledger_rows(data, EMAIL), [], "a zero bonus writes no grant row")
        body = {"prompt": "on credit", "model": "nano-banana"}

        r = srv.request("POST", CREATE, json_body=body, key=key)
        err = self.assertError(r, 402, "insufficient_credit", None)
        self.assertIn("0.009500", err["message"])
        # One micro-dollar short is still refused; nothing is held or stored.
        r1 = h.run_cli("admin", "topup", EMAIL, "0.009499", "--data", data)
        self.assertEqual((r1.code, r1.stdout), (0, "0.009499\n"), r1)
        r = srv.request("POST", CREATE, json_body=body, key=key)
        self.assertError(r, 402, "insufficient_credit", None)
        rows = self.assertMoney(srv, key, data, EMAIL, 9499, 0)
        self.assertEqual([x.kind for x in rows], ["topup"], rows)
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(data, "imgate.db"), uri=True)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0], 0)

        # Exactly the price: accepted, and the balance goes to zero.
        r2 = h.run_cli("admin", "topup", EMAIL, "0.000001", "--data", data)
        self.assertEqual((r2.code, r2.stdout), (0, "0.009500\n"), r2)
        uid = srv.create(key, **body)
        t = srv.wait_final(uid, key)
        self.assertEqual(t["status"], "succeeded", t)
        self.assertCost(t, PRICE_NB_1K, PRICE_NB_1K)
        rows = self.assertMoney(srv, key, data, EMAIL, 0, 0)
        self.assertSettled(rows, uid, PRICE_NB_1K, PRICE_NB_1K)
        self.assertEqual(db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0], 1)
        r = srv.request("POST", CREATE, json_body=body, key=key)
        self.assertError(r, 402, "insufficient_credit", None)

        # Refunds: never more than the available balance, exact amounts.
        r3 = h.run_cli("admin", "topup", EMAIL, "1", "--data", data)
        self.assertEqual((r3.code, r3.stdout), (0, "1.000000\n"), r3)
        r4 = h.run_cli("admin", "refund", EMAIL, "1.000001", "--data", data)
        self.assertEqual((r4.code, r4.stdout), (1, ""), r4)
        self.assertIn("smaller than 1.000001 USD", r4.stderr)
        self.assertMoney(srv, key, data, EMAIL, 1000000, 0)
        for bad in ("0", "-1", "1.0000001", "abc"):
            rb = h.run_cli("admin", "refund", EMAIL, bad, "--data", data)
            self.assertEqual(rb.code, 2, rb)
        r5 = h.run_cli("admin", "refund", EMAIL, "0.25", "--data", data)
        self.assertEqual((r5.code, r5.stdout), (0, "0.750000\n"), r5)
        rows = self.assertMoney(srv, key, data, EMAIL, 750000, 0)
        self.assertEqual([(x.kind, x.available, x.held) for x in rows], [
            ("topup", 9499, 0), ("topup", 1, 0), ("hold", -9500, 9500), ("capture", 0, -9500),
            ("topup", 1000000, 0), ("refund", -250000, 0)])
        r6 = h.run_cli("admin", "refund", EMAIL, "0.75", "--data", data)
        self.assertEqual((r6.code, r6.stdout), (0, "0.000000\n"), r6)
        self.assertMoney(srv, key, data, EMAIL, 0, 0)
        r7 = h.run_cli("admin", "refund", EMAIL, "0.000001", "--data", data)
        self.assertEqual(r7.code, 1, r7)
        r8 = h.run_cli("admin", "topup", "nobody@example.com", "1", "--data", data)
        self.assertEqual(r8.code, 1, r8)

    # -- failed and moderated tasks cost nothing ---------------------------------------

    def test_failed_and_moderated_tasks_cost_nothing(self):
        bonus = 1000000
        srv = self.start_server(accounts=[EMAIL], config=b.billing_config(
            bonus, sim={"fail_marker": FAIL, "moderate_marker": MODERATE}))
        key, data = srv.keys[EMAIL], srv.data_dir
        ref = h.data_uri(h.make_png(8, 8))
        cases = [("draw a cat", "succeeded", None), ("draw %s" % FAIL, "failed", None),
                 ("draw %s" % MODERATE, "moderated", None),
                 ("draw %s with a reference" % FAIL, "failed", ref)]
        uids = []
        for prompt, _, image in cases:
            fields = {"prompt": prompt, "model": "nano-banana"}
            if image:
                fields["image_urls"] = [image]
            uids.append(srv.create(key, **fields))
        for uid, (prompt, status, _) in zip(uids, cases):
            t = srv.wait_final(uid, key)
            self.assertEqual(t["status"], status, t)
            charged = PRICE_NB_1K if status == "succeeded" else 0
            self.assertCost(t, PRICE_NB_1K, charged)
        rows = self.assertMoney(srv, key, data, EMAIL, bonus - PRICE_NB_1K, 0)
        for uid, (_, status, _) in zip(uids, cases):
            self.assertSettled(rows, uid, PRICE_NB_1K,
                               PRICE_NB_1K if status == "succeeded" else 0)
        self.assertEqual(b.kinds(rows), {"grant": 1, "hold": 4, "capture": 1, "release": 3})

    # -- prices from the config, the reference surcharge -------------------------------

    def test_configured_prices_and_reference_surcharge(self):
        bonus = 1000000
        unit, per_ref, nb2_512 = 12345, 1111, 22222
        srv = self.start_server(accounts=[EMAIL], config=b.billing_config(
            bonus, prices={"nano-banana": {"1K": unit, "reference_image": per_ref},
                           "nano-banana-2": {"512": nb2_512}}))
        key, data = srv.keys[EMAIL], srv.data_dir
        one_ref = [h.b64(h.make_png(16, 16))]
        cases = [  # fields, price held, charged on success
            ({"model": "nano-banana"}, unit),
            ({"model": "nano-banana", "image_urls": one_ref}, unit + per_ref),
            ({"model": "nano-banana", "image_urls": one_ref * 2}, unit + 2 * per_ref),
            ({"model": "nano-banana-2", "resolution": "512"}, nb2_512),
            ({"model": "nano-banana-2", "resolution": "1K"}, b.PRICE_NB2_1K),  # not overridden
        ]
        uids = [srv.create(key, prompt="priced %d" % i, **fields)
                for i, (fields, _) in enumerate(cases)]
        total = 0
        for uid, (fields, price) in zip(uids, cases):
            t = srv.wait_final(uid, key)
            self.assertEqual(t["status"], "succeeded", t)
            self.assertEqual(len(t["images"]), 1, t)
            self.assertCost(t, price, price)
            total += price
        rows = self.assertMoney(srv, key, data, EMAIL, bonus - total, 0)
        for uid, (_, price) in zip(uids, cases):
            self.assertSettled(rows, uid, price, price)
        # A price above the balance is refused for that price alone.
        r = h.run_cli("admin", "refund", EMAIL, b.usd_text(bonus - total - unit - per_ref + 1),
                      "--data", data)
        self.assertEqual(r.code, 0, r)
        self.assertEqual(self.credits(srv, key)["balance_micros"], unit + per_ref - 1)
        r = srv.request("POST", CREATE, key=key, json_body={
            "prompt": "too dear", "model": "nano-banana", "image_urls": one_ref})
        err = self.assertError(r, 402, "insufficient_credit", None)
        self.assertIn(b.usd_text(unit + per_ref), err["message"])
        uid = srv.create(key, prompt="affordable", model="nano-banana")
        self.assertCost(srv.wait_final(uid, key), unit, unit)
        self.assertMoney(srv, key, data, EMAIL, per_ref - 1, 0)

    # -- the helper's checks can fail -----------------------------------------------

    def test_ledger_verify_catches_a_tampered_balance(self):
        srv = self.start_server(accounts=[EMAIL], config=b.billing_config(50000))
        key, data = srv.keys[EMAIL], srv.data_dir
        uid = srv.create(key, prompt="one", model="nano-banana")
        srv.wait_final(uid, key)
        srv.stop()
        self.assertLedgerVerifies(data)
        db = sqlite3.connect(os.path.join(data, "imgate.db"))
        self.addCleanup(db.close)
        for tamper, undo in (
                ("UPDATE accounts SET balance = balance + 1", "UPDATE accounts SET balance = balance - 1"),
                ("UPDATE tasks SET cost_charged = 0", "UPDATE tasks SET cost_charged = %d" % PRICE_NB_1K),
                ("DELETE FROM ledger WHERE kind = 'capture'", None)):
            with self.subTest(tamper=tamper):
                with db:
                    saved = db.execute("SELECT * FROM ledger WHERE kind = 'capture'").fetchall()
                    db.execute(tamper)
                r = b.verify_ledger(data)
                self.assertEqual(r.code, 1, r)
                self.assertIn("disagree", r.stderr)
                self.assertRegex(r.stderr, r"msg=ledger_invariant_broken")
                with db:
                    if undo:
                        db.execute(undo)
                    else:
                        db.executemany("INSERT INTO ledger VALUES (%s)" % ",".join(
                            "?" * len(saved[0])), saved)
                self.assertLedgerVerifies(data)


class KeyAndAccountTest(b.BillingTestCase):

    def test_key_limit_revocation_and_disabled_account(self):
        srv = self.start_server(accounts=[EMAIL], config=b.billing_config(1000000))
        data = srv.data_dir
        keys = [srv.keys[EMAIL]] + [h.admin_key_create(data, EMAIL) for _ in range(4)]
        for k in keys:  # five active keys, each working
            self.assertEqual(srv.get(CREDITS, key=k).status, 200)
        r = h.run_cli("admin", "key", "create", EMAIL, "--data", data)
        self.assertEqual((r.code, r.stdout), (1, ""), r)
        self.assertRegex(r.stderr, r"has 5 active keys.*revoke one first")
        lst = h.run_cli("admin", "key", "list", EMAIL, "--data", data)
        self.assertEqual(lst.stdout.count(" active "), 5, lst)

        # Revoked: 401 at once, and it no longer counts against the limit.
        rv = h.run_cli("admin", "key", "revoke", keys[1], "--data", data)
        self.assertEqual(rv.code, 0, rv)
        self.assertError(srv.get(CREDITS, key=keys[1]), 401, "unauthorized")
        self.assertError(srv.request("POST", CREATE, key=keys[1], json_body={
            "prompt": "x", "model": "nano-banana"}), 401, "unauthorized")
        sixth = h.admin_key_create(data, EMAIL)
        self.assertEqual(srv.get(CREDITS, key=sixth).status, 200)
        r = h.run_cli("admin", "key", "create", EMAIL, "--data", data)
        self.assertEqual(r.code, 1, r)

        # A configured limit: two keys with max_keys_per_account = 2.
        cfg = os.path.join(srv.work_dir, "two-keys.json")
        with open(cfg, "w") as f:
            f.write('{"billing": {"max_keys_per_account": 2}}')
        other = "other@example.com"
        h.admin_account_create(data, other, srv.config_path)
        for expect in (0, 0, 1):
            r = h.run_cli("admin", "key", "create", other, "--data", data, "--config", cfg)
            self.assertEqual(r.code, expect, r)

        # Disabled: 403 on create and on get, for every key; enabled: works again.
        uid = srv.create(keys[0], prompt="before disable", model="nano-banana")
        srv.wait_final(uid, keys[0])
        d = h.run_cli("admin", "disable", EMAIL, "--data", data)
        self.assertEqual(d.code, 0, d)
        for k in (keys[0], sixth):
            self.assertError(srv.request("POST", CREATE, key=k, json_body={
                "prompt": "while disabled", "model": "nano-banana"}), 403, "account_disabled")
            self.assertError(srv.get("/api/banana/" + uid, key=k), 403, "account_disabled")
            self.assertError(srv.get(CREDITS, key=k), 403, "account_disabled")
        rows = self.assertMoney(None, None, data, EMAIL, 1000000 - PRICE_NB_1K, 0)
        self.assertEqual(b.kinds(rows), {"grant": 1, "hold": 1, "capture": 1}, "nothing held "
                         "for the refused submits")
        e = h.run_cli("admin", "enable", EMAIL, "--data", data)
        self.assertEqual(e.code, 0, e)
        self.assertEqual(srv.task(uid, keys[0])["status"], "succeeded")
        uid2 = srv.create(sixth, prompt="after enable", model="nano-banana")
        self.assertEqual(srv.wait_final(uid2, sixth)["status"], "succeeded")
        self.assertMoney(srv, keys[0], data, EMAIL, 1000000 - 2 * PRICE_NB_1K, 0)
        self.assertEqual(self.credits(srv, keys[0]), self.credits(srv, sixth))


class LimitTest(b.BillingTestCase):
    """Both 429s. http.threads 4 and parallel keep-alive clients: the limits must
    hold across the worker threads."""

    def server(self, emails, sim_ms=SLOW_SIM_MS):
        return self.start_server(accounts=emails, config=b.billing_config(
            1000000, sim={"delay_ms": sim_ms}, http={"threads": 4}, **NO_DRAIN))

    def limits(self, data, email, *args):
        r = h.run_cli("admin", "limits", email, *args, "--data", data)
        self.assertEqual(r.code, 0, r)
        return r.stdout

    def test_concurrency_limit_429_headers(self):
        srv = self.server([EMAIL])
        key, data = srv.keys[EMAIL], srv.data_dir
        self.assertEqual(self.limits(data, EMAIL, "--concurrency", "2"), "concurrency 2\nqps 0\n")
        body = {"prompt": "slow", "model": "nano-banana"}
        u1, u2 = srv.create(key, **body), srv.create(key, **body)
        # With a reference image: the refused submit must also drop what it decoded.
        r = srv.request("POST", CREATE, key=key, json_body=dict(
            body, image_urls=[h.b64(h.make_png(8, 8))]))
        self.assertError(r, 429, "concurrency_limit", None)
        self.assertEqual((r.headers.get("X-RateLimit-Limit"), r.headers.get("X-RateLimit-Active")),
                         ("2", "2"), r.headers)
        self.assertGreaterEqual(int(r.headers.get("Retry-After")), 1, r.headers)
        # In flight: the price is held, and shown as held in the task.
        for u in (u1, u2):
            self.assertCost(srv.task(u, key), PRICE_NB_1K, 0)
        rows = self.assertMoney(srv, key, data, EMAIL, 1000000 - 2 * PRICE_NB_1K,
                                2 * PRICE_NB_1K)
        self.assertEqual(b.kinds(rows), {"grant": 1, "hold": 2}, "a hold for the refused task")
        # The limit is read per submit: raising it lets one more in.
        self.limits(data, EMAIL, "--concurrency", "3")
        srv.create(key, **body)
        r = srv.request("POST", CREATE, json_body=body, key=key)
        self.assertError(r, 429, "concurrency_limit", None)
        self.assertEqual(r.headers.get("X-RateLimit-Limit"), "3", r.headers)
        self.assertMoney(srv, key, data, EMAIL, 1000000 - 3 * PRICE_NB_1K, 3 * PRICE_NB_1K)
        # Lowered below what is running: Active says how many really are.
        self.limits(data, EMAIL, "--concurrency", "2")
        r = srv.request("POST", CREATE, json_body=body, key=key)
        self.assertError(r, 429, "concurrency_limit", None)
        self.assertEqual((r.headers.get("X-RateLimit-Limit"), r.headers.get("X-RateLimit-Active")),
                         ("2", "3"), r.headers)

    def test_concurrency_limit_holds_across_threads(self):
        limit, n_clients, per_client = 5, 8, 5
        srv = self.server([EMAIL])
        key, data = srv.keys[EMAIL], srv.data_dir
        self.limits(data, EMAIL, "--concurrency", str(limit))

        def submit(c, i, j):
            return c.request("POST", CREATE, {"prompt": "par %d %d" % (i, j),
                                              "model": "nano-banana"})

        answers, _, connects = b.parallel_requests(srv, [key] * n_clients, per_client, submit)
        self.assertEqual(connects, [1] * n_clients)
        ok = [r for _, _, r in answers if r.status == 200]
        for _, _, r in answers:
            if r.status != 200:
                self.assertError(r, 429, "concurrency_limit", None)
                self.assertEqual((r.headers.get("X-RateLimit-Limit"),
                                  r.headers.get("X-RateLimit-Active")), ("5", "5"))
        self.assertEqual(len(ok), limit)
        self.assertMoney(srv, key, data, EMAIL, 1000000 - limit * PRICE_NB_1K,
                         limit * PRICE_NB_1K)

    def test_qps_limit_429_across_threads(self):
        qps, n_clients, per_client = 2, 8, 5
        srv = self.server([EMAIL], sim_ms=20)
        key, data = srv.keys[EMAIL], srv.data_dir
        other_key = h.admin_key_create(data, EMAIL)
        self.assertEqual(self.limits(data, EMAIL, "--qps", str(qps)), "concurrency 0\nqps 2\n")

        answers, elapsed, connects = b.parallel_requests(
            srv, [key] * n_clients, per_client, lambda c, i, j: c.request("GET", CREDITS))
        self.assertEqual(connects, [1] * n_clients)
        ok = [r for _, _, r in answers if r.status == 200]
        limited = [r for _, _, r in answers if r.status != 200]
        for r in limited:
            self.assertError(r, 429, "rate_limited", None)
            self.assertGreaterEqual(int(r.headers.get("Retry-After")), 1, r.headers)
        # A full bucket (burst = qps) plus what refills while the requests ran.
        self.assertGreaterEqual(len(ok), qps)
        self.assertLessEqual(len(ok), qps + qps * elapsed,
                             "%d accepted in %.3f s" % (len(ok), elapsed))
        sys.stderr.write("\n[billing figures] qps %d: %d of %d accepted in %.3f s\n" % (
            qps, len(ok), len(answers), elapsed))

        # Per key: the account's other key has its own bucket.
        self.assertEqual(srv.get(CREDITS, key=other_key).status, 200)
        # Limited requests hold nothing and store nothing; the key recovers.
        h.wait_for(lambda: srv.get(CREDITS, key=key).status == 200, what="the bucket to refill")
        uid = h.wait_for(lambda: self._try_create(srv, key), what="a submit within the limit")
        self.assertEqual(h.wait_for(lambda: self._final_or_none(srv, key, uid),
                                    what="task end")["status"], "succeeded")
        self.limits(data, EMAIL, "--qps", "0")
        self.assertMoney(srv, key, data, EMAIL, 1000000 - PRICE_NB_1K, 0)

    @staticmethod
    def _try_create(srv, key):
        r = srv.request("POST", CREATE, key=key, json_body={"prompt": "q", "model": "nano-banana"})
        return r.json()["uid"] if r.status == 200 else None

    @staticmethod
    def _final_or_none(srv, key, uid):
        r = srv.get("/api/banana/" + uid, key=key)
        if r.status == 200 and r.json()["status"] in h.FINAL_STATES:
            return r.json()
        return None


if __name__ == "__main__":
    unittest.main()
