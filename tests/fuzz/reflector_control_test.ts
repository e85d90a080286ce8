/**
 * Property tests of the reflector's join protocol (JOIN, CHALLENGE, CONFIRM, LEAVE), whose messages anyone on the
 * network can send to the registration port: no datagram throws, no reply is longer than the datagram it answers
 * (the port cannot amplify), nothing joins without answering a challenge, and the table stays within its limits
 * whatever mix of joins, confirms, leaves and silence arrives.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { ManualClock } from "../../lib/core/clock.ts";
import type { Endpoint } from "../../lib/net/udp.ts";
import { JOIN_MIN_BYTES, ParticipantTable } from "../../lib/relay/participants.ts";
import { nearBytes, onlyThrows, params } from "./_fuzz.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const JOIN = enc.encode("EDGENODE-JOIN".padEnd(JOIN_MIN_BYTES, " "));

function table(clock: ManualClock, maxParticipants = 8, maxPerAddress = 3): ParticipantTable {
  return new ParticipantTable({
    clock,
    timeoutMs: 30_000,
    maxParticipants,
    maxPerAddress,
    allow: [],
    secret: new Uint8Array(32).fill(7),
  });
}

const source: fc.Arbitrary<Endpoint> = fc.record({
  host: fc.oneof(
    fc.ipV4(),
    fc.ipV6(),
    fc.constantFrom("127.0.0.1", "::1", "0.0.0.0", "224.0.0.1", "::ffff:10.0.0.1"),
  ),
  port: fc.integer({ min: 0, max: 65535 }),
});
const message = nearBytes(
  fc.oneof(
    fc.constant(JOIN),
    fc.constantFrom("EDGENODE-JOIN", "EDGENODE-CONFIRM ", "EDGENODE-LEAVE ", "EDGENODE-WELCOME 30").chain((
      m,
    ) => fc.string({ maxLength: 40, unit: "binary-ascii" }).map((s) => enc.encode(m + s))),
    fc.hexaString({ minLength: 32, maxLength: 32 }).map((h) => enc.encode(`EDGENODE-CONFIRM ${h}`)),
  ),
  300,
);

Deno.test("ParticipantTable.onControl answers any datagram with a shorter reply or none, and admits no one", () => {
  fc.assert(
    fc.property(fc.array(fc.tuple(message, source), { minLength: 1, maxLength: 10 }), (messages) => {
      const t = table(new ManualClock());
      for (const [data, from] of messages) {
        const reply = onlyThrows(() => t.onControl(data, from));
        if (reply) {
          assert.ok(reply.length <= data.length, `${reply.length}-byte reply to ${data.length} bytes`);
        }
      }
      assert.equal(t.size, 0, "joining takes the nonce of a challenge sent to the source");
    }),
    params(3000),
  );
});

type Step =
  | { kind: "join"; who: number }
  | { kind: "leave"; who: number }
  | { kind: "wait"; ms: number }
  | { kind: "expire" };

Deno.test("ParticipantTable keeps its limits through any run of joins, leaves and silence", () => {
  const step: fc.Arbitrary<Step> = fc.oneof(
    fc.record({ kind: fc.constant("join" as const), who: fc.nat({ max: 15 }) }),
    fc.record({ kind: fc.constant("leave" as const), who: fc.nat({ max: 15 }) }),
    fc.record({ kind: fc.constant("wait" as const), ms: fc.nat({ max: 40_000 }) }),
    fc.constant({ kind: "expire" as const }),
  );
  fc.assert(
    fc.property(
      fc.array(source, { minLength: 16, maxLength: 16 }),
      fc.array(step, { maxLength: 40 }),
      (who, steps) => {
        const clock = new ManualClock();
        const t = table(clock);
        for (const s of steps) {
          if (s.kind === "wait") clock.advance(s.ms);
          else if (s.kind === "expire") t.expire();
          else if (s.kind === "join") {
            const challenge = t.onControl(JOIN, who[s.who]);
            if (challenge) {
              const nonce = dec.decode(challenge).split(" ")[1];
              const welcome = t.onControl(enc.encode(`EDGENODE-CONFIRM ${nonce}`), who[s.who]);
              if (welcome) assert.match(dec.decode(welcome), /^EDGENODE-WELCOME \d+$/);
            }
          } else {
            const challenge = t.onControl(JOIN, who[s.who]);
            const nonce = challenge ? dec.decode(challenge).split(" ")[1] : "0".repeat(32);
            t.onControl(enc.encode(`EDGENODE-LEAVE ${nonce}`), who[s.who]);
          }
          assert.ok(t.size <= 8, `${t.size} participants, limit 8`);
          assert.equal(
            new Set(t.endpoints().map((e) => `${e.host}|${e.port}`)).size,
            t.size,
            "no duplicates",
          );
        }
      },
    ),
    params(1500),
  );
});
