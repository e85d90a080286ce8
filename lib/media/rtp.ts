/**
 * RTP and RTCP header checks (RFC 3550): enough to tell a media datagram from noise on a port that carries one,
 * and to read the fields analysers need. Pure functions of the bytes.
 */

/** True for a datagram that can be RTP: version 2, a fixed header, CSRCs and padding that fit. */
export function isRtp(d: Uint8Array): boolean {
  if (d.length < 12 || d[0] >> 6 !== 2) return false;
  const pt = d[1] & 0x7f;
  // Payload types 72..76 collide with RTCP packet types 200..204 when the marker bit is set (RFC 5761).
  if (pt >= 72 && pt <= 76) return false;
  const csrc = d[0] & 0x0f;
  let header = 12 + csrc * 4;
  if (d.length < header) return false;
  if (d[0] & 0x10) {
    if (d.length < header + 4) return false;
    header += 4 + ((d[header + 2] << 8) | d[header + 3]) * 4;
    if (d.length < header) return false;
  }
  if (d[0] & 0x20) {
    const pad = d[d.length - 1];
    if (pad === 0 || header + pad > d.length) return false;
  }
  return true;
}

/** True for a datagram that can be a compound RTCP packet: every part version 2, a known type, lengths adding up. */
export function isRtcp(d: Uint8Array): boolean {
  if (d.length < 8) return false;
  let off = 0;
  while (off < d.length) {
    if (d.length - off < 4 || d[off] >> 6 !== 2) return false;
    const type = d[off + 1];
    if (type < 192 || type > 223) return false;
    off += (((d[off + 2] << 8) | d[off + 3]) + 1) * 4;
  }
  return off === d.length;
}

/** The 16-bit sequence number of an RTP datagram (check isRtp first). */
export function rtpSequence(d: Uint8Array): number {
  return (d[2] << 8) | d[3];
}

/** The fields of an RTP header that relays, syncers and analysers read (RFC 3550 section 5.1). */
export interface RtpHeader {
  marker: boolean;
  payloadType: number;
  sequence: number;
  timestamp: number;
  ssrc: number;
  /** Offset of the payload: the fixed header, CSRCs and the header extension. */
  headerLength: number;
  /** Bytes of payload, without the padding. */
  payloadLength: number;
}

/**
 * The header of an RTP datagram, or null when it is not one (isRtp false). RTP carries no length of its own, so a
 * datagram cut short after its header still parses, with a shorter payload: the datagram boundary is the length.
 */
export function parseRtp(d: Uint8Array): RtpHeader | null {
  if (!isRtp(d)) return null;
  let headerLength = 12 + (d[0] & 0x0f) * 4;
  if (d[0] & 0x10) headerLength += 4 + ((d[headerLength + 2] << 8) | d[headerLength + 3]) * 4;
  const padding = d[0] & 0x20 ? d[d.length - 1] : 0;
  return {
    marker: (d[1] & 0x80) !== 0,
    payloadType: d[1] & 0x7f,
    sequence: (d[2] << 8) | d[3],
    timestamp: readU32(d, 4),
    ssrc: readU32(d, 8),
    headerLength,
    payloadLength: d.length - headerLength - padding,
  };
}

/** The 32-bit timestamp of an RTP datagram, unsigned (check isRtp first). */
export function rtpTimestamp(d: Uint8Array): number {
  return readU32(d, 4);
}

/** The SSRC of an RTP datagram, unsigned (check isRtp first). */
export function rtpSsrc(d: Uint8Array): number {
  return readU32(d, 8);
}

/** The payload type of an RTP datagram, without the marker bit (check isRtp first). */
export function rtpPayloadType(d: Uint8Array): number {
  return d[1] & 0x7f;
}

/** Writes the timestamp in place (on a copy the caller owns); only the low 32 bits count. */
export function setRtpTimestamp(d: Uint8Array, ts: number): void {
  writeU32(d, 4, ts);
}

/** Writes the SSRC in place (on a copy the caller owns); only the low 32 bits count. */
export function setRtpSsrc(d: Uint8Array, ssrc: number): void {
  writeU32(d, 8, ssrc);
}

/** Writes the sequence number in place (on a copy the caller owns); only the low 16 bits count. */
export function setRtpSequence(d: Uint8Array, seq: number): void {
  d[2] = (seq >>> 8) & 0xff;
  d[3] = seq & 0xff;
}

/**
 * Writes a 12-byte RTP header (version 2, no padding, extension or CSRCs) at `off` and returns its length. Numbers
 * are taken modulo their field widths, so a caller may pass extended sequence numbers and timestamps.
 */
export function writeRtpHeader(
  buf: Uint8Array,
  off: number,
  h: { marker: boolean; payloadType: number; sequence: number; timestamp: number; ssrc: number },
): number {
  buf[off] = 0x80;
  buf[off + 1] = (h.marker ? 0x80 : 0) | (h.payloadType & 0x7f);
  buf[off + 2] = (h.sequence >>> 8) & 0xff;
  buf[off + 3] = h.sequence & 0xff;
  writeU32(buf, off + 4, h.timestamp);
  writeU32(buf, off + 8, h.ssrc);
  return 12;
}

/** A big-endian unsigned 32-bit value; `>>> 0` keeps values above 2^31 positive. */
export function readU32(d: Uint8Array, off: number): number {
  return ((d[off] << 24) | (d[off + 1] << 16) | (d[off + 2] << 8) | d[off + 3]) >>> 0;
}

/** Writes the low 32 bits of `v` big-endian; negative and extended values wrap as on the wire. */
export function writeU32(d: Uint8Array, off: number, v: number): void {
  // ToUint32 reduces any integer below 2^53 exactly modulo 2^32, negatives included.
  const u = v >>> 0;
  d[off] = u >>> 24;
  d[off + 1] = (u >>> 16) & 0xff;
  d[off + 2] = (u >>> 8) & 0xff;
  d[off + 3] = u & 0xff;
}
