"""test_retention.py - reference images go when their task is final; result
images go when their retention is over (the rows stay, the bytes do not).

Time passing is simulated the honest way: the test moves a result's expiry
into the past in the database, as the clock would, and waits (polling with a
deadline) for the sweeper that runs every 100 ms.
"""

import os
import sqlite3
import unittest

import harness as h

EMAIL = "keep@example.com"


class RetentionTest(h.ServerTestCase):

    def test_inputs_then_results_are_deleted(self):
        srv = self.start_server(accounts=[EMAIL], config={"retention_sweep_interval_ms": 100})
        key = srv.keys[EMAIL]
        blobs = os.path.join(srv.data_dir, "blobs")
        uid = srv.create(key, prompt="kept a while", model="nano-banana",
                         image_urls=[h.b64(h.make_png(8, 8))])
        t = srv.wait_final(uid, key)
        self.assertEqual(t["status"], "succeeded", t)
        # No run needs the reference image any more: it is deleted, folder and all.
        inputs = os.path.join(blobs, "inputs", uid)
        h.wait_for(lambda: not os.path.exists(inputs), what="the task's inputs deleted")

        image = t["images"][0]
        self.assertTrue(h.TIME_RE.match(image["expires_at"]), image)
        path = image["url"].split("://", 1)[1].split("/", 1)[1]
        self.assertEqual(srv.get("/" + path).status, 200)
        results = os.path.join(blobs, "results", uid)
        self.assertTrue(os.listdir(results))

        # The retention is over: the URL answers 410 Gone at once (a real link that will
        # never work again, told from a mistyped one: 404), the sweeper deletes the bytes.
        db = sqlite3.connect(os.path.join(srv.data_dir, "imgate.db"), timeout=30)
        with db:
            db.execute("UPDATE task_results SET expires_ms = 1 WHERE task_id = ?", (uid,))
        db.close()
        r = srv.get("/" + path)
        self.assertEqual(r.status, 410, r.body)
        err = r.json()["error"]
        self.assertEqual(err["code"], "image_expired", err)
        self.assertIn("expired on Thu, 01 Jan 1970", err["message"])
        self.assertEqual(srv.get("/" + path.replace(".", "x.", 1)).status, 404)
        h.wait_for(lambda: not os.path.exists(results), what="the expired image deleted")

        def purged():
            ro = sqlite3.connect("file:%s?mode=ro" % os.path.join(srv.data_dir, "imgate.db"),
                                 uri=True, timeout=30)
            try:
                return ro.execute("SELECT purged_ms FROM task_results WHERE task_id = ?",
                                  (uid,)).fetchone()[0]
            finally:
                ro.close()
        h.wait_for(lambda: purged() > 0, what="the result marked purged")
        # The task's history is unchanged: the image is still listed, and still gone.
        t = srv.task(uid, key)
        self.assertEqual(len(t["images"]), 1, t)
        self.assertEqual(srv.get("/" + path).status, 410)
        self.assertTrue(os.path.isdir(os.path.join(blobs, "results")))  # the top level stays


if __name__ == "__main__":
    unittest.main()
