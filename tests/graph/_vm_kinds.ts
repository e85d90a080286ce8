/**
 * AP kinds for tests of VM groups only, known both to the test (for the graph check) and to the test worker
 * (tests/graph/_vm_worker.ts): one reports which isolate it runs in, one reports what it may touch, one crashes its
 * isolate, one throws on every batch, one never stops, one takes long to stop, one never starts, one floods its output
 * while it starts, one has a status that cannot be reported, one publishes metric sets a VM may not. Never
 * registered on a real node.
 */
import { ManualClock } from "../../lib/core/clock.ts";
import type { Registry } from "../../lib/core/registry.ts";
import { ArrayBatch } from "../../lib/graph/batch.ts";
import { defineElement, type ElementKind } from "../../lib/graph/element.ts";
import { numberParam, stringParam } from "../../lib/graph/params.ts";

/** The global a test sets in the main isolate; an AP in a worker must not see it. */
export const MARK = "__edgenodeTestMark";

const passOn = { inputs: { min: 1, max: 1 }, outputs: { min: 0, max: 1 } };

export const isolateProbe = defineElement({
  name: "test.isolate",
  description: "Forwards; its status says which isolate runs it",
  ports: passOn,
  params: {},
  create: ({ outputs }) => ({
    push(_input, batch, rtcp) {
      outputs[0]?.emit(batch, rtcp);
    },
    status: () => ({
      isolate: {
        mark: (globalThis as Record<string, unknown>)[MARK] ?? null,
        scope: globalThis.constructor.name,
      },
    }),
  }),
});

export const accessProbe = defineElement({
  name: "test.access",
  description:
    "Forwards; at start asks what it may do and tries it: read `file`, write beside it and in the data directory, " +
    "bind a socket, load libc, read the environment, run a program",
  ports: passOn,
  params: { file: stringParam("a file to try to read") },
  create({ name, params, node, outputs }) {
    const seen: Record<string, string> = {};
    /** "done", or the name of the error that stopped it ("NotCapable": the permission is not held). */
    const attempt = (f: () => unknown) => {
      try {
        f();
        return "done";
      } catch (error) {
        return error instanceof Error ? error.name : String(error);
      }
    };
    return {
      async start() {
        try {
          await Deno.readTextFile(params.file);
          seen.read_file = "read";
        } catch (error) {
          seen.read_file = error instanceof Error ? error.name : String(error);
        }
        Object.assign(seen, {
          try_write_outside: attempt(() => Deno.writeTextFileSync(`${params.file}.${name}`, "x")),
          try_write_data_dir: attempt(() => Deno.writeTextFileSync(`${node.dataDir}/${name}.txt`, "x")),
          try_net: attempt(() =>
            Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 }).close()
          ),
          try_ffi: attempt(() => Deno.dlopen("libc.so.6", {}).close()),
          try_env: attempt(() => Deno.env.get("HOME")),
          try_run: attempt(() => new Deno.Command("true").outputSync()),
        });
        const q = (d: Deno.PermissionDescriptor) => Deno.permissions.querySync(d).state;
        Object.assign(seen, {
          read_any: q({ name: "read" }),
          read_data_dir: q({ name: "read", path: node.dataDir }),
          write_any: q({ name: "write" }),
          write_data_dir: q({ name: "write", path: node.dataDir }),
          net: q({ name: "net" }),
          ffi: q({ name: "ffi" }),
          env: q({ name: "env" }),
          run: q({ name: "run" }),
        });
      },
      push(_input, batch, rtcp) {
        outputs[0]?.emit(batch, rtcp);
      },
      status: () => ({ access: seen }),
    };
  },
});

export const crasher = defineElement({
  name: "test.crash",
  description:
    "Throws an uncaught error out of a timer on its first batch (never run it in the main isolate)",
  ports: passOn,
  params: {},
  create: () => {
    let armed = true;
    return {
      push() {
        if (!armed) return;
        armed = false;
        setTimeout(() => {
          throw new Error("test AP crashed its isolate");
        }, 0);
      },
    };
  },
});

export const thrower = defineElement({
  name: "test.throw",
  description: "Throws on every batch it is given",
  ports: passOn,
  params: {},
  create: () => ({
    push() {
      throw new Error("test AP refuses batches");
    },
  }),
});

export const stuck = defineElement({
  name: "test.stuck",
  description: "Never finishes stopping",
  ports: passOn,
  params: {},
  create: () => ({
    push() {},
    stop: () => new Promise<void>(() => {}),
  }),
});

export const slowStop = defineElement({
  name: "test.slowstop",
  description:
    "Forwards; its stop takes `ms` of its node's clock (moved on, when that is a test's ManualClock)",
  ports: { inputs: { min: 1, max: 1 }, outputs: { min: 1, max: 1 } },
  params: { ms: numberParam("how long stopping takes", { min: 0 }) },
  create: ({ node, params, outputs }) => ({
    push(_input, batch, rtcp) {
      outputs[0].emit(batch, rtcp);
    },
    stop() {
      if (node.clock instanceof ManualClock) node.clock.advance(params.ms);
      return Promise.resolve();
    },
  }),
});

export const neverStarts = defineElement({
  name: "test.nostart",
  description: "Never finishes starting",
  ports: passOn,
  params: {},
  create: () => ({
    push() {},
    start: () => new Promise<void>(() => {}),
  }),
});

/** What test.burst emits while it starts: BURST_BATCHES batches of BURST_DATAGRAMS datagrams of 64 KiB. */
export const BURST_BATCHES = 96;
export const BURST_DATAGRAMS = 16;
export const BURST_DATAGRAM_BYTES = 65536;

export const burst = defineElement({
  name: "test.burst",
  description: "Emits 96 MiB while it starts, letting the other isolate answer between batches",
  ports: { inputs: { min: 0, max: 0 }, outputs: { min: 1, max: 1 } },
  params: {},
  create: ({ outputs }) => ({
    push() {},
    async start() {
      const from = { host: "192.0.2.1", port: 9 };
      for (let i = 0; i < BURST_BATCHES; i++) {
        const items = Array.from({ length: BURST_DATAGRAMS }, () => new Uint8Array(BURST_DATAGRAM_BYTES));
        outputs[0].emit(new ArrayBatch(items, items.map(() => from)), false);
        // A macrotask: acknowledgements from the other isolate are taken in between, as in a slow start.
        await new Promise((r) => setTimeout(r, 0));
      }
    },
  }),
});

export const badStatus = defineElement({
  name: "test.badstatus",
  description:
    "Forwards; its status throws (`fault` throw) or cannot be cloned nor written as JSON (`fault` cycle)",
  ports: passOn,
  params: { fault: stringParam("throw or cycle") },
  create: ({ params, outputs }) => ({
    push(_input, batch, rtcp) {
      outputs[0]?.emit(batch, rtcp);
    },
    status() {
      if (params.fault === "throw") throw new Error("test status refuses to report");
      const status: Record<string, unknown> = { fn: () => {} };
      status.self = status;
      return status;
    },
  }),
});

export const metricsForger = defineElement({
  name: "test.metrics",
  description:
    "Publishes metric sets at start: one of a subsystem VMs may not report, one claiming another session",
  ports: passOn,
  params: {},
  create: ({ node }) => ({
    push() {},
    start() {
      node.metrics.set("session_ap", { session: "victim", ap: "X", kind: "k" })
        .counter("in_packets_total", "Datagrams into the AP, all inputs", () => 1e9);
      node.metrics.set("reflector", { reflector: "victim/R", session: "victim" })
        .gauge("participants", "Participants receiving the stream", () => 7);
      return Promise.resolve();
    },
  }),
});

export function withTestKinds(kinds: Registry<ElementKind>): Registry<ElementKind> {
  return kinds.register(isolateProbe as ElementKind)
    .register(accessProbe as ElementKind)
    .register(crasher as ElementKind)
    .register(thrower as ElementKind)
    .register(stuck as ElementKind)
    .register(slowStop as ElementKind)
    .register(neverStarts as ElementKind)
    .register(burst as ElementKind)
    .register(badStatus as ElementKind)
    .register(metricsForger as ElementKind);
}
