#!/usr/bin/env python3
"""matrix-nio's half of the nio <-> js-sdk encrypted conversation (nio with its olm crypto).

    nio_e2ee.py BASE_URL

Run by `jssdk_e2ee.mjs BASE_URL --nio PYTHON`, which drives it over JSON lines: the user
registers (m.login.dummy), logs in with encryption on (a fresh store in a temporary
directory), uploads its device and one-time keys and syncs; then it prints

    {"ready": USER_ID, "device_id": ...}                   logged in, keys uploaded
    {"joined": ROOM_ID}                                     it joined a room it was invited to
    {"received": {"event_id", "sender", "body", "decrypted"}}  a text message, as nio decrypted it
    {"undecryptable": {"event_id", "session_id"}}           a megolm event nio still cannot decrypt
                                                            after 15 s of syncing
    {"sent": EVENT_ID}                                      its message went out
    {"failure": "..."}                                      something failed (then exits 1)

and reads {"send": {"room_id", "body"}} (send an encrypted text, trusting every device, as
nio wants it said: ignore_unverified_devices) and {"exit": true}. Progress lines go to
stdout as plain text. Every request with an error answer is printed to stderr on failure.
"""

import asyncio
import json
import secrets
import shutil
import sys
import tempfile
import time

from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    InviteMemberEvent,
    JoinResponse,
    KeysUploadResponse,
    LoginResponse,
    MegolmEvent,
    RegisterResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)
from nio.responses import RegisterInteractiveResponse

OVERALL_TIMEOUT = 100  # seconds
UNDECRYPTABLE_AFTER = 15  # seconds a megolm event may wait for its key (to-device may come a sync later)
PASSWORD = "correct horse battery staple " + secrets.token_hex(4)
TRACE = []


def emit(obj):
    print(json.dumps(obj), flush=True)


def step(msg):
    print(f"  [nio e2ee] {msg}", flush=True)


class Failure(Exception):
    pass


def ok(resp, cls, what):
    if not isinstance(resp, cls):
        detail = resp
        if isinstance(resp, ErrorResponse):
            detail = f"{type(resp).__name__}(status_code={resp.status_code!r}, message={resp.message!r})"
        raise Failure(f"{what}: expected {cls.__name__}, got {detail}")
    return resp


class TracingClient(AsyncClient):
    """AsyncClient that records the requests that got an error answer."""

    async def send(self, method, path, data=None, headers=None, trace_context=None, timeout=None):
        resp = await super().send(method, path, data, headers, trace_context, timeout)
        if resp.status >= 400:
            try:
                text = (await resp.read()).decode("utf-8", "replace")[:800]
            except Exception as e:  # diagnostics only
                text = f"<could not read body: {e}>"
            TRACE.append((method, path.split("?")[0], resp.status, (data or "")[:300] if isinstance(data, str) else "", text))
        return resp


def config(encrypted):
    return AsyncClientConfig(
        max_limit_exceeded=0,
        max_timeouts=1,
        request_timeout=20,
        store_sync_tokens=False,
        encryption_enabled=encrypted,
    )


async def register(base_url, username):
    reg = TracingClient(base_url, config=config(False))
    try:
        first = await reg.register_interactive(username, PASSWORD, auth_dict={"initial_device_display_name": "nio e2ee"})
        ok(first, RegisterInteractiveResponse, "first POST /register (expect 401 with a session)")
        done = await reg.register(username, PASSWORD, device_name="nio e2ee", session_token=first.session)
        ok(done, RegisterResponse, "POST /register with m.login.dummy")
        return done.user_id
    finally:
        await reg.close()


async def conversation(base_url, store):
    username = f"nio_{secrets.token_hex(4)}"
    user_id = await register(base_url, username)
    client = TracingClient(base_url, username, store_path=store, config=config(True))
    sync_task = None
    try:
        ok(await client.login(PASSWORD, device_name="nio e2ee (login)"), LoginResponse, "POST /login")
        if not client.olm:
            raise Failure("nio has no olm machine after login: is matrix-nio[e2e] (python-olm) installed?")
        ok(await client.keys_upload(), KeysUploadResponse, "POST /keys/upload")
        step(f"logged in as {user_id}, device {client.device_id}, device and one-time keys uploaded")

        joined = set()
        pending = {}  # event_id -> (MegolmEvent, room_id, first seen)

        def report_text(event):
            emit({"received": {"event_id": event.event_id, "sender": event.sender, "body": event.body, "decrypted": bool(event.decrypted)}})

        async def on_invite(room, event):
            if event.state_key == client.user_id and event.membership == "invite" and room.room_id not in joined:
                joined.add(room.room_id)
                ok(await client.join(room.room_id), JoinResponse, f"POST /join/{room.room_id}")
                step(f"joined {room.room_id}")
                emit({"joined": room.room_id})

        async def on_text(room, event):
            report_text(event)

        async def on_megolm(room, event):
            # Not decrypted (yet): its key may come with a later sync.
            pending.setdefault(event.event_id, (event, room.room_id, time.monotonic()))

        async def on_sync(resp):
            for event_id, (event, room_id, since) in list(pending.items()):
                if event.room_id is None:
                    event.room_id = room_id
                try:
                    clear = client.decrypt_event(event)
                except Exception:
                    clear = None
                if isinstance(clear, RoomMessageText):
                    del pending[event_id]
                    report_text(clear)
                elif time.monotonic() - since > UNDECRYPTABLE_AFTER:
                    del pending[event_id]
                    emit({"undecryptable": {"event_id": event_id, "session_id": event.session_id}})

        client.add_event_callback(on_invite, InviteMemberEvent)
        client.add_event_callback(on_text, RoomMessageText)
        client.add_event_callback(on_megolm, MegolmEvent)
        client.add_response_callback(on_sync, SyncResponse)

        ok(await client.sync(timeout=0, full_state=True), SyncResponse, "the first /sync")
        sync_task = asyncio.create_task(client.sync_forever(timeout=3000))
        emit({"ready": user_id, "device_id": client.device_id})

        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            read = asyncio.create_task(reader.readline())
            done, _ = await asyncio.wait({read, sync_task}, return_when=asyncio.FIRST_COMPLETED)
            if sync_task in done:
                read.cancel()
                exc = sync_task.exception()
                raise Failure(f"the sync loop ended: {type(exc).__name__}: {exc}" if exc else "the sync loop ended")
            line = read.result()
            if not line:
                return  # the driver went away
            cmd = json.loads(line)
            if cmd.get("exit"):
                return
            if "send" in cmd:
                room_id, body = cmd["send"]["room_id"], cmd["send"]["body"]
                resp = await client.room_send(
                    room_id, "m.room.message", {"msgtype": "m.text", "body": body}, ignore_unverified_devices=True
                )
                ok(resp, RoomSendResponse, f"send an encrypted message to {room_id}")
                step(f"sent an encrypted message to {room_id}")
                emit({"sent": resp.event_id})
    finally:
        if sync_task:
            sync_task.cancel()
            try:
                await sync_task
            except BaseException:
                pass
        await client.close()


async def main():
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} BASE_URL", file=sys.stderr)
        return 2
    store = tempfile.mkdtemp(prefix="nio-e2ee-")
    try:
        await asyncio.wait_for(conversation(sys.argv[1].rstrip("/"), store), OVERALL_TIMEOUT)
    except (Failure, asyncio.TimeoutError) as e:
        msg = str(e) if isinstance(e, Failure) else f"overall timeout of {OVERALL_TIMEOUT}s exceeded"
        emit({"failure": msg})
        for method, path, status, req, res in TRACE[-10:]:
            print(f"    nio {method} {path} -> {status}\n        request:  {req}\n        response: {res}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
