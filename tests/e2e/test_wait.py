"""test_wait.py - answers that wait for the task: `Prefer: wait=N` on create and
`GET /api/banana/{uid}?wait=N` (long poll). A waiting request holds no
thread: hundreds wait at once while other requests are answered at once, and
the server's thread count does not move.
"""

import concurrent.futures
import os
import socket
import time

import harness as h

EMAIL = "wait@example.com"
CREATE = "/api/banana/create-async"


def thread_count(pid):
    return len(os.listdir("/proc/%d/task" % pid))


class WaitTest(h.ServerTestCase):

    def server(self, delay_ms, **config):
        cfg = {"sim": {"delay_ms": delay_ms}}
        cfg.update(config)
        srv = self.start_server(accounts=[EMAIL], config=cfg)
        return srv, srv.keys[EMAIL]

    def create(self, srv, key, prompt, wait=None, timeout=h.DEADLINE):
        headers = {"Content-Type": "application/json"}
        if wait is not None:
            headers["Prefer"] = "wait=%s" % wait
        return srv.request("POST", CREATE, key=key, headers=headers,
                           json_body={"prompt": prompt, "model": "nano-banana"})

    def test_prefer_wait_answers_the_finished_task(self):
        srv, key = self.server(50)
        start = time.monotonic()
        r = self.create(srv, key, "a lighthouse at dusk", wait=30)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers.get("Preference-Applied"), "wait=30")
        t = r.json()
        self.assertEqual(t["status"], "succeeded", t)
        self.assertEqual(len(t["result_urls"]), 1, t)
        self.assertLess(time.monotonic() - start, 20)
        # The image is there: one request did what took a submit and polls.
        self.assertEqual(srv.fetch_url(t["result_urls"][0]).status, 200)

    def test_wait_runs_out_and_the_task_stays_pollable(self):
        srv, key = self.server(3000)
        start = time.monotonic()
        r = self.create(srv, key, "a slow one", wait=1)
        waited = time.monotonic() - start
        self.assertEqual(r.status, 200, r)
        t = r.json()
        self.assertIn(t["status"], ("queued", "running"), t)
        self.assertGreaterEqual(waited, 0.9)
        self.assertLess(waited, 2.9)  # answered at the deadline, not at the finish
        # Long poll: the same task, once final.
        r = srv.request("GET", "/api/banana/%s?wait=20" % t["uid"], key=key)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["status"], "succeeded")
        # Without wait, or on a final task, it answers at once.
        start = time.monotonic()
        r = srv.request("GET", "/api/banana/%s?wait=20" % t["uid"], key=key)
        self.assertEqual(r.json()["status"], "succeeded")
        self.assertLess(time.monotonic() - start, 2)

    def test_wait_is_capped_and_ignores_nonsense(self):
        srv, key = self.server(50)
        r = self.create(srv, key, "capped", wait=600)
        self.assertEqual(r.headers.get("Preference-Applied"), "wait=60")
        self.assertEqual(r.json()["status"], "succeeded")
        for bad in ("-3", "abc", "0"):
            r = self.create(srv, key, "nonsense " + bad, wait=bad)
            self.assertEqual(r.status, 200, r)
            self.assertIsNone(r.headers.get("Preference-Applied"))
            self.assertEqual(set(r.json()), {"uid", "status"})  # the plain answer
        # Other preferences beside it are fine.
        r = srv.request("POST", CREATE, key=key,
                        headers={"Prefer": "respond-async, wait=30; x=1"},
                        json_body={"prompt": "with others", "model": "nano-banana"})
        self.assertEqual(r.headers.get("Preference-Applied"), "wait=30")
        self.assertEqual(r.json()["status"], "succeeded")

    def test_many_waiting_hold_no_thread(self):
        # 200 requests wait at once, each on its own connection; the server's
        # threads stay what they were, and other requests are answered at once.
        srv, key = self.server(4000, http={"max_connections_per_ip": 0})
        before = thread_count(srv.proc.pid)
        n = 200
        body = b'{"prompt":"many %d","model":"nano-banana"}'
        socks = []
        for i in range(n):
            s = socket.create_connection((srv.host, srv.port), timeout=h.DEADLINE)
            b = body % i
            s.sendall(b"POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
                      b"Prefer: wait=60\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (CREATE.encode(), key.encode(), len(b), b))
            socks.append(s)
        # Every one was submitted (its task started) and is now waiting.
        h.wait_for(lambda: sum(1 for line in srv.stderr_snapshot()
                               if "msg=attempt_started" in line) >= n, what="all submitted")
        during = thread_count(srv.proc.pid)
        self.assertEqual(during, before, "threads while %d requests wait" % n)
        start = time.monotonic()
        for _ in range(50):
            self.assertEqual(srv.get("/healthz").status, 200)
        self.assertLess(time.monotonic() - start, 3.0, "other requests were held up")
        statuses = []
        for s in socks:
            f = s.makefile("rb")
            status, headers = h._read_head(f)
            statuses.append((status, h._read_body(f, status, headers)))
            f.close()
            s.close()
        self.assertEqual([st for st, _ in statuses], [200] * n)
        for _, b in statuses:
            self.assertIn(b'"status":"succeeded"', b)

    def test_client_gone_while_waiting(self):
        srv, key = self.server(2000)
        for i in range(10):
            s = socket.create_connection((srv.host, srv.port), timeout=h.DEADLINE)
            b = b'{"prompt":"gone %d","model":"nano-banana"}' % i
            s.sendall(b"POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
                      b"Prefer: wait=60\r\nContent-Length: %d\r\n\r\n%s" % (
                          CREATE.encode(), key.encode(), len(b), b))
            s.close()
        # Each is logged as cut off by its client; the server goes on serving,
        # and (in the ASan build) frees all of it: the harness checks the exit.
        h.wait_for(lambda: sum(1 for line in srv.stderr_snapshot()
                               if "err=conn_client_abort" in line) >= 10,
                   what="ten waits ended by their clients")
        self.assertEqual(srv.get("/healthz").status, 200)


if __name__ == "__main__":
    import unittest
    unittest.main()
