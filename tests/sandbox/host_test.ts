import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { type Batch, openUdp } from "../../lib/net/udp.ts";
import { PinnedBatch } from "../../lib/net/pinned.ts";
import { SandboxHost, type SandboxOptions } from "../../lib/sandbox/host.ts";
import { SandboxLoadError, UploadError } from "../../lib/sandbox/upload.ts";
import { poll, until } from "../_support/until.ts";
import {
  ARRAY_BOMB,
  BUFFER_BOMB,
  datagrams,
  EXITS,
  LOOPS_ON_FF,
  PASS_THROUGH,
  PORTS,
  trying,
} from "./_programs.ts";

interface Received {
  output: number;
  data: Uint8Array[];
  from: string[];
}

/** A sandbox with `source` as main.js, whose outputs are collected. */
function sandbox(source: string, o: Partial<SandboxOptions> = {}): { host: SandboxHost; got: Received[] } {
  const got: Received[] = [];
  const host = new SandboxHost({
    name: "test",
    modules: { "main.js": source },
    entry: "main.js",
    sampleMs: 0,
    ...o,
    onOutput: (output: number, b: Batch) => {
      const data: Uint8Array[] = [];
      const from: string[] = [];
      for (let i = 0; i < b.count; i++) {
        data.push(b.data(i).slice());
        from.push(`${b.from(i).host}:${b.from(i).port}`);
      }
      got.push({ output, data, from });
    },
  });
  return { host, got };
}

const packets = (got: Received[]) => got.reduce((n, r) => n + r.data.length, 0);

/** A pass-through sandbox whose batches cross in shared memory, its answers handed to `onOutput` as they come. */
function sharedPassThrough(params: Record<string, unknown>, onOutput: (b: Batch) => void): SandboxHost {
  return new SandboxHost({
    name: "test",
    modules: { "main.js": PASS_THROUGH },
    entry: "main.js",
    sampleMs: 0,
    params,
    limits: { sharedMemory: true },
    onOutput: (_output: number, b: Batch) => onOutput(b),
  });
}

Deno.test("SandboxHost passes a batch through an uploaded program with its params and senders", async () => {
  const { host, got } = sandbox(PASS_THROUGH, { params: { stamp: 9 } });
  try {
    await host.start();
    assert.deepEqual(host.program?.ports, { inputs: ["in"], outputs: ["out"] });
    assert.equal(host.push(0, datagrams(64, 1450)), true);
    assert.equal(host.push(0, datagrams(64, 100)), true);
    await until("both batches back", () => packets(got) === 128);
    assert.equal(got[0].output, 0);
    assert.equal(got[0].data[0][0], 9, "the program stamped byte 0 with its param");
    assert.equal(got[0].data[5][1], 5);
    // The child may hand both batches to one call (they arrive together): the datagrams, in order, are what count.
    const all = got.flatMap((r) => r.data);
    assert.equal(all[0].length, 1450);
    assert.equal(all[63].length, 1450);
    assert.equal(all[64].length, 100);
    assert.equal(all[127].length, 100);
    assert.equal(got[0].from[0], "127.0.0.1:5004");
    await until("DONE frames counted", () => host.status().batches_done === 2);
    const s = host.status();
    assert.equal(s.state, "running");
    assert.equal(s.packets_out, 128);
    assert.equal(s.queue_depth, 0);
    const sample = await host.sample();
    assert.ok(sample && sample.rssBytes > 1e6 && sample.cpuMs >= 0, `sample ${JSON.stringify(sample)}`);
    // It runs below the node: nice 10 by default.
    const stat = new TextDecoder().decode(
      (await new Deno.Command("cat", { args: [`/proc/${host.pid}/stat`], stdout: "piped" }).output()).stdout,
    );
    assert.equal(Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[16]), 10);
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost sends back what a handler returned: the batch it was given (once without a copy), or a list it changed", async () => {
  const source = `export const ports = { inputs: ["in"], outputs: ["a", "b", "c"] };
export function handle(_i, batch) {
  const changed = batch.slice();
  changed[1] = { data: new Uint8Array([42]), from: { host: "192.0.2.7", port: 9 } };
  return [batch, batch, changed];
}
`;
  const { host, got } = sandbox(source);
  try {
    await host.start();
    host.push(0, datagrams(3, 200, 4));
    await until("three outputs", () => got.length === 3);
    got.sort((x, y) => x.output - y.output);
    for (const out of got.slice(0, 2)) {
      assert.deepEqual(out.data.map((d) => [d.length, d[0], d[1]]), [[200, 4, 0], [200, 4, 1], [200, 4, 2]]);
      assert.deepEqual(out.from, ["127.0.0.1:5004", "127.0.0.1:5004", "127.0.0.1:5004"]);
    }
    assert.deepEqual(got[2].data.map((d) => d.length), [200, 1, 200]);
    assert.deepEqual(got[2].from, ["127.0.0.1:5004", "192.0.2.7:9", "127.0.0.1:5004"]);
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost gathers small batches into one crossing, and hands large ones that arrive together to one call", async () => {
  const source = `export const ports = { inputs: ["in"], outputs: ["out"] };
let calls = 0;
export function handle(_i, batch) {
  calls++;
  for (const d of batch) d.data[1] = calls;
  return [batch];
}
`;
  const { host, got } = sandbox(source);
  try {
    await host.start();
    // Ten small batches in one turn: gathered by the host, one frame, one call.
    for (let b = 0; b < 10; b++) host.push(0, datagrams(3, 50, b));
    await until("30 datagrams back", () => packets(got) === 30);
    assert.equal(host.status().batches_in, 10);
    assert.deepEqual(got.flatMap((r) => r.data.map((d) => d[0])), [
      0,
      0,
      0,
      1,
      1,
      1,
      2,
      2,
      2,
      3,
      3,
      3,
      4,
      4,
      4,
      5,
      5,
      5,
      6,
      6,
      6,
      7,
      7,
      7,
      8,
      8,
      8,
      9,
      9,
      9,
    ]);
    assert.equal(new Set(got.flatMap((r) => r.data.map((d) => d[1]))).size, 1, "one handler call");
    // Ten large batches: a frame each, merged by the child where they arrive together, each answered.
    got.length = 0;
    for (let b = 0; b < 10; b++) host.push(0, datagrams(40, 50, b));
    await until("400 datagrams back", () => packets(got) === 400);
    await until("every frame answered", () => host.status().batches_done === 11);
    const calls = new Set(got.flatMap((r) => r.data.map((d) => d[1])));
    assert.ok(calls.size < 10, `${calls.size} handler calls for 10 batches`);
    assert.deepEqual([...new Set(got.flatMap((r) => r.data.map((d) => d[0])))], [
      0,
      1,
      2,
      3,
      4,
      5,
      6,
      7,
      8,
      9,
    ]);
    assert.equal(host.status().queue_depth, 0);
  } finally {
    await host.stop();
  }
});

for (const sharedMemory of [true, false]) {
  Deno.test(`SandboxHost: batches merged into one call and passed on by two outputs reach both whole (turned where they lie, memory shared: ${sharedMemory})`, async () => {
    // Output "a" is the list as given (sent back from the child's read buffer), "b" the same datagrams in a new list
    // (encoded from their views, which must be read before the batches are moved together for "a").
    const source = `export const ports = { inputs: ["in"], outputs: ["a", "b"] };
  export function handle(_i, batch) { return [batch, batch.slice()]; }
  `;
    const { host, got } = sandbox(source, { limits: { sharedMemory } });
    try {
      await host.start();
      for (let b = 0; b < 10; b++) host.push(0, datagrams(40, 300 + b, b));
      await until("800 datagrams back", () => packets(got) === 800);
      for (const output of [0, 1]) {
        const data = got.filter((r) => r.output === output).flatMap((r) => r.data);
        assert.equal(data.length, 400);
        data.forEach((d, k) => {
          const [b, i] = [Math.floor(k / 40), k % 40];
          const want = new Uint8Array(300 + b).fill(i);
          want[0] = b;
          assert.deepEqual(d, want, `output ${output}, batch ${b}, datagram ${i}`);
        });
      }
      assert.ok(host.status().batches_out as number < 20, "some batches shared a call");
      assert.equal(host.status().answers_shared as number > 0, sharedMemory);
    } finally {
      await host.stop();
    }
  });
}

Deno.test("SandboxHost: a batch passed on in the shared memory is sent by the fast socket from where it lies, and read by anything else from the node's own copy", async () => {
  const tx = openUdp({ host: "127.0.0.1", port: 0 }, { impl: "fast" });
  const rx = openUdp({ host: "127.0.0.1", port: 0 }, { impl: "fast" });
  const to = tx.destinations([rx.local]);
  const seen: { pinned: boolean; sameBytes: boolean; ownCopy: boolean }[] = [];
  const host = sharedPassThrough({ stamp: 7 }, (b) => {
    const pinned = b instanceof PinnedBatch;
    let sameBytes = true;
    let ownCopy = true;
    if (pinned) {
      for (let i = 0; i < b.count; i++) {
        const there = new Uint8Array(
          Deno.UnsafePointerView.getArrayBuffer(
            Deno.UnsafePointer.create(BigInt(b.address(i)))!,
            b.length(i),
          ),
        );
        const data = b.data(i);
        sameBytes &&= there.length === data.length && there.every((x, k) => x === data[k]);
        ownCopy &&= Deno.UnsafePointer.value(Deno.UnsafePointer.of(data)) !== BigInt(b.address(i));
      }
    }
    seen.push({ pinned, sameBytes, ownCopy });
    tx.send(b, to);
  });
  try {
    await host.start();
    for (let b = 0; b < 4; b++) host.push(0, datagrams(64, 1000 + b));
    const got: Uint8Array[] = [];
    while (got.length < 256) {
      const batch = await rx.receive();
      for (let i = 0; batch && i < batch.count; i++) got.push(batch.data(i).slice());
    }
    got.forEach((d, k) => {
      const [b, i] = [Math.floor(k / 64), k % 64];
      assert.equal(d.length, 1000 + b, `datagram ${k}`);
      assert.deepEqual([d[0], d[1], d[d.length - 1]], [7, i, i], `datagram ${k}`);
    });
    assert.ok(host.status().answers_shared as number > 0);
    assert.ok(
      seen.length > 0 && seen.every((s) => s.pinned && s.sameBytes && s.ownCopy),
      JSON.stringify(seen),
    );
  } finally {
    await host.stop();
    await tx.close();
    await rx.close();
  }
});

Deno.test("SandboxHost: a shared answer kept past the call that handed it on is refused, not read from memory the child may change", async () => {
  const kept: Batch[] = [];
  const copied: Uint8Array[] = [];
  const host = sharedPassThrough({}, (b) => {
    kept.push(b);
    copied.push(b.data(0).slice());
  });
  try {
    await host.start();
    host.push(0, datagrams(64, 500));
    await until("the answer", () => kept.length > 0);
    const b = kept[0];
    assert.ok(b instanceof PinnedBatch);
    assert.throws(() => b.address(0), { name: "SpentAnswerError" });
    assert.equal(copied[0].length, 500, "read during the call: the node's own copy");
    // Read during the call, its copy stays readable (as a socket's batch, until the next one overwrites it).
    assert.equal(b.data(0).length, 500);
  } finally {
    await host.stop();
  }
  const unread: Batch[] = [];
  const second = sharedPassThrough({}, (b) => void unread.push(b));
  try {
    await second.start();
    second.push(0, datagrams(64, 500));
    await until("the answer", () => unread.length > 0);
    assert.throws(() => unread[0].data(0), { name: "SpentAnswerError" });
  } finally {
    await second.stop();
  }
});

Deno.test("SandboxHost: a batch that fails to encode (a datagram longer than it says) leaves nothing half-written, and the next one arrives whole", async () => {
  const { host, got } = sandbox(PASS_THROUGH, { params: { stamp: 9 } });
  try {
    await host.start();
    const good = datagrams(40, 300);
    const liar: Batch = {
      ...good,
      count: good.count,
      data: good.data.bind(good),
      length: () => 10,
      from: good.from.bind(good),
      truncated: () => false,
    };
    assert.throws(() => host.push(0, liar), RangeError);
    assert.equal(host.push(0, datagrams(40, 300, 7)), true);
    await until("the good batch back", () => packets(got) === 40);
    assert.deepEqual(got.flatMap((r) => r.data.map((d) => d.length)), new Array(40).fill(300));
    assert.equal(host.status().state, "running");
    assert.equal(host.status().restarts, 0, "the child read no broken frame");
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost refuses params the program does not declare, and nothing runs", async () => {
  const { host } = sandbox(PASS_THROUGH, { params: { stamp: 999, colour: "red" } });
  try {
    await assert.rejects(host.start(), (e: Error) => {
      assert.ok(e instanceof SandboxLoadError);
      assert.match(e.message, /unknown param "colour" \(it has: stamp\)/);
      assert.match(e.message, /"stamp" must be at most 255/);
      return true;
    });
    assert.equal(host.state, "failed");
    assert.equal(host.pid, null);
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost rejects a syntax error with the module's file, line and column and starts nothing", async () => {
  const bad =
    `export const ports = { inputs: ["in"], outputs: ["out"] };\nexport function handle(i, b) {\n  return [b] +;\n}\n`;
  const got: Received[] = [];
  const host = new SandboxHost({
    name: "test",
    modules: { "main.js": `import { handle } from "./lib.js";\n${PORTS}export { handle };\n`, "lib.js": bad },
    entry: "main.js",
    sampleMs: 0,
    onOutput: () => got.push({ output: 0, data: [], from: [] }),
  });
  try {
    await assert.rejects(host.start(), (e: Error) => {
      assert.ok(e instanceof SandboxLoadError, String(e));
      assert.equal(e.file, "lib.js");
      assert.equal(e.line, 3);
      assert.equal(e.col, 15);
      assert.match(e.format(), /^lib\.js:3:15: SyntaxError/);
      assert.doesNotMatch(e.message, /edgenode-sandbox-/, "the node's paths are not shown");
      return true;
    });
    assert.equal(host.state, "failed");
    assert.equal(host.status().restarts, 0);
    assert.equal(host.push(0, datagrams(1, 10)), false);
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost refuses an upload with bad names, too many modules or no entry before writing", async () => {
  const host = new SandboxHost({
    name: "test",
    modules: { "../x.js": "", "a.js": "", "b.js": "" },
    entry: "main.js",
    limits: { maxModules: 2 },
    onOutput: () => {},
  });
  await assert.rejects(host.start(), (e: Error) => {
    assert.ok(e instanceof UploadError);
    assert.equal(e.problems.length, 3, e.message);
    return true;
  });
  await host.stop();
});

const DENIALS: [string, string, RegExp][] = [
  ["reading a file", `Deno.readTextFile("/etc/hostname")`, /Requires read access to "\/etc\/hostname"/],
  [
    "opening a socket",
    `Deno.connect({ hostname: "127.0.0.1", port: 9 })`,
    /Requires net access to "127\.0\.0\.1:9"/,
  ],
  ["running a process", `new Deno.Command("/bin/true").output()`, /Requires run access to "\/bin\/true"/],
  [
    "reading the environment",
    `Promise.resolve().then(() => Deno.env.get("HOME"))`,
    /Requires env access to "HOME"/,
  ],
  [
    "calling FFI",
    `Promise.resolve().then(() => Deno.dlopen("libc.so.6", {}))`,
    /Requires ffi access to "libc\.so\.6"/,
  ],
  [
    "writing a file",
    `Deno.writeTextFile("/tmp/edgenode-sandbox-test.txt", "x")`,
    /Requires write access to "\/tmp\/edgenode-sandbox-test\.txt"/,
  ],
  [
    "importing a URL",
    `import("https://esm.sh/left-pad")`,
    /remote specifier was requested: "https:\/\/esm\.sh/,
  ],
  [
    "importing a path outside its upload",
    `import("file:///etc/passwd.js")`,
    /Requires read access to "\/etc\/passwd\.js"/,
  ],
];

for (const [what, attempt, text] of DENIALS) {
  Deno.test(`SandboxHost denies ${what} and reports the attempt`, async () => {
    const { host, got } = sandbox(trying(attempt));
    try {
      await host.start();
      host.push(0, datagrams(4, 100));
      await until("the denial reported", () => (host.status().denied as string[]).some((d) => text.test(d)));
      await until("the batch answered", () => host.status().batches_done === 1);
      const s = host.status();
      assert.ok((s.denials as number) >= 1, JSON.stringify(s));
      assert.equal(s.handler_errors, 1);
      assert.equal((s.dropped as Record<string, number>).handler_error, 4);
      assert.equal(s.state, "running", "a denial does not end the program");
      assert.equal(packets(got), 0);
    } finally {
      await host.stop();
    }
  });
}

Deno.test("SandboxHost counts a denial the program caught itself", async () => {
  const source = `${PORTS}export function handle(_i, b) {
    try { Deno.readTextFileSync("/etc/hostname"); } catch { /* hidden */ }
    return [b];
  }\n`;
  const { host, got } = sandbox(source);
  try {
    await host.start();
    host.push(0, datagrams(2, 100));
    await until("the batch back", () => packets(got) === 2);
    await until("the audit counted", () => host.status().denials === 1, 3000).catch((e) => {
      throw new Error(`${e.message}: ${JSON.stringify(host.status())}`);
    });
    assert.deepEqual(host.status().denied, ['Requires read access to "/etc/hostname"']);
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost: batches cross in memory shared with the child, and arrive as they do through the socket", async () => {
  // Output "a" passes the batches on as they came (turned in the shared memory), "b" is a new list (encoded by the
  // child into its own frames): both kinds of answer, with the memory shared and without.
  const source = `export const ports = { inputs: ["in"], outputs: ["a", "b"] };
export function handle(_i, batch) {
  for (const d of batch) d.data[1] ^= 0xff;
  return [batch, batch.filter((d) => d.data[2] % 2 === 0)];
}
`;
  const results: Record<string, { a: number[][]; b: number[][]; shared: number; answers: number }> = {};
  for (const sharedMemory of [true, false]) {
    const { host, got } = sandbox(source, { limits: { sharedMemory } });
    try {
      await host.start();
      for (let b = 0; b < 30; b++) host.push(0, datagrams(20, 200 + b * 40, b));
      await until("every datagram back", () => packets(got) === 30 * 30).catch((e) => {
        throw new Error(`${e.message} (${packets(got)}): ${JSON.stringify(host.status())}`);
      });
      const of = (o: number) => got.filter((r) => r.output === o).flatMap((r) => r.data.map((d) => [...d]));
      const st = host.status();
      results[String(sharedMemory)] = {
        a: of(0),
        b: of(1),
        shared: st.batches_shared as number,
        answers: st.answers_shared as number,
      };
      assert.equal(host.status().protocol_errors, 0);
      assert.equal(host.status().restarts, 0);
    } finally {
      await host.stop();
    }
  }
  const [on, off] = [results.true, results.false];
  assert.equal(on.a.length, 600);
  assert.equal(on.b.length, 300);
  assert.equal(on.a[25][1], 5 ^ 0xff, "the program's change in place arrived");
  assert.deepEqual(on.a, off.a);
  assert.deepEqual(on.b, off.b);
  assert.ok(on.shared >= 1, `batches crossed in the shared memory: ${on.shared}`);
  assert.ok(on.answers >= 1, `answers came back in the shared memory: ${on.answers}`);
  assert.equal(off.shared, 0);
  assert.equal(off.answers, 0);
});

Deno.test("SandboxHost: a shared memory too small for what is in flight fills, is used again as answers free it, and what has no room there crosses the socket, all in order", async () => {
  // A slow handler and 40 KiB of shared memory against 1 MiB in flight: the memory fills and frees in order as DONEs
  // come back (its wrap is RingAllocator's, tested in shared_ring_test.ts); the batches without room go through the
  // socket. Either way each arrives whole, in order.
  const source = `${PORTS}
export function handle(_i, batch) { const end = performance.now() + 2; while (performance.now() < end); return [batch]; }
`;
  const { host, got } = sandbox(source, {
    limits: { sharedBytes: 40 * 1024, maxInFlightBytes: 1024 * 1024 },
  });
  try {
    await host.start();
    // Batches of 32 datagrams cross as they are (smaller ones pushed in one turn would be gathered into one): ten at
    // a time, more than the memory holds, then a pause in which DONEs free it.
    for (let round = 0; round < 6; round++) {
      for (let b = 0; b < 10; b++) host.push(0, datagrams(32, 300, round * 10 + b));
      await new Promise((r) => setTimeout(r, 15));
    }
    await until("every datagram back", () => packets(got) === 60 * 32).catch((e) => {
      throw new Error(`${e.message} (${packets(got)}): ${JSON.stringify(host.status())}`);
    });
    const data = got.flatMap((r) => r.data);
    data.forEach((d, k) => {
      const want = new Uint8Array(300).fill(k % 32);
      want[0] = Math.floor(k / 32);
      assert.deepEqual(d, want, `datagram ${k}`);
    });
    const st = host.status();
    const shared = st.batches_shared as number;
    assert.ok(shared > 6, `more batches crossed in 40 KiB than fit there at once: ${shared}`);
    assert.ok(shared < (st.batches_in as number), `some found no room there: ${shared} of ${st.batches_in}`);
    assert.equal(st.protocol_errors, 0);
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost gives the shared memory's pages back after a quiet sample, and batches after that arrive whole", async () => {
  const { host, got } = sandbox(PASS_THROUGH, { params: { stamp: 9 }, sampleMs: 40 });
  try {
    await host.start();
    assert.equal(host.status().shared_bytes, 8 * 1024 * 1024 + 1024 * 1024);
    host.push(0, datagrams(64, 1450));
    await until("the batch back", () => packets(got) === 64);
    await until("the memory given back", () => (host.status().shared_trims as number) >= 1, 3000);
    const trims = host.status().shared_trims as number;
    host.push(0, datagrams(64, 1000, 3));
    await until("the next batch back", () => packets(got) === 128);
    const last = got.flatMap((r) => r.data).slice(64);
    last.forEach((d, i) => {
      const want = new Uint8Array(1000).fill(i);
      want[0] = 9;
      assert.deepEqual(d, want, `datagram ${i}`);
    });
    assert.ok((host.status().batches_shared as number) >= 2);
    await until(
      "given back again after the new traffic",
      () => (host.status().shared_trims as number) > trims,
      3000,
    );
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost: the child's FFI is gone before the upload loads: dlopen, raw pointers and asking again are denied and reported", async () => {
  const source = `${PORTS}
const tries = [
  () => Deno.dlopen("libc.so.6", { getpid: { parameters: [], result: "i32" } }),
  () => Deno.UnsafePointer.create(4096n),
  () => Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(4096n), 8),
];
export const results = [];
const asked = await Deno.permissions.request({ name: "ffi" });
export function handle(_i, b) {
  const denied = tries.filter((t) => { try { t(); return false; } catch { return true; } }).length;
  // The verdicts travel back in the datagrams: byte 1 is how many attempts were denied, byte 2 whether asking worked.
  for (const d of b) { d.data[1] = denied; d.data[2] = asked.state === "granted" ? 1 : 0; }
  return [b];
}
`;
  const { host, got } = sandbox(source);
  try {
    await host.start();
    host.push(0, datagrams(2, 100));
    await until("the batch back", () => packets(got) === 2);
    assert.equal(got[0].data[0][1], 3, "every FFI attempt was denied");
    assert.equal(got[0].data[0][2], 0, "asking for FFI again was refused");
    assert.ok(
      (host.status().batches_shared as number) >= 1,
      "the memory was shared (so FFI had been granted)",
    );
    await until("the audit counted", () => (host.status().denials as number) === 3, 3000).catch((e) => {
      throw new Error(`${e.message}: ${JSON.stringify(host.status())}`);
    });
    assert.ok(
      (host.status().denied as string[]).every((d) => /ffi access/.test(d)),
      JSON.stringify(host.status()),
    );
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost kills a handler past its deadline and restarts it while a second sandbox keeps flowing", async () => {
  const spinner = sandbox(LOOPS_ON_FF, { limits: { deadlineMs: 150 }, backoff: { initialMs: 100 } });
  const neighbour = sandbox(PASS_THROUGH);
  try {
    await Promise.all([spinner.host.start(), neighbour.host.start()]);
    const firstPid = spinner.host.pid;
    spinner.host.push(0, datagrams(8, 100, 0xff));
    // The neighbour is served while the spinner's handler spins.
    neighbour.host.push(0, datagrams(16, 100));
    await until("the neighbour's batch", () => packets(neighbour.got) === 16);
    await until("the spinner killed", () => spinner.host.status().deadline_kills === 1, 5000);
    await until(
      "the spinner running again",
      () => spinner.host.status().restarts === 1 && spinner.host.state === "running",
      10_000,
    );
    const s = spinner.host.status();
    assert.equal((s.dropped as Record<string, number>).deadline, 8);
    assert.equal(s.restarts, 1);
    assert.match(String(s.last_error), /did not return within 150 ms/);
    assert.notEqual(spinner.host.pid, firstPid);
    spinner.host.push(0, datagrams(3, 100));
    await until("the restarted spinner answers", () => packets(spinner.got) === 3);
    neighbour.host.push(0, datagrams(16, 100));
    await until("the neighbour still flows", () => packets(neighbour.got) === 32);
  } finally {
    await Promise.all([spinner.host.stop(), neighbour.host.stop()]);
  }
});

for (
  const [what, source, error] of [
    ["a growing array", ARRAY_BOMB, /out of memory/],
    ["a growing set of ArrayBuffers", BUFFER_BOMB, /out of memory/],
  ] as const
) {
  Deno.test(`SandboxHost stops a memory bomb of ${what} and this process lives`, async () => {
    const { host } = sandbox(source, {
      limits: { heapMb: 48, memoryMb: 160, deadlineMs: 30_000 },
      backoff: { initialMs: 60_000 },
    });
    try {
      await host.start();
      host.push(0, datagrams(5, 100));
      await until("the child ended", () => host.state === "backoff", 30_000);
      const s = host.status();
      assert.match(String(s.last_error), error);
      assert.equal(s.memory_kills, 1);
      assert.equal((s.dropped as Record<string, number>).crashed, 5);
      assert.ok(Deno.memoryUsage().rss < 1024 ** 3, "this process did not take the bomb's memory");
    } finally {
      await host.stop();
    }
  });
}

Deno.test("SandboxHost backs off a crash loop on its clock", async () => {
  const clock = new ManualClock(1_000_000);
  const { host } = sandbox(EXITS, { clock, backoff: { initialMs: 1000, maxMs: 8000, factor: 2 } });
  try {
    await host.start();
    const delays: number[] = [];
    for (let i = 0; i < 4; i++) {
      await until(`run ${i + 1} running`, () => host.state === "running", 15_000);
      host.push(0, datagrams(2, 10));
      await until(`run ${i + 1} crashed`, () => host.state === "backoff", 10_000);
      const s = host.status();
      delays.push(s.next_start_ms as number);
      assert.match(String(s.last_error), /exit code 3/);
      // Nothing starts before the delay has passed on the clock.
      clock.advance((s.next_start_ms as number) - 1);
      assert.equal(host.state, "backoff");
      clock.advance(1);
    }
    assert.deepEqual(delays, [1000, 2000, 4000, 8000]);
    await until("run 5 running", () => host.state === "running", 15_000);
    assert.equal(host.status().restarts, 4);
    assert.equal((host.status().dropped as Record<string, number>).crashed, 8);
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost lets no byte be written through the path of the program's own socket", async () => {
  // Connecting needs write access to that one path: the program could remove the socket and make a file there.
  const source = `${PORTS}export async function handle(_i, b) {
    await Deno.remove(Deno.args[0]).catch(() => {});
    await Deno.writeTextFile(Deno.args[0], "x".repeat(4096));
    return [b];
  }\n`;
  const { host, got } = sandbox(source);
  try {
    await host.start();
    host.push(0, datagrams(1, 10));
    await until("the handler's error", () => host.status().handler_errors === 1);
    assert.match(String(host.status().last_error), /File too large/);
    assert.equal(packets(got), 0);
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost caps a spinning program to its share of a core with a control group", async () => {
  const { host } = sandbox(LOOPS_ON_FF, { limits: { deadlineMs: 30_000, cpuShare: 0.25 } });
  try {
    await host.start();
    host.push(0, datagrams(1, 10, 0xff));
    const first = await poll("a first sample", () => host.sample());
    const t0 = performance.now();
    // A rate needs an interval: wait for 1.5 s of real time to pass while it spins.
    await until("1.5 s of spinning", () => performance.now() - t0 >= 1500, 5000, 100);
    const second = (await host.sample())!;
    const share = (second.cpuMs - first.cpuMs) / (performance.now() - t0);
    assert.ok(share > 0.1 && share < 0.35, `CPU share ${share.toFixed(2)} of one core, capped at 0.25`);
    assert.equal((host.status().limits as Record<string, number>).cpu_share, 0.25);
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost kills a child that writes what is not a frame or an object, as breaking the protocol", async () => {
  // The program shares the guest's realm: it can make the guest write anything. The host trusts none of it.
  const source = `${PORTS}
const real = JSON.stringify;
export function handle(_i, batch) {
  if (batch[0].data[0] === 0xee) JSON.stringify = () => "[1";
  if (batch[0].data[0] === 0xdd) JSON.stringify = () => "null";
  throw new Error("boom");
}
export function start() { JSON.stringify = real; }
`;
  for (const first of [0xee, 0xdd]) {
    const { host } = sandbox(source, { limits: { deadlineMs: 30_000 } });
    try {
      await host.start();
      host.push(0, datagrams(2, 10, first));
      await until("the protocol error", () => host.status().protocol_errors === 1);
      assert.match(String(host.status().last_error), /broke the sandbox protocol/);
      assert.equal((host.status().dropped as Record<string, number>).crashed, 2);
    } finally {
      await host.stop();
    }
  }
});

Deno.test("SandboxHost: a child that repeats its answer's 13-byte REF frame breaks the protocol, and hands on nothing more than it was sent", async () => {
  // The program shares the guest's realm: on the trigger it makes the guest's joining of its answer frames put the
  // REF (the batch passed on where it lies in the shared memory) 2,000 times into one write. Each repeat would cost
  // the node a copy of the region and hand the batch on again: 26 kB from the child, 2,000 times the batch out.
  const source = `${PORTS}
const reduce = Array.prototype.reduce;
export function handle(_i, batch) {
  if (batch[0].data[0] === 0xee) {
    Array.prototype.reduce = function (...args) {
      const first = this[0];
      if (first instanceof Uint8Array && first.length === 13 && first[4] === 5) {
        for (let k = 0; k < 2000; k++) this.splice(1, 0, first);
        Array.prototype.reduce = reduce;
      }
      return reduce.apply(this, args);
    };
  }
  return [batch];
}
`;
  const { host, got } = sandbox(source, { limits: { deadlineMs: 30_000, sharedMemory: true } });
  try {
    await host.start();
    host.push(0, datagrams(10, 1000, 1));
    await until("the first batch back", () => packets(got) === 10);
    assert.ok((host.status().answers_shared as number) >= 1, JSON.stringify(host.status()));
    host.push(0, datagrams(10, 1000, 0xee));
    await until("the protocol error", () => host.status().protocol_errors === 1);
    assert.match(String(host.status().last_error), /broke the sandbox protocol.*shared answer of \d+ bytes/);
    assert.ok(packets(got) <= 20, `handed on ${packets(got)} datagrams for 20 sent`);
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost hands on at most max_out_per_in datagrams per datagram in, drops the rest as output_cap, and keeps running", async () => {
  // One datagram in, 20,000 out if the first byte says so (of one byte each: 7 bytes each on the way back).
  const source = `${PORTS}
export function handle(_i, batch) {
  const n = batch[0].data[0] === 0xee ? 20_000 : 4;
  const out = [];
  for (const d of batch) for (let k = 0; k < n; k++) out.push({ data: d.data.subarray(0, 1), from: d.from });
  return [out];
}
`;
  for (const sharedMemory of [true, false]) {
    const { host, got } = sandbox(source, { limits: { deadlineMs: 30_000, sharedMemory, maxOutPerIn: 16 } });
    try {
      await host.start();
      host.push(0, datagrams(10, 100, 1));
      await until("four out per datagram in, within the cap", () => packets(got) === 40);
      host.push(0, datagrams(10, 100, 0xee));
      await until(
        "the flood dropped",
        () => (host.status().dropped as Record<string, number>).output_cap > 0,
      );
      assert.equal(packets(got), 40, "nothing of the flood was handed on");
      assert.match(String(host.status().last_error), /more than 16 datagrams per datagram .*max_out_per_in/);
      host.push(0, datagrams(10, 100, 2));
      await until("the next batch within the cap flows", () => packets(got) === 80);
      assert.equal(host.status().restarts, 0);
      assert.equal((host.status().limits as Record<string, number>).max_out_per_in, 16);
    } finally {
      await host.stop();
    }
  }
});

Deno.test("SandboxHost lets a program that held datagrams release them in a burst beyond max_out_per_in of the batch that triggers it", async () => {
  // A reorder buffer of sorts: it keeps every datagram and lets all go when one starting with 0xff arrives.
  const source = `${PORTS}
const held = [];
export function handle(_i, batch) {
  held.push(...batch);
  if (batch[0].data[0] !== 0xff) return [[]];
  return [held.splice(0)];
}
`;
  const { host, got } = sandbox(source, { limits: { deadlineMs: 30_000, maxOutPerIn: 4 } });
  try {
    await host.start();
    for (let b = 0; b < 20; b++) {
      host.push(0, datagrams(5, 100, 1));
      await until(`batch ${b} answered`, () => host.status().batches_done === b + 1);
    }
    host.push(0, datagrams(1, 100, 0xff));
    await until("the burst of 101 handed on", () => packets(got) === 101);
    assert.equal((host.status().dropped as Record<string, number>).output_cap, 0);
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost's heartbeat kills a child that spins outside a handler, and the child has no Worker", async () => {
  const source = `${PORTS}
export function handle(_i, batch) {
  if (typeof Worker !== "undefined") throw new Error("Worker is there");
  setTimeout(() => { for (;;) {} }, 0);
  return [batch];
}
`;
  const { host, got } = sandbox(source, { sampleMs: 50, limits: { deadlineMs: 300 } });
  try {
    await host.start();
    host.push(0, datagrams(1, 10));
    await until("its answer", () => packets(got) === 1);
    assert.equal(host.status().handler_errors, 0, String(host.status().last_error));
    // No batch is in flight: only the heartbeat can see the child spin.
    await until("the heartbeat's deadline kill", () => host.status().deadline_kills === 1, 5000);
    assert.equal(
      (host.status().dropped as Record<string, number>).deadline,
      0,
      "a heartbeat carries no datagram",
    );
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost's deadline follows the head: a batch answered, then one that spins", async () => {
  const { host, got } = sandbox(LOOPS_ON_FF, { limits: { deadlineMs: 200 } });
  try {
    await host.start();
    host.push(0, datagrams(40, 10));
    await until("the first answered", () => packets(got) === 40);
    // Sent while the first one's deadline timer is still armed: the timer moves on to it when it fires.
    host.push(0, datagrams(40, 10, 0xff));
    await until("the second killed at its deadline", () => host.status().deadline_kills === 1, 5000);
    assert.equal((host.status().dropped as Record<string, number>).deadline, 40);
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost names the uploaded file, line and column of a program whose start throws", async () => {
  const source = `${PORTS}export function handle(_i, b) { return [b]; }
export function start() {
  const x = 1;
      throw new Error("no start");
}
`;
  const { host } = sandbox(source);
  const error = await host.start().then(() => null, (e) => e);
  assert.ok(error instanceof SandboxLoadError, String(error));
  assert.equal(error.file, "main.js");
  assert.equal(error.line, 5);
  assert.equal(error.col, 13);
  assert.match(error.message, /no start/);
});

Deno.test("SandboxHost refuses a program whose ports are not the ones it was checked with", async () => {
  const { host } = sandbox(PASS_THROUGH, {
    programs: [{ name: "F", entry: "main.js", ports: { inputs: ["in"], outputs: ["out", "other"] } }],
  });
  const error = await host.start().then(() => null, (e) => e);
  assert.ok(error instanceof SandboxLoadError, String(error));
  assert.match(error.message, /its ports are .* not the .* it was checked with/);
  assert.equal(host.state, "failed");
});

/**
 * Two inputs (batches for different inputs are never merged into one call); a call on 0xAA takes `ms`, and answers
 * with the batch it was given or with copies of its datagrams.
 */
const slowOnAA = (ms: number, copies = false) =>
  `export const ports = { inputs: ["a", "b"], outputs: ["out"] };
export function handle(_input, batch) {
  if (batch[0]?.data[0] === 0xaa) for (const end = performance.now() + ${ms}; performance.now() < end;) {}
  return [${copies ? "batch.map((d) => ({ data: d.data.slice(), from: d.from }))" : "batch"}];
}
`;

/** Pushes `calls` slow batches of 40 datagrams at once, alternating inputs; all are answered and none is killed. */
async function slowCallsAllAnswered(source: string, deadlineMs: number, calls: number): Promise<void> {
  const { host, got } = sandbox(source, { limits: { deadlineMs } });
  try {
    await host.start();
    for (let k = 0; k < calls; k++) host.push(k % 2, datagrams(40, 10, 0xaa));
    await until(`all ${calls} answered`, () => packets(got) === 40 * calls, 5000);
    assert.equal(host.status().deadline_kills, 0);
    assert.equal(host.status().restarts, 0);
  } finally {
    await host.stop();
  }
}

Deno.test("SandboxHost's deadline counts from the answer before: batches queued behind slow ones are not killed", async () => {
  // Four calls of 100 ms each, sent at once: the last is answered about 400 ms after it was sent, over the 250 ms
  // deadline, but about 100 ms after the child could start on it.
  await slowCallsAllAnswered(slowOnAA(100), 250, 4);
});

Deno.test("SandboxHost drops as queue_full once max_in_flight_bytes of datagrams wait for the child", async () => {
  const { host } = sandbox(LOOPS_ON_FF, { limits: { deadlineMs: 30_000, maxInFlightBytes: 60_000 } });
  try {
    await host.start();
    // The first spins; it and a second wait (two frames of 40,000 datagram bytes and their headers); a third is
    // over the bound.
    assert.equal(host.push(0, datagrams(40, 1000, 0xff)), true);
    assert.equal(host.push(0, datagrams(40, 1000)), true);
    assert.equal(host.push(0, datagrams(40, 1000)), false);
    const s = host.status();
    assert.equal((s.dropped as Record<string, number>).queue_full, 40);
    assert.equal(s.queue_depth, 2);
    assert.ok(
      (s.queue_bytes as number) > 80_000 && (s.queue_bytes as number) < 81_000,
      `${s.queue_bytes} bytes`,
    );
    assert.equal((s.limits as Record<string, number>).max_in_flight_bytes, 60_000);
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost fails a start at once, naming the cause, when the child dies out of memory while its module loads", async () => {
  const hog = `${PORTS}export const kept = Array.from({ length: 64 }, () => new Array(1 << 17).fill(1.5));
export function handle(_i, batch) { return [batch]; }
`;
  // A start timeout far beyond the test's own: only an immediate failure lets it pass.
  const { host } = sandbox(hog, { limits: { heapMb: 16, startMs: 600_000 } });
  try {
    await assert.rejects(
      host.start(),
      /Cannot start sandbox "test": out of memory \(heap limit 16 MiB\), it ended/,
    );
    assert.equal(host.state, "failed");
    assert.equal(host.status().restarts, 0, "a child that never became ready is not restarted");
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost's memory budget is the program's: a 96 MiB buffer made while loading fails under memory_mb 32, 16 MiB passes", async () => {
  const loadsBuffer = (mib: number) =>
    `${PORTS}export const kept = new Uint8Array(${mib} * 1024 * 1024).fill(1);
export function handle(_i, batch) { return [batch]; }
`;
  // Under the start-up limit alone (the runtime's base, 640 MiB, plus the budget) the 96 MiB would fit: the runtime
  // maps about 550 MiB of it here.
  const big = sandbox(loadsBuffer(96), { limits: { heapMb: 16, memoryMb: 32, startMs: 600_000 } }).host;
  try {
    await assert.rejects(big.start(), (error: SandboxLoadError) => {
      assert.match(
        error.message,
        /^out of memory \(over its 32 MiB limit\) while loading: .*allocation failed/i,
      );
      assert.deepEqual([error.file, error.line], ["main.js", 2], "the line that allocated");
      return true;
    });
    assert.equal(big.state, "failed");
  } finally {
    await big.stop();
  }
  const { host, got } = sandbox(loadsBuffer(16), { limits: { heapMb: 16, memoryMb: 32 } });
  try {
    await host.start();
    const limits = host.status().limits as Record<string, number>;
    assert.ok(limits.memory_base_bytes > 64 * 1024 * 1024, JSON.stringify(limits));
    assert.equal(limits.memory_limit_bytes, limits.memory_base_bytes + 32 * 1024 * 1024);
    host.push(0, datagrams(3, 100));
    await until("the batch back", () => packets(got) === 3);
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost names the upload's own line for an error thrown at load, and a failed native allocation as out of memory", async () => {
  // A denied read at load: the error is thrown inside the runtime (ext:), the place to show is the module's line.
  const reads = sandbox(`${PORTS}export const text = Deno.readTextFileSync("/etc/hostname");
export function handle(_i, batch) { return [batch]; }
`).host;
  try {
    await assert.rejects(reads.start(), (error: SandboxLoadError) => {
      assert.deepEqual([error.file, error.line], ["main.js", 2], error.format());
      return true;
    });
  } finally {
    await reads.stop();
  }
  // A native allocation (a 64 MiB string encoded: outside V8's heap) over memory_mb ends the child with SIGABRT:
  // out of memory, at once, not retried until the start timeout.
  const encodes = sandbox(
    `${PORTS}export const b = new TextEncoder().encode("x".repeat(64 * 1024 * 1024));
export function handle(_i, batch) { return [batch]; }
`,
    { limits: { heapMb: 512, memoryMb: 32, startMs: 600_000 } },
  ).host;
  try {
    await assert.rejects(encodes.start(), /out of memory \(over its 32 MiB limit\)/);
  } finally {
    await encodes.stop();
  }
});

Deno.test("SandboxHost's child answers each call as it ends, so calls queued together are not killed one behind another", async () => {
  // Six calls of 120 ms, answered with copies; the child reads the first alone and the other five at once. The host
  // times each from the answer before, so answers held back until the whole read had run would be late against the
  // 300 ms deadline.
  await slowCallsAllAnswered(slowOnAA(120, true), 300, 6);
});

Deno.test("SandboxHost drops as queue_full once the oldest batch waiting for a slow child has waited a deadline", async () => {
  // Calls of 100 ms (alternating inputs: never merged), a batch offered every 20 ms for 2 s, a 400 ms deadline:
  // the queue stops growing once its head is a deadline old, and the child, slow but answering, is never killed.
  const { host } = sandbox(slowOnAA(100), { limits: { deadlineMs: 400 } });
  try {
    await host.start();
    let deepest = 0;
    for (let k = 0; k < 100; k++) {
      host.push(k % 2, datagrams(1, 10, 0xaa));
      deepest = Math.max(deepest, host.status().queue_depth as number);
      await new Promise((r) => setTimeout(r, 20));
    }
    const s = host.status();
    assert.ok((s.dropped as Record<string, number>).queue_full > 0, JSON.stringify(s.dropped));
    assert.ok(deepest < 40, `queue depth reached ${deepest}`);
    assert.equal(s.deadline_kills, 0);
  } finally {
    await host.stop();
  }
});

Deno.test("SandboxHost fails a start whose memory limit cannot be lowered, says why, and keeps no socket of it", async () => {
  // A prlimit that refuses to change a running process (as one without the right would), first on PATH.
  const real = new TextDecoder().decode(
    (await new Deno.Command("sh", { args: ["-c", "command -v prlimit"] }).output()).stdout,
  ).trim();
  const stubs = await Deno.makeTempDir({ prefix: "edgenode_stub_" });
  await Deno.writeTextFile(
    `${stubs}/prlimit`,
    `#!/bin/sh\ncase " $* " in *" --pid "*) echo "not permitted here" >&2; exit 1;; esac\nexec ${real} "$@"\n`,
    { mode: 0o755 },
  );
  const sockets = async () => {
    const out = await new Deno.Command("find", {
      args: [`/proc/${Deno.pid}/fd`, "-lname", "socket:*"],
      stderr: "null",
    }).output();
    return new TextDecoder().decode(out.stdout).split("\n").filter(Boolean).length;
  };
  const path = Deno.env.get("PATH") ?? "";
  const before = await sockets();
  Deno.env.set("PATH", `${stubs}:${path}`);
  try {
    const { host } = sandbox(PASS_THROUGH);
    try {
      await assert.rejects(host.start(), /Cannot limit the sandbox's memory: .*not permitted here/);
      assert.equal(host.state, "failed");
    } finally {
      await host.stop();
    }
  } finally {
    Deno.env.set("PATH", path);
    await Deno.remove(stubs, { recursive: true });
  }
  assert.equal(await sockets(), before, "the node's side of the sandbox's socket is closed");
});

Deno.test("SandboxHost's stop leaves no descriptor of its permission-audit FIFO open (and no thread waiting on it)", async () => {
  const tempDir = await Deno.makeTempDir({ prefix: "edgenode_audit_" });
  // This process's descriptors into tempDir (Deno keeps /proc/self from its own file API: `find` reads them).
  const openHere = async () => {
    const out = await new Deno.Command("find", {
      args: [`/proc/${Deno.pid}/fd`, "-lname", `${tempDir}/*`],
      stderr: "null",
    }).output();
    return new TextDecoder().decode(out.stdout).split("\n").filter(Boolean);
  };
  try {
    for (let k = 0; k < 3; k++) {
      const { host, got } = sandbox(PASS_THROUGH, { tempDir });
      await host.start();
      host.push(0, datagrams(3, 10));
      await until("answered", () => packets(got) === 3);
      assert.notDeepEqual(await openHere(), [], "the running sandbox holds its FIFO");
      await host.stop();
      // The FIFO's reader waited in a read that never ended: its descriptor (and thread) outlived the stop.
      assert.deepEqual(await openHere(), []);
    }
  } finally {
    await Deno.remove(tempDir, { recursive: true });
  }
});
