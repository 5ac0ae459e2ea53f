"""test_admin_api.py - accounts, keys and billing over HTTP with the admin token
(docs/api-admin.md), against the real binary.

Every endpoint: refused (401, before any body is read) without the admin token,
with a wrong one or with an account key; validation errors name their field;
unknown accounts are 404. What HTTP does matches the CLI: an account made over
HTTP gets the signup bonus and the default limits; a key made over HTTP works
on the native API; a top-up over HTTP shows in that account's
GET /api/banana/credits; the ledger's JSON and CSV agree with
`imgate admin ledger EMAIL --csv`; limits set over HTTP are what
`imgate admin limits EMAIL` shows; and `imgate admin ledger-verify` passes once
the server has stopped.
"""

import csv
import io
import json
import re
import sqlite3
import unittest
import urllib.parse

import harness as h

TOKEN = "admin-token-for-admin-api-0123456789"
BONUS = 1000000  # $1.00, in micro-dollars
CONFIG = {"admin_token": TOKEN,
          "billing": {"signup_bonus_micros": BONUS, "max_keys_per_account": 3,
                      "default_max_concurrency": 7, "default_qps_per_key": 500}}
AUTH = {"Authorization": "Bearer " + TOKEN}

# Every endpoint, with a body that would be valid.
ENDPOINTS = [
    ("POST", "/admin/accounts", {"email": "nobody-made@example.com"}),
    ("GET", "/admin/accounts", None),
    ("GET", "/admin/accounts/someone@example.com", None),
    ("POST", "/admin/accounts/someone@example.com/topup", {"usd": "1"}),
    ("POST", "/admin/accounts/someone@example.com/refund", {"usd": "1"}),
    ("GET", "/admin/accounts/someone@example.com/ledger", None),
    ("GET", "/admin/accounts/someone@example.com/ledger?format=csv", None),
    ("PUT", "/admin/accounts/someone@example.com/limits", {"max_concurrency": 1}),
    ("POST", "/admin/accounts/someone@example.com/disable", None),
    ("POST", "/admin/accounts/someone@example.com/enable", None),
    ("POST", "/admin/accounts/someone@example.com/keys", {"name": "x"}),
    ("GET", "/admin/accounts/someone@example.com/keys", None),
    ("DELETE", "/admin/keys/1", None),
    ("GET", "/admin/ledger/verify", None),
]


def quote(email):
    return urllib.parse.quote(email, safe="")


class AdminApiTest(h.ServerTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.srv = cls.start_class_server(accounts=["someone@example.com"], config=CONFIG)

    # -- helpers

    def admin(self, method, path, body=None, raw=None, srv=None, status=None):
        srv = srv or self.srv
        r = srv.request(method, path, json_body=body, body=raw, headers=AUTH)
        if status is not None:
            self.assertEqual(r.status, status, "%s %s: %r" % (method, path, r))
        return r

    def new_account(self, email, srv=None):
        r = self.admin("POST", "/admin/accounts", {"email": email}, srv=srv, status=201)
        return r.json()

    def new_key(self, email, name="k", srv=None):
        r = self.admin("POST", "/admin/accounts/%s/keys" % quote(email), {"name": name}, srv=srv,
                       status=201)
        return r.json()

    def balance(self, email, srv=None):
        return self.admin("GET", "/admin/accounts/" + quote(email), srv=srv,
                          status=200).json()["balance_usd"]

    # -- auth

    def test_every_endpoint_needs_the_admin_token(self):
        account_key = self.srv.keys["someone@example.com"]
        refusals = ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer " + TOKEN[:-1]},
                    {"Authorization": "Bearer " + TOKEN + "x"}, {"Authorization": "Basic " + TOKEN},
                    {"Authorization": TOKEN}, {"Authorization": "Bearer " + account_key})
        for method, path, body in ENDPOINTS:
            for headers in refusals:
                with self.subTest(method=method, path=path, headers=headers):
                    r = self.srv.request(method, path, json_body=body, headers=headers)
                    self.assertError(r, 401, "unauthorized", param=None)
                    self.assertEqual(r.headers.get("WWW-Authenticate"), "Bearer")
        # Nothing was done by any of them.
        r = self.admin("GET", "/admin/accounts/nobody-made@example.com")
        self.assertError(r, 404, "account_not_found", param="email")
        acct = self.admin("GET", "/admin/accounts/someone@example.com", status=200).json()
        self.assertEqual(acct["balance_usd"], "1.000000")
        self.assertFalse(acct["disabled"])
        keys = self.admin("GET", "/admin/accounts/someone@example.com/keys", status=200).json()
        self.assertEqual(len(keys["keys"]), 1)
        self.assertTrue(keys["keys"][0]["active"])
        # The admin token is not an account key.
        r = self.srv.get("/api/banana/credits", headers=AUTH)
        self.assertEqual(r.status, 401, r)

    def test_refused_before_the_body_is_read(self):
        # A large upload without the token gets its 401 at once: the guard
        # runs on the headers (the body is never sent, since the server
        # answers and closes first).
        body = b"x" * (8 * 1024 * 1024)
        head = (b"POST /admin/accounts HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json"
                b"\r\nContent-Length: %d\r\n\r\n" % (self.srv.host.encode(), self.srv.port,
                                                     len(body)))
        r = self.srv.raw_exchange(head, body)
        self.assertError(r, 401, "unauthorized")

    # -- accounts

    def test_create_get_list(self):
        acct = self.new_account("New.User@Example.COM")
        self.assertEqual(acct["email"], "new.user@example.com")
        self.assertIsInstance(acct["id"], int)
        self.assertEqual(acct["balance_usd"], "1.000000")  # the signup bonus
        self.assertEqual(acct["balance_micros"], BONUS)
        self.assertEqual(acct["held_usd"], "0.000000")
        self.assertEqual(acct["held_micros"], 0)
        self.assertEqual(acct["max_concurrency"], 7)  # the default limits
        self.assertEqual(acct["qps_per_key"], 500)
        self.assertIs(acct["disabled"], False)
        self.assertRegex(acct["created_at"], h.TIME_RE)

        # One account, by its email in any case, %-encoded or not.
        for path in ("/admin/accounts/new.user@example.com",
                     "/admin/accounts/" + quote("NEW.user@example.com")):
            with self.subTest(path=path):
                self.assertEqual(self.admin("GET", path, status=200).json(), acct)
        listed = self.admin("GET", "/admin/accounts", status=200).json()["accounts"]
        self.assertEqual([a for a in listed if a["id"] == acct["id"]], [acct])
        self.assertIn("someone@example.com", [a["email"] for a in listed])

        # The CLI sees the same account, with the same limits.
        r = h.run_cli("admin", "account", "list", "--data", self.srv.data_dir)
        self.assertEqual(r.code, 0, r)
        self.assertRegex(r.stdout, r"\n%d\s+active\s+\S+\s+1\.000000 new\.user@example\.com\n"
                         % acct["id"])
        r = h.run_cli("admin", "limits", "new.user@example.com", "--data", self.srv.data_dir)
        self.assertEqual((r.code, r.stdout), (0, "concurrency 7\nqps 500\n"), r)

        # Taken (in any case).
        r = self.admin("POST", "/admin/accounts", {"email": "NEW.USER@example.com"})
        self.assertError(r, 409, "account_exists", param="email")

    def test_create_validation(self):
        cases = [
            (b'{"email": "a@b.c"', 400, "invalid_json", None),
            (b'["a@b.c"]', 400, "invalid_request", None),
            (b"", 400, "invalid_json", None),
            (b"{}", 400, "missing_field", "email"),
            (b'{"email": 42}', 400, "invalid_type", "email"),
            (b'{"email": null}', 400, "invalid_type", "email"),
            (b'{"email": "not-an-email"}', 400, "invalid_email", "email"),
            (b'{"email": "two@@example.com"}', 400, "invalid_email", "email"),
            (b'{"email": "x' + b"y" * 300 + b'@example.com"}', 400, "invalid_value", "email"),
            (b'{"email": "ok@example.com", "bonus": 5}', 400, "unknown_field", "bonus"),
        ]
        for raw, status, code, param in cases:
            with self.subTest(body=raw[:60]):
                r = self.admin("POST", "/admin/accounts", raw=raw)
                self.assertError(r, status, code, param=param)
        r = self.admin("GET", "/admin/accounts/ok@example.com")
        self.assertError(r, 404, "account_not_found", param="email")

    def test_unknown_account_is_404_everywhere(self):
        for method, path, body in ENDPOINTS:
            if "someone@example.com" not in path:
                continue
            path = path.replace("someone@example.com", "ghost@example.com")
            with self.subTest(method=method, path=path):
                r = self.admin(method, path, body)
                self.assertError(r, 404, "account_not_found", param="email")
        r = self.admin("GET", "/admin/accounts/not-an-email")
        self.assertError(r, 404, "account_not_found", param="email")

    def test_wrong_methods_and_paths(self):
        r = self.admin("GET", "/admin/accounts/someone@example.com/topup")
        self.assertError(r, 405, "method_not_allowed")
        r = self.admin("DELETE", "/admin/accounts/someone@example.com")
        self.assertError(r, 405, "method_not_allowed")
        r = self.admin("GET", "/admin/accounts/someone@example.com/nothing")
        self.assertError(r, 404, "not_found")

    # -- money

    def test_topup_and_refund(self):
        email = "money@example.com"
        self.new_account(email)
        key = self.new_key(email)["key"]
        path = "/admin/accounts/%s/" % quote(email)

        r = self.admin("POST", path + "topup", {"usd": "10.50", "reason": "invoice 17"}, status=200)
        self.assertEqual(r.json(), {"balance_usd": "11.500000", "balance_micros": 11500000,
                                    "topup_usd": "10.500000", "topup_micros": 10500000})
        r = self.admin("POST", path + "topup", {"micros": 250000}, status=200)
        self.assertEqual(r.json()["balance_usd"], "11.750000")
        r = self.admin("POST", path + "refund", {"usd": "0.000001", "reason": "rounding"},
                       status=200)
        self.assertEqual(r.json(), {"balance_usd": "11.749999", "balance_micros": 11749999,
                                    "refund_usd": "0.000001", "refund_micros": 1})
        # What the account itself sees.
        r = self.srv.get("/api/banana/credits", key=key)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["balance_usd"], "11.749999")
        self.assertEqual(r.json()["balance_micros"], 11749999)

        # More than is available: 409, and nothing changes.
        r = self.admin("POST", path + "refund", {"usd": "11.75"})
        self.assertError(r, 409, "insufficient_credit", param="usd")
        self.assertEqual(self.balance(email), "11.749999")
        # All of it is fine.
        r = self.admin("POST", path + "refund", {"micros": 11749999}, status=200)
        self.assertEqual(r.json()["balance_usd"], "0.000000")
        r = self.admin("POST", path + "refund", {"micros": 1})
        self.assertError(r, 409, "insufficient_credit")
        r = self.srv.get("/api/banana/credits", key=key)
        self.assertEqual(r.json()["balance_usd"], "0.000000")

    def test_money_validation(self):
        email = "money-checks@example.com"
        self.new_account(email)
        for verb in ("topup", "refund"):
            path = "/admin/accounts/%s/%s" % (quote(email), verb)
            cases = [
                ({}, "missing_field", "usd"),
                ({"reason": "x"}, "missing_field", "usd"),
                ({"usd": 10.5}, "invalid_amount", "usd"),
                ({"usd": 10}, "invalid_amount", "usd"),
                ({"usd": "10.1234567"}, "invalid_amount", "usd"),
                ({"usd": "-1"}, "invalid_amount", "usd"),
                ({"usd": "0"}, "invalid_amount", "usd"),
                ({"usd": "0.000000"}, "invalid_amount", "usd"),
                ({"usd": "$5"}, "invalid_amount", "usd"),
                ({"usd": "1e3"}, "invalid_amount", "usd"),
                ({"usd": " 5"}, "invalid_amount", "usd"),
                ({"usd": "99999999999999"}, "invalid_amount", "usd"),
                ({"usd": "1000000000.000001"}, "invalid_amount", "usd"),
                ({"micros": 10 ** 15 + 1}, "invalid_amount", "micros"),
                ({"micros": "5"}, "invalid_amount", "micros"),
                ({"micros": 1.5}, "invalid_amount", "micros"),
                ({"micros": 0}, "invalid_amount", "micros"),
                ({"micros": -3}, "invalid_amount", "micros"),
                ({"usd": "1", "micros": 1000000}, "invalid_amount", "micros"),
                ({"usd": "1", "reason": 5}, "invalid_type", "reason"),
                ({"usd": "1", "reason": "r" * 128}, "invalid_value", "reason"),
                ({"usd": "1", "amount": "1"}, "unknown_field", "amount"),
            ]
            for body, code, param in cases:
                with self.subTest(verb=verb, body=body):
                    r = self.admin("POST", path, body)
                    self.assertError(r, 400, code, param=param)
            r = self.admin("POST", path, raw=b'{"usd": ')
            self.assertError(r, 400, "invalid_json")
        self.assertEqual(self.balance(email), "1.000000")
        # The longest reason the ledger keeps is accepted.
        r = self.admin("POST", "/admin/accounts/%s/topup" % quote(email),
                       {"usd": "1", "reason": "r" * 127}, status=200)

    # -- ledger

    def test_ledger_json_csv_and_cli_agree(self):
        email = "ledger@example.com"
        self.new_account(email)
        key = self.new_key(email)["key"]
        path = "/admin/accounts/%s/" % quote(email)
        self.admin("POST", path + "topup", {"usd": "5", "reason": 'PO "42", paid'}, status=200)
        self.admin("POST", path + "refund", {"usd": "0.25", "reason": "line\nbreak"}, status=200)
        self.admin("POST", path + "topup", {"micros": 3}, status=200)
        uid = self.srv.create(key, prompt="a ledger")
        t = self.srv.wait_final(uid, key)
        self.assertEqual(t["status"], "succeeded", t)

        doc = self.admin("GET", path + "ledger", status=200).json()
        self.assertEqual(doc["email"], email)
        entries = doc["entries"]
        self.assertEqual([e["kind"] for e in entries],
                         ["grant", "topup", "refund", "topup", "hold", "capture"])
        self.assertEqual([e["reason"] for e in entries[:4]],
                         ["signup bonus", 'PO "42", paid', "line\nbreak", "top-up"])
        self.assertEqual([e["task_id"] for e in entries],
                         [None, None, None, None, uid, uid])
        self.assertEqual([e["id"] for e in entries], sorted(e["id"] for e in entries))
        for e in entries:
            self.assertRegex(e["created_at"], h.TIME_RE)
            self.assertEqual(e["available_usd"], "%.6f" % (e["available_micros"] / 1e6))
        # The balance is the sum of the entries, and what the account shows.
        self.assertEqual(doc["balance_micros"], sum(e["available_micros"] for e in entries))
        self.assertEqual(doc["held_micros"], sum(e["held_micros"] for e in entries))
        self.assertEqual(doc["held_micros"], 0)
        acct = self.admin("GET", path.rstrip("/"), status=200).json()
        self.assertEqual((acct["balance_micros"], acct["held_micros"]),
                         (doc["balance_micros"], doc["held_micros"]))
        credits = self.srv.get("/api/banana/credits", key=key).json()
        self.assertEqual(credits["balance_usd"], doc["balance_usd"])
        charged = t["cost"]["charged_micros"]
        self.assertGreater(charged, 0)
        self.assertEqual(doc["balance_micros"], BONUS + 5000000 - 250000 + 3 - charged)

        # CSV over HTTP: byte for byte what the CLI prints.
        r = self.admin("GET", path + "ledger?format=csv", status=200)
        self.assertEqual(r.headers.get("Content-Type"), "text/csv; charset=utf-8")
        cli = h.run_cli("admin", "ledger", email, "--csv", "--data", self.srv.data_dir)
        self.assertEqual(cli.code, 0, cli)
        self.assertEqual(r.body.decode("utf-8"), cli.stdout)
        # And it says what the JSON says.
        rows = list(csv.DictReader(io.StringIO(r.body.decode("utf-8"), newline="")))
        self.assertEqual(len(rows), len(entries))
        for row, e in zip(rows, entries):
            self.assertEqual(row, {"id": str(e["id"]), "time": e["created_at"], "kind": e["kind"],
                                   "available_usd": e["available_usd"],
                                   "held_usd": e["held_usd"], "task": e["task_id"] or "",
                                   "reason": e["reason"]})
        # ?format=json is the default.
        self.assertEqual(self.admin("GET", path + "ledger?format=json", status=200).json(), doc)
        r = self.admin("GET", path + "ledger?format=xml")
        self.assertError(r, 400, "invalid_value", param="format")

    # -- limits and state

    def test_limits(self):
        email = "limits@example.com"
        self.new_account(email)
        path = "/admin/accounts/%s/limits" % quote(email)
        r = self.admin("PUT", path, {"max_concurrency": 2, "qps_per_key": 30}, status=200)
        self.assertEqual((r.json()["max_concurrency"], r.json()["qps_per_key"]), (2, 30))
        # One alone leaves the other as it is; 0 is unlimited.
        r = self.admin("PUT", path, {"qps_per_key": 0}, status=200)
        self.assertEqual((r.json()["max_concurrency"], r.json()["qps_per_key"]), (2, 0))
        r = self.admin("PUT", path, {"max_concurrency": 1000000}, status=200)
        self.assertEqual((r.json()["max_concurrency"], r.json()["qps_per_key"]), (1000000, 0))
        cli = h.run_cli("admin", "limits", email, "--data", self.srv.data_dir)
        self.assertEqual((cli.code, cli.stdout), (0, "concurrency 1000000\nqps 0\n"), cli)
        for body, code, param in [
                ({}, "missing_field", "max_concurrency"),
                ({"max_concurrency": -1}, "invalid_value", "max_concurrency"),
                ({"max_concurrency": 1000001}, "invalid_value", "max_concurrency"),
                ({"max_concurrency": "3"}, "invalid_type", "max_concurrency"),
                ({"max_concurrency": 1.5}, "invalid_type", "max_concurrency"),
                ({"max_concurrency": None}, "invalid_type", "max_concurrency"),
                ({"max_concurrency": 1, "qps_per_key": True}, "invalid_type", "qps_per_key"),
                ({"concurrency": 1}, "unknown_field", "concurrency")]:
            with self.subTest(body=body):
                self.assertError(self.admin("PUT", path, body), 400, code, param=param)
        acct = self.admin("GET", "/admin/accounts/" + quote(email), status=200).json()
        self.assertEqual((acct["max_concurrency"], acct["qps_per_key"]), (1000000, 0))

    def test_limits_apply(self):
        # A concurrency limit set over HTTP is the one submit enforces.
        srv = self.start_server(config=dict(CONFIG, sim={"delay_ms": 60000}))
        email = "busy@example.com"
        self.new_account(email, srv=srv)
        key = self.new_key(email, srv=srv)["key"]
        self.admin("PUT", "/admin/accounts/%s/limits" % quote(email), {"max_concurrency": 1},
                   srv=srv, status=200)
        srv.create(key, prompt="first")
        r = srv.request("POST", "/api/banana/create-async", json_body={"prompt": "second"},
                        key=key)
        self.assertEqual(r.status, 429, r)
        self.assertEqual(r.headers.get("X-RateLimit-Limit"), "1", r.headers)
        srv.stop()

    def test_disable_enable(self):
        email = "state@example.com"
        self.new_account(email)
        key = self.new_key(email)["key"]
        base = "/admin/accounts/%s/" % quote(email)
        self.assertEqual(self.srv.get("/api/banana/credits", key=key).status, 200)
        r = self.admin("POST", base + "disable", status=200)
        self.assertIs(r.json()["disabled"], True)
        self.assertError(self.srv.get("/api/banana/credits", key=key), 403, "account_disabled")
        r = self.admin("POST", base + "disable", status=200)  # idempotent
        self.assertIs(r.json()["disabled"], True)
        listed = self.admin("GET", "/admin/accounts", status=200).json()["accounts"]
        self.assertEqual([a["disabled"] for a in listed if a["email"] == email], [True])
        r = self.admin("POST", base + "enable", status=200)
        self.assertIs(r.json()["disabled"], False)
        self.assertEqual(self.srv.get("/api/banana/credits", key=key).status, 200)

    # -- keys

    def test_keys(self):
        email = "keys@example.com"
        self.new_account(email)
        base = "/admin/accounts/%s/keys" % quote(email)
        made = self.new_key(email, name="ci runner")
        key = made["key"]
        self.assertRegex(key, h.KEY_RE)
        self.assertEqual(made["prefix"], key[:8])
        self.assertEqual(made["name"], "ci runner")
        self.assertEqual(made["email"], email)
        self.assertIsInstance(made["id"], int)

        # The key works on the native API: a task runs and is billed to it.
        uid = self.srv.create(key, prompt="made over http")
        self.assertEqual(self.srv.wait_final(uid, key)["status"], "succeeded")
        credits = self.srv.get("/api/banana/credits", key=key).json()
        self.assertLess(credits["balance_micros"], BONUS)

        # Listed without the secret; last use recorded.
        r = self.admin("GET", base, status=200)
        self.assertNotIn(key.encode(), r.body)
        self.assertNotIn(key[8:].encode(), r.body)
        keys = r.json()["keys"]
        self.assertEqual(len(keys), 1)
        k = keys[0]
        self.assertEqual((k["id"], k["prefix"], k["name"], k["active"], k["revoked_at"]),
                         (made["id"], key[:8], "ci runner", True, None))
        self.assertRegex(k["created_at"], h.TIME_RE)
        self.assertRegex(k["last_used_at"], h.TIME_RE)
        self.assertEqual(set(k), {"id", "prefix", "name", "active", "created_at",
                                  "last_used_at", "revoked_at"})

        # No body: a key without a name. Then the limit (3 in CONFIG).
        r = self.admin("POST", base, status=201)
        self.assertEqual(r.json()["name"], "")
        third = self.new_key(email, name="third")
        r = self.admin("POST", base, {"name": "fourth"})
        self.assertError(r, 403, "too_many_keys")

        # Revoke by id: refused at once, and its slot is free again.
        r = self.admin("DELETE", "/admin/keys/%d" % made["id"], status=200)
        self.assertEqual(r.json(), {"id": made["id"], "revoked": True})
        self.assertError(self.srv.get("/api/banana/credits", key=key), 401, "unauthorized")
        self.assertError(self.admin("DELETE", "/admin/keys/%d" % made["id"]), 404,
                         "key_not_found", param="id")
        keys = {k["id"]: k for k in self.admin("GET", base, status=200).json()["keys"]}
        self.assertIs(keys[made["id"]]["active"], False)
        self.assertRegex(keys[made["id"]]["revoked_at"], h.TIME_RE)
        self.assertIs(keys[third["id"]]["active"], True)
        self.new_key(email, name="fourth")
        cli = h.run_cli("admin", "key", "list", email, "--data", self.srv.data_dir)
        self.assertEqual(cli.code, 0, cli)
        # The CLI shows the same key as the API: state, created and last used.
        k = keys[made["id"]]
        self.assertRegex(k["last_used_at"], h.TIME_RE)  # it authenticated a request above
        self.assertRegex(cli.stdout, r"\n%d\s+%s\s+revoked\s+%s\s+%s\s+ci runner\n"
                         % (made["id"], key[:8], re.escape(k["created_at"]),
                            re.escape(k["last_used_at"])))

    def test_key_validation(self):
        email = "key-checks@example.com"
        self.new_account(email)
        base = "/admin/accounts/%s/keys" % quote(email)
        for raw, code, param in [
                (b'{"name": 3}', "invalid_type", "name"),
                (b'{"name": "' + b"n" * 64 + b'"}', "invalid_value", "name"),
                (b'{"label": "x"}', "unknown_field", "label"),
                (b'{"name": ', "invalid_json", None),
                (b'"x"', "invalid_request", None)]:
            with self.subTest(body=raw):
                self.assertError(self.admin("POST", base, raw=raw), 400, code, param=param)
        self.assertEqual(self.admin("GET", base, status=200).json(), {"keys": []})
        self.admin("POST", base, {"name": "n" * 63}, status=201)
        for bad in ("abc", "0", "-1", "1x", "99999999999999999999999",
                    "igk_" + "A" * 40, "%201"):
            with self.subTest(id=bad):
                self.assertError(self.admin("DELETE", "/admin/keys/" + bad), 400,
                                 "invalid_key_id", param="id")
        self.assertError(self.admin("DELETE", "/admin/keys/987654"), 404, "key_not_found",
                         param="id")

    # -- verify

    def test_ledger_verify(self):
        r = self.admin("GET", "/admin/ledger/verify", status=200)
        self.assertEqual(r.json(), {"ok": True})


class AdminApiLifecycleTest(h.ServerTestCase):
    """Servers of their own: stopped, checked by the CLI, tampered with."""

    def admin(self, srv, method, path, body=None, status=None):
        r = srv.request(method, path, json_body=body, headers=AUTH)
        if status is not None:
            self.assertEqual(r.status, status, "%s %s: %r" % (method, path, r))
        return r

    def test_ledger_verify_passes_after_the_server_stops(self):
        srv = self.start_server(config=CONFIG)
        emails = ["a@example.com", "b@example.com"]
        keys = {}
        for email in emails:
            self.admin(srv, "POST", "/admin/accounts", {"email": email}, status=201)
            keys[email] = self.admin(srv, "POST", "/admin/accounts/%s/keys" % email,
                                     {"name": "k"}, status=201).json()["key"]
            self.admin(srv, "POST", "/admin/accounts/%s/topup" % email, {"usd": "2.5"},
                       status=200)
        self.admin(srv, "POST", "/admin/accounts/a@example.com/refund", {"usd": "0.5"},
                   status=200)
        uids = [(e, srv.create(keys[e], prompt="p")) for e in emails]
        for e, uid in uids:
            self.assertEqual(srv.wait_final(uid, keys[e])["status"], "succeeded")
        self.assertEqual(self.admin(srv, "GET", "/admin/ledger/verify", status=200).json(),
                         {"ok": True})
        srv.stop()
        r = h.run_cli("admin", "ledger-verify", "--data", srv.data_dir)
        self.assertEqual((r.code, r.stdout), (0, "ok\n"), r)

    def test_ledger_verify_reports_a_mismatch(self):
        srv = self.start_server(config=CONFIG)
        self.admin(srv, "POST", "/admin/accounts", {"email": "t@example.com"}, status=201)
        srv.stop()
        # A cached balance that no longer equals its ledger.
        db = sqlite3.connect(srv.data_dir + "/imgate.db")
        with db:
            db.execute("UPDATE accounts SET balance = balance + 1 WHERE email = ?",
                       ("t@example.com",))
        db.close()
        srv = self.start_server(config=CONFIG, data_dir=srv.data_dir)
        srv.verify_ledger = False  # damaged on purpose, checked by hand below
        r = self.admin(srv, "GET", "/admin/ledger/verify", status=500)
        self.assertEqual(r.json()["ok"], False)
        self.assertEqual(r.headers.get("Content-Type"), "application/json")
        srv.stop()
        r = h.run_cli("admin", "ledger-verify", "--data", srv.data_dir)
        self.assertEqual(r.code, 1, r)


if __name__ == "__main__":
    unittest.main()
