"""sse_util.py - a client for imgate's event streams (text/event-stream), for
the tests: open a stream, read its events one by one or to the end.
Standard library only (http.client decodes the chunked body)."""

import http.client
import json
import selectors
import socket

import harness as h


class Event:
    def __init__(self, id_, event, data):
        self.id = id_
        self.event = event
        self.data = data

    def json(self):
        return json.loads(self.data)

    def __repr__(self):
        return "Event(%r, %r, %.80r)" % (self.id, self.event, self.data)


class Stream:
    """GET /api/banana/{uid}/events, read as it comes."""

    def __init__(self, srv, key, uid, last_event_id=None, timeout=h.DEADLINE):
        self.conn = http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)
        headers = {"Authorization": "Bearer " + key, "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.conn.request("GET", "/api/banana/%s/events" % uid, headers=headers)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = self.resp.headers
        self.comments = 0
        self.retry = None

    def next(self):
        """The next event, or None when the stream has ended."""
        fields = {}
        while True:
            line = self.resp.readline()
            if not line:
                return None
            line = line.decode("utf-8").rstrip("\n")
            if line == "":
                if "event" in fields or "data" in fields:
                    return Event(fields.get("id"), fields.get("event"), fields.get("data", ""))
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "retry":
                self.retry = int(value)
            else:
                fields[name] = value

    def read_comments(self, n):
        """Reads the next n comment lines (each as sent, ": ..."); fails on an
        event or the end of the stream before them."""
        out = []
        while len(out) < n:
            line = self.resp.readline()
            if not line:
                raise AssertionError("the stream ended after %d comments" % len(out))
            line = line.decode("utf-8").rstrip("\n")
            if line.startswith(":"):
                self.comments += 1
                out.append(line)
            elif line:
                raise AssertionError("an event line before the comments: %r" % line)
        return out

    def all(self):
        out = []
        while True:
            e = self.next()
            if e is None:
                return out
            out.append(e)

    def close(self):
        self.conn.close()


def read_many(srv, key, uids, per_task=1, timeout=h.DEADLINE):
    """Opens per_task streams for each uid over raw sockets, reads them all at
    once (one thread, a selector) to their ends, and returns for each stream
    (uid, [event names], final data) in the order opened."""
    sel = selectors.DefaultSelector()
    streams = []
    for uid in uids:
        for _ in range(per_task):
            s = socket.create_connection((srv.host, srv.port), timeout=timeout)
            s.sendall(b"GET /api/banana/%s/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s"
                      b"\r\nConnection: close\r\n\r\n" % (uid.encode(), key.encode()))
            s.setblocking(False)
            st = {"uid": uid, "sock": s, "buf": b""}
            streams.append(st)
            sel.register(s, selectors.EVENT_READ, st)
    open_left = len(streams)
    import time
    end = time.monotonic() + timeout
    while open_left and time.monotonic() < end:
        for key_, _ in sel.select(timeout=1):
            st = key_.data
            try:
                chunk = st["sock"].recv(65536)
            except BlockingIOError:
                continue
            if chunk:
                st["buf"] += chunk
                continue
            sel.unregister(st["sock"])
            st["sock"].close()
            open_left -= 1
    sel.close()
    results = []
    for st in streams:
        head, _, body = st["buf"].partition(b"\r\n\r\n")
        text = dechunk(body).decode("utf-8")
        names, final = [], None
        for block in text.split("\n\n"):
            fields = {}
            for line in block.split("\n"):
                if line.startswith(":") or not line:
                    continue
                n, _, v = line.partition(":")
                fields[n] = v[1:] if v.startswith(" ") else v
            if "event" in fields:
                names.append(fields["event"])
                final = fields.get("data")
        results.append((st["uid"], names, final, head))
    return results


def dechunk(body):
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        n = int(size_line, 16)
        if n == 0:
            break
        out += rest[:n]
        body = rest[n + 2:]
    return out
