/**
 * A batch that crosses between the main isolate and a VM group's worker travels as one ArrayBuffer, posted with the
 * buffer transferred (no copy on postMessage): the datagrams are copied once, into the buffer, where they leave their
 * socket or element. The buffer says where the batch goes and carries each datagram's length, its truncated flag and
 * its sender; senders are written once per message in a small table (a batch usually comes from one or a few).
 *
 * Layout, little-endian:
 *
 *     0  u8   format version (1)
 *     1  u8   flags: 1 rtcp flow, 2 emitted (else: to be delivered), 4 wide sender index
 *     2  u16  port: the input (delivered) or output (emitted) of the AP
 *     4  u32  ap: its index in the session plan
 *     8  u32  count of datagrams
 *    12  u32  count of senders
 *    16  senders, each: u8 family (4, 6, or 0 for a name), u8 name length, u16 port, 4 / 16 / length bytes
 *        datagrams, each: u32 length (bit 31: truncated), u16 sender index (u32 when wide)
 *        the datagrams' bytes, one after the other
 */
import { ipv6Bytes, ipv6Text, isIPv4, isIPv6 } from "../../net/address.ts";
import type { Batch, Endpoint } from "../../net/udp.ts";

const VERSION = 1;
const FLAG_RTCP = 1;
const FLAG_EMITTED = 2;
const FLAG_WIDE = 4;
const HEADER = 16;
const TRUNCATED = 0x8000_0000;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Where a crossing batch goes. */
export interface Crossing {
  /** "deliver": to input `port` of AP `ap`. "emitted": it left output `port` of AP `ap` (the receiver routes it). */
  readonly kind: "deliver" | "emitted";
  readonly ap: number;
  readonly port: number;
  readonly rtcp: boolean;
}

export class VmCodecError extends Error {
  override name = "VmCodecError";
}

/**
 * Packs `batch` and where it goes into a new ArrayBuffer, to be posted with the buffer in the transfer list.
 * `prefix` bytes are left free at its start for a header of the carrier's (a sandbox frame's), so that nothing is
 * copied again to add one.
 */
export function encodeBatch(to: Crossing, batch: Batch, prefix = 0): ArrayBuffer {
  return encodeBatchInto(to, batch, prefix, (bytes) => new Uint8Array(bytes)).buffer as ArrayBuffer;
}

/**
 * encodeBatch into bytes that `alloc` gives (exactly the length asked for, zeroed or not): a frame queue's chunk
 * (lib/sandbox/frame_queue.ts), so that a busy stream needs no new buffer per batch. Returns what `alloc` gave.
 */
export function encodeBatchInto(
  to: Crossing,
  batch: Batch,
  prefix: number,
  alloc: (bytes: number) => Uint8Array,
): Uint8Array {
  const count = batch.count;
  // Distinct senders: a batch from one socket has one or a few, and consecutive datagrams share the object.
  const senders: Endpoint[] = [];
  const addresses: Uint8Array[] = [];
  const index = new Map<string, number>();
  const senderOf = new Uint32Array(count);
  let last: Endpoint | null = null;
  let lastIndex = 0;
  let senderBytes = 0;
  let dataBytes = 0;
  const same = batch.sameSource?.bind(batch);
  for (let i = 0; i < count; i++) {
    dataBytes += batch.length(i);
    // The same sender as the datagram before, told without building its object (a socket's batch builds a new
    // one per datagram, and its key).
    if (i > 0 && same?.(i - 1, i)) {
      senderOf[i] = lastIndex;
      continue;
    }
    const from = batch.from(i);
    if (from !== last) {
      const key = `${from.host}|${from.port}`;
      let k = index.get(key);
      if (k === undefined) {
        k = senders.length;
        index.set(key, k);
        senders.push(from);
        addresses.push(addressBytes(from.host));
        senderBytes += 4 + addresses[k].length;
      }
      [last, lastIndex] = [from, k];
    }
    senderOf[i] = lastIndex;
  }
  const wide = senders.length > 0xffff;
  const entry = wide ? 8 : 6;
  const size = HEADER + senderBytes + count * entry + dataBytes;
  const out = alloc(prefix + size);
  const view = new DataView(out.buffer, out.byteOffset + prefix, size);
  const bytes = out.subarray(prefix);
  view.setUint8(0, VERSION);
  view.setUint8(
    1,
    (to.rtcp ? FLAG_RTCP : 0) | (to.kind === "emitted" ? FLAG_EMITTED : 0) | (wide ? FLAG_WIDE : 0),
  );
  view.setUint16(2, to.port, true);
  view.setUint32(4, to.ap, true);
  view.setUint32(8, count, true);
  view.setUint32(12, senders.length, true);
  let off = HEADER;
  senders.forEach((s, k) => {
    const addr = addresses[k];
    view.setUint8(off, isIPv4(s.host) ? 4 : isIPv6(s.host) ? 6 : 0);
    view.setUint8(off + 1, addr.length);
    view.setUint16(off + 2, s.port, true);
    bytes.set(addr, off + 4);
    off += 4 + addr.length;
  });
  let data = off + count * entry;
  for (let i = 0; i < count; i++) {
    const d = batch.data(i);
    view.setUint32(off, d.length | (batch.truncated(i) ? TRUNCATED : 0), true);
    if (wide) view.setUint32(off + 4, senderOf[i], true);
    else view.setUint16(off + 4, senderOf[i], true);
    off += entry;
    bytes.set(d, data);
    data += d.length;
  }
  return out;
}

/**
 * Rewrites where an encoded batch goes (`bytes` starts at its header), in place: a batch passed on unchanged
 * (a sandbox's pass-through) is sent back without being encoded again.
 */
export function restampBatch(bytes: Uint8Array, to: Crossing): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER);
  const wide = view.getUint8(1) & FLAG_WIDE;
  view.setUint8(1, (to.rtcp ? FLAG_RTCP : 0) | (to.kind === "emitted" ? FLAG_EMITTED : 0) | wide);
  view.setUint16(2, to.port, true);
  view.setUint32(4, to.ap, true);
}

/** The bytes a host is written as: 4 for IPv4, 16 for IPv6, its UTF-8 text (up to 255 bytes) for a name. */
function addressBytes(host: string): Uint8Array {
  if (isIPv4(host)) return new Uint8Array(host.split(".").map(Number));
  if (isIPv6(host)) return ipv6Bytes(host);
  const name = encoder.encode(host);
  if (name.length > 255) throw new VmCodecError(`Cannot encode sender "${host.slice(0, 40)}...": too long`);
  return name;
}

/** A batch read from a crossing buffer; its views point into the buffer, which the receiver now owns. */
export class DecodedBatch implements Batch {
  readonly #bytes: Uint8Array;
  readonly #senders: Endpoint[];
  readonly #count: number;
  /**
   * Per datagram, three words: the offset of its bytes, its length (bit 31: truncated), its sender's index. One
   * array, so a batch costs one allocation outside the heap, not one per field.
   */
  readonly #table: Uint32Array<ArrayBuffer>;

  constructor(bytes: Uint8Array, senders: Endpoint[], count: number, table = new Uint32Array(count * 3)) {
    this.#bytes = bytes;
    this.#senders = senders;
    this.#count = count;
    this.#table = table;
  }

  get count(): number {
    return this.#count;
  }
  data(i: number): Uint8Array {
    const at = this.#table[i * 3];
    return this.#bytes.subarray(at, at + (this.#table[i * 3 + 1] & 0x7fff_ffff));
  }
  length(i: number): number {
    return this.#table[i * 3 + 1] & 0x7fff_ffff;
  }
  from(i: number): Endpoint {
    return this.#senders[this.#table[i * 3 + 2]];
  }
  truncated(i: number): boolean {
    return this.#table[i * 3 + 1] >= TRUNCATED;
  }
  /** Where datagram `i` starts in the bytes the batch was decoded from. */
  start(i: number): number {
    return this.#table[i * 3];
  }

  /**
   * The same datagrams read from `bytes` instead: a copy of the bytes `b` was decoded from (as long), so that what
   * was checked when they were decoded still holds. Shares `b`'s table.
   */
  static rebase(b: DecodedBatch, bytes: Uint8Array): DecodedBatch {
    if (bytes.length !== b.#bytes.length) {
      throw new RangeError(`Cannot rebase a batch of ${b.#bytes.length} bytes on ${bytes.length}`);
    }
    return new DecodedBatch(bytes, b.#senders, b.#count, b.#table);
  }

  /** Fills datagram `i` (for decodeBatch). */
  static set(b: DecodedBatch, i: number, at: number, length: number, from: number, truncated: boolean): void {
    b.#table[i * 3] = at;
    b.#table[i * 3 + 1] = truncated ? (length | TRUNCATED) >>> 0 : length;
    b.#table[i * 3 + 2] = from;
  }
}

export interface Decoded {
  readonly to: Crossing;
  readonly batch: DecodedBatch;
  /** The datagrams' bytes, summed (what port counters add). */
  readonly bytes: number;
  /** The whole buffer's bytes: what holding the batch costs. */
  readonly size: number;
}

/**
 * Reads a buffer made by encodeBatch (or the `length` bytes of one at `at`); throws VmCodecError when it is not one.
 * The batch's views point into `buffer`.
 */
export function decodeBatch(buffer: ArrayBuffer, at = 0, length = buffer.byteLength - at): Decoded {
  const bytes = new Uint8Array(buffer, at, length);
  const view = new DataView(buffer, at, length);
  const fail = (why: string): never => {
    throw new VmCodecError(`Cannot decode a crossing batch: ${why}`);
  };
  if (length < HEADER) fail(`${length} bytes is shorter than the header`);
  if (view.getUint8(0) !== VERSION) fail(`format version ${view.getUint8(0)}, expected ${VERSION}`);
  const flags = view.getUint8(1);
  const to: Crossing = {
    kind: flags & FLAG_EMITTED ? "emitted" : "deliver",
    ap: view.getUint32(4, true),
    port: view.getUint16(2, true),
    rtcp: (flags & FLAG_RTCP) !== 0,
  };
  const count = view.getUint32(8, true);
  const senderCount = view.getUint32(12, true);
  const entry = flags & FLAG_WIDE ? 8 : 6;
  let off = HEADER;
  const senders: Endpoint[] = [];
  for (let k = 0; k < senderCount; k++) {
    if (off + 4 > bytes.length) fail("the sender table runs past the end");
    const family = view.getUint8(off);
    const len = view.getUint8(off + 1);
    const port = view.getUint16(off + 2, true);
    if (off + 4 + len > bytes.length) fail("the sender table runs past the end");
    const addr = bytes.subarray(off + 4, off + 4 + len);
    let host: string;
    if (family === 4 && len === 4) host = `${addr[0]}.${addr[1]}.${addr[2]}.${addr[3]}`;
    else if (family === 6 && len === 16) host = ipv6Text(addr);
    else if (family === 0) host = decoder.decode(addr);
    else host = fail(`sender ${k} has family ${family} and ${len} address bytes`);
    senders.push({ host, port });
    off += 4 + len;
  }
  if (off + count * entry > bytes.length) fail(`${count} datagram entries run past the end`);
  const batch = new DecodedBatch(bytes, senders, count);
  let data = off + count * entry;
  for (let i = 0; i < count; i++, off += entry) {
    const word = view.getUint32(off, true);
    const length = word & 0x7fff_ffff;
    const from = entry === 8 ? view.getUint32(off + 4, true) : view.getUint16(off + 4, true);
    if (from >= senders.length) fail(`datagram ${i} names sender ${from} of ${senders.length}`);
    if (data + length > bytes.length) fail(`datagram ${i} runs past the end`);
    DecodedBatch.set(batch, i, data, length, from, (word & TRUNCATED) !== 0);
    data += length;
  }
  if (data !== bytes.length) fail(`${bytes.length - data} bytes left over`);
  return { to, batch, bytes: data - off, size: bytes.length };
}
