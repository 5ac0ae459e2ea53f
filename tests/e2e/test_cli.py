"""test_cli.py - the command line: help, usage errors, admin commands, the
demo account, configuration errors and environment overrides."""

import datetime
import json
import os
import shutil
import signal
import socket
import tempfile
import unittest

import harness as h

DEMO = "demo@imgate.local"


class CliTest(h.ServerTestCase):

    def data_dir(self):
        d = tempfile.mkdtemp(prefix="imgate-e2e-cli-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def db_dir(self):
        """A data folder holding an empty database (`admin init`)."""
        d = self.data_dir()
        h.admin_init(d)
        return d

    def config_file(self, doc):
        d = self.data_dir()
        path = os.path.join(d, "config.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(doc if isinstance(doc, str) else json.dumps(doc))
        return path

    # -- help and usage

    def test_help(self):
        cases = [(("--help",), ("serve", "admin")),
                 (("serve", "--help"), ("--listen", "--data", "--config")),
                 (("admin", "--help"), ("account", "create", "key", "list", "revoke", "--name"))]
        for args, words in cases:
            r = h.run_cli(*args)
            self.assertEqual(r.code, 0, r)
            for w in words:
                self.assertIn(w, r.stdout, "%r help lacks %r: %r" % (args, w, r))

    def test_unknown_command(self):
        for args in (("frobnicate",), ("serve", "--frobnicate"), ("admin", "frobnicate"),
                     ("admin", "account", "frobnicate", "a@example.com"),
                     ("admin", "key", "create", "--bogus", "a@example.com")):
            r = h.run_cli(*args)
            self.assertEqual(r.code, 2, r)
            self.assertRegex(r.stderr.lower(), "usage", r)

    # -- admin

    def test_account_create_and_duplicate(self):
        d = self.db_dir()
        r = h.run_cli("admin", "account", "create", "carol@example.com", "--data", d)
        self.assertEqual(r.code, 0, r)
        self.assertRegex(r.stdout, r"^\S+\n$")
        dup = h.run_cli("admin", "account", "create", "carol@example.com", "--data", d)
        self.assertEqual(dup.code, 1, dup)
        self.assertTrue(dup.stderr.strip(), dup)
        self.assertEqual(dup.stdout, "", dup)
        other = h.run_cli("admin", "account", "create", "dave@example.com", "--data", d)
        self.assertEqual(other.code, 0, other)
        self.assertNotEqual(other.stdout, r.stdout)

    def test_account_list(self):
        d = self.db_dir()
        h.admin_account_create(d, "carol@example.com")
        h.admin_account_create(d, "dave@example.com")
        lst = h.run_cli("admin", "account", "list", "--data", d)
        self.assertEqual(lst.code, 0, lst)
        self.assertIn("carol@example.com", lst.stdout)
        self.assertIn("dave@example.com", lst.stdout)

    def test_key_create_prints_only_the_key(self):
        d = self.db_dir()
        h.admin_account_create(d, "erin@example.com")
        keys = set()
        for name in ("laptop", None):
            args = ["admin", "key", "create", "erin@example.com"]
            if name:
                args += ["--name", name]
            r = h.run_cli(*args, "--data", d)
            self.assertEqual(r.code, 0, r)
            self.assertTrue(r.stdout.endswith("\n") and r.stdout.count("\n") == 1, r)
            self.assertRegex(r.stdout[:-1], h.KEY_RE)
            self.assertRegex(r.stderr, r"\d", "no key id on stderr: %r" % r)
            keys.add(r.stdout)
        self.assertEqual(len(keys), 2)
        lst = h.run_cli("admin", "key", "list", "erin@example.com", "--data", d)
        self.assertEqual(lst.code, 0, lst)
        self.assertIn("laptop", lst.stdout)
        for k in keys:
            self.assertNotIn(k.strip(), lst.stdout, "key list shows a whole secret key")

    @staticmethod
    def key_rows(lst):
        """The rows of `admin key list` as dicts by column (the name, last,
        may hold spaces)."""
        lines = lst.stdout.splitlines()
        header = lines[0].split()
        rows = [dict(zip(header, line.split(None, len(header) - 1))) for line in lines[1:]]
        for r in rows:
            r.setdefault("name", "")    # a key without a name ends at last_used
        return header, rows

    @staticmethod
    def parse_time(text):
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc)

    def test_key_list_times(self):
        # created and last_used, as docs/billing.md promises: "never" until the
        # key authenticates a request, then the time of that request.
        email = "hana@example.com"
        slack = datetime.timedelta(seconds=2)
        t0 = datetime.datetime.now(datetime.timezone.utc)
        s = self.start_server(accounts=[email])
        key = s.keys[email]
        t1 = datetime.datetime.now(datetime.timezone.utc)
        named = h.admin_key_create(s.data_dir, email, name="ci runner 2")
        lst = h.run_cli("admin", "key", "list", email, "--data", s.data_dir)
        self.assertEqual(lst.code, 0, lst)
        header, rows = self.key_rows(lst)
        self.assertEqual(header, ["id", "prefix", "state", "created", "last_used", "name"], lst)
        self.assertEqual(len(rows), 2, lst)
        by_name = {r["name"]: r for r in rows}
        self.assertEqual(sorted(by_name), ["", "ci runner 2"], lst)
        row, named_row = by_name[""], by_name["ci runner 2"]
        self.assertEqual((row["prefix"], named_row["prefix"]), (key[:8], named[:8]))
        for r in (row, named_row):
            self.assertEqual(r["state"], "active", lst)
            self.assertRegex(r["created"], h.TIME_RE)
            self.assertEqual(r["last_used"], "never", lst)
        created = self.parse_time(row["created"])
        self.assertTrue(t0 - slack <= created <= t1 + slack, (t0, row["created"], t1))

        before = datetime.datetime.now(datetime.timezone.utc)
        r = s.request("GET", "/api/banana/00000000-0000-7000-8000-000000000000", key=key)
        self.assertError(r, 404, "not_found")   # authenticated, then not found
        after = datetime.datetime.now(datetime.timezone.utc)
        lst = h.run_cli("admin", "key", "list", email, "--data", s.data_dir)
        self.assertEqual(lst.code, 0, lst)
        _, rows = self.key_rows(lst)
        by_name = {r["name"]: r for r in rows}
        self.assertRegex(by_name[""]["last_used"], h.TIME_RE, lst)
        used = self.parse_time(by_name[""]["last_used"])
        self.assertTrue(before - slack <= used <= after + slack, (before, used, after))
        self.assertGreaterEqual(used, created)
        self.assertEqual(by_name["ci runner 2"]["last_used"], "never", lst)  # not this one

        r = h.run_cli("admin", "key", "revoke", named, "--data", s.data_dir)
        self.assertEqual(r.code, 0, r)
        _, rows = self.key_rows(h.run_cli("admin", "key", "list", email, "--data", s.data_dir))
        self.assertEqual({r["name"]: r["state"] for r in rows},
                         {"": "active", "ci runner 2": "revoked"})

    def test_key_errors(self):
        d = self.db_dir()
        h.admin_account_create(d, "frank@example.com")
        r = h.run_cli("admin", "key", "create", "nobody@example.com", "--data", d)
        self.assertEqual(r.code, 1, r)
        self.assertEqual(r.stdout, "", r)
        for target in ("igk_" + "Z" * 40, "999999"):
            r = h.run_cli("admin", "key", "revoke", target, "--data", d)
            self.assertEqual(r.code, 1, r)
        key = h.admin_key_create(d, "frank@example.com")
        r = h.run_cli("admin", "key", "revoke", key, "--data", d)
        self.assertEqual(r.code, 0, r)

    # -- serve: demo account

    def test_demo_key_on_empty_data_dir(self):
        d = self.data_dir()
        s = self.start_server(data_dir=d)
        s.wait_stdout(r"^demo account: demo@imgate\.local$")
        key = s.wait_stdout(r"^demo key: (igk_\S+)$").group(1)
        self.assertRegex(key, h.KEY_RE)
        uid = s.create(key, prompt="hello from the demo account")
        t = s.wait_final(uid, key)
        self.assertImages(s, t, 1024, 1024)
        s.stop()
        self.assertNotIn(key, s.stderr_text(), "the demo key leaked into the log")

        # Not on the next start: the database has an account now.
        s2 = self.start_server(data_dir=d)
        self.assertEqual(s2.task(uid, key)["status"], "succeeded")
        s2.stop()
        self.assertNotIn("demo key", s2.stdout_text())
        self.assertNotIn("demo account", s2.stdout_text())

    def test_no_demo_key_when_accounts_exist(self):
        s = self.start_server(accounts=["gina@example.com"])
        s.stop()
        self.assertNotIn("demo key", s.stdout_text())
        self.assert_no_demo_account(s.data_dir)

    def test_no_demo_key_when_disabled(self):
        s = self.start_server(config={"demo_account": False})
        s.stop()
        self.assertNotIn("demo key", s.stdout_text())
        self.assert_no_demo_account(s.data_dir)

    def assert_no_demo_account(self, d):
        # "key create" for an unknown email exits 1: the demo account is not there.
        r = h.run_cli("admin", "key", "create", DEMO, "--data", d)
        self.assertEqual(r.code, 1, r)

    # -- serve: configuration

    def serve_fails(self, config_doc, word):
        path = self.config_file(config_doc)
        r = h.run_cli("serve", "--listen", "127.0.0.1:0", "--data", self.data_dir(),
                      "--config", path)
        self.assertEqual(r.code, 1, r)
        self.assertIn(word, r.stderr, r)
        self.assertNotIn("imgate listening", r.stdout, r)

    def test_config_errors(self):
        self.serve_fails({"bogus_key": 1}, "bogus_key")
        self.serve_fails({"http": {"threads": "many"}}, "threads")
        self.serve_fails({"sim": {"delay_ms": "slow"}}, "delay_ms")
        self.serve_fails({"engine": {"max_in_flight": 2, "warp_drive": True}}, "warp_drive")
        self.serve_fails({"limits": []}, "limits")

    def test_env_overrides(self):
        # No flags at all: listen address and data folder from the environment,
        # and an env variable beats the config file.
        d = self.db_dir()
        h.admin_account_create(d, "hank@example.com")
        key = h.admin_key_create(d, "hank@example.com")
        cfg = self.config_file({"sim": {"delay_ms": 10, "fail_marker": "CFGFAIL"},
                                "public_url": "http://from-config.example"})
        s = self.start_server(data_dir=d, args=[], env={
            "IMGATE_LISTEN": "127.0.0.1:0", "IMGATE_DATA": d, "IMGATE_CONFIG": cfg,
            "IMGATE_SIM_FAIL_MARKER": "ENVFAIL", "IMGATE_PUBLIC_URL": "http://from-env.example"})
        t = s.wait_final(s.create(key, prompt="this says ENVFAIL"), key)
        self.assertEqual(t["status"], "failed", t)
        t = s.wait_final(s.create(key, prompt="this says CFGFAIL"), key)
        self.assertEqual(t["status"], "succeeded", t)
        self.assertRegex(t["images"][0]["url"], r"^http://from-env\.example/files/")
        s.stop()

    # -- serve: start-up order

    def test_port_taken(self):
        # The port is claimed before the data folder is touched: when it is
        # taken, the server says so and exits 1 without creating the
        # database, the demo account, or running recovery.
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        fresh = os.path.join(self.data_dir(), "data")
        existing = self.db_dir()  # a database, no account
        for d in (fresh, existing):
            with self.subTest(data=d):
                r = h.run_cli("serve", "--listen", "127.0.0.1:%d" % port, "--data", d)
                self.assertEqual(r.code, 1, r)
                self.assertIn("cannot listen on 127.0.0.1:%d" % port, r.stderr, r)
                self.assertIn("in use", r.stderr, r)
                self.assertNotIn("imgate listening", r.stdout, r)
                self.assertNotIn("demo", r.stdout, r)
        self.assertFalse(os.path.exists(os.path.join(fresh, "imgate.db")), "database created")
        self.assertFalse(os.path.exists(os.path.join(fresh, "admin_token")))
        self.assert_no_demo_account(existing)
        lst = h.run_cli("admin", "account", "list", "--data", existing)
        self.assertEqual(lst.code, 0, lst)
        self.assertEqual(lst.stdout.count("\n"), 1, "accounts appeared: %r" % lst)

    def test_served_once_listening(self):
        # The banner is printed once requests are served: the very first
        # request after it is answered, without a retry.
        s = self.start_server(accounts=["kim@example.com"])
        self.assertEqual(s.get("/healthz").status, 200)
        key = s.keys["kim@example.com"]
        t = s.task(s.create(key, prompt="first"), key)
        self.assertIn(t["status"], ("queued", "running", "succeeded"), t)
        s.stop()

    def test_many_threads_start(self):
        # One database connection per HTTP thread plus 4 used to overflow the
        # store's cap of 64 from 61 threads on (a 61-core machine with the
        # default http.threads = cores): the server did not start.
        s = self.start_server(accounts=["jill@example.com"], config={"http": {"threads": 61}})
        key = s.keys["jill@example.com"]
        t = s.wait_final(s.create(key, prompt="on many threads"), key)
        self.assertEqual(t["status"], "succeeded", t)
        s.stop()

    def test_sigint_is_graceful(self):
        s = self.start_server(accounts=["ike@example.com"])
        key = s.keys["ike@example.com"]
        s.wait_final(s.create(key, prompt="before ctrl-c"), key)
        s.stop(sig=signal.SIGINT)  # asserts exit code 0


if __name__ == "__main__":
    unittest.main()
