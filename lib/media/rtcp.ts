/**
 * Compound RTCP (RFC 3550 section 6) as far as synchronisation needs it: sender reports tie an SSRC's RTP clock to
 * wall-clock time, SDES CNAMEs tie SSRCs of one source together (the audio and video of one camera), BYE ends them.
 * RTCP arrives from the network, so parsing is strict and total: any input either yields a compound whose every part
 * was well-formed, or null, and never throws. Report blocks and other packet types (APP, RTPFB, XR, ...) are skipped
 * by their length; they are still checked for version and length so that garbage never passes as RTCP.
 */

import { ntpToUnixUs, unixUsToNtp } from "./ntp.ts";
import { readU32, writeU32 } from "./rtp.ts";

export interface SenderReport {
  ssrc: number;
  /** The report's NTP timestamp in Unix microseconds. */
  ntpUs: number;
  rtpTimestamp: number;
  /** The sender's packet count. */
  packets: number;
  /** The sender's payload octet count. */
  octets: number;
}

export interface RtcpCompound {
  senderReports: SenderReport[];
  /** SSRCs of the senders of receiver reports (not of the sources they report on). */
  receiverReportSsrcs: number[];
  cnames: { ssrc: number; cname: string }[];
  /** SSRCs that said goodbye. */
  byes: number[];
}

const SR = 200;
const RR = 201;
const SDES = 202;
const BYE = 203;
const SDES_CNAME = 1;
/** Bytes of one report block in an SR or RR. */
const REPORT_BLOCK = 24;

/**
 * The parts of a compound RTCP packet, or null unless every part is version 2 with a type in 192..223 (the RTCP range
 * of RFC 5761), the lengths add up to the datagram exactly, only the last part is padded, and SR, RR, SDES and BYE
 * bodies fit their lengths. The first part need not be an SR or RR: reduced-size RTCP (RFC 5506) sends others alone.
 */
export function parseRtcp(d: Uint8Array): RtcpCompound | null {
  // A compound begins with an SR or RR: at least a header and an SSRC, 8 bytes (isRtcp asks the same).
  if (d.length < 8) return null;
  const out: RtcpCompound = { senderReports: [], receiverReportSsrcs: [], cnames: [], byes: [] };
  let off = 0;
  while (off < d.length) {
    if (d.length - off < 4 || d[off] >> 6 !== 2) return null;
    const type = d[off + 1];
    if (type < 192 || type > 223) return null;
    const partLength = (((d[off + 2] << 8) | d[off + 3]) + 1) * 4;
    const end = off + partLength;
    if (end > d.length) return null;
    let bodyEnd = end;
    if (d[off] & 0x20) {
      // Padding is allowed on the last part only (RFC 3550 6.4.1); its count includes itself and spares the header.
      if (end !== d.length) return null;
      const pad = d[end - 1];
      if (pad === 0 || pad > partLength - 4) return null;
      bodyEnd = end - pad;
    }
    const count = d[off] & 0x1f;
    if (!parsePart(d, type, count, off, bodyEnd, out)) return null;
    off = end;
  }
  return out;
}

/** Reads one part's body into `out`; false when it does not fit between `off` and `end`. */
function parsePart(
  d: Uint8Array,
  type: number,
  count: number,
  off: number,
  end: number,
  out: RtcpCompound,
): boolean {
  switch (type) {
    case SR: {
      if (end - off < 28 + count * REPORT_BLOCK) return false;
      out.senderReports.push({
        ssrc: readU32(d, off + 4),
        ntpUs: ntpToUnixUs(readU32(d, off + 8), readU32(d, off + 12)),
        rtpTimestamp: readU32(d, off + 16),
        packets: readU32(d, off + 20),
        octets: readU32(d, off + 24),
      });
      return true;
    }
    case RR:
      if (end - off < 8 + count * REPORT_BLOCK) return false;
      out.receiverReportSsrcs.push(readU32(d, off + 4));
      return true;
    case SDES:
      return parseSdes(d, count, off + 4, end, out);
    case BYE: {
      let p = off + 4;
      if (end - p < count * 4) return false;
      for (let i = 0; i < count; i++, p += 4) out.byes.push(readU32(d, p));
      // An optional reason: a length byte and text, which must fit too.
      if (p < end && p + 1 + d[p] > end) return false;
      return true;
    }
    default:
      return true;
  }
}

/**
 * SDES chunks: an SSRC, items (type, length, text) up to a null item, then zeros to the next 32-bit boundary. Only
 * CNAME is kept; other items are skipped but must fit.
 */
function parseSdes(d: Uint8Array, count: number, p: number, end: number, out: RtcpCompound): boolean {
  const decoder = new TextDecoder();
  for (let i = 0; i < count; i++) {
    if (end - p < 4) return false;
    const ssrc = readU32(d, p);
    p += 4;
    for (;;) {
      if (p >= end) return false;
      const item = d[p];
      if (item === 0) break;
      if (p + 2 > end || p + 2 + d[p + 1] > end) return false;
      if (item === SDES_CNAME) {
        out.cnames.push({ ssrc, cname: decoder.decode(d.subarray(p + 2, p + 2 + d[p + 1])) });
      }
      p += 2 + d[p + 1];
    }
    // The null item ends the list; the chunk then ends at the next multiple of 4 from the part's start.
    p = p + 4 - (p & 3);
    if (p > end) return false;
  }
  return true;
}

/**
 * A compound of one sender report without report blocks, followed by an SDES with the CNAME when given (RFC 3550
 * requires a CNAME in every compound; a caller without one sends the SR alone). Numbers wrap to their field widths.
 */
export function writeSenderReport(o: SenderReport & { cname?: string }): Uint8Array {
  const cname = o.cname === undefined ? null : truncateUtf8(o.cname, 255);
  // SDES: header 4, SSRC 4, CNAME item 2 + text, a null item, padded to 4.
  const sdesLength = cname ? (4 + 4 + 2 + cname.length + 1 + 3) & ~3 : 0;
  const buf = new Uint8Array(28 + sdesLength);
  buf[0] = 0x80;
  buf[1] = SR;
  buf[3] = 6;
  writeU32(buf, 4, o.ssrc);
  const [s, f] = unixUsToNtp(o.ntpUs);
  writeU32(buf, 8, s);
  writeU32(buf, 12, f);
  writeU32(buf, 16, o.rtpTimestamp);
  writeU32(buf, 20, o.packets);
  writeU32(buf, 24, o.octets);
  if (cname) {
    buf[28] = 0x81;
    buf[29] = SDES;
    buf[30] = ((sdesLength / 4 - 1) >> 8) & 0xff;
    buf[31] = (sdesLength / 4 - 1) & 0xff;
    writeU32(buf, 32, o.ssrc);
    buf[36] = SDES_CNAME;
    buf[37] = cname.length;
    buf.set(cname, 38);
  }
  return buf;
}

/** UTF-8 bytes of `s`, cut at a character boundary to at most `max` bytes (an SDES item holds 255). */
function truncateUtf8(s: string, max: number): Uint8Array {
  const bytes = new TextEncoder().encode(s);
  if (bytes.length <= max) return bytes;
  let n = max;
  while (n > 0 && (bytes[n] & 0xc0) === 0x80) n--;
  return bytes.subarray(0, n);
}
