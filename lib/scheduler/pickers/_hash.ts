/**
 * Fast non-cryptographic 32-bit hashing for the source-hash ring: FNV-1a over the UTF-16 code units, finished with
 * MurmurHash3's fmix32. FNV-1a alone leaves addresses that differ only in the last octet close together in the high
 * bits, which is where a ring position is decided; the finalizer spreads them.
 */

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

/** FNV-1a of `text`, continuing from `seed` (the FNV offset basis by default). */
export function fnv1a32(text: string, seed: number = FNV_OFFSET): number {
  let h = seed;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, FNV_PRIME);
  }
  return h >>> 0;
}

/** FNV-1a continued over the four bytes of `word`, little-endian. */
export function fnv1a32Word(h: number, word: number): number {
  for (let shift = 0; shift < 32; shift += 8) {
    h ^= (word >>> shift) & 0xff;
    h = Math.imul(h, FNV_PRIME);
  }
  return h >>> 0;
}

/** MurmurHash3's 32-bit finalizer: every input bit affects every output bit. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Ring position of a client address. */
export function hashAddress(address: string): number {
  return fmix32(fnv1a32(address));
}

/** Ring position of virtual node `n` of the server whose key hashes to `keyHash` (from `fnv1a32(key)`). */
export function hashPoint(keyHash: number, n: number): number {
  return fmix32(fnv1a32Word(keyHash, n));
}
