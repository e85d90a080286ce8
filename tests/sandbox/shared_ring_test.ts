import assert from "node:assert/strict";
import {
  BATCH_IN,
  BATCH_OUT,
  type Frame,
  FrameError,
  refFrame,
  resolveRef,
} from "../../lib/sandbox/frames.ts";
import { RingAllocator, SharedMemory } from "../../lib/sandbox/shared_ring.ts";

Deno.test("RingAllocator hands out regions in order, never across the end, in runs that start wherever nothing held lies, and refuses what does not fit", () => {
  const ring = new RingAllocator(100);
  assert.equal(ring.reserve(40), 0);
  assert.equal(ring.reserve(40), 40);
  assert.equal(ring.reserve(30), -1, "20 left at the end, and the front is held");
  ring.release();
  assert.equal(ring.reserve(30), 0, "a region never straddles the end: a new run at 0");
  assert.equal(ring.usedBytes, 70);
  assert.equal(ring.reserve(11), 80, "the newest run would reach the oldest: a third run after it");
  assert.equal(ring.reserve(10), 30, "and a fourth between the second and the oldest");
  assert.equal(ring.reserve(1), 91, "and a fifth after the third");
  assert.equal(ring.runs, 5);
  ring.release();
  assert.equal(ring.reserve(50), -1, "no 50 bytes free anywhere");
  assert.equal(ring.reserve(40), 40, "where the oldest run was");
  ring.unreserve();
  assert.equal(ring.held, 4);
  assert.equal(ring.usedBytes, 30 + 11 + 10 + 1);
  for (let i = 0; i < 4; i++) ring.release();
  assert.equal(ring.held, 0);
  assert.equal(ring.usedBytes, 0);
  assert.equal(ring.runs, 0);
  assert.equal(ring.reserve(100), 0, "empty: the whole of it from the start");
  assert.equal(ring.reserve(1), -1);
  ring.reset();
  assert.equal(ring.reserve(101), -1, "larger than the ring");
  assert.equal(ring.reserve(0), -1);
});

Deno.test("RingAllocator starts at 0 again past its hot bytes once nothing held lies in them, and a backlog still gets the whole memory", () => {
  const ring = new RingAllocator(100, 50);
  assert.equal(ring.reserve(30), 0);
  assert.equal(ring.reserve(30), 30, "the front is held: on past the hot bytes");
  ring.release();
  assert.equal(ring.reserve(20), 60, "past the hot bytes, but some of them still held: on");
  assert.equal(ring.reserve(10), 80);
  ring.release();
  assert.equal(ring.reserve(25), 0, "nothing held in the hot bytes: back to 0");
  assert.equal(ring.reserve(10), 25, "within the hot bytes: the run grows");
  assert.equal(new RingAllocator(10, 50).hot, 10, "never more than the capacity");

  // A stream that keeps up (two regions in flight) stays within the hot bytes and one region.
  const stream = new RingAllocator(1000, 100);
  let highest = 0;
  stream.reserve(30);
  for (let i = 0; i < 200; i++) {
    const at = stream.reserve(30);
    assert.ok(at >= 0);
    highest = Math.max(highest, at + 30);
    stream.release();
  }
  assert.ok(highest <= 100 + 2 * 30, `reached ${highest}`);
  // A backlog (nothing answered) fills all of it.
  const backlog = new RingAllocator(1000, 100);
  const offsets = Array.from({ length: 12 }, () => backlog.reserve(90));
  assert.deepEqual(offsets, [0, 90, 180, 270, 360, 450, 540, 630, 720, 810, 900, -1]);
});

Deno.test("RingAllocator refuses no region while less than half of it is held, as a stream keeps up and falls behind in turn", () => {
  // As the host uses it: 9 MiB, batches of up to 256 KiB, at most 8 MiB in flight; answers come faster than
  // batches for a while, then slower. (Runs started at 0 in any small gap once took the run slots: 1.5-5% refused.)
  for (const most of [16_384, 262_144]) {
    let seed = 11;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const ring = new RingAllocator(9 * 1024 * 1024, 512 * 1024);
    const held: number[] = [];
    let inFlight = 0;
    let refusedBelowHalf = 0;
    for (let t = 0; t < 40_000; t++) {
      const bytes = 1 + Math.floor(rand() * most);
      if (inFlight + bytes <= 8 * 1024 * 1024) {
        if (ring.reserve(bytes) >= 0) {
          held.push(bytes);
          inFlight += bytes;
        } else if (inFlight < ring.capacity / 2) refusedBelowHalf++;
      }
      const answers = rand() < (Math.floor(t / 2000) % 2 ? 0.4 : 0.6) ? 2 : 0;
      for (let k = 0; k < answers && held.length; k++) {
        inFlight -= held.shift()!;
        ring.release();
      }
    }
    assert.equal(refusedBelowHalf, 0, `regions of up to ${most} bytes`);
  }
});

for (const hot of [1000, 200]) {
  Deno.test(`RingAllocator (hot ${hot} of 1000) over many rounds of random sizes never hands out overlapping live regions`, () => {
    const ring = new RingAllocator(1000, hot);
    const live: [number, number][] = [];
    let seed = 7;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let round = 0; round < 20_000; round++) {
      const r = rand();
      if (r < 0.001) {
        ring.reset();
        live.length = 0;
        continue;
      }
      if (live.length && r < 0.45) {
        live.shift();
        ring.release();
        continue;
      }
      const size = 1 + Math.floor(rand() * 300);
      const at = ring.reserve(size);
      if (at < 0) continue;
      assert.ok(at + size <= 1000);
      for (const [s, e] of live) {
        assert.ok(at + size <= s || at >= e, `[${at}, ${at + size}) overlaps [${s}, ${e})`);
      }
      if (rand() < 0.05) {
        ring.unreserve();
        continue;
      }
      live.push([at, at + size]);
      assert.equal(ring.held, live.length);
      assert.equal(ring.usedBytes, live.reduce((n, [a, b]) => n + b - a, 0));
      assert.ok(ring.runs <= 16);
    }
  });
}

/** `frames` of `kind` laid one after another at `at` in `shared`, as the other side writes them. */
function lay(shared: Uint8Array, at: number, kind: number, bodies: number[][]): number {
  let off = at;
  for (const body of bodies) {
    new DataView(shared.buffer).setUint32(off, 1 + body.length, true);
    shared[off + 4] = kind;
    shared.set(body, off + 5);
    off += 5 + body.length;
  }
  return off - at;
}

const refBody = (offset: number, length: number) => refFrame(offset, length).subarray(5);

Deno.test("resolveRef reads the one or several frames a REF stands for, and refuses any that run outside or differ", () => {
  const shared = new Uint8Array(64);
  const length = lay(shared, 8, BATCH_OUT, [[1, 2, 3], [4], [5, 6]]);
  const got: number[][] = [];
  resolveRef(refBody(8, length), shared, BATCH_OUT, (f: Frame) => got.push([...f.body]));
  assert.deepEqual(got, [[1, 2, 3], [4], [5, 6]]);

  const refused = (body: Uint8Array, kind = BATCH_OUT) =>
    assert.throws(() => resolveRef(body, shared, kind, () => {}), FrameError);
  refused(refBody(8, length), BATCH_IN); // another kind
  refused(refBody(8, length - 1)); // the last frame runs past the region
  refused(refBody(8, length + 1)); // a byte left over
  refused(refBody(60, 8)); // outside the memory
  refused(refBody(0xffff_fff0, 32)); // offset + length wraps past 2^32 in no arithmetic of its own
  refused(refBody(8, 4)); // shorter than a frame
  refused(new Uint8Array(7)); // not a REF body
  new DataView(shared.buffer).setUint32(8, 0, true);
  refused(refBody(8, length)); // a frame of length 0
});

const SHARED_RING = new URL("../../lib/sandbox/shared_ring.ts", import.meta.url).href;

/** Runs `code` (which may import mapShared) in a child granted FFI, as a sandbox child is; its JSON line parsed. */
async function inChild(code: string, ...args: string[]): Promise<Record<string, unknown>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      "--no-prompt",
      "--allow-ffi",
      `--allow-read=${new URL("../../", import.meta.url).pathname}`,
      `import { mapShared } from "${SHARED_RING}";\n${code}`,
      ...args,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

Deno.test("SharedMemory: a child process maps it, reads what the host wrote, writes back, and has no FFI after", async () => {
  const memory = SharedMemory.create(1 << 20);
  assert.ok(memory, "shared memory needs --allow-ffi on Linux");
  try {
    memory.bytes[0] = 42;
    memory.bytes[(1 << 20) - 1] = 43;
    const seen = await inChild(
      `const m = mapShared(Deno.args[0], Number(Deno.args[1]));
      m[1] = m[0] + m[m.length - 1];
      let denied = false;
      try { Deno.dlopen("libc.so.6", {}); } catch { denied = true; }
      console.log(JSON.stringify({ length: m.length, denied, ffi: Deno.permissions.querySync({ name: "ffi" }).state }));`,
      memory.path,
      String(1 << 20),
    );
    assert.deepEqual([seen.length, seen.denied], [1 << 20, true]);
    assert.notEqual(seen.ffi, "granted");
    assert.equal(memory.bytes[1], 85, "the child's write is the host's to read");
  } finally {
    memory.close();
  }
});

Deno.test("mapShared revokes FFI even when it cannot map", async () => {
  const seen = await inChild(
    `const m = mapShared("/nonexistent/edgenode-shared", 4096);
    console.log(JSON.stringify({ mapped: m !== null, ffi: Deno.permissions.querySync({ name: "ffi" }).state }));`,
  );
  assert.equal(seen.mapped, false);
  assert.notEqual(seen.ffi, "granted");
});
