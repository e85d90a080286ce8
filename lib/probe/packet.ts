/**
 * The probe's datagram: "EDGP" | sequence (u32) | stream id (u32) | send time in microseconds since the epoch
 * (f64) | padding to the chosen size. Big-endian, 20 bytes of header. Pure.
 */
export const PROBE_MAGIC = 0x45444750; // "EDGP"
export const PROBE_HEADER = 20;

export function writeProbe(buf: Uint8Array, seq: number, stream: number, sentUs: number): void {
  const v = new DataView(buf.buffer, buf.byteOffset, PROBE_HEADER);
  v.setUint32(0, PROBE_MAGIC);
  v.setUint32(4, seq >>> 0);
  v.setUint32(8, stream >>> 0);
  v.setFloat64(12, sentUs);
}

export interface ProbeHeader {
  seq: number;
  stream: number;
  sentUs: number;
}

/** The header of a probe datagram, or null for anything else. */
export function readProbe(d: Uint8Array): ProbeHeader | null {
  if (d.length < PROBE_HEADER) return null;
  const v = new DataView(d.buffer, d.byteOffset, PROBE_HEADER);
  if (v.getUint32(0) !== PROBE_MAGIC) return null;
  return { seq: v.getUint32(4), stream: v.getUint32(8), sentUs: v.getFloat64(12) };
}
