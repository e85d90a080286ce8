/**
 * VM groups in their own isolates, with real workers (tests/graph/_vm_worker.ts: the core kinds plus the test kinds
 * of _vm_kinds.ts). A worker runs on real time, so these tests wait for what crosses isolates, always within a
 * bounded time, and ask for fresh counters with `refresh()` rather than waiting for the next snapshot.
 */
import assert from "node:assert/strict";
import { systemClock } from "../../lib/core/clock.ts";
import { StartError } from "../../lib/core/errors.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import type { ElementKind, NodeServices } from "../../lib/graph/element.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { type ExecutorOptions, RunningSession } from "../../lib/graph/executor.ts";
import { checkProgram } from "../../lib/graph/program.ts";
import { vmAccess } from "../../lib/graph/vm_group.ts";
import { pcapFileHeader, pcapRecordSize, readPcap, writePcapRecord } from "../../lib/media/pcap.ts";
import { openUdp, type UdpSocket } from "../../lib/net/udp.ts";
import { MARK, withTestKinds } from "./_vm_kinds.ts";

const LO = "127.0.0.1";
const WORKER = new URL("./_vm_worker.ts", import.meta.url);

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
  return { node, logs, dataDir, [Symbol.asyncDispose]: () => Deno.remove(dataDir, { recursive: true }) };
}

function start(text: string, node: NodeServices, options: ExecutorOptions = {}) {
  const plan = checkProgram(text, { file: "vm.dipronn", kinds: withTestKinds(coreElements()) });
  return RunningSession.start(plan, node, { workerUrl: WORKER, ...options });
}

async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
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

Deno.test("a saver in a VM group writes only in the data directory, and stop flushes it", async () => {
  await using env = await services();
  const input = freePort();
  const N = 500;
  const session = await start(
    `Project rec;
{ AP name="In" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(${input})); outputs = out(Save.in); }
{ VM name="recorder" ref=img;
    { AP name="Save" ref=localservice.saver; inputs = in; output_file = "rec.pcap"; }
}
`,
    env.node,
  );
  try {
    await send(input, N);
    await until("the saver to record every datagram", async () => {
      await session.refresh();
      return ap(session, "Save").records === N;
    });
    assert.deepEqual(vm(session, "recorder").permissions, {
      net: false,
      ffi: false,
      read: [env.dataDir],
      write: [env.dataDir],
    });
  } finally {
    await session.stop();
  }
  // Written at stop (the saver's buffer was not due for a flush): the final snapshot came after it.
  const saved = readPcap(await Deno.readFile(`${env.dataDir}/rec.pcap`));
  assert.equal(saved.records.length, N);
  assert.equal(ap(session, "Save").records, N);
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
  try {
    await session.refresh();
    const access = (name: string) => ap(session, name).access as Record<string, string>;
    assert.equal(access("Main").read_file, "read", "the main isolate holds the process's permissions");
    assert.equal(access("Main").read_any, "granted");

    // Only forwarders and the probe: nothing at all.
    assert.equal(access("Plain").read_file, "NotCapable");
    for (
      const what of ["read_any", "read_data_dir", "write_any", "write_data_dir", "net", "ffi", "env", "run"]
    ) {
      assert.notEqual(access("Plain")[what], "granted", `plain VM: ${what}`);
    }
    // Beside a saver: the data directory, and nothing outside it.
    assert.equal(access("Saving").read_file, "NotCapable");
    assert.equal(access("Saving").read_data_dir, "granted");
    assert.equal(access("Saving").write_data_dir, "granted");
    for (const what of ["read_any", "write_any", "net", "ffi", "env", "run"]) {
      assert.notEqual(access("Saving")[what], "granted", `saving VM: ${what}`);
    }
    assert.deepEqual(vm(session, "plain").permissions, { net: false, ffi: false, read: false, write: false });
  } finally {
    await session.stop();
    await Deno.remove(outside, { recursive: true });
  }
});

Deno.test("vmAccess grants net to reflectors, FFI only under udp fast, files only in the data directory", () => {
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
    true,
    false,
    "portable",
  ]);
  const fast = vmAccess(k("reflector"), node("fast"));
  assert.deepEqual([fast.permissions.net, fast.permissions.ffi, fast.udp.impl], [true, true, "fast"]);
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
      assert.match(e.message, /^Cannot start session fail: R2: .*\(in VM vm\)$/);
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
    assert.ok((vm(session, "fragile").dropped_in as number) >= 5, "what could not cross is counted");
    assert.match(env.node.metrics.render(), /edgenode_session_vm_up\{session="crash",vm="fragile"\} 0/);
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

Deno.test("a reflector in a VM group takes the fast UDP path when the node asks for it, and reaches its participants", async () => {
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
    assert.equal(vm(session, "edge").udp, "fast");
    assert.equal((vm(session, "edge").permissions as { ffi: boolean }).ffi, true);
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
    await until("the reflector's counters in the node's /metrics", async () => {
      await session.refresh();
      return /edgenode_reflector_participant_sent_total\{reflector="fast\/R",participant="127\.0\.0\.1:\d+"\} 300/
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
