"""test_upstream_routing.py - routing across providers by live health: circuit
breakers, failover, Retry-After and 429 cooldown, the attempt log, and the bounds on
retries (max_attempts, deadline).

Each test starts its own fakes (one per provider, so the traffic each provider got
is simply that fake's recording and counters) and an imgate whose routes point at
them. Small breaker and backoff settings keep it quick; every wait is a poll with a
deadline.
"""

import concurrent.futures
import time
import unittest

import harness as h
import upstream_util as u

EMAIL = "routing@example.com"
MODEL = "nano-banana"
G25 = "gemini-2.5-flash-image"
FAST_RETRY = {"backoff_base_ms": 10, "backoff_max_ms": 40}
MAX_WEIGHT = 1000000
ALWAYS_503 = [{"kind": "error", "status": 503}]


class RoutingTest(h.ServerTestCase):

    # -- set-up helpers

    def fake(self):
        return u.start_fake(self.addCleanup)

    def server(self, providers, routes, retry=None, breaker=None, **extra):
        config = {"providers": providers, "routes": routes,
                  "retry": dict(FAST_RETRY, **(retry or {})),
                  "breaker": breaker or {"failures": 1000},
                  "admin_token": u.ADMIN_TOKEN}
        config.update(extra)
        srv = self.start_server(accounts=[EMAIL], config=config)
        return srv, srv.keys[EMAIL]

    def run_tasks(self, srv, key, n, label, model=MODEL):
        """Submits n tasks at once and returns them finished, in submission order."""
        uids = [srv.create(key, prompt="%s %s %d" % (self._testMethodName, label, i),
                           model=model) for i in range(n)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(n, 8)) as pool:
            tasks = list(pool.map(lambda uid: srv.wait_final(uid, key), uids))
        return tasks

    @staticmethod
    def attempts(t):
        return [(a["provider"], a["http_status"], a["error_class"])
                for a in t["upstream_attempts"]]

    def assertSucceededOn(self, t, provider):
        self.assertEqual(t["status"], "succeeded", t)
        self.assertEqual(len(t["images"]), 1, t)
        self.assertEqual(t["provider"], provider, t)
        self.assertEqual(self.attempts(t)[-1], (provider, 200, "none"), t)

    # -- keys refused, routes by default -------------------------------------------

    def test_refused_key_fails_over_to_the_other_provider(self):
        fa, fb = self.fake(), self.fake()
        fa.script([{"kind": "error", "status": 401}], api="gemini", then="repeat_last")
        srv, key = self.server(
            [u.gemini_provider("a", fa.gemini_base_url), u.gemini_provider("b", fb.gemini_base_url)],
            {MODEL: [u.route("a", weight=MAX_WEIGHT), u.route("b")]},
            retry={"max_attempts": 3})
        t = self.run_tasks(srv, key, 1, "auth")[0]
        self.assertSucceededOn(t, "b")
        # a's key is not retried on a; the retry goes where another key can serve it.
        self.assertEqual(self.attempts(t), [("a", 401, "auth"), ("b", 200, "none")], t)
        self.assertEqual(len(fa.requests(api="gemini")), 1)

    def test_declared_provider_serves_its_kind_without_routes(self):
        f = self.fake()
        srv, key = self.server([u.gemini_provider("g", f.gemini_base_url)], {})
        for model, upstream in (("nano-banana", G25),
                                ("nano-banana-2", "gemini-3.1-flash-image-preview")):
            with self.subTest(model=model):
                t = self.run_tasks(srv, key, 1, "default-route", model=model)[0]
                self.assertSucceededOn(t, "g")
                self.assertEqual(t["upstream_attempts"][-1]["upstream_model"], upstream, t)
        r = srv.request("POST", "/api/banana/create-async",
                        json_body={"prompt": "x", "model": "gpt-image-1"}, key=key)
        self.assertEqual(r.status, 400, r.body)
        self.assertEqual(r.json()["error"]["code"], "model_unavailable", r.body)

    # -- breaker: a provider answering 503 to everything ------------------------------

    def test_failing_provider_loses_traffic_then_wins_it_back(self):
        open_ms, recovery_ms = 2000, 1000
        fa, fb = self.fake(), self.fake()
        fa.script(ALWAYS_503, api="gemini", then="repeat_last")
        srv, key = self.server(
            [u.gemini_provider("a", fa.gemini_base_url), u.gemini_provider("b", fb.gemini_base_url)],
            {MODEL: [u.route("a"), u.route("b")]},
            retry={"max_attempts": 3},
            breaker={"failures": 3, "open_ms": open_ms, "recovery_ms": recovery_ms})

        # Phase 1: traffic until a's breaker opens, within a few seconds.
        t0 = time.monotonic()
        done = []

        def breaker_opened():
            done.extend(self.run_tasks(srv, key, 4, "phase1 %d" % len(done)))
            return u.route_health(srv, MODEL, "a")["breaker_opened"] >= 1

        h.wait_for(breaker_opened, what="the breaker of route a to open")
        self.assertLess(time.monotonic() - t0, 15, "the breaker took too long to open")
        for t in done:  # every task still succeeded, on b, a's 503 moving it over at once
            self.assertSucceededOn(t, "b")
            self.assertIn(self.attempts(t), ([("b", 200, "none")],
                                             [("a", 503, "server"), ("b", 200, "none")]), t)
        ra, rb = u.route_health(srv, MODEL, "a"), u.route_health(srv, MODEL, "b")
        self.assertEqual(ra["successes"], 0, ra)
        self.assertGreaterEqual(ra["errors"].get("server", 0), 3, ra)
        self.assertEqual(ra["attempts"], fa.stats()["total"], ra)
        self.assertEqual(rb["successes"], len(done), rb)
        self.assertEqual(rb["state"], "closed", rb)
        self.assertLess(ra["success_rate"], 0.5, ra)

        # Phase 2: with a's breaker open, (nearly) everything goes to b. The only calls
        # a may get are half-open probes: at most one per open_ms.
        fa0, fb0 = fa.stats()["total"], fb.stats()["total"]
        t1 = time.monotonic()
        tasks = self.run_tasks(srv, key, 20, "phase2")
        elapsed_ms = (time.monotonic() - t1) * 1000
        fa_new, fb_new = fa.stats()["total"] - fa0, fb.stats()["total"] - fb0
        for t in tasks:
            self.assertSucceededOn(t, "b")
        self.assertGreaterEqual(fb_new, 20)
        self.assertLessEqual(fa_new, 1 + elapsed_ms // open_ms,
                             "a got %d calls in %.0f ms while its breaker was open" % (
                                 fa_new, elapsed_ms))
        self.assertLessEqual(fa_new * 4, fb_new, "a still gets over 20%% of the traffic: "
                             "%d vs %d" % (fa_new, fb_new))

        # Phase 3: a recovers. Its breaker goes half-open once open_ms is up, a probe
        # succeeds, the breaker closes, and a gets its share of traffic again.
        fa.reset()  # no script: every call succeeds
        h.wait_for(lambda: u.route_health(srv, MODEL, "a")["state"] == "half_open",
                   what="route a to become half-open")
        probes = []

        def probe_served():
            probes.extend(self.run_tasks(srv, key, 1, "probe %d" % len(probes)))
            return fa.stats()["by_status"].get("200", 0) >= 1

        h.wait_for(probe_served, what="a successful probe on route a")
        self.assertEqual(probes[-1]["provider"], "a", probes[-1])
        self.assertEqual(self.attempts(probes[-1]), [("a", 200, "none")], probes[-1])
        ra = u.route_health(srv, MODEL, "a")
        self.assertEqual(ra["state"], "closed", ra)
        self.assertEqual(ra["consecutive_failures"], 0, ra)
        self.assertGreaterEqual(ra["successes"], 1, ra)
        h.wait_for(lambda: u.route_health(srv, MODEL, "a")["health"] >= 0.99,
                   what="route a's health to recover")
        fa0, fb0 = fa.stats()["total"], fb.stats()["total"]
        tasks = self.run_tasks(srv, key, 30, "phase3")
        fa_new, fb_new = fa.stats()["total"] - fa0, fb.stats()["total"] - fb0
        self.assertEqual(fa_new + fb_new, 30, "one call per task once both are healthy")
        self.assertGreaterEqual(fa_new, 5, "a did not get traffic back: %d of 30" % fa_new)
        self.assertGreaterEqual(fb_new, 5, fb_new)
        on_a = [t for t in tasks if t["provider"] == "a"]
        self.assertEqual(len(on_a), fa_new)
        for t in tasks:
            self.assertEqual(len(t["upstream_attempts"]), 1, t)
            self.assertSucceededOn(t, t["provider"])

    # -- 429: Retry-After and the route's cooldown ---------------------------------------

    def test_429_retry_after_honoured_and_route_cools_down(self):
        delay = 3.0
        fa, fb = self.fake(), self.fake()
        fa.script([{"kind": "error", "status": 429, "retry_delay": "%gs" % delay}], api="gemini")
        srv, key = self.server(
            [u.gemini_provider("a", fa.gemini_base_url), u.gemini_provider("b", fb.gemini_base_url)],
            # a is (all but) always the first choice while it is usable.
            {MODEL: [u.route("a", weight=MAX_WEIGHT), u.route("b", weight=1)]})
        p1 = "rate limited task"
        uid = srv.create(key, prompt=p1)
        (r429,) = h.wait_for(lambda: [r for r in fa.requests() if r["status"] == 429],
                             what="the 429 on route a")
        # The fake has sent the 429; imgate takes note of it a moment later.
        ra = h.wait_for(lambda: (lambda r: r if r["errors"].get("rate_limited") else None)(
            u.route_health(srv, MODEL, "a")), what="route a to record the 429")
        self.assertGreater(ra["cooldown_ms"], 0, ra)
        self.assertLessEqual(ra["cooldown_ms"], delay * 1000, ra)
        self.assertEqual(ra["errors"].get("rate_limited"), 1, ra)
        cool_end = r429["received_at"] + delay

        # While a cools down, new tasks go to b even though a weighs a million times more.
        others = self.run_tasks(srv, key, 5, "during cooldown")
        in_window = [t for t in others
                     if u.attempt_times(t["upstream_attempts"][0])[0] < cool_end - 0.05]
        self.assertGreaterEqual(len(in_window), 3, "too slow to test the cooldown: %r" % others)
        for t in in_window:
            self.assertEqual(self.attempts(t), [("b", 200, "none")], t)

        t = srv.wait_final(uid, key)
        self.assertSucceededOn(t, "b")
        self.assertEqual(self.attempts(t), [("a", 429, "rate_limited"), ("b", 200, "none")], t)
        self.assertEqual(t["upstream_attempts"][0]["error_code"], "upstream_rate_limited", t)
        (retry,) = u.requests_for(fb, p1)
        waited = retry["received_at"] - r429["received_at"]
        self.assertGreaterEqual(waited, delay, "retried %.3f s after RetryInfo %gs" % (
            waited, delay))
        self.assertEqual(u.requests_for(fa, p1), [r429])

    # -- failover: one provider is dead ------------------------------------------------------

    def test_task_survives_a_dead_provider(self):
        for dead in ("closed port", "connection reset"):
            with self.subTest(dead=dead):
                good = self.fake()
                if dead == "closed port":
                    dead_url, bad = "http://127.0.0.1:%d" % u.closed_port(), None
                else:
                    bad = self.fake()
                    bad.script([{"kind": "reset"}], api="gemini", then="repeat_last")
                    dead_url = bad.gemini_base_url
                srv, key = self.server(
                    [u.gemini_provider("dead", dead_url), u.gemini_provider("good", good.url)],
                    {"nano-banana-pro": [
                        u.route("dead", "gemini-3-pro-image-preview", weight=1000),
                        u.route("good", "gemini-3-pro-image", weight=1)]},
                    # One retry only: it must go to the other route.
                    retry={"max_attempts": 2})
                tasks = self.run_tasks(srv, key, 6, dead, model="nano-banana-pro")
                failovers = 0
                for t in tasks:
                    self.assertSucceededOn(t, "good")
                    log = t["upstream_attempts"]
                    if len(log) == 2:
                        failovers += 1
                        a = log[0]
                        self.assertEqual((a["provider"], a["upstream_model"], a["http_status"],
                                          a["error_class"], a["error_code"]),
                                         ("dead", "gemini-3-pro-image-preview", None, "network",
                                          "upstream_unavailable"), t)
                    self.assertEqual(log[-1]["upstream_model"], "gemini-3-pro-image", t)
                self.assertGreaterEqual(failovers, 1, "the dead route was never tried")
                recs = good.requests(api="gemini")
                self.assertEqual(len(recs), 6)
                self.assertTrue(all(r["path"] == "/v1beta/models/gemini-3-pro-image:"
                                    "generateContent" for r in recs), recs)
                if bad is not None:
                    self.assertGreaterEqual(bad.stats()["by_status"].get("reset", 0), failovers)
                rd = u.route_health(srv, "nano-banana-pro", "dead")
                self.assertEqual(rd["errors"].get("network"), failovers, rd)
                self.assertEqual(rd["successes"], 0, rd)
                srv.stop()

    # -- what ends a task at once ------------------------------------------------------------

    def test_non_retryable_errors_end_the_task_at_once(self):
        cases = [("bad request", {"kind": "error", "status": 400}, "failed",
                  "upstream_bad_request", 400, "bad_request"),
                 ("prompt blocked", {"kind": "block_prompt"}, "moderated", "content_moderated",
                  200, "moderated"),
                 ("image blocked", {"kind": "finish_reason", "reason": "IMAGE_SAFETY"},
                  "moderated", "content_moderated", 200, "moderated")]
        fa, fb = self.fake(), self.fake()
        srv, key = self.server(
            [u.gemini_provider("a", fa.gemini_base_url), u.gemini_provider("b", fb.gemini_base_url)],
            {MODEL: [u.route("a"), u.route("b")]}, retry={"max_attempts": 5})
        for label, step, state, code, status, cls in cases:
            with self.subTest(label):
                for f in (fa, fb):  # whichever route is picked answers the same
                    f.reset()
                    f.script([step], api="gemini", then="repeat_last")
                (t,) = self.run_tasks(srv, key, 1, label)
                self.assertEqual(t["status"], state, t)
                self.assertEqual(t["error"]["code"], code, t)
                self.assertEqual(len(t["upstream_attempts"]), 1, t)
                a = t["upstream_attempts"][0]
                self.assertEqual((a["http_status"], a["error_class"], a["error_code"]),
                                 (status, cls, code), t)
                self.assertEqual(fa.stats()["total"] + fb.stats()["total"], 1,
                                 "another route was tried after a final answer")

    def test_max_attempts_bounds_retries_and_failover_prefers_untried_routes(self):
        fa, fb = self.fake(), self.fake()
        for f in (fa, fb):
            f.script(ALWAYS_503, api="gemini", then="repeat_last")
        srv, key = self.server(
            [u.gemini_provider("a", fa.gemini_base_url), u.gemini_provider("b", fb.gemini_base_url)],
            {MODEL: [u.route("a"), u.route("b")]}, retry={"max_attempts": 4})
        tasks = self.run_tasks(srv, key, 5, "always 503")
        for t in tasks:
            self.assertEqual(t["status"], "failed", t)
            self.assertEqual(t["error"]["code"], "upstream_unavailable", t)
            log = self.attempts(t)
            self.assertEqual(len(log), 4, t)
            self.assertTrue(all(a[1:] == (503, "server") for a in log), t)
            self.assertEqual({log[0][0], log[1][0]}, {"a", "b"},
                             "the first retry did not go to the other route: %r" % t)
        self.assertEqual(fa.stats()["total"] + fb.stats()["total"], 5 * 4)

    def test_deadline_bounds_retries(self):
        deadline_ms, backoff_ms = 2000, 400
        fa = self.fake()
        fa.script(ALWAYS_503, api="gemini", then="repeat_last")
        srv, key = self.server(
            [u.gemini_provider("a", fa.gemini_base_url)], {MODEL: [u.route("a")]},
            retry={"max_attempts": 20, "deadline_ms": deadline_ms,
                   "backoff_base_ms": backoff_ms, "backoff_max_ms": backoff_ms})
        (t,) = self.run_tasks(srv, key, 1, "deadline")
        self.assertEqual(t["status"], "failed", t)
        self.assertEqual(t["error"]["code"], "upstream_unavailable", t)
        n = len(t["upstream_attempts"])
        # Retries come 200..400 ms apart: within 2 s at least 4, and nowhere near 20.
        self.assertTrue(4 <= n <= deadline_ms // (backoff_ms // 2) + 1, t)
        self.assertEqual(fa.stats()["total"], n)
        run = h.parse_time(t["finished_at"]) - h.parse_time(t["started_at"])
        # It gives up when the next retry would land past the deadline, not before.
        self.assertGreaterEqual(run, (deadline_ms - backoff_ms) / 1000 - 0.05, t)
        self.assertLess(run, deadline_ms / 1000 + 1.5, t)

    def test_open_breaker_past_the_deadline_fails_without_calling(self):
        fa = self.fake()
        fa.script(ALWAYS_503, api="gemini", then="repeat_last")
        srv, key = self.server(
            [u.gemini_provider("a", fa.gemini_base_url)], {MODEL: [u.route("a")]},
            retry={"max_attempts": 3, "deadline_ms": 5000},
            breaker={"failures": 1, "open_ms": 60000})
        (t,) = self.run_tasks(srv, key, 1, "opens the breaker")
        # The first 503 opens the breaker for longer than the task may wait.
        self.assertEqual(t["status"], "failed", t)
        self.assertEqual(t["error"]["code"], "no_provider_available", t)
        self.assertEqual(self.attempts(t), [("a", 503, "server")], t)
        (t,) = self.run_tasks(srv, key, 1, "finds it open")
        self.assertEqual(t["status"], "failed", t)
        self.assertEqual(t["error"]["code"], "no_provider_available", t)
        self.assertEqual(t["upstream_attempts"], [], t)
        self.assertEqual(fa.stats()["total"], 1)
        self.assertEqual(u.route_health(srv, MODEL, "a")["state"], "open")

    def test_deadline_cuts_a_hanging_attempt(self):
        deadline_ms = 1500
        fa = self.fake()
        fa.script([{"kind": "hang"}], api="gemini", then="repeat_last")
        srv, key = self.server(
            [u.gemini_provider("a", fa.gemini_base_url, timeout_ms=600000)],
            {MODEL: [u.route("a")]}, retry={"max_attempts": 3, "deadline_ms": deadline_ms})
        (t,) = self.run_tasks(srv, key, 1, "hang")
        self.assertEqual(t["status"], "failed", t)
        self.assertEqual(t["error"]["code"], "upstream_timeout", t)
        self.assertEqual(self.attempts(t), [("a", None, "timeout")], t)
        dur = t["upstream_attempts"][0]["duration_ms"]
        self.assertGreaterEqual(dur, deadline_ms - 100, t)
        self.assertLess(dur, deadline_ms + 2000, t)
        self.assertEqual(fa.stats()["total"], 1)


if __name__ == "__main__":
    unittest.main()
