/**
 * yieldToEventLoop: what a loop that never waits (a busy engine, a flooded receive loop) needs from its turns. A due
 * timer runs, and I/O makes progress: the status API must answer while the data path is saturated.
 */
import assert from "node:assert/strict";
import { yieldToEventLoop } from "../../lib/core/yield.ts";

/** Some work between turns, as a busy data path does (the turn must not depend on the loop being idle). */
function work(iterations = 20_000): number {
  let x = 0;
  for (let i = 0; i < iterations; i++) x = (x * 31 + i) | 0;
  return x;
}

Deno.test("a timer that is due runs within one turn", async () => {
  for (let trial = 0; trial < 20; trial++) {
    let fired = false;
    setTimeout(() => fired = true, 0);
    // Due before the turn is asked for (tests/net/udp_contract.ts asks from a receive loop that never waited).
    const due = performance.now() + 2;
    while (performance.now() < due) { /* spin */ }
    await yieldToEventLoop();
    assert.equal(fired, true, `trial ${trial}`);
  }
});

Deno.test("an HTTP request to this process completes while a loop runs that only yields by turns", async () => {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => new Response("ok"));
  try {
    let answer: string | null = null;
    const request = fetch(`http://127.0.0.1:${server.addr.port}/`).then((r) => r.text()).then((t) =>
      answer = t
    );
    let turns = 0;
    // Every step of the exchange (connect, accept, request, response) needs the event loop to poll I/O. Yielding by
    // a MessageChannel message took thousands of turns here; a turn that polls I/O takes about a hundred.
    while (answer === null && turns < 2000) {
      work();
      await yieldToEventLoop();
      turns++;
    }
    await request;
    assert.equal(answer, "ok");
    assert.ok(turns < 2000, `answered within 2000 turns (took ${turns})`);
  } finally {
    await server.shutdown();
  }
});
