"""test_follow_stop.py - SIGTERM while requests follow their tasks, in every
dialect at once: every wait answers at once with what there is, in its own
dialect's words (the native task as it is, OpenAI's 202 task to poll,
apistor's running object, Gemini's 503 shutting_down, seed 004's accepted
answer), every stream ends cleanly (Gemini's with the error as its last
event), nothing is cut, and the server exits 0. All of them are followers of
their task (src/api/follow.h) and share how a stop reaches them."""

import http.client
import json
import signal
import threading

import harness as h

EMAIL = "follow-stop@example.com"
# Tasks that run far longer than the test: every request is still following
# its task when the server is told to stop.
CONFIG = {"sim": {"delay_ms": 600000}, "engine": {"drain_timeout_ms": 100},
          # Gemini's SSE answer starts (and so can only tell an error inside
          # the stream) with its first keep-alive.
          "http": {"stream_keepalive_ms": 200}}

GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "a gemini follower"}]}]}

# Requests whose answer comes only once they stop waiting: (name, method,
# path, body).
WAITS = [
    ("native", "POST", "/api/banana/create", {"prompt": "a native wait"}),
    ("openai", "POST", "/v1/images/generations", {"model": "nano-banana", "prompt": "an openai wait"}),
    ("apistor", "POST", "/api/v1/images/nanobanana/generate",
     {"model": "nano-banana", "prompt": "an apistor wait", "shutProgress": True}),
    ("gemini", "POST", "/v1beta/models/nano-banana:generateContent", GEMINI_BODY),
    ("gemini_array", "POST", "/v1beta/models/nano-banana:streamGenerateContent", GEMINI_BODY),
    ("nnb", "POST", "/api/v1/generate", {"prompt": "a seed 004 wait"}),
]


def sse_data(body):
    """The data of each event of an SSE body, in order (comments and ids left out)."""
    out = []
    for block in body.decode("utf-8").split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            out.append("\n".join(data))
    return out


class StopWhileFollowingTest(h.ServerTestCase):

    def test_every_follower_answers_when_the_server_stops(self):
        srv = self.start_server(accounts=[EMAIL], config=CONFIG)
        key = srv.keys[EMAIL]
        headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}

        answers = {}

        def wait(name, method, path, body):
            conn = http.client.HTTPConnection(srv.host, srv.port, timeout=h.DEADLINE)
            try:
                conn.request(method, path, body=json.dumps(body), headers=headers)
                resp = conn.getresponse()
                answers[name] = h.Response(resp.status, resp.msg, resp.read())
            except (OSError, http.client.HTTPException) as e:
                answers[name] = e  # cut without an answer: fails below
            finally:
                conn.close()

        threads = [threading.Thread(target=wait, args=w) for w in WAITS]
        for t in threads:
            t.start()

        # Streams: their heads go out once they follow their task.
        streams = {}

        def open_stream(name, method, path, body=None):
            conn = http.client.HTTPConnection(srv.host, srv.port, timeout=h.DEADLINE)
            self.addCleanup(conn.close)
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers=headers)
            resp = conn.getresponse()
            self.assertEqual(resp.status, 200, name)
            self.assertEqual(resp.getheader("Content-Type"), "text/event-stream", name)
            streams[name] = resp

        uid = srv.create(key, prompt="a native stream")
        open_stream("native_events", "GET", "/api/banana/%s/events" % uid)
        open_stream("apistor_stream", "POST", "/api/v1/images/nanobanana/generate",
                    {"model": "nano-banana", "prompt": "an apistor stream"})
        open_stream("gemini_sse", "POST",
                    "/v1beta/models/nano-banana:streamGenerateContent?alt=sse", GEMINI_BODY)
        open_stream("nnb_stream", "POST", "/api/v1/generate",
                    {"prompt": "a seed 004 stream", "mode": "stream"})

        # A wait's handler submits and parks in one go, and the server takes
        # up a stop only between handlers: once every task exists, every
        # request follows its own.
        want = len(WAITS) + len(streams)

        def all_submitted():
            r = srv.get("/api/banana/tasks?limit=100", key=key)
            return r.status == 200 and len(r.json()["tasks"]) == want
        h.wait_for(all_submitted, what="%d tasks submitted" % want)
        self.assertEqual(answers, {}, "a wait was answered before the stop")

        srv.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(h.DEADLINE)
            self.assertFalse(t.is_alive(), "a wait got no answer after the stop")
        for name, r in answers.items():
            self.assertIsInstance(r, h.Response, "%s was cut without an answer: %r" % (name, r))
        # Each stream ends with its terminating chunk: reading a stream that
        # was cut instead raises.
        bodies = {}
        for name, resp in streams.items():
            try:
                bodies[name] = resp.read()
            except (OSError, ValueError, http.client.HTTPException) as e:
                self.fail("the stream %s was cut, not ended: %r" % (name, e))
        self.assertEqual(srv.wait_exit(), 0, srv.stderr_tail())

        unfinished = ("queued", "running")
        r = answers["native"]
        self.assertEqual(r.status, 200, r)
        self.assertIn(r.json()["status"], unfinished, r)
        r = answers["openai"]
        self.assertEqual(r.status, 202, r)  # the task, to poll: no error an SDK would retry
        self.assertEqual(r.json()["object"], "image.task", r)
        self.assertIn(r.json()["status"], unfinished, r)
        r = answers["apistor"]
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["status"], "running", r)
        for name in ("gemini", "gemini_array"):
            r = answers[name]
            self.assertEqual(r.status, 503, (name, r))
            err = r.json()["error"]
            self.assertEqual(err["status"], "UNAVAILABLE", (name, r))
            self.assertEqual(err["details"][0]["reason"], "SHUTTING_DOWN", (name, r))
        r = answers["nnb"]
        self.assertEqual(r.status, 200, r)
        self.assertIs(r.json()["async"], True, r)  # the accepted answer: poll it, never pay twice

        # Stored events (progress estimates carry no type): none final.
        kinds = [e["type"] for e in map(json.loads, sse_data(bodies["native_events"]))
                 if "type" in e]
        self.assertEqual(kinds[0], "queued", kinds)
        self.assertTrue(set(kinds) <= {"queued", "running"}, kinds)

        objects = [json.loads(d) for d in sse_data(bodies["apistor_stream"])]
        self.assertTrue(objects, bodies["apistor_stream"])
        self.assertEqual(objects[-1]["status"], "running", objects)

        data = [json.loads(d) for d in sse_data(bodies["gemini_sse"])]
        self.assertEqual(len(data), 1, bodies["gemini_sse"])
        self.assertEqual(data[0]["error"]["code"], 503, data)
        self.assertEqual(data[0]["error"]["details"][0]["reason"], "SHUTTING_DOWN", data)

        statuses = [json.loads(d) for d in sse_data(bodies["nnb_stream"])]
        self.assertEqual(statuses[0]["message"], "Starting generation...", statuses)
        self.assertTrue(all(s["type"] == "status" for s in statuses), statuses)


if __name__ == "__main__":
    import unittest
    unittest.main()
