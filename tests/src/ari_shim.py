#!/usr/bin/env python3
"""An ACME front for Debian's Pebble 2.4 that speaks ARI (RFC 9773) the way Boulder does.

Pebble 2.4 has no `renewalInfo`. This HTTPS server sits in front of it, passes every request
through unchanged (the Host header too, so Pebble's URLs and JWS `url` checks name this
server), and adds what Boulder does:
- `renewalInfo` in the directory, answered from the control file (window: `past`, `future`,
  or `at` with `start` and `end` in Unix seconds; Retry-After; `until_orders: N` turns a
  window into a future one once N new orders were seen, so a test asking for exactly one
  renewal does not race the client's next ARI query);
- `replaces` in new orders: reflected in the response, and refused with 409
  `alreadyReplaced` when an order replacing that certificate was already finalized;
- order fetches answered 404 for orders the control file says to forget.

Usage: ari_shim.py LISTEN_PORT PEBBLE_HOST:PORT CERT KEY STATE_DIR
The test writes STATE_DIR/control.json; the shim appends one JSON line per event to
STATE_DIR/events.log.
"""

import base64
import datetime
import http.client
import http.server
import json
import os
import ssl
import sys
import threading
import time

PORT, UPSTREAM, CERT, KEY, STATE = sys.argv[1:6]
UP_HOST, UP_PORT = UPSTREAM.rsplit(":", 1)
LOCK = threading.Lock()
REPLACES = {}  # order id -> certificate id it replaces
REPLACED = set()  # certificate ids with a finalized replacement
FORGOTTEN = None  # order ids answered 404 (snapshot taken when `forget` is first seen)
KNOWN_ORDERS = set()


def control():
    try:
        with open(os.path.join(STATE, "control.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


NEW_ORDERS = 0


def event(**fields):
    global NEW_ORDERS
    if fields.get("ev") == "new-order":
        NEW_ORDERS += 1
    fields["t"] = time.time()
    with LOCK, open(os.path.join(STATE, "events.log"), "a") as f:
        f.write(json.dumps(fields) + "\n")


def b64url_json(text):
    text += "=" * (-len(text) % 4)
    raw = base64.urlsafe_b64decode(text)
    return json.loads(raw) if raw else None


def rfc3339(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, headers, body):
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def problem(self, status, kind, detail):
        body = json.dumps({"type": "urn:ietf:params:acme:error:" + kind,
                           "detail": detail, "status": status}).encode()
        self.send(status, [("Content-Type", "application/problem+json")], body)

    def upstream(self, body):
        ctx = ssl._create_unverified_context()
        conn = http.client.HTTPSConnection(UP_HOST, int(UP_PORT), context=ctx, timeout=30)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in self.headers.items():
            if k.lower() not in ("content-length", "connection"):
                conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        rsp = conn.getresponse()
        data = rsp.read()
        conn.close()
        return rsp.status, rsp.getheaders(), data

    def do_HEAD(self):
        status, headers, _ = self.upstream(b"")
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("transfer-encoding", "connection"):
                self.send_header(k, v)
        self.end_headers()

    def do_GET(self):
        if self.path.startswith("/renewal-info/"):
            cert_id = self.path[len("/renewal-info/"):]
            c = control()
            now = time.time()
            window = c.get("window", "future")
            if window != "future" and NEW_ORDERS >= c.get("until_orders", float("inf")):
                window = "future"
            if window == "past":
                start, end = now - 7200, now - 3600
            elif window == "at":
                start, end = c["start"], c["end"]
            else:
                start, end = now + 30 * 86400, now + 31 * 86400
            event(ev="ari", cert=cert_id, window=window)
            body = json.dumps({"suggestedWindow": {"start": rfc3339(start),
                                                   "end": rfc3339(end)}}).encode()
            self.send(200, [("Content-Type", "application/json"),
                            ("Retry-After", str(c.get("retry_after", 3600)))], body)
            return
        status, headers, data = self.upstream(b"")
        if self.path == "/dir" and status == 200:
            d = json.loads(data)
            d["renewalInfo"] = "https://%s/renewal-info" % self.headers["Host"]
            data = json.dumps(d).encode()
        self.send(status, headers, data)

    def do_POST(self):
        global FORGOTTEN
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        c = control()
        with LOCK:
            if c.get("forget") and FORGOTTEN is None:
                FORGOTTEN = set(KNOWN_ORDERS)
        if self.path.startswith("/order-plz"):
            payload = b64url_json(json.loads(body)["payload"]) or {}
            replaces = payload.get("replaces")
            if replaces and replaces in REPLACED:
                event(ev="new-order", replaces=replaces, status=409)
                self.problem(409, "alreadyReplaced",
                             "certificate %s already has a finalized replacement" % replaces)
                return
            status, headers, data = self.upstream(body)
            order_id = dict((k.lower(), v) for k, v in headers).get("location", "").rsplit("/", 1)[-1]
            if status == 201:
                with LOCK:
                    KNOWN_ORDERS.add(order_id)
                    if replaces:
                        REPLACES[order_id] = replaces
                if replaces:
                    d = json.loads(data)
                    d["replaces"] = replaces
                    data = json.dumps(d).encode()
            event(ev="new-order", replaces=replaces, status=status, order=order_id)
            self.send(status, headers, data)
            return
        if self.path.startswith("/sign-me-up"):
            status, headers, data = self.upstream(body)
            event(ev="new-account", status=status)
            self.send(status, headers, data)
            return
        if self.path.startswith("/my-order/"):
            order_id = self.path.rsplit("/", 1)[-1]
            if FORGOTTEN is not None and order_id in FORGOTTEN:
                event(ev="order-fetch", order=order_id, status=404)
                self.problem(404, "malformed", "no order %s" % order_id)
                return
            status, headers, data = self.upstream(body)
            event(ev="order-fetch", order=order_id, status=status)
            self.send(status, headers, data)
            return
        if self.path.startswith("/finalize-order/"):
            order_id = self.path.rsplit("/", 1)[-1]
            status, headers, data = self.upstream(body)
            if status == 200:
                with LOCK:
                    if order_id in REPLACES:
                        REPLACED.add(REPLACES[order_id])
            event(ev="finalize", order=order_id, status=status)
            if control().get("hold_finalize"):
                event(ev="held", order=order_id)
                while control().get("hold_finalize"):
                    time.sleep(0.05)
            self.send(status, headers, data)
            return
        status, headers, data = self.upstream(body)
        self.send(status, headers, data)


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(PORT)), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
event(ev="started")
server.serve_forever()
