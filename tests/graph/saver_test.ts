/**
 * The saver's file handling: a full disk leaves a readable capture cut at its last whole record, writes are queued
 * off the packet path (bounded, drops counted), files are created 0640 and neither the saver nor the player follows
 * a symbolic link. The disk is a real temporary file whose writes fail with ENOSPC past a size (injected).
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { StartError } from "../../lib/core/errors.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { ArrayBatch } from "../../lib/graph/batch.ts";
import type { Element, NodeServices } from "../../lib/graph/element.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { openNoFollow } from "../../lib/graph/elements/files.ts";
import {
  CHUNK_BYTES,
  ChunkBudget,
  MAX_QUEUED_CHUNKS,
  type SaverIo,
  saverKind,
} from "../../lib/graph/elements/saver.ts";
import { pcapFileHeader, pcapRecordSize, readPcap } from "../../lib/media/pcap.ts";
import { until } from "../_support/until.ts";

const FROM = { host: "192.0.2.1", port: 4000 };

async function services() {
  const clock = new ManualClock(1_000_000);
  const dataDir = await Deno.makeTempDir({ prefix: "edgenode_saver_" });
  const logs: string[] = [];
  const node: NodeServices = {
    clock,
    logger: new Logger({ level: "debug", clock, sink: (l) => logs.push(l) }),
    metrics: new MetricsRegistry(),
    dataDir,
    host: "127.0.0.1",
    udp: {},
  };
  return {
    node,
    clock,
    dataDir,
    logs,
    [Symbol.asyncDispose]: () => Deno.remove(dataDir, { recursive: true }),
  };
}

function saverOn(node: NodeServices, io?: SaverIo, params: Record<string, unknown> = {}): Element {
  return saverKind(io).create({
    name: "S",
    session: "t",
    params: { output_file: "x.pcap", overwrite: false, max_bytes: 1024 ** 3, port: 5004, ...params },
    inputs: ["in"],
    outputs: [],
    useRtp: false,
    registration: null,
    node,
  } as never);
}

/** Real files whose writes fail with ENOSPC once the file would pass `capacity` bytes (after a partial write). */
function diskOf(capacity: number): SaverIo & { writes: number } {
  const io = {
    writes: 0,
    async open(path: string, options: Deno.OpenOptions) {
      const file = await openNoFollow(path, options);
      let size = 0;
      return {
        async write(data: Uint8Array) {
          io.writes++;
          const room = capacity - size;
          if (room <= 0) throw new Error("No space left on device (os error 28)");
          const n = await file.write(data.subarray(0, Math.min(room, data.length)));
          size += n;
          return n;
        },
        truncate: (n: number) => file.truncate(n),
        close: () => file.close(),
      };
    },
  };
  return io;
}

const datagrams = (n: number, size = 100) =>
  new ArrayBatch(
    Array.from({ length: n }, (_, i) => new Uint8Array(size).fill(i & 0xff)),
    Array(n).fill(FROM),
  );

type SaverStatus = {
  state: string;
  stopped_reason: string | null;
  records: number;
  dropped: number;
  dropped_queue: number;
  written_bytes: number;
};

Deno.test("saver on a full disk cuts the file back to its last whole record, stops and says so", async () => {
  await using env = await services();
  const record = pcapRecordSize(100, false);
  // Room for the header, 10 whole records and part of the 11th.
  const capacity = 24 + 10 * record + 50;
  const s = saverOn(env.node, diskOf(capacity));
  await s.start!();
  s.push(0, datagrams(30), false);
  env.clock.advance(1000);
  const status = () => s.status!() as SaverStatus;
  await until("the saver to stop", () => status().state === "stopped");
  assert.match(
    status().stopped_reason!,
    /No space left on device.*cut back to 1464 bytes \(its last whole record\)/,
  );
  assert.equal(status().records, 10);
  assert.equal(status().dropped, 20);
  s.push(0, datagrams(5), false);
  assert.equal(status().dropped, 25);
  await s.stop!();
  const bytes = await Deno.readFile(`${env.dataDir}/x.pcap`);
  assert.equal(bytes.length, 24 + 10 * record);
  const capture = readPcap(bytes);
  assert.equal(capture.truncated, false);
  assert.equal(capture.records.length, 10);
  assert.ok(env.logs.some((l) => l.includes('msg="saver stopped"')));
});

Deno.test("saver on a disk too full for the capture's header removes the file rather than leave an empty one", async () => {
  await using env = await services();
  const s = saverOn(env.node, diskOf(10));
  await s.start!();
  s.push(0, datagrams(3), false);
  env.clock.advance(1000);
  const status = () => s.status!() as SaverStatus;
  await until("the saver to stop", () => status().state === "stopped");
  assert.match(status().stopped_reason!, /not even the capture's header fit, so the file was removed/);
  await s.stop!();
  await assert.rejects(Deno.stat(`${env.dataDir}/x.pcap`), Deno.errors.NotFound);
});

Deno.test("saver queues its writes off the packet path and counts what a full queue drops", async () => {
  await using env = await services();
  const blocked = Promise.withResolvers<void>();
  const inner = diskOf(Infinity);
  const io: SaverIo = {
    async open(path, options) {
      const file = await inner.open(path, options);
      // Every write waits for the test: the disk is stuck.
      return { ...file, write: async (d) => (await blocked.promise, file.write(d)) };
    },
  };
  const s = saverOn(env.node, io);
  await s.start!();
  const perChunk = Math.floor(CHUNK_BYTES / pcapRecordSize(1000, false));
  const sent = perChunk * (MAX_QUEUED_CHUNKS + 3);
  // The push returns at once although nothing can be written.
  for (let i = 0; i < sent; i += 100) s.push(0, datagrams(Math.min(100, sent - i), 1000), false);
  const status = s.status!() as SaverStatus & { queued_chunks: number };
  assert.ok(status.dropped_queue > 0, JSON.stringify(status));
  assert.equal(status.records + status.dropped_queue, sent);
  blocked.resolve();
  await s.stop!();
  const capture = readPcap(await Deno.readFile(`${env.dataDir}/x.pcap`));
  assert.equal(capture.records.length, status.records);
});

Deno.test("saver creates its file 0640", async () => {
  await using env = await services();
  const s = saverOn(env.node);
  await s.start!();
  await s.stop!();
  assert.equal((await Deno.stat(`${env.dataDir}/x.pcap`)).mode! & 0o777, 0o640);
});

Deno.test("saver refuses a symbolic link and leaves its target alone, even with overwrite", async () => {
  await using env = await services();
  const target = `${env.dataDir}/precious`;
  await Deno.writeTextFile(target, "precious");
  await Deno.symlink(target, `${env.dataDir}/x.pcap`);
  for (const overwrite of [false, true]) {
    const s = saverOn(env.node, undefined, { overwrite });
    await assert.rejects(s.start!(), (e: Error) => {
      assert.ok(e instanceof StartError);
      assert.match(e.message, /Cannot write .*x\.pcap: it is a symbolic link/);
      return true;
    });
    await s.stop!();
  }
  assert.equal(await Deno.readTextFile(target), "precious");
});

Deno.test("player refuses a symbolic link", async () => {
  await using env = await services();
  await Deno.writeFile(`${env.dataDir}/real.pcap`, pcapFileHeader());
  await Deno.symlink(`${env.dataDir}/real.pcap`, `${env.dataDir}/in.pcap`);
  const player = coreElements().get("localservice.player").create({
    name: "P",
    session: "t",
    params: { input_file: "in.pcap", speed: 1, loop: false },
    inputs: [],
    outputs: [{ emit() {} }],
    useRtp: false,
    registration: null,
    node: env.node,
  } as never);
  await assert.rejects(player.start!(), /Cannot play .*in\.pcap: it is a symbolic link/);
  await player.stop!();
});

Deno.test("savers of one node hold at most the node's chunks together, and give them back when they stop", async () => {
  await using env = await services();
  const node = { ...env.node, shared: new Map<string, unknown>() };
  const budget = new ChunkBudget(6);
  node.shared.set("localservice.saver.chunks", budget);
  const blocked = Promise.withResolvers<void>();
  const inner = diskOf(Infinity);
  const stuck: SaverIo = {
    async open(path, options) {
      const file = await inner.open(path, options);
      return { ...file, write: async (d) => (await blocked.promise, file.write(d)) };
    },
  };
  const savers = [1, 2, 3].map((n) => saverOn(node, stuck, { output_file: `x${n}.pcap` }));
  for (const s of savers) await s.start!();
  const perChunk = Math.floor(CHUNK_BYTES / pcapRecordSize(1000, false));
  for (const s of savers) {
    for (let i = 0; i < perChunk * 4; i += 100) s.push(0, datagrams(100, 1000), false);
  }
  assert.equal(budget.used, 6, "the node's six chunks are all taken, by whichever savers came first");
  const dropped = savers.map((s) => (s.status!() as SaverStatus).dropped_queue);
  assert.ok(dropped.every((d) => d > 0), `every saver drops beyond the node's chunks: ${dropped}`);
  blocked.resolve();
  for (const s of savers) await s.stop!();
  assert.equal(budget.used, 0, "all given back");
});
