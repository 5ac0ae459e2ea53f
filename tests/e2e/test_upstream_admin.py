"""test_upstream_admin.py - the operator's view of the upstreams and the provider
env shortcuts.

/admin/providers and /metrics: refused (401) without the admin token, with a wrong
one or with an account key; the token comes from configuration, IMGATE_ADMIN_TOKEN
or DATA/admin_token; the numbers move with traffic (attempts and outcomes per route
and class, in-flight gauges, breaker state).

Env shortcuts: GEMINI_API_KEY + GEMINI_BASE_URL and OPENAI_API_KEY + OPENAI_BASE_URL
pointing at the fake route every model of that kind there, with no providers in the
configuration file, and the key travels in that API's header.
"""

import os
import re
import stat
import unittest

import harness as h
import upstream_util as u

EMAIL = "admin-view@example.com"
G25 = "gemini-2.5-flash-image"
G3PRO = "gemini-3-pro-image-preview"


class AdminEndpointsTest(h.ServerTestCase):

    def assertRefused(self, srv, path, headers):
        r = srv.get(path, headers=headers)
        self.assertError(r, 401, "unauthorized", msg="%s with %r" % (path, headers))
        self.assertEqual(r.headers.get("WWW-Authenticate"), "Bearer", r.headers)
        return r

    def assertAdminWorks(self, srv, token):
        for path, ctype in (("/admin/providers", "application/json"),
                            ("/metrics", "text/plain; version=0.0.4")):
            r = u.admin_get(srv, path, token)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.headers.get("Content-Type"), ctype, r.headers)

    def test_admin_token_required(self):
        srv = self.start_server(accounts=[EMAIL], config={"admin_token": u.ADMIN_TOKEN})
        account_key = srv.keys[EMAIL]
        for path in ("/admin/providers", "/metrics"):
            with self.subTest(path=path):
                self.assertRefused(srv, path, {})
                for bad in ("Bearer wrong-token", "Bearer " + u.ADMIN_TOKEN + "x",
                            "Bearer " + u.ADMIN_TOKEN[:-1], "Basic " + u.ADMIN_TOKEN,
                            u.ADMIN_TOKEN, "Bearer ", "Bearer " + account_key):
                    self.assertRefused(srv, path, {"Authorization": bad})
        self.assertAdminWorks(srv, u.ADMIN_TOKEN)
        # The admin token is not an account key either.
        r = srv.get("/api/banana/00000000-0000-0000-0000-000000000000",
                    headers={"Authorization": "Bearer " + u.ADMIN_TOKEN})
        self.assertEqual(r.status, 401, r)

    def test_admin_token_from_env_and_from_the_data_folder(self):
        env_token = "env-admin-token-42"
        srv = self.start_server(env={"IMGATE_ADMIN_TOKEN": env_token})
        self.assertAdminWorks(srv, env_token)
        self.assertRefused(srv, "/metrics", {"Authorization": "Bearer " + u.ADMIN_TOKEN})
        srv.stop()

        srv = self.start_server()  # no token configured: DATA/admin_token, made at first start
        path = os.path.join(srv.data_dir, "admin_token")
        self.assertIn(path, srv.stdout_text())
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, encoding="ascii") as f:
            token = f.read().strip()
        self.assertRegex(token, r"^[0-9a-f]{32}$")
        self.assertAdminWorks(srv, token)
        self.assertRefused(srv, "/admin/providers", {"Authorization": "Bearer " + env_token})
        srv.stop()
        srv = self.start_server(data_dir=srv.data_dir)  # kept across restarts
        self.assertAdminWorks(srv, token)

    def test_numbers_move_with_traffic(self):
        fake = u.start_fake(self.addCleanup)
        srv = self.start_server(accounts=[EMAIL], config={
            "providers": [u.gemini_provider("g", fake.gemini_base_url, max_concurrency=4),
                          u.gemini_provider("h", fake.gemini_base_url)],
            "routes": {"nano-banana": [u.route("g", weight=3)],
                       "nano-banana-pro": [u.route("h")]},
            "retry": {"max_attempts": 2, "backoff_base_ms": 10, "backoff_max_ms": 20},
            "breaker": {"failures": 2, "open_ms": 120000},
            "admin_token": u.ADMIN_TOKEN})
        key = srv.keys[EMAIL]
        g = {"model": "nano-banana", "provider": "g"}
        hp = {"model": "nano-banana-pro", "provider": "h"}

        # Before any traffic.
        doc = u.providers_doc(srv)
        self.assertEqual(doc["providers"], [
            {"name": "g", "kind": "gemini", "in_flight": 0, "max_concurrency": 4},
            {"name": "h", "kind": "gemini", "in_flight": 0, "max_concurrency": 0}])
        self.assertEqual([(r["model"], r["provider"], r["upstream_model"], r["weight"])
                          for r in doc["routes"]],
                         [("nano-banana", "g", G25, 3), ("nano-banana-pro", "h", G3PRO, 1),
                          # a model no route names goes to every provider of its kind
                          ("nano-banana-2", "g", "gemini-3.1-flash-image-preview", 1),
                          ("nano-banana-2", "h", "gemini-3.1-flash-image-preview", 1)])
        for r in doc["routes"]:
            self.assertEqual((r["state"], r["attempts"], r["successes"], r["errors"],
                              r["in_flight"], r["breaker_opened"], r["success_rate"]),
                             ("closed", 0, 0, {}, 0, 0, 1.0), r)
        m = u.metrics(srv)
        self.assertEqual(u.metric(m, "imgate_route_attempts_total", upstream_model=G25, **g), 0)
        self.assertEqual(u.metric(m, "imgate_tasks_finished_total"), 0)
        self.assertEqual(u.metric(m, "imgate_route_breaker_open", **hp), 0)

        # One 503 then a slow success on g.
        fake.script([{"kind": "error", "status": 503}, {"kind": "image", "delay_ms": 60}],
                     api="gemini", model=G25)
        uid = srv.create(key, prompt="first")
        self.assertEqual(srv.wait_final(uid, key)["status"], "succeeded")
        m = settled(srv, 1)
        self.assertEqual(u.metric(m, "imgate_route_attempts_total", upstream_model=G25, **g), 2)
        self.assertEqual(u.metric(m, "imgate_route_outcomes_total", **cls("success"), **g), 1)
        self.assertEqual(u.metric(m, "imgate_route_outcomes_total", **cls("server"), **g), 1)
        self.assertEqual(u.metric(m, "imgate_route_success_rate", **g), 0.5)
        self.assertGreaterEqual(u.metric(m, "imgate_route_latency_ms", **g), 60)
        r = u.route_health(srv, "nano-banana", "g")
        self.assertEqual((r["attempts"], r["successes"], r["errors"], r["consecutive_failures"],
                          r["state"]), (2, 1, {"server": 1}, 0, "closed"), r)
        self.assertGreaterEqual(r["latency_ms"], 60, r)

        # A call in flight shows in the gauges while it runs, and leaves them after.
        fake.script([{"kind": "image", "delay_ms": 1500}], api="gemini", model=G25)
        uid = srv.create(key, prompt="slow")

        def in_flight():
            m = u.metrics(srv)
            return (u.metric(m, "imgate_route_in_flight", **g) == 1 and
                    u.metric(m, "imgate_tasks_running") == 1)

        h.wait_for(in_flight, what="the slow call in the in-flight gauges")
        doc = u.providers_doc(srv)
        self.assertEqual(doc["providers"][0]["in_flight"], 1, doc)
        self.assertEqual(doc["routes"][0]["in_flight"], 1, doc)
        self.assertEqual(srv.wait_final(uid, key)["status"], "succeeded")
        m = settled(srv, 2)
        self.assertEqual(u.metric(m, "imgate_route_in_flight", **g), 0)
        self.assertEqual(u.metric(m, "imgate_route_outcomes_total", **cls("success"), **g), 2)
        self.assertEqual(u.providers_doc(srv)["providers"][0]["in_flight"], 0)

        # Two 503s on h open its breaker (failures: 2) for two minutes.
        fake.script(u_always(503), api="gemini", model=G3PRO, then="repeat_last")
        uid = srv.create(key, prompt="breaks", model="nano-banana-pro")
        t = srv.wait_final(uid, key)
        self.assertEqual((t["status"], len(t["upstream_attempts"])), ("failed", 2), t)
        m = u.metrics(srv)
        self.assertEqual(u.metric(m, "imgate_route_breaker_open", **hp), 1)
        self.assertEqual(u.metric(m, "imgate_route_breaker_open", **g), 0)
        self.assertEqual(u.metric(m, "imgate_route_outcomes_total", **cls("server"), **hp), 2)
        self.assertEqual(u.metric(m, "imgate_route_success_rate", **hp), 0)
        r = u.route_health(srv, "nano-banana-pro", "h")
        self.assertEqual((r["state"], r["breaker_opened"], r["consecutive_failures"]),
                         ("open", 1, 2), r)
        self.assertTrue(0 < r["open_for_ms"] <= 120000, r)
        # An open breaker and no other route: the task waits for the breaker (it opens
        # again before the task's 300 s deadline) instead of calling h.
        before = fake.stats()["total"]
        uid = srv.create(key, prompt="waits", model="nano-banana-pro")
        h.wait_for(lambda: u.metric(u.metrics(srv), "imgate_tasks_retrying") == 1,
                   what="the task to wait for the breaker")
        t = srv.task(uid, key)
        self.assertEqual((t["status"], t["upstream_attempts"]), ("running", []), t)
        self.assertEqual(fake.stats()["total"], before)


def settled(srv, finished):
    """The metrics once the engine counts `finished` tasks and runs none: a task shows
    as finished a moment before its slot is given back."""
    def check():
        m = u.metrics(srv)
        return m if (u.metric(m, "imgate_tasks_finished_total") == finished and
                     u.metric(m, "imgate_tasks_running") == 0) else None
    return h.wait_for(check, what="%d finished tasks and none running" % finished)


def cls(name):
    return {"class": name}


def u_always(status):
    return [{"kind": "error", "status": status}]


# ---------------------------------------------------------------- env shortcuts

GEMINI_MODELS = {"nano-banana": G25, "nano-banana-pro": G3PRO,
                 "nano-banana-2": "gemini-3.1-flash-image-preview"}
ENV_GEMINI_KEY = "gk-from-env-0001"
ENV_OPENAI_KEY = "sk-from-env-0002"


class EnvShortcutsTest(h.ServerTestCase):

    def setUp(self):
        self.fake = u.start_fake(self.addCleanup, "--gemini-key", ENV_GEMINI_KEY,
                                 "--openai-key", ENV_OPENAI_KEY)

    def serve(self, env):
        srv = self.start_server(accounts=[EMAIL], env=env,
                                config={"admin_token": u.ADMIN_TOKEN})
        self.assertNotIn("providers", srv.config)  # nothing but the env names the upstreams
        return srv, srv.keys[EMAIL]

    def generate(self, srv, key, model):
        p = "env shortcut %s %s" % (self._testMethodName, model)
        uid = srv.create(key, prompt=p, model=model)
        t = srv.wait_final(uid, key)
        self.assertEqual(t["status"], "succeeded", t)
        r = srv.fetch_url(t["images"][0]["url"])
        self.assertEqual(r.body, u.fake_image("png", p), "not the fake's image")
        (rec,) = u.requests_for(self.fake, p)
        return t, rec

    def assertGeminiCall(self, t, rec, model):
        self.assertEqual(t["provider"], "gemini", t)
        self.assertEqual(rec["path"], "/v1beta/models/%s:generateContent" % GEMINI_MODELS[model])
        self.assertEqual(rec["headers"].get("x-goog-api-key"), ENV_GEMINI_KEY, rec["headers"])
        self.assertNotIn("authorization", rec["headers"])
        self.assertEqual(rec["status"], 200, rec)  # the fake accepted the key

    def assertOpenAICall(self, t, rec):
        self.assertEqual(t["provider"], "openai", t)
        self.assertEqual(rec["path"], "/v1/images/generations")
        self.assertEqual(rec["json"]["model"], "gpt-image-1", rec)
        self.assertEqual(rec["headers"].get("authorization"), "Bearer " + ENV_OPENAI_KEY,
                         rec["headers"])
        self.assertNotIn("x-goog-api-key", rec["headers"])
        self.assertEqual(rec["status"], 200, rec)

    def assertUnavailable(self, srv, key, model):
        r = srv.request("POST", "/api/banana/create-async", key=key,
                        json_body={"prompt": "no route", "model": model})
        self.assertError(r, 400, "model_unavailable", "model")

    def assertRoutes(self, srv, expected):
        doc = u.providers_doc(srv)
        self.assertEqual(sorted((r["model"], r["provider"], r["upstream_model"])
                                for r in doc["routes"]), sorted(expected), doc)
        self.assertNotIn("sim", [p["name"] for p in doc["providers"]], doc)

    def test_gemini_key_and_base_url(self):
        srv, key = self.serve({"GEMINI_API_KEY": ENV_GEMINI_KEY,
                               "GEMINI_BASE_URL": self.fake.gemini_base_url})
        self.assertRegex(srv.stdout_text(), r"provider: gemini \(gemini at %s\)" %
                         re.escape(self.fake.gemini_base_url))
        self.assertRoutes(srv, [(m, "gemini", up) for m, up in GEMINI_MODELS.items()])
        for model in GEMINI_MODELS:
            with self.subTest(model=model):
                t, rec = self.generate(srv, key, model)
                self.assertGeminiCall(t, rec, model)
        # No OpenAI key: gpt-image-1 has no upstream, and is not quietly simulated.
        self.assertUnavailable(srv, key, "gpt-image-1")

    def test_openai_key_and_base_url(self):
        srv, key = self.serve({"OPENAI_API_KEY": ENV_OPENAI_KEY,
                               "OPENAI_BASE_URL": self.fake.openai_base_url})  # ".../v1"
        self.assertRoutes(srv, [("gpt-image-1", "openai", "gpt-image-1")])
        t, rec = self.generate(srv, key, "gpt-image-1")
        self.assertOpenAICall(t, rec)
        for model in GEMINI_MODELS:
            self.assertUnavailable(srv, key, model)

    def test_both_keys_each_in_its_own_header(self):
        srv, key = self.serve({"GEMINI_API_KEY": ENV_GEMINI_KEY,
                               "GEMINI_BASE_URL": self.fake.gemini_base_url + "/",
                               "OPENAI_API_KEY": ENV_OPENAI_KEY,
                               "OPENAI_BASE_URL": self.fake.url})  # without "/v1" works too
        self.assertRoutes(srv, [(m, "gemini", up) for m, up in GEMINI_MODELS.items()] +
                          [("gpt-image-1", "openai", "gpt-image-1")])
        t, rec = self.generate(srv, key, "nano-banana-pro")
        self.assertGeminiCall(t, rec, "nano-banana-pro")
        t, rec = self.generate(srv, key, "gpt-image-1")
        self.assertOpenAICall(t, rec)

    def test_no_key_means_sim(self):
        # A base URL alone, or an empty key, configures nothing: every model is simulated.
        srv, key = self.serve({"GEMINI_API_KEY": "", "GEMINI_BASE_URL": self.fake.url,
                               "OPENAI_BASE_URL": self.fake.openai_base_url})
        self.assertIn("provider: sim", srv.stdout_text())
        for model in list(GEMINI_MODELS) + ["gpt-image-1"]:
            uid = srv.create(key, prompt="simulated", model=model)
            t = srv.wait_final(uid, key)
            self.assertEqual((t["status"], t["provider"]), ("succeeded", "sim"), t)
        self.assertEqual(self.fake.stats()["total"], 0)


if __name__ == "__main__":
    unittest.main()
