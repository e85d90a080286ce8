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

/** `127.0.0.1:80`, `[::1]:80`. */
export function formatHostPort(addr: HostPort): string {
  return addr.host.includes(":") ? `[${addr.host}]:${addr.port}` : `${addr.host}:${addr.port}`;
}
