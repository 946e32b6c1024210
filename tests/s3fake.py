"""A tiny S3 server for the one case a real one cannot hold: keys with `//`, `/./`, `/../`
or control characters (SeaweedFS normalizes them away; AWS S3 keeps them). It answers
ListObjectsV2 (prefix, delimiter, start-after), HEAD, GET (If-Match), PUT (and copies),
DELETE, from a dict in memory, with no authentication check."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from xml.sax.saxutils import escape, unescape


class FakeS3:
    """Objects of one bucket, key -> bytes, served on a loopback port."""

    def __init__(self, bucket: str):
        self.bucket = bucket
        self.objects: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.port = 0
        # Faults: op ("delete", "copy", "put") -> (key prefix, HTTP status) to answer instead.
        # A copy and a put match on their target key, a delete on the key it removes.
        self.refuse: dict[str, tuple[str, int]] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "fake",
                "AWS_SECRET_ACCESS_KEY": "fake-secret", "AWS_REGION": "us-east-1"}  # fmt: skip


_FAULT_CODES = {403: "AccessDenied", 500: "InternalError", 503: "SlowDown"}


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'  # noqa: S324 - S3's ETag, not security


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeS3

    def _key(self) -> str:
        path = urllib.parse.urlsplit(self.path).path
        return urllib.parse.unquote(path.split("/", 2)[2] if path.count("/") >= 2 else "")

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refused(self, op: str, key: str) -> bool:
        """Answer a configured fault for op on key instead of doing it."""
        prefix, status = self.fake.refuse.get(op, ("", 0))
        if not status or not key.startswith(prefix):
            return False
        code = _FAULT_CODES.get(status, "InternalError")
        self._send(status, f"<Error><Code>{code}</Code></Error>".encode())
        return True

    def _meta(self, data: bytes) -> dict[str, str]:
        return {"ETag": _etag(data), "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT"}

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        if query.get("list-type") == ["2"]:
            self._list(query)
            return
        with self.fake.lock:
            data = self.fake.objects.get(self._key())
        if data is None:
            self._send(404, b"<Error><Code>NoSuchKey</Code></Error>")
            return
        match = self.headers.get("If-Match")
        if match is not None and match != _etag(data):
            self._send(412, b"<Error><Code>PreconditionFailed</Code></Error>")
            return
        ranged = self.headers.get("Range", "").removeprefix("bytes=")
        if ranged:
            first, _, last = ranged.partition("-")
            start, end = int(first), min(int(last or len(data) - 1), len(data) - 1)
            headers = self._meta(data) | {"Content-Range": f"bytes {start}-{end}/{len(data)}"}
            self._send(206, data[start : end + 1], headers)
            return
        self._send(200, data, self._meta(data))

    def do_HEAD(self) -> None:
        with self.fake.lock:
            data = self.fake.objects.get(self._key())
        if data is None:
            self._send(404)
        else:
            self.send_response(200)
            for name, value in self._meta(data).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        source = self.headers.get("x-amz-copy-source")
        if self._refused("copy" if source is not None else "put", self._key()):
            return
        with self.fake.lock:
            if source is not None:
                src = urllib.parse.unquote(source).lstrip("/").split("/", 1)[1]
                body = self.fake.objects[src]
            self.fake.objects[self._key()] = body
        if source is not None:
            reply = f"<CopyObjectResult><ETag>{escape(_etag(body))}</ETag></CopyObjectResult>"
            self._send(200, reply.encode())
        else:
            self._send(200, b"", {"ETag": _etag(body)})

    def do_POST(self) -> None:
        # The client deletes by a bulk request (POST ?delete), even for one key.
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        keys = [unescape(k) for k in re.findall(r"<Key>(.*?)</Key>", body.decode(), re.S)]
        if any(self._refused("delete", k) for k in keys[:1]):
            return
        with self.fake.lock:
            for key in keys:
                self.fake.objects.pop(key, None)
        done = "".join(f"<Deleted><Key>{escape(k)}</Key></Deleted>" for k in keys)
        self._send(200, f"<DeleteResult>{done}</DeleteResult>".encode())

    def do_DELETE(self) -> None:
        if self._refused("delete", self._key()):
            return
        with self.fake.lock:
            self.fake.objects.pop(self._key(), None)
        self._send(204)

    def _list(self, query: dict[str, list[str]]) -> None:
        prefix = query.get("prefix", [""])[0]
        after = query.get("start-after", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        contents, folders = [], []
        with self.fake.lock:
            items = sorted(self.fake.objects.items())
        for key, data in items:
            if not key.startswith(prefix) or key <= after:
                continue
            rest = key[len(prefix) :]
            if delimiter and delimiter in rest:
                folder = prefix + rest.split(delimiter, 1)[0] + delimiter
                if folder not in folders:
                    folders.append(folder)
                continue
            contents.append(
                f"<Contents><Key>{escape(key)}</Key><LastModified>2026-01-01T00:00:00.000Z"
                f"</LastModified><ETag>{escape(_etag(data))}</ETag><Size>{len(data)}</Size>"
                "</Contents>"
            )
        common = "".join(
            f"<CommonPrefixes><Prefix>{escape(f)}</Prefix></CommonPrefixes>" for f in folders
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
            f"<Name>{self.fake.bucket}</Name><Prefix>{escape(prefix)}</Prefix>"
            f"<KeyCount>{len(contents) + len(folders)}</KeyCount><MaxKeys>1000</MaxKeys>"
            f"<IsTruncated>false</IsTruncated>{''.join(contents)}{common}</ListBucketResult>"
        )
        self._send(200, body.encode(), {"Content-Type": "application/xml"})

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def fake_s3(bucket: str) -> Iterator[FakeS3]:
    """A running fake server for bucket, stopped on exit."""
    fake = FakeS3(bucket)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), type("Handler", (_Handler,), {"fake": fake})
    )
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
