"""test_shutdown.py - SIGTERM while a request is in progress: new connections
are closed at once, the request in progress still gets its answer (within
http.shutdown_timeout_ms), and the server exits 0."""

import http.client
import json
import signal
import socket
import unittest

import harness as h

EMAIL = "drain@example.com"
CREATE = "/api/banana/create-async"


class ShutdownTest(h.ServerTestCase):

    def begin_upload(self, srv, body):
        """Opens a create request whose body has not been sent: the head goes
        with Expect: 100-continue, and the interim 100 says the server has
        the request in hand (headers read, key checked). Returns the socket
        and its reader."""
        head = (b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                b"Expect: 100-continue\r\n\r\n" % (
                    CREATE.encode(), srv.host.encode(), srv.port, srv.keys[EMAIL].encode(),
                    len(body)))
        sock = socket.create_connection((srv.host, srv.port), timeout=h.DEADLINE)
        self.addCleanup(sock.close)
        f = sock.makefile("rb")
        self.addCleanup(f.close)
        sock.sendall(head)
        status, _ = h._read_head(f)
        self.assertEqual(status, 100)
        return sock, f

    @staticmethod
    def turned_away(srv):
        """True when a new connection is closed without an answer."""
        try:
            r = srv.get("/healthz", timeout=10)
            return False if r.status == 200 else r
        except (ConnectionError, http.client.HTTPException):
            return True

    def test_request_in_progress_finishes(self):
        srv = self.start_server(accounts=[EMAIL])
        body = json.dumps({"prompt": "sent after SIGTERM"}).encode()
        sock, f = self.begin_upload(srv, body)

        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_stderr(r"msg=http_draining requests=1")
        # New clients are turned away at once...
        self.assertIs(self.turned_away(srv), True)
        self.assertTrue(srv.running(), "the server exited with a request in progress")
        # ...and the request in progress still completes with a real answer.
        sock.sendall(body)
        r = h._read_final(f)
        self.assertEqual(r.status, 200, r)
        uid = r.json()["uid"]
        self.assertRegex(uid, h.UUID_RE)
        self.assertEqual(r.headers.get("Connection", "").lower(), "close")
        self.assertEqual(srv.wait_exit(), 0, srv.stderr_tail())
        self.assertNotIn("http_drain_timeout", srv.stderr_text())

        # The task it created is durable: the next start runs it.
        again = self.start_server(data_dir=srv.data_dir)
        t = again.wait_final(uid, srv.keys[EMAIL])
        self.assertEqual(t["status"], "succeeded", t)

    def test_drain_gives_up_after_the_timeout(self):
        # A client that never sends its body does not hold the server up
        # beyond http.shutdown_timeout_ms.
        srv = self.start_server(accounts=[EMAIL], config={"http": {"shutdown_timeout_ms": 200}})
        sock, f = self.begin_upload(srv, b"{}" * 1000)
        srv.proc.send_signal(signal.SIGTERM)
        self.assertEqual(srv.wait_exit(), 0, srv.stderr_tail())
        self.assertIn("msg=http_drain_timeout requests_cut=1", srv.stderr_text())
        try:
            rest = f.read()
        except ConnectionResetError:
            rest = b""
        self.assertEqual(rest, b"")  # its connection was closed, without an answer

    def test_idle_server_stops_at_once(self):
        srv = self.start_server(accounts=[EMAIL])
        srv.stop()
        self.assertNotIn("http_draining", srv.stderr_text())


if __name__ == "__main__":
    unittest.main()
