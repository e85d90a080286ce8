/**
 * The operating system's side of a sandbox child: its command line (no --allow-* flag but read access to its
 * upload, a V8 heap limit, and hard limits on its address space and its private writable memory through
 * util-linux's `prlimit`), and its CPU time and
 * memory read from /proc/PID/stat through `cat` (Deno lets only --allow-all read /proc of another process).
 */

/**
 * Address space a Deno 2.9.6 child reserves before it allocates anything: V8's pointer cage and cppgc's 32 GiB
 * caged heap are reserved, not used. Measured here: `deno run` of a one-line module starts under `prlimit --as` from
 * 33088 MiB, but 1 start in 20 still failed at 33536 MiB ("Oilpan: CagedHeap reservation": an aligned reservation
 * sometimes needs more), none in 20 at twice that. The address-space limit is therefore no memory budget (that is
 * `--data`, below); it only stops a child from mapping without end outside those reservations.
 */
export const ADDRESS_BASE_MB = 67_584;

/**
 * Private writable memory (RLIMIT_DATA) a Deno 2.9.6 child maps before the program allocates: measured here, a
 * one-line module starts from 547 MiB. This is the limit that holds ArrayBuffers: V8 places their backing stores in
 * address space it reserved at start (so `--as` never sees them grow), but making those pages writable counts
 * against RLIMIT_DATA, and an allocation over it fails with "Array buffer allocation failed".
 *
 * The child starts under this base plus its budget, room for the runtime's own start on any machine; once it has
 * connected, and before it loads the upload, the host lowers the limit to what it maps then plus the budget
 * (tightenDataLimit), so the budget is the program's and not the base's slack (about 90 MiB here).
 */
export const DATA_BASE_MB = 640;

/** What tightenDataLimit read and set, in bytes. */
export interface DataLimit {
  /** The child's private writable memory (VmData) when it was read: the runtime's own. */
  readonly baseBytes: number;
  /** The RLIMIT_DATA set: base plus the budget. */
  readonly limitBytes: number;
}

/**
 * Lowers process `pid`'s RLIMIT_DATA (soft and hard) to its VmData now plus `memoryMb`, with util-linux's `prlimit`
 * (a process may lower the limits of another of its own user's). Throws with what went wrong.
 */
export async function tightenDataLimit(pid: number, memoryMb: number): Promise<DataLimit> {
  const script =
    'v=$(sed -n "s/^VmData:[[:space:]]*\\([0-9]*\\) kB$/\\1/p" "/proc/$1/status") && [ -n "$v" ] || ' +
    '{ echo "no VmData in /proc/$1/status" >&2; exit 1; }; l=$((v * 1024 + $2)); ' +
    'prlimit --pid "$1" --data="$l:$l" && echo "$v $l"';
  const out = await new Deno.Command("sh", {
    args: ["-c", script, "sh", String(pid), String(memoryMb * 1024 * 1024)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  const [kib, limit] = text.split(" ").map(Number);
  if (!out.success || !(kib > 0) || !(limit > 0)) {
    const why = new TextDecoder().decode(out.stderr).trim() || `exit code ${out.code}`;
    throw new Error(`Cannot lower the memory limit of process ${pid}: ${why}`);
  }
  return { baseBytes: kib * 1024, limitBytes: limit };
}

export interface ChildCommandOptions {
  /** The deno executable. */
  readonly deno: string;
  /** The child's main module (lib/sandbox/child.ts). */
  readonly main: string;
  /** The upload's directory: the only thing the child may read. */
  readonly dir: string;
  /** The unix socket its frames go through: it may read, write and connect to this one path. */
  readonly socket: string;
  /** A directory of its own it may read (and write, with `storageWrite`), its files at most `storageBytes` each. */
  readonly storage?: string;
  readonly storageWrite?: boolean;
  readonly storageBytes?: number;
  /** Each program's entry module, a file name in `dir`. */
  readonly entries: readonly string[];
  /** V8 old-space limit. */
  readonly heapMb: number;
  /** What the child may map beyond `addressBaseMb` (heap, ArrayBuffers, code). */
  readonly memoryMb: number;
  readonly addressBaseMb?: number;
  readonly dataBaseMb?: number;
  /** Memory shared with the host (shared_ring.ts): the child maps it with FFI, then revokes FFI. */
  readonly shared?: { readonly path: string; readonly bytes: number };
}

/**
 * The argv that starts a sandbox child. Connecting to its unix socket needs write access to that path, which would
 * also let the program remove the socket and write a file there: RLIMIT_FSIZE 0 makes every write to a regular file
 * fail (EFBIG, with SIGXFSZ ignored through `sh`, as an ignored signal stays ignored across exec; Deno's own cache
 * writes then fail quietly), while sockets and the audit FIFO are not files it limits. A program that declared
 * storage may write files of up to `storageBytes` each (its directory's total is checked by the host); the socket's
 * path is removed once the child connected, so a file made there later is in the host's private directory only.
 */
export function childArgv(o: ChildCommandOptions): string[] {
  const mib = 1024 * 1024;
  // The memory shared with the host is mapped in the child's address space too (not in its data: it is not private).
  const asBytes = ((o.addressBaseMb ?? ADDRESS_BASE_MB) + o.memoryMb) * mib + (o.shared?.bytes ?? 0);
  const dataBytes = ((o.dataBaseMb ?? DATA_BASE_MB) + o.memoryMb) * mib;
  return [
    "sh",
    "-c",
    'trap "" XFSZ; exec "$@"',
    "sh",
    "prlimit",
    `--as=${asBytes}`,
    `--data=${dataBytes}`,
    `--fsize=${o.storage && o.storageWrite ? o.storageBytes ?? 0 : 0}`,
    "--core=0",
    "--",
    o.deno,
    "run",
    "--no-prompt",
    "--no-config",
    "--no-lock",
    "--no-remote",
    "--no-npm",
    `--allow-read=${o.dir},${o.socket}${o.storage ? `,${o.storage}` : ""}`,
    `--allow-write=${o.socket}${o.storage && o.storageWrite ? `,${o.storage}` : ""}`,
    `--allow-net=unix:${o.socket}`,
    `--v8-flags=--max-old-space-size=${o.heapMb}`,
    // For its one mapping of the shared memory, revoked before the upload loads (shared_ring.ts).
    ...(o.shared ? ["--allow-ffi"] : []),
    o.main,
    o.socket,
    o.shared ? `${o.shared.path}:${o.shared.bytes}` : "-",
    ...o.entries.map((entry) => `file://${o.dir}/${entry}`),
  ];
}

/** CPU time and resident memory of a process. */
export interface ProcSample {
  readonly cpuMs: number;
  readonly rssBytes: number;
}

/** Reads /proc/PID/stat's text; null when the process is gone. */
export function parseProcStat(text: string, ticksPerSecond = 100, pageBytes = 4096): ProcSample | null {
  const close = text.lastIndexOf(")");
  if (close < 0) return null;
  // Fields after the command name, from field 3 (state): utime is field 14, stime 15, rss 24.
  const f = text.slice(close + 2).trim().split(/\s+/);
  const utime = Number(f[11]);
  const stime = Number(f[12]);
  const rss = Number(f[21]);
  if (![utime, stime, rss].every(Number.isFinite)) return null;
  return { cpuMs: ((utime + stime) * 1000) / ticksPerSecond, rssBytes: rss * pageBytes };
}

/** Samples process `pid`; null when it is gone or cannot be read. */
export async function sampleProcess(pid: number): Promise<ProcSample | null> {
  try {
    const out = await new Deno.Command("cat", {
      args: [`/proc/${pid}/stat`],
      stdout: "piped",
      stderr: "null",
    })
      .output();
    return out.success ? parseProcStat(new TextDecoder().decode(out.stdout)) : null;
  } catch {
    return null;
  }
}
