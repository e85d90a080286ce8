/**
 * NTP timestamps (RFC 5905: seconds since 1900 and a 32-bit binary fraction) as RTCP sender reports carry them, to and
 * from the node's time unit, microseconds since the Unix epoch. The 32-bit seconds field wraps in February 2036; as
 * RFC 4330 section 3 suggests, a value with its top bit clear is read as the era after the wrap, so times from 1968
 * to 2104 round-trip.
 */

/** Seconds from 1900-01-01 (NTP's epoch) to 1970-01-01 (Unix's). */
export const NTP_UNIX_OFFSET_S = 2_208_988_800;
const TWO_32 = 0x1_0000_0000;

/** Unix microseconds of an NTP 64-bit timestamp given as its two 32-bit halves. */
export function ntpToUnixUs(seconds: number, fraction: number): number {
  const s = seconds >>> 0;
  const era = s < 0x8000_0000 ? TWO_32 : 0;
  return (s + era - NTP_UNIX_OFFSET_S) * 1e6 + ((fraction >>> 0) * 1e6) / TWO_32;
}

/** The NTP timestamp (seconds, fraction), both unsigned 32-bit, of Unix microseconds. */
export function unixUsToNtp(us: number): [seconds: number, fraction: number] {
  let s = Math.floor(us / 1e6);
  let fraction = Math.round(((us - s * 1e6) * TWO_32) / 1e6);
  if (fraction >= TWO_32) {
    fraction -= TWO_32;
    s++;
  }
  return [(s + NTP_UNIX_OFFSET_S) >>> 0, fraction];
}
