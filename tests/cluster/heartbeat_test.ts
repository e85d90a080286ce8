/** Heartbeats on a ManualClock: a watched peer silent past the loss timeout is declared lost once, and back when heard. */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { Heartbeats } from "../../lib/cluster/heartbeat.ts";

function setup(answers: Record<string, boolean>) {
  const clock = new ManualClock(0);
  const events: string[] = [];
  const watched = new Set(Object.keys(answers));
  const hb = new Heartbeats({
    clock,
    intervalMs: 1000,
    lossMs: 3000,
    watch: () => watched,
    send: (peer) => answers[peer] ? Promise.resolve() : Promise.reject(new Error("no answer")),
    onLost: (peer) => events.push(`lost ${peer}`),
    onBack: (peer) => events.push(`back ${peer}`),
  });
  return { clock, events, hb, watched };
}

/** Lets the answers of the heartbeats just sent settle. */
const settle = () => new Promise((r) => setTimeout(r, 0));

Deno.test("Heartbeats declare a silent peer lost after the loss timeout, once", async () => {
  const answers = { prague: true, liberec: false };
  const { clock, events, hb } = setup(answers);
  hb.start();
  // Watched from the first round (t = 1 s): silent 3 s at t = 4 s is not yet past the timeout.
  for (let i = 0; i < 4; i++) {
    clock.advance(1000);
    await settle();
  }
  assert.deepEqual(events, []);
  clock.advance(1000);
  await settle();
  assert.deepEqual(events, ["lost liberec"]);
  for (let i = 0; i < 5; i++) {
    clock.advance(1000);
    await settle();
  }
  assert.deepEqual(events, ["lost liberec"]);
  assert.deepEqual(hb.status().prague, { state: "alive", silent_ms: 0, sent: 10, answered: 10, received: 0 });
  hb.stop();
  assert.equal(clock.pending, 0);
});

Deno.test("Heartbeats count a peer heard when it sends one, and say when a lost one is back", async () => {
  const answers = { prague: false };
  const { clock, events, hb } = setup(answers);
  hb.start();
  clock.advance(2000);
  hb.received("prague");
  clock.advance(3000);
  await settle();
  assert.deepEqual(events, [], "a heartbeat received keeps the peer alive");
  clock.advance(1000);
  await settle();
  assert.deepEqual(events, ["lost prague"]);
  assert.equal(hb.isLost("prague"), true);
  hb.received("prague");
  assert.deepEqual(events, ["lost prague", "back prague"]);
  hb.stop();
});

Deno.test("Heartbeats forget a peer no longer watched", async () => {
  const { clock, events, hb, watched } = setup({ prague: false });
  hb.start();
  clock.advance(1000);
  watched.clear();
  clock.advance(10_000);
  await settle();
  assert.deepEqual(events, []);
  assert.deepEqual(hb.status(), {});
  hb.stop();
});

Deno.test("Heartbeats tell each time a peer is heard from, by answer or by its own heartbeat", async () => {
  const clock = new ManualClock(0);
  const heard: string[] = [];
  const hb = new Heartbeats({
    clock,
    intervalMs: 1000,
    lossMs: 3000,
    watch: () => new Set(["prague", "liberec"]),
    send: (peer) => peer === "prague" ? Promise.resolve() : Promise.reject(new Error("no answer")),
    onLost: () => {},
    onBack: () => {},
    onHeard: (peer) => heard.push(peer),
  });
  hb.tick();
  await settle();
  hb.received("liberec");
  assert.deepEqual(heard, ["prague", "liberec"]);
  hb.stop();
});
