/**
 * The runtime inside a sandbox child: it imports the uploaded entry module, checks its exports, tells the host its
 * ports and declared params, and then runs its handler on each batch the host sends, one batch at a time, writing
 * the outputs and a DONE frame back. Nothing here is trusted by the host: it checks every frame this writes.
 *
 * The program's `console.log` goes to stderr (the host keeps its last lines). A handler that throws loses its batch
 * (counted in DONE); a failed allocation (an ArrayBuffer the hard memory limit refused) ends the child, so a memory
 * bomb that caught its own RangeError cannot keep the memory it holds.
 */
import type { Batch, Endpoint } from "../net/udp.ts";
import { decodeBatch, encodeBatch, restampBatch } from "../graph/vm/codec.ts";
import { FrameQueue } from "./frame_queue.ts";
import { type Datagram, needsProblems, paramsProblems, type PortsDecl, portsProblems } from "./contract.ts";
import {
  BATCH_IN,
  BATCH_OUT_PREFIX,
  CONTROL,
  controlFrame,
  doneFrame,
  type Frame,
  FrameReader,
  peekBatchIn,
  readControl,
  REF,
  refFrame,
  resolveRef,
  sealBatchOut,
  turnBatchIn,
} from "./frames.ts";

/** Exit code of a child whose program failed an allocation (the hard memory limit). */
export const EXIT_OUT_OF_MEMORY = 71;
/** Exit code of a child whose module could not be loaded. */
export const EXIT_LOAD_FAILED = 72;

export interface GuestIo {
  /** The host's frames: a reader of bytes (null at the end). */
  readonly input: { read(p: Uint8Array): Promise<number | null> };
  write(bytes: Uint8Array): Promise<void>;
  exit(code: number): never;
  /** The memory shared with the host (shared_ring.ts), if mapped: batches then come and go there by REF frames. */
  readonly shared?: Uint8Array | null;
}

interface Program {
  readonly ports: PortsDecl;
  handle(input: number, batch: Datagram[], ctx: Ctx): unknown;
  start?(ctx: Ctx): unknown;
}

interface Ctx {
  readonly params: Record<string, unknown>;
  now(): number;
}

type Work =
  | { kind: "control"; message: unknown }
  | BatchWork;

/** `body`: the BATCH_IN frame's body where the reader holds it (valid until the next read). */
interface BatchWork {
  readonly kind: "batch";
  readonly now: number;
  readonly seq: number;
  readonly input: number;
  readonly body: Uint8Array;
}

/** Bytes of one chunk of the outbox (a batch passed through is copied across as many as it takes). */
const OUTBOX_CHUNK_BYTES = 256 * 1024;
/** How often the outbox lets go of spare chunks a burst left (FrameQueue.trim). */
const OUTBOX_TRIM_MS = 1000;
/** Output bytes waiting for the socket beyond which the child reads no more input until they are written. */
const OUTBOX_MAX_BYTES = 8 * 1024 * 1024;
/**
 * Handler time after which what waits in the outbox is written before the next call: the host times each batch's
 * deadline from the answer to the one before, so answers must not wait behind many calls. A quarter of the deadline
 * the host sends with `start`, at most this.
 */
const ANSWER_WITHIN_MS = 10;

/**
 * Frames for the host, written in order by one pump while the next input is read and handled: the child does not
 * wait for each write (the host may be busy sending what came before), only when too much waits. A batch passed
 * through as it came lies in the reader's buffer, which the next read reuses: it is copied into the outbox's own
 * chunks (reused once written, so no new buffer per batch), and the child reads on at once instead of waiting for
 * the host to take it.
 */
class Outbox {
  readonly #write: (bytes: Uint8Array) => Promise<void>;
  // Spare chunks up to the outbox's bound: one that grows never allocates again (a bounded child's memory).
  readonly #queue = new FrameQueue(OUTBOX_CHUNK_BYTES, Math.ceil(OUTBOX_MAX_BYTES / OUTBOX_CHUNK_BYTES) + 1);
  #pump: Promise<void> | null = null;
  #failed: { error: unknown } | null = null;
  #trimmedAt = performance.now();

  constructor(write: (bytes: Uint8Array) => Promise<void>) {
    this.#write = write;
  }

  get bytes(): number {
    return this.#queue.queuedBytes;
  }

  /** Queues `frames` in order; `borrowed`, when one of them, is copied (see the class doc). */
  push(frames: readonly Uint8Array[], borrowed: Uint8Array | null = null): void {
    if (this.#failed) throw this.#failed.error;
    for (const f of frames) f === borrowed ? this.#queue.copy(f) : this.#queue.push(f);
    const now = performance.now();
    if (now - this.#trimmedAt >= OUTBOX_TRIM_MS) {
      this.#queue.trim();
      this.#trimmedAt = now;
    }
    // Nothing to write: no pump (one that ended at once would be kept here as if it ran).
    if (this.#queue.queuedBytes === 0) return;
    this.#pump ??= this.#run();
  }

  /** Resolves once everything pushed is written; rejects if a write failed (the host is gone). */
  async drained(): Promise<void> {
    while (this.#pump) await this.#pump;
    if (this.#failed) throw this.#failed.error;
  }

  async #run(): Promise<void> {
    try {
      for (let bytes = this.#queue.next(); bytes; bytes = this.#queue.next()) {
        await this.#write(bytes);
        this.#queue.advance(bytes.length);
      }
    } catch (error) {
      this.#failed = { error };
      this.#queue.clear();
    } finally {
      this.#pump = null;
    }
  }
}

/** Most batches, and datagrams, merged into one handler call. */
const MERGE_BATCHES = 64;
const MERGE_DATAGRAMS = 1024;

/** The program (AP index) a BATCH_IN body's batch is for, from its crossing header. */
function apOf(body: Uint8Array): number {
  return new DataView(body.buffer, body.byteOffset + 14 + 4, 4).getUint32(0, true);
}

/** The datagrams in a BATCH_IN body's batch, from its crossing header. */
function countOf(body: Uint8Array): number {
  return new DataView(body.buffer, body.byteOffset + 14 + 8, 4).getUint32(0, true);
}

const EMPTY = new Uint8Array(0);
const NOWHERE: Endpoint = { host: "0.0.0.0", port: 0 };

/**
 * Runs the programs at `entries` (file: URLs; the APs of one VM group, program `k` is AP index `k` in the batches'
 * crossing header) until the host closes the input or kills the child. A module named by two entries is imported
 * once, so two APs of one module share its module state.
 */
export async function serveGuest(entries: readonly string[], io: GuestIo): Promise<void> {
  const programs: Program[] = [];
  for (const [index, entry] of entries.entries()) {
    let mod: Record<string, unknown>;
    try {
      mod = await import(entry);
    } catch (error) {
      // Its message (a syntax error names its place there), then its stack's frames: an error the module's own code
      // threw at load (a failed allocation) names its line only there.
      // Only frames in the upload's own modules: the runtime's (ext:) and this child's would name the wrong file.
      const uploads = entry.slice(0, entry.lastIndexOf("/") + 1);
      const frames = error instanceof Error && error.stack
        ? error.stack.split("\n").filter((line) => /^\s+at /.test(line) && line.includes(uploads))
        : [];
      const text = [messageOf(error), ...frames].join("\n");
      await io.write(controlFrame({ type: "load_failed", index, message: text.slice(0, 2000) }));
      io.exit(EXIT_LOAD_FAILED);
    }
    const problems = [
      ...portsProblems(mod.ports),
      ...paramsProblems(mod.params),
      ...needsProblems(mod.needs),
      ...(typeof mod.handle === "function" ? [] : ["it must export a function `handle(input, batch, ctx)`"]),
    ];
    if (problems.length) {
      await io.write(
        controlFrame({ type: "load_failed", index, message: problems.join("; "), exports: true }),
      );
      io.exit(EXIT_LOAD_FAILED);
    }
    programs.push(mod as unknown as Program);
  }
  const shared = io.shared ?? null;
  await io.write(controlFrame({
    type: "loaded",
    shared: shared !== null,
    programs: programs.map((p) => {
      const m = p as { params?: unknown; needs?: unknown };
      return { ports: p.ports, params: m.params ?? {}, needs: m.needs ?? {} };
    }),
  }));

  let now = 0;
  const contexts: Ctx[] = programs.map(() => ({ params: {}, now: () => now }));
  let ready = false;
  const reader = new FrameReader();
  const work: Work[] = [];
  const outbox = new Outbox(io.write);
  let answerWithinMs = ANSWER_WITHIN_MS;
  const each = (frame: Frame): void => {
    // A batch the host encoded in the shared memory: read where it lies there.
    if (frame.kind === REF && shared) return resolveRef(frame.body, shared, BATCH_IN, each);
    if (frame.kind === CONTROL) work.push({ kind: "control", message: readControl(frame.body) });
    else if (frame.kind === BATCH_IN) {
      const { now, seq, input } = peekBatchIn(frame.body);
      work.push({ kind: "batch", now, seq, input, body: frame.body });
    }
  };
  await reader.readFrom(io.input, each, async () => {
    let since = performance.now();
    while (work.length) {
      const w = work.shift()!;
      if (w.kind === "control") {
        const m = w.message as {
          type?: string;
          params?: Record<string, unknown>[];
          seq?: number;
          deadline_ms?: number;
        };
        if (m.type === "ping" && typeof m.seq === "number") {
          outbox.push([doneFrame(m.seq, 0, 0)]);
          continue;
        }
        if (m.type === "start" && !ready) {
          if (typeof m.deadline_ms === "number" && m.deadline_ms > 0) {
            answerWithinMs = Math.min(ANSWER_WITHIN_MS, m.deadline_ms / 4);
          }
          for (const [index, program] of programs.entries()) {
            const ctx = contexts[index];
            (ctx as { params: Record<string, unknown> }).params = Object.freeze({ ...m.params?.[index] });
            try {
              await program.start?.(ctx);
            } catch (error) {
              // With its stack: the host finds the uploaded file, line and column in it.
              const text = error instanceof Error && error.stack ? error.stack : messageOf(error);
              outbox.push([controlFrame({ type: "start_failed", index, message: text.slice(0, 2000) })]);
              await outbox.drained();
              io.exit(EXIT_LOAD_FAILED);
            }
          }
          ready = true;
          outbox.push([controlFrame({ type: "ready" })]);
        }
        continue;
      }
      // Batches for the same program and input that arrived together go to the handler as one: a busy input's
      // many small batches cost one call, not one each (each still gets its DONE).
      const group = [w];
      let datagrams = countOf(w.body);
      while (group.length < MERGE_BATCHES && datagrams < MERGE_DATAGRAMS) {
        const next = work[0];
        if (next?.kind !== "batch" || next.input !== w.input || apOf(next.body) !== apOf(w.body)) break;
        group.push(work.shift() as BatchWork);
        datagrams += countOf(next.body);
      }
      now = group[group.length - 1].now;
      const answer = await runBatches(programs, contexts, group, shared);
      if (answer.fatal !== null) {
        outbox.push([controlFrame({ type: "fatal", message: answer.fatal })]);
        await outbox.drained();
        io.exit(EXIT_OUT_OF_MEMORY);
      }
      outbox.push(answer.frames, answer.borrowed);
      // Answers are written before they are late (the pump writes meanwhile; this waits only after long calls).
      if (performance.now() - since >= answerWithinMs) {
        await outbox.drained();
        since = performance.now();
      }
    }
    if (outbox.bytes > OUTBOX_MAX_BYTES) await outbox.drained();
  });
  await outbox.drained();
}

interface Answer {
  /** The frames to write, in order. */
  readonly frames: Uint8Array[];
  /** The one of them that is a view of the reader's buffer (a batch passed through as it came), or null. */
  readonly borrowed: Uint8Array | null;
  /** A failed allocation's message: the child must end (EXIT_OUT_OF_MEMORY). */
  readonly fatal: string | null;
}

/**
 * The frames answering batches for one program and input, handled in one call: its outputs (tagged with the first
 * batch's sequence, the one the host has at the head), an error report if the handler threw, then a DONE per batch.
 */
async function runBatches(
  programs: readonly Program[],
  contexts: readonly Ctx[],
  group: readonly BatchWork[],
  shared: Uint8Array | null,
): Promise<Answer> {
  const frames: Uint8Array[] = [];
  /** The frame that is a view of the reader's buffer, if any. */
  let borrowed: Uint8Array | null = null;
  const started = performance.now();
  const first = group[0];
  // Read before the handler runs: a batch passed on is moved in the reader's buffer after it.
  const counts: number[] = group.map((w) => countOf(w.body));
  let failed = 0;
  let threw = false;
  try {
    const decoded = group.map((w) => {
      const at = peekBatchIn(w.body);
      return { at, ...decodeBatch(w.body.buffer as ArrayBuffer, at.at, at.length) };
    });
    const to = decoded[0].to;
    const program = programs[to.ap];
    const ctx = contexts[to.ap];
    if (!program) throw new RangeError(`no program ${to.ap}`);
    const total = decoded.reduce((n, d) => n + d.batch.count, 0);
    const datagrams: Datagram[] = new Array(total);
    const views: Uint8Array[] = new Array(total);
    const froms: Endpoint[] = new Array(total);
    let k = 0;
    decoded.forEach((d, g) => {
      counts[g] = d.batch.count;
      for (let i = 0; i < d.batch.count; i++, k++) {
        datagrams[k] = { data: views[k] = d.batch.data(i), from: froms[k] = d.batch.from(i) };
      }
    });
    /** The output that passes the batches on as they came, and where its frame goes in `frames`; -1: none. */
    let passed = -1;
    let passedAt = -1;
    let result = program.handle(first.input, datagrams, ctx);
    if (result instanceof Promise) result = await result;
    if (Array.isArray(result)) {
      const outputs = program.ports.outputs.length;
      for (let j = 0; j < Math.min(result.length, outputs); j++) {
        const list = result[j];
        if (!Array.isArray(list) || list.length === 0) continue;
        if (passed < 0 && unchanged(list, datagrams, views, froms)) {
          // The batches as they came (their bytes perhaps changed in place), once: turned where they lie, after
          // the other outputs are encoded (which may read the same datagrams' views).
          passed = j;
          passedAt = frames.push(EMPTY) - 1;
          continue;
        }
        const out = asBatch(list);
        failed += list.length - out.count;
        if (out.count) {
          frames.push(
            sealBatchOut(
              encodeBatch({ kind: "emitted", ap: to.ap, port: j, rtcp: false }, out, BATCH_OUT_PREFIX),
              first.seq,
              j,
            ),
          );
        }
      }
      if (passed >= 0) {
        // Each batch goes back in its own frame, turned where it lies. In the reader's buffer it is written from
        // there: several are moved up against each other (each turned frame starts a few bytes into its own
        // BATCH_IN frame), so they leave in one write without a buffer of their own (a new one per call cost fresh
        // pages: a 1.5 MB group was a page fault and a clear per 4 KiB). The views are stale from here on.
        const at = decoded.map((d) => d.at);
        if (shared && group.every((w) => w.body.buffer === shared.buffer)) {
          // Turned in the shared memory, each where it lies, and the host told where by a REF of its own (it
          // reads them there before the DONEs free them): nothing is moved.
          frames[passedAt] = concat(
            turnEach(group, at, to.ap, first.seq, passed).map((t) =>
              refFrame(t.byteOffset - shared.byteOffset, t.length)
            ),
          );
        } else frames[passedAt] = borrowed = turnInPlace(group, at, to.ap, first.seq, passed);
      }
    }
  } catch (error) {
    threw = true;
    if (error instanceof RangeError && /allocation failed|out of memory/i.test(error.message)) {
      return { frames: [], borrowed: null, fatal: messageOf(error) };
    }
    frames.push(controlFrame({ type: "error", message: messageOf(error), name: nameOf(error) }));
  }
  const ms = performance.now() - started;
  group.forEach((w, g) => {
    // A throw loses every batch of the call; bad items of the answer count against the first.
    const lost = threw ? counts[g] : g === 0 ? failed : 0;
    frames.push(doneFrame(w.seq, g === 0 ? ms : 0, lost));
  });
  const joined = joinSmall(frames);
  // joinSmall copies small frames into one: then nothing written lies in the reader's buffer.
  return {
    frames: joined,
    borrowed: borrowed !== null && joined.includes(borrowed) ? borrowed : null,
    fatal: null,
  };
}

/** True when a handler returned the very list it was given, each datagram's view and sender untouched. */
function unchanged(
  list: readonly unknown[],
  given: readonly Datagram[],
  views: readonly Uint8Array[],
  froms: readonly Endpoint[],
): boolean {
  if (list !== given || list.length !== views.length) return false;
  for (let i = 0; i < views.length; i++) {
    const d = list[i] as Datagram | null;
    if (!d || d.data !== views[i] || d.from !== froms[i]) return false;
  }
  return true;
}

/** The well-formed datagrams of what a handler returned, as a Batch to encode. */
function asBatch(list: readonly unknown[]): Batch {
  const data: Uint8Array[] = [];
  const from: Endpoint[] = [];
  for (const item of list) {
    const d = item as Partial<Datagram> | null;
    if (!d || !(d.data instanceof Uint8Array)) continue;
    const f = d.from;
    const ok = f && typeof f.host === "string" && f.host.length <= 255 && Number.isInteger(f.port) &&
      f.port >= 0 && f.port <= 0xffff;
    data.push(d.data);
    from.push(ok ? f : NOWHERE);
  }
  return {
    count: data.length,
    data: (i) => data[i],
    length: (i) => data[i].length,
    from: (i) => from[i],
    truncated: () => false,
  };
}

/**
 * Turns the BATCH_IN frames of `group` (consecutive frames of one read, so in order in the reader's buffer) into
 * BATCH_OUT frames of output `port` and moves each up against the one before: one view of the reader's buffer
 * holding them all.
 */
function turnInPlace(
  group: readonly BatchWork[],
  at: readonly { at: number; length: number }[],
  ap: number,
  seq: number,
  port: number,
): Uint8Array {
  const turned = turnEach(group, at, ap, seq, port);
  if (turned.length === 1) return turned[0];
  // Each BATCH_IN frame (4 length bytes, a kind byte, then its body) must begin where the one before ended: then
  // moving the turned frames up overwrites only the group's own frames.
  const buffer = turned[0].buffer;
  const adjacent = group.every((w, g) =>
    w.body.buffer === buffer &&
    (g === 0 || w.body.byteOffset - 5 === group[g - 1].body.byteOffset + group[g - 1].body.length)
  );
  if (!adjacent) return concat(turned); // not seen: the frames of one read lie one after another
  const bytes = new Uint8Array(buffer);
  const start = turned[0].byteOffset;
  let end = start;
  for (const t of turned) {
    if (t.byteOffset !== end) bytes.copyWithin(end, t.byteOffset, t.byteOffset + t.length);
    end += t.length;
  }
  return bytes.subarray(start, end);
}

/** Each BATCH_IN frame of `group` turned where it lies into a BATCH_OUT frame of output `port` (views of them). */
function turnEach(
  group: readonly BatchWork[],
  at: readonly { at: number; length: number }[],
  ap: number,
  seq: number,
  port: number,
): Uint8Array[] {
  return group.map((w, g) => {
    restampBatch(new Uint8Array(w.body.buffer, at[g].at, at[g].length), {
      kind: "emitted",
      ap,
      port,
      rtcp: false,
    });
    return turnBatchIn(w.body, seq, port);
  });
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** The frames to write: small ones joined into one write, a large one (a big batch) written as it is, not copied. */
function joinSmall(parts: Uint8Array[]): Uint8Array[] {
  const total = parts.reduce((n, p) => n + p.length, 0);
  if (parts.length === 1 || total > 65536) return parts;
  return [concat(parts)];
}

function messageOf(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).slice(0, 2000);
}

function nameOf(error: unknown): string {
  return error instanceof Error ? error.name : typeof error;
}
