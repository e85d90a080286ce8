/**
 * The host side of one sandbox (a VM group of uploaded code): a separate `deno run` child with no --allow-* flag
 * but read access to its own upload, a V8 heap limit and a hard address-space limit (proc.ts), kept running by a
 * Supervisor (restarts with exponential backoff). Batches go in and come out as frames (frames.ts) on a unix socket
 * that the host listens on for each run and the child alone may reach (a pipe carried ~140 MB/s here, the socket
 * ~1.3 GB/s); each input batch is answered by its outputs and a DONE frame, so the host knows what is in
 * flight.
 *
 * Limits: at most `maxInFlight` batches, and `maxInFlightBytes` of their frames, are in the child or on their way (more
 * are dropped, `queue_full`); the oldest must be answered within `deadlineMs` of the moment the child could start on
 * it (when it was sent, or when the child answered the batch before it, whichever is later: time spent queued behind
 * other batches is not the handler's), else the child is killed (SIGKILL), its in-flight datagrams are
 * dropped (`deadline`) and it is restarted after the backoff delay. A child that dies otherwise (out of memory, a
 * crash) loses its in-flight datagrams as `crashed`; batches that arrive while no child runs are `not_running`; a
 * handler that throws loses its batch as `handler_error`.
 *
 * Denied permissions are counted from Deno's permission audit (DENO_AUDIT_PERMISSIONS, written by the runtime to a
 * FIFO in the host's private directory, which the program cannot reach), so a program that catches its own denial
 * is counted too; the child's error text is kept as the last denial. Imports of URLs never reach the permission
 * system (the child runs with --no-remote): their error text counts them.
 *
 * A load failure on the first run (a syntax error, missing exports, bad params) is final: `start()` rejects with
 * the uploaded file's line and column and nothing is restarted.
 */
import { type Clock, systemClock, type TimerId } from "../core/clock.ts";
import { errorMessage } from "../core/errors.ts";
import { type BackoffPolicy, type Child, type ChildExit, Supervisor } from "../core/supervisor.ts";
import { normalPriorityArgv } from "../core/scheduling.ts";
import { decodeBatch, DecodedBatch, encodeBatchInto } from "../graph/vm/codec.ts";
import { CHUNK_BYTES, FrameQueue } from "./frame_queue.ts";
import type { Batch, Endpoint } from "../net/udp.ts";
import { PinnedBatch } from "../net/pinned.ts";
import {
  needsProblems,
  type ParamDecl,
  paramsProblems,
  type PortsDecl,
  portsProblems,
  type ProgramNeeds,
  resolveParams,
} from "./contract.ts";
import {
  BATCH_IN_PREFIX,
  BATCH_OUT,
  checkRef,
  CONTROL,
  controlFrame,
  DONE,
  type Frame,
  FrameReader,
  framesIn,
  peekBatchOut,
  readControl,
  readDone,
  readRef,
  REF,
  refFrame,
  sealBatchIn,
} from "./frames.ts";
import { CHILD_FFI_CHECKS, RingAllocator, SharedMemory } from "./shared_ring.ts";
import { EXIT_LOAD_FAILED, EXIT_OUT_OF_MEMORY } from "./guest.ts";
import { childArgv, type DataLimit, type ProcSample, sampleProcess, tightenDataLimit } from "./proc.ts";
import { CpuCap } from "./cgroup.ts";
import {
  DEFAULT_UPLOAD_LIMITS,
  loadError,
  SandboxLoadError,
  UploadError,
  type UploadLimits,
  uploadProblems,
  writeUpload,
} from "./upload.ts";

export type SandboxState = "idle" | "starting" | "running" | "backoff" | "failed" | "stopped";
export const DROP_REASONS = [
  "queue_full",
  "deadline",
  "crashed",
  "not_running",
  "handler_error",
  "output_cap",
] as const;
export type DropReason = typeof DROP_REASONS[number];

export interface SandboxLimits extends UploadLimits {
  /** V8 old-space limit of the child. */
  readonly heapMb: number;
  /** What the child may map beyond its reservations (heap, ArrayBuffers, code): the hard limit. */
  readonly memoryMb: number;
  /** The child's reservations before it allocates (proc.ts ADDRESS_BASE_MB, DATA_BASE_MB). */
  readonly addressBaseMb?: number;
  readonly dataBaseMb?: number;
  /** The oldest batch in flight must be answered within this of the child's answer to the one before it. */
  readonly deadlineMs: number;
  /** Batches in the child or on their way to it. */
  readonly maxInFlight: number;
  /** Frame bytes (datagrams and headers) in the child or on their way to it: what a stalled child makes the node hold. */
  readonly maxInFlightBytes: number;
  /**
   * Datagrams the child may answer per datagram it was given, over all its outputs (a program may emit more than
   * it gets, within this); an answer past it is dropped (`output_cap`), so one datagram in cannot cost the node
   * millions out. Default 16.
   */
  readonly maxOutPerIn?: number;
  /** How long the first start may take (load, check, the program's start). */
  readonly startMs: number;
  /** The share of one core the process may use (a control group's CPU quota); 0: not capped. */
  readonly cpuShare?: number;
  /** The process's nice value: above the node's, so the data path goes first when cores are short. */
  readonly nice?: number;
  /**
   * Batches cross through memory shared with the child (shared_ring.ts, `maxInFlightBytes` + 1 MiB) where FFI is
   * granted to the node; otherwise, or false, through the socket.
   */
  readonly sharedMemory?: boolean;
  /** Bytes of that memory (default `maxInFlightBytes` + 1 MiB); batches it has no room for cross the socket. */
  readonly sharedBytes?: number;
}

export const DEFAULT_LIMITS: SandboxLimits = {
  ...DEFAULT_UPLOAD_LIMITS,
  heapMb: 64,
  memoryMb: 256,
  deadlineMs: 200,
  maxInFlight: 1024,
  maxInFlightBytes: 8 * 1024 * 1024,
  maxOutPerIn: 16,
  startMs: 15_000,
  nice: 10,
  sharedMemory: true,
};

/** Datagrams in whose unused output allowance (`maxOutPerIn` each) carries over to later answers. */
const OUT_CARRY = 1024;

/** The size of the buffer an answer in the shared memory is copied to when read, before it grows (up to that memory's size). */
const REF_COPY_BYTES = 256 * 1024;

/** One program a sandbox runs (an AP of its VM group). */
export interface SandboxProgram {
  /** For status and error texts (the AP's name). */
  readonly name: string;
  /** The module that exports ports, params and handle. */
  readonly entry: string;
  /** The session's values for the program's declared params. */
  readonly params?: Readonly<Record<string, unknown>>;
  /** The ports the program was checked with: a run that reports other ports is a load failure. */
  readonly ports?: PortsDecl;
}

export interface SandboxOptions {
  /** For status and error texts (a VM group's name). */
  readonly name: string;
  /** The upload: file name -> source text. */
  readonly modules: Readonly<Record<string, string>>;
  /** The programs it runs, in one child; program `k` is `push`'s and `onOutput`'s `program` k. */
  readonly programs?: readonly SandboxProgram[];
  /** One program only (when `programs` is absent): its entry module and params. */
  readonly entry?: string;
  readonly params?: Readonly<Record<string, unknown>>;
  readonly limits?: Partial<SandboxLimits>;
  readonly clock?: Clock;
  readonly backoff?: Partial<BackoffPolicy>;
  /** Where the private directory is made (default: the system's temporary directory). */
  readonly tempDir?: string;
  /** The deno executable (default: this one). */
  readonly deno?: string;
  /** Takes CPU and memory samples this often (0: only on `sample()`). Default 1000. */
  readonly sampleMs?: number;
  /**
   * A directory of the programs' own (made if missing; it outlives the sandbox, as a saver's files do), their
   * working directory, readable, and writable with `write`, holding at most `bytes` together: a sandbox whose files
   * grow past it is killed and not restarted.
   */
  readonly storage?: { readonly dir: string; readonly write: boolean; readonly bytes: number };
  /** Only load the programs and report their ports and params (see `SandboxHost.inspect`). */
  readonly inspectOnly?: boolean;
  /** Called with every batch a program emits; the batch is valid during the call. */
  onOutput(output: number, batch: Batch, program: number): void;
}

/** A program's ports and declared params, as its child reported them. */
export interface ProgramInfo {
  readonly needs: ProgramNeeds;
  readonly ports: PortsDecl;
  readonly params: Readonly<Record<string, ParamDecl>>;
}

/** Batches of fewer datagrams are gathered with others before they cross; at most this many, or bytes, at once. */
const MERGE_BELOW = 32;
const MERGE_MAX_DATAGRAMS = 512;
const MERGE_MAX_BYTES = 512 * 1024;
/** A batch whose first datagram is larger goes as it is: the gathering buffer stays small. */
const MERGE_MAX_DATAGRAM = 64 * 1024;
const ARENA_BYTES = 64 * 1024;

/** Permission-audit lines read per second; beyond the flood rate the child is killed. */
const AUDIT_LINES_PER_SECOND = 2000;
const AUDIT_FLOOD_PER_SECOND = 50_000;

/** Most files and directories a sandbox's storage may hold (inodes are a resource too). */
const STORAGE_MAX_FILES = 4096;

/** Last distinct permission denials kept for status. */
const DENIALS_KEPT = 16;
const AUDIT_LINE_MAX = 4096;
const REMOTE_DENIED = /remote specifier was requested|--no-remote|--no-npm/;
const CHILD_MAIN = new URL("./child.ts", import.meta.url);

interface InFlight {
  readonly seq: number;
  readonly count: number;
  /** Its frame's bytes. */
  readonly bytes: number;
  readonly sentAt: number;
  /** The program it was sent to (its outputs must come from that one); -1: a heartbeat. */
  readonly program: number;
  /** Its frame lies in the shared memory (its region is given back with its DONE). */
  readonly shared: boolean;
}

/** One run of the child: its pipes and what it has in flight. */
interface Run {
  readonly n: number;
  readonly process: Deno.ChildProcess;
  /** The frames' socket, once the child connected. */
  conn: Deno.UnixConn | null;
  readonly inFlight: InFlight[];
  /** The frame bytes of `inFlight`. */
  inFlightBytes: number;
  /** The frame bytes of `inFlight` that lie in the shared memory. */
  sharedInFlightBytes: number;
  /**
   * Bytes the child may still answer by REF: what the node wrote to the shared memory for batches in flight, less
   * what REFs already stood for. A REF beyond it breaks the protocol: the work a REF costs the node (reading, sending,
   * copying its frames) is bounded by what the node itself wrote there (13 bytes on the socket must not buy a pass
   * over the whole memory, again and again).
   */
  refAllowance: number;
  /** Datagrams of `inFlight`, and how many more the child may still answer with for them (see `maxOutPerIn`). */
  inFlightCount: number;
  outAllowance: number;
  /** When the child last answered a batch: the head of `inFlight` could not start before. */
  answeredAt: number;
  ready: boolean;
  /** Why the host ended it (the drops' reason); null: it ended on its own. */
  killedFor: DropReason | null;
  /** What the child said before it ended (a failed allocation, a load failure). */
  said: string | null;
  exitReason: "load" | "memory" | null;
  /** The child reported its programs (once per run). */
  loaded: boolean;
  /** The child mapped the shared memory (it said so with its programs): batches go there. */
  shared: boolean;
  /** Frames waiting for the socket, next to each other in reused chunks (frame_queue.ts). */
  readonly pending: FrameQueue;
  writing: boolean;
  /** Its last stderr lines (the V8 out-of-memory report ends up here). */
  readonly stderr: string[];
}

export class SandboxHost implements AsyncDisposable {
  readonly #o: SandboxOptions;
  readonly #limits: SandboxLimits;
  readonly #clock: Clock;
  readonly #supervisor: Supervisor;
  #state: SandboxState = "idle";
  #dir = "";
  #cap: CpuCap | null = null;
  #audit: Deno.FsFile | null = null;
  /** The audit reader's loop, and whether it is to end at its next read. */
  #auditReading: Promise<void> | null = null;
  #auditEnding = false;
  #run: Run | null = null;
  #seq = 0;
  #deadline: TimerId | undefined;
  #sampler: TimerId | undefined;
  readonly #wanted: readonly SandboxProgram[];
  #programs: ProgramInfo[] | null = null;
  #everReady = false;
  #starting: { resolve: () => void; reject: (e: Error) => void } | null = null;
  #startTimer: TimerId | undefined;
  #error: string | null = null;
  #failure: Error | null = null;
  #sample: ProcSample | null = null;
  /** The memory limit the current (or last) child runs under, once it was lowered after its connect. */
  #dataLimit: DataLimit | null = null;
  #stopped: Promise<void> | null = null;
  /** The memory shared with the child, made at the first start (null: none, batches cross the socket). */
  #shared: { memory: SharedMemory; ring: RingAllocator; trimmed: boolean } | null = null;
  /** `batches_shared` at the last sample (see #trimShared). */
  #sharedAtTrim = 0;
  /**
   * The FFI checks the audit has yet to see from the newest child's own mapping of the shared memory, made before
   * its upload loads (set before it starts: the audit may be read before the run is recorded): not denials.
   */
  #ffiChecks: (string | null)[] = [];
  /** Where answers in the shared memory are copied when something reads them (grown as needed, kept). */
  #refCopy = new Uint8Array(REF_COPY_BYTES);
  /** `bytes` of #refCopy, grown up to the shared memory's size. */
  readonly #copyArea = (bytes: number): Uint8Array => {
    if (this.#refCopy.length < bytes) {
      const most = Math.max(bytes, this.#shared?.memory.size ?? 0);
      this.#refCopy = new Uint8Array(Math.min(most, Math.max(bytes, 2 * this.#refCopy.length)));
    }
    return this.#refCopy.subarray(0, bytes);
  };
  readonly #drops: Record<DropReason, number> = {
    queue_full: 0,
    deadline: 0,
    crashed: 0,
    not_running: 0,
    handler_error: 0,
    output_cap: 0,
  };
  readonly #counts = {
    batches_in: 0,
    packets_in: 0,
    batches_done: 0,
    batches_out: 0,
    packets_out: 0,
    handler_errors: 0,
    deadline_kills: 0,
    memory_kills: 0,
    protocol_errors: 0,
    denials: 0,
    /** Batches that crossed in the shared memory (the rest went through the socket). */
    batches_shared: 0,
    /** Answers the child left in the shared memory (batches passed on where they lay). */
    answers_shared: 0,
    /** Times the shared memory's pages were given back after a quiet sample. */
    shared_trims: 0,
    /** Permission-audit lines not read (over AUDIT_LINES_PER_SECOND). */
    audit_skipped: 0,
  };
  readonly #denied: string[] = [];
  #handlerMsMax = 0;
  /** Small batches gathered during this turn, for one program's input (see `push`). */
  #open: {
    readonly run: Run;
    readonly program: number;
    readonly input: number;
    /** Where each datagram starts in #arena, and its length; `from` its sender. */
    readonly at: number[];
    readonly length: number[];
    readonly from: Endpoint[];
    bytes: number;
  } | null = null;
  /** The gathered datagrams' bytes, one after the other (copied once more, into the frame, at the flush). */
  #arena = new Uint8Array(ARENA_BYTES);
  #storageBytes: number | null = null;
  #storageFiles: number | null = null;

  constructor(options: SandboxOptions) {
    this.#o = options;
    this.#limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.#wanted = options.programs ??
      (options.entry === undefined
        ? []
        : [{ name: options.name, entry: options.entry, params: options.params }]);
    this.#clock = options.clock ?? systemClock;
    this.#supervisor = new Supervisor({
      clock: this.#clock,
      backoff: options.backoff,
      killAfterMs: 500,
      spawn: (n) => this.#spawn(n),
      onExit: (n, exit, expected) => this.#exited(n, exit, expected),
      onStderrLine: (line, n) => {
        const run = this.#run;
        if (run?.n !== n) return;
        run.stderr.push(line);
        if (run.stderr.length > 20) run.stderr.shift();
      },
    });
  }

  get state(): SandboxState {
    return this.#state;
  }

  /**
   * Loads the programs in a child of their own, as `start` would, and reports their ports and declared params
   * without starting them (their `start` is not called, no param is checked). Rejects as `start` does: a syntax
   * error with its uploaded file, line and column.
   */
  static async inspect(
    options: Omit<SandboxOptions, "onOutput" | "inspectOnly" | "sampleMs">,
  ): Promise<readonly ProgramInfo[]> {
    const host = new SandboxHost({ ...options, inspectOnly: true, sampleMs: 0, onOutput: () => {} });
    try {
      await host.start();
      return host.programs!;
    } finally {
      await host.stop();
    }
  }

  /** The (first) program's ports and params once a child reported them. */
  get program(): ProgramInfo | null {
    return this.#programs?.[0] ?? null;
  }

  /** Every program's ports and params once a child reported them. */
  get programs(): readonly ProgramInfo[] | null {
    return this.#programs;
  }

  /** The child's process id while one runs. */
  get pid(): number | null {
    return this.#run?.process.pid ?? null;
  }

  /**
   * Checks the upload, writes it, starts the child and resolves once the program is loaded, checked and started.
   * Rejects with UploadError (nothing written), SandboxLoadError (a syntax error: its file, line and column; a
   * missing export; bad params) or an Error when it did not start within `startMs`; nothing runs after a rejection.
   */
  async start(): Promise<void> {
    if (this.#state !== "idle") {
      throw new Error(`Cannot start sandbox "${this.#o.name}": it is ${this.#state}`);
    }
    const problems = this.#wanted.length === 0
      ? ["it names no program to run"]
      : [...new Set(this.#wanted.flatMap((p) => uploadProblems(this.#o.modules, p.entry, this.#limits)))];
    if (problems.length) {
      this.#state = "failed";
      throw new UploadError(problems);
    }
    this.#state = "starting";
    if (this.#limits.cpuShare) {
      try {
        this.#cap = await CpuCap.create(this.#o.name, this.#limits.cpuShare);
      } catch (error) {
        this.#state = "failed";
        throw error;
      }
    }
    if (this.#o.storage) await Deno.mkdir(this.#o.storage.dir, { recursive: true, mode: 0o700 });
    this.#dir = await Deno.makeTempDir({ dir: this.#o.tempDir, prefix: "edgenode-sandbox-" });
    await Deno.mkdir(`${this.#dir}/modules`, { mode: 0o700 });
    await Deno.mkdir(`${this.#dir}/ipc`, { mode: 0o700 });
    await writeUpload(`${this.#dir}/modules`, this.#o.modules);
    await this.#openAudit();
    const started = new Promise<void>((resolve, reject) => this.#starting = { resolve, reject });
    this.#startTimer = this.#clock.setTimeout(
      () =>
        this.#fail(
          new Error(`Cannot start sandbox "${this.#o.name}": not ready within ${this.#limits.startMs} ms`),
        ),
      this.#limits.startMs,
    );
    this.#supervisor.start();
    this.#scheduleSample();
    try {
      await started;
    } catch (error) {
      await this.stop();
      // Stopped from outside while it started: it stays "stopped".
      if ((this.#state as SandboxState) !== "stopped") this.#state = "failed";
      throw error;
    }
  }

  /**
   * Sends a batch to input `input` of the program. False when it was dropped (counted by reason): no child is
   * ready, or `maxInFlight` batches are already in flight.
   */
  push(input: number, batch: Batch, program = 0): boolean {
    const run = this.#run;
    this.#counts.batches_in++;
    this.#counts.packets_in += batch.count;
    if (!run || !run.ready || this.#state !== "running" || !this.#programs) {
      this.#drops.not_running += batch.count;
      return false;
    }
    const info = this.#programs[program];
    if (!info || input < 0 || input >= info.ports.inputs.length) {
      throw new RangeError(`Sandbox "${this.#o.name}" has no input ${input} of program ${program}`);
    }
    // Bounded in batches and bytes, and in time: no batch joins a queue whose oldest has waited a deadline, so a
    // slow (not stuck) handler makes drops, not an ever older stream.
    const head = run.inFlight[0];
    if (
      run.inFlight.length >= this.#limits.maxInFlight ||
      run.inFlightBytes + (this.#open?.bytes ?? 0) >= this.#limits.maxInFlightBytes ||
      (head !== undefined && this.#clock.now() - head.sentAt >= this.#limits.deadlineMs)
    ) {
      this.#drops.queue_full += batch.count;
      return false;
    }
    const open = this.#open;
    if (open && (open.program !== program || open.input !== input)) this.#flush();
    if (batch.count >= MERGE_BELOW || batch.length(0) > MERGE_MAX_DATAGRAM) {
      // A large batch goes as it is (one copy, into its frame), after what was gathered before it.
      this.#flush();
      this.#send(run, program, input, batch);
      return true;
    }
    // Small batches (a busy input's trickle) are gathered until this turn of the event loop ends, or a bound, and
    // cross as one: a frame, a handler call and an answer per gathered batch instead of per batch.
    let gathering = this.#open;
    if (!gathering) {
      gathering = this.#open = { run, program, input, at: [], length: [], from: [], bytes: 0 };
      queueMicrotask(() => this.#flush());
    }
    for (let i = 0; i < batch.count; i++) {
      const d = batch.data(i);
      if (gathering.bytes + d.length > this.#arena.length) {
        const grown = new Uint8Array(Math.max(this.#arena.length * 2, gathering.bytes + d.length));
        grown.set(this.#arena.subarray(0, gathering.bytes));
        this.#arena = grown;
      }
      this.#arena.set(d, gathering.bytes);
      gathering.at.push(gathering.bytes);
      gathering.length.push(d.length);
      gathering.from.push(batch.from(i));
      gathering.bytes += d.length;
    }
    if (gathering.at.length >= MERGE_MAX_DATAGRAMS || gathering.bytes >= MERGE_MAX_BYTES) this.#flush();
    return true;
  }

  /** Sends what was gathered, if anything, as one batch. */
  #flush(): void {
    const open = this.#open;
    this.#open = null;
    if (!open || open.at.length === 0 || this.#run !== open.run || !open.run.ready) {
      if (open?.at.length) this.#drops.not_running += open.at.length;
      return;
    }
    const { at, length, from } = open;
    const arena = this.#arena;
    // encodeBatch copies the datagrams into the frame before this returns: the arena is free again after.
    this.#send(open.run, open.program, open.input, {
      count: at.length,
      data: (i) => arena.subarray(at[i], at[i] + length[i]),
      length: (i) => length[i],
      from: (i) => from[i],
      truncated: () => false,
    });
    if (this.#arena.length > 16 * ARENA_BYTES) this.#arena = new Uint8Array(ARENA_BYTES);
  }

  get #outPerIn(): number {
    return this.#limits.maxOutPerIn ?? DEFAULT_LIMITS.maxOutPerIn!;
  }

  #send(run: Run, program: number, input: number, batch: Batch): void {
    const seq = this.#seq = (this.#seq + 1) >>> 0;
    const now = this.#clock.now();
    const crossing = { kind: "deliver", ap: program, port: input, rtcp: false } as const;
    // Encoded where it will be written from: no buffer of its own, no copy to join it to its neighbours. A batch
    // that fails to encode (a datagram longer than its stated length) takes its reservation back.
    // In the shared memory when the child mapped it and there is room (then only a REF frame crosses the socket).
    let reserved: Uint8Array | null = null;
    let sharedAt = -1;
    const shared = run.shared ? this.#shared : null;
    const reserve = (bytes: number): Uint8Array => {
      sharedAt = shared ? shared.ring.reserve(bytes) : -1;
      if (sharedAt >= 0) return shared!.memory.bytes.subarray(sharedAt, sharedAt + bytes);
      return reserved = run.pending.reserve(bytes);
    };
    let frame: Uint8Array;
    try {
      frame = sealBatchIn(encodeBatchInto(crossing, batch, BATCH_IN_PREFIX, reserve), now, seq, input);
    } catch (error) {
      if (reserved) run.pending.unreserve(reserved);
      if (sharedAt >= 0) shared!.ring.unreserve();
      throw error;
    }
    if (sharedAt >= 0) {
      run.pending.push(refFrame(sharedAt, frame.length));
      run.sharedInFlightBytes += frame.length;
      run.refAllowance += frame.length;
      this.#counts.batches_shared++;
    }
    run.inFlight.push({
      seq,
      count: batch.count,
      bytes: frame.length,
      sentAt: now,
      program,
      shared: sharedAt >= 0,
    });
    run.inFlightBytes += frame.length;
    run.inFlightCount += batch.count;
    run.outAllowance += batch.count * this.#outPerIn;
    if (!run.writing) void this.#pump(run);
    if (this.#deadline === undefined) this.#armDeadline(run);
  }

  /** Refreshes the CPU and memory figures of the running child, and checks what its storage holds. */
  async sample(): Promise<ProcSample | null> {
    const pid = this.pid;
    if (pid === null) return this.#sample;
    const s = await sampleProcess(pid);
    if (s) this.#sample = s;
    await this.#checkStorage();
    return this.#sample;
  }

  /** Storage over its bytes: the child is killed and the sandbox fails (a restart would find it full again). */
  async #checkStorage(): Promise<void> {
    const storage = this.#o.storage;
    if (!storage?.write || this.#state === "failed" || this.#state === "stopped") return;
    // Its directory, and the private one whose socket path it could write to (removed at each run's end).
    const used = await directoryUsage([storage.dir, `${this.#dir}/ipc`]);
    this.#storageBytes = used.bytes;
    this.#storageFiles = used.files;
    const over = used.bytes > storage.bytes
      ? `its files hold ${used.bytes} bytes, over its ${storage.bytes} (node.uploads.storage_bytes)`
      : used.files > STORAGE_MAX_FILES
      ? `it made ${used.files} files and directories, over ${STORAGE_MAX_FILES}`
      : null;
    if (!over) return;
    const run = this.#run;
    if (run) this.#kill(run, "crashed");
    this.#fail(new Error(over));
  }

  /** Figures for /status (and /metrics, by the same names). */
  status(): Record<string, unknown> {
    const sup = this.#supervisor.status();
    return {
      state: this.#state,
      pid: this.pid,
      restarts: sup.restarts,
      crashes: sup.crashes,
      ...(this.#state === "backoff" ? { next_start_ms: this.#supervisor.nextDelayMs } : {}),
      last_error: this.#error,
      memory_bytes: this.#sample?.rssBytes ?? null,
      cpu_ms: this.#sample?.cpuMs ?? null,
      queue_depth: this.#run?.inFlight.length ?? 0,
      queue_bytes: this.#run?.inFlightBytes ?? 0,
      shared_bytes: this.#shared?.memory.size ?? 0,
      ...(this.#o.storage
        ? {
          storage: {
            write: this.#o.storage.write,
            bytes: this.#storageBytes,
            max_bytes: this.#o.storage.bytes,
            files: this.#storageFiles,
            max_files: STORAGE_MAX_FILES,
          },
        }
        : {}),
      handler_ms_max: Math.round(this.#handlerMsMax * 1000) / 1000,
      ...this.#counts,
      dropped: { ...this.#drops },
      denied: [...this.#denied],
      programs: this.#wanted.map((p) => ({ name: p.name, entry: p.entry })),
      limits: {
        heap_mb: this.#limits.heapMb,
        memory_mb: this.#limits.memoryMb,
        // The child's runtime before the upload loaded, and the limit on its private memory: that plus memory_mb.
        memory_base_bytes: this.#dataLimit?.baseBytes ?? null,
        memory_limit_bytes: this.#dataLimit?.limitBytes ?? null,
        deadline_ms: this.#limits.deadlineMs,
        max_in_flight: this.#limits.maxInFlight,
        max_in_flight_bytes: this.#limits.maxInFlightBytes,
        max_out_per_in: this.#outPerIn,
        cpu_share: this.#limits.cpuShare ?? 0,
      },
      stderr: sup.stderr,
    };
  }

  /** Ends the child (SIGTERM, then SIGKILL), removes the upload's directory; starts nothing more. */
  stop(): Promise<void> {
    if (this.#stopped) return this.#stopped;
    this.#stopped = (async () => {
      this.#clearTimers();
      const starting = this.#starting;
      this.#starting = null;
      starting?.reject(new Error(`Cannot start sandbox "${this.#o.name}": it was stopped`));
      await this.#supervisor.stop();
      if (this.#state !== "failed") this.#state = "stopped";
      await this.#closeAudit();
      this.#freeShared();
      if (this.#dir) await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
      await this.#cap?.remove();
    })();
    return this.#stopped;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  /** Kills the child at once without waiting (the node is exiting). */
  abandon(): void {
    this.#clearTimers();
    this.#supervisor.abandon();
  }

  async #spawn(n: number): Promise<Child> {
    // One socket per run, in a directory of its own: the child may reach this path and nothing else.
    const socket = `${this.#dir}/ipc/${n}.sock`;
    const listener = Deno.listen({ transport: "unix", path: socket });
    if (this.#limits.sharedMemory !== false && !this.#shared) {
      // What may be in flight, and room for a batch more where a wrap left the end unused; more crosses the socket.
      const memory = SharedMemory.create(
        this.#limits.sharedBytes ?? this.#limits.maxInFlightBytes + 1024 * 1024,
      );
      if (memory) this.#shared = { memory, ring: new RingAllocator(memory.size), trimmed: false };
    }
    const shared = this.#shared
      ? { path: this.#shared.memory.path, bytes: this.#shared.memory.size }
      : undefined;
    this.#ffiChecks = shared ? [...CHILD_FFI_CHECKS] : [];
    const argv = normalPriorityArgv(
      childArgv({
        deno: this.#o.deno ?? Deno.execPath(),
        main: CHILD_MAIN.href,
        dir: `${this.#dir}/modules`,
        socket,
        storage: this.#o.storage?.dir,
        storageWrite: this.#o.storage?.write,
        storageBytes: this.#o.storage?.bytes,
        entries: this.#wanted.map((p) => p.entry),
        heapMb: this.#limits.heapMb,
        memoryMb: this.#limits.memoryMb,
        addressBaseMb: this.#limits.addressBaseMb,
        dataBaseMb: this.#limits.dataBaseMb,
        shared,
      }),
      { nice: this.#limits.nice },
    );
    const env: Record<string, string> = { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" };
    env.DENO_AUDIT_PERMISSIONS = `${this.#dir}/audit.fifo`;
    const cache = Deno.env.get("DENO_DIR") ??
      (Deno.env.get("HOME") ? `${Deno.env.get("HOME")}/.cache/deno` : null);
    if (cache) env.DENO_DIR = cache;
    let process: Deno.ChildProcess;
    try {
      process = new Deno.Command(argv[0], {
        args: argv.slice(1),
        clearEnv: true,
        env,
        cwd: this.#o.storage?.dir ?? `${this.#dir}/modules`,
        stdin: "null",
        stdout: "null",
        stderr: "piped",
      }).spawn();
    } catch (error) {
      listener.close();
      await Deno.remove(socket).catch(() => {});
      throw error;
    }
    if (this.#cap) {
      // Before it loads anything: a process outside its cap must not run the program.
      try {
        await this.#cap.add(process.pid);
      } catch (error) {
        process.kill("SIGKILL");
        await process.status;
        listener.close();
        await Deno.remove(socket).catch(() => {});
        throw new Error(`Cannot move the sandbox into its CPU cap: ${errorMessage(error)}`);
      }
    }
    const run: Run = {
      n,
      process,
      conn: null,
      inFlight: [],
      inFlightBytes: 0,
      sharedInFlightBytes: 0,
      refAllowance: 0,
      inFlightCount: 0,
      outAllowance: 0,
      answeredAt: 0,
      ready: false,
      killedFor: null,
      said: null,
      exitReason: null,
      loaded: false,
      shared: false,
      // As many spare chunks as the in-flight bound can fill: a burst never allocates (trimmed each sample).
      pending: new FrameQueue(CHUNK_BYTES, Math.ceil(this.#limits.maxInFlightBytes / CHUNK_BYTES) + 1),
      writing: false,
      stderr: [],
    };
    this.#run = run;
    if (this.#state !== "stopped" && this.#state !== "failed") this.#state = "starting";
    // A child that dies before it connects must not leave the accept waiting.
    void process.status.finally(async () => {
      closeQuietly(listener);
      // The child may write to its socket's path (it needs to, to connect): whatever it left there goes with it.
      await Deno.remove(socket).catch(() => {});
    });
    const framesRead = (async () => {
      try {
        run.conn = await listener.accept();
      } catch {
        return;
      } finally {
        // Taken: nothing else may connect to it.
        closeQuietly(listener);
        await Deno.remove(socket).catch(() => {});
      }
      // Before it loads the upload: its memory limit becomes what the runtime maps now plus the budget, and then
      // it is told to go on (one byte).
      try {
        this.#dataLimit = await tightenDataLimit(process.pid, this.#limits.memoryMb);
        await run.conn.write(new Uint8Array([1]));
      } catch (error) {
        // A child that ended meanwhile (or is being stopped) is not this failure: its end is handled as any other.
        let wait: ReturnType<typeof setTimeout> | undefined;
        const alive = await Promise.race([
          process.status.then(() => false),
          new Promise<boolean>((resolve) => wait = setTimeout(() => resolve(true), 50)),
        ]);
        clearTimeout(wait);
        // The frame reader, which closes the node's side of the socket, never ran for this run: closed here.
        closeQuietly(run.conn);
        if (!alive || run.killedFor || this.#run !== run || this.#state === "stopped") return;
        this.#kill(run, "crashed");
        this.#fail(new Error(`Cannot limit the sandbox's memory: ${errorMessage(error)}`));
        return;
      }
      await this.#readFrames(run, run.conn);
    })();
    return {
      pid: process.pid,
      // The end is seen after the last frame was read: a load failure is written just before the child exits.
      status: process.status.then(async (s) => {
        await framesRead;
        return { code: s.code, signal: s.signal };
      }),
      stdout: null,
      stderr: process.stderr,
      kill: (signal) => process.kill(signal),
    };
  }

  async #readFrames(run: Run, conn: Deno.UnixConn): Promise<void> {
    const reader = new FrameReader();
    try {
      await reader.readFrom(conn, (frame) => this.#frame(run, frame));
    } catch (error) {
      // Anything but the socket failing (the child's end) is the child breaking the protocol: a frame that cannot
      // be read or decoded, a control message that is not an object. Nothing it wrote is trusted.
      if (!isIoError(error) && this.#run === run && !run.killedFor) {
        this.#protocolError(run, errorMessage(error));
      }
    } finally {
      // The child's end (or its protocol error): the node's side of the socket goes too, or every sandbox ever
      // started would keep a descriptor (seen: two per start of an uploaded session, in the uploads soak).
      closeQuietly(conn);
    }
  }

  #frame(run: Run, frame: Frame): void {
    // Nothing more from a run that is ending: what it had in flight is lost with it.
    if (this.#run !== run || run.killedFor) return;
    switch (frame.kind) {
      case CONTROL: {
        const m = readControl(frame.body);
        if (!m || typeof m !== "object" || Array.isArray(m)) {
          return this.#protocolError(run, "a control message that is not an object");
        }
        return this.#control(run, m as Record<string, unknown>);
      }
      case REF: {
        // Batches the child passed on where they lay in the shared memory: read there, each length and offset once
        // (the child may write there meanwhile), and handed on as batches that the fast socket sends from where
        // they lie and that any other reader gets the node's own copy of (SharedAnswer).
        const shared = run.shared ? this.#shared : null;
        if (!shared) return this.#protocolError(run, "a shared frame, with no memory shared");
        const ref = readRef(frame.body);
        checkRef(ref, shared.memory.size);
        if (ref.length > run.refAllowance) {
          return this.#protocolError(
            run,
            `a shared answer of ${ref.length} bytes, more than the ${run.refAllowance} its batches in flight left`,
          );
        }
        run.refAllowance -= ref.length;
        this.#counts.answers_shared++;
        const region = shared.memory.bytes.subarray(ref.offset, ref.offset + ref.length);
        // A frame that breaks the protocol ends the run: none after it is handed on.
        return framesIn(region, BATCH_OUT, (f) => {
          if (this.#run === run && !run.killedFor) this.#batchOut(run, f.body, shared.memory);
        });
      }
      case BATCH_OUT:
        // Decoded where the reader holds it: the batch is handed on during this call, as batches are.
        return this.#batchOut(run, frame.body);
      case DONE: {
        const done = readDone(frame.body);
        const head = run.inFlight[0];
        if (!head || head.seq !== done.seq) {
          return this.#protocolError(run, `DONE for batch ${done.seq}, not in flight`);
        }
        run.inFlight.shift();
        run.inFlightBytes -= head.bytes;
        run.inFlightCount -= head.count;
        // What answered batches left unused carries over only so far: a program that holds datagrams and lets a
        // burst go later (a reorder buffer) may, within OUT_CARRY datagrams in of allowance.
        run.outAllowance = Math.min(
          run.outAllowance,
          Math.max(run.inFlightCount, OUT_CARRY) * this.#outPerIn,
        );
        if (head.shared) {
          this.#shared?.ring.release();
          run.sharedInFlightBytes -= head.bytes;
          // What an answered batch left unused does not carry over to later REFs.
          run.refAllowance = Math.min(run.refAllowance, run.sharedInFlightBytes);
        }
        run.answeredAt = this.#clock.now();
        this.#counts.batches_done++;
        if (done.ms > this.#handlerMsMax) this.#handlerMsMax = done.ms;
        this.#drops.handler_error += Math.min(done.failed, head.count);
        // The deadline timer stays: when it fires, it moves on to the new head (see #armDeadline).
        return;
      }
      default:
        return this.#protocolError(run, `a frame of kind ${frame.kind}`);
    }
  }

  /**
   * A BATCH_OUT frame's body: checked against the batch at the head and handed on during this call. `shared`: the
   * body lies in that memory (a REF's).
   */
  #batchOut(run: Run, body: Uint8Array, shared?: SharedMemory): void {
    const out = peekBatchOut(body);
    const decoded = decodeBatch(body.buffer as ArrayBuffer, out.at, out.length);
    const program = decoded.to.ap;
    const ports = this.#programs?.[program]?.ports.outputs.length ?? 0;
    const head = run.inFlight[0];
    if (
      head?.seq !== out.seq || head.program !== program || decoded.to.kind !== "emitted" ||
      out.output >= ports
    ) {
      return this.#protocolError(
        run,
        `an output for batch ${out.seq}, program ${program}, port ${out.output}, not in flight`,
      );
    }
    const batch: Batch = shared
      ? new SharedAnswer(decoded.batch, shared, out.at, out.length, this.#copyArea)
      : decoded.batch;
    if (batch.count > run.outAllowance) {
      this.#drops.output_cap += batch.count;
      this.#error = `it answered with more than ${this.#outPerIn} datagrams per datagram it was given ` +
        `(node.uploads.max_out_per_in); what was over was dropped`;
      return;
    }
    run.outAllowance -= batch.count;
    this.#counts.batches_out++;
    this.#counts.packets_out += batch.count;
    try {
      this.#o.onOutput(out.output, batch, program);
    } catch (error) {
      this.#error = `its output could not be delivered: ${errorMessage(error)}`;
    } finally {
      if (batch instanceof SharedAnswer) batch.spend();
    }
  }

  #control(run: Run, m: Record<string, unknown>): void {
    const message = typeof m.message === "string" ? m.message.slice(0, 2000) : "";
    switch (m.type) {
      case "loaded": {
        if (run.loaded) return this.#protocolError(run, "a second `loaded`");
        run.loaded = true;
        run.shared = m.shared === true && this.#shared !== null;
        const reported = Array.isArray(m.programs) ? m.programs as Record<string, unknown>[] : [];
        if (reported.length !== this.#wanted.length) {
          return this.#protocolError(run, `${reported.length} programs loaded of ${this.#wanted.length}`);
        }
        const programs: ProgramInfo[] = [];
        const values: Record<string, unknown>[] = [];
        for (const [k, wanted] of this.#wanted.entries()) {
          const p = reported[k] ?? {};
          const problems = [
            ...portsProblems(p.ports),
            ...paramsProblems(p.params),
            ...needsProblems(p.needs),
          ];
          const decl = (p.params ?? {}) as Record<string, ParamDecl>;
          const resolved = problems.length
            ? null
            : this.#o.inspectOnly
            ? { values: {}, problems: [] }
            : resolveParams(decl, wanted.params ?? {});
          if (resolved) problems.push(...resolved.problems);
          if (!problems.length && wanted.ports && JSON.stringify(wanted.ports) !== JSON.stringify(p.ports)) {
            problems.push(
              `its ports are ${JSON.stringify(p.ports)}, not the ${
                JSON.stringify(wanted.ports)
              } it was checked with`,
            );
          }
          if (problems.length) {
            const who = this.#wanted.length > 1 || wanted.name !== this.#o.name
              ? `AP "${wanted.name}": `
              : "";
            const error = new SandboxLoadError(`${who}${problems.join("; ")}`, {
              file: wanted.entry,
              line: 1,
              col: 1,
            });
            return this.#loadFailed(run, error);
          }
          programs.push({
            ports: p.ports as PortsDecl,
            params: decl,
            needs: (p.needs ?? {}) as ProgramNeeds,
          });
          values.push(resolved!.values);
        }
        this.#programs = programs;
        if (this.#o.inspectOnly) {
          this.#clearStartTimer();
          this.#state = "running";
          this.#starting?.resolve();
          this.#starting = null;
          return;
        }
        this.#write(
          run,
          controlFrame({ type: "start", params: values, deadline_ms: this.#limits.deadlineMs }),
        );
        return;
      }
      case "ready":
        // Only once, after the programs were loaded and told to start, and not from a child being killed.
        if (!run.loaded || run.ready || run.killedFor || (!this.#programs && !this.#o.inspectOnly)) {
          return this.#protocolError(run, "`ready` out of turn");
        }
        run.ready = true;
        this.#everReady = true;
        this.#state = "running";
        this.#clearStartTimer();
        this.#starting?.resolve();
        this.#starting = null;
        return;
      case "load_failed":
      case "start_failed": {
        let error = m.exports === true
          ? new SandboxLoadError(message, { file: this.#entryOf(m.index), line: 1, col: 1 })
          : loadError(`${this.#dir}/modules`, message);
        if (/Array buffer allocation failed|memory allocation of \d+ bytes failed/i.test(message)) {
          // Its memory budget, not a fault of the code as written.
          error = new SandboxLoadError(
            `out of memory (over its ${this.#limits.memoryMb} MiB limit) while ${
              m.type === "load_failed" ? "loading" : "starting"
            }: ${error.message}`,
            { file: error.file, line: error.line, col: error.col },
          );
        }
        return this.#loadFailed(run, error);
      }
      case "error":
        this.#counts.handler_errors++;
        this.#error = `${String(m.name)}: ${message}`;
        // Neither an import of a URL (--no-remote) nor a subprocess reaches the permission audit: the text counts.
        if (REMOTE_DENIED.test(message) || /^Requires run access/.test(message)) this.#denial(message);
        else if (m.name === "NotCapable" || /^Requires \w+ access/.test(message)) this.#noteDenial(message);
        return;
      case "fatal":
        run.said = message;
        run.exitReason = "memory";
        return;
      default:
        return this.#protocolError(run, `a control message of type ${JSON.stringify(m.type)?.slice(0, 40)}`);
    }
  }

  #entryOf(index: unknown): string {
    return this.#wanted[typeof index === "number" ? index : 0]?.entry ?? this.#wanted[0]?.entry ?? "(upload)";
  }

  /** On the first run the load failure is final; later (the same source loaded before) it is a crash. */
  #loadFailed(run: Run, error: SandboxLoadError): void {
    run.said = error.format();
    run.exitReason = "load";
    if (this.#everReady) return;
    this.#fail(error);
  }

  #fail(error: Error): void {
    this.#error = error.message;
    this.#failure = error;
    this.#state = "failed";
    this.#clearTimers();
    const starting = this.#starting;
    this.#starting = null;
    // Its shared memory goes once its child is gone (a failed host starts none again).
    void this.#supervisor.stop().then(() => this.#freeShared());
    starting?.reject(error);
  }

  /** After a sample with no batch through the shared memory and none in it, its pages go back to the system. */
  #trimShared(): void {
    const shared = this.#shared;
    if (!shared) return;
    const used = this.#counts.batches_shared;
    if (used === this.#sharedAtTrim && shared.ring.held === 0 && !shared.trimmed) {
      shared.memory.release();
      shared.trimmed = true;
      if (this.#refCopy.length > REF_COPY_BYTES) this.#refCopy = new Uint8Array(REF_COPY_BYTES);
      this.#counts.shared_trims++;
    }
    if (used !== this.#sharedAtTrim) shared.trimmed = false;
    this.#sharedAtTrim = used;
  }

  /**
   * Unmaps the shared memory: its child is gone, and what was handed on from it was either copied out while it was
   * handed on or is refused since (SharedAnswer.spend).
   */
  #freeShared(): void {
    const shared = this.#shared;
    this.#shared = null;
    shared?.memory.close();
  }

  #protocolError(run: Run, what: string): void {
    this.#counts.protocol_errors++;
    this.#error = `it broke the sandbox protocol: ${what}`;
    this.#kill(run, "crashed");
  }

  #kill(run: Run, reason: DropReason): void {
    if (run.killedFor) return;
    run.killedFor = reason;
    // It takes no more batches from now: they would only be lost with it.
    run.ready = false;
    if (this.#state === "running") this.#state = "backoff";
    try {
      run.process.kill("SIGKILL");
    } catch { /* gone */ }
  }

  #exited(n: number, exit: ChildExit, expected: boolean): void {
    const run = this.#run;
    if (!run || run.n !== n) return;
    this.#run = null;
    this.#clearDeadline();
    const lost = run.inFlight.reduce((sum, b) => sum + b.count, 0);
    run.inFlight.length = 0;
    run.inFlightBytes =
      run.sharedInFlightBytes =
      run.refAllowance =
      run.inFlightCount =
      run.outAllowance =
        0;
    // The child that held the shared memory's frames is gone (the next one maps it afresh).
    this.#shared?.ring.reset();
    if (expected || this.#state === "failed") return;
    this.#drops[run.killedFor ?? "crashed"] += lost;
    if (run.killedFor === "deadline") {
      this.#error = `its handler did not return within ${this.#limits.deadlineMs} ms; it was killed`;
    } else if (run.exitReason === "memory" || exit.code === EXIT_OUT_OF_MEMORY) {
      this.#counts.memory_kills++;
      this.#error = `out of memory (over its ${this.#limits.memoryMb} MiB limit): ${run.said ?? ""}`.trim();
    } else if (run.exitReason === "load" || exit.code === EXIT_LOAD_FAILED) {
      this.#error = `it could not be loaded again: ${run.said ?? ""}`;
    } else if (!run.killedFor) {
      const oom = run.stderr.find((l) =>
        /out of memory|heap limit|allocation failed|memory allocation of \d+ bytes failed/i.test(l)
      );
      if (oom) this.#counts.memory_kills++;
      // The runtime's own allocations (outside V8's heap) fail against the memory limit, the heap's against its own.
      const which = oom && /memory allocation of \d+ bytes failed|Array buffer allocation failed/i.test(oom)
        ? `over its ${this.#limits.memoryMb} MiB limit`
        : `heap limit ${this.#limits.heapMb} MiB`;
      const ended = `it ended (${exit.signal ? `signal ${exit.signal}` : `exit code ${exit.code}`})`;
      const last = oom ?? run.stderr.findLast((l) => !/^\s*(#|\[|$)/.test(l)) ?? run.stderr.at(-1);
      this.#error = `${oom ? `out of memory (${which}), ` : ""}${ended}${last ? `: ${last.trim()}` : ""}`;
    }
    if (!this.#everReady && this.#starting && /^out of memory/.test(this.#error ?? "")) {
      // It ran out of memory before it was ever ready (while its modules load, or in its start): final, as a load
      // failure is, and said now rather than at the start timeout. Other deaths are retried until then.
      return this.#fail(new Error(`Cannot start sandbox "${this.#o.name}": ${this.#error}`));
    }
    this.#state = "backoff";
  }

  #write(run: Run, frame: Uint8Array): void {
    run.pending.push(frame);
    if (!run.writing) void this.#pump(run);
  }

  /** Writes what is pending, frames that lie next to each other in one write, so the socket sees few large writes. */
  async #pump(run: Run): Promise<void> {
    run.writing = true;
    try {
      for (let bytes = run.pending.next(); bytes; bytes = run.pending.next()) {
        run.pending.advance(await run.conn!.write(bytes));
      }
    } catch {
      // The child is gone; its end is handled by the supervisor.
      run.pending.clear();
    } finally {
      run.writing = false;
    }
  }

  #armDeadline(run: Run): void {
    const head = run.inFlight[0];
    if (!head) return;
    const due = Math.max(
      0,
      Math.max(head.sentAt, run.answeredAt) + this.#limits.deadlineMs - this.#clock.now(),
    );
    this.#deadline = this.#clock.setTimeout(() => {
      this.#deadline = undefined;
      if (this.#run !== run || run.inFlight[0] !== head) return this.#armDeadline(run);
      this.#counts.deadline_kills++;
      this.#kill(run, "deadline");
    }, due);
  }

  #clearDeadline(): void {
    if (this.#deadline !== undefined) this.#clock.clearTimeout(this.#deadline);
    this.#deadline = undefined;
  }

  #clearStartTimer(): void {
    if (this.#startTimer !== undefined) this.#clock.clearTimeout(this.#startTimer);
    this.#startTimer = undefined;
  }

  #clearTimers(): void {
    this.#clearDeadline();
    this.#clearStartTimer();
    if (this.#sampler !== undefined) this.#clock.clearTimeout(this.#sampler);
    this.#sampler = undefined;
  }

  /**
   * A heartbeat for an idle child: a ping it must answer like a batch, under the same deadline. A program that
   * spins outside a handler (in a timer, after returning) blocks its event loop and is killed like one that spins in
   * one.
   */
  #heartbeat(): void {
    const run = this.#run;
    if (!run?.ready || run.killedFor || run.inFlight.length > 0 || this.#state !== "running") return;
    const seq = this.#seq = (this.#seq + 1) >>> 0;
    run.inFlight.push({ seq, count: 0, bytes: 0, sentAt: this.#clock.now(), program: -1, shared: false });
    this.#write(run, controlFrame({ type: "ping", seq }));
    if (this.#deadline === undefined) this.#armDeadline(run);
  }

  #scheduleSample(): void {
    const every = this.#o.sampleMs ?? 1000;
    if (every <= 0) return;
    this.#sampler = this.#clock.setTimeout(() => {
      this.#heartbeat();
      this.#run?.pending.trim();
      this.#trimShared();
      void this.sample().finally(() => {
        if (this.#state !== "stopped" && this.#state !== "failed") this.#scheduleSample();
      });
    }, every);
  }

  /** The audit FIFO, opened read-write so that neither side blocks on open and it never reads an end. */
  async #openAudit(): Promise<void> {
    const path = `${this.#dir}/audit.fifo`;
    const made = await new Deno.Command("mkfifo", { args: ["-m", "600", path], stderr: "piped" }).output();
    if (!made.success) {
      throw new Error(
        `Cannot make the permission audit FIFO: ${new TextDecoder().decode(made.stderr).trim()}`,
      );
    }
    this.#audit = await Deno.open(path, { read: true, write: true });
    this.#auditReading = this.#readAudit(this.#audit);
  }

  /**
   * Ends the audit reader. Its read waits in a thread of the runtime's blocking pool, and the FIFO never reads as
   * ended (this process holds its write side too): closing the file would leave that thread waiting for good, one
   * per sandbox, until the pool had none left for any file operation of the node. So a byte is written to wake it,
   * and it ends.
   */
  async #closeAudit(): Promise<void> {
    const audit = this.#audit;
    this.#audit = null;
    if (!audit) return;
    this.#auditEnding = true;
    let woken = true;
    try {
      using wake = await Deno.open(`${this.#dir}/audit.fifo`, { write: true });
      await wake.write(new Uint8Array([10]));
    } catch {
      // Not woken (no descriptor to spare?): the stop must not wait on the reader for good.
      woken = false;
    }
    if (woken) await this.#auditReading;
    try {
      audit.close();
    } catch { /* closed with its stream */ }
  }

  async #readAudit(file: Deno.FsFile): Promise<void> {
    const decoder = new TextDecoder();
    let rest = "";
    // Every access the child makes is a line here, parsed on the node's thread: a bounded number per second.
    let windowStart = 0;
    let inWindow = 0;
    try {
      for await (const chunk of file.readable) {
        if (this.#auditEnding) break;
        rest += decoder.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = rest.indexOf("\n")) >= 0) {
          const line = rest.slice(0, nl);
          rest = rest.slice(nl + 1);
          const t = performance.now();
          if (t - windowStart >= 1000) [windowStart, inWindow] = [t, 0];
          if (++inWindow <= AUDIT_LINES_PER_SECOND) this.#auditLine(line);
          else {
            this.#counts.audit_skipped++;
            const run = this.#run;
            if (inWindow > AUDIT_FLOOD_PER_SECOND && run && !run.killedFor) {
              this.#protocolError(
                run,
                `it made over ${AUDIT_FLOOD_PER_SECOND} permission checks in a second`,
              );
            }
          }
        }
        if (rest.length > AUDIT_LINE_MAX) rest = "";
      }
    } catch { /* closed by stop() */ }
  }

  /** One access the child's runtime checked: denied unless it reads inside its own upload. */
  #auditLine(line: string): void {
    let entry: { permission?: unknown; value?: unknown };
    try {
      entry = JSON.parse(line);
    } catch {
      return;
    }
    const permission = String(entry.permission);
    const value = entry.value === null || entry.value === undefined ? null : String(entry.value);
    const modules = `${this.#dir}/modules`;
    if (permission === "read" && value !== null && (value === modules || value.startsWith(`${modules}/`))) {
      return;
    }
    // The child's own mapping of the shared memory, before its upload loaded: the first FFI checks, as expected.
    // Its first other check (its socket, its modules) comes after the mapping: a mapping that failed made fewer,
    // and what it did not make must not hide the program's own attempts.
    const ffi = this.#ffiChecks;
    if (permission === "ffi" && ffi.length && ffi[0] === value) {
      ffi.shift();
      return;
    }
    if (permission !== "ffi") ffi.length = 0;
    // Its own storage, as granted (a relative name is in its working directory, the storage).
    const storage = this.#o.storage;
    const path = storage && value !== null && (permission === "read" || permission === "write")
      ? (value.startsWith("/")
        ? value
        : decodeURIComponent(new URL(value, `file://${storage.dir}/`).pathname))
      : null;
    if (
      storage && path !== null && (path === storage.dir || path.startsWith(`${storage.dir}/`)) &&
      (permission === "read" || (permission === "write" && storage.write))
    ) {
      return;
    }
    // Its own frames' socket (read, write and net "unix:" access to that one path).
    if (value !== null && value.includes(`${this.#dir}/ipc/`) && /^(read|write|net)$/.test(permission)) {
      return;
    }
    this.#denial(
      `Requires ${permission} access${value === null ? "" : ` to "${value.replace(`${modules}/`, "")}"`}`,
    );
  }

  #denial(text: string): void {
    this.#counts.denials++;
    this.#noteDenial(text);
  }

  /** Keeps the child's own text of a denial (counted by the audit). */
  #noteDenial(text: string): void {
    const line = text.split("\n")[0].slice(0, 300);
    if (this.#denied.includes(line)) return;
    this.#denied.push(line);
    if (this.#denied.length > DENIALS_KEPT) this.#denied.shift();
  }
}

/** Bytes of the regular files under `dir` (`du -sb`, which Deno's permissions need not see); 0 when it is gone. */
async function directoryUsage(dirs: readonly string[]): Promise<{ bytes: number; files: number }> {
  const sum = async (args: string[]) => {
    try {
      const out = await new Deno.Command("du", { args: [...args, ...dirs], stdout: "piped", stderr: "null" })
        .output();
      return new TextDecoder().decode(out.stdout).split("\n").reduce(
        (n, line) => n + (Number(line.split(/\s/)[0]) || 0),
        0,
      );
    } catch {
      return 0;
    }
  };
  const [bytes, files] = await Promise.all([sum(["-sb"]), sum(["-s", "--inodes"])]);
  return { bytes, files };
}

/**
 * An answer the child left in the shared memory, decoded there (every length and offset read once and checked, so
 * what the child writes meanwhile changes bytes, never where they are or how many): the fast socket sends its
 * datagrams from where they lie (`address`); whatever reads them (`data`) reads the node's own copy, made at the
 * first read, so no element ever holds a view of memory the child can change or the node will unmap.
 */
class SharedAnswer extends PinnedBatch {
  #copy: DecodedBatch | null = null;
  /** Handed on and done with (see `spend`). */
  #spent = false;
  /** The native address of the decoded bytes. */
  private readonly base: number;

  constructor(
    private readonly decoded: DecodedBatch,
    private readonly memory: SharedMemory,
    /** Where the decoded bytes start in the memory, and how many. */
    private readonly at: number,
    private readonly bytes: number,
    private readonly copyArea: (bytes: number) => Uint8Array,
  ) {
    super();
    this.base = memory.address + at;
  }

  get count(): number {
    return this.decoded.count;
  }
  length(i: number): number {
    return this.decoded.length(i);
  }
  from(i: number): Endpoint {
    return this.decoded.from(i);
  }
  truncated(i: number): boolean {
    return this.decoded.truncated(i);
  }
  address(i: number): number {
    if (this.#spent) throw new SpentAnswerError();
    return this.base + this.decoded.start(i);
  }
  data(i: number): Uint8Array {
    if (!this.#copy) {
      if (this.#spent) throw new SpentAnswerError();
      const own = this.copyArea(this.bytes);
      own.set(this.memory.bytes.subarray(this.at, this.at + this.bytes));
      this.#copy = DecodedBatch.rebase(this.decoded, own);
    }
    return this.#copy.data(i);
  }

  /**
   * Ends its use, once the call that handed it on returned: the memory it lies in is the child's to overwrite and the
   * node's to unmap, so an element that kept the batch (not a copy of its datagrams, as every batch requires) gets
   * an error, never memory that changed under it or is gone.
   */
  spend(): void {
    this.#spent = true;
  }
}

class SpentAnswerError extends Error {
  override name = "SpentAnswerError";
  constructor() {
    super("A sandbox's answer was read after the call that handed it on: batches must be copied to be kept");
  }
}

/** An error of the socket itself (reset, broken pipe, closed), not of what came through it. */
function isIoError(error: unknown): boolean {
  return Object.values(Deno.errors).some((E) => error instanceof E);
}

function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch { /* closed */ }
}
