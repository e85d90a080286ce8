import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import {
  addressClass,
  JOIN_MIN_BYTES,
  limitKey,
  ParticipantTable,
  type TableOptions,
} from "../../lib/relay/participants.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const A = { host: "192.0.2.1", port: 5000 };
const B = { host: "192.0.2.2", port: 5000 };

function table(options: Partial<TableOptions> = {}) {
  const clock = new ManualClock(1_000_000);
  const t = new ParticipantTable({
    clock,
    timeoutMs: 30_000,
    maxParticipants: 10,
    maxPerAddress: 2,
    allow: [],
    ...options,
  });
  return { clock, t };
}

const join = () => enc.encode("EDGENODE-JOIN".padEnd(JOIN_MIN_BYTES, " "));
const text = (b: Uint8Array | null) => (b ? dec.decode(b) : null);

/** Runs the whole join for `from`; returns the nonce. */
function joinFully(t: ParticipantTable, from = A): string {
  const challenge = text(t.onControl(join(), from));
  assert.ok(challenge);
  const nonce = challenge.split(" ")[1];
  assert.match(
    text(t.onControl(enc.encode(`EDGENODE-CONFIRM ${nonce}`), from)) ?? "",
    /^EDGENODE-WELCOME \d+$/,
  );
  return nonce;
}

Deno.test("ParticipantTable answers a JOIN with a challenge no larger than the JOIN, and adds nobody yet", () => {
  const { t } = table();
  const reply = t.onControl(join(), A);
  assert.ok(reply);
  assert.match(dec.decode(reply), /^EDGENODE-CHALLENGE [0-9a-f]{32}$/);
  assert.ok(reply.length <= JOIN_MIN_BYTES);
  assert.equal(t.size, 0);
});

Deno.test("ParticipantTable ignores a JOIN shorter than the minimum (no amplification)", () => {
  const { t } = table();
  assert.equal(t.onControl(enc.encode("EDGENODE-JOIN"), A), null);
  assert.equal(t.stats.malformed, 1);
});

Deno.test("ParticipantTable adds a participant that echoes its nonce, telling it the timeout", () => {
  const { t } = table();
  const nonce = dec.decode(t.onControl(join(), A)!).split(" ")[1];
  assert.equal(text(t.onControl(enc.encode(`EDGENODE-CONFIRM ${nonce}`), A)), "EDGENODE-WELCOME 30");
  assert.deepEqual(t.endpoints(), [A]);
  assert.equal(t.list()[0].origin, "join");
});

Deno.test("ParticipantTable refuses a nonce echoed from another address (a forged join)", () => {
  const { t } = table();
  const nonce = dec.decode(t.onControl(join(), A)!).split(" ")[1];
  // B never saw A's challenge; it can only guess or replay it.
  assert.equal(t.onControl(enc.encode(`EDGENODE-CONFIRM ${nonce}`), B), null);
  assert.equal(t.onControl(enc.encode(`EDGENODE-CONFIRM ${"0".repeat(32)}`), A), null);
  assert.equal(t.size, 0);
  assert.equal(t.stats.bad_nonce, 2);
});

Deno.test("ParticipantTable accepts a nonce from the previous epoch and refuses an older one", () => {
  const { clock, t } = table();
  const nonce = dec.decode(t.onControl(join(), A)!).split(" ")[1];
  clock.advance(31_000);
  assert.ok(t.onControl(enc.encode(`EDGENODE-CONFIRM ${nonce}`), A));
  t.remove(A);
  clock.advance(60_000);
  assert.equal(t.onControl(enc.encode(`EDGENODE-CONFIRM ${nonce}`), A), null);
});

Deno.test("ParticipantTable keeps a participant that sends keepalives and drops a silent one after the timeout", () => {
  const { clock, t } = table();
  const nonceA = joinFully(t, A);
  joinFully(t, B);
  for (let i = 0; i < 5; i++) {
    clock.advance(20_000);
    // A refreshes with a fresh nonce each time, as a client does after its nonce ages.
    const fresh = dec.decode(t.onControl(join(), A)!).split(" ")[1];
    assert.ok(t.onControl(enc.encode(`EDGENODE-CONFIRM ${fresh}`), A));
    t.expire();
  }
  assert.deepEqual(t.endpoints(), [A], "B fell silent and was dropped");
  assert.equal(t.stats.expired, 1);
  assert.ok(nonceA);
});

Deno.test("ParticipantTable drops exactly after the timeout, not before", () => {
  const { clock, t } = table({ timeoutMs: 10_000 });
  joinFully(t);
  clock.advance(10_000);
  assert.equal(t.expire(), 0);
  clock.advance(1);
  assert.equal(t.expire(), 1);
  assert.equal(t.size, 0);
});

Deno.test("ParticipantTable removes a participant that leaves", () => {
  const { t } = table();
  const nonce = joinFully(t);
  assert.equal(t.onControl(enc.encode(`EDGENODE-LEAVE ${nonce}`), A), null);
  assert.equal(t.size, 0);
  assert.equal(t.stats.leaves, 1);
});

Deno.test("ParticipantTable enforces the total and per-address limits", () => {
  const { t } = table({ maxParticipants: 3, maxPerAddress: 2 });
  joinFully(t, { host: "192.0.2.1", port: 1 });
  joinFully(t, { host: "192.0.2.1", port: 2 });
  assert.equal(t.onControl(join(), { host: "192.0.2.1", port: 3 }), null, "third from one address");
  joinFully(t, { host: "192.0.2.2", port: 1 });
  assert.equal(t.onControl(join(), { host: "192.0.2.3", port: 1 }), null, "fourth in all");
  assert.equal(t.size, 3);
  assert.equal(t.stats.refused_limit, 2);
});

Deno.test("ParticipantTable refuses denied address classes unless allowed", () => {
  const { t } = table();
  for (
    const host of [
      "127.0.0.1",
      "::1",
      "224.0.0.5",
      "ff02::1",
      "0.0.0.0",
      "::",
      "255.255.255.255",
      "::ffff:127.0.0.1",
    ]
  ) {
    assert.equal(t.onControl(join(), { host, port: 9 }), null, host);
  }
  assert.equal(t.stats.refused_denied, 8);
  const relaxed = table({ allow: ["loopback"] }).t;
  joinFully(relaxed, { host: "127.0.0.1", port: 9 });
  assert.equal(relaxed.size, 1);
});

Deno.test("ParticipantTable counts malformed control messages and answers nothing", () => {
  const { t } = table();
  for (
    const bad of [
      "",
      "hello",
      "EDGENODE-CONFIRM short",
      "EDGENODE-CONFIRM " + "g".repeat(32),
      "x".repeat(5000),
    ]
  ) {
    assert.equal(t.onControl(enc.encode(bad), A), null);
  }
  assert.equal(t.onControl(new Uint8Array([0xff, 0xfe, 0, 1]), A), null);
  assert.equal(t.stats.malformed, 6);
  assert.equal(t.size, 0);
});

Deno.test("ParticipantTable keeps config and API participants through timeouts", () => {
  const { clock, t } = table({ allow: ["loopback"] });
  assert.equal(t.add({ host: "127.0.0.1", port: 7 }, "config"), null);
  assert.equal(t.add(A, "api"), null);
  clock.advance(3_600_000);
  assert.equal(t.expire(), 0);
  assert.equal(t.size, 2);
  assert.equal(table().t.add({ host: "127.0.0.1", port: 7 }, "api"), "denied");
});

Deno.test("ParticipantTable bumps its version on every change only", () => {
  const { t } = table();
  const v0 = t.version;
  t.onControl(join(), A);
  assert.equal(t.version, v0, "a challenge changes nothing");
  joinFully(t);
  assert.equal(t.version, v0 + 1);
  joinFully(t); // keepalive
  assert.equal(t.version, v0 + 1);
  t.remove(A);
  assert.equal(t.version, v0 + 2);
});

Deno.test("addressClass classifies special addresses", () => {
  assert.equal(addressClass("127.0.0.53"), "loopback");
  assert.equal(addressClass("239.1.2.3"), "multicast");
  assert.equal(addressClass("240.0.0.1"), null);
  assert.equal(addressClass("192.0.2.1"), null);
  assert.equal(addressClass("2001:db8::1"), null);
  assert.equal(addressClass("::ffff:224.0.0.1"), "multicast");
});

Deno.test("limitKey takes an IPv6 address as its /64 and an IPv4-mapped one as IPv4", () => {
  assert.equal(limitKey("192.0.2.1"), "192.0.2.1");
  assert.equal(limitKey("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
  assert.equal(limitKey("2001:db8:1:2:ffff:1:2:3"), "2001:db8:1:2::/64");
  assert.equal(limitKey("::ffff:192.0.2.1"), "192.0.2.1");
});

Deno.test("ParticipantTable counts every address of an IPv6 /64 against max_per_address as one", () => {
  const { t } = table({ maxPerAddress: 2 });
  assert.equal(t.add({ host: "2001:db8::1", port: 5000 }, "api"), null);
  assert.equal(t.add({ host: "2001:db8::2", port: 5000 }, "api"), null);
  assert.equal(t.add({ host: "2001:db8::ffff:3", port: 5000 }, "api"), "limit", "a third address of the /64");
  assert.equal(
    t.add({ host: "2001:db8:0:1::1", port: 5000 }, "api"),
    null,
    "the next /64 is another address",
  );
  joinFully(t, { host: "2001:db8:0:1::2", port: 6000 });
  const challenge = t.onControl(join(), { host: "2001:db8:0:1::3", port: 6000 });
  assert.equal(challenge, null, "a join from a full /64 is refused");
  assert.equal(t.stats.refused_limit, 1, "the refused join (an API refusal is answered, not counted)");
});

Deno.test("ParticipantTable takes at most confirmRate nonce-checked messages a second per address from newcomers, a participant's keepalives always", () => {
  const { t, clock } = table({ confirmRate: 3 });
  const nonce = joinFully(t); // A's first confirm, counted: A was new then
  const confirm = enc.encode(`EDGENODE-CONFIRM ${nonce}`);
  // A flood spoofed from A's address must not cut A off: its own keepalives are never limited.
  for (let i = 0; i < 5; i++) assert.match(text(t.onControl(confirm, A)) ?? "", /^EDGENODE-WELCOME/);
  // Other ports of A's address are newcomers: two more fit this second, then none.
  assert.equal(t.onControl(confirm, { ...A, port: 9 }), null, "a bad nonce, counted");
  assert.equal(t.onControl(confirm, { ...A, port: 10 }), null, "a bad nonce, counted");
  assert.equal(t.onControl(confirm, { ...A, port: 11 }), null, "the fourth from A's address this second");
  assert.equal(t.stats.rate_limited, 1);
  assert.equal(t.stats.bad_nonce, 2);
  assert.equal(t.onControl(confirm, B), null);
  assert.equal(t.stats.rate_limited, 1, "B has a rate of its own");
  clock.advance(1000);
  assert.equal(t.onControl(confirm, { ...A, port: 12 }), null);
  assert.equal(t.stats.rate_limited, 1, "a new second: checked again, not limited");
  assert.equal(t.stats.rate_limited, 1);
});

Deno.test("ParticipantTable with its rate table full lets newcomers through to the nonce check instead of refusing all", () => {
  const { t } = table({ confirmRate: 1, maxParticipants: 100 });
  const forged = enc.encode(`EDGENODE-CONFIRM ${"0".repeat(32)}`);
  // 10,000 spoofed addresses fill this second's table.
  for (let i = 0; i < 10_000; i++) {
    t.onControl(forged, { host: `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`, port: 1 });
  }
  assert.equal(t.stats.rate_limited, 0);
  // A real participant joining now still gets in.
  joinFully(t, { host: "192.0.2.200", port: 4000 });
  assert.equal(t.size, 1);
});

Deno.test("ParticipantTable counts an address's participants as they join, leave and expire", () => {
  const { t, clock } = table({ maxPerAddress: 2 });
  joinFully(t, { ...A, port: 1 });
  joinFully(t, { ...A, port: 2 });
  assert.equal(t.onControl(join(), { ...A, port: 3 }), null, "a third of A's address is refused");
  assert.ok(t.remove({ ...A, port: 1 }));
  joinFully(t, { ...A, port: 3 });
  clock.advance(31_000);
  assert.equal(t.expire(), 2);
  joinFully(t, { ...A, port: 4 });
  joinFully(t, { ...A, port: 5 });
  assert.equal(t.size, 2, "expired ones no longer count against the address");
});

Deno.test("ParticipantTable of IPv4 sockets refuses an IPv6 participant as of the wrong family", () => {
  const { t } = table({ ipv4Only: true });
  assert.equal(t.add({ host: "2001:db8::1", port: 5000 }, "api"), "family");
  assert.equal(t.add({ host: "::ffff:192.0.2.1", port: 5000 }, "api"), "family");
  assert.equal(t.add(A, "api"), null);
  assert.equal(t.size, 1);
  const { t: any } = table();
  assert.equal(any.add({ host: "2001:db8::1", port: 5000 }, "api"), null);
});
