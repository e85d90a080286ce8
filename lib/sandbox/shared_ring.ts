/**
 * Memory a sandbox host and its child share, so batches cross without going through the socket: the host encodes a
 * batch's BATCH_IN frame straight into it and writes a 13-byte REF frame (frames.ts) on the socket; the child reads
 * the batch where it lies, and a handler that passes its batch on has the frame turned there into a BATCH_OUT and
 * answers with a REF too. A pass-through then costs no copy of its bytes through the kernel either way (through the
 * socket, each byte was copied into and out of it twice per crossing).
 *
 * The memory is a memfd of the host's (MFD_CLOEXEC: no other child inherits it; sealed at its size, so nobody can
 * shrink it under the node's mapping), mapped shared. The child opens it
 * as /proc/HOST_PID/fd/FD and maps it through libc before it loads any uploaded code: for that one step it runs with
 * --allow-ffi, and `mapShared` revokes FFI before it returns, mapped or not (Deno refuses every dlopen and pointer
 * call after that, and the child has --no-prompt). What it gets is this group's own batches: the host writes nothing
 * else there, and reads nothing there but the BATCH_OUT frames the child points it at. The child may write there
 * while the host reads: the host reads each length and offset once, checks them and keeps them, so what the child
 * changes meanwhile is bytes, never where they are or how many. The fast socket sends an answer from where it lies;
 * whatever else reads it reads the node's own copy (host.ts, SharedAnswer).
 *
 * Where FFI is not granted to the node, or this is not Linux, or the child could not map it, frames cross the socket
 * as before; so does a batch the ring has no room for at the moment.
 */

/** The libc the child opens for its one mapping (and that its audit record names). */
export const CHILD_LIBC = "libc.so.6";
/**
 * FFI checks the child's mapping makes, as its permission audit records them: dlopen, UnsafePointer.value (is it
 * MAP_FAILED?), getArrayBuffer. A mapping that fails makes fewer.
 */
export const CHILD_FFI_CHECKS: readonly (string | null)[] = [CHILD_LIBC, null, null];

const PROT_READ_WRITE = 3;
const MAP_SHARED = 1;
const MFD_CLOEXEC = 1;
const MFD_ALLOW_SEALING = 2;
const F_ADD_SEALS = 1033;
/** F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW: its size is fixed for good (a shrunk mapping would fault the node). */
const SEALS = 1 | 2 | 4;
const O_RDWR = 2;
/** madvise: frees the pages of a shared mapping (a hole punched in the memfd; both sides then read zeros). */
const MADV_REMOVE = 9;

const HOST_SYMBOLS = {
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
} as const;

const CHILD_SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  close: { parameters: ["i32"], result: "i32" },
} as const;

function mapped(pointer: Deno.PointerValue): pointer is Deno.PointerObject {
  // MAP_FAILED is (void *) -1.
  return pointer !== null && Deno.UnsafePointer.value(pointer) !== 0xffff_ffff_ffff_ffffn;
}

/** The host's side: a memfd of `size` bytes mapped shared, and the path its child opens it by. */
export class SharedMemory {
  #lib: Deno.DynamicLibrary<typeof HOST_SYMBOLS> | null;
  readonly #pointer: Deno.PointerObject;
  readonly #fd: number;
  /** The whole of it (byteOffset 0 of its own ArrayBuffer). */
  readonly bytes: Uint8Array;
  /** The native address of `bytes[0]` (for sends that point the kernel at what lies there). */
  readonly address: number;

  private constructor(
    lib: Deno.DynamicLibrary<typeof HOST_SYMBOLS>,
    pointer: Deno.PointerObject,
    fd: number,
    size: number,
  ) {
    this.#lib = lib;
    this.#pointer = pointer;
    this.#fd = fd;
    this.bytes = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(pointer, size));
    this.address = Number(Deno.UnsafePointer.value(pointer));
  }

  /** `size` bytes of shared memory, or null where FFI is not granted, this is not Linux, or it cannot be made. */
  static create(size: number): SharedMemory | null {
    if (Deno.build.os !== "linux") return null;
    let lib: Deno.DynamicLibrary<typeof HOST_SYMBOLS>;
    try {
      if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return null;
      lib = Deno.dlopen("libc.so.6", HOST_SYMBOLS);
    } catch {
      return null;
    }
    const s = lib.symbols;
    const fd = s.memfd_create(
      new TextEncoder().encode("edgenode-sandbox\0"),
      MFD_CLOEXEC | MFD_ALLOW_SEALING,
    );
    if (fd < 0) {
      lib.close();
      return null;
    }
    const pointer = s.ftruncate(fd, BigInt(size)) === 0 && s.fcntl(fd, F_ADD_SEALS, SEALS) === 0
      ? s.mmap(null, BigInt(size), PROT_READ_WRITE, MAP_SHARED, fd, 0n)
      : null;
    if (!mapped(pointer)) {
      s.close(fd);
      lib.close();
      return null;
    }
    return new SharedMemory(lib, pointer, fd, size);
  }

  /** What the child opens: this process's descriptor of the memfd. */
  get path(): string {
    return `/proc/${Deno.pid}/fd/${this.#fd}`;
  }

  get size(): number {
    return this.bytes.length;
  }

  /**
   * Gives its pages back to the system (they read as zeros, and are faulted in again on use): for when nothing lies
   * in it, after a quiet spell, as the frame queues let their spare chunks go.
   */
  release(): void {
    this.#lib?.symbols.madvise(this.#pointer, BigInt(this.bytes.length), MADV_REMOVE);
  }

  /**
   * Unmaps it and closes the memfd. Only once nothing reads `bytes` any more (its views would then fault): the
   * host calls it after its child ended, and batches are handed on synchronously, never kept.
   */
  close(): void {
    const lib = this.#lib;
    if (!lib) return;
    this.#lib = null;
    lib.symbols.munmap(this.#pointer, BigInt(this.bytes.length));
    lib.symbols.close(this.#fd);
    lib.close();
  }
}

/**
 * The child's side: maps `size` bytes of the host's memory at `path`, then revokes FFI for good, whether the mapping
 * worked or not (null then). Called before any uploaded module is loaded.
 */
export function mapShared(path: string, size: number): Uint8Array | null {
  try {
    const lib = Deno.dlopen(CHILD_LIBC, CHILD_SYMBOLS);
    try {
      const s = lib.symbols;
      const fd = s.open(new TextEncoder().encode(`${path}\0`), O_RDWR);
      if (fd < 0) return null;
      const pointer = s.mmap(null, BigInt(size), PROT_READ_WRITE, MAP_SHARED, fd, 0n);
      s.close(fd);
      if (!mapped(pointer)) return null;
      return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(pointer, size));
    } finally {
      lib.close();
    }
  } catch {
    return null;
  } finally {
    Deno.permissions.revokeSync({ name: "ffi" });
  }
}

/** RingAllocator's default `hot`: half a core's L2 cache on the machines this was measured on. */
const HOT_BYTES = 512 * 1024;
/** Runs of regions a RingAllocator holds at most (see the class): a bound on the work of a reservation. */
const MAX_RUNS = 16;

/**
 * Where frames go in the shared memory: regions handed out in order and given back in the same order (a batch's
 * frame is free once its DONE came, and DONEs come in order). Pure bookkeeping, no memory of its own.
 *
 * Regions handed out one after another form a run; a new region extends the newest run where it can. Once that run
 * reaches past `hot` bytes into the memory and nothing held lies in the first `hot` bytes any more, the next region
 * starts a new run at 0, so that a steady stream keeps to memory still in the caches (the host writes a batch there,
 * the child and then the kernel read it). When the newest run cannot grow (it would reach the end, or an older run),
 * a new one starts at 0 or after the end of an older run, wherever nothing held lies; at most MAX_RUNS runs are held.
 * So a backlog uses the whole memory, and a stream that keeps up stays within about `hot` bytes and what is in
 * flight.
 */
export class RingAllocator {
  readonly capacity: number;
  readonly hot: number;
  /** Start and end of every region held, oldest first (a FIFO: `#head` is the oldest's index). */
  #starts: number[] = [];
  #ends: number[] = [];
  #head = 0;
  /** The runs held, oldest first: where each begins and ends, and how many regions it holds. */
  #runs: { start: number; end: number; count: number }[] = [];

  constructor(capacity: number, hot = HOT_BYTES) {
    this.capacity = capacity;
    this.hot = Math.min(hot, capacity);
  }

  /** Regions held. */
  get held(): number {
    return this.#starts.length - this.#head;
  }

  /** Bytes held. */
  get usedBytes(): number {
    return this.#runs.reduce((n, r) => n + r.end - r.start, 0);
  }

  /** Runs held (see the class). */
  get runs(): number {
    return this.#runs.length;
  }

  /** The offset of a new region of `bytes`, or -1 when there is no room for it now. */
  reserve(bytes: number): number {
    if (bytes <= 0 || bytes > this.capacity) return -1;
    const runs = this.#runs;
    if (runs.length === 0) {
      this.#starts.length = this.#ends.length = this.#head = 0;
      return this.#add(0, bytes, true);
    }
    const newest = runs[runs.length - 1];
    const more = runs.length < MAX_RUNS;
    const back = more && newest.end + bytes > this.hot && newest.start > 0 &&
      this.#free(0, Math.max(bytes, this.hot));
    if (back) return this.#add(0, bytes, true);
    if (this.#free(newest.end, bytes)) return this.#add(newest.end, bytes, false);
    if (!more) return -1;
    if (this.#free(0, bytes)) return this.#add(0, bytes, true);
    for (const r of runs) if (r !== newest && this.#free(r.end, bytes)) return this.#add(r.end, bytes, true);
    return -1;
  }

  /** Whether [at, at + bytes) lies within the memory and clear of every run. */
  #free(at: number, bytes: number): boolean {
    if (at + bytes > this.capacity) return false;
    for (const r of this.#runs) if (at < r.end && at + bytes > r.start) return false;
    return true;
  }

  #add(at: number, bytes: number, newRun: boolean): number {
    if (newRun) this.#runs.push({ start: at, end: at + bytes, count: 1 });
    else {
      const newest = this.#runs[this.#runs.length - 1];
      newest.end = at + bytes;
      newest.count++;
    }
    this.#starts.push(at);
    this.#ends.push(at + bytes);
    return at;
  }

  /** Gives back the newest region (one whose frame could not be made). */
  unreserve(): void {
    if (this.held === 0) return;
    this.#starts.pop();
    this.#ends.pop();
    const newest = this.#runs[this.#runs.length - 1];
    if (--newest.count === 0) this.#runs.pop();
    else newest.end = this.#ends[this.#ends.length - 1];
  }

  /** Gives back the oldest region. */
  release(): void {
    if (this.held === 0) return;
    this.#head++;
    const oldest = this.#runs[0];
    if (--oldest.count === 0) this.#runs.shift();
    else oldest.start = this.#starts[this.#head];
    if (this.#head > 1024 && this.#head * 2 > this.#starts.length) {
      this.#starts = this.#starts.slice(this.#head);
      this.#ends = this.#ends.slice(this.#head);
      this.#head = 0;
    }
  }

  /** Gives back everything (the child that held it ended). */
  reset(): void {
    this.#starts.length = this.#ends.length = this.#head = 0;
    this.#runs = [];
  }
}
