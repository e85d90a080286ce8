/**
 * The contract every UdpSocket implementation passes (run by udp_fast_test.ts and udp_portable_test.ts), in the
 * manner of Hono's shared router cases: one suite, several implementations.
 */
import { until } from "../_support/until.ts";
import assert from "node:assert/strict";
import { StartError } from "../../lib/core/errors.ts";
import type { Batch, Endpoint, UdpOptions, UdpSocket } from "../../lib/net/udp.ts";

export type Open = (addr: Endpoint, options?: UdpOptions) => UdpSocket;

const LOOPBACK = { host: "127.0.0.1", port: 0 };
const enc = new TextEncoder();
const dec = new TextDecoder();

/** Receives until `n` datagrams arrived (copied out), failing after `ms` instead of hanging. */
export async function collect(
  socket: UdpSocket,
  n: number,
  ms = 3000,
): Promise<{ data: Uint8Array; from: Endpoint; truncated: boolean }[]> {
  const out: { data: Uint8Array; from: Endpoint; truncated: boolean }[] = [];
  const timer = setTimeout(() => socket.close(), ms);
  try {
    while (out.length < n) {
      const batch: Batch | null = await socket.receive();
      if (!batch) break;
      for (let i = 0; i < batch.count; i++) {
        out.push({ data: batch.data(i).slice(), from: batch.from(i), truncated: batch.truncated(i) });
      }
    }
  } finally {
    clearTimeout(timer);
  }
  assert.equal(out.length, n, `received ${out.length} of ${n} datagrams before ${ms} ms`);
  return out;
}

export function udpContract(name: string, open: Open, other: Open): void {
  const test = (what: string, fn: () => Promise<void>) => Deno.test(`${name} socket ${what}`, fn);

  test("binds port 0 and reports the real local address", async () => {
    const s = open(LOOPBACK);
    try {
      assert.equal(s.local.host, "127.0.0.1");
      assert.ok(s.local.port > 0);
    } finally {
      await s.close();
    }
  });

  test("delivers datagrams in order with their sender and counts them", async () => {
    const a = open(LOOPBACK);
    const b = open(LOOPBACK);
    try {
      const words = ["one", "two", "three", ""];
      a.send(words.map((w) => enc.encode(w)), a.destinations([b.local]));
      const got = await collect(b, words.length);
      assert.deepEqual(got.map((g) => dec.decode(g.data)), words);
      for (const g of got) assert.deepEqual(g.from, a.local);
      await until("4 sends accepted", () => a.stats.tx_packets === 4, 2000, 1);
      assert.equal(a.stats.tx_bytes, 11);
      assert.equal(b.stats.rx_packets, 4);
      assert.equal(b.stats.rx_bytes, 11);
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("sends every datagram of a received batch to every destination", async () => {
    const source = open(LOOPBACK);
    const relay = open(LOOPBACK);
    const sinks = [open(LOOPBACK), open(LOOPBACK), open(LOOPBACK)];
    try {
      const n = 50;
      source.send(
        Array.from({ length: n }, (_, i) => enc.encode(`packet ${i}`)),
        source.destinations([relay.local]),
      );
      const to = relay.destinations(sinks.map((s) => s.local));
      let forwarded = 0;
      while (forwarded < n) {
        const batch = await relay.receive();
        assert.ok(batch);
        relay.send(batch, to);
        forwarded += batch.count;
      }
      await until("every destination counted", () => to.sent.every((x) => x === n), 2000, 1);
      assert.deepEqual([...to.dropped], [0, 0, 0]);
      for (const sink of sinks) {
        const got = await collect(sink, n);
        assert.deepEqual(
          got.map((g) => dec.decode(g.data)),
          Array.from({ length: n }, (_, i) => `packet ${i}`),
        );
        for (const g of got) assert.deepEqual(g.from, relay.local);
      }
    } finally {
      for (const s of [source, relay, ...sinks]) await s.close();
    }
  });

  test("works with odd batch and datagram sizes", async () => {
    const a = open(LOOPBACK);
    const b = open(LOOPBACK, { batch: 3, maxDatagram: 1001 });
    try {
      a.send(
        [new Uint8Array(1001).fill(7), enc.encode("x"), new Uint8Array(1002)],
        a.destinations([b.local]),
      );
      const got = await collect(b, 3);
      assert.deepEqual(got.map((g) => [g.data.length, g.truncated]), [[1001, false], [1, false], [
        1001,
        true,
      ]]);
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("lets timers and other work run while datagrams keep arriving", async () => {
    const a = open(LOOPBACK);
    const b = open(LOOPBACK, { batch: 1 });
    try {
      const n = 120;
      a.send(Array.from({ length: n }, (_, i) => enc.encode(`${i}`)), a.destinations([b.local]));
      await until(`${n} sends accepted`, () => a.stats.tx_packets === n, 2000, 1);
      // Every datagram is already queued, so a receiver that never yields would take all of them first.
      let receivedWhenTimerRan = -1;
      setTimeout(() => receivedWhenTimerRan = b.stats.rx_packets, 0);
      const due = performance.now() + 5; // make the timer due before the first receive
      while (performance.now() < due) { /* spin */ }
      await collect(b, n);
      assert.ok(
        receivedWhenTimerRan >= 0 && receivedWhenTimerRan < n / 2,
        `the timer ran after ${receivedWhenTimerRan} of ${n} datagrams`,
      );
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("carries the largest IPv4 datagram whole", async () => {
    const a = open(LOOPBACK);
    const b = open(LOOPBACK);
    try {
      const big = new Uint8Array(65507).map((_, i) => i * 7);
      a.send([big], a.destinations([b.local]));
      const [got] = await collect(b, 1);
      assert.equal(got.data.length, 65507);
      assert.deepEqual(got.data, big);
      assert.equal(b.stats.truncated, 0);
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("counts and flags a datagram longer than maxDatagram instead of cutting it silently", async () => {
    const a = open(LOOPBACK);
    const b = open(LOOPBACK, { maxDatagram: 1000 });
    try {
      a.send([new Uint8Array(1500).fill(1), new Uint8Array(1000).fill(2)], a.destinations([b.local]));
      const got = await collect(b, 2);
      assert.deepEqual(got.map((g) => [g.data.length, g.truncated]), [[1000, true], [1000, false]]);
      assert.equal(b.stats.truncated, 1);
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("works over IPv6 loopback", async () => {
    const a = open({ host: "::1", port: 0 });
    const b = open({ host: "::1", port: 0 });
    try {
      assert.equal(b.local.host, "::1");
      a.send([enc.encode("six")], a.destinations([b.local]));
      const [got] = await collect(b, 1);
      assert.equal(dec.decode(got.data), "six");
      assert.deepEqual(got.from, a.local);
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("hands a received batch to a socket of the other implementation", async () => {
    const a = open(LOOPBACK);
    const b = open(LOOPBACK);
    const c = other(LOOPBACK);
    try {
      a.send([enc.encode("x"), enc.encode("yy")], a.destinations([b.local]));
      let n = 0;
      while (n < 2) {
        const batch = await b.receive();
        assert.ok(batch);
        c.send(batch, c.destinations([a.local]));
        n += batch.count;
      }
      const got = await collect(a, 2);
      assert.deepEqual(got.map((g) => dec.decode(g.data)), ["x", "yy"]);
    } finally {
      for (const s of [a, b, c]) await s.close();
    }
  });

  test("close ends a pending receive with null, and later calls do nothing", async () => {
    const s = open(LOOPBACK);
    const pending = s.receive();
    await s.close();
    assert.equal(await pending, null);
    assert.equal(await s.receive(), null);
    s.send([enc.encode("late")], s.destinations([{ host: "127.0.0.1", port: 9 }]));
    assert.equal(s.stats.tx_packets, 0);
    await s.close();
  });

  test("refuses a port in use with a StartError naming the address", async () => {
    const a = open(LOOPBACK);
    try {
      assert.throws(
        () => open({ host: "127.0.0.1", port: a.local.port }),
        (e: unknown) =>
          e instanceof StartError &&
          e.message === `Cannot listen on udp 127.0.0.1:${a.local.port}: address already in use`,
      );
    } finally {
      await a.close();
    }
  });
}
