/**
 * The agent's readings from fixed /proc text and fixed command output, and the reply each reading gives.
 */
import assert from "node:assert/strict";
import type { LoadReaders } from "../../lib/agent/load.ts";
import {
  composeReply,
  connectionsIdle,
  establishedConnections,
  loadavgIdle,
  measure,
  memoryIdle,
  type SourceSpec,
} from "../../lib/agent/sources.ts";

const MEMINFO = `MemTotal:       16000000 kB
MemFree:         1000000 kB
MemAvailable:    4000000 kB
Buffers:          200000 kB
Cached:          3000000 kB
`;

// Port 8080 is 1F90, port 554 is 022A. States: 01 ESTABLISHED, 0A LISTEN, 06 TIME_WAIT.
const TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0A000001:1F90 0A000002:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0A000001:1F90 0A000003:D432 06 00000000:00000000 00:00000000 00000000     0        0 0 3 0
   4: 0A000001:022A 0A000003:D433 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
   5: 0A000001:C350 0A000009:1F90 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0 20 4 30 10 -1
`;
const TCP6 = `  sl  local_address                         remote_address                        st tx_queue
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:C351 01 00000000:00000000
`;

function readers(files: Record<string, string>, cpus = 4): LoadReaders {
  return {
    readText: (path) => Promise.resolve(files[path] ?? null),
    cpuCount: () => cpus,
    run: () => Promise.reject(new Error("no commands here")),
  };
}

const spec = (over: Partial<SourceSpec>): SourceSpec => ({
  source: "loadavg",
  port: null,
  maxConnections: 1000,
  command: [],
  commandTimeoutMs: 1000,
  minWeight: 0,
  ...over,
});

Deno.test("loadavgIdle scales the 1-minute load by the CPU count and clamps it", () => {
  assert.equal(loadavgIdle("1.00 0.50 0.25 1/89 3828\n", 4), 75);
  assert.equal(loadavgIdle("0.00 0.00 0.00 1/89 1\n", 8), 100);
  assert.equal(loadavgIdle("6.50 2.00 1.00 3/200 99\n", 4), 0);
  assert.equal(loadavgIdle("0.333 0 0 1/1 1", 1), 67);
  assert.throws(() => loadavgIdle("garbage\n", 4), /Cannot read the load average/);
});

Deno.test("memoryIdle is MemAvailable over MemTotal", () => {
  assert.equal(memoryIdle(MEMINFO), 25);
  // Old kernels: free + cached + buffers.
  assert.equal(memoryIdle(MEMINFO.replace(/^MemAvailable.*\n/m, "")), 26);
  assert.throws(() => memoryIdle("MemFree: 1 kB\n"), /MemTotal and MemAvailable/);
});

Deno.test("establishedConnections counts established connections to the local port only", () => {
  assert.equal(establishedConnections(TCP, 8080), 2);
  assert.equal(establishedConnections(TCP, 554), 1);
  assert.equal(establishedConnections(TCP6, 8080), 1);
  assert.equal(establishedConnections("", 8080), 0);
  assert.equal(connectionsIdle(250, 1000), 75);
  assert.equal(connectionsIdle(5000, 1000), 0);
});

Deno.test("measure reads each /proc source through the readers", async () => {
  const r = readers({ "/proc/loadavg": "2.00 1 1 1/1 1\n", "/proc/meminfo": MEMINFO, "/proc/net/tcp": TCP });
  assert.deepEqual(await measure(spec({ source: "loadavg" }), r), {
    ok: true,
    fields: { weightPercent: 50 },
    problems: [],
  });
  assert.deepEqual(await measure(spec({ source: "memory" }), r), {
    ok: true,
    fields: { weightPercent: 25 },
    problems: [],
  });
  // No tcp6 file (IPv6 off) counts as no IPv6 connections.
  const conns = await measure(spec({ source: "connections", port: 8080, maxConnections: 4 }), r);
  assert.deepEqual(conns, { ok: true, fields: { weightPercent: 50 }, problems: [] });
  const both = await measure(
    spec({ source: "connections", port: 8080, maxConnections: 4 }),
    readers({ "/proc/net/tcp": TCP, "/proc/net/tcp6": TCP6 }),
  );
  assert.deepEqual(both, { ok: true, fields: { weightPercent: 25 }, problems: [] });
});

Deno.test("measure keeps the weight at or above min_weight for measured sources", async () => {
  const busy = readers({ "/proc/loadavg": "64.00 1 1 1/1 1\n" });
  const m = await measure(spec({ minWeight: 5 }), busy);
  assert.deepEqual(m, { ok: true, fields: { weightPercent: 5 }, problems: [] });
});

Deno.test("measure reports a missing /proc file as a failed reading", async () => {
  assert.deepEqual(await measure(spec({ source: "memory" }), readers({})), {
    ok: false,
    error: "Cannot read /proc/meminfo: no such file (the memory source needs Linux)",
  });
});

Deno.test("measure reads a command's first line as its reply", async () => {
  const run = (stdout: string): LoadReaders => ({
    ...readers({}),
    run: () => Promise.resolve({ stdout }),
  });
  const cmd = spec({ source: "command", command: ["probe"] });
  assert.deepEqual(await measure(cmd, run("42% drain\nsecond line\n")), {
    ok: true,
    fields: { weightPercent: 42, admin: "drain" },
    problems: [],
  });
  assert.deepEqual(await measure(cmd, run("42% bogus\n")), {
    ok: true,
    fields: { weightPercent: 42 },
    problems: ['Ignored unknown word "bogus"'],
  });
  assert.deepEqual(await measure(cmd, run("hello world\n")), {
    ok: false,
    error: 'Command printed no agent reply: Ignored unknown word "hello"',
  });
  const failing: LoadReaders = {
    ...readers({}),
    run: () => Promise.resolve({ error: '"probe" exited with status 1' }),
  };
  assert.deepEqual(await measure(cmd, failing), { ok: false, error: '"probe" exited with status 1' });
});

Deno.test("composeReply sends the stricter administrative state and the configured maxconn", () => {
  const m = { ok: true as const, fields: { weightPercent: 42, admin: "drain" as const }, problems: [] };
  assert.deepEqual(composeReply(m, { admin: "ready", maxconn: 30, onFailure: "keep" }), {
    weightPercent: 42,
    admin: "drain",
    maxconn: 30,
  });
  assert.deepEqual(composeReply(m, { admin: "maint", maxconn: null, onFailure: "keep" }), {
    weightPercent: 42,
    admin: "maint",
  });
  const own = { ok: true as const, fields: { maxconn: 5 }, problems: [] };
  assert.deepEqual(composeReply(own, { admin: "ready", maxconn: 30, onFailure: "keep" }), {
    maxconn: 5,
    admin: "ready",
  });
});

Deno.test("composeReply answers a failed reading without a weight, down only when asked", () => {
  const failed = { ok: false as const, error: "boom" };
  assert.deepEqual(composeReply(failed, { admin: "ready", maxconn: null, onFailure: "keep" }), {
    admin: "ready",
    description: "agent reading failed: boom",
  });
  assert.deepEqual(composeReply(failed, { admin: "drain", maxconn: 7, onFailure: "down" }), {
    maxconn: 7,
    admin: "drain",
    op: "down",
    description: "agent reading failed: boom",
  });
});
