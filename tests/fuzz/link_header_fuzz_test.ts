/**
 * Property tests of the link header (lib/cluster/link_header.ts), which reads every datagram a node's link port
 * receives: what is written reads back; any bytes give a verdict, never an exception, never a payload start past the
 * datagram; the anti-replay window never delivers one sequence number twice.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  encodeDestination,
  type LinkHeaderFields,
  linkHeaderLength,
  ParsedLinkHeader,
  parseLinkHeader,
  refused,
  REPLAY_WINDOW,
  ReplayWindow,
  writeLinkHeader,
} from "../../lib/cluster/link_header.ts";
import { nearBytes, onlyThrows, params } from "./_fuzz.ts";

const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const v4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((b) => b.join("."));
const v6 = fc.array(fc.nat(0xffff), { minLength: 8, maxLength: 8 }).map((g) =>
  g.map((x) => x.toString(16)).join(":")
);
const destination = fc.option(fc.record({ host: fc.oneof(v4, v6), port: fc.nat(65535) }), { nil: null });
const fields = fc.record({
  channel: u32,
  epoch: u32,
  sequence: u32,
  sentUs: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
  rtcp: fc.boolean(),
  destination,
});

function write(
  f: Omit<LinkHeaderFields, "destination"> & { destination: Uint8Array | null },
  payload: Uint8Array,
) {
  const d = new Uint8Array(linkHeaderLength(f.destination) + payload.length);
  const n = writeLinkHeader(d, 0, f);
  d.set(payload, n);
  return d;
}

const datagrams = fc.tuple(fields, fc.uint8Array({ maxLength: 32 })).map(([f, payload]) =>
  write({ ...f, destination: f.destination ? encodeDestination(f.destination) : null }, payload)
);

Deno.test("link header: what is written reads back", () => {
  const out = new ParsedLinkHeader();
  fc.assert(
    fc.property(fields, fc.uint8Array({ maxLength: 64 }), (f, payload) => {
      const d = write(
        { ...f, destination: f.destination ? encodeDestination(f.destination) : null },
        payload,
      );
      assert.equal(parseLinkHeader(d, out), "ok");
      assert.equal(out.channel, f.channel);
      assert.equal(out.epoch, f.epoch);
      assert.equal(out.sequence, f.sequence);
      assert.equal(out.sentUs, f.sentUs % 2 ** 32);
      assert.equal(out.rtcp, f.rtcp);
      const back = out.destination(d);
      if (f.destination) {
        assert.equal(back?.port, f.destination.port);
        assert.deepEqual(encodeDestination(back!), encodeDestination(f.destination));
      } else assert.equal(back, null);
      assert.deepEqual(d.subarray(out.length), payload);
    }),
    params(300),
  );
});

Deno.test("link header: any bytes give a verdict, never an exception or a payload past the end", () => {
  const out = new ParsedLinkHeader();
  fc.assert(
    fc.property(nearBytes(datagrams, 96), (d) => {
      const verdict = onlyThrows(() => parseLinkHeader(d, out));
      assert.ok(verdict !== undefined);
      if (verdict === "ok") {
        assert.ok(out.length <= d.length);
        onlyThrows(() => out.destination(d));
      }
    }),
    params(2000),
  );
});

Deno.test("link header: a datagram read in place inside a larger buffer reads as on its own", () => {
  const alone = new ParsedLinkHeader();
  const inPlace = new ParsedLinkHeader();
  fc.assert(
    fc.property(nearBytes(datagrams, 96), fc.nat(64), fc.nat(64), (d, before, after) => {
      const buf = new Uint8Array(before + d.length + after).fill(0xd1);
      buf.set(d, before);
      const verdict = parseLinkHeader(d, alone);
      assert.equal(parseLinkHeader(buf, inPlace, before, before + d.length), verdict);
      if (verdict === "ok") assert.deepEqual({ ...inPlace }, { ...alone });
    }),
    params(1000),
  );
});

Deno.test("link header: the replay window delivers each sequence number of an epoch at most once", () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: 3000 }), { maxLength: 300 }), (seqs) => {
      const w = new ReplayWindow();
      // Per run: a resynchronisation starts the numbering again.
      let delivered = new Set<number>();
      let accepted = 0;
      for (const s of seqs) {
        const v = w.check(1, s);
        if (refused(v)) continue;
        if (v === "resync" || v === "restart") delivered = new Set();
        assert.ok(!delivered.has(s), `sequence ${s} delivered twice`);
        delivered.add(s);
        accepted++;
      }
      assert.equal(w.accepted, accepted);
      assert.ok(w.lost >= 0);
    }),
    params(300),
  );
});

Deno.test("link header: one spoofed datagram in a genuine stream costs it at most one datagram and no lasting loss", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 50 }),
      u32,
      fc.oneof(u32, fc.constant(1000)),
      // Anywhere, or near the genuine numbers (relative to the first).
      fc.oneof(
        u32.map((v) => ({ v, near: false })),
        fc.integer({ min: -3000, max: 3000 }).map((v) => ({ v, near: true })),
      ),
      (at, start, epoch, spoof) => {
        const sequence = spoof.near ? (start + spoof.v) >>> 0 : spoof.v;
        const w = new ReplayWindow();
        const n = at + REPLAY_WINDOW + 5;
        let refusedGenuine = 0;
        for (let i = 0; i < n; i++) {
          if (i === at) w.check(epoch, sequence);
          if (refused(w.check(1000, (start + i) >>> 0))) refusedGenuine++;
        }
        assert.ok(refusedGenuine <= 1, `${refusedGenuine} genuine datagrams refused`);
        // A spoof just below the first number seen counts those between as lost (it was accepted): under a window.
        assert.ok(w.lost >= 0 && w.lost < REPLAY_WINDOW, `lost ${w.lost}`);
      },
    ),
    params(300),
  );
});
