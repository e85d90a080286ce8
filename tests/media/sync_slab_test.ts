import assert from "node:assert/strict";
import { PacketSlab } from "../../lib/media/sync_slab.ts";

Deno.test("PacketSlab copies datagrams into chunks and refuses beyond its cap", () => {
  const slab = new PacketSlab({ maxBytes: 4 * 65_536, chunkBytes: 65_536 });
  const d = new Uint8Array(1000).fill(7);
  const held = [];
  let at;
  while ((at = slab.copy(d))) held.push(at);
  assert.equal(held.length, 4 * 65, "65 datagrams of 1000 B a chunk, 4 chunks");
  assert.equal(slab.memoryBytes, 4 * 65_536);
  assert.equal(slab.liveBytes, held.length * 1000);
  assert.deepEqual(held[0].chunk.bytes.subarray(held[0].off, held[0].off + 3), new Uint8Array([7, 7, 7]));
  // The first chunk empties: it is reused, and memory does not grow.
  for (const h of held.slice(0, 65)) slab.free(h.chunk, 1000);
  assert.ok(slab.copy(d));
  assert.equal(slab.memoryBytes, 4 * 65_536);
});

Deno.test("PacketSlab gives back emptied chunks beyond its spares", () => {
  const slab = new PacketSlab({ maxBytes: 8 * 65_536, chunkBytes: 65_536, spareChunks: 1 });
  const d = new Uint8Array(60_000);
  const held = Array.from({ length: 6 }, () => slab.copy(d)!);
  assert.equal(slab.memoryBytes, 6 * 65_536);
  for (const h of held) slab.free(h.chunk, d.length);
  // The current chunk stays, one spare is kept, the rest is left to the collector.
  assert.equal(slab.memoryBytes, 2 * 65_536);
  assert.equal(slab.livePackets, 0);
});

Deno.test("PacketSlab takes no new chunk when the caller's reserved bytes leave no room for it", () => {
  const slab = new PacketSlab({ maxBytes: 4 * 65_536, chunkBytes: 65_536 });
  const d = new Uint8Array(60_000);
  assert.ok(slab.copy(d, 3 * 65_536), "the first chunk always");
  assert.equal(slab.copy(d, 3 * 65_536), null, "a second chunk and the reserve would pass the cap");
  assert.ok(slab.copy(d, 2 * 65_536));
  assert.equal(slab.memoryBytes, 2 * 65_536);
});
