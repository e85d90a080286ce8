import assert from "node:assert/strict";
import { emptyStats, openUdp, sharedStats, statsOf } from "../../lib/net/udp.ts";
import { adoptFastUdp, openFastUdp } from "../../lib/net/udp_fast.ts";
import { PinnedBatch } from "../../lib/net/pinned.ts";
import { openLibc, SOL_SOCKET } from "../../lib/net/libc.ts";
import { openPortableUdp } from "../../lib/net/udp_portable.ts";
import { collect, udpContract } from "./udp_contract.ts";
import { until } from "../_support/until.ts";

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

/**
 * Datagrams whose sizes make GSO runs of every shape: more of one size than a run may carry, a run ending in a
 * shorter datagram, single ones between runs, an empty one, and large ones of which only one fits a run.
 */
function gsoShapes(): Uint8Array[] {
  const sizes = [
    ...Array(150).fill(100),
    ...[40, 40, 40, 30],
    7,
    0,
    ...[1400, 1400, 1400],
    ...[40_000, 40_000, 39_000],
    ...Array(5).fill(512),
  ];
  return sizes.map((size, seq) => {
    const d = new Uint8Array(size);
    if (size >= 2) new DataView(d.buffer).setUint16(0, seq);
    d.fill(seq & 0xff, 2);
    return d;
  });
}

async function sendShapes(options: { gso: boolean; refuse?: boolean }) {
  const sender = openFast({ host: "127.0.0.1", port: 0 }, { gso: options.gso });
  const sinks = [0, 1, 2].map(() => openFast({ host: "127.0.0.1", port: 0 }, { batch: 256 }));
  try {
    if (options.refuse) refuseSegmentation(sender.descriptor.fd);
    const packets = gsoShapes();
    const to = sender.destinations(sinks.map((s) => s.local));
    sender.send(packets, to);
    for (const sink of sinks) {
      const got = await collect(sink, packets.length);
      assert.deepEqual(got.map((g) => g.data), packets, "every datagram whole and in order");
    }
    const bytes = packets.reduce((n, p) => n + p.length, 0);
    assert.deepEqual([...to.sent], [packets.length, packets.length, packets.length]);
    assert.deepEqual([...to.dropped], [0, 0, 0]);
    assert.equal(sender.stats.tx_packets, packets.length * 3);
    assert.equal(sender.stats.tx_bytes, bytes * 3);
    assert.equal(sender.stats.errors, 0);
    return sender.gso;
  } finally {
    await sender.close();
    for (const s of sinks) await s.close();
  }
}

/** Makes the kernel refuse every GSO send of this socket (it does for a socket without UDP checksums). */
function refuseSegmentation(fd: number): void {
  const libc = openLibc();
  assert.ok(libc);
  const one = new Uint8Array(256);
  new DataView(one.buffer).setInt32(0, 1, true);
  const SO_NO_CHECK = 11;
  assert.equal(libc.symbols.setsockopt(fd, SOL_SOCKET, SO_NO_CHECK, one, 4), 0);
  libc.close();
}

Deno.test("fast socket sends runs of one size as GSO messages; receivers get every datagram whole, in order", async () => {
  assert.equal(await sendShapes({ gso: true }), true, "this kernel segments UDP (Linux 4.18+)");
  assert.equal(await sendShapes({ gso: false }), false, "gso: false sends datagram by datagram");
});

Deno.test("a GSO send the kernel refuses goes datagram by datagram, losing nothing; GSO then stays off", async () => {
  assert.equal(await sendShapes({ gso: true, refuse: true }), false);
});

Deno.test("an adopted fast socket that does not read sources still receives whole datagrams, and says so if asked who sent them", async () => {
  const sender = openFast({ host: "127.0.0.1", port: 0 });
  const opener = openFast({ host: "127.0.0.1", port: 0 });
  const adopted = adoptFastUdp(opener.descriptor, {}, undefined, false);
  assert.ok(adopted);
  try {
    const to = sender.destinations([opener.local]);
    for (const text of ["one", "two"]) {
      sender.send([new TextEncoder().encode(text)], to);
      const batch = adopted.receiveBlocking();
      assert.equal(batch?.count, 1);
      assert.equal(new TextDecoder().decode(batch!.data(0)), text);
      assert.throws(() => batch!.from(0), /does not read source addresses/);
    }
  } finally {
    await adopted.close();
    await opener.close();
    await sender.close();
  }
});

Deno.test("a fast socket opened with timestamps gives each datagram the time the kernel received it", async () => {
  const now = () => (performance.timeOrigin + performance.now()) * 1000;
  const a = openFast({ host: "127.0.0.1", port: 0 });
  const b = openFast({ host: "127.0.0.1", port: 0 }, { timestamps: true });
  const plain = openFast({ host: "127.0.0.1", port: 0 });
  try {
    const to = a.destinations([b.local, plain.local]);
    // Linux turns arrival stamping on through deferred work after the first socket on the machine asks for it;
    // until then a datagram is stamped when it is read. Wait for a datagram stamped before this process read it.
    await until(
      "the kernel stamping datagrams at arrival",
      async () => {
        a.send([new Uint8Array([0])], a.destinations([b.local]));
        const sent = now();
        await new Promise((resolve) => setTimeout(resolve, 2));
        const batch = await b.receive();
        return batch !== null && batch.count > 0 && batch.arrivalUs!(batch.count - 1) <= sent + 1000;
      },
      5_000,
      1,
    );
    const before = now();
    a.send([new Uint8Array([1])], to);
    const between = now();
    a.send([new Uint8Array([2])], to);
    const after = now();
    const got: number[] = [];
    while (got.length < 2) {
      const batch = await b.receive();
      assert.ok(batch);
      for (let i = 0; i < batch.count; i++) got[batch.data(i)[0] - 1] = batch.arrivalUs!(i);
    }
    // Both were received before this process looked: each carries its own time, in the order they were sent.
    // (CLOCK_REALTIME against this process's clock: 1 ms allowed for the two clocks' reading of the same instant.)
    assert.ok(got[0] >= before - 1000 && got[0] <= between + 1000, `${before} <= ${got[0]} <= ${between}`);
    assert.ok(got[1] >= got[0] && got[1] <= after + 1000, `${got[0]} <= ${got[1]} <= ${after}`);
    const untimed = await plain.receive();
    assert.ok(untimed);
    assert.ok(Number.isNaN(untimed.arrivalUs!(0)), "a socket opened without timestamps has none");
  } finally {
    await a.close();
    await b.close();
    await plain.close();
  }
});

Deno.test("a fast socket shut for reading receives null, not an endless run of empty datagrams", async () => {
  const s = openFast({ host: "127.0.0.1", port: 0 });
  const peer = openFast({ host: "127.0.0.1", port: 0 });
  try {
    // A real empty datagram still arrives as one, from its sender.
    peer.send([new Uint8Array(0)], peer.destinations([s.local]));
    const empty = await s.receive();
    assert.equal(empty?.count, 1);
    assert.equal(empty!.length(0), 0);
    assert.equal(empty!.from(0).port, peer.local.port);
    s.interrupt();
    assert.equal(await s.receive(), null);
    assert.equal(await s.receive(), null, "and again");
    assert.equal(s.receiveBlocking(), null, "without a stop cell too");
    assert.equal(s.stats.rx_packets, 1, "the wake-ups are not counted as datagrams");
  } finally {
    await s.close();
    await peer.close();
  }
});

Deno.test("fast socket sends a PinnedBatch from its native addresses, and counts one that claims over 64 KiB as an error", async () => {
  const a = openFast({ host: "127.0.0.1", port: 0 });
  const b = openFast({ host: "127.0.0.1", port: 0 });
  const memory = new Uint8Array(200_000).map((_, i) => i & 0xff);
  const base = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(memory)));
  class Pinned extends PinnedBatch {
    constructor(readonly at: number[], readonly lengths: number[]) {
      super();
    }
    get count() {
      return this.at.length;
    }
    data(i: number) {
      return memory.subarray(this.at[i], this.at[i] + this.lengths[i]);
    }
    length(i: number) {
      return this.lengths[i];
    }
    from() {
      return { host: "127.0.0.1", port: 1 };
    }
    truncated() {
      return false;
    }
    address(i: number) {
      return base + this.at[i];
    }
  }
  try {
    a.send(new Pinned([10, 1000, 5000], [100, 70_000, 300]), a.destinations([b.local]));
    const got = await collect(b, 2);
    assert.deepEqual(got.map((g) => [g.data.length, g.data[0]]), [[100, 10], [300, 5000 & 0xff]]);
    assert.equal(a.stats.errors, 1, "the one over 64 KiB");
  } finally {
    await a.close();
    await b.close();
  }
});
