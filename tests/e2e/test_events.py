"""test_events.py - GET /api/banana/{uid}/events, a task's server-sent events.

Events in order with numeric ids, a progress estimate while running (once the
model's latency is known), the final event carrying the whole task, then the
end of the stream; Last-Event-ID resumes after the event named; a stream on a
finished task replays and ends; 1,000 streams at once all end correctly; a
client that hangs up mid-stream leaves nothing behind (descriptors back to
where they were; the ASan build's leak check at exit).
"""

import os
import resource
import socket
import time

import harness as h
import sse_util

EMAIL = "events@example.com"
FINAL = ("task.succeeded", "task.failed", "task.moderated", "task.canceled")


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def stored(events):
    """The events with stored ids (progress estimates left out)."""
    return [e for e in events if e.event != "task.progress"]


class EventsTest(h.ServerTestCase):

    def server(self, delay_ms, **config):
        cfg = h.deep_merge({"sim": {"delay_ms": delay_ms, "fail_marker": "FAILME",
                                    "moderate_marker": "NSFW"}}, config)
        srv = self.start_server(accounts=[EMAIL], config=cfg)
        return srv, srv.keys[EMAIL]

    def stream(self, srv, key, uid, **kw):
        s = sse_util.Stream(srv, key, uid, **kw)
        self.addCleanup(s.close)
        return s

    def assertWellFormed(self, events):
        ids = [int(e.id) for e in stored(events)]
        self.assertEqual(ids, sorted(ids), events)
        self.assertEqual(len(set(ids)), len(ids), events)
        for e in events:
            if e.event == "task.progress":
                base, _, n = e.id.partition("-p")
                self.assertTrue(base.isdigit() and n.isdigit(), e)

    def test_events_in_order_final_carries_the_task_and_ends(self):
        srv, key = self.server(800)
        uid = srv.create(key, prompt="streamed")
        s = self.stream(srv, key, uid)
        self.assertEqual(s.status, 200)
        self.assertEqual(s.headers.get("Content-Type"), "text/event-stream")
        self.assertEqual(s.headers.get("Cache-Control"), "no-cache")
        events = s.all()  # returns only once the server ended the stream
        self.assertWellFormed(events)
        names = [e.event for e in stored(events)]
        self.assertEqual(names, ["task.queued", "task.running", "task.succeeded"], events)
        self.assertEqual(s.retry, 3000)
        running = stored(events)[1].json()
        self.assertEqual((running["uid"], running["status"], running["provider"], running["run"]),
                         (uid, "running", "sim", 1), running)
        final = events[-1].json()
        self.assertEqual(final, srv.task(uid, key))  # the whole task, as GET shows it
        self.assertEqual(final["status"], "succeeded")
        self.assertEqual(len(final["images"]), 1)

    def test_failed_and_moderated_end_the_stream(self):
        srv, key = self.server(100)
        for prompt, event, status in (("FAILME", "task.failed", "failed"),
                                      ("NSFW", "task.moderated", "moderated")):
            uid = srv.create(key, prompt=prompt)
            events = self.stream(srv, key, uid).all()
            self.assertEqual(events[-1].event, event, events)
            self.assertEqual(events[-1].json()["status"], status)
            self.assertEqual(sum(e.event in FINAL for e in events), 1, events)

    def test_finished_task_replays_and_resumes_with_last_event_id(self):
        srv, key = self.server(100)
        uid = srv.create(key, prompt="replayed")
        srv.wait_final(uid, key)
        full = self.stream(srv, key, uid).all()
        self.assertEqual([e.event for e in full],
                         ["task.queued", "task.running", "task.succeeded"])
        # After the running event: only the final one.
        rest = self.stream(srv, key, uid, last_event_id=full[1].id).all()
        self.assertEqual([(e.id, e.event) for e in rest], [(full[2].id, "task.succeeded")])
        # A progress id resumes after the stored event it follows.
        rest = self.stream(srv, key, uid, last_event_id=full[1].id + "-p3").all()
        self.assertEqual([e.event for e in rest], ["task.succeeded"])
        # After the final event: nothing more, and the stream ends at once
        # (it does not idle on a task that will never change).
        self.assertEqual(self.stream(srv, key, uid, last_event_id=full[2].id).all(), [])
        # Nonsense is the same as no Last-Event-ID.
        self.assertEqual(len(self.stream(srv, key, uid, last_event_id="abc").all()), 3)

    def test_resume_mid_task(self):
        srv, key = self.server(1500)
        uid = srv.create(key, prompt="resumed")
        s = self.stream(srv, key, uid)
        first = s.next()
        while first.event != "task.running":
            first = s.next()
        s.close()
        rest = self.stream(srv, key, uid, last_event_id=first.id).all()
        self.assertEqual([e.event for e in stored(rest)], ["task.succeeded"], rest)
        self.assertGreater(int(rest[-1].id), int(first.id))

    def test_progress_estimate_while_running(self):
        # The first task teaches the server how long the model takes; the
        # second one's stream carries estimates (every 2 s) while it runs.
        srv, key = self.server(3000)
        srv.wait_final(srv.create(key, prompt="warm-up"), key)
        uid = srv.create(key, prompt="estimated")
        events = self.stream(srv, key, uid).all()
        progress = [e.json() for e in events if e.event == "task.progress"]
        self.assertTrue(progress, events)
        pcts = [p["progress"] for p in progress]
        self.assertEqual(pcts, sorted(pcts))
        self.assertTrue(all(0 <= p <= 99 for p in pcts), pcts)
        self.assertTrue(all(p["estimated"] is True and p["uid"] == uid for p in progress))
        self.assertEqual(events[-1].event, "task.succeeded")

    def test_keep_alive_comments_on_a_quiet_stream(self):
        # A queued task (one runs at a time, and the first takes a minute)
        # has nothing to say: comment lines keep its stream alive, at
        # http.stream_keepalive_ms (the default, 15 s, would outlast the
        # read's deadline here).
        srv, key = self.server(60000, engine={"max_in_flight": 1},
                               http={"stream_keepalive_ms": 300})
        first = srv.create(key, prompt="long")
        srv.poll_until(first, key, lambda t: t["status"] == "running")
        waiting = srv.create(key, prompt="queued behind")
        s = self.stream(srv, key, waiting, timeout=5)
        self.assertEqual(s.next().event, "task.queued")
        start = time.monotonic()
        self.assertEqual(s.read_comments(3), [": keep-alive"] * 3)
        self.assertGreaterEqual(time.monotonic() - start, 0.5)
        self.assertEqual(srv.task(waiting, key)["status"], "queued")
        for uid in (waiting, first):  # (a quick stop: nothing left running)
            srv.request("POST", "/api/banana/%s/cancel" % uid, key=key)
        self.assertEqual(s.all()[-1].event, "task.canceled")

    def test_refused_without_key_and_for_another_account(self):
        srv = self.start_server(accounts=[EMAIL, "other@example.com"])
        key = srv.keys[EMAIL]
        uid = srv.create(key, prompt="private")
        self.assertError(srv.get("/api/banana/%s/events" % uid), 401, "unauthorized")
        r = srv.get("/api/banana/%s/events" % uid, key=srv.keys["other@example.com"])
        self.assertError(r, 404, "not_found")

    def test_a_thousand_streams_all_end(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 4096:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
        srv, key = self.server(2000, http={"max_connections_per_ip": 0},
                               engine={"max_in_flight": 1000})
        uids = [srv.create(key, prompt="many %d" % i) for i in range(100)]
        results = sse_util.read_many(srv, key, uids, per_task=10, timeout=120)
        self.assertEqual(len(results), 1000)
        for uid, names, final, head in results:
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head[:80])
            self.assertEqual([n for n in names if n != "task.progress"][-1], "task.succeeded",
                             (uid, names))
            self.assertEqual(names.count("task.succeeded"), 1, names)
            self.assertIn('"uid":"%s"' % uid, final)
            self.assertIn('"status":"succeeded"', final)

    def test_hang_ups_leave_nothing_behind(self):
        srv, key = self.server(3000, http={"max_connections_per_ip": 0})
        uid = srv.create(key, prompt="abandoned")
        # (create's own connection may still be open on the server's side
        # here, or already closed: one descriptor either way.)
        before = fd_count(srv.proc.pid)
        socks = []
        for _ in range(50):
            s = socket.create_connection((srv.host, srv.port), timeout=h.DEADLINE)
            s.sendall(b"GET /api/banana/%s/events HTTP/1.1\r\nHost: t\r\n"
                      b"Authorization: Bearer %s\r\n\r\n" % (uid.encode(), key.encode()))
            socks.append(s)
        for s in socks:  # each stream is open and has said something
            self.assertTrue(s.recv(1024).startswith(b"HTTP/1.1 200"))
        self.assertGreaterEqual(fd_count(srv.proc.pid), before + 49)
        for i, s in enumerate(socks):
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()  # half with a reset, half with a FIN
        h.wait_for(lambda: fd_count(srv.proc.pid) <= before or None,
                   what="the server to close the abandoned streams")
        # The task goes on and finishes; a new stream still works.
        self.assertEqual(srv.wait_final(uid, key)["status"], "succeeded")
        self.assertEqual(self.stream(srv, key, uid).all()[-1].event, "task.succeeded")
        srv.stop()  # exit 0: under ASan, a leaked watch or stream fails here
