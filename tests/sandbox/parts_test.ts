import assert from "node:assert/strict";
import { paramsProblems, portsProblems, resolveParams } from "../../lib/sandbox/contract.ts";
import { decodeBatch, encodeBatch } from "../../lib/graph/vm/codec.ts";
import { datagrams } from "./_programs.ts";
import {
  BATCH_IN_PREFIX,
  BATCH_OUT,
  BATCH_OUT_PREFIX,
  batchInFrame,
  batchOutFrame,
  CONTROL,
  controlFrame,
  DONE,
  doneFrame,
  FrameError,
  FrameReader,
  peekBatchOut,
  readBatchOut,
  readControl,
  readDone,
  sealBatchIn,
  sealBatchOut,
} from "../../lib/sandbox/frames.ts";
import { childArgv, parseProcStat } from "../../lib/sandbox/proc.ts";
import { loadError, uploadProblems } from "../../lib/sandbox/upload.ts";

function stream(): Uint8Array {
  const out = new Uint8Array(new Uint8Array(300).fill(5).buffer.slice(0));
  const parts = [
    controlFrame({ type: "loaded", n: 1 }),
    batchOutFrame(7, 1, out.buffer),
    doneFrame(7, 1.5, 2),
  ];
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) (all.set(p, off), off += p.length);
  return all;
}

Deno.test("FrameReader reads the same frames from a stream split at every byte", () => {
  const bytes = stream();
  for (let cut = 0; cut <= bytes.length; cut++) {
    const reader = new FrameReader();
    const seen: string[] = [];
    const each = (f: { kind: number; body: Uint8Array }) => {
      if (f.kind === CONTROL) seen.push(JSON.stringify(readControl(f.body)));
      else if (f.kind === BATCH_OUT) {
        const o = readBatchOut(f.body);
        seen.push(`out ${o.seq} ${o.output} ${o.batch.byteLength} ${new Uint8Array(o.batch)[299]}`);
      } else if (f.kind === DONE) seen.push(JSON.stringify(readDone(f.body)));
    };
    reader.push(bytes.subarray(0, cut), each);
    reader.push(bytes.subarray(cut), each);
    assert.deepEqual(seen, [
      '{"type":"loaded","n":1}',
      "out 7 1 300 5",
      '{"seq":7,"ms":1.5,"failed":2}',
    ], `cut at ${cut}`);
  }
});

Deno.test("FrameReader refuses a frame over its limit", () => {
  const reader = new FrameReader(1000);
  const header = new Uint8Array(5);
  new DataView(header.buffer).setUint32(0, 5000, true);
  assert.throws(() => reader.push(header, () => {}), FrameError);
});

Deno.test("portsProblems and paramsProblems name what a program declared wrong", () => {
  assert.deepEqual(portsProblems({ inputs: ["in"], outputs: [] }), []);
  assert.deepEqual(portsProblems({ inputs: [], outputs: ["a", "a", "no way"] }), [
    "ports.inputs must name at least one input",
    'ports.outputs: "no way" is not a name',
    "ports.outputs names a port twice",
  ]);
  assert.deepEqual(portsProblems(undefined), ["it must export `ports` = { inputs: [...], outputs: [...] }"]);
  assert.deepEqual(paramsProblems({ pt: { type: "number", default: "x" }, s: { type: "string", min: 1 } }), [
    'param "pt": its default is not a number',
    'param "s": min is for numbers and must be one',
  ]);
});

Deno.test("resolveParams fills defaults and reports unknown, missing and out-of-range values", () => {
  const decl = {
    pt: { type: "number", default: 96, min: 0, max: 127 },
    tag: { type: "string" },
  } as const;
  assert.deepEqual(resolveParams(decl, { tag: "a" }), { values: { pt: 96, tag: "a" }, problems: [] });
  assert.deepEqual(resolveParams(decl, { pt: 200, colour: 1 }).problems, [
    'unknown param "colour" (it has: pt, tag)',
    'param "pt" must be at most 127',
    'param "tag" is required',
  ]);
});

Deno.test("uploadProblems refuses paths, non-text and oversized uploads", () => {
  assert.deepEqual(uploadProblems({ "main.ts": "x" }, "main.ts"), []);
  const problems = uploadProblems(
    { "dir/main.ts": "x", ".hidden.js": "x", "big.js": "y".repeat(2000) },
    "main.ts",
    { maxModules: 2, maxBytes: 1000 },
  );
  assert.equal(problems.length, 5, problems.join("\n"));
});

Deno.test("loadError takes the uploaded file, line and column out of Deno's message and hides the directory", () => {
  const e = loadError(
    "/tmp/edgenode-sandbox-x/modules",
    "SyntaxError: Expression expected\n  |\n3 |   return [b] +;\n  |   ~\n    at file:///tmp/edgenode-sandbox-x/modules/lib.js:3:15",
  );
  assert.equal(e.format(), "lib.js:3:15: SyntaxError: Expression expected");
});

Deno.test("parseProcStat reads CPU time and resident memory, even with spaces in the name", () => {
  const stat = "4242 (deno (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 30 0 0 20 0 9 0 123 900000 2500 0";
  assert.deepEqual(parseProcStat(stat), { cpuMs: 1800, rssBytes: 2500 * 4096 });
  assert.equal(parseProcStat("garbage"), null);
});

Deno.test("childArgv grants no permission but its upload and its socket, under hard memory and file limits", () => {
  const argv = childArgv({
    deno: "/usr/bin/deno",
    main: "file:///app/lib/sandbox/child.ts",
    dir: "/tmp/s/modules",
    socket: "/tmp/s/ipc/1.sock",
    entries: ["main.ts", "other.js"],
    heapMb: 64,
    memoryMb: 100,
    addressBaseMb: 1000,
    dataBaseMb: 500,
  });
  assert.ok(argv.includes(`--as=${1100 * 1024 * 1024}`));
  assert.ok(argv.includes(`--data=${600 * 1024 * 1024}`));
  assert.ok(argv.includes("--fsize=0"));
  const flags = argv.filter((a) => a.startsWith("--allow"));
  assert.deepEqual(flags, [
    "--allow-read=/tmp/s/modules,/tmp/s/ipc/1.sock",
    "--allow-write=/tmp/s/ipc/1.sock",
    "--allow-net=unix:/tmp/s/ipc/1.sock",
  ]);
  assert.ok(argv.includes("--no-remote") && argv.includes("--no-npm") && argv.includes("--no-config"));
  assert.ok(argv.includes("--v8-flags=--max-old-space-size=64"));
  assert.deepEqual(argv.slice(-4), [
    "/tmp/s/ipc/1.sock",
    "-",
    "file:///tmp/s/modules/main.ts",
    "file:///tmp/s/modules/other.js",
  ]);
});

Deno.test("childArgv with shared memory: FFI for the child's own mapping (revoked before the upload loads), the mapping inside its address limit", () => {
  const argv = childArgv({
    deno: "/usr/bin/deno",
    main: "file:///app/lib/sandbox/child.ts",
    dir: "/tmp/s/modules",
    socket: "/tmp/s/ipc/1.sock",
    entries: ["main.ts"],
    heapMb: 64,
    memoryMb: 100,
    addressBaseMb: 1000,
    dataBaseMb: 500,
    shared: { path: "/proc/7/fd/9", bytes: 16 * 1024 * 1024 },
  });
  assert.ok(argv.includes(`--as=${1116 * 1024 * 1024}`));
  assert.ok(argv.includes(`--data=${600 * 1024 * 1024}`), "shared pages are not the child's private data");
  assert.deepEqual(argv.filter((a) => a.startsWith("--allow")).slice(3), ["--allow-ffi"]);
  assert.deepEqual(argv.slice(-3), [
    "/tmp/s/ipc/1.sock",
    `/proc/7/fd/9:${16 * 1024 * 1024}`,
    "file:///tmp/s/modules/main.ts",
  ]);
});

Deno.test("batch frames sealed in place are the frames built by copying, and decode where they lie", () => {
  const batch = datagrams(5, 300, 9);
  const to = { kind: "emitted", ap: 2, port: 1, rtcp: false } as const;
  const plain = encodeBatch(to, batch);
  assert.deepEqual(
    sealBatchIn(encodeBatch(to, batch, BATCH_IN_PREFIX), 12.5, 77, 3),
    batchInFrame(12.5, 77, 3, plain),
  );
  const out = sealBatchOut(encodeBatch(to, batch, BATCH_OUT_PREFIX), 77, 1);
  assert.deepEqual(out, batchOutFrame(77, 1, plain));
  const reader = new FrameReader();
  reader.push(out, (frame) => {
    const peeked = peekBatchOut(frame.body);
    assert.equal(peeked.seq, 77);
    const decoded = decodeBatch(frame.body.buffer as ArrayBuffer, peeked.at, peeked.length);
    assert.deepEqual(decoded.to, to);
    assert.equal(decoded.batch.count, 5);
    assert.deepEqual(decoded.batch.data(4), batch.data(4));
  });
});

Deno.test("FrameReader.readFrom reads frames from a source in reads of any size, a frame over its room too", async () => {
  const big = controlFrame({ pad: "x".repeat(600_000) });
  const bytes = new Uint8Array([...stream(), ...big, ...stream()]);
  for (const step of [1, 7, 65_536, bytes.length]) {
    let pos = 0;
    const source = {
      read(p: Uint8Array): Promise<number | null> {
        if (pos >= bytes.length) return Promise.resolve(null);
        const n = Math.min(p.length, step, bytes.length - pos);
        p.set(bytes.subarray(pos, pos + n));
        pos += n;
        return Promise.resolve(n);
      },
    };
    const kinds: number[] = [];
    let afters = 0;
    await new FrameReader().readFrom(source, (f) => {
      kinds.push(f.kind);
      if (f.kind === CONTROL && f.body.length > 1000) assert.equal(f.body.length, big.length - 5);
    }, () => Promise.resolve(void afters++));
    assert.deepEqual(
      kinds,
      [CONTROL, BATCH_OUT, DONE, CONTROL, CONTROL, BATCH_OUT, DONE],
      `reads of ${step}`,
    );
    assert.ok(afters > 0);
  }
});
