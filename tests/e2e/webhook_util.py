"""webhook_util.py - the webhook test receiver (tests/webhook/receiver.mjs) for
Python tests, and the probe binary that drives the C signer and client.

Receiver: a Node.js process verifying every delivery with the npm package
standardwebhooks (the reference verifier), installed into
tests/webhook/node_modules by `scripts/deps.sh --test` (which `make test`
runs first). Started on 127.0.0.1 at a port it picks; scripted and read
through its small control API:

    r = Receiver.start(secrets={"current": SECRET})
    self.addCleanup(r.stop)
    r.script("/hook", [{"status": 500, "times": 2}, {"status": 200}])
    ... deliveries to r.url("/hook") ...
    recs = r.wait_deliveries(3, path="/hook")

Every wait polls with a deadline (harness.wait_for); stop() asserts the
process exits 0.
"""

import http.client
import json
import os
import shutil
import subprocess
import threading
import unittest

import harness as h

WEBHOOK_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            "..", "webhook"))
RECEIVER = os.path.join(WEBHOOK_DIR, "receiver.mjs")
VERIFIER_PACKAGE = os.path.join(WEBHOOK_DIR, "node_modules", "standardwebhooks", "package.json")


def node_bin():
    node = shutil.which("node")
    if not node:
        raise RuntimeError("node is not installed: run scripts/deps.sh --test (make test does)")
    if not os.path.exists(VERIFIER_PACKAGE):
        raise RuntimeError("%s is missing: run scripts/deps.sh --test (make test does)"
                           % VERIFIER_PACKAGE)
    return node


def probe_bin():
    path = os.environ.get("IMGATE_WEBHOOK_PROBE")
    if not path:
        raise unittest.SkipTest("IMGATE_WEBHOOK_PROBE is not set (ctest sets it)")
    return os.path.abspath(path)


class Receiver:
    """One receiver.mjs process (see the module comment)."""

    def __init__(self, proc):
        self.proc = proc
        self.port = None
        self.stderr = []
        self._first_line = []
        threading.Thread(target=self._drain, args=(proc.stdout, self._first_line),
                         daemon=True).start()
        threading.Thread(target=self._drain, args=(proc.stderr, self.stderr),
                         daemon=True).start()

    @staticmethod
    def _drain(stream, lines):
        for line in stream:
            lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    @classmethod
    def start(cls, secrets=None):
        proc = subprocess.Popen([node_bin(), RECEIVER, "--port", "0"], cwd=WEBHOOK_DIR,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        r = cls(proc)
        try:
            line = h.wait_for(lambda: r._first_line[0] if r._first_line
                              else r._exited("before listening"), what="the receiver to listen")
            r.port = json.loads(line)["port"]
            if secrets is not None:
                r.set_secrets(secrets)
        except BaseException:
            r.stop(check=False)
            raise
        return r

    def _exited(self, when):
        if self.proc.poll() is not None:
            raise AssertionError("the receiver exited %s (%d): %s" % (
                when, self.proc.returncode, "\n".join(self.stderr)))
        return None

    def url(self, path="/hook"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def _call(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=h.DEADLINE)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data,
                         headers={"content-type": "application/json"} if data else {})
            resp = conn.getresponse()
            payload = resp.read()
            if resp.status != 200:
                raise AssertionError("receiver %s %s: %d %r" % (method, path, resp.status, payload))
            return json.loads(payload)
        finally:
            conn.close()

    def set_secrets(self, secrets):
        """secrets: {name: "whsec_..."}; every delivery is tried with each."""
        return self._call("PUT", "/_control/secrets", secrets)

    def script(self, path, steps):
        """How path answers, in order; the last step repeats. A step:
        {"status": N, "times": K}, {"status": 302, "location": URL},
        {"status": N, "delay_ms": D}, {"hang": True}."""
        return self._call("PUT", "/_control/script", {"path": path, "steps": steps})

    def deliveries(self, path=None):
        recs = self._call("GET", "/_control/deliveries")
        return [r for r in recs if path is None or r["path"] == path]

    def wait_deliveries(self, n, path=None, deadline=h.DEADLINE):
        """Waits until at least n deliveries to path (any path: None) are recorded."""
        return h.wait_for(lambda: (lambda recs: recs if len(recs) >= n else None)(
            self.deliveries(path)), deadline=deadline,
            what="%d deliveries to %s" % (n, path or "the receiver"))

    def reset(self):
        return self._call("POST", "/_control/reset")

    def post(self, path, body, headers):
        """A delivery made by hand (a test tampering with it): returns (status, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=h.DEADLINE)
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def stop(self, check=True):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=h.DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("the receiver did not stop on SIGTERM")
        if check and self.proc.returncode != 0:
            raise AssertionError("the receiver exited %d: %s" % (
                self.proc.returncode, "\n".join(self.stderr)))


def probe_sign(secret, msg_id, timestamp_s, payload, previous=None):
    """The webhook-signature value webhook/sign.c makes."""
    args = [probe_bin(), "sign", "--secret", secret, "--id", msg_id,
            "--timestamp", str(timestamp_s)]
    if previous:
        args += ["--previous", previous]
    r = subprocess.run(args, input=payload, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=h.DEADLINE)
    if r.returncode != 0:
        raise AssertionError("webhook_probe sign failed: %r" % r.stderr)
    return r.stdout.decode().strip()


def probe_send(url, msg_id, secret, payload, previous=None, timeout_ms=10000,
               allow_http=True, allow_private=True, public_port=None, timestamp_s=None):
    """One attempt by webhook/client.c over a real curl loop; returns its JSON
    ({"started", "outcome", "http_status", "error", "timestamp_s",
    "duration_ms", "asked", "escaped"})."""
    args = [probe_bin(), "send", "--url", url, "--id", msg_id, "--secret", secret,
            "--timeout-ms", str(timeout_ms)]
    if previous:
        args += ["--previous", previous]
    if allow_http:
        args.append("--allow-http")
    if allow_private:
        args.append("--allow-private")
    if public_port:
        args += ["--public-port", str(public_port)]
    if timestamp_s is not None:
        args += ["--timestamp", str(timestamp_s)]
    r = subprocess.run(args, input=payload, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=h.DEADLINE + timeout_ms / 1000.0)
    if r.returncode != 0:
        raise AssertionError("webhook_probe send failed (%d): %r" % (r.returncode, r.stderr))
    return json.loads(r.stdout)
