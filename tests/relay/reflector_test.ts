/** The reflector over real loopback sockets in this process, with the clock injected for timeouts. */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { openUdp, type UdpSocket } from "../../lib/net/udp.ts";
import { JOIN_MIN_BYTES } from "../../lib/relay/participants.ts";
import { checkMembershipReport, Reflector, type ReflectorSpec } from "../../lib/relay/reflector.ts";
import { poll, until } from "../_support/until.ts";
import { collect } from "../net/udp_contract.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const LO = { host: "127.0.0.1", port: 0 };

function rtp(seq: number, size = 40): Uint8Array {
  const d = new Uint8Array(size);
  d[0] = 0x80;
  d[1] = 96;
  d[2] = seq >> 8;
  d[3] = seq & 0xff;
  return d;
}

/** A reflector on loopback sockets; `thread`: its data paths on threads of their own (as the relay role starts it). */
async function open(spec: Partial<ReflectorSpec>, rtcp: boolean, thread: boolean) {
  const clock = new ManualClock(Date.now());
  const metrics = new MetricsRegistry();
  const lines: string[] = [];
  const sockets = {
    data: openUdp(LO),
    registration: openUdp(LO),
    ...(rtcp ? { dataRtcp: openUdp(LO), registrationRtcp: openUdp(LO) } : {}),
  };
  const reflector =
    await (thread
      ? Reflector.start
      : (...a: ConstructorParameters<typeof Reflector>) => Promise.resolve(new Reflector(...a)))(
        {
          name: "r",
          registration: LO,
          use_rtp: rtcp,
          timeout: 30_000,
          max_participants: 100,
          max_per_address: 4,
          allow: ["loopback"],
          participants: [],
          ...spec,
        },
        sockets,
        { clock, metrics, logger: new Logger({ level: "debug", clock, sink: (l) => lines.push(l) }) },
      );
  assert.equal(reflector.threads.media, thread, "the media path runs where asked");
  const source = openUdp(LO);
  const opened: UdpSocket[] = [source];
  const client = () => {
    const s = openUdp(LO);
    opened.push(s);
    return s;
  };
  return {
    clock,
    metrics,
    reflector,
    sockets,
    source,
    client,
    /** Sends datagrams to the data port (or its RTCP twin). */
    feed(packets: Uint8Array[], to = sockets.data) {
      source.send(packets, source.destinations([to.local]));
    },
    async [Symbol.asyncDispose]() {
      await reflector.close();
      for (const s of opened) await s.close();
    },
  };
}

/** The whole join from `client`, as any participant program does it. */
async function join(client: UdpSocket, registration: UdpSocket): Promise<string> {
  const to = client.destinations([registration.local]);
  client.send([enc.encode("EDGENODE-JOIN".padEnd(JOIN_MIN_BYTES))], to);
  const [challenge] = await collect(client, 1);
  const nonce = dec.decode(challenge.data).split(" ")[1];
  assert.deepEqual(challenge.from, registration.local, "the challenge comes from the registration port");
  client.send([enc.encode(`EDGENODE-CONFIRM ${nonce}`)], to);
  const [welcome] = await collect(client, 1);
  assert.match(dec.decode(welcome.data), /^EDGENODE-WELCOME \d+$/);
  return nonce;
}

for (const thread of [false, true]) {
  const on = thread ? " (data paths on threads)" : "";
  const setup = (spec: Partial<ReflectorSpec> = {}, rtcp = false) => open(spec, rtcp, thread);

  Deno.test(`Reflector sends the stream to every joined participant, from the registration port${on}`, async () => {
    await using r = await setup();
    const a = r.client();
    const b = r.client();
    await join(a, r.sockets.registration);
    await join(b, r.sockets.registration);
    r.feed([rtp(1), rtp(2), rtp(3)]);
    for (const p of [a, b]) {
      const got = await collect(p, 3);
      assert.deepEqual(got.map((g) => g.data[3]), [1, 2, 3]);
      for (const g of got) assert.deepEqual(g.from, r.sockets.registration.local);
    }
    assert.equal(r.reflector.table.size, 2);
  });

  Deno.test(`Reflector sends nothing to an address that sent a JOIN but never proved it receives${on}`, async () => {
    await using r = await setup();
    const honest = r.client();
    const forged = r.client();
    await join(honest, r.sockets.registration);
    // A JOIN "from" an address that cannot answer: the challenge goes to it, the CONFIRM never comes.
    forged.send(
      [enc.encode("EDGENODE-JOIN".padEnd(JOIN_MIN_BYTES))],
      forged.destinations([r.sockets.registration.local]),
    );
    const [challenge] = await collect(forged, 1);
    assert.ok(challenge.data.length <= JOIN_MIN_BYTES, "never more than the request to an unproven address");
    r.feed([rtp(7)]);
    await collect(honest, 1);
    // The reflector sent to all its participants at once; a marker sent after would come after its datagram.
    r.source.send([enc.encode("marker")], r.source.destinations([forged.local]));
    const [first] = await collect(forged, 1);
    assert.equal(dec.decode(first.data), "marker", "the unproven address got no data");
  });

  Deno.test(`Reflector drops a silent participant after the timeout on its clock${on}`, async () => {
    await using r = await setup({ timeout: 5_000 });
    const a = r.client();
    await join(a, r.sockets.registration);
    r.clock.advance(4_000);
    assert.equal(r.reflector.table.size, 1);
    r.clock.advance(2_000);
    assert.equal(r.reflector.table.size, 0);
    assert.match(r.metrics.render(), /^edgenode_reflector_expired_total\{reflector="r"\} 1$/m);
  });

  Deno.test(`Reflector counts and drops malformed datagrams on every port and keeps going${on}`, async () => {
    await using r = await setup({}, true);
    const a = r.client();
    await join(a, r.sockets.registration);
    // Registration ports: noise, a short JOIN, a bad nonce.
    for (const reg of [r.sockets.registration, r.sockets.registrationRtcp!]) {
      a.send(
        [
          new Uint8Array([1, 2, 3]),
          enc.encode("EDGENODE-JOIN"),
          enc.encode(`EDGENODE-CONFIRM ${"f".repeat(32)}`),
        ],
        a.destinations([reg.local]),
      );
    }
    // Data ports: one non-RTP datagram among RTP, one non-RTCP among RTCP.
    r.feed([rtp(1), new Uint8Array([0, 1, 2]), rtp(2)]);
    const rr = new Uint8Array(8);
    rr.set([0x80, 201, 0, 1]);
    r.feed([new Uint8Array(20), rr], r.sockets.dataRtcp!);
    // A receiver report from the participant on the RTCP registration port is expected traffic, not noise.
    a.send([rr], a.destinations([r.sockets.registrationRtcp!.local]));
    const media = await collect(a, 2);
    assert.deepEqual(media.map((g) => g.data[3]), [1, 2]);
    // A thread counts after it has sent, so the count may trail the datagrams a moment.
    const s = await poll("2 malformed data datagrams counted", () => {
      const s = r.reflector.status();
      return s.malformed_data === 2 && s.malformed_control === 4 && s.participant_rtcp === 1 ? s : null;
    });
    assert.equal(s.malformed_data, 2);
    assert.equal(s.malformed_control, 4, "noise and short JOIN on both registration ports");
    assert.equal(s.bad_nonce, 2);
    assert.equal(s.participant_rtcp, 1);
    assert.equal(r.reflector.table.size, 1, "the participant is still there");
  });

  Deno.test(`Reflector: junk on the registration port never copies the participant list${on}`, async () => {
    await using r = await setup();
    const a = r.client();
    await join(a, r.sockets.registration);
    const table = r.reflector.table;
    const list = table.list.bind(table);
    let copies = 0;
    table.list = () => {
      copies++;
      return list();
    };
    try {
      const noise = Array.from({ length: 200 }, (_, i) => new Uint8Array([i & 0xff, 1, 2]));
      a.send(noise, a.destinations([r.sockets.registration.local]));
      // Read from the table itself: the reflector's status builds the list (as it must, to show it).
      const before = table.stats.malformed;
      await poll("the noise counted", () => table.stats.malformed - before === 200 || null);
      assert.equal(copies, 0, "no datagram that changed nothing built the list");
    } finally {
      table.list = list;
    }
  });

  Deno.test(`Reflector with use_rtp sends RTCP from registration port + 1 to each participant's port + 1${on}`, async () => {
    await using r = await setup({}, true);
    // The participant receives RTP on p and RTCP on p + 1, as RTP receivers do.
    const rtpSock = r.client();
    const rtcpSock = openUdp({ host: "127.0.0.1", port: rtpSock.local.port + 1 });
    try {
      await join(rtpSock, r.sockets.registration);
      const sr = new Uint8Array(28);
      sr.set([0x80, 200, 0, 6]);
      r.feed([sr], r.sockets.dataRtcp!);
      const [got] = await collect(rtcpSock, 1);
      assert.equal(got.data[1], 200);
      assert.deepEqual(got.from, r.sockets.registrationRtcp!.local);
    } finally {
      await rtcpSock.close();
    }
  });

  Deno.test(`Reflector enforces its participant limit on joins${on}`, async () => {
    await using r = await setup({ max_participants: 1 });
    await join(r.client(), r.sockets.registration);
    const late = r.client();
    late.send(
      [enc.encode("EDGENODE-JOIN".padEnd(JOIN_MIN_BYTES))],
      late.destinations([r.sockets.registration.local]),
    );
    // The refusal is counted in the same turn a challenge would have been sent: a marker after it comes first.
    await until("the JOIN refused", () => r.reflector.status().refused_limit === 1);
    r.source.send([enc.encode("marker")], r.source.destinations([late.local]));
    const [first] = await collect(late, 1);
    assert.equal(dec.decode(first.data), "marker", "a refused JOIN gets no challenge");
  });

  Deno.test(`Reflector counts what each participant was sent in /status, across joins of others, and keeps totals in /metrics${on}`, async () => {
    await using r = await setup();
    const a = r.client();
    const b = r.client();
    const keyA = `127.0.0.1:${a.local.port}`;
    const keyB = `127.0.0.1:${b.local.port}`;
    const sentTo = (key: string) =>
      (r.reflector.status().participants as { address: string; sent: number }[]).find((p) =>
        p.address === key
      )
        ?.sent;

    await join(a, r.sockets.registration);
    r.feed([rtp(1), rtp(2)]);
    await collect(a, 2);
    await join(b, r.sockets.registration); // the destinations are rebuilt: A's tally must survive
    r.feed([rtp(3)]);
    await collect(a, 1);
    await collect(b, 1);
    await until("the counts of both participants", () => sentTo(keyA) === 3 && sentTo(keyB) === 1);
    const metrics = r.metrics.render();
    assert.doesNotMatch(metrics, /participant="/, "no series per participant in /metrics");
    assert.match(metrics, /^edgenode_reflector_participants\{reflector="r"\} 2$/m);
    assert.match(
      metrics,
      /^edgenode_reflector_socket_tx_packets_total\{reflector="r",port="registration"\} [1-9]\d*$/m,
    );
  });

  Deno.test(`Reflector sends on only data from allow_sources, never an empty datagram, and counts both${on}`, async () => {
    await using r = await setup({ allow_sources: ["127.0.0.1/32"] });
    const a = r.client();
    await join(a, r.sockets.registration);
    const outsider = r.client(); // bound to 127.0.0.1 too: the list is checked with 127.0.0.2
    const stranger = openUdp({ host: "127.0.0.2", port: 0 });
    try {
      stranger.send([rtp(9)], stranger.destinations([r.sockets.data.local]));
      await until("the stranger's datagram counted", () => r.reflector.status().dropped_denied === 1);
      r.feed([new Uint8Array(0), rtp(1)]);
      outsider.send([rtp(2)], outsider.destinations([r.sockets.data.local]));
      const got = await collect(a, 2);
      assert.deepEqual(
        got.map((g) => g.data.length ? g.data[3] : -1),
        [1, 2],
        "no empty datagram, no stranger's",
      );
      const s = await poll("the empty datagram counted", () => {
        const s = r.reflector.status();
        return s.dropped_empty === 1 ? s : null;
      });
      assert.equal(s.dropped_denied, 1);
      assert.deepEqual(s.allow_sources, ["127.0.0.1/32"]);
      assert.match(r.metrics.render(), /^edgenode_reflector_dropped_denied_total\{reflector="r"\} 1$/m);
    } finally {
      await stranger.close();
    }
  });
}

Deno.test("checkMembershipReport keeps numbers, IP endpoints the deny list allows and at most the limit", () => {
  const p = (host: unknown, port: unknown) => ({
    endpoint: { host, port },
    origin: "join",
    joinedAt: 1,
    lastSeen: 2,
  });
  const report = checkMembershipReport({
    stats: { joins: 3, confirms: "many", participant_rtcp: 2 },
    participants: [
      p("192.0.2.1", 4000),
      p("192.0.2.1", 4000),
      p("127.0.0.1", 4000),
      p("example.org", 4000),
      p("192.0.2.2", 70000),
      null,
      p("2001:db8::1", 5000),
      p("192.0.2.3", 6000),
    ],
  }, { max: 7, allow: [] });
  assert.ok(report);
  assert.equal(report.stats.joins, 3);
  assert.equal(report.stats.confirms, 0);
  assert.equal(report.stats.participant_rtcp, 2);
  assert.deepEqual(report.participants.map((x) => `${x.endpoint.host} ${x.endpoint.port}`), [
    "192.0.2.1 4000",
    "2001:db8::1 5000",
  ]);
  assert.equal(checkMembershipReport("nonsense", { max: 1, allow: [] }), null);
  const loopback = checkMembershipReport({ stats: {}, participants: [p("127.0.0.1", 4000)] }, {
    max: 1,
    allow: ["loopback"],
  });
  assert.equal(loopback?.participants.length, 1);
});
