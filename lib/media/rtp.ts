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
