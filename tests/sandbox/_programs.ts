/** Uploaded programs for the sandbox tests, as source text. */
import { ArrayBatch } from "../../lib/graph/batch.ts";

export const PORTS = `export const ports = { inputs: ["in"], outputs: ["out"] };\n`;

export const PASS_THROUGH = `${PORTS}
export const params = { stamp: { type: "number", default: 0, min: 0, max: 255 } };
let seen = 0;
export function handle(_input, batch, ctx) {
  seen += batch.length;
  if (ctx.params.stamp) for (const d of batch) d.data[0] = ctx.params.stamp;
  return [batch];
}
`;

/** A program that tries `attempt` on each batch and passes the batch through (so it keeps flowing). */
export function trying(attempt: string): string {
  return `${PORTS}
export async function handle(_input, batch) {
  try { await (${attempt}); } catch (e) { console.error("denied:", e.message); throw e; }
  return [batch];
}
`;
}

/** A program whose handler never returns once a datagram starts with 0xff. */
export const LOOPS_ON_FF = `${PORTS}
export function handle(_input, batch) {
  if (batch.some((d) => d.data[0] === 0xff)) for (;;) {}
  return [batch];
}
`;

export const ARRAY_BOMB = `${PORTS}
const hoard = [];
export function handle(_input, batch) {
  for (;;) hoard.push(new Array(100000).fill(hoard.length));
}
`;

export const BUFFER_BOMB = `${PORTS}
const hoard = new Set();
export function handle(_input, batch) {
  for (;;) hoard.add(new Uint8Array(1 << 20).fill(7).buffer);
}
`;

export const EXITS = `${PORTS}
export function handle() { Deno.exit(3); }
`;

/** `n` datagrams of `size` bytes, byte 0 = `first`, from one sender. */
export function datagrams(n: number, size: number, first = 1): ArrayBatch {
  const items = Array.from({ length: n }, (_, i) => {
    const d = new Uint8Array(size).fill(i & 0xff);
    d[0] = first;
    return d;
  });
  return new ArrayBatch(items, items.map(() => ({ host: "127.0.0.1", port: 5004 })));
}
