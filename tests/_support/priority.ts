/**
 * A process's CPU priority from tests: lower another process's (a participant that stands for another host) and read
 * one back. Through libc (setpriority/getpriority, FFI): Deno lets only --allow-all read /proc/PID.
 */

const SYMBOLS = {
  setpriority: { parameters: ["i32", "u32", "i32"], result: "i32" },
  getpriority: { parameters: ["i32", "u32"], result: "i32" },
} as const;
/** `which` for one process (on Linux: its main thread; threads it makes later inherit the value). */
const PRIO_PROCESS = 0;

function withLibc<T>(use: (libc: Deno.DynamicLibrary<typeof SYMBOLS>["symbols"]) => T): T {
  const lib = Deno.dlopen("libc.so.6", SYMBOLS);
  try {
    return use(lib.symbols);
  } finally {
    lib.close();
  }
}

/** Sets the nice value of process `pid`'s main thread; false when the process is gone or it is not allowed. */
export function setNice(pid: number, nice: number): boolean {
  return withLibc((c) => c.setpriority(PRIO_PROCESS, pid, nice) === 0);
}

/** The nice value of process `pid`'s main thread (-20..19). */
export function niceOf(pid: number): number {
  return withLibc((c) => c.getpriority(PRIO_PROCESS, pid));
}
