/**
 * Lower a child process's CPU priority (its nice value), so work the node does on the side (a transcoder's ffmpeg)
 * yields the cores to the thread that moves packets on time. Linux only (setpriority through FFI); elsewhere, or
 * without --allow-ffi, nothing changes and the caller is told so.
 */

/** setpriority(2) alone: process management, not sockets (lib/net/libc.ts has those). */
const SYMBOLS = { setpriority: { parameters: ["i32", "u32", "i32"], result: "i32" } } as const;
/** setpriority's `which`: one process (on Linux, one thread). */
const PRIO_PROCESS = 0;

function openLibc(): Deno.DynamicLibrary<typeof SYMBOLS> | null {
  if (Deno.build.os !== "linux") return null;
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return null;
    return Deno.dlopen("libc.so.6", SYMBOLS);
  } catch {
    return null;
  }
}

/** The nice value a transcoder's ffmpeg runs at (0 normal .. 19 lowest). */
export const CHILD_NICE = 10;

/**
 * Sets the nice value of every thread of process `pid`. Linux keeps nice per thread, and threads a niced thread
 * makes inherit it: the main thread first, then each thread listed in /proc (any made before the first call).
 * Returns whether the main thread's was set (false: not Linux, no FFI, or the process is gone).
 */
export function setNice(pid: number, nice: number): boolean {
  const lib = openLibc();
  if (!lib) return false;
  try {
    if (lib.symbols.setpriority(PRIO_PROCESS, pid, nice) !== 0) return false;
    try {
      for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
        const tid = Number(task.name);
        if (tid !== pid) lib.symbols.setpriority(PRIO_PROCESS, tid, nice);
      }
    } catch { /* the process ended: nothing left to lower */ }
    return true;
  } finally {
    lib.close();
  }
}

/** The nice value of process `pid`'s main thread (field 19 of /proc/PID/stat), or null where it cannot be read. */
export function niceOf(pid: number): number | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // The command name (field 2) is in parentheses and may hold spaces: count fields after its closing one.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[16]);
  } catch {
    return null;
  }
}
