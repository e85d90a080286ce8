/**
 * An uploaded active program: stamps one byte of every datagram with a mark and counts what it stamped; every
 * `every` datagrams it writes the count to its log (the last lines show in the sandbox's status, `stderr`). Use it
 * as `ref=upload.watermark` with `offset = 12` (the first payload byte after an RTP header) and `mark = 255`.
 */
interface Datagram {
  readonly data: Uint8Array;
  readonly from: { readonly host: string; readonly port: number };
}
interface Ctx {
  readonly params: { readonly offset: number; readonly mark: number; readonly every: number };
  now(): number;
}

export const ports = { inputs: ["in"], outputs: ["out"] };

export const params = {
  offset: { type: "number", default: 12, min: 0, max: 65535, doc: "which byte to stamp" },
  mark: { type: "number", default: 255, min: 0, max: 255, doc: "the value stamped" },
  every: { type: "number", default: 100000, min: 1, doc: "log the count every this many datagrams" },
};

let stamped = 0;

export function handle(_input: number, batch: Datagram[], ctx: Ctx): Datagram[][] {
  const { offset, mark, every } = ctx.params;
  for (const d of batch) {
    if (d.data.length <= offset) continue;
    d.data[offset] = mark;
    if (++stamped % every === 0) console.log(`stamped ${stamped} datagrams`);
  }
  return [batch];
}
