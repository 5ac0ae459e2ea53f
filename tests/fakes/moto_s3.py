#!/usr/bin/env python3
"""moto_s3.py - a local S3 that checks SigV4 signatures, for the S3 client's tests.

    python3 moto_s3.py [--bucket NAME] [--region REGION]

Runs moto's server (moto 5.2.1, from the Python this machine image ships: it is
not a Debian package) on 127.0.0.1 at a free port, and makes it check signatures
the way the issue describes: moto lets INITIAL_NO_AUTH_ACTION_COUNT requests in
unchecked, then checks every request's signature against its IAM access keys.
The count is 3, spent on exactly the three IAM calls that make a user, give it
s3:* and create its access key; from then on every request must be signed with
that key. The bucket is created with it (signed, checked), and the launcher
checks that a request signed with a wrong secret is refused before it says it is
ready. Then it prints one JSON line:

    {"endpoint": "http://127.0.0.1:PORT", "port": PORT, "bucket": ..., "region": ...,
     "access_key": ..., "secret_key": ...}

and serves until SIGTERM, SIGINT or the end of its standard input, then exits 0.
Nothing listens on anything but 127.0.0.1, and every request the launcher makes
itself goes to that address.

Two things moto's server does not do, added here in front of it:

1. The URL as sent. moto's server hands its handlers the URL that werkzeug
   rebuilds from the decoded path (werkzeug's quoting rules, then decoded again
   into an IRI), and checks the signature over that: any key with a character
   outside [A-Za-z0-9-._~ /] (a '+', '(', or any non-ASCII letter) then fails
   for every correct client, boto3 included. moto's in-process mode gets the
   URL as sent; `raw_url` gives the server the same.
2. Presigned URLs. moto's server answers 500 to a query-string-signed request
   once signatures are checked (it looks for an Authorization header). The
   gate `presign_gate` checks such a request the way S3 does, with botocore's
   own SigV4 code (S3SigV4QueryAuth: canonical request, string to sign,
   signature) and the secret of the access key it names: a wrong signature is
   403 SignatureDoesNotMatch, an expired URL 403 AccessDenied "Request has
   expired". A request that passes is handed to moto signed in its
   Authorization header with the same key (query parameters X-Amz-* dropped),
   so moto still applies the key's policy and serves it.
"""

import argparse
import datetime
import json
import os
import signal
import sys
import threading
import urllib.parse

# moto reads these when it is imported.
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # botocore must never look for an instance role
for _name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
              "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_IAM"):
    os.environ.pop(_name, None)

import boto3  # noqa: E402
import flask.wrappers  # noqa: E402
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

HOST = "127.0.0.1"
# Access key id -> (secret, region) of the keys this launcher made.
KEYS = {}


def raw_url(self):
    """The request's URL exactly as the client wrote it (see the module comment)."""
    target = self.environ.get("RAW_URI") or self.environ.get("REQUEST_URI")
    if not target:
        target = self.full_path
    return "%s://%s%s" % (self.scheme, self.host, target)


flask.wrappers.Request.url = property(raw_url)


def s3_error(start_response, status, code, message):
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code><Message>%s</Message>'
            '</Error>' % (code, message)).encode()
    start_response(status, [("Content-Type", "application/xml"),
                            ("Content-Length", str(len(body)))])
    return [body]


def check_presigned(environ, pairs):
    """None when the presigned request is valid, else (status, code, message)."""
    params = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        params[name] = urllib.parse.unquote(value)
    if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        return ("400 Bad Request", "AuthorizationQueryParametersError",
                "X-Amz-Algorithm only supports AWS4-HMAC-SHA256")
    try:
        access_key, date8, region, service, terminal = params["X-Amz-Credential"].split("/")
        amz_date = params["X-Amz-Date"]
        expires = int(params["X-Amz-Expires"])
        signed = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc)
        signature = params["X-Amz-Signature"]
    except (KeyError, ValueError):
        return ("400 Bad Request", "AuthorizationQueryParametersError",
                "the query-string authentication parameters are incomplete or malformed")
    if service != "s3" or terminal != "aws4_request" or date8 != amz_date[:8] or \
            params.get("X-Amz-SignedHeaders") != "host" or not 1 <= expires <= 604800:
        return ("400 Bad Request", "AuthorizationQueryParametersError",
                "unexpected credential scope, signed headers or expiry")
    if access_key not in KEYS:
        return ("403 Forbidden", "InvalidAccessKeyId",
                "The AWS Access Key Id you provided does not exist in our records.")
    secret, _ = KEYS[access_key]
    # The canonical request is over the query without the signature, as sent.
    unsigned = "&".join(p for p in pairs if not p.startswith("X-Amz-Signature="))
    url = "http://%s%s?%s" % (environ["HTTP_HOST"], environ_path(environ), unsigned)
    req = AWSRequest(method=environ["REQUEST_METHOD"], url=url,
                     headers={"host": environ["HTTP_HOST"]})
    req.context["timestamp"] = amz_date
    auth = S3SigV4QueryAuth(Credentials(access_key, secret), "s3", region, expires=expires)
    expected = auth.signature(auth.string_to_sign(req, auth.canonical_request(req)), req)
    if expected != signature:
        return ("403 Forbidden", "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method.")
    now = datetime.datetime.now(datetime.timezone.utc)
    if now > signed + datetime.timedelta(seconds=expires):
        return ("403 Forbidden", "AccessDenied", "Request has expired")
    if signed > now + datetime.timedelta(minutes=15):
        return ("403 Forbidden", "AccessDenied", "Request is not yet valid")
    return None


def environ_path(environ):
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
    return target.split("?", 1)[0]


def presign_gate(app):
    """WSGI middleware: checks query-string signatures (see the module comment)."""
    def gate(environ, start_response):
        query = environ.get("QUERY_STRING", "")
        target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
        raw_query = target.split("?", 1)[1] if "?" in target else query
        pairs = [p for p in raw_query.split("&") if p]
        if not any(p.startswith("X-Amz-Signature=") for p in pairs):
            return app(environ, start_response)
        refusal = check_presigned(environ, pairs)
        if refusal:
            return s3_error(start_response, *refusal)
        access_key = urllib.parse.unquote(
            next(p for p in pairs if p.startswith("X-Amz-Credential="))
            .partition("=")[2]).split("/")[0]
        secret, region = KEYS[access_key]
        rest = "&".join(p for p in pairs if not p.startswith("X-Amz-"))
        path = environ_path(environ)
        target = path + ("?" + rest if rest else "")
        req = AWSRequest(method=environ["REQUEST_METHOD"],
                         url="http://%s%s" % (environ["HTTP_HOST"], target),
                         headers={"host": environ["HTTP_HOST"]})
        S3SigV4Auth(Credentials(access_key, secret), "s3", region).add_auth(req)
        environ = dict(environ)
        environ["QUERY_STRING"] = rest
        environ["RAW_URI"] = environ["REQUEST_URI"] = target
        environ["HTTP_AUTHORIZATION"] = req.headers["Authorization"]
        environ["HTTP_X_AMZ_DATE"] = req.headers["X-Amz-Date"]
        environ["HTTP_X_AMZ_CONTENT_SHA256"] = req.headers["X-Amz-Content-SHA256"]
        return app(environ, start_response)
    return gate


def boot(endpoint, bucket, region):
    """Spends the unchecked requests on a user and its key; returns the key."""
    cfg = Config(retries={"max_attempts": 1}, region_name=region)
    iam = boto3.client("iam", endpoint_url=endpoint, aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap", config=cfg)
    iam.create_user(UserName="imgate")
    iam.put_user_policy(UserName="imgate", PolicyName="s3-all", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="imgate")["AccessKey"]
    access_key, secret = key["AccessKeyId"], key["SecretAccessKey"]
    KEYS[access_key] = (secret, region)

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                      aws_secret_access_key=secret, config=cfg)
    if region == "us-east-1":
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(Bucket=bucket,
                         CreateBucketConfiguration={"LocationConstraint": region})
    # Signatures must be checked from here on, or the tests would prove nothing.
    wrong = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                         aws_secret_access_key=secret + "x", config=cfg)
    try:
        wrong.head_bucket(Bucket=bucket)
    except ClientError as e:
        if e.response["ResponseMetadata"]["HTTPStatusCode"] != 403:
            raise
    else:
        raise SystemExit("moto_s3: a wrong secret was accepted: signatures are not checked")
    return access_key, secret


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bucket", default="imgate-test")
    ap.add_argument("--region", default="us-east-1")
    args = ap.parse_args()

    app = presign_gate(DomainDispatcherApplication(create_backend_app))
    server = make_server(HOST, 0, app, threaded=True)
    port = server.server_address[1]
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    endpoint = "http://%s:%d" % (HOST, port)
    access_key, secret = boot(endpoint, args.bucket, args.region)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def watch_stdin():
        while os.read(0, 65536):
            pass
        stop.set()
    threading.Thread(target=watch_stdin, daemon=True).start()

    print(json.dumps({"endpoint": endpoint, "port": port, "bucket": args.bucket,
                      "region": args.region, "access_key": access_key, "secret_key": secret}),
          flush=True)
    stop.wait()
    server.shutdown()
    serving.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
