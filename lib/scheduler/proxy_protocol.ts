/**
 * PROXY protocol headers (HAProxy's proxy-protocol spec, versions 1 and 2), sent first on a connection to a server
 * so that it learns the client's address although the connection comes from the scheduler. Version 1 is one text
 * line (`PROXY TCP4 src dst sport dport\r\n`), version 2 a binary block after a 12-byte signature. Pure: bytes in,
 * bytes out.
 *
 * Addresses: an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, what a dual-stack listener on `[::]` reports for an
 * IPv4 client) is written as the plain IPv4 address, so a server sees the same header whether the scheduler listens on
 * IPv4 or dual-stack. When one end is then IPv4 and the other IPv6, both are written as IPv6 (the IPv4 one mapped),
 * since a header has one family; this is what HAProxy does. The parser reports what is on the wire and does not unmap.
 */
import { type HostPort, ipv6Bytes, ipv6Text, isIPv4, isIPv6 } from "../net/address.ts";

/** The 12 bytes that open a version 2 header: `\r\n\r\n\0\r\nQUIT\n`. */
export const PROXY_V2_SIGNATURE: Uint8Array = Uint8Array.of(
  0x0d,
  0x0a,
  0x0d,
  0x0a,
  0x00,
  0x0d,
  0x0a,
  0x51,
  0x55,
  0x49,
  0x54,
  0x0a,
);

/** Longest version 1 line, CRLF included (the spec's bound: a receiver reads at most this much). */
export const PROXY_V1_MAX_LENGTH = 107;

const V1_PREFIX = "PROXY ";
const V2_VERSION = 0x20;
const CMD_LOCAL = 0x0;
const CMD_PROXY = 0x1;
const AF_UNSPEC = 0x0;
const AF_INET = 0x1;
const AF_INET6 = 0x2;
const AF_UNIX = 0x3;
const PROTO_STREAM = 0x1;
const PROTO_DGRAM = 0x2;
/** Bytes of the address block per family (INET, INET6, UNIX). */
const ADDR_LEN = [0, 12, 36, 216];

/** A header the parser could not accept; `offset` is the byte where it went wrong. */
export class ProxyHeaderError extends Error {
  override name = "ProxyHeaderError";
  constructor(message: string, readonly offset: number) {
    super(message);
  }
}

/**
 * The header for a proxied TCP connection from `source` (the client) to `destination` (the address it connected to).
 * Hosts must be IPv4 or IPv6 literals; anything else throws RangeError.
 */
export function proxyHeader(version: 1 | 2, source: HostPort, destination: HostPort): Uint8Array {
  let src = addressBytes(source, "source");
  let dst = addressBytes(destination, "destination");
  if (src.length !== dst.length) [src, dst] = [toV6(src), toV6(dst)];
  const v4 = src.length === 4;
  if (version === 1) {
    const text = (b: Uint8Array) => (v4 ? b.join(".") : v6Text(b));
    const line = `PROXY ${v4 ? "TCP4" : "TCP6"} ${text(src)} ${
      text(dst)
    } ${source.port} ${destination.port}\r\n`;
    return new TextEncoder().encode(line);
  }
  if (version !== 2) throw new RangeError(`PROXY protocol version must be 1 or 2, got ${version}`);
  const len = v4 ? ADDR_LEN[AF_INET] : ADDR_LEN[AF_INET6];
  const out = new Uint8Array(16 + len);
  out.set(PROXY_V2_SIGNATURE);
  out[12] = V2_VERSION | CMD_PROXY;
  out[13] = ((v4 ? AF_INET : AF_INET6) << 4) | PROTO_STREAM;
  const view = new DataView(out.buffer);
  view.setUint16(14, len);
  out.set(src, 16);
  out.set(dst, 16 + src.length);
  view.setUint16(16 + 2 * src.length, source.port);
  view.setUint16(18 + 2 * src.length, destination.port);
  return out;
}

/**
 * The header for a connection the proxy makes on its own behalf (a health check to a server that expects the
 * protocol): v1 `PROXY UNKNOWN\r\n`, v2 the LOCAL command with no addresses. The server uses the real endpoints.
 */
export function proxyHeaderLocal(version: 1 | 2): Uint8Array {
  if (version === 1) return new TextEncoder().encode("PROXY UNKNOWN\r\n");
  if (version !== 2) throw new RangeError(`PROXY protocol version must be 1 or 2, got ${version}`);
  const out = new Uint8Array(16);
  out.set(PROXY_V2_SIGNATURE);
  out[12] = V2_VERSION | CMD_LOCAL;
  out[13] = (AF_UNSPEC << 4) | 0;
  return out;
}

export interface ParsedProxyHeader {
  readonly version: 1 | 2;
  /** "local": the proxy's own connection (v2 LOCAL); the addresses are absent and the real endpoints apply. */
  readonly command: "proxy" | "local";
  /** v1 TCP4/TCP6/UNKNOWN; v2 adds UDP and UNIX (whose addresses are not decoded). */
  readonly protocol: "tcp4" | "tcp6" | "udp4" | "udp6" | "unix" | "unknown";
  readonly source?: HostPort;
  readonly destination?: HostPort;
  /** Bytes the header takes: the connection's own data starts here. */
  readonly length: number;
  /** v2: the bytes after the address block (type-length-value extensions), undecoded; empty for v1. */
  readonly tlvs: Uint8Array;
}

/**
 * Parses the header at the start of `bytes`. Returns null while `bytes` is a valid beginning that is not yet whole
 * (read more and call again with everything so far); throws ProxyHeaderError as soon as the bytes cannot become one.
 * Bytes after the header are left alone (see `length`).
 */
export function parseProxyHeader(bytes: Uint8Array): ParsedProxyHeader | null {
  if (bytes.length === 0) return null;
  if (bytes[0] === PROXY_V2_SIGNATURE[0]) return parseV2(bytes);
  if (bytes[0] === V1_PREFIX.charCodeAt(0)) return parseV1(bytes);
  throw new ProxyHeaderError('Not a PROXY protocol header (expected "PROXY " or the version 2 signature)', 0);
}

function parseV1(bytes: Uint8Array): ParsedProxyHeader | null {
  const limit = Math.min(bytes.length, PROXY_V1_MAX_LENGTH);
  let end = -1;
  for (let i = 0; i < limit; i++) {
    const c = bytes[i];
    if (i < V1_PREFIX.length && c !== V1_PREFIX.charCodeAt(i)) {
      throw new ProxyHeaderError('Version 1 header must start with "PROXY "', i);
    }
    if (c === 0x0d) {
      if (i + 1 < bytes.length && bytes[i + 1] !== 0x0a) {
        throw new ProxyHeaderError("CR not followed by LF", i + 1);
      }
      if (i + 1 >= limit) break;
      end = i;
      break;
    }
    if (c < 0x20 || c > 0x7e) {
      throw new ProxyHeaderError(`Unexpected byte 0x${hex(c)} in version 1 header`, i);
    }
  }
  if (end < 0) {
    if (bytes.length >= PROXY_V1_MAX_LENGTH) {
      throw new ProxyHeaderError(
        `Version 1 header longer than ${PROXY_V1_MAX_LENGTH} bytes`,
        PROXY_V1_MAX_LENGTH,
      );
    }
    return null;
  }
  const line = String.fromCharCode(...bytes.subarray(0, end));
  const fields = line.split(" ");
  const offsetOf = (field: number) => fields.slice(0, field).reduce((n, f) => n + f.length + 1, 0);
  const proto = fields[1];
  const length = end + 2;
  const base = { version: 1 as const, command: "proxy" as const, length, tlvs: new Uint8Array(0) };
  // The spec has the receiver ignore whatever follows UNKNOWN up to the CRLF.
  if (proto === "UNKNOWN") return { ...base, protocol: "unknown" };
  if (proto !== "TCP4" && proto !== "TCP6") {
    throw new ProxyHeaderError(
      `Unknown protocol "${proto ?? ""}" (expected TCP4, TCP6 or UNKNOWN)`,
      offsetOf(1),
    );
  }
  const empty = fields.indexOf("", 2);
  if (empty >= 0) throw new ProxyHeaderError("Fields must be separated by single spaces", offsetOf(empty));
  if (fields.length !== 6) {
    throw new ProxyHeaderError(
      `Version 1 ${proto} header needs 6 fields, got ${fields.length}`,
      fields.length > 6 ? offsetOf(6) - 1 : end,
    );
  }
  const isAddr = proto === "TCP4" ? isIPv4 : isIPv6;
  for (const i of [2, 3]) {
    if (!isAddr(fields[i])) {
      throw new ProxyHeaderError(
        `"${fields[i]}" is not a valid ${proto === "TCP4" ? "IPv4" : "IPv6"} address`,
        offsetOf(i),
      );
    }
  }
  const ports = [4, 5].map((i) => {
    const p = fields[i];
    if (!/^(0|[1-9][0-9]{0,4})$/.test(p) || Number(p) > 65535) {
      throw new ProxyHeaderError(`"${p}" is not a valid port (0..65535, no leading zeros)`, offsetOf(i));
    }
    return Number(p);
  });
  return {
    ...base,
    protocol: proto === "TCP4" ? "tcp4" : "tcp6",
    source: { host: fields[2], port: ports[0] },
    destination: { host: fields[3], port: ports[1] },
  };
}

function parseV2(bytes: Uint8Array): ParsedProxyHeader | null {
  const sigLen = Math.min(bytes.length, PROXY_V2_SIGNATURE.length);
  for (let i = 0; i < sigLen; i++) {
    if (bytes[i] !== PROXY_V2_SIGNATURE[i]) throw new ProxyHeaderError("Bad version 2 signature", i);
  }
  if (bytes.length > 12) {
    const verCmd = bytes[12];
    if ((verCmd & 0xf0) !== V2_VERSION) {
      throw new ProxyHeaderError(`Unsupported version ${verCmd >> 4} (expected 2)`, 12);
    }
    if ((verCmd & 0x0f) > CMD_PROXY) throw new ProxyHeaderError(`Unknown command ${verCmd & 0x0f}`, 12);
  }
  if (bytes.length > 13) {
    const fam = bytes[13] >> 4;
    const proto = bytes[13] & 0x0f;
    if (fam > AF_UNIX) throw new ProxyHeaderError(`Unknown address family ${fam}`, 13);
    if (proto > PROTO_DGRAM) throw new ProxyHeaderError(`Unknown transport protocol ${proto}`, 13);
  }
  if (bytes.length < 16) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const len = view.getUint16(14);
  const command = (bytes[12] & 0x0f) === CMD_LOCAL ? "local" : "proxy";
  const fam = bytes[13] >> 4;
  const proto = bytes[13] & 0x0f;
  let addrLen = proto !== 0 ? ADDR_LEN[fam] : 0;
  // A PROXY header must hold its addresses; a LOCAL one may leave them out, and they do not matter there.
  if (len < addrLen) {
    if (command === "proxy") {
      throw new ProxyHeaderError(`Length ${len} is too short for the address block (${addrLen} bytes)`, 14);
    }
    addrLen = 0;
  }
  const length = 16 + len;
  if (bytes.length < length) return null;
  const base = { version: 2, command, length, tlvs: bytes.slice(16 + addrLen, length) } as const;
  if (command === "local" || addrLen === 0) return { ...base, protocol: "unknown" };
  if (fam === AF_UNIX) return { ...base, protocol: "unix" };
  const size = fam === AF_INET ? 4 : 16;
  const text = (b: Uint8Array) => (size === 4 ? b.join(".") : v6Text(b));
  const src = bytes.subarray(16, 16 + size);
  const dst = bytes.subarray(16 + size, 16 + 2 * size);
  const protocol = proto === PROTO_STREAM ? (size === 4 ? "tcp4" : "tcp6") : (size === 4 ? "udp4" : "udp6");
  return {
    ...base,
    protocol,
    source: { host: text(src), port: view.getUint16(16 + 2 * size) },
    destination: { host: text(dst), port: view.getUint16(18 + 2 * size) },
  };
}

/** 4 bytes for IPv4 (IPv4-mapped IPv6 included), 16 for other IPv6. */
function addressBytes(addr: HostPort, what: string): Uint8Array {
  if (!Number.isInteger(addr.port) || addr.port < 0 || addr.port > 65535) {
    throw new RangeError(`Cannot build a PROXY header: ${what} port ${addr.port} is out of range 0..65535`);
  }
  if (isIPv4(addr.host)) return Uint8Array.from(addr.host.split(".").map(Number));
  if (isIPv6(addr.host)) {
    const b = ipv6Bytes(addr.host);
    return isMapped(b) ? b.slice(12) : b;
  }
  throw new RangeError(`Cannot build a PROXY header: ${what} "${addr.host}" is not an IP address`);
}

function isMapped(b: Uint8Array): boolean {
  return b.length === 16 && b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff;
}

function toV6(b: Uint8Array): Uint8Array {
  if (b.length === 16) return b;
  const out = new Uint8Array(16);
  out[10] = out[11] = 0xff;
  out.set(b, 12);
  return out;
}

/** RFC 5952 text, with an IPv4-mapped address in its dotted form (`::ffff:192.0.2.1`) as inet_ntop writes it. */
function v6Text(b: Uint8Array): string {
  return isMapped(b) ? `::ffff:${b.subarray(12).join(".")}` : ipv6Text(b);
}

function hex(n: number): string {
  return n.toString(16).padStart(2, "0");
}
