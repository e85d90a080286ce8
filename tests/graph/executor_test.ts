/**
 * The executor and the core APs in one process, with the node's clock injected: the player's pacing, the saver's
 * file, the counter's RTP analysis, all-or-nothing start and per-port counters.
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { StartError } from "../../lib/core/errors.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { Registry } from "../../lib/core/registry.ts";
import { defineElement, type ElementKind, type NodeServices } from "../../lib/graph/element.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { RunningSession } from "../../lib/graph/executor.ts";
import { checkProgram } from "../../lib/graph/program.ts";
import { pcapFileHeader, pcapRecordSize, readPcap, writePcapRecord } from "../../lib/media/pcap.ts";
import { openUdp } from "../../lib/net/udp.ts";
import { until } from "../_support/until.ts";

const LO = "127.0.0.1";

function rtp(seq: number): Uint8Array {
  const d = new Uint8Array(20);
  d[0] = 0x80;
  d[1] = 96;
  d[2] = seq >> 8;
  d[3] = seq & 0xff;
  return d;
}

/** A capture with one RTP datagram at each of `timesMs`, sequence numbers `seqs`. */
function capture(timesMs: number[], seqs: number[]): Uint8Array {
  const header = pcapFileHeader();
  const out = new Uint8Array(header.length + timesMs.length * pcapRecordSize(20, false));
  out.set(header);
  let off = header.length;
  timesMs.forEach((t, i) => {
    off = writePcapRecord(out, off, {
      timeUs: 1_700_000_000_000_000 + t * 1000,
      from: { host: "192.0.2.1", port: 4000 },
      to: { host: "192.0.2.2", port: 5004 },
      data: rtp(seqs[i]),
    });
  });
  return out;
}

async function services(clock = new ManualClock(1_000_000)) {
  const dataDir = await Deno.makeTempDir({ prefix: "edgenode_graph_" });
  const logs: string[] = [];
  const node: NodeServices = {
    clock,
    logger: new Logger({ level: "debug", clock, sink: (l) => logs.push(l) }),
    metrics: new MetricsRegistry(),
    dataDir,
    host: LO,
    udp: {},
  };
  return {
    node,
    clock,
    logs,
    dataDir,
    [Symbol.asyncDispose]: () => Deno.remove(dataDir, { recursive: true }),
  };
}

function start(text: string, node: NodeServices, kinds: Registry<ElementKind> = coreElements()) {
  return RunningSession.start(checkProgram(text, { file: "t.dipronn", kinds }), node);
}

/** Lets the player's file reads finish (I/O, not time: the clock does not move). */
async function settle(until: () => boolean, turns = 500): Promise<void> {
  for (let i = 0; i < turns && !until(); i++) await new Promise((r) => setTimeout(r, 0));
}

type ApStatus = {
  name: string;
  played?: number;
  state?: string;
  records?: number;
  counted?: { rtp: Record<string, number> };
};
const ap = (s: RunningSession, name: string) => (s.status().aps as ApStatus[]).find((a) => a.name === name)!;

const PLAY = (extra = "") =>
  `Project play;
{ AP name="P" ref=localservice.player;
    outputs = out(C.in);
    input_file = "in.pcap";
    ${extra}
}
{ AP name="C" ref=localservice.counter;
    inputs = in;
    outputs = out(S.in);
}
{ AP name="S" ref=localservice.saver;
    inputs = in;
    output_file = "out.pcap";
}
`;

Deno.test("player replays a capture at its recorded pacing on the node's clock", async () => {
  await using env = await services();
  await Deno.writeFile(`${env.dataDir}/in.pcap`, capture([0, 100, 250], [1, 2, 3]));
  const session = await start(PLAY(), env.node);
  try {
    await settle(() => ap(session, "P").played === 1);
    assert.equal(ap(session, "P").played, 1);
    env.clock.advance(99);
    await settle(() => false, 20);
    assert.equal(ap(session, "P").played, 1, "nothing before its time");
    env.clock.advance(1);
    await settle(() => ap(session, "P").played === 2);
    assert.equal(ap(session, "P").played, 2);
    env.clock.advance(150);
    await settle(() => ap(session, "P").state === "finished");
    assert.equal(ap(session, "P").played, 3);
    assert.equal(ap(session, "P").state, "finished");
  } finally {
    await session.stop();
  }
});

Deno.test("player speed and loop replay faster and again", async () => {
  await using env = await services();
  await Deno.writeFile(`${env.dataDir}/in.pcap`, capture([0, 100], [1, 2]));
  const session = await start(PLAY("speed = 2; loop = true;"), env.node);
  try {
    await settle(() => ap(session, "P").played === 1);
    env.clock.advance(50); // 100 ms of recording at speed 2
    await settle(() => ap(session, "P").played === 3);
    assert.equal(ap(session, "P").played, 3, "second record, then the loop's first");
  } finally {
    await session.stop();
  }
});

Deno.test("saver writes every datagram with its arrival time and counter sees the loss", async () => {
  await using env = await services();
  await Deno.writeFile(`${env.dataDir}/in.pcap`, capture([0, 0, 0, 0], [10, 11, 13, 12]));
  const session = await start(PLAY(), env.node);
  await settle(() => ap(session, "P").state === "finished");
  const rtpStats = ap(session, "C").counted!.rtp;
  assert.equal(rtpStats.received, 4);
  assert.equal(rtpStats.lost, 0);
  assert.equal(rtpStats.reordered, 1);
  assert.equal(ap(session, "S").records, 4);
  await session.stop();
  const saved = readPcap(await Deno.readFile(`${env.dataDir}/out.pcap`));
  assert.deepEqual(saved.records.map((r) => (r.data[2] << 8) | r.data[3]), [10, 11, 13, 12]);
  assert.deepEqual(saved.records.map((r) => r.from), Array(4).fill({ host: "192.0.2.1", port: 4000 }));
  assert.ok(
    saved.records.every((r) => Math.abs(r.timeUs - 1_000_000_000) < 1),
    "arrival time from the clock",
  );
});

Deno.test("saver flushes at least once a second, so a crash loses at most the last second", async () => {
  await using env = await services();
  const port = freePort();
  const session = await start(
    `Project rec;\n{ AP name="S" ref=localservice.saver; inputs = in(DIPRONN_INPUT(${port})); output_file = "x.pcap"; }\n`,
    env.node,
  );
  const tx = openUdp({ host: LO, port: 0 });
  try {
    tx.send([rtp(1), rtp(2)], tx.destinations([{ host: LO, port }]));
    await settle(() => ap(session, "S").records === 2);
    const size = async () => (await Deno.stat(`${env.dataDir}/x.pcap`)).size;
    // The header is written at start; the records wait for the flush (the writer runs off the packet path).
    await until("the file header", async () => (await size()) === 24);
    assert.equal(await size(), 24, "only the file header before the flush");
    env.clock.advance(1000);
    await until("the flush", async () => (await size()) === 24 + 2 * pcapRecordSize(20, false));
  } finally {
    await tx.close();
    await session.stop();
  }
});

Deno.test("RunningSession.start names the DIPRONN_INPUT whose port is in use, at its place in the program", async () => {
  await using env = await services();
  const taken = openUdp({ host: LO, port: 0 });
  const port = taken.local.port;
  const text = `Project busy;
{ AP name="F" ref=localservice.forwarder;
  inputs = in(DIPRONN_INPUT(${port})); outputs = out(DIPRONN_OUTPUT("${LO}:9")); }
`;
  try {
    await assert.rejects(start(text, env.node), (e: Error) => {
      assert.ok(e instanceof StartError);
      assert.match(
        e.message,
        new RegExp(
          `^Cannot start session busy: F: input in, DIPRONN_INPUT\\(${port}\\) \\(t\\.dipronn:3:15\\): .*in use`,
        ),
      );
      return true;
    });
  } finally {
    await taken.close();
  }
});

Deno.test("RunningSession.start is all or nothing: a saver that may not overwrite leaves no port bound", async () => {
  await using env = await services();
  await Deno.writeTextFile(`${env.dataDir}/taken.pcap`, "precious");
  const port = freePort();
  const text = `Project clash;
{ AP name="D" ref=localservice.duplicator; inputs = in(DIPRONN_INPUT(${port})); outputs = a(S.in), b(T.in); }
{ AP name="S" ref=localservice.saver; inputs = in; output_file = "fresh.pcap"; }
{ AP name="T" ref=localservice.saver; inputs = in; output_file = "taken.pcap"; }
`;
  await assert.rejects(start(text, env.node), (e: Error) => {
    assert.ok(e instanceof StartError);
    assert.match(
      e.message,
      /Cannot start session clash: T \(t\.dipronn:4:1\): Cannot write .*taken\.pcap: the file exists/,
    );
    return true;
  });
  assert.equal(await Deno.readTextFile(`${env.dataDir}/taken.pcap`), "precious");
  const again = openUdp({ host: LO, port });
  await again.close();
  assert.equal(env.node.metrics.render().includes("session_"), false, "no counters left behind");
});

Deno.test("RunningSession counts per port and keeps going when an AP fails on a batch", async () => {
  await using env = await services();
  let calls = 0;
  const flaky = defineElement({
    name: "test.flaky",
    description: "throws on its first batch",
    ports: { inputs: { min: 1, max: 1 }, outputs: { min: 1, max: 1 } },
    params: {},
    create: ({ outputs }) => ({
      push(_i, batch, rtcp) {
        if (calls++ === 0) throw new Error("boom");
        outputs[0].emit(batch, rtcp);
      },
    }),
  });
  const kinds = coreElements().register(flaky as ElementKind);
  const port = freePort();
  const session = await start(
    `Project flaky;
{ AP name="F" ref=test.flaky; inputs = in(DIPRONN_INPUT(${port})); outputs = out(C.in); }
{ AP name="C" ref=localservice.counter; inputs = in; }
`,
    env.node,
    kinds,
  );
  const tx = openUdp({ host: LO, port: 0 });
  try {
    const to = tx.destinations([{ host: LO, port }]);
    tx.send([rtp(1)], to);
    await settle(() => calls === 1);
    tx.send([rtp(2), rtp(3)], to);
    await settle(() => (ap(session, "C").counted?.rtp.received ?? 0) === 2);
    const f = (session.status().aps as { name: string; errors: number; inputs: { packets: number }[] }[])
      .find((a) => a.name === "F")!;
    assert.equal(f.errors, 1);
    assert.equal(f.inputs[0].packets, 3);
    assert.equal(ap(session, "C").counted!.rtp.received, 2);
    assert.match(
      env.node.metrics.render(),
      /edgenode_session_port_packets_total\{session="flaky",ap="C",kind="localservice.counter",port="in",direction="in"\} 2/,
    );
    assert.ok(
      env.logs.some((l) => l.includes('msg="active program failed on a batch"') && l.includes("ap=F")),
    );
  } finally {
    await tx.close();
    await session.stop();
  }
});

function freePort(): number {
  const s = Deno.listenDatagram({ transport: "udp", hostname: LO, port: 0 });
  const port = (s.addr as Deno.NetAddr).port;
  s.close();
  return port;
}
