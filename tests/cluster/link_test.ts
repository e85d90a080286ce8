/**
 * LinkPort (lib/cluster/link.ts) on loopback: delivery per channel and flow, the per-link counters, loss and
 * reordering from injected sequence gaps, refusals by reason (a stranger's address, a bad header, a foreign channel,
 * a duplicate, a replay), and a close that gives the port back.
 */
import assert from "node:assert/strict";
import { LinkPort } from "../../lib/cluster/link.ts";
import { channelId, type LinkHeaderFields, writeLinkHeader } from "../../lib/cluster/link_header.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { StartError } from "../../lib/core/errors.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { ArrayBatch } from "../../lib/graph/batch.ts";
import { type Batch, openUdp, type UdpOptions, type UdpSocket } from "../../lib/net/udp.ts";
import { until } from "../_support/until.ts";

const LO = "127.0.0.1";

/** A link in LinkPort.status(): the LINK_SERIES figures by name, and its channels. */
type Link = Record<string, number> & { peer: string; channels: Record<string, unknown>[] };
const link = (port: LinkPort, peer: string) =>
  ((port.status().links as Link[]).find((l) => l.peer === peer))!;

function batchOf(...payloads: number[][]): Batch {
  return new ArrayBatch(payloads.map((p) => new Uint8Array(p)), payloads.map(() => ({ host: LO, port: 1 })));
}

/** Copies what a receiver gets (a batch is valid only during the call). */
function collector() {
  const got: { data: number[]; rtcp: boolean }[] = [];
  return {
    got,
    deliver: (batch: Batch, rtcp: boolean) => {
      for (let i = 0; i < batch.count; i++) got.push({ data: [...batch.data(i)], rtcp });
    },
  };
}

/** Two link ports that know each other: "brno" (a) and "prague" (b). */
async function pair(
  clocks = { a: new ManualClock(1_000_000), b: new ManualClock(1_000_000) },
  udp: UdpOptions = {},
) {
  const metrics = new MetricsRegistry();
  const bind = { host: LO, port: 0 };
  const a = await LinkPort.open({ bind, self: "brno", peers: [], clock: clocks.a, metrics, udp });
  const b = await LinkPort.open({ bind, self: "prague", peers: [], clock: clocks.b, udp });
  a.setPeers([{ name: "prague", data: b.local }]);
  b.setPeers([{ name: "brno", data: a.local }]);
  return {
    a,
    b,
    metrics,
    async [Symbol.asyncDispose]() {
      await a.close();
      await b.close();
    },
  };
}

function header(fields: Partial<LinkHeaderFields>, payload: number[]): Uint8Array {
  const d = new Uint8Array(20 + payload.length);
  writeLinkHeader(d, 0, {
    channel: channelId("s", "X", "in"),
    epoch: 1000,
    sequence: 0,
    sentUs: 0,
    rtcp: false,
    destination: null,
    ...fields,
  });
  d.set(payload, 20);
  return d;
}

Deno.test("LinkPort delivers a batch to the registered input, RTP and RTCP apart, and counts the link both ways", async () => {
  await using env = await pair();
  const c = collector();
  using _reg = env.b.register("s", "X", "in", c.deliver);
  const send = env.a.sender("prague", "s", "X", "in");
  send(batchOf([1, 2, 3], [4, 5]), false);
  send(batchOf([6]), true);
  await until("3 datagrams at prague", () => c.got.length === 3);
  assert.deepEqual(c.got, [
    { data: [1, 2, 3], rtcp: false },
    { data: [4, 5], rtcp: false },
    { data: [6], rtcp: true },
  ]);
  const out = link(env.a, "prague");
  assert.equal(out.tx_packets, 3);
  assert.equal(out.tx_bytes, 6);
  const into = link(env.b, "brno");
  assert.equal(into.rx_packets, 3);
  assert.equal(into.rx_bytes, 6);
  assert.equal(into.lost, 0);
  assert.deepEqual([into.delay_p50_ms, into.delay_max_ms], [0, 0]);
  assert.deepEqual(
    into.channels.map((ch) => [ch.direction, ch.session, ch.ap, ch.input, ch.packets]),
    [["in", "s", "X", "in", 3]],
  );
  assert.deepEqual(env.b.sessionStatus("other"), []);
  assert.match(env.metrics.render(), /edgenode_link_tx_packets_total\{self="brno",peer="prague"\} 3/);
});

Deno.test("LinkPort carries a link on the portable UDP path as on the fast one", async () => {
  const clock = new ManualClock(1_000_000);
  await using env = await pair({ a: clock, b: clock }, { impl: "portable" });
  assert.equal(env.b.status().udp, "portable");
  const c = collector();
  using _reg = env.b.register("s", "X", "in", c.deliver);
  env.a.sender("prague", "s", "X", "in")(batchOf([9, 8], [7]), true);
  await until("2 datagrams at prague", () => c.got.length === 2);
  assert.deepEqual(c.got, [{ data: [9, 8], rtcp: true }, { data: [7], rtcp: true }]);
});

Deno.test("LinkPort carries a sender's final destination in every header, for the receiver to read", async () => {
  await using env = await pair();
  const seen: unknown[] = [];
  using _reg = env.b.register("s", "X", "in", (batch) => {
    for (let i = 0; i < batch.count; i++) seen.push([batch.destination(i), [...batch.data(i)]]);
  });
  const destination = { host: "2001:db8::7", port: 5004 };
  env.a.sender("prague", "s", "X", "in", { destination })(batchOf([1, 2]), false);
  await until("the datagram", () => seen.length === 1);
  assert.deepEqual(seen, [[destination, [1, 2]]]);
});

Deno.test("LinkPort measures delay as its clock minus the sender's timestamp", async () => {
  await using env = await pair({ a: new ManualClock(1_000_000), b: new ManualClock(1_000_007) });
  const c = collector();
  using _reg = env.b.register("s", "X", "in", c.deliver);
  env.a.sender("prague", "s", "X", "in")(batchOf([1]), false);
  await until("the datagram", () => c.got.length === 1);
  const l = link(env.b, "brno");
  assert.deepEqual([l.delay_p50_ms, l.delay_max_ms, l.channels[0].delay_p50_ms], [7, 7, 7]);
});

Deno.test("LinkPort counts loss, reordering, duplicates and replays from the link sequence", async () => {
  const raw = openUdp({ host: LO, port: 0 });
  const b = await LinkPort.open({
    bind: { host: LO, port: 0 },
    self: "prague",
    peers: [{ name: "fake", data: raw.local }],
    clock: new ManualClock(0),
  });
  try {
    const c = collector();
    using _reg = b.register("s", "X", "in", c.deliver);
    const to = raw.destinations([b.local]);
    // 0 1 4 3 3 (2 never comes), one far behind, then one of an older epoch.
    for (const seq of [0, 1, 4, 3, 3, 0xffff_0000]) raw.send([header({ sequence: seq }, [seq & 0xff])], to);
    raw.send([header({ epoch: 999, sequence: 9 }, [9])], to);
    await until("seven datagrams looked at", () => {
      const l = link(b, "fake");
      return l.rx_packets + l.rejected_duplicate + l.rejected_replayed + l.rejected_unconfirmed === 7;
    });
    const l = link(b, "fake");
    assert.deepEqual(c.got.map((g) => g.data[0]), [0, 1, 4, 3]);
    assert.equal(l.rx_packets, 4);
    assert.equal(l.lost, 1, "2 never came");
    assert.equal(l.reordered, 1, "3 came after 4");
    assert.equal(l.rejected_duplicate, 1);
    assert.equal(l.rejected_replayed, 1);
    assert.equal(l.rejected_unconfirmed, 1, "the older epoch, until the next number follows it");
    const ch = l.channels[0];
    assert.deepEqual([ch.lost, ch.reordered, ch.duplicates], [1, 1, 1]);
    raw.send([header({ epoch: 999, sequence: 10 }, [10])], to);
    await until("the older epoch taken once followed", () => c.got.length === 5);
    assert.deepEqual(c.got[4].data, [10]);
  } finally {
    await b.close();
    await raw.close();
  }
});

Deno.test("LinkPort keeps a link through one spoofed datagram of epoch 0xFFFFFFFF", async () => {
  const raw = openUdp({ host: LO, port: 0 });
  const b = await LinkPort.open({
    bind: { host: LO, port: 0 },
    self: "prague",
    peers: [{ name: "fake", data: raw.local }],
    clock: new ManualClock(1_000_000),
  });
  try {
    const c = collector();
    using _reg = b.register("s", "X", "in", c.deliver);
    const to = raw.destinations([b.local]);
    raw.send([header({ sequence: 0 }, [0]), header({ sequence: 1 }, [1])], to);
    raw.send([header({ epoch: 0xffff_ffff, sequence: 5 }, [66])], to);
    raw.send([header({ sequence: 2 }, [2]), header({ sequence: 3 }, [3])], to);
    await until("four datagrams", () => c.got.length === 4);
    assert.deepEqual(c.got.map((g) => g.data[0]), [0, 1, 2, 3]);
    const l = link(b, "fake");
    assert.equal(l.rejected_future_epoch, 1);
    assert.equal(l.lost, 0);
  } finally {
    await b.close();
    await raw.close();
  }
});

Deno.test("LinkPort takes a peer restarted within the same second from its second datagram", async () => {
  const clock = new ManualClock(1_000_000);
  await using env = await pair({ a: clock, b: clock });
  const c = collector();
  using _reg = env.b.register("s", "X", "in", c.deliver);
  env.a.sender("prague", "s", "X", "in")(batchOf([1], [2], [3]), false);
  await until("3 datagrams", () => c.got.length === 3);
  // The same address and clock, so the same epoch: only the numbers tell the new port apart.
  await env.a.close();
  const again = await LinkPort.open({
    bind: env.a.local,
    self: "brno",
    peers: [{ name: "prague", data: env.b.local }],
    clock,
  });
  try {
    assert.equal(again.epoch, env.a.epoch);
    again.sender("prague", "s", "X", "in")(batchOf([4], [5], [6]), false);
    await until("the restarted port's datagrams after its first", () => c.got.length === 5);
    assert.deepEqual(c.got.slice(3).map((g) => g.data[0]), [5, 6]);
    assert.equal(link(env.b, "brno").rejected_replayed + link(env.b, "brno").rejected_unconfirmed, 1);
    assert.equal(link(env.b, "brno").lost, 0);
  } finally {
    await again.close();
  }
});

Deno.test("LinkPort delivers to an input only what the peers registered for it send, and tells a batch's senders apart", async () => {
  const one = openUdp({ host: LO, port: 0 });
  const two = openUdp({ host: LO, port: 0 });
  const stranger = openUdp({ host: LO, port: 0 });
  const b = await LinkPort.open({
    bind: { host: LO, port: 0 },
    self: "prague",
    peers: [{ name: "one", data: one.local }, { name: "two", data: two.local }],
    clock: new ManualClock(1_000_000),
  });
  try {
    const c = collector();
    using _reg = b.register("s", "X", "in", c.deliver, ["one"]);
    const open = collector();
    using _open = b.register("s", "Y", "in", open.deliver);
    const y = channelId("s", "Y", "in");
    // Sent before the port's loop runs, so they come in one receive, senders interleaved.
    for (let i = 0; i < 8; i++) {
      one.send([header({ sequence: i }, [1, i])], one.destinations([b.local]));
      two.send([header({ sequence: i }, [2, i])], two.destinations([b.local]));
      if (i % 3 === 0) stranger.send([header({ sequence: i }, [3, i])], stranger.destinations([b.local]));
      two.send([header({ channel: y, sequence: i }, [2, i])], two.destinations([b.local]));
    }
    await until(
      "everything looked at",
      () =>
        c.got.length === 8 && open.got.length === 8 && link(b, "two").rejected_wrong_peer === 8 &&
        b.status().rejected_not_peer === 3,
    );
    assert.deepEqual(c.got.map((g) => g.data), Array.from({ length: 8 }, (_, i) => [1, i]));
    assert.deepEqual(open.got.map((g) => g.data), Array.from({ length: 8 }, (_, i) => [2, i]));
    assert.equal(link(b, "one").rx_packets, 8);
    assert.equal(link(b, "two").rx_packets, 8);
    assert.equal(link(b, "one").rejected_wrong_peer, 0);
  } finally {
    await b.close();
    await one.close();
    await two.close();
    await stranger.close();
  }
});

Deno.test("LinkPort refuses and counts bad headers, foreign channels and datagrams from other addresses", async () => {
  const peer = openUdp({ host: LO, port: 0 });
  const stranger = openUdp({ host: LO, port: 0 });
  const b = await LinkPort.open({
    bind: { host: LO, port: 0 },
    self: "prague",
    peers: [{ name: "fake", data: peer.local }],
  });
  try {
    const c = collector();
    using _reg = b.register("s", "X", "in", c.deliver);
    const to = peer.destinations([b.local]);
    const rtp = new Uint8Array(20);
    rtp[0] = 0x80;
    peer.send([rtp, header({}, [1]).subarray(0, 10), header({ channel: 7 }, [1])], to);
    stranger.send([header({}, [1])], stranger.destinations([b.local]));
    await until("four refusals", () => {
      const l = link(b, "fake");
      return l.rejected_bad_magic + l.rejected_truncated + l.rejected_foreign === 3 &&
        b.status().rejected_not_peer === 1;
    });
    assert.equal(c.got.length, 0);
    assert.equal(link(b, "fake").rx_packets, 0);
  } finally {
    await b.close();
    await peer.close();
    await stranger.close();
  }
});

Deno.test("LinkPort counts every cut of a datagram's header as truncated and still takes the whole one", async () => {
  const peer = openUdp({ host: LO, port: 0 });
  const b = await LinkPort.open({
    bind: { host: LO, port: 0 },
    self: "prague",
    peers: [{ name: "fake", data: peer.local }],
  });
  try {
    const c = collector();
    using _reg = b.register("s", "X", "in", c.deliver);
    const whole = header({}, [42]);
    const cuts = Array.from({ length: 20 }, (_, n) => whole.subarray(0, n));
    peer.send([...cuts, whole], peer.destinations([b.local]));
    await until("the whole datagram", () => c.got.length === 1);
    await until("20 refusals", () => link(b, "fake").rejected_truncated === 20);
    assert.deepEqual(c.got, [{ data: [42], rtcp: false }]);
  } finally {
    await b.close();
    await peer.close();
  }
});

Deno.test("LinkPort refuses a second registration of a channel and a sender to a node it does not know", async () => {
  await using env = await pair();
  using _reg = env.b.register("s", "X", "in", () => {});
  assert.throws(() => env.b.register("s", "X", "in", () => {}), StartError);
  assert.throws(() => env.a.sender("liberec", "s", "X", "in"), /not among the link port's peers \(prague\)/);
  // Once unregistered, the channel can be had again.
  _reg[Symbol.dispose]();
  env.b.register("s", "X", "in", () => {})[Symbol.dispose]();
});

Deno.test("LinkPort.setPeers keeps a moved peer's counters and drops what is sent to a removed one", async () => {
  await using env = await pair();
  const c = collector();
  using _reg = env.b.register("s", "X", "in", c.deliver);
  const send = env.a.sender("prague", "s", "X", "in");
  send(batchOf([1]), false);
  await until("the first datagram", () => c.got.length === 1);
  const moved = openUdp({ host: LO, port: 0 });
  try {
    env.a.setPeers([{ name: "prague", data: moved.local }]);
    send(batchOf([2]), false);
    const got = await moved.receive();
    assert.equal(got?.count, 1);
    assert.equal(link(env.a, "prague").tx_packets, 2, "the count before the move is kept");
  } finally {
    await moved.close();
  }
  env.a.setPeers([]);
  send(batchOf([3], [4]), false);
  assert.deepEqual(env.a.status().links, []);
  env.a.setPeers([{ name: "prague", data: env.b.local }]);
  send(batchOf([5]), false);
  await until("the datagram after the return", () => c.got.length === 2);
  assert.deepEqual(c.got[1].data, [5]);
});

Deno.test("LinkPort.close releases its socket", async () => {
  const a = await LinkPort.open({ bind: { host: LO, port: 0 }, self: "brno", peers: [] });
  const port = a.local.port;
  await a.close();
  let again: UdpSocket | null = null;
  try {
    again = openUdp({ host: LO, port });
    assert.equal(again.local.port, port);
  } finally {
    await again?.close();
  }
});
