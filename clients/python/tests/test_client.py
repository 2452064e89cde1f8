"""The client against a real server (see conftest.py), on both stores."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Tuple

import httpx
import pytest

import admedia
from admedia import (
    AsyncClient,
    BatchTooLarge,
    IdempotencyKeyReused,
    InsufficientCredits,
    InvalidParams,
    InvalidRequest,
    JobRequest,
    NotFound,
    RateLimited,
    Unauthorized,
    WebhookVerificationError,
    verify_webhook,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WAIT = 60


def video(duration_s: int = 60) -> Dict[str, object]:
    """1920x1080 for a minute: 600 credits, more than a new account has."""
    return {"kind": "video", "model": "v1", "prompt": "waves",
            "params": {"width": 1920, "height": 1080, "duration_s": duration_s}}


def test_register_me_and_wallet(server) -> None:
    with server.client() as anonymous:
        reg = anonymous.register(f"reg-{time.time_ns()}@example.com", "Reg")
    assert reg.api_key and reg.user.tier == "free"
    assert (reg.wallet.balance, reg.wallet.held, reg.wallet.available) == (100, 0, 100)
    with server.client(reg.api_key) as c:
        me = c.me()
        assert me.user.id == reg.user.id and me.user.email == reg.user.email
        assert me.storage is not None and me.storage.quota_bytes > 0
        assert c.wallet().available == 100
        entries = c.ledger().entries
        assert [e.kind for e in entries] == ["grant"] and entries[0].amount == 100


def test_submit_wait_download(client) -> None:
    job = client.submit("image", "sdxl", "  a red fox  ", params={"count": 2, "seed": 7})
    assert job.state == "queued" and job.cost == 2 and job.charge == "held"
    assert job.prompt == "a red fox" and job.params["count"] == 2
    done = client.wait(job.id, timeout=WAIT)
    assert done.state == "succeeded" and done.charge == "posted", done
    assert done.result is not None and len(done.result.outputs) == 2
    first = client.download_output(done.id, 0)
    assert first.content.startswith(PNG_MAGIC)
    assert first.content_type == "image/png" and first.license == "personal"
    assert client.wallet().balance == 98
    page = client.jobs(state="succeeded")
    assert [j.id for j in page.jobs] == [job.id]
    assert client.job(job.id).finished


def test_events_end_with_the_terminal_state(client) -> None:
    job = client.submit("image", "sdxl", "a fox in the rain")
    states = [e.state for e in client.events(job.id) if e.event == "state"]
    assert states[-1] == "succeeded", states
    assert all(e.job_id == job.id for e in client.events(job.id))


def test_wait_falls_back_to_polling_when_events_break(client, monkeypatch) -> None:
    def broken(job_id):
        raise httpx.ReadError("stream broke")
        yield  # pragma: no cover

    job = client.submit("image", "sdxl", "a fox by polling")
    monkeypatch.setattr(client, "events", broken)
    done = client.wait(job.id, timeout=WAIT, poll_interval=0.05)
    assert done.state == "succeeded"


def test_idempotent_submit_replays(client) -> None:
    first = client.submit("image", "sdxl", "a fox", idempotency_key="py-same")
    again = client.submit("image", "sdxl", "a fox", idempotency_key="py-same")
    assert again.id == first.id
    wallet = client.wallet()
    assert wallet.held + (100 - wallet.balance) == 1  # held, or already charged, once
    with pytest.raises(IdempotencyKeyReused):
        client.submit("image", "sdxl", "another fox", idempotency_key="py-same")
    client.wait(first.id, timeout=WAIT)
    assert client.wallet().balance == 99


def test_batch_with_one_refused_item(client) -> None:
    results = client.submit_batch(
        [
            JobRequest("image", "sdxl", "fox one", params={"count": 3}),
            video(),
            {"kind": "image", "model": "sdxl", "prompt": "fox two", "params": {"count": 2}, "idempotency_key": "py-b2"},
            {"kind": "image", "model": "sdxl", "prompt": "fox three", "params": {"width": 10}},
        ]
    )
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.status for r in results] == [202, 402, 202, 422]
    assert results[0].ok and results[0].job.cost == 3
    assert results[2].idempotency_key == "py-b2" and results[2].job.cost == 2
    refused = results[1].error
    assert isinstance(refused, InsufficientCredits)
    assert refused.required == 600 and refused.available in (100, 97, 98, 95)
    assert isinstance(results[3].error, InvalidParams) and results[3].error.type == "invalid-params"
    wallet = client.wallet()
    assert wallet.held + (100 - wallet.balance) == 5  # held, or already charged, nothing else
    # The same keyed item again: replayed, nothing more held.
    again = client.submit_batch([{"kind": "image", "model": "sdxl", "prompt": "fox two",
                                  "params": {"count": 2}, "idempotency_key": "py-b2"}])
    assert again[0].replayed and again[0].job.id == results[2].job.id
    for r in (results[0], results[2]):
        assert client.wait(r.job.id, timeout=WAIT).state == "succeeded"
    assert client.wallet().balance == 95 and client.wallet().held == 0


def test_batch_over_the_limit_is_refused_whole(client) -> None:
    with pytest.raises(BatchTooLarge) as refused:
        client.submit_batch([JobRequest("image", "sdxl", f"fox {i}") for i in range(101)])
    assert refused.value.limit == 100 and refused.value.status == 422
    assert client.wallet().held == 0


def test_bad_input_maps_to_the_right_exception(server, client) -> None:
    with pytest.raises(InvalidParams) as e:
        client.submit("image", "sdxl", "a fox", params={"width": 10})
    assert e.value.status == 422 and e.value.type == "invalid-params" and e.value.detail
    with pytest.raises(InvalidRequest):
        client.submit("image", "sdxl", "a fox", params={"colour": "red"})
    with pytest.raises(InsufficientCredits) as e:
        client.submit(**video())
    assert (e.value.required, e.value.available) == (600, 100)
    with pytest.raises(NotFound):
        client.job("00000000-0000-7000-8000-000000000000")
    with pytest.raises(NotFound):
        client.download_output("00000000-0000-7000-8000-000000000000", 0)
    with server.client("not-a-key") as stranger, pytest.raises(Unauthorized):
        stranger.wallet()
    assert isinstance(e.value, admedia.ApiError)


def test_rate_limited_carries_retry_after(server, client) -> None:
    user_id = client.me().user.id
    server.admin("PUT", f"/v1/admin/users/{user_id}/membership",
                 {"tier": "basic", "expires_at": "2099-01-01T00:00:00Z"})
    # A refused submission gives its unit back.
    with pytest.raises(InsufficientCredits):
        client.submit(**video())
    for i in range(3):
        client.submit("image", "sdxl", f"fox {i}")
    with pytest.raises(RateLimited) as limited:
        client.submit("image", "sdxl", "one too many")
    assert limited.value.status == 429 and 1 <= limited.value.retry_after <= 60
    results = client.submit_batch([JobRequest("image", "sdxl", "batch fox")])
    assert isinstance(results[0].error, RateLimited) and 1 <= results[0].error.retry_after <= 60
    # Retrying after the time it names succeeds: the key makes the retry
    # safe. The window is a minute, so once is enough (the embedded store).
    if server.store != "embedded":
        return
    key = "py-after-limit"
    deadline = time.monotonic() + 70
    while True:
        try:
            job = client.submit("image", "sdxl", "patient fox", idempotency_key=key)
            break
        except RateLimited as e:
            assert time.monotonic() < deadline, "still limited after the window"
            time.sleep(e.retry_after)
    assert job.state in ("queued", "assigned", "running", "succeeded")


class _Receiver(BaseHTTPRequestHandler):
    deliveries: List[Tuple[Dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_webhook_delivery_verifies(client) -> None:
    _Receiver.deliveries = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        job = client.submit("image", "sdxl", "a hooked fox", webhook_url=url)
        assert client.wait(job.id, timeout=WAIT).state == "succeeded"
        secret = client.webhook_secret()
        deadline = time.monotonic() + WAIT
        events = []
        while time.monotonic() < deadline:
            events = [verify_webhook(secret, h, b) for h, b in list(_Receiver.deliveries)]
            if any(e["type"] == "job.succeeded" for e in events):
                break
            time.sleep(0.05)
        succeeded = [e for e in events if e["type"] == "job.succeeded"]
        assert succeeded, f"no job.succeeded delivery: {events}"
        assert succeeded[0]["data"]["id"] == job.id and succeeded[0]["data"]["state"] == "succeeded"
        headers, body = _Receiver.deliveries[0]
        with pytest.raises(WebhookVerificationError):
            verify_webhook(secret, headers, body + b" ")
        with pytest.raises(WebhookVerificationError):
            verify_webhook("whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=", headers, body)
        with pytest.raises(WebhookVerificationError):
            verify_webhook(secret, headers, body, now=int(headers["webhook-timestamp"]) + 3600)
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_async_client(server, client) -> None:
    api_key = client.api_key

    async def run() -> None:
        async with AsyncClient(api_key=api_key, base_url=server.url) as c:
            job = await c.submit("image", "sdxl", "an async fox")
            states = [e.state async for e in c.events(job.id) if e.event == "state"]
            assert states[-1] == "succeeded"
            done = await c.wait(job.id, timeout=WAIT)
            out = await c.download_output(done.id, 0)
            assert out.content.startswith(PNG_MAGIC)
            results = await c.submit_batch([JobRequest("image", "sdxl", "a"), video()])
            assert results[0].ok and isinstance(results[1].error, InsufficientCredits)
            with pytest.raises(InvalidParams):
                await c.submit("image", "sdxl", "a fox", params={"width": 10})
            assert (await c.wallet()).balance <= 99

    asyncio.run(run())


def test_materials(client, tmp_path) -> None:
    png = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63f8cfc0f01f00050001ff89993d1d"
        "0000000049454e44ae426082"
    )
    path = tmp_path / "cat.png"
    path.write_bytes(png)
    material = client.upload_material(path)
    assert material.name == "cat.png" and material.media == "png" and material.size_bytes == len(png)
    assert [m.id for m in client.materials()] == [material.id]
    assert client.material(material.id).id == material.id
    assert client.material_content(material.id) == png
    job = client.submit("image", "sdxl", "a cat, redrawn", params={"init_image": material.id})
    assert client.wait(job.id, timeout=WAIT).state == "succeeded"
    client.delete_material(material.id)
    with pytest.raises(admedia.Gone):
        client.material(material.id)
    with pytest.raises(admedia.ApiError):
        client.upload_material(b"not an image", name="x.txt")
