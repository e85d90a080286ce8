/**
 * CPU time of another process, for benchmarks that set a path's cost beside its peer's. Read through `sh` and `cat`,
 * which need only --allow-run (Deno lets a program read /proc of processes only with --allow-all).
 */

async function read(script: string, pid: number): Promise<string> {
  const out = await new Deno.Command("sh", { args: ["-c", script], stdout: "piped", stderr: "null" })
    .output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success || !text) throw new Error(`cannot read the CPU time of process ${pid} from /proc`);
  return text;
}

/**
 * CPU time `pid`'s live threads have used, in nanoseconds (/proc/PID/task/* /schedstat, field 1). Precise, but a
 * thread that ended takes its time with it: for processes whose threads live as long as the path (relays).
 */
export async function threadCpuNs(pid: number): Promise<number> {
  const text = await read(`cat /proc/${pid}/task/*/schedstat`, pid);
  return text.split("\n").reduce((sum, line) => sum + Number(line.split(" ")[0]), 0);
}

/**
 * CPU time `pid` has used, ended threads included, in nanoseconds (/proc/PID/stat utime + stime, in clock ticks of
 * usually 10 ms): for processes whose threads come and go, over runs of seconds.
 */
export async function processCpuNs(pid: number): Promise<number> {
  const [stat, hz] = (await read(`cat /proc/${pid}/stat && getconf CLK_TCK`, pid)).split("\n");
  // Fields after the command name, which may hold spaces and parentheses: state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1e9) / Number(hz);
}
