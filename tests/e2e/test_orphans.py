"""test_orphans.py - what a crash leaves in the blob store is collected; what
rows refer to is not.

Run 1 submits a task with a reference image and is killed (SIGKILL) while the
task runs. Before run 2 the test plants, in the data folder, what a crash can
leave: the killed run's result (`1-0.png`), the inputs of a submit whose row
never committed, and temporary files of cut-short puts, some made old with
os.utime and some left young. Run 2 re-runs the task (it finishes as
`2-0.png`); its orphan collector, at start and then every 200 ms, must remove
the old orphans and keep the young ones, the live task's inputs, the
committed result (made old too) and files outside the task prefixes. Every
wait polls with a deadline; the collector's pass counter in /metrics tells
when a pass has looked at everything planted.
"""

import os
import re
import shutil
import tempfile
import time
import unittest
import uuid

import harness as h

EMAIL = "orphans@example.com"
SLOW_MS = int(max(120.0, 3 * h.DEADLINE) * 1000)  # run 1 never finishes before the kill
THREE_HOURS = 3 * 3600


def backdate(path, seconds=THREE_HOURS):
    t = time.time() - seconds
    os.utime(path, (t, t))


def plant(path, data=b"orphan", age=THREE_HOURS):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if age:
        backdate(path, age)


class OrphanCollectorTest(h.ServerTestCase):

    def metrics(self, srv):
        with open(os.path.join(srv.data_dir, "admin_token"), encoding="ascii") as f:
            admin = f.read().strip()
        r = srv.get("/metrics", headers={"Authorization": "Bearer " + admin})
        self.assertEqual(r.status, 200, r)
        out = {}
        for line in r.body.decode().splitlines():
            m = re.match(r'^(imgate_orphan\w+(?:\{kind="\w+"\})?) (\d+)$', line)
            if m:
                out[m.group(1)] = int(m.group(2))
        return out

    def passes(self, srv):
        return self.metrics(srv).get("imgate_orphan_passes_total", 0)

    def wait_passes(self, srv, more=2):
        """Waits until `more` further passes have completed: the first may have
        begun before the caller's last change, the second began after it."""
        start = self.passes(srv)
        h.wait_for(lambda: self.passes(srv) >= start + more, what="%d collector passes" % more)

    def test_crash_leftovers_are_collected(self):
        data = tempfile.mkdtemp(prefix="imgate-e2e-orphans-")
        self.addCleanup(shutil.rmtree, data, True)
        blobs = os.path.join(data, "blobs")
        fast = {"retention_orphan_interval_ms": 200}

        # ---- run 1: the task is running with its reference image when the server dies
        s1 = self.start_server(data_dir=data, accounts=[EMAIL],
                               config=dict(fast, sim={"delay_ms": SLOW_MS}))
        key = s1.keys[EMAIL]
        uid = s1.create(key, prompt="outlives a crash", model="nano-banana",
                        image_urls=[h.b64(h.make_png(8, 8))])
        s1.poll_until(uid, key, lambda t: t["status"] == "running")
        live_input = os.path.join(blobs, "inputs", uid, "0.png")
        self.assertTrue(os.path.isfile(live_input))
        # Old as it is, a running task's input is referenced: passes keep it.
        backdate(live_input)
        self.wait_passes(s1)
        self.assertTrue(os.path.isfile(live_input))
        self.assertEqual(self.metrics(s1).get('imgate_orphans_removed_total{kind="object"}'), 0)
        os.utime(live_input)  # young again: run 2's engine, not the collector, deletes it
        s1.kill9()

        # ---- what the crash left, as it would be on disk
        results = os.path.join(blobs, "results", uid)
        killed_run = os.path.join(results, "1-0.png")
        plant(killed_run, h.make_png(4, 4))
        lost_submit = os.path.join(blobs, "inputs", str(uuid.uuid4()), "0.png")
        plant(lost_submit)
        old_temp = os.path.join(results, ".~put-0011223344556677")
        plant(old_temp)
        young_temp = os.path.join(results, ".~put-8899aabbccddeeff")
        plant(young_temp, age=0)
        young_input = os.path.join(blobs, "inputs", str(uuid.uuid4()), "0.png")
        plant(young_input, age=0)  # a submit in progress: its row is not committed yet
        not_ours = os.path.join(blobs, "elsewhere", "keep.png")
        plant(not_ours)

        # ---- run 2: the task re-runs and finishes as 2-0.png; the collector cleans up
        s2 = self.start_server(data_dir=data, config=dict(fast, sim={"delay_ms": 50}))
        t = s2.wait_final(uid, key)
        self.assertEqual((t["status"], t["attempts"]), ("succeeded", 2), t)
        committed = os.path.join(results, "2-0.png")
        self.assertTrue(os.path.isfile(committed))
        backdate(committed)  # old, but its row refers to it
        h.wait_for(lambda: not os.path.exists(killed_run), what="the killed run's result removed")
        h.wait_for(lambda: not os.path.exists(lost_submit), what="the lost submit's input removed")
        h.wait_for(lambda: not os.path.exists(old_temp), what="the old temporary file removed")
        self.assertFalse(os.path.exists(os.path.dirname(lost_submit)))  # no empty folder left
        self.wait_passes(s2)

        self.assertTrue(os.path.isfile(committed))
        self.assertTrue(os.path.isfile(young_temp))
        self.assertTrue(os.path.isfile(young_input))
        self.assertTrue(os.path.isfile(not_ours))
        m = self.metrics(s2)
        self.assertEqual(m.get('imgate_orphans_removed_total{kind="object"}'), 2, m)
        self.assertEqual(m.get('imgate_orphans_removed_total{kind="temporary"}'), 1, m)
        self.assertTrue(re.search(r"msg=orphans_collected\s.*removed=\d", s2.stderr_text()))

        # The result still downloads, whole.
        r = s2.fetch_url(t["images"][0]["url"])
        self.assertEqual(r.status, 200, r)
        h.png_verify(r.body)
        # The final task's input went with the engine, as always.
        h.wait_for(lambda: not os.path.exists(live_input), what="the final task's input deleted")

        # A crash leftover found while the server runs goes at the next pass.
        later = os.path.join(results, "7-0.png")
        plant(later)
        h.wait_for(lambda: not os.path.exists(later), what="a later orphan removed")
        self.assertTrue(os.path.isfile(committed))


if __name__ == "__main__":
    unittest.main()
