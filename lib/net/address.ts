/**
 * Address literals: parsing and checking `host:port`, IPv4 and IPv6 text. Pure; no sockets are touched here.
 */

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/** True for dotted-quad IPv4 text with four octets of 0..255 and no leading zeros. */
export function isIPv4(text: string): boolean {
  const parts = text.split(".");
  return parts.length === 4 &&
    parts.every((p) => /^(0|[1-9][0-9]{0,2})$/.test(p) && Number(p) <= 255);
}

/** True for IPv6 text (RFC 4291 forms, including `::` and a trailing IPv4 part); no zone ids. */
export function isIPv6(text: string): boolean {
  if (!/^[0-9a-fA-F:.]+$/.test(text) || text.length > 45) return false;
  let head = text;
  const lastColon = text.lastIndexOf(":");
  if (text.includes(".")) {
    if (!isIPv4(text.slice(lastColon + 1))) return false;
    head = text.slice(0, lastColon + 1) + "0:0";
  }
  const halves = head.split("::");
  if (halves.length > 2) return false;
  const groups = (s: string) => (s === "" ? [] : s.split(":"));
  const left = groups(halves[0]);
  const right = halves.length === 2 ? groups(halves[1]) : [];
  if (![...left, ...right].every((g) => /^[0-9a-fA-F]{1,4}$/.test(g))) return false;
  const count = left.length + right.length;
  return halves.length === 2 ? count <= 7 : count === 8;
}

/** True for a DNS host name (letters, digits, hyphens, dots; labels of 1..63). */
export function isHostName(text: string): boolean {
  return text.length <= 253 &&
    text.split(".").every((l) => /^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/.test(l));
}

/**
 * Parses `host:port`, `[v6]:port`; returns an error message instead of throwing so that callers can attach a
 * position. IPv4-looking text that is not valid IPv4 (`10.10.10.10.1`) is rejected, not taken as a host name.
 */
export function parseHostPort(text: string): HostPort | string {
  const m = /^(?:\[([^\]]*)\]|([^:\[\]]*)):([0-9]+)$/.exec(text);
  if (!m) return `Cannot parse "${text}" as ADDRESS:PORT (IPv6 in brackets: [::1]:8080)`;
  const host = m[1] ?? m[2];
  if (m[1] !== undefined && !isIPv6(host)) return `"${host}" is not a valid IPv6 address`;
  if (m[2] !== undefined) {
    if (host === "") return `Missing address before ":${m[3]}"`;
    if (/^[0-9.]+$/.test(host) && !isIPv4(host)) return `"${host}" is not a valid IPv4 address`;
    if (!isIPv4(host) && !isHostName(host)) return `"${host}" is not a valid address or host name`;
  }
  const port = Number(m[3]);
  if (port > 65535) return `Port ${m[3]} is out of range 0..65535`;
  return { host, port };
}

/** True for an IPv4 or IPv6 literal (what a UDP socket binds or sends to without a resolver). */
export function isIP(text: string): boolean {
  return isIPv4(text) || isIPv6(text);
}

/** `127.0.0.1:80`, `[::1]:80`. */
export function formatHostPort(addr: HostPort): string {
  return addr.host.includes(":") ? `[${addr.host}]:${addr.port}` : `${addr.host}:${addr.port}`;
}

/** The 16 bytes of an IPv6 address given as valid IPv6 text (check with isIPv6 first). */
export function ipv6Bytes(text: string): Uint8Array {
  const out = new Uint8Array(16);
  let head = text;
  const lastColon = text.lastIndexOf(":");
  if (text.includes(".")) {
    const v4 = text.slice(lastColon + 1).split(".").map(Number);
    out.set(v4, 12);
    head = text.slice(0, lastColon + 1) + "0:0";
  }
  const [left, right] = head.split("::");
  const groups = (s: string | undefined) => (s ? s.split(":") : []);
  const l = groups(left);
  const r = groups(right);
  const all = [...l, ...Array(8 - l.length - r.length).fill("0"), ...r];
  all.forEach((g, i) => {
    if (i >= 6 && text.includes(".")) return;
    const v = parseInt(g, 16);
    out[i * 2] = v >> 8;
    out[i * 2 + 1] = v & 0xff;
  });
  return out;
}

/** Canonical IPv6 text (RFC 5952: lower case, longest zero run as `::`) of 16 bytes. */
export function ipv6Text(bytes: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i] << 8) | bytes[i + 1]);
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [bestStart, bestLen] = [i, j - i];
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLen).join(":")}`;
}
