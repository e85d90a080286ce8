/**
 * TCP pipe benchmark, all paths in one run on one machine: a load process (this one: a server that streams or
 * echoes, and its clients) talks to itself over loopback either directly or through a proxy process that relays
 * each connection with lib/net/tcp/pipe.ts (buffers of 16, 32 and 64 KiB from a pool) or, as the reference the
 * read/write loop replaced, with `readable.pipeTo(writable)` both ways. Two figures per path:
 *   bulk MB/s   4 connections each downloading BENCH_MB/4 MiB at once
 *   echo rt/s   32 connections doing 1 KiB request/response round trips
 * Rounds are interleaved across paths and the median is kept. Prints figures and ratios; exits non-zero only when
 * it could not run.
 *
 * Figures: bulk MB/s and echo round trips/s per path (median of the rounds) with ratios to direct and to the
 * 64 KiB pipe; every round's bulk figure; the 64 KiB pipe against pipeTo.
 *
 *   make bench / deno task bench pipe   quick: 128 MiB, 1 round (~1 min)
 *   BENCH_FULL=1 deno task bench pipe   full: 512 MiB, 3 rounds (~3 min)
 *   BENCH_MB=128 BENCH_ROUNDS=1 deno task bench pipe         any part of either, by hand
 *   BENCH_BUFFERS=16,64,128 deno task bench pipe            other buffer sizes (KiB)
 */
import { type HostPort } from "../../lib/net/address.ts";
import { connectTcp, listenTcp } from "../../lib/net/tcp/socket.ts";
import { pipe } from "../../lib/net/tcp/pipe.ts";
import { BufferPool } from "../../lib/net/tcp/pool.ts";
import { announce, benchNumber } from "./_mode.ts";

const LO = "127.0.0.1";
const KiB = 1024;
const MiB = 1024 * KiB;
const BULK_CONNS = 4;
const ECHO_CONNS = 32;
const ECHO_SIZE = 1 * KiB;
const ECHO_ROUND_TRIPS = 1500;

// ---------------------------------------------------------------------------------------------------------------
// The proxy process: `pipe_bench.ts --proxy <pipe|pipeto> <bufferBytes> <targetPort>`; prints its port, runs until
// killed.

async function runProxy(mode: string, bufferBytes: number, target: HostPort): Promise<void> {
  const listener = listenTcp({ host: LO, port: 0 });
  const pool = new BufferPool({ bufferBytes });
  console.log(listener.addr.port);
  for (;;) {
    const client = await listener.accept();
    if (!client) return;
    connectTcp(target).then(
      async (server) => {
        if (mode === "pipe") {
          await pipe(client, server, { pool });
          return;
        }
        await Promise.all([
          client.readable.pipeTo(server.writable),
          server.readable.pipeTo(client.writable),
        ]).catch(() => {});
      },
      () => client.close(),
    );
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The load process.

/** The server: the first byte a client sends picks "B" (stream `n` bytes, n in the next 8 bytes) or "E" (echo). */
function startServer(): { addr: HostPort; stop(): void } {
  const listener = listenTcp({ host: LO, port: 0 });
  const serve = async (conn: Deno.TcpConn) => {
    const buf = new Uint8Array(256 * KiB);
    try {
      const head = await readExactly(conn, 9);
      if (head[0] === 0x42) {
        let left = Number(new DataView(head.buffer).getBigUint64(1));
        while (left > 0) left -= await conn.write(buf.subarray(0, Math.min(left, buf.length)));
        await conn.closeWrite();
        while ((await conn.read(buf)) !== null);
      } else {
        for (;;) {
          const n = await conn.read(buf);
          if (n === null) break;
          await writeAll(conn, buf.subarray(0, n));
        }
      }
    } catch {
      // a client gone early; nothing to report
    } finally {
      conn.close();
    }
  };
  (async () => {
    for (;;) {
      const conn = await listener.accept();
      if (!conn) return;
      serve(conn);
    }
  })();
  return { addr: listener.addr, stop: () => listener.close() };
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
}

async function readExactly(conn: Deno.Conn, n: number, into = new Uint8Array(n)): Promise<Uint8Array> {
  for (let off = 0; off < n;) {
    const got = await conn.read(into.subarray(off, n));
    if (got === null) throw new Error(`EOF after ${off} of ${n} bytes`);
    off += got;
  }
  return into;
}

/** MB/s (10^6 bytes) of BULK_CONNS parallel downloads of `total` bytes in all. */
async function bulk(to: HostPort, total: number): Promise<number> {
  const each = Math.floor(total / BULK_CONNS);
  const start = performance.now();
  await Promise.all(Array.from({ length: BULK_CONNS }, async () => {
    const conn = await connectTcp(to);
    const head = new Uint8Array(9);
    head[0] = 0x42;
    new DataView(head.buffer).setBigUint64(1, BigInt(each));
    await writeAll(conn, head);
    const buf = new Uint8Array(256 * KiB);
    let got = 0;
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      got += n;
    }
    conn.close();
    if (got !== each) throw new Error(`Bulk download got ${got} of ${each} bytes`);
  }));
  return (each * BULK_CONNS) / 1e6 / ((performance.now() - start) / 1000);
}

/** Round trips/s of ECHO_CONNS connections doing ECHO_ROUND_TRIPS each. */
async function echo(to: HostPort): Promise<number> {
  const start = performance.now();
  await Promise.all(Array.from({ length: ECHO_CONNS }, async () => {
    const conn = await connectTcp(to);
    await writeAll(conn, Uint8Array.of(0x45, 0, 0, 0, 0, 0, 0, 0, 0));
    const msg = new Uint8Array(ECHO_SIZE).fill(7);
    const back = new Uint8Array(ECHO_SIZE);
    for (let i = 0; i < ECHO_ROUND_TRIPS; i++) {
      await writeAll(conn, msg);
      await readExactly(conn, ECHO_SIZE, back);
    }
    conn.close();
  }));
  return (ECHO_CONNS * ECHO_ROUND_TRIPS) / ((performance.now() - start) / 1000);
}

interface Path {
  name: string;
  to: HostPort;
  stop(): Promise<void>;
}

async function startProxy(name: string, mode: string, bufferBytes: number, target: HostPort): Promise<Path> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--unstable-net",
      new URL(import.meta.url).pathname,
      "--proxy",
      mode,
      String(bufferBytes),
      String(target.port),
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const first = await reader.read();
  const port = Number(first.value?.trim());
  if (!(port > 0)) {
    child.kill("SIGKILL");
    throw new Error(`Proxy "${name}" did not start (said ${JSON.stringify(first.value)})`);
  }
  return {
    name,
    to: { host: LO, port },
    async stop() {
      child.kill("SIGKILL");
      await child.status;
      await reader.cancel().catch(() => {});
    },
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

async function main(): Promise<number> {
  announce(
    "pipe_bench",
    "bulk MB/s and echo round trips/s per path, ratios to direct and to the 64 KiB pipe",
  );
  const totalBytes = benchNumber("BENCH_MB", 128, 512) * MiB;
  const rounds = benchNumber("BENCH_ROUNDS", 1, 3);
  const buffers = (Deno.env.get("BENCH_BUFFERS") ?? "16,32,64").split(",").map(Number);
  if (!buffers.includes(64)) buffers.push(64); // the reference row
  const server = startServer();
  const paths: Path[] = [{ name: "direct", to: server.addr, stop: async () => {} }];
  try {
    for (const kib of buffers) {
      paths.push(await startProxy(`pipe ${kib} KiB`, "pipe", kib * KiB, server.addr));
    }
    paths.push(await startProxy("pipeTo", "pipeto", 64 * KiB, server.addr));
    console.log(
      `TCP pipe benchmark: bulk ${
        totalBytes / MiB
      } MiB over ${BULK_CONNS} connections, echo ${ECHO_CONNS} x ` +
        `${ECHO_ROUND_TRIPS} round trips of ${ECHO_SIZE} B, median of ${rounds} rounds, ${Deno.build.os}, ` +
        `${navigator.hardwareConcurrency} cores`,
    );
    const bulkFigures = new Map<string, number[]>(paths.map((p) => [p.name, []]));
    const echoFigures = new Map<string, number[]>(paths.map((p) => [p.name, []]));
    // Warm up every path once (JIT, pools, TCP autotuning), then interleave so that drift hits every path alike.
    for (const p of paths) {
      await bulk(p.to, Math.min(totalBytes, 64 * MiB));
      await echo(p.to);
    }
    for (let r = 0; r < rounds; r++) {
      for (const p of paths) {
        bulkFigures.get(p.name)!.push(await bulk(p.to, totalBytes));
        echoFigures.get(p.name)!.push(await echo(p.to));
      }
    }
    const ref = "pipe 64 KiB";
    const b = (n: string) => median(bulkFigures.get(n)!);
    const e = (n: string) => median(echoFigures.get(n)!);
    console.log(`\npath | bulk MB/s | vs direct | vs ${ref} | echo rt/s | vs direct | vs ${ref}`);
    for (const p of paths) {
      console.log(
        [
          p.name,
          b(p.name).toFixed(0),
          (b(p.name) / b("direct")).toFixed(2),
          (b(p.name) / b(ref)).toFixed(2),
          e(p.name).toFixed(0),
          (e(p.name) / e("direct")).toFixed(2),
          (e(p.name) / e(ref)).toFixed(2),
        ].join(" | "),
      );
    }
    console.log("\nbulk MB/s, every round:");
    for (const p of paths) {
      console.log(`${p.name}: ${bulkFigures.get(p.name)!.map((x) => x.toFixed(0)).join(" ")}`);
    }
    console.log(
      `\n${ref} vs pipeTo: bulk ${(b(ref) / b("pipeTo")).toFixed(2)}x, echo ${
        (e(ref) / e("pipeTo")).toFixed(2)
      }x`,
    );
    return 0;
  } finally {
    for (const p of paths) await p.stop();
    server.stop();
  }
}

if (Deno.args[0] === "--proxy") {
  await runProxy(Deno.args[1], Number(Deno.args[2]), { host: LO, port: Number(Deno.args[3]) });
} else {
  try {
    Deno.exit(await main());
  } catch (error) {
    console.error(`pipe_bench could not run: ${error instanceof Error ? error.stack : error}`);
    Deno.exit(1);
  }
}
