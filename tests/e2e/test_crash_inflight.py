"""test_crash_inflight.py - kill -9 with 200 upstream calls in flight; every task ends once.

imgate talks to the fake Gemini upstream (tests/fakes), scripted to answer
slowly. 200 tasks are submitted and the test waits until the fake holds all
200 generateContent calls open at once (and imgate reports 200 running), then
kills imgate with SIGKILL. The fake is re-scripted to answer fast, imgate is
restarted on the same data folder, and every task must end exactly once:
succeeded, one image, one `task_finished` line over both runs (in the second
run's log, never in the first), the attempt log showing the re-run (run 2),
exactly one upstream call per task in each run, and the account's tasks in
the database exactly the 200 submitted, no more, no fewer.

The slow delay is never waited for: it only has to outlast getting the 200
calls in flight and the kill, which the polls bound by their deadline; it is
set well above that so that no answer can come before the kill (checked: the
fake has sent no answer when imgate is killed).
"""

import collections
import concurrent.futures
import os
import re
import shutil
import sqlite3
import tempfile
import unittest

import harness as h
from upstream_util import start_fake

EMAIL = "crash@example.com"
FAKE_KEY = "fake-gemini-key-crash"
MODEL = "nano-banana"
UPSTREAM_MODEL = "gemini-2.5-flash-image"
N_TASKS = 200
SLOW_MS = int(max(120.0, 3 * h.DEADLINE) * 1000)   # run 1: never answered before the kill
FAST_MS = 50                                        # run 2


def setUpModule():
    # A developer's real keys must not turn this test into real upstream calls.
    for k in ("GEMINI_API_KEY", "GEMINI_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        os.environ.pop(k, None)


def log_lines(srv, event, uid):
    """srv's `msg=event ... task=uid` lines."""
    rx = re.compile(r"(^|\s)msg=%s(\s.*)?\stask=%s(\s|$)" % (re.escape(event), re.escape(uid)))
    return [line for line in srv.stderr_snapshot() if rx.search(line)]


def task_ids_logged(srv, event):
    rx = re.compile(r"(^|\s)msg=%s(\s.*)?\stask=([0-9a-f-]{36})(\s|$)" % re.escape(event))
    out = collections.Counter()
    for line in srv.stderr_snapshot():
        m = rx.search(line)
        if m:
            out[m.group(3)] += 1
    return out


def prompt_of(rec):
    parts = (((rec.get("json") or {}).get("contents") or [{}])[0]).get("parts") or []
    texts = [p["text"] for p in parts if isinstance(p, dict) and "text" in p]
    return texts[0] if len(texts) == 1 else None


class CrashInFlightTest(h.ServerTestCase):

    def config(self, fake):
        return {
            "providers": [{"name": "fake-gemini", "kind": "gemini",
                           "base_url": fake.gemini_base_url, "api_key": FAKE_KEY,
                           "timeout_ms": min(SLOW_MS + 60000, 3600000)}],
            "routes": {MODEL: [{"provider": "fake-gemini", "upstream_model": UPSTREAM_MODEL}]},
            "engine": {"max_in_flight": 256},
        }

    def metrics(self, srv):
        with open(os.path.join(srv.data_dir, "admin_token"), encoding="ascii") as f:
            admin = f.read().strip()
        r = srv.get("/metrics", headers={"Authorization": "Bearer " + admin})
        self.assertEqual(r.status, 200, r)
        out = {}
        for line in r.body.decode().splitlines():
            m = re.match(r"^(imgate_tasks_\w+) (\d+)$", line)
            if m:
                out[m.group(1)] = int(m.group(2))
        return out

    def test_kill9_with_200_in_flight(self):
        data = tempfile.mkdtemp(prefix="imgate-e2e-crash-")
        self.addCleanup(shutil.rmtree, data, True)
        fake = start_fake(self.addCleanup, "--gemini-key", FAKE_KEY)
        fake.script([{"delay_ms": SLOW_MS}], api="gemini", then="repeat_last")

        # ---- run 1: 200 calls in flight, then SIGKILL
        s1 = self.start_server(data_dir=data, accounts=[EMAIL], config=self.config(fake))
        key = s1.keys[EMAIL]
        prompts = ["crash test task %03d" % i for i in range(N_TASKS)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            uids = list(pool.map(lambda p: s1.create(key, prompt=p, model=MODEL,
                                                     aspect_ratio="1:1"), prompts))
        self.assertEqual(len(set(uids)), N_TASKS)
        prompt_uid = dict(zip(prompts, uids))

        h.wait_for(lambda: fake.stats()["in_flight"] == N_TASKS,
                   what="%d upstream calls in flight" % N_TASKS)
        run1 = fake.requests(api="gemini")
        self.assertEqual(sorted(prompt_of(r) for r in run1), sorted(prompts),
                         "run 1: not exactly one upstream call per task")
        for r in run1:
            self.assertEqual((r["endpoint"], r["model"]), ("generateContent", UPSTREAM_MODEL))
        for u in uids:
            t = s1.task(u, key)
            self.assertEqual((t["status"], t["attempts"], t["provider"]),
                             ("running", 1, "fake-gemini"), t)
            self.assertEqual(t["upstream_attempts"], [], t)  # none has ended
        m = self.metrics(s1)
        self.assertEqual((m.get("imgate_tasks_running"), m.get("imgate_tasks_queued")),
                         (N_TASKS, 0), m)
        h.wait_for(lambda: len(task_ids_logged(s1, "attempt_started")) == N_TASKS,
                   what="attempt_started lines of run 1")
        stats = fake.stats()
        self.assertEqual((stats["in_flight"], stats["total"]), (N_TASKS, N_TASKS), stats)
        self.assertEqual(dict(stats["by_status"]), {}, "the fake answered before the kill")
        s1.kill9()
        self.assertEqual(s1.returncode, -9)

        # ---- run 2: fast answers, same data folder
        fake.reset()
        fake.script([{"delay_ms": FAST_MS}], api="gemini", then="repeat_last")
        s2 = self.start_server(data_dir=data, config=self.config(fake))
        s2.wait_stderr(r"msg=engine_recovered\s.*requeued_running=%d\s+queued=%d(\s|$)"
                       % (N_TASKS, N_TASKS))
        h.wait_for(lambda: len(task_ids_logged(s2, "task_finished")) >= N_TASKS,
                   what="task_finished of every task in run 2")

        for u in uids:
            t = s2.wait_final(u, key)
            self.assertEqual(t["status"], "succeeded", t)
            self.assertIsNone(t["error"], t)
            self.assertEqual(t["attempts"], 2, t)
            self.assertEqual(t["provider"], "fake-gemini", t)
            self.assertEqual(len(t["images"]), 1, t)
            self.assertEqual(t["result_urls"], [t["images"][0]["url"]], t)
            self.assertTimestamps(t)
            attempts = t["upstream_attempts"]
            self.assertEqual(len(attempts), 1, t)
            self.assertEqual((attempts[0]["run"], attempts[0]["provider"],
                              attempts[0]["upstream_model"], attempts[0]["http_status"],
                              attempts[0]["error_class"]),
                             (2, "fake-gemini", UPSTREAM_MODEL, 200, "none"), t)
            img = t["images"][0]
            r = s2.fetch_url(img["url"])
            self.assertEqual(r.status, 200, r)
            self.assertEqual(len(r.body), img["bytes"], img)
            self.assertEqual(h.png_verify(r.body), (img["width"], img["height"]), img)

        run2 = fake.requests(api="gemini")
        self.assertEqual(sorted(prompt_of(r) for r in run2), sorted(prompts),
                         "run 2: not exactly one upstream call per task")

        s2.stop()  # exit 0: under ASan, no leaks

        # ---- the logs: one end per task, in run 2; the re-run in the attempt log
        fin1, fin2 = task_ids_logged(s1, "task_finished"), task_ids_logged(s2, "task_finished")
        self.assertEqual(fin1, collections.Counter(), "tasks finished in the killed run")
        self.assertEqual(fin2, collections.Counter({u: 1 for u in uids}),
                         "task_finished not exactly once per task in run 2")
        for u in uids:
            lines = h.finished_lines([s1, s2], u)
            self.assertEqual(len(lines), 1, lines)
            self.assertRegex(lines[0], r"\sstate=succeeded(\s|$)")
            self.assertRegex(lines[0], r"\sattempt=2(\s|$)")
            self.assertRegex(lines[0], r"\simages=1(\s|$)")
            for srv, run in ((s1, 1), (s2, 2)):
                started = log_lines(srv, "attempt_started", u)
                self.assertEqual(len(started), 1, started)
                self.assertRegex(started[0], r"\srun=%d\s" % run)

        # ---- the account's tasks in the database: exactly the 200 submitted
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(data, "imgate.db"), uri=True)
        self.addCleanup(db.close)
        rows = db.execute("SELECT t.id, t.state, t.attempts, t.prompt FROM tasks t "
                          "JOIN accounts a ON a.id = t.account_id WHERE a.email = ?",
                          (EMAIL,)).fetchall()
        self.assertEqual(len(rows), N_TASKS)
        self.assertEqual(sorted(r[0] for r in rows), sorted(uids))
        for tid, state, attempts, prompt in rows:
            self.assertEqual((state, attempts, prompt_uid[prompt]), ("succeeded", 2, tid))
        self.assertEqual(db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0], N_TASKS)
        per_task = dict(db.execute("SELECT task_id, COUNT(*) FROM task_results "
                                   "GROUP BY task_id").fetchall())
        self.assertEqual(per_task, {u: 1 for u in uids})
        attempt_rows = db.execute("SELECT task_id, run FROM task_attempts").fetchall()
        self.assertEqual(sorted(attempt_rows), sorted((u, 2) for u in uids))


if __name__ == "__main__":
    unittest.main()
