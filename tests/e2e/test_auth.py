"""test_auth.py - API keys: every /api route wants `Authorization: Bearer <key>`,
and one account never sees another's tasks."""

import base64
import re
import unittest

import harness as h

ALICE = "alice@example.com"
BOB = "bob@example.com"
NIL_UUID = "00000000-0000-0000-0000-000000000000"


class AuthTest(h.ServerTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.srv = cls.start_class_server(accounts=[ALICE, BOB])
        cls.alice = cls.srv.keys[ALICE]
        cls.bob = cls.srv.keys[BOB]

    def assert401(self, headers, msg):
        for method, path, body in (("GET", "/api/banana/" + NIL_UUID, None),
                                   ("POST", "/api/banana/create-async", {"prompt": "x"})):
            r = self.srv.request(method, path, json_body=body, headers=headers)
            self.assertError(r, 401, None, msg="%s %s with %s" % (method, path, msg))

    def test_no_header(self):
        self.assert401({}, "no Authorization")

    def test_wrong_scheme(self):
        basic = base64.b64encode((self.alice + ":").encode()).decode()
        self.assert401({"Authorization": "Basic " + basic}, "Basic")
        self.assert401({"Authorization": "Token " + self.alice}, "Token scheme")
        self.assert401({"Authorization": self.alice}, "key without a scheme")

    def test_malformed_bearer(self):
        self.assert401({"Authorization": "Bearer"}, "Bearer alone")
        self.assert401({"Authorization": "Bearer "}, "Bearer and a space")
        self.assert401({"Authorization": "Bearer igk_short"}, "short key")
        self.assert401({"Authorization": "Bearer " + self.alice + "x"}, "key with a tail")
        self.assert401({"Authorization": "Bearer " + self.alice[:-1]}, "key cut short")

    def test_unknown_key(self):
        self.assert401({"Authorization": "Bearer igk_" + "A" * 40}, "well-formed unknown key")

    def test_auth_comes_before_validation(self):
        r = self.srv.request("POST", "/api/banana/create-async", body=b"{not json")
        self.assertError(r, 401, None)
        r = self.srv.get("/api/banana/not-a-uuid")
        self.assertError(r, 401, None)

    def test_refused_before_the_body(self):
        # A client without a valid key must not make the server hold its
        # upload: the answer comes on the headers alone. Only the headers are
        # sent here (30 MiB announced, none of it sent); the 401 must come
        # anyway, and well before the read deadline.
        declared = 30 * 1024 * 1024
        cases = (("wrong key", "Bearer igk_" + "A" * 40, False),
                 ("no key", None, False),
                 ("wrong key, Expect: 100-continue", "Bearer igk_" + "B" * 40, True))
        for what, auth, expect in cases:
            with self.subTest(what):
                lines = [b"POST /api/banana/create-async HTTP/1.1",
                         b"Host: %s:%d" % (self.srv.host.encode(), self.srv.port),
                         b"Content-Type: application/json",
                         b"Content-Length: %d" % declared]
                if auth:
                    lines.append(b"Authorization: " + auth.encode())
                if expect:
                    lines.append(b"Expect: 100-continue")
                head = b"\r\n".join(lines) + b"\r\n\r\n"
                r = self.srv.raw_exchange(head, body=b"", expect_continue=expect, timeout=20)
                self.assertError(r, 401, "unauthorized", msg=what)
                self.assertEqual(r.headers.get("WWW-Authenticate"), "Bearer")

    def test_valid_key(self):
        uid = self.srv.create(self.alice, prompt="mine")
        self.assertEqual(self.srv.task(uid, self.alice)["uid"], uid)

    def test_revoke_by_key_while_running(self):
        key = h.admin_key_create(self.srv.data_dir, ALICE, name="short-lived")
        uid = self.srv.create(key, prompt="before the revocation")
        r = h.run_cli("admin", "key", "revoke", key, "--data", self.srv.data_dir)
        self.assertEqual(r.code, 0, r)
        r = self.srv.get("/api/banana/" + uid, key=key)
        self.assertError(r, 401, None, msg="revoked key")
        r = self.srv.request("POST", "/api/banana/create-async", json_body={"prompt": "x"},
                             key=key)
        self.assertError(r, 401, None, msg="revoked key")
        # The account's other key still works and still sees the task.
        self.assertEqual(self.srv.task(uid, self.alice)["uid"], uid)

    def test_revoke_by_id_while_running(self):
        r = h.run_cli("admin", "key", "create", BOB, "--name", "by-id", "--data",
                      self.srv.data_dir)
        self.assertEqual(r.code, 0, r)
        key = r.stdout.strip()
        self.assertRegex(key, h.KEY_RE)
        m = re.search(r"\d+", r.stderr)
        self.assertIsNotNone(m, "no key id on stderr: %r" % r)
        self.srv.create(key, prompt="works before")
        rv = h.run_cli("admin", "key", "revoke", m.group(0), "--data", self.srv.data_dir)
        self.assertEqual(rv.code, 0, rv)
        r2 = self.srv.request("POST", "/api/banana/create-async", json_body={"prompt": "x"},
                              key=key)
        self.assertError(r2, 401, None, msg="key revoked by id")
        self.srv.create(self.bob, prompt="bob's first key is untouched")

    def test_new_account_while_running(self):
        email = "carol@example.com"
        h.admin_account_create(self.srv.data_dir, email)
        key = h.admin_key_create(self.srv.data_dir, email, name="fresh")
        uid = self.srv.create(key, prompt="a brand-new account")
        self.assertEqual(self.srv.task(uid, key)["uid"], uid)
        self.assertError(self.srv.get("/api/banana/" + uid, key=self.alice), 404, "not_found")

    def test_accounts_are_isolated(self):
        uid = self.srv.create(self.alice, prompt="alice's secret picture")
        r = self.srv.get("/api/banana/" + uid, key=self.bob)
        self.assertError(r, 404, "not_found", msg="bob reads alice's task")
        unknown = self.srv.get("/api/banana/" + NIL_UUID, key=self.bob)
        self.assertError(unknown, 404, "not_found")
        self.assertEqual(r.json()["error"]["param"], unknown.json()["error"]["param"])
        t = self.srv.task(uid, self.alice)
        self.assertEqual(t["uid"], uid)
        # And the other way round, once both tasks are done.
        uid_b = self.srv.create(self.bob, prompt="bob's picture")
        self.srv.wait_final(uid_b, self.bob)
        self.assertError(self.srv.get("/api/banana/" + uid_b, key=self.alice), 404, "not_found")
        self.srv.wait_final(uid, self.alice)
        self.assertError(self.srv.get("/api/banana/" + uid, key=self.bob), 404, "not_found")

    def test_unknown_and_malformed_uid(self):
        for path in ("/api/banana/" + NIL_UUID, "/api/banana/not-a-uuid",
                     "/api/banana/" + "f" * 36, "/api/banana/%00"):
            self.assertError(self.srv.get(path, key=self.alice), 404, "not_found", msg=path)


if __name__ == "__main__":
    unittest.main()
