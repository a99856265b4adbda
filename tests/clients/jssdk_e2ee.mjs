#!/usr/bin/env node
// End-to-end encryption against a homeserver, with matrix-js-sdk's own crypto (the Rust
// crypto, @matrix-org/matrix-sdk-crypto-wasm, through initRustCrypto, in memory).
//
//     node jssdk_e2ee.mjs BASE_URL                 alice and bob, both js-sdk
//     node jssdk_e2ee.mjs BASE_URL --nio PYTHON    alice (js-sdk) and a matrix-nio client
//                                                  (nio_e2ee.py run with PYTHON)
//
// js-sdk only: alice and bob register, log in, start their crypto and sync; alice creates
// a room with m.room.encryption (megolm) and invites bob, bob joins; they exchange messages
// each way, each reads the other's text decrypted by the SDK (the server holds only
// m.room.encrypted); alice bootstraps cross-signing (UIA with her password if the server
// asks), secret storage with a recovery key and a key backup, and the room keys reach the
// backup; alice logs in a second device, her first device and bob see it in her device
// list, the first device cross-signs it (bob sees it signed by its owner, the first device
// sees it verified), the second device takes the cross-signing keys from secret storage
// with the recovery key, restores the room keys from the backup and reads the earlier
// messages; then bob and the second device exchange a message each way. Last, alice deletes
// the second device (user-interactive auth with her password): its token stops working and
// it leaves GET /devices and her and bob's device lists. Then alice replaces her cross-signing
// keys: the server asks for her password (user-interactive auth), and bob sees her identity
// changed.
//
// --nio: alice creates an encrypted room, invites the nio user (who joins on his own), sends
// a message the nio client decrypts, and decrypts the nio client's answer.
//
// Exits 0 on success, 1 with a message (and the last HTTP exchanges) on failure.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createInterface } from "node:readline";
import { dirname, join as joinPath } from "node:path";
import { fileURLToPath } from "node:url";
import {
    ClientEvent,
    createClient,
    MatrixError,
    MatrixEventEvent,
    MemoryStore,
    Method,
    RoomEvent,
    RoomMemberEvent,
} from "matrix-js-sdk";
import { decodeRecoveryKey } from "matrix-js-sdk/lib/crypto-api/index.js";
import { logger as sdkLogger } from "matrix-js-sdk/lib/logger.js";

const OVERALL_TIMEOUT_MS = 110_000;
const STEP_TIMEOUT_MS = 30_000;
const PASSWORD = `correct horse battery staple ${hex(4)}`;
const MEGOLM = "m.megolm.v1.aes-sha2";
const BACKUP_ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2";
let TEST_NAME = "jssdk_e2ee";

function hex(n) {
    return randomBytes(n).toString("hex");
}

class Failure extends Error {}

// ---- diagnostics: every HTTP exchange, and the SDK's own warnings ----------------------

const TRACE = []; // {who, method, path, status, req, res}
const SDK_LOG = []; // recent SDK warnings/errors, printed on failure

function redact(body) {
    if (typeof body !== "string") return body === undefined ? "" : String(body);
    try {
        const obj = JSON.parse(body);
        if (obj && typeof obj === "object") {
            if ("password" in obj) obj.password = "<redacted>";
            if (obj.auth && typeof obj.auth === "object" && "password" in obj.auth) obj.auth.password = "<redacted>";
        }
        return JSON.stringify(obj).slice(0, 600);
    } catch {
        return body.slice(0, 600);
    }
}

function tracingFetch(who) {
    return async (input, init = {}) => {
        const url = new URL(typeof input === "string" || input instanceof URL ? input : input.url);
        url.searchParams.delete("access_token");
        const method = (init.method || "GET").toUpperCase();
        const entry = { who, method, path: url.pathname + url.search, status: "(pending)", req: redact(init.body), res: "" };
        TRACE.push(entry);
        if (TRACE.length > 2000) TRACE.shift();
        try {
            const res = await fetch(input, init);
            entry.status = res.status;
            if (res.status >= 400) {
                entry.res = (await res.clone().text()).slice(0, 800);
            }
            return res;
        } catch (e) {
            entry.status = `exception ${e?.name}: ${e?.message}`;
            throw e;
        }
    };
}

function describe(x) {
    if (x instanceof MatrixError) return `MatrixError(${x.httpStatus} ${x.errcode}: ${x.data?.error ?? x.message})`;
    if (x instanceof Error) return `${x.name}: ${x.message}`;
    if (typeof x === "object") {
        try {
            return JSON.stringify(x).slice(0, 300);
        } catch {
            return String(x);
        }
    }
    return String(x);
}

function sdkLoggerFor(who) {
    const make = (prefix) => {
        const log = (level) => (...args) => {
            if (level === "warn" || level === "error") {
                const line = `${who}${prefix} ${level}: ${args.map(describe).join(" ")}`;
                SDK_LOG.push(line);
                if (SDK_LOG.length > 300) SDK_LOG.shift();
                if (process.env.LATTICE_CLIENT_TEST_VERBOSE) OUT.error(line);
            } else if (process.env.LATTICE_CLIENT_TEST_VERBOSE === "2") {
                OUT.error(`${who}${prefix} ${level}: ${args.map(describe).join(" ")}`);
            }
        };
        return {
            trace: log("trace"),
            debug: log("debug"),
            info: log("info"),
            warn: log("warn"),
            error: log("error"),
            getChild: (p) => make(`${prefix}${p}`),
        };
    };
    return make("");
}

// Silence the SDK's global logger (the Rust crypto logs through it); keep warnings for the report.
for (const level of ["trace", "debug", "info", "log"]) sdkLogger[level] = () => {};
for (const level of ["warn", "error"]) {
    sdkLogger[level] = (...args) => {
        const line = `sdk ${level}: ${args.map(describe).join(" ")}`;
        SDK_LOG.push(line);
        if (SDK_LOG.length > 300) SDK_LOG.shift();
        if (process.env.LATTICE_CLIENT_TEST_VERBOSE) OUT.error(line);
    };
}
sdkLogger.getChild = (prefix) => sdkLoggerFor("sdk").getChild(prefix);

// The Rust crypto's own tracing goes to console.debug/info/warn/error: keep its warnings and
// errors for the report, drop the rest. This script's own output uses OUT.
const OUT = { log: console.log.bind(console), error: console.error.bind(console) };
for (const level of ["trace", "debug", "info"]) {
    console[level] = (...args) => {
        if (process.env.LATTICE_CLIENT_TEST_VERBOSE === "2") OUT.error(...args);
    };
}
for (const level of ["warn", "error"]) {
    console[level] = (...args) => {
        const line = `crypto ${level}: ${args.map(describe).join(" ")}`;
        SDK_LOG.push(line);
        if (SDK_LOG.length > 300) SDK_LOG.shift();
        if (process.env.LATTICE_CLIENT_TEST_VERBOSE) OUT.error(line);
    };
}

// ---- helpers ---------------------------------------------------------------------------

function step(msg) {
    OUT.log(`  [js-sdk e2ee] ${msg}`);
}

function expect(cond, msg) {
    if (!cond) throw new Failure(msg);
}

function errText(e) {
    if (e instanceof MatrixError) return `HTTP ${e.httpStatus} ${e.errcode}: ${e.data?.error ?? e.message}`;
    return `${e?.name}: ${e?.message}`;
}

async function call(what, promise) {
    try {
        return await promise;
    } catch (e) {
        if (e instanceof Failure) throw e;
        throw new Failure(`${what} failed: ${errText(e)}`);
    }
}

/**
 * Wait until `check()` (sync or async) gives something truthy. It is re-run whenever the
 * client emits one of `events` and every 200 ms, so nothing that happened before the wait
 * began is missed. An exception from check() ends the wait with that exception.
 */
function waitFor(client, who, what, check, events = [], timeoutMs = STEP_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
        let done = false;
        let running = false;
        let last = "";
        const finish = (fn, value) => {
            if (done) return;
            done = true;
            clearInterval(poll);
            clearTimeout(timer);
            for (const ev of events) client.off(ev, onEvent);
            fn(value);
        };
        const tryCheck = async () => {
            if (done || running) return;
            running = true;
            try {
                const r = await check();
                if (r) finish(resolve, r);
            } catch (e) {
                if (e instanceof Failure) finish(reject, e);
                else last = errText(e); // e.g. a request that failed: try again
            } finally {
                running = false;
            }
        };
        const onEvent = () => void tryCheck();
        for (const ev of events) client.on(ev, onEvent);
        const poll = setInterval(tryCheck, 200);
        const timer = setTimeout(
            () =>
                finish(
                    reject,
                    new Failure(
                        `${who} never saw ${what} (waited ${timeoutMs / 1000}s; sync state ${client.getSyncState()}${last ? `; last error ${last}` : ""})`,
                    ),
                ),
            timeoutMs,
        );
        void tryCheck();
    });
}

const DECRYPTION_EVENTS = [RoomEvent.Timeline, MatrixEventEvent.Decrypted];

/** The event `eventId` as `client` sees it once the SDK has decrypted it, or null. */
function decrypted(client, roomId, eventId) {
    const event = client.getRoom(roomId)?.findEventById(eventId);
    if (!event || event.isBeingDecrypted() || event.shouldAttemptDecryption()) return null;
    if (event.isDecryptionFailure()) return null;
    if (!event.isEncrypted() || event.getClearContent() === null) return null;
    return event;
}

/** Waits until `client` shows `eventId` decrypted to a text message `body` from `sender`. */
async function expectDecrypted(client, roomId, eventId, sender, body, what) {
    const event = await waitFor(client, client.who, `${what} decrypted (${eventId})`, () => decrypted(client, roomId, eventId), DECRYPTION_EVENTS);
    expect(event.getWireType() === "m.room.encrypted", `${client.who}: ${what} arrived as ${event.getWireType()}, not m.room.encrypted`);
    expect(event.getWireContent().algorithm === MEGOLM, `${client.who}: ${what} uses ${event.getWireContent().algorithm}, not ${MEGOLM}`);
    expect(event.getType() === "m.room.message", `${client.who}: ${what} decrypted to type ${event.getType()}`);
    expect(event.getSender() === sender, `${client.who}: ${what} has sender ${event.getSender()}, expected ${sender}`);
    expect(
        event.getContent().body === body,
        `${client.who}: ${what} decrypted to ${JSON.stringify(event.getContent())}, expected body ${JSON.stringify(body)}`,
    );
    return event;
}

/** Sends an encrypted text message and checks that the server holds only ciphertext. */
async function sendEncrypted(client, roomId, body) {
    const { event_id: eventId } = await call(`${client.who}: send an encrypted message`, client.sendTextMessage(roomId, body));
    expect(typeof eventId === "string", `${client.who}: sending gave no event_id`);
    const raw = await call(
        `${client.who}: GET /rooms/${roomId}/event/${eventId}`,
        client.http.authedRequest(Method.Get, `/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(eventId)}`),
    );
    expect(raw.type === "m.room.encrypted", `${client.who}: the server holds ${eventId} as ${raw.type}, not m.room.encrypted`);
    expect(
        raw.content?.algorithm === MEGOLM && typeof raw.content?.ciphertext === "string" && !("body" in raw.content),
        `${client.who}: the server holds ${eventId} with content ${JSON.stringify(raw.content).slice(0, 300)}, not megolm ciphertext`,
    );
    return { eventId, sessionId: raw.content.session_id };
}

/**
 * The user-interactive auth callback of bootstrapCrossSigning: first without auth (a
 * server may let the first upload through), then with the password on 401.
 */
function passwordAuth(who, username, record) {
    return async (makeRequest) => {
        try {
            await makeRequest(null);
            record.uia = "none asked";
        } catch (e) {
            if (!(e instanceof MatrixError && e.httpStatus === 401 && Array.isArray(e.data?.flows))) throw e;
            const flows = e.data.flows;
            expect(
                flows.some((f) => Array.isArray(f.stages) && f.stages.length === 1 && f.stages[0] === "m.login.password"),
                `${who}: the 401 of keys/device_signing/upload offers no m.login.password flow: ${JSON.stringify(e.data)}`,
            );
            await makeRequest({
                type: "m.login.password",
                identifier: { type: "m.id.user", user: username },
                password: PASSWORD,
                session: e.data.session,
            });
            record.uia = `password (flows ${JSON.stringify(flows.map((f) => f.stages))})`;
        }
    };
}

// ---- clients -----------------------------------------------------------------------------

async function register(baseUrl, who) {
    const username = `${who}_${hex(4)}`;
    const reg = createClient({ baseUrl, fetchFn: tracingFetch(`${who}-reg`), logger: sdkLoggerFor(`${who}-reg`) });
    let session;
    try {
        await reg.registerRequest({ username, password: PASSWORD });
        throw new Failure(`${who}: POST /register without auth succeeded; expected 401 with a UIA session`);
    } catch (e) {
        if (e instanceof Failure) throw e;
        expect(e instanceof MatrixError && e.httpStatus === 401 && e.data?.session, `${who}: first POST /register: expected 401 with a session, got ${errText(e)}`);
        session = e.data.session;
    }
    const done = await call(
        `${who}: POST /register with m.login.dummy`,
        reg.registerRequest({ username, password: PASSWORD, auth: { type: "m.login.dummy", session } }),
    );
    expect(done.user_id?.startsWith(`@${username}:`), `${who}: registered user_id ${JSON.stringify(done.user_id)}`);
    step(`${who}: registered ${done.user_id}`);
    return username;
}

/**
 * Logs `username` in (a new device each time), starts the Rust crypto in memory and the
 * sync loop. `recovery.key` (the recovery key as the user would type it) answers secret
 * storage's key requests once the user has one.
 */
async function loginDevice(baseUrl, who, username, recovery) {
    const reg = createClient({ baseUrl, fetchFn: tracingFetch(`${who}-login`), logger: sdkLoggerFor(`${who}-login`) });
    const login = await call(
        `${who}: POST /login`,
        reg.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: username },
            password: PASSWORD,
            initial_device_display_name: `js-sdk e2ee ${who}`,
        }),
    );
    expect(login.access_token && login.device_id, `${who}: /login returned no access_token/device_id`);

    const client = createClient({
        baseUrl,
        accessToken: login.access_token,
        userId: login.user_id,
        deviceId: login.device_id,
        store: new MemoryStore(),
        fetchFn: tracingFetch(who),
        logger: sdkLoggerFor(who),
        timelineSupport: true,
        cryptoCallbacks: {
            // Secret storage asks for its key: give the recovery key, as a user types it in.
            getSecretStorageKey: async ({ keys }) => {
                const ids = Object.keys(keys);
                if (!recovery?.encoded || ids.length === 0) return null;
                return [ids[0], decodeRecoveryKey(recovery.encoded)];
            },
        },
    });
    client.who = who;
    client.username = username;
    await call(`${who}: initRustCrypto`, client.initRustCrypto({ useIndexedDB: false }));
    expect(client.getCrypto(), `${who}: no CryptoApi after initRustCrypto`);

    const ready = waitFor(client, who, "the first sync complete (PREPARED)", () => ["PREPARED", "SYNCING"].includes(client.getSyncState()), [
        ClientEvent.Sync,
    ]);
    await call(`${who}: startClient`, client.startClient({ initialSyncLimit: 20, pollTimeout: 5000 }));
    await ready;

    // The device published its identity keys (keys/upload), and keys/query gives them back.
    const own = await client.getCrypto().getOwnDeviceKeys();
    await waitFor(client, who, `its own device ${login.device_id} in keys/query with its ed25519 key`, async () => {
        const devices = await client.getCrypto().getUserDeviceInfo([login.user_id], true);
        return devices.get(login.user_id)?.get(login.device_id)?.getFingerprint() === own.ed25519;
    });
    step(`${who}: logged in as ${login.user_id}, device ${login.device_id}, crypto up, ed25519 ${own.ed25519.slice(0, 10)}...`);
    return client;
}

async function createEncryptedRoom(alice, invitees) {
    const { room_id: roomId } = await call(
        "alice: POST /createRoom with m.room.encryption",
        alice.createRoom({
            name: `e2ee ${hex(3)}`,
            invite: invitees,
            initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: MEGOLM } }],
        }),
    );
    await waitFor(alice, "alice", `room ${roomId} encrypted`, async () => alice.getRoom(roomId) && (await alice.getCrypto().isEncryptionEnabledInRoom(roomId)), [
        RoomEvent.Timeline,
    ]);
    step(`alice: created the encrypted room ${roomId}, invited ${invitees.join(", ")}`);
    return roomId;
}

async function join(client, roomId, inviter) {
    await waitFor(client, client.who, `the invite to ${roomId}`, () => client.getRoom(roomId)?.getMyMembership() === "invite", [
        RoomMemberEvent.Membership,
        ClientEvent.Room,
    ]);
    await call(`${client.who}: join ${roomId}`, client.joinRoom(roomId));
    await waitFor(client, client.who, `room ${roomId} joined and encrypted`, async () => {
        return client.getRoom(roomId)?.getMyMembership() === "join" && (await client.getCrypto().isEncryptionEnabledInRoom(roomId));
    }, [RoomMemberEvent.Membership]);
    await waitFor(inviter, inviter.who, `${client.getUserId()} joined`, () => inviter.getRoom(roomId)?.getMember(client.getUserId())?.membership === "join", [
        RoomMemberEvent.Membership,
    ]);
    step(`${client.who}: joined ${roomId}`);
}

async function deviceListed(observer, userId, deviceId) {
    await waitFor(observer, observer.who, `device ${deviceId} of ${userId} in its device list (device_lists.changed, keys/query)`, async () => {
        const devices = await observer.getCrypto().getUserDeviceInfo([userId]);
        return devices.get(userId)?.has(deviceId);
    }, [ClientEvent.Sync]);
}

// ---- js-sdk with js-sdk ------------------------------------------------------------------

async function e2eeConversation(baseUrl) {
    const aliceName = await register(baseUrl, "alice");
    const bobName = await register(baseUrl, "bob");
    const recovery = {}; // alice's recovery key, once she has one
    const alice = await loginDevice(baseUrl, "alice", aliceName, recovery);
    const bob = await loginDevice(baseUrl, "bob", bobName, null);
    const clients = [alice, bob];
    try {
        const aliceId = alice.getUserId();
        const bobId = bob.getUserId();
        const roomId = await createEncryptedRoom(alice, [bobId]);
        await join(bob, roomId, alice);

        // 1. Messages each way, each decrypted by the other side's crypto.
        const history = []; // {eventId, sessionId, sender, body}
        for (const [from, to, n] of [[alice, bob, 1], [bob, alice, 1], [alice, bob, 2], [bob, alice, 2]]) {
            const body = `${from.who} to ${to.who} #${n}: secret ${hex(4)}`;
            const sent = await sendEncrypted(from, roomId, body);
            await expectDecrypted(to, roomId, sent.eventId, from.getUserId(), body, `${from.who}'s message #${n}`);
            history.push({ ...sent, sender: from.getUserId(), body });
            step(`${to.who} decrypted ${from.who}'s message #${n} (megolm session ${sent.sessionId.slice(0, 8)}...)`);
        }
        const sessions = new Set(history.map((h) => h.sessionId));

        // 2. alice: cross-signing (UIA with her password if asked), secret storage, key backup.
        const aliceCrypto = alice.getCrypto();
        const auth = {};
        await call("alice: bootstrapCrossSigning (keys/device_signing/upload, keys/signatures/upload)",
            aliceCrypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordAuth("alice", aliceName, auth) }));
        expect(auth.uia, "alice: bootstrapCrossSigning never uploaded the cross-signing keys");
        await waitFor(alice, "alice", "cross-signing ready", () => aliceCrypto.isCrossSigningReady());
        const masterKey = await aliceCrypto.getCrossSigningKeyId();
        step(`alice: cross-signing set up (UIA: ${auth.uia}), master key ${masterKey?.slice(0, 10)}...`);

        // bob sees alice's cross-signing keys through keys/query.
        await waitFor(bob, "bob", "alice's cross-signing keys", () => bob.getCrypto().userHasCrossSigningKeys(aliceId, true));

        const generated = await aliceCrypto.createRecoveryKeyFromPassphrase();
        recovery.encoded = generated.encodedPrivateKey;
        await call(
            "alice: bootstrapSecretStorage with a new key backup",
            aliceCrypto.bootstrapSecretStorage({ createSecretStorageKey: async () => generated, setupNewSecretStorage: true, setupNewKeyBackup: true }),
        );
        expect(await aliceCrypto.isSecretStorageReady(), "alice: secret storage not ready after bootstrapSecretStorage");
        const version = await waitFor(alice, "alice", "an active key backup", () => aliceCrypto.getActiveSessionBackupVersion());
        const info = await call("alice: GET /room_keys/version", alice.http.authedRequest(Method.Get, "/room_keys/version", undefined, undefined, { prefix: "/_matrix/client/v3" }));
        expect(
            info.version === version && info.algorithm === BACKUP_ALGORITHM && typeof info.auth_data?.public_key === "string",
            `alice: GET /room_keys/version answered ${JSON.stringify(info).slice(0, 300)}, expected version ${version} with ${BACKUP_ALGORITHM}`,
        );
        step(`alice: secret storage with a recovery key, key backup version ${version}`);

        // The room keys of every message reach the backup (the SDK uploads them in the background).
        await waitFor(alice, "alice", `the ${sessions.size} megolm sessions of the room in backup ${version}`, async () => {
            const keys = await alice.http.authedRequest(Method.Get, "/room_keys/keys", { version }, undefined, { prefix: "/_matrix/client/v3" });
            const inRoom = keys?.rooms?.[roomId]?.sessions ?? {};
            return [...sessions].every((s) => inRoom[s]?.session_data?.ciphertext);
        });
        step(`alice: the ${sessions.size} room keys are in the backup`);

        // 3. alice's second device.
        const alice2 = await loginDevice(baseUrl, "alice2", aliceName, recovery);
        clients.push(alice2);
        const dev1 = alice.getDeviceId();
        const dev2 = alice2.getDeviceId();
        expect(dev1 !== dev2, `alice2: logging in again gave the same device ${dev2}`);
        await deviceListed(alice, aliceId, dev2);
        await deviceListed(bob, aliceId, dev2);
        step(`alice and bob see alice's new device ${dev2}`);

        // Her first device cross-signs it; bob sees it signed by its owner, alice's first device sees it verified.
        const before = await aliceCrypto.getDeviceVerificationStatus(aliceId, dev2);
        expect(before && !before.crossSigningVerified, `alice: device ${dev2} is cross-signing verified before anyone signed it`);
        await call(`alice: crossSignDevice(${dev2}) (keys/signatures/upload)`, aliceCrypto.crossSignDevice(dev2));
        await waitFor(alice, "alice", `device ${dev2} cross-signing verified`, async () => (await aliceCrypto.getDeviceVerificationStatus(aliceId, dev2))?.crossSigningVerified, [ClientEvent.Sync]);
        await waitFor(bob, "bob", `alice's device ${dev2} signed by its owner`, async () => (await bob.getCrypto().getDeviceVerificationStatus(aliceId, dev2))?.signedByOwner, [ClientEvent.Sync]);
        step(`alice cross-signed ${dev2}: her first device sees it verified, bob sees it signed by alice`);

        // The second device takes the cross-signing keys from secret storage (recovery key).
        const crypto2 = alice2.getCrypto();
        await waitFor(alice2, "alice2", "alice's cross-signing keys", () => crypto2.userHasCrossSigningKeys(aliceId, true));
        await call("alice2: bootstrapCrossSigning from secret storage", crypto2.bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordAuth("alice2", aliceName, {}) }));
        const status2 = await crypto2.getCrossSigningStatus();
        expect(
            status2.privateKeysCachedLocally.masterKey && status2.privateKeysCachedLocally.selfSigningKey && status2.privateKeysCachedLocally.userSigningKey,
            `alice2: the cross-signing keys were not taken from secret storage: ${JSON.stringify(status2)}`,
        );
        expect((await crypto2.getCrossSigningKeyId()) === masterKey, "alice2: a different master key than alice's first device");
        await waitFor(alice2, "alice2", "itself cross-signing verified", async () => (await crypto2.getDeviceVerificationStatus(aliceId, dev2))?.crossSigningVerified);
        await waitFor(alice2, "alice2", `the first device ${dev1} cross-signing verified`, async () => (await crypto2.getDeviceVerificationStatus(aliceId, dev1))?.crossSigningVerified);
        step("alice2: cross-signing keys from secret storage; it and the first device are verified");

        // The backup key from secret storage, then the room keys from the backup.
        await call("alice2: loadSessionBackupPrivateKeyFromSecretStorage", crypto2.loadSessionBackupPrivateKeyFromSecretStorage());
        const check = await call("alice2: checkKeyBackupAndEnable", crypto2.checkKeyBackupAndEnable());
        expect(check?.backupInfo?.version === version, `alice2: checkKeyBackupAndEnable found ${JSON.stringify(check?.backupInfo)}, expected version ${version}`);
        expect(check.trustInfo.trusted && check.trustInfo.matchesDecryptionKey, `alice2: backup ${version} not trusted: ${JSON.stringify(check.trustInfo)}`);
        const restored = await call("alice2: restoreKeyBackup (GET /room_keys/keys)", crypto2.restoreKeyBackup());
        expect(restored.total >= sessions.size, `alice2: restoreKeyBackup found ${restored.total} keys, expected at least ${sessions.size}`);
        step(`alice2: restored ${restored.imported} of ${restored.total} room keys from backup ${version}`);

        // ... and reads the earlier messages.
        await waitFor(alice2, "alice2", `room ${roomId}`, () => alice2.getRoom(roomId), [ClientEvent.Room]);
        const room2 = alice2.getRoom(roomId);
        for (let i = 0; i < 5 && history.some((h) => !room2.findEventById(h.eventId)); i++) {
            await call("alice2: scrollback", alice2.scrollback(room2, 30));
        }
        for (const h of history) {
            expect(room2.findEventById(h.eventId), `alice2: the earlier message ${h.eventId} is not in the room's timeline`);
            await expectDecrypted(alice2, roomId, h.eventId, h.sender, h.body, "an earlier message");
        }
        step(`alice2: reads the ${history.length} earlier messages, decrypted with the keys from the backup`);

        // 4. New messages between bob and the second device (its keys reach bob through device lists).
        {
            const body = `bob to alice's devices: ${hex(4)}`;
            const sent = await sendEncrypted(bob, roomId, body);
            await expectDecrypted(alice2, roomId, sent.eventId, bobId, body, "bob's new message");
            await expectDecrypted(alice, roomId, sent.eventId, bobId, body, "bob's new message");
            step("alice's two devices decrypt bob's new message");
        }
        {
            const body = `alice2 to bob: ${hex(4)}`;
            const sent = await sendEncrypted(alice2, roomId, body);
            await expectDecrypted(bob, roomId, sent.eventId, aliceId, body, "alice2's message");
            await expectDecrypted(alice, roomId, sent.eventId, aliceId, body, "alice2's message");
            step("bob and alice's first device decrypt the second device's message");
        }

        // 5. alice deletes the second device from the first (user-interactive auth with her
        //    password): it is logged out, and it leaves her and bob's device lists.
        const listed = await call("alice: GET /devices", alice.getDevices());
        expect(
            [dev1, dev2].every((d) => listed.devices?.some((x) => x.device_id === d)),
            `alice: GET /devices lists ${JSON.stringify(listed.devices?.map((x) => x.device_id))}, expected ${dev1} and ${dev2}`,
        );
        alice2.stopClient();
        const deletion = {};
        await call(`alice: DELETE /devices/${dev2}`, passwordAuth("alice", aliceName, deletion)((auth) => alice.deleteDevice(dev2, auth ?? undefined)));
        expect(deletion.uia !== "none asked", `alice: DELETE /devices/${dev2} asked for no user-interactive auth`);
        try {
            await alice2.whoami();
            throw new Failure(`alice2: its access token still works after its device was deleted`);
        } catch (e) {
            if (e instanceof Failure) throw e;
            expect(e instanceof MatrixError && e.httpStatus === 401 && e.errcode === "M_UNKNOWN_TOKEN", `alice2: whoami after deletion: expected 401 M_UNKNOWN_TOKEN, got ${errText(e)}`);
        }
        const after = await call("alice: GET /devices", alice.getDevices());
        expect(!after.devices?.some((x) => x.device_id === dev2), `alice: GET /devices still lists the deleted ${dev2}`);
        for (const observer of [alice, bob]) {
            await waitFor(observer, observer.who, `alice's device ${dev2} gone from her device list`, async () => {
                const devices = await observer.getCrypto().getUserDeviceInfo([aliceId]);
                return devices.get(aliceId)?.has(dev1) && !devices.get(aliceId)?.has(dev2);
            }, [ClientEvent.Sync]);
        }
        step(`alice deleted ${dev2} (UIA: ${deletion.uia}): it is logged out, and gone from her and bob's device lists`);

        // 6. alice replaces her cross-signing keys: the server must ask for user-interactive
        //    auth this time, and bob sees that her identity changed.
        const before6 = await bob.getCrypto().getUserVerificationStatus(aliceId);
        expect(!before6.needsUserApproval, `bob: alice's identity needs approval before it changed: ${JSON.stringify(before6)}`);
        const reset = {};
        await call(
            "alice: bootstrapCrossSigning({ setupNewCrossSigning: true })",
            aliceCrypto.bootstrapCrossSigning({ setupNewCrossSigning: true, authUploadDeviceSigningKeys: passwordAuth("alice", aliceName, reset) }),
        );
        expect(reset.uia && reset.uia !== "none asked", `alice: replacing her cross-signing keys asked for no user-interactive auth`);
        const newMaster = await aliceCrypto.getCrossSigningKeyId();
        expect(newMaster && newMaster !== masterKey, `alice: her master key is still ${masterKey} after the reset`);
        await waitFor(bob, "bob", "alice's identity changed (needsUserApproval)", async () => (await bob.getCrypto().getUserVerificationStatus(aliceId)).needsUserApproval, [
            ClientEvent.Sync,
        ]);
        step(`alice replaced her cross-signing keys (UIA: ${reset.uia}); bob sees her identity changed`);
    } finally {
        for (const c of clients) c.stopClient();
    }
}

// ---- js-sdk with matrix-nio ---------------------------------------------------------------

/** nio_e2ee.py as a child: JSON lines each way. */
function startNio(python, baseUrl) {
    const script = joinPath(dirname(fileURLToPath(import.meta.url)), "nio_e2ee.py");
    const child = spawn(python, [script, baseUrl], { stdio: ["pipe", "pipe", "inherit"], env: { ...process.env, PYTHONDONTWRITEBYTECODE: "1" } });
    const lines = [];
    const waiters = [];
    let exited = null;
    const wake = () => {
        for (const w of [...waiters]) w();
    };
    createInterface({ input: child.stdout }).on("line", (line) => {
        let msg;
        try {
            msg = JSON.parse(line);
        } catch {
            OUT.log(line); // nio's own progress lines
            return;
        }
        lines.push(msg);
        wake();
    });
    child.on("exit", (code, signal) => {
        exited = `exited with ${code ?? signal}`;
        wake();
    });
    return {
        send(msg) {
            child.stdin.write(`${JSON.stringify(msg)}\n`);
        },
        /** The first message from nio for which pred() holds. */
        next(what, pred, timeoutMs = STEP_TIMEOUT_MS) {
            return new Promise((resolve, reject) => {
                const check = () => {
                    const failure = lines.find((m) => m.failure);
                    if (failure) return done(reject, new Failure(`nio: ${failure.failure}`));
                    const m = lines.find(pred);
                    if (m) return done(resolve, m);
                    if (exited) return done(reject, new Failure(`nio ${exited} before ${what}`));
                };
                const timer = setTimeout(() => done(reject, new Failure(`nio never reported ${what} (waited ${timeoutMs / 1000}s)`)), timeoutMs);
                const done = (fn, v) => {
                    clearTimeout(timer);
                    waiters.splice(waiters.indexOf(check), 1);
                    fn(v);
                };
                waiters.push(check);
                check();
            });
        },
        async stop() {
            if (exited) return;
            this.send({ exit: true });
            const gone = new Promise((resolve) => child.on("exit", resolve));
            const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
            await gone;
            clearTimeout(timer);
        },
    };
}

async function nioConversation(baseUrl, python) {
    const nio = startNio(python, baseUrl);
    const clients = [];
    try {
        const aliceName = await register(baseUrl, "alice");
        const alice = await loginDevice(baseUrl, "alice", aliceName, null);
        clients.push(alice);
        const ready = await nio.next("ready (registered, logged in, keys uploaded)", (m) => m.ready);
        const nioId = ready.ready;
        step(`nio: ready as ${nioId}, device ${ready.device_id}`);

        const roomId = await createEncryptedRoom(alice, [nioId]);
        await nio.next(`joined ${roomId}`, (m) => m.joined === roomId);
        await waitFor(alice, "alice", `${nioId} joined`, () => alice.getRoom(roomId)?.getMember(nioId)?.membership === "join", [RoomMemberEvent.Membership]);
        await deviceListed(alice, nioId, ready.device_id);
        step(`nio joined ${roomId}; alice sees nio's device ${ready.device_id}`);

        // js-sdk -> nio
        const toNio = `alice to nio: ${hex(4)}`;
        const sent = await sendEncrypted(alice, roomId, toNio);
        const got = await nio.next(`alice's message ${sent.eventId}`, (m) => m.received?.event_id === sent.eventId || m.undecryptable?.event_id === sent.eventId);
        expect(!got.undecryptable, `nio could not decrypt alice's message: ${JSON.stringify(got.undecryptable)}`);
        expect(
            got.received.decrypted === true && got.received.body === toNio && got.received.sender === alice.getUserId(),
            `nio decrypted alice's message to ${JSON.stringify(got.received)}, expected ${JSON.stringify(toNio)} from ${alice.getUserId()}`,
        );
        step("nio decrypted alice's message");

        // nio -> js-sdk
        const fromNio = `nio to alice: ${hex(4)}`;
        nio.send({ send: { room_id: roomId, body: fromNio } });
        const nioSent = await nio.next("its message sent", (m) => m.sent);
        const event = await expectDecrypted(alice, roomId, nioSent.sent, nioId, fromNio, "nio's message");
        const raw = await call(
            "alice: GET the nio message",
            alice.http.authedRequest(Method.Get, `/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(event.getId())}`),
        );
        expect(raw.type === "m.room.encrypted" && raw.content?.algorithm === MEGOLM, `the server holds nio's message as ${JSON.stringify(raw).slice(0, 300)}`);
        step("alice decrypted nio's message");
    } finally {
        for (const c of clients) c.stopClient();
        await nio.stop();
    }
}

// ---- main ------------------------------------------------------------------------------------

function printTrace(n = 30) {
    const tail = TRACE.slice(-n);
    const errors = TRACE.filter((t) => typeof t.status !== "number" || t.status >= 400).slice(-10);
    OUT.error(`  [js-sdk e2ee] the last ${errors.length} failed HTTP requests:`);
    for (const { who, method, path, status, req, res } of errors) {
        OUT.error(`    ${who.padEnd(10)} ${method} ${path} -> ${status}`);
        if (req) OUT.error(`        request:  ${req}`);
        if (res) OUT.error(`        response: ${res}`);
    }
    OUT.error(`  [js-sdk e2ee] last ${tail.length} of ${TRACE.length} HTTP requests:`);
    for (const { who, method, path, status } of tail) OUT.error(`    ${who.padEnd(10)} ${method} ${path.slice(0, 160)} -> ${status}`);
    if (SDK_LOG.length) {
        OUT.error(`  [js-sdk e2ee] last SDK warnings/errors:`);
        for (const line of SDK_LOG.slice(-15)) OUT.error(`    ${line.slice(0, 400)}`);
    }
}

async function main() {
    const args = process.argv.slice(2);
    let python = null;
    if (args.length === 3 && args[1] === "--nio") {
        python = args[2];
        TEST_NAME = "nio_e2ee";
    } else if (args.length !== 1) {
        OUT.error(`usage: node ${process.argv[1]} BASE_URL [--nio PYTHON]`);
        return 2;
    }
    const baseUrl = args[0].replace(/\/+$/, "");
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Failure(`overall timeout of ${OVERALL_TIMEOUT_MS / 1000}s exceeded`)), OVERALL_TIMEOUT_MS);
    });
    try {
        await Promise.race([python ? nioConversation(baseUrl, python) : e2eeConversation(baseUrl), timeout]);
    } catch (e) {
        OUT.error(`FAIL ${TEST_NAME}: ${e instanceof Failure ? e.message : `unexpected ${e?.stack ?? e}`}`);
        printTrace();
        return 1;
    } finally {
        clearTimeout(timer);
    }
    OUT.log(`PASS ${TEST_NAME}`);
    return 0;
}

// Exit explicitly: the SDK may leave timers behind.
main().then(
    (code) => process.exit(code),
    (e) => {
        OUT.error(`FAIL ${TEST_NAME}: ${e?.stack ?? e}`);
        process.exit(1);
    },
);
