"""test_recovery.py - no task is lost and none finishes twice across kill -9,
graceful stops and restarts on the same data folder.

The simulated provider is slowed to 60 s so tasks are reliably caught running;
the restarted server gets a short delay so they then finish quickly. The
`msg=task_finished task=<uid>` log line must appear exactly once per task over
the stderr of every run."""

import collections
import shutil
import tempfile
import time
import unittest

import harness as h

EMAIL = "recovery@example.com"
SLOW = 60000
FAST = 100


class RecoveryTest(h.ServerTestCase):

    def data_dir(self):
        d = tempfile.mkdtemp(prefix="imgate-e2e-recovery-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def statuses(self, srv, key, uids):
        return {u: srv.task(u, key) for u in uids}

    def wait_running(self, srv, key, uids, n_running, expect_attempts):
        """Polls until exactly n_running tasks run and the rest are queued,
        checking that max_in_flight is never exceeded. expect_attempts(uid)
        gives the attempt number a task must show while it runs in this
        process (so a stale view of an earlier run does not count)."""
        def check():
            tasks = self.statuses(srv, key, uids)
            count = collections.Counter(t["status"] for t in tasks.values())
            self.assertLessEqual(count["running"], n_running,
                                 "more than max_in_flight running: %r" % count)
            running = [u for u, t in tasks.items() if t["status"] == "running"]
            if count["running"] == n_running and count["queued"] == len(uids) - n_running and \
                    all(tasks[u]["attempts"] == expect_attempts(u) for u in running):
                return tasks
            return None

        tasks = h.wait_for(check, what="%d running tasks" % n_running)
        for t in tasks.values():
            self.assertTimestamps(t)
        return [u for u, t in tasks.items() if t["status"] == "running"]

    def finish_all(self, srv, key, uids, expected_attempts, runs):
        """Waits until every task succeeded, checks attempts and the image,
        and waits for each task's task_finished line in the stderr of runs
        (the servers so far: a drain may have finished a task before)."""
        for u in uids:
            t = srv.wait_final(u, key)
            self.assertEqual(t["status"], "succeeded", t)
            self.assertEqual(t["attempts"], expected_attempts[u], "attempts of %s: %r" % (u, t))
            self.assertEqual(len(t["images"]), 1, t)
            self.assertEqual(len(t["result_urls"]), 1, t)
            self.assertTimestamps(t)
            self.assertImages(srv, t, 1024, 1024)
        for u in uids:
            h.wait_for(lambda: h.count_finished(runs, u) > 0, what="task_finished of %s" % u)

    def assert_finished_once(self, servers, uids, expected_attempts):
        for u in uids:
            lines = h.finished_lines(servers, u)
            self.assertEqual(len(lines), 1, "task_finished lines for %s: %r" % (u, lines))
            self.assertRegex(lines[0], r"\sstate=succeeded(\s|$)")
            self.assertRegex(lines[0], r"\sattempt=%d(\s|$)" % expected_attempts[u])

    def config(self, delay_ms, **engine):
        eng = {"max_in_flight": 2}
        eng.update(engine)
        return {"engine": eng, "sim": {"delay_ms": delay_ms}}

    # ------------------------------------------------------------------

    def test_kill9_reruns_running_tasks_exactly_once(self):
        d = self.data_dir()
        s1 = self.start_server(data_dir=d, accounts=[EMAIL], config=self.config(SLOW))
        key = s1.keys[EMAIL]
        uids = [s1.create(key, prompt="recovery task %d" % i) for i in range(8)]
        running = self.wait_running(s1, key, uids, 2, lambda u: 1)
        s1.kill9()
        self.assertEqual(h.finished_lines([s1], running[0]), [])

        s2 = self.start_server(data_dir=d, config=self.config(FAST))
        expected = {u: (2 if u in running else 1) for u in uids}
        self.finish_all(s2, key, uids, expected, [s1, s2])
        s2.stop()
        self.assert_finished_once([s1, s2], uids, expected)

    def test_double_kill9(self):
        d = self.data_dir()
        s1 = self.start_server(data_dir=d, accounts=[EMAIL], config=self.config(SLOW))
        key = s1.keys[EMAIL]
        uids = [s1.create(key, prompt="double kill %d" % i) for i in range(8)]
        run1 = self.wait_running(s1, key, uids, 2, lambda u: 1)
        s1.kill9()

        # Restart still slow, catch two tasks running again, kill again.
        s2 = self.start_server(data_dir=d, config=self.config(SLOW))
        run2 = self.wait_running(s2, key, uids, 2, lambda u: 2 if u in run1 else 1)
        s2.kill9()

        s3 = self.start_server(data_dir=d, config=self.config(FAST))
        expected = {u: 1 + (u in run1) + (u in run2) for u in uids}
        self.finish_all(s3, key, uids, expected, [s1, s2, s3])
        s3.stop()
        self.assert_finished_once([s1, s2, s3], uids, expected)

    def test_sigterm_with_queued_tasks(self):
        # One slot, 60 s of work, 300 ms of drain: the running task cannot
        # finish, so it stays for the next start; the queued ones wait too.
        d = self.data_dir()
        s1 = self.start_server(data_dir=d, accounts=[EMAIL],
                               config=self.config(SLOW, max_in_flight=1, drain_timeout_ms=300))
        key = s1.keys[EMAIL]
        uids = [s1.create(key, prompt="graceful %d" % i) for i in range(4)]
        running = self.wait_running(s1, key, uids, 1, lambda u: 1)
        t0 = time.monotonic()
        s1.stop()  # asserts exit code 0
        self.assertLess(time.monotonic() - t0, 30,
                        "SIGTERM took longer than half the sim delay: drain timeout ignored?")
        self.assertEqual(sum(h.count_finished([s1], u) for u in uids), 0)

        s2 = self.start_server(data_dir=d, config=self.config(FAST, max_in_flight=1))
        expected = {u: (2 if u in running else 1) for u in uids}
        self.finish_all(s2, key, uids, expected, [s1, s2])
        s2.stop()
        self.assert_finished_once([s1, s2], uids, expected)

    def test_sigterm_drains_running_task(self):
        # A long drain: the running task is finished before the exit.
        d = self.data_dir()
        s1 = self.start_server(data_dir=d, accounts=[EMAIL],
                               config=self.config(3000, max_in_flight=1, drain_timeout_ms=50000))
        key = s1.keys[EMAIL]
        uids = [s1.create(key, prompt="drain %d" % i) for i in range(3)]
        running = self.wait_running(s1, key, uids, 1, lambda u: 1)
        s1.stop()
        self.assertEqual(h.count_finished([s1], running[0]), 1,
                         "the running task was not finished during the drain")

        s2 = self.start_server(data_dir=d, config=self.config(FAST, max_in_flight=1))
        expected = {u: 1 for u in uids}
        self.finish_all(s2, key, [u for u in uids if u not in running], expected, [s1, s2])
        t = s2.task(running[0], key)
        self.assertEqual(t["status"], "succeeded", t)
        self.assertEqual(t["attempts"], 1, t)
        self.assertImages(s2, t, 1024, 1024)
        s2.stop()
        self.assert_finished_once([s1, s2], uids, expected)

    def test_results_survive_restart(self):
        d = self.data_dir()
        s1 = self.start_server(data_dir=d, accounts=[EMAIL], config=self.config(FAST))
        key = s1.keys[EMAIL]
        uid = s1.create(key, prompt="kept across restarts", model="nano-banana-2",
                        aspect_ratio="16:9", resolution="512")
        t1 = s1.wait_final(uid, key)
        before = s1.fetch_url(t1["images"][0]["url"]).body
        s1.stop()

        s2 = self.start_server(data_dir=d, config=self.config(FAST))
        t2 = s2.task(uid, key)
        for field in ("status", "attempts", "created_at", "started_at", "finished_at",
                      "model", "aspect_ratio", "resolution"):
            self.assertEqual(t2[field], t1[field], field)
        bodies = self.assertImages(s2, t2, 688, 384)
        self.assertEqual(bodies[0], before)
        s2.stop()
        self.assertEqual(h.count_finished([s1, s2], uid), 1)


if __name__ == "__main__":
    unittest.main()
