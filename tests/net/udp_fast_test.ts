import assert from "node:assert/strict";
import { emptyStats, openUdp, sharedStats, statsOf } from "../../lib/net/udp.ts";
import { adoptFastUdp, openFastUdp } from "../../lib/net/udp_fast.ts";
import { openPortableUdp } from "../../lib/net/udp_portable.ts";
import { collect, udpContract } from "./udp_contract.ts";

const openFast = (
  addr: Parameters<typeof openPortableUdp>[0],
  options?: Parameters<typeof openPortableUdp>[1],
) => {
  const s = openFastUdp(addr, options);
  assert.ok(s, "the fast path needs Linux and --allow-ffi");
  return s;
};

udpContract("fast", openFast, openPortableUdp);

Deno.test("fast socket returns many queued datagrams in one receive, up to its batch size", async () => {
  const a = openFast({ host: "127.0.0.1", port: 0 });
  const b = openFast({ host: "127.0.0.1", port: 0 }, { batch: 16 });
  try {
    a.send(Array.from({ length: 40 }, (_, i) => new Uint8Array([i])), a.destinations([b.local]));
    const first = await b.receive();
    assert.ok(first);
    assert.equal(first.count, 16, "a full batch when 40 are queued");
    await collect(b, 24);
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("openUdp takes the fast path by default where FFI is allowed", async () => {
  const s = openUdp({ host: "127.0.0.1", port: 0 });
  try {
    assert.equal(s.impl, "fast");
  } finally {
    await s.close();
  }
  const p = openUdp({ host: "127.0.0.1", port: 0 }, { impl: "portable" });
  assert.equal(p.impl, "portable");
  await p.close();
});

Deno.test("an adopted fast socket works its opener's port with its own buffers and stats, and leaves it open", async () => {
  const sender = openFast({ host: "127.0.0.1", port: 0 });
  const opener = openFast({ host: "127.0.0.1", port: 0 });
  const stats = sharedStats();
  const adopted = adoptFastUdp(opener.descriptor, {}, stats);
  assert.ok(adopted);
  try {
    const to = sender.destinations([opener.local]);
    sender.send([new TextEncoder().encode("one")], to);
    const batch = adopted.receiveBlocking();
    assert.equal(batch?.count, 1);
    assert.equal(new TextDecoder().decode(batch!.data(0)), "one");
    assert.deepEqual(adopted.local, opener.local);
    const view = sharedStats(stats.buffer);
    assert.equal(view.rx_packets, 1, "counted in the shared cells another thread reads");
    assert.equal(opener.stats.rx_packets, 0);

    await adopted.close();
    sender.send([new TextEncoder().encode("two")], to);
    const got = await collect(opener, 1);
    assert.equal(new TextDecoder().decode(got[0].data), "two", "the opener still owns a working socket");
  } finally {
    await adopted.close();
    await opener.close();
    await sender.close();
  }
});

Deno.test("a blocking fast receive returns empty after its wait slice, and null once stopped and interrupted", async () => {
  const s = openFast({ host: "127.0.0.1", port: 0 });
  try {
    s.setWaitSlice(10);
    assert.equal(s.receiveBlocking()?.count, 0, "nothing came within the slice");
    const stop = new Int32Array(new SharedArrayBuffer(4));
    Atomics.store(stop, 0, 1);
    s.interrupt();
    assert.equal(s.receiveBlocking(stop), null);
    assert.equal(s.stats.rx_packets, 0, "the wake-up is not counted as a datagram");
  } finally {
    await s.close();
  }
});

Deno.test("shared UDP stats: one set of cells seen through two views, copied plain for status", () => {
  const a = sharedStats();
  const b = sharedStats(a.buffer);
  a.rx_packets += 3;
  a.tx_dropped++;
  assert.equal(b.rx_packets, 3);
  assert.deepEqual(statsOf(b), { ...emptyStats(), rx_packets: 3, tx_dropped: 1 });
});
