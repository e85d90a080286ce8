/**
 * AP kinds for tests of VM groups only, known both to the test (for the graph check) and to the test worker
 * (tests/graph/_vm_worker.ts): one reports which isolate it runs in, one reports what it may touch, one crashes its
 * isolate, one throws on every batch, one never stops. Never registered on a real node.
 */
import type { Registry } from "../../lib/core/registry.ts";
import { defineElement, type ElementKind } from "../../lib/graph/element.ts";
import { stringParam } from "../../lib/graph/params.ts";

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
  description: "Forwards; at start tries to read `file` and asks what it may do",
  ports: passOn,
  params: { file: stringParam("a file to try to read") },
  create({ params, node, outputs }) {
    const seen: Record<string, string> = {};
    return {
      async start() {
        try {
          await Deno.readTextFile(params.file);
          seen.read_file = "read";
        } catch (error) {
          seen.read_file = error instanceof Error ? error.name : String(error);
        }
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

export function withTestKinds(kinds: Registry<ElementKind>): Registry<ElementKind> {
  return kinds.register(isolateProbe as ElementKind)
    .register(accessProbe as ElementKind)
    .register(crasher as ElementKind)
    .register(thrower as ElementKind)
    .register(stuck as ElementKind);
}
