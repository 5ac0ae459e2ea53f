"""test_webhooks.py - webhook delivery end to end: a real imgate (simulated
provider) delivering to the Node.js receiver of tests/webhook/receiver.mjs,
which verifies every delivery with the reference Standard Webhooks library.

Delivered (one server, fast retry schedule): signed payload {type, timestamp,
data: the task as GET shows it}; 500 three times then 200 (one id, four
attempts, none after); 410 (one attempt, gone); resend (the same id and
bytes); task.running on request; failed and moderated tasks announced; a
task without webhook_url announces nothing; /metrics counting it all.

Elsewhere, each on a server of its own: kill -9 in the middle of an attempt
and a restart on the same data (the delivery comes back after its lease,
once, with its id); the private-address refusal at submit and in the guard;
secret rotation (two signatures within the window, one after); cancel.

Nothing sleeps to synchronise: every wait polls a condition with a deadline
(the task's webhook_deliveries, the receiver's records, the clock for a
rotation window). Every receiver URL is on 127.0.0.1.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import sqlite3
import time

import harness as h
import upstream_util as u
import webhook_util as wu

EMAIL = "hooks@example.com"
FAIL_MARKER = "PLEASE-FAIL"
MODERATE_MARKER = "PLEASE-MODERATE"
# Fast retries: five attempts within a quarter of a second.
SCHEDULE = [0, 50, 50, 50, 50]
MSG_ID_RE = re.compile(r"^msg_[0-9a-f]{32}$")
FINAL_DELIVERY_STATES = ("delivered", "failed", "gone")


def webhook_config(**extra):
    wh = {"allow_http": True, "allow_private_networks": True, "retry_schedule_ms": SCHEDULE}
    wh.update(extra)
    return {"webhooks": wh, "admin_token": u.ADMIN_TOKEN,
            "sim": {"delay_ms": 50, "fail_marker": FAIL_MARKER,
                    "moderate_marker": MODERATE_MARKER}}


def signature_keys(rec, secrets):
    """For each `v1,...` of a recorded delivery's webhook-signature, the name of
    the secret (of secrets: {name: whsec}) whose HMAC it is, else None. An
    independent check (Python's hmac) of which secret made which signature."""
    out = []
    signed = ("%s.%s." % (rec["id"], rec["timestamp"])).encode() + rec["body"].encode("utf-8")
    for part in rec["signature"].split(" "):
        version, _, value = part.partition(",")
        match = None
        for name, secret in secrets.items():
            key = base64.b64decode(secret[len("whsec_"):])
            mac = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
            if version == "v1" and hmac.compare_digest(mac, value):
                match = name
        out.append(match)
    return out


class WebhookTestCase(h.ServerTestCase):
    """Helpers on a server and a receiver."""

    def secret_of(self, srv, key):
        r = srv.get("/api/account/webhook-secret", key=key)
        self.assertEqual(r.status, 200, r)
        doc = r.json()
        self.assertRegex(doc["secret"], r"^whsec_[A-Za-z0-9+/]+={0,2}$", doc)
        return doc

    def deliveries_settled(self, srv, key, uid, attempts, states=FINAL_DELIVERY_STATES):
        """Polls the task until its webhook_deliveries lists `attempts` attempts
        and every delivery is in one of states; returns the task."""
        def settled(t):
            d = t.get("webhook_deliveries") or []
            return len(d) >= attempts and all(a["delivery_state"] in states for a in d)
        return srv.poll_until(uid, key, settled)

    def tearDown(self):
        r = getattr(self, "receiver", None)
        if r is not None and r.stderr:
            print("\n--- receiver stderr ---\n" + "\n".join(r.stderr))


class Delivered(WebhookTestCase):
    """One server, one account, one receiver; each test on a path of its own,
    and each waits until its deliveries have settled, so the counters of
    /metrics (read once they match the store) move only with the test reading
    them."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.receiver = wu.Receiver.start()
        cls.addClassCleanup(cls.receiver.stop)
        cls.srv = cls.start_class_server(accounts=[EMAIL], config=webhook_config())
        cls.key = cls.srv.keys[EMAIL]
        r = cls.srv.get("/api/account/webhook-secret", key=cls.key)
        assert r.status == 200, r
        cls.secret = r.json()["secret"]
        cls.receiver.set_secrets({"current": cls.secret})

    def recorded_attempts(self):
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(self.srv.data_dir, "imgate.db"),
                             uri=True, timeout=h.DEADLINE)
        try:
            return db.execute("SELECT COUNT(*) FROM webhook_attempts").fetchone()[0]
        finally:
            db.close()

    def counters(self):
        """The webhook counters of /metrics once they have caught up with the
        store: they are counted just after an attempt's record commits, the
        attempts counter last, so they are read until it equals the attempts
        in the database."""
        seen = {}

        def consistent():
            m = u.metrics(self.srv)
            seen.update(
                delivered=u.metric(m, "imgate_webhook_deliveries_total", outcome="delivered"),
                failed=u.metric(m, "imgate_webhook_deliveries_total", outcome="failed"),
                gone=u.metric(m, "imgate_webhook_deliveries_total", outcome="gone"),
                attempts=u.metric(m, "imgate_webhook_attempts_total"),
                retries=u.metric(m, "imgate_webhook_retries_total"))
            return seen["attempts"] == self.recorded_attempts()
        h.wait_for(consistent, what="the webhook counters to match the store")
        return dict(seen)

    def assertCountersMoved(self, before, **moved):
        want = dict(before)
        for k, v in moved.items():
            want[k] += v
        self.assertEqual(self.counters(), want, "metrics before %r" % before)

    def barrier(self, path):
        """A delivery made after everything before it was recorded final: the
        dispatcher claims due rows oldest first, so once this one has been
        answered, a retry the schedule would have made by its due time has
        been claimed too (and would be in the receiver's records)."""
        uid = self.srv.create(self.key, prompt="barrier", webhook_url=self.receiver.url(path))
        self.deliveries_settled(self.srv, self.key, uid, 1)
        self.receiver.wait_deliveries(1, path)

    def test_signed_payload_is_the_task(self):
        before = self.counters()
        t0 = time.time()
        uid = self.srv.create(self.key, prompt="signed payload",
                              webhook_url=self.receiver.url("/signed"))
        t = self.deliveries_settled(self.srv, self.key, uid, 1)
        rec = self.receiver.wait_deliveries(1, "/signed")[0]
        # The reference verifier accepted it with the account's secret.
        self.assertTrue(rec["verified"], rec)
        self.assertEqual(rec["secret"], "current")
        self.assertEqual(rec["status"], 200)
        self.assertEqual(rec["method"], "POST")
        self.assertEqual(rec["user_agent"], "imgate-webhooks")
        self.assertEqual(rec["content_type"], "application/json")
        self.assertRegex(rec["id"], MSG_ID_RE)
        self.assertRegex(rec["signature"], r"^v1,[A-Za-z0-9+/]{43}=$")  # one secret: one signature
        self.assertLessEqual(int(t0) - 1, int(rec["timestamp"]))
        self.assertLessEqual(int(rec["timestamp"]), time.time() + 1)
        # The payload: the event and the task as GET shows it.
        body = json.loads(rec["body"])
        self.assertEqual(set(body), {"type", "timestamp", "data"}, body)
        self.assertEqual(body["type"], "task.succeeded")
        self.assertRegex(body["timestamp"], h.TIME_RE)
        self.assertGreaterEqual(h.parse_time(body["timestamp"]), h.parse_time(t["finished_at"]))
        data = body["data"]
        self.assertEqual(data["uid"], uid)
        self.assertEqual(data["status"], "succeeded")
        # It was made before its own attempt: its deliveries list is the one
        # thing that has moved on since.
        self.assertEqual(data.pop("webhook_deliveries"), [])
        got = dict(t)
        got.pop("webhook_deliveries")
        self.assertEqual(data, got)
        self.assertImages(self.srv, data, 1024, 1024)
        # The task records the attempt under the id the receiver saw.
        self.assertEqual(len(t["webhook_deliveries"]), 1, t)
        a = t["webhook_deliveries"][0]
        self.assertEqual((a["webhook_id"], a["event"], a["http_status"], a["outcome"],
                          a["error"], a["delivery_state"]),
                         (rec["id"], "task.succeeded", 200, "delivered", None, "delivered"), a)
        self.assertRegex(a["at"], h.TIME_RE)
        self.assertIsInstance(a["duration_ms"], int)
        self.assertEqual(t["webhook_url"], self.receiver.url("/signed"))
        self.assertEqual(len(self.receiver.deliveries("/signed")), 1)
        self.assertCountersMoved(before, delivered=1, attempts=1)

    def test_500_three_times_then_200(self):
        self.receiver.script("/flaky", [{"status": 500, "times": 3}, {"status": 200}])
        before = self.counters()
        uid = self.srv.create(self.key, prompt="flaky receiver",
                              webhook_url=self.receiver.url("/flaky"))
        t = self.deliveries_settled(self.srv, self.key, uid, 4)
        self.barrier("/flaky-barrier")
        recs = self.receiver.deliveries("/flaky")
        # Four attempts, one id, all verified; one answered 200; no fifth.
        self.assertEqual([r["status"] for r in recs], [500, 500, 500, 200], recs)
        self.assertTrue(all(r["verified"] for r in recs), recs)
        self.assertEqual(len({r["id"] for r in recs}), 1, recs)
        self.assertEqual([r["duplicate"] for r in recs], [False, True, True, True])
        # Every retry sends the same bytes (the payload is stored with the first).
        self.assertEqual(len({r["body"] for r in recs}), 1)
        # The task shows the four attempts and the delivery's final state.
        d = t["webhook_deliveries"]
        self.assertEqual([(a["webhook_id"], a["http_status"], a["outcome"], a["error"])
                          for a in d],
                         [(recs[0]["id"], 500, "failed", "HTTP 500")] * 3 +
                         [(recs[0]["id"], 200, "delivered", None)], d)
        self.assertEqual({a["delivery_state"] for a in d}, {"delivered"}, d)
        times = [h.parse_time(a["at"]) for a in d]
        self.assertEqual(times, sorted(times), d)
        # Each retry came after the previous attempt and the schedule's delay.
        for prev, nxt in zip(recs, recs[1:]):
            self.assertGreaterEqual(nxt["received_ms"] - prev["received_ms"], SCHEDULE[1] - 5)
        self.assertCountersMoved(before, delivered=2, attempts=5, retries=3)  # + the barrier

    def test_410_stops_for_good(self):
        self.receiver.script("/gone", [{"status": 410}, {"status": 200}])
        before = self.counters()
        uid = self.srv.create(self.key, prompt="gone receiver",
                              webhook_url=self.receiver.url("/gone"))
        t = self.deliveries_settled(self.srv, self.key, uid, 1)
        self.barrier("/gone-barrier")
        recs = self.receiver.deliveries("/gone")
        self.assertEqual([(r["status"], r["verified"]) for r in recs], [(410, True)], recs)
        d = t["webhook_deliveries"]
        self.assertEqual([(a["http_status"], a["outcome"], a["error"], a["delivery_state"])
                          for a in d], [(410, "gone", "HTTP 410", "gone")], d)
        self.assertEqual(len(self.srv.task(uid, self.key)["webhook_deliveries"]), 1)
        self.assertCountersMoved(before, gone=1, delivered=1, attempts=2)

    def test_resend_sends_the_same_delivery_again(self):
        uid = self.srv.create(self.key, prompt="resend me",
                              webhook_url=self.receiver.url("/resend"))
        self.deliveries_settled(self.srv, self.key, uid, 1)
        first = self.receiver.wait_deliveries(1, "/resend")[0]
        before = self.counters()
        r = self.srv.request("POST", "/api/banana/%s/webhook/resend" % uid, key=self.key)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json(), {"uid": uid, "resent": True})
        t = self.deliveries_settled(self.srv, self.key, uid, 2)
        recs = self.receiver.wait_deliveries(2, "/resend")
        self.assertEqual(len(recs), 2, recs)
        again = recs[1]
        self.assertTrue(again["verified"], again)
        self.assertEqual(again["id"], first["id"])
        self.assertTrue(again["duplicate"])
        self.assertEqual(again["body"], first["body"])
        d = t["webhook_deliveries"]
        self.assertEqual([(a["webhook_id"], a["outcome"], a["delivery_state"]) for a in d],
                         [(first["id"], "delivered", "delivered")] * 2, d)
        self.assertCountersMoved(before, delivered=1, attempts=1)
        # Nothing to resend: a task without a webhook, an unknown task.
        plain = self.srv.create(self.key, prompt="no webhook")
        self.srv.wait_final(plain, self.key)
        for target, code in ((plain, "no_webhook_delivery"),
                             ("00000000-0000-0000-0000-000000000000", None)):
            r = self.srv.request("POST", "/api/banana/%s/webhook/resend" % target, key=self.key)
            self.assertError(r, 404, code, msg=target)

    def test_running_event_on_request(self):
        uid = self.srv.create(self.key, prompt="announce running",
                              webhook_url=self.receiver.url("/running"),
                              webhook_events=["task.running"])
        t = self.deliveries_settled(self.srv, self.key, uid, 2)
        recs = self.receiver.wait_deliveries(2, "/running")
        self.assertEqual(sorted(r["event"] for r in recs), ["task.running", "task.succeeded"])
        self.assertTrue(all(r["verified"] and r["status"] == 200 for r in recs), recs)
        self.assertNotEqual(recs[0]["id"], recs[1]["id"])  # two events, two deliveries
        for r in recs:
            body = json.loads(r["body"])
            self.assertEqual((body["type"], body["data"]["uid"]), (r["event"], uid))
        by_event = {a["event"]: a for a in t["webhook_deliveries"]}
        self.assertEqual(set(by_event), {"task.running", "task.succeeded"})
        self.assertEqual({r["event"]: r["id"] for r in recs},
                         {e: a["webhook_id"] for e, a in by_event.items()})

    def test_failed_and_moderated_tasks_announce_it(self):
        for prompt, status, code in (("x " + FAIL_MARKER, "failed", "upstream_error"),
                                     ("x " + MODERATE_MARKER, "moderated", "content_moderated")):
            with self.subTest(status=status):
                path = "/" + status
                uid = self.srv.create(self.key, prompt=prompt, webhook_url=self.receiver.url(path))
                t = self.deliveries_settled(self.srv, self.key, uid, 1)
                self.assertEqual(t["status"], status, t)
                rec = self.receiver.wait_deliveries(1, path)[0]
                self.assertTrue(rec["verified"], rec)
                self.assertEqual(rec["event"], "task." + status)
                data = json.loads(rec["body"])["data"]
                self.assertEqual((data["uid"], data["status"], data["error"]["code"]),
                                 (uid, status, code), data)
                self.assertEqual(t["webhook_deliveries"][0]["event"], "task." + status)

    def test_no_webhook_url_sends_nothing(self):
        before = self.counters()
        plain = self.srv.create(self.key, prompt="nobody listens")
        t = self.srv.wait_final(plain, self.key)
        self.assertNotIn("webhook_url", t)
        self.assertNotIn("webhook_deliveries", t)
        # The outbox has no row for it ...
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(self.srv.data_dir, "imgate.db"),
                             uri=True, timeout=h.DEADLINE)
        try:
            rows = db.execute("SELECT COUNT(*) FROM webhook_deliveries WHERE task_id = ?",
                              (plain,)).fetchone()[0]
        finally:
            db.close()
        self.assertEqual(rows, 0)
        # ... and a delivery queued after it is the only attempt made since.
        self.barrier("/after-nothing")
        self.assertCountersMoved(before, delivered=1, attempts=1)


class KillNine(WebhookTestCase):
    def test_kill9_mid_attempt_delivers_once_after_restart(self):
        """kill -9 while an attempt waits for the receiver's answer: nothing
        was recorded, so after a restart on the same data the delivery is due
        again when its lease (timeout + 10 s) ends, and arrives once more with
        the same id; that time it is answered 200, and recorded once."""
        self.receiver = wu.Receiver.start()
        self.addCleanup(self.receiver.stop)
        timeout_ms = 3000
        config = webhook_config(timeout_ms=timeout_ms)
        srv = self.start_server(accounts=[EMAIL], config=config)
        key = srv.keys[EMAIL]
        self.receiver.set_secrets({"current": self.secret_of(srv, key)["secret"]})
        self.receiver.script("/crash", [{"hang": True}])
        uid = srv.create(key, prompt="crash mid delivery", webhook_url=self.receiver.url("/crash"))
        hung = self.receiver.wait_deliveries(1, "/crash")[0]
        srv.kill9()
        self.assertTrue(hung["verified"], hung)
        self.assertIsNone(hung["status"])  # never answered
        # The attempt was still under way at the kill (its timeout not reached).
        self.assertLess(time.time() * 1000 - hung["received_ms"], timeout_ms)

        self.receiver.script("/crash", [{"status": 200}])
        again = self.start_server(data_dir=srv.data_dir, config=config)
        recs = self.receiver.wait_deliveries(2, "/crash")
        t = self.deliveries_settled(again, key, uid, 1)
        self.assertEqual(len(recs), 2, recs)
        second = recs[1]
        self.assertTrue(second["verified"], second)
        self.assertEqual(second["id"], hung["id"])
        self.assertEqual(second["status"], 200)
        self.assertEqual([r["status"] for r in recs].count(200), 1)
        # Not before the lease taken by the first process ran out.
        self.assertGreaterEqual(second["received_ms"] - hung["received_ms"],
                                timeout_ms + 10000 - 1000)
        # Only the attempt that got an answer is recorded.
        d = t["webhook_deliveries"]
        self.assertEqual([(a["webhook_id"], a["http_status"], a["outcome"], a["delivery_state"])
                          for a in d], [(hung["id"], 200, "delivered", "delivered")], d)
        # Counted just after the commit the task shows: poll, then compare.
        m = h.wait_for(lambda: (lambda m: m if u.metric(m, "imgate_webhook_attempts_total") >= 1
                                else None)(u.metrics(again)), what="the attempt counted")
        self.assertEqual(u.metric(m, "imgate_webhook_deliveries_total", outcome="delivered"), 1)
        self.assertEqual(u.metric(m, "imgate_webhook_attempts_total"), 1)


class PrivateAddresses(WebhookTestCase):
    def test_private_urls_refused(self):
        """allow_private_networks false: an address literal that is not public
        is refused at submit; a name that leads to one (localhost) is accepted
        and then refused by the guard at each attempt, before connecting."""
        self.receiver = wu.Receiver.start()
        self.addCleanup(self.receiver.stop)
        srv = self.start_server(accounts=[EMAIL],
                                config=webhook_config(allow_private_networks=False))
        key = srv.keys[EMAIL]
        self.receiver.set_secrets({"current": self.secret_of(srv, key)["secret"]})
        port = self.receiver.port
        for url in ("http://127.0.0.1:%d/hook" % port, "http://[::1]:%d/hook" % port,
                    "http://127.9.9.9/hook", "http://10.0.0.1/hook", "http://192.168.1.20/hook",
                    "http://172.16.0.1/hook", "http://169.254.169.254/latest",
                    "http://[fd00::1]/hook", "http://[fe80::1]/hook", "http://0.0.0.0/hook",
                    "http://[::ffff:10.0.0.1]/hook", "https://100.64.0.1/hook"):
            with self.subTest(url=url):
                r = srv.request("POST", "/api/banana/create-async",
                                json_body={"prompt": "x", "webhook_url": url}, key=key)
                err = self.assertError(r, 400, "invalid_webhook_url", "webhook_url", msg=url)
                self.assertIn("not a public address", err["message"])
        uid = srv.create(key, prompt="to localhost",
                         webhook_url="http://localhost:%d/hook" % port)
        t = self.deliveries_settled(srv, key, uid, len(SCHEDULE))
        d = t["webhook_deliveries"]
        self.assertEqual(len(d), len(SCHEDULE), d)
        for a in d:
            self.assertIsNone(a["http_status"], a)
            self.assertEqual((a["outcome"], a["delivery_state"]), ("failed", "failed"), a)
            self.assertRegex(a["error"], r"^refused: not a public address \((127\.0\.0\.1|::1)\)$")
        self.assertEqual(self.receiver.deliveries(), [])
        self.assertEqual(srv.task(uid, key)["status"], "succeeded")  # the task is not hurt


class Rotation(WebhookTestCase):
    WINDOW_S = 3

    def test_rotation_signs_with_both_secrets_within_the_window(self):
        self.receiver = wu.Receiver.start()
        self.addCleanup(self.receiver.stop)
        srv = self.start_server(accounts=[EMAIL],
                                config=webhook_config(rotation_window_s=self.WINDOW_S))
        key = srv.keys[EMAIL]
        old = self.secret_of(srv, key)
        self.assertIsNone(old["previous"])
        self.assertIsNone(old["previous_expires_at"])
        old = old["secret"]
        self.receiver.set_secrets({"old": old})
        # Before: one signature, the current secret's.
        uid0 = srv.create(key, prompt="before rotation", webhook_url=self.receiver.url("/before"))
        self.deliveries_settled(srv, key, uid0, 1)
        rec = self.receiver.wait_deliveries(1, "/before")[0]
        self.assertEqual((rec["verified"], rec["secret"]), (True, "old"), rec)
        self.assertEqual(signature_keys(rec, {"old": old}), ["old"])

        r = srv.request("POST", "/api/account/webhook-secret/rotate", key=key)
        self.assertEqual(r.status, 200, r)
        rotated = r.json()
        new = rotated["secret"]
        self.assertNotEqual(new, old)
        self.assertEqual(rotated["previous"], old)
        expires = h.parse_time(rotated["previous_expires_at"])
        self.assertAlmostEqual(expires, time.time() + self.WINDOW_S, delta=2)
        self.assertEqual(self.secret_of(srv, key), rotated)
        both = {"new": new, "old": old}

        # Within the window: two signatures (the new secret's first), and a
        # receiver holding either secret alone accepts the delivery.
        self.receiver.set_secrets({"new": new})
        uid = srv.create(key, prompt="after rotation", webhook_url=self.receiver.url("/rot"))
        self.deliveries_settled(srv, key, uid, 1)
        rec = self.receiver.wait_deliveries(1, "/rot")[0]
        self.assertEqual((rec["verified"], rec["secret"], rec["status"]), (True, "new", 200), rec)
        self.assertEqual(signature_keys(rec, both), ["new", "old"], rec)
        self.receiver.set_secrets({"old": old})
        self.assertEqual(srv.request("POST", "/api/banana/%s/webhook/resend" % uid,
                                     key=key).status, 202)
        self.deliveries_settled(srv, key, uid, 2)
        rec = self.receiver.wait_deliveries(2, "/rot")[1]
        self.assertEqual((rec["verified"], rec["secret"], rec["status"]), (True, "old", 200), rec)
        self.assertEqual(signature_keys(rec, both), ["new", "old"], rec)
        self.assertLess(int(rec["timestamp"]), expires)

        # After the window: the new secret's signature alone.
        h.wait_for(lambda: time.time() > expires + 0.05, deadline=self.WINDOW_S + 5,
                   what="the rotation window to close")
        self.receiver.set_secrets(both)
        self.assertEqual(srv.request("POST", "/api/banana/%s/webhook/resend" % uid,
                                     key=key).status, 202)
        self.deliveries_settled(srv, key, uid, 3)
        rec = self.receiver.wait_deliveries(3, "/rot")[2]
        self.assertEqual((rec["verified"], rec["secret"]), (True, "new"), rec)
        self.assertEqual(signature_keys(rec, both), ["new"], rec)
        # A receiver still holding only the old secret now refuses it.
        self.receiver.set_secrets({"old": old})
        self.assertEqual(srv.request("POST", "/api/banana/%s/webhook/resend" % uid,
                                     key=key).status, 202)
        rec = self.receiver.wait_deliveries(4, "/rot")[3]
        self.assertFalse(rec["verified"], rec)
        self.assertEqual(rec["status"], 401)
        # (That attempt failed; let the delivery settle before the server stops.)
        self.deliveries_settled(srv, key, uid, 4)


class Cancel(WebhookTestCase):
    def test_canceled_task_announces_it(self):
        self.receiver = wu.Receiver.start()
        self.addCleanup(self.receiver.stop)
        config = webhook_config()
        config["sim"]["delay_ms"] = 60000  # runs until canceled
        srv = self.start_server(accounts=[EMAIL], config=config)
        key = srv.keys[EMAIL]
        self.receiver.set_secrets({"current": self.secret_of(srv, key)["secret"]})
        uid = srv.create(key, prompt="cancel me", webhook_url=self.receiver.url("/cancel"),
                         webhook_events=["task.running"])
        running = self.receiver.wait_deliveries(1, "/cancel")[0]
        self.assertEqual(running["event"], "task.running")
        r = srv.request("POST", "/api/banana/%s/cancel" % uid, key=key)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["status"], "canceled", r)
        t = self.deliveries_settled(srv, key, uid, 2)
        recs = self.receiver.wait_deliveries(2, "/cancel")
        self.assertEqual([r["event"] for r in recs], ["task.running", "task.canceled"], recs)
        self.assertTrue(all(r["verified"] and r["status"] == 200 for r in recs), recs)
        data = json.loads(recs[1]["body"])["data"]
        self.assertEqual((data["uid"], data["status"]), (uid, "canceled"), data)
        self.assertEqual(sorted(a["event"] for a in t["webhook_deliveries"]),
                         ["task.canceled", "task.running"])


if __name__ == "__main__":
    import unittest
    unittest.main()
