"""billing_util.py - shared by the Step 3 billing tests (test_billing*.py).

Money checks against the real binary, from three sides that must agree:
  - GET /api/banana/credits (the server's view of the account),
  - `imgate admin ledger EMAIL --csv` (every ledger row; the sums of its
    available and held columns must equal the balance and the held amount),
  - `imgate admin ledger-verify` (the server's own invariant check), which
    BillingTestCase runs on every data folder its tests used, after the
    servers on it have stopped.

Standard library only. Amounts are integer micro-dollars throughout; USD
text is parsed exactly (Decimal), never through floats.
"""

import collections
import csv
import decimal
import http.client
import io
import json
import shutil
import tempfile
import threading
import time

import harness as h

# Built-in prices (src/core/pricing.c, docs/billing.md), micro-dollars per image.
PRICE_NB_1K = 9500          # nano-banana at 1K, its only resolution
PRICE_NB2_1K = 25000        # nano-banana-2 at 1K

CREATE = "/api/banana/create-async"
CREDITS = "/api/banana/credits"
CSV_HEADER = ["id", "time", "kind", "available_usd", "held_usd", "task", "reason"]

LedgerRow = collections.namedtuple("LedgerRow", "id time kind available held task reason")


def billing_config(bonus, **extra):
    """A config whose accounts get `bonus` micro-dollars at signup (BASE_CONFIG
    gives a huge bonus; a billing test always says what it wants)."""
    cfg = {"billing": {"signup_bonus_micros": bonus}}
    return h.deep_merge(cfg, extra)


def usd_to_micros(text):
    """'-0.009500' -> -9500, exactly; anything not a whole micro-dollar fails."""
    try:
        d = decimal.Decimal(text)
    except decimal.InvalidOperation:
        raise AssertionError("not a USD amount: %r" % text)
    m = d * 1000000
    if m != m.to_integral_value():
        raise AssertionError("USD amount %r is not a whole number of micro-dollars" % text)
    return int(m)


def usd_text(micros):
    """The server's spelling of an amount: six decimals, '-' for negatives."""
    sign = "-" if micros < 0 else ""
    mag = abs(micros)
    return "%s%d.%06d" % (sign, mag // 1000000, mag % 1000000)


def ledger_rows(data_dir, email):
    """Every ledger row of email's account, oldest first, parsed from
    `imgate admin ledger EMAIL --csv`."""
    r = h.run_cli("admin", "ledger", email, "--csv", "--data", data_dir)
    if r.code != 0:
        raise AssertionError("admin ledger failed: %r" % r)
    rows = list(csv.reader(io.StringIO(r.stdout)))
    if not rows or rows[0] != CSV_HEADER:
        raise AssertionError("ledger CSV header: %r" % r.stdout[:300])
    out = []
    for raw in rows[1:]:
        if len(raw) != len(CSV_HEADER):
            raise AssertionError("ledger CSV row with %d fields: %r" % (len(raw), raw))
        if raw[1] and not h.TIME_RE.match(raw[1]):
            raise AssertionError("ledger CSV time %r" % raw[1])
        out.append(LedgerRow(int(raw[0]), raw[1], raw[2], usd_to_micros(raw[3]),
                             usd_to_micros(raw[4]), raw[5], raw[6]))
    ids = [x.id for x in out]
    if ids != sorted(ids) or len(set(ids)) != len(ids):
        raise AssertionError("ledger ids not increasing: %r" % ids)
    return out


def sums(rows):
    return sum(x.available for x in rows), sum(x.held for x in rows)


def kinds(rows):
    return collections.Counter(x.kind for x in rows)


def task_rows(rows, uid):
    """(kind, available, held) of one task's ledger rows, in ledger order."""
    return [(x.kind, x.available, x.held) for x in rows if x.task == uid]


def expected_task_rows(price, charged):
    """The ledger rows of a finished task that held price and was charged charged."""
    out = [("hold", -price, price)]
    if charged > 0:
        out.append(("capture", 0, -charged))
    if price - charged > 0:
        out.append(("release", price - charged, -(price - charged)))
    return out


def verify_ledger(data_dir):
    """`imgate admin ledger-verify`; returns the CliResult (code 0 = ok)."""
    return h.run_cli("admin", "ledger-verify", "--data", data_dir)


class KeepAlive:
    """One persistent HTTP/1.1 connection to a server, authenticated with key.
    connects counts the TCP connections it had to open (1 when keep-alive
    held for every request)."""

    def __init__(self, srv, key):
        self.key = key
        self.conn = http.client.HTTPConnection(srv.host, srv.port, timeout=h.DEADLINE)
        self.conn.connect()
        self.connects = 1

    def request(self, method, path, json_body=None):
        hdrs = {"Authorization": "Bearer " + self.key}
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            hdrs["Content-Type"] = "application/json"
        if self.conn.sock is None:
            self.connects += 1      # http.client reconnects on its own; count it
        self.conn.request(method, path, body=body, headers=hdrs)
        resp = self.conn.getresponse()
        data = resp.read()
        return h.Response(resp.status, resp.msg, data)

    def close(self):
        self.conn.close()


def parallel_requests(srv, keys, per_client, make_request):
    """len(keys) clients, each on its own keep-alive connection (opened before
    the start), released together by a barrier; client i sends per_client
    requests make_request(client, i, j) one after another. Returns (responses
    as [(i, j, Response)], seconds from the release to the last answer, the
    connection counts per client)."""
    n = len(keys)
    clients = [KeepAlive(srv, k) for k in keys]
    barrier = threading.Barrier(n + 1)
    results = [None] * n
    errors = []

    def run(i):
        out = []
        try:
            barrier.wait(h.DEADLINE)
            for j in range(per_client):
                out.append((i, j, make_request(clients[i], i, j)))
        except BaseException as e:  # reported below, with the others
            errors.append(e)
        results[i] = out

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait(h.DEADLINE)
    t0 = time.monotonic()
    for t in threads:
        t.join(h.DEADLINE)
    elapsed = time.monotonic() - t0
    for c in clients:
        c.close()
    if any(t.is_alive() for t in threads):
        raise AssertionError("clients still running after %.0f s" % h.DEADLINE)
    if errors:
        raise AssertionError("client errors: %r" % errors[:5])
    return [r for rs in results for r in rs], elapsed, [c.connects for c in clients]


class BillingTestCase(h.ServerTestCase):
    """Every server this test starts gets a data folder of the test (fresh unless
    one is passed); once the servers are stopped, `ledger-verify` must answer
    exit 0 and "ok" on each folder (the cleanups run in reverse order, so the
    check runs after the servers stop and before the folders go)."""

    def new_data_dir(self):
        d = tempfile.mkdtemp(prefix="imgate-e2e-billing-")
        self.addCleanup(shutil.rmtree, d, True)
        self._watch_data_dir(d)
        return d

    def _watch_data_dir(self, d):
        watched = self.__dict__.setdefault("_verified_dirs", set())
        if d not in watched:
            watched.add(d)
            self.addCleanup(self.assertLedgerVerifies, d)

    def start_server(self, **kw):
        if kw.get("data_dir") is None:
            kw["data_dir"] = self.new_data_dir()
        else:
            self._watch_data_dir(kw["data_dir"])
        return super().start_server(**kw)

    # -- money assertions

    def assertLedgerVerifies(self, data_dir):
        r = verify_ledger(data_dir)
        self.assertEqual((r.code, r.stdout), (0, "ok\n"), "ledger-verify: %r" % r)

    def credits(self, srv, key):
        r = srv.get(CREDITS, key=key)
        self.assertEqual(r.status, 200, r)
        doc = r.json()
        self.assertEqual(set(doc), {"balance_usd", "held_usd", "balance_micros", "held_micros"},
                         doc)
        self.assertEqual(doc["balance_usd"], usd_text(doc["balance_micros"]), doc)
        self.assertEqual(doc["held_usd"], usd_text(doc["held_micros"]), doc)
        return doc

    def assertMoney(self, srv, key, data_dir, email, balance, held):
        """The account's available balance and held amount are exactly these,
        both in GET /credits (skipped when srv is None: a stopped server) and
        as the sums of its ledger CSV. Returns the ledger rows."""
        if srv is not None:
            doc = self.credits(srv, key)
            self.assertEqual((doc["balance_micros"], doc["held_micros"]), (balance, held), doc)
        rows = ledger_rows(data_dir, email)
        self.assertEqual(sums(rows), (balance, held), "ledger sums of %s: %r" % (email, rows))
        return rows

    def assertCost(self, t, price, charged, image_price=None):
        """The task JSON's cost: price held at submit, charged when final,
        nothing held once final (the price while in flight); and the hold per
        image (image_price, when given; else only its spelling is checked)."""
        final = t["status"] in h.FINAL_STATES
        cost = dict(t.get("cost") or {})
        per_image = cost.pop("image_price_micros", None)
        self.assertIsInstance(per_image, int, t)
        self.assertEqual(cost.pop("image_price_usd", None), usd_text(per_image), t)
        if image_price is not None:
            self.assertEqual(per_image, image_price, t)
        self.assertEqual(cost, {
            "price_micros": price, "charged_micros": charged,
            "held_usd": usd_text(0 if final else price), "charged_usd": usd_text(charged)}, t)

    def assertSettled(self, rows, uid, price, charged):
        self.assertEqual(task_rows(rows, uid), expected_task_rows(price, charged),
                         "ledger rows of task %s" % uid)
