"""Scoped keys, the per-user event stream with resume, and account webhook
endpoints, against a real server (see conftest.py), on both stores."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Tuple

import pytest

from admedia import Client, InsufficientScope, InvalidParams, verify_webhook

WAIT = 60


class _Proxy:
    """A TCP relay to the server that can cut every connection at once, as
    a flaky network would, and remembers what clients sent."""

    def __init__(self, upstream: Tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.sockets: List[socket.socket] = []
        self.sent = b""
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            with self.lock:
                self.sockets += [down, up]
            threading.Thread(target=self._pump, args=(down, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_client:
                    with self.lock:
                        self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.sockets = []

    def close(self) -> None:
        self.cut()
        self.listener.close()


def _until(events, job_id: str, state: str) -> List:
    seen = []
    for event in events:
        if event.event != "state":
            continue
        seen.append(event)
        if event.job_id == job_id and event.state == state:
            return seen
    raise AssertionError("the stream ended")


def test_the_event_stream_resumes_after_a_dropped_connection(server, client) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    proxy = _Proxy((host, int(port)))
    try:
        with Client(api_key=client.api_key, base_url=f"http://127.0.0.1:{proxy.port}", timeout=30) as through:
            stream = through.events()
            first = client.submit("image", "sdxl", "a streamed fox")
            live = _until(stream, first.id, "succeeded")
            assert [e.state for e in live if e.job_id == first.id][-1] == "succeeded"
            last = live[-1].id
            assert last is not None
            # The connection drops; meanwhile another job runs to its end.
            proxy.cut()
            second = client.submit("image", "sdxl", "a fox nobody watched")
            assert client.wait(second.id, timeout=WAIT).state == "succeeded"
            resumed = _until(stream, second.id, "succeeded")
            ids = [int(e.id) for e in resumed]
            assert all(i > int(last) for i in ids), (last, ids)
            assert ids == sorted(ids)
            assert [e.state for e in resumed if e.job_id == second.id] == [
                "queued", "assigned", "running", "succeeded"
            ]
            assert f"last-event-id: {last}".encode() in proxy.sent.lower()
    finally:
        proxy.close()


def test_a_scoped_key_is_refused_outside_its_scopes(server, client) -> None:
    issued = client.create_api_key(name="reader", scopes=["jobs:read"])
    assert issued.scopes == ["jobs:read"] and issued.name == "reader"
    with server.client(issued.api_key) as reader:
        assert reader.jobs().jobs == []
        with pytest.raises(InsufficientScope) as refused:
            reader.submit("image", "sdxl", "a fox")
        assert refused.value.required_scope == "jobs:write" and refused.value.status == 403
        with pytest.raises(InsufficientScope) as refused:
            reader.create_api_key()
        assert refused.value.required_scope == "full-access"
    with pytest.raises(InvalidParams):
        client.create_api_key(scopes=["jobs:everything"])
    full = client.create_api_key()
    assert full.scopes is None
    listed = {k.id: k for k in client.api_keys()}
    assert listed[issued.id].scopes == ["jobs:read"] and listed[full.id].scopes is None


class _Receiver(BaseHTTPRequestHandler):
    deliveries: List[Tuple[str, Dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).deliveries.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_an_account_webhook_is_delivered_and_verifies(client) -> None:
    _Receiver.deliveries = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/account"
        endpoint = client.create_webhook(url, ["job.succeeded"])
        assert endpoint.enabled and endpoint.event_types == ["job.succeeded"]
        assert [e.id for e in client.webhooks()] == [endpoint.id]
        with pytest.raises(InvalidParams):
            client.create_webhook(url, ["job.exploded"])
        # The job has no webhook URL of its own.
        job = client.submit("image", "sdxl", "an announced fox")
        assert client.wait(job.id, timeout=WAIT).state == "succeeded"
        secret = client.webhook_secret()
        deadline = time.monotonic() + WAIT
        verified = []
        while time.monotonic() < deadline and not verified:
            verified = [
                verify_webhook(secret, h, b) for p, h, b in list(_Receiver.deliveries) if p == "/account"
            ]
            time.sleep(0.05)
        assert verified, "no delivery to the account endpoint"
        assert verified[0]["type"] == "job.succeeded" and verified[0]["data"]["id"] == job.id
        deadline = time.monotonic() + WAIT
        log = []
        while time.monotonic() < deadline and not log:
            log = client.webhook_deliveries(endpoint.id)
            time.sleep(0.05)
        assert log and log[0].outcome == "delivered" and log[0].status_code == 200
        assert log[0].job_id == job.id and log[0].error is None
        off = client.update_webhook(endpoint.id, enabled=False)
        assert off.enabled is False and client.webhook(endpoint.id).enabled is False
        client.delete_webhook(endpoint.id)
        assert client.webhooks() == []
    finally:
        receiver.shutdown()
        receiver.server_close()
