/** Byte-exact RTP and RTCP samples shared by the media parser tests, built by hand (not by the writers under test). */

export function bytes(...parts: (number | number[])[]): Uint8Array {
  return new Uint8Array(parts.flat());
}

export function u32(v: number): number[] {
  return [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
}

/** A minimal RTP packet: PT 96, marker, seq 0xfffe, ts 0xfffffff0, SSRC 0x89abcdef, 4 bytes payload. */
export const RTP_PLAIN = bytes(0x80, 0xe0, 0xff, 0xfe, u32(0xfffffff0), u32(0x89abcdef), [1, 2, 3, 4]);

/** Two CSRCs, a one-word header extension, 3 payload bytes and 3 bytes of padding. */
export const RTP_FULL = bytes(
  0xb2, // V=2, P, X, CC=2
  0x21, // PT 33
  0x12,
  0x34,
  u32(0x80000001),
  u32(0xdeadbeef),
  u32(1),
  u32(2),
  [0xbe, 0xde, 0x00, 0x01], // extension profile, 1 word
  u32(0x11223344),
  [9, 9, 9], // payload
  [0, 0, 3], // padding, count 3
);

/** SR with one report block (SSRC 0xf0000001, NTP 0xe8000000.80000000, ts 0x90000000, 7 packets, 1000 octets). */
export const SR_PART = bytes(
  0x81,
  200,
  0,
  12,
  u32(0xf0000001),
  u32(0xe8000000),
  u32(0x80000000),
  u32(0x90000000),
  u32(7),
  u32(1000),
  Array(24).fill(0x55),
);

/** RR without blocks from SSRC 0xa0000002. */
export const RR_PART = bytes(0x80, 201, 0, 1, u32(0xa0000002));

/** SDES with two chunks: CNAME "cam@brno" + NAME for 0xf0000001, a NOTE then CNAME "mic" for 5. */
export const SDES_PART = bytes(
  0x82,
  202,
  0,
  9,
  u32(0xf0000001),
  [1, 8, ...new TextEncoder().encode("cam@brno")],
  [2, 2, 65, 66], // NAME "AB"
  [0, 0], // null item and padding: 4+2+8+4+2 = 20 bytes
  u32(5),
  [7, 1, 88], // NOTE "X"
  [1, 3, 109, 105, 99], // CNAME "mic"
  [0, 0, 0, 0], // 4+3+5 = 12, the null item then pad: 16 bytes
);

/** APP part (skipped by length). */
export const APP_PART = bytes(0x80, 204, 0, 3, u32(9), [65, 66, 67, 68], u32(0));

/** BYE for two SSRCs with reason "bye", padded at the end of the compound (4 bytes padding). */
export const BYE_PART_PADDED = bytes(0xa2, 203, 0, 4, u32(0xf0000001), u32(5), [3, 98, 121, 101], [
  0,
  0,
  0,
  4,
]);

export const COMPOUND = bytes(
  [...SR_PART],
  [...RR_PART],
  [...SDES_PART],
  [...APP_PART],
  [...BYE_PART_PADDED],
);

/** Offsets at which COMPOUND's parts end: prefixes of exactly these lengths are compounds themselves. */
export const COMPOUND_BOUNDARIES = [SR_PART, RR_PART, SDES_PART, APP_PART, BYE_PART_PADDED].reduce(
  (acc, p) => [...acc, (acc.at(-1) ?? 0) + p.length],
  [] as number[],
);
