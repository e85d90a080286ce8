/**
 * What the soak tests read of a process they started, from /proc (Linux): open file descriptors, resident memory,
 * threads, and the open-files limit. Read from outside, so the figures are the kernel's, not the process's own view.
 */

export interface ProcFigures {
  /** Entries in /proc/PID/fd: sockets, pipes, files, epoll and event fds. */
  readonly fds: number;
  /** Sockets among them (links to "socket:[inode]"). */
  readonly sockets: number;
  /** VmRSS in KiB. */
  readonly rssKiB: number;
  /** Threads of the process (Deno's own plus workers' and blocking-pool threads). */
  readonly threads: number;
}

/**
 * Deno asks for --allow-all to read /proc/PID (it could reveal another process's secrets), so the figures are read
 * by `sh` (allowed by --allow-run) and parsed here.
 */
async function readProc(pid: number): Promise<string> {
  // `ls -l` fails when a descriptor closes between its listing and its lstat (the process is busy closing sockets):
  // what it listed is still the count, so its status is not the script's; a process that is gone fails the greps.
  const script = 'cd "/proc/$1" || exit 1; ls -l fd 2>/dev/null; ' +
    'grep -E "^(VmRSS|Threads):" status && grep "^Max open files" limits';
  const out = await new Deno.Command("sh", { args: ["-c", script, "sh", String(pid)], stderr: "null" })
    .output();
  if (!out.success) throw new Error(`Cannot read /proc/${pid}: is the process still running?`);
  return new TextDecoder().decode(out.stdout);
}

export async function procFigures(pid: number): Promise<ProcFigures> {
  const text = await readProc(pid);
  const links = text.split("\n").filter((l) => / -> /.test(l));
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(text)?.[1] ?? NaN);
  return {
    // `ls fd` itself opens the directory in the `ls` process, not in `pid`: nothing to subtract.
    fds: links.length,
    sockets: links.filter((l) => / -> socket:/.test(l)).length,
    rssKiB: field("VmRSS"),
    threads: field("Threads"),
  };
}

/** The soft limit on open files of process `pid` (what it may open), from /proc/PID/limits. */
export async function openFilesLimit(pid: number): Promise<number> {
  const soft = /^Max open files\s+(\d+|unlimited)/m.exec(await readProc(pid))?.[1];
  return soft === undefined || soft === "unlimited" ? Infinity : Number(soft);
}

export function mib(kib: number): string {
  return `${(kib / 1024).toFixed(1)} MiB`;
}
