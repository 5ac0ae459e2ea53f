"""test_database_gone.py - a database removed or replaced under a running
server, and data folders without a database.

After `rm DATA/imgate.db*` the server must not go on answering 200 while it
charges into a file no restart will find: /healthz turns 503 with the reason,
submits answer 503 store_unavailable, a task finishing meanwhile is not billed,
and a restart refuses to create an empty database (with a new demo account) in
place of the lost one. The admin commands refuse a folder without a database
(a mistyped --data) and create nothing; `admin init` creates one on purpose.
docs/operations.md's recovery (copy the removed files out of the running
process) is run here end to end.
"""

import os
import shutil
import sqlite3
import tempfile
import unittest

import harness as h

EMAIL = "gone@example.com"
CREATE = "/api/banana/create-async"


def remove_database(data_dir):
    """`rm DATA/imgate.db*`; returns the names removed."""
    names = sorted(n for n in os.listdir(data_dir) if n.startswith("imgate.db"))
    for n in names:
        os.unlink(os.path.join(data_dir, n))
    return names


def copy_removed_files(pid, data_dir, dest_dir):
    """Copies imgate.db and imgate.db-wal, removed from data_dir but still
    open in process pid, into dest_dir (docs/operations.md)."""
    real = os.path.realpath(data_dir)
    wanted = {os.path.join(real, n) + " (deleted)": n for n in ("imgate.db", "imgate.db-wal")}
    found = {}
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue  # closed meanwhile
        if target in wanted:
            found.setdefault(wanted[target], os.path.join(fd_dir, fd))
    if sorted(found) != ["imgate.db", "imgate.db-wal"]:
        raise AssertionError("removed database files not open in %d: found %r" % (pid, found))
    os.makedirs(dest_dir)
    for name, src in found.items():
        shutil.copyfile(src, os.path.join(dest_dir, name))


def ledger_of(db_path, email):
    """(kind, task_id) of the account's ledger rows, oldest first, read from
    a copy (opening a database may checkpoint it)."""
    work = tempfile.mkdtemp(prefix="imgate-e2e-inspect-")
    try:
        for suffix in ("", "-wal"):
            if os.path.exists(db_path + suffix):
                shutil.copyfile(db_path + suffix, os.path.join(work, "imgate.db" + suffix))
        db = sqlite3.connect(os.path.join(work, "imgate.db"))
        try:
            rows = db.execute("SELECT l.kind, l.task_id FROM ledger l JOIN accounts a ON "
                              "a.id = l.account_id WHERE a.email = ? ORDER BY l.id",
                              (email,)).fetchall()
            tasks = db.execute("SELECT id, state FROM tasks ORDER BY created_ms").fetchall()
        finally:
            db.close()
        return rows, tasks
    finally:
        shutil.rmtree(work, ignore_errors=True)


class DatabaseGoneTest(h.ServerTestCase):

    def tmp_dir(self):
        d = tempfile.mkdtemp(prefix="imgate-e2e-gone-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def assertUnhealthy(self, srv, words):
        r = srv.get("/healthz")
        self.assertEqual(r.status, 503, r)
        self.assertIn("application/json", r.headers.get("Content-Type", ""), r)
        doc = r.json()
        self.assertEqual(doc.get("status"), "unhealthy", doc)
        self.assertIn(words, doc.get("checks", {}).get("database", ""), doc)
        self.assertNotIn(srv.data_dir, r.body.decode(), "the folder layout leaked to /healthz")

    def assertSubmitRefused(self, srv, key):
        r = srv.request("POST", CREATE, json_body={"prompt": "while the database is gone"},
                        key=key)
        self.assertError(r, 503, "store_unavailable", None)

    # -- removed under a running server, then recovered ---------------------------

    def test_removed_under_a_running_server(self):
        # A sim delay long enough that the task is still running when the
        # files go (the rm follows the first poll that sees it running).
        srv = self.start_server(accounts=[EMAIL], config={"sim": {"delay_ms": 4000}})
        srv.verify_ledger = False  # checked below, on the restored database
        key, data = srv.keys[EMAIL], srv.data_dir
        r = srv.get("/healthz")
        self.assertEqual((r.status, r.json()), (200, {"status": "ok"}), r)
        uid = srv.create(key, prompt="in flight when the database goes")
        srv.poll_until(uid, key, lambda t: t["status"] == "running")

        self.assertEqual(remove_database(data), ["imgate.db", "imgate.db-shm", "imgate.db-wal"])
        self.assertUnhealthy(srv, "imgate.db was removed")
        self.assertSubmitRefused(srv, key)
        # Its upstream call ends, but the finish is refused, at once (no retries
        # against a store that cannot heal): the task is not billed.
        srv.wait_stderr(r"level=error msg=task_finish_failed task=%s " % uid)
        self.assertNotIn("msg=task_finish_retry task=%s" % uid, srv.stderr_text())
        self.assertSubmitRefused(srv, key)
        self.assertUnhealthy(srv, "imgate.db was removed")
        # Reads go on from the open file; the task is still running there.
        self.assertEqual(srv.task(uid, key)["status"], "running")
        broken = [l for l in srv.stderr_snapshot() if "msg=store_broken" in l]
        self.assertEqual(len(broken), 1, "one ERROR event, not one per check: %r" % broken)
        self.assertIn("level=error", broken[0])
        self.assertFalse(os.path.exists(os.path.join(data, "imgate.db")), "database recreated")

        # No new database under a server that still holds the old one open.
        r = h.run_cli("admin", "init", "--data", data)
        self.assertEqual(r.code, 1, r)
        self.assertIn("running", r.stderr, r)
        self.assertFalse(os.path.exists(os.path.join(data, "imgate.db")), "init created one")

        # The removed files, copied out of the process: nothing of the refused
        # submit and no capture of the refused finish was written in them.
        saved = os.path.join(srv.work_dir, "saved")
        copy_removed_files(srv.proc.pid, data, saved)
        rows, tasks = ledger_of(os.path.join(saved, "imgate.db"), EMAIL)
        self.assertEqual(rows, [("grant", None), ("hold", uid)])
        self.assertEqual(tasks, [(uid, "running")])
        srv.stop()  # exit 0

        # A restart refuses to make an empty database and a new demo account.
        before = sorted(os.listdir(data))
        self.assertIn("database.created", before)
        r = h.run_cli("serve", "--listen", "127.0.0.1:0", "--data", data)
        self.assertEqual(r.code, 1, r)
        self.assertIn("refusing to start on %s" % data, r.stderr, r)
        self.assertIn("imgate admin init --data %s" % data, r.stderr, r)
        self.assertNotIn("imgate listening", r.stdout, r)
        self.assertNotIn("demo", r.stdout, r)
        self.assertEqual(sorted(os.listdir(data)), before, "the refused start created files")
        # So do the admin commands.
        for args in (("account", "list"), ("key", "create", EMAIL), ("topup", EMAIL, "1"),
                     ("ledger-verify",)):
            r = h.run_cli("admin", *args, "--data", data)
            self.assertEqual((r.code, r.stdout), (1, ""), r)
            self.assertIn("database.created", r.stderr, r)
            self.assertEqual(sorted(os.listdir(data)), before, "admin %r created files" % (args,))

        # docs/operations.md: the copies put back, the server starts on them
        # with every account, and the task left running is run again and
        # charged once.
        for name in os.listdir(saved):
            shutil.copyfile(os.path.join(saved, name), os.path.join(data, name))
        srv2 = self.start_server(data_dir=data, config={"sim": {"delay_ms": 50}})
        self.assertEqual(srv2.get("/healthz").status, 200)
        self.assertNotIn("demo key", srv2.stdout_text())
        t = srv2.wait_final(uid, key)
        self.assertEqual(t["status"], "succeeded", t)
        srv2.stop()  # ledger-verify passes
        rows, _ = ledger_of(os.path.join(data, "imgate.db"), EMAIL)
        self.assertEqual(rows, [("grant", None), ("hold", uid), ("capture", uid)])

    # -- replaced under a running server ------------------------------------------

    def test_replaced_under_a_running_server(self):
        srv = self.start_server(accounts=[EMAIL])
        srv.verify_ledger = False  # the folder's database is not the server's any more
        key = srv.keys[EMAIL]
        srv.wait_final(srv.create(key, prompt="before the swap"), key)
        other = os.path.join(self.tmp_dir(), "other")
        h.admin_init(other)
        path = os.path.join(srv.data_dir, "imgate.db")
        os.rename(os.path.join(other, "imgate.db"), path)  # a restore while it runs
        with open(path, "rb") as f:
            before = f.read()

        self.assertUnhealthy(srv, "imgate.db was replaced by another file")
        self.assertSubmitRefused(srv, key)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before, "the server wrote into the new file")
        srv.stop()

    # -- admin commands without a database ----------------------------------------

    def test_admin_refuses_a_folder_without_a_database(self):
        root = self.tmp_dir()
        typo = os.path.join(root, "typo-dir")
        empty = os.path.join(root, "empty")
        os.mkdir(empty)
        commands = [("account", "list"), ("account", "create", "x@example.com"),
                    ("key", "create", "x@example.com"), ("key", "list", "x@example.com"),
                    ("key", "revoke", "1"), ("topup", "x@example.com", "1"),
                    ("refund", "x@example.com", "1"), ("ledger", "x@example.com"),
                    ("ledger-verify",), ("limits", "x@example.com"),
                    ("disable", "x@example.com")]
        for d in (typo, empty):
            for args in commands:
                with self.subTest(data=d, args=args):
                    r = h.run_cli("admin", *args, "--data", d)
                    self.assertEqual((r.code, r.stdout), (1, ""), r)
                    self.assertIn(d, r.stderr, r)
                    self.assertIn("imgate admin init --data %s" % d, r.stderr, r)
        self.assertFalse(os.path.exists(typo), "a mistyped folder was created")
        self.assertEqual(os.listdir(empty), [], "files created in a folder without a database")
        # The folder from the environment is checked the same way.
        r = h.run_cli("admin", "account", "list", env={"IMGATE_DATA": typo})
        self.assertEqual(r.code, 1, r)
        self.assertFalse(os.path.exists(typo))

    def test_admin_init(self):
        d = os.path.join(self.tmp_dir(), "new", "data")
        r = h.run_cli("admin", "init", "--data", d)
        self.assertEqual(r.code, 0, r)
        self.assertIn("created an empty database: %s/imgate.db" % d, r.stdout, r)
        self.assertTrue(os.path.isfile(os.path.join(d, "imgate.db")))
        self.assertTrue(os.path.isfile(os.path.join(d, "database.created")))
        h.admin_account_create(d, "ann@example.com")

        # Again: nothing is created or lost.
        r = h.run_cli("admin", "init", "--data", d)
        self.assertEqual(r.code, 0, r)
        self.assertIn("already holds a database", r.stdout, r)
        lst = h.run_cli("admin", "account", "list", "--data", d)
        self.assertIn("ann@example.com", lst.stdout, lst)

        # On a folder whose database is gone it starts over, as asked, and
        # says what is not in the new one.
        remove_database(d)
        r = h.run_cli("admin", "init", "--data", d)
        self.assertEqual(r.code, 0, r)
        self.assertIn("created an empty database", r.stdout, r)
        self.assertIn("database.created", r.stderr, r)
        lst = h.run_cli("admin", "account", "list", "--data", d)
        self.assertEqual(lst.code, 0, lst)
        self.assertNotIn("ann@example.com", lst.stdout, lst)

    # -- serve on fresh and older folders -----------------------------------------

    def test_fresh_folder_starts_and_is_marked(self):
        # A folder that does not exist yet, like ./var on a fresh machine.
        d = os.path.join(self.tmp_dir(), "var")
        s = self.start_server(args=["--listen", "127.0.0.1:0", "--data", d])
        s.verify_ledger = False  # the harness's own data folder is not the one used
        key = s.wait_stdout(r"^demo key: (igk_\S+)$").group(1)
        self.assertEqual(s.get("/healthz").status, 200)
        t = s.wait_final(s.create(key, prompt="on a fresh folder"), key)
        self.assertEqual(t["status"], "succeeded", t)
        s.stop()
        for name in ("imgate.db", "database.created", "admin_token"):
            self.assertTrue(os.path.exists(os.path.join(d, name)), name)
        r = h.run_cli("admin", "ledger-verify", "--data", d)
        self.assertEqual((r.code, r.stdout), (0, "ok\n"), r)

    def test_folder_from_before_the_marker(self):
        # A folder a server used before database.created existed: adopted
        # (marked) at the next start; and, had its database gone first, the
        # files a server leaves (admin_token, blobs/) still tell.
        d = os.path.join(self.tmp_dir(), "old")
        h.admin_init(d)
        os.unlink(os.path.join(d, "database.created"))
        s = self.start_server(data_dir=d)
        s.stop()
        self.assertTrue(os.path.isfile(os.path.join(d, "database.created")), "not adopted")

        os.unlink(os.path.join(d, "database.created"))
        remove_database(d)
        self.assertTrue(os.path.exists(os.path.join(d, "admin_token")))
        r = h.run_cli("serve", "--listen", "127.0.0.1:0", "--data", d)
        self.assertEqual(r.code, 1, r)
        self.assertIn("refusing to start", r.stderr, r)
        self.assertIn("admin_token", r.stderr, r)
        self.assertFalse(os.path.exists(os.path.join(d, "imgate.db")), "database created")


if __name__ == "__main__":
    unittest.main()
