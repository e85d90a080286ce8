/**
 * The capture file format of the "saver" and "player" active programs: classic libpcap
 * (https://wiki.wireshark.org/Development/LibpcapFileFormat) with each datagram wrapped in a synthetic IPv4 or
 * IPv6 header and a UDP header. We keep pcap rather than a private format because tshark, Wireshark, tcpdump and
 * editcap open it as is, so an operator can inspect, filter or trim a capture with the usual tools; the synthetic
 * headers carry the two endpoints (and correct checksums, so those tools show no errors), and the per-record
 * timestamps let the player replay at the recorded pacing.
 *
 * Pure: the writer fills a buffer the caller owns and the reader is a state machine fed with chunks; neither
 * touches files.
 */
import { ipv6Text } from "../net/address.ts";
import type { Endpoint } from "../net/udp.ts";

/** One datagram in a capture. `timeUs` is microseconds since the epoch (fractional for nanosecond files). */
export interface PcapRecord {
  readonly timeUs: number;
  readonly from: Endpoint;
  readonly to: Endpoint;
  readonly data: Uint8Array;
}

/** What a file header says. */
export interface PcapFileInfo {
  readonly bigEndian: boolean;
  /** True for the 0xa1b23c4d magic: the fraction field counts nanoseconds, not microseconds. */
  readonly nanoseconds: boolean;
  readonly versionMajor: number;
  readonly versionMinor: number;
  readonly snaplen: number;
  readonly linktype: number;
}

/** Counts a reader keeps; `skipped` and `cut` say what a replay would leave out. */
export interface PcapReaderStats {
  /** Bytes pushed so far. */
  bytes: number;
  /** UDP records delivered. */
  records: number;
  /** Records that are not whole UDP datagrams: other protocols, IP fragments, malformed headers. */
  skipped: number;
  /** UDP records whose datagram the capture did not keep whole (a snap length smaller than the datagram). */
  cut: number;
}

/** How a capture ended. */
export interface PcapEnd {
  /** True when the file stops inside a record, as one does when the writer crashed mid-write. */
  readonly truncated: boolean;
  /** Bytes of that incomplete record (0 when not truncated). */
  readonly trailingBytes: number;
}

/** A whole capture read at once (readPcap). */
export interface PcapCapture extends PcapEnd {
  readonly info: PcapFileInfo;
  readonly records: PcapRecord[];
  readonly stats: PcapReaderStats;
}

/** Bytes that are not a capture this module reads; `offset` is where in the file the problem is. */
export class PcapFormatError extends Error {
  override name = "PcapFormatError";
  readonly offset: number;

  constructor(message: string, offset: number) {
    super(message);
    this.offset = offset;
  }
}

export const PCAP_HEADER_SIZE = 24;
const RECORD_HEADER_SIZE = 16;
const IPV4_HEADER_SIZE = 20;
const IPV6_HEADER_SIZE = 40;
const UDP_HEADER_SIZE = 8;
/** The IP length fields are 16 bits: IPv4 counts its own header in them, IPv6 only the UDP header. */
const MAX_PAYLOAD_V4 = 65535 - IPV4_HEADER_SIZE - UDP_HEADER_SIZE;
const MAX_PAYLOAD_V6 = 65535 - UDP_HEADER_SIZE;
/** Room for the largest datagram plus the largest synthetic header, so no record the writer makes is snapped. */
const SNAPLEN = 65535 + IPV6_HEADER_SIZE + UDP_HEADER_SIZE;
/** Wireshark refuses records larger than this, so a bigger length means a corrupt file, not a big datagram. */
const MAX_RECORD = 262144;

const LINKTYPE_RAW = 101;
const LINKTYPE_IPV4 = 228;
const LINKTYPE_IPV6 = 229;
/** Magics as read little-endian. */
const MAGIC_US = 0xa1b2c3d4;
const MAGIC_NS = 0xa1b23c4d;
const MAGIC_US_SWAPPED = 0xd4c3b2a1;
const MAGIC_NS_SWAPPED = 0x4d3cb2a1;
const MAGIC_PCAPNG = 0x0a0d0d0a;

const PROTO_UDP = 17;
const DOT = 0x2e;
const COLON = 0x3a;

/** The largest record writePcapRecord makes: a buffer this big takes any datagram. */
export const PCAP_MAX_RECORD_SIZE = RECORD_HEADER_SIZE + IPV6_HEADER_SIZE + UDP_HEADER_SIZE + MAX_PAYLOAD_V6;

/** The 24-byte file header: little-endian, microsecond timestamps, version 2.4, raw IP link type. */
export function pcapFileHeader(): Uint8Array {
  const h = new Uint8Array(PCAP_HEADER_SIZE);
  const v = new DataView(h.buffer);
  v.setUint32(0, MAGIC_US, true);
  v.setUint16(4, 2, true);
  v.setUint16(6, 4, true);
  // Bytes 8..15 (time zone offset, timestamp accuracy) are zero in every writer in practice.
  v.setUint32(16, SNAPLEN, true);
  v.setUint32(20, LINKTYPE_RAW, true);
  return h;
}

/** True when a record between these endpoints gets an IPv6 header (either endpoint is IPv6). */
export function pcapNeedsIPv6(from: Endpoint, to: Endpoint): boolean {
  return from.host.includes(":") || to.host.includes(":");
}

/** Bytes writePcapRecord uses for a payload of `payloadLength` (see pcapNeedsIPv6 for `v6`). */
export function pcapRecordSize(payloadLength: number, v6: boolean): number {
  return RECORD_HEADER_SIZE + (v6 ? IPV6_HEADER_SIZE : IPV4_HEADER_SIZE) + UDP_HEADER_SIZE + payloadLength;
}

/**
 * Writes one record (record header, IP header, UDP header, payload) into `out` at `offset` and returns the offset
 * after it. Hosts must be IP literals; an IPv4 endpoint paired with an IPv6 one is written as ::ffff:a.b.c.d.
 * Allocates nothing on success, so a saver can call it per datagram into one reusable buffer.
 */
export function writePcapRecord(out: Uint8Array, offset: number, rec: PcapRecord): number {
  const { from, to, data } = rec;
  const v6 = pcapNeedsIPv6(from, to);
  const len = data.length;
  if (len > (v6 ? MAX_PAYLOAD_V6 : MAX_PAYLOAD_V4)) {
    throw new RangeError(
      `Cannot write capture record: a payload of ${len} bytes exceeds the ${
        v6 ? "IPv6" : "IPv4"
      } maximum of ${v6 ? MAX_PAYLOAD_V6 : MAX_PAYLOAD_V4}`,
    );
  }
  const end = offset + pcapRecordSize(len, v6);
  if (end > out.length) {
    throw new RangeError(
      `Cannot write capture record: it needs ${
        end - offset
      } bytes at offset ${offset}, the buffer has ${out.length}`,
    );
  }
  checkPort(from.port);
  checkPort(to.port);
  if (!(rec.timeUs >= 0) || rec.timeUs >= 2 ** 32 * 1e6) {
    throw new RangeError(`Cannot write capture record: time ${rec.timeUs} µs is outside the pcap range`);
  }

  const us = Math.floor(rec.timeUs);
  const sec = Math.floor(us / 1e6);
  const ipLength = end - offset - RECORD_HEADER_SIZE;
  putLe32(out, offset, sec);
  putLe32(out, offset + 4, us - sec * 1e6);
  putLe32(out, offset + 8, ipLength);
  putLe32(out, offset + 12, ipLength);

  const ip = offset + RECORD_HEADER_SIZE;
  const udpLength = UDP_HEADER_SIZE + len;
  let udp: number;
  let pseudo: number;
  if (v6) {
    out.fill(0, ip, ip + 4);
    out[ip] = 0x60;
    putBe16(out, ip + 4, udpLength);
    out[ip + 6] = PROTO_UDP;
    out[ip + 7] = 64;
    putAddress6(out, ip + 8, from.host);
    putAddress6(out, ip + 24, to.host);
    udp = ip + IPV6_HEADER_SIZE;
    // RFC 8200 8.1 pseudo-header: addresses, 32-bit upper-layer length, next header.
    pseudo = sum16(out, ip + 8, ip + 40) + udpLength + PROTO_UDP;
  } else {
    out[ip] = 0x45;
    out[ip + 1] = 0;
    putBe16(out, ip + 2, ipLength);
    out.fill(0, ip + 4, ip + 8); // identification, flags and fragment offset: never fragmented
    out[ip + 8] = 64;
    out[ip + 9] = PROTO_UDP;
    out[ip + 10] = 0;
    out[ip + 11] = 0;
    putAddress4(out, ip + 12, from.host);
    putAddress4(out, ip + 16, to.host);
    putBe16(out, ip + 10, 0xffff - fold(sum16(out, ip, ip + IPV4_HEADER_SIZE)));
    udp = ip + IPV4_HEADER_SIZE;
    pseudo = sum16(out, ip + 12, ip + 20) + PROTO_UDP + udpLength;
  }
  putBe16(out, udp, from.port);
  putBe16(out, udp + 2, to.port);
  putBe16(out, udp + 4, udpLength);
  out[udp + 6] = 0;
  out[udp + 7] = 0;
  out.set(data, udp + UDP_HEADER_SIZE);
  const check = 0xffff - fold(pseudo + sum16(out, udp, end));
  // A computed 0 goes out as 0xffff: for IPv4, 0 means "no checksum"; for IPv6, 0 is not allowed.
  putBe16(out, udp + 6, check === 0 ? 0xffff : check);
  return end;
}

/**
 * Reads a capture fed in chunks of any size: `push` returns the UDP records completed by each chunk, `finish`
 * says whether the file ended inside a record. Reads both byte orders, microsecond and nanosecond timestamps, and
 * the raw IP, IPv4 and IPv6 link types. A record's `data` is a copy, so chunks may be reused by the caller.
 * After a PcapFormatError the reader is finished with.
 */
export class PcapReader {
  #info: PcapFileInfo | null = null;
  readonly #stats: PcapReaderStats = { bytes: 0, records: 0, skipped: 0, cut: 0 };
  /** Holds a unit (file header, record header or record body) that arrives over more than one chunk. */
  #part = new Uint8Array(256);
  #have = 0;
  #need = PCAP_HEADER_SIZE;
  #inBody = false;
  /** File offset of the unit being read, for error messages. */
  #offset = 0;
  #index = 0;
  #timeUs = 0;
  #origLen = 0;

  /** The file header, once its 24 bytes have been read. */
  get info(): PcapFileInfo | null {
    return this.#info;
  }

  get stats(): Readonly<PcapReaderStats> {
    return this.#stats;
  }

  push(chunk: Uint8Array): PcapRecord[] {
    const out: PcapRecord[] = [];
    this.#stats.bytes += chunk.length;
    let off = 0;
    while (off < chunk.length) {
      const need = this.#need;
      if (this.#have === 0 && chunk.length - off >= need) {
        // The usual case: the whole unit is in this chunk, so it is read in place without a copy.
        off += need;
        this.#unit(chunk, off - need, out);
        continue;
      }
      if (this.#part.length < need) this.#part = new Uint8Array(Math.max(need, this.#part.length * 2));
      const take = Math.min(need - this.#have, chunk.length - off);
      this.#part.set(chunk.subarray(off, off + take), this.#have);
      this.#have += take;
      off += take;
      if (this.#have === need) {
        this.#have = 0;
        this.#unit(this.#part, 0, out);
      }
    }
    return out;
  }

  /** Call at the end of the file. Throws PcapFormatError when the file ends before its header is complete. */
  finish(): PcapEnd {
    if (this.#info === null) {
      if (this.#have >= 4) checkMagic(this.#part, 0);
      throw new PcapFormatError(
        `Cannot read capture: the file ends after ${this.#have} bytes, inside the ${PCAP_HEADER_SIZE}-byte header`,
        this.#have,
      );
    }
    const trailing = this.#inBody ? RECORD_HEADER_SIZE + this.#have : this.#have;
    return { truncated: trailing > 0, trailingBytes: trailing };
  }

  /** Reads the unit of `#need` bytes at `b[at]` and sets up the next one. */
  #unit(b: Uint8Array, at: number, out: PcapRecord[]): void {
    const size = this.#need;
    const info = this.#info;
    if (info === null) {
      this.#info = readFileHeader(b, at);
      this.#need = RECORD_HEADER_SIZE;
    } else if (!this.#inBody) {
      const be = info.bigEndian;
      const frac = getU32(b, at + 4, be);
      const inclLen = getU32(b, at + 8, be);
      if (inclLen > MAX_RECORD) {
        throw new PcapFormatError(
          `Cannot read capture: record ${this.#index + 1} at byte ${this.#offset} claims ${inclLen} bytes, ` +
            `more than the ${MAX_RECORD} a capture record can have`,
          this.#offset,
        );
      }
      this.#timeUs = getU32(b, at, be) * 1e6 + (info.nanoseconds ? frac / 1000 : frac);
      this.#origLen = getU32(b, at + 12, be);
      this.#inBody = true;
      this.#need = inclLen;
      // A zero-length body has no bytes to arrive, so push's loop would never reach it.
      if (inclLen === 0) {
        this.#offset += size;
        this.#unit(b, at + size, out);
        return;
      }
    } else {
      const rec = decodeDatagram(b, at, at + size, info.linktype, this.#timeUs);
      if (typeof rec === "object") {
        out.push(rec);
        this.#stats.records++;
      } else if (rec === SHORT && this.#origLen > size) {
        this.#stats.cut++;
      } else {
        this.#stats.skipped++;
      }
      this.#index++;
      this.#inBody = false;
      this.#need = RECORD_HEADER_SIZE;
    }
    this.#offset += size;
  }
}

/** A whole capture in memory: the records, the header and the counts. For tests and small files. */
export function readPcap(bytes: Uint8Array): PcapCapture {
  const reader = new PcapReader();
  const records = reader.push(bytes);
  const end = reader.finish();
  return { ...end, info: reader.info!, records, stats: { ...reader.stats } };
}

function checkPort(port: number): void {
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`Cannot write capture record: port ${port} is outside 0..65535`);
  }
}

function notAnAddress(host: string, family: string): RangeError {
  return new RangeError(`Cannot write capture record: "${host}" is not an ${family} address`);
}

/** Recently written IPv4 texts and their value: a saver writes the same few endpoints into every record. */
const v4Known = new Map<string, number>();
const V4_KNOWN_MAX = 256;

function putAddress4(out: Uint8Array, at: number, host: string): void {
  const known = v4Known.get(host);
  if (known !== undefined) {
    out[at] = known >>> 24;
    out[at + 1] = (known >>> 16) & 255;
    out[at + 2] = (known >>> 8) & 255;
    out[at + 3] = known & 255;
    return;
  }
  if (!putIPv4(out, at, host, 0, host.length)) throw notAnAddress(host, "IPv4");
  if (v4Known.size >= V4_KNOWN_MAX) v4Known.clear();
  v4Known.set(host, ((out[at] << 24) | (out[at + 1] << 16) | (out[at + 2] << 8) | out[at + 3]) >>> 0);
}

function putAddress6(out: Uint8Array, at: number, host: string): void {
  if (!host.includes(":")) {
    out.fill(0, at, at + 10);
    out[at + 10] = 0xff;
    out[at + 11] = 0xff;
    putAddress4(out, at + 12, host);
  } else if (!putIPv6(out, at, host)) {
    throw notAnAddress(host, "IPv6");
  }
}

/**
 * Dotted-quad text in `s[start..end)` to 4 bytes at `out[at]`; false when it is not valid. Scans char codes
 * rather than splitting so that writing a record allocates nothing.
 */
function putIPv4(out: Uint8Array, at: number, s: string, start: number, end: number): boolean {
  let octet = 0;
  let digits = 0;
  let k = 0;
  for (let i = start; i <= end; i++) {
    const c = i < end ? s.charCodeAt(i) : DOT;
    if (c === DOT) {
      if (digits === 0 || k === 4) return false;
      out[at + k++] = octet;
      octet = 0;
      digits = 0;
    } else if (c >= 0x30 && c <= 0x39) {
      if (digits > 0 && octet === 0) return false; // a leading zero
      octet = octet * 10 + c - 0x30;
      if (++digits > 3 || octet > 255) return false;
    } else {
      return false;
    }
  }
  return k === 4;
}

/** IPv6 text (RFC 4291 forms; a zone id is ignored) to 16 bytes at `out[at]`, without allocating. */
function putIPv6(out: Uint8Array, at: number, s: string): boolean {
  const zone = s.indexOf("%");
  const end = zone < 0 ? s.length : zone;
  let n = 0;
  let gap = -1;
  let i = 0;
  if (s.charCodeAt(0) === COLON) {
    if (s.charCodeAt(1) !== COLON) return false;
    gap = 0;
    i = 2;
  }
  while (i < end) {
    if (n === 16) return false;
    const start = i;
    let v = 0;
    for (let h = hexValue(s.charCodeAt(i)); h >= 0 && i < end; h = hexValue(s.charCodeAt(++i))) {
      v = v * 16 + h;
    }
    if (i < end && s.charCodeAt(i) === DOT) {
      if (n > 12 || !putIPv4(out, at + n, s, start, end)) return false;
      n += 4;
      break;
    }
    if (i === start || i - start > 4) return false;
    out[at + n] = v >> 8;
    out[at + n + 1] = v & 0xff;
    n += 2;
    if (i === end) break;
    if (s.charCodeAt(i) !== COLON || ++i === end) return false;
    if (s.charCodeAt(i) === COLON) {
      if (gap >= 0) return false;
      gap = n;
      i++;
    }
  }
  if (gap < 0) return n === 16;
  // "::" stands for at least one zero group, so 8 groups beside it are too many.
  if (n === 16) return false;
  const tail = n - gap;
  out.copyWithin(at + 16 - tail, at + gap, at + n);
  out.fill(0, at + gap, at + 16 - tail);
  return true;
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  return l >= 0x61 && l <= 0x66 ? l - 0x61 + 10 : -1;
}

/** The Internet checksum's sum of big-endian 16-bit words over `b[start..end)`, an odd last byte padded. */
function sum16(b: Uint8Array, start: number, end: number): number {
  if (end - start >= WIDE_SUM_MIN) return wideSum16(b, start, end);
  let sum = 0;
  let i = start;
  for (; i + 1 < end; i += 2) sum += (b[i] << 8) | b[i + 1];
  if (i < end) sum += b[i] << 8;
  return sum;
}

/** From this many bytes on, sum16 adds 32-bit words (a quarter of the loads of pairs of bytes: 0.3 µs for 1450 B). */
const WIDE_SUM_MIN = 64;
/** The 32-bit view last used by wideSum16: a saver writes many records into one buffer. */
let wideBuffer: ArrayBufferLike | null = null;
let wideWords: Uint32Array<ArrayBufferLike> = new Uint32Array(0);

/**
 * sum16 by 32-bit words read in the machine's (little-endian) order. A ones-complement sum does not depend on byte
 * order (RFC 1071, 2.B): the words' sum folded to 16 bits is the big-endian sum with its bytes swapped, and where the
 * aligned words start at an odd distance from `start`, the pairs they make are `start`'s pairs shifted by one byte,
 * which swaps their sum once more. Bytes before the first aligned word and after the last are added as pairs.
 */
function wideSum16(b: Uint8Array, start: number, end: number): number {
  const abs = b.byteOffset + start;
  const headEnd = start + ((4 - (abs & 3)) & 3);
  let sum = 0;
  let i = start;
  for (; i + 1 < headEnd; i += 2) sum += (b[i] << 8) | b[i + 1];
  const odd = i < headEnd;
  if (odd) sum += b[i++] << 8;
  const words = (end - i) >>> 2;
  // A resizable buffer may have changed its length since the view was made: the view is made again then.
  if (wideBuffer !== b.buffer || wideWords.length !== b.buffer.byteLength >>> 2) {
    wideBuffer = b.buffer;
    wideWords = new Uint32Array(b.buffer, 0, b.buffer.byteLength >>> 2);
  }
  const u = wideWords;
  const first = (b.byteOffset + i) >>> 2;
  let w = 0;
  for (let k = first, last = first + words; k < last; k++) w += u[k];
  i += words * 4;
  let tail = 0;
  for (; i + 1 < end; i += 2) tail += (b[i] << 8) | b[i + 1];
  if (i < end) tail += b[i] << 8;
  // Even head: the words' little-endian sum swapped is their big-endian sum, and the tail pairs as `start` does.
  // Odd head: the big-endian pairs from `i` are `start`'s shifted by one, so the words need no swap and the tail
  // (summed from `i`) one.
  return odd ? sum + fold(w) + swap16(fold(tail)) : sum + swap16(fold(w)) + tail;
}

function swap16(x: number): number {
  return ((x & 0xff) << 8) | (x >>> 8);
}

/** Folds carries back in (ones-complement addition). */
function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

function putBe16(out: Uint8Array, at: number, v: number): void {
  out[at] = v >> 8;
  out[at + 1] = v & 0xff;
}

function putLe32(out: Uint8Array, at: number, v: number): void {
  out[at] = v & 0xff;
  out[at + 1] = (v >>> 8) & 0xff;
  out[at + 2] = (v >>> 16) & 0xff;
  out[at + 3] = v >>> 24;
}

function getBe16(b: Uint8Array, at: number): number {
  return (b[at] << 8) | b[at + 1];
}

function getU32(b: Uint8Array, at: number, bigEndian: boolean): number {
  return bigEndian
    ? ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0
    : ((b[at + 3] << 24) | (b[at + 2] << 16) | (b[at + 1] << 8) | b[at]) >>> 0;
}

/** Throws PcapFormatError unless the 4 bytes at `b[at]` are a pcap magic; returns it as read little-endian. */
function checkMagic(b: Uint8Array, at: number): number {
  const magic = getU32(b, at, false);
  if (magic === MAGIC_US || magic === MAGIC_NS || magic === MAGIC_US_SWAPPED || magic === MAGIC_NS_SWAPPED) {
    return magic;
  }
  if (magic === MAGIC_PCAPNG) {
    throw new PcapFormatError(
      `Cannot read capture: pcapng is not supported (convert it with "editcap -F pcap IN OUT")`,
      0,
    );
  }
  const hex = getU32(b, at, true).toString(16).padStart(8, "0");
  throw new PcapFormatError(`Cannot read capture: not a pcap file (magic 0x${hex})`, 0);
}

function readFileHeader(b: Uint8Array, at: number): PcapFileInfo {
  const magic = checkMagic(b, at);
  const bigEndian = magic === MAGIC_US_SWAPPED || magic === MAGIC_NS_SWAPPED;
  const get16 = (o: number) => bigEndian ? getBe16(b, at + o) : b[at + o] | (b[at + o + 1] << 8);
  const info: PcapFileInfo = {
    bigEndian,
    nanoseconds: magic === MAGIC_NS || magic === MAGIC_NS_SWAPPED,
    versionMajor: get16(4),
    versionMinor: get16(6),
    snaplen: getU32(b, at + 16, bigEndian),
    // The upper bits carry an FCS length and flags (pcap-linktype(7)); the link type is the low 16.
    linktype: getU32(b, at + 20, bigEndian) & 0xffff,
  };
  if (info.versionMajor !== 2) {
    throw new PcapFormatError(
      `Cannot read capture: version ${info.versionMajor}.${info.versionMinor} is not supported (expected 2.x)`,
      4,
    );
  }
  if (info.linktype !== LINKTYPE_RAW && info.linktype !== LINKTYPE_IPV4 && info.linktype !== LINKTYPE_IPV6) {
    throw new PcapFormatError(
      `Cannot read capture: link type ${info.linktype} is not supported ` +
        `(known: ${LINKTYPE_RAW} raw IP, ${LINKTYPE_IPV4} IPv4, ${LINKTYPE_IPV6} IPv6)`,
      20,
    );
  }
  return info;
}

/** decodeDatagram outcomes other than a record. */
const SKIP = 0;
/** The headers say the datagram goes on past the captured bytes. */
const SHORT = 1;

/** The UDP datagram in the IP packet `b[start..end)`, or why there is none. */
function decodeDatagram(
  b: Uint8Array,
  start: number,
  end: number,
  linktype: number,
  timeUs: number,
): PcapRecord | typeof SKIP | typeof SHORT {
  if (start === end) return SHORT;
  const version = b[start] >> 4;
  if ((linktype === LINKTYPE_IPV4 && version !== 4) || (linktype === LINKTYPE_IPV6 && version !== 6)) {
    return SKIP;
  }
  let udp: number;
  let ipEnd: number;
  if (version === 4) {
    const ihl = (b[start] & 0x0f) * 4;
    if (ihl < IPV4_HEADER_SIZE) return SKIP;
    if (start + ihl > end) return SHORT;
    // A fragment holds part of a datagram (or none of its UDP header), so it cannot be replayed alone.
    if (getBe16(b, start + 6) & 0x3fff || b[start + 9] !== PROTO_UDP) return SKIP;
    udp = start + ihl;
    ipEnd = start + getBe16(b, start + 2);
  } else if (version === 6) {
    if (start + IPV6_HEADER_SIZE > end) return SHORT;
    udp = start + IPV6_HEADER_SIZE;
    ipEnd = udp + getBe16(b, start + 4);
    let next = b[start + 6];
    // Hop-by-hop, routing and destination options headers may come before UDP; a fragment header may not.
    while (next === 0 || next === 43 || next === 60) {
      if (udp + 8 > end) return SHORT;
      next = b[udp];
      udp += (b[udp + 1] + 1) * 8;
    }
    if (next !== PROTO_UDP) return SKIP;
  } else {
    return SKIP;
  }
  if (udp + UDP_HEADER_SIZE > end) return SHORT;
  const udpEnd = udp + getBe16(b, udp + 4);
  if (udpEnd < udp + UDP_HEADER_SIZE || udpEnd > ipEnd) return SKIP;
  if (udpEnd > end) return SHORT;
  const v4 = version === 4;
  return {
    timeUs,
    from: { host: v4 ? ipv4Text(b, start + 12) : addressText6(b, start + 8), port: getBe16(b, udp) },
    to: { host: v4 ? ipv4Text(b, start + 16) : addressText6(b, start + 24), port: getBe16(b, udp + 2) },
    data: b.slice(udp + UDP_HEADER_SIZE, udpEnd),
  };
}

function ipv4Text(b: Uint8Array, at: number): string {
  return `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;
}

/** IPv4-mapped addresses come back as dotted quads: the writer maps IPv4 endpoints this way, and the player
 * must send to the IPv4 endpoint that was recorded. */
function addressText6(b: Uint8Array, at: number): string {
  let mapped = b[at + 10] === 0xff && b[at + 11] === 0xff;
  for (let i = 0; mapped && i < 10; i++) mapped = b[at + i] === 0;
  return mapped ? ipv4Text(b, at + 12) : ipv6Text(b.subarray(at, at + 16));
}
