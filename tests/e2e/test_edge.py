"""test_edge.py - the real server's edge against what an outside attack found
(Step 4): bodies where none belong starving uploads, clients that hold
connections by trickling, request smuggling, errors below the handlers that
were not JSON, too many connections from one address.

Raw sockets: each case sends the bytes an attacker would and reads exactly
what comes back. "Closed" means the server ends the connection after its one
answer, with not a byte more (nothing smuggled behind the request was served).
"""

import socket
import time

import harness as h

EMAIL = "edge@example.com"
CREATE = "/api/banana/create-async"


class Conn:
    """A raw client connection with a buffered reader."""

    def __init__(self, srv, timeout=h.DEADLINE):
        self.sock = socket.create_connection((srv.host, srv.port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("closed")
        self.buf += chunk

    def response(self):
        """One whole response: (status, headers dict lower-cased, body)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def rest_until_close(self):
        """Bytes that come before the server closes; raises on a timeout."""
        data = self.buf
        self.buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    def close(self):
        self.sock.close()


class EdgeTest(h.ServerTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.srv = cls.start_class_server(accounts=[EMAIL])
        cls.key = cls.srv.keys[EMAIL]

    def conn(self, srv=None):
        c = Conn(srv or self.srv)
        self.addCleanup(c.close)
        return c

    def assertJsonError(self, status, headers, body, want_status, code):
        resp = h.Response(status, headers, body)
        # assertError looks headers up by their usual spelling.
        resp.headers = {k.title(): v for k, v in headers.items()}
        self.assertError(resp, want_status, code)

    def assertRefusedAndClosed(self, raw, want_status, code, srv=None):
        c = self.conn(srv)
        c.send(raw)
        status, headers, body = c.response()
        self.assertJsonError(status, headers, body, want_status, code)
        self.assertEqual(headers.get("connection"), "close", raw)
        self.assertEqual(c.rest_until_close(), b"", "a second answer came: %r" % raw)

    def submit_body(self):
        return b'{"prompt":"a lighthouse","model":"nano-banana"}'

    def submit(self, c):
        body = self.submit_body()
        c.send(b"POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                   CREATE.encode(), self.key.encode(), len(body), body))
        return c.response()

    # -- 1. body budget starvation

    def test_bodies_on_bodyless_routes_starve_nothing(self):
        # The attack: twenty GET /healthz announcing 32 MiB each, kept alive by
        # a byte now and then, made every real submit answer 503.
        held = []
        for _ in range(20):
            c = self.conn()
            c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 33554432\r\n\r\nx")
            status, headers, body = c.response()
            self.assertJsonError(status, headers, body, 413, "payload_too_large")
            self.assertEqual(headers.get("connection"), "close")
            held.append(c)
        for c in held:
            try:
                c.send(b"x")
            except OSError:
                pass  # closed already: that is the point
        status, headers, body = self.submit(self.conn())
        self.assertEqual(status, 200, body)
        for c in held:
            self.assertEqual(c.rest_until_close(), b"")
        # /files/ takes no body either.
        self.assertRefusedAndClosed(
            b"GET /files/abc.png HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\nx\r\n0\r\n\r\n", 413, "payload_too_large")

    def test_unauthenticated_upload_refused_before_its_body(self):
        c = self.conn()
        c.send(b"POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer igk_wrong\r\n"
               b"Content-Length: 33554432\r\n\r\n" % CREATE.encode())
        status, headers, body = c.response()
        self.assertJsonError(status, headers, body, 401, "unauthorized")
        self.assertEqual(headers.get("connection"), "close")

    # -- 2. slow and idle connections

    def test_trickling_header_lines_are_cut(self):
        srv = self.start_server(config={"http": {"header_timeout_ms": 800}})
        conns = [self.conn(srv) for _ in range(10)]
        for c in conns:
            c.send(b"GET /healthz HTTP/1.1\r\n")
        start = time.monotonic()
        answered = {}
        while len(answered) < len(conns) and time.monotonic() - start < h.DEADLINE:
            for i, c in enumerate(conns):
                if i in answered:
                    continue
                c.sock.settimeout(0.05)
                try:
                    c._fill()
                except socket.timeout:
                    c.send(b"X-Slow: 1\r\n")  # a header line now and then, as the attack does
                    continue
                finally:
                    c.sock.settimeout(h.DEADLINE)
                answered[i] = c.response()
        took = time.monotonic() - start
        self.assertEqual(len(answered), len(conns))
        for status, headers, body in answered.values():
            self.assertJsonError(status, headers, body, 408, "request_timeout")
            self.assertEqual(headers.get("connection"), "close")
        self.assertGreaterEqual(took, 0.7)
        self.assertLess(took, 10)
        for c in conns:
            self.assertEqual(c.rest_until_close(), b"")

    def test_one_address_holds_256_connections(self):
        srv = self.start_server()  # the default limit
        conns = []
        for _ in range(256):
            c = Conn(srv)
            conns.append(c)
            self.addCleanup(c.close)
        # They are all served (the server took every one of them) ...
        for c in conns[::51]:
            c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            self.assertEqual(c.response()[0], 200)
        # ... and the next one from the same address is told why, and closed.
        over = self.conn(srv)
        status, headers, body = over.response()
        self.assertJsonError(status, headers, body, 429, "too_many_connections")
        self.assertEqual(headers.get("connection"), "close")
        self.assertEqual(over.rest_until_close(), b"")
        conns[0].close()
        # Once one goes, another may come (the server sees the close on its
        # own time: poll with a deadline).
        def served():
            c = Conn(srv)
            try:
                c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                return c.response()[0] == 200
            except (OSError, EOFError):
                return False
            finally:
                c.close()
        h.wait_for(served, what="a connection once one closed")

    # -- 3. request smuggling

    def test_smuggling_forms_get_one_400_and_close(self):
        smuggled = b"GET /api/banana/credits HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + \
            self.key.encode() + b"\r\n\r\n"
        body = self.submit_body()
        auth = b"Authorization: Bearer " + self.key.encode() + b"\r\n"
        forms = [
            b"Content-Length: %d\r\nContent-Length: %d\r\n" % (len(body), len(body) + 5),
            b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(body),
            b"Transfer-Encoding : chunked\r\n",
            b"Transfer-Encoding: identity\r\n",
            b"Transfer-Encoding: gzip, chunked\r\n",
            b"Content-Length: -1\r\n",
        ]
        for form in forms:
            with self.subTest(form=form):
                raw = (b"POST " + CREATE.encode() + b" HTTP/1.1\r\nHost: t\r\n" + auth + form +
                       b"\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) + smuggled)
                self.assertRefusedAndClosed(raw, 400, "bad_request")

    def test_nul_in_authorization_is_refused(self):
        self.assertRefusedAndClosed(
            b"GET /api/banana/credits HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " +
            self.key.encode() + b"\x00junk\r\n\r\n", 400, "bad_request")

    # -- 4. errors below the handlers, in JSON

    def test_wire_errors_are_json(self):
        self.assertRefusedAndClosed(b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request")
        self.assertRefusedAndClosed(
            b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "uri_too_long")
        self.assertRefusedAndClosed(
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 40000 + b"\r\n\r\n",
            431, "headers_too_large")
        self.assertRefusedAndClosed(b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n", 505,
                                    "http_version_not_supported")
        self.assertRefusedAndClosed(
            b"POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
            b"Content-Length: 40000000\r\n\r\n" % (CREATE.encode(), self.key.encode()),
            413, "payload_too_large")

    def test_create_path_with_get_is_405(self):
        r = self.srv.request("GET", CREATE, key=self.key)
        self.assertError(r, 405, "method_not_allowed")
        self.assertEqual(r.headers.get("Allow"), "POST")
        r = self.srv.request("GET", "/api/banana/no-such-thing/at-all", key=self.key)
        self.assertError(r, 404, "not_found")


if __name__ == "__main__":
    import unittest
    unittest.main()
