"""test_webhook_receiver.py - the C signer and the C delivery client against the
reference verifier (npm standardwebhooks) in tests/webhook/receiver.mjs.

SignerVsVerifier: signatures made by webhook/sign.c (through webhook_probe
sign), posted by hand, judged by the verifier: valid accepted; a tampered
body, a wrong secret, an old or future timestamp rejected; during a rotation
a header with two signatures is accepted by a receiver holding either secret.

ClientVsReceiver: single attempts by webhook/client.c over a real curl loop
(webhook_probe send) to the scripted receiver: 2xx delivered and verified,
500 then 200 (same webhook-id each time), 410 gone, a hang times out, a slow
answer within the timeout, a 302 whose Location is never contacted, and
addresses the SSRF guard refuses without a connection (a non-loopback
address through the test hook that stands in for a public receiver, and the
loopback receiver itself when private networks are not allowed).
"""

import json
import os
import re
import time
import unittest

import harness as h
import webhook_util as wu

CURRENT = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
PREVIOUS = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_//79/Pv6+fj39vX08/Lx8O/u7ezr6uno5+bl5OPi4eDf3t3c29rZ2NfW1dTT0tHQz87NzMvKycjHxsXEw8LBwA=="


def payload(event="task.succeeded", task_id="t-1"):
    return json.dumps({"type": event, "timestamp": "2026-01-01T00:00:00Z",
                       "data": {"id": task_id, "prompt": "caf\u00e9 \u2615"}},
                      ensure_ascii=False).encode("utf-8")


class ReceiverTestCase(unittest.TestCase):
    """One receiver for the class; each test starts from no records and scripts."""

    @classmethod
    def setUpClass(cls):
        cls.receiver = wu.Receiver.start(secrets={"current": CURRENT})
        cls.addClassCleanup(cls.receiver.stop)

    def setUp(self):
        self.receiver.reset()
        self.receiver.set_secrets({"current": CURRENT})

    def tearDown(self):
        if self.receiver.stderr:
            print("\n--- receiver stderr ---\n" + "\n".join(self.receiver.stderr))


class SignerVsVerifier(ReceiverTestCase):
    def post_signed(self, body, msg_id, ts, signature, path="/hook"):
        return self.receiver.post(path, body, {
            "content-type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(ts), "webhook-signature": signature})

    def only_record(self):
        recs = self.receiver.deliveries()
        self.assertEqual(len(recs), 1, recs)
        return recs[0]

    def test_valid_signature_accepted(self):
        body, ts = payload(), int(time.time())
        sig = wu.probe_sign(CURRENT, "msg_valid", ts, body)
        self.assertRegex(sig, r"^v1,[A-Za-z0-9+/]{43}=$")
        status, _ = self.post_signed(body, "msg_valid", ts, sig)
        self.assertEqual(status, 200)
        rec = self.only_record()
        self.assertTrue(rec["verified"], rec)
        self.assertEqual(rec["secret"], "current")
        self.assertEqual(rec["id"], "msg_valid")
        self.assertEqual(rec["event"], "task.succeeded")

    def test_tampered_body_rejected(self):
        body, ts = payload(task_id="t-1"), int(time.time())
        sig = wu.probe_sign(CURRENT, "msg_tamper", ts, body)
        status, _ = self.post_signed(payload(task_id="t-2"), "msg_tamper", ts, sig)
        self.assertEqual(status, 401)
        rec = self.only_record()
        self.assertFalse(rec["verified"])
        self.assertEqual(rec["error"], "No matching signature found")
        # The same signature moved to another id fails too.
        self.receiver.reset()
        status, _ = self.post_signed(body, "msg_tamper2", ts, sig)
        self.assertEqual(status, 401)

    def test_wrong_secret_rejected(self):
        body, ts = payload(), int(time.time())
        sig = wu.probe_sign(OTHER, "msg_wrong", ts, body)
        status, _ = self.post_signed(body, "msg_wrong", ts, sig)
        self.assertEqual(status, 401)
        rec = self.only_record()
        self.assertFalse(rec["verified"])
        self.assertIsNone(rec["secret"])

    def test_timestamp_tolerance(self):
        body, now = payload(), int(time.time())
        # Inside the verifier's five minutes: accepted.
        sig = wu.probe_sign(CURRENT, "msg_recent", now - 240, body)
        self.assertEqual(self.post_signed(body, "msg_recent", now - 240, sig)[0], 200)
        # Ten minutes old, or ten minutes ahead: rejected, the signature being right.
        sig = wu.probe_sign(CURRENT, "msg_old", now - 600, body)
        self.assertEqual(self.post_signed(body, "msg_old", now - 600, sig)[0], 401)
        sig = wu.probe_sign(CURRENT, "msg_future", now + 600, body)
        self.assertEqual(self.post_signed(body, "msg_future", now + 600, sig)[0], 401)
        recs = {r["id"]: r for r in self.receiver.deliveries()}
        self.assertTrue(recs["msg_recent"]["verified"])
        self.assertEqual(recs["msg_old"]["error"], "Message timestamp too old")
        self.assertEqual(recs["msg_future"]["error"], "Message timestamp too new")

    def test_rotation_accepted_by_either_secret(self):
        body, ts = payload(), int(time.time())
        both = wu.probe_sign(CURRENT, "msg_rot", ts, body, previous=PREVIOUS)
        self.assertRegex(both, r"^v1,\S+ v1,\S+$")
        for held, name in (({"current": CURRENT}, "current"),
                           ({"previous": PREVIOUS}, "previous")):
            self.receiver.reset()
            self.receiver.set_secrets(held)
            status, _ = self.post_signed(body, "msg_rot", ts, both)
            self.assertEqual(status, 200, held)
            self.assertEqual(self.only_record()["secret"], name)
        # A receiver holding neither rejects it ...
        self.receiver.reset()
        self.receiver.set_secrets({"other": OTHER})
        self.assertEqual(self.post_signed(body, "msg_rot", ts, both)[0], 401)
        # ... and one holding only the old secret needs the second signature.
        self.receiver.reset()
        self.receiver.set_secrets({"previous": PREVIOUS})
        current_only = wu.probe_sign(CURRENT, "msg_rot", ts, body)
        self.assertEqual(self.post_signed(body, "msg_rot", ts, current_only)[0], 401)


def docs_python_verifier():
    """verify_webhook from the Python sample of docs/delivery.md, so the docs
    stay true to what imgate sends."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs",
                        "delivery.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("### Verifying webhooks"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {}
    exec(compile(code, "docs/delivery.md", "exec"), scope)
    return scope["verify_webhook"]


class DocsSample(unittest.TestCase):
    def test_python_sample_verifies_the_c_signer(self):
        verify = docs_python_verifier()
        body, ts = payload(), int(time.time())
        headers = {"webhook-id": "msg_docs", "webhook-timestamp": str(ts),
                   "webhook-signature": wu.probe_sign(CURRENT, "msg_docs", ts, body,
                                                      previous=PREVIOUS)}
        verify(CURRENT, headers, body)
        verify(PREVIOUS, headers, body)
        with self.assertRaises(ValueError):
            verify(OTHER, headers, body)
        with self.assertRaises(ValueError):
            verify(CURRENT, headers, body + b" ")
        old = dict(headers, **{"webhook-timestamp": str(ts - 600)})
        old["webhook-signature"] = wu.probe_sign(CURRENT, "msg_docs", ts - 600, body)
        with self.assertRaises(ValueError):
            verify(CURRENT, old, body)


class ClientVsReceiver(ReceiverTestCase):
    def send(self, path="/hook", msg_id="msg_client", **kw):
        return wu.probe_send(self.receiver.url(path), msg_id, CURRENT, payload(), **kw)

    def test_delivered_and_verified(self):
        before = int(time.time())
        a = self.send(msg_id="msg_ok")
        self.assertEqual((a["started"], a["outcome"], a["http_status"], a["error"]),
                         (True, "delivered", 200, ""), a)
        rec = self.receiver.wait_deliveries(1, "/hook")[0]
        self.assertTrue(rec["verified"], rec)
        self.assertEqual(rec["id"], "msg_ok")
        self.assertEqual(int(rec["timestamp"]), a["timestamp_s"])
        self.assertLessEqual(before, a["timestamp_s"])
        self.assertLessEqual(a["timestamp_s"], int(time.time()))
        self.assertEqual(rec["user_agent"], "imgate-webhooks")
        self.assertEqual(rec["content_type"], "application/json")
        self.assertEqual(rec["body"].encode("utf-8"), payload())
        self.assertEqual(rec["status"], 200)

    def test_rotation_through_the_client(self):
        self.receiver.set_secrets({"previous": PREVIOUS})
        a = wu.probe_send(self.receiver.url(), "msg_rot_client", CURRENT, payload(),
                          previous=PREVIOUS)
        self.assertEqual(a["outcome"], "delivered", a)
        self.assertEqual(self.receiver.deliveries()[0]["secret"], "previous")

    def test_500_twice_then_200(self):
        self.receiver.script("/flaky", [{"status": 500, "times": 2}, {"status": 200}])
        outcomes = [self.send("/flaky", msg_id="msg_flaky") for _ in range(3)]
        self.assertEqual([(a["outcome"], a["http_status"], a["error"]) for a in outcomes],
                         [("retry", 500, "HTTP 500"), ("retry", 500, "HTTP 500"),
                          ("delivered", 200, "")])
        recs = self.receiver.deliveries("/flaky")
        self.assertEqual([r["status"] for r in recs], [500, 500, 200])
        self.assertTrue(all(r["verified"] and r["id"] == "msg_flaky" for r in recs), recs)
        self.assertEqual([r["duplicate"] for r in recs], [False, True, True])

    def test_410_gone(self):
        self.receiver.script("/gone", [{"status": 410}])
        a = self.send("/gone")
        self.assertEqual((a["outcome"], a["http_status"], a["error"]), ("gone", 410, "HTTP 410"))
        self.assertEqual(len(self.receiver.deliveries("/gone")), 1)

    def test_hang_times_out(self):
        self.receiver.script("/hang", [{"hang": True}])
        a = self.send("/hang", timeout_ms=500)
        self.assertEqual((a["outcome"], a["http_status"], a["error"]), ("retry", 0, "timeout"), a)
        self.assertGreaterEqual(a["duration_ms"], 450)
        recs = self.receiver.deliveries("/hang")
        self.assertEqual(len(recs), 1)
        self.assertTrue(recs[0]["verified"])  # it arrived whole; only the answer never came
        self.assertIsNone(recs[0]["status"])

    def test_slow_answer_within_timeout(self):
        self.receiver.script("/slow", [{"status": 202, "delay_ms": 300}])
        a = self.send("/slow", timeout_ms=10000)
        self.assertEqual((a["outcome"], a["http_status"]), ("delivered", 202), a)
        self.assertGreaterEqual(a["duration_ms"], 290)

    def test_redirect_not_followed(self):
        self.receiver.script("/moved", [{"status": 302,
                                         "location": self.receiver.url("/elsewhere")}])
        a = self.send("/moved")
        self.assertEqual((a["outcome"], a["http_status"], a["error"]),
                         ("retry", 302, "HTTP 302 (redirects are not followed)"))
        self.assertEqual(len(self.receiver.deliveries("/moved")), 1)
        self.assertEqual(self.receiver.deliveries("/elsewhere"), [])

    def test_guard_refuses_without_connecting(self):
        port = self.receiver.port
        # The hook treats the receiver's exact address as public: delivered.
        a = self.send(allow_private=False, public_port=port)
        self.assertEqual(a["outcome"], "delivered", a)
        self.receiver.reset()
        # A private address is judged by the production classifier and refused
        # before any socket exists (the hook would refuse, and count, any
        # non-loopback address the classifier let through).
        for host, named in (("10.0.0.1", "10.0.0.1"), ("169.254.169.254", "169.254.169.254"),
                            ("[fd00::1]", "fd00::1")):
            url = "http://%s:%d/hook" % (host, port)
            a = wu.probe_send(url, "msg_private", CURRENT, payload(), allow_private=False,
                              public_port=port, timeout_ms=3000)
            self.assertEqual((a["outcome"], a["http_status"], a["error"]),
                             ("retry", 0, "refused: not a public address (%s)" % named), a)
            self.assertGreaterEqual(a["asked"], 1)
            self.assertEqual(a["escaped"], 0)
        # Without the hook and without allow_private, loopback is refused too.
        a = self.send(allow_private=False)
        self.assertEqual(a["error"], "refused: not a public address (127.0.0.1)")
        self.assertEqual(self.receiver.deliveries(), [])

    def test_https_only_unless_allowed(self):
        a = self.send(allow_http=False)
        self.assertEqual((a["started"], a["outcome"], a["error"]),
                         (False, "retry", "refused: http URLs are not sent"))
        self.assertEqual(self.receiver.deliveries(), [])


if __name__ == "__main__":
    unittest.main()
