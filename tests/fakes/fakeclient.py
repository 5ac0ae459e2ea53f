"""fakeclient.py - starts fake_upstream.py as a subprocess and scripts it, for tests.

    with FakeUpstream() as fake:
        fake.script([{"kind": "error", "status": 429, "retry_delay": "19s"}], api="gemini")
        ... point imgate at fake.gemini_base_url / fake.openai_base_url ...
        assert fake.requests(api="gemini")[0]["json"]["contents"]

stop() (also run by the context manager) sends SIGTERM and fails unless the fake exits 0.
Standard library only; every wait has a deadline.
"""

import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.parse

FAKE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_upstream.py")
LISTEN_RE = re.compile(r"^fake upstream listening on (http://([^\s/]+):(\d+))$")


class FakeUpstream:
    def __init__(self, *extra_args, deadline=30.0):
        """extra_args go to fake_upstream.py, e.g. "--gemini-key", "K"."""
        self.extra_args = [str(a) for a in extra_args]
        self.deadline = deadline
        self.proc = None
        self.url = self.host = self.port = None
        self.stderr_lines = []
        self.extra_stdout = []
        self.returncode = None

    # -- process

    def start(self):
        argv = [sys.executable, FAKE_PATH, "--host", "127.0.0.1", "--port", "0"] + self.extra_args
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        lines = queue.Queue()
        self._threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, lines),
                                          daemon=True),
                         threading.Thread(target=self._drain_stderr, daemon=True)]
        for t in self._threads:
            t.start()
        try:
            first = lines.get(timeout=self.deadline)
        except queue.Empty:
            self._kill()
            raise AssertionError("fake upstream printed nothing within %.0f s; stderr:\n%s" % (
                self.deadline, self.stderr))
        m = LISTEN_RE.match(first or "")
        if not m:
            self._kill()
            raise AssertionError("unexpected first line %r; stderr:\n%s" % (first, self.stderr))
        self.first_line = first
        self.url, self.host, self.port = m.group(1), m.group(2), int(m.group(3))
        return self

    def _pump(self, stream, lines):
        first = True
        for line in stream:
            if first:
                lines.put(line.rstrip("\n"))
                first = False
            else:
                self.extra_stdout.append(line)
        if first:
            lines.put(None)

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def _kill(self):
        self.proc.kill()
        self.returncode = self.proc.wait()
        self._close_pipes()

    def _close_pipes(self):
        """After exit: lets the reader threads see EOF, then closes the pipes."""
        for t in self._threads:
            t.join(timeout=self.deadline)
        self.proc.stdout.close()
        self.proc.stderr.close()

    @property
    def stderr(self):
        return "".join(self.stderr_lines)

    def stop(self):
        """SIGTERM, then asserts exit code 0 and nothing printed after the listening line."""
        if self.proc is None or self.returncode is not None:
            return self.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout=self.deadline)
        except subprocess.TimeoutExpired:
            self._kill()
            raise AssertionError("fake upstream ignored SIGTERM; stderr:\n%s" % self.stderr)
        self._close_pipes()
        if self.returncode != 0:
            raise AssertionError("fake upstream exited %d; stderr:\n%s" % (
                self.returncode, self.stderr))
        if self.extra_stdout:
            raise AssertionError("fake upstream printed more than one line: %r" %
                                 self.extra_stdout)
        return self.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        try:
            self.stop()
        except AssertionError:
            if exc_type is None:
                raise
        return False

    # -- base URLs for imgate's provider instances

    @property
    def gemini_base_url(self):
        return self.url

    @property
    def openai_base_url(self):
        return self.url + "/v1"

    # -- control API

    def call(self, method, path, body=None, headers=None):
        """(status, parsed JSON or raw bytes) of one request on a fresh connection."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.deadline)
        try:
            hdrs = dict(headers or {})
            data = body
            if body is not None and not isinstance(body, (bytes, str)):
                data = json.dumps(body)
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            if resp.getheader("Content-Type", "").startswith("application/json"):
                try:
                    return resp.status, json.loads(raw)
                except ValueError:
                    pass
            return resp.status, raw
        finally:
            conn.close()

    def _control(self, method, path, body=None):
        status, out = self.call(method, path, body)
        if status != 200:
            raise AssertionError("%s %s -> %d %r" % (method, path, status, out))
        return out

    def script(self, responses, api="*", model=None, endpoint=None, then="default"):
        """Appends one script; returns its id. responses: a list of STEP dicts."""
        match = {"api": api}
        if model is not None:
            match["model"] = model
        if endpoint is not None:
            match["endpoint"] = endpoint
        return self.add_scripts({"match": match, "responses": responses, "then": then})[0]

    def add_scripts(self, spec):
        """Posts a raw script object or list of them; returns their ids."""
        return self._control("POST", "/_fake/script", spec)["ids"]

    def scripts(self):
        return self._control("GET", "/_fake/scripts")

    def requests(self, api=None):
        path = "/_fake/requests"
        if api:
            path += "?" + urllib.parse.urlencode({"api": api})
        return self._control("GET", path)

    def clear_requests(self):
        self._control("DELETE", "/_fake/requests")

    def reset(self):
        self._control("POST", "/_fake/reset")

    def stats(self):
        return self._control("GET", "/_fake/stats")
