"""harness.py - drives a real imgate binary for the end-to-end tests.

Standard library only. The binary comes from $IMGATE_BIN. Every wait polls a
condition up to a deadline ($IMGATE_E2E_DEADLINE seconds, default 60: ASan
builds are slow); nothing sleeps hoping that something happened meanwhile.

Server: a temp data folder, a config file, optional accounts and keys made
with `imgate admin`, then `imgate serve` with both output pipes drained by
threads into line lists. stop() sends SIGTERM and fails unless the exit code is
0, so leaks reported by LeakSanitizer (non-zero exit) fail the test.

ServerTestCase: a TestCase that prints the stderr of its servers when a test
fails, and stops (asserting exit 0) the servers it started.
"""

import base64
import copy
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import zlib

DEADLINE = float(os.environ.get("IMGATE_E2E_DEADLINE", "60"))
POLL_INTERVAL = 0.02

FINAL_STATES = ("succeeded", "failed", "moderated", "canceled")
KEY_RE = re.compile(r"^igk_[0-9A-Za-z]{40}$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
LISTEN_RE = re.compile(r"imgate listening on (http://[^\s]+)")

# Config every test server starts from; tests merge their own on top.
# Accounts start rich, so tests about other things never run out of credit;
# the billing tests set their own bonus.
BASE_CONFIG = {"log_level": "info", "sim": {"delay_ms": 50},
               "billing": {"signup_bonus_micros": 1000000000000}}


def imgate_bin():
    path = os.environ.get("IMGATE_BIN")
    if not path:
        raise unittest.SkipTest("IMGATE_BIN is not set")
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK):
        raise RuntimeError("IMGATE_BIN=%s is not an executable file" % path)
    return path


def deep_merge(base, extra):
    out = copy.deepcopy(base)
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def wait_for(predicate, deadline=DEADLINE, what="condition", interval=POLL_INTERVAL):
    """Polls predicate() until it returns something truthy; returns that value."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError("timed out after %.0f s waiting for %s" % (deadline, what))
        time.sleep(interval)


# ---------------------------------------------------------------- CLI

class CliResult:
    def __init__(self, argv, proc):
        self.argv = argv
        self.code = proc.returncode
        self.stdout = proc.stdout.decode("utf-8", "replace")
        self.stderr = proc.stderr.decode("utf-8", "replace")

    def __repr__(self):
        return "CliResult(%r exit=%d\n--stdout--\n%s--stderr--\n%s)" % (
            self.argv, self.code, self.stdout, self.stderr)


# Provider env shortcuts: a real key in a developer's shell would send test
# traffic to the real upstream, so tests start without them (set them per test).
PROVIDER_ENV = ("GEMINI_API_KEY", "GEMINI_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")


def clean_env(extra=None):
    """os.environ without IMGATE_* (but IMGATE_BIN) and the provider shortcuts,
    then extra on top."""
    full_env = dict(os.environ)
    for k in list(full_env):
        if (k.startswith("IMGATE_") and k != "IMGATE_BIN") or k in PROVIDER_ENV:
            full_env.pop(k)  # a developer's shell must not change what tests see
    full_env.update(extra or {})
    return full_env


def run_cli(*args, env=None, timeout=DEADLINE):
    """Runs `imgate ARGS...` to completion; returns a CliResult."""
    argv = [imgate_bin()] + [str(a) for a in args]
    full_env = clean_env(env)
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=full_env, timeout=timeout)
    return CliResult(argv, proc)


def admin_init(data_dir):
    """`imgate admin init`: the data folder and an empty database (the other
    admin commands refuse a folder without one)."""
    r = run_cli("admin", "init", "--data", data_dir)
    if r.code != 0:
        raise AssertionError("admin init failed: %r" % r)
    return r


def admin_account_create(data_dir, email, config_path=None):
    """The account gets the signup bonus of config_path (the default one without)."""
    extra = ["--config", config_path] if config_path else []
    r = run_cli("admin", "account", "create", email, "--data", data_dir, *extra)
    if r.code != 0:
        raise AssertionError("account create failed: %r" % r)
    return r.stdout.strip()


def admin_key_create(data_dir, email, name=None):
    args = ["admin", "key", "create", email]
    if name:
        args += ["--name", name]
    r = run_cli(*args, "--data", data_dir)
    if r.code != 0:
        raise AssertionError("key create failed: %r" % r)
    key = r.stdout.rstrip("\n")
    if not KEY_RE.match(key):
        raise AssertionError("key create printed %r, not a key alone" % r.stdout)
    return key


# ---------------------------------------------------------------- HTTP

class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # http.client.HTTPMessage: case-insensitive get()
        self.body = body
        self._json = None

    def json(self):
        if self._json is None:
            try:
                self._json = json.loads(self.body.decode("utf-8"))
            except ValueError as e:
                raise AssertionError("response %d is not JSON (%s): %r" % (
                    self.status, e, self.body[:300]))
        return self._json

    def __repr__(self):
        return "Response(%d, %r)" % (self.status, self.body[:500])


# ---------------------------------------------------------------- server

_server_seq = [0]


class Server:
    """One `imgate serve` process (see the module comment)."""

    def __init__(self, config=None, data_dir=None, accounts=(), env=None, args=None,
                 use_config_file=True, wait=True):
        """config: merged over BASE_CONFIG and written to a file (unless
        use_config_file is False). data_dir: reuse a folder (not removed at the
        end); else a fresh one. accounts: emails to create before the start, each
        with one key (self.keys[email])."""
        _server_seq[0] += 1
        self.seq = _server_seq[0]
        self.work_dir = tempfile.mkdtemp(prefix="imgate-e2e-")
        self.data_dir = data_dir or os.path.join(self.work_dir, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.config = deep_merge(BASE_CONFIG, config)
        self.verify_ledger = True  # a test that damages the database on purpose turns it off
        self.config_path = os.path.join(self.work_dir, "config.json")
        with open(self.config_path, "w", encoding="utf-8") as f:
            json.dump(self.config, f)
        self.keys = {}
        try:
            if accounts and not os.path.exists(os.path.join(self.data_dir, "imgate.db")):
                admin_init(self.data_dir)
            for email in accounts:
                admin_account_create(self.data_dir, email, self.config_path)
                self.keys[email] = admin_key_create(self.data_dir, email)
        except BaseException:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            raise
        self.stdout_lines = []
        self.stderr_lines = []
        self._cond = threading.Condition()
        self._readers = []
        self.proc = None
        self.returncode = None
        self.base_url = None
        self.host = None
        self.port = None
        self._start(env or {}, args, use_config_file)
        if wait:
            self.wait_listening()

    # -- process

    def _start(self, env, args, use_config_file):
        argv = [imgate_bin(), "serve"]
        if args is None:
            args = ["--listen", "127.0.0.1:0", "--data", self.data_dir]
            if use_config_file:
                args += ["--config", self.config_path]
        argv += args
        full_env = clean_env(env)
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=full_env)
        for stream, sink in ((self.proc.stdout, self.stdout_lines),
                             (self.proc.stderr, self.stderr_lines)):
            t = threading.Thread(target=self._drain, args=(stream, sink), daemon=True)
            t.start()
            self._readers.append(t)

    def _drain(self, stream, sink):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                sink.append(line)
                self._cond.notify_all()
        stream.close()
        with self._cond:
            self._cond.notify_all()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _wait_line(self, sink, regex, deadline, what):
        rx = re.compile(regex)
        end = time.monotonic() + deadline
        with self._cond:
            while True:
                for line in sink:
                    m = rx.search(line)
                    if m:
                        return m
                if self.proc.poll() is not None and all(not t.is_alive() for t in self._readers):
                    raise AssertionError("imgate exited (%s) before %s\n%s" % (
                        self.proc.returncode, what, self.stderr_tail()))
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out waiting for %s\n%s" % (
                        what, self.stderr_tail()))
                self._cond.wait(min(left, 0.5))

    def wait_stdout(self, regex, deadline=DEADLINE):
        return self._wait_line(self.stdout_lines, regex, deadline, "stdout /%s/" % regex)

    def wait_stderr(self, regex, deadline=DEADLINE):
        return self._wait_line(self.stderr_lines, regex, deadline, "stderr /%s/" % regex)

    def wait_listening(self):
        m = self.wait_stdout(LISTEN_RE.pattern)
        self.base_url = m.group(1).rstrip("/")
        u = urllib.parse.urlsplit(self.base_url)
        self.host, self.port = u.hostname, u.port
        return self.base_url

    def wait_exit(self, deadline=DEADLINE):
        try:
            self.returncode = self.proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.returncode = self.proc.wait()
            for t in self._readers:
                t.join(DEADLINE)
            raise AssertionError("imgate did not exit within %.0f s; killed\n%s" % (
                deadline, self.stderr_tail()))
        for t in self._readers:
            t.join(DEADLINE)
        return self.returncode

    def stop(self, deadline=DEADLINE, check=True, sig=signal.SIGTERM):
        """Sends sig (SIGTERM), waits, and (check) asserts exit code 0.
        Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.wait_exit(deadline)
        if check and code != 0:
            raise AssertionError("imgate exited with %d after %s (want 0)\n%s" % (
                code, signal.Signals(sig).name, self.stderr_tail()))
        if check and self.verify_ledger:
            # Whatever the test did, the money adds up (docs/billing.md, Invariants).
            r = run_cli("admin", "ledger-verify", "--data", self.data_dir)
            if r.code != 0 or r.stdout.strip() != "ok":
                raise AssertionError("ledger-verify failed after the server stopped: %r" % r)
        return code

    def kill9(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.wait_exit()

    def cleanup(self):
        """Kills the process if it still runs and removes the temp folders."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- output

    def stdout_text(self):
        with self._cond:
            return "\n".join(self.stdout_lines)

    def stderr_snapshot(self):
        with self._cond:
            return list(self.stderr_lines)

    def stderr_text(self):
        with self._cond:
            return "\n".join(self.stderr_lines)

    def stderr_tail(self, n=300):
        with self._cond:
            lines = self.stderr_lines[-n:]
        return "---- imgate #%d stderr (last %d lines) ----\n%s\n---- end ----" % (
            self.seq, len(lines), "\n".join(lines))

    # -- HTTP

    def request(self, method, path, json_body=None, body=None, headers=None, key=None,
                timeout=DEADLINE):
        """One request on a fresh connection. json_body is serialised; body is
        sent as given (bytes or str). key adds `Authorization: Bearer key`."""
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["Authorization"] = "Bearer " + key
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            hdrs.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode("utf-8")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, resp.msg, data)
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def create(self, key, **fields):
        """POST /api/banana/create-async; asserts 200 and returns the uid."""
        r = self.request("POST", "/api/banana/create-async", json_body=fields, key=key)
        if r.status != 200:
            raise AssertionError("create failed: %r" % r)
        doc = r.json()
        if doc.get("status") != "queued" or not UUID_RE.match(str(doc.get("uid"))):
            raise AssertionError("unexpected create answer %r" % doc)
        return doc["uid"]

    def task(self, uid, key):
        r = self.get("/api/banana/" + uid, key=key)
        if r.status != 200:
            raise AssertionError("GET task %s: %r" % (uid, r))
        return r.json()

    def poll_until(self, uid, key, predicate, deadline=DEADLINE, seen=None):
        """Polls GET /api/banana/{uid} until predicate(task) holds; returns the
        task. seen (a list) receives every status observed, in order."""
        last = [None]

        def check():
            t = self.task(uid, key)
            last[0] = t
            if seen is not None and (not seen or seen[-1] != t.get("status")):
                seen.append(t.get("status"))
            return t if predicate(t) else None

        try:
            return wait_for(check, deadline, "task %s" % uid)
        except AssertionError:
            raise AssertionError("task %s: condition not met within %.0f s; last %r" % (
                uid, deadline, last[0]))

    def wait_final(self, uid, key, deadline=DEADLINE, seen=None):
        return self.poll_until(uid, key, lambda t: t.get("status") in FINAL_STATES, deadline, seen)

    def fetch_url(self, url, headers=None):
        """GETs an image URL the server handed out, from this server, whatever
        host the URL names (public_url may point elsewhere)."""
        u = urllib.parse.urlsplit(url)
        path = u.path + ("?" + u.query if u.query else "")
        return self.request("GET", path, headers=headers)

    def raw_exchange(self, head, body=b"", expect_continue=False, chunks=None, timeout=DEADLINE):
        """Sends a hand-made request head (bytes ending in CRLF CRLF), then body
        (or each element of chunks, chunked-encoded), tolerating a server that
        answers and closes before reading it all. With expect_continue the body
        goes only after an interim `100 Continue`; a final answer instead of it is
        returned as is. The request is assumed to be a POST (for body parsing)."""
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        f = sock.makefile("rb")
        try:
            sock.sendall(head)
            if expect_continue:
                status, headers = _read_head(f)
                if status != 100:
                    return Response(status, headers, _read_body(f, status, headers))
            if chunks is not None:
                sender = threading.Thread(target=_send_chunks, args=(sock, chunks), daemon=True)
                sender.start()
                try:
                    return _read_final(f)
                finally:
                    sender.join(timeout)
            _send_tolerant(sock, body)
            return _read_final(f)
        finally:
            f.close()
            sock.close()


def _send_tolerant(sock, data):
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False  # the server answered early and closed; its answer is still readable


def _send_chunks(sock, chunks):
    for c in chunks:
        if not _send_tolerant(sock, b"%x\r\n%s\r\n" % (len(c), c)):
            return
    _send_tolerant(sock, b"0\r\n\r\n")


def _read_head(f):
    line = f.readline(65537)
    if not line:
        raise AssertionError("the server closed the connection without an answer")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", line)
    if not m:
        raise AssertionError("bad status line %r" % line)
    headers = http.client.parse_headers(f)
    return int(m.group(1)), headers


def _read_final(f):
    while True:
        status, headers = _read_head(f)
        if status >= 200:
            return Response(status, headers, _read_body(f, status, headers))


def _read_body(f, status, headers):
    if status in (204, 304) or 100 <= status < 200:
        return b""
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        out = b""
        while True:
            size = int(f.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while f.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return out
            out += f.read(size)
            f.readline()
    if headers.get("Content-Length") is not None:
        n = int(headers["Content-Length"])
        data = f.read(n)
        if len(data) != n:
            raise AssertionError("body cut short: %d of %d bytes" % (len(data), n))
        return data
    return f.read()


# ---------------------------------------------------------------- PNG

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def png_chunks(data):
    """Splits a PNG into (type, payload) after checking the signature and every
    chunk's CRC; raises AssertionError on anything malformed."""
    if data[:8] != PNG_SIG:
        raise AssertionError("not a PNG signature: %r" % data[:8])
    pos, chunks = 8, []
    while pos < len(data):
        if pos + 8 > len(data):
            raise AssertionError("truncated chunk header at %d" % pos)
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise AssertionError("chunk %r overruns the file" % ctype)
        payload = data[pos + 8:end]
        (crc,) = struct.unpack(">I", data[end:end + 4])
        if zlib.crc32(ctype + payload) & 0xFFFFFFFF != crc:
            raise AssertionError("bad CRC in chunk %r" % ctype)
        chunks.append((ctype, payload))
        pos = end + 4
        if ctype == b"IEND":
            break
    if pos != len(data):
        raise AssertionError("%d bytes after IEND" % (len(data) - pos))
    if not chunks or chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
        raise AssertionError("PNG must start with IHDR and end with IEND")
    return chunks


def png_size(data):
    """Width and height from IHDR (signature checked)."""
    if data[:8] != PNG_SIG or data[12:16] != b"IHDR":
        raise AssertionError("not a PNG with IHDR first")
    return struct.unpack(">II", data[16:24])


def png_verify(data):
    """Full check: signature, chunk CRCs, IHDR first, IEND last, and the IDAT
    stream inflates to exactly the bytes the IHDR implies. Returns (w, h)."""
    chunks = png_chunks(data)
    ihdr = chunks[0][1]
    if len(ihdr) != 13:
        raise AssertionError("IHDR length %d" % len(ihdr))
    w, h, depth, color, _comp, _filt, interlace = struct.unpack(">IIBBBBB", ihdr)
    if w == 0 or h == 0:
        raise AssertionError("zero size %dx%d" % (w, h))
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color)
    if channels is None:
        raise AssertionError("bad colour type %d" % color)
    idat = b"".join(p for t, p in chunks if t == b"IDAT")
    if not idat:
        raise AssertionError("no IDAT")
    raw = zlib.decompress(idat)
    if interlace == 0:
        row = (w * channels * depth + 7) // 8
        if len(raw) != h * (row + 1):
            raise AssertionError("IDAT inflates to %d bytes, want %d" % (len(raw), h * (row + 1)))
    return w, h


def _chunk(ctype, payload):
    return (struct.pack(">I", len(payload)) + ctype + payload
            + struct.pack(">I", zlib.crc32(ctype + payload) & 0xFFFFFFFF))


def make_png(width, height, rgb=(40, 120, 200), noise=False, pad_to=None):
    """An 8-bit RGB PNG. noise: random pixels (incompressible). pad_to: add a
    tEXt chunk so the file is exactly pad_to bytes."""
    if noise:
        rows = b"".join(b"\x00" + os.urandom(width * 3) for _ in range(height))
    else:
        line = b"\x00" + bytes(rgb) * width
        rows = line * height
    head = PNG_SIG + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    body = _chunk(b"IDAT", zlib.compress(rows, 9)) + _chunk(b"IEND", b"")
    if pad_to is not None:
        overhead = 12 + len(b"Comment\x00")
        fill = pad_to - len(head) - len(body) - overhead
        if fill < 0:
            raise ValueError("PNG already %d bytes, over %d" % (len(head) + len(body), pad_to))
        head += _chunk(b"tEXt", b"Comment\x00" + b"x" * fill)
    out = head + body
    assert pad_to is None or len(out) == pad_to
    return out


def b64(data):
    return base64.b64encode(data).decode("ascii")


def data_uri(data, mime="image/png"):
    return "data:%s;base64,%s" % (mime, b64(data))


# ---------------------------------------------------------------- test case

class ServerTestCase(unittest.TestCase):
    """Prints the stderr of this class's servers when a test fails; servers
    started through start_server()/start_class_server() are stopped (exit 0
    asserted) at the end of the test / the class and their folders removed."""

    _class_servers = []

    @classmethod
    def setUpClass(cls):
        cls._class_servers = []

    @classmethod
    def start_class_server(cls, **kw):
        if "_class_servers" not in cls.__dict__:
            cls._class_servers = []
        s = Server(wait=False, **kw)
        cls._class_servers.append(s)
        cls.addClassCleanup(s.cleanup)
        s.wait_listening()
        return s

    @classmethod
    def tearDownClass(cls):
        errors = []
        for s in cls._class_servers:
            if s.running():
                try:
                    s.stop()
                except AssertionError as e:
                    errors.append(str(e))
        if errors:
            raise AssertionError("\n".join(errors))

    def start_server(self, **kw):
        s = Server(wait=False, **kw)
        self._test_servers.append(s)
        self.addCleanup(s.cleanup)
        self.addCleanup(self._stop_if_running, s)
        s.wait_listening()
        return s

    @staticmethod
    def _stop_if_running(s):
        if s.running():
            s.stop()

    def run(self, result=None):
        self._test_servers = []
        if result is None:
            return super().run(result)
        before = len(result.failures) + len(result.errors)
        out = super().run(result)
        if len(result.failures) + len(result.errors) > before:
            seen = set()
            for s in list(self._class_servers) + self._test_servers:
                if id(s) not in seen:
                    seen.add(id(s))
                    sys.stderr.write("\n%s\n" % s.stderr_tail(400))
            sys.stderr.flush()
        return out

    # -- common assertions

    def assertError(self, resp, status, code, param=..., msg=None):
        """resp is an error reply: status, the JSON error shape, code, and
        (unless param is ...) param. Also checks X-Request-Id."""
        ctx = "%s%r" % ((msg + ": ") if msg else "", resp)
        self.assertEqual(resp.status, status, ctx)
        self.assertTrue(resp.headers.get("X-Request-Id"), "no X-Request-Id: " + ctx)
        self.assertIn("application/json", resp.headers.get("Content-Type", ""), ctx)
        doc = resp.json()
        self.assertIsInstance(doc, dict, ctx)
        self.assertIn("error", doc, ctx)
        err = doc["error"]
        self.assertIsInstance(err, dict, ctx)
        self.assertIsInstance(err.get("code"), str, ctx)
        self.assertTrue(err["code"], ctx)
        self.assertIsInstance(err.get("message"), str, ctx)
        self.assertTrue(err["message"], ctx)
        self.assertIn("param", err, ctx)
        self.assertTrue(err["param"] is None or isinstance(err["param"], str), ctx)
        if code is not None:
            self.assertEqual(err["code"], code, ctx)
        if param is not ...:
            self.assertEqual(err["param"], param, ctx)
        return err

    def assertTimestamps(self, t):
        """created_at <= started_at <= finished_at, each ISO-8601 UTC or null
        as the status implies."""
        for field in ("created_at", "started_at", "finished_at"):
            v = t.get(field)
            if v is not None:
                self.assertRegex(v, TIME_RE, "%s in %r" % (field, t))
        self.assertIsNotNone(t.get("created_at"), t)
        status = t["status"]
        if status == "queued" and t.get("attempts", 0) == 0:
            self.assertIsNone(t.get("started_at"), t)
        if status in ("queued", "running"):
            self.assertIsNone(t.get("finished_at"), t)
        if status == "running" or status in FINAL_STATES:
            self.assertIsNotNone(t.get("started_at"), t)
        if status in FINAL_STATES:
            self.assertIsNotNone(t.get("finished_at"), t)
        times = [parse_time(t[f]) for f in ("created_at", "started_at", "finished_at")
                 if t.get(f) is not None]
        self.assertEqual(times, sorted(times), "timestamps out of order in %r" % t)

    def assertImages(self, srv, t, width, height, count=1):
        """t succeeded with count images of width x height; every URL serves
        a valid PNG of that size and of the advertised length. Returns the
        downloaded bodies."""
        self.assertEqual(t["status"], "succeeded", t)
        self.assertIsNone(t.get("error"), t)
        self.assertEqual(t.get("provider"), "sim", t)
        images = t.get("images")
        self.assertIsInstance(images, list, t)
        self.assertEqual(len(images), count, t)
        self.assertEqual(t.get("result_urls"), [im["url"] for im in images], t)
        bodies = []
        for im in images:
            self.assertRegex(im["url"], r"^https?://[^/]+/files/[^/?#]+\.png$", im)
            self.assertEqual(im.get("content_type"), "image/png", im)
            self.assertEqual((im.get("width"), im.get("height")), (width, height), t)
            r = srv.fetch_url(im["url"])
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.headers.get("Content-Type"), "image/png", r.headers)
            self.assertEqual(len(r.body), im.get("bytes"), im)
            self.assertEqual(png_verify(r.body), (width, height), im["url"])
            bodies.append(r.body)
        return bodies


def parse_time(s):
    """'2026-01-02T03:04:05.678Z' -> seconds since the epoch (float)."""
    dt = datetime.datetime.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")
    frac = s[19:-1]
    secs = dt.replace(tzinfo=datetime.timezone.utc).timestamp()
    return secs + (float(frac) if frac else 0.0)


def finished_lines(servers, uid):
    """The `msg=task_finished ... task=<uid>` lines in the stderr of servers."""
    rx = re.compile(r"(^|\s)msg=task_finished(\s.*)?\stask=%s(\s|$)" % re.escape(uid))
    return [line for s in servers for line in s.stderr_snapshot() if rx.search(line)]


def count_finished(servers, uid):
    return len(finished_lines(servers, uid))
