"""test_s3_client.py - the S3 client (src/blob/s3client.c) against a real
S3-compatible server that checks SigV4 signatures: moto's, started on 127.0.0.1
by tests/fakes/moto_s3.py. tests/tools/s3_driver runs each operation through the
client and prints what came back; what the store holds is checked independently
with boto3 (AWS's own SDK, from the same Python as moto), presigned URLs are
fetched with the standard library.

A second, scripted fake (FailingS3 below) answers what moto cannot be made to
say: SlowDown, and a completion that fails inside a 200 answer.

Nothing here connects anywhere but 127.0.0.1: virtual-host addressing uses
bucket.localhost, pinned to 127.0.0.1 by the client's resolve setting.
"""

import hashlib
import http.client
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

from harness import DEADLINE, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
FAKES = os.path.join(HERE, "..", "fakes")
MIB = 1 << 20


def driver_bin():
    path = os.environ.get("IMGATE_S3_DRIVER")
    if not path:
        raise unittest.SkipTest("IMGATE_S3_DRIVER is not set")
    return path


class MotoS3:
    """tests/fakes/moto_s3.py as a child process; stop() asserts it exits 0."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(FAKES, "moto_s3.py")], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stderr_lines = []
        self.ready = []
        threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr_lines),
                         daemon=True).start()
        threading.Thread(target=self._drain, args=(self.proc.stdout, self.ready),
                         daemon=True).start()
        try:
            line = wait_for(lambda: self.ready[0] if self.ready else
                            (self.proc.poll() is not None and "exited"),
                            what="moto_s3.py to say it is ready")
        except AssertionError:
            self.proc.kill()
            raise
        if line == "exited":
            raise AssertionError("moto_s3.py exited %s before it was ready:\n%s" % (
                self.proc.returncode, "".join(self.stderr_lines[-30:])))
        self.info = json.loads(line)
        self.port = self.info["port"]
        self.bucket = self.info["bucket"]

    @staticmethod
    def _drain(pipe, lines):
        for raw in iter(pipe.readline, b""):
            lines.append(raw.decode("utf-8", "replace"))

    def env(self, **extra):
        env = {"IMGATE_S3_ENDPOINT": self.info["endpoint"], "IMGATE_S3_BUCKET": self.bucket,
               "IMGATE_S3_REGION": self.info["region"], "IMGATE_S3_ADDRESSING": "path",
               "AWS_ACCESS_KEY_ID": self.info["access_key"],
               "AWS_SECRET_ACCESS_KEY": self.info["secret_key"]}
        env.update(extra)
        return env

    def boto3(self):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.info["endpoint"],
                            aws_access_key_id=self.info["access_key"],
                            aws_secret_access_key=self.info["secret_key"],
                            config=Config(region_name=self.info["region"],
                                          retries={"max_attempts": 1}))

    def stop(self):
        self.proc.stdin.close()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=DEADLINE)
        if code != 0:
            raise AssertionError("moto_s3.py exited %d:\n%s" % (
                code, "".join(self.stderr_lines[-30:])))


def run_driver(env, *args):
    """Runs s3_driver; returns its JSON answer."""
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "IMGATE_S3_", "S3_DRIVER_"))}
    full.update(env)
    proc = subprocess.run([driver_bin()] + [str(a) for a in args], env=full,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=DEADLINE * 3)
    if proc.returncode != 0:
        raise AssertionError("s3_driver %r exited %d: %s" % (
            args, proc.returncode, proc.stderr.decode("utf-8", "replace")))
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError("s3_driver %r printed %r (stderr %r)" % (
            args, proc.stdout[:500], proc.stderr[:2000]))


def http_get(url, headers=None, connect_to=None):
    """GET url with the standard library; (status, body, parsed error code).
    connect_to: (host, port) to connect to instead of the URL's host (which
    still goes in the Host header): no name is looked up."""
    parts = urllib.parse.urlsplit(url)
    host, port = connect_to or (parts.hostname, parts.port)
    conn = http.client.HTTPConnection(host, port, timeout=DEADLINE)
    target = parts.path + ("?" + parts.query if parts.query else "")
    all_headers = {"Host": parts.netloc}
    all_headers.update(headers or {})
    conn.request("GET", target, headers=all_headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    code = re.search(rb"<Code>([^<]*)</Code>", body) if resp.status >= 300 else None
    return resp.status, body, code.group(1).decode() if code else ""


class S3ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        driver_bin()
        try:
            import moto  # noqa: F401  (the image's Python ships it; no Debian package has it)
        except ImportError:
            raise AssertionError("moto is not importable by %s: the S3 tests need moto_server "
                                 "(docs/testing.md)" % sys.executable)
        cls.moto = MotoS3()
        cls.s3 = cls.moto.boto3()
        cls.tmp = tempfile.TemporaryDirectory(prefix="imgate-s3-")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()
        cls.moto.stop()

    def write(self, name, data):
        path = os.path.join(self.tmp.name, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def drive(self, *args, **env):
        return run_driver(self.moto.env(**env), *args)

    def assert_ok(self, res):
        self.assertEqual(res["status"], "ok", res)
        return res

    def stored(self, key):
        return self.s3.get_object(Bucket=self.moto.bucket, Key=key)["Body"].read()

    # ------------------------------------------------------------ basics

    def test_put_get_round_trip(self):
        data = os.urandom(100_000)
        src = self.write("round.bin", data)
        put = self.assert_ok(self.drive("put", "round/trip.png", src, "image/png"))
        # A single PUT's ETag is the MD5 of the bytes: the store got these bytes.
        self.assertEqual(put["etag"], '"%s"' % hashlib.md5(data).hexdigest())
        self.assertEqual(self.stored("round/trip.png"), data)
        out = os.path.join(self.tmp.name, "round.out")
        got = self.assert_ok(self.drive("get", "round/trip.png", out))
        with open(out, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(got["size"], len(data))
        self.assertEqual(got["object_size"], len(data))
        self.assertEqual(got["content_type"], "image/png")
        self.assertEqual(got["etag"], put["etag"])
        self.assertGreater(got["last_modified_ms"], (time.time() - 3600) * 1000)
        # An empty object too.
        empty = self.write("empty.bin", b"")
        self.assert_ok(self.drive("put", "round/empty", empty))
        self.assertEqual(self.stored("round/empty"), b"")

    def test_range_get(self):
        data = bytes(range(256)) * 4
        self.assert_ok(self.drive("put", "range/obj", self.write("range.bin", data)))
        out = os.path.join(self.tmp.name, "range.out")
        got = self.assert_ok(self.drive("get", "range/obj", out, 100, 50))
        self.assertEqual(got["http"], 206)
        self.assertEqual(got["range_start"], 100)
        self.assertEqual(got["object_size"], len(data))
        with open(out, "rb") as f:
            self.assertEqual(f.read(), data[100:150])
        # Past the end: the store sends what there is.
        got = self.assert_ok(self.drive("get", "range/obj", out, 1000, 100))
        with open(out, "rb") as f:
            self.assertEqual(f.read(), data[1000:])

    def test_head_and_not_found(self):
        data = b"x" * 1234
        self.assert_ok(self.drive("put", "head/obj", self.write("head.bin", data), "text/plain"))
        head = self.assert_ok(self.drive("head", "head/obj"))
        self.assertEqual(head["object_size"], 1234)
        self.assertEqual(head["content_type"], "text/plain")
        self.assertEqual(head["etag"], '"%s"' % hashlib.md5(data).hexdigest())
        missing = self.drive("head", "head/missing")
        self.assertEqual((missing["status"], missing["http"]), ("not_found", 404), missing)
        missing = self.drive("get", "head/missing", os.path.join(self.tmp.name, "nothing"))
        self.assertEqual((missing["status"], missing["code"]), ("not_found", "NoSuchKey"), missing)
        self.assertIn("does not exist", missing["message"])

    def test_delete(self):
        self.assert_ok(self.drive("put", "del/obj", self.write("del.bin", b"gone soon")))
        self.assert_ok(self.drive("delete", "del/obj"))
        self.assertEqual(self.drive("head", "del/obj")["status"], "not_found")
        listed = self.s3.list_objects_v2(Bucket=self.moto.bucket, Prefix="del/")
        self.assertEqual(listed.get("KeyCount"), 0)

    def test_list_paging(self):
        # 25 objects put at once through the asynchronous API, then listed ten
        # to a page: three pages, every key once, in order.
        many = self.drive("put-many", "page/k", 25)
        self.assertEqual((many["started"], many["ok"], many["failures"]), (25, 25, []), many)
        self.assert_ok(self.drive("put", "pagex/other", self.write("other.bin", b"o")))
        listed = self.assert_ok(self.drive("list", "page/", 10))
        self.assertEqual(listed["pages"], [10, 10, 5])
        keys = [e["key"] for e in listed["keys"]]
        self.assertEqual(keys, sorted("page/k%d" % i for i in range(25)))
        for e in listed["keys"]:
            body = ("body of %s" % e["key"][len("page/k"):]).encode()
            self.assertEqual(e["size"], len(body))
            self.assertEqual(e["etag"], '"%s"' % hashlib.md5(body).hexdigest())
        # One page when it all fits.
        self.assertEqual(self.assert_ok(self.drive("list", "page/", 0))["pages"], [25])

    def test_keys_with_spaces_and_unicode(self):
        keys = ["sp ace/a b.png", "ünï/日本語 (1)+~!*'.png", "dots/./x/../y", "q?a=1&b#c%41"]
        for i, key in enumerate(keys):
            data = ("object %d" % i).encode()
            self.assert_ok(self.drive("put", key, self.write("k%d" % i, data)))
            self.assertEqual(self.stored(key), data, key)  # boto3 finds it under the same key
            out = os.path.join(self.tmp.name, "k%d.out" % i)
            self.assert_ok(self.drive("get", key, out))
            with open(out, "rb") as f:
                self.assertEqual(f.read(), data, key)
        for key in keys:
            prefix = key.split("/")[0]
            listed = self.assert_ok(self.drive("list", prefix, 0))
            self.assertIn(key, [e["key"] for e in listed["keys"]])
        for key in keys:
            self.assert_ok(self.drive("delete", key))
            self.assertEqual(self.drive("head", key)["status"], "not_found", key)

    # ------------------------------------------------------------ multipart

    def test_multipart_40mb_memory_bounded(self):
        size = 40 * MIB
        src = os.path.join(self.tmp.name, "big.bin")
        digest = hashlib.sha256()
        with open(src, "wb") as f:
            for _ in range(size // MIB):
                chunk = os.urandom(MIB)
                digest.update(chunk)
                f.write(chunk)
        res = self.assert_ok(self.drive("put-file", "big/40mb.bin", src, "image/png",
                                        S3_DRIVER_PART_SIZE=str(8 * MIB)))
        # Five parts of 8 MiB: the object's ETag says so (MD5 of the part MD5s, "-5").
        self.assertTrue(res["etag"].endswith('-5"'), res)
        # Memory: parts are streamed from the file, never held. The upload's
        # peak resident size grows by less than one part over the driver's
        # own before it (measured: 1.5 MiB optimised, 3.5 MiB under ASan).
        # The whole process's size is not a measure: the libraries linked in
        # (libvips, libxml2) and ASan's shadow memory move it by tens of MiB.
        growth_kb = res["rss_peak_kb"] - res["rss_before_kb"]
        self.assertLess(growth_kb, 6 * 1024, res)
        head = self.s3.head_object(Bucket=self.moto.bucket, Key="big/40mb.bin")
        self.assertEqual(head["ContentLength"], size)
        self.assertEqual(head["ContentType"], "image/png")
        got = hashlib.sha256()
        body = self.s3.get_object(Bucket=self.moto.bucket, Key="big/40mb.bin")["Body"]
        for chunk in iter(lambda: body.read(MIB), b""):
            got.update(chunk)
        self.assertEqual(got.hexdigest(), digest.hexdigest())
        uploads = self.s3.list_multipart_uploads(Bucket=self.moto.bucket, Prefix="big/")
        self.assertEqual(uploads.get("Uploads", []), [])

    def test_multipart_failure_aborts(self):
        # The file is shorter than the length given: a part cannot be read, the
        # upload fails with that reason and is aborted (no parts left behind).
        src = self.write("short.bin", os.urandom(7 * MIB))
        res = self.drive("put-file", "short/obj", src, "image/png", 13 * MIB,
                         S3_DRIVER_PART_SIZE=str(5 * MIB))
        self.assertEqual(res["status"], "failed", res)
        self.assertIn("shorter", res["message"])
        uploads = self.s3.list_multipart_uploads(Bucket=self.moto.bucket, Prefix="short/")
        self.assertEqual(uploads.get("Uploads", []), [])
        self.assertEqual(self.drive("head", "short/obj")["status"], "not_found")

    def test_small_file_is_one_put(self):
        data = os.urandom(3 * MIB)
        res = self.assert_ok(self.drive("put-file", "small/file", self.write("small.bin", data),
                                        S3_DRIVER_PART_SIZE=str(5 * MIB)))
        self.assertEqual(res["etag"], '"%s"' % hashlib.md5(data).hexdigest())
        self.assertEqual(self.stored("small/file"), data)

    # ------------------------------------------------------------ presigned URLs

    def presign(self, key, expires, now=None, **env):
        args = ["presign", key, expires] + ([now] if now is not None else [])
        url = self.drive(*args, **env)["url"]
        self.assertTrue(url)
        return url

    def test_presigned_get(self):
        data = os.urandom(50_000)
        key = "presigned/ä b+c.png"
        self.assert_ok(self.drive("put", key, self.write("pre.bin", data), "image/png"))
        url = self.presign(key, 60)
        with urllib.request.urlopen(url, timeout=DEADLINE) as resp:
            self.assertEqual(resp.status, 200)
            self.assertEqual(resp.read(), data)
        # A ranged read works with the same URL (Range is not signed).
        status, body, _ = http_get(url, {"Range": "bytes=10-19"})
        self.assertEqual((status, body), (206, data[10:20]))
        # One changed character of the signature: refused.
        tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
        self.assertEqual(http_get(tampered)[::2], (403, "SignatureDoesNotMatch"))
        # The key changed under the signature: refused.
        other = url.replace("presigned/", "presigned2/", 1)
        self.assertEqual(http_get(other)[::2], (403, "SignatureDoesNotMatch"))
        # No signature at all: refused.
        self.assertEqual(http_get(url.split("?")[0])[0], 403)

    def test_presigned_expired(self):
        key = "presigned/expiring"
        self.assert_ok(self.drive("put", key, self.write("exp.bin", b"short-lived")))
        signed_at = int(time.time()) - 120
        url = self.presign(key, 60, signed_at)  # expired a minute ago
        status, body, code = http_get(url)
        self.assertEqual((status, code), (403, "AccessDenied"))
        self.assertIn(b"Request has expired", body)
        fresh = self.presign(key, 300, signed_at)  # same time, longer life: still valid
        self.assertEqual(http_get(fresh)[:2], (200, b"short-lived"))

    # ------------------------------------------------------------ refusals

    def test_wrong_secret_refused(self):
        src = self.write("denied.bin", b"never stored")
        res = self.drive("put", "denied/obj", src, AWS_SECRET_ACCESS_KEY="not-the-secret")
        self.assertEqual((res["status"], res["http"], res["code"]),
                         ("denied", 403, "SignatureDoesNotMatch"), res)
        self.assertIn("signature", res["message"].lower())
        res = self.drive("put", "denied/obj", src, AWS_ACCESS_KEY_ID="AKIANOTAKEY00000000")
        self.assertEqual((res["status"], res["code"]), ("denied", "InvalidAccessKeyId"), res)
        res = self.drive("get", "round/trip.png", os.path.join(self.tmp.name, "x"),
                         AWS_SECRET_ACCESS_KEY="not-the-secret")
        self.assertEqual(res["status"], "denied", res)
        self.assertEqual(self.s3.list_objects_v2(Bucket=self.moto.bucket,
                                                 Prefix="denied/").get("KeyCount"), 0)
        # A presigned URL made with the wrong secret is refused too.
        url = self.presign("round/trip.png", 60, AWS_SECRET_ACCESS_KEY="not-the-secret")
        self.assertEqual(http_get(url)[::2], (403, "SignatureDoesNotMatch"))

    def test_bad_configuration(self):
        res = self.drive("head", "x", IMGATE_S3_BUCKET="Not_A_Bucket")
        self.assertEqual(res["status"], "config")
        self.assertIn("s3 bucket", res["message"])

    # ------------------------------------------------------------ virtual-host style

    def test_virtual_host_style(self):
        port = self.moto.port
        host = "%s.localhost" % self.moto.bucket
        env = {"IMGATE_S3_ENDPOINT": "http://localhost:%d" % port,
               "IMGATE_S3_ADDRESSING": "virtual-host",
               "S3_DRIVER_RESOLVE": "%s:%d:127.0.0.1" % (host, port)}
        data = os.urandom(10_000)
        key = "vhost/é x.bin"
        before = len(self.moto.stderr_lines)
        self.assert_ok(self.drive("put", key, self.write("vh.bin", data), **env))
        self.assertEqual(self.stored(key), data)
        out = os.path.join(self.tmp.name, "vh.out")
        self.assert_ok(self.drive("get", key, out, **env))
        with open(out, "rb") as f:
            self.assertEqual(f.read(), data)
        listed = self.assert_ok(self.drive("list", "vhost/", 0, **env))
        self.assertEqual([e["key"] for e in listed["keys"]], [key])
        # The requests named the bucket in the host, not in the path.
        lines = self.moto.stderr_lines[before:]
        self.assertTrue(any('"PUT /vhost/' in line for line in lines), lines)
        self.assertTrue(any('"GET /?list-type=2' in line for line in lines), lines)
        url = self.presign(key, 60, **env)
        self.assertTrue(url.startswith("http://%s:%d/vhost/" % (host, port)), url)
        status, body, _ = http_get(url, connect_to=("127.0.0.1", port))
        self.assertEqual((status, body), (200, data))
        self.assert_ok(self.drive("delete", key, **env))
        self.assertEqual(self.drive("head", key)["status"], "not_found")


class FailingS3(http.server.ThreadingHTTPServer):
    """A scripted S3 on 127.0.0.1: multipart create and parts succeed, the
    completion fails inside a 200 answer, HEAD answers SlowDown. Records
    every request line."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), FailingS3Handler)
        self.requests = []
        threading.Thread(target=self.serve_forever, daemon=True).start()


class FailingS3Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        while n > 0:
            n -= len(self.rfile.read(min(n, MIB)))

    def do_HEAD(self):
        self.server.requests.append(("HEAD", self.path))
        self.reply(503)

    def do_GET(self):
        self.server.requests.append(("GET", self.path))
        self.reply(503, b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate."
                        b"</Message></Error>")

    def do_POST(self):
        self.read_body()
        self.server.requests.append(("POST", self.path))
        if self.path.endswith("?uploads="):
            self.reply(200, b"<InitiateMultipartUploadResult><UploadId>up-1</UploadId>"
                            b"</InitiateMultipartUploadResult>")
        else:
            self.reply(200, b"<Error><Code>InternalError</Code><Message>We encountered an "
                            b"internal error. Please try again.</Message></Error>")

    def do_PUT(self):
        self.read_body()
        self.server.requests.append(("PUT", self.path))
        self.reply(200, headers=[("ETag", '"part"')])

    def do_DELETE(self):
        self.server.requests.append(("DELETE", self.path))
        self.reply(204)


class S3ErrorMappingTest(unittest.TestCase):
    def setUp(self):
        driver_bin()
        self.fake = FailingS3()
        self.addCleanup(self.fake.server_close)
        self.addCleanup(self.fake.shutdown)
        self.tmp = tempfile.TemporaryDirectory(prefix="imgate-s3-")
        self.addCleanup(self.tmp.cleanup)
        self.env = {"IMGATE_S3_ENDPOINT": "http://127.0.0.1:%d" % self.fake.server_address[1],
                    "IMGATE_S3_BUCKET": "bucket", "AWS_ACCESS_KEY_ID": "AK",
                    "AWS_SECRET_ACCESS_KEY": "SK", "S3_DRIVER_PART_SIZE": str(5 * MIB)}

    def test_slow_down_is_retryable(self):
        res = run_driver(self.env, "get", "k", os.path.join(self.tmp.name, "o"))
        self.assertEqual((res["status"], res["http"], res["code"]),
                         ("retryable", 503, "SlowDown"), res)
        self.assertIn("reduce your request rate", res["message"])
        res = run_driver(self.env, "head", "k")
        self.assertEqual((res["status"], res["http"]), ("retryable", 503), res)

    def test_completion_failing_inside_200_aborts(self):
        src = os.path.join(self.tmp.name, "f.bin")
        with open(src, "wb") as f:
            f.write(os.urandom(11 * MIB))
        res = run_driver(self.env, "put-file", "k", src)
        self.assertEqual((res["status"], res["http"], res["code"]),
                         ("retryable", 200, "InternalError"), res)
        methods = [m for m, _ in self.fake.requests]
        self.assertEqual(methods, ["POST", "PUT", "PUT", "PUT", "POST", "DELETE"],
                         self.fake.requests)
        parts = sorted(p for m, p in self.fake.requests if m == "PUT")
        self.assertEqual(parts, ["/bucket/k?partNumber=%d&uploadId=up-1" % i for i in (1, 2, 3)])
        self.assertEqual(self.fake.requests[-1], ("DELETE", "/bucket/k?uploadId=up-1"))

    def test_unreachable_store_is_retryable(self):
        env = dict(self.env, IMGATE_S3_ENDPOINT="http://127.0.0.1:%d" % self.fake.server_address[1])
        self.fake.shutdown()
        self.fake.server_close()  # the port now refuses connections
        res = run_driver(env, "head", "k")
        self.assertEqual((res["status"], res["http"]), ("retryable", 0), res)
        self.assertIn("connect", res["message"].lower())


if __name__ == "__main__":
    unittest.main()
