/**
 * The part of SDP (RFC 8866) a node needs around ffmpeg: reading `a=rtpmap` (payload type -> encoding, clock rate,
 * channels) and `a=fmtp` of a session description, and writing the one-stream descriptions ffmpeg reads as its
 * input. Descriptions come from outside (a program's parameter, ffmpeg's `-sdp_file`), so the reader is total: it
 * never throws, skips what it does not understand, and keeps at most MAX_LINES lines. The writer takes only checked
 * values (an encoding name from a short alphabet, a number, an fmtp of printable characters), so no caller's text can
 * add a line of its own to a file ffmpeg reads.
 */

/** What `a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]` says. */
export interface RtpMap {
  /** As written, in upper case ("H264", "MP4V-ES", "MPV", "L16"). */
  readonly encoding: string;
  readonly clockRate: number;
  /** Audio channels; 1 when not given. */
  readonly channels: number;
}

/** One `m=` section. */
export interface SdpMedia {
  readonly kind: string;
  readonly port: number;
  readonly payloadTypes: readonly number[];
  readonly rtpmaps: ReadonlyMap<number, RtpMap>;
  /** `a=fmtp:<pt> <parameters>`: the parameter text as written. */
  readonly fmtps: ReadonlyMap<number, string>;
}

export interface SdpInfo {
  /** The address of the session's (or first media's) `c=` line, if any. */
  readonly address: string | null;
  readonly media: readonly SdpMedia[];
}

/** Lines read at most: a description of one or two streams is a few dozen. */
export const MAX_LINES = 512;

/**
 * RFC 3551's static payload types that name a video or audio encoding ffmpeg decodes, as rtpmaps, for inputs that
 * come without a description.
 */
export const STATIC_RTPMAPS: ReadonlyMap<number, RtpMap> = new Map([
  [0, { encoding: "PCMU", clockRate: 8000, channels: 1 }],
  [8, { encoding: "PCMA", clockRate: 8000, channels: 1 }],
  [10, { encoding: "L16", clockRate: 44100, channels: 2 }],
  [11, { encoding: "L16", clockRate: 44100, channels: 1 }],
  [14, { encoding: "MPA", clockRate: 90000, channels: 1 }],
  [26, { encoding: "JPEG", clockRate: 90000, channels: 1 }],
  [31, { encoding: "H261", clockRate: 90000, channels: 1 }],
  [32, { encoding: "MPV", clockRate: 90000, channels: 1 }],
  [33, { encoding: "MP2T", clockRate: 90000, channels: 1 }],
  [34, { encoding: "H263", clockRate: 90000, channels: 1 }],
]);

const ENCODING = /^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$/;
/** fmtp parameters: printable ASCII without the characters that could end the line or start another. */
const FMTP = /^[\x20-\x7e]{1,1024}$/;

/**
 * Reads the value of an rtpmap attribute, `96 H264/90000` or `10 L16/44100/2`; null when it is not one (a payload
 * type outside 0..127, a rate that is not a positive integer, channels outside 1..255).
 */
export function parseRtpmap(value: string): ({ payloadType: number } & RtpMap) | null {
  const m = /^\s*(\d{1,3})\s+([^/\s]+)\/(\d{1,9})(?:\/(\d{1,3}))?\s*$/.exec(value);
  if (!m) return null;
  const payloadType = Number(m[1]);
  const clockRate = Number(m[3]);
  const channels = m[4] === undefined ? 1 : Number(m[4]);
  if (payloadType > 127 || clockRate <= 0 || channels < 1 || channels > 255 || !ENCODING.test(m[2])) {
    return null;
  }
  return { payloadType, encoding: m[2].toUpperCase(), clockRate, channels };
}

/** Reads a session description; never throws. Lines may end in CRLF or LF; unknown lines are skipped. */
export function parseSdp(text: string): SdpInfo {
  const media: {
    kind: string;
    port: number;
    payloadTypes: number[];
    rtpmaps: Map<number, RtpMap>;
    fmtps: Map<number, string>;
  }[] = [];
  let address: string | null = null;
  const lines = text.split(/\r?\n/, MAX_LINES);
  for (const line of lines) {
    if (line.length < 2 || line[1] !== "=") continue;
    const value = line.slice(2);
    const current = media.at(-1);
    if (line[0] === "m") {
      const m = /^(\w+) (\d{1,5})(?:\/\d+)? [\w/]+((?: \d{1,3})*)\s*$/.exec(value);
      if (!m) continue;
      const pts = m[3].trim().split(/\s+/).filter(Boolean).map(Number).filter((n) => n <= 127);
      media.push({ kind: m[1], port: Number(m[2]), payloadTypes: pts, rtpmaps: new Map(), fmtps: new Map() });
    } else if (line[0] === "c") {
      const m = /^IN IP[46] ([0-9A-Fa-f.:]+)/.exec(value);
      if (m && address === null) address = m[1];
    } else if (line[0] === "a" && current) {
      if (value.startsWith("rtpmap:")) {
        const r = parseRtpmap(value.slice(7));
        if (r) current.rtpmaps.set(r.payloadType, r);
      } else if (value.startsWith("fmtp:")) {
        const m = /^(\d{1,3}) (.*)$/.exec(value.slice(5));
        if (m && Number(m[1]) <= 127 && FMTP.test(m[2])) current.fmtps.set(Number(m[1]), m[2].trim());
      }
    }
  }
  return { address, media };
}

/** The rtpmap of payload type `pt` in `media`, or the static one. */
export function rtpmapOf(pt: number, media?: SdpMedia): RtpMap | null {
  return media?.rtpmaps.get(pt) ?? STATIC_RTPMAPS.get(pt) ?? null;
}

/** One fmtp parameter (`config`, `sprop-parameter-sets`, ...), by case-insensitive name. */
export function fmtpParameter(fmtp: string, name: string): string | null {
  for (const part of fmtp.split(";")) {
    const eq = part.indexOf("=");
    if (eq < 0) continue;
    if (part.slice(0, eq).trim().toLowerCase() === name.toLowerCase()) return part.slice(eq + 1).trim();
  }
  return null;
}

/** An fmtp is printable ASCII of at most 1024 characters (what writeSdp accepts). */
export function isSafeFmtp(fmtp: string): boolean {
  return FMTP.test(fmtp);
}

export interface SdpStream {
  readonly kind: "video" | "audio";
  /** An IP literal (loopback in practice). */
  readonly address: string;
  readonly port: number;
  readonly payloadType: number;
  /** Written as `a=rtpmap`; required for dynamic payload types (96..127). */
  readonly rtpmap?: RtpMap;
  readonly fmtp?: string;
}

/** A one-stream description, CRLF line ends; throws RangeError on a value it will not write. */
export function writeSdp(s: SdpStream): string {
  const v6 = s.address.includes(":");
  if (!/^[0-9A-Fa-f.:]+$/.test(s.address)) {
    throw new RangeError(`Cannot write SDP: "${s.address}" is not an IP`);
  }
  if (!Number.isInteger(s.port) || s.port < 1 || s.port > 65534) {
    throw new RangeError(`Cannot write SDP: port ${s.port} is outside 1..65534`);
  }
  if (!Number.isInteger(s.payloadType) || s.payloadType < 0 || s.payloadType > 127) {
    throw new RangeError(`Cannot write SDP: payload type ${s.payloadType} is outside 0..127`);
  }
  if (s.payloadType >= 96 && !s.rtpmap) {
    throw new RangeError(`Cannot write SDP: dynamic payload type ${s.payloadType} needs an rtpmap`);
  }
  const r = s.rtpmap;
  if (r && (!ENCODING.test(r.encoding) || !(Number.isInteger(r.clockRate) && r.clockRate > 0))) {
    throw new RangeError(`Cannot write SDP: rtpmap ${r.encoding}/${r.clockRate} is not valid`);
  }
  if (s.fmtp !== undefined && !FMTP.test(s.fmtp)) {
    throw new RangeError("Cannot write SDP: the fmtp has characters other than printable ASCII");
  }
  const ip = v6 ? "IP6" : "IP4";
  const lines = [
    "v=0",
    `o=- 0 0 IN ${ip} ${s.address}`,
    "s=edgenode",
    `c=IN ${ip} ${s.address}`,
    "t=0 0",
    `m=${s.kind} ${s.port} RTP/AVP ${s.payloadType}`,
  ];
  if (r) {
    lines.push(
      `a=rtpmap:${s.payloadType} ${r.encoding}/${r.clockRate}${r.channels > 1 ? `/${r.channels}` : ""}`,
    );
  }
  if (s.fmtp) lines.push(`a=fmtp:${s.payloadType} ${s.fmtp}`);
  return lines.join("\r\n") + "\r\n";
}

/** Hex text to bytes (an MP4V-ES `config=`); null when it is not an even number of hex digits. */
export function hexBytes(text: string): Uint8Array | null {
  if (text.length % 2 !== 0 || !/^[0-9A-Fa-f]*$/.test(text)) return null;
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(i * 2, i * 2 + 2), 16);
  return out;
}
