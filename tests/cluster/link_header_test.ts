/**
 * The link header (lib/cluster/link_header.ts): what is written reads back, every cut and every bad field is refused
 * with its reason (never thrown), and the anti-replay window tells loss, reordering, duplicates and replays apart.
 */
import assert from "node:assert/strict";
import {
  channelId,
  DelayWindow,
  encodeDestination,
  LINK_HEADER_BYTES,
  LinkDestinationError,
  type LinkHeaderFields,
  linkHeaderLength,
  MAX_EPOCH_AHEAD_S,
  ParsedLinkHeader,
  parseLinkHeader,
  REPLAY_WINDOW,
  ReplayWindow,
  writeLinkHeader,
} from "../../lib/cluster/link_header.ts";

function datagram(fields: Partial<LinkHeaderFields>, payload = new Uint8Array([1, 2, 3])): Uint8Array {
  const h: LinkHeaderFields = {
    channel: 0xdeadbeef,
    epoch: 1_700_000_000,
    sequence: 7,
    sentUs: 123_456_789,
    rtcp: false,
    destination: null,
    ...fields,
  };
  const n = linkHeaderLength(h.destination);
  const d = new Uint8Array(n + payload.length);
  assert.equal(writeLinkHeader(d, 0, h), n);
  d.set(payload, n);
  return d;
}

Deno.test("writeLinkHeader and parseLinkHeader round-trip every field, with and without a destination", () => {
  const out = new ParsedLinkHeader();
  for (
    const destination of [null, { host: "192.0.2.7", port: 5004 }, { host: "2001:db8::7", port: 65535 }]
  ) {
    const d = datagram({
      rtcp: true,
      sequence: 0xffff_ffff,
      sentUs: 2 ** 40 + 5,
      destination: destination ? encodeDestination(destination) : null,
    });
    assert.equal(parseLinkHeader(d, out), "ok");
    assert.equal(out.channel, 0xdeadbeef);
    assert.equal(out.epoch, 1_700_000_000);
    assert.equal(out.sequence, 0xffff_ffff);
    assert.equal(out.sentUs, (2 ** 40 + 5) % 2 ** 32);
    assert.equal(out.rtcp, true);
    assert.deepEqual(out.destination(d), destination);
    assert.deepEqual([...d.subarray(out.length)], [1, 2, 3]);
  }
});

Deno.test("writeLinkHeader writes at an offset of the caller's buffer", () => {
  const buf = new Uint8Array(64).fill(0xaa);
  const n = writeLinkHeader(buf, 10, {
    channel: 1,
    epoch: 2,
    sequence: 3,
    sentUs: 4,
    rtcp: false,
    destination: null,
  });
  assert.equal(n, LINK_HEADER_BYTES);
  assert.equal(buf[9], 0xaa);
  assert.equal(buf[30], 0xaa);
  const out = new ParsedLinkHeader();
  assert.equal(parseLinkHeader(buf.subarray(10), out), "ok");
  assert.deepEqual([out.channel, out.epoch, out.sequence, out.sentUs], [1, 2, 3, 4]);
});

Deno.test("parseLinkHeader refuses every cut of a valid datagram's header as truncated", () => {
  const out = new ParsedLinkHeader();
  for (const destination of [null, encodeDestination({ host: "2001:db8::1", port: 9 })]) {
    const d = datagram({ destination });
    const header = linkHeaderLength(destination);
    for (let cut = 0; cut < header; cut++) {
      assert.equal(parseLinkHeader(d.subarray(0, cut), out), "truncated", `cut at ${cut}`);
    }
    for (let cut = header; cut <= d.length; cut++) {
      assert.equal(parseLinkHeader(d.subarray(0, cut), out), "ok", `cut at ${cut}`);
    }
  }
});

Deno.test("parseLinkHeader names why a bad header is refused", () => {
  const out = new ParsedLinkHeader();
  const bad = (at: number, value: number, d = datagram({})) => {
    const c = d.slice();
    c[at] = value;
    return parseLinkHeader(c, out);
  };
  assert.equal(bad(0, 0x80), "bad_magic", "an RTP datagram is not a link datagram");
  assert.equal(parseLinkHeader(new Uint8Array([0x80]), out), "bad_magic");
  assert.equal(bad(1, 2), "bad_version");
  assert.equal(bad(2, 0x04), "bad_flags");
  assert.equal(bad(3, 6), "bad_destination", "a length without the flag");
  assert.equal(bad(2, 0x02), "bad_destination", "the flag without a length");
  const v4 = datagram({ destination: encodeDestination({ host: "192.0.2.1", port: 1 }) });
  assert.equal(bad(3, 7, v4), "bad_destination");
  const v4long = datagram(
    { destination: encodeDestination({ host: "192.0.2.1", port: 1 }) },
    new Uint8Array(12),
  );
  assert.equal(bad(3, 18, v4long), "ok", "an IPv6 length reads the payload as address: no way to tell");
  const short = datagram(
    { destination: encodeDestination({ host: "192.0.2.1", port: 1 }) },
    new Uint8Array(0),
  );
  short[3] = 18;
  assert.equal(parseLinkHeader(short, out), "truncated");
});

Deno.test("encodeDestination refuses a host name or a port out of range", () => {
  assert.throws(() => encodeDestination({ host: "example.org", port: 1 }), LinkDestinationError);
  assert.throws(() => encodeDestination({ host: "192.0.2.1", port: 70000 }), LinkDestinationError);
});

Deno.test("channelId tells the triple's names apart where they join", () => {
  assert.equal(channelId("s", "ap", "in"), channelId("s", "ap", "in"));
  assert.notEqual(channelId("s", "ab", "c"), channelId("s", "a", "bc"));
  assert.notEqual(channelId("s1", "A", "in"), channelId("s2", "A", "in"));
  const id = channelId("synchro", "Sync_high", "in1");
  assert.ok(Number.isInteger(id) && id >= 0 && id < 2 ** 32);
});

Deno.test("ReplayWindow counts gaps as lost and takes them back when late datagrams fill them", () => {
  const w = new ReplayWindow();
  assert.equal(w.check(1, 10), "next");
  assert.equal(w.check(1, 11), "next");
  assert.equal(w.check(1, 15), "gap");
  assert.equal(w.lost, 3);
  assert.equal(w.check(1, 13), "late");
  assert.equal(w.check(1, 12), "late");
  assert.equal(w.lost, 1);
  assert.equal(w.reordered, 2);
  assert.equal(w.check(1, 13), "duplicate");
  assert.equal(w.check(1, 15), "duplicate");
  assert.equal(w.duplicates, 2);
  assert.equal(w.accepted, 5);
});

Deno.test("ReplayWindow refuses what is older than the window, and takes another epoch once the next number follows", () => {
  const w = new ReplayWindow();
  for (let s = 0; s <= REPLAY_WINDOW + 10; s++) w.check(5, s);
  assert.equal(w.check(5, 5), "replayed");
  assert.equal(w.check(5, 11), "duplicate", "just inside the window");
  assert.equal(w.check(4, 0), "unconfirmed", "an older epoch");
  assert.equal(w.check(6, 0), "unconfirmed", "a newer epoch, not yet followed");
  assert.equal(w.check(6, 1), "restart", "the sender restarted: its numbers start again");
  assert.equal(w.check(6, 2), "next");
  assert.equal(w.lost, 0);
});

/** An in-order stream of `epoch` from `from`, each number expected "next". */
function inOrder(w: ReplayWindow, epoch: number, from: number, n: number, nowS?: number): void {
  for (let s = from; s < from + n; s++) assert.equal(w.check(epoch, s >>> 0, nowS), "next", `sequence ${s}`);
}

Deno.test("ReplayWindow keeps a channel through one spoofed datagram of epoch 0xFFFFFFFF", () => {
  const w = new ReplayWindow();
  inOrder(w, 1000, 0, 5);
  assert.equal(w.check(0xffff_ffff, 77), "unconfirmed");
  inOrder(w, 1000, 5, 5);
  assert.equal(w.lost, 0);
  assert.equal(w.accepted, 10);
});

Deno.test("ReplayWindow takes no jump of 2^31 - 1 from one datagram: no loss counted, the genuine stream goes on", () => {
  const w = new ReplayWindow();
  inOrder(w, 1000, 0, 5);
  assert.equal(w.check(1000, 4 + 2 ** 31 - 1), "unconfirmed");
  assert.equal(w.lost, 0);
  inOrder(w, 1000, 5, 5);
  assert.equal(w.lost, 0);
});

Deno.test("ReplayWindow resynchronises on a restart within the same second and on a clock stepped back", () => {
  const w = new ReplayWindow();
  inOrder(w, 1000, 1_000_000, 5);
  // Same epoch, numbers far behind (a restarted port's random start): refused once, then taken.
  assert.equal(w.check(1000, 77), "replayed");
  assert.equal(w.check(1000, 78), "resync");
  inOrder(w, 1000, 79, 3);
  // An older epoch (the peer's clock stepped back), from 0.
  assert.equal(w.check(990, 0), "unconfirmed");
  assert.equal(w.check(990, 1), "restart");
  inOrder(w, 990, 2, 3);
  assert.equal(w.lost, 0, "nothing was missing from the accepted runs");
});

Deno.test("ReplayWindow refuses an epoch far ahead of the receiver's clock, even when followed in sequence", () => {
  const w = new ReplayWindow();
  const now = 1_700_000_000;
  inOrder(w, now, 0, 3, now);
  const far = now + MAX_EPOCH_AHEAD_S + 1;
  assert.equal(w.check(far, 0, now), "future_epoch");
  assert.equal(w.check(far, 1, now), "future_epoch");
  inOrder(w, now, 3, 2, now);
  assert.equal(w.check(now + 60, 0, now), "unconfirmed", "a clock a minute ahead is still taken...");
  assert.equal(w.check(now + 60, 1, now), "restart", "...once confirmed");
});

Deno.test("ReplayWindow counts a confirmed jump ahead as lost, and an in-order datagram cancels a pending jump", () => {
  const w = new ReplayWindow();
  inOrder(w, 1, 0, 2);
  assert.equal(w.check(1, 2000), "unconfirmed");
  assert.equal(w.check(1, 2), "next", "the genuine stream goes on");
  assert.equal(w.check(1, 2001), "unconfirmed", "the pending jump was cancelled: 2001 does not confirm 2000");
  assert.equal(w.check(1, 2002), "resync");
  assert.equal(w.lost, 1998, "3..2000 never arrived (2001 did, refused)");
  assert.equal(w.check(1, 2003), "next");
});

Deno.test("ReplayWindow compares sequence numbers across their wrap", () => {
  const w = new ReplayWindow();
  w.check(1, 0xffff_fffe);
  assert.equal(w.check(1, 0xffff_ffff), "next");
  assert.equal(w.check(1, 1), "gap");
  assert.equal(w.check(1, 0), "late");
  assert.equal(w.lost, 0);
  assert.equal(w.check(1, 0xffff_fffe), "duplicate");
});

Deno.test("DelayWindow gives median and maximum in ms, across the timestamp's wrap", () => {
  const d = new DelayWindow();
  assert.deepEqual(d.summary(), { p50: null, max: null });
  const base = 2 ** 32 - 1000; // the sender's µs just before the wrap
  for (const delay of [1000, 2000, 3000, 9000]) d.add((base % 2 ** 32) >>> 0, base + delay);
  assert.deepEqual(d.summary(), { p50: 2, max: 9 });
});
