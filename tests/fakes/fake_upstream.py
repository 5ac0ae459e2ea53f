#!/usr/bin/env python3
"""fake_upstream.py - a scriptable fake of the Gemini and OpenAI image APIs.

imgate's tests and benchmarks point its gemini/openai provider instances at this
server instead of the real upstreams. Python 3.11 standard library only: one
asyncio event loop, a small hand-written HTTP/1.1 server (keep-alive, pipelining,
Content-Length and chunked request bodies, Expect: 100-continue), no thread per
connection, so tens of thousands of slow requests can be open at once.

    python3 fake_upstream.py --host 127.0.0.1 --port 0 [--gemini-key K] [--openai-key K]
        [--lenient] [--max-recorded N] [--max-body BYTES] [--script FILE] [--verbose]

prints exactly one line `fake upstream listening on http://HOST:PORT` once it
listens; SIGTERM (or SIGINT) closes every connection and exits 0.

Upstream endpoints (wire formats: /work/shared/reference/upstreams.md):
  POST /v1beta/models/{model}:generateContent        Gemini, key in x-goog-api-key (or ?key=)
  POST /v1beta/models/{model}:streamGenerateContent  ?alt=sse gives SSE events, else a JSON array
  POST /v1/images/generations  (JSON)                OpenAI, Authorization: Bearer KEY
  POST /v1/images/edits        (multipart/form-data) image / image[] (repeated), mask, fields
  GET  /v1beta/models, /v1beta/models/{model}, /v1/models
Requests are validated the way the real services do it (bad key, bad JSON, unknown
fields, lower-case imageSize, unknown OpenAI parameters, non-image uploads...), unless
--lenient turns the unknown-field checks off. Validation failures consume no script step.

Control API (the point of the fake), per server instance:
  POST   /_fake/script    {"match": {"api": "gemini"|"openai"|"*", "model": "glob",
                           "endpoint": "generateContent" | "streamGenerateContent" |
                                       "generations" | "edits"},
                           "responses": [STEP, ...], "then": "default"|"repeat_last"}
                          (or a list of such objects) appends script(s). Each upstream request
                          takes the next STEP of the first matching script that still has one;
                          "then": "repeat_last" keeps answering with the last STEP forever,
                          "default" (the default) retires the script once its steps are used up.
                          No script left -> the default STEP {} (a successful image).
  GET    /_fake/scripts   the scripts with how many steps each has used.
  GET    /_fake/requests  recorded upstream requests, oldest first (?api= filters):
                          {seq, api, model, endpoint, method, path, query, headers (lower-case
                          names), json, json_error, multipart: [{name, filename, content_type,
                          size, sha256, magic, text}], body_size, received_at (unix seconds),
                          request_id, step (the STEP used, or null), status (HTTP status sent,
                          null when none was sent)}
  DELETE /_fake/requests  clears the recording.
  POST   /_fake/reset     clears scripts, recording and the counters.
  GET    /_fake/stats     {in_flight, max_in_flight, total, by_status, connections,
                          max_connections};
                          by_status counts HTTP statuses sent, plus "reset", "close" and "hang".

STEP fields, all optional:
  delay_ms       wait this long before acting (the request is already read and recorded).
  chunk_bytes    send the body of a plain (not streamed) answer in writes of this many bytes,
                 each flushed to the socket before the next, so the client reads it in small,
                 oddly cut pieces (the head goes first, on its own).
  kind           image (default) | thought_then_image | text_only | block_prompt | finish_reason |
                 error | malformed | truncated | reset | close | hang
  status         HTTP status of the answer (default 200; 500 for kind=error). For kind=error a
                 Google status name ("RESOURCE_EXHAUSTED") is accepted and maps to its HTTP code.
  reason         block_prompt: promptFeedback.blockReason (default SAFETY);
                 finish_reason: candidates[0].finishReason (default IMAGE_SAFETY).
  content        finish_reason: "absent" (default) | "empty" (parts: []) | "text" (a refusal).
  message        error message; block_prompt: blockReasonMessage; finish_reason: finishMessage.
  text           the text part of image answers and of text_only (null: no text part).
  google_status  error: the Google status text (default from the HTTP status).
  retry_delay    error: adds a google.rpc.RetryInfo detail, e.g. "19s" (a number means seconds).
  details        error: extra Google details (list of objects).
  code, type, param   error: fields of the OpenAI error envelope.
  in_stream      error on :streamGenerateContent?alt=sse: answer 200, one text event, then the
                 error as an event.
  headers        extra response headers, e.g. {"retry-after": "2"} (replace same-named ones).
  snake_case     true: inline_data/mime_type in Gemini answers; "all": every key in snake_case.
  width, height  pixel size of the returned image (default 8x8).
  sizes          OpenAI: one "WxH" per returned image (the answer holds that many, whatever
                 "n" asked), e.g. ["1024x1024", "1536x1024"].
  count          OpenAI: how many images the answer holds (default "n"; fewer = a short answer).
  quality        OpenAI: the "quality" the answer reports (default the request's, "auto" as
                 "medium"); null leaves the field out of the answer.
  background     OpenAI: the "background" the answer reports and the images are made with
                 (default the request's, "auto" as "opaque"); "transparent" makes PNGs RGBA
                 with a transparent left half and WebPs transparent; null leaves the field
                 out (the images opaque).
  real_size      true: the pixel size the real model would make (Gemini table; OpenAI "size",
                 each side capped at 8192).
  thoughts       thought_then_image: how many thought:true draft images (0..4, default 2; the
                 real 3 Pro makes up to two).
  final_image    thought_then_image on Gemini: false leaves the final image out, so the answer
                 holds only thought drafts (a client must not take one as the result).
  format         png | jpeg | webp: the format of the returned image (OpenAI default: the
                 request's output_format; Gemini default png).
  damaged        true: each image keeps its header (its type and pixel size read as usual) and
                 the rest is junk, so decoding it fails.
  pad_bytes      PNG and JPEG: each image grows by about this many bytes that decoders skip
                 (PNG: private ancillary chunks; JPEG: APP15 segments before the frame
                 header), for answers as large as real 4K images.
Kinds on the OpenAI API, which has no thoughts or finish reasons: thought_then_image answers like
image; text_only answers 200 with an empty data list; block_prompt and finish_reason answer 400
image_generation_user_error / moderation_blocked. "malformed" is a 200 with invalid JSON;
"truncated" sends a Content-Length larger than the bytes that follow, then closes; "reset" aborts
the connection with a TCP RST, "close" closes it cleanly, both without answering; "hang" never
answers and waits until the client goes away. On event streams (Gemini alt=sse, OpenAI
stream=true) "truncated" stops after the first event without ending the chunked body, and
"malformed" sends one broken event.

Images are real: a solid colour derived from the prompt (and the image's index), PNG by default,
baseline JPEG or lossless WebP on request, all encoded here. An edit's mask must be a PNG with an
alpha channel (IHDR colour type 4 or 6), else 400 invalid_image_file, param mask.
"""

import argparse
import asyncio
import base64
import collections
import email.utils
import fnmatch
import functools
import hashlib
import http
import json
import re
import resource
import secrets
import signal
import socket
import struct
import sys
import time
import traceback
import urllib.parse
import zlib

HEAD_LIMIT = 64 * 1024
DEFAULT_MAX_BODY = 128 * 1024 * 1024
DEFAULT_MAX_RECORDED = 10000
TEXT_PART_LIMIT = 4096  # multipart parts up to this size without a filename are recorded as text

# ---------------------------------------------------------------- images


def colour_for(seed):
    """A stable RGB colour for a seed string, so tests can tell images apart."""
    d = hashlib.sha256(seed.encode("utf-8", "replace")).digest()
    return (d[0], d[1], d[2])


def _png_chunk(kind, data):
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@functools.lru_cache(maxsize=512)
def png_bytes(width, height, rgb):
    """A solid-colour 8-bit RGB PNG."""
    row = b"\x00" + bytes(rgb) * width  # filter type 0 (None) per row
    idat = zlib.compress(row * height, 6)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


@functools.lru_cache(maxsize=128)
def png_rgba_bytes(width, height, rgb):
    """An 8-bit RGBA PNG of a transparent background: the left half fully transparent,
    the right half the opaque colour."""
    half = width // 2
    row = b"\x00" + b"\x00\x00\x00\x00" * half + (bytes(rgb) + b"\xff") * (width - half)
    idat = zlib.compress(row * height, 6)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def png_colour_type(data):
    """The IHDR colour type of a PNG (6 = RGBA, 4 = grey + alpha), or None."""
    if image_magic(data) != "png" or len(data) < 26 or data[12:16] != b"IHDR":
        return None
    return data[25]


# JPEG: a solid colour needs only DC coefficients, so the file holds one Huffman table for
# DC categories (the usual luminance one) and an AC table whose only symbol is end-of-block.
_JPEG_DC_BITS = (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)
_JPEG_DC_VALS = tuple(range(12))


def _huffman_codes(bits, vals):
    """Canonical Huffman codes {symbol: (code, length)} from JPEG BITS/HUFFVAL lists."""
    codes, code, k = {}, 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[vals[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


def _jpeg_segment(marker, payload):
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _jpeg_dc_bits(diff, dc_codes):
    """The bit string coding one DC difference: category code, then the magnitude bits."""
    cat = abs(diff).bit_length()
    code, length = dc_codes[cat]
    out = format(code, "0%db" % length)
    if cat:
        value = diff if diff >= 0 else diff + (1 << cat) - 1
        out += format(value, "0%db" % cat)
    return out


@functools.lru_cache(maxsize=128)
def jpeg_bytes(width, height, rgb):
    """A solid-colour baseline JPEG (YCbCr, no subsampling, quantisation 1)."""
    r, g, b = rgb
    ycc = (0.299 * r + 0.587 * g + 0.114 * b,
           128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
           128 + 0.5 * r - 0.418688 * g - 0.081312 * b)
    # DC of an 8x8 block of constant level v (after the -128 shift) is 8 * v.
    dcs = [max(-1024, min(1016, round(8 * (min(255.0, max(0.0, c)) - 128)))) for c in ycc]
    dc_codes = _huffman_codes(_JPEG_DC_BITS, _JPEG_DC_VALS)
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    first = "".join(_jpeg_dc_bits(dc, dc_codes) + "0" for dc in dcs)  # "0" = EOB
    rest = (_jpeg_dc_bits(0, dc_codes) + "0") * 3  # later blocks repeat the DC: difference 0
    bitstr = first + rest * (blocks - 1)
    bitstr += "1" * (-len(bitstr) % 8)
    scan = int(bitstr, 2).to_bytes(len(bitstr) // 8, "big").replace(b"\xff", b"\xff\x00")
    dht = (b"\x00" + bytes(_JPEG_DC_BITS) + bytes(_JPEG_DC_VALS)
           + b"\x10" + bytes((1,) + (0,) * 15) + b"\x00")
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    sos = b"\x03\x01\x00\x02\x00\x03\x00\x00\x3f\x00"
    return (b"\xff\xd8"
            + _jpeg_segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
            + _jpeg_segment(0xDB, b"\x00" + b"\x01" * 64)
            + _jpeg_segment(0xC0, sof)
            + _jpeg_segment(0xC4, dht)
            + _jpeg_segment(0xDA, sos) + scan + b"\xff\xd9")


class _BitWriter:
    """LSB-first bit packing, as WebP lossless wants it."""

    def __init__(self):
        self.value = 0
        self.nbits = 0

    def put(self, value, nbits):
        self.value |= value << self.nbits
        self.nbits += nbits

    def bytes(self):
        return self.value.to_bytes((self.nbits + 7) // 8, "little")


@functools.lru_cache(maxsize=128)
def webp_bytes(width, height, rgb, alpha=255):
    """A solid-colour lossless WebP: five one-symbol prefix codes, so the pixels take no bits.
    alpha below 255 makes every pixel that transparent (and says alpha is used)."""
    w = _BitWriter()
    w.put(width - 1, 14)
    w.put(height - 1, 14)
    w.put(1 if alpha < 255 else 0, 1)  # alpha_is_used
    w.put(0, 3)  # version
    w.put(0, 1)  # no transform
    w.put(0, 1)  # no colour cache
    w.put(0, 1)  # no meta prefix codes
    for symbol in (rgb[1], rgb[0], rgb[2], alpha):  # green, red, blue, alpha
        w.put(1, 1)  # simple code
        w.put(0, 1)  # one symbol
        w.put(1, 1)  # an 8-bit symbol
        w.put(symbol, 8)
    w.put(1, 1)  # distance code: simple, one 1-bit symbol 0
    w.put(0, 1)
    w.put(0, 1)
    w.put(0, 1)
    data = b"\x2f" + w.bytes()
    chunk = b"VP8L" + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


IMAGE_ENCODERS = {"png": (png_bytes, "image/png"), "jpeg": (jpeg_bytes, "image/jpeg"),
                  "webp": (webp_bytes, "image/webp")}


def make_image(fmt, width, height, seed, transparent=False):
    """An image of the format; transparent: a transparent background (PNG: RGBA with a
    transparent half; WebP: every pixel transparent; JPEG has no alpha and ignores it)."""
    encode, mime = IMAGE_ENCODERS[fmt]
    if transparent and fmt == "png":
        return png_rgba_bytes(width, height, colour_for(seed)), mime
    if transparent and fmt == "webp":
        return webp_bytes(width, height, colour_for(seed), 0), mime
    return encode(width, height, colour_for(seed)), mime


def pad(data, n):
    """The image grown by about n bytes that decoders skip, the bytes varying so nothing
    compresses them away: a PNG by private ancillary chunks ("imGp") before its IEND; a
    JPEG by APP15 segments right after its SOI, so its frame header (and pixel size) comes
    that much later, as behind a long EXIF or XMP block."""
    fmt = image_magic(data)
    if n <= 0 or fmt not in ("png", "jpeg"):
        return data
    pieces, left, counter = [], n, 0
    limit = 1 << 20 if fmt == "png" else 65533
    while left > 0:
        size = min(left, limit)
        body = (hashlib.sha256(b"pad%d" % counter).digest() * (size // 32 + 1))[:size]
        if fmt == "png":
            pieces.append(_png_chunk(b"imGp", body))
        else:
            pieces.append(b"\xff\xef" + struct.pack(">H", size + 2) + body)
        left -= size
        counter += 1
    if fmt == "png":
        iend = len(data) - 12
        return data[:iend] + b"".join(pieces) + data[iend:]
    return data[:2] + b"".join(pieces) + data[2:]


def damage(data):
    """The image's header (signature and pixel size: PNG's IHDR, JPEG up to its frame
    header, WebP's first chunk header and size bits) followed by junk instead of pixels."""
    fmt = image_magic(data)
    if fmt == "png":
        junk = b"\x55" * 64
        idat = struct.pack(">I", len(junk)) + b"IDAT" + junk
        return data[:33] + idat + _png_chunk(b"IDAT", b"")[-4:] + _png_chunk(b"IEND", b"")
    if fmt == "jpeg":
        sof = data.index(b"\xff\xc0")
        end = sof + 2 + struct.unpack(">H", data[sof + 2:sof + 4])[0]
        return data[:end] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x55" * 64
    if fmt == "webp":
        return data[:25] + b"\x55" * 64
    raise ValueError("cannot damage %r" % fmt)


def image_magic(data):
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in (
            b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
        return "heic"
    return None


# Gemini output sizes at 1K (reference table); other tiers scale it.
_GEMINI_1K = {"1:1": (1024, 1024), "16:9": (1376, 768), "9:16": (768, 1376), "4:3": (1200, 896),
              "3:4": (896, 1200), "3:2": (1264, 848), "2:3": (848, 1264), "21:9": (1584, 672),
              "5:4": (1152, 928), "4:5": (928, 1152), "1:4": (512, 2048), "4:1": (2048, 512),
              "1:8": (384, 3072), "8:1": (3072, 384)}
_GEMINI_25_1K = {"1:1": (1024, 1024), "16:9": (1344, 768), "9:16": (768, 1344),
                 "4:3": (1184, 864), "3:4": (864, 1184), "3:2": (1248, 832), "2:3": (832, 1248),
                 "21:9": (1536, 672), "5:4": (1152, 896), "4:5": (896, 1152)}
_GEMINI_TIER = {"512": 0.5, "1K": 1, "2K": 2, "4K": 4}
GEMINI_RATIOS = frozenset(_GEMINI_1K)
GEMINI_SIZES = frozenset(_GEMINI_TIER)


def gemini_real_size(model, ratio, size):
    if model.startswith("gemini-2.5"):
        w, h = _GEMINI_25_1K.get(ratio or "1:1", (1024, 1024))
        return w, h
    w, h = _GEMINI_1K.get(ratio or "1:1", (1024, 1024))
    scale = _GEMINI_TIER.get(size or "1K", 1)
    return int(w * scale), int(h * scale)


# ---------------------------------------------------------------- HTTP


class HttpError(Exception):
    """A request the HTTP layer cannot take; answered, then the connection is closed."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    __slots__ = ("method", "target", "path", "query", "version", "headers", "body", "keep_alive")

    def __init__(self, method, target, version, headers):
        self.method = method
        self.target = target
        raw_path, _, raw_query = target.partition("?")
        self.path = urllib.parse.unquote(raw_path)
        self.query = {k: v[-1] for k, v in urllib.parse.parse_qs(raw_query).items()}
        self.version = version
        self.headers = headers
        self.body = b""
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        self.keep_alive = ("close" not in tokens if version == "HTTP/1.1"
                           else "keep-alive" in tokens)


_HEX_RE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_head(head):
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1]:
        raise HttpError(400, "malformed request line")
    if not _TOKEN_RE.fullmatch(parts[0]):
        raise HttpError(400, "malformed method")
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            raise HttpError(400, "obsolete header line folding")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN_RE.fullmatch(name):
            raise HttpError(400, "malformed header line")
        name = name.lower()
        value = value.strip(" \t")
        headers[name] = headers[name] + ", " + value if name in headers else value
    return Request(parts[0], parts[1], parts[2], headers)


async def read_line(reader):
    try:
        return await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError(400, "line too long") from None


async def read_chunked(reader, max_body):
    chunks, total = [], 0
    while True:
        line = await read_line(reader)
        size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
        if not _HEX_RE.fullmatch(size_text):
            raise HttpError(400, "malformed chunk size")
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > max_body:
            raise HttpError(413, "request body too large")
        chunks.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise HttpError(400, "chunk not followed by CRLF")
    while (await read_line(reader)) != b"\r\n":  # trailer fields: ignored
        pass
    return b"".join(chunks)


async def read_request(reader, writer, max_body):
    """The next request on the connection, or None when the client closed it between requests."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if e.partial.strip():
                raise HttpError(400, "incomplete request head") from None
            return None
        except asyncio.LimitOverrunError:
            raise HttpError(431, "request head too large") from None
        head = head.lstrip(b"\r\n")  # stray CRLFs between requests are allowed
        if head:
            break
    req = parse_head(head)
    te = req.headers.get("transfer-encoding")
    cl = req.headers.get("content-length")
    expects_body = te is not None or (cl is not None and cl.strip() not in ("0", ""))
    if (expects_body and req.version == "HTTP/1.1"
            and req.headers.get("expect", "").lower() == "100-continue"):
        if cl is not None and te is None and cl.strip().isdigit() and int(cl) > max_body:
            raise HttpError(413, "request body too large")
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if te is not None:
        codings = [c.strip().lower() for c in te.split(",") if c.strip()]
        if codings != ["chunked"]:
            raise HttpError(501, "unsupported transfer-encoding %r" % te)
        req.body = await read_chunked(reader, max_body)
    elif cl is not None:
        values = {v.strip() for v in cl.split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise HttpError(400, "malformed content-length")
        length = int(values.pop())
        if length > max_body:
            raise HttpError(413, "request body too large")
        req.body = await reader.readexactly(length)
    return req


def reason_phrase(status):
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Status %d" % status


def encode_head(status, headers):
    lines = ["HTTP/1.1 %d %s" % (status, reason_phrase(status))]
    lines += ["%s: %s" % (k, v) for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_bytes(obj):
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class Reply:
    """What to do with one request. action: None (answer), "truncated", "stream" (events),
    "reset", "close", "hang"."""

    def __init__(self, status=200, body=b"", content_type="application/json", headers=None,
                 action=None, events=None):
        self.chunk_bytes = None  # write the body in pieces this large
        self.status = status
        self.body = body if isinstance(body, bytes) else json_bytes(body)
        self.headers = [("Content-Type", content_type)] if content_type else []
        self.action = action
        self.events = events or []
        for k, v in (headers or {}).items():
            self.set_header(k, v)

    def set_header(self, name, value):
        low = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != low]
        self.headers.append((name, str(value)))


# ---------------------------------------------------------------- multipart


def parse_params(value):
    """'type/sub; a=1; b="x;y"' -> ('type/sub', {'a': '1', 'b': 'x;y'}); names lower-cased."""
    main, _, rest = value.partition(";")
    params = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        name = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            buf = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(rest[i])
                i += 1
            i += 1  # closing quote
            val = "".join(buf)
        else:
            end = rest.find(";", i)
            end = n if end < 0 else end
            val = rest[i:end].strip()
            i = end
        params[name] = val
    return main.strip().lower(), params


class Part:
    __slots__ = ("name", "filename", "content_type", "data")

    def __init__(self, name, filename, content_type, data):
        self.name = name
        self.filename = filename
        self.content_type = content_type
        self.data = data


def parse_multipart(body, boundary):
    """Parts of a multipart/form-data body; ValueError when it is not well formed."""
    if not boundary or len(boundary) > 200:
        raise ValueError("missing or overlong boundary")
    delim = b"--" + boundary.encode("latin-1")
    if body.startswith(delim):
        pos = len(delim)
    else:
        start = body.find(b"\r\n" + delim)
        if start < 0:
            raise ValueError("no opening boundary")
        pos = start + 2 + len(delim)
    parts = []
    while True:
        if body[pos:pos + 2] == b"--":
            return parts
        eol = body.find(b"\r\n", pos)
        if eol < 0 or body[pos:eol].strip(b" \t"):
            raise ValueError("junk after a boundary")
        head_end = body.find(b"\r\n\r\n", eol)
        if head_end < 0:
            raise ValueError("part headers not terminated")
        headers = {}
        if head_end > eol:
            for line in body[eol + 2:head_end].decode("utf-8", "replace").split("\r\n"):
                name, sep, value = line.partition(":")
                if not sep:
                    raise ValueError("malformed part header")
                headers[name.strip().lower()] = value.strip()
        data_start = head_end + 4
        data_end = body.find(b"\r\n" + delim, data_start)
        if data_end < 0:
            raise ValueError("part not terminated by a boundary")
        disp, dparams = parse_params(headers.get("content-disposition", ""))
        if disp != "form-data" or "name" not in dparams:
            raise ValueError("part without content-disposition: form-data; name=...")
        filename = dparams.get("filename")
        if "filename*" in dparams:
            _, _, encoded = dparams["filename*"].partition("''")
            filename = urllib.parse.unquote(encoded)
        ctype = headers.get("content-type")
        parts.append(Part(dparams["name"], filename, ctype, body[data_start:data_end]))
        pos = data_end + 2 + len(delim)


def describe_part(part):
    d = {"name": part.name, "filename": part.filename, "content_type": part.content_type,
         "size": len(part.data), "sha256": hashlib.sha256(part.data).hexdigest(),
         "magic": image_magic(part.data), "text": None}
    if part.filename is None and len(part.data) <= TEXT_PART_LIMIT:
        try:
            d["text"] = part.data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return d


# ---------------------------------------------------------------- scripts

KINDS = ("image", "thought_then_image", "text_only", "block_prompt", "finish_reason", "error",
         "malformed", "truncated", "reset", "close", "hang")
ENDPOINTS = ("generateContent", "streamGenerateContent", "generations", "edits")
STEP_FIELDS = {
    "delay_ms": (int, float), "kind": str, "status": (int, str), "reason": str, "content": str,
    "message": str, "text": (str, type(None)), "google_status": str,
    "retry_delay": (str, int, float),
    "details": list, "code": (str, type(None)), "type": str, "param": (str, type(None)),
    "in_stream": bool, "headers": dict, "snake_case": (bool, str), "width": int, "height": int,
    "real_size": bool, "thoughts": int, "final_image": bool, "format": str, "damaged": bool,
    "pad_bytes": int,
    "sizes": list, "count": int, "quality": (str, type(None)), "chunk_bytes": int,
    "background": (str, type(None)),
}


def check_step(step):
    """An error message for a malformed STEP, or None."""
    if not isinstance(step, dict):
        return "a step must be an object"
    for key, value in step.items():
        if key not in STEP_FIELDS:
            return "unknown step field %r" % key
        types = STEP_FIELDS[key] if isinstance(STEP_FIELDS[key], tuple) else (STEP_FIELDS[key],)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return "step field %r has the wrong type" % key
    kind = step.get("kind", "image")
    if kind not in KINDS:
        return "unknown kind %r (one of %s)" % (kind, ", ".join(KINDS))
    if step.get("delay_ms", 0) < 0:
        return "delay_ms must be >= 0"
    if step.get("chunk_bytes", 1) < 1:
        return "chunk_bytes must be >= 1"
    if not 0 <= step.get("pad_bytes", 0) <= 64 << 20:
        return "pad_bytes must be 0..64 MiB"
    status = step.get("status")
    if isinstance(status, int) and not 100 <= status <= 599:
        return "status must be an HTTP status"
    if isinstance(status, str) and (kind != "error" or status not in GOOGLE_STATUS_HTTP):
        return "a status name is only for kind=error and must be a Google status"
    for dim in ("width", "height"):
        if dim in step and not 1 <= step[dim] <= 16384:
            return "%s must be 1..16384" % dim
    if not all(isinstance(s, str) and re.fullmatch(r"[1-9][0-9]{0,3}x[1-9][0-9]{0,3}", s)
               for s in step.get("sizes", [])):
        return "sizes must be a list of \"WxH\" (each side 1..9999)"
    if not 0 <= step.get("count", 1) <= 10:
        return "count must be 0..10"
    if step.get("content", "absent") not in ("absent", "empty", "text"):
        return "content must be absent, empty or text"
    if not 0 <= step.get("thoughts", 2) <= 4:
        return "thoughts must be 0..4"
    if step.get("snake_case", False) not in (True, False, "all"):
        return "snake_case must be true, false or \"all\""
    if step.get("format", "png") not in IMAGE_ENCODERS:
        return "format must be png, jpeg or webp"
    if step.get("background", "opaque") not in ("opaque", "transparent", None):
        return "background must be opaque, transparent or null"
    if not all(isinstance(k, str) and _TOKEN_RE.fullmatch(k) and isinstance(v, (str, int))
               and not re.search(r"[\r\n]", str(v)) for k, v in step.get("headers", {}).items()):
        return "headers must map names to single-line strings"
    return None


class Script:
    def __init__(self, sid, spec):
        self.id = sid
        self.match = spec.get("match") or {}
        self.steps = spec["responses"]
        self.then = spec.get("then", "default")
        self.used = 0

    def matches(self, api, model, endpoint):
        want_api = self.match.get("api", "*")
        if want_api not in ("*", api):
            return False
        if "model" in self.match and not fnmatch.fnmatchcase(model or "", self.match["model"]):
            return False
        return self.match.get("endpoint") in (None, endpoint)

    def take(self):
        """The next step, or None once a "default" script is used up."""
        if self.used < len(self.steps):
            self.used += 1
            return self.steps[self.used - 1]
        if self.then == "repeat_last":
            self.used += 1
            return self.steps[-1]
        return None

    def describe(self):
        return {"id": self.id, "match": self.match, "responses": self.steps, "then": self.then,
                "used": self.used, "exhausted": self.then == "default" and self.used >= len(
                    self.steps)}


def check_script(spec):
    if not isinstance(spec, dict):
        return "a script must be an object"
    unknown = set(spec) - {"match", "responses", "then"}
    if unknown:
        return "unknown script field(s) %s" % sorted(unknown)
    match = spec.get("match", {})
    if not isinstance(match, dict) or set(match) - {"api", "model", "endpoint"}:
        return "match takes api, model and endpoint"
    if match.get("api", "*") not in ("*", "gemini", "openai"):
        return "match.api must be gemini, openai or *"
    if "model" in match and not isinstance(match["model"], str):
        return "match.model must be a string"
    if match.get("endpoint") not in (None,) + ENDPOINTS:
        return "match.endpoint must be one of %s" % ", ".join(ENDPOINTS)
    steps = spec.get("responses")
    if not isinstance(steps, list) or not steps:
        return "responses must be a non-empty list of steps"
    for i, step in enumerate(steps):
        problem = check_step(step)
        if problem:
            return "responses[%d]: %s" % (i, problem)
    if spec.get("then", "default") not in ("default", "repeat_last"):
        return "then must be default or repeat_last"
    return None


# ---------------------------------------------------------------- Gemini

GOOGLE_HTTP_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 402: "RESOURCE_EXHAUSTED",
                      403: "PERMISSION_DENIED", 404: "NOT_FOUND", 405: "NOT_FOUND", 409: "ABORTED",
                      429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
                      501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
GOOGLE_STATUS_HTTP = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
                      "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
                      "ABORTED": 409, "ALREADY_EXISTS": 409, "RESOURCE_EXHAUSTED": 429,
                      "CANCELLED": 499, "UNKNOWN": 500, "INTERNAL": 500, "DATA_LOSS": 500,
                      "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
GOOGLE_MESSAGES = {429: "Resource has been exhausted (e.g. check quota).",
                   500: "An internal error has occurred. Please retry or report in "
                        "https://developers.generativeai.google/guide/troubleshooting",
                   503: "The model is overloaded. Please try again later.",
                   504: "Deadline expired before operation could complete."}
GEMINI_MODELS = ("gemini-2.5-flash-image", "gemini-3-pro-image-preview",
                 "gemini-3.1-flash-image-preview", "gemini-3.1-flash-image")
GEMINI_MODALITIES = ("MODALITY_UNSPECIFIED", "TEXT", "IMAGE", "AUDIO")


def _snake(name):
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _both(names):
    """Proto JSON accepts a field in lowerCamelCase and in its original snake_case."""
    out = set()
    for n in names.split():
        out.add(n)
        out.add(_snake(n))
    return frozenset(out)


GEMINI_REQUEST_FIELDS = _both("model contents tools toolConfig safetySettings systemInstruction "
                              "generationConfig cachedContent labels")
GEMINI_CONTENT_FIELDS = _both("role parts")
GEMINI_PART_DATA = _both("text inlineData fileData functionCall functionResponse executableCode "
                         "codeExecutionResult")
GEMINI_PART_FIELDS = GEMINI_PART_DATA | _both("thought thoughtSignature videoMetadata "
                                              "partMetadata mediaResolution")
GEMINI_BLOB_FIELDS = _both("mimeType data")
GEMINI_GENCONFIG_FIELDS = _both(
    "stopSequences responseMimeType responseSchema responseJsonSchema responseModalities "
    "candidateCount maxOutputTokens temperature topP topK seed presencePenalty frequencyPenalty "
    "responseLogprobs logprobs enableEnhancedCivicAnswers speechConfig thinkingConfig "
    "imageConfig mediaResolution")
GEMINI_IMAGECONFIG_FIELDS = _both("aspectRatio imageSize")


def either(obj, camel):
    """obj[camel] or obj[snake_case(camel)]."""
    if camel in obj:
        return obj[camel]
    return obj.get(_snake(camel))


def google_error(status, message, gstatus=None, details=None):
    err = {"code": status, "message": message,
           "status": gstatus or GOOGLE_HTTP_STATUS.get(status, "UNKNOWN")}
    if details:
        err["details"] = details
    return {"error": err}


GOOGLE_JSON = "application/json; charset=UTF-8"


def greply(status, body):
    return Reply(status, body, GOOGLE_JSON)


def bad_key_reply():
    details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"}},
               {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                "message": "API key not valid. Please pass a valid API key."}]
    return greply(400, google_error(400, "API key not valid. Please pass a valid API key.",
                                   "INVALID_ARGUMENT", details))


def _unknown_field(obj, allowed, where):
    for k in obj:
        if k not in allowed:
            at = " at '%s'" % where if where else ""
            return 'Invalid JSON payload received. Unknown name "%s"%s: Cannot find field.' % (
                k, at)
    return None


class GeminiCall:
    """What the fake needs from a valid generateContent request."""

    def __init__(self):
        self.prompt = ""
        self.n_images = 0
        self.ratio = None
        self.size = None


def _check_b64(data):
    try:
        base64.b64decode(data, validate=True)
        return True
    except ValueError:
        pass
    try:  # proto3 JSON also accepts the URL-safe alphabet
        base64.b64decode(data.replace("-", "+").replace("_", "/"), validate=True)
        return True
    except ValueError:
        return False


def _check_part(part, where, strict, call, texts):
    if not isinstance(part, dict):
        return "Invalid value at '%s': expected an object" % where
    if strict:
        problem = _unknown_field(part, GEMINI_PART_FIELDS, where)
        if problem:
            return problem
    data_fields = [k for k in part if k in GEMINI_PART_DATA]
    if len(data_fields) != 1:
        return "* GenerateContentRequest.%s: a part needs exactly one data field" % where
    if "text" in part:
        if not isinstance(part["text"], str):
            return "Invalid value at '%s.text' (TYPE_STRING)" % where
        texts.append(part["text"])
        return None
    blob = either(part, "inlineData")
    if blob is None:
        return None
    if not isinstance(blob, dict):
        return "Invalid value at '%s.inline_data': expected an object" % where
    if strict:
        problem = _unknown_field(blob, GEMINI_BLOB_FIELDS, where + ".inline_data")
        if problem:
            return problem
    mime, data = either(blob, "mimeType"), blob.get("data")
    if not isinstance(mime, str) or "/" not in mime:
        return "* GenerateContentRequest.%s.inline_data.mime_type: a MIME type is required" % where
    if not isinstance(data, str) or not _check_b64(data):
        return ("Invalid value at '%s.inline_data.data' (TYPE_BYTES), Base64 decoding failed"
                % where)
    call.n_images += 1
    return None


def _check_generation_config(cfg, strict, call):
    if not isinstance(cfg, dict):
        return "Invalid value at 'generation_config': expected an object"
    if strict:
        problem = _unknown_field(cfg, GEMINI_GENCONFIG_FIELDS, "generation_config")
        if problem:
            return problem
    modalities = either(cfg, "responseModalities")
    if modalities is not None:
        if not isinstance(modalities, list):
            return "Invalid value at 'generation_config.response_modalities': expected a list"
        for i, m in enumerate(modalities):
            if m not in GEMINI_MODALITIES:  # proto enum names are case-sensitive
                return ("Invalid value at 'generation_config.response_modalities[%d]' "
                        "(type.googleapis.com/google.ai.generativelanguage.v1beta."
                        "GenerationConfig.Modality), %s" % (i, json.dumps(m)))
    img = either(cfg, "imageConfig")
    if img is None:
        return None
    if not isinstance(img, dict):
        return "Invalid value at 'generation_config.image_config': expected an object"
    if strict:
        problem = _unknown_field(img, GEMINI_IMAGECONFIG_FIELDS, "generation_config.image_config")
        if problem:
            return problem
    ratio, size = either(img, "aspectRatio"), either(img, "imageSize")
    if ratio is not None and ratio not in GEMINI_RATIOS:
        return ("* GenerateContentRequest.generation_config.image_config.aspect_ratio: "
                "unsupported aspect ratio %s" % json.dumps(ratio))
    if size is not None and size not in GEMINI_SIZES:
        return ("* GenerateContentRequest.generation_config.image_config.image_size: "
                "unsupported image size %s. Supported values are 512, 1K, 2K and 4K "
                "(upper case)." % json.dumps(size))
    call.ratio, call.size = ratio, size
    return None


def check_gemini_request(obj, strict):
    """(GeminiCall, None) for a valid request body, else (None, message)."""
    if not isinstance(obj, dict):
        return None, "Invalid JSON payload received. Expected an object."
    if strict:
        problem = _unknown_field(obj, GEMINI_REQUEST_FIELDS, "")
        if problem:
            return None, problem
    call, texts = GeminiCall(), []
    contents = obj.get("contents")
    if not isinstance(contents, list) or not contents:
        return None, "* GenerateContentRequest.contents: contents is not specified"
    for i, content in enumerate(contents):
        where = "contents[%d]" % i
        if not isinstance(content, dict):
            return None, "Invalid value at '%s': expected an object" % where
        if strict:
            problem = _unknown_field(content, GEMINI_CONTENT_FIELDS, where)
            if problem:
                return None, problem
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return None, "* GenerateContentRequest.%s.parts: contents.parts must not be empty." % (
                where)
        for j, part in enumerate(parts):
            problem = _check_part(part, "%s.parts[%d]" % (where, j), strict, call, texts)
            if problem:
                return None, problem
    cfg = either(obj, "generationConfig")
    if cfg is not None:
        problem = _check_generation_config(cfg, strict, call)
        if problem:
            return None, problem
    call.prompt = "\n".join(texts)
    return call, None


def snake_keys(obj, only=None):
    if isinstance(obj, list):
        return [snake_keys(v, only) for v in obj]
    if isinstance(obj, dict):
        return {(_snake(k) if only is None or k in only else k): snake_keys(v, only)
                for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------- OpenAI

OPENAI_MODELS = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2")
OPENAI_GEN_PARAMS = frozenset((
    "model", "prompt", "n", "size", "quality", "background", "output_format",
    "output_compression", "moderation", "stream", "partial_images", "user", "response_format",
    "style"))
OPENAI_EDIT_PARAMS = (OPENAI_GEN_PARAMS - {"style"}) | {"image", "image[]", "mask",
                                                        "input_fidelity"}
OPENAI_ENUMS = {"quality": ("low", "medium", "high", "auto", "standard", "hd"),
                "background": ("transparent", "opaque", "auto"),
                "output_format": ("png", "jpeg", "webp"), "moderation": ("auto", "low"),
                "input_fidelity": ("high", "low"), "response_format": ("url", "b64_json"),
                "style": ("vivid", "natural")}
OPENAI_INT_RANGES = {"n": (1, 10), "output_compression": (0, 100), "partial_images": (0, 3)}
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
                      403: "invalid_request_error", 404: "invalid_request_error",
                      409: "invalid_request_error", 422: "invalid_request_error",
                      429: "requests"}
OPENAI_OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160}


def openai_error(status, message, etype=None, param=None, code=None):
    etype = etype or OPENAI_ERROR_TYPES.get(status, "server_error")
    return Reply(status, {"error": {"message": message, "type": etype, "param": param,
                                    "code": code}})


def _oxford(values):
    quoted = ["'%s'" % v for v in values]
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _openai_int(params, name, from_form):
    value = params[name]
    if from_form:
        try:
            value = int(value)
        except ValueError:
            return None, openai_error(400, "Invalid value for '%s': expected an integer." % name,
                                      param=name, code="invalid_type")
    elif not isinstance(value, int) or isinstance(value, bool):
        return None, openai_error(400, "Invalid type for '%s': expected an integer, but got %s "
                                  "instead." % (name, type(value).__name__), param=name,
                                  code="invalid_type")
    low, high = OPENAI_INT_RANGES[name]
    if value < low:
        return None, openai_error(400, "Invalid '%s': integer below minimum value. Expected a "
                                  "value >= %d, but got %d instead." % (name, low, value),
                                  param=name, code="integer_below_min_value")
    if value > high:
        return None, openai_error(400, "Invalid '%s': integer above maximum value. Expected a "
                                  "value <= %d, but got %d instead." % (name, high, value),
                                  param=name, code="integer_above_max_value")
    return value, None


def check_openai_params(params, allowed, from_form, strict):
    """Normalised parameters, or an error Reply. from_form: values are multipart strings."""
    if strict:
        for k in params:
            if k not in allowed:
                return None, openai_error(400, "Unknown parameter: '%s'." % k, param=k,
                                          code="unknown_parameter")
    prompt = params.get("prompt")
    if prompt is None or prompt == "":
        return None, openai_error(400, "Missing required parameter: 'prompt'.", param="prompt",
                                  code="missing_required_parameter")
    if not isinstance(prompt, str):
        return None, openai_error(400, "Invalid type for 'prompt': expected a string.",
                                  param="prompt", code="invalid_type")
    if len(prompt) > 32000:
        return None, openai_error(400, "Invalid 'prompt': string too long. Expected a string "
                                  "with maximum length 32000, but got a string with length "
                                  "%d instead." % len(prompt), param="prompt",
                                  code="string_above_max_length")
    out = dict(params)
    for name in OPENAI_INT_RANGES:
        if name in params:
            out[name], err = _openai_int(params, name, from_form)
            if err:
                return None, err
    for name, values in OPENAI_ENUMS.items():
        if name in params and params[name] not in values:
            return None, openai_error(400, "Invalid value: '%s'. Supported values are: %s." % (
                params[name], _oxford(values)), param=name, code="invalid_value")
    size = params.get("size", "auto")
    if size != "auto" and not re.fullmatch(r"[1-9][0-9]{1,4}x[1-9][0-9]{1,4}", str(size)):
        return None, openai_error(400, "Invalid value: '%s'. Supported values are: '1024x1024', "
                                  "'1024x1536', '1536x1024', and 'auto'." % size, param="size",
                                  code="invalid_value")
    stream = params.get("stream", False)
    out["stream"] = stream in (True, "true", "True", "1")
    return out, None


# ---------------------------------------------------------------- the server


def new_request_id():
    return "req_" + secrets.token_hex(16)


class Fake:
    def __init__(self, args):
        self.gemini_key = args.gemini_key
        self.openai_key = args.openai_key
        self.strict = not args.lenient
        self.max_body = args.max_body
        self.verbose = args.verbose
        self.records = collections.deque(maxlen=args.max_recorded or None)
        self.record_on = args.max_recorded != 0
        self.scripts = []
        self.next_script_id = 1
        self.next_seq = 1
        self.conn_tasks = set()
        self.connections = 0
        self.max_connections = 0
        self.in_flight = 0
        self.reset_counters()

    def reset_counters(self):
        self.total = 0
        self.max_in_flight = self.in_flight
        self.max_connections = self.connections
        self.by_status = collections.Counter()

    # -- connections

    async def on_connection(self, reader, writer):
        task = asyncio.current_task()
        self.conn_tasks.add(task)
        self.connections += 1
        self.max_connections = max(self.max_connections, self.connections)
        try:
            await self.serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self.connections -= 1
            self.conn_tasks.discard(task)
            if not writer.transport.is_closing():  # a close() in progress still flushes
                writer.transport.abort()

    async def serve(self, reader, writer):
        while True:
            try:
                req = await read_request(reader, writer, self.max_body)
            except HttpError as e:
                reply = Reply(e.status, {"error": {"code": e.status, "message": e.message}})
                await self.deliver(reply, None, reader, writer, False)
                return
            if req is None:
                return
            if req.path.startswith("/_fake/"):
                keep = await self.deliver(self.control(req), None, reader, writer, req.keep_alive)
            else:
                keep = await self.upstream_request(req, reader, writer)
            if not keep:
                return

    async def upstream_request(self, req, reader, writer):
        self.total += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        rec = None
        try:
            rec, reply = await self.handle(req)
            return await self.deliver(reply, rec, reader, writer, req.keep_alive)
        finally:
            self.in_flight -= 1
            if self.verbose and rec is not None:
                outcome = rec["status"] or (rec["step"] or {}).get("kind")
                print("%s %s -> %s" % (req.method, req.target, outcome), file=sys.stderr,
                      flush=True)

    async def deliver(self, reply, rec, reader, writer, keep_alive):
        """Carries out a reply; returns whether the connection may serve another request.
        rec: the recorded upstream request (None for control and malformed requests)."""
        if reply.action in ("reset", "close", "hang"):
            if rec is not None:
                self.by_status[reply.action] += 1
            if reply.action == "reset":
                sock = writer.get_extra_info("socket")
                if sock is not None:  # linger 0: close() sends RST instead of FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            elif reply.action == "close":
                writer.close()
            else:
                while await reader.read(65536):
                    pass
            return False
        if rec is not None:
            self.by_status[str(reply.status)] += 1
            rec["status"] = reply.status
            reply.set_header("x-request-id", rec["request_id"])
        else:
            reply.set_header("x-request-id", new_request_id())
        reply.set_header("Date", email.utils.formatdate(usegmt=True))
        keep_alive = keep_alive and reply.action in (None, "stream")
        reply.set_header("Connection", "keep-alive" if keep_alive else "close")
        if reply.action in ("stream", "stream_cut"):
            await self.send_stream(reply, writer, reply.action == "stream_cut")
        else:
            reply.set_header("Content-Length", len(reply.body))
            body = reply.body[:len(reply.body) // 2] if reply.action == "truncated" else reply.body
            if reply.chunk_bytes:
                writer.write(encode_head(reply.status, reply.headers))
                await writer.drain()
                for at in range(0, len(body), reply.chunk_bytes):
                    writer.write(body[at:at + reply.chunk_bytes])
                    await writer.drain()
            else:
                writer.write(encode_head(reply.status, reply.headers) + body)
                await writer.drain()
        if not keep_alive:
            writer.close()
        return keep_alive

    async def send_stream(self, reply, writer, cut):
        """Events as chunks; a cut stream stops without the last chunk (the caller closes)."""
        reply.set_header("Transfer-Encoding", "chunked")
        writer.write(encode_head(reply.status, reply.headers))
        for event in reply.events:
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
        if not cut:
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    # -- routing

    def route(self, req):
        """(api, model, endpoint) of an upstream request; api None for unknown paths."""
        m = re.fullmatch(r"/v1(?:beta|alpha)?/models/([^/:]+):(generateContent|"
                         r"streamGenerateContent)", req.path)
        if m:
            return "gemini", m.group(1), m.group(2)
        if req.path in ("/v1/images/generations", "/v1/images/edits"):
            return "openai", None, req.path.rsplit("/", 1)[1]
        if req.path == "/v1/models":
            return "openai", None, "models"
        if req.path == "/v1beta/models" or req.path.startswith("/v1beta/models/"):
            return "gemini", None, "models"
        return None, None, None

    def record(self, req, api, model, endpoint):
        rec = {"seq": self.next_seq, "api": api, "model": model, "endpoint": endpoint,
               "method": req.method, "path": req.path, "query": req.query,
               "headers": dict(req.headers), "json": None, "json_error": None,
               "multipart": None, "body_size": len(req.body), "received_at": time.time(),
               "request_id": new_request_id(), "step": None, "status": None}
        self.next_seq += 1
        if self.record_on:
            self.records.append(rec)
        return rec

    async def handle(self, req):
        api, model, endpoint = self.route(req)
        rec = self.record(req, api, model, endpoint)
        try:
            if api == "gemini" and endpoint == "models":
                return rec, self.gemini_models(req)
            if api == "openai" and endpoint == "models":
                return rec, self.openai_models(req)
            if api == "gemini":
                return rec, await self.gemini(req, rec)
            if api == "openai":
                return rec, await self.openai(req, rec)
            if req.path.startswith("/v1beta/"):
                return rec, greply(404, google_error(404, "Method not found.", "NOT_FOUND"))
            return rec, openai_error(404, "Invalid URL (%s %s)" % (req.method, req.path))
        except Exception as e:  # a bug in the fake: make it loud, never hang the client
            traceback.print_exc()
            return rec, Reply(500, {"error": {"message": "fake upstream bug: %r" % e}})

    def take_step(self, api, model, endpoint):
        for script in self.scripts:
            if script.matches(api, model, endpoint):
                step = script.take()
                if step is not None:
                    return step
        return {}

    async def run_step(self, step, rec, build, sse=False):
        """Applies a step's delay and connection-level kinds; build(step) makes the answer.
        sse: the client asked for an event stream (a malformed answer is then a broken event)."""
        rec["step"] = step
        if step.get("delay_ms"):
            await asyncio.sleep(step["delay_ms"] / 1000.0)
        kind = step.get("kind", "image")
        if kind in ("reset", "close", "hang"):
            return Reply(action=kind)
        if kind == "malformed" and sse:
            reply = Reply(step.get("status", 200), b"", "text/event-stream", action="stream",
                          events=[b'data: {"candidates":[{"content":\n\n'])
        elif kind == "malformed":
            reply = Reply(step.get("status", 200), b'{"candidates":[{"content":{"parts":[{"inline')
        else:
            reply = build(step)
            if kind == "truncated" and reply.action is None:
                reply.action = "truncated"
        for k, v in step.get("headers", {}).items():
            reply.set_header(k, v)
        reply.chunk_bytes = step.get("chunk_bytes")
        return reply

    # -- Gemini

    def gemini_key_ok(self, req):
        key = req.headers.get("x-goog-api-key") or req.query.get("key")
        return bool(key) and (self.gemini_key is None or key == self.gemini_key)

    async def gemini(self, req, rec):
        if not self.gemini_key_ok(req):
            return bad_key_reply()
        if req.method != "POST":
            return greply(405, google_error(405, "Method not allowed; use POST.", "NOT_FOUND"))
        try:
            obj = json.loads(req.body)
        except (ValueError, UnicodeDecodeError) as e:
            rec["json_error"] = str(e)
            return greply(400, google_error(400, "Invalid JSON payload received. %s" % e))
        rec["json"] = obj
        call, problem = check_gemini_request(obj, self.strict)
        if problem:
            return greply(400, google_error(400, problem))
        step = self.take_step("gemini", rec["model"], rec["endpoint"])
        stream = rec["endpoint"] == "streamGenerateContent"
        sse = stream and req.query.get("alt") == "sse"
        return await self.run_step(step, rec, lambda s: self.gemini_answer(
            s, rec, call, stream, sse), sse)

    def gemini_image_part(self, step, rec, call, seed):
        fmt = step.get("format", "png")
        if step.get("real_size"):
            w, h = gemini_real_size(rec["model"], call.ratio, call.size)
        else:
            w, h = step.get("width", 8), step.get("height", 8)
        data, mime = make_image(fmt, w, h, seed)
        if step.get("damaged"):
            data = damage(data)
        data = pad(data, step.get("pad_bytes", 0))
        return {"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode()}}

    def gemini_body(self, step, rec, call):
        """(HTTP status, response object) for a non-error kind."""
        kind = step.get("kind", "image")
        usage = {"promptTokenCount": max(1, len(call.prompt) // 4) + 258 * call.n_images}
        out = {}
        if kind == "block_prompt":
            feedback = {"blockReason": step.get("reason", "SAFETY")}
            if "message" in step:
                feedback["blockReasonMessage"] = step["message"]
            out["promptFeedback"] = feedback
        else:
            cand = {}
            if kind == "finish_reason":
                content = step.get("content", "absent")
                if content != "absent":
                    parts = [] if content == "empty" else [
                        {"text": step.get("text") or "I can't make that image."}]
                    cand["content"] = {"role": "model", "parts": parts}
                cand["finishReason"] = step.get("reason", "IMAGE_SAFETY")
                if "message" in step:
                    cand["finishMessage"] = step["message"]
            elif kind == "text_only":
                cand["content"] = {"role": "model", "parts": [
                    {"text": step.get("text") or "I can't help with making that image."}]}
                usage["candidatesTokenCount"] = 12
            else:
                cand["content"] = {"role": "model",
                                   "parts": self.gemini_image_parts(step, rec, call)}
                usage["candidatesTokenCount"] = 1290
                if kind == "thought_then_image":
                    usage["thoughtsTokenCount"] = 250
            cand.setdefault("finishReason", "STOP")
            cand["index"] = 0
            out["candidates"] = [cand]
        usage["totalTokenCount"] = sum(usage.values())
        out["usageMetadata"] = usage
        out["modelVersion"] = rec["model"]
        out["responseId"] = rec["request_id"][4:26]
        return step.get("status", 200), out

    def gemini_image_parts(self, step, rec, call):
        parts = []
        if step.get("kind") == "thought_then_image":
            for i in range(step.get("thoughts", 2)):
                parts.append({"text": "**Drafting** version %d of the picture." % (i + 1),
                              "thought": True})
                part = self.gemini_image_part(step, rec, call, "%s|thought|%d" % (call.prompt, i))
                part["thought"] = True
                parts.append(part)
        text = step.get("text", "Here is the image you asked for.")
        if text is not None:
            parts.append({"text": text})
        if not step.get("final_image", True):
            return parts
        part = self.gemini_image_part(step, rec, call, call.prompt)
        part["thoughtSignature"] = base64.b64encode(
            hashlib.sha256(call.prompt.encode()).digest()).decode()
        parts.append(part)
        return parts

    def gemini_error_body(self, step):
        status = step.get("status", 500)
        gstatus = step.get("google_status")
        if isinstance(status, str):
            gstatus, status = status, GOOGLE_STATUS_HTTP[status]
        details = list(step.get("details", []))
        if "retry_delay" in step:
            delay = step["retry_delay"]
            delay = delay if isinstance(delay, str) else "%gs" % delay
            if status == 429:
                details.append({"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                                "violations": [{"quotaMetric": "generativelanguage.googleapis."
                                                "com/generate_content_free_tier_requests",
                                                "quotaId": "GenerateRequestsPerMinutePerProject"
                                                "PerModel-FreeTier"}]})
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": delay})
        message = step.get("message") or GOOGLE_MESSAGES.get(status, "Fake upstream error.")
        return status, google_error(status, message, gstatus, details)

    def gemini_answer(self, step, rec, call, stream, sse):
        kind = step.get("kind", "image")
        if kind == "error":
            status, body = self.gemini_error_body(step)
            if not (sse and step.get("in_stream")):
                return Reply(status, body, GOOGLE_JSON)
            first = {"candidates": [{"content": {"role": "model", "parts": [
                {"text": "Working on it."}]}, "index": 0}], "modelVersion": rec["model"]}
            return self.gemini_sse([first, body], 200, step)
        status, body = self.gemini_body(step, rec, call)
        snake = step.get("snake_case", False)
        if snake:
            body = snake_keys(body, None if snake == "all" else ("inlineData", "mimeType"))
        if not stream:
            return Reply(status, body, GOOGLE_JSON)
        events = split_events(body)
        if sse:
            return self.gemini_sse(events, status, step)
        return Reply(status, events, GOOGLE_JSON)

    def gemini_sse(self, events, status, step):
        payload = [b"data: " + json_bytes(e) + b"\n\n" for e in events]
        action = "stream"
        if step.get("kind") == "truncated":  # the stream dies after its first event
            payload, action = payload[:1], "stream_cut"
        return Reply(status, b"", "text/event-stream", action=action, events=payload)

    def gemini_models(self, req):
        if not self.gemini_key_ok(req):
            return bad_key_reply()
        models = [{"name": "models/" + m, "version": "001", "displayName": m,
                   "inputTokenLimit": 65536, "outputTokenLimit": 32768,
                   "supportedGenerationMethods": ["generateContent", "countTokens"]}
                  for m in GEMINI_MODELS]
        if req.path == "/v1beta/models":
            return Reply(200, {"models": models})
        name = req.path[len("/v1beta/"):]
        for m in models:
            if m["name"] == name:
                return Reply(200, m)
        return greply(404, google_error(404, "models/%s is not found for API version v1beta, or "
                                       "is not supported." % name[len("models/"):]))

    # -- OpenAI

    def openai_auth(self, req):
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return openai_error(401, "You didn't provide an API key. You need to provide your API "
                                "key in an Authorization header using Bearer auth (i.e. "
                                "Authorization: Bearer YOUR_KEY).")
        if self.openai_key is not None and token != self.openai_key:
            shown = token[:3] + "*" * 4 + token[-4:] if len(token) > 8 else "*" * len(token)
            return openai_error(401, "Incorrect API key provided: %s. You can find your API key "
                                "at https://platform.openai.com/account/api-keys." % shown,
                                code="invalid_api_key")
        return None

    def openai_form(self, req, rec):
        """(params, images, mask) of a multipart edits request, or an error Reply."""
        ctype, cparams = parse_params(req.headers.get("content-type", ""))
        if ctype != "multipart/form-data":
            return openai_error(400, "Invalid Content-Type header (%s), expected "
                                "multipart/form-data." % (ctype or "none"))
        try:
            parts = parse_multipart(req.body, cparams.get("boundary", ""))
        except ValueError as e:
            return openai_error(400, "Could not parse multipart form: %s" % e)
        rec["multipart"] = [describe_part(p) for p in parts]
        params, images, mask = {}, [], None
        for p in parts:
            if p.name in ("image", "image[]"):
                images.append(p)
                params[p.name] = None
            elif p.name == "mask":
                mask = p
                params["mask"] = None
            else:
                params[p.name] = p.data.decode("utf-8", "replace")
        return params, images, mask

    def openai_images_check(self, images, mask):
        if not images:
            return openai_error(400, "Missing required parameter: 'image'.", param="image",
                                code="missing_required_parameter")
        if len(images) > 16:
            return openai_error(400, "Invalid 'image': too many images (%d); at most 16." %
                                len(images), param="image", code="array_above_max_length")
        for i, p in enumerate(images):
            if image_magic(p.data) not in ("png", "jpeg", "webp"):
                return openai_error(400, "Invalid image file or mode for image %d, please check "
                                    "your image file." % (i + 1), param="image",
                                    code="invalid_image_file")
        if mask is not None and image_magic(mask.data) != "png":
            return openai_error(400, "Invalid mask image file: the mask must be a PNG.",
                                param="mask", code="invalid_image_file")
        if mask is not None and png_colour_type(mask.data) not in (4, 6):
            return openai_error(400, "Invalid mask image: the mask must have an alpha channel.",
                                param="mask", code="invalid_image_file")
        return None

    async def openai(self, req, rec):
        err = self.openai_auth(req)
        if err:
            return err
        if req.method != "POST":
            return openai_error(405, "Method not allowed (%s %s)." % (req.method, req.path))
        edits = rec["endpoint"] == "edits"
        if edits:
            form = self.openai_form(req, rec)
            if isinstance(form, Reply):
                return form
            raw, images, mask = form
        else:
            try:
                raw = json.loads(req.body)
            except (ValueError, UnicodeDecodeError) as e:
                rec["json_error"] = str(e)
                return openai_error(400, "We could not parse the JSON body of your request. "
                                    "(HINT: This likely means you aren't using your HTTP library "
                                    "correctly. The OpenAI API expects a JSON payload, but what "
                                    "was sent was not valid JSON.)")
            rec["json"] = raw
            if not isinstance(raw, dict):
                return openai_error(400, "Invalid body: expected a JSON object.")
            images, mask = [], None
        rec["model"] = raw.get("model") if isinstance(raw.get("model"), str) else None
        params, err = check_openai_params(raw, OPENAI_EDIT_PARAMS if edits else OPENAI_GEN_PARAMS,
                                          edits, self.strict)
        if err:
            return err
        if edits:
            err = self.openai_images_check(images, mask)
            if err:
                return err
        step = self.take_step("openai", rec["model"], rec["endpoint"])
        return await self.run_step(step, rec, lambda s: self.openai_answer(
            s, rec, params, len(images)), params["stream"])

    def openai_answer(self, step, rec, params, n_inputs):
        kind = step.get("kind", "image")
        if kind == "error":
            status = step.get("status", 500)
            if isinstance(status, str):
                status = GOOGLE_STATUS_HTTP[status]
            message = step.get("message") or "Fake upstream error."
            return openai_error(status, message, step.get("type"), step.get("param"),
                                step.get("code"))
        if kind in ("block_prompt", "finish_reason"):
            return openai_error(
                step.get("status", 400), step.get("message") or "Your request was rejected as a "
                "result of our safety system. Your request may contain content that is not "
                "allowed by our safety system.", step.get("type", "image_generation_user_error"),
                step.get("param"), step.get("code", "moderation_blocked"))
        quality = params.get("quality", "auto")
        quality = "medium" if quality in ("auto", "standard", "hd") else quality
        quality = step.get("quality", quality)
        size = params.get("size", "auto")
        size = "1024x1024" if size == "auto" else size
        fmt = step.get("format", params.get("output_format", "png"))
        background = params.get("background", "auto")
        background = step.get("background", "opaque" if background == "auto" else background)
        n = 0 if kind == "text_only" else step.get("count", params.get("n", 1))
        if step.get("real_size"):  # capped: a test must not make the fake encode gigapixels
            w, h = (min(int(v), 8192) for v in size.split("x"))
        else:
            w, h = step.get("width", 8), step.get("height", 8)
        dims = [(w, h)] * n
        if step.get("sizes") is not None:
            dims = [tuple(min(int(v), 8192) for v in s.split("x")) for s in step["sizes"]]
            n = len(dims)
        prompt = params["prompt"]
        datas = [make_image(fmt, dims[i][0], dims[i][1],
                            prompt if i == 0 else "%s|%d" % (prompt, i),
                            background == "transparent")[0]
                 for i in range(n)]
        if step.get("damaged"):
            datas = [damage(d) for d in datas]
        datas = [pad(d, step.get("pad_bytes", 0)) for d in datas]
        text_tokens = max(1, len(prompt) // 4)
        usage = {"input_tokens": text_tokens + 323 * n_inputs,
                 "output_tokens": OPENAI_OUTPUT_TOKENS.get(quality, 1056) * n,
                 "input_tokens_details": {"text_tokens": text_tokens,
                                          "image_tokens": 323 * n_inputs}}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        meta = {"background": background, "output_format": fmt, "quality": quality,
                "size": size}
        if quality is None:
            del meta["quality"]
        if background is None:
            del meta["background"]
        headers = {"openai-version": "2020-10-01", "openai-processing-ms": "1234"}
        if params.get("stream"):
            return self.openai_stream(step, rec, params, datas, meta, usage, headers)
        body = {"created": int(time.time())}
        body.update(meta)
        body["data"] = [{"b64_json": base64.b64encode(d).decode()} for d in datas]
        body["usage"] = usage
        return Reply(step.get("status", 200), body, headers=headers)

    def openai_stream(self, step, rec, params, datas, meta, usage, headers):
        prefix = "image_edit" if rec["endpoint"] == "edits" else "image_generation"
        events = []
        for data in datas:
            b64 = base64.b64encode(data).decode()
            for i in range(params.get("partial_images", 0)):
                ev = {"type": prefix + ".partial_image", "b64_json": b64,
                      "created_at": int(time.time()), "partial_image_index": i}
                ev.update(meta)
                events.append(ev)
            ev = {"type": prefix + ".completed", "b64_json": b64, "created_at": int(time.time())}
            ev.update(meta)
            ev["usage"] = usage
            events.append(ev)
        payload = [b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json_bytes(e))
                   for e in events]
        if step.get("kind") == "truncated":
            payload = payload[:1]
            action = "stream_cut"
        else:
            action = "stream"
        return Reply(step.get("status", 200), b"", "text/event-stream", headers=headers,
                     action=action, events=payload)

    def openai_models(self, req):
        err = self.openai_auth(req)
        if err:
            return err
        return Reply(200, {"object": "list", "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "system"}
            for m in OPENAI_MODELS]})

    # -- control API

    def control(self, req):
        name = req.path[len("/_fake/"):]
        handler = {("POST", "script"): self.ctl_add_script,
                   ("GET", "scripts"): lambda r: Reply(200, [s.describe() for s in self.scripts]),
                   ("GET", "requests"): self.ctl_requests,
                   ("DELETE", "requests"): self.ctl_clear_requests,
                   ("POST", "reset"): self.ctl_reset,
                   ("GET", "stats"): self.ctl_stats}.get((req.method, name))
        if handler is None:
            return Reply(404, {"error": "no control endpoint %s %s" % (req.method, req.path)})
        return handler(req)

    def ctl_add_script(self, req):
        try:
            spec = json.loads(req.body)
        except (ValueError, UnicodeDecodeError) as e:
            return Reply(400, {"error": "bad JSON: %s" % e})
        specs = spec if isinstance(spec, list) else [spec]
        for s in specs:
            problem = check_script(s)
            if problem:
                return Reply(400, {"error": problem})
        ids = []
        for s in specs:
            self.scripts.append(Script(self.next_script_id, s))
            ids.append(self.next_script_id)
            self.next_script_id += 1
        return Reply(200, {"ids": ids, "scripts": len(self.scripts)})

    def ctl_requests(self, req):
        api = req.query.get("api")
        return Reply(200, [r for r in self.records if api is None or r["api"] == api])

    def ctl_clear_requests(self, req):
        self.records.clear()
        return Reply(200, {"cleared": True})

    def ctl_reset(self, req):
        self.records.clear()
        self.scripts.clear()
        self.reset_counters()
        return Reply(200, {"reset": True})

    def ctl_stats(self, req):
        return Reply(200, {"in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                           "total": self.total, "by_status": dict(self.by_status),
                           "connections": self.connections,
                           "max_connections": self.max_connections})


def split_events(body):
    """A generateContent answer as streamGenerateContent events: one part per event, the last
    event carrying finishReason and usage."""
    cands = body.get("candidates")
    if not cands:
        return [body]
    cand = cands[0]
    parts = (cand.get("content") or {}).get("parts") or []
    if len(parts) <= 1:
        return [body]
    events = []
    for i, part in enumerate(parts):
        ev_cand = {"content": {"role": "model", "parts": [part]}, "index": 0}
        ev = {"candidates": [ev_cand], "modelVersion": body.get("modelVersion"),
              "responseId": body.get("responseId")}
        if i == len(parts) - 1:
            ev_cand["finishReason"] = cand.get("finishReason")
            ev["usageMetadata"] = body.get("usageMetadata")
        events.append(ev)
    return events


# ---------------------------------------------------------------- main


def raise_fd_limit():
    """Benchmarks hold 10,000+ connections: lift the soft fd limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass  # keep the soft limit; only very large benchmarks notice


def parse_args(argv):
    ap = argparse.ArgumentParser(description="Scriptable fake of the Gemini and OpenAI image "
                                 "APIs (see the module comment).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--gemini-key", help="the only accepted Gemini key (default: any non-empty)")
    ap.add_argument("--openai-key", help="the only accepted OpenAI key (default: any non-empty)")
    ap.add_argument("--lenient", action="store_true",
                    help="accept unknown JSON fields and OpenAI parameters")
    ap.add_argument("--max-recorded", type=int, default=DEFAULT_MAX_RECORDED,
                    help="recorded requests kept (oldest dropped first; 0 records nothing)")
    ap.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY,
                    help="largest request body accepted, in bytes")
    ap.add_argument("--script", action="append", default=[],
                    help="a JSON file holding a script or a list of scripts to load at start")
    ap.add_argument("--verbose", action="store_true", help="one stderr line per request")
    args = ap.parse_args(argv)
    if args.max_recorded < 0 or args.max_body < 0:
        ap.error("--max-recorded and --max-body must be >= 0")
    return args


def load_scripts(fake, paths):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        for s in spec if isinstance(spec, list) else [spec]:
            problem = check_script(s)
            if problem:
                raise SystemExit("%s: %s" % (path, problem))
            fake.scripts.append(Script(fake.next_script_id, s))
            fake.next_script_id += 1


async def run(args):
    fake = Fake(args)
    load_scripts(fake, args.script)
    server = await asyncio.start_server(fake.on_connection, args.host, args.port,
                                        limit=HEAD_LIMIT, backlog=65535, reuse_address=True)
    host, port = server.sockets[0].getsockname()[:2]
    shown = "[%s]" % host if ":" in host else host
    print("fake upstream listening on http://%s:%d" % (shown, port), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    tasks = list(fake.conn_tasks)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raise_fd_limit()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
