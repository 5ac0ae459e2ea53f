#!/usr/bin/env python3
"""A webhook receiver for imgate, standard library only: verifies each
delivery's signature (Standard Webhooks), skips deliveries it has seen
(by webhook-id), prints the event and answers 204.

    IMGATE_WEBHOOK_SECRET=whsec_... python3 webhook_receiver.py [PORT]

Prints one JSON line per delivery: {"id", "type", "uid", "status", "duplicate"}.
A delivery that does not verify gets 401 (imgate retries it on its schedule).
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import sys
import time

SEEN = set()  # a real receiver keeps these for a few days, in its database


def verify_webhook(secret, headers, body, tolerance_s=300):
    """headers: the request's; body: the raw bytes. Raises ValueError."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(ts)) > tolerance_s:
        raise ValueError("timestamp too far from now")
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    for signature in headers["webhook-signature"].split(" "):
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise ValueError("no valid signature")


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            verify_webhook(os.environ["IMGATE_WEBHOOK_SECRET"], self.headers, body)
        except (KeyError, ValueError) as e:
            self.send_response(401)
            self.end_headers()
            print(json.dumps({"refused": str(e)}), flush=True)
            return
        msg_id = self.headers["webhook-id"]
        duplicate = msg_id in SEEN
        SEEN.add(msg_id)
        event = json.loads(body)
        print(json.dumps({"id": msg_id, "type": event["type"], "uid": event["data"]["uid"],
                          "status": event["data"]["status"], "duplicate": duplicate}), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):  # quiet: the JSON lines above are the output
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    print(json.dumps({"listening": server.server_address[1]}), flush=True)
    server.serve_forever()
