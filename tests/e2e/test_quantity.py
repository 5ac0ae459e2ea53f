"""test_quantity.py - several images per task (`n`, 1 to 10): the hold is n
times the unit price, each image is paid for only when delivered. Against the
Gemini-shaped fake, one upstream call per image: a task that asks for 4 and
gets 3 succeeds with 3, is charged for 3 and says so (`n` 4, three
`images`), and the ledger shows one hold, a capture of 3 and a release of 1.
"""

import billing_util as b
import harness as h
import upstream_util as u

EMAIL = "quantity@example.com"
BONUS = 1000000
PRICE = b.PRICE_NB_1K
G25 = "gemini-2.5-flash-image"


class QuantityTest(b.BillingTestCase):

    def test_sim_delivers_every_image(self):
        srv = self.start_server(accounts=[EMAIL], config=b.billing_config(
            BONUS, sim={"delay_ms": 50}))
        key = srv.keys[EMAIL]
        uid = srv.create(key, prompt="three", n=3)
        t = srv.wait_final(uid, key)
        self.assertEqual((t["status"], t["n"], len(t["images"])), ("succeeded", 3, 3), t)
        self.assertEqual(len(set(i["url"] for i in t["images"])), 3)
        self.assertCost(t, 3 * PRICE, 3 * PRICE)
        rows = self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - 3 * PRICE, 0)
        self.assertSettled(rows, uid, 3 * PRICE, 3 * PRICE)
        # One image is the default, and says so.
        one = srv.wait_final(srv.create(key, prompt="one"), key)
        self.assertEqual((one["n"], len(one["images"])), (1, 1))

    def test_three_of_four_delivered_three_charged(self):
        fake = u.start_fake(self.addCleanup)
        fake.script([{"kind": "image"}, {"kind": "image"}, {"kind": "error", "status": 400},
                     {"kind": "image"}], api="gemini", model=G25)
        srv = self.start_server(accounts=[EMAIL], config=b.billing_config(
            BONUS, providers=[u.gemini_provider("g", fake.gemini_base_url)],
            routes={"nano-banana": [u.route("g")]}))
        key = srv.keys[EMAIL]
        uid = srv.create(key, prompt="four asked", n=4)
        t = srv.wait_final(uid, key)
        self.assertEqual(len(fake.requests(api="gemini")), 4)  # one call per image
        self.assertEqual((t["status"], t["n"], len(t["images"])), ("succeeded", 4, 3), t)
        self.assertCost(t, 4 * PRICE, 3 * PRICE)
        rows = self.assertMoney(srv, key, srv.data_dir, EMAIL, BONUS - 3 * PRICE, 0)
        self.assertSettled(rows, uid, 4 * PRICE, 3 * PRICE)

    def test_n_is_checked(self):
        srv = self.start_server(accounts=[EMAIL], config=b.billing_config(BONUS))
        key = srv.keys[EMAIL]
        for bad, code in ((0, "invalid_quantity"), (11, "invalid_quantity"),
                          (-3, "invalid_quantity"), (10 ** 12, "invalid_quantity"),
                          ("2", "invalid_type"), (2.5, "invalid_type")):
            r = srv.request("POST", b.CREATE, key=key, json_body={"prompt": "x", "n": bad})
            self.assertError(r, 400, code, "n", msg=repr(bad))
        self.assertEqual(self.credits(srv, key)["held_micros"], 0)
        # An idempotent replay must be the same n: another n is another request.
        hdr = {"Idempotency-Key": "q-1"}
        r1 = srv.request("POST", b.CREATE, key=key, headers=hdr, json_body={"prompt": "x", "n": 2})
        self.assertEqual(r1.status, 200, r1)
        r2 = srv.request("POST", b.CREATE, key=key, headers=hdr, json_body={"prompt": "x", "n": 3})
        self.assertError(r2, 422, "idempotency_key_reused", "Idempotency-Key")
