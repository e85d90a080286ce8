/**
 * VM groups in their own isolates, with real workers (tests/graph/_vm_worker.ts: the core kinds plus the test kinds
 * of _vm_kinds.ts; _vm_fake_worker.ts plays an untrusted worker). A worker runs on real time, so these tests wait for
 * what crosses isolates, always within a bounded time, and ask for fresh counters with `refresh()` rather than
 * waiting for the next snapshot. The deadlines the main isolate keeps run on a ManualClock where a test is about
 * them. Every test checks at its end that each worker it started was terminated (Deno's sanitizers do not see
 * workers).
 */
import assert from "node:assert/strict";
import { ManualClock, systemClock } from "../../lib/core/clock.ts";
import { StartError } from "../../lib/core/errors.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import type { ElementKind, NodeServices } from "../../lib/graph/element.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { type ExecutorOptions, RunningSession } from "../../lib/graph/executor.ts";
import { checkProgram } from "../../lib/graph/program.ts";
import { vmAccess } from "../../lib/graph/vm/group.ts";
import { LINK_LIMIT_BYTES } from "../../lib/graph/vm/protocol.ts";
import { pcapFileHeader, pcapRecordSize, readPcap, writePcapRecord } from "../../lib/media/pcap.ts";
import { openUdp, type UdpSocket } from "../../lib/net/udp.ts";
import { until } from "../_support/until.ts";
import { BURST_BATCHES, BURST_DATAGRAM_BYTES, BURST_DATAGRAMS, MARK, withTestKinds } from "./_vm_kinds.ts";

const LO = "127.0.0.1";
const WORKER = new URL("./_vm_worker.ts", import.meta.url);
const FAKE_WORKER = new URL("./_vm_fake_worker.ts", import.meta.url);

/** Counts the workers started until `restore()`, and which of them were terminated since. */
function trackWorkers() {
  const Original = globalThis.Worker;
  const live = new Set<Worker>();
  globalThis.Worker = class extends Original {
    constructor(...args: ConstructorParameters<typeof Worker>) {
      super(...args);
      live.add(this);
    }
    override terminate(): void {
      live.delete(this);
      super.terminate();
    }
  };
  return { live, restore: () => void (globalThis.Worker = Original) };
}

async function services() {
  const dataDir = await Deno.makeTempDir({ prefix: "edgenode_vm_" });
  const logs: string[] = [];
  const node: NodeServices = {
    clock: systemClock,
    logger: new Logger({ level: "debug", clock: systemClock, sink: (l) => logs.push(l) }),
    metrics: new MetricsRegistry(),
    dataDir,
    host: LO,
    udp: {},
  };
  const workers = trackWorkers();
  return {
    node,
    logs,
    dataDir,
    async [Symbol.asyncDispose]() {
      workers.restore();
      await Deno.remove(dataDir, { recursive: true });
      assert.equal(workers.live.size, 0, "every worker the test started was terminated");
    },
  };
}

function start(
  text: string,
  node: NodeServices,
  options: ExecutorOptions = {},
) {
  const plan = checkProgram(text, { file: "vm.dipronn", kinds: withTestKinds(coreElements()) });
  return RunningSession.start(plan, node, { workerUrl: WORKER, ...options });
}

type PortStatus = { name: string; packets: number; bytes: number };
type ApStatus = {
  name: string;
  vm: string | null;
  inputs: PortStatus[];
  outputs: PortStatus[];
  errors: number;
  [key: string]: unknown;
};
type VmStatus = { name: string; state: string; error?: string; isolate: string; [key: string]: unknown };
const aps = (s: RunningSession) => s.status().aps as ApStatus[];
const ap = (s: RunningSession, name: string) => aps(s).find((a) => a.name === name)!;
const vm = (s: RunningSession, name: string) => (s.status().vms as VmStatus[]).find((v) => v.name === name)!;

function freePort(): number {
  const s = Deno.listenDatagram({ transport: "udp", hostname: LO, port: 0 });
  const port = (s.addr as Deno.NetAddr).port;
  s.close();
  return port;
}

/** Binding works again: nothing holds the port. */
function assertFree(port: number): void {
  const s = Deno.listenDatagram({ transport: "udp", hostname: LO, port });
  s.close();
}

function canBind(port: number): boolean {
  try {
    assertFree(port);
    return true;
  } catch {
    return false;
  }
}

function numbered(seq: number): Uint8Array {
  const d = new Uint8Array(64);
  new DataView(d.buffer).setUint32(0, seq);
  return d;
}

/** A UDP receiver that keeps the sequence numbers of what arrives, in order. */
class Sink {
  readonly seqs: number[] = [];
  readonly #loop: Promise<void>;
  constructor(readonly socket: UdpSocket = openUdp({ host: LO, port: 0 })) {
    this.#loop = (async () => {
      for (;;) {
        const batch = await this.socket.receive();
        if (!batch) return;
        for (let i = 0; i < batch.count; i++) {
          const d = batch.data(i);
          this.seqs.push(new DataView(d.buffer, d.byteOffset).getUint32(0));
        }
      }
    })();
  }
  get port(): number {
    return this.socket.local.port;
  }
  async close(): Promise<void> {
    await this.socket.close();
    await this.#loop;
  }
}

async function send(port: number, count: number, batch = 50): Promise<void> {
  const tx = openUdp({ host: LO, port: 0 });
  try {
    const to = tx.destinations([{ host: LO, port }]);
    for (let seq = 0; seq < count; seq += batch) {
      tx.send(Array.from({ length: Math.min(batch, count - seq) }, (_, i) => numbered(seq + i)), to);
      await new Promise((r) => setTimeout(r, 1));
    }
  } finally {
    await tx.close();
  }
}

Deno.test("RunningSession runs a VM group's APs in a worker isolate that does not see the main isolate's globals", async () => {
  await using env = await services();
  const globals = globalThis as Record<string, unknown>;
  globals[MARK] = "main isolate";
  const port = freePort();
  const session = await start(
    `Project isolated;
{ AP name="Outside" ref=test.isolate; inputs = in(DIPRONN_INPUT(${port})); outputs = out(Inside.in); }
{ VM name="my_VM1" ref=my_VM1_image;
    { AP name="Inside" ref=test.isolate; inputs = in; }
}
`,
    env.node,
  );
  try {
    await session.refresh();
    assert.deepEqual(ap(session, "Outside").isolate, { mark: "main isolate", scope: "Window" });
    assert.deepEqual(ap(session, "Inside").isolate, { mark: null, scope: "DedicatedWorkerGlobalScope" });
    assert.equal(ap(session, "Inside").vm, "my_VM1");
    const v = vm(session, "my_VM1");
    assert.equal(v.state, "running");
    assert.equal(v.isolate, "worker");
    assert.deepEqual(v.aps, ["Inside"]);
  } finally {
    delete globals[MARK];
    await session.stop();
  }
  assert.equal(vm(session, "my_VM1").state, "stopped");
});

Deno.test("RunningSession passes every datagram in order through forwarders in two VM groups and back", async () => {
  await using env = await services();
  const sink = new Sink();
  const input = freePort();
  const N = 3000;
  const session = await start(
    `Project chain;
{ AP name="F0" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${input})); outputs = out(F1.in); }
{ VM name="vm_a" ref=image_a;
    { AP name="F1" ref=localservice.forwarder; inputs = in; outputs = out(F2.in); }
    { AP name="F2" ref=localservice.forwarder; inputs = in; outputs = out(F3.in); }
}
{ VM name="vm_b" ref=image_b;
    { AP name="F3" ref=localservice.forwarder; inputs = in; outputs = out(F4.in); }
}
{ AP name="F4" ref=localservice.forwarder; inputs = in; outputs = out(DIPRONN_OUTPUT("${LO}:${sink.port}")); }
`,
    env.node,
  );
  try {
    await send(input, N);
    await until("every datagram at the sink", () => sink.seqs.length >= N);
    assert.deepEqual(sink.seqs, Array.from({ length: N }, (_, i) => i), "all of them, in order");
    await session.refresh();
    for (const name of ["F0", "F1", "F2", "F3", "F4"]) {
      const a = ap(session, name);
      assert.equal(a.inputs[0].packets, N, `${name} in`);
      assert.equal(a.outputs[0].packets, N, `${name} out`);
      assert.equal(a.inputs[0].bytes, N * 64, `${name} bytes`);
    }
    assert.match(
      env.node.metrics.render(),
      /edgenode_session_port_packets_total\{session="chain",ap="F2",kind="localservice.forwarder",port="out",direction="out"\} 3000/,
    );
    assert.match(env.node.metrics.render(), /edgenode_session_vm_up\{session="chain",vm="vm_b"\} 1/);
  } finally {
    await session.stop();
    await sink.close();
  }
  assert.doesNotMatch(env.node.metrics.render(), /session="chain"/, "no series left behind");
});

Deno.test("a saver in a VM group writes only in the data directory, and stop flushes it and reports it", async () => {
  await using env = await services();
  const input = freePort();
  const N = 500;
  // No periodic snapshot comes during the test: what /status shows of the saver after stop is from the final one.
  const session = await start(
    `Project rec;
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${input})); outputs = out(Save.in); }
{ VM name="recorder" ref=img;
    { AP name="Save" ref=localservice.saver; inputs = in; output_file = "rec.pcap"; }
}
`,
    env.node,
    { snapshotMs: 3_600_000 },
  );
  try {
    assert.equal(ap(session, "Save").records, 0, "the snapshot taken at start");
    await send(input, N);
    // Counted in the main isolate as they are posted; messages keep their order, so the saver has them before stop.
    await until("every datagram to be posted to the VM", () => ap(session, "In").outputs[0].packets === N);
    assert.deepEqual(vm(session, "recorder").permissions, {
      net: false,
      ffi: false,
      read: [env.dataDir],
      write: [env.dataDir],
    });
  } finally {
    await session.stop();
  }
  // Written at stop (the saver's buffer was not due for a flush), and reported by the final snapshot only.
  const saved = readPcap(await Deno.readFile(`${env.dataDir}/rec.pcap`));
  assert.equal(saved.records.length, N);
  assert.equal(ap(session, "Save").records, N);
  assert.equal(ap(session, "Save").bytes, (await Deno.stat(`${env.dataDir}/rec.pcap`)).size);
  assert.equal(vm(session, "recorder").state, "stopped");
  assert.equal(vm(session, "recorder").error, undefined);
});

Deno.test("a VM group's worker gets only what its kinds need", async () => {
  await using env = await services();
  const outside = await Deno.makeTempDir({ prefix: "edgenode_vm_secret_" });
  const secret = `${outside}/secret.txt`;
  await Deno.writeTextFile(secret, "not for VMs");
  const session = await start(
    `Project access;
{ AP name="Main" ref=test.access; inputs = in(DIPRONN_INPUT(${freePort()})); file = "${secret}"; outputs = out(Plain.in); }
{ VM name="plain" ref=img;
    { AP name="Plain" ref=test.access; inputs = in; file = "${secret}"; outputs = out(Fwd.in); }
    { AP name="Fwd" ref=localservice.forwarder; inputs = in; outputs = out(Saving.in); }
}
{ VM name="saving" ref=img;
    { AP name="Saving" ref=test.access; inputs = in; file = "${secret}"; outputs = out(Save.in); }
    { AP name="Save" ref=localservice.saver; inputs = in; output_file = "x.pcap"; }
}
`,
    env.node,
  );
  // Deno reports a permission a worker was not given as "prompt", never "denied"; under --no-prompt (every task
  // passes it) that means any use fails at once with NotCapable, which each probe also tries.
  const tries = ["try_write_outside", "try_net", "try_ffi", "try_env", "try_run"];
  try {
    await session.refresh();
    const access = (name: string) => ap(session, name).access as Record<string, string>;
    assert.equal(access("Main").read_file, "read", "the main isolate holds the process's permissions");
    assert.equal(access("Main").read_any, "granted");
    for (const what of [...tries, "try_write_data_dir"]) {
      assert.equal(access("Main")[what], "done", `main: ${what}`);
    }

    // Only forwarders and the probe: nothing at all.
    assert.equal(access("Plain").read_file, "NotCapable");
    for (
      const what of ["read_any", "read_data_dir", "write_any", "write_data_dir", "net", "ffi", "env", "run"]
    ) {
      assert.equal(access("Plain")[what], "prompt", `plain VM: ${what}`);
    }
    for (const what of [...tries, "try_write_data_dir"]) {
      assert.equal(access("Plain")[what], "NotCapable", `plain VM: ${what}`);
    }
    // Beside a saver: the data directory, and nothing outside it.
    assert.equal(access("Saving").read_file, "NotCapable");
    assert.equal(access("Saving").read_data_dir, "granted");
    assert.equal(access("Saving").write_data_dir, "granted");
    assert.equal(access("Saving").try_write_data_dir, "done");
    for (const what of ["read_any", "write_any", "net", "ffi", "env", "run"]) {
      assert.equal(access("Saving")[what], "prompt", `saving VM: ${what}`);
    }
    for (const what of tries) assert.equal(access("Saving")[what], "NotCapable", `saving VM: ${what}`);
    assert.deepEqual(vm(session, "plain").permissions, { net: false, ffi: false, read: false, write: false });
  } finally {
    await session.stop();
    await Deno.remove(outside, { recursive: true });
  }
});

Deno.test("vmAccess grants net to no core kind (a reflector's sockets stay in the main isolate), never FFI, files only in the data directory", () => {
  const kinds = coreElements();
  const k = (...names: string[]) => names.map((n) => kinds.get(n) as ElementKind);
  const node = (impl?: "auto" | "fast" | "portable") =>
    ({ dataDir: "/var/lib/edgenode", udp: { impl } }) as unknown as NodeServices;
  const none = vmAccess(
    k("localservice.forwarder", "localservice.duplicator", "localservice.counter"),
    node(),
  );
  assert.deepEqual(
    [none.permissions.net, none.permissions.ffi, none.permissions.read, none.permissions.write],
    [false, false, false, false],
  );
  assert.equal(none.permissions.env, false);
  assert.equal(none.permissions.run, false);
  const player = vmAccess(k("localservice.player"), node());
  assert.deepEqual([player.permissions.read, player.permissions.write], [["/var/lib/edgenode"], false]);
  const saver = vmAccess(k("localservice.player", "localservice.saver"), node());
  assert.deepEqual([saver.permissions.read, saver.permissions.write], [["/var/lib/edgenode"], [
    "/var/lib/edgenode",
  ]]);
  const reflector = vmAccess(k("reflector"), node("auto"));
  assert.deepEqual([reflector.permissions.net, reflector.permissions.ffi, reflector.udp.impl], [
    false,
    false,
    "portable",
  ]);
  // A kind that binds sockets itself and does not split gets net; a terminated worker would leave the fast path's
  // raw sockets open, so workers take the portable path, always.
  const binds = {
    ...kinds.get("localservice.forwarder"),
    name: "test.binds",
    needs: { net: true },
  } as ElementKind;
  const fast = vmAccess([binds], node("fast"));
  assert.deepEqual([fast.permissions.net, fast.permissions.ffi, fast.udp.impl], [true, false, "portable"]);
  assert.equal(vmAccess(k("localservice.forwarder"), node("fast")).permissions.ffi, false);
});

Deno.test("RunningSession.start fails cleanly when a reflector in a VM group cannot bind its port", async () => {
  await using env = await services();
  const busy = Deno.listenDatagram({ transport: "udp", hostname: LO, port: 0 });
  const busyPort = (busy.addr as Deno.NetAddr).port;
  const [input, free] = [freePort(), freePort()];
  const text = `Project fail;
{ AP name="D" ref=localservice.duplicator; inputs = in(DIPRONN_INPUT(${input})); outputs = a(R1.in), b(R2.in), c(S.in); }
{ VM name="vm" ref=img;
    { AP name="R1" ref=reflector; inputs = in, participant_registration(DIPRONN_INPUT(${free})); outputs = out(DIPRONN_OUTPUT), }
    { AP name="R2" ref=reflector; inputs = in, participant_registration(DIPRONN_INPUT(${busyPort})); outputs = out(DIPRONN_OUTPUT), }
}
{ VM name="other" ref=img;
    { AP name="S" ref=localservice.saver; inputs = in; output_file = "s.pcap"; }
}
`;
  try {
    await assert.rejects(start(text, env.node), (e: Error) => {
      assert.ok(e instanceof StartError);
      assert.match(e.message, /^Cannot start session fail: R2 \(vm\.dipronn:5:5\): .*\(in VM vm\)$/);
      return true;
    });
  } finally {
    busy.close();
  }
  // R1 started before R2 failed (sinks first), and the other group's saver started: all were stopped again.
  assert.ok(env.logs.some((l) => l.includes('msg="reflector listening"') && l.includes("ap=R1")));
  assertFree(free);
  assertFree(busyPort);
  assertFree(input);
  assert.equal(
    (await Deno.stat(`${env.dataDir}/s.pcap`)).size,
    24,
    "the saver started, then flushed and closed",
  );
  assert.equal(env.node.metrics.render().includes("session_"), false, "no counters left behind");
  // The test's sanitizers fail it if a worker were left running.
});

Deno.test("an AP that crashes its VM group's isolate leaves the rest of the session running", async () => {
  await using env = await services();
  const input = freePort();
  const session = await start(
    `Project crash;
{ AP name="D" ref=localservice.duplicator; inputs = in(DIPRONN_INPUT(${input})); outputs = a(C.in), b(X.in); }
{ AP name="C" ref=localservice.counter; inputs = in; }
{ VM name="fragile" ref=img;
    { AP name="X" ref=test.crash; inputs = in; }
}
`,
    env.node,
  );
  try {
    await send(input, 1);
    await until("the VM group to fail", () => vm(session, "fragile").state === "failed");
    assert.match(vm(session, "fragile").error ?? "", /test AP crashed its isolate/);
    assert.ok(
      env.logs.some((l) =>
        l.includes('msg="VM group failed; its APs no longer run"') && l.includes("vm=fragile")
      ),
    );
    await send(input, 5);
    await until("the counter in the main isolate to go on", () => {
      const counted = ap(session, "C").counted as { packets: number } | undefined;
      return counted?.packets === 6;
    });
    assert.equal(
      ap(session, "D").outputs[1].packets,
      6,
      "the duplicator still sends towards the failed group",
    );
    const droppedIn = vm(session, "fragile").dropped_in as number;
    assert.ok(droppedIn >= 5, "what could not cross is counted");
    const metrics = env.node.metrics.render();
    assert.match(metrics, /edgenode_session_vm_up\{session="crash",vm="fragile"\} 0/);
    assert.match(
      metrics,
      new RegExp(
        `edgenode_session_vm_dropped_total\\{session="crash",vm="fragile",direction="in"\\} ${droppedIn}\n`,
      ),
    );
    assert.match(
      metrics,
      /edgenode_session_vm_dropped_total\{session="crash",vm="fragile",direction="out"\} 0\n/,
    );
  } finally {
    await session.stop();
  }
  assert.equal(vm(session, "fragile").state, "failed");
});

Deno.test("a player in a VM group replays into a saver in the main isolate, from its first datagram", async () => {
  await using env = await services();
  const N = 200;
  // Every record at one time: the player sends them all at once as it starts, which is (in practice, not by
  // construction) before the main isolate's saver has started. The main isolate holds them until the session is up.
  const header = pcapFileHeader();
  const file = new Uint8Array(header.length + N * pcapRecordSize(64, false));
  file.set(header);
  let off = header.length;
  for (let i = 0; i < N; i++) {
    off = writePcapRecord(file, off, {
      timeUs: 1_700_000_000_000_000,
      from: { host: "192.0.2.1", port: 4000 },
      to: { host: "192.0.2.2", port: 5004 },
      data: numbered(i),
    });
  }
  await Deno.writeFile(`${env.dataDir}/in.pcap`, file);
  const session = await start(
    `Project replay;
{ VM name="source" ref=img;
    { AP name="Play" ref=localservice.player; outputs = out(Save.in); input_file = "in.pcap"; }
}
{ AP name="Save" ref=localservice.saver; inputs = in; output_file = "out.pcap"; }
`,
    env.node,
  );
  try {
    await until("the saver to record every datagram", () => ap(session, "Save").records === N);
    await session.refresh();
    assert.equal(ap(session, "Play").played, N);
    assert.equal(ap(session, "Play").outputs[0].packets, N);
  } finally {
    await session.stop();
  }
  const saved = readPcap(await Deno.readFile(`${env.dataDir}/out.pcap`));
  assert.deepEqual(
    saved.records.map((r) => new DataView(r.data.buffer, r.data.byteOffset).getUint32(0)),
    Array.from({ length: N }, (_, i) => i),
  );
  assert.deepEqual(saved.records[0].from, { host: "192.0.2.1", port: 4000 }, "the sender crossed too");
});

Deno.test("RunningSession.stop terminates a VM group's worker that does not stop within its deadline", async () => {
  await using env = await services();
  const session = await start(
    `Project stuck;
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${freePort()})); outputs = out(Stuck.in); }
{ VM name="slow" ref=img;
    { AP name="Stuck" ref=test.stuck; inputs = in; }
}
`,
    env.node,
    { vmStopMs: 200 },
  );
  const t0 = Date.now();
  await session.stop();
  assert.ok(Date.now() - t0 < 2_000, "stop did not wait beyond the deadline");
  const v = vm(session, "slow");
  assert.equal(v.state, "stopped");
  assert.match(v.error ?? "", /terminated after the 200 ms stop deadline/);
  assert.ok(env.logs.some((l) => l.includes("VM group did not stop in time") && l.includes("vm=slow")));
});

Deno.test("a reflector in a VM group keeps its sockets in the main isolate, on the fast path under udp fast, and reaches its participants", async () => {
  await using env = await services();
  const node: NodeServices = { ...env.node, udp: { impl: "fast" } };
  const [input, registration] = [freePort(), freePort()];
  const session = await start(
    `Project fast;
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${input})); outputs = out(R.in); }
{ VM name="edge" ref=img;
    { AP name="R" ref=reflector; allow = loopback; inputs = in, participant_registration(DIPRONN_INPUT(${registration})); outputs = out(DIPRONN_OUTPUT), }
}
`,
    node,
  );
  const participant = openUdp({ host: LO, port: 0 });
  try {
    assert.equal(vm(session, "edge").udp, "portable", "what the worker would open itself");
    const permissions = vm(session, "edge").permissions as { ffi: boolean; net: boolean };
    assert.deepEqual([permissions.ffi, permissions.net], [false, false], "the worker has no sockets");
    assert.equal((ap(session, "R").reflector as { udp: string }).udp, "fast");
    assert.equal((ap(session, "R").reflector as { table: string }).table, "in VM edge");
    // The join protocol: JOIN, answer the CHALLENGE, then WELCOME.
    const enc = new TextEncoder();
    const reg = participant.destinations([{ host: LO, port: registration }]);
    participant.send([enc.encode("EDGENODE-JOIN".padEnd(64))], reg);
    for (;;) {
      const batch = await participant.receive();
      const text = new TextDecoder().decode(batch!.data(0));
      const challenge = /^EDGENODE-CHALLENGE ([0-9a-f]{32})$/.exec(text);
      if (challenge) participant.send([enc.encode(`EDGENODE-CONFIRM ${challenge[1]}`)], reg);
      else if (text.startsWith("EDGENODE-WELCOME")) break;
    }
    const N = 300;
    const got: number[] = [];
    const receiving = (async () => {
      while (got.length < N) {
        const batch = await participant.receive();
        if (!batch) return;
        for (let i = 0; i < batch.count; i++) {
          got.push(new DataView(batch.data(i).buffer, batch.data(i).byteOffset).getUint32(0));
        }
      }
    })();
    await send(input, N);
    await until("the participant to receive every datagram", () => got.length >= N);
    assert.deepEqual(got, Array.from({ length: N }, (_, i) => i));
    // The data went to the reflector's sockets in this isolate, counted here, and never crossed into the worker.
    assert.equal(ap(session, "R").inputs[0].packets, N);
    assert.equal(vm(session, "edge").dropped_in, 0);
    assert.equal(vm(session, "edge").in_flight_bytes, 0);
    // Per-participant figures are in /status (not /metrics labels); the totals are in the node's /metrics.
    await until("the reflector's counters in /status and the node's /metrics", async () => {
      await session.refresh();
      const r = ap(session, "R").reflector as { participants: { sent: number }[] };
      return r.participants[0]?.sent === N &&
        /edgenode_reflector_participants\{reflector="fast\/R",session="fast",vm="edge"\} 1\n/
          .test(env.node.metrics.render());
    });
    await participant.close();
    await receiving;
  } finally {
    await participant.close();
    await session.stop();
  }
  assert.doesNotMatch(
    env.node.metrics.render(),
    /reflector="fast\/R"/,
    "the worker's metric sets went with it",
  );
});

Deno.test("a reflector in a VM group keeps its join rules: a join beyond max_participants is refused and counted", async () => {
  await using env = await services();
  const registration = freePort();
  const session = await start(
    `Project limits;
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${freePort()})); outputs = out(R.in); }
{ VM name="edge" ref=img;
    { AP name="R" ref=reflector; allow = loopback; max_participants = 1; inputs = in, participant_registration(DIPRONN_INPUT(${registration})); outputs = out(DIPRONN_OUTPUT), }
}
`,
    env.node,
  );
  const sockets = [openUdp({ host: LO, port: 0 }), openUdp({ host: LO, port: 0 })];
  const enc = new TextEncoder();
  const join = async (s: UdpSocket) => {
    const reg = s.destinations([{ host: LO, port: registration }]);
    s.send([enc.encode("EDGENODE-JOIN".padEnd(64))], reg);
    const challenge = /^EDGENODE-CHALLENGE ([0-9a-f]{32})$/.exec(
      new TextDecoder().decode((await s.receive())!.data(0)),
    );
    assert.ok(challenge, "a CHALLENGE");
    s.send([enc.encode(`EDGENODE-CONFIRM ${challenge[1]}`)], reg);
  };
  try {
    await join(sockets[0]);
    assert.match(new TextDecoder().decode((await sockets[0].receive())!.data(0)), /^EDGENODE-WELCOME 30$/);
    // The second JOIN is refused by the limit before any CHALLENGE: nothing comes back.
    sockets[1].send(
      [enc.encode("EDGENODE-JOIN".padEnd(64))],
      sockets[1].destinations([{ host: LO, port: registration }]),
    );
    const reflector = () => ap(session, "R").reflector as { refused_limit: number; participants: unknown[] };
    await until("the refusal in the reflector's status", () => reflector().refused_limit === 1);
    assert.equal(reflector().participants.length, 1);
    assert.match(
      env.node.metrics.render(),
      /edgenode_reflector_refused_limit_total\{reflector="limits\/R",session="limits",vm="edge"\} 1\n/,
    );
  } finally {
    for (const s of sockets) await s.close();
    await session.stop();
  }
});

Deno.test("an AP in a VM group that throws on batches is counted and logged as in the main isolate", async () => {
  await using env = await services();
  const input = freePort();
  const session = await start(
    `Project throwing;
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${input})); outputs = out(T.in); }
{ VM name="vm" ref=img;
    { AP name="T" ref=test.throw; inputs = in; }
}
`,
    env.node,
  );
  try {
    await send(input, 150);
    await until("every datagram in the VM's counters", async () => {
      await session.refresh();
      return ap(session, "T").inputs[0].packets === 150;
    });
    // However the sockets batched them, every batch failed and was counted.
    const errors = ap(session, "T").errors;
    assert.ok(errors >= 1 && errors <= 150, `errors: ${errors}`);
    assert.equal(vm(session, "vm").state, "running");
    const logged = env.logs.filter((l) => l.includes('msg="active program failed on a batch"'));
    assert.equal(logged.length, 1, "logged once, counted every time");
    assert.match(logged[0], /session=throwing ap=T error="test AP refuses batches" .*vm=vm/);
    assert.match(
      env.node.metrics.render(),
      new RegExp(
        `edgenode_session_ap_errors_total\\{session="throwing",ap="T",kind="test.throw"\\} ${errors}\n`,
      ),
    );
  } finally {
    await session.stop();
  }
});

for (const end of ["crashes", "is terminated at stop"] as const) {
  Deno.test(`a reflector in a VM group frees its registration port when the group ${end}, under udp fast too`, async () => {
    await using env = await services();
    const node: NodeServices = { ...env.node, udp: { impl: "fast" } };
    const clock = new ManualClock();
    const [input, registration] = [freePort(), freePort()];
    // "crashes": X crashes the worker on its first batch. "is terminated": Stuck, upstream of the reflector, never
    // stops, so the reflector is never asked to close its sockets; only ending the worker frees them.
    const name = end === "crashes" ? "crashing" : "stuck";
    const session = await start(
      end === "crashes"
        ? `Project ${name};
{ AP name="D" ref=localservice.duplicator; inputs = in(DIPRONN_INPUT(${input})); outputs = a(R.in), b(X.in); }
{ VM name="edge" ref=img;
    { AP name="R" ref=reflector; inputs = in, participant_registration(DIPRONN_INPUT(${registration})); outputs = out(DIPRONN_OUTPUT), }
    { AP name="X" ref=test.crash; inputs = in; }
}
`
        : `Project ${name};
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${input})); outputs = out(Stuck.in); }
{ VM name="edge" ref=img;
    { AP name="Stuck" ref=test.stuck; inputs = in; outputs = out(R.in); }
    { AP name="R" ref=reflector; inputs = in, participant_registration(DIPRONN_INPUT(${registration})); outputs = out(DIPRONN_OUTPUT), }
}
`,
      node,
      { vmClock: clock, vmStopMs: 1_000 },
    );
    const shown = new RegExp(
      `edgenode_reflector_participants\\{reflector="${name}/R",session="${name}",vm="edge"\\} 0`,
    );
    try {
      assert.equal(vm(session, "edge").udp, "portable");
      assert.equal(canBind(registration), false, "the reflector holds its registration port");
      assert.match(env.node.metrics.render(), shown);
      if (end === "crashes") {
        await send(input, 1);
        await until("the VM group to fail", () => vm(session, "edge").state === "failed");
        assert.doesNotMatch(
          env.node.metrics.render(),
          /reflector="crashing\/R"/,
          "its metric sets went with it",
        );
        await until("the registration port to be free", () => canBind(registration));
      }
    } finally {
      const stopping = session.stop();
      if (end !== "crashes") {
        await until("the stop request to Stuck", () => clock.pending === 1);
        clock.advance(1_000);
      }
      await stopping;
    }
    if (end !== "crashes") {
      assert.match(vm(session, "edge").error ?? "", /terminated after the 1000 ms stop deadline/);
      await until("the registration port to be free", () => canBind(registration));
    }
    assert.doesNotMatch(env.node.metrics.render(), /edgenode_reflector/);
  });
}

Deno.test("batches a VM group emits while the session starts are held up to the link limit, the rest counted as dropped out", async () => {
  await using env = await services();
  const session = await start(
    `Project burst;
{ VM name="source" ref=img;
    { AP name="B" ref=test.burst; outputs = out(C.in); }
}
{ AP name="C" ref=localservice.counter; inputs = in; }
`,
    env.node,
  );
  try {
    // Everything here was settled before start returned: the batches, and the worker's snapshot, came before its
    // `started`, and what was held was delivered before start returned.
    const emitted = BURST_BATCHES * BURST_DATAGRAMS;
    assert.equal(ap(session, "B").outputs[0].packets, emitted);
    const delivered = (ap(session, "C").counted as { packets: number }).packets;
    const dropped = vm(session, "source").dropped_out as number;
    assert.ok(delivered > 0, "what fit was delivered");
    assert.ok(
      delivered * BURST_DATAGRAM_BYTES <= LINK_LIMIT_BYTES,
      `held no more than the limit: ${delivered}`,
    );
    assert.equal(delivered + dropped, emitted, "every datagram delivered or counted");
    assert.equal(vm(session, "source").dropped_in, 0);
    assert.match(
      env.node.metrics.render(),
      new RegExp(
        `edgenode_session_vm_dropped_total\\{session="burst",vm="source",direction="out"\\} ${dropped}\n`,
      ),
    );
  } finally {
    await session.stop();
  }
});

Deno.test("an element status that throws or cannot be carried does not stop its VM group's snapshots", async () => {
  await using env = await services();
  const session = await start(
    `Project status;
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${freePort()})); outputs = out(T.in); }
{ VM name="vm" ref=img;
    { AP name="T" ref=test.badstatus; fault = "throw"; inputs = in; outputs = out(C.in); }
    { AP name="C" ref=test.badstatus; fault = "cycle"; inputs = in; }
}
`,
    env.node,
  );
  try {
    await session.refresh();
    assert.equal(ap(session, "T").status_error, "test status refuses to report");
    assert.match(String(ap(session, "C").status_error), /circular/i);
    assert.equal(vm(session, "vm").state, "running");
  } finally {
    await session.stop();
  }
  // The final snapshot was taken too, and the worker answered `closed` in time.
  assert.equal(vm(session, "vm").state, "stopped");
  assert.equal(vm(session, "vm").error, undefined);
});

Deno.test("VM group refresh ends on the answer to its own request only, or at its deadline", async () => {
  await using env = await services();
  const clock = new ManualClock();
  // The fake worker answers no snapshot request: each of its snapshots looks like a periodic one.
  const session = await start(
    `Project fake;
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${freePort()})); outputs = out(F.in); }
{ VM name="vm" ref=img;
    { AP name="F" ref=localservice.counter; inputs = in; }
}
`,
    env.node,
    { workerUrl: FAKE_WORKER, vmClock: clock, vmStopMs: 500 },
  );
  try {
    assert.equal(ap(session, "F").snapshots, 1);
    let done = false;
    const refreshed = session.refresh().then(() => done = true);
    await until("the worker's snapshot after the request", () => ap(session, "F").snapshots === 2);
    clock.advance(499);
    await Promise.resolve();
    assert.equal(done, false, "a snapshot that does not answer the request does not end it");
    clock.advance(1);
    await refreshed;
  } finally {
    await session.stop();
  }
  assert.equal(vm(session, "vm").state, "stopped");
});

Deno.test("a VM group's report changes only its own APs and ports, and no metric set a VM may not publish", async () => {
  await using env = await services();
  // The fake worker's start snapshot claims 999 for every AP of the session and renames its own AP.
  const session = await start(
    `Project fake;
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${freePort()})); outputs = out(F.in); }
{ VM name="vm" ref=img;
    { AP name="F" ref=localservice.counter; inputs = in; }
}
`,
    env.node,
    { workerUrl: FAKE_WORKER },
  );
  try {
    assert.deepEqual(aps(session).map((a) => [a.name, a.vm]), [["In", null], ["F", "vm"]]);
    const main = ap(session, "In");
    assert.deepEqual([main.inputs[0].packets, main.outputs[0].packets, main.errors], [0, 0, 0]);
    const own = ap(session, "F");
    assert.deepEqual([own.inputs[0].packets, own.errors, own.snapshots], [999, 999, 1]);
    assert.equal(vm(session, "vm").metric_sets_refused, 2);
    const metrics = env.node.metrics.render();
    assert.doesNotMatch(metrics, /victim|reflector/);
    assert.match(
      metrics,
      /edgenode_session_ap_in_packets_total\{session="fake",ap="In",kind="localservice.forwarder"\} 0\n/,
    );
    assert.equal(env.logs.filter((l) => l.includes('msg="VM group metric set not shown"')).length, 1);
  } finally {
    await session.stop();
  }
});

Deno.test("a VM group's metric sets carry its session and group whatever the worker said", async () => {
  await using env = await services();
  const session = await start(
    `Project mine;
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${freePort()})); outputs = out(M.in); }
{ VM name="vm" ref=img;
    { AP name="M" ref=test.metrics; inputs = in; }
}
`,
    env.node,
  );
  try {
    const metrics = env.node.metrics.render();
    assert.match(
      metrics,
      /edgenode_reflector_participants\{reflector="victim\/R",session="mine",vm="vm"\} 7\n/,
    );
    assert.doesNotMatch(metrics, /session="victim"/, "not the session_ap set, not the claimed session");
    assert.equal(vm(session, "vm").metric_sets_refused, 1);
  } finally {
    await session.stop();
  }
  assert.doesNotMatch(env.node.metrics.render(), /victim/);
});

Deno.test("each request to a VM group has its own stop deadline: a slow AP elsewhere does not end a healthy worker", async () => {
  await using env = await services();
  // The main isolate's elements and the VM deadlines run on one ManualClock: Slow's stop moves it on by twice the
  // deadline, between the stop requests for A and for Save.
  const clock = new ManualClock();
  const node: NodeServices = { ...env.node, clock };
  const input = freePort();
  const N = 100;
  // Stopped in data-flow order: In, A (in the VM), Slow (here), Save (in the VM again).
  const session = await start(
    `Project paced;
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${input})); outputs = out(A.in); }
{ VM name="vm" ref=img;
    { AP name="A" ref=localservice.forwarder; inputs = in; outputs = out(Slow.in); }
    { AP name="Save" ref=localservice.saver; inputs = in; output_file = "paced.pcap"; }
}
{ AP name="Slow" ref=test.slowstop; ms = 2000; inputs = in; outputs = out(Save.in); }
`,
    node,
    { vmClock: clock, vmStopMs: 1_000 },
  );
  try {
    await send(input, N);
    await until("every datagram through Slow", () => ap(session, "Slow").outputs[0].packets === N);
  } finally {
    await session.stop();
  }
  assert.equal(vm(session, "vm").error, undefined, "not terminated");
  assert.equal(vm(session, "vm").state, "stopped");
  const saved = readPcap(await Deno.readFile(`${env.dataDir}/paced.pcap`));
  assert.equal(saved.records.length, N, "the saver after the slow AP flushed at stop");
});

Deno.test("RunningSession.start gives up on a VM group that does not start within its deadline", async () => {
  await using env = await services();
  const clock = new ManualClock();
  const input = freePort();
  const starting = start(
    `Project late;
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${input})); outputs = out(N.in); }
{ VM name="slow" ref=img;
    { AP name="N" ref=test.nostart; inputs = in; }
}
`,
    env.node,
    { vmClock: clock, vmStartMs: 1_000 },
  );
  clock.advance(999);
  assert.equal(clock.pending, 1, "still waiting");
  clock.advance(1);
  await assert.rejects(starting, (e: Error) => {
    assert.ok(e instanceof StartError);
    assert.equal(e.message, "Cannot start session late: VM slow failed: it did not start within 1000 ms");
    return true;
  });
  assert.ok(
    env.logs.some((l) => l.includes('msg="VM group failed; its APs no longer run"') && l.includes("vm=slow")),
  );
  assertFree(input);
  assert.equal(env.node.metrics.render().includes("session_"), false, "no counters left behind");
});
