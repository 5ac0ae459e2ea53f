"""test_cancel.py - POST /api/banana/{uid}/cancel and the task deadline.

A queued task is canceled at once; a running one has its upstream call broken
off (the simulated provider drops the call; a Gemini-shaped fake that never
answers sees its connection closed); a finished task answers 409 with its
state. Whatever was held comes back, nothing is charged, `imgate admin
ledger-verify` stays clean (BillingTestCase checks it after every test), and
the stream of the task ends with task.canceled. A task's `deadline` cancels
it when it passes (error code deadline_exceeded).
"""

import time

import billing_util as b
import harness as h
import sse_util
import upstream_util as u

EMAIL = "cancel@example.com"
BONUS = 1000000
PRICE = b.PRICE_NB_1K


class CancelTest(b.BillingTestCase):

    def server(self, delay_ms, **config):
        cfg = b.billing_config(BONUS, sim={"delay_ms": delay_ms})
        cfg = h.deep_merge(cfg, config)
        srv = self.start_server(accounts=[EMAIL], config=cfg)
        return srv, srv.keys[EMAIL]

    def cancel(self, srv, uid, key):
        return srv.request("POST", "/api/banana/%s/cancel" % uid, key=key)

    def assertCanceled(self, srv, key, uid, code="canceled"):
        t = srv.wait_final(uid, key)
        self.assertEqual(t["status"], "canceled", t)
        self.assertEqual(t["error"]["code"], code, t)
        self.assertEqual(t["images"], [], t)
        self.assertCost(t, PRICE, 0)
        return t

    def test_cancel_queued_task_at_once(self):
        # One task at a time: the second waits queued behind a long first one.
        srv, key = self.server(30000, engine={"max_in_flight": 1})
        first = srv.create(key, prompt="first")
        srv.poll_until(first, key, lambda t: t["status"] == "running")
        second = srv.create(key, prompt="second")
        self.assertEqual(srv.task(second, key)["status"], "queued")
        self.assertEqual(self.credits(srv, key)["held_micros"], 2 * PRICE)
        r = self.cancel(srv, second, key)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["status"], "canceled", r)
        self.assertCanceled(srv, key, second)
        self.assertEqual(self.credits(srv, key)["held_micros"], PRICE)
        # It never reached a provider.
        self.assertNotIn("task=%s run" % second, srv.stderr_text())
        # The running one is canceled too: the call is dropped, not waited out
        # (30 s), and the answer already says canceled.
        start = time.monotonic()
        r = self.cancel(srv, first, key)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["status"], "canceled", r)
        self.assertLess(time.monotonic() - start, 10)
        self.assertCanceled(srv, key, first)
        rows = self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS, 0)
        self.assertSettled(rows, first, PRICE, 0)
        self.assertSettled(rows, second, PRICE, 0)

    def test_cancel_running_breaks_off_the_upstream_call(self):
        # A Gemini-shaped upstream that holds the call open for a minute: the
        # cancel closes the connection, and the task ends canceled at once.
        fake = u.start_fake(self.addCleanup)
        fake.script([{"kind": "image", "delay_ms": 60000}], api="gemini",
                    model="gemini-2.5-flash-image")
        cfg = b.billing_config(BONUS, providers=[u.gemini_provider("g", fake.gemini_base_url)],
                               routes={"nano-banana": [u.route("g")]},
                               admin_token=u.ADMIN_TOKEN)
        srv = self.start_server(accounts=[EMAIL], config=cfg)
        key = srv.keys[EMAIL]
        uid = srv.create(key, prompt="held open")
        h.wait_for(lambda: fake.requests(api="gemini") or None, what="the upstream call")
        start = time.monotonic()
        r = self.cancel(srv, uid, key)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["status"], "canceled", r)
        self.assertLess(time.monotonic() - start, 10)
        t = self.assertCanceled(srv, key, uid)
        self.assertEqual([a["error_class"] for a in t["upstream_attempts"]], ["canceled"], t)
        self.assertIn("attempt_ended task=%s provider=g" % uid, srv.stderr_text())
        # The route was not blamed for it.
        self.assertEqual(u.route_health(srv, "nano-banana", "g")["consecutive_failures"], 0)
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS, 0)

    def test_cancel_finished_task_is_409_with_its_state(self):
        srv, key = self.server(50, sim={"fail_marker": "FAILME"})
        ok = srv.create(key, prompt="fine")
        bad = srv.create(key, prompt="FAILME please")
        for uid, state in ((ok, "succeeded"), (bad, "failed")):
            self.assertEqual(srv.wait_final(uid, key)["status"], state)
            r = self.cancel(srv, uid, key)
            self.assertError(r, 409, "task_final")
            self.assertEqual(r.json()["status"], state, r)
            self.assertEqual(srv.task(uid, key)["status"], state)
        # Canceling twice: the second finds it final (canceled).
        srv2, key2 = self.server(30000)
        uid = srv2.create(key2, prompt="twice")
        self.assertEqual(self.cancel(srv2, uid, key2).json()["status"], "canceled")
        r = self.cancel(srv2, uid, key2)
        self.assertError(r, 409, "task_final")
        self.assertEqual(r.json()["status"], "canceled", r)

    def test_cancel_is_per_account_and_checked(self):
        cfg = b.billing_config(BONUS, sim={"delay_ms": 30000})
        srv = self.start_server(accounts=[EMAIL, "other@example.com"], config=cfg)
        key, other = srv.keys[EMAIL], srv.keys["other@example.com"]
        uid = srv.create(key, prompt="mine")
        self.assertError(srv.request("POST", "/api/banana/%s/cancel" % uid), 401, "unauthorized")
        # Another account's key cannot see it, let alone cancel it.
        self.assertError(self.cancel(srv, uid, other), 404, "not_found")
        self.assertError(self.cancel(srv, "00000000-0000-7000-8000-000000000000", key), 404,
                         "not_found")
        self.assertIn(srv.task(uid, key)["status"], ("queued", "running"))
        self.assertEqual(self.cancel(srv, uid, key).status, 200)
        self.assertCanceled(srv, key, uid)

    def test_stream_ends_with_task_canceled(self):
        srv, key = self.server(30000)
        uid = srv.create(key, prompt="watched")
        srv.poll_until(uid, key, lambda t: t["status"] == "running")
        s = sse_util.Stream(srv, key, uid)
        self.addCleanup(s.close)
        ev = s.next()
        while ev is not None and ev.event != "task.running":
            ev = s.next()
        self.assertIsNotNone(ev)
        self.assertEqual(self.cancel(srv, uid, key).status, 200)
        rest = s.all()
        names = [e.event for e in rest if e.event != "task.progress"]
        self.assertEqual(names, ["task.canceled"], rest)
        self.assertEqual(rest[-1].json()["status"], "canceled")
        self.assertEqual(rest[-1].json()["error"]["code"], "canceled")

    def test_deadline_cancels_queued_and_running(self):
        srv, key = self.server(30000, engine={"max_in_flight": 1})
        running = srv.create(key, prompt="runs", deadline=2)
        srv.poll_until(running, key, lambda t: t["status"] == "running")
        queued = srv.create(key, prompt="waits", deadline=1)
        t = srv.task(queued, key)
        self.assertEqual(t["status"], "queued")
        self.assertTrue(t["deadline_at"], t)
        for uid in (queued, running):
            self.assertCanceled(srv, key, uid, code="deadline_exceeded")
        self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS, 0)

    def test_deadline_is_validated(self):
        srv, key = self.server(50)
        for bad, code in ((0, "invalid_deadline"), (-5, "invalid_deadline"),
                          (10 ** 9, "invalid_deadline"), ("10", "invalid_type"),
                          (1.5, "invalid_type")):
            r = srv.request("POST", b.CREATE, key=key, json_body={"prompt": "x", "deadline": bad})
            self.assertError(r, 400, code, "deadline", msg="deadline %r" % (bad,))
        self.assertEqual(self.credits(srv, key)["held_micros"], 0)
