"""test_billing_upstream.py - exactly-once billing when the upstream misbehaves: a task
retried across providers, tasks in flight when imgate is killed with SIGKILL, and an
upstream 400. imgate talks to the scriptable fake Gemini upstream (tests/fakes).

Each task must end with exactly one hold and then either one capture of what it
delivered or one release of everything; balances are checked through GET
/api/banana/credits and the ledger CSV, and `imgate admin ledger-verify` must pass on
every data folder once its servers stopped (billing_util.BillingTestCase), and here
also right after the kill, with tasks still in flight.
"""

import collections
import concurrent.futures
import unittest

import harness as h
import upstream_util as u
import billing_util as b
from billing_util import PRICE_NB_1K

EMAIL = "billing-upstream@example.com"
MODEL = "nano-banana"
G25 = "gemini-2.5-flash-image"
BONUS = 1000000
MAX_WEIGHT = 1000000
FAST_RETRY = {"backoff_base_ms": 10, "backoff_max_ms": 40}
N_KILL = 20
SLOW_MS = int(max(120.0, 3 * h.DEADLINE) * 1000)   # never answered before the kill
FAST_MS = 20


class BillingUpstreamTest(b.BillingTestCase):

    def fake(self):
        return u.start_fake(self.addCleanup)

    def config(self, providers, routes, **extra):
        return b.billing_config(BONUS, providers=providers, routes=routes,
                                retry=dict(FAST_RETRY, max_attempts=3),
                                breaker={"failures": 1000}, admin_token=u.ADMIN_TOKEN, **extra)

    @staticmethod
    def attempts(t):
        return [(a["run"], a["provider"], a["http_status"], a["error_class"])
                for a in t["upstream_attempts"]]

    def test_retry_across_providers_captures_once(self):
        fa, fb = self.fake(), self.fake()
        fa.script([{"kind": "error", "status": 503}], api="gemini", then="repeat_last")
        srv = self.start_server(accounts=[EMAIL], config=self.config(
            [u.gemini_provider("a", fa.gemini_base_url), u.gemini_provider("b", fb.gemini_base_url)],
            {MODEL: [u.route("a", weight=MAX_WEIGHT), u.route("b")]}))
        key, data = srv.keys[EMAIL], srv.data_dir
        uid = srv.create(key, prompt="retried across providers", model=MODEL)
        t = srv.wait_final(uid, key)
        self.assertEqual((t["status"], t["provider"], len(t["images"])), ("succeeded", "b", 1), t)
        self.assertEqual(self.attempts(t), [(1, "a", 503, "server"), (1, "b", 200, "none")], t)
        self.assertEqual((len(fa.requests(api="gemini")), len(fb.requests(api="gemini"))), (1, 1))
        self.assertCost(t, PRICE_NB_1K, PRICE_NB_1K)
        rows = self.assertMoney(srv, key, data, EMAIL, BONUS - PRICE_NB_1K, 0)
        self.assertSettled(rows, uid, PRICE_NB_1K, PRICE_NB_1K)   # one hold, one capture
        self.assertEqual(b.kinds(rows), {"grant": 1, "hold": 1, "capture": 1}, rows)

    def test_upstream_400_costs_nothing(self):
        f = self.fake()
        f.script([{"kind": "error", "status": 400, "message": "bad request from the test"}],
                 api="gemini", then="repeat_last")
        srv = self.start_server(accounts=[EMAIL], config=self.config(
            [u.gemini_provider("g", f.gemini_base_url)], {MODEL: [u.route("g")]}))
        key, data = srv.keys[EMAIL], srv.data_dir
        uid = srv.create(key, prompt="refused upstream", model=MODEL)
        t = srv.wait_final(uid, key)
        self.assertEqual(t["status"], "failed", t)
        self.assertIsNotNone(t["error"], t)
        self.assertEqual([a[2] for a in self.attempts(t)], [400], t)
        self.assertCost(t, PRICE_NB_1K, 0)
        rows = self.assertMoney(srv, key, data, EMAIL, BONUS, 0)
        self.assertSettled(rows, uid, PRICE_NB_1K, 0)             # hold, then release it all
        self.assertEqual(b.kinds(rows), {"grant": 1, "hold": 1, "release": 1}, rows)

    def test_kill9_mid_task_captures_once_per_task(self):
        f = u.start_fake(self.addCleanup, "--gemini-key", u.GEMINI_KEY)
        f.script([{"delay_ms": SLOW_MS}], api="gemini", then="repeat_last")
        data = self.new_data_dir()
        cfg = self.config([u.gemini_provider("g", f.gemini_base_url,
                                             timeout_ms=SLOW_MS + 60000)],
                          {MODEL: [u.route("g", G25)]})

        # Run 1: N tasks held and in flight upstream, then SIGKILL.
        s1 = self.start_server(data_dir=data, accounts=[EMAIL], config=cfg)
        key = s1.keys[EMAIL]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            uids = list(pool.map(lambda i: s1.create(key, prompt="killed %02d" % i, model=MODEL),
                                 range(N_KILL)))
        self.assertEqual(len(set(uids)), N_KILL)
        h.wait_for(lambda: f.stats()["in_flight"] == N_KILL, what="%d calls in flight" % N_KILL)
        for uid in uids:
            t = s1.task(uid, key)
            self.assertEqual(t["status"], "running", t)
            self.assertCost(t, PRICE_NB_1K, 0)
        self.assertMoney(s1, key, data, EMAIL, BONUS - N_KILL * PRICE_NB_1K, N_KILL * PRICE_NB_1K)
        self.assertEqual(dict(f.stats()["by_status"]), {}, "the fake answered before the kill")
        s1.kill9()
        self.assertEqual(s1.returncode, -9)
        # The killed server's database: every hold still there, nothing settled, consistent.
        self.assertLedgerVerifies(data)
        rows = self.assertMoney(None, None, data, EMAIL, BONUS - N_KILL * PRICE_NB_1K,
                                N_KILL * PRICE_NB_1K)
        self.assertEqual(b.kinds(rows), {"grant": 1, "hold": N_KILL}, rows)

        # Run 2: fast answers; every task re-runs, succeeds, and is charged once.
        f.reset()
        f.script([{"delay_ms": FAST_MS}], api="gemini", then="repeat_last")
        s2 = self.start_server(data_dir=data, config=cfg)
        for uid in uids:
            t = s2.wait_final(uid, key)
            self.assertEqual((t["status"], t["attempts"], len(t["images"])), ("succeeded", 2, 1), t)
            self.assertEqual(self.attempts(t), [(2, "g", 200, "none")], t)
            self.assertCost(t, PRICE_NB_1K, PRICE_NB_1K)
        rows = self.assertMoney(s2, key, data, EMAIL, BONUS - N_KILL * PRICE_NB_1K, 0)
        for uid in uids:
            self.assertSettled(rows, uid, PRICE_NB_1K, PRICE_NB_1K)
        self.assertEqual(b.kinds(rows), {"grant": 1, "hold": N_KILL, "capture": N_KILL}, rows)
        per_task = collections.Counter((x.task, x.kind) for x in rows if x.task)
        self.assertEqual(set(per_task.values()), {1}, per_task)
        self.assertEqual(len(f.requests(api="gemini")), N_KILL, "one upstream call per task")
        s2.stop()
        self.assertLedgerVerifies(data)


if __name__ == "__main__":
    unittest.main()
