/**
 * A CPU cap for one sandbox process: a control group of its own with a CFS quota (`share` of one core per 100 ms
 * period). cgroup v2 (`cpu.max`) where /sys/fs/cgroup is the unified hierarchy with the cpu controller, else the
 * cgroup v1 cpu hierarchy (`cpu.cfs_quota_us`), as on these machines. The process is moved in by its pid right after
 * it is spawned (all its threads go with it: `cgroup.procs`), and the group is removed when the sandbox stops.
 * Deno lets only --allow-all write under /sys, so the writes go through `sh`.
 */
const PERIOD_US = 100_000;
const ROOT_V2 = "/sys/fs/cgroup";
const ROOT_V1 = "/sys/fs/cgroup/cpu";

export class CpuCap {
  private constructor(readonly dir: string, readonly share: number) {}

  /** Makes the group; throws an Error naming what this machine lacks when no writable cpu hierarchy exists. */
  static async create(name: string, share: number): Promise<CpuCap> {
    const quota = Math.max(1000, Math.round(share * PERIOD_US));
    const leaf = `edgenode-sandbox-${name.replace(/[^A-Za-z0-9_.-]/g, "_").slice(0, 80)}-${
      crypto.randomUUID().slice(0, 8)
    }`;
    const v2 = await sh('cat "$1"', `${ROOT_V2}/cgroup.controllers`).catch(() => "");
    try {
      if (/\bcpu\b/.test(v2)) {
        const dir = `${ROOT_V2}/${leaf}`;
        await sh('mkdir "$1" && echo "$2 $3" > "$1/cpu.max"', dir, String(quota), String(PERIOD_US));
        return new CpuCap(dir, share);
      }
      const dir = `${ROOT_V1}/${leaf}`;
      await sh(
        'mkdir "$1" && echo "$3" > "$1/cpu.cfs_period_us" && echo "$2" > "$1/cpu.cfs_quota_us"',
        dir,
        String(quota),
        String(PERIOD_US),
      );
      return new CpuCap(dir, share);
    } catch (error) {
      // A group made before a write failed is not left behind.
      for (const root of [ROOT_V2, ROOT_V1]) await sh('rmdir "$1"', `${root}/${leaf}`).catch(() => {});
      throw new Error(
        `Cannot cap a sandbox's CPU (node.uploads.cpu_percent): no writable cpu control group (${
          (error as Error).message
        })`,
      );
    }
  }

  /** Moves process `pid` (all its threads) into the group. */
  async add(pid: number): Promise<void> {
    await sh('echo "$2" > "$1/cgroup.procs"', this.dir, String(pid));
  }

  /** Removes the group (its processes must have ended); quiet when it is gone. */
  async remove(): Promise<void> {
    await sh('rmdir "$1"', this.dir).catch(() => {});
  }
}

/** Runs `script` with `args` as $1...; its stdout, or throws with its stderr. */
async function sh(script: string, ...args: string[]): Promise<string> {
  const out = await new Deno.Command("sh", {
    args: ["-c", script, "sh", ...args],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const text = new TextDecoder();
  if (!out.success) throw new Error(text.decode(out.stderr).trim() || `sh exited with ${out.code}`);
  return text.decode(out.stdout);
}
