/**
 * The process's CPU scheduling: a box whose node must release packets to the millisecond can run at a real-time
 * priority (SCHED_FIFO), so that a busy ffmpeg, a kernel thread or anything at normal priority never holds the
 * packet thread back; and whatever such a process starts (ffmpeg, an agent's load command) starts at normal
 * priority again, never inheriting it. Through libc (FFI): Linux only.
 *
 * Why FIFO for every thread and not only the main one: Deno completes FFI calls that wait (a receive with nothing
 * ready) on threads of its own, created as needed; they inherit the policy of the thread that made them, so setting
 * every thread once, before the roles start, covers those made later. Children are reset with util-linux's `chrt
 * --other 0` put in front of their command: the kernel's SCHED_RESET_ON_FORK would reset them too, but also every
 * thread made later, which is what must keep the priority.
 *
 * The kernel's real-time throttling (sched_rt_runtime_us, 95 % of each second by default) still leaves the rest of
 * the box a share of each core should the node spin.
 */
import { errorMessage } from "./errors.ts";

const SYMBOLS = {
  sched_setscheduler: { parameters: ["i32", "i32", "buffer"], result: "i32" },
  sched_getscheduler: { parameters: ["i32"], result: "i32" },
  sched_getparam: { parameters: ["i32", "buffer"], result: "i32" },
  setpriority: { parameters: ["i32", "u32", "i32"], result: "i32" },
  getpriority: { parameters: ["i32", "u32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;
type Sched = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

export const SCHED_OTHER = 0;
export const SCHED_FIFO = 1;
export const SCHED_RR = 2;
const POLICY_NAMES: Record<number, string> = { 0: "other", 1: "fifo", 2: "rr", 3: "batch", 5: "idle" };
/** `which` for setpriority/getpriority: one process (on Linux one thread, the main one for a process id). */
const PRIO_PROCESS = 0;
const EPERM = 1;
export const MAX_RT_PRIORITY = 99;

/** Real-time priority could not be set (no FFI, not Linux, not permitted). */
export class SchedulingError extends Error {
  override name = "SchedulingError";
}

/**
 * This thread's library, opened on first use and kept (a dlopen costs 0.5-3 ms here, and a spawn asks for the policy
 * each time); null where FFI is not allowed or this is not Linux. Module-level on purpose, as lib/net/libc.ts's: each
 * thread loads its own copy of this module.
 */
function schedLibc(): Sched | null {
  if (threadLibc === undefined) {
    threadLibc = null;
    try {
      if (Deno.build.os === "linux" && Deno.permissions.querySync({ name: "ffi" }).state === "granted") {
        threadLibc = Deno.dlopen("libc.so.6", SYMBOLS).symbols;
      }
    } catch { /* no libc: null */ }
  }
  return threadLibc;
}
let threadLibc: Sched | null | undefined;

function withLibc<T>(use: (c: Sched) => T): T | null {
  const c = schedLibc();
  return c ? use(c) : null;
}

function lastErrno(c: Sched): number {
  const p = c.__errno_location();
  return p ? new Deno.UnsafePointerView(p).getInt32() : 0;
}

export interface Policy {
  /** "other" (normal), "fifo", "rr", "batch" or "idle". */
  readonly policy: string;
  /** The real-time priority (1..99), 0 for the normal policies. */
  readonly priority: number;
}

/** The scheduling policy of thread (or process) `tid`, 0 for the calling thread; null where it cannot be read. */
export function policyOf(tid = 0): Policy | null {
  return withLibc((c) => {
    const policy = c.sched_getscheduler(tid);
    if (policy < 0) return null;
    const param = new Int32Array(1);
    const priority = c.sched_getparam(tid, param) === 0 ? param[0] : 0;
    return { policy: POLICY_NAMES[policy & 0xff] ?? `policy ${policy}`, priority };
  });
}

/** Whether the calling thread runs at a real-time policy: what it starts must then be reset (`normalPriorityArgv`). */
export function isRealtime(): boolean {
  const policy = withLibc((c) => c.sched_getscheduler(0)) ?? SCHED_OTHER;
  return policy === SCHED_FIFO || policy === SCHED_RR;
}

/**
 * This process's threads: the entries of /proc/PID/task, listed by `ls` (Deno lets only --allow-all read /proc of its
 * own process), at start only.
 */
function ownThreads(): number[] {
  const out = new Deno.Command("ls", { args: [`/proc/${Deno.pid}/task`], stdout: "piped", stderr: "piped" })
    .outputSync();
  if (!out.success) {
    throw new Error(`cannot list /proc/${Deno.pid}/task: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout).split(/\s+/).filter((t) => /^\d+$/.test(t)).map(Number);
}

/**
 * Puts every thread of this process at SCHED_FIFO `priority` (1..99); threads made later inherit it. Throws
 * SchedulingError when it cannot (not Linux, FFI not allowed, not permitted: it needs root or CAP_SYS_NICE), having
 * put back the threads it had already changed. Returns how many threads it set.
 */
export function runRealtime(priority: number, threads: () => number[] = ownThreads): number {
  if (!Number.isInteger(priority) || priority < 1 || priority > MAX_RT_PRIORITY) {
    throw new SchedulingError(
      `Cannot run at real-time priority ${priority}: it must be 1..${MAX_RT_PRIORITY}`,
    );
  }
  let tids: number[];
  try {
    tids = threads();
  } catch (error) {
    throw new SchedulingError(`Cannot run at real-time priority ${priority}: ${errorMessage(error)}`);
  }
  const done = withLibc((c) => {
    const param = new Int32Array([priority]);
    const normal = new Int32Array([0]);
    const set: number[] = [];
    for (const tid of tids) {
      if (c.sched_setscheduler(tid, SCHED_FIFO, param) === 0) {
        set.push(tid);
        continue;
      }
      const e = lastErrno(c);
      if (e === 3) continue; // ESRCH: the thread ended meanwhile
      for (const t of set) c.sched_setscheduler(t, SCHED_OTHER, normal);
      throw new SchedulingError(
        e === EPERM
          ? `Cannot run at real-time priority ${priority}: not permitted (it needs root or CAP_SYS_NICE)`
          : `Cannot run at real-time priority ${priority}: sched_setscheduler failed (errno ${e})`,
      );
    }
    return set.length;
  });
  if (done === null) {
    throw new SchedulingError(
      `Cannot run at real-time priority ${priority}: it needs Linux and FFI (--allow-ffi)`,
    );
  }
  return done;
}

/** Puts every thread of this process back at the normal policy (tests; a role that gives the priority up). */
export function runNormal(threads: () => number[] = ownThreads): void {
  withLibc((c) => {
    const normal = new Int32Array([0]);
    for (const tid of threads()) c.sched_setscheduler(tid, SCHED_OTHER, normal);
  });
}

/**
 * The argv that starts `argv` at normal priority (and at `nice`, when given and not 0): what this process starts must
 * neither inherit a real-time policy nor the node's nice value. `chrt` (util-linux) and `nice` (coreutils) set it and
 * then become the command, so every thread the command makes has it.
 */
export function normalPriorityArgv(
  argv: readonly string[],
  o: { nice?: number; realtime?: boolean } = {},
): string[] {
  const realtime = o.realtime ?? isRealtime();
  return [
    ...(realtime ? ["chrt", "--other", "0"] : []),
    ...(o.nice ? ["nice", "-n", String(o.nice)] : []),
    ...argv,
  ];
}

/** Sets the nice value of process `pid`'s main thread; false when the process is gone or it is not allowed. */
export function setNice(pid: number, nice: number): boolean {
  return withLibc((c) => c.setpriority(PRIO_PROCESS, pid, nice) === 0) ?? false;
}

/** The nice value of process `pid`'s main thread (-20..19). */
export function niceOf(pid: number): number {
  const n = withLibc((c) => c.getpriority(PRIO_PROCESS, pid));
  if (n === null) throw new SchedulingError("Cannot read a nice value: it needs Linux and FFI (--allow-ffi)");
  return n;
}
