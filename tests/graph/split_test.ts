/**
 * A session spread over nodes: the Appendix A program (config/sessions/presentation.dipronn, with the transcoder and
 * the syncers replaced by forwarders, as the report's own tests did) planned as three parts with a placement, each
 * part run as a RunningSession with its own LinkPort on loopback, all in this process: brno (inputs, duplicators,
 * transcoder), prague (syncers, duplicators, the reflectors' VM), pilsen (savers).
 */
import assert from "node:assert/strict";
import { LinkPort } from "../../lib/cluster/link.ts";
import { ManualClock } from "../../lib/core/clock.ts";
import { ErrorList, StartError } from "../../lib/core/errors.ts";
import { DEFAULT_BUDGETS } from "../../lib/graph/budgets.ts";
import type { PartPlacement, SessionPlan } from "../../lib/graph/check.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { RunningSession } from "../../lib/graph/executor.ts";
import { checkProgram } from "../../lib/graph/program.ts";
import { openUdp, openUdpPair } from "../../lib/net/udp.ts";
import { testNode } from "../_support/node.ts";
import { until } from "../_support/until.ts";

const LO = "127.0.0.1";
const FIXTURE = await Deno.readTextFile(
  new URL("../../config/sessions/presentation.dipronn", import.meta.url),
);

const NODE_OF: Record<string, string> = {
  Dup_V: "brno",
  Dup_A: "brno",
  Transcode: "brno",
  Sync_high: "prague",
  Sync_low: "prague",
  Dup_high: "prague",
  Dup_low: "prague",
  Reflector_high: "prague",
  Reflector_low: "prague",
  Saver_high: "pilsen",
  Saver_low: "pilsen",
};
const NODES = ["brno", "prague", "pilsen"];

/** A port p with p + 1 free too (use_RTP binds both), found by binding them and letting go. */
function freePair(): number {
  const [a, b] = openUdpPair(LO);
  const port = a.local.port;
  void a.close();
  void b.close();
  return port;
}

function program(ports = { video: 10000, audio: 10002, high: 12345, low: 12354 }, extra = ""): string {
  return FIXTURE
    .replace("ref=localservice.transcoder;", "ref=localservice.forwarder;")
    .replace(/^\s*(output_format|bitrate|scale|precision) = .*\n/gm, "")
    .replaceAll("ref=localservice.syncer;", "ref=localservice.forwarder;")
    // "(DIPRONN_INPUT(...))": the header comment names the ports too.
    .replace("(DIPRONN_INPUT(10000))", `(DIPRONN_INPUT(${ports.video}))`)
    .replace("(DIPRONN_INPUT(10002))", `(DIPRONN_INPUT(${ports.audio}))`)
    .replace("(DIPRONN_INPUT(12345))", `(DIPRONN_INPUT(${ports.high}))`)
    .replace("(DIPRONN_INPUT(12354))", `(DIPRONN_INPUT(${ports.low}))`)
    .replace(`output_file = "stream_high.dump";`, `output_file = "stream_high.dump";${extra}`);
}

function plan(text: string, self: string, options: { budgets?: typeof DEFAULT_BUDGETS } = {}): SessionPlan {
  const placement: PartPlacement = { self, nodeOf: NODE_OF };
  return checkProgram(text, {
    file: "presentation.dipronn",
    kinds: coreElements(),
    placement,
    node: { budgets: options.budgets ?? { ...DEFAULT_BUDGETS, allowLoopbackOutput: true } },
  });
}

/** The messages of the ErrorList `work` throws, one a line. */
function refused(work: () => unknown): string {
  try {
    work();
  } catch (error) {
    assert.ok(error instanceof ErrorList, `expected an ErrorList, got ${error}`);
    return error.errors.map((e) => e.message).join("\n");
  }
  assert.fail("expected the program to be refused");
}

/** `A.out -> target` for every wire of a part. */
function wiring(p: SessionPlan): string[] {
  return p.aps.flatMap((ap) =>
    ap.outputs.flatMap((o) =>
      o.wires.map((w) =>
        `${ap.name}.${o.name} -> ${
          w.kind === "ap"
            ? `${p.aps[w.node].name}.${p.aps[w.node].inputs[w.input].name}`
            : w.kind === "link"
            ? `link ${w.peer} ${w.ap}.${w.input}`
            : "out"
        }`
      )
    )
  );
}

Deno.test("planSession with a placement plans only the node's APs and turns wires to other nodes into links", () => {
  const text = program();
  const brno = plan(text, "brno");
  assert.deepEqual(brno.aps.map((a) => a.name).sort(), ["Dup_A", "Dup_V", "Transcode"]);
  assert.deepEqual(wiring(brno).sort(), [
    "Dup_A.output1 -> link prague Sync_high.in2",
    "Dup_A.output2 -> link prague Sync_low.in2",
    "Dup_V.output1 -> link prague Sync_high.in1",
    "Dup_V.output2 -> Transcode.in",
    "Transcode.out -> link prague Sync_low.in1",
  ]);
  assert.deepEqual(brno.ports, [10000, 10001, 10002, 10003]);
  assert.deepEqual(brno.vms, []);
  assert.deepEqual(brno.claims, [], "the savers' files are pilsen's");
  assert.deepEqual(brno.placement, { self: "brno", nodeOf: NODE_OF });

  const prague = plan(text, "prague");
  assert.deepEqual(prague.ports, [12345, 12346, 12354, 12355]);
  assert.deepEqual(prague.vms.map((v) => v.name), ["my_VM1"]);
  const sync = prague.aps.find((a) => a.name === "Sync_high")!;
  assert.deepEqual(sync.inputs.map((i) => [i.name, i.linked]), [["in1", true], ["in2", true]]);
  assert.ok(wiring(prague).includes("Dup_high.output1 -> link pilsen Saver_high.in"));
  assert.ok(wiring(prague).includes("Dup_high.output2 -> Reflector_high.in"));
  const dup = prague.aps.find((a) => a.name === "Dup_high")!;
  assert.equal(dup.inputs[0].linked, undefined, "fed on its own node");

  const pilsen = plan(text, "pilsen");
  assert.deepEqual(pilsen.aps.map((a) => a.name).sort(), ["Saver_high", "Saver_low"]);
  assert.deepEqual(pilsen.ports, []);
  assert.deepEqual(pilsen.claims.length, 2);
});

Deno.test("planSession takes the AP parameter node as a pin of any kind, not as the kind's parameter", () => {
  const saver = plan(program(undefined, `\n    node = "pilsen";`), "pilsen").aps.find((a) =>
    a.name === "Saver_high"
  )!;
  assert.equal("node" in saver.params, false);
  // Without a placement too: a pin is no parameter of the saver's.
  const whole = checkProgram(program(undefined, `\n    node = pilsen;`), {
    file: "p.dipronn",
    kinds: coreElements(),
  });
  assert.equal("node" in whole.aps.find((a) => a.name === "Saver_high")!.params, false);
});

Deno.test("planSession refuses a placement that breaks a pin, leaves an AP out, or splits a VM group", () => {
  assert.match(
    refused(
      () => plan(program(undefined, `\n    node = "prague";`), "pilsen"),
    ),
    /Saver_high is pinned to node "prague" but placed on "pilsen"/,
  );
  assert.match(
    refused(
      () =>
        checkProgram(program(), {
          file: "p.dipronn",
          kinds: coreElements(),
          placement: { self: "brno", nodeOf: { ...NODE_OF, Saver_low: "" } },
        }),
    ),
    /Saver_low has no node in the placement/,
  );
  assert.match(
    refused(
      () =>
        checkProgram(program(), {
          file: "p.dipronn",
          kinds: coreElements(),
          placement: { self: "prague", nodeOf: { ...NODE_OF, Reflector_low: "liberec" } },
        }),
    ),
    /VM my_VM1 is placed on "prague" and "liberec": its APs run on one node/,
  );
  assert.match(
    refused(
      () => plan(program(undefined, `\n    node = 7;`), "pilsen"),
    ),
    /node names the node to run on|Saver_high\.node: a node name/,
  );
});

Deno.test("planSession counts link sends and datagrams fed by links against the part's sends per datagram", () => {
  const budgets = { ...DEFAULT_BUDGETS, allowLoopbackOutput: true, maxSendsPerDatagram: 3 };
  // Into V_in: delivered to Dup_V, a link send, Transcode, its link send: 4.
  assert.match(refused(() => plan(program(), "brno", { budgets })), /leads to 4 sends/);
  plan(program(), "brno", { budgets: { ...budgets, maxSendsPerDatagram: 4 } });
  // At prague, datagrams enter by links: into Sync_high.in1, then Dup_high, the saver's link, the reflector: 5.
  assert.match(
    refused(() => plan(program(), "prague", { budgets })),
    /Budget sends per datagram: a datagram into Sync_(high|low)\.in1 \(fed by a link\) leads to 5 sends/,
  );
});

Deno.test("RunningSession refuses to start a part with links on a node without a link port", async () => {
  const node = testNode(new ManualClock(1_000_000));
  await assert.rejects(
    () =>
      RunningSession.start(
        plan(program({ video: freePair(), audio: freePair(), high: 1, low: 3 }), "brno"),
        node,
      ),
    (e) =>
      e instanceof StartError &&
      /part for node brno sends to node prague and this node has no link port/.test(e.message),
  );
});

type Part = { name: string; records?: number };
type LinkStatus = {
  peer: string;
  rx_packets: number;
  tx_packets: number;
  lost: number;
  reordered: number;
  channels: { direction: string; ap: string; input: string; packets: number }[];
};

Deno.test("a session split over three nodes carries every RTP and RTCP datagram from brno's inputs to pilsen's savers", async () => {
  const ports = { video: freePair(), audio: freePair(), high: freePair(), low: freePair() };
  const text = program(ports);
  const clock = new ManualClock(1_000_000);
  const held: { close(): Promise<void> }[] = [];
  const dirs: string[] = [];
  const sessions = new Map<string, RunningSession>();
  const links = new Map<string, LinkPort>();
  try {
    for (const name of NODES) {
      const port = await LinkPort.open({ bind: { host: LO, port: 0 }, self: name, peers: [], clock });
      links.set(name, port);
      held.push(port);
    }
    for (const [name, port] of links) {
      port.setPeers(NODES.filter((n) => n !== name).map((n) => ({ name: n, data: links.get(n)!.local })));
    }
    // Sinks first, so that nothing is sent to a part not yet listening.
    for (const name of [...NODES].reverse()) {
      const dataDir = await Deno.makeTempDir({ prefix: `edgenode_split_${name}_` });
      dirs.push(dataDir);
      const node = testNode(clock, { dataDir, links: links.get(name)! });
      const session = await RunningSession.start(plan(text, name), node);
      sessions.set(name, session);
    }
    const prague = links.get("prague")!;
    assert.equal(prague.status().registered, 4, "Sync_high.in1/in2, Sync_low.in1/in2");

    const sender = openUdp({ host: LO, port: 0 });
    held.push(sender);
    const N = 50;
    const rtp = (seq: number) => {
      const d = new Uint8Array(172);
      d[0] = 0x80;
      d[1] = 96;
      d[2] = seq >> 8;
      d[3] = seq & 0xff;
      return d;
    };
    const rtcp = new Uint8Array([0x80, 200, 0, 6, ...new Uint8Array(24)]);
    const packets = Array.from({ length: N }, (_, i) => rtp(i));
    sender.send(packets, sender.destinations([{ host: LO, port: ports.video }]));
    sender.send(packets, sender.destinations([{ host: LO, port: ports.audio }]));
    sender.send([rtcp, rtcp], sender.destinations([{ host: LO, port: ports.video + 1 }]));

    const savers = () => sessions.get("pilsen")!.status().aps as Part[];
    const want = 2 * N + 2;
    await until(
      `${want} records in each saver`,
      () => savers().every((s) => s.records === want),
    );

    const linksOf = (name: string) => sessions.get(name)!.status().links as LinkStatus[];
    const [brnoOut] = linksOf("brno");
    assert.equal(brnoOut.peer, "prague");
    assert.equal(brnoOut.tx_packets, 4 * N + 4, "two copies of video (and its RTCP) and two of audio");
    assert.deepEqual(
      brnoOut.channels.map((c) => `${c.direction} ${c.ap}.${c.input} ${c.packets}`).sort(),
      [
        `out Sync_high.in1 ${N + 2}`,
        `out Sync_high.in2 ${N}`,
        `out Sync_low.in1 ${N + 2}`,
        `out Sync_low.in2 ${N}`,
      ],
    );
    const pragueLinks = linksOf("prague");
    const fromBrno = pragueLinks.find((l) => l.peer === "brno")!;
    assert.equal(fromBrno.rx_packets, 4 * N + 4);
    assert.equal(fromBrno.lost, 0);
    assert.equal(fromBrno.reordered, 0);
    const toPilsen = pragueLinks.find((l) => l.peer === "pilsen")!;
    assert.equal(toPilsen.tx_packets, 2 * want);
    const [intoPilsen] = linksOf("pilsen");
    assert.equal(intoPilsen.peer, "prague");
    assert.equal(intoPilsen.rx_packets, 2 * want);
    assert.equal(intoPilsen.lost, 0);
    const saverIn = (sessions.get("pilsen")!.status().aps as { name: string; inputs: { from: string }[] }[])
      .find((a) => a.name === "Saver_high")!;
    assert.equal(saverIn.inputs[0].from, "link");

    // Stopping a part gives its channels back.
    await sessions.get("prague")!.stop();
    assert.equal(prague.status().registered, 0);
  } finally {
    for (const s of sessions.values()) await s.stop();
    for (const h of held.reverse()) await h.close();
    for (const d of dirs) await Deno.remove(d, { recursive: true });
  }
});

Deno.test("planSession names the nodes that may feed each linked input, and none for the others", () => {
  const inputsOf = (p: SessionPlan) =>
    Object.fromEntries(
      p.aps.flatMap((ap) => ap.inputs.map((i) => [`${ap.name}.${i.name}`, i.linkedFrom ?? null])),
    );
  assert.deepEqual(inputsOf(plan(program(), "prague")), {
    "Sync_high.in1": ["brno"],
    "Sync_high.in2": ["brno"],
    "Sync_low.in1": ["brno"],
    "Sync_low.in2": ["brno"],
    "Dup_high.in": null,
    "Dup_low.in": null,
    "Reflector_high.in": null,
    "Reflector_low.in": null,
  });
  assert.deepEqual(inputsOf(plan(program(), "pilsen")), {
    "Saver_high.in": ["prague"],
    "Saver_low.in": ["prague"],
  });
});
