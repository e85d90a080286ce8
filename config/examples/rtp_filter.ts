/**
 * An uploaded active program: passes RTP datagrams except those of one payload type, and drops anything too short
 * to be RTP. Use it in a session as `ref=upload.rtp_filter` with `drop_payload_type = 0` (for example) and upload
 * this file with the program (README, "Uploaded active programs").
 */
interface Datagram {
  readonly data: Uint8Array;
  readonly from: { readonly host: string; readonly port: number };
}
interface Ctx {
  readonly params: { readonly drop_payload_type: number };
  now(): number;
}

export const ports = { inputs: ["in"], outputs: ["out"] };

export const params = {
  drop_payload_type: { type: "number", default: 0, min: 0, max: 127, doc: "RTP payload type to drop" },
};

/** One list per output: what goes out of `out`. */
export function handle(_input: number, batch: Datagram[], ctx: Ctx): Datagram[][] {
  const pt = ctx.params.drop_payload_type;
  return [batch.filter((d) => d.data.length >= 12 && (d.data[1] & 0x7f) !== pt)];
}
