"""test_examples.py - the examples the documentation hands to users work as
written: docs/examples/webhook_receiver.py (the README's webhook walkthrough)
verifies real deliveries from imgate, prints them, and refuses a delivery
signed with another secret (which imgate then records as a failed attempt).
"""

import json
import os
import subprocess
import sys
import threading

import harness as h

EMAIL = "examples@example.com"
RECEIVER = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                         "docs", "examples", "webhook_receiver.py"))
# The README's local-hooks.json.
LOCAL_HOOKS = {"webhooks": {"allow_http": True, "allow_private_networks": True}}


class ExampleReceiver:
    def __init__(self, test, secret):
        env = dict(os.environ, IMGATE_WEBHOOK_SECRET=secret)
        self.proc = subprocess.Popen([sys.executable, RECEIVER, "0"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        test.addCleanup(self.stop)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()
        self.port = h.wait_for(lambda: self.lines and self.lines[0].get("listening"),
                               what="the example receiver to listen")

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def url(self):
        return "http://127.0.0.1:%d/hook" % self.port

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


class ExamplesTest(h.ServerTestCase):

    def test_readme_webhook_walkthrough(self):
        srv = self.start_server(accounts=[EMAIL], config=dict(LOCAL_HOOKS, sim={"delay_ms": 100}))
        key = srv.keys[EMAIL]
        secret = srv.get("/api/account/webhook-secret", key=key).json()["secret"]
        self.assertTrue(secret.startswith("whsec_"), secret)
        rx = ExampleReceiver(self, secret)
        uid = srv.create(key, prompt="a banana on the moon", webhook_url=rx.url())
        got = h.wait_for(lambda: rx.lines[1:] or None, what="the delivery")
        self.assertEqual(got[0]["type"], "task.succeeded")
        self.assertEqual(got[0]["uid"], uid)
        self.assertEqual(got[0]["status"], "succeeded")
        self.assertFalse(got[0]["duplicate"])
        # The receiver has it; imgate records the attempt a moment later.
        t = srv.poll_until(uid, key, lambda t: t.get("webhook_deliveries"))
        self.assertEqual([(d["http_status"], d["outcome"]) for d in t["webhook_deliveries"]],
                         [(204, "delivered")], t)
        self.assertEqual(t["webhook_deliveries"][0]["webhook_id"], got[0]["id"])

    def test_example_receiver_refuses_another_secret(self):
        srv = self.start_server(accounts=[EMAIL], config=dict(
            LOCAL_HOOKS, sim={"delay_ms": 50},
            webhooks=dict(LOCAL_HOOKS["webhooks"], retry_schedule_ms=[0])))
        key = srv.keys[EMAIL]
        rx = ExampleReceiver(self, "whsec_" + "QUJD" * 8)  # not the account's secret
        uid = srv.create(key, prompt="unverified", webhook_url=rx.url())
        t = srv.poll_until(uid, key, lambda t: t.get("webhook_deliveries") and
                           t["webhook_deliveries"][-1]["delivery_state"] == "failed")
        self.assertEqual([(d["http_status"], d["outcome"]) for d in t["webhook_deliveries"]],
                         [(401, "failed")], t)
        self.assertIn("refused", rx.lines[1])
