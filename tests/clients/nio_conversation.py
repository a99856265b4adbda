#!/usr/bin/env python3
"""Two-user conversation against a homeserver, driven by matrix-nio.

    nio_conversation.py BASE_URL

alice and bob register (m.login.dummy user-interactive flow), log in with their
password, alice creates a room and invites bob, bob sees the invite through /sync
and joins, they exchange a message each way, alice sends a read receipt and bob
sees it, alice sets the topic and bob sees it, a reply, a reaction, an edit and a
thread go each way (relation_steps), bob leaves and alice sees the leave. Every step asserts what the user sees through
nio's own API and state. Exits 0 on success, 1 with a message on failure.
"""

import asyncio
import io
import json
import struct
import zlib
import secrets
import sys
import time
import traceback
from urllib.parse import urlsplit, urlunsplit, parse_qsl, urlencode

import aiohttp

from nio import (
    AsyncClient,
    DownloadResponse,
    ProfileSetAvatarResponse,
    ResizingMethod,
    RoomMessageImage,
    ThumbnailResponse,
    UploadResponse,
    AsyncClientConfig,
    ErrorResponse,
    InviteMemberEvent,
    JoinResponse,
    LoginResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomLeaveResponse,
    RoomMemberEvent,
    RoomMessageText,
    RoomPutStateResponse,
    RoomSendResponse,
    RoomTopicEvent,
    SyncResponse,
)
from nio.responses import RegisterInteractiveResponse

OVERALL_TIMEOUT = 60  # seconds, the whole conversation
STEP_TIMEOUT = 20  # seconds, waiting for one thing to show up in /sync
PASSWORD = "correct horse battery staple " + secrets.token_hex(4)

TRACE = []  # (who, method, path, status, request body, response body) of every request


class Failure(Exception):
    pass


def _redact(s):
    if not s:
        return s
    try:
        obj = json.loads(s)
    except (TypeError, ValueError):
        return s[:500]
    if isinstance(obj, dict):
        if "password" in obj:
            obj["password"] = "<redacted>"
    return json.dumps(obj)[:500]


def _strip_token(path):
    parts = urlsplit(path)
    q = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "access_token"]
    return urlunsplit(("", "", parts.path, urlencode(q), ""))


class TracingClient(AsyncClient):
    """AsyncClient that records every HTTP exchange, for failure reports."""

    def __init__(self, who, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.who = who
        self.seen_events = []  # (room_id, event) delivered by nio's event callbacks
        self.add_event_callback(self._record_event, (RoomMessageText, RoomMessageImage, RoomMemberEvent, RoomTopicEvent))
        self.add_event_callback(self._record_event, (InviteMemberEvent,))
        self.left_rooms_seen = {}  # room_id -> timeline events of rooms.leave (nio keeps no state for left rooms)

    def record_sync(self, resp):
        for room_id, info in resp.rooms.leave.items():
            self.left_rooms_seen.setdefault(room_id, []).extend(info.timeline.events)

    async def _record_event(self, room, event):
        self.seen_events.append((room.room_id, event))

    async def send(self, method, path, data=None, headers=None, trace_context=None, timeout=None):
        body = data if isinstance(data, str) else None
        try:
            resp = await super().send(method, path, data, headers, trace_context, timeout)
        except Exception as e:
            TRACE.append((self.who, method, _strip_token(path), f"exception {type(e).__name__}: {e}", _redact(body), ""))
            raise
        text = ""
        if resp.status >= 400:
            try:
                text = (await resp.read()).decode("utf-8", "replace")[:800]
            except Exception as e:  # pragma: no cover - diagnostics only
                text = f"<could not read body: {e}>"
        TRACE.append((self.who, method, _strip_token(path), resp.status, _redact(body), text))
        return resp


def step(msg):
    print(f"  [nio] {msg}", flush=True)


def expect(cond, msg):
    if not cond:
        raise Failure(msg)


def ok_response(resp, cls, what):
    if not isinstance(resp, cls):
        detail = resp
        if isinstance(resp, ErrorResponse):
            detail = f"{type(resp).__name__}(status_code={resp.status_code!r}, message={resp.message!r})"
        raise Failure(f"{what}: expected {cls.__name__}, got {detail}")
    return resp


def new_client(base_url, who, user=""):
    config = AsyncClientConfig(
        max_limit_exceeded=0,
        max_timeouts=1,
        request_timeout=STEP_TIMEOUT,
        store_sync_tokens=False,
        encryption_enabled=False,
    )
    return TracingClient(who, base_url, user, config=config)


async def register_and_login(base_url, who):
    """Register `who` with the m.login.dummy flow, then log in with the password."""
    username = f"{who}_{secrets.token_hex(4)}"
    reg = new_client(base_url, who + "-reg")
    try:
        # 1. Ask for the flows: nio sends an `auth` without a type (as its own
        #    register_with_token does); the server must answer 401 with a session.
        first = await reg.register_interactive(
            username, PASSWORD, auth_dict={"initial_device_display_name": f"nio {who}"}
        )
        ok_response(first, RegisterInteractiveResponse, f"{who}: first POST /register (expect 401 with flows + session)")
        flows = first.stages  # nio keeps the stages of the last flow
        step(f"{who}: /register offered stages {flows}, session {first.session[:8]}...")
        # 2. Complete the m.login.dummy stage with that session.
        done = await reg.register(username, PASSWORD, device_name=f"nio {who}", session_token=first.session)
        ok_response(done, RegisterResponse, f"{who}: POST /register with m.login.dummy + session")
        expect(done.user_id.startswith(f"@{username}:"), f"{who}: registered user_id {done.user_id!r} does not start with @{username}:")
        expect(done.access_token, f"{who}: registration returned no access_token")
        step(f"{who}: registered {done.user_id}")
    finally:
        await reg.close()

    client = new_client(base_url, who, username)
    resp = await client.login(PASSWORD, device_name=f"nio {who} (login)")
    ok_response(resp, LoginResponse, f"{who}: POST /login with password")
    expect(resp.user_id == done.user_id, f"{who}: /login returned user_id {resp.user_id!r}, registered as {done.user_id!r}")
    expect(client.access_token == resp.access_token and client.user_id == done.user_id, f"{who}: nio did not take the login credentials")
    step(f"{who}: logged in, device {resp.device_id}")
    return client


async def initial_sync(client):
    resp = await client.sync(timeout=0, full_state=True)
    ok_response(resp, SyncResponse, f"{client.who}: initial GET /sync")
    expect(resp.next_batch, f"{client.who}: /sync returned no next_batch")
    return resp


async def sync_until(client, check, what, timeout=STEP_TIMEOUT):
    """Long-poll /sync until check() returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    syncs = 0
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise Failure(f"{client.who} never saw {what} (after {syncs} /sync calls, {timeout}s)")
        before = client.next_batch
        resp = await client.sync(timeout=1000)
        syncs += 1
        ok_response(resp, SyncResponse, f"{client.who}: GET /sync while waiting for {what}")
        client.record_sync(resp)
        expect(resp.next_batch, f"{client.who}: /sync returned no next_batch")
        if resp.next_batch == before and time.monotonic() + 0.2 < deadline:
            await asyncio.sleep(0.2)  # server answered instantly with nothing new


def events(client, room_id, cls, pred=lambda e: True):
    return [e for rid, e in client.seen_events if rid == room_id and isinstance(e, cls) and pred(e)]


async def account_data_and_tags(alice, room_id):
    """Global account data and a room tag round-trip, seen through nio's sync.

    matrix-nio 0.25 has no method to set account data or room tags, nor to
    search the user directory: the writes go through its generic request
    method (`AsyncClient._send` with `Api._build_path`), and what alice sees
    is nio's own parsing of /sync (`UnknownAccountDataEvent` callbacks and
    `MatrixRoom.tags` from `TagEvent`).
    """
    from nio import Api, TagEvent, UnknownAccountDataEvent
    from nio.responses import EmptyResponse

    async def put(path, content, what):
        resp = await alice._send(EmptyResponse, "PUT", Api._build_path(path), Api.to_json(content))
        ok_response(resp, EmptyResponse, f"alice: PUT {what}")

    settings = {"theme": "dark", "nonce": secrets.token_hex(4)}
    global_seen = []
    alice.add_global_account_data_callback(
        lambda event: global_seen.append(event.content) if event.type == "org.lattice.test.settings" else None,
        UnknownAccountDataEvent,
    )
    await put(["user", alice.user_id, "account_data", "org.lattice.test.settings"], settings, "global account data")
    await sync_until(alice, lambda: settings in global_seen, "her global account data in /sync account_data")
    step("alice: sees her global account data")

    tag_events = []
    alice.add_room_account_data_callback(lambda room, event: tag_events.append((room.room_id, event.tags)), TagEvent)
    await put(["user", alice.user_id, "rooms", room_id, "tags", "u.nio"], {"order": 0.5}, "a room tag")
    await sync_until(alice, lambda: (alice.rooms[room_id].tags or {}).get("u.nio") == {"order": 0.5}, "the tag u.nio in MatrixRoom.tags")
    expect(any(rid == room_id and "u.nio" in tags for rid, tags in tag_events), f"alice: no TagEvent with u.nio: {tag_events}")
    resp = await alice._send(
        EmptyResponse, "DELETE", Api._build_path(["user", alice.user_id, "rooms", room_id, "tags", "u.nio"])
    )
    ok_response(resp, EmptyResponse, "alice: DELETE the room tag")
    await sync_until(alice, lambda: "u.nio" not in (alice.rooms[room_id].tags or {}), "the tag u.nio gone from MatrixRoom.tags")
    step("alice: sees her room tag set and removed")
async def presence_steps(alice, bob, room_id):
    """alice sets her presence with a status message (set_presence), bob sees the
    PresenceEvent and nio's room.users[...].presence; bob sets his, alice sees it and
    reads it back (get_presence)."""
    from nio import PresenceEvent, PresenceGetResponse, PresenceSetResponse

    seen_by_bob = []

    def on_presence(event):
        if event.user_id == alice.user_id:
            seen_by_bob.append((event.presence, event.status_msg))

    bob.add_presence_callback(on_presence, PresenceEvent)
    alice_status = f"nio away {secrets.token_hex(3)}"
    resp = await alice.set_presence("unavailable", alice_status)
    ok_response(resp, PresenceSetResponse, f"alice: PUT /presence/{alice.user_id}/status")
    await sync_until(
        bob,
        lambda: ("unavailable", alice_status) in seen_by_bob,
        "alice's PresenceEvent (unavailable, with her status)",
    )
    member = bob.rooms[room_id].users.get(alice.user_id)
    expect(
        member is not None and member.presence == "unavailable" and member.status_msg == alice_status,
        f"bob: nio's room.users[alice] has presence {getattr(member, 'presence', None)!r}, status {getattr(member, 'status_msg', None)!r}",
    )
    step("bob: sees alice's presence")

    bob_status = f"nio here {secrets.token_hex(3)}"
    resp = await bob.set_presence("online", bob_status)
    ok_response(resp, PresenceSetResponse, f"bob: PUT /presence/{bob.user_id}/status")

    def bob_online():
        member = alice.rooms[room_id].users.get(bob.user_id)
        return member is not None and member.presence == "online" and member.status_msg == bob_status

    await sync_until(alice, bob_online, "bob online with his status (room.users[bob])")
    resp = await alice.get_presence(bob.user_id)
    ok_response(resp, PresenceGetResponse, f"alice: GET /presence/{bob.user_id}/status")
    expect(resp.presence == "online" and resp.status_msg == bob_status, f"alice: GET presence of bob is {resp.presence!r} {resp.status_msg!r}")
    step("alice: sees bob's presence")


async def conversation(base_url):
    alice = bob = None
    try:
        alice = await register_and_login(base_url, "alice")
        bob = await register_and_login(base_url, "bob")
        await initial_sync(alice)
        await initial_sync(bob)

        # alice creates a room and invites bob
        resp = await alice.room_create(name="nio test room")
        ok_response(resp, RoomCreateResponse, "alice: POST /createRoom")
        room_id = resp.room_id
        expect(room_id.startswith("!"), f"alice: room_id {room_id!r} does not start with '!'")
        step(f"alice: created {room_id}")
        await sync_until(alice, lambda: room_id in alice.rooms, f"her new room {room_id} in /sync rooms.join")
        room = alice.rooms[room_id]
        expect(alice.user_id in room.users, f"alice: not listed as a member of her own room (members: {list(room.users)})")
        expect(room.name == "nio test room", f"alice: room name is {room.name!r}, expected 'nio test room'")

        resp = await alice.room_invite(room_id, bob.user_id)
        ok_response(resp, RoomInviteResponse, f"alice: POST /rooms/{room_id}/invite")
        step(f"alice: invited {bob.user_id}")

        # bob sees the invite through /sync and joins
        await sync_until(bob, lambda: room_id in bob.invited_rooms, f"the invite to {room_id} in /sync rooms.invite")
        inv = events(bob, room_id, InviteMemberEvent, lambda e: e.state_key == bob.user_id and e.membership == "invite")
        expect(inv, f"bob: invite_state of {room_id} has no m.room.member invite event for him")
        expect(inv[-1].sender == alice.user_id, f"bob: invite sent by {inv[-1].sender!r}, expected {alice.user_id!r}")
        step("bob: sees the invite from alice")

        resp = await bob.join(room_id)
        ok_response(resp, JoinResponse, f"bob: POST /join/{room_id}")
        expect(resp.room_id == room_id, f"bob: /join returned room_id {resp.room_id!r}, expected {room_id!r}")
        await sync_until(bob, lambda: room_id in bob.rooms and bob.user_id in bob.rooms[room_id].users, f"himself joined to {room_id} in /sync")
        expect(room_id not in bob.invited_rooms, "bob: room still listed as invited after joining")
        step("bob: joined")

        await sync_until(
            alice,
            lambda: events(alice, room_id, RoomMemberEvent, lambda e: e.state_key == bob.user_id and e.membership == "join"),
            "bob's m.room.member join in the room timeline",
        )
        step("alice: sees bob join")

        # alice -> bob
        text1 = f"hello bob, from nio {secrets.token_hex(3)}"
        resp = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": text1})
        ok_response(resp, RoomSendResponse, f"alice: PUT /rooms/{room_id}/send/m.room.message")
        expect(resp.event_id.startswith("$"), f"alice: send returned event_id {resp.event_id!r}")
        got = await sync_until(
            bob,
            lambda: events(bob, room_id, RoomMessageText, lambda e: e.body == text1),
            f"alice's message {text1!r}",
        )
        expect(got[0].sender == alice.user_id, f"bob: message sender is {got[0].sender!r}, expected {alice.user_id!r}")
        expect(got[0].event_id == resp.event_id, f"bob: message event_id {got[0].event_id!r} != the one alice got {resp.event_id!r}")
        step("bob: received alice's message")

        # bob -> alice
        text2 = f"hi alice, bob here {secrets.token_hex(3)}"
        resp = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": text2})
        ok_response(resp, RoomSendResponse, f"bob: PUT /rooms/{room_id}/send/m.room.message")
        got = await sync_until(
            alice,
            lambda: events(alice, room_id, RoomMessageText, lambda e: e.body == text2),
            f"bob's reply {text2!r}",
        )
        expect(got[0].sender == bob.user_id, f"alice: reply sender is {got[0].sender!r}, expected {bob.user_id!r}")
        mine = events(alice, room_id, RoomMessageText, lambda e: e.body == text1)
        expect(len(mine) == 1, f"alice: her own message appears {len(mine)} times in her timeline, expected once")
        step("alice: received bob's reply")

        # typing: alice types (room_typing), bob sees the TypingNoticeEvent and room.typing_users, then alice stops
        from nio import RoomTypingResponse, TypingNoticeEvent

        typing_seen = []

        async def on_typing(room, event):
            if room.room_id == room_id:
                typing_seen.append(list(event.users))

        bob.add_ephemeral_callback(on_typing, TypingNoticeEvent)
        resp = await alice.room_typing(room_id, typing_state=True, timeout=30000)
        ok_response(resp, RoomTypingResponse, f"alice: PUT /rooms/{room_id}/typing (true)")
        await sync_until(bob, lambda: alice.user_id in bob.rooms[room_id].typing_users, "alice typing (room.typing_users)")
        expect([alice.user_id] in typing_seen, f"bob: TypingNoticeEvents were {typing_seen}, none with just alice")
        step("bob: sees alice typing")
        resp = await alice.room_typing(room_id, typing_state=False)
        ok_response(resp, RoomTypingResponse, f"alice: PUT /rooms/{room_id}/typing (false)")
        await sync_until(bob, lambda: not bob.rooms[room_id].typing_users, "alice stop typing (room.typing_users empty)")
        expect(typing_seen and typing_seen[-1] == [], f"bob: TypingNoticeEvents were {typing_seen}, the last not empty")
        step("bob: sees alice stop typing")

        # alice reads bob's reply (read marker and read receipt), bob sees her receipt
        from nio import ReceiptEvent, RoomReadMarkersResponse

        receipts_seen = []
        bob.add_ephemeral_callback(lambda room, event: receipts_seen.extend((room.room_id, r) for r in event.receipts), ReceiptEvent)
        reply_id = got[0].event_id
        resp = await alice.room_read_markers(room_id, fully_read_event=reply_id, read_event=reply_id)
        ok_response(resp, RoomReadMarkersResponse, f"alice: POST /rooms/{room_id}/read_markers")
        got = await sync_until(
            bob,
            lambda: [r for rid, r in receipts_seen if rid == room_id and r.user_id == alice.user_id and r.event_id == reply_id],
            f"alice's read receipt on {reply_id}",
        )
        expect(got[0].receipt_type == "m.read", f"bob: alice's receipt has type {got[0].receipt_type!r}, expected 'm.read'")
        marker = bob.rooms[room_id].read_receipts.get(alice.user_id)
        expect(marker is not None and marker.event_id == reply_id, f"bob: nio's read receipt of alice is {marker!r}, expected one on {reply_id}")
        step("bob: sees alice's read receipt")

        # alice sets the topic, bob sees the m.room.topic state
        topic = f"nio topic {secrets.token_hex(3)}"
        resp = await alice.room_put_state(room_id, "m.room.topic", {"topic": topic})
        ok_response(resp, RoomPutStateResponse, f"alice: PUT /rooms/{room_id}/state/m.room.topic")
        got = await sync_until(
            bob,
            lambda: events(bob, room_id, RoomTopicEvent, lambda e: e.topic == topic),
            f"the m.room.topic {topic!r}",
        )
        expect(got[0].sender == alice.user_id, f"bob: topic set by {got[0].sender!r}, expected {alice.user_id!r}")
        expect(bob.rooms[room_id].topic == topic, f"bob: room topic in nio's room state is {bob.rooms[room_id].topic!r}, expected {topic!r}")
        step("bob: sees the new topic")

        await push_rules_and_counts(alice, bob, room_id)
        await relation_steps(alice, bob, room_id, text1, text2)
        await media_steps(alice, bob, room_id)
        await account_data_and_tags(alice, room_id)
        await presence_steps(alice, bob, room_id)

        # bob leaves, alice sees it
        resp = await bob.room_leave(room_id)
        ok_response(resp, RoomLeaveResponse, f"bob: POST /rooms/{room_id}/leave")
        await sync_until(
            alice,
            lambda: events(alice, room_id, RoomMemberEvent, lambda e: e.state_key == bob.user_id and e.membership == "leave"),
            "bob's m.room.member leave",
        )
        expect(bob.user_id not in alice.rooms[room_id].users, f"alice: bob still in the member list after leaving: {list(alice.rooms[room_id].users)}")
        step("alice: sees bob leave")
        await sync_until(bob, lambda: room_id in bob.left_rooms_seen, f"{room_id} in /sync rooms.leave")
        step("bob: room listed in rooms.leave")
    finally:
        for c in (alice, bob):
            if c is not None:
                await c.close()


def png(width, height):
    """A width x height RGB PNG with a gradient: enough to be thumbnailed."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 4 % 256, y * 4 % 256, (x + y) % 256)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def image_size(data):
    """(width, height) of a PNG or JPEG answer, from its header."""
    if data.startswith(b"\x89PNG"):
        return struct.unpack(">II", data[16:24])
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(data):
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                height, width = struct.unpack(">HH", data[i + 5:i + 9])
                return width, height
            i += 2 + length
    raise Failure(f"thumbnail is neither PNG nor JPEG (starts {data[:8]!r})")


async def media_steps(alice, bob, room_id):
    """alice uploads an avatar and an image with nio's own upload and sends the image as m.image; bob downloads
    it and a thumbnail through the authenticated media API, byte for byte."""
    avatar = png(48, 48)
    resp, _ = await alice.upload(io.BytesIO(avatar), content_type="image/png", filename="avatar.png", filesize=len(avatar))
    ok_response(resp, UploadResponse, "alice: POST /_matrix/media/v3/upload (avatar)")
    ok_response(await alice.set_avatar(resp.content_uri), ProfileSetAvatarResponse, "alice: PUT avatar_url")
    avatar_uri = resp.content_uri
    step(f"alice: uploaded and set her avatar {avatar_uri}")

    image = png(120, 80)
    resp, _ = await alice.upload(io.BytesIO(image), content_type="image/png", filename="cat.png", filesize=len(image))
    ok_response(resp, UploadResponse, "alice: POST /_matrix/media/v3/upload (image)")
    image_uri = resp.content_uri
    expect(image_uri.startswith("mxc://"), f"alice: upload gave content_uri {image_uri!r}")
    content = {"msgtype": "m.image", "body": "cat.png", "url": image_uri,
               "info": {"mimetype": "image/png", "size": len(image), "w": 120, "h": 80}}
    ok_response(await alice.room_send(room_id, "m.room.message", content), RoomSendResponse, "alice: send m.image")
    got = await sync_until(bob, lambda: events(bob, room_id, RoomMessageImage, lambda e: e.url == image_uri),
                           f"alice's m.image {image_uri}")
    step("bob: received alice's m.image")

    resp = await bob.download(mxc=got[-1].url)
    ok_response(resp, DownloadResponse, "bob: GET /_matrix/client/v1/media/download (image)")
    expect(resp.body == image, f"bob: downloaded {len(resp.body)} bytes, not the {len(image)} alice uploaded")
    expect(resp.content_type == "image/png", f"bob: download content type {resp.content_type!r}")
    resp = await bob.download(mxc=avatar_uri)
    ok_response(resp, DownloadResponse, "bob: GET /_matrix/client/v1/media/download (avatar)")
    expect(resp.body == avatar, "bob: the avatar downloaded differs from the one alice uploaded")
    server_name, media_id = image_uri[len("mxc://"):].split("/", 1)
    resp = await bob.thumbnail(server_name, media_id, 32, 32, ResizingMethod.crop)
    ok_response(resp, ThumbnailResponse, "bob: GET /_matrix/client/v1/media/thumbnail")
    width, height = image_size(resp.body)
    expect((width, height) == (32, 32), f"bob: a 32x32 crop thumbnail is {width}x{height}")
    step("bob: downloaded the image and the avatar byte for byte, and a 32x32 thumbnail")


async def relation_steps(alice, bob, room_id, text1, text2):
    """A reply, a reaction, an edit and a thread, each sent by one user and seen by the
    other: the reaction through nio's ReactionEvent callback; the reply, the edit and the
    thread reply through the RoomMessageText callback and the event's raw `source` (nio
    has no model of replies, edits or threads); the server's bundles through
    `room_get_event` (`source["unsigned"]["m.relations"]`), the thread through
    `room_get_threads` and `room_get_event_relations`."""
    from nio import ReactionEvent, RoomGetEventResponse
    from nio.api import RelationshipType

    def message(client, body):
        return events(client, room_id, RoomMessageText, lambda e: e.body == body)[0]

    mine = message(alice, text1).event_id
    his = message(alice, text2).event_id

    reply_body = f"a reply to bob {secrets.token_hex(3)}"
    content = {"msgtype": "m.text", "body": reply_body, "m.relates_to": {"m.in_reply_to": {"event_id": his}}}
    ok_response(await alice.room_send(room_id, "m.room.message", content), RoomSendResponse, "alice: send a reply")
    got = await sync_until(bob, lambda: events(bob, room_id, RoomMessageText, lambda e: e.body == reply_body), "alice's reply")
    in_reply_to = got[0].source["content"].get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
    expect(in_reply_to == his, f"bob: alice's reply answers {in_reply_to!r}, expected {his!r}")
    step("bob: sees alice's reply to his message")

    alice.add_event_callback(alice._record_event, (ReactionEvent,))
    content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": mine, "key": "👍"}}
    resp = ok_response(await bob.room_send(room_id, "m.reaction", content), RoomSendResponse, "bob: send a reaction")
    got = await sync_until(alice, lambda: events(alice, room_id, ReactionEvent, lambda e: e.event_id == resp.event_id), "bob's reaction")
    expect(got[0].reacts_to == mine and got[0].key == "👍", f"alice: the reaction is {got[0].key!r} on {got[0].reacts_to!r}")
    expect(got[0].sender == bob.user_id, f"alice: the reaction is from {got[0].sender!r}")
    step("alice: sees bob's reaction")

    edited = f"edited by alice {secrets.token_hex(3)}"
    content = {
        "msgtype": "m.text",
        "body": f"* {edited}",
        "m.new_content": {"msgtype": "m.text", "body": edited},
        "m.relates_to": {"rel_type": "m.replace", "event_id": mine},
    }
    edit = ok_response(await alice.room_send(room_id, "m.room.message", content), RoomSendResponse, "alice: send an edit")
    got = await sync_until(bob, lambda: events(bob, room_id, RoomMessageText, lambda e: e.event_id == edit.event_id), "alice's edit")
    source = got[0].source["content"]
    expect(source.get("m.relates_to", {}).get("event_id") == mine, f"bob: the edit relates to {source.get('m.relates_to')!r}")
    expect(source.get("m.new_content", {}).get("body") == edited, f"bob: the edit's new content is {source.get('m.new_content')!r}")
    original = ok_response(await bob.room_get_event(room_id, mine), RoomGetEventResponse, "bob: GET /event of the original")
    bundled = original.event.source.get("unsigned", {}).get("m.relations", {})
    expect(bundled.get("m.replace", {}).get("event_id") == edit.event_id, f"bob: the original's bundled relations are {bundled!r}")
    step("bob: sees alice's edit")

    thread_body = f"in a thread {secrets.token_hex(3)}"
    content = {
        "msgtype": "m.text",
        "body": thread_body,
        "m.relates_to": {"rel_type": "m.thread", "event_id": his, "is_falling_back": True, "m.in_reply_to": {"event_id": his}},
    }
    threaded = ok_response(await bob.room_send(room_id, "m.room.message", content), RoomSendResponse, "bob: send a thread reply")
    got = await sync_until(alice, lambda: events(alice, room_id, RoomMessageText, lambda e: e.body == thread_body), "bob's thread reply")
    relates_to = got[0].source["content"].get("m.relates_to", {})
    expect(relates_to.get("rel_type") == "m.thread" and relates_to.get("event_id") == his, f"alice: the thread reply relates {relates_to!r}")
    roots = [root async for root in alice.room_get_threads(room_id)]
    expect([r.event_id for r in roots] == [his], f"alice: /threads lists {[r.event_id for r in roots]}, expected [{his}]")
    summary = roots[0].source.get("unsigned", {}).get("m.relations", {}).get("m.thread", {})
    expect(summary.get("count") == 1, f"alice: the thread summary is {summary!r}")
    expect(summary.get("latest_event", {}).get("event_id") == threaded.event_id, f"alice: the thread's latest event is {summary!r}")
    children = [e async for e in alice.room_get_event_relations(room_id, his, RelationshipType.thread)]
    expect([e.event_id for e in children] == [threaded.event_id], f"alice: /relations of the root gave {[e.event_id for e in children]}")
    step("alice: sees bob's thread")


async def push_rules_and_counts(alice, bob, room_id):
    """bob changes a push rule and sees it come back as m.push_rules; a mention of bob
    by alice raises his unread and highlight counts, his read receipt clears them."""
    from nio import PushNotify, PushRulesEvent
    from nio.api import PushRuleKind
    from nio.responses import EnablePushRuleResponse, RoomReadMarkersResponse, SetPushRuleResponse

    rulesets = []
    bob.add_global_account_data_callback(lambda event: rulesets.append(event.global_rules), PushRulesEvent)
    rule_id = f"nio-{secrets.token_hex(3)}"

    def bobs_rule():
        rules = [r for rs in rulesets[-1:] for r in rs.content if r.id == rule_id]
        return rules[0] if rules else None

    resp = await bob.set_pushrule("global", PushRuleKind.content, rule_id, actions=[PushNotify()], pattern="cake")
    ok_response(resp, SetPushRuleResponse, f"bob: PUT /pushrules/global/content/{rule_id}")
    await sync_until(bob, lambda: bobs_rule() is not None and bobs_rule().enabled, f"his push rule {rule_id} in m.push_rules")
    resp = await bob.enable_pushrule("global", PushRuleKind.content, rule_id, False)
    ok_response(resp, EnablePushRuleResponse, f"bob: PUT /pushrules/global/content/{rule_id}/enabled")
    await sync_until(bob, lambda: bobs_rule() is not None and not bobs_rule().enabled, f"his push rule {rule_id} disabled")
    step("bob: sees his changed push rule")

    room = bob.rooms[room_id]
    counts = lambda: (room.unread_notifications, room.unread_highlights)  # noqa: E731
    # alice's first message is still unread (alice's receipt was hers): it counts.
    expect(counts() == (1, 0), f"bob: unread counts before the mention are {counts()}, expected (1, 0)")
    resp = await alice.room_send(
        room_id, "m.room.message", {"msgtype": "m.text", "body": "bob, look", "m.mentions": {"user_ids": [bob.user_id]}}
    )
    ok_response(resp, RoomSendResponse, f"alice: PUT /rooms/{room_id}/send/m.room.message (mention)")
    mention_id = resp.event_id
    await sync_until(bob, lambda: counts() == (2, 1), f"unread and highlight counts (2, 1) after alice's mention, not {counts()}")
    step("bob: unread and highlight counts rose on alice's mention")
    resp = await bob.room_read_markers(room_id, fully_read_event=mention_id, read_event=mention_id)
    ok_response(resp, RoomReadMarkersResponse, f"bob: POST /rooms/{room_id}/read_markers")
    await sync_until(bob, lambda: counts() == (0, 0), f"counts cleared by his receipt, not {counts()}")
    resp = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "one more"})
    ok_response(resp, RoomSendResponse, f"alice: PUT /rooms/{room_id}/send/m.room.message")
    await sync_until(bob, lambda: counts() == (1, 0), f"an unread count of 1 after one more message, not {counts()}")
    step("bob: his receipt cleared the counts")


def print_trace(n=25):
    print(f"  [nio] last {min(n, len(TRACE))} of {len(TRACE)} HTTP requests:", file=sys.stderr)
    for who, method, path, status, req, resp in TRACE[-n:]:
        print(f"    {who:10} {method} {path} -> {status}", file=sys.stderr)
        if isinstance(status, str) or (isinstance(status, int) and status >= 400):
            if req:
                print(f"        request:  {req}", file=sys.stderr)
            if resp:
                print(f"        response: {resp}", file=sys.stderr)


def main():
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} BASE_URL", file=sys.stderr)
        return 2
    base_url = sys.argv[1].rstrip("/")
    try:
        asyncio.run(asyncio.wait_for(conversation(base_url), OVERALL_TIMEOUT))
    except Failure as e:
        print(f"FAIL nio_conversation: {e}", file=sys.stderr)
        print_trace()
        return 1
    except (asyncio.TimeoutError, TimeoutError):
        print(f"FAIL nio_conversation: overall timeout of {OVERALL_TIMEOUT}s exceeded", file=sys.stderr)
        print_trace()
        return 1
    except aiohttp.ClientError as e:
        print(f"FAIL nio_conversation: HTTP transport error {type(e).__name__}: {e}", file=sys.stderr)
        print_trace()
        return 1
    except Exception as e:
        print(f"FAIL nio_conversation: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        traceback.print_exc()
        print_trace()
        return 1
    print("PASS nio_conversation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
