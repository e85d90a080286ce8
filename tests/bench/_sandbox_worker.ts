/**
 * The guest of tests/bench/sandbox_options.ts for the two in-process options (a Web Worker, a node:worker_threads
 * worker): the same batch contract as lib/sandbox/guest.ts, with batches as transferred codec buffers.
 */
import { parentPort } from "node:worker_threads";
import { decodeBatch, encodeBatch } from "../../lib/graph/vm/codec.ts";
import type { Endpoint } from "../../lib/net/udp.ts";

type Post = (m: unknown, transfer?: Transferable[]) => void;
const scope = globalThis as unknown as { postMessage: Post; onmessage: ((e: MessageEvent) => void) | null };
const post: Post = parentPort
  ? (m, t) => parentPort!.postMessage(m, t as never)
  : (m, t) => scope.postMessage(m, t ?? []);
let program: { handle(input: number, batch: unknown[], ctx: unknown): unknown } | null = null;

async function receive(m: unknown): Promise<void> {
  if (m instanceof ArrayBuffer) {
    const { batch } = decodeBatch(m);
    const list = [];
    for (let i = 0; i < batch.count; i++) list.push({ data: batch.data(i), from: batch.from(i) });
    let out = program!.handle(0, list, { params: {}, now: () => 0 }) as {
      data: Uint8Array;
      from: Endpoint;
    }[][];
    if (out instanceof Promise) out = await out;
    const o = out[0];
    const buffer = encodeBatch({ kind: "emitted", ap: 0, port: 0, rtcp: false }, {
      count: o.length,
      data: (i) => o[i].data,
      length: (i) => o[i].data.length,
      from: (i) => o[i].from,
      truncated: () => false,
    });
    post(buffer, [buffer]);
    return;
  }
  const { source } = m as { source: string };
  program = await import(`data:application/javascript,${encodeURIComponent(source)}`);
  post({ type: "ready" });
}

if (parentPort) parentPort.on("message", (m: unknown) => void receive(m));
else scope.onmessage = (e) => void receive(e.data);
