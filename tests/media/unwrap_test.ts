import assert from "node:assert/strict";
import { Unwrapper } from "../../lib/media/unwrap.ts";

Deno.test("Unwrapper extends 16-bit values forwards across the wrap", () => {
  const u = new Unwrapper(16);
  assert.deepEqual([65530, 65535, 0, 5, 30000, 60000, 3].map((v) => u.unwrap(v)), [
    65530,
    65535,
    65536,
    65541,
    95536,
    125536,
    131075,
  ]);
  // A step of more than half a cycle reads as backwards: 5 -> 40000 is 25541 before 5.
  const v = new Unwrapper(16);
  v.unwrap(5);
  assert.equal(v.unwrap(40000), 40000 - 65536);
});

Deno.test("Unwrapper takes a value slightly before the last one, across the wrap, as earlier, not a new cycle", () => {
  const u = new Unwrapper(16);
  assert.equal(u.unwrap(2), 2);
  assert.equal(u.unwrap(65534), -2);
  assert.equal(u.unwrap(3), 3);
  const v = new Unwrapper(16);
  v.unwrap(65530);
  assert.equal(v.unwrap(1), 65537);
  assert.equal(v.unwrap(65535), 65535);
  assert.equal(v.unwrap(2), 65538);
});

Deno.test("Unwrapper goes backwards across the wrap for a stream running backwards", () => {
  const u = new Unwrapper(16);
  const out = [];
  for (let i = 0; i < 70000; i += 1000) out.push(u.unwrap((5 - i) & 0xffff));
  assert.deepEqual(out, out.map((_, k) => 5 - k * 1000));
});

Deno.test("Unwrapper extends 32-bit timestamps across the wrap both ways, keeping them unsigned", () => {
  const u = new Unwrapper(32);
  assert.equal(u.unwrap(0xffff0000), 0xffff0000);
  assert.equal(u.unwrap(0x00010000), 2 ** 32 + 0x10000);
  assert.equal(u.unwrap(0xfffe0000), 0xfffe0000);
  assert.equal(u.unwrap(-1), 2 ** 32 - 1); // the low 32 bits of -1
  // 3 s of 90 kHz steps for 20 hours: ten wraps, still exact.
  const v = new Unwrapper(32);
  let last = 0;
  for (let t = 0; t <= 90_000 * 3600 * 20; t += 270_000) last = v.unwrap(t % 2 ** 32);
  assert.equal(last, 90_000 * 3600 * 20);
  assert.equal(v.last, last);
});

Deno.test("Unwrapper reads only the low bits and has no last value before the first", () => {
  const u = new Unwrapper(16);
  assert.equal(u.last, null);
  assert.equal(u.unwrap(0x12345), 0x2345);
  assert.throws(() => new Unwrapper(8 as 16), RangeError);
});
