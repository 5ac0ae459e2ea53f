"""upstream_util.py - shared by the Step 2 upstream tests (test_upstream_*.py).

Puts tests/fakes on the path (FakeUpstream, and the fake's own image encoders so a
test can compute the exact bytes the fake sends), and adds helpers: provider and
route configuration, starting a fake for a test, picking one task's requests out
of a fake's recording, a closed port, a Prometheus text parser, and an
admin-authenticated GET.
"""

import os
import re
import socket
import sys

import harness as h

_FAKES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fakes")
if _FAKES not in sys.path:
    sys.path.insert(0, _FAKES)

import fake_upstream  # noqa: E402  (the fake's encoders: expected image bytes)
from fakeclient import FakeUpstream  # noqa: E402,F401

ADMIN_TOKEN = "admin-token-for-e2e-0123456789"
GEMINI_KEY = "gk-e2e-test-key"
OPENAI_KEY = "sk-e2e-test-key"

MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXT = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def start_fake(add_cleanup, *args):
    """A FakeUpstream started with args (its options, e.g. "--gemini-key", KEY);
    add_cleanup (a test's addCleanup, or addClassCleanup) is handed its stop."""
    fake = FakeUpstream(*args).start()
    add_cleanup(fake.stop)
    return fake


class WithFake:
    """A test-case mixin (before the ServerTestCase base): one fake, strict about
    both keys, for the whole class (cls.fake), reset before every test."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.fake = start_fake(cls.addClassCleanup, "--gemini-key", GEMINI_KEY,
                              "--openai-key", OPENAI_KEY)

    def setUp(self):
        super().setUp()
        self.fake.reset()

    def gpt_and_gemini(self):
        """Providers "o" (OpenAI) and "g" (Gemini) at the fake, gpt-image-1 routed
        to the first and nano-banana to the second: config members."""
        return {"providers": [openai_provider("o", self.fake.openai_base_url),
                              gemini_provider("g", self.fake.gemini_base_url)],
                "routes": {"gpt-image-1": [route("o")], "nano-banana": [route("g")]}}


def fake_image(fmt, prompt, width=8, height=8, pad_bytes=0):
    """The bytes the fake answers for prompt (its final image) in fmt (grown by
    pad_bytes, as the step option of that name does)."""
    return fake_upstream.pad(fake_upstream.make_image(fmt, width, height, prompt)[0], pad_bytes)


def jpeg(width, height, rgb=(200, 30, 60)):
    return fake_upstream.jpeg_bytes(width, height, rgb)


def webp(width, height, rgb=(10, 200, 60)):
    return fake_upstream.webp_bytes(width, height, rgb)


def gemini_provider(name, base_url, key=GEMINI_KEY, **extra):
    p = {"name": name, "kind": "gemini", "base_url": base_url, "api_key": key}
    p.update(extra)
    return p


def openai_provider(name, base_url, key=OPENAI_KEY, **extra):
    p = {"name": name, "kind": "openai", "base_url": base_url, "api_key": key}
    p.update(extra)
    return p


def route(provider, upstream_model=None, weight=None):
    r = {"provider": provider}
    if upstream_model is not None:
        r["upstream_model"] = upstream_model
    if weight is not None:
        r["weight"] = weight
    return r


def request_prompt(rec):
    """The prompt of a recorded Gemini or OpenAI request (None when it has none)."""
    j = rec.get("json")
    if rec.get("api") == "gemini" and isinstance(j, dict):
        texts = [p.get("text") for c in j.get("contents", []) for p in c.get("parts", [])
                 if isinstance(p, dict) and "text" in p]
        return "\n".join(texts) if texts else None
    if rec.get("api") == "openai":
        if isinstance(j, dict):
            return j.get("prompt")
        for part in rec.get("multipart") or []:
            if part["name"] == "prompt":
                return part["text"]
    return None


def requests_for(fake, prompt):
    """The fake's recorded upstream requests carrying prompt, oldest first."""
    return [r for r in fake.requests() if request_prompt(r) == prompt]


def closed_port():
    """A local TCP port nothing listens on (bound, then released)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


_PROM_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_PROM_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text):
    """{(name, frozenset(labels.items())): value} of a text exposition; every
    non-comment line must parse, and every sample must follow its TYPE line."""
    out, typed = {}, set()
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        m = _PROM_LINE.match(line)
        if not m:
            raise AssertionError("metrics line does not parse: %r" % line)
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        if name not in typed:
            raise AssertionError("sample %r before its # TYPE line" % line)
        pairs = _PROM_LABEL.findall(labels)
        if labels and ",".join('%s="%s"' % p for p in pairs) != labels:
            raise AssertionError("bad labels in %r" % line)
        key = (name, frozenset(pairs))
        if key in out:
            raise AssertionError("duplicate sample %r" % line)
        out[key] = float(value)
    return out


def metric(samples, name, **labels):
    """One sample's value (0 when the sample is absent: counters start at zero)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def admin_get(srv, path, token=ADMIN_TOKEN):
    return srv.get(path, headers={"Authorization": "Bearer " + token})


def providers_doc(srv, token=ADMIN_TOKEN):
    r = admin_get(srv, "/admin/providers", token)
    if r.status != 200:
        raise AssertionError("GET /admin/providers: %r" % r)
    return r.json()


def route_health(srv, model, provider, token=ADMIN_TOKEN):
    """The /admin/providers entry of one route."""
    doc = providers_doc(srv, token)
    found = [r for r in doc["routes"] if r["model"] == model and r["provider"] == provider]
    if len(found) != 1:
        raise AssertionError("route %s -> %s appears %d times in %r" % (
            model, provider, len(found), doc))
    return found[0]


def metrics(srv, token=ADMIN_TOKEN):
    r = admin_get(srv, "/metrics", token)
    if r.status != 200:
        raise AssertionError("GET /metrics: %r" % r)
    return parse_prometheus(r.body.decode("utf-8"))


def attempt_times(a):
    return h.parse_time(a["started_at"]), h.parse_time(a["ended_at"])
